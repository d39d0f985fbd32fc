//! A person known by address: exists while at least one subscription (pending or
//! confirmed) exists.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "subscribers")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The normalised address (domain in lower-case ASCII).
    pub email: String,
    /// Keyed hash (HMAC-SHA256, `secrets.hash_key`) of the lower-cased address.
    #[sea_orm(unique)]
    pub email_hash: String,
    pub name: Option<String>,
    pub locale: String,
    /// Art. 18 restriction: kept, but never mailed nor pushed to Mailchimp.
    pub restricted: bool,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// UTC day (`YYYY-MM-DD`) that `mail_count` belongs to.
    pub mail_day: Option<String>,
    /// Confirmation mails queued for the address on `mail_day`.
    pub mail_count: i32,
    /// When the last confirmation mail was queued (the re-send cooldown).
    pub mail_sent_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::subscription::Entity")]
    Subscription,
}

impl Related<super::subscription::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Subscription.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
