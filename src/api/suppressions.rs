//! `/v1/suppressions`: the suppression list, for senders (bulk check) and
//! administrators (page, add, remove).
use chrono::{DateTime, Utc};
use entity::suppression;
use poem_openapi::{ApiResponse, Object, OpenApi, param::Path, param::Query, payload::Json};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::{Deserialize, Serialize};

use super::{
    ApiTags,
    extract::{JsonBody, SerdeJson, rfc3339},
    unsubscribe::MAX_ADDRESSES,
};
use crate::{
    auth::ApiKey,
    domain::EmailAddress,
    error::{ApiError, ErrorResponse},
    services::suppression::{self as supp, ALL_LISTS, Reason},
    state::AppState,
};

pub struct SuppressionsApi {
    pub state: AppState,
}

/// Addresses to check before a mailing.
#[derive(Debug, Object, Deserialize)]
pub struct CheckRequest {
    /// The list the mailing goes to; without it (or `null`), any list counts.
    #[oai(nullable)]
    pub list: Option<String>,
    /// Up to 10,000 addresses.
    pub emails: Vec<String>,
}

/// One address's answer. Mail only where `mailable` is true.
#[derive(Debug, Object, Serialize)]
pub struct CheckResult {
    /// The address as sent.
    pub email: String,
    /// An active suppression entry counts for the list.
    pub suppressed: bool,
    /// The entry's reason.
    #[oai(nullable)]
    pub reason: Option<String>,
    /// When the entry stops counting.
    #[serde(serialize_with = "rfc3339::option")]
    #[oai(nullable)]
    pub expires_at: Option<DateTime<Utc>>,
    /// A confirmed subscription to the list exists.
    pub subscribed: bool,
    /// Subscribed, not suppressed, not restricted.
    pub mailable: bool,
    /// Set when the address could not be parsed (then nothing else counts).
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Object, Serialize)]
pub struct CheckResponse {
    /// In the order given.
    pub results: Vec<CheckResult>,
}

/// A suppression entry as administrators see it: by hash, never by address.
#[derive(Debug, Object)]
pub struct SuppressionEntry {
    pub id: i64,
    /// Keyed hash of the address.
    pub email_hash: String,
    /// A list slug, or `*` for all lists.
    pub scope: String,
    /// `unsubscribed`, `bounce`, `complaint`, `blocked`, `manual` or `erased`.
    pub reason: String,
    /// `one_click`, `link`, `admin`, `mailchimp`, `mandrill`, `reconcile` or `privacy_request`.
    pub source: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl From<suppression::Model> for SuppressionEntry {
    fn from(m: suppression::Model) -> Self {
        Self {
            id: m.id,
            email_hash: m.email_hash,
            scope: m.scope,
            reason: m.reason,
            source: m.source,
            created_at: m.created_at,
            expires_at: m.expires_at,
        }
    }
}

#[derive(Debug, Object)]
pub struct SuppressionPage {
    pub items: Vec<SuppressionEntry>,
    /// Pass as `cursor` for the next page; `null` on the last.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

/// An entry to add by hand.
#[derive(Debug, Object, Deserialize)]
pub struct NewSuppression {
    pub email: String,
    /// One list; without it, all lists.
    pub list: Option<String>,
    /// Default `manual`.
    pub reason: Option<String>,
}

#[derive(ApiResponse)]
pub enum CheckResponses {
    #[oai(status = 200)]
    Ok(SerdeJson<CheckResponse>),
}

#[derive(ApiResponse)]
pub enum PageResponse {
    #[oai(status = 200)]
    Ok(Json<SuppressionPage>),
}

#[derive(ApiResponse)]
pub enum AddResponse {
    /// The entry (renewed if it existed).
    #[oai(status = 201)]
    Created(Json<SuppressionEntry>),
}

#[derive(ApiResponse)]
pub enum RemoveResponse {
    /// Removed.
    #[oai(status = 204)]
    Removed,
}

/// A page size from the query: 1 to 1000, default 100.
pub fn page_limit(limit: Option<u64>) -> Result<u64, ApiError> {
    match limit {
        None => Ok(100),
        Some(n) if (1..=1000).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::validation("limit", "must be 1 to 1000")),
    }
}

/// A cursor from the query: the last id seen.
pub fn parse_cursor(cursor: Option<&str>) -> Result<i64, ApiError> {
    match cursor {
        None | Some("") => Ok(0),
        Some(c) => c
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| ApiError::validation("cursor", "is not a cursor this service gave")),
    }
}

impl SuppressionsApi {
    fn scope_of(&self, list: Option<&str>) -> Result<String, ApiError> {
        match list {
            None => Ok(ALL_LISTS.to_string()),
            Some(l) => super::known_list(&self.state.config, l).map(|_| l.to_string()),
        }
    }
}

#[OpenApi(prefix_path = "/v1/suppressions", tag = "ApiTags::Suppressions")]
impl SuppressionsApi {
    /// Check addresses before a mailing (scope `sender`; up to 10,000 a request).
    #[oai(path = "/check", method = "post")]
    async fn check(
        &self,
        auth: ApiKey,
        body: JsonBody<CheckRequest>,
    ) -> Result<CheckResponses, ErrorResponse> {
        auth.sender()?;
        let body = body.0;
        if let Some(l) = &body.list {
            super::known_list(&self.state.config, l)?;
        }
        if body.emails.len() > MAX_ADDRESSES {
            return Err(ApiError::validation("emails", "may hold at most 10000 addresses").into());
        }
        let answers = supp::check_addresses(&self.state, body.list.as_deref(), body.emails).await?;
        let results = answers
            .into_iter()
            .map(|(email, answer)| match answer {
                Some(a) => CheckResult {
                    email,
                    suppressed: a.suppressed,
                    mailable: a.mailable(),
                    reason: a.reason,
                    expires_at: a.expires_at,
                    subscribed: a.subscribed,
                    error: None,
                },
                None => CheckResult {
                    email,
                    suppressed: false,
                    reason: None,
                    expires_at: None,
                    subscribed: false,
                    mailable: false,
                    error: Some("not a valid address".into()),
                },
            })
            .collect();
        Ok(CheckResponses::Ok(SerdeJson(CheckResponse { results })))
    }

    /// A page of entries, oldest first (scope `admin`).
    #[oai(path = "/", method = "get")]
    async fn list(
        &self,
        auth: ApiKey,
        list: Query<Option<String>>,
        reason: Query<Option<String>>,
        cursor: Query<Option<String>>,
        limit: Query<Option<u64>>,
    ) -> Result<PageResponse, ErrorResponse> {
        auth.admin()?;
        let limit = page_limit(limit.0)?;
        let after = parse_cursor(cursor.0.as_deref())?;
        let mut q = suppression::Entity::find()
            .filter(suppression::Column::Id.gt(after))
            .filter(suppression::Column::ExpiresAt.gt(self.state.now()));
        if let Some(l) = list.0 {
            q = q.filter(suppression::Column::Scope.eq(l));
        }
        if let Some(r) = reason.0 {
            if Reason::parse(&r).is_none() {
                return Err(ApiError::validation("reason", "is not a known reason").into());
            }
            q = q.filter(suppression::Column::Reason.eq(r));
        }
        let rows = q
            .order_by_asc(suppression::Column::Id)
            .limit(limit + 1)
            .all(&self.state.db)
            .await?;
        let more = rows.len() as u64 > limit;
        let items: Vec<SuppressionEntry> = rows
            .into_iter()
            .take(limit as usize)
            .map(Into::into)
            .collect();
        let next_cursor = more
            .then(|| items.last().map(|i| i.id.to_string()))
            .flatten();
        Ok(PageResponse::Ok(Json(SuppressionPage {
            items,
            next_cursor,
        })))
    }

    /// Add an entry by hand (scope `admin`). Where a list in its scope is mapped
    /// to Mailchimp, the member is set to `unsubscribed` there.
    #[oai(path = "/", method = "post")]
    async fn add(
        &self,
        auth: ApiKey,
        body: JsonBody<NewSuppression>,
    ) -> Result<AddResponse, ErrorResponse> {
        auth.admin()?;
        let body = body.0;
        let email =
            EmailAddress::parse(&body.email).map_err(|e| ApiError::validation("email", e.0))?;
        let scope = self.scope_of(body.list.as_deref())?;
        let reason = match body.reason.as_deref() {
            None => Reason::Manual,
            Some(r) => Reason::parse(r)
                .ok_or_else(|| ApiError::validation("reason", "is not a known reason"))?,
        };
        let row = supp::add_by_admin(&self.state, &email, &scope, reason).await?;
        Ok(AddResponse::Created(Json(row.into())))
    }

    /// Remove a mistaken entry: one list's, or without `list` all of the address's (scope `admin`).
    #[oai(path = "/:email", method = "delete")]
    async fn remove(
        &self,
        auth: ApiKey,
        email: Path<String>,
        list: Query<Option<String>>,
    ) -> Result<RemoveResponse, ErrorResponse> {
        auth.admin()?;
        let email =
            EmailAddress::parse(&email.0).map_err(|e| ApiError::validation("email", e.0))?;
        let hash = self.state.keys.hasher.hash(&email);
        let n = supp::remove(&self.state.db, &hash, list.0.as_deref()).await?;
        if n == 0 {
            return Err(ApiError::NotFound.into());
        }
        Ok(RemoveResponse::Removed)
    }
}
