//! The `KEY=VALUE` file format of `env_file` entries and of a project's `.env`.

/// One problem in an env file, with its line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvFileProblem {
    /// Line, from 1.
    pub line: u32,
    /// What is wrong.
    pub message: String,
}

/// One line of an env file: a value, or a bare name meaning "take it from the environment".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvEntry {
    /// `KEY=VALUE`.
    Value(String, String),
    /// `KEY` alone.
    Inherit(String),
}

/// Parses an env file: blank lines and `#` comments are skipped, `export ` is allowed,
/// values may be double-quoted (with `\n`, `\t`, `\"`, `\\` escapes), single-quoted
/// (literal), or bare (an unquoted ` #` starts a comment).
pub fn parse_env_file(text: &str) -> Result<Vec<EnvEntry>, Vec<EnvFileProblem>> {
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = u32::try_from(index + 1).unwrap_or(u32::MAX);
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let body = trimmed
            .strip_prefix("export ")
            .map_or(trimmed, str::trim_start);
        let (key, value) = match body.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (body, None),
        };
        if !valid_key(key) {
            problems.push(EnvFileProblem {
                line,
                message: format!(
                    "{key:?} is not a variable name (letters, digits and \"_\", not starting with a digit)"
                ),
            });
            continue;
        }
        match value {
            None => entries.push(EnvEntry::Inherit(key.to_owned())),
            Some(v) => match unquote(v) {
                Ok(v) => entries.push(EnvEntry::Value(key.to_owned(), v)),
                Err(message) => problems.push(EnvFileProblem { line, message }),
            },
        }
    }
    if problems.is_empty() {
        Ok(entries)
    } else {
        Err(problems)
    }
}

fn valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c == '.' || c.is_ascii_alphanumeric())
}

fn unquote(v: &str) -> Result<String, String> {
    if let Some(inner) = v.strip_prefix('"') {
        let end = closing_double_quote(inner).ok_or("unclosed double quote")?;
        let mut out = String::new();
        let mut chars = inner[..end].chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('r') => out.push('\r'),
                    Some(other) => out.push(other),
                    None => out.push('\\'),
                }
            } else {
                out.push(c);
            }
        }
        Ok(out)
    } else if let Some(inner) = v.strip_prefix('\'') {
        let end = inner.find('\'').ok_or("unclosed single quote")?;
        Ok(inner[..end].to_owned())
    } else {
        let without_comment = v.find(" #").map_or(v, |i| &v[..i]);
        Ok(without_comment.trim_end().to_owned())
    }
}

fn closing_double_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return Some(i),
            _ => escaped = false,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        let text = "# comment\n\nA=1\nexport B = two words \nC=\"quoted # not a comment\\n\"\nD='lit $x'\nE=bare # comment\nF\n";
        let entries = parse_env_file(text).unwrap();
        assert_eq!(
            entries,
            vec![
                EnvEntry::Value("A".into(), "1".into()),
                EnvEntry::Value("B".into(), "two words".into()),
                EnvEntry::Value("C".into(), "quoted # not a comment\n".into()),
                EnvEntry::Value("D".into(), "lit $x".into()),
                EnvEntry::Value("E".into(), "bare".into()),
                EnvEntry::Inherit("F".into()),
            ]
        );
    }

    #[test]
    fn reports_every_bad_line() {
        let problems = parse_env_file("1BAD=x\nOK=1\nQ=\"open\n").unwrap_err();
        assert_eq!(
            problems.iter().map(|p| p.line).collect::<Vec<_>>(),
            vec![1, 3]
        );
    }
}
