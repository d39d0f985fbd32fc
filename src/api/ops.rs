//! Health, readiness and metrics.
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    payload::{Json, PlainText},
};
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

#[derive(ApiResponse)]
pub enum MetricsResponse {
    /// Prometheus metrics as OpenMetrics text: requests by method, route
    /// template and status; outbox jobs, suppression entries and
    /// subscriptions counted from the database (read at most every 10 s).
    #[oai(
        status = 200,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"
    )]
    Metrics(PlainText<String>),
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

    /// Metrics for Prometheus. Counts only: no label holds an address, a
    /// hash or a token.
    #[oai(path = "/metrics", method = "get")]
    async fn metrics(&self) -> MetricsResponse {
        let copy = self.state.check_cache.as_ref().and_then(|c| c.held());
        self.state.metrics.set_check_copy(copy);
        let text = self
            .state
            .metrics
            .render(&self.state.db, self.state.now())
            .await;
        MetricsResponse::Metrics(PlainText(text))
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
