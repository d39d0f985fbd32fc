//! The suppression list: keyed address hash only, never a readable address.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "suppressions")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub email_hash: String,
    /// A list slug, or `*` for all lists.
    pub scope: String,
    pub reason: String,
    pub source: String,
    pub created_at: DateTimeUtc,
    pub expires_at: DateTimeUtc,
    /// Mailchimp subscriber hash, kept only to archive the member on expiry.
    pub mailchimp_hash: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
