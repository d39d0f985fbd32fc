//! `/v1/subscribers` and `/v1/lists`: what administrators see and do.
use chrono::{DateTime, Utc};
use entity::{subscriber, subscription};
use poem_openapi::{
    ApiResponse, Object, OpenApi, param::Path, param::Query, payload::Json, types::MaybeUndefined,
};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};

use super::{
    ApiTags,
    suppressions::{page_limit, parse_cursor},
};
use crate::{
    auth::ApiKey,
    domain::{DisplayName, EmailAddress},
    error::{ApiError, ErrorResponse},
    services::{
        privacy::{self, ErasureReceipt, Export, Rectification},
        purge::{PurgeReport, purge},
        unsubscribe::Scope,
    },
    state::AppState,
};

pub struct SubscribersApi {
    pub state: AppState,
}

/// One subscription.
#[derive(Debug, Object)]
pub struct SubscriptionView {
    pub list: String,
    /// `pending` or `confirmed`.
    pub status: String,
    #[oai(nullable)]
    pub source: Option<String>,
    pub created_at: DateTime<Utc>,
    #[oai(nullable)]
    pub confirmed_at: Option<DateTime<Utc>>,
}

/// A subscriber as administrators see it.
#[derive(Debug, Object)]
pub struct SubscriberView {
    pub email: String,
    #[oai(nullable)]
    pub name: Option<String>,
    pub locale: String,
    /// Processing restricted (art. 18): kept, never mailed.
    pub restricted: bool,
    pub created_at: DateTime<Utc>,
    pub subscriptions: Vec<SubscriptionView>,
}

#[derive(Debug, Object)]
pub struct SubscriberPage {
    pub items: Vec<SubscriberView>,
    /// Pass as `cursor` for the next page; `null` on the last.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Object)]
pub struct Unsubscribed {
    /// The lists the address has left now (empty when it was on none).
    pub left: Vec<String>,
}

/// A list with its counts.
#[derive(Debug, Object)]
pub struct ListView {
    pub slug: String,
    pub name: String,
    #[oai(nullable)]
    pub mailchimp_list_id: Option<String>,
    pub consent_version: String,
    pub confirmed: u64,
    pub pending: u64,
}

#[derive(Debug, Object)]
pub struct Lists {
    pub lists: Vec<ListView>,
}

/// What the purge deleted, by class.
#[derive(Debug, Object)]
pub struct PurgeResult {
    pub dry_run: bool,
    pub suppressions: u64,
    /// Mailchimp archive (or permanent delete) jobs queued for expired entries.
    pub mailchimp_jobs: u64,
    pub consent_events: u64,
    pub pending_subscriptions: u64,
    pub subscribers: u64,
    pub tokens: u64,
    pub outbox: u64,
    /// Inbound webhook receipts past their week.
    pub webhook_receipts: u64,
    /// Audit rows past `retention.audit`.
    pub admin_audit: u64,
}

impl PurgeResult {
    fn from(r: PurgeReport, dry_run: bool) -> Self {
        Self {
            dry_run,
            suppressions: r.suppressions,
            mailchimp_jobs: r.mailchimp_jobs,
            consent_events: r.consent_events,
            pending_subscriptions: r.pending_subscriptions,
            subscribers: r.subscribers,
            tokens: r.tokens,
            outbox: r.outbox,
            webhook_receipts: r.webhook_receipts,
            admin_audit: r.admin_audit,
        }
    }
}

#[derive(ApiResponse)]
pub enum SubscriberResponse {
    #[oai(status = 200)]
    Ok(Json<SubscriberView>),
}

/// A change to a subscriber: rectify the name, set or lift the restriction.
#[derive(Debug, Object)]
pub struct SubscriberPatch {
    /// The new name; `null` clears it, absent leaves it.
    pub name: MaybeUndefined<String>,
    /// Restrict processing (art. 18): kept, never mailed, archived at
    /// Mailchimp; `false` lifts it and sends the member to Mailchimp again.
    pub restricted: Option<bool>,
}

#[derive(ApiResponse)]
pub enum ExportResponse {
    /// Everything held about the address, as a JSON attachment.
    #[oai(status = 200)]
    Ok(Json<Export>, #[oai(header = "Content-Disposition")] String),
}

#[derive(ApiResponse)]
pub enum ErasureResponse {
    #[oai(status = 200)]
    Ok(Json<ErasureReceipt>),
}

#[derive(ApiResponse)]
pub enum SubscriberPageResponse {
    #[oai(status = 200)]
    Ok(Json<SubscriberPage>),
}

#[derive(ApiResponse)]
pub enum UnsubscribedResponse {
    #[oai(status = 200)]
    Ok(Json<Unsubscribed>),
}

#[derive(ApiResponse)]
pub enum ListsResponse {
    #[oai(status = 200)]
    Ok(Json<Lists>),
}

#[derive(ApiResponse)]
pub enum PurgeResponse {
    #[oai(status = 200)]
    Ok(Json<PurgeResult>),
}

impl SubscribersApi {
    fn parse_email(&self, raw: &str) -> Result<EmailAddress, ApiError> {
        EmailAddress::parse(raw).map_err(|e| ApiError::validation("email", e.0))
    }

    async fn view(&self, p: subscriber::Model) -> Result<SubscriberView, ApiError> {
        let subs = subscription::Entity::find()
            .filter(subscription::Column::SubscriberId.eq(p.id))
            .order_by_asc(subscription::Column::ListSlug)
            .all(&self.state.db)
            .await?;
        Ok(to_view(p, subs))
    }
}

fn to_view(p: subscriber::Model, subs: Vec<subscription::Model>) -> SubscriberView {
    SubscriberView {
        email: p.email,
        name: p.name,
        locale: p.locale,
        restricted: p.restricted,
        created_at: p.created_at,
        subscriptions: subs
            .into_iter()
            .map(|s| SubscriptionView {
                list: s.list_slug,
                status: s.status,
                source: s.source,
                created_at: s.created_at,
                confirmed_at: s.confirmed_at,
            })
            .collect(),
    }
}

#[OpenApi(tag = "ApiTags::Admin")]
impl SubscribersApi {
    /// A page of subscribers, by list and status (scope `admin`).
    #[oai(path = "/v1/subscribers", method = "get")]
    async fn page(
        &self,
        auth: ApiKey,
        list: Query<Option<String>>,
        status: Query<Option<String>>,
        cursor: Query<Option<String>>,
        limit: Query<Option<u64>>,
    ) -> Result<SubscriberPageResponse, ErrorResponse> {
        auth.admin()?;
        let limit = page_limit(limit.0)?;
        let after = parse_cursor(cursor.0.as_deref())?;
        if let Some(s) = &status.0
            && s != "pending"
            && s != "confirmed"
        {
            return Err(ApiError::validation("status", "must be pending or confirmed").into());
        }
        if let Some(l) = &list.0 {
            super::known_list(&self.state.config, l)?;
        }
        let mut q = subscriber::Entity::find().filter(subscriber::Column::Id.gt(after));
        if list.0.is_some() || status.0.is_some() {
            let mut sub = sea_orm::sea_query::Query::select()
                .column(subscription::Column::SubscriberId)
                .from(subscription::Entity)
                .to_owned();
            if let Some(l) = &list.0 {
                sub.and_where(subscription::Column::ListSlug.eq(l.clone()));
            }
            if let Some(s) = &status.0 {
                sub.and_where(subscription::Column::Status.eq(s.clone()));
            }
            q = q.filter(subscriber::Column::Id.in_subquery(sub));
        }
        let rows = q
            .order_by_asc(subscriber::Column::Id)
            .limit(limit + 1)
            .all(&self.state.db)
            .await?;
        let more = rows.len() as u64 > limit;
        let rows: Vec<_> = rows.into_iter().take(limit as usize).collect();
        let last = rows.last().map(|r| r.id);
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let mut subs = subscription::Entity::find()
            .filter(subscription::Column::SubscriberId.is_in(ids))
            .order_by_asc(subscription::Column::ListSlug)
            .all(&self.state.db)
            .await?;
        let items = rows
            .into_iter()
            .map(|p| {
                let (mine, rest): (Vec<_>, Vec<_>) =
                    subs.drain(..).partition(|s| s.subscriber_id == p.id);
                subs = rest;
                to_view(p, mine)
            })
            .collect();
        Ok(SubscriberPageResponse::Ok(Json(SubscriberPage {
            items,
            next_cursor: if more {
                last.map(|l| l.to_string())
            } else {
                None
            },
        })))
    }

    /// One subscriber (scope `admin`).
    #[oai(path = "/v1/subscribers/:email", method = "get")]
    async fn get(
        &self,
        auth: ApiKey,
        email: Path<String>,
    ) -> Result<SubscriberResponse, ErrorResponse> {
        auth.admin()?;
        let email = self.parse_email(&email.0)?;
        let hash = self.state.keys.hasher.hash(&email);
        let p = subscriber::Entity::find()
            .filter(subscriber::Column::EmailHash.eq(hash))
            .one(&self.state.db)
            .await?
            .ok_or(ApiError::NotFound)?;
        Ok(SubscriberResponse::Ok(Json(self.view(p).await?)))
    }

    /// Rectify the name or set/lift the restriction of processing (scope
    /// `admin`). Restricting archives the member at Mailchimp; lifting it
    /// sends the member again. 404 when no subscriber has the address.
    #[oai(path = "/v1/subscribers/:email", method = "patch")]
    async fn patch(
        &self,
        auth: ApiKey,
        email: Path<String>,
        body: Json<SubscriberPatch>,
    ) -> Result<SubscriberResponse, ErrorResponse> {
        let actor = &auth.admin()?.name;
        let email = self.parse_email(&email.0)?;
        let name = match &body.0.name {
            MaybeUndefined::Undefined => None,
            MaybeUndefined::Null => Some(None),
            MaybeUndefined::Value(n) => Some(Some(
                DisplayName::parse(n).map_err(|e| ApiError::validation("name", e.0))?,
            )),
        };
        let change = Rectification {
            name,
            restricted: body.0.restricted,
        };
        let p = privacy::rectify(&self.state, &email, &change, actor)
            .await?
            .ok_or(ApiError::NotFound)?;
        Ok(SubscriberResponse::Ok(Json(self.view(p).await?)))
    }

    /// Erase everything held about the address (art. 17; scope `admin`):
    /// subscriber, subscriptions, consent events, tokens and unsent jobs;
    /// queues the Mailchimp removal on every mapped list and writes an
    /// `erased` suppression entry for all lists. An address held nowhere
    /// still gets that entry (200), so it is not mailed.
    #[oai(path = "/v1/subscribers/:email", method = "delete")]
    async fn erase(
        &self,
        auth: ApiKey,
        email: Path<String>,
    ) -> Result<ErasureResponse, ErrorResponse> {
        let actor = &auth.admin()?.name;
        let email = self.parse_email(&email.0)?;
        let receipt = privacy::erase(&self.state, &email, actor).await?;
        Ok(ErasureResponse::Ok(Json(receipt)))
    }

    /// Everything held about the address (art. 15 and 20; scope `admin`), as
    /// a JSON attachment: subscriber, subscriptions, consent events (also
    /// those kept after an unsubscribe) with the consent texts agreed to,
    /// suppression entries and pending jobs. 404 when nothing is held.
    #[oai(path = "/v1/subscribers/:email/export", method = "get")]
    async fn export(
        &self,
        auth: ApiKey,
        email: Path<String>,
    ) -> Result<ExportResponse, ErrorResponse> {
        let actor = &auth.admin()?.name;
        let email = self.parse_email(&email.0)?;
        let doc = privacy::export(&self.state, &email, actor)
            .await?
            .ok_or(ApiError::NotFound)?;
        Ok(ExportResponse::Ok(
            Json(doc),
            "attachment; filename=\"listguard-export.json\"".to_string(),
        ))
    }

    /// Unsubscribe on the person's behalf: one list, or all lists when `list`
    /// is absent (scope `admin`). Suppresses even an address not on the list.
    #[oai(path = "/v1/subscribers/:email/unsubscribe", method = "post")]
    async fn unsubscribe(
        &self,
        auth: ApiKey,
        email: Path<String>,
        list: Query<Option<String>>,
    ) -> Result<UnsubscribedResponse, ErrorResponse> {
        auth.admin()?;
        let email = self.parse_email(&email.0)?;
        let scope = match list.0 {
            Some(l) => {
                super::known_list(&self.state.config, &l)?;
                Scope::List(l)
            }
            None => Scope::AllLists,
        };
        let hash = self.state.keys.hasher.hash(&email);
        let actor = &auth.admin()?.name;
        let out = privacy::unsubscribe_for(&self.state, &hash, &scope, actor).await?;
        Ok(UnsubscribedResponse::Ok(Json(Unsubscribed {
            left: out.left,
        })))
    }

    /// The configured lists with their counts (scope `admin`).
    #[oai(path = "/v1/lists", method = "get")]
    async fn lists(&self, auth: ApiKey) -> Result<ListsResponse, ErrorResponse> {
        auth.admin()?;
        let mut lists = Vec::new();
        for l in &self.state.config.lists {
            let count = |status: &'static str| {
                subscription::Entity::find()
                    .filter(subscription::Column::ListSlug.eq(&l.slug))
                    .filter(subscription::Column::Status.eq(status))
                    .count(&self.state.db)
            };
            lists.push(ListView {
                slug: l.slug.clone(),
                name: l.name.clone(),
                mailchimp_list_id: l.mailchimp_list_id.clone(),
                consent_version: l.consent_version.clone(),
                confirmed: count("confirmed").await?,
                pending: count("pending").await?,
            });
        }
        Ok(ListsResponse::Ok(Json(Lists { lists })))
    }

    /// Run the retention purge now (scope `admin`).
    #[oai(path = "/v1/admin/purge", method = "post")]
    async fn purge(
        &self,
        auth: ApiKey,
        dry_run: Query<Option<bool>>,
    ) -> Result<PurgeResponse, ErrorResponse> {
        auth.admin()?;
        let dry = dry_run.0.unwrap_or(false);
        let report = purge(&self.state, dry, |_, _| {}).await?;
        Ok(PurgeResponse::Ok(Json(PurgeResult::from(report, dry))))
    }
}
