//! Time as every part records it: Unix milliseconds in an `i64`, as the database
//! stores it. One conversion, so that every part rounds alike.

use std::time::{SystemTime, UNIX_EPOCH};

/// `at` in Unix milliseconds (0 before 1970, `i64::MAX` past what it holds).
pub fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Now, in Unix milliseconds. Code whose decisions depend on time takes it as an
/// argument instead; this is for the edges that record when something happened.
pub fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn milliseconds_since_the_epoch_and_nothing_before_it() {
        assert_eq!(unix_ms(UNIX_EPOCH + Duration::from_millis(1_234)), 1_234);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
