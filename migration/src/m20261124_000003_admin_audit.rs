//! The audit trail of administrative actions on a person's data: who (the API
//! key's name, or `cli`), what, when, and the keyed address hash, never the
//! address. Deleted by the purge after `retention.audit`.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("admin_audit")
                .col(big_pk_auto("id"))
                .col(timestamp_with_time_zone("at"))
                .col(string("actor"))
                .col(string("action"))
                .col(string("subject_hash"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_admin_audit_at")
                .table("admin_audit")
                .col("at")
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table("admin_audit").to_owned())
            .await
    }
}
