//! The suppression list: keyed address hashes, scoped to one list or all (`*`),
//! each with a reason, a source and an expiry. An entry stops counting at its
//! `expires_at`; the purge deletes it physically.
use chrono::{DateTime, Utc};
use entity::suppression;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter, Set,
    sea_query::OnConflict,
};

use crate::config::Config;

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
    add_many(conn, vec![row]).await
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
/// entries, in one statement.
pub async fn add_many<C: ConnectionTrait>(
    conn: &C,
    rows: Vec<suppression::ActiveModel>,
) -> Result<(), DbErr> {
    if rows.is_empty() {
        return Ok(());
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

/// Checks many address hashes at once for `list` (or any list when `None`).
/// Answers in the order given. Two statements whatever the number of hashes:
/// the hashes travel as one JSON array parameter.
pub async fn check_many(
    db: &sea_orm::DatabaseConnection,
    list: Option<&str>,
    hashes: &[String],
    now: DateTime<Utc>,
) -> Result<Vec<CheckResult>, DbErr> {
    use std::collections::HashMap;

    use sea_orm::{Statement, Value};

    let backend = db.get_database_backend();
    let mut unique: Vec<&str> = hashes.iter().map(String::as_str).collect();
    unique.sort_unstable();
    unique.dedup();
    let (wanted, set) = crate::db::string_set(backend, 1, &unique);

    let scoped = if list.is_some() {
        " AND (s.scope = $3 OR s.scope = '*')"
    } else {
        ""
    };
    let mut values = vec![set.clone(), now.into()];
    values.extend(list.map(|l| Value::from(l.to_string())));
    let entries = Statement::from_sql_and_values(
        backend,
        format!(
            "SELECT s.email_hash, s.reason, s.expires_at FROM suppressions s \
             WHERE s.email_hash IN ({wanted}) AND s.expires_at > $2{scoped}"
        ),
        values,
    );
    let on_list = if list.is_some() {
        " AND x.list_slug = $2"
    } else {
        ""
    };
    let mut values = vec![set];
    values.extend(list.map(|l| Value::from(l.to_string())));
    let subscribed = Statement::from_sql_and_values(
        backend,
        format!(
            "SELECT p.email_hash, p.restricted, EXISTS (SELECT 1 FROM subscriptions x \
               WHERE x.subscriber_id = p.id AND x.status = 'confirmed'{on_list}) AS subscribed \
             FROM subscribers p WHERE p.email_hash IN ({wanted})"
        ),
        values,
    );
    // Two reads on two pooled connections at once.
    let (entries, subscribed) =
        tokio::join!(db.query_all_raw(entries), db.query_all_raw(subscribed));

    // With several entries, report the one that lasts longest.
    let mut supp: HashMap<String, (String, DateTime<Utc>)> = HashMap::new();
    for row in entries? {
        let hash: String = row.try_get("", "email_hash")?;
        let reason: String = row.try_get("", "reason")?;
        let expires: DateTime<Utc> = row.try_get("", "expires_at")?;
        match supp.get(&hash) {
            Some((_, prev)) if *prev >= expires => {}
            _ => {
                supp.insert(hash, (reason, expires));
            }
        }
    }
    let mut people: HashMap<String, (bool, bool)> = HashMap::new();
    for row in subscribed? {
        let hash: String = row.try_get("", "email_hash")?;
        let restricted: bool = row.try_get("", "restricted")?;
        let subscribed: bool = row.try_get("", "subscribed")?;
        people.insert(hash, (subscribed, restricted));
    }

    Ok(hashes
        .iter()
        .map(|h| {
            let s = supp.get(h);
            let (subscribed, restricted) = people.get(h).copied().unwrap_or((false, false));
            CheckResult {
                suppressed: s.is_some(),
                reason: s.map(|(r, _)| r.clone()),
                expires_at: s.map(|(_, e)| *e),
                subscribed,
                restricted,
            }
        })
        .collect())
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
