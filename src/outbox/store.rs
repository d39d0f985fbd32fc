//! The outbox table: enqueue, claim, complete (many at once), fail. Claiming uses
//! `FOR UPDATE SKIP LOCKED` on PostgreSQL so that several replicas can work one
//! outbox; SQLite has one writer and needs no such clause.
use chrono::{DateTime, Utc};
use entity::outbox;
use rand::Rng;
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DbBackend, DbErr, FromQueryResult, Set, Statement,
};

/// The kinds of work the outbox carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// A mail to send (payload: [`crate::outbox::mail_worker::MailJob`]).
    Mail,
    /// A Mailchimp call (payload: [`crate::mailchimp::MailchimpJob`]).
    Mailchimp,
    /// An outbound event for one endpoint (payload: [`crate::events::EventJob`]).
    Event,
}

impl JobKind {
    pub const ALL: [Self; 3] = [Self::Mail, Self::Mailchimp, Self::Event];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mail => "mail",
            Self::Mailchimp => "mailchimp",
            Self::Event => "event",
        }
    }
}

/// How long a claimed mail job stays ours before another worker may take it
/// over (a worker that died mid-job is recovered this way). Mailchimp jobs
/// use a lease derived from their call timeout instead.
const MAIL_LEASE: chrono::Duration = chrono::Duration::minutes(5);

impl JobKind {
    /// The lease of a claimed job of this kind: long enough for the work of
    /// one step, short enough that a crashed worker's jobs resume soon.
    pub fn lease(self, config: &crate::config::Config) -> chrono::Duration {
        match self {
            Self::Mail => MAIL_LEASE,
            Self::Event => crate::events::lease(),
            Self::Mailchimp => {
                let call = chrono::Duration::from_std(config.mailchimp.timeout.approx_std())
                    .unwrap_or(chrono::Duration::seconds(30));
                // A batch step may queue behind `concurrency` other calls.
                call * 3 + chrono::Duration::seconds(5)
            }
        }
    }
}

/// `status IN (..)` with the statuses written into the statement, not bound:
/// PostgreSQL can then prove a partial index's predicate from it (that of
/// `ix_outbox_unsent_subject`, for a lookup by address) in a cached generic
/// plan too, where bound values are unknown.
pub fn status_in(statuses: &[&'static str]) -> sea_orm::sea_query::SimpleExpr {
    debug_assert!(
        statuses
            .iter()
            .all(|s| s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
    );
    let list: Vec<String> = statuses.iter().map(|s| format!("'{s}'")).collect();
    sea_orm::sea_query::Expr::cust(format!("status IN ({})", list.join(", ")))
}

/// Queues a job inside the caller's transaction.
pub async fn enqueue<C: ConnectionTrait>(
    conn: &C,
    kind: JobKind,
    payload: &serde_json::Value,
    subject_hash: Option<&str>,
    now: DateTime<Utc>,
) -> Result<i64, DbErr> {
    let row = job_model(kind, payload, subject_hash, now)
        .insert(conn)
        .await?;
    Ok(row.id)
}

/// The row of a new job, for single and batched inserts.
pub fn job_model(
    kind: JobKind,
    payload: &serde_json::Value,
    subject_hash: Option<&str>,
    now: DateTime<Utc>,
) -> outbox::ActiveModel {
    outbox::ActiveModel {
        kind: Set(kind.as_str().to_string()),
        status: Set("pending".into()),
        payload: Set(Some(payload.to_string())),
        subject_hash: Set(subject_hash.map(str::to_string)),
        attempts: Set(0),
        next_attempt_at: Set(now),
        locked_until: Set(None),
        last_error: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
}

/// A job this worker now holds.
#[derive(Debug, FromQueryResult)]
pub struct ClaimedJob {
    pub id: i64,
    pub kind: String,
    pub payload: Option<String>,
    pub subject_hash: Option<String>,
    pub attempts: i32,
}

/// Claims up to `limit` due jobs of `kind`: pending ones whose time has come
/// (and that are not reserved for the process that queued them, see
/// [`crate::outbox::mail_worker::Handoff`]), and in-flight ones whose lease
/// ran out; never a job whose member (see
/// `member_key`) has another job in flight, so changes to one member run in
/// order. (The busy members are one set, hashed once per claim: a
/// correlated `NOT EXISTS` was planned as one index probe per candidate row,
/// seconds per claim on a freshly filled table.) The redundant status list
/// lets the planner walk the partial index `ix_outbox_live`, which holds
/// only unfinished jobs, instead of every finished row before them.
pub async fn claim<C: ConnectionTrait>(
    conn: &C,
    kind: JobKind,
    lease: chrono::Duration,
    limit: u32,
    now: DateTime<Utc>,
) -> Result<Vec<ClaimedJob>, DbErr> {
    let backend = conn.get_database_backend();
    let lock = if backend == DbBackend::Postgres {
        "FOR UPDATE SKIP LOCKED"
    } else {
        ""
    };
    let sql = format!(
        "UPDATE outbox SET status = 'in_flight', locked_until = $1, updated_at = $2 \
         WHERE id IN (SELECT o.id FROM outbox o WHERE o.kind = $3 AND o.status IN ('pending', 'in_flight') AND \
           ((o.status = 'pending' AND o.next_attempt_at <= $2 AND (o.locked_until IS NULL OR o.locked_until <= $2)) \
            OR (o.status = 'in_flight' AND o.locked_until <= $2)) \
           AND (o.member_key IS NULL OR o.member_key NOT IN (SELECT b.member_key FROM outbox b \
                WHERE b.kind = $3 AND b.status = 'in_flight' AND b.locked_until > $2 AND b.member_key IS NOT NULL)) \
           ORDER BY o.id LIMIT $4 {lock}) \
         RETURNING id, kind, payload, subject_hash, attempts"
    );
    let stmt = Statement::from_sql_and_values(
        backend,
        sql,
        [
            (now + lease).into(),
            now.into(),
            kind.as_str().into(),
            i64::from(limit).into(),
        ],
    );
    let rows = conn.query_all_raw(stmt).await?;
    rows.iter()
        .map(|r| ClaimedJob::from_query_result(r, ""))
        .collect()
}

/// The jobs that recording an outcome may change: one cancelled or
/// superseded while it was being done (an erasure, say) stays so.
const STILL_OPEN: &str = "status IN ('pending', 'in_flight')";

/// Marks a job done, clears its payload, and keeps a note of how it ended
/// (e.g. "forgotten at Mailchimp": done, not to be retried, but worth seeing).
pub async fn complete_with_note<C: ConnectionTrait>(
    conn: &C,
    id: i64,
    note: &str,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let stmt = Statement::from_sql_and_values(
        conn.get_database_backend(),
        format!(
            "UPDATE outbox SET status = 'done', payload = NULL, locked_until = NULL, \
             last_error = $1, updated_at = $2 WHERE id = $3 AND {STILL_OPEN}"
        ),
        [note.into(), now.into(), id.into()],
    );
    conn.execute_raw(stmt).await?;
    Ok(())
}

/// Marks several jobs done and clears their payloads, in one statement.
/// The ids travel as one parameter ([`crate::db::id_in`]), so the statement
/// is the same (and prepared and planned once per connection) whatever their
/// number.
pub async fn complete_many<C: ConnectionTrait>(
    conn: &C,
    ids: &[i64],
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    if ids.is_empty() {
        return Ok(());
    }
    let backend = conn.get_database_backend();
    let (wanted, list) = crate::db::id_in(backend, "id", 2, ids);
    let stmt = Statement::from_sql_and_values(
        backend,
        format!(
            "UPDATE outbox SET status = 'done', payload = NULL, locked_until = NULL, \
             last_error = NULL, updated_at = $1 WHERE {wanted} AND {STILL_OPEN}"
        ),
        [now.into(), list],
    );
    conn.execute_raw(stmt).await?;
    Ok(())
}

/// Why a job failed.
pub enum JobFailure {
    /// Try again later, with backoff.
    Retry(String),
    /// Never going to work: dead-letter now.
    Permanent(String),
}

/// Backoff before attempt `attempts + 1`: exponential from 5 s, capped at an
/// hour, with full jitter over its upper half.
pub fn backoff(attempts: i32) -> chrono::Duration {
    let base = 5i64.saturating_mul(1i64 << attempts.clamp(0, 20)).min(3600);
    let jitter = rand::thread_rng().gen_range(0..=base / 2);
    chrono::Duration::seconds(base / 2 + jitter)
}

/// Records a failed attempt: back to pending with a later time, or dead when the
/// budget is spent or the failure is permanent. The payload is kept for a
/// dead letter, so that it can be retried. Only a job still open changes
/// (see [`STILL_OPEN`]).
pub async fn fail<C: ConnectionTrait>(
    conn: &C,
    job: &ClaimedJob,
    failure: JobFailure,
    max_attempts: i32,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let attempts = job.attempts + 1;
    let (status, error, next) = match failure {
        JobFailure::Retry(e) if attempts < max_attempts => ("pending", e, now + backoff(attempts)),
        JobFailure::Retry(e) | JobFailure::Permanent(e) => ("dead", e, now),
    };
    let stmt = Statement::from_sql_and_values(
        conn.get_database_backend(),
        format!(
            "UPDATE outbox SET status = $1, attempts = $2, last_error = $3, next_attempt_at = $4, \
             locked_until = NULL, updated_at = $5 WHERE id = $6 AND {STILL_OPEN}"
        ),
        [
            status.into(),
            attempts.into(),
            error.into(),
            next.into(),
            now.into(),
            job.id.into(),
        ],
    );
    conn.execute_raw(stmt).await?;
    Ok(())
}
