//! Proof of consent: the exact text by version, and the events.
use chrono::{DateTime, Utc};
use entity::{consent_event, consent_text};
use sea_orm::{ActiveModelTrait, ConnectionTrait, DbErr, EntityTrait, Set, sea_query::OnConflict};

use super::RequestContext;
use crate::{
    config::{Config, ListConfig},
    crypto::sha256_hex,
};

/// `requested` (the form was sent) or `confirmed` (the link was used).
#[derive(Debug, Clone, Copy)]
pub enum ConsentKind {
    Requested,
    Confirmed,
}

impl ConsentKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Confirmed => "confirmed",
        }
    }
}

/// Stores the list's consent text under its version the first time it is used;
/// an existing version is never overwritten. Returns the text's SHA-256.
pub async fn ensure_text<C: ConnectionTrait>(
    conn: &C,
    list: &ListConfig,
    now: DateTime<Utc>,
) -> Result<String, DbErr> {
    let sha = sha256_hex(list.consent_text.as_bytes());
    consent_text::Entity::insert(consent_text::ActiveModel {
        list_slug: Set(list.slug.clone()),
        version: Set(list.consent_version.clone()),
        sha256: Set(sha.clone()),
        text: Set(list.consent_text.clone()),
        first_used_at: Set(now),
    })
    .on_conflict(
        OnConflict::columns([
            consent_text::Column::ListSlug,
            consent_text::Column::Version,
        ])
        .do_nothing()
        .to_owned(),
    )
    .exec_without_returning(conn)
    .await?;
    Ok(sha)
}

/// Records one consent event.
#[allow(clippy::too_many_arguments)]
pub async fn record<C: ConnectionTrait>(
    conn: &C,
    config: &Config,
    list: &ListConfig,
    subscription_id: i64,
    email_hash: &str,
    kind: ConsentKind,
    source: Option<String>,
    ctx: &RequestContext,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let sha = ensure_text(conn, list, now).await?;
    event_model(
        config,
        list,
        subscription_id,
        email_hash,
        kind,
        source,
        ctx,
        sha,
        now,
    )
    .insert(conn)
    .await?;
    Ok(())
}

/// The row of one consent event, for single and batched inserts.
#[allow(clippy::too_many_arguments)]
pub fn event_model(
    config: &Config,
    list: &ListConfig,
    subscription_id: i64,
    email_hash: &str,
    kind: ConsentKind,
    source: Option<String>,
    ctx: &RequestContext,
    consent_sha256: String,
    now: DateTime<Utc>,
) -> consent_event::ActiveModel {
    consent_event::ActiveModel {
        subscription_id: Set(Some(subscription_id)),
        email_hash: Set(email_hash.to_string()),
        list_slug: Set(list.slug.clone()),
        kind: Set(kind.as_str().to_string()),
        occurred_at: Set(now),
        ip: Set(ctx.ip.clone()),
        user_agent: Set(ctx.user_agent.clone()),
        source: Set(source),
        consent_version: Set(list.consent_version.clone()),
        consent_sha256: Set(consent_sha256),
        privacy_policy_url: Set(config.org.privacy_policy_url.clone()),
        ..Default::default()
    }
}
