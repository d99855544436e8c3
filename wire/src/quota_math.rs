//! Quota arithmetic shared by the gateway's in-process authority and the
//! recorder's: calendar windows (UTC or a named time zone) and amounts.
//! Pure. Prices are in [`crate::pricing`].

use jiff::Timestamp;

use crate::config::{CalendarWindow, CompiledLimit, LimitWindow};
use crate::time_zone::TimeZoneName;

/// Amounts of the three quantities a limit can cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Amounts {
    pub tokens: u64,
    pub requests: u64,
    pub cost_micro_usd: u64,
}

impl Amounts {
    /// Adds `other`, saturating.
    pub fn add(&mut self, other: Amounts) {
        self.tokens = self.tokens.saturating_add(other.tokens);
        self.requests = self.requests.saturating_add(other.requests);
        self.cost_micro_usd = self.cost_micro_usd.saturating_add(other.cost_micro_usd);
    }
    /// Subtracts `other`, saturating at zero.
    pub fn sub(&mut self, other: Amounts) {
        self.tokens = self.tokens.saturating_sub(other.tokens);
        self.requests = self.requests.saturating_sub(other.requests);
        self.cost_micro_usd = self.cost_micro_usd.saturating_sub(other.cost_micro_usd);
    }
    /// `a + b`, saturating.
    pub fn sum(a: Amounts, b: Amounts) -> Amounts {
        let mut s = a;
        s.add(b);
        s
    }
}

/// The longest range one recorder usage query covers (400 days: a year and
/// a month, so a yearly report with its edges fits). The operator reads at
/// most this much of a longer rolling window.
pub const MAX_USAGE_RANGE_SECS: u64 = 400 * 86_400;

/// A limit's window, ready for arithmetic: a calendar window in UTC or in a
/// named zone, or a rolling window of so many seconds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum QuotaWindow {
    Calendar(CalendarWindow, Option<TimeZoneName>),
    Rolling(u64),
}

impl QuotaWindow {
    /// The window `limit` counts in.
    pub fn of(limit: &CompiledLimit) -> Self {
        match limit.window {
            LimitWindow::Calendar(w) => Self::Calendar(w, limit.time_zone.clone()),
            LimitWindow::RollingSeconds(s) => Self::Rolling(s),
        }
    }

    /// A stable name for storage keys: `calendar:day`,
    /// `calendar:day@Europe/Berlin`, `rolling:600`.
    pub fn key(&self) -> String {
        match self {
            Self::Calendar(w, None) => format!("calendar:{}", w.as_str()),
            Self::Calendar(w, Some(zone)) => format!("calendar:{}@{zone}", w.as_str()),
            Self::Rolling(s) => format!("rolling:{s}"),
        }
    }

    /// Parses [`QuotaWindow::key`] back.
    pub fn from_key(key: &str) -> Option<Self> {
        if let Some(seconds) = key.strip_prefix("rolling:") {
            return seconds.parse().ok().map(Self::Rolling);
        }
        let calendar = key.strip_prefix("calendar:")?;
        let (unit, zone) = match calendar.split_once('@') {
            Some((unit, zone)) => (unit, Some(TimeZoneName::parse(zone).ok()?)),
            None => (calendar, None),
        };
        let window = [
            CalendarWindow::Minute,
            CalendarWindow::Hour,
            CalendarWindow::Day,
            CalendarWindow::Month,
        ]
        .into_iter()
        .find(|w| w.as_str() == unit)?;
        Some(Self::Calendar(window, zone))
    }
}

/// `[start, end)` of the calendar window holding `now` (unix seconds), in
/// `zone` or, without one, in UTC. In a zone a day runs from local midnight
/// to the next (23 or 25 hours across a daylight-saving change) and an hour
/// starts at the local top of the hour (half past in UTC+05:30).
pub fn calendar_window_bounds(
    window: CalendarWindow,
    zone: Option<&TimeZoneName>,
    now: u64,
) -> (u64, u64) {
    zone.and_then(|zone| zoned_window_bounds(window, zone, now))
        .unwrap_or_else(|| utc_window_bounds(window, now))
}

fn utc_window_bounds(window: CalendarWindow, now: u64) -> (u64, u64) {
    let span = |len: u64| {
        let start = now - now % len;
        (start, start + len)
    };
    match window {
        CalendarWindow::Minute => span(60),
        CalendarWindow::Hour => span(3_600),
        CalendarWindow::Day => span(86_400),
        CalendarWindow::Month => {
            let (y, m, _) = civil_from_days(now / 86_400);
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            (
                days_from_civil(y, m, 1) * 86_400,
                days_from_civil(ny, nm, 1) * 86_400,
            )
        }
    }
}

/// `None` only past the year 9999, where jiff's range ends (the caller then
/// counts in UTC; no clock reads that).
fn zoned_window_bounds(
    window: CalendarWindow,
    zone: &TimeZoneName,
    now: u64,
) -> Option<(u64, u64)> {
    let at = Timestamp::from_second(i64::try_from(now).ok()?).ok()?;
    let tz = zone.zone();
    let (start, end) = match window {
        CalendarWindow::Minute => local_span_bounds(tz, at, 60)?,
        CalendarWindow::Hour => local_span_bounds(tz, at, 3_600)?,
        CalendarWindow::Day => {
            let start = at.to_zoned(tz.clone()).start_of_day().ok()?;
            let end = start.tomorrow().ok()?.start_of_day().ok()?;
            (start.timestamp().as_second(), end.timestamp().as_second())
        }
        CalendarWindow::Month => {
            let at = at.to_zoned(tz.clone());
            let start = at.first_of_month().ok()?.start_of_day().ok()?;
            let end = start
                .last_of_month()
                .ok()?
                .tomorrow()
                .ok()?
                .start_of_day()
                .ok()?;
            (start.timestamp().as_second(), end.timestamp().as_second())
        }
    };
    Some((u64::try_from(start).ok()?, u64::try_from(end).ok()?))
}

/// A minute or an hour (`len` seconds) of local time around `at`: from the
/// local top of it in the offset in force at `at`, cut at the zone's clock
/// changes on either side. So windows tile time, also where a change is not
/// a whole hour (Lord Howe moves its clocks by 30 minutes, Chatham changes
/// at 02:45): the window around a change ends at it and the next starts at
/// it.
fn local_span_bounds(tz: &jiff::tz::TimeZone, at: Timestamp, len: i64) -> Option<(i64, i64)> {
    let now = at.as_second();
    let local = now.checked_add(i64::from(tz.to_offset(at).seconds()))?;
    let top = now - local.rem_euclid(len);
    let one_second = jiff::SignedDuration::from_secs(1);
    let last_change = tz
        .preceding(at.checked_add(one_second).ok()?)
        .next()
        .map(|t| t.timestamp().as_second());
    let next_change = tz.following(at).next().map(|t| t.timestamp().as_second());
    let start = last_change.map_or(top, |change| top.max(change));
    let end = next_change.map_or(top + len, |change| (top + len).min(change));
    Some((start, end))
}

// Howard Hinnant's civil-date algorithms, for days since 1970-01-01 (no
// dates before the epoch occur here).
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

pub fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_763_700_000; // 2025-11-21T04:40:00Z

    fn utc(window: CalendarWindow, now: u64) -> (u64, u64) {
        calendar_window_bounds(window, None, now)
    }

    fn zoned(window: CalendarWindow, zone: &str, now: u64) -> (u64, u64) {
        calendar_window_bounds(window, Some(&TimeZoneName::parse(zone).unwrap()), now)
    }

    /// Unix seconds of a UTC date and time.
    fn at(y: u64, mo: u64, d: u64, h: u64, mi: u64) -> u64 {
        days_from_civil(y, mo, d) * 86_400 + h * 3_600 + mi * 60
    }

    #[test]
    fn calendar_windows_are_utc_boundaries() {
        assert_eq!(utc(CalendarWindow::Minute, T0 + 5), (T0, T0 + 60));
        let (start, end) = utc(CalendarWindow::Day, T0);
        assert_eq!(start % 86_400, 0);
        assert_eq!(end - start, 86_400);
        // 2024-02-10 lies in February of a leap year: 29 days.
        let feb = days_from_civil(2024, 2, 10) * 86_400 + 123;
        let (s, e) = utc(CalendarWindow::Month, feb);
        assert_eq!(s, days_from_civil(2024, 2, 1) * 86_400);
        assert_eq!((e - s) / 86_400, 29);
        // December rolls into January of the next year.
        let dec = days_from_civil(2025, 12, 31) * 86_400;
        assert_eq!(
            utc(CalendarWindow::Month, dec).1,
            days_from_civil(2026, 1, 1) * 86_400
        );
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }

    #[test]
    fn zoned_days_and_months_start_at_local_midnight() {
        // 2026-03-10 03:00 UTC is 04:00 in Berlin (UTC+1): the Berlin day
        // began at 23:00 UTC the evening before.
        assert_eq!(
            zoned(CalendarWindow::Day, "Europe/Berlin", at(2026, 3, 10, 3, 0)),
            (at(2026, 3, 9, 23, 0), at(2026, 3, 10, 23, 0))
        );
        // At 23:30 UTC on 31 January it is already February in Tokyo (UTC+9).
        assert_eq!(
            zoned(CalendarWindow::Month, "Asia/Tokyo", at(2026, 1, 31, 23, 30)),
            (at(2026, 1, 31, 15, 0), at(2026, 2, 28, 15, 0))
        );
        // New York's month of March 2026 holds the change to daylight time:
        // it starts at UTC-5 and ends at UTC-4.
        assert_eq!(
            zoned(
                CalendarWindow::Month,
                "America/New_York",
                at(2026, 3, 15, 12, 0)
            ),
            (at(2026, 3, 1, 5, 0), at(2026, 4, 1, 4, 0))
        );
        // "UTC" as a zone agrees with no zone.
        assert_eq!(
            zoned(CalendarWindow::Month, "UTC", T0),
            utc(CalendarWindow::Month, T0)
        );
    }

    #[test]
    fn zoned_days_across_daylight_saving_changes_last_23_or_25_hours() {
        // Berlin springs forward on 2026-03-29 and falls back on 2026-10-25.
        let (s, e) = zoned(CalendarWindow::Day, "Europe/Berlin", at(2026, 3, 29, 12, 0));
        assert_eq!((s, e - s), (at(2026, 3, 28, 23, 0), 23 * 3_600));
        let (s, e) = zoned(
            CalendarWindow::Day,
            "Europe/Berlin",
            at(2026, 10, 25, 12, 0),
        );
        assert_eq!((s, e - s), (at(2026, 10, 24, 22, 0), 25 * 3_600));
    }

    #[test]
    fn zoned_hours_follow_the_local_top_of_the_hour() {
        // India is UTC+05:30: its hours start at half past in UTC.
        assert_eq!(
            zoned(CalendarWindow::Hour, "Asia/Kolkata", at(2026, 6, 1, 10, 10)),
            (at(2026, 6, 1, 9, 30), at(2026, 6, 1, 10, 30))
        );
        assert_eq!(
            zoned(
                CalendarWindow::Minute,
                "Asia/Kolkata",
                at(2026, 6, 1, 10, 10) + 7
            ),
            (at(2026, 6, 1, 10, 10), at(2026, 6, 1, 10, 11))
        );
    }

    #[test]
    fn hours_tile_across_clock_changes_that_are_not_whole_hours() {
        // Chatham (UTC+12:45, +13:45 in summer) springs forward at 02:45
        // local on 2026-09-27, 14:00 UTC: the hour before ends there and the
        // next starts there, with no second left uncounted.
        let change = at(2026, 9, 26, 14, 0);
        assert_eq!(
            zoned(CalendarWindow::Hour, "Pacific/Chatham", change - 60),
            (change - 45 * 60, change)
        );
        assert_eq!(
            zoned(CalendarWindow::Hour, "Pacific/Chatham", change + 5 * 60),
            (change, change + 15 * 60)
        );
        // Lord Howe (UTC+10:30, +11 in summer) falls back 30 minutes at
        // 02:00 local on 2026-04-05, 15:00 UTC.
        let back = at(2026, 4, 4, 15, 0);
        let (s, e) = zoned(CalendarWindow::Hour, "Australia/Lord_Howe", back - 60);
        assert_eq!((s, e), (back - 3_600, back));
        let (s, e) = zoned(CalendarWindow::Hour, "Australia/Lord_Howe", back + 60);
        assert_eq!((s, e), (back, back + 30 * 60), "01:30 to 02:00 at +10:30");
    }

    #[test]
    fn window_keys_round_trip() {
        for key in [
            "calendar:minute",
            "calendar:day",
            "calendar:month@Europe/Berlin",
            "calendar:hour@Asia/Kolkata",
            "rolling:600",
        ] {
            assert_eq!(QuotaWindow::from_key(key).unwrap().key(), key);
        }
        for bad in [
            "calendar:week",
            "calendar:day@Mars/Base",
            "rolling:x",
            "day",
        ] {
            assert_eq!(QuotaWindow::from_key(bad), None, "{bad}");
        }
    }

    proptest::proptest! {
        /// Every instant lies in its window, the next window starts where
        /// this one ends, and a zone's day lasts 23 to 25 hours.
        /// The same, within two hours of every clock change of 2026 in
        /// zones that change by whole and by partial hours.
        #[test]
        fn windows_tile_time_around_clock_changes(
            change in 0usize..8,
            delta in -7_200i64..7_200,
            window in proptest::sample::select(vec![
                CalendarWindow::Minute, CalendarWindow::Hour, CalendarWindow::Day,
            ]),
        ) {
            let zones = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Pacific/Chatham"];
            let zone = zones[change / 2];
            let tz = TimeZoneName::parse(zone).unwrap();
            let from = Timestamp::from_second(1_767_225_600).unwrap(); // 2026-01-01
            let t = tz.zone().following(from).nth(change % 2).unwrap().timestamp().as_second();
            let now = u64::try_from(t + delta).unwrap();
            let (start, end) = zoned(window, zone, now);
            proptest::prop_assert!(start <= now && now < end, "{zone} {now}: [{start}, {end})");
            proptest::prop_assert_eq!(zoned(window, zone, end).0, end);
            proptest::prop_assert_eq!(zoned(window, zone, start).0, start);
            let len = end - start;
            match window {
                CalendarWindow::Minute => proptest::prop_assert!((1..=60).contains(&len)),
                CalendarWindow::Hour => proptest::prop_assert!((1..=3_600).contains(&len)),
                _ => proptest::prop_assert!((82_800..=90_000).contains(&len)),
            }
        }

        #[test]
        fn zoned_windows_hold_now_and_tile_time(
            now in 0u64..4_102_444_800,
            zone in proptest::sample::select(vec![
                "Europe/Berlin", "America/New_York", "Asia/Kolkata",
                "Australia/Lord_Howe", "Pacific/Chatham", "America/St_Johns", "UTC",
            ]),
            window in proptest::sample::select(vec![
                CalendarWindow::Minute, CalendarWindow::Hour,
                CalendarWindow::Day, CalendarWindow::Month,
            ]),
        ) {
            let (start, end) = zoned(window, zone, now);
            proptest::prop_assert!(start <= now && now < end);
            let (next_start, _) = zoned(window, zone, end);
            proptest::prop_assert_eq!(next_start, end);
            if window == CalendarWindow::Day {
                proptest::prop_assert!((82_800..=90_000).contains(&(end - start)));
            }
        }
    }
}
