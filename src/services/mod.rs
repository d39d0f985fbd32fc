//! The use cases. Nothing here knows about HTTP; SQL text stays in the stores.
pub mod check_cache;
pub mod confirm;
pub mod consent;
pub mod privacy;
pub mod privacy_requests;
pub mod purge;
pub mod subscribe;
pub mod suppression;
pub mod unsubscribe;
pub mod webhooks;

/// Context of the person's request, for the consent record.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// Whether a database error is a unique-constraint violation (a concurrent
/// request won a race).
pub fn is_unique_violation(e: &sea_orm::DbErr) -> bool {
    matches!(
        e.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}
