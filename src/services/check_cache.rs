//! The bulk check's answers in memory, kept exactly in step with the
//! database (PostgreSQL only).
//!
//! `POST /v1/suppressions/check` would otherwise probe two tables for every
//! address it is given: about 3 µs of PostgreSQL's CPU an address, most of
//! the request (docs/performance.md). This process instead holds, for every
//! address hash that has something to say, its suppression entries and, if
//! it is a subscriber with a confirmed subscription or a restriction, that
//! subscriber's lists and restriction. An address it does not hold has the
//! same answer as an unknown one.
//!
//! A suppression list must never answer from a stale copy, whichever
//! process or replica made the change. So:
//!
//! - Triggers (migration `m20261125_000002_check_change_notices`) send a
//!   notice on the channel `listguard_check` for every row change that can
//!   alter an answer: `h` and address hashes, or `i` and subscriber ids,
//!   comma-separated. PostgreSQL
//!   delivers notices at commit, in commit order, to every listener.
//! - A task of this process listens on that channel, and re-reads from the
//!   database what each notice names before it counts as applied.
//! - Before a check answers from memory, it sends a notice of its own
//!   (`s<process tag>:<n>`) and waits until the task has seen it and applied
//!   everything before it. Every change committed before the check began
//!   comes before that notice, so the answer is at least as new as the
//!   moment the check began: the same guarantee as asking the database.
//! - The triggers exist only while some process holds a lease (migration
//!   `m20261125_000003`): they cost writers a tenth of their throughput
//!   even when nobody listens. A listener LISTENs, then raises its lease,
//!   which creates the triggers if they are missing; `CREATE TRIGGER` waits
//!   for every transaction that has written the table. Only then does it
//!   load the tables, so a change either is in what the load read or comes
//!   as a notice after it. It renews the lease while it keeps the copy,
//!   answers only while its lease holds, and drops the copy if the lease
//!   ever lapsed. Whoever drops a copy ends its lease, and the last lease to
//!   end drops the triggers.
//! - If the listening connection fails, the copy is dropped and checks ask
//!   the database until a new listener has loaded a new one; a check whose
//!   notice does not come back within [`SYNC_TIMEOUT`] asks the database too.
//! - While a process listens, every notifying commit wakes it: a fifth of
//!   the unsubscribe throughput under load. So the copy is loaded when a
//!   check first wants it (that check asks the database) and dropped after
//!   [`IDLE_AFTER`] without one.
use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use sea_orm::sqlx::{
    self, PgConnection, PgPool, Postgres, pool::PoolConnection, postgres::PgListener,
};
use tokio::sync::watch;

use super::suppression::{ALL_LISTS, CheckResult, Reason};

/// The channel the triggers and the checks' own notices use.
pub const CHANNEL: &str = "listguard_check";

/// How long a check waits for its own notice before asking the database.
const SYNC_TIMEOUT: Duration = Duration::from_secs(2);

/// Rows read per statement while loading.
const LOAD_PAGE: i64 = 20_000;

/// How long the copy is kept without a check. Listening costs every
/// notifying commit a wake-up of the listener (a fifth of the unsubscribe
/// throughput under load, docs/performance.md), so a process keeps the copy
/// only while senders are checking.
const IDLE_AFTER: Duration = Duration::from_secs(300);

/// Notices applied at once when no check is waiting.
const APPLY_AT: usize = 5_000;

/// How long a raised lease holds, how often it is renewed, and how long
/// before it ends this process stops counting on it.
const LEASE: Duration = Duration::from_secs(60);
const LEASE_RENEW: Duration = Duration::from_secs(15);
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// A raw address hash (HMAC-SHA256).
pub type Digest = [u8; 32];

/// Address hashes are HMAC outputs under a secret key: uniform, and not
/// choosable by anyone without the key, so their first eight bytes are as
/// good a hash as any and cannot be flooded.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // A `[u8; 32]` hashes as its length, then its bytes.
        if bytes.len() >= 8 {
            self.0 ^= u64::from_le_bytes(bytes[..8].try_into().unwrap_or_default());
        }
    }
    fn write_usize(&mut self, _: usize) {}
}

type DigestMap<V> = HashMap<Digest, V, BuildHasherDefault<DigestHasher>>;

/// A suppression entry as the check needs it.
#[derive(Debug, Clone, Copy)]
struct Entry {
    expires_at: DateTime<Utc>,
    scope: u32,
    reason: Reason,
}

#[derive(Debug, Clone)]
struct Subscriber {
    restricted: bool,
    /// The lists of its confirmed subscriptions.
    lists: Box<[u32]>,
}

#[derive(Debug, Default, Clone)]
struct Person {
    entries: Box<[Entry]>,
    subscriber: Option<Subscriber>,
}

impl Person {
    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.subscriber.is_none()
    }
}

/// The copy: every address hash with something to say.
#[derive(Default)]
struct Table {
    people: DigestMap<Person>,
    /// Scopes and list slugs, each stored once.
    names: Vec<Arc<str>>,
    name_ids: HashMap<Arc<str>, u32>,
}

impl Table {
    fn intern(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.name_ids.get(name) {
            return i;
        }
        let i = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        let name: Arc<str> = name.into();
        self.names.push(name.clone());
        self.name_ids.insert(name, i);
        i
    }

    fn set_subscriber(&mut self, digest: Digest, subscriber: Option<Subscriber>) {
        let person = self.people.entry(digest).or_default();
        person.subscriber = subscriber;
        if person.is_empty() {
            self.people.remove(&digest);
        }
    }

    fn set_entries(&mut self, digest: Digest, entries: Vec<Entry>) {
        let person = self.people.entry(digest).or_default();
        person.entries = entries.into_boxed_slice();
        if person.is_empty() {
            self.people.remove(&digest);
        }
    }

    /// The answer for one hash, as `suppression::check_many` gives it.
    fn answer(&self, digest: &Digest, list: Option<&str>, now: DateTime<Utc>) -> CheckResult {
        let mut out = CheckResult {
            suppressed: false,
            reason: None,
            expires_at: None,
            subscribed: false,
            restricted: false,
        };
        let Some(person) = self.people.get(digest) else {
            return out;
        };
        let list_id = list.map(|l| self.name_ids.get(l).copied());
        let all = self.name_ids.get(ALL_LISTS).copied();
        let mut best: Option<&Entry> = None;
        for e in person.entries.iter() {
            let in_scope = match list_id {
                None => true,
                Some(id) => Some(e.scope) == id || Some(e.scope) == all,
            };
            if in_scope && e.expires_at > now && best.is_none_or(|b| b.expires_at < e.expires_at) {
                best = Some(e);
            }
        }
        if let Some(e) = best {
            out.suppressed = true;
            out.reason = Some(e.reason.as_str().to_string());
            out.expires_at = Some(e.expires_at);
        }
        if let Some(s) = &person.subscriber {
            out.restricted = s.restricted;
            out.subscribed = match list_id {
                None => !s.lists.is_empty(),
                Some(id) => s.lists.iter().any(|l| Some(*l) == id),
            };
        }
        out
    }
}

/// What the listening task has published.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    /// Counts listeners; a check's notice is only answered by the one it
    /// was sent under.
    epoch: u64,
    /// Whether the copy is loaded and followed.
    ready: bool,
    /// The newest of this process's notices seen with everything before it
    /// applied.
    seen: u64,
}

/// The copy, its listener's progress, and this process's notice numbers.
pub struct CheckCache {
    table: RwLock<Option<Table>>,
    progress: watch::Sender<Progress>,
    next_notice: AtomicU64,
    /// Tells this process's notices from those of other processes.
    tag: String,
    /// Held by tests to keep the listener from applying notices.
    gate: tokio::sync::Mutex<()>,
    /// Wakes the keeper when a check wants a copy.
    wanted: tokio::sync::Notify,
    /// When a check last wanted the copy, in ms since `born`.
    last_wanted: AtomicU64,
    born: std::time::Instant,
    /// [`IDLE_AFTER`], in ms; tests shorten it.
    idle_ms: AtomicU64,
    /// Until when, in ms since `born`, the notices are sure to be sent;
    /// 0 without a lease.
    lease_ms: AtomicU64,
}

impl Default for CheckCache {
    fn default() -> Self {
        Self::new()
    }
}

impl CheckCache {
    pub fn new() -> Self {
        Self {
            table: RwLock::new(None),
            progress: watch::Sender::new(Progress::default()),
            next_notice: AtomicU64::new(0),
            tag: uuid::Uuid::new_v4().simple().to_string(),
            gate: tokio::sync::Mutex::new(()),
            wanted: tokio::sync::Notify::new(),
            last_wanted: AtomicU64::new(0),
            born: std::time::Instant::now(),
            idle_ms: AtomicU64::new(IDLE_AFTER.as_millis() as u64),
            lease_ms: AtomicU64::new(0),
        }
    }

    /// A check wants the copy: the keeper loads it if there is none, and
    /// keeps it for [`IDLE_AFTER`] after the last such call.
    pub fn want(&self) {
        let now = self.born.elapsed().as_millis() as u64 + 1;
        self.last_wanted.fetch_max(now, Ordering::Relaxed);
        if !self.is_ready() {
            self.wanted.notify_one();
        }
    }

    fn wanted_recently(&self) -> bool {
        let last = self.last_wanted.load(Ordering::Relaxed);
        last > 0
            && (self.born.elapsed().as_millis() as u64 + 1).saturating_sub(last)
                < self.idle_ms.load(Ordering::Relaxed)
    }

    /// How long the copy is kept without a check (tests shorten it).
    #[doc(hidden)]
    pub fn set_idle_after(&self, after: Duration) {
        self.idle_ms
            .store(after.as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether checks can be answered from memory right now.
    pub fn is_ready(&self) -> bool {
        self.progress.borrow().ready
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// Whether this process's lease holds: every writer sends its notices.
    fn leased(&self) -> bool {
        self.now_ms() < self.lease_ms.load(Ordering::Relaxed)
    }

    /// Raises or renews the lease, and with it the triggers. `false` if the
    /// lease this process held had lapsed before it was renewed: another
    /// process may have dropped the triggers in between.
    async fn raise_lease(&self, pool: &PgPool) -> Result<bool, sqlx::Error> {
        let asked = self.now_ms();
        let mut conn = trigger_lock(pool).await?;
        let raised = follow_in(&mut conn, &self.tag).await;
        trigger_unlock(conn).await;
        raised?;
        let held = self.lease_ms.load(Ordering::Relaxed);
        if held != 0 && self.now_ms() >= held {
            self.lease_ms.store(0, Ordering::Relaxed);
            return Ok(false);
        }
        // The lease runs from the database's clock when the statement ran,
        // which is after `asked`.
        let until = asked + (LEASE - LEASE_MARGIN).as_millis() as u64;
        self.lease_ms.store(until, Ordering::Relaxed);
        Ok(true)
    }

    /// Waits until the copy is (`true`) or is not (`false`) loaded and
    /// followed, at most `limit` (tests and benches).
    pub async fn wait_ready(&self, ready: bool, limit: Duration) -> bool {
        let mut rx = self.progress.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|p| p.ready == ready))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Addresses held in memory, `None` while there is no copy (metrics
    /// and benches).
    pub fn held(&self) -> Option<usize> {
        self.read().as_ref().map(|t| t.people.len())
    }

    /// Keeps the listener from applying notices while the guard lives, so
    /// that tests can hold the copy behind the database.
    #[doc(hidden)]
    pub async fn hold_notices(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.gate.lock().await
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Option<Table>> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Option<Table>> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends this check's notice and waits until everything committed
    /// before it is applied. `false`: ask the database instead.
    pub async fn catch_up(&self, pool: &PgPool) -> bool {
        let start = *self.progress.borrow();
        if !start.ready || !self.leased() {
            return false;
        }
        let n = self.next_notice.fetch_add(1, Ordering::Relaxed) + 1;
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(format!("s{}:{n}", self.tag))
            .execute(pool)
            .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, "the check could not send its notice; asking the database");
            return false;
        }
        let mut rx = self.progress.subscribe();
        let waited = tokio::time::timeout(
            SYNC_TIMEOUT,
            rx.wait_for(|p| p.epoch != start.epoch || !p.ready || p.seen >= n),
        )
        .await;
        matches!(waited, Ok(Ok(p)) if p.epoch == start.epoch && p.ready && p.seen >= n)
            && self.leased()
    }

    /// Answers from memory, in the order given (`None` where the address was
    /// not valid); `None` if the copy is gone.
    pub fn answer(
        &self,
        list: Option<&str>,
        digests: &[Option<Digest>],
        now: DateTime<Utc>,
    ) -> Option<Vec<Option<CheckResult>>> {
        let guard = self.read();
        let table = guard.as_ref()?;
        Some(
            digests
                .iter()
                .map(|d| d.as_ref().map(|d| table.answer(d, list, now)))
                .collect(),
        )
    }

    fn publish(&self, f: impl FnOnce(&mut Progress)) {
        self.progress.send_modify(f);
    }
}

/// What notices have asked to re-read and is not yet re-read.
#[derive(Default)]
struct Pending {
    hashes: std::collections::HashSet<String>,
    ids: std::collections::HashSet<i64>,
    /// The newest of this process's own notices among them.
    seen: Option<u64>,
}

impl Pending {
    fn note(&mut self, payload: &str, tag: &str) {
        if let Some(hashes) = payload.strip_prefix('h') {
            for h in hashes.split(',') {
                if !self.hashes.contains(h) {
                    self.hashes.insert(h.to_string());
                }
            }
        } else if let Some(ids) = payload.strip_prefix('i') {
            self.ids
                .extend(ids.split(',').filter_map(|i| i.parse::<i64>().ok()));
        } else if let Some(n) = payload
            .strip_prefix('s')
            .and_then(|s| s.strip_prefix(tag))
            .and_then(|s| s.strip_prefix(':'))
            .and_then(|n| n.parse::<u64>().ok())
        {
            self.seen = Some(self.seen.map_or(n, |s| s.max(n)));
        }
    }

    fn len(&self) -> usize {
        self.hashes.len() + self.ids.len()
    }
}

/// Keeps the copy: listens, loads, follows; on any failure drops the copy,
/// waits and starts again. Ends when the database pool is closed.
pub async fn run(cache: Arc<CheckCache>, pool: PgPool) {
    let mut pause = Duration::from_millis(500);
    // Triggers left by a process that stopped without ending its lease go
    // once that lease has run out.
    release(&pool, None).await;
    loop {
        while !cache.wanted_recently() {
            cache.wanted.notified().await;
        }
        let outcome = follow(&cache, &pool).await;
        cache.lease_ms.store(0, Ordering::Relaxed);
        *cache.write() = None;
        cache.publish(|p| {
            p.ready = false;
            p.epoch += 1;
        });
        if !matches!(outcome, Err(sqlx::Error::PoolClosed)) {
            release(&pool, Some(&cache.tag)).await;
        }
        match outcome {
            Ok(Ended::Idle) => {
                tracing::info!("no bulk check for a while: the copy in memory is dropped");
                pause = Duration::from_millis(500);
                continue;
            }
            Err(sqlx::Error::PoolClosed) => return,
            Err(e) => {
                tracing::warn!(error = %e, "the bulk check's copy failed; checks ask the database until it is rebuilt");
            }
            Ok(Ended::Lost) => {
                tracing::warn!(
                    "the bulk check's listener was disconnected; checks ask the database until it is rebuilt"
                );
            }
            Ok(Ended::Lapsed) => {
                tracing::warn!(
                    "the bulk check's lease could not be renewed in time; checks ask the database until the copy is rebuilt"
                );
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

/// Why a listener's life ended, short of an error.
enum Ended {
    /// Its connection was closed.
    Lost,
    /// No check wanted the copy for [`IDLE_AFTER`].
    Idle,
    /// Its lease was not renewed in time.
    Lapsed,
}

/// Ends this process's lease (`None`: none) and those run out; the last
/// lease to end drops the triggers.
async fn release(pool: &PgPool, tag: Option<&str>) {
    let released = match trigger_lock(pool).await {
        Ok(mut conn) => {
            let released = release_in(&mut conn, tag).await;
            trigger_unlock(conn).await;
            released
        }
        Err(e) => Err(e),
    };
    if let Err(e) = released {
        tracing::warn!(error = %e, "the bulk check's lease could not be ended; its triggers stay until a later try");
    }
}

/// Serialises lease and trigger changes across processes.
const TRIGGER_LOCK: i64 = 7_263_011_258;

/// A pooled connection holding [`TRIGGER_LOCK`]. Leases and triggers
/// change under it one process at a time; every DDL statement runs on its
/// own, so the process holds at most one table's lock at a time and can
/// never be part of a deadlock with the service's own statements (which
/// never take the advisory lock).
async fn trigger_lock(pool: &PgPool) -> Result<PoolConnection<Postgres>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(TRIGGER_LOCK)
        .execute(&mut *conn)
        .await?;
    Ok(conn)
}

/// Gives the lock (and any `lock_timeout` set under it) back, or closes
/// the connection if that fails.
async fn trigger_unlock(mut conn: PoolConnection<Postgres>) {
    let reset = sqlx::raw_sql("RESET lock_timeout; SELECT pg_advisory_unlock_all()")
        .execute(&mut *conn)
        .await;
    if reset.is_err() {
        conn.close_on_drop();
    }
}

/// Raises or renews `tag`'s lease to [`LEASE`] from now and creates the
/// triggers that are missing. `CREATE TRIGGER` waits for every transaction
/// that has written its table, so a change either fires the trigger or is
/// committed before the follower loads, whatever its isolation level. It
/// waits at most 1 s: writers of the table queue behind it meanwhile, and a
/// follower that meets a long transaction gives up and tries again later.
async fn follow_in(conn: &mut PgConnection, tag: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO check_leases (tag, until) \
         VALUES ($1, clock_timestamp() + $2 * interval '1 millisecond') \
         ON CONFLICT (tag) DO UPDATE SET until = EXCLUDED.until",
    )
    .bind(tag)
    .bind(LEASE.as_millis() as i64)
    .execute(&mut *conn)
    .await?;
    change_triggers(conn, &migration::TRIGGERS, false, "1s").await
}

/// Ends `tag`'s lease and those run out; once none is left, drops the
/// triggers. `DROP TRIGGER` makes readers of its table queue behind it as
/// well, so it waits at most 200 ms for the table (the triggers then stay
/// until a later try).
async fn release_in(conn: &mut PgConnection, tag: Option<&str>) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM check_leases WHERE tag = $1 OR until <= clock_timestamp()")
        .bind(tag)
        .execute(&mut *conn)
        .await?;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM check_leases")
        .fetch_one(&mut *conn)
        .await?;
    if left > 0 {
        return Ok(());
    }
    // Only those present: `DROP TRIGGER IF EXISTS` locks its table even
    // when there is nothing to drop.
    change_triggers(conn, &migration::DROP_TRIGGERS, true, "200ms").await
}

/// Runs, each as a statement of its own and waiting at most `lock_timeout`
/// for its table, those of `statements` (`CREATE TRIGGER` or `DROP TRIGGER
/// IF EXISTS`) whose trigger exists (`present`) or does not.
async fn change_triggers(
    conn: &mut PgConnection,
    statements: &[&'static str],
    present: bool,
    lock_timeout: &str,
) -> Result<(), sqlx::Error> {
    let existing: Vec<String> = sqlx::query_scalar(
        "SELECT tgname::text FROM pg_trigger WHERE NOT tgisinternal AND tgname LIKE 'listguard_check_%'",
    )
    .fetch_all(&mut *conn)
    .await?;
    let due: Vec<&str> = statements
        .iter()
        .copied()
        .filter(|sql| {
            existing
                .iter()
                .any(|e| Some(e.as_str()) == trigger_name(sql))
                == present
        })
        .collect();
    if due.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT set_config('lock_timeout', $1, false)")
        .bind(lock_timeout)
        .execute(&mut *conn)
        .await?;
    for sql in due {
        sqlx::raw_sql(sql).execute(&mut *conn).await?;
    }
    Ok(())
}

/// The trigger a `CREATE TRIGGER` or `DROP TRIGGER [IF EXISTS]` statement names.
fn trigger_name(sql: &str) -> Option<&str> {
    let mut words = sql
        .split_whitespace()
        .skip_while(|w| *w != "TRIGGER")
        .skip(1)
        .skip_while(|w| matches!(*w, "IF" | "EXISTS"));
    words.next()
}

/// What the reading task passes on: a notice's payload, or the end of the
/// connection (`Ok(None)`) or an error.
type Received = Result<Option<String>, sqlx::Error>;

/// One listener's life: returns when its connection is lost, or when no
/// check has wanted the copy for a while.
async fn follow(cache: &Arc<CheckCache>, pool: &PgPool) -> Result<Ended, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    cache.raise_lease(pool).await?;
    // Renewed from a task of its own, so that a long load does not let it lapse.
    let (lapse_tx, mut lapsed) = tokio::sync::oneshot::channel::<()>();
    let _renewer = AbortOnDrop(tokio::spawn({
        let (cache, pool) = (Arc::clone(cache), pool.clone());
        async move {
            keep_lease(&cache, &pool).await;
            let _ = lapse_tx.send(());
        }
    }));
    // A task of its own reads the connection and is never cancelled in the
    // middle of a message; this one takes the notices in runs from the
    // channel, without waiting for more than the first of each run.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Received>();
    let _reader = AbortOnDrop(tokio::spawn(async move {
        loop {
            let got = listener.try_recv().await;
            let end = !matches!(got, Ok(Some(_)));
            if tx
                .send(got.map(|n| n.map(|n| n.payload().to_owned())))
                .is_err()
                || end
            {
                return;
            }
        }
    }));
    let started = std::time::Instant::now();
    let mut table = load(pool).await?;
    let mut seen = None;
    // What came while loading, a run at a time.
    loop {
        let mut pending = Pending::default();
        if !take_run(&mut rx, &mut pending, cache)? {
            return Ok(Ended::Lost);
        }
        if pending.len() == 0 && pending.seen.is_none() {
            break;
        }
        seen = seen.max(pending.seen);
        reread(pool, &pending).await?.apply(&mut table);
    }
    let held = table.people.len();
    *cache.write() = Some(table);
    cache.publish(|p| {
        p.ready = true;
        p.seen = p.seen.max(seen.unwrap_or(0));
    });
    tracing::info!(
        addresses = held,
        ms = started.elapsed().as_millis() as u64,
        "the bulk check answers from memory"
    );
    let mut pending = Pending::default();
    // At least once a second, so that a shorter idle time set meanwhile
    // (tests) counts.
    let idle_ms = cache.idle_ms.load(Ordering::Relaxed);
    let mut idle_check =
        tokio::time::interval(Duration::from_millis((idle_ms / 2).clamp(10, 1000)));
    loop {
        let received = tokio::select! {
            r = rx.recv() => r,
            _ = idle_check.tick() => {
                if !cache.wanted_recently() {
                    return Ok(Ended::Idle);
                }
                continue;
            }
            _ = &mut lapsed => return Ok(Ended::Lapsed),
        };
        let first = match received {
            Some(Ok(Some(payload))) => payload,
            Some(Err(e)) => return Err(e),
            Some(Ok(None)) | None => return Ok(Ended::Lost),
        };
        pending.note(&first, &cache.tag);
        if !take_run(&mut rx, &mut pending, cache)? {
            return Ok(Ended::Lost);
        }
        // Re-read only when a check waits for it, or when enough has piled
        // up: a stream of unsubscribes with no check in between costs the
        // database one re-read per [`APPLY_AT`] notices, not one per commit.
        if pending.seen.is_none() && pending.len() < APPLY_AT {
            continue;
        }
        let _gate = cache.gate.lock().await;
        let run = std::mem::take(&mut pending);
        if run.len() > 0 {
            let changes = reread(pool, &run).await?;
            if let Some(table) = cache.write().as_mut() {
                changes.apply(table);
            }
        }
        if let Some(n) = run.seen {
            cache.publish(|p| p.seen = p.seen.max(n));
        }
    }
}

/// Renews the lease every [`LEASE_RENEW`]; returns once it has lapsed
/// (a failed renewal is tried again each second until then).
async fn keep_lease(cache: &CheckCache, pool: &PgPool) {
    let mut wait = LEASE_RENEW;
    loop {
        tokio::time::sleep(wait).await;
        wait = match cache.raise_lease(pool).await {
            Ok(true) => LEASE_RENEW,
            Ok(false) => return,
            Err(e) if cache.leased() => {
                tracing::warn!(error = %e, "the bulk check's lease could not be renewed; trying again");
                Duration::from_secs(1)
            }
            Err(_) => return,
        };
    }
}

/// Takes the notices already received, up to [`APPLY_AT`], into `pending`;
/// `false` if the connection has ended.
fn take_run(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Received>,
    pending: &mut Pending,
    cache: &CheckCache,
) -> Result<bool, sqlx::Error> {
    while pending.len() < APPLY_AT {
        match rx.try_recv() {
            Ok(Ok(Some(payload))) => pending.note(&payload, &cache.tag),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(None)) | Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                return Ok(false);
            }
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
        }
    }
    Ok(true)
}

/// Ends the reading task with the listener's life.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A subscriber row with one of its confirmed lists (or none).
type SubscriberRow = (i64, String, bool, Option<String>);
/// A suppression entry row.
type EntryRow = (String, String, String, DateTime<Utc>);

fn digest_of(hex_hash: &str) -> Option<Digest> {
    let mut d = [0u8; 32];
    hex::decode_to_slice(hex_hash, &mut d).ok().map(|()| d)
}

/// Current rows for what some notices named.
struct Changes {
    /// Hashes whose entries and subscriber are replaced by what was read.
    hashes: Vec<Digest>,
    /// The subscribers read, by hash or by id: each replaces what is held
    /// for its hash. (A subscriber named by id and no longer there was
    /// deleted, and its delete sent the notice of its hash.)
    subscribers: Vec<SubscriberRow>,
    entries: Vec<EntryRow>,
}

impl Changes {
    fn apply(self, table: &mut Table) {
        // First forget what the notices name, then put back what is there now.
        for d in &self.hashes {
            table.set_subscriber(*d, None);
            table.set_entries(*d, Vec::new());
        }
        add_subscribers(table, self.subscribers);
        add_entries(table, self.entries);
    }
}

fn add_subscribers(table: &mut Table, rows: Vec<SubscriberRow>) {
    let mut grouped: HashMap<i64, (Digest, bool, Vec<u32>)> = HashMap::new();
    for (id, hash, restricted, list) in rows {
        let Some(d) = digest_of(&hash) else { continue };
        let list = list.map(|l| table.intern(&l));
        let slot = grouped
            .entry(id)
            .or_insert_with(|| (d, restricted, Vec::new()));
        slot.2.extend(list);
    }
    for (d, restricted, lists) in grouped.into_values() {
        let held = (restricted || !lists.is_empty()).then(|| Subscriber {
            restricted,
            lists: lists.into_boxed_slice(),
        });
        table.set_subscriber(d, held);
    }
}

fn add_entries(table: &mut Table, rows: Vec<EntryRow>) {
    let mut grouped: DigestMap<Vec<Entry>> = DigestMap::default();
    for (hash, scope, reason, expires_at) in rows {
        let (Some(d), Some(reason)) = (digest_of(&hash), Reason::parse(&reason)) else {
            continue;
        };
        let scope = table.intern(&scope);
        grouped.entry(d).or_default().push(Entry {
            expires_at,
            scope,
            reason,
        });
    }
    for (d, mut entries) in grouped {
        if let Some(p) = table.people.get(&d) {
            entries.extend(p.entries.iter().copied());
        }
        table.set_entries(d, entries);
    }
}

/// A subscriber's rows: one per confirmed list, or one with no list.
macro_rules! subscriber_rows {
    ($filter:literal) => {
        concat!(
            "SELECT p.id, p.email_hash, p.restricted, x.list_slug \
             FROM subscribers p LEFT JOIN subscriptions x \
               ON x.subscriber_id = p.id AND x.status = 'confirmed' WHERE ",
            $filter
        )
    };
}

/// Reads the current rows for the notices' hashes and subscriber ids.
async fn reread(pool: &PgPool, pending: &Pending) -> Result<Changes, sqlx::Error> {
    let hashes: Vec<Digest> = pending.hashes.iter().filter_map(|h| digest_of(h)).collect();
    let hash_texts: Vec<&str> = pending.hashes.iter().map(String::as_str).collect();
    let ids: Vec<i64> = pending.ids.iter().copied().collect();
    if pending.len() == 0 {
        return Ok(Changes {
            hashes,
            subscribers: Vec::new(),
            entries: Vec::new(),
        });
    }
    let subscribers: Vec<SubscriberRow> =
        sqlx::query_as(subscriber_rows!("p.email_hash = ANY($1) OR p.id = ANY($2)"))
            .bind(&hash_texts)
            .bind(&ids)
            .fetch_all(pool)
            .await?;
    let entries: Vec<EntryRow> = if pending.hashes.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(
            "SELECT s.email_hash, s.scope, s.reason, s.expires_at FROM suppressions s \
             WHERE s.email_hash = ANY($1)",
        )
        .bind(&hash_texts)
        .fetch_all(pool)
        .await?
    };
    Ok(Changes {
        hashes,
        subscribers,
        entries,
    })
}

/// Reads everything with something to say, a page at a time.
async fn load(pool: &PgPool) -> Result<Table, sqlx::Error> {
    let mut table = Table::default();
    let mut after = 0i64;
    loop {
        let last: Option<i64> = sqlx::query_scalar(
            "SELECT max(id) FROM (SELECT id FROM subscribers WHERE id > $1 ORDER BY id LIMIT $2) q",
        )
        .bind(after)
        .bind(LOAD_PAGE)
        .fetch_one(pool)
        .await?;
        let Some(last) = last else { break };
        let rows: Vec<SubscriberRow> = sqlx::query_as(subscriber_rows!(
            "p.id > $1 AND p.id <= $2 AND (p.restricted OR x.list_slug IS NOT NULL)"
        ))
        .bind(after)
        .bind(last)
        .fetch_all(pool)
        .await?;
        add_subscribers(&mut table, rows);
        after = last;
    }
    let mut after = 0i64;
    loop {
        let rows: Vec<(i64, String, String, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT s.id, s.email_hash, s.scope, s.reason, s.expires_at FROM suppressions s \
             WHERE s.id > $1 ORDER BY s.id LIMIT $2",
        )
        .bind(after)
        .bind(LOAD_PAGE)
        .fetch_all(pool)
        .await?;
        let Some(last) = rows.last().map(|r| r.0) else {
            break;
        };
        after = last;
        add_entries(
            &mut table,
            rows.into_iter()
                .map(|(_, h, s, r, e)| (h, s, r, e))
                .collect(),
        );
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(b: u8) -> Digest {
        [b; 32]
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn every_trigger_statement_names_its_trigger() {
        let mut created: Vec<&str> = migration::TRIGGERS
            .iter()
            .map(|s| trigger_name(s).unwrap())
            .collect();
        let mut dropped: Vec<&str> = migration::DROP_TRIGGERS
            .iter()
            .map(|s| trigger_name(s).unwrap())
            .collect();
        created.sort_unstable();
        dropped.sort_unstable();
        assert_eq!(created, dropped);
        assert!(created.iter().all(|n| n.starts_with("listguard_check_")));
    }

    #[test]
    fn answers_as_the_statement_does() {
        let mut t = Table::default();
        add_entries(
            &mut t,
            vec![
                (
                    hex::encode(d(1)),
                    "*".into(),
                    "bounce".into(),
                    at("2026-02-01T00:00:00Z"),
                ),
                (
                    hex::encode(d(1)),
                    "news".into(),
                    "unsubscribed".into(),
                    at("2026-03-01T00:00:00Z"),
                ),
            ],
        );
        add_subscribers(
            &mut t,
            vec![
                (7, hex::encode(d(1)), false, Some("news".into())),
                (8, hex::encode(d(2)), true, None),
                (9, hex::encode(d(3)), false, None),
            ],
        );
        let now = at("2026-01-15T00:00:00Z");
        let a = t.answer(&d(1), Some("news"), now);
        assert!(a.suppressed && a.subscribed && !a.restricted);
        assert_eq!(a.reason.as_deref(), Some("unsubscribed"));
        let a = t.answer(&d(1), Some("events"), now);
        assert_eq!(a.reason.as_deref(), Some("bounce"));
        assert!(!a.subscribed);
        let a = t.answer(&d(1), Some("news"), at("2026-03-01T00:00:00Z"));
        assert!(!a.suppressed, "an entry stops counting at its expiry");
        assert!(t.answer(&d(2), None, now).restricted);
        assert!(!t.people.contains_key(&d(3)), "nothing to say, not held");
        // Subscriber 7 read again with no confirmed list: its subscription
        // goes, its entries stay.
        Changes {
            hashes: vec![],
            subscribers: vec![(7, hex::encode(d(1)), false, None)],
            entries: vec![],
        }
        .apply(&mut t);
        let a = t.answer(&d(1), Some("news"), now);
        assert!(a.suppressed && !a.subscribed);
        // A notice of its hash with nothing left drops it altogether.
        Changes {
            hashes: vec![d(1)],
            subscribers: vec![],
            entries: vec![],
        }
        .apply(&mut t);
        assert!(!t.people.contains_key(&d(1)));
    }
}
