//! Two fewer index entries for every confirmation token (one is written per
//! signup). Confirmation tokens no longer name their subscriber (it is their
//! subscription's), so `ix_tokens_subscriber` gives way to
//! `ix_tokens_subscriber_set`, which holds only the tokens that do (privacy
//! requests); and `ix_tokens_expires_at` served no query (the purge finds due
//! tokens through an `OR` that scans the table either way).
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        for sql in [
            "DROP INDEX ix_tokens_expires_at",
            "DROP INDEX ix_tokens_subscriber",
            // A foreign key's cascade (`subscriber_id = $1`) implies the
            // predicate, so deleting a subscriber still finds its tokens
            // through the index.
            "CREATE INDEX ix_tokens_subscriber_set ON tokens (subscriber_id) \
             WHERE subscriber_id IS NOT NULL",
        ] {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        for sql in [
            "DROP INDEX ix_tokens_subscriber_set",
            "CREATE INDEX ix_tokens_subscriber ON tokens (subscriber_id)",
            "CREATE INDEX ix_tokens_expires_at ON tokens (expires_at)",
        ] {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }
}
