//! Applying inbound webhook deliveries from Mailchimp (audience events) and
//! Mandrill (bounces, complaints, unsubscribes, rejection-list changes).
//!
//! Each delivery is applied in one transaction together with its receipt
//! (`webhook_receipts`): a delivery whose receipt already exists is a replay
//! and changes nothing. Nothing here echoes a change back to Mailchimp when
//! Mailchimp made it. Log lines carry address-hash prefixes only.
use chrono::{DateTime, Utc};
use entity::{
    consent_event, subscriber, subscription, suppression as suppression_model, webhook_receipt,
};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, IntoActiveModel,
    QueryFilter, QuerySelect, Set, sea_query::Expr, sea_query::OnConflict,
};

use super::{
    RequestContext,
    consent::{self, ConsentKind},
    is_unique_violation,
    suppression::{self, ALL_LISTS, Reason, Source},
    unsubscribe::{Scope, unsubscribe_in},
};
use crate::{
    config::ListConfig,
    crypto::sha256_hex,
    domain::{DisplayName, EmailAddress},
    mailchimp::webhook::{AudienceEvent, MandrillAction, MandrillBatch},
    secrets::log_id,
    state::AppState,
};

/// How long a receipt is kept: Mailchimp retries for 75 minutes, Mandrill
/// for about a day; a week is ample.
pub const RECEIPT_RETENTION_DAYS: i64 = 7;

/// What became of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied now.
    Applied,
    /// The same delivery was applied before; nothing changed.
    Replay,
    /// Nothing to act on (an event type this service ignores).
    Ignored,
}

impl Outcome {
    /// `applied`, `replay` or `ignored`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Replay => "replay",
            Self::Ignored => "ignored",
        }
    }
}

/// The receipt digest of an audience-webhook delivery: SHA-256 hex of the
/// list slug followed by the body bytes.
pub fn audience_digest(slug: &str, body: &[u8]) -> String {
    let mut data = Vec::with_capacity(slug.len() + body.len());
    data.extend_from_slice(slug.as_bytes());
    data.extend_from_slice(body);
    sha256_hex(&data)
}

/// Records the receipt of a delivery; false when it was there already.
async fn take_receipt<C: ConnectionTrait>(
    conn: &C,
    source: Source,
    digest: &str,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let inserted = webhook_receipt::Entity::insert(webhook_receipt::ActiveModel {
        source: Set(source.as_str().to_string()),
        digest: Set(digest.to_string()),
        received_at: Set(now),
        ..Default::default()
    })
    .on_conflict(
        OnConflict::columns([
            webhook_receipt::Column::Source,
            webhook_receipt::Column::Digest,
        ])
        .do_nothing()
        .to_owned(),
    )
    .exec_without_returning(conn)
    .await?;
    Ok(inserted > 0)
}

/// Applies one audience-webhook delivery for `list` (already verified and
/// parsed). `body` is the delivery as received, for deduplication.
#[tracing::instrument(skip_all, fields(list = %list.slug, kind = event.kind()))]
pub async fn apply_audience(
    state: &AppState,
    list: &ListConfig,
    body: &[u8],
    event: &AudienceEvent,
) -> anyhow::Result<Outcome> {
    if let AudienceEvent::Ignored { .. } = event {
        tracing::debug!("Mailchimp webhook event ignored");
        return Ok(Outcome::Ignored);
    }
    let digest = audience_digest(&list.slug, body);
    // A concurrent request may win the race to create the same subscriber:
    // try again, then the address exists.
    let mut attempt = 0;
    loop {
        attempt += 1;
        match try_apply_audience(state, list, &digest, event).await {
            Err(e) if attempt < 3 && is_unique_violation(&e) => continue,
            Err(e) => return Err(e.into()),
            Ok(outcome) => {
                tracing::info!(outcome = outcome.as_str(), "Mailchimp webhook handled");
                return Ok(outcome);
            }
        }
    }
}

async fn try_apply_audience(
    state: &AppState,
    list: &ListConfig,
    digest: &str,
    event: &AudienceEvent,
) -> Result<Outcome, DbErr> {
    let now = state.now();
    let tx = state.begin_write().await?;
    let conn = &*tx;
    if !take_receipt(conn, Source::Mailchimp, digest, now).await? {
        return Ok(Outcome::Replay);
    }
    let slug = &list.slug;
    match event {
        AudienceEvent::Unsubscribe { email, reason } | AudienceEvent::Cleaned { email, reason } => {
            let hash = state.keys.hasher.hash(email);
            unsubscribe_in(
                state,
                conn,
                &hash,
                &Scope::List(slug.clone()),
                Source::Mailchimp,
                *reason,
                now,
            )
            .await?;
            settle_entry(state, conn, &hash, slug, *reason, email, now).await?;
            tracing::info!(
                subject = log_id(&hash),
                reason = reason.as_str(),
                "left the list at Mailchimp"
            );
        }
        AudienceEvent::Subscribe {
            email,
            name,
            ip_opt,
        } => {
            subscribe_from_mailchimp(state, conn, list, email, name.as_ref(), ip_opt.clone(), now)
                .await?;
        }
        AudienceEvent::Profile { email, name } => {
            let hash = state.keys.hasher.hash(email);
            match member_of(conn, &hash, slug).await? {
                Some(person)
                    if person.name.as_deref() != name.as_ref().map(DisplayName::as_str) =>
                {
                    let mut am = person.into_active_model();
                    am.name = Set(name.as_ref().map(|n| n.as_str().to_string()));
                    am.updated_at = Set(now);
                    am.update(conn).await?;
                    tracing::info!(subject = log_id(&hash), "name changed at Mailchimp");
                }
                Some(_) => {}
                None => tracing::debug!(
                    subject = log_id(&hash),
                    "profile of someone not on the list"
                ),
            }
        }
        AudienceEvent::UpEmail { old, new } => {
            move_address(state, conn, slug, old, new, now).await?;
        }
        AudienceEvent::Ignored { .. } => return Ok(Outcome::Ignored),
    }
    tx.commit().await?;
    state.events_may_be_queued();
    Ok(Outcome::Applied)
}

/// After `unsubscribe_in` for a Mailchimp event: an entry that allows opting
/// in again (`unsubscribed`) gives way to a stronger reason (`bounce`,
/// `complaint`), and the entry keeps the Mailchimp subscriber hash so that the
/// member can be archived there when it expires.
async fn settle_entry<C: ConnectionTrait>(
    state: &AppState,
    conn: &C,
    hash: &str,
    slug: &str,
    reason: Reason,
    email: &EmailAddress,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let Some(entry) = suppression_model::Entity::find()
        .filter(suppression_model::Column::EmailHash.eq(hash))
        .filter(suppression_model::Column::Scope.eq(slug))
        .one(conn)
        .await?
    else {
        return Ok(());
    };
    let weaker =
        Reason::parse(&entry.reason).is_some_and(Reason::allows_opt_in) && !reason.allows_opt_in();
    let mailchimp_hash = state
        .config
        .mailchimp_mapped(slug)
        .then(|| email.mailchimp_hash());
    if weaker {
        suppression::add(
            conn,
            &state.config,
            hash,
            slug,
            reason,
            Source::Mailchimp,
            mailchimp_hash.clone(),
            now,
        )
        .await?;
    }
    if entry.mailchimp_hash.is_none() && mailchimp_hash.is_some() {
        suppression_model::Entity::update_many()
            .col_expr(
                suppression_model::Column::MailchimpHash,
                Expr::value(mailchimp_hash),
            )
            .filter(suppression_model::Column::Id.eq(entry.id))
            .exec(conn)
            .await?;
    }
    Ok(())
}

/// The subscriber behind `hash` if they are on `slug`.
async fn member_of<C: ConnectionTrait>(
    conn: &C,
    hash: &str,
    slug: &str,
) -> Result<Option<subscriber::Model>, DbErr> {
    let Some(person) = subscriber::Entity::find()
        .filter(subscriber::Column::EmailHash.eq(hash))
        .one(conn)
        .await?
    else {
        return Ok(None);
    };
    let on_list = subscription::Entity::find()
        .filter(subscription::Column::SubscriberId.eq(person.id))
        .filter(subscription::Column::ListSlug.eq(slug))
        .one(conn)
        .await?
        .is_some();
    Ok(on_list.then_some(person))
}

/// `subscribe`: a confirmed subscription with source `mailchimp`, the
/// subscriber created if needed, a `confirmed` consent event, and the
/// entries that a confirmation lifts removed. Nothing is queued for
/// Mailchimp: it made the change.
async fn subscribe_from_mailchimp<C: ConnectionTrait>(
    state: &AppState,
    conn: &C,
    list: &ListConfig,
    email: &EmailAddress,
    name: Option<&DisplayName>,
    ip_opt: Option<String>,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let hash = state.keys.hasher.hash(email);
    let existing = subscriber::Entity::find()
        .filter(subscriber::Column::EmailHash.eq(&hash))
        .one(conn)
        .await?;
    let person = match existing {
        Some(p) => {
            let wanted = name.map(|n| n.as_str().to_string());
            if wanted.is_some() && p.name != wanted {
                let mut am = p.into_active_model();
                am.name = Set(wanted);
                am.updated_at = Set(now);
                am.update(conn).await?
            } else {
                p
            }
        }
        None => {
            subscriber::ActiveModel {
                email: Set(email.as_str().to_string()),
                email_hash: Set(hash.clone()),
                name: Set(name.map(|n| n.as_str().to_string())),
                locale: Set(state.config.org.default_locale.clone()),
                restricted: Set(false),
                created_at: Set(now),
                updated_at: Set(now),
                ..Default::default()
            }
            .insert(conn)
            .await?
        }
    };
    let current = subscription::Entity::find()
        .filter(subscription::Column::SubscriberId.eq(person.id))
        .filter(subscription::Column::ListSlug.eq(&list.slug))
        .one(conn)
        .await?;
    let confirmed_now = match current {
        Some(s) if s.status == "confirmed" => None,
        Some(s) => {
            // A pending signup here, confirmed at Mailchimp.
            let id = s.id;
            let mut am = s.into_active_model();
            am.status = Set("confirmed".into());
            am.confirmed_at = Set(Some(now));
            am.pending_expires_at = Set(None);
            am.update(conn).await?;
            Some(id)
        }
        None => Some(
            subscription::ActiveModel {
                subscriber_id: Set(person.id),
                list_slug: Set(list.slug.clone()),
                status: Set("confirmed".into()),
                source: Set(Some(Source::Mailchimp.as_str().into())),
                created_at: Set(now),
                confirmed_at: Set(Some(now)),
                pending_expires_at: Set(None),
                ..Default::default()
            }
            .insert(conn)
            .await?
            .id,
        ),
    };
    if let Some(subscription_id) = confirmed_now {
        let ctx = RequestContext {
            ip: ip_opt,
            user_agent: None,
        };
        consent::record(
            conn,
            &state.config,
            list,
            subscription_id,
            &hash,
            ConsentKind::Confirmed,
            Some(Source::Mailchimp.as_str().into()),
            &ctx,
            now,
        )
        .await?;
        crate::events::subscription_confirmed(conn, &state.config, &person, &list.slug, now)
            .await?;
    }
    suppression::lift_on_confirm(conn, &hash, &list.slug).await?;
    tracing::info!(
        subject = log_id(&hash),
        new = confirmed_now.is_some(),
        "subscribed at Mailchimp"
    );
    Ok(())
}

/// `upemail`: the subscriber on `slug` moves to the new address, with the
/// consent events of their subscriptions. When the new address already has a
/// subscriber, nothing changes (merging is out of scope) and a warning says so.
async fn move_address<C: ConnectionTrait>(
    state: &AppState,
    conn: &C,
    slug: &str,
    old: &EmailAddress,
    new: &EmailAddress,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let old_hash = state.keys.hasher.hash(old);
    let new_hash = state.keys.hasher.hash(new);
    let Some(person) = member_of(conn, &old_hash, slug).await? else {
        tracing::debug!(
            subject = log_id(&old_hash),
            "address change of someone not on the list"
        );
        return Ok(());
    };
    if new_hash != old_hash {
        let taken = subscriber::Entity::find()
            .filter(subscriber::Column::EmailHash.eq(&new_hash))
            .one(conn)
            .await?
            .is_some();
        if taken {
            tracing::warn!(
                subject = log_id(&old_hash),
                new_subject = log_id(&new_hash),
                "address changed at Mailchimp to one that has a subscriber here; left as it is"
            );
            return Ok(());
        }
        let subscriptions: Vec<i64> = subscription::Entity::find()
            .select_only()
            .column(subscription::Column::Id)
            .filter(subscription::Column::SubscriberId.eq(person.id))
            .into_tuple()
            .all(conn)
            .await?;
        consent_event::Entity::update_many()
            .col_expr(
                consent_event::Column::EmailHash,
                Expr::value(new_hash.clone()),
            )
            .filter(consent_event::Column::EmailHash.eq(&old_hash))
            .filter(consent_event::Column::SubscriptionId.is_in(subscriptions))
            .exec(conn)
            .await?;
    }
    let mut am = person.into_active_model();
    am.email = Set(new.as_str().to_string());
    am.email_hash = Set(new_hash.clone());
    am.updated_at = Set(now);
    am.update(conn).await?;
    tracing::info!(
        subject = log_id(&old_hash),
        new_subject = log_id(&new_hash),
        "address changed at Mailchimp"
    );
    Ok(())
}

/// Applies one Mandrill delivery (already verified and parsed). `body` is
/// the delivery as received, for deduplication.
#[tracing::instrument(skip_all, fields(events = batch.actions.len(), ignored = batch.ignored))]
pub async fn apply_mandrill(
    state: &AppState,
    body: &[u8],
    batch: &MandrillBatch,
) -> anyhow::Result<Outcome> {
    if batch.actions.is_empty() {
        tracing::debug!("Mandrill webhook with nothing to act on");
        return Ok(Outcome::Ignored);
    }
    let digest = sha256_hex(body);
    let now = state.now();
    let tx = state.begin_write().await?;
    let conn = &*tx;
    if !take_receipt(conn, Source::Mandrill, &digest, now).await? {
        tracing::info!(outcome = "replay", "Mandrill webhook handled");
        return Ok(Outcome::Replay);
    }
    let mut queued_sync = false;
    for action in &batch.actions {
        match action {
            MandrillAction::Suppress { email, reason } => {
                let hash = state.keys.hasher.hash(email);
                suppression::add(
                    conn,
                    &state.config,
                    &hash,
                    ALL_LISTS,
                    *reason,
                    Source::Mandrill,
                    None,
                    now,
                )
                .await?;
                let outcome = unsubscribe_in(
                    state,
                    conn,
                    &hash,
                    &Scope::AllLists,
                    Source::Mandrill,
                    *reason,
                    now,
                )
                .await?;
                queued_sync |= outcome.queued_sync;
                tracing::info!(subject = log_id(&hash), reason = reason.as_str(), lists = ?outcome.left, "suppressed by Mandrill");
            }
            MandrillAction::Unsubscribe { email } => {
                let hash = state.keys.hasher.hash(email);
                let outcome = unsubscribe_in(
                    state,
                    conn,
                    &hash,
                    &Scope::AllLists,
                    Source::Mandrill,
                    Reason::Unsubscribed,
                    now,
                )
                .await?;
                queued_sync |= outcome.queued_sync;
                tracing::info!(subject = log_id(&hash), lists = ?outcome.left, "unsubscribed through Mandrill");
            }
            MandrillAction::Lift { email } => {
                let hash = state.keys.hasher.hash(email);
                let removed = suppression_model::Entity::delete_many()
                    .filter(suppression_model::Column::EmailHash.eq(&hash))
                    .filter(suppression_model::Column::Source.eq(Source::Mandrill.as_str()))
                    .exec(conn)
                    .await?
                    .rows_affected;
                tracing::info!(
                    subject = log_id(&hash),
                    removed,
                    "Mandrill rejection lifted"
                );
            }
        }
    }
    tx.commit().await?;
    if queued_sync {
        state.sync_notify.notify_one();
    }
    state.events_may_be_queued();
    tracing::info!(outcome = "applied", "Mandrill webhook handled");
    Ok(Outcome::Applied)
}
