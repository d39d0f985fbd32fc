//! Health and readiness.
use poem_openapi::{ApiResponse, Object, OpenApi, payload::Json};
use sea_orm::ConnectionTrait;

use super::ApiTags;
use crate::state::AppState;

pub struct OpsApi {
    pub state: AppState,
}

/// A health answer.
#[derive(Debug, Object)]
pub struct Health {
    /// `ok`, or `unavailable`.
    pub status: String,
}

#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// The database answers.
    #[oai(status = 200)]
    Ready(Json<Health>),
    /// The database does not answer.
    #[oai(status = 503)]
    NotReady(Json<Health>),
}

#[OpenApi(tag = "ApiTags::Ops")]
impl OpsApi {
    /// Liveness: the process serves requests.
    #[oai(path = "/healthz", method = "get")]
    async fn healthz(&self) -> Json<Health> {
        Json(Health {
            status: "ok".into(),
        })
    }

    /// Readiness: the database is reachable.
    #[oai(path = "/readyz", method = "get")]
    async fn readyz(&self) -> ReadyResponse {
        match self.state.db.execute_unprepared("SELECT 1").await {
            Ok(_) => ReadyResponse::Ready(Json(Health {
                status: "ok".into(),
            })),
            Err(e) => {
                tracing::warn!(error = %e, "readiness check failed");
                ReadyResponse::NotReady(Json(Health {
                    status: "unavailable".into(),
                }))
            }
        }
    }
}
