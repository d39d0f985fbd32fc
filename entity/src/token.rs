//! Random single-use tokens (confirmation, privacy requests), stored only as a hash.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "tokens")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Lower-case hex SHA-256 of the token as sent.
    #[sea_orm(unique)]
    pub token_hash: String,
    /// `confirm` (the double opt-in link; its "not me" link shares it).
    pub purpose: String,
    pub subscription_id: Option<i64>,
    pub subscriber_id: Option<i64>,
    pub created_at: DateTimeUtc,
    pub expires_at: DateTimeUtc,
    pub used_at: Option<DateTimeUtc>,
    /// Privacy requests only: the address, sealed under a key derived from
    /// the mailed token (unreadable without the link).
    pub sealed_address: Option<String>,
    /// Privacy requests only: the keyed address hash (the cooldown's key).
    pub subject_hash: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
