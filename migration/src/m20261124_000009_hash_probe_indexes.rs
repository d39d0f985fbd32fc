//! Hash indexes for the bulk check's probes on PostgreSQL.
//!
//! The bulk check looks up every address of a request in `suppressions` and
//! in `subscribers`, one index probe each. A probe through a hash index takes
//! about half the time of one through the B-tree: measured on 5,000 probes
//! into 300,000 entries and 300,000 subscribers, 10 ms against 20 ms for the
//! whole statement (docs/performance.md). The B-trees stay: they keep the
//! hashes unique, and a hash index cannot.
//!
//! Each index is on `email_hash || ''`, the same value as text, so that only
//! a query written against that expression (the bulk check's) can use it and
//! the planner never weighs it against the unique B-tree for the other
//! lookups by address. SQLite has no hash indexes; nothing changes there.
//!
//! The indexes are built `CONCURRENTLY`, outside a transaction, so that a
//! deployment with big tables keeps taking signups and unsubscribes while
//! they are built. Should a build fail halfway, PostgreSQL leaves an invalid
//! index behind; running the migration again drops it and builds anew.
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, Statement};

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEXES: &[(&str, &str)] = &[
    ("ix_suppressions_hash_probe", "suppressions"),
    ("ix_subscribers_hash_probe", "subscribers"),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// `CREATE INDEX CONCURRENTLY` cannot run inside a transaction.
    fn use_transaction(&self) -> Option<bool> {
        Some(false)
    }

    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() != sea_orm::DbBackend::Postgres {
            return Ok(());
        }
        let db = m.get_connection();
        for (index, table) in INDEXES {
            // What a failed concurrent build leaves: an index marked invalid.
            let invalid = db
                .query_one_raw(Statement::from_string(
                    db.get_database_backend(),
                    format!(
                        "SELECT 1 AS x FROM pg_index WHERE indexrelid = to_regclass('{index}') \
                         AND NOT indisvalid"
                    ),
                ))
                .await?
                .is_some();
            if invalid {
                db.execute_unprepared(&format!("DROP INDEX CONCURRENTLY {index}"))
                    .await?;
            }
            db.execute_unprepared(&format!(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} ON {table} \
                 USING hash ((email_hash || ''))"
            ))
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        crate::on_postgres_only(
            m,
            INDEXES
                .iter()
                .map(|(index, _)| format!("DROP INDEX CONCURRENTLY IF EXISTS {index}"))
                .collect(),
        )
        .await
    }
}
