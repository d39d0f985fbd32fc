//! Sends queued mail. `try_execute_task` does one job and says whether there was
//! one, so tests drive the worker step by step; the loop works through full
//! claims at once and lets smaller amounts of mail gather first.
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::shutdown::Shutdown;

use super::{
    ClaimedJob, ExecutionOutcome, JobFailure, JobKind, claim, complete_many, enqueue, fail,
};
use crate::{
    i18n::Locale,
    mail::{ConfirmationMail, MailError, render_confirmation},
    secrets::log_id,
    state::AppState,
};

/// A queued mail. It holds the address and the raw token until it is sent; the
/// payload is cleared the moment the job is done.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// The first confirmation mails of one batch of new signups: which
    /// subscriptions they are for, and nothing else. Their addresses and
    /// links travel in memory to this process's worker (see [`Handoff`]);
    /// a worker that claims the job instead (the process that queued it
    /// stopped first) sends each subscription still waiting a new link.
    FirstConfirmations { subscriptions: Vec<i64> },
}

/// The template name of [`MailJob::FirstConfirmations`] in a payload.
pub const FIRST_CONFIRMATIONS: &str = "first_confirmations";

/// First confirmation mails reserved for this process's worker. A signup
/// batch writes one outbox job for all its first mails (see
/// [`MailJob::FirstConfirmations`]), `pending` with a short lease in
/// `locked_until`, which keeps other workers' claims off it, and hands the
/// mails themselves to this worker in memory: no claim, and one job row
/// and one "done" for a batch instead of one each. Should the process stop
/// first, the lease runs out and any worker claims the job.
#[derive(Default)]
pub struct Handoff {
    queue: std::sync::Mutex<std::collections::VecDeque<HandedOff>>,
    /// When this process last claimed mail from the table.
    last_claim: std::sync::Mutex<Option<std::time::Instant>>,
}

/// A signup batch's first mails, reserved for this process.
pub struct HandedOff {
    /// The batch's outbox job.
    pub id: i64,
    pub mails: Vec<FirstMail>,
    pub locked_until: DateTime<Utc>,
}

/// One subscription's first confirmation mail, ready to send.
pub struct FirstMail {
    pub subscription_id: i64,
    /// The keyed hash of the address, for logs and for a retry's job.
    pub subject_hash: String,
    /// The SHA-256 of the link's token: the mail is sent only while the
    /// subscription still waits for this token.
    pub token_hash: String,
    pub mail: MailJob,
}

/// The lease of a handed-off job: how long a mail waits if the process
/// that queued it stops before sending it.
pub const HANDOFF_LEASE: chrono::Duration = chrono::Duration::seconds(60);

/// Handed-off mails held at most; beyond them (mail sent more slowly than
/// it is queued) new jobs are queued unreserved, for any worker to claim.
const HANDOFF_CAP: usize = 1024;

/// How often the worker claims from the table even while handed-off jobs
/// keep it busy, so that retries and other mail are not starved.
const CLAIM_AT_LEAST_EVERY: Duration = Duration::from_secs(1);

impl Handoff {
    /// Whether new jobs may be reserved for this process.
    pub fn has_room(&self) -> bool {
        let queue = self.queue.lock().expect("handoff lock");
        queue.iter().map(|h| h.mails.len()).sum::<usize>() < HANDOFF_CAP
    }

    pub fn push(&self, job: HandedOff) {
        self.queue.lock().expect("handoff lock").push_back(job);
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

/// Where a mail being sent came from, which says how its outcome is kept.
enum Origin {
    /// A job of its own (a mail sent again, a privacy link).
    Job(ClaimedJob),
    /// One of the first mails of a signup batch's job. A mail that fails
    /// gets a job of its own, for its retries.
    Batch { job: i64, subject_hash: String },
}

/// Takes up to `limit` mail jobs (handed-off ones first, then claimed ones),
/// sends their mails (a few at a time) and records the outcomes; returns how
/// many jobs it took.
pub async fn execute_batch(state: &AppState, limit: u32) -> anyhow::Result<usize> {
    let now = state.now();
    let handed = state.mail_handoff.take(limit as usize, now);
    let mut n = handed.len();
    // The signup batches' jobs are done once their mails are sent or
    // have jobs of their own.
    let mut done: Vec<i64> = handed.iter().map(|h| h.id).collect();
    let mut sends: Vec<(Origin, MailJob)> = still_waiting(state, handed)
        .await?
        .into_iter()
        .map(|(job, m)| {
            (
                Origin::Batch {
                    job,
                    subject_hash: m.subject_hash,
                },
                m.mail,
            )
        })
        .collect();
    let room = limit.saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
    if room > 0 && state.mail_handoff.claim_due(n > 0) {
        let lease = JobKind::Mail.lease(&state.config);
        for job in claim(&state.db, JobKind::Mail, lease, room, now).await? {
            n += 1;
            match job.payload.as_deref().map(serde_json::from_str::<MailJob>) {
                Some(Ok(MailJob::FirstConfirmations { subscriptions })) => {
                    // The process that queued these stopped before sending
                    // them: each subscription still waiting gets a new link.
                    let mails =
                        crate::services::subscribe::reissue_first_links(state, &subscriptions, now)
                            .await?;
                    tracing::info!(job = job.id, mails = mails.len(), "first mails taken over");
                    sends.extend(mails.into_iter().map(|m| {
                        let origin = Origin::Batch {
                            job: job.id,
                            subject_hash: m.subject_hash,
                        };
                        (origin, m.mail)
                    }));
                    done.push(job.id);
                }
                Some(Ok(mail)) => sends.push((Origin::Job(job), mail)),
                Some(Err(e)) => {
                    let failure = JobFailure::Permanent(format!("unreadable payload: {e}"));
                    record_failure(state, &job, failure, now).await?;
                }
                None => {
                    let failure = JobFailure::Permanent("payload was cleared".into());
                    record_failure(state, &job, failure, now).await?;
                }
            }
        }
    }

    let results: Vec<_> = futures_util::stream::iter(sends)
        .map(|(origin, mail)| async move {
            let result = send(state, &mail).await;
            (origin, mail, result)
        })
        .buffer_unordered(PARALLEL_SENDS)
        .collect()
        .await;
    let now = state.now();
    for (origin, mail, result) in results {
        match (origin, result) {
            (Origin::Job(job), Ok(())) => {
                let subject = job.subject_hash.as_deref().map(log_id).unwrap_or("-");
                tracing::info!(job = job.id, subject = %subject, "mail sent");
                done.push(job.id);
            }
            (Origin::Batch { job, subject_hash }, Ok(())) => {
                tracing::info!(job, subject = %log_id(&subject_hash), "mail sent");
            }
            (Origin::Job(job), Err(failure)) => record_failure(state, &job, failure, now).await?,
            (Origin::Batch { subject_hash, .. }, Err(failure)) => {
                // A job of its own, failed once, so that it is retried like
                // any other mail (and an erasure finds it by the hash).
                let job = ClaimedJob {
                    id: enqueue(
                        &state.db,
                        JobKind::Mail,
                        &serde_json::to_value(&mail)?,
                        Some(&subject_hash),
                        now,
                    )
                    .await?,
                    kind: JobKind::Mail.as_str().to_string(),
                    payload: None,
                    subject_hash: Some(subject_hash),
                    attempts: 0,
                };
                record_failure(state, &job, failure, now).await?;
            }
        }
    }
    complete_many(&state.db, &done, now).await?;
    Ok(n)
}

/// Logs a failed mail and records it on its job: retried later, or dead.
async fn record_failure(
    state: &AppState,
    job: &ClaimedJob,
    failure: JobFailure,
    now: DateTime<Utc>,
) -> Result<(), sea_orm::DbErr> {
    let (kind, msg) = match &failure {
        JobFailure::Retry(m) => ("retry", m.as_str()),
        JobFailure::Permanent(m) => ("permanent", m.as_str()),
    };
    let subject = job.subject_hash.as_deref().map(log_id).unwrap_or("-");
    tracing::warn!(job = job.id, subject = %subject, failure = kind, error = %msg, "mail not sent");
    fail(&state.db, job, failure, state.config.mail.max_attempts, now).await
}

/// The handed-off first mails whose subscriptions still wait for them, with
/// their batch jobs' ids. One that was confirmed through a link sent again,
/// deleted (an unsubscribe, an erasure) or whose subscriber is restricted
/// gets no mail.
async fn still_waiting(
    state: &AppState,
    handed: Vec<HandedOff>,
) -> Result<Vec<(i64, FirstMail)>, sea_orm::DbErr> {
    let ids: Vec<i64> = handed
        .iter()
        .flat_map(|h| h.mails.iter().map(|m| m.subscription_id))
        .collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let waiting = crate::services::subscribe::waiting_first_links(&state.db, &ids).await?;
    Ok(handed
        .into_iter()
        .flat_map(|h| h.mails.into_iter().map(move |m| (h.id, m)))
        .filter(|(_, m)| waiting.get(&m.subscription_id) == Some(&m.token_hash))
        .collect())
}

async fn send(state: &AppState, job: &MailJob) -> Result<(), JobFailure> {
    let mail = match job {
        MailJob::Confirm {
            to,
            name,
            list,
            token,
            locale,
        } => {
            let locale = Locale::parse(locale).unwrap_or(Locale::Sv);
            let list_name = state
                .config
                .list(list)
                .map(|l| l.name.clone())
                .unwrap_or_else(|| list.clone());
            let base = state.config.public_base();
            let lang = locale.code();
            let confirm_url = format!("{base}/v1/subscriptions/confirm?token={token}&lang={lang}");
            let block_url = format!("{base}/v1/subscriptions/block?token={token}&lang={lang}");
            render_confirmation(
                &state.templates,
                &state.config,
                &ConfirmationMail {
                    to,
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
            let locale = Locale::parse(locale).unwrap_or(Locale::Sv);
            let url = format!(
                "{}/v1/privacy/requests/{token}?lang={}",
                state.config.public_base(),
                locale.code()
            );
            crate::mail::render_privacy(&state.templates, &state.config, to, kind, &url, locale)
                .map_err(|e| JobFailure::Permanent(format!("render: {e}")))?
        }
        MailJob::FirstConfirmations { .. } => {
            return Err(JobFailure::Permanent(
                "a batch of first mails is not one mail".into(),
            ));
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
