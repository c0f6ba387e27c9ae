//! Calendar time for the API's timestamp fields, without a date crate:
//! `YYYY-MM-DD`, optionally followed by `[T ]HH:MM[:SS]` and `Z`/` UTC`.
//! Times are always UTC.

/// Days since 1970-01-01 for a proleptic Gregorian date (Hinnant's
/// days_from_civil).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Unix seconds for a UTC timestamp, or `None` if it is not one.
pub fn parse_time(s: &str) -> Option<u64> {
    let s = s.trim();
    let s = s
        .strip_suffix(" UTC")
        .or_else(|| s.strip_suffix('Z'))
        .unwrap_or(s);
    let (date, time) = match s.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut parts = date.splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || !(1970..=9999).contains(&y) {
        return None;
    }
    let mut secs = 0;
    if let Some(t) = time {
        let mut hms = t.splitn(3, ':');
        let h: u64 = hms.next()?.parse().ok()?;
        let mi: u64 = hms.next()?.parse().ok()?;
        let se: u64 = match hms.next() {
            Some(x) => x.split('.').next()?.parse().ok()?,
            None => 0,
        };
        if h > 23 || mi > 59 || se > 60 {
            return None;
        }
        secs = h * 3600 + mi * 60 + se;
    }
    let days = u64::try_from(days_from_civil(y, m, d)).ok()?;
    Some(days * 86_400 + secs)
}

/// `YYYY-MM-DD HH:MM:SS UTC`, the form the clients print.
pub fn format_time(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let rem = unix % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(parse_time("1970-01-01"), Some(0));
        assert_eq!(parse_time("2026-11-23 00:00:00 UTC"), Some(1_795_392_000));
        assert_eq!(parse_time("2026-11-23T00:00:00Z"), Some(1_795_392_000));
        assert_eq!(parse_time("2000-02-29 12:30"), Some(951_827_400));
        assert_eq!(format_time(1_795_392_000), "2026-11-23 00:00:00 UTC");
        for bad in [
            "",
            "tomorrow",
            "2026-13-01",
            "2026-01-01 25:00",
            "1969-12-31",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn format_and_parse_agree() {
        for t in [0, 59, 86_399, 951_827_400, 1_795_392_000, 4_102_444_800] {
            assert_eq!(parse_time(&format_time(t)), Some(t));
        }
    }
}
