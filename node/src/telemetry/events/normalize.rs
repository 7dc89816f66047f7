//! Field helpers both parsers share: container id normalisation, CRI log
//! prefix stripping and RFC 3339 timestamps.

use super::{ContainerId, ParseError, SHORT_ID_LEN};

/// Normalises a container id from any source to the [`SHORT_ID_LEN`]-hex
/// short id: strips a `<scheme>://` prefix (`containerd://`, `docker://`,
/// `cri-o://`), lowercases, and requires 12..=64 hex digits.
pub fn normalize_container_id(raw: &str) -> Option<ContainerId> {
    let s = raw.trim();
    // (Hand-rolled `find("://")`: `str::find` builds a substring searcher
    // per call, which costs more than the whole scan of an id.)
    let b = s.as_bytes();
    let s = match (0..b.len().saturating_sub(2))
        .find(|&i| b[i] == b':' && b[i + 1] == b'/' && b[i + 2] == b'/')
    {
        Some(i) => &s[i + 3..],
        None => s,
    };
    // (The hex check without short-circuit, so it vectorises; only on
    // strings of an id's length.)
    if !(SHORT_ID_LEN..=64).contains(&s.len())
        || !s.bytes().fold(true, |ok, b| ok & b.is_ascii_hexdigit())
    {
        return None;
    }
    Some(ContainerId(s[..SHORT_ID_LEN].to_ascii_lowercase()))
}

/// Strips a CRI container-log prefix (`<RFC3339 time> <stdout|stderr> <F|P> `)
/// if present. A partial (`P`) line is a fragment of a longer record and is
/// refused with [`ParseError::CriPartial`]. Lines without the prefix are
/// returned unchanged.
pub fn strip_cri_prefix(line: &str) -> Result<&str, ParseError> {
    let t = line.trim_start();
    if t.starts_with('{') || t.is_empty() {
        return Ok(line);
    }
    let mut parts = t.splitn(4, ' ');
    let (Some(ts), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
        return Ok(line);
    };
    if parse_rfc3339_ms(ts).is_none() || !(stream == "stdout" || stream == "stderr") {
        return Ok(line);
    }
    let rest = parts.next().unwrap_or("");
    match tag.split(':').next() {
        Some("F") => Ok(rest),
        Some("P") => Err(ParseError::CriPartial),
        _ => Ok(line),
    }
}

fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() {
        return None;
    }
    b.iter().try_fold(0u32, |acc, c| {
        c.is_ascii_digit()
            .then(|| acc * 10 + u32::from(c - b'0'))
            .filter(|_| acc < 100_000)
    })
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    // Howard Hinnant's algorithm (proleptic Gregorian), days since 1970-01-01.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400) => 29,
        _ => 28,
    }
}

/// Parses an RFC 3339 timestamp (`2025-02-26T22:39:47.261363951Z`, any
/// fraction length, `Z` or `±HH:MM`) to milliseconds since the Unix epoch
/// (fraction truncated). `None` if malformed or before 1970.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let sep = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(sep(4, b'-') && sep(7, b'-') && sep(13, b':') && sep(16, b':')) {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let min = digits(&b[14..16])?;
    let sec = digits(&b[17..19])?;
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || min > 59
        || sec > 60
    {
        return None;
    }
    let mut rest = &b[19..];
    let mut frac_ms = 0u64;
    if let Some(r) = rest.strip_prefix(b".") {
        let n = r.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        for i in 0..3 {
            frac_ms = frac_ms * 10
                + r.get(i)
                    .filter(|_| i < n)
                    .map_or(0, |c| u64::from(c - b'0'));
        }
        rest = &r[n..];
    }
    let offset_s: i64 = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = i64::from(digits(&[*h1, *h2])?);
            let m = i64::from(digits(&[*m1, *m2])?);
            if h > 23 || m > 59 {
                return None;
            }
            let o = h * 3600 + m * 60;
            if *sign == b'+' { o } else { -o }
        }
        _ => return None,
    };
    let days = days_from_civil(i64::from(year), month, day);
    let secs =
        days * 86_400 + i64::from(hour) * 3600 + i64::from(min) * 60 + i64::from(sec) - offset_s;
    let secs = u64::try_from(secs).ok()?;
    secs.checked_mul(1000)?.checked_add(frac_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(
            parse_rfc3339_ms("2023-10-06T22:03:57.700326678Z"),
            Some(1_696_629_837_700)
        );
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("1970-01-01T01:00:00.5+01:00"), Some(500));
        assert_eq!(parse_rfc3339_ms("1969-12-31T23:59:59Z"), None);
        assert_eq!(parse_rfc3339_ms("2023-02-29T00:00:00Z"), None);
        assert_eq!(
            parse_rfc3339_ms("2024-02-29T00:00:00Z"),
            Some(1_709_164_800_000)
        );
        assert_eq!(parse_rfc3339_ms("2023-10-06T22:03:57."), None);
        assert_eq!(parse_rfc3339_ms("2023-10-06T22:03:57Zjunk"), None);
        assert_eq!(parse_rfc3339_ms("２０２３-10-06T22:03:57Z"), None);
    }

    #[test]
    fn container_ids() {
        let full = "551e161c47d8ff0eb665438a7bcd5b4e3ef5a297282b40a92b7c77d6bd168eb3";
        assert_eq!(
            normalize_container_id(&format!("containerd://{full}")),
            Some(ContainerId("551e161c47d8".into()))
        );
        assert_eq!(
            normalize_container_id("28C0C7A20575"),
            Some(ContainerId("28c0c7a20575".into()))
        );
        assert_eq!(normalize_container_id("containerd://abc"), None);
        assert_eq!(normalize_container_id("host"), None);
        assert_eq!(normalize_container_id(&"a".repeat(65)), None);
    }

    #[test]
    fn cri_prefix() {
        assert_eq!(
            strip_cri_prefix("2026-03-15T00:06:32.475152409Z stdout F {\"a\":1}"),
            Ok("{\"a\":1}")
        );
        assert_eq!(
            strip_cri_prefix("2026-03-15T00:06:32.475152409Z stderr P {\"a\""),
            Err(ParseError::CriPartial)
        );
        assert_eq!(
            strip_cri_prefix("garbage line here"),
            Ok("garbage line here")
        );
        assert_eq!(strip_cri_prefix("{\"x\":2}"), Ok("{\"x\":2}"));
    }
}
