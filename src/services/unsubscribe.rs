//! Unsubscribing: the subscription leaves the active list at once, the
//! subscriber goes when no subscription remains, the consent record stays as
//! proof but only under the address hash, and a suppression entry makes sure
//! no further mailing happens for its month. One transaction, outbox included.
use chrono::{DateTime, Utc};
use entity::{consent_event, outbox, subscriber, subscription};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, IntoActiveModel,
    PaginatorTrait, QueryFilter, QueryOrder, Set, sea_query::Expr,
};

use super::suppression::{self, ALL_LISTS, Reason, Source};
use crate::{
    domain::EmailAddress,
    mailchimp::{MailchimpJob, jobs as mailchimp_jobs},
    outbox::mail_worker::MailJob,
    secrets::log_id,
    state::AppState,
};

/// Which lists to leave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    List(String),
    /// Every list of the address (an administrator acting on a request).
    AllLists,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubscribeOutcome {
    /// The lists the address was on and has left now.
    pub left: Vec<String>,
    /// Whether Mailchimp jobs were queued (the worker is to be woken).
    pub queued_sync: bool,
}

/// Unsubscribes the address behind `email_hash`: the subscriptions in `scope`
/// go, a suppression entry with `reason` is written, and Mailchimp is told
/// (unless the change came from Mailchimp). Concurrent unsubscribes share a
/// transaction (see [`unsubscribe_batch`]).
#[tracing::instrument(skip_all, fields(subject = log_id(email_hash)))]
pub async fn unsubscribe(
    state: &AppState,
    email_hash: &str,
    scope: &Scope,
    source: Source,
    reason: Reason,
) -> anyhow::Result<UnsubscribeOutcome> {
    let job = UnsubscribeJob {
        email_hash: email_hash.to_string(),
        scope: scope.clone(),
        source,
        reason,
    };
    let outcome = state.unsubscribes().submit(job).await?;
    tracing::info!(lists = ?outcome.left, source = source.as_str(), "unsubscribed");
    Ok(outcome)
}

/// One unsubscribe waiting for its batch.
#[derive(Debug, Clone)]
pub struct UnsubscribeJob {
    pub email_hash: String,
    pub scope: Scope,
    pub source: Source,
    pub reason: Reason,
}

/// Carries out a batch of unsubscribes in one transaction, one commit for
/// all; should it fail, each is retried in a transaction of its own, so one
/// bad request cannot fail the others.
pub async fn unsubscribe_batch(
    state: &AppState,
    jobs: Vec<UnsubscribeJob>,
) -> Vec<anyhow::Result<UnsubscribeOutcome>> {
    async fn run(
        state: &AppState,
        jobs: &[UnsubscribeJob],
    ) -> anyhow::Result<Vec<UnsubscribeOutcome>> {
        let now = state.now();
        let tx = state.begin_write().await?;
        let mut out = Vec::with_capacity(jobs.len());
        for j in jobs {
            out.push(
                unsubscribe_in(
                    state,
                    &*tx,
                    &j.email_hash,
                    &j.scope,
                    j.source,
                    j.reason,
                    now,
                )
                .await?,
            );
        }
        tx.commit().await?;
        Ok(out)
    }
    let outcomes: Vec<anyhow::Result<UnsubscribeOutcome>> = match run(state, &jobs).await {
        Ok(all) => all.into_iter().map(Ok).collect(),
        Err(e) if jobs.len() > 1 => {
            tracing::debug!(error = %e, size = jobs.len(), "unsubscribe batch failed; retrying one by one");
            let mut out = Vec::with_capacity(jobs.len());
            for j in &jobs {
                out.push(
                    run(state, std::slice::from_ref(j))
                        .await
                        .map(|mut v| v.remove(0)),
                );
            }
            out
        }
        Err(e) => vec![Err(e)],
    };
    if outcomes
        .iter()
        .any(|o| o.as_ref().is_ok_and(|o| o.queued_sync))
    {
        state.sync_notify.notify_one();
    }
    outcomes
}

/// The same inside the caller's transaction.
pub async fn unsubscribe_in<C: ConnectionTrait>(
    state: &AppState,
    conn: &C,
    email_hash: &str,
    scope: &Scope,
    source: Source,
    reason: Reason,
    now: DateTime<Utc>,
) -> Result<UnsubscribeOutcome, DbErr> {
    let person = subscriber::Entity::find()
        .filter(subscriber::Column::EmailHash.eq(email_hash))
        .one(conn)
        .await?;
    let mut left = Vec::new();
    if let Some(person) = &person {
        let mut q =
            subscription::Entity::find().filter(subscription::Column::SubscriberId.eq(person.id));
        if let Scope::List(list) = scope {
            q = q.filter(subscription::Column::ListSlug.eq(list));
        }
        for sub in q
            .order_by_asc(subscription::Column::ListSlug)
            .all(conn)
            .await?
        {
            // Detach the consent record: it stays, keyed by the address hash,
            // until the suppression entry expires.
            consent_event::Entity::update_many()
                .col_expr(
                    consent_event::Column::SubscriptionId,
                    Expr::value(Option::<i64>::None),
                )
                .filter(consent_event::Column::SubscriptionId.eq(sub.id))
                .exec(conn)
                .await?;
            if sub.status != "confirmed" {
                // An unconfirmed signup gave no consent worth keeping.
                consent_event::Entity::delete_many()
                    .filter(consent_event::Column::EmailHash.eq(email_hash))
                    .filter(consent_event::Column::ListSlug.eq(&sub.list_slug))
                    .filter(consent_event::Column::SubscriptionId.is_null())
                    .filter(consent_event::Column::Kind.eq("requested"))
                    .filter(consent_event::Column::OccurredAt.gte(sub.created_at))
                    .exec(conn)
                    .await?;
            }
            subscription::Entity::delete_by_id(sub.id)
                .exec(conn)
                .await?;
            left.push(sub.list_slug);
        }
    }
    let remaining = match &person {
        Some(p) => {
            subscription::Entity::find()
                .filter(subscription::Column::SubscriberId.eq(p.id))
                .count(conn)
                .await?
        }
        None => 0,
    };
    if let Some(p) = &person
        && remaining == 0
    {
        subscriber::Entity::delete_by_id(p.id).exec(conn).await?;
    }
    cancel_jobs_about(conn, email_hash, scope, remaining == 0, now).await?;

    // The suppression entries: one per list left, or per requested list; an
    // administrator acting for all lists of an unknown address suppresses all.
    let scopes: Vec<String> = match scope {
        Scope::List(l) => vec![l.clone()],
        Scope::AllLists if left.is_empty() => vec![ALL_LISTS.to_string()],
        Scope::AllLists => left.clone(),
    };
    // Kept with an entry for a Mailchimp-mapped list, so the member can be
    // archived there when the entry expires; the address itself is not kept.
    let member_hash = person
        .as_ref()
        .and_then(|p| EmailAddress::parse(&p.email).ok())
        .map(|a| a.mailchimp_hash());
    // Tell Mailchimp, by subscriber hash only, for each mapped list left;
    // not when the change came from Mailchimp (it knows, and must not hear
    // its own change echoed back).
    let mut queued_sync = false;
    if let Some(member) = &member_hash
        && !matches!(source, Source::Mailchimp | Source::Reconcile)
    {
        for slug in &left {
            if let Some(list_id) = state
                .config
                .list(slug)
                .and_then(|l| l.mailchimp_list_id.as_deref())
            {
                let job = MailchimpJob::Unsubscribe {
                    list_id: list_id.to_string(),
                    hash: member.clone(),
                };
                mailchimp_jobs::enqueue(conn, &job, None, now).await?;
                queued_sync = true;
            }
        }
    }
    for s in scopes {
        let mailchimp_hash = member_hash
            .clone()
            .filter(|_| state.config.mailchimp_mapped(&s));
        let active = suppression::active_for(conn, email_hash, &s, now)
            .await?
            .into_iter()
            .any(|e| e.scope == s);
        if !active {
            suppression::add(
                conn,
                &state.config,
                email_hash,
                &s,
                reason,
                source,
                mailchimp_hash,
                now,
            )
            .await?;
        }
    }
    Ok(UnsubscribeOutcome { left, queued_sync })
}

/// Cancels unsent jobs that still hold the address: all of them when the
/// subscriber is gone, else those for the lists left.
async fn cancel_jobs_about<C: ConnectionTrait>(
    conn: &C,
    email_hash: &str,
    scope: &Scope,
    subscriber_gone: bool,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let jobs = outbox::Entity::find()
        .filter(outbox::Column::SubjectHash.eq(email_hash))
        .filter(outbox::Column::Status.is_in(["pending", "in_flight", "dead"]))
        .all(conn)
        .await?;
    for job in jobs {
        let concerns_scope = match (scope, job.payload.as_deref()) {
            (Scope::AllLists, _) => true,
            (Scope::List(l), Some(p)) => match serde_json::from_str::<MailJob>(p) {
                Ok(MailJob::Confirm { list, .. }) => &list == l,
                Err(_) => false,
            },
            (Scope::List(_), None) => false,
        };
        if subscriber_gone || concerns_scope {
            let mut am = job.into_active_model();
            am.status = Set("cancelled".into());
            am.payload = Set(None);
            am.locked_until = Set(None);
            am.updated_at = Set(now);
            am.update(conn).await?;
        }
    }
    Ok(())
}
