//! Proof of consent (GDPR art. 7(1)): when, from where, to which text.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "consent_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Null once the subscription is gone: the event is then kept under the
    /// address hash only, until the suppression entry expires.
    pub subscription_id: Option<i64>,
    pub email_hash: String,
    pub list_slug: String,
    /// `requested` or `confirmed`.
    pub kind: String,
    pub occurred_at: DateTimeUtc,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub source: Option<String>,
    pub consent_version: String,
    pub consent_sha256: String,
    pub privacy_policy_url: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
