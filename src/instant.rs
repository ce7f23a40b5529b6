//! FHIR dates and instants (`_since`, `_until`, a manifest's `transactionTime`), checked with
//! the `time` crate's RFC 3339 parser plus the rules where FHIR is stricter.

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime};

/// A FHIR instant: `YYYY-MM-DDThh:mm:ss[.fff](Z|±hh:mm)` with every field in its range (what a
/// `transactionTime` must be to serve as the next `_since`).
pub fn is_instant(s: &str) -> bool {
    let b = s.as_bytes();
    // RFC 3339 also takes a lowercase `t`/`z`, a space for `T` and offsets up to ±23:59; FHIR
    // takes uppercase letters only and offsets up to ±14:00.
    if b.len() < 20 || b[10] != b'T' || s.ends_with('z') {
        return false;
    }
    let offset_ok = s.ends_with('Z')
        || s.get(s.len() - 6..s.len() - 3)
            .and_then(|h| h[1..].parse::<u8>().ok())
            .is_some_and(|h| h <= 14 && (h < 14 || s.ends_with(":00")));
    offset_ok && OffsetDateTime::parse(s, &Rfc3339).is_ok()
}

/// A FHIR date `YYYY-MM-DD` (a valid calendar date) or an instant.
pub(crate) fn is_date_or_instant(s: &str) -> bool {
    if s.len() == 10 {
        return Date::parse(s, format_description!("[year]-[month]-[day]")).is_ok();
    }
    is_instant(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants() {
        assert!(is_date_or_instant("2024-01-31"));
        assert!(is_date_or_instant("2024-02-29"));
        assert!(is_date_or_instant("2024-01-31T10:00:00Z"));
        assert!(is_date_or_instant("2024-01-31T10:00:00.123+02:00"));
        assert!(!is_date_or_instant("yesterday"));
        assert!(!is_date_or_instant("2024-01-31T10:00"));
        assert!(!is_date_or_instant("2023-02-29"));
        assert!(!is_date_or_instant("2024-13-45T99:00:00Z"));
        assert!(!is_date_or_instant("2024-01-31T24:00:00Z"));
        assert!(is_instant("2024-01-31T23:59:60Z"));
        assert!(!is_instant("2024-01-31"), "an instant has a time");
    }

    #[test]
    fn fhir_is_stricter_than_rfc_3339() {
        assert!(is_instant("2024-01-31T10:00:00-14:00"));
        assert!(!is_instant("2024-01-31T10:00:00+14:30"));
        assert!(!is_instant("2024-01-31T10:00:00+15:00"));
        assert!(!is_instant("2024-01-31t10:00:00Z"));
        assert!(!is_instant("2024-01-31T10:00:00z"));
        assert!(!is_instant("2024-01-31 10:00:00Z"));
        assert!(!is_instant("+2024-01-31T10:00:00Z"));
        assert!(!is_date_or_instant("+02024-01-31"));
        assert!(!is_date_or_instant("2024-1-31"));
    }
}
