//! The exact consent wording a list showed, stored by version the first time it
//! is used and never changed afterwards.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "consent_texts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub list_slug: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub version: String,
    pub sha256: String,
    pub text: String,
    pub first_used_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
