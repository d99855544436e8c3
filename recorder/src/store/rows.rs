//! Values in and out of the database, written once for both drivers:
//! [`Value`] is a parameter or a column, [`Row`] a result row, and the
//! functions here map rows to the store's types and the store's writes to
//! statements with their parameters.

use tollgate_wire::quota_math::Amounts;

use super::sql::Stmt;
use super::{
    Caps, FaultRow, LeaseRow, LimitKey, LogMetaRow, LogWrite, SealedSegmentRow, SegmentRow,
    StoreError, StreamRow, UsageCell, to_i64, to_u64,
};
use crate::ingest::{ChainFault, FaultKind};

/// A parameter or a column value. Nulls are typed (PostgreSQL checks a
/// parameter's type against the statement's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(Option<i64>),
    Text(Option<String>),
    Bool(bool),
    /// PostgreSQL only (`= ANY(?1)`).
    TextArray(Vec<String>),
    /// A NULL column of unknown type (SQLite results).
    Null,
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Self::Int(Some(to_i64(v)))
    }
}

impl From<Option<u64>> for Value {
    fn from(v: Option<u64>) -> Self {
        Self::Int(v.map(to_i64))
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Self::Text(Some(v.to_owned()))
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Self::Text(Some(v.clone()))
    }
}

impl From<Option<&String>> for Value {
    fn from(v: Option<&String>) -> Self {
        Self::Text(v.cloned())
    }
}

impl From<Option<&str>> for Value {
    fn from(v: Option<&str>) -> Self {
        Self::Text(v.map(str::to_owned))
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}

/// Parameters, from anything that converts into [`Value`].
macro_rules! params {
    ($($v:expr),* $(,)?) => { vec![$($crate::store::rows::Value::from($v)),*] };
}
pub(crate) use params;

/// One result row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row(pub Vec<Value>);

fn corrupt(i: usize, what: &str, got: &Value) -> StoreError {
    StoreError::Corrupt(format!("column {i}: expected {what}, found {got:?}"))
}

impl Row {
    fn at(&self, i: usize) -> Result<&Value, StoreError> {
        self.0
            .get(i)
            .ok_or_else(|| StoreError::Corrupt(format!("column {i} missing")))
    }

    pub fn opt_i64(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.at(i)? {
            Value::Int(v) => Ok(*v),
            Value::Null | Value::Text(None) => Ok(None),
            other => Err(corrupt(i, "an integer", other)),
        }
    }

    pub fn i64(&self, i: usize) -> Result<i64, StoreError> {
        self.opt_i64(i)?
            .ok_or_else(|| StoreError::Corrupt(format!("column {i} is NULL")))
    }

    pub fn u64(&self, i: usize) -> Result<u64, StoreError> {
        self.i64(i).map(to_u64)
    }

    pub fn opt_u64(&self, i: usize) -> Result<Option<u64>, StoreError> {
        Ok(self.opt_i64(i)?.map(to_u64))
    }

    pub fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self.at(i)? {
            Value::Text(v) => Ok(v.clone()),
            Value::Null | Value::Int(None) => Ok(None),
            other => Err(corrupt(i, "text", other)),
        }
    }

    pub fn text(&self, i: usize) -> Result<String, StoreError> {
        self.opt_text(i)?
            .ok_or_else(|| StoreError::Corrupt(format!("column {i} is NULL")))
    }

    /// A boolean: SQLite stores 0 and 1.
    pub fn bool(&self, i: usize) -> Result<bool, StoreError> {
        match self.at(i)? {
            Value::Bool(b) => Ok(*b),
            Value::Int(Some(v)) => Ok(*v != 0),
            other => Err(corrupt(i, "a boolean", other)),
        }
    }

    /// Three integers from `first`: tokens, requests, cost.
    pub fn amounts(&self, first: usize) -> Result<Amounts, StoreError> {
        Ok(Amounts {
            tokens: self.u64(first)?,
            requests: self.u64(first + 1)?,
            cost_micro_usd: self.u64(first + 2)?,
        })
    }
}

/// A statement with its parameters.
pub type Statement = (Stmt, Vec<Value>);

pub fn meta(r: &Row) -> Result<LogMetaRow, StoreError> {
    Ok(LogMetaRow {
        origin: r.text(0)?,
        size: r.u64(1)?,
        state_json: r.opt_text(2)?,
        last_issued_at_ms: r.opt_u64(3)?,
    })
}

pub fn stream(r: &Row) -> Result<StreamRow, StoreError> {
    Ok(StreamRow {
        stream_id: r.text(0)?,
        key_id: r.text(1)?,
        namespace: r.text(2)?,
        service_account: r.text(3)?,
        pod: r.text(4)?,
        next_seq: r.u64(5)?,
        closed: r.bool(6)?,
        first_record_ms: r.u64(7)?,
        last_record_ms: r.u64(8)?,
    })
}

pub fn lease(r: &Row, lease_id: &str, key: &LimitKey) -> Result<LeaseRow, StoreError> {
    Ok(LeaseRow {
        lease_id: lease_id.to_owned(),
        key: key.clone(),
        window_start: r.u64(0)?,
        granted: r.amounts(1)?,
        consumed: r.amounts(4)?,
        expires_at: r.u64(7)?,
        holder: r.text(8)?,
        returned: r.bool(9)?,
        caps: Caps {
            tokens: r.opt_u64(10)?,
            requests: r.opt_u64(11)?,
            cost_micro_usd: r.opt_u64(12)?,
        },
        shadow: r.bool(13)?,
    })
}

pub fn limit_key(r: &Row) -> Result<LimitKey, StoreError> {
    Ok(LimitKey {
        quota_id: r.text(0)?,
        limit: r.text(1)?,
        window: r.text(2)?,
    })
}

pub fn usage_cell(r: &Row) -> Result<UsageCell, StoreError> {
    Ok(UsageCell {
        namespace: r.text(0)?,
        service_account: r.text(1)?,
        provider: r.text(2)?,
        model: r.text(3)?,
        hour: r.u64(4)?,
        requests: r.u64(5)?,
        input_tokens: r.opt_u64(6)?.unwrap_or(0),
        output_tokens: r.opt_u64(7)?.unwrap_or(0),
        cost_micro_usd: r.opt_u64(8)?.unwrap_or(0),
        cached_tokens: r.opt_u64(9)?.unwrap_or(0),
        cache_write_tokens: r.opt_u64(10)?.unwrap_or(0),
        reasoning_tokens: r.opt_u64(11)?.unwrap_or(0),
        caller: r.text(12)?,
        reason: r.text(13)?,
    })
}

pub fn fault(r: &Row) -> Result<FaultRow, StoreError> {
    let kind = r.text(1)?;
    Ok(FaultRow {
        fault: ChainFault {
            stream_id: r.text(0)?,
            kind: FaultKind::parse(&kind).unwrap_or(FaultKind::BrokenChain),
            seq: r.u64(2)?,
            at_ms: r.u64(4)?,
            message: r.text(6)?,
        },
        namespace: r.text(3)?,
        detected_at_ms: r.u64(5)?,
    })
}

/// A [`SegmentRow`] from [`Stmt::Segment`].
pub fn segment(r: &Row) -> Result<SegmentRow, StoreError> {
    Ok(SegmentRow {
        sealed: sealed_segment(r)?,
        sealed_at_ms: r.u64(5)?,
        log_state_json: r.opt_text(6)?,
        pruned: r.opt_u64(7)?.is_some(),
    })
}

pub fn sealed_segment(r: &Row) -> Result<SealedSegmentRow, StoreError> {
    Ok(SealedSegmentRow {
        index: r.u64(0)?,
        genesis_json: r.text(1)?,
        seal_json: r.text(2)?,
        checkpoint_json: r.text(3)?,
        envelope_count: r.u64(4)?,
    })
}

/// The parameters naming a limit: always `?1`, `?2`, `?3`.
pub fn key_params(key: &LimitKey) -> Vec<Value> {
    params![&key.quota_id, &key.limit, &key.window]
}

/// `key`'s parameters followed by `rest`.
pub fn with_key(key: &LimitKey, rest: Vec<Value>) -> Vec<Value> {
    let mut all = key_params(key);
    all.extend(rest);
    all
}

pub fn put_lease(l: &LeaseRow) -> Statement {
    (
        Stmt::PutLease,
        with_key(
            &l.key,
            params![
                &l.lease_id,
                l.window_start,
                l.granted.tokens,
                l.granted.requests,
                l.granted.cost_micro_usd,
                l.consumed.tokens,
                l.consumed.requests,
                l.consumed.cost_micro_usd,
                l.expires_at,
                &l.holder,
                l.returned,
                l.caps.tokens,
                l.caps.requests,
                l.caps.cost_micro_usd,
                l.shadow,
            ],
        ),
    )
}

/// Everything one log write runs, in order.
pub fn log_write(w: &LogWrite) -> Vec<Statement> {
    let mut out: Vec<Statement> = Vec::with_capacity(w.envelopes.len() + 8);
    if let Some(c) = &w.certificate {
        out.push((
            Stmt::InsertCertificate,
            params![&c.cert_hash, &c.key_id, c.not_before_ms, &c.json],
        ));
    }
    for s in &w.opened {
        out.push((
            Stmt::InsertSegment,
            params![s.index, &s.genesis_json, s.created_at_ms],
        ));
    }
    for e in &w.envelopes {
        let r = e.receipt.as_ref();
        out.push((
            Stmt::InsertEnvelope,
            params![
                e.log_index,
                e.segment_index,
                &e.stream_id,
                e.seq,
                &e.hash,
                &e.key_id,
                r.map(|r| &r.receipt_id),
                r.map(|r| &r.namespace),
                r.map(|r| &r.service_account),
                r.map(|r| &r.pod),
                r.and_then(|r| r.provider.as_ref()),
                r.and_then(|r| r.model.as_ref()),
                r.map(|r| r.started_at_ms),
                r.map(|r| r.completed_at_ms),
                r.map(|r| r.input_tokens),
                r.map(|r| r.output_tokens),
                r.map(|r| r.cached_tokens),
                r.map(|r| r.cost_micro_usd),
                r.map(|r| r.decision),
                r.and_then(|r| r.provider_request_id.as_ref()),
                &e.json,
                r.and_then(|r| r.caller_hash.as_ref()),
                r.map(|r| r.reason.as_str()),
                r.map(|r| r.cache_write_tokens),
                r.map(|r| r.reasoning_tokens),
            ],
        ));
    }
    for s in &w.sealed {
        out.push((
            Stmt::SealSegment,
            params![
                s.index,
                &s.seal_json,
                &s.checkpoint_json,
                s.sealed_at_ms,
                s.envelope_count,
                &s.log_state_json
            ],
        ));
    }
    if let Some(s) = &w.stream {
        out.push((
            Stmt::UpsertStream,
            params![
                &s.stream_id,
                &s.key_id,
                &s.namespace,
                &s.service_account,
                &s.pod,
                s.next_seq,
                s.closed,
                s.first_record_ms,
                s.last_record_ms
            ],
        ));
    }
    for f in &w.faults {
        out.push((
            Stmt::InsertFault,
            params![
                &f.fault.stream_id,
                f.fault.kind.as_str(),
                f.fault.seq,
                &f.namespace,
                f.fault.at_ms,
                f.detected_at_ms,
                &f.fault.message
            ],
        ));
    }
    let m = &w.meta;
    out.push((
        Stmt::UpsertMeta,
        params![
            &m.origin,
            m.size,
            m.state_json.as_ref(),
            m.last_issued_at_ms
        ],
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_read_as_their_types_and_say_what_is_wrong() {
        let row = Row(vec![
            Value::Int(Some(5)),
            Value::Null,
            Value::Text(Some("x".into())),
            Value::Int(Some(1)),
            Value::Bool(false),
        ]);
        assert_eq!(row.u64(0).unwrap(), 5);
        assert_eq!(row.opt_i64(1).unwrap(), None);
        assert_eq!(row.opt_text(1).unwrap(), None);
        assert_eq!(row.text(2).unwrap(), "x");
        assert!(row.bool(3).unwrap(), "SQLite booleans are integers");
        assert!(!row.bool(4).unwrap());
        assert!(matches!(row.i64(1), Err(StoreError::Corrupt(_))));
        assert!(matches!(row.i64(2), Err(StoreError::Corrupt(_))));
        assert!(matches!(row.text(9), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn a_lease_writes_its_key_first_as_every_quota_statement_does() {
        let key = LimitKey {
            quota_id: "ns/q".into(),
            limit: "daily".into(),
            window: "calendar:day".into(),
        };
        let lease = LeaseRow {
            lease_id: "l-1".into(),
            key: key.clone(),
            window_start: 10,
            granted: Amounts::default(),
            consumed: Amounts::default(),
            expires_at: 20,
            holder: "gw".into(),
            returned: false,
            caps: Caps::default(),
            shadow: true,
        };
        let (stmt, params) = put_lease(&lease);
        assert_eq!(stmt, Stmt::PutLease);
        assert_eq!(params[..3], key_params(&key)[..]);
        assert_eq!(params[3], Value::from("l-1"));
        assert_eq!(params.len(), 18);
        assert_eq!(params[17], Value::Bool(true));
    }
}
