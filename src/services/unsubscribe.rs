//! Unsubscribing: the subscription leaves the active list at once, the
//! subscriber goes when no subscription remains, the consent record stays as
//! proof but only under the address hash, and a suppression entry makes sure
//! no further mailing happens for its month. One transaction, outbox included.
use chrono::{DateTime, Utc};
use entity::{consent_event, outbox, subscriber, subscription};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, Statement, sea_query::Expr,
};

use super::{
    consent::ConsentKind,
    suppression::{self, ALL_LISTS, Reason, Source},
};
use crate::{
    domain::EmailAddress,
    mailchimp::{MailchimpJob, jobs as mailchimp_jobs},
    outbox::{JobKind, mail_worker::MailJob},
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
        // The common case (one list each, distinct addresses) goes set-based.
        let mut seen = std::collections::HashSet::new();
        let one_list_each: Option<Vec<(&UnsubscribeJob, &str)>> = jobs
            .iter()
            .map(|j| match &j.scope {
                Scope::List(l) if seen.insert(j.email_hash.as_str()) => Some((j, l.as_str())),
                _ => None,
            })
            .collect();
        // The one-statement PostgreSQL path queues no outbound events: with
        // an endpoint that takes them, the general path below does.
        if let Some(many) = &one_list_each
            && state.db.get_database_backend() == DbBackend::Postgres
            && !events_wanted(&state.config)
        {
            return unsubscribe_many_postgres(state, many, now).await;
        }
        let tx = state.begin_write().await?;
        let out = match one_list_each {
            Some(many) if many.len() > 1 => unsubscribe_many_in(state, &*tx, &many, now).await?,
            _ => {
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
                out
            }
        };
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
    if events_wanted(&state.config) {
        state.events_notify.notify_one();
    }
    outcomes
}

/// Whether an unsubscribe may queue outbound events.
fn events_wanted(config: &crate::config::Config) -> bool {
    use crate::events::{EventType, wanted};
    wanted(config, EventType::SubscriptionUnsubscribed)
        || wanted(config, EventType::SuppressionAdded)
}

/// A `subscription.unsubscribed` event for each list left, naming the
/// person by the address hash only.
async fn tell_endpoints<C: ConnectionTrait>(
    state: &AppState,
    conn: &C,
    email_hash: &str,
    left: &[String],
    source: Source,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    use crate::events::{EventType, queue};
    for list in left {
        let data = serde_json::json!({
            "email_hash": email_hash,
            "list": list,
            "source": source.as_str(),
            "unsubscribed_at": now,
        });
        queue(
            conn,
            &state.config,
            EventType::SubscriptionUnsubscribed,
            data,
            None,
            now,
        )
        .await?;
    }
    Ok(())
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
                drop_unconfirmed_consent(conn, email_hash, &sub).await?;
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
    let queued_sync =
        tell_mailchimp(state, conn, member_hash.as_deref(), &left, source, now).await?;
    tell_endpoints(state, conn, email_hash, &left, source, now).await?;
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

/// An unconfirmed signup gave no consent worth keeping: its (already
/// detached) `requested` event goes with it.
async fn drop_unconfirmed_consent<C: ConnectionTrait>(
    conn: &C,
    email_hash: &str,
    sub: &subscription::Model,
) -> Result<(), DbErr> {
    consent_event::Entity::delete_many()
        .filter(consent_event::Column::EmailHash.eq(email_hash))
        .filter(consent_event::Column::ListSlug.eq(&sub.list_slug))
        .filter(consent_event::Column::SubscriptionId.is_null())
        .filter(consent_event::Column::Kind.eq("requested"))
        .filter(consent_event::Column::OccurredAt.gte(sub.created_at))
        .exec(conn)
        .await?;
    Ok(())
}

/// Tells Mailchimp, by subscriber hash only, of each mapped list left; not
/// when the change came from Mailchimp (it knows, and must not hear its own
/// change echoed back). Returns whether a job was queued.
async fn tell_mailchimp<C: ConnectionTrait>(
    state: &AppState,
    conn: &C,
    member_hash: Option<&str>,
    left: &[String],
    source: Source,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let Some(member) = member_hash else {
        return Ok(false);
    };
    if matches!(source, Source::Mailchimp | Source::Reconcile) {
        return Ok(false);
    }
    mailchimp_jobs::queue_unsubscribes(
        conn,
        &state.config,
        left.iter().map(String::as_str),
        member,
        now,
    )
    .await
}

/// Whether an unsent job must go with the unsubscribe: all of them when the
/// subscriber is gone, else the confirmation mails for the lists left.
fn job_concerns(job: &outbox::Model, scope: &Scope, subscriber_gone: bool) -> bool {
    subscriber_gone
        || match (scope, job.payload.as_deref()) {
            (Scope::AllLists, _) => true,
            (Scope::List(l), Some(p)) => match serde_json::from_str::<MailJob>(p) {
                Ok(MailJob::Confirm { list, .. }) => &list == l,
                Ok(MailJob::Privacy { .. } | MailJob::FirstConfirmations { .. }) | Err(_) => false,
            },
            (Scope::List(_), None) => false,
        }
}

/// The unsent jobs about these address hashes.
async fn unsent_jobs_about<C: ConnectionTrait>(
    conn: &C,
    hashes: &[&str],
) -> Result<Vec<outbox::Model>, DbErr> {
    outbox::Entity::find()
        .filter(outbox::Column::SubjectHash.is_in(hashes.iter().copied()))
        .filter(crate::outbox::status_in(&["pending", "in_flight", "dead"]))
        .all(conn)
        .await
}

/// Cancels jobs and clears the payloads that still hold addresses.
async fn cancel_jobs<C: ConnectionTrait>(
    conn: &C,
    ids: Vec<i64>,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    if ids.is_empty() {
        return Ok(());
    }
    outbox::Entity::update_many()
        .col_expr(outbox::Column::Status, Expr::value("cancelled"))
        .col_expr(outbox::Column::Payload, Expr::value(Option::<String>::None))
        .col_expr(
            outbox::Column::LockedUntil,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .col_expr(outbox::Column::UpdatedAt, Expr::value(now))
        .filter(outbox::Column::Id.is_in(ids))
        .exec(conn)
        .await?;
    Ok(())
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
    let ids = unsent_jobs_about(conn, &[email_hash])
        .await?
        .iter()
        .filter(|j| job_concerns(j, scope, subscriber_gone))
        .map(|j| j.id)
        .collect();
    cancel_jobs(conn, ids, now).await
}

/// Many one-list unsubscribes of distinct addresses inside the caller's
/// transaction, with a handful of set-based statements for all of them
/// (what [`unsubscribe_in`] does for one, with the same outcome for each).
async fn unsubscribe_many_in<C: ConnectionTrait>(
    state: &AppState,
    conn: &C,
    jobs: &[(&UnsubscribeJob, &str)],
    now: DateTime<Utc>,
) -> Result<Vec<UnsubscribeOutcome>, DbErr> {
    use std::collections::{HashMap, HashSet};

    let hashes: Vec<&str> = jobs.iter().map(|(j, _)| j.email_hash.as_str()).collect();
    let people: HashMap<String, subscriber::Model> = subscriber::Entity::find()
        .filter(subscriber::Column::EmailHash.is_in(hashes.iter().copied()))
        .all(conn)
        .await?
        .into_iter()
        .map(|p| (p.email_hash.clone(), p))
        .collect();
    let subs = if people.is_empty() {
        Vec::new()
    } else {
        subscription::Entity::find()
            .filter(subscription::Column::SubscriberId.is_in(people.values().map(|p| p.id)))
            .all(conn)
            .await?
    };

    // What each job takes away.
    let mut gone_subs: Vec<&subscription::Model> = Vec::new();
    let mut gone_people: Vec<i64> = Vec::new();
    let mut left_by_job: Vec<Vec<String>> = Vec::with_capacity(jobs.len());
    let mut subscriber_gone: HashSet<&str> = HashSet::new();
    for (job, list) in jobs {
        let person = people.get(&job.email_hash);
        let mut left = Vec::new();
        let mut remaining = 0;
        if let Some(p) = person {
            for s in subs.iter().filter(|s| s.subscriber_id == p.id) {
                if s.list_slug == *list {
                    gone_subs.push(s);
                    left.push(s.list_slug.clone());
                } else {
                    remaining += 1;
                }
            }
            if remaining == 0 {
                gone_people.push(p.id);
            }
        }
        if remaining == 0 {
            subscriber_gone.insert(job.email_hash.as_str());
        }
        left_by_job.push(left);
    }

    if !gone_subs.is_empty() {
        // Detach the consent records: they stay, keyed by the address hash,
        // until the suppression entry expires.
        consent_event::Entity::update_many()
            .col_expr(
                consent_event::Column::SubscriptionId,
                Expr::value(Option::<i64>::None),
            )
            .filter(consent_event::Column::SubscriptionId.is_in(gone_subs.iter().map(|s| s.id)))
            .exec(conn)
            .await?;
        for s in gone_subs.iter().filter(|s| s.status != "confirmed") {
            let hash = &people
                .values()
                .find(|p| p.id == s.subscriber_id)
                .expect("the subscription's subscriber was loaded")
                .email_hash;
            drop_unconfirmed_consent(conn, hash, s).await?;
        }
        subscription::Entity::delete_many()
            .filter(subscription::Column::Id.is_in(gone_subs.iter().map(|s| s.id)))
            .exec(conn)
            .await?;
    }
    if !gone_people.is_empty() {
        subscriber::Entity::delete_many()
            .filter(subscriber::Column::Id.is_in(gone_people))
            .exec(conn)
            .await?;
    }

    let scope_of: HashMap<&str, Scope> = jobs
        .iter()
        .map(|(j, l)| (j.email_hash.as_str(), Scope::List(l.to_string())))
        .collect();
    let cancel = unsent_jobs_about(conn, &hashes)
        .await?
        .iter()
        .filter(|j| {
            let h = j.subject_hash.as_deref().unwrap_or_default();
            scope_of
                .get(h)
                .is_some_and(|scope| job_concerns(j, scope, subscriber_gone.contains(h)))
        })
        .map(|j| j.id)
        .collect();
    cancel_jobs(conn, cancel, now).await?;

    let active: HashSet<(String, String)> = suppression_entities_active(conn, &hashes, now).await?;
    let mut rows = Vec::new();
    let mut outcomes = Vec::with_capacity(jobs.len());
    for ((job, list), left) in jobs.iter().zip(left_by_job) {
        let member_hash = people
            .get(&job.email_hash)
            .and_then(|p| EmailAddress::parse(&p.email).ok())
            .map(|a| a.mailchimp_hash());
        let queued_sync =
            tell_mailchimp(state, conn, member_hash.as_deref(), &left, job.source, now).await?;
        tell_endpoints(state, conn, &job.email_hash, &left, job.source, now).await?;
        if !active.contains(&(job.email_hash.clone(), list.to_string())) {
            let mailchimp_hash = member_hash.filter(|_| state.config.mailchimp_mapped(list));
            rows.push(suppression::entry(
                &state.config,
                &job.email_hash,
                list,
                job.reason,
                job.source,
                mailchimp_hash,
                now,
            ));
        }
        outcomes.push(UnsubscribeOutcome { left, queued_sync });
    }
    suppression::add_many(conn, &state.config, rows).await?;
    Ok(outcomes)
}

/// (hash, scope) of the entries that count now for these hashes.
async fn suppression_entities_active<C: ConnectionTrait>(
    conn: &C,
    hashes: &[&str],
    now: DateTime<Utc>,
) -> Result<std::collections::HashSet<(String, String)>, DbErr> {
    use entity::suppression as entry;
    Ok(entry::Entity::find()
        .filter(entry::Column::EmailHash.is_in(hashes.iter().copied()))
        .filter(entry::Column::ExpiresAt.gt(now))
        .all(conn)
        .await?
        .into_iter()
        .map(|e| (e.email_hash, e.scope))
        .collect())
}

/// One row of the PostgreSQL statement that unsubscribes a whole batch.
#[derive(serde::Serialize)]
struct UnsubscribeRow<'a> {
    email_hash: &'a str,
    list_slug: &'a str,
    reason: &'static str,
    source: &'static str,
    expires_at: DateTime<Utc>,
    /// Kept with the entry when the list is mapped to Mailchimp.
    mailchimp_hash: Option<String>,
    /// The Mailchimp job to queue should the subscription go, and its member key.
    mc_key: Option<String>,
    mc_payload: Option<String>,
}

/// [`unsubscribe_many_in`] as one statement on PostgreSQL, committed on its
/// own: the batch travels as one JSON parameter and a data-modifying CTE
/// deletes the subscriptions (the foreign key detaches their consent events),
/// the unconfirmed signups' `requested` events, the subscribers left without
/// a subscription, cancels the unsent jobs that hold the addresses, queues
/// the Mailchimp jobs and writes the suppression entries: one round trip and
/// one prepared statement whatever the batch's size, where the transaction
/// costs a dozen. Only a batch with a Mailchimp-mapped list reads first, for
/// the addresses behind the member hashes (nothing else needs them; the
/// address behind a keyed hash never changes, and a subscription that
/// appears between the read and the statement is one that Mailchimp has not
/// heard of yet). Unconfirmed and mapped cases are covered by the API tests,
/// which run this path on PostgreSQL.
///
/// The unsent jobs are looked up address by address (`LATERAL` with
/// `OFFSET 0`, which the planner cannot turn into a join). As a join, the
/// cached plan hashed the whole partial index of unsent jobs, which its
/// statistics put at a row or two: after a burst of signups it held a
/// hundred thousand entries not yet vacuumed, and each unsubscribe batch
/// read them all (53 ms instead of about 1).
async fn unsubscribe_many_postgres(
    state: &AppState,
    jobs: &[(&UnsubscribeJob, &str)],
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<UnsubscribeOutcome>> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "WITH input AS ( \
               SELECT x.* FROM ROWS FROM (jsonb_to_recordset($1::jsonb) AS (email_hash text, \
                 list_slug text, reason text, source text, expires_at timestamptz, \
                 mailchimp_hash text, mc_key text, mc_payload text)) WITH ORDINALITY \
                 AS x(email_hash, list_slug, reason, source, expires_at, mailchimp_hash, mc_key, \
                 mc_payload, ord) \
             ), people AS ( \
               SELECT i.ord, p.id AS person_id, NOT EXISTS (SELECT 1 FROM subscriptions o \
                 WHERE o.subscriber_id = p.id AND o.list_slug <> i.list_slug) AS last \
               FROM input i JOIN subscribers p ON p.email_hash = i.email_hash \
             ), gone AS ( \
               DELETE FROM subscriptions s USING input i, people q \
               WHERE q.ord = i.ord AND s.subscriber_id = q.person_id AND s.list_slug = i.list_slug \
               RETURNING i.ord, s.id, s.status, s.created_at \
             ), unconfirmed AS ( \
               DELETE FROM consent_events e USING (SELECT g.id, g.created_at, i.email_hash, \
                   i.list_slug FROM gone g JOIN input i USING (ord) WHERE g.status <> 'confirmed') u \
               WHERE e.email_hash = u.email_hash AND e.list_slug = u.list_slug \
                 AND e.kind = '{requested}' AND e.occurred_at >= u.created_at \
                 AND (e.subscription_id = u.id OR e.subscription_id IS NULL) \
             ), people_gone AS ( \
               DELETE FROM subscribers p USING people q WHERE p.id = q.person_id AND q.last \
             ), jobs AS ( \
               SELECT id, bool_or(cancel) AS cancel FROM ( \
                 SELECT o.id, true AS cancel \
                 FROM input i LEFT JOIN people q ON q.ord = i.ord \
                 CROSS JOIN LATERAL (SELECT id, kind, payload FROM outbox \
                   WHERE subject_hash = i.email_hash AND status IN ('pending', 'in_flight', 'dead') \
                   OFFSET 0) o \
                 WHERE COALESCE(q.last, true) OR CASE WHEN o.kind = '{mail}' \
                     AND o.payload IS NOT NULL \
                     THEN o.payload::jsonb ->> 'template' = 'confirm' \
                       AND o.payload::jsonb ->> 'list' = i.list_slug ELSE false END \
                 UNION ALL \
                 SELECT o.id, false FROM input i JOIN gone g ON g.ord = i.ord \
                 CROSS JOIN LATERAL (SELECT id FROM outbox \
                   WHERE member_key = i.mc_key AND status IN ('pending', 'dead') OFFSET 0) o \
               ) found GROUP BY id \
             ), stopped AS ( \
               UPDATE outbox o SET status = CASE WHEN j.cancel THEN 'cancelled' ELSE 'superseded' END, \
                 payload = NULL, locked_until = CASE WHEN j.cancel THEN NULL ELSE o.locked_until END, \
                 updated_at = $2 \
               FROM jobs j WHERE o.id = j.id \
             ), told AS ( \
               INSERT INTO outbox (kind, status, payload, subject_hash, attempts, next_attempt_at, \
                 created_at, updated_at, member_key) \
               SELECT '{mailchimp}', 'pending', i.mc_payload, NULL, 0, $2, $2, $2, i.mc_key \
               FROM input i JOIN gone g ON g.ord = i.ord WHERE i.mc_key IS NOT NULL \
             ), entries AS ( \
               INSERT INTO suppressions (email_hash, scope, reason, source, created_at, expires_at, \
                 mailchimp_hash) \
               SELECT i.email_hash, i.list_slug, i.reason, i.source, $2, i.expires_at, \
                 i.mailchimp_hash FROM input i \
               ON CONFLICT (email_hash, scope) DO UPDATE SET reason = EXCLUDED.reason, \
                 source = EXCLUDED.source, created_at = EXCLUDED.created_at, \
                 expires_at = EXCLUDED.expires_at WHERE suppressions.expires_at <= $2 \
             ) \
             SELECT ord FROM gone",
            requested = ConsentKind::Requested.as_str(),
            mail = JobKind::Mail.as_str(),
            mailchimp = JobKind::Mailchimp.as_str(),
        )
    });
    let config = &state.config;
    // The member hashes, for the batches that need them.
    let mut member_hashes = std::collections::HashMap::new();
    if jobs.iter().any(|(_, list)| config.mailchimp_mapped(list)) {
        for p in subscriber::Entity::find()
            .filter(subscriber::Column::EmailHash.is_in(jobs.iter().map(|(j, _)| &j.email_hash)))
            .all(&state.db)
            .await?
        {
            if let Ok(a) = EmailAddress::parse(&p.email) {
                member_hashes.insert(p.email_hash, a.mailchimp_hash());
            }
        }
    }
    let rows: Vec<UnsubscribeRow> = jobs
        .iter()
        .map(|(job, list)| {
            let member = member_hashes
                .get(&job.email_hash)
                .filter(|_| config.mailchimp_mapped(list));
            let told = config
                .list(list)
                .and_then(|l| l.mailchimp_list_id.as_deref())
                .zip(member)
                .filter(|_| !matches!(job.source, Source::Mailchimp | Source::Reconcile))
                .map(|(list_id, hash)| {
                    let job = MailchimpJob::Unsubscribe {
                        list_id: list_id.to_string(),
                        hash: hash.clone(),
                    };
                    (job.member_key(), job.payload().to_string())
                });
            let (mc_key, mc_payload) = told.unzip();
            UnsubscribeRow {
                email_hash: &job.email_hash,
                list_slug: list,
                reason: job.reason.as_str(),
                source: job.source.as_str(),
                expires_at: config.suppression_retention(job.reason.as_str()).after(now),
                mailchimp_hash: member.cloned(),
                mc_key,
                mc_payload,
            }
        })
        .collect();
    let stmt = Statement::from_sql_and_values(
        DbBackend::Postgres,
        SQL.as_str(),
        [serde_json::to_string(&rows)?.into(), now.into()],
    );
    let mut left = vec![false; jobs.len()];
    for row in state.db.query_all_raw(stmt).await? {
        let ord: i64 = row.try_get("", "ord")?;
        let slot = usize::try_from(ord - 1)
            .ok()
            .and_then(|i| left.get_mut(i))
            .ok_or_else(|| anyhow::anyhow!("the unsubscribe answered a row it was not given"))?;
        *slot = true;
    }
    Ok(jobs
        .iter()
        .zip(rows)
        .zip(left)
        .map(|(((_, list), row), left)| UnsubscribeOutcome {
            left: if left {
                vec![list.to_string()]
            } else {
                Vec::new()
            },
            queued_sync: left && row.mc_key.is_some(),
        })
        .collect())
}
