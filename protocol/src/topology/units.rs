//! The units the Compose format writes values in: durations (`1m30s`), byte sizes
//! (`512m`, `1.5GiB`) and CPU counts (`0.5`). Pure parsing, no I/O.

/// Parses a Compose duration such as `90s`, `1m30s`, `1h`, `500ms` or `2us` into
/// milliseconds. Sub-millisecond parts round up, so `1us` is not zero.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err(
            "expected a duration such as \"30s\" or \"1m30s\", found an empty string".into(),
        );
    }
    let mut total_ns: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "expected a duration such as \"30s\" or \"1m30s\", found {text:?}"
            ));
        }
        let number: f64 = rest[..digits].parse().map_err(|_| {
            format!("expected a duration such as \"30s\" or \"1m30s\", found {text:?}")
        })?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_ns: f64 = match &rest[..unit_len] {
            "h" => 3_600e9,
            "m" => 60e9,
            "s" => 1e9,
            "ms" => 1e6,
            "us" | "µs" => 1e3,
            "ns" => 1.0,
            "" => {
                return Err(format!(
                    "{text:?} has no unit: write it as \"{text}s\" (units: h, m, s, ms, us, ns)"
                ));
            }
            other => {
                return Err(format!(
                    "unknown unit {other:?} in duration {text:?} (units: h, m, s, ms, us, ns)"
                ));
            }
        };
        rest = &rest[unit_len..];
        total_ns += (number * unit_ns) as u128;
    }
    let ms = total_ns.div_ceil(1_000_000);
    u64::try_from(ms).map_err(|_| format!("duration {text:?} is too long"))
}

/// Parses a byte size such as `512m`, `1g`, `1.5GiB`, `64kb` or `1048576` into bytes.
/// Units are binary, as Docker reads them (`1m` is 1024 × 1024 bytes).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let bad = || format!("expected a size such as \"512m\" or \"1g\", found {text:?}");
    let number: f64 = number.parse().map_err(|_| bad())?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0_f64.powi(4),
        _ => return Err(bad()),
    };
    let bytes = number * factor;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(format!("size {text:?} is too large"));
    }
    Ok(bytes.round() as u64)
}

/// Parses a CPU count such as `0.5` or `2` into thousandths of a core.
pub fn parse_cpu_millis(text: &str) -> Result<u64, String> {
    let cpus: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("expected a number of CPUs such as \"0.5\", found {text:?}"))?;
    cpus_to_millis(cpus)
}

/// Converts a CPU count to thousandths of a core, refusing what cannot be a limit.
pub fn cpus_to_millis(cpus: f64) -> Result<u64, String> {
    if !cpus.is_finite() || cpus <= 0.0 {
        return Err(format!("a CPU limit must be more than 0, found {cpus}"));
    }
    if cpus > 1_000_000.0 {
        return Err(format!(
            "a CPU limit of {cpus} is more than any machine has"
        ));
    }
    Ok(((cpus * 1000.0).round() as u64).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("1m30s"), Ok(90_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("1.5s"), Ok(1_500));
        assert_eq!(parse_duration_ms("1us"), Ok(1));
        assert!(parse_duration_ms("30").unwrap_err().contains("no unit"));
        assert!(parse_duration_ms("3 days").is_err());
        assert!(parse_duration_ms("").is_err());
        assert!(parse_duration_ms("s").is_err());
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("512m"), Ok(512 * 1024 * 1024));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert_eq!(parse_bytes("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_bytes("64kb"), Ok(64 * 1024));
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("1e400").is_err());
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpu_millis("0.5"), Ok(500));
        assert_eq!(parse_cpu_millis("2"), Ok(2000));
        assert_eq!(parse_cpu_millis("0.0001"), Ok(1));
        assert!(parse_cpu_millis("0").is_err());
        assert!(parse_cpu_millis("-1").is_err());
        assert!(parse_cpu_millis("half").is_err());
    }
}
