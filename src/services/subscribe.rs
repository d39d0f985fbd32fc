//! Double opt-in, step one: someone sent the signup form. Whatever is known
//! about the address, the caller answers the same way; only what happens
//! behind differs. A confirmation mail is queued in the outbox (never sent
//! inside the request), at most once per cooldown and a few times a day.
use chrono::{DateTime, Utc};
use entity::{consent_event, subscriber, subscription, token};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, IntoActiveModel,
    QueryFilter, Set, Statement,
};

use super::{
    RequestContext,
    consent::{self, ConsentKind},
    is_unique_violation, suppression,
};
use crate::{
    config::ListConfig,
    crypto::{random_token, sha256_hex},
    domain::{DisplayName, EmailAddress},
    i18n::Locale,
    outbox::{
        self, JobKind,
        mail_worker::{FIRST_CONFIRMATIONS, FirstMail, HANDOFF_LEASE, HandedOff, MailJob},
    },
    secrets::log_id,
    state::AppState,
};

/// The status of a subscription waiting for its confirmation.
const PENDING: &str = "pending";
/// The purpose of the token in a confirmation mail.
const CONFIRM_PURPOSE: &str = "confirm";

/// A valid signup.
#[derive(Debug)]
pub struct NewSubscription {
    pub email: EmailAddress,
    pub name: Option<DisplayName>,
    pub list: ListConfig,
    pub locale: Locale,
    pub source: Option<String>,
}

/// What happened, for logs and tests; never shown to the requester.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeOutcome {
    MailQueued,
    AlreadyConfirmed,
    Suppressed,
    Restricted,
    CooldownActive,
    DailyLimitReached,
}

/// One signup waiting in the batcher.
pub struct SignupJob {
    pub req: NewSubscription,
    pub ctx: RequestContext,
    pub hash: String,
}

/// Records the signup and queues the confirmation mail when allowed. Goes
/// through the signup batcher, which shares transactions between concurrent
/// requests.
#[tracing::instrument(skip_all, fields(list = %req.list.slug))]
pub async fn subscribe(
    state: &AppState,
    req: NewSubscription,
    ctx: RequestContext,
) -> anyhow::Result<SubscribeOutcome> {
    let hash = state.keys.hasher.hash(&req.email);
    let log = log_id(&hash).to_string();
    let outcome = state.signups().submit(SignupJob { req, ctx, hash }).await?;
    tracing::info!(subject = %log, outcome = ?outcome, "signup handled");
    Ok(outcome)
}

/// Carries out a batch of signups. Addresses the database has never seen
/// take set-based statements: on PostgreSQL one statement, committed on its
/// own, that leaves out any address that turns out to be known; on SQLite
/// multi-row inserts in the batch's transaction. Everything else takes the
/// general path in one shared transaction. Should a statement fail (a
/// concurrent replica inserted the same address), each signup that has no
/// outcome yet is retried on its own.
pub async fn subscribe_batch(
    state: &AppState,
    jobs: Vec<SignupJob>,
) -> Vec<anyhow::Result<SubscribeOutcome>> {
    let mut outcomes: Vec<Option<SubscribeOutcome>> = vec![None; jobs.len()];
    match try_batch(state, &jobs, &mut outcomes).await {
        Ok(()) => {}
        Err(e) if is_unique_violation(&e) => {
            tracing::debug!(
                size = jobs.len(),
                "a signup batch met a concurrent insert; retrying one by one"
            );
        }
        Err(e) => {
            state
                .signup_batch_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(error = %e, size = jobs.len(), "signup batch failed; retrying one by one");
        }
    }
    let mut out = Vec::with_capacity(jobs.len());
    for (job, outcome) in jobs.iter().zip(outcomes) {
        out.push(match outcome {
            Some(o) => Ok(o),
            None => subscribe_one(state, &job.req, &job.ctx, &job.hash).await,
        });
    }
    if out
        .iter()
        .any(|o| matches!(o, Ok(SubscribeOutcome::MailQueued)))
    {
        state.outbox_notify.notify_one();
    }
    out
}

/// One signup in its own transaction, retried when a concurrent request won
/// the race to insert the same address.
async fn subscribe_one(
    state: &AppState,
    req: &NewSubscription,
    ctx: &RequestContext,
    hash: &str,
) -> anyhow::Result<SubscribeOutcome> {
    for attempt in 0..3 {
        match try_subscribe(state, req, ctx, hash).await {
            Err(e) if attempt < 2 && is_unique_violation(&e) => continue,
            Err(e) => return Err(e.into()),
            Ok(outcome) => return Ok(outcome),
        }
    }
    unreachable!("the loop returns on its last attempt")
}

/// A signup batch's address the database has never seen, with everything
/// its rows hold. Serialised, it is the one parameter of the PostgreSQL
/// statement that inserts a whole batch.
#[derive(serde::Serialize)]
struct FreshSignup<'a> {
    #[serde(skip)]
    job: &'a SignupJob,
    email: &'a str,
    email_hash: &'a str,
    name: Option<&'a str>,
    locale: &'static str,
    list_slug: &'a str,
    source: Option<&'a str>,
    token_hash: String,
    ip: Option<&'a str>,
    user_agent: Option<&'a str>,
    consent_version: &'a str,
    consent_sha256: String,
    /// The confirmation mail, with the address and the raw token: it
    /// travels in memory only (see [`HandedOff`]).
    #[serde(skip)]
    mail: MailJob,
}

/// Fills in `outcomes`. A signup keeps `None` only when the statement that
/// would have carried it failed, so that nothing of it was committed.
async fn try_batch(
    state: &AppState,
    jobs: &[SignupJob],
    outcomes: &mut [Option<SubscribeOutcome>],
) -> Result<(), DbErr> {
    use std::collections::HashSet;

    let now = state.now();
    // The first signup of each address may take the fast path; a repeat
    // within the batch takes the general one, after it.
    let mut seen = HashSet::new();
    let firsts: Vec<usize> = (0..jobs.len())
        .filter(|&i| seen.insert(jobs[i].hash.as_str()))
        .collect();
    let rows = fresh_rows(state, jobs, &firsts, now).await?;

    if state.db.get_database_backend() == DbBackend::Postgres {
        let (written, handed) = insert_fresh_postgres(state, &rows, now).await?;
        hand_off(state, handed);
        for r in written {
            outcomes[firsts[r]] = Some(SubscribeOutcome::MailQueued);
        }
        if outcomes.iter().all(Option::is_some) {
            return Ok(());
        }
        let tx = state.begin_write().await?;
        let mut general = Vec::new();
        for (i, j) in jobs.iter().enumerate() {
            if outcomes[i].is_none() {
                general.push((
                    i,
                    subscribe_in(state, &*tx, &j.req, &j.ctx, &j.hash, now).await?,
                ));
            }
        }
        tx.commit().await?;
        for (i, o) in general {
            outcomes[i] = Some(o);
        }
        return Ok(());
    }

    let tx = state.begin_write().await?;
    let conn = &*tx;
    // Anything the database already knows about an address takes the general path.
    let known = known_addresses(conn, jobs).await?;
    let (fresh, _): (Vec<_>, Vec<_>) = firsts
        .iter()
        .zip(rows)
        .partition(|(i, _)| !known.contains(&jobs[**i].hash));
    let (fresh, rows): (HashSet<usize>, Vec<FreshSignup>) =
        fresh.into_iter().map(|(i, r)| (*i, r)).unzip();
    let handed = if rows.is_empty() {
        None
    } else {
        insert_fresh(state, conn, &rows, now).await?
    };
    let mut all = Vec::with_capacity(jobs.len());
    for (i, j) in jobs.iter().enumerate() {
        all.push(if fresh.contains(&i) {
            SubscribeOutcome::MailQueued
        } else {
            subscribe_in(state, conn, &j.req, &j.ctx, &j.hash, now).await?
        });
    }
    tx.commit().await?;
    hand_off(state, handed);
    for (slot, o) in outcomes.iter_mut().zip(all) {
        *slot = Some(o);
    }
    Ok(())
}

/// The rows of the signups `which` of the batch, as if their addresses were
/// all new: a fresh token and the confirmation mail each.
async fn fresh_rows<'a>(
    state: &AppState,
    jobs: &'a [SignupJob],
    which: &[usize],
    now: DateTime<Utc>,
) -> Result<Vec<FreshSignup<'a>>, DbErr> {
    let mut shas: std::collections::HashMap<(&str, &str), String> = Default::default();
    let mut rows = Vec::with_capacity(which.len());
    for &i in which {
        let j = &jobs[i];
        let list = &j.req.list;
        let key = (list.slug.as_str(), list.consent_version.as_str());
        if let std::collections::hash_map::Entry::Vacant(slot) = shas.entry(key) {
            slot.insert(stored_consent_text(state, list, now).await?);
        }
        let raw = random_token();
        let mail = MailJob::Confirm {
            to: j.req.email.as_str().to_string(),
            name: j.req.name.as_ref().map(|n| n.as_str().to_string()),
            list: list.slug.clone(),
            token: raw.clone(),
            locale: j.req.locale.code().to_string(),
        };
        rows.push(FreshSignup {
            job: j,
            email: j.req.email.as_str(),
            email_hash: &j.hash,
            name: j.req.name.as_ref().map(|n| n.as_str()),
            locale: j.req.locale.code(),
            list_slug: &list.slug,
            source: j.req.source.as_deref(),
            token_hash: sha256_hex(raw.as_bytes()),
            ip: j.ctx.ip.as_deref(),
            user_agent: j.ctx.user_agent.as_deref(),
            consent_version: &list.consent_version,
            consent_sha256: shas[&key].clone(),
            mail,
        });
    }
    Ok(rows)
}

/// The SHA-256 of the list's consent text, the text stored first: in a
/// transaction of its own, once per process and version.
async fn stored_consent_text(
    state: &AppState,
    list: &crate::config::ListConfig,
    now: DateTime<Utc>,
) -> Result<String, DbErr> {
    if state.consent_text_stored(list) {
        return Ok(sha256_hex(list.consent_text.as_bytes()));
    }
    let tx = state.begin_write().await?;
    let sha = consent::ensure_text(&*tx, list, now).await?;
    tx.commit().await?;
    state.mark_consent_text_stored(list);
    Ok(sha)
}

/// The `tokens` row of a confirmation token that its subscription's row does
/// not hold: one sent again, or the first once the subscription is confirmed.
/// It names its subscription only: the subscriber is the subscription's, and
/// deleting either deletes the token through the subscription. (A second
/// reference would cost a foreign-key check.)
pub(super) fn confirm_token(
    token_hash: String,
    subscription_id: i64,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> token::ActiveModel {
    token::ActiveModel {
        token_hash: Set(token_hash),
        purpose: Set(CONFIRM_PURPOSE.into()),
        subscription_id: Set(Some(subscription_id)),
        subscriber_id: Set(None),
        created_at: Set(now),
        expires_at: Set(expires_at),
        used_at: Set(None),
        ..Default::default()
    }
}

/// The subscriptions of `ids` still waiting for the first link, with its
/// token's hash: pending, holding it, and their subscriber not restricted.
/// (One deleted, confirmed through a link sent again, or restricted is
/// left out.)
fn waiting_sql(backend: DbBackend, columns: &str, ids: &[i64]) -> Statement {
    let (wanted, list) = crate::db::id_in(backend, "s.id", 1, ids);
    Statement::from_sql_and_values(
        backend,
        format!(
            "SELECT {columns} FROM subscriptions s JOIN subscribers b ON b.id = s.subscriber_id \
             WHERE {wanted} AND s.status = '{PENDING}' AND s.token_hash IS NOT NULL \
             AND NOT b.restricted"
        ),
        [list],
    )
}

/// Which of the subscriptions `ids` still wait for their first link (see
/// [`waiting_sql`]): their ids with the link's token hash.
pub async fn waiting_first_links<C: ConnectionTrait>(
    conn: &C,
    ids: &[i64],
) -> Result<std::collections::HashMap<i64, String>, DbErr> {
    let backend = conn.get_database_backend();
    conn.query_all_raw(waiting_sql(backend, "s.id, s.token_hash", ids))
        .await?
        .iter()
        .map(|r| Ok((r.try_get("", "id")?, r.try_get("", "token_hash")?)))
        .collect()
}

/// New first mails for those of the subscriptions `ids` still waiting for
/// theirs, whose batch's process stopped before sending them (the raw
/// tokens were only in its memory): a new link each, kept in `tokens` like
/// a link sent again, so that one already delivered keeps working too.
pub async fn reissue_first_links(
    state: &AppState,
    ids: &[i64],
    now: DateTime<Utc>,
) -> Result<Vec<FirstMail>, DbErr> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let tx = state.begin_write().await?;
    let backend = tx.get_database_backend();
    let waiting = tx
        .query_all_raw(waiting_sql(
            backend,
            "s.id, s.list_slug, b.email, b.email_hash, b.name, b.locale",
            ids,
        ))
        .await?;
    let expires = state.config.retention.pending.after(now);
    let mut mails = Vec::with_capacity(waiting.len());
    for r in &waiting {
        let raw = random_token();
        mails.push(FirstMail {
            subscription_id: r.try_get("", "id")?,
            subject_hash: r.try_get("", "email_hash")?,
            token_hash: sha256_hex(raw.as_bytes()),
            mail: MailJob::Confirm {
                to: r.try_get("", "email")?,
                name: r.try_get("", "name")?,
                list: r.try_get("", "list_slug")?,
                token: raw,
                locale: r.try_get("", "locale")?,
            },
        });
    }
    if !mails.is_empty() {
        token::Entity::insert_many(
            mails
                .iter()
                .map(|m| confirm_token(m.token_hash.clone(), m.subscription_id, now, expires)),
        )
        .exec_without_returning(&*tx)
        .await?;
        subscription::Entity::update_many()
            .col_expr(
                subscription::Column::PendingExpiresAt,
                sea_orm::sea_query::Expr::value(Some(expires)),
            )
            .filter(subscription::Column::Id.is_in(mails.iter().map(|m| m.subscription_id)))
            .exec(&*tx)
            .await?;
    }
    tx.commit().await?;
    Ok(mails)
}

/// The unsent jobs of first mails (see [`MailJob::FirstConfirmations`])
/// that name any of the subscriptions `ids`, each with how many of them it
/// names: a person's queued confirmation mail, for an export to list and an
/// erasure to count as withdrawn. (Such a job holds no address; deleting
/// the subscription is what stops its mail.)
pub async fn first_mail_jobs_naming<C: ConnectionTrait>(
    conn: &C,
    ids: &[i64],
) -> Result<Vec<(entity::outbox::Model, usize)>, DbErr> {
    use entity::outbox;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let jobs = outbox::Entity::find()
        .filter(outbox::Column::Kind.eq(JobKind::Mail.as_str()))
        .filter(crate::outbox::status_in(&["pending", "in_flight"]))
        .filter(outbox::Column::SubjectHash.is_null())
        .filter(outbox::Column::Payload.contains(FIRST_CONFIRMATIONS))
        .all(conn)
        .await?;
    Ok(jobs
        .into_iter()
        .filter_map(|j| {
            let named = match serde_json::from_str(j.payload.as_deref()?) {
                Ok(MailJob::FirstConfirmations { subscriptions }) => {
                    subscriptions.iter().filter(|s| ids.contains(s)).count()
                }
                _ => 0,
            };
            (named > 0).then_some((j, named))
        })
        .collect())
}

/// Which of the batch's addresses the database holds anything about: a
/// suppression entry or a subscriber row (which holds the address's mail
/// limits). One statement (SQLite; PostgreSQL's batch statement asks the
/// same itself).
async fn known_addresses<C: ConnectionTrait>(
    conn: &C,
    jobs: &[SignupJob],
) -> Result<std::collections::HashSet<String>, DbErr> {
    let backend = conn.get_database_backend();
    let hashes: Vec<&str> = jobs.iter().map(|j| j.hash.as_str()).collect();
    let (set, value) = crate::db::string_set(backend, 1, &hashes);
    let sql = format!(
        "SELECT email_hash FROM suppressions WHERE email_hash IN ({set}) \
         UNION ALL SELECT email_hash FROM subscribers WHERE email_hash IN ({set})"
    );
    let rows = conn
        .query_all_raw(Statement::from_sql_and_values(backend, sql, [value]))
        .await?;
    rows.iter().map(|r| r.try_get("", "email_hash")).collect()
}

/// The rows of never-seen signups, table by table (SQLite), and one mail
/// job for all their first mails; answers the mails to hand off once the
/// transaction is committed.
async fn insert_fresh<C: ConnectionTrait>(
    state: &AppState,
    conn: &C,
    rows: &[FreshSignup<'_>],
    now: DateTime<Utc>,
) -> Result<Option<HandedOff>, DbErr> {
    use std::collections::HashMap;

    let config = &state.config;
    let token_expires = config.retention.pending.after(now);
    let today = mail_day(now);
    let people = subscriber::Entity::insert_many(rows.iter().map(|r| subscriber::ActiveModel {
        email: Set(r.email.to_string()),
        email_hash: Set(r.email_hash.to_string()),
        name: Set(r.name.map(str::to_string)),
        locale: Set(r.locale.to_string()),
        restricted: Set(false),
        created_at: Set(now),
        updated_at: Set(now),
        mail_day: Set(Some(today.clone())),
        mail_count: Set(1),
        mail_sent_at: Set(Some(now)),
        ..Default::default()
    }))
    .exec_with_returning(conn)
    .await?;
    let person_of: HashMap<&str, i64> = people
        .iter()
        .map(|p| (p.email_hash.as_str(), p.id))
        .collect();
    let subs = subscription::Entity::insert_many(rows.iter().map(|r| subscription::ActiveModel {
        subscriber_id: Set(person_of[r.email_hash]),
        list_slug: Set(r.list_slug.to_string()),
        status: Set(PENDING.into()),
        source: Set(r.source.map(str::to_string)),
        created_at: Set(now),
        confirmed_at: Set(None),
        pending_expires_at: Set(Some(token_expires)),
        token_hash: Set(Some(r.token_hash.clone())),
        ..Default::default()
    }))
    .exec_with_returning(conn)
    .await?;
    let sub_of: HashMap<i64, i64> = subs.iter().map(|s| (s.subscriber_id, s.id)).collect();
    consent_event::Entity::insert_many(rows.iter().map(|r| {
        consent::event_model(
            config,
            &r.job.req.list,
            sub_of[&person_of[r.email_hash]],
            r.email_hash,
            ConsentKind::Requested,
            r.job.req.source.clone(),
            &r.job.ctx,
            r.consent_sha256.clone(),
            now,
        )
    }))
    .exec_without_returning(conn)
    .await?;
    let subscriptions: Vec<i64> = rows
        .iter()
        .map(|r| sub_of[&person_of[r.email_hash]])
        .collect();
    let mut job = outbox::job_model(
        JobKind::Mail,
        &serde_json::to_value(MailJob::FirstConfirmations {
            subscriptions: subscriptions.clone(),
        })
        .map_err(|e| DbErr::Custom(e.to_string()))?,
        None,
        now,
    );
    let locked_until = state.mail_handoff.has_room().then(|| now + HANDOFF_LEASE);
    job.locked_until = Set(locked_until);
    let job = job.insert(conn).await?;
    Ok(locked_until.map(|locked_until| HandedOff {
        id: job.id,
        mails: rows
            .iter()
            .zip(subscriptions)
            .map(|(r, subscription_id)| first_mail(r, subscription_id))
            .collect(),
        locked_until,
    }))
}

/// The first mail of a signup written as `subscription_id`.
fn first_mail(row: &FreshSignup<'_>, subscription_id: i64) -> FirstMail {
    FirstMail {
        subscription_id,
        subject_hash: row.email_hash.to_string(),
        token_hash: row.token_hash.clone(),
        mail: row.mail.clone(),
    }
}

/// Gives this process's mail worker the first mails of a committed batch.
fn hand_off(state: &AppState, handed: Option<HandedOff>) {
    if let Some(h) = handed {
        state.mail_handoff.push(h);
    }
}

/// The rows of never-seen signups in one statement, committed on its own:
/// the batch travels as one JSON parameter and every table is filled by a
/// data-modifying CTE, so a batch costs one round trip and one prepared
/// statement whatever its size, where the SQLite path's four multi-row
/// inserts inside a transaction cost six round trips and a fresh plan for
/// each batch size. A row whose address the database knows (a suppression
/// entry or a subscriber row) is left out; the answer is the
/// positions in `rows` of those written, and their first mails for this
/// process's mail worker (unless its hand-off is full). An address that another
/// transaction (a webhook, another replica) inserts at the same moment makes
/// the statement fail on the unique key, and [`subscribe_batch`] then takes
/// the batch's signups one by one. (`ON CONFLICT DO NOTHING` would keep the
/// batch, but its speculative insertion cost every signup 5–8 % of the
/// throughput at 8 connections, for a race that is rare.)
async fn insert_fresh_postgres(
    state: &AppState,
    rows: &[FreshSignup<'_>],
    now: DateTime<Utc>,
) -> Result<(Vec<usize>, Option<HandedOff>), DbErr> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "WITH input AS ( \
               SELECT x.* FROM ROWS FROM (jsonb_to_recordset($1::jsonb) AS (email text, \
                 email_hash text, name text, locale text, list_slug text, source text, \
                 token_hash text, ip text, user_agent text, consent_version text, \
                 consent_sha256 text)) WITH ORDINALITY AS x(email, email_hash, \
                 name, locale, list_slug, source, token_hash, ip, user_agent, consent_version, \
                 consent_sha256, ord) \
               WHERE NOT EXISTS (SELECT 1 FROM suppressions k WHERE k.email_hash = x.email_hash) \
                 AND NOT EXISTS (SELECT 1 FROM subscribers k WHERE k.email_hash = x.email_hash) \
             ), people AS ( \
               INSERT INTO subscribers (email, email_hash, name, locale, restricted, created_at, \
                 updated_at, mail_day, mail_count, mail_sent_at) \
               SELECT email, email_hash, name, locale, false, $2, $2, $5, 1, $2 FROM input \
               RETURNING id, email_hash \
             ), subs AS ( \
               INSERT INTO subscriptions (subscriber_id, list_slug, status, source, created_at, \
                 pending_expires_at, token_hash) \
               SELECT p.id, i.list_slug, '{pending}', i.source, $2, $3, i.token_hash \
               FROM input i JOIN people p USING (email_hash) \
               RETURNING id, subscriber_id \
             ), pairs AS ( \
               SELECT i.*, s.id AS sub_id \
               FROM input i JOIN people p USING (email_hash) JOIN subs s ON s.subscriber_id = p.id \
             ), events AS ( \
               INSERT INTO consent_events (subscription_id, email_hash, list_slug, kind, occurred_at, ip, \
                 user_agent, source, consent_version, consent_sha256, privacy_policy_url) \
               SELECT sub_id, email_hash, list_slug, '{requested}', $2, ip, user_agent, source, \
                 consent_version, consent_sha256, $4 FROM pairs \
             ), mails AS ( \
               INSERT INTO outbox (kind, status, payload, subject_hash, attempts, next_attempt_at, \
                 locked_until, created_at, updated_at) \
               SELECT '{mail}', 'pending', json_build_object('template', '{first}', \
                 'subscriptions', json_agg(sub_id ORDER BY ord))::text, NULL, 0, $2, $6, $2, $2 \
               FROM pairs HAVING count(*) > 0 \
               RETURNING id \
             ) \
             SELECT p.ord, p.sub_id, m.id AS job FROM pairs p CROSS JOIN mails m",
            pending = PENDING,
            requested = ConsentKind::Requested.as_str(),
            mail = JobKind::Mail.as_str(),
            first = FIRST_CONFIRMATIONS,
        )
    });
    if rows.is_empty() {
        return Ok((Vec::new(), None));
    }
    let config = &state.config;
    let input = serde_json::to_string(rows).map_err(|e| DbErr::Custom(e.to_string()))?;
    // The confirmation mails are reserved for this process's mail worker
    // (see `Handoff`), unless it holds more than it can.
    let locked_until = state.mail_handoff.has_room().then(|| now + HANDOFF_LEASE);
    let stmt = Statement::from_sql_and_values(
        DbBackend::Postgres,
        SQL.as_str(),
        [
            input.into(),
            now.into(),
            config.retention.pending.after(now).into(),
            config.org.privacy_policy_url.clone().into(),
            mail_day(now).into(),
            locked_until.into(),
        ],
    );
    let written = state.db.query_all_raw(stmt).await?;
    let mut positions = Vec::with_capacity(written.len());
    let mut job = None;
    let mut mails = Vec::new();
    for row in &written {
        let ord: i64 = row.try_get("", "ord")?;
        let i = usize::try_from(ord - 1)
            .ok()
            .filter(|&i| i < rows.len())
            .ok_or_else(|| {
                DbErr::Custom("the signup insert answered a row it was not given".into())
            })?;
        positions.push(i);
        job = Some(row.try_get::<i64>("", "job")?);
        mails.push(first_mail(&rows[i], row.try_get("", "sub_id")?));
    }
    let handed = job.zip(locked_until).map(|(id, locked_until)| HandedOff {
        id,
        mails,
        locked_until,
    });
    Ok((positions, handed))
}

/// The UTC day that a subscriber's mail count belongs to.
fn mail_day(now: DateTime<Utc>) -> String {
    now.format("%Y-%m-%d").to_string()
}

async fn try_subscribe(
    state: &AppState,
    req: &NewSubscription,
    ctx: &RequestContext,
    hash: &str,
) -> Result<SubscribeOutcome, DbErr> {
    let now = state.now();
    let tx = state.begin_write().await?;
    let outcome = subscribe_in(state, &*tx, req, ctx, hash, now).await?;
    tx.commit().await?;
    Ok(outcome)
}

async fn subscribe_in<C: ConnectionTrait>(
    state: &AppState,
    conn: &C,
    req: &NewSubscription,
    ctx: &RequestContext,
    hash: &str,
    now: DateTime<Utc>,
) -> Result<SubscribeOutcome, DbErr> {
    let config = &state.config;
    let list = &req.list;
    if suppression::blocks_opt_in(conn, hash, &list.slug, now).await? {
        return Ok(SubscribeOutcome::Suppressed);
    }
    let existing = subscriber::Entity::find()
        .filter(subscriber::Column::EmailHash.eq(hash))
        .one(conn)
        .await?;
    if existing.as_ref().is_some_and(|s| s.restricted) {
        return Ok(SubscribeOutcome::Restricted);
    }
    let existing_sub = match &existing {
        Some(s) => {
            subscription::Entity::find()
                .filter(subscription::Column::SubscriberId.eq(s.id))
                .filter(subscription::Column::ListSlug.eq(&list.slug))
                .one(conn)
                .await?
        }
        None => None,
    };
    if existing_sub
        .as_ref()
        .is_some_and(|s| s.status == "confirmed")
    {
        return Ok(SubscribeOutcome::AlreadyConfirmed);
    }

    // Mail limits, kept on the subscriber row: confirmation mail only ever
    // goes to an address that has one.
    let today = mail_day(now);
    let sent_today = match &existing {
        Some(s) if s.mail_day.as_deref() == Some(today.as_str()) => s.mail_count,
        _ => 0,
    };
    if existing
        .as_ref()
        .and_then(|s| s.mail_sent_at)
        .is_some_and(|last| config.limits.resend_cooldown.after(last) > now)
    {
        return Ok(SubscribeOutcome::CooldownActive);
    }
    if sent_today >= config.limits.confirmations_per_address_per_day as i32 {
        return Ok(SubscribeOutcome::DailyLimitReached);
    }

    let name = req.name.as_ref().map(|n| n.as_str().to_string());
    let subscriber = match existing {
        Some(s) => {
            // Only a pending signup may change the name: a stranger must not
            // be able to rename a confirmed subscriber through the form.
            let has_confirmed = subscription::Entity::find()
                .filter(subscription::Column::SubscriberId.eq(s.id))
                .filter(subscription::Column::Status.eq("confirmed"))
                .one(conn)
                .await?
                .is_some();
            let renamed = !has_confirmed && name.is_some() && name != s.name;
            let mut am = s.into_active_model();
            if renamed {
                am.name = Set(name.clone());
                am.locale = Set(req.locale.code().to_string());
                am.updated_at = Set(now);
            }
            am.mail_day = Set(Some(today));
            am.mail_count = Set(sent_today + 1);
            am.mail_sent_at = Set(Some(now));
            am.update(conn).await?
        }
        None => {
            subscriber::ActiveModel {
                email: Set(req.email.as_str().to_string()),
                email_hash: Set(hash.to_string()),
                name: Set(name),
                locale: Set(req.locale.code().to_string()),
                restricted: Set(false),
                created_at: Set(now),
                updated_at: Set(now),
                mail_day: Set(Some(today)),
                mail_count: Set(1),
                mail_sent_at: Set(Some(now)),
                ..Default::default()
            }
            .insert(conn)
            .await?
        }
    };

    // A new subscription holds its first token on its row; a token sent
    // again gets a `tokens` row.
    let raw = random_token();
    let token_hash = sha256_hex(raw.as_bytes());
    let token_expires = config.retention.pending.after(now);
    let sub = match existing_sub {
        Some(s) => {
            let mut am = s.into_active_model();
            am.pending_expires_at = Set(Some(token_expires));
            let sub = am.update(conn).await?;
            confirm_token(token_hash, sub.id, now, token_expires)
                .insert(conn)
                .await?;
            sub
        }
        None => {
            subscription::ActiveModel {
                subscriber_id: Set(subscriber.id),
                list_slug: Set(list.slug.clone()),
                status: Set(PENDING.into()),
                source: Set(req.source.clone()),
                created_at: Set(now),
                confirmed_at: Set(None),
                pending_expires_at: Set(Some(token_expires)),
                token_hash: Set(Some(token_hash)),
                ..Default::default()
            }
            .insert(conn)
            .await?
        }
    };

    consent::record(
        conn,
        config,
        list,
        sub.id,
        hash,
        ConsentKind::Requested,
        req.source.clone(),
        ctx,
        now,
    )
    .await?;

    let job = MailJob::Confirm {
        to: subscriber.email.clone(),
        name: subscriber.name.clone(),
        list: list.slug.clone(),
        token: raw,
        locale: req.locale.code().to_string(),
    };
    outbox::enqueue(
        conn,
        JobKind::Mail,
        &serde_json::to_value(&job).map_err(|e| DbErr::Custom(e.to_string()))?,
        Some(hash),
        now,
    )
    .await?;
    Ok(SubscribeOutcome::MailQueued)
}
