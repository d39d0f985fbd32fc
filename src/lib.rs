//! listguard: newsletter subscriptions with double opt-in, one-click
//! unsubscribe, a suppression list kept for one month, Mailchimp sync and
//! data-subject rights.
/// mimalloc instead of glibc's allocator: the bulk check's megabyte
/// buffers sent glibc into `malloc_consolidate` and chunk unlinking for a
/// third of the check's CPU (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod api;
pub mod auth;
pub mod batch;
pub mod captcha;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod db;
pub mod domain;
pub mod error;
pub mod events;
pub mod http;
pub mod i18n;
pub mod mail;
pub mod mailchimp;
pub mod metrics;
pub mod outbox;
pub mod pages;
pub mod scheduler;
pub mod secrets;
pub mod services;
pub mod shutdown;
pub mod startup;
pub mod state;
pub mod telemetry;
