//! Quota arithmetic shared by the gateway's in-process authority and the
//! recorder's: UTC calendar windows, integer pricing and amounts. Pure.

use crate::config::{CalendarWindow, ModelPricing};

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

/// Cost in micro-USD of a usage at per-million prices, rounded up so that a
/// request is never free by rounding.
pub fn price(
    input_tokens: u64,
    output_tokens: u64,
    cached_tokens: u64,
    pricing: &ModelPricing,
) -> u64 {
    let uncached = input_tokens.saturating_sub(cached_tokens);
    let total = u128::from(uncached) * u128::from(pricing.input_per_million_micro_usd)
        + u128::from(cached_tokens.min(input_tokens))
            * u128::from(pricing.cached_input_per_million_micro_usd)
        + u128::from(output_tokens) * u128::from(pricing.output_per_million_micro_usd);
    u64::try_from(total.div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// The longest range one recorder usage query covers (400 days: a year and
/// a month, so a yearly report with its edges fits). The operator reads at
/// most this much of a longer rolling window.
pub const MAX_USAGE_RANGE_SECS: u64 = 400 * 86_400;

/// `[start, end)` of the UTC calendar window holding `now` (unix seconds).
pub fn calendar_window_bounds(window: CalendarWindow, now: u64) -> (u64, u64) {
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

    #[test]
    fn calendar_windows_are_utc_boundaries() {
        assert_eq!(
            calendar_window_bounds(CalendarWindow::Minute, T0 + 5),
            (T0, T0 + 60)
        );
        let (start, end) = calendar_window_bounds(CalendarWindow::Day, T0);
        assert_eq!(start % 86_400, 0);
        assert_eq!(end - start, 86_400);
        // 2024-02-10 lies in February of a leap year: 29 days.
        let feb = days_from_civil(2024, 2, 10) * 86_400 + 123;
        let (s, e) = calendar_window_bounds(CalendarWindow::Month, feb);
        assert_eq!(s, days_from_civil(2024, 2, 1) * 86_400);
        assert_eq!((e - s) / 86_400, 29);
        // December rolls into January of the next year.
        let dec = days_from_civil(2025, 12, 31) * 86_400;
        assert_eq!(
            calendar_window_bounds(CalendarWindow::Month, dec).1,
            days_from_civil(2026, 1, 1) * 86_400
        );
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }

    #[test]
    fn prices_round_up_and_discount_cached_tokens() {
        let p = ModelPricing {
            input_per_million_micro_usd: 150_000,
            output_per_million_micro_usd: 600_000,
            cached_input_per_million_micro_usd: 75_000,
        };
        assert_eq!(price(1_000_000, 0, 0, &p), 150_000);
        assert_eq!(price(1, 0, 0, &p), 1, "never free by rounding");
        assert_eq!(
            price(1_000_000, 1_000_000, 500_000, &p),
            75_000 + 37_500 + 600_000
        );
        assert_eq!(price(0, 0, 0, &p), 0);
    }
}
