//! Sends queued mail. `try_execute_task` does one job and says whether there was
//! one, so tests drive the worker step by step; the loop works through full
//! claims at once and lets smaller amounts of mail gather first.
use std::time::Duration;

use crate::shutdown::Shutdown;
use serde::{Deserialize, Serialize};

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, Statement};

use super::{
    ClaimedJob, ExecutionOutcome, JobFailure, JobKind, claim, complete_many, do_jobs, fail,
};
use crate::{
    i18n::Locale,
    mail::{ConfirmationMail, MailError, render_confirmation},
    secrets::log_id,
    state::AppState,
};

/// A queued mail. It holds the address and the raw token until it is sent; the
/// payload is cleared the moment the job is done.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "template", rename_all = "snake_case")]
pub enum MailJob {
    Confirm {
        to: String,
        name: Option<String>,
        list: String,
        token: String,
        locale: String,
    },
    /// The link that carries out a self-service privacy request.
    Privacy {
        to: String,
        /// `access` or `erasure`.
        kind: String,
        token: String,
        locale: String,
    },
}

/// Confirmation mails reserved for this process's worker. The signup
/// statement (PostgreSQL's set-based one) writes their jobs `pending` with
/// a short lease in `locked_until`, which keeps other workers' claims off
/// them, and this worker takes them from memory instead of claiming them
/// with an `UPDATE` of its own: that claim was a fifth of the database's
/// work per signup. Should the process stop first, the lease runs out and
/// any worker claims them as usual.
#[derive(Default)]
pub struct Handoff {
    queue: std::sync::Mutex<std::collections::VecDeque<HandedOff>>,
    /// When this process last claimed mail from the table.
    last_claim: std::sync::Mutex<Option<std::time::Instant>>,
}

/// A mail job reserved for this process.
pub struct HandedOff {
    pub id: i64,
    pub subject_hash: String,
    pub payload: String,
    pub locked_until: DateTime<Utc>,
}

/// The lease of a handed-off job: how long a mail waits if the process
/// that queued it stops before sending it.
pub const HANDOFF_LEASE: chrono::Duration = chrono::Duration::seconds(60);

/// Handed-off jobs held at most; beyond them (mail sent more slowly than it
/// is queued) new jobs are queued unreserved, for any worker to claim.
const HANDOFF_CAP: usize = 1024;

/// How often the worker claims from the table even while handed-off jobs
/// keep it busy, so that retries and other mail are not starved.
const CLAIM_AT_LEAST_EVERY: Duration = Duration::from_secs(1);

impl Handoff {
    /// Whether new jobs may be reserved for this process.
    pub fn has_room(&self) -> bool {
        self.queue.lock().expect("handoff lock").len() < HANDOFF_CAP
    }

    pub fn push(&self, jobs: impl IntoIterator<Item = HandedOff>) {
        self.queue.lock().expect("handoff lock").extend(jobs);
    }

    /// Forgets the reserved jobs, as stopping the process does; their
    /// leases then run out and any worker claims them (tests).
    pub fn forget(&self) {
        self.queue.lock().expect("handoff lock").clear();
    }

    /// Up to `limit` jobs whose lease has at least half its time left; older
    /// ones are left to a claim once their lease has run out, since another
    /// worker may take them then.
    fn take(&self, limit: usize, now: DateTime<Utc>) -> Vec<HandedOff> {
        let mut queue = self.queue.lock().expect("handoff lock");
        let mut out = Vec::new();
        while out.len() < limit {
            match queue.pop_front() {
                Some(j) if j.locked_until - HANDOFF_LEASE / 2 > now => out.push(j),
                Some(_) => {}
                None => break,
            }
        }
        out
    }

    /// Whether this step should claim from the table too: always when
    /// nothing was handed off, else once in [`CLAIM_AT_LEAST_EVERY`].
    fn claim_due(&self, handed_off: bool) -> bool {
        let mut last = self.last_claim.lock().expect("handoff lock");
        let due = !handed_off || last.is_none_or(|t| t.elapsed() >= CLAIM_AT_LEAST_EVERY);
        if due {
            *last = Some(std::time::Instant::now());
        }
        due
    }
}

/// Sends one due mail job: a handed-off one first, else one claimed.
#[tracing::instrument(skip_all)]
pub async fn try_execute_task(state: &AppState) -> anyhow::Result<ExecutionOutcome> {
    Ok(ExecutionOutcome::of(execute_batch(state, 1).await?))
}

/// How many mails one worker sends at once.
const PARALLEL_SENDS: usize = 8;

/// Takes up to `limit` mail jobs (handed-off ones first, then claimed ones),
/// sends them (a few at a time) and records the outcomes; returns how many
/// jobs it took.
pub async fn execute_batch(state: &AppState, limit: u32) -> anyhow::Result<usize> {
    let now = state.now();
    let mut jobs = handed_off(state, limit as usize, now).await?;
    let room = limit.saturating_sub(u32::try_from(jobs.len()).unwrap_or(u32::MAX));
    if room > 0 && state.mail_handoff.claim_due(!jobs.is_empty()) {
        let lease = JobKind::Mail.lease(&state.config);
        jobs.extend(claim(&state.db, JobKind::Mail, lease, room, now).await?);
    }
    let results = do_jobs(jobs, PARALLEL_SENDS, |mail: MailJob| send(state, mail)).await;
    let n = results.len();
    let now = state.now();
    let mut done = Vec::new();
    for (job, result) in results {
        let subject = job
            .subject_hash
            .as_deref()
            .map(log_id)
            .unwrap_or("-")
            .to_string();
        match result {
            Ok(()) => {
                tracing::info!(job = job.id, subject = %subject, "mail sent");
                done.push(job.id);
            }
            Err(failure) => {
                let (kind, msg) = match &failure {
                    JobFailure::Retry(m) => ("retry", m.clone()),
                    JobFailure::Permanent(m) => ("permanent", m.clone()),
                };
                tracing::warn!(job = job.id, subject = %subject, failure = kind, error = %msg, "mail not sent");
                fail(
                    &state.db,
                    &job,
                    failure,
                    state.config.mail.max_attempts,
                    now,
                )
                .await?;
            }
        }
    }
    complete_many(&state.db, &done, now).await?;
    Ok(n)
}

/// Up to `limit` handed-off jobs, as claimed ones: those still `pending`
/// (one that was cancelled meanwhile, e.g. by an erasure, is not sent).
async fn handed_off(
    state: &AppState,
    limit: usize,
    now: DateTime<Utc>,
) -> Result<Vec<ClaimedJob>, sea_orm::DbErr> {
    let backend = state.db.get_database_backend();
    let mut jobs = Vec::new();
    while jobs.len() < limit {
        let taken = state.mail_handoff.take(limit - jobs.len(), now);
        if taken.is_empty() {
            break;
        }
        let ids: Vec<i64> = taken.iter().map(|j| j.id).collect();
        let (wanted, list) = crate::db::id_in(backend, "id", 1, &ids);
        let live: std::collections::HashSet<i64> = state
            .db
            .query_all_raw(Statement::from_sql_and_values(
                backend,
                format!("SELECT id FROM outbox WHERE {wanted} AND status = 'pending'"),
                [list],
            ))
            .await?
            .iter()
            .map(|r| r.try_get::<i64>("", "id"))
            .collect::<Result<_, _>>()?;
        jobs.extend(
            taken
                .into_iter()
                .filter(|j| live.contains(&j.id))
                .map(|j| ClaimedJob {
                    id: j.id,
                    kind: JobKind::Mail.as_str().to_string(),
                    payload: Some(j.payload),
                    subject_hash: Some(j.subject_hash),
                    attempts: 0,
                }),
        );
    }
    Ok(jobs)
}

async fn send(state: &AppState, job: MailJob) -> Result<(), JobFailure> {
    let mail = match job {
        MailJob::Confirm {
            to,
            name,
            list,
            token,
            locale,
        } => {
            let locale = Locale::parse(&locale).unwrap_or(Locale::Sv);
            let list_name = state
                .config
                .list(&list)
                .map(|l| l.name.clone())
                .unwrap_or(list);
            let base = state.config.public_base();
            let lang = locale.code();
            let confirm_url = format!("{base}/v1/subscriptions/confirm?token={token}&lang={lang}");
            let block_url = format!("{base}/v1/subscriptions/block?token={token}&lang={lang}");
            render_confirmation(
                &state.templates,
                &state.config,
                &ConfirmationMail {
                    to: &to,
                    name: name.as_deref(),
                    list_name: &list_name,
                    confirm_url: &confirm_url,
                    block_url: &block_url,
                    locale,
                },
            )
            .map_err(|e| JobFailure::Permanent(format!("render: {e}")))?
        }
        MailJob::Privacy {
            to,
            kind,
            token,
            locale,
        } => {
            let locale = Locale::parse(&locale).unwrap_or(Locale::Sv);
            let url = format!(
                "{}/v1/privacy/requests/{token}?lang={}",
                state.config.public_base(),
                locale.code()
            );
            crate::mail::render_privacy(&state.templates, &state.config, &to, &kind, &url, locale)
                .map_err(|e| JobFailure::Permanent(format!("render: {e}")))?
        }
    };
    send_mail(state, mail).await
}

async fn send_mail(state: &AppState, mail: crate::mail::OutgoingMail) -> Result<(), JobFailure> {
    state.mailer.send(&mail).await.map_err(|e| match e {
        MailError::Transient(m) => JobFailure::Retry(m),
        MailError::Permanent(m) => JobFailure::Permanent(m),
    })
}

/// The most mail jobs one step of the loop claims.
const CLAIM_LIMIT: u32 = 64;

/// How long the loop lets mail gather after a wake-up before it claims. A
/// commit that queued mail wakes the worker; under load the next few
/// commits follow within milliseconds, and one claim (and one "done") for
/// all of them costs the database far less than one each. A confirmation
/// mail is not the worse for leaving this much later.
const GATHER: Duration = Duration::from_millis(20);

/// Runs until `shutdown` fires: works while there is a full claim's worth,
/// then waits for a wake-up (a commit that queued mail, after which it lets
/// more gather for [`GATHER`]) or a poll interval.
pub async fn run(state: AppState, shutdown: Shutdown) {
    super::work_loop(
        state,
        shutdown,
        "mail",
        CLAIM_LIMIT,
        |s| &s.outbox_notify,
        GATHER,
        |state, limit| async move { execute_batch(&state, limit).await },
    )
    .await
}
