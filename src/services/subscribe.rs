//! Double opt-in, step one: someone sent the signup form. Whatever is known
//! about the address, the caller answers the same way; only what happens
//! behind differs. A confirmation mail is queued in the outbox (never sent
//! inside the request), at most once per cooldown and a few times a day.
use chrono::{DateTime, Utc};
use entity::{
    address_limit, consent_event, outbox as outbox_model, subscriber, subscription,
    suppression as suppression_model, token,
};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, IntoActiveModel,
    QueryFilter, QuerySelect, Set,
};

use super::{
    RequestContext,
    consent::{self, ConsentKind},
    is_unique_violation, suppression,
};
use crate::{
    config::ListConfig,
    crypto::{random_token, sha256_hex},
    domain::{DisplayName, EmailAddress},
    i18n::Locale,
    outbox::{self, JobKind, mail_worker::MailJob},
    secrets::log_id,
    state::AppState,
};

/// A valid signup.
#[derive(Debug)]
pub struct NewSubscription {
    pub email: EmailAddress,
    pub name: Option<DisplayName>,
    pub list: ListConfig,
    pub locale: Locale,
    pub source: Option<String>,
}

/// What happened, for logs and tests; never shown to the requester.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeOutcome {
    MailQueued,
    AlreadyConfirmed,
    Suppressed,
    Restricted,
    CooldownActive,
    DailyLimitReached,
}

/// One signup waiting in the batcher.
pub struct SignupJob {
    pub req: NewSubscription,
    pub ctx: RequestContext,
    pub hash: String,
}

/// Records the signup and queues the confirmation mail when allowed. Goes
/// through the signup batcher, which shares transactions between concurrent
/// requests.
#[tracing::instrument(skip_all, fields(list = %req.list.slug))]
pub async fn subscribe(
    state: &AppState,
    req: NewSubscription,
    ctx: RequestContext,
) -> anyhow::Result<SubscribeOutcome> {
    let hash = state.keys.hasher.hash(&req.email);
    let log = log_id(&hash).to_string();
    let outcome = state.signups().submit(SignupJob { req, ctx, hash }).await?;
    tracing::info!(subject = %log, outcome = ?outcome, "signup handled");
    Ok(outcome)
}

/// Carries out a batch of signups: one transaction and set-based statements
/// for the common case (addresses the database has never seen), the general
/// path inside the same transaction for the rest. Should the batch fail (a
/// concurrent replica inserted the same address), each signup is retried on
/// its own.
pub async fn subscribe_batch(
    state: &AppState,
    jobs: Vec<SignupJob>,
) -> Vec<anyhow::Result<SubscribeOutcome>> {
    let outcomes = match try_batch(state, &jobs).await {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        Err(e) => {
            tracing::debug!(error = %e, size = jobs.len(), "signup batch failed; retrying one by one");
            let mut out = Vec::with_capacity(jobs.len());
            for job in &jobs {
                out.push(subscribe_one(state, &job.req, &job.ctx, &job.hash).await);
            }
            out
        }
    };
    if outcomes
        .iter()
        .any(|o| matches!(o, Ok(SubscribeOutcome::MailQueued)))
    {
        state.outbox_notify.notify_one();
    }
    outcomes
}

/// One signup in its own transaction, retried when a concurrent request won
/// the race to insert the same address.
async fn subscribe_one(
    state: &AppState,
    req: &NewSubscription,
    ctx: &RequestContext,
    hash: &str,
) -> anyhow::Result<SubscribeOutcome> {
    for attempt in 0..3 {
        match try_subscribe(state, req, ctx, hash).await {
            Err(e) if attempt < 2 && is_unique_violation(&e) => continue,
            Err(e) => return Err(e.into()),
            Ok(outcome) => return Ok(outcome),
        }
    }
    unreachable!("the loop returns on its last attempt")
}

async fn try_batch(state: &AppState, jobs: &[SignupJob]) -> Result<Vec<SubscribeOutcome>, DbErr> {
    use std::collections::{HashMap, HashSet};

    let now = state.now();
    let config = &state.config;
    let tx = state.begin_write().await?;
    let conn = &*tx;
    let hashes: Vec<&str> = jobs.iter().map(|j| j.hash.as_str()).collect();

    // Anything the database already knows about an address takes the general path.
    let mut known: HashSet<String> = HashSet::new();
    for chunk in hashes.chunks(500) {
        let c = chunk.iter().copied();
        known.extend(
            suppression_model::Entity::find()
                .select_only()
                .column(suppression_model::Column::EmailHash)
                .filter(suppression_model::Column::EmailHash.is_in(c.clone()))
                .into_tuple::<String>()
                .all(conn)
                .await?,
        );
        known.extend(
            subscriber::Entity::find()
                .select_only()
                .column(subscriber::Column::EmailHash)
                .filter(subscriber::Column::EmailHash.is_in(c.clone()))
                .into_tuple::<String>()
                .all(conn)
                .await?,
        );
        known.extend(
            address_limit::Entity::find()
                .select_only()
                .column(address_limit::Column::EmailHash)
                .filter(address_limit::Column::EmailHash.is_in(c))
                .into_tuple::<String>()
                .all(conn)
                .await?,
        );
    }
    let mut fresh = Vec::new();
    let mut general = Vec::new();
    let mut seen = HashSet::new();
    for (i, j) in jobs.iter().enumerate() {
        if known.contains(&j.hash) || !seen.insert(j.hash.as_str()) {
            general.push(i);
        } else {
            fresh.push(i);
        }
    }
    let mut outcomes: Vec<Option<SubscribeOutcome>> = vec![None; jobs.len()];

    if !fresh.is_empty() {
        let token_expires = config.retention.pending.after(now);
        let people = subscriber::Entity::insert_many(fresh.iter().map(|&i| {
            let j = &jobs[i];
            subscriber::ActiveModel {
                email: Set(j.req.email.as_str().to_string()),
                email_hash: Set(j.hash.clone()),
                name: Set(j.req.name.as_ref().map(|n| n.as_str().to_string())),
                locale: Set(j.req.locale.code().to_string()),
                restricted: Set(false),
                created_at: Set(now),
                updated_at: Set(now),
                ..Default::default()
            }
        }))
        .exec_with_returning(conn)
        .await?;
        let person_of: HashMap<&str, &subscriber::Model> =
            people.iter().map(|p| (p.email_hash.as_str(), p)).collect();
        let subs = subscription::Entity::insert_many(fresh.iter().map(|&i| {
            let j = &jobs[i];
            subscription::ActiveModel {
                subscriber_id: Set(person_of[j.hash.as_str()].id),
                list_slug: Set(j.req.list.slug.clone()),
                status: Set("pending".into()),
                source: Set(j.req.source.clone()),
                created_at: Set(now),
                confirmed_at: Set(None),
                pending_expires_at: Set(Some(token_expires)),
                ..Default::default()
            }
        }))
        .exec_with_returning(conn)
        .await?;
        let sub_of: HashMap<i64, i64> = subs.iter().map(|s| (s.subscriber_id, s.id)).collect();

        let mut shas: HashMap<(String, String), String> = HashMap::new();
        for &i in &fresh {
            let list = &jobs[i].req.list;
            let key = (list.slug.clone(), list.consent_version.clone());
            if let std::collections::hash_map::Entry::Vacant(slot) = shas.entry(key) {
                slot.insert(consent::ensure_text(conn, list, now).await?);
            }
        }

        let mut tokens = Vec::with_capacity(fresh.len());
        let mut events = Vec::with_capacity(fresh.len());
        let mut mails = Vec::with_capacity(fresh.len());
        let mut limits = Vec::with_capacity(fresh.len());
        let today = now.format("%Y-%m-%d").to_string();
        for &i in &fresh {
            let j = &jobs[i];
            let person = person_of[j.hash.as_str()];
            let sub_id = sub_of[&person.id];
            let raw = random_token();
            tokens.push(token::ActiveModel {
                token_hash: Set(sha256_hex(raw.as_bytes())),
                purpose: Set("confirm".into()),
                subscription_id: Set(Some(sub_id)),
                subscriber_id: Set(Some(person.id)),
                created_at: Set(now),
                expires_at: Set(token_expires),
                used_at: Set(None),
                ..Default::default()
            });
            let list = &j.req.list;
            events.push(consent::event_model(
                config,
                list,
                sub_id,
                &j.hash,
                ConsentKind::Requested,
                j.req.source.clone(),
                &j.ctx,
                shas[&(list.slug.clone(), list.consent_version.clone())].clone(),
                now,
            ));
            let job = MailJob::Confirm {
                to: person.email.clone(),
                name: person.name.clone(),
                list: list.slug.clone(),
                token: raw,
                locale: j.req.locale.code().to_string(),
            };
            mails.push(outbox::job_model(
                JobKind::Mail,
                &serde_json::to_value(&job).map_err(|e| DbErr::Custom(e.to_string()))?,
                Some(&j.hash),
                now,
            ));
            limits.push(address_limit::ActiveModel {
                email_hash: Set(j.hash.clone()),
                day: Set(today.clone()),
                count: Set(1),
                last_sent_at: Set(now),
            });
            outcomes[i] = Some(SubscribeOutcome::MailQueued);
        }
        token::Entity::insert_many(tokens)
            .exec_without_returning(conn)
            .await?;
        consent_event::Entity::insert_many(events)
            .exec_without_returning(conn)
            .await?;
        outbox_model::Entity::insert_many(mails)
            .exec_without_returning(conn)
            .await?;
        address_limit::Entity::insert_many(limits)
            .exec_without_returning(conn)
            .await?;
    }

    for i in general {
        let j = &jobs[i];
        outcomes[i] = Some(subscribe_in(state, conn, &j.req, &j.ctx, &j.hash, now).await?);
    }
    tx.commit().await?;
    Ok(outcomes
        .into_iter()
        .map(|o| o.expect("every signup of the batch has an outcome"))
        .collect())
}

async fn try_subscribe(
    state: &AppState,
    req: &NewSubscription,
    ctx: &RequestContext,
    hash: &str,
) -> Result<SubscribeOutcome, DbErr> {
    let now = state.now();
    let tx = state.begin_write().await?;
    let outcome = subscribe_in(state, &*tx, req, ctx, hash, now).await?;
    tx.commit().await?;
    Ok(outcome)
}

async fn subscribe_in<C: ConnectionTrait>(
    state: &AppState,
    conn: &C,
    req: &NewSubscription,
    ctx: &RequestContext,
    hash: &str,
    now: DateTime<Utc>,
) -> Result<SubscribeOutcome, DbErr> {
    let config = &state.config;
    let list = &req.list;
    if suppression::blocks_opt_in(conn, hash, &list.slug, now).await? {
        return Ok(SubscribeOutcome::Suppressed);
    }
    let existing = subscriber::Entity::find()
        .filter(subscriber::Column::EmailHash.eq(hash))
        .one(conn)
        .await?;
    if existing.as_ref().is_some_and(|s| s.restricted) {
        return Ok(SubscribeOutcome::Restricted);
    }
    let existing_sub = match &existing {
        Some(s) => {
            subscription::Entity::find()
                .filter(subscription::Column::SubscriberId.eq(s.id))
                .filter(subscription::Column::ListSlug.eq(&list.slug))
                .one(conn)
                .await?
        }
        None => None,
    };
    if existing_sub
        .as_ref()
        .is_some_and(|s| s.status == "confirmed")
    {
        return Ok(SubscribeOutcome::AlreadyConfirmed);
    }

    // Mail limits, keyed by the address hash.
    let today = now.format("%Y-%m-%d").to_string();
    let limit = address_limit::Entity::find_by_id(hash.to_string())
        .one(conn)
        .await?;
    if let Some(l) = &limit {
        if config.limits.resend_cooldown.after(l.last_sent_at) > now {
            return Ok(SubscribeOutcome::CooldownActive);
        }
        if l.day == today && l.count >= config.limits.confirmations_per_address_per_day as i32 {
            return Ok(SubscribeOutcome::DailyLimitReached);
        }
    }

    let name = req.name.as_ref().map(|n| n.as_str().to_string());
    let subscriber = match existing {
        Some(s) => {
            // Only a pending signup may change the name: a stranger must not
            // be able to rename a confirmed subscriber through the form.
            let has_confirmed = subscription::Entity::find()
                .filter(subscription::Column::SubscriberId.eq(s.id))
                .filter(subscription::Column::Status.eq("confirmed"))
                .one(conn)
                .await?
                .is_some();
            if !has_confirmed && name.is_some() && name != s.name {
                let mut am = s.clone().into_active_model();
                am.name = Set(name.clone());
                am.locale = Set(req.locale.code().to_string());
                am.updated_at = Set(now);
                am.update(conn).await?
            } else {
                s
            }
        }
        None => {
            subscriber::ActiveModel {
                email: Set(req.email.as_str().to_string()),
                email_hash: Set(hash.to_string()),
                name: Set(name),
                locale: Set(req.locale.code().to_string()),
                restricted: Set(false),
                created_at: Set(now),
                updated_at: Set(now),
                ..Default::default()
            }
            .insert(conn)
            .await?
        }
    };

    let token_expires = config.retention.pending.after(now);
    let sub = match existing_sub {
        Some(s) => {
            let mut am = s.into_active_model();
            am.pending_expires_at = Set(Some(token_expires));
            am.update(conn).await?
        }
        None => {
            subscription::ActiveModel {
                subscriber_id: Set(subscriber.id),
                list_slug: Set(list.slug.clone()),
                status: Set("pending".into()),
                source: Set(req.source.clone()),
                created_at: Set(now),
                confirmed_at: Set(None),
                pending_expires_at: Set(Some(token_expires)),
                ..Default::default()
            }
            .insert(conn)
            .await?
        }
    };

    let raw = random_token();
    token::ActiveModel {
        token_hash: Set(sha256_hex(raw.as_bytes())),
        purpose: Set("confirm".into()),
        subscription_id: Set(Some(sub.id)),
        subscriber_id: Set(Some(subscriber.id)),
        created_at: Set(now),
        expires_at: Set(token_expires),
        used_at: Set(None),
        ..Default::default()
    }
    .insert(conn)
    .await?;

    consent::record(
        conn,
        config,
        list,
        sub.id,
        hash,
        ConsentKind::Requested,
        req.source.clone(),
        ctx,
        now,
    )
    .await?;

    let job = MailJob::Confirm {
        to: subscriber.email.clone(),
        name: subscriber.name.clone(),
        list: list.slug.clone(),
        token: raw,
        locale: req.locale.code().to_string(),
    };
    outbox::enqueue(
        conn,
        JobKind::Mail,
        &serde_json::to_value(&job).map_err(|e| DbErr::Custom(e.to_string()))?,
        Some(hash),
        now,
    )
    .await?;

    let count = match &limit {
        Some(l) if l.day == today => l.count + 1,
        _ => 1,
    };
    let row = address_limit::ActiveModel {
        email_hash: Set(hash.to_string()),
        day: Set(today),
        count: Set(count),
        last_sent_at: Set(now),
    };
    if limit.is_some() {
        row.update(conn).await?;
    } else {
        row.insert(conn).await?;
    }
    Ok(SubscribeOutcome::MailQueued)
}
