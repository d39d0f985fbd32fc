//! listguard's integration tests: HTTP against a server on port 0, a real SMTP
//! listener on loopback, SQLite by default and PostgreSQL when
//! `LISTGUARD_TEST_DATABASE_URL` is set.
mod confirm;
mod helpers;
mod hostile;
mod logs;
mod ops;
mod outbox;
mod purge;
mod smtp;
mod subscribe;
mod unsubscribe;
