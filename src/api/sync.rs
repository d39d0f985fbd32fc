//! `/v1/sync`: the outbox and Mailchimp sync status, and retrying dead letters
//! (administrators).
use chrono::{DateTime, Utc};
use poem_openapi::{ApiResponse, Object, OpenApi, param::Path, payload::Json};

use super::ApiTags;
use crate::{
    auth::ApiKey,
    error::{ApiError, ErrorResponse},
    mailchimp::sync,
    state::AppState,
};

pub struct SyncApi {
    pub state: AppState,
}

/// The outbox: jobs waiting, in flight and dead-lettered, and per mapped list
/// its pending Mailchimp jobs and last reconciliation.
#[derive(Debug, Object)]
pub struct SyncStatus {
    /// Whether a Mailchimp API key is configured.
    pub mailchimp_enabled: bool,
    pub pending: u64,
    pub in_flight: u64,
    pub dead: u64,
    /// The newest 100 dead letters. They hold no address.
    pub dead_letters: Vec<DeadLetter>,
    pub lists: Vec<ListSync>,
}

/// A job that spent its retries or failed for good; `POST
/// /v1/sync/dead-letters/{id}/retry` queues it again.
#[derive(Debug, Object)]
pub struct DeadLetter {
    pub id: i64,
    /// `mail` or `mailchimp`.
    pub kind: String,
    /// For Mailchimp jobs: `upsert`, `unsubscribe`, `archive` or `delete_permanent`.
    #[oai(nullable)]
    pub op: Option<String>,
    /// For Mailchimp jobs: the audience.
    #[oai(nullable)]
    pub list_id: Option<String>,
    pub attempts: i32,
    #[oai(nullable)]
    pub last_error: Option<String>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Object)]
pub struct ListSync {
    pub list: String,
    pub mailchimp_list_id: String,
    /// Mailchimp jobs waiting for this audience.
    pub pending: u64,
    /// The last reconciliation's report, if any.
    #[oai(nullable)]
    pub last_reconcile: Option<serde_json::Value>,
}

#[derive(Debug, Object)]
pub struct Retried {
    pub id: i64,
    /// Always `pending`: the job is due now.
    pub status: String,
}

#[derive(ApiResponse)]
pub enum SyncStatusResponse {
    #[oai(status = 200)]
    Ok(Json<SyncStatus>),
}

#[derive(ApiResponse)]
pub enum RetryResponse {
    /// Queued again, due now, with a fresh retry budget.
    #[oai(status = 200)]
    Ok(Json<Retried>),
}

#[OpenApi(prefix_path = "/v1/sync", tag = "ApiTags::Admin")]
impl SyncApi {
    /// Outbox and Mailchimp sync status, with the dead letters (scope `admin`).
    #[oai(path = "/", method = "get")]
    async fn status(&self, auth: ApiKey) -> Result<SyncStatusResponse, ErrorResponse> {
        auth.admin()?;
        let s = sync::status(&self.state).await?;
        Ok(SyncStatusResponse::Ok(Json(SyncStatus {
            mailchimp_enabled: s.mailchimp_enabled,
            pending: s.pending,
            in_flight: s.in_flight,
            dead: s.dead,
            dead_letters: s
                .dead_letters
                .into_iter()
                .map(|d| DeadLetter {
                    id: d.id,
                    kind: d.kind,
                    op: d.op,
                    list_id: d.list_id,
                    attempts: d.attempts,
                    last_error: d.last_error,
                    updated_at: d.updated_at,
                })
                .collect(),
            lists: s
                .lists
                .into_iter()
                .map(|l| ListSync {
                    list: l.list,
                    mailchimp_list_id: l.mailchimp_list_id,
                    pending: l.pending,
                    last_reconcile: l.last_reconcile,
                })
                .collect(),
        })))
    }

    /// Retry one dead letter (scope `admin`). 404 when no dead job has that id.
    #[oai(path = "/dead-letters/:id/retry", method = "post")]
    async fn retry(&self, auth: ApiKey, id: Path<i64>) -> Result<RetryResponse, ErrorResponse> {
        auth.admin()?;
        if !sync::retry_dead_letter(&self.state, id.0).await? {
            return Err(ApiError::NotFound.into());
        }
        Ok(RetryResponse::Ok(Json(Retried {
            id: id.0,
            status: "pending".into(),
        })))
    }
}
