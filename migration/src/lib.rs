//! Database schema history for listguard. One file per change, each with `down`.
//! The schema runs unchanged on SQLite (the embedded default) and PostgreSQL.
pub use sea_orm_migration::prelude::*;

/// The bulk check's triggers, created and dropped by the processes that
/// follow its notices.
pub use m20261125_000002_check_change_notices::{DROP_TRIGGERS, TRIGGERS};

mod m20261123_000001_initial;
mod m20261124_000001_mailchimp_sync;
mod m20261124_000002_foreign_key_indexes;
mod m20261124_000003_admin_audit;
mod m20261124_000004_sealed_request_address;
mod m20261124_000005_outbox_live_jobs_index;
mod m20261124_000006_outbox_unsent_subject_index;
mod m20261124_000007_outbox_lean_indexes;
mod m20261124_000008_hash_columns_binary_collation;
mod m20261124_000009_hash_probe_indexes;
mod m20261125_000001_tokens_lean_indexes;
mod m20261125_000002_check_change_notices;
mod m20261125_000003_check_notices_only_while_listened;
mod m20261125_000004_mail_limits_on_subscribers;
mod m20261125_000005_first_token_on_subscription;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_initial::Migration),
            Box::new(m20261124_000001_mailchimp_sync::Migration),
            Box::new(m20261124_000002_foreign_key_indexes::Migration),
            Box::new(m20261124_000003_admin_audit::Migration),
            Box::new(m20261124_000004_sealed_request_address::Migration),
            Box::new(m20261124_000005_outbox_live_jobs_index::Migration),
            Box::new(m20261124_000006_outbox_unsent_subject_index::Migration),
            Box::new(m20261124_000007_outbox_lean_indexes::Migration),
            Box::new(m20261124_000008_hash_columns_binary_collation::Migration),
            Box::new(m20261124_000009_hash_probe_indexes::Migration),
            Box::new(m20261125_000001_tokens_lean_indexes::Migration),
            Box::new(m20261125_000002_check_change_notices::Migration),
            Box::new(m20261125_000003_check_notices_only_while_listened::Migration),
            Box::new(m20261125_000004_mail_limits_on_subscribers::Migration),
            Box::new(m20261125_000005_first_token_on_subscription::Migration),
        ]
    }
}

/// Makes a hash column compare byte by byte on PostgreSQL (`COLLATE "C"`,
/// as migration 000008 made every hash column); SQLite already does.
async fn compare_bytewise(m: &SchemaManager<'_>, table: &str, column: &str) -> Result<(), DbErr> {
    on_postgres_only(
        m,
        vec![format!(
            "ALTER TABLE {table} ALTER COLUMN {column} TYPE varchar COLLATE \"C\""
        )],
    )
    .await
}

/// Runs `statements` in order on PostgreSQL; on SQLite, which the change does
/// not concern, nothing.
async fn on_postgres_only(m: &SchemaManager<'_>, statements: Vec<String>) -> Result<(), DbErr> {
    if m.get_database_backend() != sea_orm::DbBackend::Postgres {
        return Ok(());
    }
    for sql in statements {
        m.get_connection().execute_unprepared(&sql).await?;
    }
    Ok(())
}
