//! Indexes on the foreign keys of `tokens`: without them every delete of a
//! subscription or subscriber (each unsubscribe, each purge) scans the whole
//! tokens table to check the constraint, and the table grows with signups.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEXES: [(&str, &str); 2] = [
    ("ix_tokens_subscription", "subscription_id"),
    ("ix_tokens_subscriber", "subscriber_id"),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (name, col) in INDEXES {
            m.create_index(
                Index::create()
                    .name(name)
                    .table("tokens")
                    .col(col)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (name, _) in INDEXES {
            m.drop_index(Index::drop().name(name).table("tokens").to_owned())
                .await?;
        }
        Ok(())
    }
}
