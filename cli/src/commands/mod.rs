//! One module per group of commands; each takes the parsed command line and prints
//! what it did.

pub(crate) mod admin;
pub(crate) mod logs;
pub(crate) mod push;
pub(crate) mod serve;
pub(crate) mod topology;

use serde::Serialize;

/// Prints `value` as indented JSON (`--json`).
pub(crate) fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("error: cannot render JSON: {e}"),
    }
}
