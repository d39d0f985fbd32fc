//! One subscriber on one list, `pending` until double opt-in, then `confirmed`.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "subscriptions")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub subscriber_id: i64,
    pub list_slug: String,
    /// `pending` or `confirmed`.
    pub status: String,
    pub source: Option<String>,
    pub created_at: DateTimeUtc,
    pub confirmed_at: Option<DateTimeUtc>,
    /// For a pending subscription: when its newest confirmation token expires.
    pub pending_expires_at: Option<DateTimeUtc>,
    /// SHA-256 (hex) of the subscription's first confirmation token, the one
    /// in the signup's own mail, valid for `retention.pending.token` from
    /// `created_at`. Later tokens, and this one once the subscription is
    /// confirmed, are `tokens` rows.
    pub token_hash: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::subscriber::Entity",
        from = "Column::SubscriberId",
        to = "super::subscriber::Column::Id",
        on_delete = "Cascade"
    )]
    Subscriber,
}

impl Related<super::subscriber::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Subscriber.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
