//! An index over the jobs still to do. Finished rows stay in the outbox until
//! the purge takes them, and they have the lowest ids, so a claim that walked
//! the table in id order read every finished row first: 2.5 ms a claim after
//! ten thousand mails on PostgreSQL, growing with the table. This partial
//! index holds only pending and in-flight rows, in claim order.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const NAME: &str = "ix_outbox_live";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_index(
            Index::create()
                .name(NAME)
                .table("outbox")
                .col("kind")
                .col("id")
                .and_where(Expr::col("status").is_in(["pending", "in_flight"]))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(Index::drop().name(NAME).table("outbox").to_owned())
            .await
    }
}
