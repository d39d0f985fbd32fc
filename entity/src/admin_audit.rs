//! The audit trail of administrative actions: who, what, when, and the keyed
//! address hash (never the address). Kept for `retention.audit`.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "admin_audit")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub at: DateTimeUtc,
    /// The API key's configured name, or `cli`.
    pub actor: String,
    /// `export`, `rectify`, `restrict`, `unrestrict`, `erase` or `unsubscribe`.
    pub action: String,
    /// Keyed hash (HMAC-SHA256) of the address the action was about.
    pub subject_hash: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
