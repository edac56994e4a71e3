//! Durations (`90s`, `30m`, `2h`) and sizes (`512M`, `2G`, `unlimited`) as written in profiles.

use std::time::Duration;

/// Why a duration as written (`text`, trimmed) is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("`{text}` needs a unit: s, m or h (e.g. `90s`, `30m`)")]
    NoUnit { text: String },
    #[error("`{text}` is not a duration like `90s`, `30m` or `2h`")]
    NotANumber { text: String },
    #[error("`{text}` has an unknown unit `{unit}`: use s, m or h")]
    UnknownUnit { text: String, unit: String },
    #[error("`{text}` is too long")]
    TooLong { text: String },
    #[error("a duration of zero is not allowed; leave the key out instead")]
    Zero,
}

/// Why a size as written (`text`, trimmed) is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("`{text}` is not a size like `512M`, `2G` or `unlimited`")]
    NotANumber { text: String },
    #[error("`{text}` has an unknown unit `{unit}`: use K, M, G or T")]
    UnknownUnit { text: String, unit: String },
    #[error("`{text}` is too large")]
    TooLarge { text: String },
}

pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    let owned = || text.to_string();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| DurationError::NoUnit { text: owned() })?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| DurationError::NotANumber { text: owned() })?;
    let seconds = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        _ => {
            return Err(DurationError::UnknownUnit {
                text: owned(),
                unit: unit.to_string(),
            })
        }
    }
    .ok_or_else(|| DurationError::TooLong { text: owned() })?;
    if seconds == 0 {
        return Err(DurationError::Zero);
    }
    Ok(Duration::from_secs(seconds))
}

/// A duration as a profile writes it: the largest unit that divides it (`2h`, `30m`, `90s`).
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s > 0 && s.is_multiple_of(3600) => format!("{}h", s / 3600),
        s if s > 0 && s.is_multiple_of(60) => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A size as a profile writes it: the largest unit that divides it (`2G`, `512M`, `4K`, bytes).
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// `None` means unlimited.
pub fn parse_size(text: &str) -> Result<Option<u64>, SizeError> {
    let text = text.trim();
    if text == "unlimited" {
        return Ok(None);
    }
    let owned = || text.to_string();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| SizeError::NotANumber { text: owned() })?;
    let factor: u64 = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => {
            return Err(SizeError::UnknownUnit {
                text: owned(),
                unit: unit.to_string(),
            })
        }
    };
    n.checked_mul(factor)
        .map(Some)
        .ok_or_else(|| SizeError::TooLarge { text: owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(Some(512 << 20)));
        assert_eq!(parse_size("0"), Ok(Some(0)));
        assert_eq!(parse_size("unlimited"), Ok(None));
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn messages() {
        let d = |t: &str| parse_duration(t).expect_err(t).to_string();
        assert_eq!(d("10"), "`10` needs a unit: s, m or h (e.g. `90s`, `30m`)");
        assert_eq!(d("s"), "`s` is not a duration like `90s`, `30m` or `2h`");
        assert_eq!(d(" 5d "), "`5d` has an unknown unit `d`: use s, m or h");
        assert_eq!(
            d("9999999999999999999h"),
            "`9999999999999999999h` is too long"
        );
        assert_eq!(
            d("0m"),
            "a duration of zero is not allowed; leave the key out instead"
        );
        let s = |t: &str| parse_size(t).expect_err(t).to_string();
        assert_eq!(s("G"), "`G` is not a size like `512M`, `2G` or `unlimited`");
        assert_eq!(
            s("1.5G"),
            "`1.5G` has an unknown unit `.5G`: use K, M, G or T"
        );
        assert_eq!(s("99999999999T"), "`99999999999T` is too large");
    }
}
