//! The durable outbox: work that must happen after a commit (mail, Mailchimp,
//! outbound events), written in the same transaction as the change.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "outbox")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub kind: String,
    /// `pending`, `in_flight`, `done` or `dead`.
    pub status: String,
    /// JSON; cleared the moment the job is done.
    pub payload: Option<String>,
    /// Address hash of the person the job is about, so their payloads can be
    /// cleared on unsubscribe or erasure.
    pub subject_hash: Option<String>,
    /// `mailchimp:<list id>:<subscriber hash>` on Mailchimp jobs: a newer job
    /// for the same member supersedes an unsent older one, and two jobs for
    /// one member never run at once.
    pub member_key: Option<String>,
    pub attempts: i32,
    pub next_attempt_at: DateTimeUtc,
    pub locked_until: Option<DateTimeUtc>,
    pub last_error: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
