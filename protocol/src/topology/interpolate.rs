//! Variable interpolation as Compose does it, on the string values of a topology file.
//!
//! `$$` is a literal `$`; `$NAME` and `${NAME}` substitute; `${NAME:-default}` and
//! `${NAME-default}` fall back when unset-or-empty / unset; `${NAME:?message}` and
//! `${NAME?message}` fail; `${NAME:+alt}` and `${NAME+alt}` substitute `alt` when set.
//! Defaults and alternatives may themselves hold interpolations.

use std::collections::BTreeMap;

/// The variables interpolation reads: the process environment over the project's `.env`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Variables {
    values: BTreeMap<String, String>,
}

impl Variables {
    /// Variables from explicit pairs (tests, or a caller's own environment).
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            values: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// Adds the pairs that are not set yet (a `.env` file under the environment).
    pub fn fill_missing<I: IntoIterator<Item = (String, String)>>(&mut self, pairs: I) {
        for (k, v) in pairs {
            self.values.entry(k).or_insert(v);
        }
    }

    /// The value of a variable, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }
}

/// The result of interpolating one string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interpolated {
    /// The string with every variable substituted.
    pub value: String,
    /// Variables that were read but not set (each became an empty string).
    pub unset: Vec<String>,
}

/// Interpolates `input`. The error says what is wrong in words a user can act on.
pub fn interpolate(input: &str, vars: &Variables) -> Result<Interpolated, String> {
    let mut out = Interpolated::default();
    let mut depth = 0;
    interpolate_into(input, vars, &mut out, &mut depth)?;
    Ok(out)
}

const MAX_NESTING: usize = 16;

fn interpolate_into(
    input: &str,
    vars: &Variables,
    out: &mut Interpolated,
    depth: &mut usize,
) -> Result<(), String> {
    *depth += 1;
    if *depth > MAX_NESTING {
        return Err(format!(
            "interpolation is nested more than {MAX_NESTING} levels deep"
        ));
    }
    let mut rest = input;
    while let Some(dollar) = rest.find('$') {
        out.value.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.value.push('$');
            rest = tail;
        } else if let Some(braced) = after.strip_prefix('{') {
            let end = matching_brace(braced).ok_or_else(|| {
                format!("unclosed \"${{\" in {input:?}: every \"${{\" needs a \"}}\" (write \"$$\" for a literal \"$\")")
            })?;
            expand_braced(&braced[..end], vars, out, depth)?;
            rest = &braced[end + 1..];
        } else {
            let len = name_len(after);
            if len == 0 {
                return Err(format!(
                    "invalid interpolation in {input:?}: \"$\" must start \"${{NAME}}\" or \"$NAME\" (write \"$$\" for a literal \"$\")"
                ));
            }
            substitute(&after[..len], vars, out);
            rest = &after[len..];
        }
    }
    out.value.push_str(rest);
    *depth -= 1;
    Ok(())
}

/// The index of the `}` closing a `${`, counting nested `${ ... }`.
fn matching_brace(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut level = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                level += 1;
                i += 1;
            }
            b'}' if level == 0 => return Some(i),
            b'}' => level -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn name_len(s: &str) -> usize {
    let mut chars = s.char_indices();
    match chars.next() {
        Some((_, c)) if c == '_' || c.is_ascii_alphabetic() => {}
        _ => return 0,
    }
    chars
        .find(|(_, c)| !(*c == '_' || c.is_ascii_alphanumeric()))
        .map_or(s.len(), |(i, _)| i)
}

fn substitute(name: &str, vars: &Variables, out: &mut Interpolated) {
    match vars.get(name) {
        Some(v) => out.value.push_str(v),
        None => {
            if !out.unset.iter().any(|u| u == name) {
                out.unset.push(name.to_owned());
            }
        }
    }
}

fn expand_braced(
    body: &str,
    vars: &Variables,
    out: &mut Interpolated,
    depth: &mut usize,
) -> Result<(), String> {
    let len = name_len(body);
    if len == 0 {
        return Err(format!(
            "invalid interpolation \"${{{body}}}\": a variable name starts with a letter or \"_\""
        ));
    }
    let name = &body[..len];
    let op = &body[len..];
    let value = vars.get(name);
    let non_empty = value.is_some_and(|v| !v.is_empty());
    let (operator, arg) = split_operator(op).ok_or_else(|| {
        format!(
            "invalid interpolation \"${{{body}}}\": after the name comes \"}}\", \":-\", \"-\", \":?\", \"?\", \":+\" or \"+\""
        )
    })?;
    match operator {
        "" => substitute(name, vars, out),
        ":-" | "-" => {
            let use_default = if operator == ":-" {
                !non_empty
            } else {
                value.is_none()
            };
            if use_default {
                interpolate_into(arg, vars, out, depth)?;
            } else {
                out.value.push_str(value.unwrap_or_default());
            }
        }
        ":?" | "?" => {
            let missing = if operator == ":?" {
                !non_empty
            } else {
                value.is_none()
            };
            if missing {
                let mut message = Interpolated::default();
                interpolate_into(arg, vars, &mut message, depth)?;
                let why = if message.value.is_empty() {
                    format!("variable {name} is required but not set")
                } else {
                    format!("variable {name} is required: {}", message.value)
                };
                return Err(why);
            }
            out.value.push_str(value.unwrap_or_default());
        }
        ":+" | "+" => {
            let set = if operator == ":+" {
                non_empty
            } else {
                value.is_some()
            };
            if set {
                interpolate_into(arg, vars, out, depth)?;
            }
        }
        _ => unreachable!("split_operator returns only the operators above"),
    }
    Ok(())
}

fn split_operator(op: &str) -> Option<(&'static str, &str)> {
    if op.is_empty() {
        return Some(("", ""));
    }
    for operator in [":-", ":?", ":+", "-", "?", "+"] {
        if let Some(arg) = op.strip_prefix(operator) {
            return Some((operator, arg));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Variables {
        Variables::from_pairs([("TAG", "1.2"), ("EMPTY", ""), ("PORT", "8080")])
    }

    fn run(s: &str) -> Result<String, String> {
        interpolate(s, &vars()).map(|i| i.value)
    }

    #[test]
    fn plain_and_braced_names() {
        assert_eq!(run("busybox:$TAG"), Ok("busybox:1.2".into()));
        assert_eq!(run("busybox:${TAG}-x"), Ok("busybox:1.2-x".into()));
        assert_eq!(run("no variables"), Ok("no variables".into()));
    }

    #[test]
    fn dollar_dollar_is_literal() {
        assert_eq!(run("echo $$HOME"), Ok("echo $HOME".into()));
    }

    #[test]
    fn defaults_follow_compose() {
        assert_eq!(run("${MISSING:-80}"), Ok("80".into()));
        assert_eq!(run("${EMPTY:-80}"), Ok("80".into()));
        assert_eq!(run("${EMPTY-80}"), Ok("".into()));
        assert_eq!(run("${MISSING-80}"), Ok("80".into()));
        assert_eq!(run("${PORT:-80}"), Ok("8080".into()));
        assert_eq!(run("${MISSING:-${PORT}}"), Ok("8080".into()));
    }

    #[test]
    fn alternatives() {
        assert_eq!(run("${PORT:+set}"), Ok("set".into()));
        assert_eq!(run("${EMPTY:+set}"), Ok("".into()));
        assert_eq!(run("${EMPTY+set}"), Ok("set".into()));
        assert_eq!(run("${MISSING+set}"), Ok("".into()));
    }

    #[test]
    fn required_variables_fail_with_their_message() {
        let err = run("${MISSING:?set it in .env}").unwrap_err();
        assert!(
            err.contains("MISSING") && err.contains("set it in .env"),
            "{err}"
        );
        assert!(run("${EMPTY:?x}").is_err());
        assert_eq!(run("${EMPTY?x}"), Ok("".into()));
    }

    #[test]
    fn unset_variables_are_reported() {
        let out = interpolate("$A and ${B} and $A", &vars()).unwrap();
        assert_eq!(out.value, " and  and ");
        assert_eq!(out.unset, vec!["A".to_string(), "B".to_string()]);
    }

    #[test]
    fn malformed_forms_are_errors() {
        assert!(run("${UNCLOSED").unwrap_err().contains("unclosed"));
        assert!(run("cost: $5").unwrap_err().contains("$$"));
        assert!(run("${1BAD}").is_err());
        assert!(run("${TAG!x}").is_err());
        assert!(run("trailing $").is_err());
    }
}
