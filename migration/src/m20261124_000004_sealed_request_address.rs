//! Self-service privacy requests for addresses held only by their hash (an
//! unsubscribed person's suppression entry and consent proof): the token row
//! keeps the address sealed under a key derived from the mailed token, so
//! only the link opens it, and the keyed address hash, for the per-address
//! cooldown.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("tokens")
                .add_column(text_null("sealed_address"))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table("tokens")
                .add_column(string_null("subject_hash"))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("tokens")
                .drop_column("subject_hash")
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table("tokens")
                .drop_column("sealed_address")
                .to_owned(),
        )
        .await
    }
}
