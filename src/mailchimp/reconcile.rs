//! Reconciliation: pages through a list's Mailchimp audience and repairs
//! drift in both directions.
//!
//! - A member unsubscribed or cleaned at Mailchimp who is subscribed here is
//!   unsubscribed here (source `reconcile`; `cleaned` counts as a bounce).
//! - A confirmed, unrestricted subscriber here whom Mailchimp lacks, holds as
//!   something other than subscribed (or pending their own opt-in), or holds
//!   under another name, gets an upsert queued.
//! - A member unknown here is left alone: reconciling never brings back what
//!   the purge deleted.
//!
//! A dry run reports the drift and changes neither side.
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use entity::{setting, subscriber, subscription};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, Set, sea_query::OnConflict};
use serde::Serialize;

use super::{client::CallError, jobs, sync::reconcile_setting_key};
use crate::{
    domain::EmailAddress,
    services::{
        suppression::{Reason, Source},
        unsubscribe::{Scope, unsubscribe_in},
    },
    state::AppState,
};

/// Mailchimp's largest page.
const PAGE: u64 = 1000;

/// What a reconciliation found, and did unless it was a dry run.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ReconcileReport {
    pub list: String,
    pub dry_run: bool,
    pub started_at: String,
    pub finished_at: String,
    /// Members listed by Mailchimp.
    pub members_seen: u64,
    /// Subscribed here, unsubscribed or cleaned there: unsubscribed here.
    pub unsubscribed_here: u64,
    /// Confirmed here, missing at Mailchimp: upsert queued.
    pub missing_there: u64,
    /// Confirmed here, another status or name at Mailchimp: upsert queued.
    pub stale_there: u64,
    /// Members Mailchimp has that are unknown here: left alone.
    pub unknown_here: u64,
}

struct Remote {
    status: String,
    fname: String,
    lname: String,
}

/// Reconciles one list. `progress(seen, total)` hears each page.
#[tracing::instrument(skip(state, progress))]
pub async fn reconcile(
    state: &AppState,
    slug: &str,
    dry_run: bool,
    mut progress: impl FnMut(u64, u64),
) -> anyhow::Result<ReconcileReport> {
    let list = state
        .config
        .list(slug)
        .ok_or_else(|| anyhow::anyhow!("no list {slug:?} is configured"))?;
    let list_id = list
        .mailchimp_list_id
        .clone()
        .ok_or_else(|| anyhow::anyhow!("list {slug:?} has no mailchimp_list_id"))?;
    let client = state
        .mailchimp
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("Mailchimp is off: set mailchimp.api_key"))?;
    let started: DateTime<Utc> = state.now();
    let mut report = ReconcileReport {
        list: slug.to_string(),
        dry_run,
        started_at: jobs::mailchimp_time(started),
        ..Default::default()
    };

    // Mailchimp's side, by subscriber hash.
    let mut remote: HashMap<String, Remote> = HashMap::new();
    let mut offset = 0;
    loop {
        let page = client
            .list_members(&list_id, offset, PAGE, None)
            .await
            .map_err(|e: CallError| anyhow::anyhow!("listing the audience: {e}"))?;
        let n = page.members.len() as u64;
        for m in page.members {
            let field = |k: &str| {
                m.merge_fields
                    .get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string()
            };
            let hash = match EmailAddress::parse(&m.email_address) {
                Ok(a) => a.mailchimp_hash(),
                Err(_) => continue,
            };
            remote.insert(
                hash,
                Remote {
                    status: m.status.clone(),
                    fname: field("FNAME"),
                    lname: field("LNAME"),
                },
            );
        }
        offset += n;
        report.members_seen = offset;
        progress(offset, page.total_items.max(offset));
        if n < PAGE {
            break;
        }
    }

    // Ours: the confirmed subscriptions of the list, with their subscribers.
    let subs = subscription::Entity::find()
        .filter(subscription::Column::ListSlug.eq(slug))
        .filter(subscription::Column::Status.eq("confirmed"))
        .find_also_related(subscriber::Entity)
        .all(&state.db)
        .await?;
    let mut queued = false;
    let mut seen_here = std::collections::HashSet::new();
    for (sub, person) in subs {
        let Some(person) = person else { continue };
        let Ok(email) = EmailAddress::parse(&person.email) else {
            continue;
        };
        let hash = email.mailchimp_hash();
        seen_here.insert(hash.clone());
        match remote.get(&hash) {
            Some(r) if r.status == "unsubscribed" || r.status == "cleaned" => {
                report.unsubscribed_here += 1;
                if !dry_run {
                    let reason = if r.status == "cleaned" {
                        Reason::Bounce
                    } else {
                        Reason::Unsubscribed
                    };
                    let now = state.now();
                    let tx = state.begin_write().await?;
                    unsubscribe_in(
                        state,
                        &*tx,
                        &person.email_hash,
                        &Scope::List(slug.to_string()),
                        Source::Reconcile,
                        reason,
                        now,
                    )
                    .await?;
                    tx.commit().await?;
                    state.events_may_be_queued();
                }
            }
            _ if person.restricted => {}
            None => {
                report.missing_there += 1;
                if !dry_run {
                    queued |= push(state, &person, slug, sub.id).await?;
                }
            }
            Some(r) => {
                let want = jobs::split_name(person.name.as_deref());
                let stale = !matches!(r.status.as_str(), "subscribed" | "pending")
                    || (r.status == "subscribed"
                        && (r.fname != want.fname || r.lname != want.lname));
                if stale {
                    report.stale_there += 1;
                    if !dry_run {
                        queued |= push(state, &person, slug, sub.id).await?;
                    }
                }
            }
        }
    }
    report.unknown_here = remote.keys().filter(|h| !seen_here.contains(*h)).count() as u64;
    if queued {
        state.sync_notify.notify_one();
    }
    report.finished_at = jobs::mailchimp_time(state.now());
    if !dry_run {
        let row = setting::ActiveModel {
            key: Set(reconcile_setting_key(slug)),
            value: Set(serde_json::to_string(&report)?),
        };
        setting::Entity::insert(row)
            .on_conflict(
                OnConflict::column(setting::Column::Key)
                    .update_column(setting::Column::Value)
                    .to_owned(),
            )
            .exec(&state.db)
            .await?;
    }
    tracing::info!(
        list = slug,
        dry_run,
        seen = report.members_seen,
        unsubscribed_here = report.unsubscribed_here,
        missing_there = report.missing_there,
        stale_there = report.stale_there,
        "reconciled"
    );
    Ok(report)
}

async fn push(
    state: &AppState,
    person: &subscriber::Model,
    slug: &str,
    subscription_id: i64,
) -> anyhow::Result<bool> {
    let now = state.now();
    let tx = state.begin_write().await?;
    let queued =
        jobs::queue_upsert(&*tx, &state.config, person, slug, subscription_id, now).await?;
    tx.commit().await?;
    Ok(queued)
}

/// `listguard mailchimp reconcile --list SLUG [--dry-run]`: a progress line
/// on standard error, the report on standard output.
pub async fn run_cli(state: &AppState, slug: &str, dry_run: bool) -> anyhow::Result<()> {
    use std::io::Write;

    let report = reconcile(state, slug, dry_run, |seen, total| {
        let mut err = std::io::stderr();
        let _ = write!(err, "\rreconcile {slug}: {seen}/{total} members read");
        let _ = err.flush();
    })
    .await?;
    eprintln!();
    let verb = if dry_run { "would" } else { "did" };
    println!("list                {}", report.list);
    println!("members at mailchimp {}", report.members_seen);
    println!("unsubscribe here    {} ({verb})", report.unsubscribed_here);
    println!("push, missing there {} ({verb})", report.missing_there);
    println!("push, stale there   {} ({verb})", report.stale_there);
    println!("unknown here, left  {}", report.unknown_here);
    Ok(())
}

/// Reconciles every mapped list every `mailchimp.reconcile_interval`, inside
/// `serve`. Safe on several replicas: a repeated run finds no drift.
pub async fn run(state: AppState, mut shutdown: crate::shutdown::Shutdown) {
    if state.mailchimp.is_none() {
        return;
    }
    let period = state
        .config
        .mailchimp
        .reconcile_interval
        .approx_std()
        .max(std::time::Duration::from_secs(60));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once; start one period after start-up instead.
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait() => return,
        }
        for l in state
            .config
            .lists
            .iter()
            .filter(|l| l.mailchimp_list_id.is_some())
        {
            if let Err(e) = reconcile(&state, &l.slug, false, |_, _| {}).await {
                tracing::warn!(list = %l.slug, error = format!("{e:#}"), "scheduled reconcile failed");
            }
        }
    }
}
