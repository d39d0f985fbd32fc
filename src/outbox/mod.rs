//! The durable outbox. Work that must follow a change (a confirmation mail; later
//! Mailchimp calls and outbound events) is written as a row in the same
//! transaction as the change, and workers carry it out after the commit, with
//! retries. A job's payload is cleared the moment it is done.
pub mod mail_worker;
mod store;

pub use store::{
    ClaimedJob, JobFailure, JobKind, claim, complete_many, complete_with_note, enqueue, fail,
    job_model, status_in,
};

/// What one step of a worker did.
#[derive(Debug, PartialEq, Eq)]
pub enum ExecutionOutcome {
    TaskCompleted,
    EmptyQueue,
}
