//! Deliveries of inbound webhooks already applied, so a replay applies once.
//! Holds a digest only; deleted by the purge after a few days.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_receipts")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// `mailchimp` or `mandrill`.
    pub source: String,
    /// SHA-256 of what identifies the delivery.
    pub digest: String,
    pub received_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
