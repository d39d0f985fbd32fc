//! Self-service data-subject requests (GDPR art. 15 and 17): a person asks
//! for a copy of their data or its erasure; a mail with a single-use link
//! (24 h, stored only as a hash) proves the address is theirs; the link's
//! page carries the request out.
//!
//! The answer to the request never tells what is known about an address:
//! only an address the service holds something about gets the mail, and at
//! most one mail per address per cooldown. These mails go out even to a restricted or suppressed address:
//! they answer a request, they are not marketing.
use chrono::{DateTime, Utc};
use entity::{consent_event, subscriber, suppression, token};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, Set};

use super::privacy::{self, ErasureReceipt, Export};
use crate::{
    crypto::{open_with_token, random_token, seal_with_token, sha256_hex},
    domain::EmailAddress,
    i18n::Locale,
    outbox::{JobKind, enqueue, mail_worker::MailJob},
    secrets::log_id,
    state::AppState,
};

/// What the person asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Access,
    Erasure,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "access" => Some(Self::Access),
            "erasure" => Some(Self::Erasure),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Access => "access",
            Self::Erasure => "erasure",
        }
    }

    fn purpose(self) -> &'static str {
        match self {
            Self::Access => "privacy_access",
            Self::Erasure => "privacy_erasure",
        }
    }

    fn from_purpose(p: &str) -> Option<Self> {
        match p {
            "privacy_access" => Some(Self::Access),
            "privacy_erasure" => Some(Self::Erasure),
            _ => None,
        }
    }
}

/// How long the link in the mail works.
const VALIDITY: chrono::Duration = chrono::Duration::hours(24);
/// At most one such mail per address in this time.
const COOLDOWN: chrono::Duration = chrono::Duration::minutes(10);
/// The actor the audit trail records for a person acting for themselves.
pub const SELF_SERVICE: &str = "self-service";

/// Queues the mail with the link, when the service holds anything about the
/// address (a subscriber, a suppression entry, kept consent proof) and no
/// mail went to it within the cooldown. Says nothing about which it was.
/// The token row keeps the address sealed under a key derived from the
/// mailed token: unreadable in the database, opened only by the link.
#[tracing::instrument(skip_all, fields(kind = kind.as_str()))]
pub async fn request(
    state: &AppState,
    email: &EmailAddress,
    kind: Kind,
    locale: Locale,
) -> anyhow::Result<()> {
    let hash = state.keys.hasher.hash(email);
    let now = state.now();
    let tx = state.begin_write().await?;
    let person = subscriber::Entity::find()
        .filter(subscriber::Column::EmailHash.eq(&hash))
        .one(&*tx)
        .await?;
    let known = person.is_some()
        || suppression::Entity::find()
            .filter(suppression::Column::EmailHash.eq(&hash))
            .count(&*tx)
            .await?
            > 0
        || consent_event::Entity::find()
            .filter(consent_event::Column::EmailHash.eq(&hash))
            .count(&*tx)
            .await?
            > 0;
    if !known {
        tracing::info!(
            subject = log_id(&hash),
            "privacy request for an unknown address: no mail"
        );
        return Ok(());
    }
    let recent = token::Entity::find()
        .filter(token::Column::SubjectHash.eq(&hash))
        .filter(token::Column::Purpose.is_in(["privacy_access", "privacy_erasure"]))
        .filter(token::Column::CreatedAt.gt(now - COOLDOWN))
        .count(&*tx)
        .await?;
    if recent > 0 {
        tracing::info!(
            subject = log_id(&hash),
            "privacy request within the cooldown: no mail"
        );
        return Ok(());
    }
    let raw = random_token();
    token::ActiveModel {
        token_hash: Set(sha256_hex(raw.as_bytes())),
        purpose: Set(kind.purpose().into()),
        subscription_id: Set(None),
        subscriber_id: Set(person.as_ref().map(|p| p.id)),
        created_at: Set(now),
        expires_at: Set(now + VALIDITY),
        used_at: Set(None),
        sealed_address: Set(Some(seal_with_token(&raw, email.as_str()))),
        subject_hash: Set(Some(hash.clone())),
        ..Default::default()
    }
    .insert(&*tx)
    .await?;
    let mail = MailJob::Privacy {
        to: email.as_str().to_string(),
        kind: kind.as_str().into(),
        token: raw,
        locale: locale.code().into(),
    };
    enqueue(
        &*tx,
        JobKind::Mail,
        &serde_json::to_value(&mail)?,
        Some(&hash),
        now,
    )
    .await?;
    tx.commit().await?;
    state.outbox_notify.notify_one();
    tracing::info!(subject = log_id(&hash), "privacy request mail queued");
    Ok(())
}

/// What a link stands for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    Usable(Kind),
    Expired,
    Unknown,
}

struct Loaded {
    token: token::Model,
    kind: Kind,
    email: EmailAddress,
}

async fn load(state: &AppState, raw: &str) -> Result<Option<Loaded>, sea_orm::DbErr> {
    if raw.is_empty() || raw.len() > 128 {
        return Ok(None);
    }
    let Some(t) = token::Entity::find()
        .filter(token::Column::TokenHash.eq(sha256_hex(raw.as_bytes())))
        .one(&state.db)
        .await?
    else {
        return Ok(None);
    };
    let Some(kind) = Kind::from_purpose(&t.purpose) else {
        return Ok(None);
    };
    let Some(address) = t
        .sealed_address
        .as_deref()
        .and_then(|sealed| open_with_token(raw, sealed))
    else {
        return Ok(None);
    };
    let Ok(email) = EmailAddress::parse(&address) else {
        return Ok(None);
    };
    Ok(Some(Loaded {
        token: t,
        kind,
        email,
    }))
}

fn classify(l: &Loaded, now: DateTime<Utc>) -> LinkState {
    if l.token.used_at.is_some() {
        LinkState::Unknown
    } else if l.token.expires_at <= now {
        LinkState::Expired
    } else {
        LinkState::Usable(l.kind)
    }
}

/// What the link stands for (the GET page); changes nothing.
pub async fn inspect(state: &AppState, raw: &str) -> anyhow::Result<LinkState> {
    Ok(match load(state, raw).await? {
        Some(l) => classify(&l, state.now()),
        None => LinkState::Unknown,
    })
}

/// What carrying a request out gave.
pub enum Outcome {
    Exported(Box<Export>),
    Erased(ErasureReceipt),
    Expired,
    Unknown,
}

/// Carries the request out (the page's POST) and uses the link up.
#[tracing::instrument(skip_all)]
pub async fn carry_out(state: &AppState, raw: &str) -> anyhow::Result<Outcome> {
    let Some(l) = load(state, raw).await? else {
        return Ok(Outcome::Unknown);
    };
    match classify(&l, state.now()) {
        LinkState::Unknown => return Ok(Outcome::Unknown),
        LinkState::Expired => return Ok(Outcome::Expired),
        LinkState::Usable(_) => {}
    }
    // Use the link up first: of two concurrent POSTs only one goes on.
    let used = token::Entity::update_many()
        .col_expr(
            token::Column::UsedAt,
            sea_orm::sea_query::Expr::value(Some(state.now())),
        )
        .filter(token::Column::Id.eq(l.token.id))
        .filter(token::Column::UsedAt.is_null())
        .exec(&state.db)
        .await?
        .rows_affected;
    if used == 0 {
        return Ok(Outcome::Unknown);
    }
    Ok(match l.kind {
        Kind::Access => match privacy::export(state, &l.email, SELF_SERVICE).await? {
            Some(export) => Outcome::Exported(Box::new(export)),
            None => Outcome::Unknown,
        },
        Kind::Erasure => Outcome::Erased(privacy::erase(state, &l.email, SELF_SERVICE).await?),
    })
}
