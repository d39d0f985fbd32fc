//! Mailchimp sync: outbox jobs carry a `member_key` (Mailchimp list id and
//! subscriber hash) so that a newer change to a member supersedes an unsent
//! older one and two changes to one member never run at once; webhook
//! receipts make repeated deliveries apply once.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("outbox")
                .add_column(string_null("member_key"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_outbox_member_key")
                .table("outbox")
                .col("member_key")
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("webhook_receipts")
                .col(big_pk_auto("id"))
                // `mailchimp` or `mandrill`.
                .col(string("source"))
                // SHA-256 of what makes a delivery the same delivery.
                .col(string("digest"))
                .col(timestamp_with_time_zone("received_at"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_webhook_receipts_digest")
                .table("webhook_receipts")
                .col("source")
                .col("digest")
                .unique()
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(
            Table::drop()
                .table("webhook_receipts")
                .if_exists()
                .to_owned(),
        )
        .await?;
        m.drop_index(
            Index::drop()
                .name("ix_outbox_member_key")
                .table("outbox")
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table("outbox")
                .drop_column("member_key")
                .to_owned(),
        )
        .await?;
        Ok(())
    }
}
