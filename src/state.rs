//! The application state every handler, service and worker shares.
use std::{
    net::IpAddr,
    num::NonZeroU32,
    sync::{Arc, OnceLock},
};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sea_orm::{
    DatabaseConnection, DatabaseTransaction, SqliteTransactionMode, TransactionOptions,
    TransactionTrait,
};
use tokio::sync::{Mutex, Notify, OwnedMutexGuard};

use crate::{
    batch::{BatchFn, Batcher},
    clock::SharedClock,
    config::Config,
    db,
    mail::{MailTransport, Templates},
    mailchimp::MailchimpClient,
    secrets::Keys,
    services::{
        subscribe::{SignupJob, SubscribeOutcome, subscribe_batch},
        unsubscribe::{UnsubscribeJob, UnsubscribeOutcome, unsubscribe_batch},
    },
};

pub type AppState = Arc<State>;

/// What a batch's work returns: an answer per request, in order.
type BatchFuture<Resp> = std::pin::Pin<Box<dyn Future<Output = Vec<anyhow::Result<Resp>>> + Send>>;

pub struct State {
    pub config: Arc<Config>,
    pub db: DatabaseConnection,
    pub clock: SharedClock,
    pub keys: Keys,
    pub mailer: Arc<dyn MailTransport>,
    pub templates: Templates,
    /// Woken after a commit that queued mail.
    pub outbox_notify: Notify,
    /// Woken after a commit that queued Mailchimp jobs.
    pub sync_notify: Notify,
    /// Woken after a commit that queued outbound events.
    pub events_notify: Notify,
    /// The Mailchimp client; `None` when Mailchimp is off.
    pub mailchimp: Option<Arc<MailchimpClient>>,
    /// Per-IP limit on subscribe and privacy requests.
    pub ip_limiter: DefaultKeyedRateLimiter<IpAddr>,
    pub http: reqwest::Client,
    /// SQLite has a single writer: serialising write transactions in-process
    /// avoids "database is locked" when two deferred transactions both upgrade.
    sqlite_write_lock: Option<Arc<Mutex<()>>>,
    /// The signup batcher, started by [`State::start_batchers`].
    signups: OnceLock<Batcher<SignupJob, SubscribeOutcome>>,
    /// The unsubscribe batcher, likewise.
    unsubscribes: OnceLock<Batcher<UnsubscribeJob, UnsubscribeOutcome>>,
    /// Consent texts (list, version) this process has seen committed, so a
    /// signup batch need not store them again.
    consent_texts_stored: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
    /// Signup batches whose set-based statements failed for a reason other
    /// than a concurrent insert, so that their signups went one by one:
    /// correct but slow, and a sign of a bug.
    pub signup_batch_failures: std::sync::atomic::AtomicU64,
    /// What `GET /metrics` serves.
    pub metrics: crate::metrics::Metrics,
    /// Confirmation mails reserved for this process's mail worker.
    pub mail_handoff: crate::outbox::mail_worker::Handoff,
    /// The bulk check's answers in memory; PostgreSQL only.
    pub check_cache: Option<Arc<crate::services::check_cache::CheckCache>>,
}

/// A write transaction; on SQLite it also holds the in-process write lock.
pub struct WriteTx {
    pub txn: DatabaseTransaction,
    _guard: Option<OwnedMutexGuard<()>>,
}

impl std::ops::Deref for WriteTx {
    type Target = DatabaseTransaction;
    fn deref(&self) -> &Self::Target {
        &self.txn
    }
}

impl WriteTx {
    pub async fn commit(self) -> Result<(), sea_orm::DbErr> {
        self.txn.commit().await
    }
}

impl State {
    pub fn new(
        config: Arc<Config>,
        db: DatabaseConnection,
        clock: SharedClock,
        keys: Keys,
        mailer: Arc<dyn MailTransport>,
    ) -> anyhow::Result<Self> {
        let per_minute = NonZeroU32::new(config.limits.subscribe_per_ip_per_minute.max(1))
            .unwrap_or(NonZeroU32::MIN);
        let sqlite_write_lock = (!db::is_postgres(&db)).then(|| Arc::new(Mutex::new(())));
        let check_cache = db::is_postgres(&db).then(Default::default);
        let mailchimp = MailchimpClient::from_config(&config)?.map(Arc::new);
        Ok(Self {
            templates: Templates::new()?,
            config,
            db,
            clock,
            keys,
            mailer,
            outbox_notify: Notify::new(),
            sync_notify: Notify::new(),
            events_notify: Notify::new(),
            mailchimp,
            ip_limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()?,
            sqlite_write_lock,
            signups: OnceLock::new(),
            unsubscribes: OnceLock::new(),
            consent_texts_stored: Default::default(),
            signup_batch_failures: Default::default(),
            metrics: crate::metrics::Metrics::new(),
            mail_handoff: Default::default(),
            check_cache,
        })
    }

    /// Starts following the database for the bulk check's copy
    /// (PostgreSQL; see `services::check_cache`).
    pub fn start_check_cache(&self) {
        if let Some(cache) = &self.check_cache {
            tokio::spawn(crate::services::check_cache::run(
                cache.clone(),
                self.db.get_postgres_connection_pool().clone(),
            ));
        }
    }

    /// Starts the writer tasks that coalesce concurrent writes: one for
    /// signups and one for unsubscribes, on either backend. While a batch is
    /// being written the next one fills, and bigger batches are what make a
    /// commit cheap per request. On PostgreSQL a second writer was measured
    /// each time: it only halved the batches and cost more CPU per request,
    /// for no more throughput (unsubscribes: 2,500–3,100 against
    /// 3,200–3,600 req/s at 8 connections; signups, once the mail worker
    /// let its jobs gather: 3,200–3,600 against 3,600–4,000 at 8 and
    /// 5,700–5,800 against 5,900 at 32).
    pub fn start_batchers(self: &Arc<Self>) {
        let signups = self.batcher(1, |state, jobs| {
            Box::pin(async move { subscribe_batch(&state, jobs).await })
        });
        let _ = self.signups.set(signups);
        let unsubscribes = self.batcher(1, |state, jobs| {
            Box::pin(async move { unsubscribe_batch(&state, jobs).await })
        });
        let _ = self.unsubscribes.set(unsubscribes);
    }

    /// A batcher whose writers run `work` with the state, as long as it lives
    /// (they hold it weakly, so the state can be dropped).
    fn batcher<Req, Resp>(
        self: &Arc<Self>,
        writers: usize,
        work: fn(AppState, Vec<Req>) -> BatchFuture<Resp>,
    ) -> Batcher<Req, Resp>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
    {
        let weak = Arc::downgrade(self);
        let run: BatchFn<Req, Resp> = Arc::new(move |jobs| {
            let weak = weak.clone();
            Box::pin(async move {
                match weak.upgrade() {
                    Some(state) => work(state, jobs).await,
                    None => jobs
                        .iter()
                        .map(|_| Err(anyhow::anyhow!("shutting down")))
                        .collect(),
                }
            })
        });
        Batcher::start(writers, 64, run)
    }

    pub fn unsubscribes(&self) -> &Batcher<UnsubscribeJob, UnsubscribeOutcome> {
        self.unsubscribes
            .get()
            .expect("start_batchers runs when the state is built")
    }

    pub fn signups(&self) -> &Batcher<SignupJob, SubscribeOutcome> {
        self.signups
            .get()
            .expect("start_batchers runs when the state is built")
    }

    /// Begins a write transaction.
    pub async fn begin_write(&self) -> Result<WriteTx, sea_orm::DbErr> {
        let guard = match &self.sqlite_write_lock {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        };
        // On SQLite, IMMEDIATE takes the write lock up front, so the busy
        // timeout applies instead of a failed upgrade halfway through.
        let txn = match &self.sqlite_write_lock {
            Some(_) => {
                self.db
                    .begin_with_options(TransactionOptions {
                        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                        ..Default::default()
                    })
                    .await?
            }
            None => self.db.begin().await?,
        };
        Ok(WriteTx { txn, _guard: guard })
    }

    /// Whether this list's current consent text is known to be stored.
    pub fn consent_text_stored(&self, list: &crate::config::ListConfig) -> bool {
        self.consent_texts_stored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(list.slug.clone(), list.consent_version.clone()))
    }

    /// Records that this list's current consent text is stored (committed).
    pub fn mark_consent_text_stored(&self, list: &crate::config::ListConfig) {
        self.consent_texts_stored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((list.slug.clone(), list.consent_version.clone()));
    }

    /// Wakes the event worker after a commit that may have queued outbound
    /// events (no-op without endpoints); without it, they wait for its poll.
    pub fn events_may_be_queued(&self) {
        if !self.config.webhooks.is_empty() {
            self.events_notify.notify_one();
        }
    }

    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }
}
