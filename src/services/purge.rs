//! The retention purge: deletes, in batches, what the privacy policy says must
//! not be kept any longer. Every statement is idempotent, so several replicas
//! may run it at once.
use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, Statement};
use serde::Serialize;

use crate::state::AppState;

/// How many rows each class lost (or would lose, on a dry run).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct PurgeReport {
    pub suppressions: u64,
    /// Archive (or permanent delete) jobs queued for Mailchimp members whose
    /// suppression entry expired (`mailchimp.on_expiry`).
    pub mailchimp_jobs: u64,
    pub consent_events: u64,
    pub pending_subscriptions: u64,
    pub subscribers: u64,
    pub tokens: u64,
    pub outbox: u64,
    /// Receipts of inbound webhook deliveries older than a week.
    pub webhook_receipts: u64,
    /// Audit rows of administrative actions past `retention.audit`.
    pub admin_audit: u64,
}

const BATCH: i64 = 1000;

/// How long finished bookkeeping is kept: a used confirmation token answers
/// "already confirmed" for a day; finished jobs stay visible for a day.
fn bookkeeping_cutoff(now: DateTime<Utc>) -> DateTime<Utc> {
    now - chrono::Duration::days(1)
}

struct Class {
    name: &'static str,
    /// `SELECT <key> ...` of what is due; `:now` is now, `:pending` the
    /// pending cutoff, `:book` the bookkeeping cutoff, `:dead_mail` the age at
    /// which a dead-lettered mail job goes, `:receipts` the webhook-receipt
    /// cutoff, `:audit` the audit-trail cutoff.
    due: &'static str,
    table: &'static str,
    key: &'static str,
}

/// In order: a pending subscription's consent rows go before it, orphaned
/// subscribers after it, detached consent rows after their suppression entry.
const CLASSES: &[Class] = &[
    Class {
        name: "suppressions",
        table: "suppressions",
        key: "id",
        due: "SELECT id FROM suppressions WHERE expires_at <= :now",
    },
    Class {
        name: "consent_events",
        table: "consent_events",
        key: "id",
        due: "SELECT c.id FROM consent_events c LEFT JOIN subscriptions s ON s.id = c.subscription_id \
              WHERE (c.subscription_id IS NULL AND NOT EXISTS (SELECT 1 FROM suppressions x WHERE x.email_hash = c.email_hash AND x.expires_at > :now)) \
                 OR (s.status = 'pending' AND s.pending_expires_at <= :pending)",
    },
    Class {
        name: "pending_subscriptions",
        table: "subscriptions",
        key: "id",
        due: "SELECT id FROM subscriptions WHERE status = 'pending' AND pending_expires_at <= :pending",
    },
    Class {
        name: "subscribers",
        table: "subscribers",
        key: "id",
        // Those left with no subscription once the pending ones above are
        // gone (so a dry run, which deletes nothing, counts them too).
        due: "SELECT p.id FROM subscribers p WHERE NOT EXISTS (SELECT 1 FROM subscriptions s WHERE s.subscriber_id = p.id \
              AND NOT (s.status = 'pending' AND s.pending_expires_at <= :pending))",
    },
    Class {
        name: "tokens",
        table: "tokens",
        key: "id",
        // An expired token stays while its pending subscription does, so it
        // keeps answering 410 ("ask for a new mail") rather than 404.
        due: "SELECT t.id FROM tokens t WHERE t.used_at <= :book \
              OR (t.expires_at <= :pending AND NOT EXISTS (SELECT 1 FROM subscriptions s \
                  WHERE s.id = t.subscription_id AND s.status = 'pending' AND s.pending_expires_at > :pending))",
    },
    Class {
        name: "outbox",
        table: "outbox",
        key: "id",
        // Finished jobs after a day; a dead-lettered mail (it holds an address
        // and a confirmation token) once that token is past expiry and grace.
        due: "SELECT id FROM outbox WHERE (status IN ('done', 'cancelled') AND updated_at <= :book) \
              OR (status = 'dead' AND kind = 'mail' AND updated_at <= :dead_mail)",
    },
    Class {
        name: "webhook_receipts",
        table: "webhook_receipts",
        key: "id",
        // Replays come within hours (Mailchimp retries for 75 minutes).
        due: "SELECT id FROM webhook_receipts WHERE received_at <= :receipts",
    },
    Class {
        name: "admin_audit",
        table: "admin_audit",
        key: "id",
        due: "SELECT id FROM admin_audit WHERE at <= :audit",
    },
];

impl PurgeReport {
    fn add(&mut self, class: &str, n: u64) {
        let slot = match class {
            "suppressions" => &mut self.suppressions,
            "mailchimp_jobs" => &mut self.mailchimp_jobs,
            "consent_events" => &mut self.consent_events,
            "pending_subscriptions" => &mut self.pending_subscriptions,
            "subscribers" => &mut self.subscribers,
            "tokens" => &mut self.tokens,
            "outbox" => &mut self.outbox,
            "webhook_receipts" => &mut self.webhook_receipts,
            _ => &mut self.admin_audit,
        };
        *slot += n;
    }

    /// `(class, rows)` pairs, for printing.
    pub fn rows(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("suppressions", self.suppressions),
            ("mailchimp_jobs", self.mailchimp_jobs),
            ("consent_events", self.consent_events),
            ("pending_subscriptions", self.pending_subscriptions),
            ("subscribers", self.subscribers),
            ("tokens", self.tokens),
            ("outbox", self.outbox),
            ("webhook_receipts", self.webhook_receipts),
            ("admin_audit", self.admin_audit),
        ]
    }
}

/// Replaces `:name` placeholders with `$N` and lists the values in order.
fn bind(template: &str, named: &[(&str, sea_orm::Value)]) -> (String, Vec<sea_orm::Value>) {
    let mut sql = template.to_string();
    let mut values = Vec::new();
    for (name, value) in named {
        let placeholder = format!(":{name}");
        if sql.contains(&placeholder) {
            values.push(value.clone());
            sql = sql.replace(&placeholder, &format!("${}", values.len()));
        }
    }
    (sql, values)
}

/// Runs the purge (or, with `dry_run`, counts what it would delete).
/// `progress` hears each batch.
#[tracing::instrument(skip_all, fields(dry_run))]
pub async fn purge(
    state: &AppState,
    dry_run: bool,
    mut progress: impl FnMut(&str, u64),
) -> anyhow::Result<PurgeReport> {
    let now = state.now();
    let named: Vec<(&str, sea_orm::Value)> = vec![
        ("now", now.into()),
        (
            "pending",
            state.config.retention.pending_grace.before(now).into(),
        ),
        ("book", bookkeeping_cutoff(now).into()),
        (
            "receipts",
            (now - chrono::Duration::days(super::webhooks::RECEIPT_RETENTION_DAYS)).into(),
        ),
        (
            "dead_mail",
            state
                .config
                .retention
                .pending_grace
                .before(state.config.retention.pending.before(now))
                .into(),
        ),
        ("audit", state.config.retention.audit.before(now).into()),
        ("limit", BATCH.into()),
    ];
    let db = &state.db;
    let backend = db.get_database_backend();
    let mut report = PurgeReport::default();
    expire_mailchimp_members(state, dry_run, &mut report, &mut progress).await?;
    for class in CLASSES {
        if dry_run {
            let (sql, values) = bind(
                &format!("SELECT COUNT(*) AS n FROM ({}) due", class.due),
                &named,
            );
            let row = db
                .query_one_raw(Statement::from_sql_and_values(backend, sql, values))
                .await?;
            let n: i64 = row.map(|r| r.try_get("", "n")).transpose()?.unwrap_or(0);
            report.add(class.name, n as u64);
            progress(class.name, n as u64);
            continue;
        }
        let (sql, values) = bind(
            &format!(
                "DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM ({due}) due LIMIT :limit)",
                table = class.table,
                key = class.key,
                due = class.due
            ),
            &named,
        );
        loop {
            let tx = state.begin_write().await?;
            let n = tx
                .execute_raw(Statement::from_sql_and_values(
                    backend,
                    sql.clone(),
                    values.clone(),
                ))
                .await?
                .rows_affected();
            tx.commit().await?;
            report.add(class.name, n);
            if n > 0 {
                progress(class.name, n);
            }
            if n < BATCH as u64 {
                break;
            }
        }
    }
    if !dry_run {
        tracing::info!(report = ?report, "purge finished");
    }
    Ok(report)
}

/// Expired suppression entries that keep a Mailchimp member hash, or all of
/// them when an endpoint takes `suppression.expired`: each goes in the same
/// transaction as the archive (or permanent delete) job it queues, one per
/// mapped list of its scope, and its event, so a crash loses neither. The
/// job holds only the member hash, the event only the address hash.
async fn expire_mailchimp_members(
    state: &AppState,
    dry_run: bool,
    report: &mut PurgeReport,
    progress: &mut impl FnMut(&str, u64),
) -> anyhow::Result<()> {
    use entity::suppression;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

    use crate::{
        events::EventType,
        mailchimp::{MailchimpJob, jobs as mailchimp_jobs},
        services::suppression::ALL_LISTS,
    };

    let now = state.now();
    let audiences = |scope: &str| -> Vec<String> {
        state
            .config
            .lists
            .iter()
            .filter(|l| scope == ALL_LISTS || l.slug == scope)
            .filter_map(|l| l.mailchimp_list_id.clone())
            .collect()
    };
    let events_wanted = crate::events::wanted(&state.config, EventType::SuppressionExpired);
    let due = || {
        let due = suppression::Entity::find().filter(suppression::Column::ExpiresAt.lte(now));
        if events_wanted {
            due
        } else {
            due.filter(suppression::Column::MailchimpHash.is_not_null())
        }
    };
    if dry_run {
        for e in due().all(&state.db).await? {
            let Some(hash) = e.mailchimp_hash.as_deref() else {
                continue;
            };
            let jobs = audiences(&e.scope)
                .iter()
                .filter_map(|id| MailchimpJob::on_expiry(&state.config, id, hash))
                .count() as u64;
            report.mailchimp_jobs += jobs;
        }
        progress("mailchimp_jobs", report.mailchimp_jobs);
        return Ok(());
    }
    loop {
        let tx = state.begin_write().await?;
        let batch = due()
            .order_by_asc(suppression::Column::Id)
            .limit(BATCH as u64)
            .all(&*tx)
            .await?;
        let mut queued = 0;
        let mut events = 0;
        for e in &batch {
            if events_wanted {
                let data = serde_json::json!({
                    "email_hash": e.email_hash,
                    "scope": e.scope,
                    "reason": e.reason,
                    "expired_at": e.expires_at,
                });
                events += crate::events::queue(
                    &*tx,
                    &state.config,
                    EventType::SuppressionExpired,
                    data,
                    None,
                    now,
                )
                .await?;
            }
            let Some(hash) = e.mailchimp_hash.as_deref() else {
                continue;
            };
            for list_id in audiences(&e.scope) {
                if let Some(job) = MailchimpJob::on_expiry(&state.config, &list_id, hash) {
                    mailchimp_jobs::enqueue(&*tx, &job, None, now).await?;
                    queued += 1;
                }
            }
        }
        let deleted = suppression::Entity::delete_many()
            .filter(suppression::Column::Id.is_in(batch.iter().map(|e| e.id)))
            .exec(&*tx)
            .await?
            .rows_affected;
        tx.commit().await?;
        report.mailchimp_jobs += queued;
        report.suppressions += deleted;
        if queued > 0 {
            state.sync_notify.notify_one();
            progress("mailchimp_jobs", queued);
        }
        if events > 0 {
            state.events_notify.notify_one();
        }
        if deleted > 0 {
            progress("suppressions", deleted);
        }
        if (batch.len() as i64) < BATCH {
            return Ok(());
        }
    }
}
