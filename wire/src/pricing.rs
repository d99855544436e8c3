//! Model prices and what a response costs under them. Pure.
//!
//! A model's [`ModelPricing`] is its price table: base prices per million
//! tokens, optional long-context prices above an input size, and optional
//! prices per service tier. Money is integer micro-USD; a cost is rounded up
//! once, so a request is never free by rounding. Each table is identified by
//! the SHA-256 of its canonical JSON ([`PriceTable`]), which every receipt
//! records, so a cost can always be traced to the prices that made it.

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tollgate_evidence::{Sha256Hex, sha256_canonical};

/// Prices in micro-USD (1e-6 USD) per million tokens.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct TokenPrices {
    /// Price of one million input tokens, in micro-USD.
    #[serde(rename = "inputPerMillionMicroUSD", default)]
    pub input_per_million_micro_usd: u64,
    /// Price of one million output tokens (reasoning tokens included), in micro-USD.
    #[serde(rename = "outputPerMillionMicroUSD", default)]
    pub output_per_million_micro_usd: u64,
    /// Price of one million input tokens read from the provider's prompt
    /// cache, in micro-USD.
    #[serde(rename = "cachedInputPerMillionMicroUSD", default)]
    pub cached_input_per_million_micro_usd: u64,
    /// Price of one million input tokens written to a 5-minute prompt cache
    /// (Anthropic's default cache), in micro-USD. Absent: 1.25 times the
    /// input price, Anthropic's rate for every model.
    #[serde(
        rename = "cacheWrite5mPerMillionMicroUSD",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cache_write_5m_per_million_micro_usd: Option<u64>,
    /// Price of one million input tokens written to a 1-hour prompt cache, in
    /// micro-USD. Absent: twice the input price, Anthropic's rate.
    #[serde(
        rename = "cacheWrite1hPerMillionMicroUSD",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cache_write_1h_per_million_micro_usd: Option<u64>,
}

/// Prices that replace the others for a request whose input passes a size.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct LongContextPricing {
    /// A request with more input tokens than this (cache reads and writes
    /// included) is priced wholly at these prices, as providers bill it.
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    pub above_input_tokens: u64,
    #[serde(flatten)]
    pub prices: TokenPrices,
}

/// The prices of one service tier, such as OpenAI's `flex` and `priority`
/// or Anthropic's `priority`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ServiceTierPricing {
    /// The tier's name as the provider reports it in a response's
    /// `service_tier`.
    #[cfg_attr(
        feature = "schema",
        schemars(length(min = 1, max = 64), regex(pattern = r"^[a-z][a-z0-9_.-]*$"))
    )]
    pub name: String,
    #[serde(flatten)]
    pub prices: TokenPrices,
    /// The tier's long-context prices, if it has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_context: Option<LongContextPricing>,
}

/// A model's price table.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ModelPricing {
    /// The base prices: the provider's default tier, below any long-context
    /// size.
    #[serde(flatten)]
    pub base: TokenPrices,
    /// Prices for requests above an input size (for example 200,000 tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_context: Option<LongContextPricing>,
    /// Prices per service tier. A response in a tier not listed here (or
    /// naming none) is priced at the base prices; its receipt records the
    /// tier the provider reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "schema", schemars(length(max = 8)))]
    pub service_tiers: Vec<ServiceTierPricing>,
}

/// The token counts of one response that a price applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BilledTokens {
    /// Every input token: uncached, read from the cache and written to it.
    pub input: u64,
    pub output: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read: u64,
    /// Input tokens written to a 5-minute prompt cache.
    pub cache_write_5m: u64,
    /// Input tokens written to a 1-hour prompt cache.
    pub cache_write_1h: u64,
}

/// Which prices of a table applied to a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriceChoice<'a> {
    pub prices: &'a TokenPrices,
    /// The service tier whose prices applied; `None` for the base prices.
    pub service_tier: Option<&'a str>,
    /// Whether the long-context prices applied.
    pub long_context: bool,
}

impl ModelPricing {
    /// The prices for a response reported in `service_tier` with
    /// `input_tokens` of input (cache reads and writes included).
    pub fn choose(&self, service_tier: Option<&str>, input_tokens: u64) -> PriceChoice<'_> {
        let tier = service_tier.and_then(|name| self.service_tiers.iter().find(|t| t.name == name));
        let (prices, long_context, tier_name) = match tier {
            Some(t) => (&t.prices, t.long_context.as_ref(), Some(t.name.as_str())),
            None => (&self.base, self.long_context.as_ref(), None),
        };
        match long_context.filter(|l| input_tokens > l.above_input_tokens) {
            Some(long) => PriceChoice {
                prices: &long.prices,
                service_tier: tier_name,
                long_context: true,
            },
            None => PriceChoice {
                prices,
                service_tier: tier_name,
                long_context: false,
            },
        }
    }
}

impl BilledTokens {
    /// The counts made consistent: cache reads, then 5-minute, then 1-hour
    /// writes are taken out of `input`, each at most what is left. Prices
    /// and receipts both use these, so a receipt's counts always explain its
    /// cost.
    pub fn clamped(self) -> Self {
        let mut left = self.input;
        let mut take = |n: u64| {
            let taken = n.min(left);
            left -= taken;
            taken
        };
        Self {
            input: self.input,
            output: self.output,
            cache_read: take(self.cache_read),
            cache_write_5m: take(self.cache_write_5m),
            cache_write_1h: take(self.cache_write_1h),
        }
    }
}

impl TokenPrices {
    /// The cost of `tokens` in micro-USD, rounded up. Cache reads and writes
    /// (as [`BilledTokens::clamped`] leaves them) are priced at their own
    /// rates; the rest of the input as input.
    pub fn cost(&self, tokens: &BilledTokens) -> u64 {
        let input = self.input_per_million_micro_usd;
        let write_5m = self
            .cache_write_5m_per_million_micro_usd
            .unwrap_or_else(|| input.saturating_mul(5).div_ceil(4));
        let write_1h = self
            .cache_write_1h_per_million_micro_usd
            .unwrap_or_else(|| input.saturating_mul(2));
        let t = tokens.clamped();
        let plain = t.input - t.cache_read - t.cache_write_5m - t.cache_write_1h;
        let total = u128::from(plain) * u128::from(input)
            + u128::from(t.cache_read) * u128::from(self.cached_input_per_million_micro_usd)
            + u128::from(t.cache_write_5m) * u128::from(write_5m)
            + u128::from(t.cache_write_1h) * u128::from(write_1h)
            + u128::from(tokens.output) * u128::from(self.output_per_million_micro_usd);
        u64::try_from(total.div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }
}

/// A model's price table with its identity: the SHA-256 of the table's
/// canonical JSON (RFC 8785), computed once when config is parsed. Serialises
/// as the table alone; cloning shares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriceTable {
    pricing: Arc<ModelPricing>,
    sha256: Sha256Hex,
}

impl PriceTable {
    pub fn new(pricing: ModelPricing) -> Self {
        let sha256 = table_sha256(&pricing);
        Self {
            pricing: Arc::new(pricing),
            sha256,
        }
    }

    pub fn pricing(&self) -> &ModelPricing {
        &self.pricing
    }

    /// SHA-256 of the table's canonical JSON.
    pub fn sha256(&self) -> &Sha256Hex {
        &self.sha256
    }
}

impl Default for PriceTable {
    fn default() -> Self {
        Self::new(ModelPricing::default())
    }
}

/// SHA-256 of `pricing`'s canonical JSON: what `kubectl tollgate` prints for
/// a table and receipts record.
pub fn table_sha256(pricing: &ModelPricing) -> Sha256Hex {
    // Integers, strings, objects and arrays only: always canonicalisable.
    sha256_canonical(pricing).unwrap_or_else(|_| tollgate_evidence::sha256(b""))
}

impl Serialize for PriceTable {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.pricing.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PriceTable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        ModelPricing::deserialize(deserializer).map(Self::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prices(input: u64, output: u64, cached: u64) -> TokenPrices {
        TokenPrices {
            input_per_million_micro_usd: input,
            output_per_million_micro_usd: output,
            cached_input_per_million_micro_usd: cached,
            ..TokenPrices::default()
        }
    }

    fn tokens(input: u64, output: u64, cache_read: u64) -> BilledTokens {
        BilledTokens {
            input,
            output,
            cache_read,
            ..BilledTokens::default()
        }
    }

    #[test]
    fn prices_round_up_and_discount_cached_tokens() {
        let p = prices(150_000, 600_000, 75_000);
        assert_eq!(p.cost(&tokens(1_000_000, 0, 0)), 150_000);
        assert_eq!(p.cost(&tokens(1, 0, 0)), 1, "never free by rounding");
        assert_eq!(
            p.cost(&tokens(1_000_000, 1_000_000, 500_000)),
            75_000 + 37_500 + 600_000
        );
        assert_eq!(p.cost(&tokens(0, 0, 0)), 0);
    }

    #[test]
    fn cache_writes_cost_their_own_rates_or_anthropics_multipliers() {
        // Claude Sonnet 4.5: $3 input, $0.30 cache reads, $3.75 5-minute
        // writes, $6 1-hour writes, $15 output per million.
        let sonnet = prices(3_000_000, 15_000_000, 300_000);
        let t = BilledTokens {
            input: 1_000_000 + 100_000 + 200_000 + 300_000,
            output: 0,
            cache_read: 100_000,
            cache_write_5m: 200_000,
            cache_write_1h: 300_000,
        };
        let expected = 3_000_000 + 30_000 + 750_000 + 1_800_000;
        assert_eq!(sonnet.cost(&t), expected, "defaults: 1.25x and 2x input");
        let explicit = TokenPrices {
            cache_write_5m_per_million_micro_usd: Some(4_000_000),
            cache_write_1h_per_million_micro_usd: Some(5_000_000),
            ..sonnet
        };
        assert_eq!(explicit.cost(&t), 3_000_000 + 30_000 + 800_000 + 1_500_000);
        // Reported reads and writes beyond the input never price tokens twice.
        let over = BilledTokens {
            input: 10,
            cache_read: 8,
            cache_write_5m: 8,
            ..BilledTokens::default()
        };
        assert_eq!(
            sonnet.cost(&over),
            (8 * 300_000 + 2 * 3_750_000_u64).div_ceil(1_000_000)
        );
    }

    fn table() -> ModelPricing {
        ModelPricing {
            base: prices(3_000_000, 15_000_000, 300_000),
            long_context: Some(LongContextPricing {
                above_input_tokens: 200_000,
                prices: prices(6_000_000, 22_500_000, 600_000),
            }),
            service_tiers: vec![
                ServiceTierPricing {
                    name: "flex".into(),
                    prices: prices(1_500_000, 7_500_000, 150_000),
                    long_context: None,
                },
                ServiceTierPricing {
                    name: "priority".into(),
                    prices: prices(5_000_000, 25_000_000, 500_000),
                    long_context: Some(LongContextPricing {
                        above_input_tokens: 200_000,
                        prices: prices(10_000_000, 37_500_000, 1_000_000),
                    }),
                },
            ],
        }
    }

    #[test]
    fn the_tier_and_the_input_size_choose_the_prices() {
        let t = table();
        let base = t.choose(None, 200_000);
        assert_eq!(
            (base.prices, base.service_tier, base.long_context),
            (&t.base, None, false)
        );
        let long = t.choose(Some("default"), 200_001);
        assert!(
            long.long_context && long.service_tier.is_none(),
            "unknown tier: base table"
        );
        assert_eq!(long.prices.input_per_million_micro_usd, 6_000_000);
        let flex = t.choose(Some("flex"), 500_000);
        assert_eq!(
            (
                flex.prices.input_per_million_micro_usd,
                flex.service_tier,
                flex.long_context
            ),
            (1_500_000, Some("flex"), false),
            "a tier without long-context prices keeps its own"
        );
        let priority = t.choose(Some("priority"), 300_000);
        assert_eq!(
            (
                priority.prices.input_per_million_micro_usd,
                priority.long_context
            ),
            (10_000_000, true)
        );
    }

    #[test]
    fn the_table_hash_is_of_its_canonical_json_and_follows_every_price() {
        let t = PriceTable::new(table());
        let json = serde_json::to_string(&t).unwrap();
        let back: PriceTable = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        assert_eq!(
            t.sha256(),
            &sha256_canonical(&serde_json::from_str::<serde_json::Value>(&json).unwrap()).unwrap()
        );
        let mut changed = table();
        changed.service_tiers[1]
            .long_context
            .as_mut()
            .unwrap()
            .prices
            .output_per_million_micro_usd += 1;
        assert_ne!(PriceTable::new(changed).sha256(), t.sha256());
        // Old tables (three prices) read as before.
        let old: ModelPricing = serde_json::from_str(
            r#"{"inputPerMillionMicroUSD":1,"outputPerMillionMicroUSD":2,"cachedInputPerMillionMicroUSD":3}"#,
        )
        .unwrap();
        assert_eq!(old.base, prices(1, 2, 3));
    }

    proptest::proptest! {
        /// Moving input tokens into the cheaper cache-read class never costs
        /// more, and more output never costs less.
        #[test]
        fn costs_are_monotonic(
            input in 0u64..10_000_000, output in 0u64..10_000_000,
            read in 0u64..10_000_000, extra in 0u64..1_000_000,
        ) {
            let p = prices(3_000_000, 15_000_000, 300_000);
            let read = read.min(input);
            proptest::prop_assert!(p.cost(&tokens(input, output, read)) <= p.cost(&tokens(input, output, 0)));
            proptest::prop_assert!(p.cost(&tokens(input, output + extra, read)) >= p.cost(&tokens(input, output, read)));
        }
    }
}
