//! sea-orm entities, one file per table. These types never appear in the HTTP API:
//! handlers convert at the edge.
pub mod admin_audit;
pub mod consent_event;
pub mod consent_text;
pub mod outbox;
pub mod setting;
pub mod subscriber;
pub mod subscription;
pub mod suppression;
pub mod token;
pub mod webhook_receipt;
