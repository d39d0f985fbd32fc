//! Mailchimp: the API client (reqwest), the outbox jobs that keep each mapped
//! list's audience in step, and the inbound webhooks.
pub mod client;
pub mod jobs;
pub mod reconcile;
pub mod sync;
pub mod webhook;

pub use client::{CallError, MailchimpClient, MemberBody, MergeFields};
pub use jobs::MailchimpJob;
