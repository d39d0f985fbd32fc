//! Double opt-in, step two: the link in the mail. Looking at a token changes
//! nothing; confirming or blocking ("this wasn't me") does.
use entity::{consent_event, subscriber, subscription, token};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, IntoActiveModel,
    PaginatorTrait, QueryFilter, Set,
};

use super::{
    RequestContext,
    consent::{self, ConsentKind},
    suppression::{self, ALL_LISTS, Reason, Source},
};
use crate::{crypto::sha256_hex, secrets::log_id, state::AppState};

/// What a token stands for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenState {
    /// Usable: the subscription waits for confirmation.
    Pending {
        list: String,
    },
    /// Used to confirm; confirming again is harmless.
    Confirmed {
        list: String,
    },
    Expired,
    Unknown,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ConfirmOutcome {
    Confirmed,
    AlreadyConfirmed,
    Expired,
    Unknown,
}

#[derive(Debug, PartialEq, Eq)]
pub enum BlockOutcome {
    Blocked,
    Expired,
    Unknown,
}

struct Loaded {
    token: token::Model,
    subscription: subscription::Model,
}

async fn load<C: ConnectionTrait>(conn: &C, raw: &str) -> Result<Option<Loaded>, DbErr> {
    if raw.is_empty() || raw.len() > 128 {
        return Ok(None);
    }
    let Some(token) = token::Entity::find()
        .filter(token::Column::TokenHash.eq(sha256_hex(raw.as_bytes())))
        .filter(token::Column::Purpose.eq("confirm"))
        .one(conn)
        .await?
    else {
        return Ok(None);
    };
    let Some(sub_id) = token.subscription_id else {
        return Ok(None);
    };
    let Some(subscription) = subscription::Entity::find_by_id(sub_id).one(conn).await? else {
        return Ok(None);
    };
    Ok(Some(Loaded {
        token,
        subscription,
    }))
}

fn classify(l: &Loaded, now: chrono::DateTime<chrono::Utc>) -> TokenState {
    let list = l.subscription.list_slug.clone();
    if l.subscription.status == "confirmed" {
        // A used token keeps answering "already confirmed"; an unused one for a
        // subscription confirmed through another mail does too.
        return TokenState::Confirmed { list };
    }
    if l.token.used_at.is_some() {
        return TokenState::Unknown;
    }
    if l.token.expires_at <= now {
        return TokenState::Expired;
    }
    TokenState::Pending { list }
}

/// What the token stands for (GET pages); changes nothing.
pub async fn inspect(state: &AppState, raw: &str) -> anyhow::Result<TokenState> {
    Ok(match load(&state.db, raw).await? {
        Some(l) => classify(&l, state.now()),
        None => TokenState::Unknown,
    })
}

/// Confirms the subscription behind the token.
#[tracing::instrument(skip_all)]
pub async fn confirm(
    state: &AppState,
    raw: &str,
    ctx: &RequestContext,
) -> anyhow::Result<ConfirmOutcome> {
    let now = state.now();
    let tx = state.begin_write().await?;
    let Some(l) = load(&*tx, raw).await? else {
        return Ok(ConfirmOutcome::Unknown);
    };
    match classify(&l, now) {
        TokenState::Unknown => return Ok(ConfirmOutcome::Unknown),
        TokenState::Expired => return Ok(ConfirmOutcome::Expired),
        TokenState::Confirmed { .. } => return Ok(ConfirmOutcome::AlreadyConfirmed),
        TokenState::Pending { .. } => {}
    }
    let Some(list) = state.config.list(&l.subscription.list_slug).cloned() else {
        // The list was removed from the configuration since the signup.
        return Ok(ConfirmOutcome::Unknown);
    };
    let Some(person) = subscriber::Entity::find_by_id(l.subscription.subscriber_id)
        .one(&*tx)
        .await?
    else {
        return Ok(ConfirmOutcome::Unknown);
    };

    let mut sub = l.subscription.clone().into_active_model();
    sub.status = Set("confirmed".into());
    sub.confirmed_at = Set(Some(now));
    sub.pending_expires_at = Set(None);
    sub.update(&*tx).await?;
    let mut tok = l.token.into_active_model();
    tok.used_at = Set(Some(now));
    tok.update(&*tx).await?;

    consent::record(
        &*tx,
        &state.config,
        &list,
        l.subscription.id,
        &person.email_hash,
        ConsentKind::Confirmed,
        l.subscription.source.clone(),
        ctx,
        now,
    )
    .await?;
    suppression::lift_on_confirm(&*tx, &person.email_hash, &list.slug).await?;
    tx.commit().await?;
    tracing::info!(subject = log_id(&person.email_hash), list = %list.slug, "subscription confirmed");
    Ok(ConfirmOutcome::Confirmed)
}

/// "This wasn't me": uses up the token, deletes the pending subscription with
/// its consent record, and suppresses the address for confirmation mail.
#[tracing::instrument(skip_all)]
pub async fn block(state: &AppState, raw: &str) -> anyhow::Result<BlockOutcome> {
    let now = state.now();
    let tx = state.begin_write().await?;
    let Some(l) = load(&*tx, raw).await? else {
        return Ok(BlockOutcome::Unknown);
    };
    match classify(&l, now) {
        TokenState::Unknown | TokenState::Confirmed { .. } => return Ok(BlockOutcome::Unknown),
        TokenState::Expired => return Ok(BlockOutcome::Expired),
        TokenState::Pending { .. } => {}
    }
    let Some(person) = subscriber::Entity::find_by_id(l.subscription.subscriber_id)
        .one(&*tx)
        .await?
    else {
        return Ok(BlockOutcome::Unknown);
    };
    consent_event::Entity::delete_many()
        .filter(consent_event::Column::SubscriptionId.eq(l.subscription.id))
        .exec(&*tx)
        .await?;
    // Tokens go with the subscription (ON DELETE CASCADE).
    subscription::Entity::delete_by_id(l.subscription.id)
        .exec(&*tx)
        .await?;
    let remaining = subscription::Entity::find()
        .filter(subscription::Column::SubscriberId.eq(person.id))
        .count(&*tx)
        .await?;
    if remaining == 0 {
        subscriber::Entity::delete_by_id(person.id)
            .exec(&*tx)
            .await?;
    }
    suppression::add(
        &*tx,
        &state.config,
        &person.email_hash,
        ALL_LISTS,
        Reason::Blocked,
        Source::Link,
        None,
        now,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(
        subject = log_id(&person.email_hash),
        "signup blocked by its recipient"
    );
    Ok(BlockOutcome::Blocked)
}
