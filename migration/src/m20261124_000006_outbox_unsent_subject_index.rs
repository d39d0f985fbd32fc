//! An index over the unsent jobs by address hash. An unsubscribe cancels the
//! unsent jobs that still hold the address; looked up through the index of
//! every job's hash, PostgreSQL's cached plan for the one-statement
//! unsubscribe batch turned into a scan of the whole outbox once the table
//! had statistics (4 ms a batch of four after ten thousand mails). This
//! partial index holds only the jobs an unsubscribe can still cancel.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const NAME: &str = "ix_outbox_unsent_subject";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_index(
            Index::create()
                .name(NAME)
                .table("outbox")
                .col("subject_hash")
                .and_where(Expr::col("status").is_in(["pending", "in_flight", "dead"]))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(Index::drop().name(NAME).table("outbox").to_owned())
            .await
    }
}
