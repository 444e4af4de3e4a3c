//! The language every part of Berth speaks.
//!
//! Owns the topology format (parsing, interpolation, validation, normalisation) and the
//! types the control plane's API exchanges. It does no I/O beyond what a caller hands
//! it as text, and must never depend on Docker, a database or a network.
pub mod assignment;
pub mod capability;
pub mod delegation;
pub mod image;
pub mod limits;
pub mod node_api;
pub mod replica;
pub mod time;
pub mod token_cache;
pub mod topology;

/// An error and each of its causes, joined by `: `, leaving out a cause whose words
/// the text says already (an error that prints its source). Transport errors' own
/// text ("transport error", "error sending request") leaves out why a connection
/// failed, such as a certificate that is not trusted; their causes say it.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let said = e.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = e.source();
    }
    text
}
