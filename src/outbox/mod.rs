//! The durable outbox. Work that must follow a change (a confirmation mail; later
//! Mailchimp calls and outbound events) is written as a row in the same
//! transaction as the change, and workers carry it out after the commit, with
//! retries. A job's payload is cleared the moment it is done.
pub mod mail_worker;
mod store;

pub use store::{
    ClaimedJob, JobFailure, JobKind, claim, complete_many, complete_with_note, enqueue, fail,
    job_model, status_in,
};

/// What one step of a worker did.
#[derive(Debug, PartialEq, Eq)]
pub enum ExecutionOutcome {
    TaskCompleted,
    EmptyQueue,
}

impl ExecutionOutcome {
    /// The outcome of a step that took `jobs` jobs.
    pub fn of(jobs: usize) -> Self {
        if jobs == 0 {
            Self::EmptyQueue
        } else {
            Self::TaskCompleted
        }
    }
}

/// Claims up to `limit` due jobs of `kind` and does them, `parallel` at a
/// time (see [`do_jobs`]).
pub async fn claim_and_do<P, R, F, Fut>(
    state: &crate::state::AppState,
    kind: JobKind,
    limit: u32,
    parallel: usize,
    work: F,
) -> Result<Vec<(ClaimedJob, Result<R, JobFailure>)>, sea_orm::DbErr>
where
    P: serde::de::DeserializeOwned,
    F: Fn(P) -> Fut,
    Fut: Future<Output = Result<R, JobFailure>>,
{
    let lease = kind.lease(&state.config);
    let jobs = claim(&state.db, kind, lease, limit, state.now()).await?;
    Ok(do_jobs(jobs, parallel, work).await)
}

/// Does claimed jobs, `parallel` at a time: each payload read as a `P` and
/// handed to `work`. A payload that is gone or unreadable is a permanent
/// failure. Answers each job with its result, for the caller to record.
pub async fn do_jobs<P, R, F, Fut>(
    jobs: Vec<ClaimedJob>,
    parallel: usize,
    work: F,
) -> Vec<(ClaimedJob, Result<R, JobFailure>)>
where
    P: serde::de::DeserializeOwned,
    F: Fn(P) -> Fut,
    Fut: Future<Output = Result<R, JobFailure>>,
{
    use futures_util::StreamExt;

    futures_util::stream::iter(jobs)
        .map(|job| {
            let payload = job.payload.as_deref().map(serde_json::from_str::<P>);
            let work = match payload {
                Some(Ok(p)) => Ok(work(p)),
                Some(Err(e)) => Err(JobFailure::Permanent(format!("unreadable payload: {e}"))),
                None => Err(JobFailure::Permanent("payload was cleared".into())),
            };
            async move {
                let result = match work {
                    Ok(fut) => fut.await,
                    Err(failure) => Err(failure),
                };
                (job, result)
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await
}

/// The loop of a worker that claims up to `limit` jobs a step: after a full
/// claim it goes straight on; otherwise it waits for `wake` (a commit that
/// queued work, after which it lets more gather for `gather`), a 2 s poll,
/// or `shutdown`.
pub async fn work_loop<F, Fut>(
    state: crate::state::AppState,
    mut shutdown: crate::shutdown::Shutdown,
    what: &'static str,
    limit: u32,
    wake: fn(&crate::state::State) -> &tokio::sync::Notify,
    gather: std::time::Duration,
    step: F,
) where
    F: Fn(crate::state::AppState, u32) -> Fut,
    Fut: Future<Output = anyhow::Result<usize>>,
{
    use std::time::Duration;
    loop {
        if shutdown.is_triggered() {
            return;
        }
        match step(state.clone(), limit).await {
            Ok(n) if n == limit as usize => continue,
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, worker = what, "worker step failed"),
        }
        tokio::select! {
            _ = wake(&state).notified() => {
                if !gather.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(gather) => {}
                        _ = shutdown.wait() => return,
                    }
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.wait() => return,
        }
    }
}
