//! The suppression list: keyed address hashes, scoped to one list or all (`*`),
//! each with a reason, a source and an expiry. An entry stops counting at its
//! `expires_at`; the purge deletes it physically.
use chrono::{DateTime, Utc};
use entity::suppression;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryFilter, Set,
    Statement, sea_query::OnConflict,
};

use crate::{config::Config, domain::EmailAddress, state::AppState};

/// Scope value that means "every list".
pub const ALL_LISTS: &str = "*";

/// Why an address is suppressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Unsubscribed,
    Bounce,
    Complaint,
    Blocked,
    Manual,
    Erased,
}

impl Reason {
    pub const ALL: [Self; 6] = [
        Self::Unsubscribed,
        Self::Bounce,
        Self::Complaint,
        Self::Blocked,
        Self::Manual,
        Self::Erased,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unsubscribed => "unsubscribed",
            Self::Bounce => "bounce",
            Self::Complaint => "complaint",
            Self::Blocked => "blocked",
            Self::Manual => "manual",
            Self::Erased => "erased",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "unsubscribed" => Self::Unsubscribed,
            "bounce" => Self::Bounce,
            "complaint" => Self::Complaint,
            "blocked" => Self::Blocked,
            "manual" => Self::Manual,
            "erased" => Self::Erased,
            _ => return None,
        })
    }

    /// After these the person may opt in again; confirming removes the entry.
    pub fn allows_opt_in(self) -> bool {
        matches!(self, Self::Unsubscribed | Self::Erased)
    }
}

/// Where a suppression came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    OneClick,
    Link,
    Admin,
    Mailchimp,
    Mandrill,
    Reconcile,
    PrivacyRequest,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OneClick => "one_click",
            Self::Link => "link",
            Self::Admin => "admin",
            Self::Mailchimp => "mailchimp",
            Self::Mandrill => "mandrill",
            Self::Reconcile => "reconcile",
            Self::PrivacyRequest => "privacy_request",
        }
    }
}

/// The entries that count for `list` now: scoped to it or to all lists.
pub async fn active_for<C: ConnectionTrait>(
    conn: &C,
    email_hash: &str,
    list: &str,
    now: DateTime<Utc>,
) -> Result<Vec<suppression::Model>, DbErr> {
    suppression::Entity::find()
        .filter(suppression::Column::EmailHash.eq(email_hash))
        .filter(
            Condition::any()
                .add(suppression::Column::Scope.eq(list))
                .add(suppression::Column::Scope.eq(ALL_LISTS)),
        )
        .filter(suppression::Column::ExpiresAt.gt(now))
        .all(conn)
        .await
}

/// Whether an entry for `list` forbids sending a confirmation mail.
pub async fn blocks_opt_in<C: ConnectionTrait>(
    conn: &C,
    email_hash: &str,
    list: &str,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    Ok(active_for(conn, email_hash, list, now)
        .await?
        .iter()
        .any(|e| Reason::parse(&e.reason).is_none_or(|r| !r.allows_opt_in())))
}

/// Writes (or renews) an entry; its expiry follows `retention`.
#[allow(clippy::too_many_arguments)]
pub async fn add<C: ConnectionTrait>(
    conn: &C,
    config: &Config,
    email_hash: &str,
    scope: &str,
    reason: Reason,
    source: Source,
    mailchimp_hash: Option<String>,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let row = entry(
        config,
        email_hash,
        scope,
        reason,
        source,
        mailchimp_hash,
        now,
    );
    add_many(conn, config, vec![row]).await
}

/// An administrator's entry (`POST /v1/suppressions`, `listguard suppress
/// add`), in one transaction with what Mailchimp must be told: every
/// Mailchimp-mapped list in `scope` gets its member set to `unsubscribed`,
/// so that Mailchimp does not mail an address suppressed here. The job holds
/// only the Mailchimp subscriber hash; a member Mailchimp does not have is
/// nothing to do. Answers the entry as stored.
pub async fn add_by_admin(
    state: &AppState,
    email: &EmailAddress,
    scope: &str,
    reason: Reason,
) -> Result<suppression::Model, DbErr> {
    let config = &state.config;
    let hash = state.keys.hasher.hash(email);
    let now = state.now();
    let member = config
        .mailchimp_mapped(scope)
        .then(|| email.mailchimp_hash());
    let tx = state.begin_write().await?;
    add(
        &*tx,
        config,
        &hash,
        scope,
        reason,
        Source::Admin,
        member.clone(),
        now,
    )
    .await?;
    let queued = match &member {
        Some(member) => {
            let lists: Vec<&str> = config
                .lists
                .iter()
                .filter(|l| scope == ALL_LISTS || l.slug == scope)
                .map(|l| l.slug.as_str())
                .collect();
            crate::mailchimp::jobs::queue_unsubscribes(&*tx, config, lists, member, now).await?
        }
        None => false,
    };
    let row = suppression::Entity::find()
        .filter(suppression::Column::EmailHash.eq(&hash))
        .filter(suppression::Column::Scope.eq(scope))
        .one(&*tx)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("the entry just written".into()))?;
    tx.commit().await?;
    if queued {
        state.sync_notify.notify_one();
    }
    state.events_may_be_queued();
    Ok(row)
}

/// The row of a new entry; its expiry follows `retention`.
#[allow(clippy::too_many_arguments)]
pub fn entry(
    config: &Config,
    email_hash: &str,
    scope: &str,
    reason: Reason,
    source: Source,
    mailchimp_hash: Option<String>,
    now: DateTime<Utc>,
) -> suppression::ActiveModel {
    suppression::ActiveModel {
        email_hash: Set(email_hash.to_string()),
        scope: Set(scope.to_string()),
        reason: Set(reason.as_str().to_string()),
        source: Set(source.as_str().to_string()),
        created_at: Set(now),
        expires_at: Set(config.suppression_retention(reason.as_str()).after(now)),
        mailchimp_hash: Set(mailchimp_hash),
        ..Default::default()
    }
}

/// Writes (or renews, where one for the same address and scope exists) the
/// entries, in one statement, and queues a `suppression.added` event for
/// each (by its hash only) where an endpoint takes them.
pub async fn add_many<C: ConnectionTrait>(
    conn: &C,
    config: &Config,
    rows: Vec<suppression::ActiveModel>,
) -> Result<(), DbErr> {
    use crate::events::{self, EventType};
    if rows.is_empty() {
        return Ok(());
    }
    if events::wanted(config, EventType::SuppressionAdded) {
        for row in &rows {
            let data = serde_json::json!({
                "email_hash": row.email_hash.clone().unwrap(),
                "scope": row.scope.clone().unwrap(),
                "reason": row.reason.clone().unwrap(),
                "source": row.source.clone().unwrap(),
                "expires_at": row.expires_at.clone().unwrap(),
            });
            let now = row.created_at.clone().unwrap();
            events::queue(conn, config, EventType::SuppressionAdded, data, None, now).await?;
        }
    }
    suppression::Entity::insert_many(rows)
        .on_conflict(
            OnConflict::columns([suppression::Column::EmailHash, suppression::Column::Scope])
                .update_columns([
                    suppression::Column::Reason,
                    suppression::Column::Source,
                    suppression::Column::CreatedAt,
                    suppression::Column::ExpiresAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(conn)
        .await?;
    Ok(())
}

/// Removes the entries that a new confirmation for `list` lifts: those that
/// allow opting in again, scoped to the list or to all lists.
pub async fn lift_on_confirm<C: ConnectionTrait>(
    conn: &C,
    email_hash: &str,
    list: &str,
) -> Result<(), DbErr> {
    suppression::Entity::delete_many()
        .filter(suppression::Column::EmailHash.eq(email_hash))
        .filter(
            Condition::any()
                .add(suppression::Column::Scope.eq(list))
                .add(suppression::Column::Scope.eq(ALL_LISTS)),
        )
        .filter(
            suppression::Column::Reason
                .is_in([Reason::Unsubscribed.as_str(), Reason::Erased.as_str()]),
        )
        .exec(conn)
        .await?;
    Ok(())
}

/// One address's answer to a bulk check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub suppressed: bool,
    pub reason: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub subscribed: bool,
    pub restricted: bool,
}

impl CheckResult {
    /// Senders mail only where this is true.
    pub fn mailable(&self) -> bool {
        self.subscribed && !self.suppressed && !self.restricted
    }
}

/// Checks addresses as sent, for `list` (or any list when `None`): each with
/// its answer, or `None` where it is not a valid address. Answers in the
/// order given.
///
/// On PostgreSQL a serving process answers from its copy in memory once the
/// copy has caught up with every change committed before the check began
/// (`check_cache`); while it has none, or cannot tell, the database answers.
/// There a large check goes in two halves, each parsed, hashed and looked up
/// on a task of its own and on its own pooled connection: both cores parse
/// and hash, and the database answers one half while the other is still
/// being hashed.
pub async fn check_addresses(
    state: &AppState,
    list: Option<&str>,
    mut emails: Vec<String>,
) -> Result<Vec<(String, Option<CheckResult>)>, DbErr> {
    let now = state.now();
    if let Some(cache) = &state.check_cache {
        cache.want();
        if cache.is_ready() {
            let pool = state.db.get_postgres_connection_pool();
            let (caught_up, hashed) = tokio::join!(cache.catch_up(pool), digest_all(state, emails));
            let (emails, digests) = hashed?;
            if caught_up && let Some(answers) = cache.answer(list, &digests, now) {
                state.metrics.observe_check(true);
                return Ok(emails.into_iter().zip(answers).collect());
            }
            state.metrics.observe_check(false);
            let hashes = digests.iter().map(|d| d.map(hex::encode)).collect();
            return ask_database(state, list, emails, hashes, now).await;
        }
    }
    state.metrics.observe_check(false);
    if state.db.get_database_backend() != DbBackend::Postgres || emails.len() < 1_000 {
        return check_run(state, list, emails, now).await;
    }
    let back = emails.split_off(emails.len() / 2);
    let (other, other_list) = (state.clone(), list.map(str::to_owned));
    let second =
        tokio::spawn(async move { check_run(&other, other_list.as_deref(), back, now).await });
    let mut out = check_run(state, list, emails, now).await?;
    out.extend(
        second
            .await
            .map_err(|e| DbErr::Custom(format!("the check's second half failed: {e}")))??,
    );
    Ok(out)
}

/// Each address parsed and hashed (raw), `None` where it is not valid.
fn digest_each(state: &AppState, emails: &[String]) -> Vec<Option<[u8; 32]>> {
    emails
        .iter()
        .map(|e| {
            EmailAddress::parse(e)
                .ok()
                .map(|a| state.keys.hasher.digest(&a))
        })
        .collect()
}

/// Parses and hashes addresses (raw hashes), `None` where not valid; a large
/// run in two halves on two tasks, so that both cores do it.
async fn digest_all(
    state: &AppState,
    mut emails: Vec<String>,
) -> Result<(Vec<String>, Vec<Option<[u8; 32]>>), DbErr> {
    if emails.len() < 1_000 {
        let d = digest_each(state, &emails);
        return Ok((emails, d));
    }
    let back = emails.split_off(emails.len() / 2);
    let other = state.clone();
    let second = tokio::spawn(async move {
        let d = digest_each(&other, &back);
        (back, d)
    });
    let mut d = digest_each(state, &emails);
    let (back, back_d) = second
        .await
        .map_err(|e| DbErr::Custom(format!("the check's second half failed: {e}")))?;
    emails.extend(back);
    d.extend(back_d);
    Ok((emails, d))
}

/// Parses, hashes and checks one run of addresses with one statement.
async fn check_run(
    state: &AppState,
    list: Option<&str>,
    emails: Vec<String>,
    now: DateTime<Utc>,
) -> Result<Vec<(String, Option<CheckResult>)>, DbErr> {
    let hashes = digest_each(state, &emails)
        .into_iter()
        .map(|d| d.map(hex::encode))
        .collect();
    ask_database(state, list, emails, hashes, now).await
}

/// The database's answers for addresses and their hashes (`None` where the
/// address is not valid), in the order given.
async fn ask_database(
    state: &AppState,
    list: Option<&str>,
    emails: Vec<String>,
    hashes: Vec<Option<String>>,
    now: DateTime<Utc>,
) -> Result<Vec<(String, Option<CheckResult>)>, DbErr> {
    let valid: Vec<&str> = hashes.iter().flatten().map(String::as_str).collect();
    let mut answers = check_many(&state.db, list, &valid, now).await?.into_iter();
    Ok(emails
        .into_iter()
        .zip(hashes)
        .map(|(email, hash)| (email, hash.and_then(|_| answers.next())))
        .collect())
}

/// Checks address hashes for `list` (or any list when `None`) with one
/// statement that looks up both the suppression entries and the subscribers
/// and answers by position, so that only the matches come back and no hash
/// is sent twice. Answers in the order given.
pub async fn check_many<S: AsRef<str>>(
    db: &sea_orm::DatabaseConnection,
    list: Option<&str>,
    hashes: &[S],
    now: DateTime<Utc>,
) -> Result<Vec<CheckResult>, DbErr> {
    let mut out = vec![
        CheckResult {
            suppressed: false,
            reason: None,
            expires_at: None,
            subscribed: false,
            restricted: false,
        };
        hashes.len()
    ];
    if hashes.is_empty() {
        return Ok(out);
    }
    let rows = db
        .query_all_raw(check_statement(
            db.get_database_backend(),
            list,
            hashes,
            now,
        ))
        .await?;
    for row in rows {
        let ord: i64 = row.try_get("", "ord")?;
        let Some(slot) = usize::try_from(ord - 1).ok().and_then(|i| out.get_mut(i)) else {
            return Err(DbErr::Custom(
                "the check answered a row it was not asked".into(),
            ));
        };
        let reason: Option<String> = row.try_get("", "reason")?;
        let expires: Option<DateTime<Utc>> = row.try_get("", "expires_at")?;
        // With several entries, report the one that lasts longest.
        if let (Some(reason), Some(expires)) = (reason, expires)
            && slot.expires_at.is_none_or(|prev| prev < expires)
        {
            slot.suppressed = true;
            slot.reason = Some(reason);
            slot.expires_at = Some(expires);
        }
        slot.subscribed |= row
            .try_get::<Option<bool>>("", "subscribed")?
            .unwrap_or(false);
        slot.restricted |= row
            .try_get::<Option<bool>>("", "restricted")?
            .unwrap_or(false);
    }
    Ok(out)
}

/// The statement that checks one run of hashes: a row for each (position,
/// entry that counts) and each (position, subscriber), nothing for the rest.
/// On PostgreSQL every hash is an index probe (a `LATERAL` subquery, kept
/// from being flattened by `OFFSET 0`): the cached generic plan otherwise
/// hash-joined the hashes against every active suppression entry, twice as
/// slow with 280,000 entries and slower the longer the list. The probes go
/// through the hash indexes on `email_hash || ''` (migration 000009), which
/// answer in half the time of the unique B-trees.
fn check_statement<S: AsRef<str>>(
    backend: DbBackend,
    list: Option<&str>,
    hashes: &[S],
    now: DateTime<Utc>,
) -> Statement {
    let (scoped, on_list) = if list.is_some() {
        (
            " AND (s.scope = $3 OR s.scope = '*')",
            " AND x.list_slug = $3",
        )
    } else {
        ("", "")
    };
    // The hash indexes' own expression; SQLite has only the B-trees.
    let probe = |alias: &str| match backend {
        DbBackend::Postgres => format!("({alias}.email_hash || '') = w.h"),
        _ => format!("{alias}.email_hash = w.h"),
    };
    let entry = format!("{} AND s.expires_at > $2{scoped}", probe("s"));
    let person = probe("p");
    let (wanted, set) = crate::db::string_rows(backend, 1, hashes);
    let (entries, people) = match backend {
        DbBackend::Postgres => (
            format!(
                "CROSS JOIN LATERAL (SELECT s.reason, s.expires_at FROM suppressions s \
                 WHERE {entry} OFFSET 0) s"
            ),
            format!(
                "CROSS JOIN LATERAL (SELECT p.id, p.restricted FROM subscribers p \
                 WHERE {person} OFFSET 0) p"
            ),
        ),
        // SQLite has no LATERAL, and probes the indexes by itself.
        _ => (
            format!("JOIN suppressions s ON {entry}"),
            format!("JOIN subscribers p ON {person}"),
        ),
    };
    let mut values = vec![set, now.into()];
    values.extend(list.map(|l| sea_orm::Value::from(l.to_string())));
    Statement::from_sql_and_values(
        backend,
        format!(
            "SELECT w.ord, s.reason, s.expires_at, NULL AS restricted, NULL AS subscribed \
             FROM {wanted} {entries} \
             UNION ALL \
             SELECT w.ord, NULL, NULL, p.restricted, EXISTS (SELECT 1 FROM subscriptions x \
               WHERE x.subscriber_id = p.id AND x.status = 'confirmed'{on_list}) \
             FROM {wanted} {people}"
        ),
        values,
    )
}

/// Removes entries for an address: one scope, or all of them.
pub async fn remove<C: ConnectionTrait>(
    conn: &C,
    email_hash: &str,
    scope: Option<&str>,
) -> Result<u64, DbErr> {
    let mut q =
        suppression::Entity::delete_many().filter(suppression::Column::EmailHash.eq(email_hash));
    if let Some(s) = scope {
        q = q.filter(suppression::Column::Scope.eq(s));
    }
    Ok(q.exec(conn).await?.rows_affected)
}
