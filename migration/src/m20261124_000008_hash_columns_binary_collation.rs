//! The keyed address hashes, token hashes and Mailchimp member keys compare
//! byte by byte on PostgreSQL (`COLLATE "C"`), as they already do on SQLite.
//! They are lower-case hex, so no order changes, but a column in the
//! database's own collation (here `C.UTF-8`, which PostgreSQL does not treat
//! as plain `C`) compares through `strcoll`, copying both strings for each
//! comparison. Every lookup by address is a B-tree probe over these columns:
//! the bulk check, every signup, every unsubscribe.
//!
//! Measured on 10,000 probes into 300,000 hashes: 29 ms with the database's
//! collation, 23 ms with `C`. The indexes on the columns are rebuilt; the
//! rows are not rewritten.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Every column that holds a hash or a key derived from one (a webhook
/// receipt's digest too).
const COLUMNS: &[(&str, &str)] = &[
    ("subscribers", "email_hash"),
    ("suppressions", "email_hash"),
    ("suppressions", "mailchimp_hash"),
    ("address_limits", "email_hash"),
    ("consent_events", "email_hash"),
    ("tokens", "token_hash"),
    ("tokens", "subject_hash"),
    ("outbox", "subject_hash"),
    ("outbox", "member_key"),
    ("admin_audit", "subject_hash"),
    ("webhook_receipts", "digest"),
];

/// SQLite compares text byte by byte unless told otherwise: PostgreSQL only.
async fn set_collation(m: &SchemaManager<'_>, collation: &str) -> Result<(), DbErr> {
    crate::on_postgres_only(
        m,
        COLUMNS
            .iter()
            .map(|(table, column)| {
                format!(
                    "ALTER TABLE {table} ALTER COLUMN {column} TYPE varchar COLLATE {collation}"
                )
            })
            .collect(),
    )
    .await
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        set_collation(m, "\"C\"").await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        set_collation(m, "\"default\"").await
    }
}
