//! Change notices for the bulk check only while some process follows them
//! (PostgreSQL only).
//!
//! The triggers of `m20261125_000002_check_change_notices` cost every
//! unsubscribe batch even when no process keeps a copy of the check's
//! answers: a notifying commit takes PostgreSQL's cluster-wide notify lock,
//! and the statement triggers capture their transition tables and call a
//! function. So the triggers now exist only while some process follows the
//! notices, and a process that follows holds a lease in `check_leases`:
//!
//! - `listguard_check_follow(tag, ms)` raises or renews the process's lease
//!   to `ms` from now and creates the triggers if they are missing.
//!   `CREATE TRIGGER` waits for every transaction that has written the
//!   table (it conflicts with their row locks' table lock), so a change
//!   either fires the new trigger or is committed before the follower loads
//!   the tables (`src/services/check_cache.rs`), whatever its isolation
//!   level.
//! - `listguard_check_release(tag)` ends the process's lease (`NULL`: none)
//!   and those that have run out, and drops the triggers once no lease is
//!   left.
//!
//! Both take one advisory lock, so that leases and triggers change one
//! process at a time, and wait at most 1 s for each table's lock: while
//! `CREATE` or `DROP TRIGGER` waits, writers (and for `DROP`, readers) of that
//! table queue behind it, so a long transaction makes the follower give up
//! and try again later rather than stall the service.
use sea_orm_migration::prelude::*;

use crate::m20261125_000002_check_change_notices::{DROP_TRIGGERS, TRIGGERS};

#[derive(DeriveMigrationName)]
pub struct Migration;

const LOCK: &str = "PERFORM pg_advisory_xact_lock(7263011258); \
    PERFORM set_config('lock_timeout', '1s', true);";

/// Each statement as `EXECUTE $t$…$t$;`.
fn executed(statements: &[&str]) -> String {
    statements
        .iter()
        .map(|s| format!("EXECUTE $t${s}$t$;"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn up() -> Vec<String> {
    let mut out: Vec<String> = DROP_TRIGGERS.iter().map(|s| String::from(*s)).collect();
    out.push(
        "CREATE TABLE IF NOT EXISTS check_leases (tag text PRIMARY KEY, until timestamptz NOT NULL)"
            .into(),
    );
    out.push(format!(
        "CREATE OR REPLACE FUNCTION listguard_check_follow(who text, ms bigint) RETURNS void
         LANGUAGE plpgsql AS $$
         BEGIN
           {LOCK}
           INSERT INTO check_leases (tag, until)
             VALUES (who, clock_timestamp() + ms * interval '1 millisecond')
             ON CONFLICT (tag) DO UPDATE SET until = EXCLUDED.until;
           IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'suppressions'::regclass
                          AND tgname = 'listguard_check_suppressions_insert') THEN
             {}
           END IF;
         END $$",
        executed(&TRIGGERS)
    ));
    out.push(format!(
        "CREATE OR REPLACE FUNCTION listguard_check_release(who text) RETURNS void
         LANGUAGE plpgsql AS $$
         BEGIN
           {LOCK}
           DELETE FROM check_leases WHERE tag = who OR until <= clock_timestamp();
           IF NOT EXISTS (SELECT 1 FROM check_leases) THEN
             {}
           END IF;
         END $$",
        executed(&DROP_TRIGGERS)
    ));
    out
}

/// The triggers back for good, as `m20261125_000002` left them.
fn down() -> Vec<String> {
    let mut out: Vec<String> = vec![
        "DROP FUNCTION IF EXISTS listguard_check_release(text)".into(),
        "DROP FUNCTION IF EXISTS listguard_check_follow(text, bigint)".into(),
        "DROP TABLE IF EXISTS check_leases".into(),
    ];
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
