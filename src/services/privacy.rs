//! Data-subject rights, as an administrator answers them: export (art. 15 and
//! 20), rectification of the name (art. 16), restriction of processing
//! (art. 18), erasure (art. 17) and unsubscribing on the person's behalf.
//! Every action writes one row of the audit trail (`admin_audit`: who, what,
//! when, the address hash — never the address) in its own transaction.
//!
//! The export document's types carry their schema (they are the documented
//! JSON document the API serves and the CLI prints).
use chrono::{DateTime, Utc};
use entity::{
    admin_audit, consent_event, consent_text, outbox, subscriber, subscription,
    suppression as suppression_entity, token,
};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, IntoActiveModel,
    QueryFilter, QueryOrder, Set, sea_query::Expr,
};
use serde::Serialize;

use super::{
    suppression::{self, ALL_LISTS, Reason, Source},
    unsubscribe::{Scope, UnsubscribeOutcome, unsubscribe_in},
};
use crate::{
    domain::{DisplayName, EmailAddress},
    mailchimp::{MailchimpJob, jobs as mailchimp_jobs},
    outbox::JobKind,
    secrets::log_id,
    state::AppState,
};

/// The actor recorded for commands run from the command line.
pub const CLI_ACTOR: &str = "cli";

/// What an administrator did, as the audit trail names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    Export,
    Rectify,
    Restrict,
    Unrestrict,
    Erase,
    Unsubscribe,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Export => "export",
            Self::Rectify => "rectify",
            Self::Restrict => "restrict",
            Self::Unrestrict => "unrestrict",
            Self::Erase => "erase",
            Self::Unsubscribe => "unsubscribe",
        }
    }
}

/// Writes one audit row inside the caller's transaction.
pub async fn audit<C: ConnectionTrait>(
    conn: &C,
    actor: &str,
    action: AuditAction,
    subject_hash: &str,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    admin_audit::ActiveModel {
        at: Set(now),
        actor: Set(actor.to_string()),
        action: Set(action.as_str().to_string()),
        subject_hash: Set(subject_hash.to_string()),
        ..Default::default()
    }
    .insert(conn)
    .await?;
    Ok(())
}

/// Everything held about one address (art. 15 and 20).
#[derive(Debug, Clone, Serialize, poem_openapi::Object)]
#[oai(rename = "PersonalDataExport")]
pub struct Export {
    /// When this document was made.
    pub exported_at: DateTime<Utc>,
    /// The address the export is about.
    pub email: String,
    /// Absent when the address is held only as a suppression entry or as
    /// consent proof kept after an unsubscribe.
    pub subscriber: Option<ExportSubscriber>,
    pub subscriptions: Vec<ExportSubscription>,
    /// Every consent event of the address, also those kept (under its hash
    /// only) as proof after an unsubscribe.
    pub consent_events: Vec<ExportConsentEvent>,
    /// The exact consent texts those events refer to.
    pub consent_texts: Vec<ExportConsentText>,
    /// Suppression entries of the address.
    pub suppressions: Vec<ExportSuppression>,
    /// Sync and mail jobs about the address not yet done.
    pub pending_jobs: Vec<ExportJob>,
}

#[derive(Debug, Clone, Serialize, poem_openapi::Object)]
#[oai(rename = "PersonalDataExportSubscriber")]
pub struct ExportSubscriber {
    pub email: String,
    pub name: Option<String>,
    pub locale: String,
    /// Processing restricted (art. 18): kept, never mailed.
    pub restricted: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, poem_openapi::Object)]
#[oai(rename = "PersonalDataExportSubscription")]
pub struct ExportSubscription {
    pub list: String,
    /// `pending` or `confirmed`.
    pub status: String,
    pub source: Option<String>,
    pub created_at: DateTime<Utc>,
    pub confirmed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, poem_openapi::Object)]
#[oai(rename = "PersonalDataExportConsentEvent")]
pub struct ExportConsentEvent {
    pub list: String,
    /// `requested` (the form was sent) or `confirmed` (the link was used).
    pub kind: String,
    pub occurred_at: DateTime<Utc>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub source: Option<String>,
    pub consent_version: String,
    /// SHA-256 (hex) of the consent text agreed to.
    pub consent_sha256: String,
    pub privacy_policy_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, poem_openapi::Object)]
#[oai(rename = "PersonalDataExportConsentText")]
pub struct ExportConsentText {
    pub list: String,
    pub version: String,
    pub sha256: String,
    /// The exact words shown.
    pub text: String,
    pub first_used_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, poem_openapi::Object)]
#[oai(rename = "PersonalDataExportSuppression")]
pub struct ExportSuppression {
    /// A list slug, or `*` for all lists.
    pub scope: String,
    pub reason: String,
    pub source: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, poem_openapi::Object)]
#[oai(rename = "PersonalDataExportJob")]
pub struct ExportJob {
    /// `mail` or `mailchimp`.
    pub kind: String,
    /// The operation (`upsert`, `archive`, ...; the mail template for mail).
    pub op: Option<String>,
    /// `pending`, `in_flight` or `dead`.
    pub status: String,
    pub created_at: DateTime<Utc>,
}

/// What an erasure deleted and queued.
#[derive(Debug, Clone, Serialize, poem_openapi::Object)]
pub struct ErasureReceipt {
    /// Whether a subscriber record existed and was deleted.
    pub subscriber: bool,
    pub subscriptions: u64,
    pub consent_events: u64,
    pub tokens: u64,
    /// Unsent jobs about the address, cancelled with their payloads cleared,
    /// and first confirmation mails not yet sent, withdrawn.
    pub jobs_cancelled: u64,
    /// Mailchimp removals (archive or permanent delete) queued.
    pub mailchimp_jobs: u64,
    /// The `erased` suppression entry for all lists, written always.
    pub suppressed_until: DateTime<Utc>,
}

/// A change to a subscriber. `name`: `None` leaves it, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct Rectification {
    pub name: Option<Option<DisplayName>>,
    pub restricted: Option<bool>,
}

/// Everything held about `email`, or `None` when nothing is. Audited.
#[tracing::instrument(skip_all, fields(subject = log_id(&state.keys.hasher.hash(email))))]
pub async fn export(
    state: &AppState,
    email: &EmailAddress,
    actor: &str,
) -> Result<Option<Export>, DbErr> {
    let hash = state.keys.hasher.hash(email);
    let now = state.now();
    let tx = state.begin_write().await?;
    let conn = &*tx;
    let person = subscriber::Entity::find()
        .filter(subscriber::Column::EmailHash.eq(&hash))
        .one(conn)
        .await?;
    let subscriptions = match &person {
        Some(p) => {
            subscription::Entity::find()
                .filter(subscription::Column::SubscriberId.eq(p.id))
                .order_by_asc(subscription::Column::ListSlug)
                .all(conn)
                .await?
        }
        None => Vec::new(),
    };
    let events = consent_event::Entity::find()
        .filter(consent_event::Column::EmailHash.eq(&hash))
        .order_by_asc(consent_event::Column::OccurredAt)
        .order_by_asc(consent_event::Column::Id)
        .all(conn)
        .await?;
    let mut texts = Vec::new();
    for e in &events {
        if texts.iter().any(|t: &consent_text::Model| {
            t.list_slug == e.list_slug && t.version == e.consent_version
        }) {
            continue;
        }
        if let Some(t) =
            consent_text::Entity::find_by_id((e.list_slug.clone(), e.consent_version.clone()))
                .one(conn)
                .await?
        {
            texts.push(t);
        }
    }
    let suppressions = suppression_entity::Entity::find()
        .filter(suppression_entity::Column::EmailHash.eq(&hash))
        .order_by_asc(suppression_entity::Column::CreatedAt)
        .all(conn)
        .await?;
    let mut jobs = outbox::Entity::find()
        .filter(outbox::Column::SubjectHash.eq(&hash))
        .filter(crate::outbox::status_in(&["pending", "in_flight", "dead"]))
        .order_by_asc(outbox::Column::Id)
        .all(conn)
        .await?;
    // A first confirmation mail not yet sent: its job names the subscription.
    let ids: Vec<i64> = subscriptions.iter().map(|s| s.id).collect();
    jobs.extend(
        super::subscribe::first_mail_jobs_naming(conn, &ids)
            .await?
            .into_iter()
            .map(|(j, _)| j),
    );
    jobs.sort_by_key(|j| j.id);
    if person.is_none() && events.is_empty() && suppressions.is_empty() && jobs.is_empty() {
        return Ok(None);
    }
    audit(conn, actor, AuditAction::Export, &hash, now).await?;
    tx.commit().await?;

    Ok(Some(Export {
        exported_at: now,
        email: email.as_str().to_string(),
        subscriber: person.map(|p| ExportSubscriber {
            email: p.email,
            name: p.name,
            locale: p.locale,
            restricted: p.restricted,
            created_at: p.created_at,
        }),
        subscriptions: subscriptions
            .into_iter()
            .map(|s| ExportSubscription {
                list: s.list_slug,
                status: s.status,
                source: s.source,
                created_at: s.created_at,
                confirmed_at: s.confirmed_at,
            })
            .collect(),
        consent_events: events
            .into_iter()
            .map(|e| ExportConsentEvent {
                list: e.list_slug,
                kind: e.kind,
                occurred_at: e.occurred_at,
                ip: e.ip,
                user_agent: e.user_agent,
                source: e.source,
                consent_version: e.consent_version,
                consent_sha256: e.consent_sha256,
                privacy_policy_url: e.privacy_policy_url,
            })
            .collect(),
        consent_texts: texts
            .into_iter()
            .map(|t| ExportConsentText {
                list: t.list_slug,
                version: t.version,
                sha256: t.sha256,
                text: t.text,
                first_used_at: t.first_used_at,
            })
            .collect(),
        suppressions: suppressions
            .into_iter()
            .map(|s| ExportSuppression {
                scope: s.scope,
                reason: s.reason,
                source: s.source,
                created_at: s.created_at,
                expires_at: s.expires_at,
            })
            .collect(),
        pending_jobs: jobs
            .into_iter()
            .map(|j| ExportJob {
                op: j.payload.as_deref().and_then(job_op),
                kind: j.kind,
                status: j.status,
                created_at: j.created_at,
            })
            .collect(),
    }))
}

/// The operation a job's payload names (`op` of a Mailchimp job, `template`
/// of a mail), without anything else from the payload. A signup batch's
/// first mails are, to each person in it, their `confirm` mail.
fn job_op(payload: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(payload).ok()?;
    v.get("op")
        .or_else(|| v.get("template"))
        .and_then(|o| o.as_str())
        .map(|op| match op {
            crate::outbox::mail_worker::FIRST_CONFIRMATIONS => "confirm",
            op => op,
        })
        .map(str::to_string)
}

/// Rectifies the name and sets or lifts the restriction, in one transaction
/// with the Mailchimp jobs and the audit rows. `None` when no subscriber
/// exists for the address.
#[tracing::instrument(skip_all, fields(subject = log_id(&state.keys.hasher.hash(email))))]
pub async fn rectify(
    state: &AppState,
    email: &EmailAddress,
    change: &Rectification,
    actor: &str,
) -> Result<Option<subscriber::Model>, DbErr> {
    let hash = state.keys.hasher.hash(email);
    let now = state.now();
    let tx = state.begin_write().await?;
    let conn = &*tx;
    let Some(person) = subscriber::Entity::find()
        .filter(subscriber::Column::EmailHash.eq(&hash))
        .one(conn)
        .await?
    else {
        return Ok(None);
    };
    let was_restricted = person.restricted;
    let new_name = match &change.name {
        Some(n) => n.as_ref().map(|n| n.as_str().to_string()),
        None => person.name.clone(),
    };
    let restricted = change.restricted.unwrap_or(was_restricted);
    let renamed = new_name != person.name;
    let mut row = person.into_active_model();
    row.name = Set(new_name);
    row.restricted = Set(restricted);
    row.updated_at = Set(now);
    let person = row.update(conn).await?;

    let confirmed = subscription::Entity::find()
        .filter(subscription::Column::SubscriberId.eq(person.id))
        .filter(subscription::Column::Status.eq("confirmed"))
        .order_by_asc(subscription::Column::ListSlug)
        .all(conn)
        .await?;
    let mut queued = false;
    if restricted && !was_restricted {
        // Archived at Mailchimp while restricted.
        for sub in &confirmed {
            if let Some(list_id) = state
                .config
                .list(&sub.list_slug)
                .and_then(|l| l.mailchimp_list_id.clone())
            {
                let job = MailchimpJob::Archive {
                    list_id,
                    hash: email.mailchimp_hash(),
                };
                mailchimp_jobs::enqueue(conn, &job, Some(&hash), now).await?;
                queued = true;
            }
        }
        // No mail while restricted: unsent confirmation mails go (a mail
        // answering a rights request is not marketing and stays).
        let confirmations: Vec<i64> = outbox::Entity::find()
            .filter(outbox::Column::SubjectHash.eq(&hash))
            .filter(outbox::Column::Kind.eq(JobKind::Mail.as_str()))
            .filter(crate::outbox::status_in(&["pending", "dead"]))
            .all(conn)
            .await?
            .into_iter()
            .filter(|j| j.payload.as_deref().and_then(job_op).as_deref() == Some("confirm"))
            .map(|j| j.id)
            .collect();
        if !confirmations.is_empty() {
            outbox::Entity::update_many()
                .col_expr(outbox::Column::Status, Expr::value("cancelled"))
                .col_expr(outbox::Column::Payload, Expr::value(Option::<String>::None))
                .col_expr(outbox::Column::UpdatedAt, Expr::value(now))
                .filter(outbox::Column::Id.is_in(confirmations))
                .exec(conn)
                .await?;
        }
        audit(conn, actor, AuditAction::Restrict, &hash, now).await?;
    } else if !restricted && (was_restricted || renamed) {
        // Lifting the restriction (or a new name) sends the member again.
        for sub in &confirmed {
            queued |= mailchimp_jobs::queue_upsert(
                conn,
                &state.config,
                &person,
                &sub.list_slug,
                sub.id,
                now,
            )
            .await?;
        }
        if was_restricted {
            audit(conn, actor, AuditAction::Unrestrict, &hash, now).await?;
        }
    }
    if change.name.is_some() {
        audit(conn, actor, AuditAction::Rectify, &hash, now).await?;
    }
    tx.commit().await?;
    if queued {
        state.sync_notify.notify_one();
    }
    tracing::info!(renamed, restricted, "subscriber rectified");
    Ok(Some(person))
}

/// Erases everything held about `email` (art. 17) in one transaction: the
/// subscriber, its subscriptions and tokens, every consent event of the
/// address (attached or kept after an unsubscribe), its mail-rate state and
/// the unsent jobs about it. Queues the Mailchimp removal for every mapped
/// list (`mailchimp.on_expiry` decides how) and writes an `erased`
/// suppression entry for all lists, even when nothing else was held, so no
/// mailing reaches the address while that entry lasts. Other suppression
/// entries stay: they hold only the hash and keep the address from being
/// mailed.
#[tracing::instrument(skip_all, fields(subject = log_id(&state.keys.hasher.hash(email))))]
pub async fn erase(
    state: &AppState,
    email: &EmailAddress,
    actor: &str,
) -> Result<ErasureReceipt, DbErr> {
    let hash = state.keys.hasher.hash(email);
    let now = state.now();
    let tx = state.begin_write().await?;
    let conn = &*tx;
    let person = subscriber::Entity::find()
        .filter(subscriber::Column::EmailHash.eq(&hash))
        .one(conn)
        .await?;
    let mut withdrawn = 0;
    let mut receipt = ErasureReceipt {
        subscriber: person.is_some(),
        subscriptions: 0,
        consent_events: 0,
        tokens: 0,
        jobs_cancelled: 0,
        mailchimp_jobs: 0,
        suppressed_until: now,
    };
    if let Some(p) = &person {
        let subs = subscription::Entity::find()
            .filter(subscription::Column::SubscriberId.eq(p.id))
            .all(conn)
            .await?;
        // A pending subscription's first token, held on its row, goes with it.
        let held = subs.iter().filter(|s| s.token_hash.is_some()).count() as u64;
        let sub_ids: Vec<i64> = subs.into_iter().map(|s| s.id).collect();
        // A first confirmation mail not yet sent is withdrawn with its
        // subscription (the worker sends none for a deleted one).
        withdrawn = super::subscribe::first_mail_jobs_naming(conn, &sub_ids)
            .await?
            .iter()
            .map(|(_, named)| *named as u64)
            .sum();
        receipt.tokens = held
            + token::Entity::delete_many()
                .filter(
                    Condition::any()
                        .add(token::Column::SubscriberId.eq(p.id))
                        .add(token::Column::SubscriptionId.is_in(sub_ids.clone())),
                )
                .exec(conn)
                .await?
                .rows_affected;
        receipt.subscriptions = subscription::Entity::delete_many()
            .filter(subscription::Column::Id.is_in(sub_ids))
            .exec(conn)
            .await?
            .rows_affected;
        subscriber::Entity::delete_by_id(p.id).exec(conn).await?;
    }
    receipt.consent_events = consent_event::Entity::delete_many()
        .filter(consent_event::Column::EmailHash.eq(&hash))
        .exec(conn)
        .await?
        .rows_affected;
    receipt.jobs_cancelled = withdrawn
        + outbox::Entity::update_many()
            .col_expr(outbox::Column::Status, Expr::value("cancelled"))
            .col_expr(outbox::Column::Payload, Expr::value(Option::<String>::None))
            .col_expr(outbox::Column::UpdatedAt, Expr::value(now))
            .filter(outbox::Column::SubjectHash.eq(&hash))
            .filter(crate::outbox::status_in(&["pending", "dead"]))
            .exec(conn)
            .await?
            .rows_affected;
    // Mailchimp may hold the member on any mapped list, subscribed here or not.
    let member = email.mailchimp_hash();
    for list_id in state
        .config
        .lists
        .iter()
        .filter_map(|l| l.mailchimp_list_id.as_deref())
    {
        if let Some(job) = MailchimpJob::on_expiry(&state.config, list_id, &member) {
            mailchimp_jobs::enqueue(conn, &job, None, now).await?;
            receipt.mailchimp_jobs += 1;
        }
    }
    // The removal is queued already: the entry keeps no Mailchimp hash.
    suppression::add(
        conn,
        &state.config,
        &hash,
        ALL_LISTS,
        Reason::Erased,
        Source::Admin,
        None,
        now,
    )
    .await?;
    receipt.suppressed_until = state
        .config
        .suppression_retention(Reason::Erased.as_str())
        .after(now);
    crate::events::queue(
        conn,
        &state.config,
        crate::events::EventType::SubscriberErased,
        serde_json::json!({"email_hash": hash, "erased_at": now}),
        None,
        now,
    )
    .await?;
    audit(conn, actor, AuditAction::Erase, &hash, now).await?;
    tx.commit().await?;
    if receipt.mailchimp_jobs > 0 {
        state.sync_notify.notify_one();
    }
    state.events_may_be_queued();
    tracing::info!(
        subscriber = receipt.subscriber,
        subscriptions = receipt.subscriptions,
        consent_events = receipt.consent_events,
        mailchimp_jobs = receipt.mailchimp_jobs,
        "address erased"
    );
    Ok(receipt)
}

/// Unsubscribes on the person's behalf (see
/// [`super::unsubscribe::unsubscribe_in`]), audited in the same transaction.
#[tracing::instrument(skip_all, fields(subject = log_id(email_hash)))]
pub async fn unsubscribe_for(
    state: &AppState,
    email_hash: &str,
    scope: &Scope,
    actor: &str,
) -> Result<UnsubscribeOutcome, DbErr> {
    let now = state.now();
    let tx = state.begin_write().await?;
    let out = unsubscribe_in(
        state,
        &*tx,
        email_hash,
        scope,
        Source::Admin,
        Reason::Unsubscribed,
        now,
    )
    .await?;
    audit(&*tx, actor, AuditAction::Unsubscribe, email_hash, now).await?;
    tx.commit().await?;
    if out.queued_sync {
        state.sync_notify.notify_one();
    }
    tracing::info!(lists = ?out.left, source = Source::Admin.as_str(), "unsubscribed");
    Ok(out)
}
