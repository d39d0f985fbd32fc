//! Sends queued mail. `try_execute_task` does one job and says whether there was
//! one, so tests drive the worker step by step; the loop works through full
//! claims at once and lets smaller amounts of mail gather first.
use std::time::Duration;

use crate::shutdown::Shutdown;
use serde::{Deserialize, Serialize};

use super::{ExecutionOutcome, JobFailure, JobKind, claim_and_do, complete_many, fail};
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

/// Claims one due mail job and sends it.
#[tracing::instrument(skip_all)]
pub async fn try_execute_task(state: &AppState) -> anyhow::Result<ExecutionOutcome> {
    Ok(ExecutionOutcome::of(execute_batch(state, 1).await?))
}

/// How many mails one worker sends at once.
const PARALLEL_SENDS: usize = 8;

/// Claims up to `limit` due mail jobs, sends them (a few at a time) and
/// records the outcomes; returns how many jobs it took.
pub async fn execute_batch(state: &AppState, limit: u32) -> anyhow::Result<usize> {
    let results = claim_and_do(
        state,
        JobKind::Mail,
        limit,
        PARALLEL_SENDS,
        |mail: MailJob| send(state, mail),
    )
    .await?;
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
