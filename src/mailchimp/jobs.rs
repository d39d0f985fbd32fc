//! The Mailchimp jobs of the outbox: what each holds, and how one is queued.
//!
//! An upsert holds what Mailchimp needs (the address, the name, the consent
//! IPs and times); every other job holds only the Mailchimp subscriber hash.
//! A job's `member_key` names the member: queuing a job supersedes the unsent
//! jobs for the same member (clearing their payloads), and the worker never
//! runs two jobs of one member at once, so the last change wins.
use chrono::{DateTime, Utc};
use entity::outbox;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, Set,
    sea_query::Expr,
};
use serde::{Deserialize, Serialize};

use super::client::{MemberBody, MergeFields};
use crate::{
    config::{Config, OnExpiry},
    outbox::{JobKind, job_model},
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MailchimpJob {
    /// `PUT` the member as subscribed (falls back to `pending` on a
    /// compliance-state answer).
    Upsert {
        list_id: String,
        hash: String,
        member: Box<MemberBody>,
    },
    /// `PATCH` status `unsubscribed`; a 404 there means nothing to do.
    Unsubscribe { list_id: String, hash: String },
    /// `DELETE`: archive the member.
    Archive { list_id: String, hash: String },
    /// `POST .../actions/delete-permanent`.
    DeletePermanent { list_id: String, hash: String },
}

impl MailchimpJob {
    /// The key that orders this member's jobs (see [`member_key`]).
    pub fn member_key(&self) -> String {
        member_key(self.list_id(), self.hash())
    }

    /// The job as the outbox row's payload holds it.
    pub fn payload(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a job serialises")
    }

    pub fn list_id(&self) -> &str {
        match self {
            Self::Upsert { list_id, .. }
            | Self::Unsubscribe { list_id, .. }
            | Self::Archive { list_id, .. }
            | Self::DeletePermanent { list_id, .. } => list_id,
        }
    }

    pub fn hash(&self) -> &str {
        match self {
            Self::Upsert { hash, .. }
            | Self::Unsubscribe { hash, .. }
            | Self::Archive { hash, .. }
            | Self::DeletePermanent { hash, .. } => hash,
        }
    }

    /// The name of the operation, for logs and the sync status.
    pub fn op(&self) -> &'static str {
        match self {
            Self::Upsert { .. } => "upsert",
            Self::Unsubscribe { .. } => "unsubscribe",
            Self::Archive { .. } => "archive",
            Self::DeletePermanent { .. } => "delete_permanent",
        }
    }

    /// What `mailchimp.on_expiry` asks for when a suppression entry of a
    /// mapped list expires (or the address is erased).
    pub fn on_expiry(config: &Config, list_id: &str, hash: &str) -> Option<Self> {
        let (list_id, hash) = (list_id.to_string(), hash.to_string());
        match config.mailchimp.on_expiry {
            OnExpiry::Archive => Some(Self::Archive { list_id, hash }),
            OnExpiry::DeletePermanent => Some(Self::DeletePermanent { list_id, hash }),
            OnExpiry::None => None,
        }
    }
}

/// `mailchimp:<list id>:<subscriber hash>`.
pub fn member_key(list_id: &str, hash: &str) -> String {
    format!("mailchimp:{list_id}:{hash}")
}

/// Queues `job` inside the caller's transaction, superseding the unsent jobs
/// for the same member. `subject_hash` is the keyed address hash where the
/// change is about a person we still hold (so an erasure can find the job).
pub async fn enqueue<C: ConnectionTrait>(
    conn: &C,
    job: &MailchimpJob,
    subject_hash: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let key = job.member_key();
    outbox::Entity::update_many()
        .col_expr(outbox::Column::Status, Expr::value("superseded"))
        .col_expr(outbox::Column::Payload, Expr::value(Option::<String>::None))
        .col_expr(outbox::Column::UpdatedAt, Expr::value(now))
        .filter(outbox::Column::MemberKey.eq(&key))
        .filter(outbox::Column::Status.is_in(["pending", "dead"]))
        .exec(conn)
        .await?;
    let mut row = job_model(JobKind::Mailchimp, &job.payload(), subject_hash, now);
    row.member_key = Set(Some(key));
    row.insert(conn).await?;
    Ok(())
}

/// Queues, inside the caller's transaction, an unsubscribe of the member
/// `hash` in the audience of every list of `slugs` that has one. Answers
/// whether any was queued (the sync worker is then to be woken).
pub async fn queue_unsubscribes<'a, C: ConnectionTrait>(
    conn: &C,
    config: &Config,
    slugs: impl IntoIterator<Item = &'a str>,
    hash: &str,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let mut queued = false;
    for slug in slugs {
        if let Some(list_id) = config
            .list(slug)
            .and_then(|l| l.mailchimp_list_id.as_deref())
        {
            let job = MailchimpJob::Unsubscribe {
                list_id: list_id.to_string(),
                hash: hash.to_string(),
            };
            enqueue(conn, &job, None, now).await?;
            queued = true;
        }
    }
    Ok(queued)
}

/// Mailchimp's `FNAME`/`LNAME` from one display name: the first word, and the rest.
pub fn split_name(name: Option<&str>) -> MergeFields {
    let name = name.unwrap_or("").trim();
    let (first, last) = name.split_once(char::is_whitespace).unwrap_or((name, ""));
    MergeFields {
        fname: first.to_string(),
        lname: last.trim().to_string(),
    }
}

/// ISO 8601 the way Mailchimp takes it.
pub fn mailchimp_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Queues the upsert of a confirmed subscription, inside the caller's
/// transaction, when its list is mapped to an audience and the person is not
/// restricted. The signup IP and time come from the subscription's
/// `requested` consent event, the opt-in IP and time from its `confirmed` one.
/// Returns whether a job was queued.
pub async fn queue_upsert<C: ConnectionTrait>(
    conn: &C,
    config: &Config,
    person: &entity::subscriber::Model,
    list_slug: &str,
    subscription_id: i64,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    use entity::consent_event;
    use sea_orm::QueryOrder;

    let Some(list_id) = config
        .list(list_slug)
        .and_then(|l| l.mailchimp_list_id.clone())
    else {
        return Ok(false);
    };
    if person.restricted {
        return Ok(false);
    }
    let Ok(email) = crate::domain::EmailAddress::parse(&person.email) else {
        return Ok(false);
    };
    let events = consent_event::Entity::find()
        .filter(consent_event::Column::SubscriptionId.eq(subscription_id))
        .order_by_desc(consent_event::Column::OccurredAt)
        .all(conn)
        .await?;
    let latest = |kind: &str| events.iter().find(|e| e.kind == kind);
    let requested = latest("requested");
    let confirmed = latest("confirmed");
    let member = MemberBody {
        email_address: email.as_str().to_string(),
        status_if_new: "subscribed".into(),
        status: "subscribed".into(),
        merge_fields: Some(split_name(person.name.as_deref())),
        ip_signup: requested.and_then(|e| e.ip.clone()),
        timestamp_signup: requested.map(|e| mailchimp_time(e.occurred_at)),
        ip_opt: confirmed.and_then(|e| e.ip.clone()),
        timestamp_opt: Some(mailchimp_time(confirmed.map_or(now, |e| e.occurred_at))),
    };
    let job = MailchimpJob::Upsert {
        list_id,
        hash: email.mailchimp_hash(),
        member: Box::new(member),
    };
    enqueue(conn, &job, Some(&person.email_hash), now).await?;
    Ok(true)
}
