//! Fewer indexes for the outbox to keep up. Every job is inserted once and
//! updated at least once (claimed, done), and a status change is never a HOT
//! update, so each index costs on every step of every job.
//!
//! - `ix_outbox_subject` (every job's address hash) goes: every lookup by
//!   address asks for unsent jobs, which `ix_outbox_unsent_subject` holds.
//! - `ix_outbox_claim` (kind, status, next attempt) goes: claims walk
//!   `ix_outbox_live`.
//! - `ix_outbox_member_key` gives way to `ix_outbox_member_jobs`, which holds
//!   only the jobs that have a member (Mailchimp calls), not a NULL for every
//!   mail.
//!
//! Measured: marking a batch of mails done went from 0.45 to 0.29 ms.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

fn drop(name: &str) -> IndexDropStatement {
    Index::drop().name(name).table("outbox").to_owned()
}

fn member_index(name: &str) -> IndexCreateStatement {
    Index::create()
        .name(name)
        .table("outbox")
        .col("member_key")
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(drop("ix_outbox_subject")).await?;
        m.drop_index(drop("ix_outbox_claim")).await?;
        m.drop_index(drop("ix_outbox_member_key")).await?;
        m.create_index(
            member_index("ix_outbox_member_jobs")
                .and_where(Expr::col("member_key").is_not_null())
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(drop("ix_outbox_member_jobs")).await?;
        m.create_index(member_index("ix_outbox_member_key")).await?;
        m.create_index(
            Index::create()
                .name("ix_outbox_claim")
                .table("outbox")
                .col("kind")
                .col("status")
                .col("next_attempt_at")
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_outbox_subject")
                .table("outbox")
                .col("subject_hash")
                .to_owned(),
        )
        .await
    }
}
