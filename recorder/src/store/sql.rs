//! The storage's SQL, written once: the schema, its migrations and every
//! statement, in one dialect-neutral text that [`Dialect::render`] turns into
//! SQLite or PostgreSQL. Statements use `?1`, `?2`… placeholders and a few
//! tokens for what really differs between the two:
//!
//! | token | SQLite | PostgreSQL |
//! |---|---|---|
//! | `{BIGINT}` | `INTEGER` (a rowid alias as a primary key) | `BIGINT` |
//! | `{BOOL}` | `INTEGER` | `BOOLEAN` |
//! | `{FALSE}` | `0` | `false` |
//! | `{GREATEST}` | `MAX` (the scalar, two arguments) | `GREATEST` |
//! | `{C}` | nothing (the default collation is bytewise) | `COLLATE "C"` |
//! | `{FOR_UPDATE}` | nothing (`BEGIN IMMEDIATE` holds the write lock) | `FOR UPDATE` |
//! | `{BODY_REASON}` | the receipt's verdict reason read from `body` (`json_extract`) | the same (`jsonb #>>`) |
//!
//! Placeholders become `$1`, `$2`… for PostgreSQL. Transactions and locks
//! (`BEGIN IMMEDIATE`; advisory locks) are the drivers'.

use std::sync::OnceLock;

/// The two SQL dialects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// `text` in this dialect.
    pub fn render(self, text: &str) -> String {
        let tokens: [(&str, &str); 7] = match self {
            Self::Sqlite => [
                (
                    "{BODY_REASON}",
                    "json_extract(body, '$.record.receipt.body.verdict.reason')",
                ),
                ("{BIGINT}", "INTEGER"),
                ("{BOOL}", "INTEGER"),
                ("{FALSE}", "0"),
                ("{GREATEST}", "MAX"),
                (" {C}", ""),
                (" {FOR_UPDATE}", ""),
            ],
            Self::Postgres => [
                (
                    "{BODY_REASON}",
                    "(CAST(body AS jsonb) -> 'record' -> 'receipt' -> 'body' -> 'verdict' ->> 'reason')",
                ),
                ("{BIGINT}", "BIGINT"),
                ("{BOOL}", "BOOLEAN"),
                ("{FALSE}", "false"),
                ("{GREATEST}", "GREATEST"),
                ("{C}", "COLLATE \"C\""),
                ("{FOR_UPDATE}", "FOR UPDATE"),
            ],
        };
        let mut out = text.to_owned();
        for (token, value) in tokens {
            out = out.replace(token, value);
        }
        match self {
            Self::Sqlite => out,
            Self::Postgres => dollar_placeholders(&out),
        }
    }

    /// The rendered text of `stmt` (rendered once per dialect).
    pub fn sql(self, stmt: Stmt) -> &'static str {
        static SQLITE: OnceLock<Vec<String>> = OnceLock::new();
        static POSTGRES: OnceLock<Vec<String>> = OnceLock::new();
        let table = match self {
            Self::Sqlite => &SQLITE,
            Self::Postgres => &POSTGRES,
        };
        let rendered =
            table.get_or_init(|| Stmt::ALL.iter().map(|s| self.render(&s.text())).collect());
        rendered.get(stmt as usize).map_or("", String::as_str)
    }
}

/// `?N` → `$N`.
fn dollar_placeholders(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

/// The schema, both dialects. `CREATE … IF NOT EXISTS` throughout, so it runs
/// at every start after [`SQLITE_MIGRATIONS`].
pub const SCHEMA: &str = r"
CREATE TABLE IF NOT EXISTS log_meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    origin TEXT NOT NULL,
    size {BIGINT} NOT NULL,
    state TEXT,
    last_issued_at_ms {BIGINT}
);
CREATE TABLE IF NOT EXISTS segments (
    segment_index {BIGINT} PRIMARY KEY,
    genesis TEXT NOT NULL,
    created_at_ms {BIGINT} NOT NULL,
    seal TEXT,
    checkpoint TEXT,
    sealed_at_ms {BIGINT},
    envelope_count {BIGINT},
    log_state TEXT,
    pruned_at_ms {BIGINT},
    pruned_hashes TEXT
);
CREATE TABLE IF NOT EXISTS sink_progress (
    sink TEXT PRIMARY KEY,
    size {BIGINT} NOT NULL,
    delivered_at_ms {BIGINT} NOT NULL
);
-- Each gateway's latest report of its provider keys' health: one row per
-- reporter (namespace/pod), provider and key, replaced by the next report.
CREATE TABLE IF NOT EXISTS key_reports (
    reporter TEXT NOT NULL,
    provider TEXT NOT NULL,
    key_index {BIGINT} NOT NULL,
    refused {BOOL} NOT NULL,
    since_ms {BIGINT},
    last_status {BIGINT},
    reported_at_ms {BIGINT} NOT NULL,
    PRIMARY KEY (reporter, provider, key_index)
);
CREATE INDEX IF NOT EXISTS key_reports_age ON key_reports (reported_at_ms);
CREATE TABLE IF NOT EXISTS envelopes (
    log_index {BIGINT} PRIMARY KEY,
    segment_index {BIGINT} NOT NULL,
    stream_id TEXT NOT NULL,
    seq {BIGINT} NOT NULL,
    hash TEXT NOT NULL,
    key_id TEXT NOT NULL,
    receipt_id TEXT UNIQUE,
    namespace TEXT,
    service_account TEXT,
    pod TEXT,
    provider TEXT,
    model TEXT,
    started_at_ms {BIGINT},
    completed_at_ms {BIGINT},
    input_tokens {BIGINT},
    output_tokens {BIGINT},
    cached_tokens {BIGINT},
    cost_micro_usd {BIGINT},
    decision TEXT,
    provider_request_id TEXT,
    body TEXT NOT NULL,
    caller_hash TEXT,
    reason TEXT,
    cache_write_tokens {BIGINT},
    reasoning_tokens {BIGINT},
    UNIQUE (stream_id, seq)
);
CREATE INDEX IF NOT EXISTS envelopes_started ON envelopes (started_at_ms);
CREATE INDEX IF NOT EXISTS envelopes_segment ON envelopes (segment_index);
CREATE TABLE IF NOT EXISTS streams (
    stream_id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    namespace TEXT NOT NULL,
    service_account TEXT NOT NULL,
    pod TEXT NOT NULL,
    next_seq {BIGINT} NOT NULL,
    closed {BOOL} NOT NULL,
    first_record_ms {BIGINT} NOT NULL,
    last_record_ms {BIGINT} NOT NULL
);
CREATE TABLE IF NOT EXISTS certificates (
    cert_hash TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    not_before_ms {BIGINT} NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS certificates_key ON certificates (key_id);
CREATE TABLE IF NOT EXISTS chain_faults (
    stream_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    seq {BIGINT} NOT NULL,
    namespace TEXT NOT NULL,
    at_ms {BIGINT} NOT NULL,
    detected_at_ms {BIGINT} NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (stream_id, kind, seq)
);
CREATE TABLE IF NOT EXISTS quota_limits (
    quota_id TEXT NOT NULL,
    limit_name TEXT NOT NULL,
    window_key TEXT NOT NULL,
    PRIMARY KEY (quota_id, limit_name, window_key)
);
CREATE TABLE IF NOT EXISTS quota_usage (
    quota_id TEXT NOT NULL,
    limit_name TEXT NOT NULL,
    window_key TEXT NOT NULL,
    bucket {BIGINT} NOT NULL,
    tokens {BIGINT} NOT NULL,
    requests {BIGINT} NOT NULL,
    cost {BIGINT} NOT NULL,
    PRIMARY KEY (quota_id, limit_name, window_key, bucket)
);
CREATE TABLE IF NOT EXISTS quota_leases (
    lease_id TEXT PRIMARY KEY,
    quota_id TEXT NOT NULL,
    limit_name TEXT NOT NULL,
    window_key TEXT NOT NULL,
    window_start {BIGINT} NOT NULL,
    granted_tokens {BIGINT} NOT NULL,
    granted_requests {BIGINT} NOT NULL,
    granted_cost {BIGINT} NOT NULL,
    consumed_tokens {BIGINT} NOT NULL,
    consumed_requests {BIGINT} NOT NULL,
    consumed_cost {BIGINT} NOT NULL,
    expires_at {BIGINT} NOT NULL,
    holder TEXT NOT NULL,
    returned {BOOL} NOT NULL,
    cap_tokens {BIGINT},
    cap_requests {BIGINT},
    cap_cost {BIGINT},
    shadow {BOOL} NOT NULL
);
CREATE INDEX IF NOT EXISTS quota_leases_key ON quota_leases (quota_id, limit_name, window_key, window_start);
";

/// The SQLite schema version this code writes (`PRAGMA user_version`).
pub const SQLITE_VERSION: i64 = 6;

/// SQLite migrations: `(from version, statements)`, applied in order to a
/// database at that version. Version 0 is a new file (no migration: the
/// schema creates everything).
pub const SQLITE_MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        // Version 1 named the window column `window`, a reserved word in
        // PostgreSQL; both backends now call it `window_key`.
        "ALTER TABLE quota_limits RENAME COLUMN window TO window_key;
     ALTER TABLE quota_usage RENAME COLUMN window TO window_key;
     ALTER TABLE quota_leases RENAME COLUMN window TO window_key;",
    ),
    (
        2,
        // Version 3 stores receipts' caller_hash for usage by caller.
        "ALTER TABLE envelopes ADD COLUMN caller_hash TEXT;",
    ),
    (
        3,
        // Version 4 keeps each segment's log state (for range exports), and
        // marks segments retention pruned with their envelope hashes.
        "ALTER TABLE segments ADD COLUMN log_state TEXT;
         ALTER TABLE segments ADD COLUMN pruned_at_ms BIGINT;
         ALTER TABLE segments ADD COLUMN pruned_hashes TEXT;",
    ),
    (
        4,
        // Version 5 keeps each receipt's verdict reason, for usage by reason
        // (refusals); older receipts get theirs from their stored body.
        "ALTER TABLE envelopes ADD COLUMN reason TEXT;
         UPDATE envelopes SET reason = json_extract(body, '$.record.receipt.body.verdict.reason')
             WHERE receipt_id IS NOT NULL;",
    ),
    (
        5,
        // Version 6 keeps receipts' cache writes and reasoning tokens for
        // usage; the usage index is rebuilt to cover them (LATE_INDEXES).
        // Older receipts have neither.
        "ALTER TABLE envelopes ADD COLUMN cache_write_tokens BIGINT;
         ALTER TABLE envelopes ADD COLUMN reasoning_tokens BIGINT;
         DROP INDEX IF EXISTS envelopes_usage;",
    ),
];

/// Indexes over columns an older database gains only by its migrations or
/// upgrades: created after them, at every start (`IF NOT EXISTS`).
pub const LATE_INDEXES: &str = "
-- Every column a usage query reads, so it never reads the receipts' bodies
-- (kilobytes each): an index-only scan of the range. Only receipts have a
-- start time, so the index holds receipts only.
CREATE INDEX IF NOT EXISTS envelopes_usage2 ON envelopes (started_at_ms, namespace,
    service_account, provider, model, decision, reason, caller_hash, input_tokens,
    output_tokens, cost_micro_usd, cached_tokens, cache_write_tokens, reasoning_tokens,
    log_index) WHERE started_at_ms IS NOT NULL;
";

/// What PostgreSQL runs after [`SCHEMA`] at every start to bring an older
/// database up to date (each statement is idempotent).
/// Each checks the catalog first, so a current database takes no table lock.
pub const POSTGRES_UPGRADES: &str = "DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'envelopes' AND column_name = 'caller_hash') THEN
        ALTER TABLE envelopes ADD COLUMN caller_hash TEXT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'segments' AND column_name = 'log_state') THEN
        ALTER TABLE segments ADD COLUMN log_state TEXT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'segments' AND column_name = 'pruned_at_ms') THEN
        ALTER TABLE segments ADD COLUMN pruned_at_ms BIGINT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'segments' AND column_name = 'pruned_hashes') THEN
        ALTER TABLE segments ADD COLUMN pruned_hashes TEXT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'envelopes' AND column_name = 'reason') THEN
        ALTER TABLE envelopes ADD COLUMN reason TEXT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'envelopes' AND column_name = 'reasoning_tokens') THEN
        ALTER TABLE envelopes ADD COLUMN cache_write_tokens BIGINT;
        ALTER TABLE envelopes ADD COLUMN reasoning_tokens BIGINT;
    END IF;
END $$;
-- The usage index before cache writes and reasoning: envelopes_usage2 covers them.
DROP INDEX IF EXISTS envelopes_usage;
-- Receipts stored without their reason (before the column, or by an older
-- recorder still running during a rolling upgrade) get it from their body.
-- The partial index holds only those, so with none left this costs nothing.
CREATE INDEX IF NOT EXISTS envelopes_reason_missing ON envelopes (log_index)
    WHERE reason IS NULL AND receipt_id IS NOT NULL;
UPDATE envelopes SET reason = {BODY_REASON} WHERE reason IS NULL AND receipt_id IS NOT NULL;";

const STREAM_COLUMNS: &str = "stream_id, key_id, namespace, service_account, pod, next_seq, closed, first_record_ms, last_record_ms";

macro_rules! statements {
    ($( $(#[$doc:meta])* $name:ident = $text:expr; )*) => {
        /// Every statement the stores run.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Stmt {
            $( $(#[$doc])* $name, )*
        }

        impl Stmt {
            /// Every statement, in declaration order (the render table's order).
            pub const ALL: &'static [Stmt] = &[$(Stmt::$name),*];

            /// The dialect-neutral text.
            pub fn text(self) -> String {
                match self {
                    $( Stmt::$name => $text.to_string(), )*
                }
            }
        }
    };
}

statements! {
    // The log.
    Meta = "SELECT origin, size, state, last_issued_at_ms FROM log_meta WHERE id = 1";
    OpenSegment = "SELECT segment_index, genesis FROM segments WHERE seal IS NULL ORDER BY segment_index DESC LIMIT 1";
    SegmentBodies = "SELECT body FROM envelopes WHERE segment_index = ?1 ORDER BY log_index";
    Stream = format!("SELECT {STREAM_COLUMNS} FROM streams WHERE stream_id = ?1");
    EnvelopeJson = "SELECT body FROM envelopes WHERE stream_id = ?1 AND seq = ?2";
    Hashes = "SELECT seq, hash FROM envelopes WHERE stream_id = ?1 AND seq >= ?2 AND seq <= ?3";
    /// One id (SQLite: cheap per statement).
    ReceiptIdKnown = "SELECT receipt_id FROM envelopes WHERE receipt_id = ?1";
    /// Many ids in one round trip (PostgreSQL: a text array parameter).
    ReceiptIdsKnown = "SELECT receipt_id FROM envelopes WHERE receipt_id = ANY(?1)";
    InsertCertificate = "INSERT INTO certificates (cert_hash, key_id, not_before_ms, body) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING";
    InsertSegment = "INSERT INTO segments (segment_index, genesis, created_at_ms) VALUES (?1, ?2, ?3)";
    InsertEnvelope = "INSERT INTO envelopes (log_index, segment_index, stream_id, seq, hash, key_id, receipt_id, namespace, service_account, pod, provider, model, started_at_ms, completed_at_ms, input_tokens, output_tokens, cached_tokens, cost_micro_usd, decision, provider_request_id, body, caller_hash, reason, cache_write_tokens, reasoning_tokens)
        VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25)";
    SealSegment = "UPDATE segments SET seal = ?2, checkpoint = ?3, sealed_at_ms = ?4, envelope_count = ?5, log_state = ?6 WHERE segment_index = ?1";
    UpsertStream = "INSERT INTO streams (stream_id, key_id, namespace, service_account, pod, next_seq, closed, first_record_ms, last_record_ms)
        VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
        ON CONFLICT (stream_id) DO UPDATE SET next_seq = excluded.next_seq, closed = excluded.closed,
          first_record_ms = excluded.first_record_ms, last_record_ms = excluded.last_record_ms";
    InsertFault = "INSERT INTO chain_faults (stream_id, kind, seq, namespace, at_ms, detected_at_ms, message) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING";
    UpsertMeta = "INSERT INTO log_meta (id, origin, size, state, last_issued_at_ms) VALUES (1, ?1, ?2, ?3, ?4)
        ON CONFLICT (id) DO UPDATE SET size = excluded.size, state = excluded.state, last_issued_at_ms = excluded.last_issued_at_ms";

    // Quota limits, usage and leases. ?1, ?2, ?3 are always the limit's key.
    InsertLimit = "INSERT INTO quota_limits (quota_id, limit_name, window_key) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING";
    LockLimit = "SELECT 1 FROM quota_limits WHERE quota_id = ?1 AND limit_name = ?2 AND window_key = ?3 {FOR_UPDATE}";
    UsageSum = "SELECT CAST(COALESCE(SUM(tokens), 0) AS BIGINT), CAST(COALESCE(SUM(requests), 0) AS BIGINT), CAST(COALESCE(SUM(cost), 0) AS BIGINT) FROM quota_usage
        WHERE quota_id = ?1 AND limit_name = ?2 AND window_key = ?3 AND bucket >= ?4 AND bucket <= ?5";
    OldestBucket = "SELECT MIN(bucket) FROM quota_usage WHERE quota_id = ?1 AND limit_name = ?2 AND window_key = ?3 AND bucket >= ?4
        AND (tokens > 0 OR requests > 0 OR cost > 0)";
    Outstanding = "SELECT CAST(COALESCE(SUM({GREATEST}(granted_tokens - consumed_tokens, 0)), 0) AS BIGINT),
            CAST(COALESCE(SUM({GREATEST}(granted_requests - consumed_requests, 0)), 0) AS BIGINT),
            CAST(COALESCE(SUM({GREATEST}(granted_cost - consumed_cost, 0)), 0) AS BIGINT)
        FROM quota_leases
        WHERE quota_id = ?1 AND limit_name = ?2 AND window_key = ?3 AND window_start = ?4
          AND expires_at > ?5 AND returned = {FALSE} AND lease_id IS DISTINCT FROM ?6";
    Lease = "SELECT window_start, granted_tokens, granted_requests, granted_cost, consumed_tokens, consumed_requests, consumed_cost, expires_at, holder, returned, cap_tokens, cap_requests, cap_cost, shadow
        FROM quota_leases WHERE quota_id = ?1 AND limit_name = ?2 AND window_key = ?3 AND lease_id = ?4";
    PutLease = "INSERT INTO quota_leases (quota_id, limit_name, window_key, lease_id, window_start, granted_tokens, granted_requests, granted_cost,
            consumed_tokens, consumed_requests, consumed_cost, expires_at, holder, returned, cap_tokens, cap_requests, cap_cost, shadow)
        VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)
        ON CONFLICT (lease_id) DO UPDATE SET window_start = excluded.window_start,
            granted_tokens = excluded.granted_tokens, granted_requests = excluded.granted_requests, granted_cost = excluded.granted_cost,
            consumed_tokens = excluded.consumed_tokens, consumed_requests = excluded.consumed_requests, consumed_cost = excluded.consumed_cost,
            expires_at = excluded.expires_at, returned = excluded.returned";
    AddUsage = "INSERT INTO quota_usage (quota_id, limit_name, window_key, bucket, tokens, requests, cost) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
        ON CONFLICT (quota_id, limit_name, window_key, bucket) DO UPDATE SET tokens = quota_usage.tokens + excluded.tokens,
            requests = quota_usage.requests + excluded.requests, cost = quota_usage.cost + excluded.cost";
    PurgeLeases = "DELETE FROM quota_leases WHERE quota_id = ?1 AND limit_name = ?2 AND window_key = ?3 AND expires_at < ?4";
    PurgeUsage = "DELETE FROM quota_usage WHERE quota_id = ?1 AND limit_name = ?2 AND window_key = ?3 AND bucket < ?4";
    LeaseKey = "SELECT quota_id, limit_name, window_key FROM quota_leases WHERE lease_id = ?1";

    // Queries and exports.
    /// Reads only columns of the `envelopes_usage` index (receipts are the
    /// envelopes with a start time).
    UsageCells = "SELECT namespace, service_account, COALESCE(provider, ''), COALESCE(model, ''), started_at_ms / 3600000,
            CAST(COUNT(*) AS BIGINT), CAST(SUM(input_tokens) AS BIGINT), CAST(SUM(output_tokens) AS BIGINT), CAST(SUM(cost_micro_usd) AS BIGINT),
            CAST(SUM(cached_tokens) AS BIGINT), CAST(SUM(cache_write_tokens) AS BIGINT), CAST(SUM(reasoning_tokens) AS BIGINT),
            CASE WHEN CAST(?4 AS BIGINT) = 1 THEN COALESCE(caller_hash, '') ELSE '' END,
            CASE WHEN CAST(?5 AS BIGINT) = 1 THEN COALESCE(reason, '') ELSE '' END
        FROM envelopes
        WHERE started_at_ms >= ?1 AND started_at_ms < ?2 AND decision <> 'failed_over' AND (CAST(?3 AS TEXT) IS NULL OR namespace = ?3)
          AND (CAST(?6 AS BIGINT) IS NULL OR log_index < ?6)
        GROUP BY 1, 2, 3, 4, 5, 13, 14
        ORDER BY namespace {C}, service_account {C}, COALESCE(provider, '') {C}, COALESCE(model, '') {C}, started_at_ms / 3600000";
    Faults = "SELECT stream_id, kind, seq, namespace, at_ms, detected_at_ms, message FROM chain_faults
        WHERE at_ms >= ?1 AND at_ms < ?2 AND (CAST(?3 AS TEXT) IS NULL OR namespace = ?3)
        ORDER BY at_ms, stream_id {C}, kind {C}, seq LIMIT ?4";
    /// Over the streams active in the range: how many are open, the newest
    /// record stored, and the newest record of the open stream quiet longest.
    StreamSummary = "SELECT CAST(COALESCE(SUM(CASE WHEN closed = {FALSE} THEN 1 ELSE 0 END), 0) AS BIGINT),
            CAST(MAX(last_record_ms) AS BIGINT),
            CAST(MIN(CASE WHEN closed = {FALSE} THEN last_record_ms END) AS BIGINT)
        FROM streams
        WHERE first_record_ms < ?2 AND last_record_ms >= ?1 AND (CAST(?3 AS TEXT) IS NULL OR namespace = ?3)";
    OpenStreams = format!("SELECT {STREAM_COLUMNS} FROM streams
        WHERE closed = {{FALSE}} AND first_record_ms < ?2 AND last_record_ms >= ?1 AND (CAST(?3 AS TEXT) IS NULL OR namespace = ?3)
        ORDER BY stream_id {{C}} LIMIT ?4");
    /// Sealed segments retention kept, `?1..=?2`.
    SealedSegments = "SELECT segment_index, genesis, seal, checkpoint, envelope_count FROM segments
        WHERE seal IS NOT NULL AND pruned_at_ms IS NULL AND segment_index >= ?1 AND segment_index <= ?2
        ORDER BY segment_index";
    /// One sealed segment, kept or pruned.
    Segment = "SELECT segment_index, genesis, seal, checkpoint, envelope_count, sealed_at_ms, log_state, pruned_at_ms
        FROM segments WHERE segment_index = ?1 AND seal IS NOT NULL";
    PrunedHashes = "SELECT pruned_hashes FROM segments WHERE segment_index = ?1";
    /// First kept, last and last pruned sealed segment.
    SegmentBounds = "SELECT MIN(CASE WHEN pruned_at_ms IS NULL THEN segment_index END), MAX(segment_index),
            MAX(CASE WHEN pruned_at_ms IS NOT NULL THEN segment_index END)
        FROM segments WHERE seal IS NOT NULL";
    /// Among segments from `?2` (the first kept) on.
    FirstSegmentStartedSince = "SELECT MIN(segment_index) FROM envelopes WHERE started_at_ms >= ?1 AND segment_index >= ?2";
    LastSegmentSealedBefore = "SELECT MAX(segment_index) FROM segments WHERE seal IS NOT NULL AND sealed_at_ms < ?1";
    LatestStateUpto = "SELECT segment_index, log_state FROM segments
        WHERE segment_index <= ?1 AND seal IS NOT NULL AND log_state IS NOT NULL ORDER BY segment_index DESC LIMIT 1";
    /// Envelope hashes of segments `?1..=?2`, in log order.
    LeafHashes = "SELECT hash FROM envelopes WHERE segment_index >= ?1 AND segment_index <= ?2 ORDER BY log_index";
    SetLogState = "UPDATE segments SET log_state = ?2 WHERE segment_index = ?1";
    /// Deletes the envelopes of segments up to `?1`, except each stream's newest
    /// among them when the stream goes on: it is open (the recorder chains its
    /// next envelope to it) or has envelopes in later segments (a range export
    /// proves the stream continues from it).
    PruneEnvelopes = "DELETE FROM envelopes WHERE segment_index <= ?1 AND (
        seq < (SELECT MAX(later.seq) FROM envelopes later
            WHERE later.stream_id = envelopes.stream_id AND later.segment_index <= ?1)
        OR EXISTS (SELECT 1 FROM streams WHERE streams.stream_id = envelopes.stream_id
            AND streams.closed <> {FALSE} AND streams.next_seq = envelopes.seq + 1))";
    MarkPruned = "UPDATE segments SET pruned_at_ms = ?2, pruned_hashes = ?3
        WHERE segment_index = ?1 AND seal IS NOT NULL AND pruned_at_ms IS NULL";
    /// Streams whose first envelope in segments `?1..=?2` is not their first.
    ContinuedStreams = "SELECT stream_id, MIN(seq) FROM envelopes
        WHERE segment_index >= ?1 AND segment_index <= ?2 GROUP BY stream_id HAVING MIN(seq) > 1
        ORDER BY stream_id {C}";
    EnvelopeAt = "SELECT log_index, segment_index, body FROM envelopes WHERE stream_id = ?1 AND seq = ?2";
    RecordSinkDelivery = "INSERT INTO sink_progress (sink, size, delivered_at_ms) VALUES (?1, ?2, ?3)
        ON CONFLICT (sink) DO UPDATE SET size = {GREATEST}(sink_progress.size, excluded.size), delivered_at_ms = excluded.delivered_at_ms";
    SinkProgress = "SELECT sink, size FROM sink_progress ORDER BY sink {C}";

    // Provider key health reports.
    ForgetKeyReports = "DELETE FROM key_reports WHERE reporter = ?1";
    PutKeyReport = "INSERT INTO key_reports (reporter, provider, key_index, refused, since_ms, last_status, reported_at_ms)
        VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
        ON CONFLICT (reporter, provider, key_index) DO UPDATE SET refused = excluded.refused,
            since_ms = excluded.since_ms, last_status = excluded.last_status, reported_at_ms = excluded.reported_at_ms";
    PurgeKeyReports = "DELETE FROM key_reports WHERE reported_at_ms < ?1";
    /// Per provider and key: reporters, how many hold it refused, the
    /// earliest refusal among them and the highest refusal status.
    KeyHealth = "SELECT provider, key_index, CAST(COUNT(*) AS BIGINT),
            CAST(SUM(CASE WHEN refused THEN 1 ELSE 0 END) AS BIGINT),
            MIN(CASE WHEN refused THEN since_ms END), MAX(CASE WHEN refused THEN last_status END)
        FROM key_reports WHERE reported_at_ms >= ?1
        GROUP BY provider, key_index ORDER BY provider {C}, key_index LIMIT ?2";
    LastSegmentBefore = "SELECT MAX(segment_index) FROM envelopes WHERE started_at_ms < ?1";
    /// Certificates of the keys that signed envelopes in segments `?1..=?2`.
    CertificatesBetween = "SELECT body FROM certificates WHERE key_id IN
            (SELECT DISTINCT key_id FROM envelopes WHERE segment_index >= ?1 AND segment_index <= ?2)
        ORDER BY key_id {C}, not_before_ms, cert_hash {C}";
    Ping = "SELECT 1";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_tokens_render_per_dialect() {
        let text = "SELECT {GREATEST}(a, 0) FROM t WHERE x = ?1 AND y = ?12 AND z = '?' AND b = {FALSE} ORDER BY n {C} {FOR_UPDATE}";
        assert_eq!(
            Dialect::Sqlite.render(text),
            "SELECT MAX(a, 0) FROM t WHERE x = ?1 AND y = ?12 AND z = '?' AND b = 0 ORDER BY n"
        );
        assert_eq!(
            Dialect::Postgres.render(text),
            "SELECT GREATEST(a, 0) FROM t WHERE x = $1 AND y = $12 AND z = '?' AND b = false ORDER BY n COLLATE \"C\" FOR UPDATE"
        );
    }

    #[test]
    fn every_statement_renders_without_a_token_left() {
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            for stmt in Stmt::ALL {
                let sql = dialect.sql(*stmt);
                assert!(!sql.is_empty(), "{stmt:?}");
                assert!(!sql.contains('{'), "{dialect:?} {stmt:?}: {sql}");
            }
            assert!(!dialect.render(SCHEMA).contains('{'));
        }
        assert!(Dialect::Postgres.sql(Stmt::Hashes).contains("$3"));
        assert!(!Dialect::Postgres.sql(Stmt::Hashes).contains("?3"));
    }
}
