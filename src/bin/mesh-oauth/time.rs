//! `--now` and the times in claims: Unix seconds and RFC 3339 (UTC), without a date crate.

const SECONDS_PER_DAY: i64 = 86_400;
/// 9999-12-31T23:59:59Z: beyond it a time is shown as a bare number.
const LAST_SHOWN: f64 = 253_402_300_799.0;

/// `--now`: Unix seconds, or an RFC 3339 date-time (`2024-05-01T12:00:00Z`, `…+02:00`).
/// Returns milliseconds since the epoch.
pub fn parse_now(text: &str) -> Result<u64, String> {
    let invalid = || format!("--now {text}: expected Unix seconds or an RFC 3339 date-time");
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .ok()
            .and_then(|s| s.checked_mul(1000))
            .ok_or_else(invalid);
    }
    let seconds = parse_rfc3339(text).ok_or_else(invalid)?;
    u64::try_from(seconds)
        .ok()
        .and_then(|s| s.checked_mul(1000))
        .ok_or_else(|| format!("--now {text}: before 1970"))
}

fn parse_rfc3339(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let number = |from, to| number_in(text, from, to);
    let separators_ok = bytes.get(4) == Some(&b'-')
        && bytes.get(7) == Some(&b'-')
        && matches!(bytes.get(10), Some(b'T' | b't' | b' '))
        && bytes.get(13) == Some(&b':')
        && bytes.get(16) == Some(&b':');
    if !separators_ok {
        return None;
    }
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = text.get(19..)?;
    // Fractions of a second are accepted and dropped: claims are checked in whole seconds.
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = fraction.get(digits..)?;
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes().get(3) != Some(&b':') {
                return None;
            }
            let (h, m) = (number_in(rest, 1, 3)?, number_in(rest, 4, 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            sign * (h * 3600 + m * 60)
        }
    };
    let days = days_from_civil(year, month, day);
    Some(days * SECONDS_PER_DAY + hour * 3600 + minute * 60 + second - offset)
}

fn number_in(text: &str, from: usize, to: usize) -> Option<i64> {
    let digits = text.get(from..to)?;
    digits
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| digits.parse().ok())?
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm). The inputs
/// are bounded by the parser (4-digit years), so the arithmetic cannot overflow.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let shifted_month = (month + 9) % 12;
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// A NumericDate as RFC 3339 UTC, e.g. `2023-11-14T22:13:20Z`.
pub fn show(seconds: f64) -> String {
    if !(0.0..=LAST_SHOWN).contains(&seconds) {
        return format!("{seconds}");
    }
    // In range, so the conversion is exact for the whole seconds.
    let whole = seconds.floor() as i64;
    let (days, secs) = (
        whole.div_euclid(SECONDS_PER_DAY),
        whole.rem_euclid(SECONDS_PER_DAY),
    );
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A duration in seconds for humans: `90 s`, `2 h 5 min`.
pub fn span(seconds: f64) -> String {
    let s = seconds.abs().round() as u64;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min {} s", s / 60, s % 60),
        7200..=172_799 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_and_unix_seconds_agree() {
        assert_eq!(parse_now("1700000000"), Ok(1_700_000_000_000));
        assert_eq!(parse_now("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert_eq!(
            parse_now("2023-11-14T23:13:20.5+01:00"),
            Ok(1_700_000_000_000)
        );
        assert_eq!(parse_now("2024-02-29T00:00:00Z"), Ok(1_709_164_800_000));
        assert!(parse_now("2023-02-29T00:00:00Z").is_err());
        assert!(parse_now("2023-11-14T22:13:20").is_err());
        assert!(parse_now("1969-12-31T23:59:59Z").is_err());
        assert!(parse_now("soon").is_err());
    }

    #[test]
    fn times_are_shown_in_utc() {
        assert_eq!(show(1_700_000_000.0), "2023-11-14T22:13:20Z");
        assert_eq!(show(1_709_164_800.9), "2024-02-29T00:00:00Z");
        assert_eq!(show(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(show(1e20), "100000000000000000000");
    }
}
