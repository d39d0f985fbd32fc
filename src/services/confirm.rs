//! Double opt-in, step two: the link in the mail. Looking at a token changes
//! nothing; confirming or blocking ("this wasn't me") does.
use chrono::{DateTime, Utc};
use entity::{consent_event, subscriber, subscription, token};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, IntoActiveModel,
    PaginatorTrait, QueryFilter, Set, sea_query::Expr,
};

use super::{
    RequestContext,
    consent::{self, ConsentKind},
    suppression::{self, ALL_LISTS, Reason, Source},
};
use crate::{config::Config, crypto::sha256_hex, secrets::log_id, state::AppState};

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
    /// Past its validity; the page offers a new mail for this list.
    Expired {
        list: String,
    },
    Unknown,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ConfirmOutcome {
    Confirmed,
    AlreadyConfirmed,
    Expired { list: String },
    Unknown,
}

#[derive(Debug, PartialEq, Eq)]
pub enum BlockOutcome {
    Blocked,
    Expired { list: String },
    Unknown,
}

/// A confirmation token as found.
struct Loaded {
    /// Its `tokens` row; `None` for the first token of a pending
    /// subscription, which its row holds (`subscription.token_hash`).
    row: Option<token::Model>,
    expires_at: DateTime<Utc>,
    subscription: subscription::Model,
}

async fn load<C: ConnectionTrait>(
    conn: &C,
    config: &Config,
    raw: &str,
) -> Result<Option<Loaded>, DbErr> {
    if raw.is_empty() || raw.len() > 128 {
        return Ok(None);
    }
    let hash = sha256_hex(raw.as_bytes());
    // The row first: confirming moves its token into `tokens` in one commit,
    // so a token not on the row by the time of this lookup is in `tokens` by
    // the time of the next. (The other order could miss a token moved in
    // between, and answer a double click with "unknown link".)
    if let Some(subscription) = subscription::Entity::find()
        .filter(subscription::Column::TokenHash.eq(&hash))
        .one(conn)
        .await?
    {
        return Ok(Some(Loaded {
            row: None,
            expires_at: first_token_expiry(config, &subscription),
            subscription,
        }));
    }
    let Some(token) = token::Entity::find()
        .filter(token::Column::TokenHash.eq(&hash))
        .filter(token::Column::Purpose.eq("confirm"))
        .one(conn)
        .await?
    else {
        return Ok(None);
    };
    let Some(sub_id) = token.subscription_id else {
        return Ok(None);
    };
    Ok(subscription::Entity::find_by_id(sub_id)
        .one(conn)
        .await?
        .map(|subscription| Loaded {
            expires_at: token.expires_at,
            row: Some(token),
            subscription,
        }))
}

/// When the token held on a subscription's row expires.
fn first_token_expiry(config: &Config, subscription: &subscription::Model) -> DateTime<Utc> {
    config.retention.pending.after(subscription.created_at)
}

fn classify(l: &Loaded, now: DateTime<Utc>) -> TokenState {
    let list = l.subscription.list_slug.clone();
    if l.subscription.status == "confirmed" {
        // A used token keeps answering "already confirmed"; an unused one for a
        // subscription confirmed through another mail does too.
        return TokenState::Confirmed { list };
    }
    if l.row.as_ref().is_some_and(|t| t.used_at.is_some()) {
        return TokenState::Unknown;
    }
    if l.expires_at <= now {
        return TokenState::Expired { list };
    }
    TokenState::Pending { list }
}

/// What the token stands for (GET pages); changes nothing.
pub async fn inspect(state: &AppState, raw: &str) -> anyhow::Result<TokenState> {
    Ok(match load(&state.db, &state.config, raw).await? {
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
    let Some(l) = load(&*tx, &state.config, raw).await? else {
        return Ok(ConfirmOutcome::Unknown);
    };
    match classify(&l, now) {
        TokenState::Unknown => return Ok(ConfirmOutcome::Unknown),
        TokenState::Expired { list } => return Ok(ConfirmOutcome::Expired { list }),
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
    // A bounce, complaint, block or manual entry that arrived after the
    // signup: the link no longer confirms (nor reaches Mailchimp).
    if suppression::blocks_opt_in(&*tx, &person.email_hash, &list.slug, now).await? {
        tracing::info!(
            subject = log_id(&person.email_hash),
            "confirmation refused: suppressed"
        );
        return Ok(ConfirmOutcome::Unknown);
    }

    // Conditional on still being pending: of two concurrent POSTs (on
    // PostgreSQL both may have read "pending") only one confirms and records
    // consent; the other answers "already confirmed".
    let changed = subscription::Entity::update_many()
        .col_expr(subscription::Column::Status, Expr::value("confirmed"))
        .col_expr(subscription::Column::ConfirmedAt, Expr::value(Some(now)))
        .col_expr(
            subscription::Column::PendingExpiresAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .col_expr(
            subscription::Column::TokenHash,
            Expr::value(Option::<String>::None),
        )
        .filter(subscription::Column::Id.eq(l.subscription.id))
        .filter(subscription::Column::Status.eq("pending"))
        .exec(&*tx)
        .await?
        .rows_affected;
    if changed == 0 {
        return Ok(ConfirmOutcome::AlreadyConfirmed);
    }
    // The token used is marked so; the first token moves off the
    // subscription's row into `tokens`, used or not, so that it keeps
    // answering "already confirmed" and the purge treats it like the rest.
    let used_first = l.row.is_none();
    if let Some(row) = l.row {
        let mut tok = row.into_active_model();
        tok.used_at = Set(Some(now));
        tok.update(&*tx).await?;
    }
    if let Some(first) = l.subscription.token_hash.clone() {
        let mut tok = super::subscribe::confirm_token(
            first,
            l.subscription.id,
            l.subscription.created_at,
            first_token_expiry(&state.config, &l.subscription),
        );
        if used_first {
            tok.used_at = Set(Some(now));
        }
        tok.insert(&*tx).await?;
    }

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
    let queued = crate::mailchimp::jobs::queue_upsert(
        &*tx,
        &state.config,
        &person,
        &list.slug,
        l.subscription.id,
        now,
    )
    .await?;
    let events =
        crate::events::subscription_confirmed(&*tx, &state.config, &person, &list.slug, now)
            .await?;
    tx.commit().await?;
    if queued {
        state.sync_notify.notify_one();
    }
    if events > 0 {
        state.events_notify.notify_one();
    }
    tracing::info!(subject = log_id(&person.email_hash), list = %list.slug, "subscription confirmed");
    Ok(ConfirmOutcome::Confirmed)
}

/// "This wasn't me": uses up the token, deletes the pending subscription with
/// its consent record, and suppresses the address for confirmation mail.
#[tracing::instrument(skip_all)]
pub async fn block(state: &AppState, raw: &str) -> anyhow::Result<BlockOutcome> {
    let now = state.now();
    let tx = state.begin_write().await?;
    let Some(l) = load(&*tx, &state.config, raw).await? else {
        return Ok(BlockOutcome::Unknown);
    };
    match classify(&l, now) {
        TokenState::Unknown | TokenState::Confirmed { .. } => return Ok(BlockOutcome::Unknown),
        TokenState::Expired { list } => return Ok(BlockOutcome::Expired { list }),
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
    state.events_may_be_queued();
    tracing::info!(
        subject = log_id(&person.email_hash),
        "signup blocked by its recipient"
    );
    Ok(BlockOutcome::Blocked)
}
