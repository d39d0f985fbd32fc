//! Change notices for the in-memory bulk check (PostgreSQL only).
//!
//! Every process keeps the answers of `POST /v1/suppressions/check` in
//! memory (`src/services/check_cache.rs`) and must never answer from a
//! stale copy, whichever process or replica made the change. These triggers
//! send a notice on the channel `listguard_check` for every row change that
//! can alter an answer, in the transaction that makes it, so that PostgreSQL
//! delivers it at commit, in commit order:
//!
//! - `h<email_hash>[,<email_hash>…]` for any change to a suppression entry, and for a
//!   subscriber whose address (rectification) or restriction changes, who
//!   is inserted restricted, or who is deleted (the listener learns of a
//!   subscriber's other changes by its id, and needs this to know which
//!   address a vanished id had);
//! - `i<subscriber_id>[,<subscriber_id>…]` for a subscription that becomes, stops being, or is
//!   deleted while `confirmed`.
//!
//! A pending signup changes no answer and sends nothing, so signups pay
//! only the triggers' `WHEN` tests. A notice repeated in one transaction
//! is sent once: an unsubscribe's subscriber delete and suppression entry
//! send the same `h` notice. SQLite has no notices; there the check
//! always asks the database.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The four functions the triggers call. Statement-level ones send one notice per 100
/// rows a statement changed, each a comma-separated run: the unsubscribe
/// statements and the purge change rows in batches, and a notice per row
/// cost them a fifth of their throughput (docs/performance.md).
pub(crate) const FUNCTIONS: [&str; 4] = [
    "CREATE OR REPLACE FUNCTION listguard_notice_hash() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN
       IF TG_OP <> 'INSERT' THEN PERFORM pg_notify('listguard_check', 'h' || OLD.email_hash); END IF;
       IF TG_OP <> 'DELETE' THEN PERFORM pg_notify('listguard_check', 'h' || NEW.email_hash); END IF;
       RETURN NULL;
     END $$",
    "CREATE OR REPLACE FUNCTION listguard_notice_subscriber() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN
       IF TG_OP <> 'INSERT' THEN PERFORM pg_notify('listguard_check', 'i' || OLD.subscriber_id); END IF;
       IF TG_OP <> 'DELETE' THEN PERFORM pg_notify('listguard_check', 'i' || NEW.subscriber_id); END IF;
       RETURN NULL;
     END $$",
    // One function for inserted and deleted rows alike: each trigger names
    // its transition table `changed_rows`.
    "CREATE OR REPLACE FUNCTION listguard_notice_hashes() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN
       PERFORM pg_notify('listguard_check', 'h' || string_agg(email_hash, ','))
         FROM (SELECT email_hash, (row_number() OVER ()) / 100 AS k FROM changed_rows) c GROUP BY k;
       RETURN NULL;
     END $$",
    "CREATE OR REPLACE FUNCTION listguard_notice_old_confirmed() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN
       PERFORM pg_notify('listguard_check', 'i' || string_agg(subscriber_id::text, ','))
         FROM (SELECT subscriber_id, (row_number() OVER ()) / 100 AS k FROM changed_rows
               WHERE status = 'confirmed') c GROUP BY k;
       RETURN NULL;
     END $$",
];

/// The triggers. Since `m20261125_000003` they exist only while some
/// process follows the notices, which creates and drops them
/// (`src/services/check_cache.rs`).
pub const TRIGGERS: [&str; 9] = [
    "CREATE TRIGGER listguard_check_suppressions_insert AFTER INSERT ON suppressions \
     REFERENCING NEW TABLE AS changed_rows \
     FOR EACH STATEMENT EXECUTE FUNCTION listguard_notice_hashes()",
    "CREATE TRIGGER listguard_check_suppressions_update AFTER UPDATE ON suppressions \
     FOR EACH ROW EXECUTE FUNCTION listguard_notice_hash()",
    "CREATE TRIGGER listguard_check_suppressions_delete AFTER DELETE ON suppressions \
     REFERENCING OLD TABLE AS changed_rows \
     FOR EACH STATEMENT EXECUTE FUNCTION listguard_notice_hashes()",
    "CREATE TRIGGER listguard_check_subscribers_insert AFTER INSERT ON subscribers \
     FOR EACH ROW WHEN (NEW.restricted) EXECUTE FUNCTION listguard_notice_hash()",
    "CREATE TRIGGER listguard_check_subscribers_update AFTER UPDATE ON subscribers \
     FOR EACH ROW WHEN (OLD.email_hash IS DISTINCT FROM NEW.email_hash \
       OR OLD.restricted IS DISTINCT FROM NEW.restricted) \
     EXECUTE FUNCTION listguard_notice_hash()",
    "CREATE TRIGGER listguard_check_subscribers_delete AFTER DELETE ON subscribers \
     REFERENCING OLD TABLE AS changed_rows \
     FOR EACH STATEMENT EXECUTE FUNCTION listguard_notice_hashes()",
    "CREATE TRIGGER listguard_check_subscriptions_insert AFTER INSERT ON subscriptions \
     FOR EACH ROW WHEN (NEW.status = 'confirmed') EXECUTE FUNCTION listguard_notice_subscriber()",
    "CREATE TRIGGER listguard_check_subscriptions_update AFTER UPDATE ON subscriptions \
     FOR EACH ROW WHEN ((OLD.status = 'confirmed' OR NEW.status = 'confirmed') \
       AND (OLD.status IS DISTINCT FROM NEW.status \
         OR OLD.list_slug IS DISTINCT FROM NEW.list_slug \
         OR OLD.subscriber_id IS DISTINCT FROM NEW.subscriber_id)) \
     EXECUTE FUNCTION listguard_notice_subscriber()",
    "CREATE TRIGGER listguard_check_subscriptions_delete AFTER DELETE ON subscriptions \
     REFERENCING OLD TABLE AS changed_rows \
     FOR EACH STATEMENT EXECUTE FUNCTION listguard_notice_old_confirmed()",
];

/// Drops each of [`TRIGGERS`] if it exists.
pub const DROP_TRIGGERS: [&str; 9] = [
    "DROP TRIGGER IF EXISTS listguard_check_subscriptions_delete ON subscriptions",
    "DROP TRIGGER IF EXISTS listguard_check_subscriptions_update ON subscriptions",
    "DROP TRIGGER IF EXISTS listguard_check_subscriptions_insert ON subscriptions",
    "DROP TRIGGER IF EXISTS listguard_check_subscribers_delete ON subscribers",
    "DROP TRIGGER IF EXISTS listguard_check_subscribers_update ON subscribers",
    "DROP TRIGGER IF EXISTS listguard_check_subscribers_insert ON subscribers",
    "DROP TRIGGER IF EXISTS listguard_check_suppressions_delete ON suppressions",
    "DROP TRIGGER IF EXISTS listguard_check_suppressions_update ON suppressions",
    "DROP TRIGGER IF EXISTS listguard_check_suppressions_insert ON suppressions",
];

const DROP_FUNCTIONS: &[&str] = &[
    "DROP FUNCTION IF EXISTS listguard_notice_old_confirmed()",
    "DROP FUNCTION IF EXISTS listguard_notice_hashes()",
    "DROP FUNCTION IF EXISTS listguard_notice_subscriber()",
    "DROP FUNCTION IF EXISTS listguard_notice_hash()",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let up = FUNCTIONS.iter().chain(&TRIGGERS);
        crate::on_postgres_only(m, up.map(|s| String::from(*s)).collect()).await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let down = DROP_TRIGGERS.iter().chain(DROP_FUNCTIONS);
        crate::on_postgres_only(m, down.map(|s| String::from(*s)).collect()).await
    }
}
