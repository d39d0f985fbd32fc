//! The bulk check's triggers only while some process follows their notices
//! (PostgreSQL only).
//!
//! The triggers of `m20261125_000002_check_change_notices` cost every
//! unsubscribe batch even when no process keeps a copy of the check's
//! answers: a notifying commit takes PostgreSQL's cluster-wide notify lock,
//! and the statement triggers capture their transition tables and call a
//! function. So this migration drops them, and a process that follows the
//! notices creates them and holds a lease in `check_leases` (its tag, and
//! until when it counts); the last process to end its lease drops them
//! again (`src/services/check_cache.rs`).
use sea_orm_migration::prelude::*;

use crate::m20261125_000002_check_change_notices::{DROP_TRIGGERS, TRIGGERS};

#[derive(DeriveMigrationName)]
pub struct Migration;

fn up() -> Vec<String> {
    let mut out: Vec<String> = DROP_TRIGGERS.iter().map(|s| String::from(*s)).collect();
    out.push(
        "CREATE TABLE IF NOT EXISTS check_leases (tag text PRIMARY KEY, until timestamptz NOT NULL)"
            .into(),
    );
    out
}

/// The triggers back for good, as `m20261125_000002` left them.
fn down() -> Vec<String> {
    let mut out: Vec<String> = vec!["DROP TABLE IF EXISTS check_leases".into()];
    out.extend(
        DROP_TRIGGERS
            .iter()
            .chain(&TRIGGERS)
            .map(|s| String::from(*s)),
    );
    out
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        crate::on_postgres_only(m, up()).await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        crate::on_postgres_only(m, down()).await
    }
}
