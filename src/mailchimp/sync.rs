//! The Mailchimp sync worker: carries out the outbox's Mailchimp jobs.
//!
//! `execute_batch` claims due jobs and does them; tests call it step by step
//! (`try_execute_task`), `run` loops over it inside `serve` and sleeps only
//! when the queue is empty. Upserts for one list beyond
//! `mailchimp.batch_threshold` go through the batch endpoint, 500 a call;
//! everything else is one call a job. The client keeps at most
//! `mailchimp.concurrency` calls in flight.
use std::{collections::HashMap, time::Duration};

use futures_util::StreamExt;
use serde::Serialize;

use super::{
    client::{CallError, MailchimpClient, MemberBody},
    jobs::MailchimpJob,
};
use crate::{
    outbox::{
        ClaimedJob, ExecutionOutcome, JobFailure, JobKind, claim, complete_many,
        complete_with_note, fail,
    },
    shutdown::Shutdown,
    state::AppState,
};

/// The batch endpoint takes at most this many members a call.
const BATCH_MAX: usize = 500;
/// How many jobs one step claims: one batch call's worth, and few enough that
/// one by one (at `concurrency` at a time) they finish well inside the lease.
const CLAIM: u32 = 500;

/// What became of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Done,
    /// Done, but with something worth recording (e.g. forgotten there).
    DoneWithNote(String),
    Retry(String),
    Permanent(String),
}

/// Claims one step's worth of due jobs and does them.
pub async fn try_execute_task(state: &AppState) -> anyhow::Result<ExecutionOutcome> {
    Ok(ExecutionOutcome::of(execute_batch(state, CLAIM).await?))
}

/// Claims up to `limit` due Mailchimp jobs, carries them out and records the
/// outcomes; returns how many it took. Without a configured client the jobs
/// stay queued.
#[tracing::instrument(skip_all)]
pub async fn execute_batch(state: &AppState, limit: u32) -> anyhow::Result<usize> {
    let Some(client) = state.mailchimp.as_deref() else {
        return Ok(0);
    };
    let lease = JobKind::Mailchimp.lease(&state.config);
    let jobs = claim(&state.db, JobKind::Mailchimp, lease, limit, state.now()).await?;
    let taken = jobs.len();
    if taken == 0 {
        return Ok(0);
    }

    // Group: upserts by list (batched when many), the rest one by one.
    let mut units: Vec<Vec<(ClaimedJob, MailchimpJob)>> = Vec::new();
    let mut upserts: HashMap<String, Vec<(ClaimedJob, MailchimpJob)>> = HashMap::new();
    let mut unreadable = Vec::new();
    for job in jobs {
        match job
            .payload
            .as_deref()
            .map(serde_json::from_str::<MailchimpJob>)
        {
            Some(Ok(mj @ MailchimpJob::Upsert { .. })) => upserts
                .entry(mj.list_id().to_string())
                .or_default()
                .push((job, mj)),
            Some(Ok(mj)) => units.push(vec![(job, mj)]),
            Some(Err(e)) => {
                unreadable.push((job, Outcome::Permanent(format!("unreadable payload: {e}"))))
            }
            None => unreadable.push((job, Outcome::Permanent("payload was cleared".into()))),
        }
    }
    let threshold = state.config.mailchimp.batch_threshold;
    for (_, group) in upserts {
        if group.len() > threshold {
            let mut group = group.into_iter().peekable();
            while group.peek().is_some() {
                units.push(group.by_ref().take(BATCH_MAX).collect());
            }
        } else {
            units.extend(group.into_iter().map(|j| vec![j]));
        }
    }

    let fallback = state.config.mailchimp.compliance_fallback_pending;
    let parallel = state.config.mailchimp.concurrency.max(1) as usize;
    let results: Vec<Vec<(ClaimedJob, Outcome)>> = futures_util::stream::iter(units)
        .map(|unit| async move {
            if unit.len() == 1 {
                let (job, mj) = unit.into_iter().next().expect("one job");
                let outcome = do_one(client, &mj, fallback).await;
                vec![(job, outcome)]
            } else {
                do_batch(client, unit, fallback).await
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;

    let now = state.now();
    let max_attempts = state.config.mailchimp.max_attempts;
    let mut done = Vec::new();
    for (job, outcome) in results.into_iter().flatten().chain(unreadable) {
        match outcome {
            Outcome::Done => done.push(job.id),
            Outcome::DoneWithNote(note) => {
                tracing::info!(job = job.id, note = %note, "mailchimp job done with a note");
                complete_with_note(&state.db, job.id, &note, now).await?;
            }
            Outcome::Retry(m) => {
                tracing::warn!(job = job.id, error = %m, "mailchimp call failed; will retry");
                fail(&state.db, &job, JobFailure::Retry(m), max_attempts, now).await?;
            }
            Outcome::Permanent(m) => {
                tracing::warn!(job = job.id, error = %m, "mailchimp job dead-lettered");
                fail(&state.db, &job, JobFailure::Permanent(m), max_attempts, now).await?;
            }
        }
    }
    complete_many(&state.db, &done, now).await?;
    Ok(taken)
}

/// One job, one call (two for an upsert that falls back to `pending`).
async fn do_one(client: &MailchimpClient, job: &MailchimpJob, fallback: bool) -> Outcome {
    match job {
        MailchimpJob::Upsert {
            list_id,
            hash,
            member,
        } => upsert_one(client, list_id, hash, member, fallback).await,
        MailchimpJob::Unsubscribe { list_id, hash } => {
            let body = serde_json::json!({"status": "unsubscribed"});
            match client.patch_member(list_id, hash, &body).await {
                Ok(()) | Err(CallError::NotFound) => Outcome::Done,
                Err(e) => failure(e),
            }
        }
        MailchimpJob::Archive { list_id, hash } => match client.archive_member(list_id, hash).await
        {
            // Not there, or not archivable (bounced, pending, archived): done.
            Ok(()) | Err(CallError::NotFound) | Err(CallError::NotAllowed) => Outcome::Done,
            Err(e) => failure(e),
        },
        MailchimpJob::DeletePermanent { list_id, hash } => {
            match client.delete_permanent(list_id, hash).await {
                Ok(()) | Err(CallError::NotFound) => Outcome::Done,
                Err(e) => failure(e),
            }
        }
    }
}

async fn upsert_one(
    client: &MailchimpClient,
    list_id: &str,
    hash: &str,
    member: &MemberBody,
    fallback: bool,
) -> Outcome {
    match client.put_member(list_id, hash, member).await {
        Ok(()) => Outcome::Done,
        Err(CallError::ComplianceState) if fallback => {
            // The person unsubscribed or bounced there: only Mailchimp's own
            // opt-in mail can bring them back.
            let pending = MemberBody {
                status: "pending".into(),
                status_if_new: "pending".into(),
                ..member.clone()
            };
            match client.put_member(list_id, hash, &pending).await {
                Ok(()) => Outcome::DoneWithNote("compliance state: re-sent as pending".into()),
                Err(e) => failure(e),
            }
        }
        Err(e) => failure(e),
    }
}

/// Upserts through the batch endpoint; members it reports errors for are
/// tried one by one (which applies the compliance fallback).
async fn do_batch(
    client: &MailchimpClient,
    unit: Vec<(ClaimedJob, MailchimpJob)>,
    fallback: bool,
) -> Vec<(ClaimedJob, Outcome)> {
    let list_id = unit[0].1.list_id().to_string();
    let members: Vec<MemberBody> = unit
        .iter()
        .filter_map(|(_, mj)| match mj {
            MailchimpJob::Upsert { member, .. } => Some((**member).clone()),
            _ => None,
        })
        .collect();
    match client.batch_upsert(&list_id, &members).await {
        Ok(answer) => {
            let failed: std::collections::HashSet<String> = answer
                .errors
                .iter()
                .map(|e| e.email_address.to_lowercase())
                .collect();
            let mut out = Vec::with_capacity(unit.len());
            for (job, mj) in unit {
                let outcome = match &mj {
                    MailchimpJob::Upsert {
                        list_id,
                        hash,
                        member,
                    } if failed.contains(&member.email_address.to_lowercase()) => {
                        upsert_one(client, list_id, hash, member, fallback).await
                    }
                    _ => Outcome::Done,
                };
                out.push((job, outcome));
            }
            out
        }
        Err(e @ CallError::Transient(_)) => {
            let m = e.to_string();
            unit.into_iter()
                .map(|(job, _)| (job, Outcome::Retry(m.clone())))
                .collect()
        }
        // The batch as a whole was refused: try each member on its own.
        Err(_) => {
            let mut out = Vec::with_capacity(unit.len());
            for (job, mj) in unit {
                let outcome = do_one(client, &mj, fallback).await;
                out.push((job, outcome));
            }
            out
        }
    }
}

fn failure(e: CallError) -> Outcome {
    match e {
        CallError::Transient(m) => Outcome::Retry(m),
        CallError::Forgotten => {
            Outcome::DoneWithNote("Forgotten Email Not Subscribed: not re-added".into())
        }
        other => Outcome::Permanent(other.to_string()),
    }
}

/// Runs until `shutdown` fires: works while there is work, then waits for a
/// wake-up (a commit that queued a Mailchimp job) or a poll interval.
pub async fn run(state: AppState, mut shutdown: Shutdown) {
    loop {
        if shutdown.is_triggered() {
            return;
        }
        match execute_batch(&state, CLAIM).await {
            Ok(0) => {}
            Ok(_) => continue,
            Err(e) => tracing::error!(error = %e, "mailchimp worker step failed"),
        }
        tokio::select! {
            _ = state.sync_notify.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.wait() => return,
        }
    }
}

/// The outbox as `GET /v1/sync` and `listguard mailchimp status` show it.
#[derive(Debug, Clone, Serialize)]
pub struct SyncStatus {
    pub mailchimp_enabled: bool,
    pub pending: u64,
    pub in_flight: u64,
    pub dead: u64,
    pub dead_letters: Vec<DeadLetter>,
    pub lists: Vec<ListSyncStatus>,
}

/// A job that exhausted its retries (or failed for good). Holds no address.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub kind: String,
    pub op: Option<String>,
    pub list_id: Option<String>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListSyncStatus {
    pub list: String,
    pub mailchimp_list_id: String,
    pub pending: u64,
    pub last_reconcile: Option<serde_json::Value>,
}

/// The settings key under which the last reconciliation of a list is kept.
pub fn reconcile_setting_key(slug: &str) -> String {
    format!("mailchimp.reconcile.{slug}")
}

/// Counts, dead letters (the newest 100) and, per mapped list, the pending
/// jobs and the last reconciliation.
pub async fn status(state: &AppState) -> Result<SyncStatus, sea_orm::DbErr> {
    use entity::{outbox, setting};
    use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};

    // Unsent jobs are a few rows in the partial indexes; finished ones may be
    // many, hence the statuses written into the statements (`status_in`).
    let count = |s: &'static str| {
        outbox::Entity::find()
            .filter(crate::outbox::status_in(&[s]))
            .count(&state.db)
    };
    let (pending, in_flight, dead) = (
        count("pending").await?,
        count("in_flight").await?,
        count("dead").await?,
    );
    let dead_letters = outbox::Entity::find()
        .filter(crate::outbox::status_in(&["dead"]))
        .order_by_desc(outbox::Column::Id)
        .limit(100)
        .all(&state.db)
        .await?
        .into_iter()
        .map(|row| {
            let job = row
                .payload
                .as_deref()
                .filter(|_| row.kind == JobKind::Mailchimp.as_str())
                .and_then(|p| serde_json::from_str::<MailchimpJob>(p).ok());
            DeadLetter {
                id: row.id,
                kind: row.kind,
                op: job.as_ref().map(|j| j.op().to_string()),
                list_id: job.as_ref().map(|j| j.list_id().to_string()),
                attempts: row.attempts,
                last_error: row.last_error,
                updated_at: row.updated_at,
            }
        })
        .collect();
    let mut lists = Vec::new();
    for l in &state.config.lists {
        let Some(list_id) = &l.mailchimp_list_id else {
            continue;
        };
        let pending = outbox::Entity::find()
            .filter(outbox::Column::Status.eq("pending"))
            .filter(outbox::Column::MemberKey.starts_with(format!("mailchimp:{list_id}:")))
            .count(&state.db)
            .await?;
        let last_reconcile = setting::Entity::find_by_id(reconcile_setting_key(&l.slug))
            .one(&state.db)
            .await?
            .and_then(|s| serde_json::from_str(&s.value).ok());
        lists.push(ListSyncStatus {
            list: l.slug.clone(),
            mailchimp_list_id: list_id.clone(),
            pending,
            last_reconcile,
        });
    }
    Ok(SyncStatus {
        mailchimp_enabled: state.mailchimp.is_some(),
        pending,
        in_flight,
        dead,
        dead_letters,
        lists,
    })
}

/// Puts a dead letter back in the queue, due now, with a fresh retry budget.
/// False when there is no dead job with that id.
pub async fn retry_dead_letter(state: &AppState, id: i64) -> Result<bool, sea_orm::DbErr> {
    use entity::outbox;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};

    let now = state.now();
    let changed = outbox::Entity::update_many()
        .col_expr(outbox::Column::Status, Expr::value("pending"))
        .col_expr(outbox::Column::Attempts, Expr::value(0))
        .col_expr(outbox::Column::NextAttemptAt, Expr::value(now))
        .col_expr(outbox::Column::UpdatedAt, Expr::value(now))
        .filter(outbox::Column::Id.eq(id))
        .filter(outbox::Column::Status.eq("dead"))
        .filter(outbox::Column::Payload.is_not_null())
        .exec(&state.db)
        .await?
        .rows_affected;
    if changed > 0 {
        state.sync_notify.notify_one();
        state.outbox_notify.notify_one();
    }
    Ok(changed > 0)
}

/// `listguard mailchimp status [--list SLUG]`.
pub async fn print_status(state: &AppState, slug: Option<&str>) -> anyhow::Result<()> {
    if let Some(s) = slug
        && state.config.list(s).is_none()
    {
        anyhow::bail!("no list {s:?} is configured");
    }
    let st = status(state).await?;
    println!(
        "mailchimp   {}",
        if st.mailchimp_enabled {
            "on"
        } else {
            "off (no mailchimp.api_key)"
        }
    );
    println!("pending     {}", st.pending);
    println!("in flight   {}", st.in_flight);
    println!("dead        {}", st.dead);
    for l in st.lists.iter().filter(|l| slug.is_none_or(|s| s == l.list)) {
        let last = l
            .last_reconcile
            .as_ref()
            .and_then(|v| v.get("finished_at"))
            .and_then(|v| v.as_str())
            .unwrap_or("never");
        println!(
            "list {} (audience {}): {} pending, last reconciled {last}",
            l.list, l.mailchimp_list_id, l.pending
        );
    }
    for d in &st.dead_letters {
        println!(
            "dead letter {} {} {} attempts={} error={}",
            d.id,
            d.kind,
            d.op.as_deref().unwrap_or("-"),
            d.attempts,
            d.last_error.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}
