//! The recorder's log: the evidence [`LogWriter`] plus what it needs to seal on
//! count or age and to resume an open segment after a restart.
//!
//! Segments open lazily with their first envelope (so no segment is ever empty)
//! and seal when they hold `max_envelopes` or their genesis is `max_age` old.
//! Checkpoint and genesis times never go backwards, even if the wall clock does.
//! [`LogCore`] is plain data: callers work on a clone and keep it only once the
//! storage transaction that records the same changes has committed.

use tollgate_evidence::{
    Envelope, Genesis, Identifier, LogError, LogState, LogWriter, Seal, SignedCheckpoint,
    SigningKey, Timestamp,
};

/// When to seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealPolicy {
    /// Seal once the open segment holds this many envelopes.
    pub max_envelopes: u64,
    /// Seal once the open segment is this old (milliseconds).
    pub max_age_ms: u64,
}

/// The open segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSegment {
    /// Its genesis.
    pub genesis: Genesis,
    /// Envelopes in it.
    pub count: u64,
}

/// A segment sealed by an append or a timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSegment {
    /// The seal.
    pub seal: Seal,
    /// The checkpoint issued with it.
    pub checkpoint: SignedCheckpoint,
    /// The log state after it, to persist.
    pub state: LogState,
}

/// Where an appended envelope went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Log position (leaf index).
    pub log_index: u64,
    /// Segment index.
    pub segment_index: u64,
}

/// What an append did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    /// One position per envelope, in order.
    pub positions: Vec<Position>,
    /// Segments opened.
    pub opened: Vec<Genesis>,
    /// Segments sealed.
    pub sealed: Vec<SealedSegment>,
}

/// The log writer and its open segment.
#[derive(Debug, Clone)]
pub struct LogCore {
    writer: LogWriter,
    open: Option<OpenSegment>,
    /// The latest time written into a genesis, seal or checkpoint.
    high_water: Timestamp,
}

impl LogCore {
    /// An empty log.
    pub fn new(origin: Identifier) -> Self {
        Self {
            writer: LogWriter::new(origin),
            open: None,
            high_water: Timestamp::UNIX_EPOCH,
        }
    }

    /// Rebuilds the log from storage: the state after the last seal (or none), the
    /// last checkpoint's time, and the open segment with its envelopes in order.
    /// The reopened genesis must equal the stored one.
    pub fn restore(
        origin: Identifier,
        state: Option<LogState>,
        last_issued_at: Option<Timestamp>,
        open: Option<(Genesis, Vec<Envelope>)>,
    ) -> Result<Self, LogError> {
        let mut writer = match state {
            Some(state) => LogWriter::resume(state)?,
            None => LogWriter::new(origin),
        };
        let mut high_water = last_issued_at.unwrap_or(Timestamp::UNIX_EPOCH);
        let open = match open {
            None => None,
            Some((genesis, envelopes)) => {
                let reopened = writer.open_segment(genesis.created_at)?;
                if reopened != genesis {
                    return Err(LogError::InconsistentState);
                }
                for envelope in &envelopes {
                    writer.append(envelope)?;
                }
                high_water = high_water.max(genesis.created_at);
                Some(OpenSegment {
                    genesis,
                    count: envelopes.len() as u64,
                })
            }
        };
        Ok(Self {
            writer,
            open,
            high_water,
        })
    }

    /// Envelopes in the log, including the open segment.
    pub fn size(&self) -> u64 {
        self.writer.size()
    }

    /// The open segment, if any.
    pub fn open_segment(&self) -> Option<&OpenSegment> {
        self.open.as_ref()
    }

    fn stamp(&mut self, now: Timestamp) -> Timestamp {
        self.high_water = self.high_water.max(now);
        self.high_water
    }

    fn seal(&mut self, now: Timestamp, key: &SigningKey) -> Result<SealedSegment, LogError> {
        let at = self.stamp(now);
        let outcome = self.writer.seal(at, key)?;
        self.open = None;
        let state = self.writer.state().ok_or(LogError::InconsistentState)?;
        Ok(SealedSegment {
            seal: outcome.seal,
            checkpoint: outcome.checkpoint,
            state,
        })
    }

    /// Appends verified envelopes, opening and sealing segments as the policy says.
    pub fn append(
        &mut self,
        envelopes: &[Envelope],
        policy: SealPolicy,
        now: Timestamp,
        key: &SigningKey,
    ) -> Result<AppendOutcome, LogError> {
        let mut outcome = AppendOutcome::default();
        for envelope in envelopes {
            if self.open.is_none() {
                let at = self.stamp(now);
                let genesis = self.writer.open_segment(at)?;
                outcome.opened.push(genesis.clone());
                self.open = Some(OpenSegment { genesis, count: 0 });
            }
            let log_index = self.writer.append(envelope)?;
            let open = self.open.as_mut().ok_or(LogError::NoSegmentOpen)?;
            open.count += 1;
            outcome.positions.push(Position {
                log_index,
                segment_index: open.genesis.segment_index.get(),
            });
            if open.count >= policy.max_envelopes {
                outcome.sealed.push(self.seal(now, key)?);
            }
        }
        Ok(outcome)
    }

    /// Seals the open segment if it is `max_age` old.
    pub fn seal_if_due(
        &mut self,
        policy: SealPolicy,
        now: Timestamp,
        key: &SigningKey,
    ) -> Result<Option<SealedSegment>, LogError> {
        let due = self.open.as_ref().is_some_and(|open| {
            now.unix_millis()
                >= open
                    .genesis
                    .created_at
                    .unix_millis()
                    .saturating_add(policy.max_age_ms)
        });
        if due {
            self.seal(now, key).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Seals the open segment now, if it holds anything (before an export).
    pub fn seal_now(
        &mut self,
        now: Timestamp,
        key: &SigningKey,
    ) -> Result<Option<SealedSegment>, LogError> {
        if self.open.is_some() {
            self.seal(now, key).map(Some)
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_test_support::fixtures::{Gateway, T0_MS};

    fn ts(ms: u64) -> Timestamp {
        Timestamp::from_unix_millis(ms).unwrap()
    }

    #[test]
    fn seals_on_count_and_age_and_restores_the_open_segment() {
        let gw = Gateway::new(1).unwrap();
        let envelopes = gw.stream(7, true).unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        let policy = SealPolicy {
            max_envelopes: 3,
            max_age_ms: 10_000,
        };
        let origin = Identifier::new("test/origin").unwrap();
        let mut log = LogCore::new(origin.clone());
        let out = log
            .append(&envelopes[..5], policy, ts(T0_MS), &key)
            .unwrap();
        assert_eq!(out.opened.len(), 2);
        assert_eq!(out.sealed.len(), 1);
        assert_eq!(
            out.positions[4],
            Position {
                log_index: 4,
                segment_index: 1
            }
        );
        // Restore from what storage would hold, then continue identically.
        let restored = LogCore::restore(
            origin,
            Some(out.sealed[0].state.clone()),
            Some(out.sealed[0].checkpoint.checkpoint.issued_at),
            Some((out.opened[1].clone(), envelopes[3..5].to_vec())),
        )
        .unwrap();
        let mut a = log.clone();
        let mut b = restored;
        assert_eq!(a.size(), b.size());
        assert!(
            a.seal_if_due(policy, ts(T0_MS + 9_999), &key)
                .unwrap()
                .is_none()
        );
        let sa = a
            .seal_if_due(policy, ts(T0_MS + 10_000), &key)
            .unwrap()
            .unwrap();
        let sb = b
            .seal_if_due(policy, ts(T0_MS + 10_000), &key)
            .unwrap()
            .unwrap();
        assert_eq!(sa, sb);
        assert_eq!(sa.checkpoint.checkpoint.size.get(), 5);
    }

    #[test]
    fn times_never_go_backwards() {
        let gw = Gateway::new(1).unwrap();
        let envelopes = gw.stream(2, false).unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        let policy = SealPolicy {
            max_envelopes: 1,
            max_age_ms: 10_000,
        };
        let mut log = LogCore::new(Identifier::new("o").unwrap());
        let first = log
            .append(&envelopes[..1], policy, ts(T0_MS), &key)
            .unwrap();
        let second = log
            .append(&envelopes[1..], policy, ts(T0_MS - 5_000), &key)
            .unwrap();
        assert!(
            second.sealed[0].checkpoint.checkpoint.issued_at
                >= first.sealed[0].checkpoint.checkpoint.issued_at
        );
    }
}
