//! The per-address limits on confirmation mail move from their own table
//! (`address_limits`, one row per address) onto the subscriber row: its
//! `mail_day`, `mail_count` and `mail_sent_at`.
//!
//! Why: every signup of a new address wrote a limits row, a sixth insert in
//! the signup statement and a third probe for "is this address known". On the
//! subscriber row the limit is three columns of a row that is written anyway.
//! Measured with `benches/ab.sh` (PostgreSQL, 8 connections): about +15 %
//! signups a second.
//!
//! The same addresses are limited: confirmation mail goes only to an address
//! that has a subscriber row (a pending subscription), and a subscriber row
//! goes only when its last subscription does (an unsubscribe or a "this
//! wasn't me", both of which suppress the address; the purge, days after the
//! limit's own day; an erasure, which deleted the limits row too).
//!
//! Existing limits are carried over to their subscriber rows; those of
//! addresses without one (suppressed or erased) are dropped, as they limit
//! nothing. `down` moves them back.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        for column in [
            string_null("mail_day"),
            integer("mail_count").default(0).to_owned(),
            timestamp_with_time_zone_null("mail_sent_at"),
        ] {
            m.alter_table(
                Table::alter()
                    .table("subscribers")
                    .add_column(column)
                    .to_owned(),
            )
            .await?;
        }
        let db = m.get_connection();
        db.execute_unprepared(
            "UPDATE subscribers SET \
               mail_day = (SELECT a.day FROM address_limits a WHERE a.email_hash = subscribers.email_hash), \
               mail_count = (SELECT a.count FROM address_limits a WHERE a.email_hash = subscribers.email_hash), \
               mail_sent_at = (SELECT a.last_sent_at FROM address_limits a WHERE a.email_hash = subscribers.email_hash) \
             WHERE EXISTS (SELECT 1 FROM address_limits a WHERE a.email_hash = subscribers.email_hash)",
        )
        .await?;
        m.drop_table(Table::drop().table("address_limits").to_owned())
            .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("address_limits")
                .col(string("email_hash").primary_key())
                .col(string("day"))
                .col(integer("count"))
                .col(timestamp_with_time_zone("last_sent_at"))
                .to_owned(),
        )
        .await?;
        // As migration 000008 left it.
        crate::compare_bytewise(m, "address_limits", "email_hash").await?;
        let db = m.get_connection();
        db.execute_unprepared(
            "INSERT INTO address_limits (email_hash, day, count, last_sent_at) \
             SELECT email_hash, mail_day, mail_count, mail_sent_at FROM subscribers \
             WHERE mail_day IS NOT NULL AND mail_sent_at IS NOT NULL",
        )
        .await?;
        for column in ["mail_sent_at", "mail_count", "mail_day"] {
            m.alter_table(
                Table::alter()
                    .table("subscribers")
                    .drop_column(column)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
