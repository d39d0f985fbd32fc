//! A subscription's first confirmation token (the one in the signup's own
//! mail) is kept on the subscription row, as `token_hash`, instead of in a
//! `tokens` row of its own. A later token (a mail sent again) still gets a
//! `tokens` row, and so does the first once the subscription is confirmed
//! (the service moves it there, so that the purge treats used tokens alike).
//!
//! Why: every signup of a new address wrote a token row: a heap row, three
//! index entries and a foreign-key check, about a quarter of the signup
//! statement. On the subscription row it is one column and one entry in a
//! partial unique index. Measured with `benches/ab.sh` (PostgreSQL,
//! 8 connections) with the token left out altogether: about +10 % signups a
//! second.
//!
//! `down` moves the tokens held on rows back into `tokens`, valid until their
//! subscription's `pending_expires_at`.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("subscriptions")
                .add_column(string_null("token_hash"))
                .to_owned(),
        )
        .await?;
        crate::compare_bytewise(m, "subscriptions", "token_hash").await?;
        m.get_connection()
            .execute_unprepared(
                "CREATE UNIQUE INDEX ux_subscriptions_token_hash ON subscriptions (token_hash) \
                 WHERE token_hash IS NOT NULL",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        db.execute_unprepared(
            "INSERT INTO tokens (token_hash, purpose, subscription_id, created_at, expires_at) \
             SELECT token_hash, 'confirm', id, created_at, COALESCE(pending_expires_at, created_at) \
             FROM subscriptions WHERE token_hash IS NOT NULL",
        )
        .await?;
        db.execute_unprepared("DROP INDEX ux_subscriptions_token_hash")
            .await?;
        m.alter_table(
            Table::alter()
                .table("subscriptions")
                .drop_column("token_hash")
                .to_owned(),
        )
        .await
    }
}
