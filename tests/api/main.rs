//! listguard's integration tests: HTTP against a server on port 0, a real SMTP
//! listener on loopback, SQLite by default and PostgreSQL when
//! `LISTGUARD_TEST_DATABASE_URL` is set.
mod check_cache;
mod confirm;
mod events;
mod fake_mailchimp;
mod helpers;
mod hostile;
mod logs;
mod mailchimp_sync;
mod ops;
mod outbox;
mod privacy;
mod privacy_requests;
mod purge;
mod smtp;
mod subscribe;
mod unsubscribe;
mod webhooks;
