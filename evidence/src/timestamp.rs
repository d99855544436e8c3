//! UTC timestamps: unix milliseconds inside, one fixed RFC 3339 form on the wire.
//!
//! Evidence carries every instant as `YYYY-MM-DDTHH:MM:SS.mmmZ` (exactly three
//! fraction digits, always `Z`), so each instant has exactly one encoding and
//! string order is time order. Trust anchors written by people may use any RFC 3339
//! form; [`Timestamp::parse_rfc3339`] reads those.

use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::fields::{FieldError, FieldProblem};

const FIELD: &str = "timestamp";
const MILLIS_PER_DAY: i64 = 86_400_000;
const CANONICAL_LEN: usize = 24;

/// An instant between 1970-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z, with
/// millisecond precision.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// 1970-01-01T00:00:00.000Z.
    pub const UNIX_EPOCH: Self = Self(0);
    /// 9999-12-31T23:59:59.999Z in unix milliseconds.
    pub const MAX_UNIX_MILLIS: u64 = 253_402_300_799_999;

    /// Wraps unix milliseconds.
    pub const fn from_unix_millis(millis: u64) -> Result<Self, FieldError> {
        if millis > Self::MAX_UNIX_MILLIS {
            Err(FieldError::new(FIELD, FieldProblem::OutOfRange))
        } else {
            Ok(Self(millis))
        }
    }

    /// Milliseconds since the unix epoch.
    pub const fn unix_millis(self) -> u64 {
        self.0
    }

    /// `self + millis`, or `None` past year 9999.
    pub fn checked_add_millis(self, millis: u64) -> Option<Self> {
        self.0
            .checked_add(millis)
            .and_then(|m| Self::from_unix_millis(m).ok())
    }

    /// Parses the one canonical wire form, `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    pub fn parse_canonical(value: &str) -> Result<Self, FieldError> {
        let b = value.as_bytes();
        if b.len() != CANONICAL_LEN {
            return Err(FieldError::new(
                FIELD,
                FieldProblem::WrongLength {
                    expected: CANONICAL_LEN,
                    found: b.len(),
                },
            ));
        }
        let separators = [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
            (23, b'Z'),
        ];
        if separators.iter().any(|&(i, c)| b.get(i) != Some(&c)) {
            return Err(malformed());
        }
        let year = digits(b, 0, 4)?;
        let month = digits(b, 5, 2)?;
        let day = digits(b, 8, 2)?;
        let hour = digits(b, 11, 2)?;
        let minute = digits(b, 14, 2)?;
        let second = digits(b, 17, 2)?;
        let millis = digits(b, 20, 3)?;
        let civil = Civil {
            year,
            month,
            day,
            hour,
            minute,
            second,
        };
        Self::from_civil(civil, millis, 0)
    }

    /// Parses any RFC 3339 date-time (`Z`, `z` or a numeric offset, any number of
    /// fraction digits) and converts it to UTC. Digits below a millisecond must be
    /// zero: silently rounding a validity bound would move it. Leap seconds (`:60`)
    /// are rejected.
    pub fn parse_rfc3339(value: &str) -> Result<Self, FieldError> {
        let b = value.as_bytes();
        if b.len() < 20 || b.len() > 64 {
            return Err(malformed());
        }
        let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
        if separators.iter().any(|&(i, c)| b.get(i) != Some(&c))
            || !matches!(b.get(10), Some(b'T' | b't'))
        {
            return Err(malformed());
        }
        let civil = Civil {
            year: digits(b, 0, 4)?,
            month: digits(b, 5, 2)?,
            day: digits(b, 8, 2)?,
            hour: digits(b, 11, 2)?,
            minute: digits(b, 14, 2)?,
            second: digits(b, 17, 2)?,
        };
        let mut pos = 19;
        let mut millis = 0;
        if b.get(pos) == Some(&b'.') {
            pos += 1;
            let start = pos;
            while b.get(pos).is_some_and(u8::is_ascii_digit) {
                pos += 1;
            }
            let fraction = b.get(start..pos).ok_or_else(malformed)?;
            if fraction.is_empty() {
                return Err(malformed());
            }
            for (i, &d) in fraction.iter().enumerate() {
                let d = u64::from(d - b'0');
                match i {
                    0 => millis += d * 100,
                    1 => millis += d * 10,
                    2 => millis += d,
                    _ if d != 0 => return Err(FieldError::new(FIELD, FieldProblem::OutOfRange)),
                    _ => {}
                }
            }
        }
        let offset_minutes = match b.get(pos..) {
            Some([b'Z' | b'z']) => 0,
            Some([sign @ (b'+' | b'-'), h1, h2, b':', m1, m2]) => {
                let hours = digits(&[*h1, *h2], 0, 2)?;
                let minutes = digits(&[*m1, *m2], 0, 2)?;
                if hours > 23 || minutes > 59 {
                    return Err(malformed());
                }
                let total = i64::try_from(hours * 60 + minutes).map_err(|_| malformed())?;
                if *sign == b'+' { total } else { -total }
            }
            _ => return Err(malformed()),
        };
        Self::from_civil(civil, millis, offset_minutes)
    }

    fn from_civil(c: Civil, millis: u64, offset_minutes: i64) -> Result<Self, FieldError> {
        let valid = (1..=12).contains(&c.month)
            && c.day >= 1
            && c.day <= days_in_month(c.year, c.month)
            && c.hour <= 23
            && c.minute <= 59
            && c.second <= 59
            && millis <= 999;
        if !valid {
            return Err(FieldError::new(FIELD, FieldProblem::OutOfRange));
        }
        let as_i64 =
            |v: u64| i64::try_from(v).map_err(|_| FieldError::new(FIELD, FieldProblem::OutOfRange));
        let days = days_from_civil(as_i64(c.year)?, as_i64(c.month)?, as_i64(c.day)?);
        let seconds_of_day = as_i64(c.hour * 3600 + c.minute * 60 + c.second)?;
        let local = days * MILLIS_PER_DAY + seconds_of_day * 1000 + as_i64(millis)?;
        let utc = local - offset_minutes * 60_000;
        let utc =
            u64::try_from(utc).map_err(|_| FieldError::new(FIELD, FieldProblem::OutOfRange))?;
        Self::from_unix_millis(utc)
    }

    /// Writes the canonical form into a fixed buffer.
    fn canonical_bytes(self) -> [u8; CANONICAL_LEN] {
        let millis = i64::try_from(self.0).unwrap_or(0);
        let days = millis.div_euclid(MILLIS_PER_DAY);
        let ms_of_day = millis.rem_euclid(MILLIS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        let mut out = *b"0000-00-00T00:00:00.000Z";
        put_digits(&mut out, 0, 4, year);
        put_digits(&mut out, 5, 2, month);
        put_digits(&mut out, 8, 2, day);
        put_digits(&mut out, 11, 2, ms_of_day / 3_600_000);
        put_digits(&mut out, 14, 2, ms_of_day / 60_000 % 60);
        put_digits(&mut out, 17, 2, ms_of_day / 1000 % 60);
        put_digits(&mut out, 20, 3, ms_of_day % 1000);
        out
    }

    /// The canonical string, `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    pub fn to_canonical_string(self) -> String {
        String::from_utf8_lossy(&self.canonical_bytes()).into_owned()
    }
}

struct Civil {
    year: u64,
    month: u64,
    day: u64,
    hour: u64,
    minute: u64,
    second: u64,
}

fn malformed() -> FieldError {
    FieldError::new(FIELD, FieldProblem::Malformed)
}

fn digits(bytes: &[u8], start: usize, len: usize) -> Result<u64, FieldError> {
    let slice = bytes.get(start..start + len).ok_or_else(malformed)?;
    slice.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            Ok(acc * 10 + u64::from(b - b'0'))
        } else {
            Err(malformed())
        }
    })
}

fn put_digits(out: &mut [u8; CANONICAL_LEN], start: usize, len: usize, mut value: i64) {
    for i in (start..start + len).rev() {
        if let Some(slot) = out.get_mut(i) {
            // value.rem_euclid(10) is 0..=9, so the cast cannot truncate.
            *slot = b'0' + u8::try_from(value.rem_euclid(10)).unwrap_or(0);
        }
        value /= 10;
    }
}

fn is_leap_year(year: u64) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.canonical_bytes()))
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

impl std::str::FromStr for Timestamp {
    type Err = FieldError;
    fn from_str(value: &str) -> Result<Self, FieldError> {
        Self::parse_canonical(value)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let bytes = self.canonical_bytes();
        let text = std::str::from_utf8(&bytes).map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(text)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Self::parse_canonical(&value).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_canonical(s).unwrap()
    }

    #[test]
    fn known_instants_round_trip() {
        let cases = [
            ("1970-01-01T00:00:00.000Z", 0),
            ("2000-02-29T12:34:56.789Z", 951_827_696_789),
            ("2024-12-31T23:59:59.999Z", 1_735_689_599_999),
            ("2025-01-01T00:00:00.000Z", 1_735_689_600_000),
            ("9999-12-31T23:59:59.999Z", Timestamp::MAX_UNIX_MILLIS),
        ];
        for (text, millis) in cases {
            assert_eq!(ts(text).unix_millis(), millis, "{text}");
            assert_eq!(
                Timestamp::from_unix_millis(millis)
                    .unwrap()
                    .to_canonical_string(),
                text
            );
        }
    }

    #[test]
    fn canonical_parser_rejects_other_forms() {
        for bad in [
            "2025-01-01T00:00:00Z",
            "2025-01-01T00:00:00.000+00:00",
            "2025-01-01t00:00:00.000Z",
            "2025-01-01T00:00:00.000z",
            "2025-02-29T00:00:00.000Z",
            "2025-13-01T00:00:00.000Z",
            "2025-01-01T24:00:00.000Z",
            "2025-01-01T00:00:60.000Z",
            "2025-01-01T00:00:00.0000",
            "2025-01-01 00:00:00.000Z",
            "+025-01-01T00:00:00.000Z",
        ] {
            assert!(Timestamp::parse_canonical(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rfc3339_parser_converts_offsets_to_utc() {
        let utc = ts("2025-01-01T00:00:00.000Z");
        assert_eq!(
            Timestamp::parse_rfc3339("2025-01-01T00:00:00Z").unwrap(),
            utc
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2025-01-01T02:00:00+02:00").unwrap(),
            utc
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2024-12-31T19:30:00.000000-04:30").unwrap(),
            utc
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2025-01-01t00:00:00.5z")
                .unwrap()
                .unix_millis(),
            utc.unix_millis() + 500
        );
        assert!(Timestamp::parse_rfc3339("2025-01-01T00:00:00.0001Z").is_err());
        assert!(Timestamp::parse_rfc3339("2025-01-01T00:00:00").is_err());
        assert!(Timestamp::parse_rfc3339("1970-01-01T00:00:00+01:00").is_err());
        assert!(Timestamp::parse_rfc3339("2025-01-01T00:00:00.Z").is_err());
    }

    #[test]
    fn ordering_follows_time() {
        assert!(ts("2025-01-01T00:00:00.001Z") > ts("2025-01-01T00:00:00.000Z"));
        assert_eq!(
            ts("2025-01-01T00:00:00.000Z")
                .checked_add_millis(1_500)
                .unwrap(),
            ts("2025-01-01T00:00:01.500Z")
        );
        assert!(Timestamp::from_unix_millis(Timestamp::MAX_UNIX_MILLIS + 1).is_err());
    }

    #[test]
    fn serde_uses_the_canonical_form() {
        let t = ts("2025-06-07T08:09:10.011Z");
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"2025-06-07T08:09:10.011Z\""
        );
        let back: Timestamp = serde_json::from_str("\"2025-06-07T08:09:10.011Z\"").unwrap();
        assert_eq!(back, t);
        assert!(serde_json::from_str::<Timestamp>("\"2025-06-07T08:09:10Z\"").is_err());
    }
}
