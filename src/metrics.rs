//! Prometheus metrics, served at `GET /metrics` as OpenMetrics text.
//!
//! Requests are counted and timed by method, route template (as the OpenAPI
//! document names it, `/v1/unsubscribe/{token}`, never the path itself, so
//! no token and no address becomes a label) and status. Queue and list sizes
//! are read from the database when scraped, at most once per
//! [`REFRESH_EVERY`] whatever the number of scrapers: outbox jobs not yet done
//! by kind and status (dead letters included), suppression entries that still
//! count by reason, and subscriptions by list and status. Counts only: no
//! label carries personal data.
use std::{sync::Mutex, time::Duration};

use chrono::{DateTime, Utc};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use sea_orm::{ConnectionTrait, DbErr, Statement};

/// How long counts read from the database are served before they are read again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnsweredByLabels {
    by: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    kind: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriptionLabels {
    list: String,
    status: String,
}

type Timings = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// One service instance's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Timings,
    outbox_jobs: Family<JobLabels, Gauge>,
    suppressions: Family<ReasonLabels, Gauge>,
    subscriptions: Family<SubscriptionLabels, Gauge>,
    /// When the database counts were last read, by the service's clock.
    refreshed_at: tokio::sync::Mutex<Option<DateTime<Utc>>>,
    /// Whether the last read of the database counts succeeded.
    database_counts_ok: Gauge,
    scrape_errors: Counter,
    last_error: Mutex<Option<String>>,
    checks: Family<AnsweredByLabels, Counter>,
    check_copy_addresses: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("listguard");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status",
            requests.clone(),
        );
        let durations: Timings = Family::new_with_constructor(|| {
            // 0.5 ms to about 8 s.
            Histogram::new(exponential_buckets(0.0005, 2.0, 15))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's arrival to its answer",
            durations.clone(),
        );
        let outbox_jobs = Family::<JobLabels, Gauge>::default();
        registry.register(
            "outbox_jobs",
            "Outbox jobs not yet done (pending, in_flight, dead), by kind and status",
            outbox_jobs.clone(),
        );
        let suppressions = Family::<ReasonLabels, Gauge>::default();
        registry.register(
            "suppressions",
            "Suppression entries that still count, by reason",
            suppressions.clone(),
        );
        let subscriptions = Family::<SubscriptionLabels, Gauge>::default();
        registry.register(
            "subscriptions",
            "Subscriptions by list and status",
            subscriptions.clone(),
        );
        let database_counts_ok = Gauge::default();
        registry.register(
            "database_counts_ok",
            "1 when the last read of the queue and list sizes succeeded, else 0",
            database_counts_ok.clone(),
        );
        let scrape_errors = Counter::default();
        registry.register(
            "database_count_errors",
            "Failed reads of the queue and list sizes",
            scrape_errors.clone(),
        );
        let checks = Family::<AnsweredByLabels, Counter>::default();
        registry.register(
            "bulk_checks",
            "Bulk checks answered, by where the answers came from (memory or database)",
            checks.clone(),
        );
        let check_copy_addresses = Gauge::default();
        registry.register(
            "bulk_check_copy_addresses",
            "Address hashes in the bulk check's copy in memory; -1 while there is none",
            check_copy_addresses.clone(),
        );
        check_copy_addresses.set(-1);
        Self {
            registry,
            requests,
            durations,
            outbox_jobs,
            suppressions,
            subscriptions,
            refreshed_at: tokio::sync::Mutex::new(None),
            database_counts_ok,
            scrape_errors,
            last_error: Mutex::new(None),
            checks,
            check_copy_addresses,
        }
    }

    /// Counts one bulk check, answered from memory or by the database.
    pub fn observe_check(&self, from_memory: bool) {
        self.checks_by(from_memory).inc();
    }

    /// Bulk checks answered so far from memory (`true`) or by the database.
    pub fn checks_answered(&self, from_memory: bool) -> u64 {
        self.checks_by(from_memory).get()
    }

    fn checks_by(&self, from_memory: bool) -> Counter {
        let by = if from_memory { "memory" } else { "database" };
        self.checks.get_or_create(&AnsweredByLabels { by }).clone()
    }

    /// The size of the bulk check's copy, `None` while there is none.
    pub fn set_check_copy(&self, addresses: Option<usize>) {
        self.check_copy_addresses
            .set(addresses.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)));
    }

    /// Counts one answered request. `route` is a template or `other`.
    pub fn observe_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let method = match method {
            "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" => method,
            // Any token is a method to HTTP; a label takes only the known ones.
            _ => "other",
        };
        let labels = RouteLabels {
            method: method.to_owned(),
            route: route.to_owned(),
        };
        self.durations
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        self.requests
            .get_or_create(&RequestLabels {
                method: labels.method,
                route: labels.route,
                status,
            })
            .inc();
    }

    /// The OpenMetrics text, with the database counts read afresh when they
    /// are older than [`REFRESH_EVERY`]. A failed read keeps the previous
    /// counts and sets `listguard_database_counts_ok` to 0.
    pub async fn render<C: ConnectionTrait>(&self, db: &C, now: DateTime<Utc>) -> String {
        {
            // Held across the read: concurrent scrapes wait for one read.
            let mut refreshed = self.refreshed_at.lock().await;
            let stale = refreshed.is_none_or(|at| {
                now.signed_duration_since(at).to_std().unwrap_or_default() >= REFRESH_EVERY
                    || now < at
            });
            if stale {
                match self.read_counts(db, now).await {
                    Ok(()) => {
                        self.database_counts_ok.set(1);
                        *refreshed = Some(now);
                    }
                    Err(e) => {
                        self.database_counts_ok.set(0);
                        self.scrape_errors.inc();
                        let text = e.to_string();
                        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
                        // Once per distinct error, not once per scrape.
                        if last.as_deref() != Some(text.as_str()) {
                            tracing::warn!(error = %text, "metrics: reading the counts failed");
                            *last = Some(text);
                        }
                    }
                }
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }

    async fn read_counts<C: ConnectionTrait>(
        &self,
        db: &C,
        now: DateTime<Utc>,
    ) -> Result<(), DbErr> {
        let backend = db.get_database_backend();
        // Unsent and dead jobs only: finished ones may be many until purged,
        // and the statuses written into the statement let the partial
        // indexes serve it.
        let jobs = db
            .query_all_raw(Statement::from_string(
                backend,
                "SELECT kind, status, COUNT(*) AS n FROM outbox \
                 WHERE status IN ('pending', 'in_flight', 'dead') GROUP BY kind, status",
            ))
            .await?;
        let entries = db
            .query_all_raw(Statement::from_sql_and_values(
                backend,
                match backend {
                    sea_orm::DbBackend::Postgres => {
                        "SELECT reason, COUNT(*) AS n FROM suppressions WHERE expires_at > $1 GROUP BY reason"
                    }
                    _ => "SELECT reason, COUNT(*) AS n FROM suppressions WHERE expires_at > ? GROUP BY reason",
                },
                [now.into()],
            ))
            .await?;
        let subs = db
            .query_all_raw(Statement::from_string(
                backend,
                "SELECT list_slug, status, COUNT(*) AS n FROM subscriptions GROUP BY list_slug, status",
            ))
            .await?;

        // A kind of job that is gone from the queue shows 0, not its last count.
        for kind in crate::outbox::JobKind::ALL {
            for status in ["pending", "in_flight", "dead"] {
                self.outbox_jobs
                    .get_or_create(&JobLabels {
                        kind: kind.as_str().into(),
                        status: status.into(),
                    })
                    .set(0);
            }
        }
        set_counts(&self.outbox_jobs, jobs, |row| {
            Ok(JobLabels {
                kind: row.try_get("", "kind")?,
                status: row.try_get("", "status")?,
            })
        })?;
        for reason in crate::services::suppression::Reason::ALL {
            self.suppressions
                .get_or_create(&ReasonLabels {
                    reason: reason.as_str().into(),
                })
                .set(0);
        }
        set_counts(&self.suppressions, entries, |row| {
            Ok(ReasonLabels {
                reason: row.try_get("", "reason")?,
            })
        })?;
        self.subscriptions.clear();
        set_counts(&self.subscriptions, subs, |row| {
            Ok(SubscriptionLabels {
                list: row.try_get("", "list_slug")?,
                status: row.try_get("", "status")?,
            })
        })
    }
}

/// Sets each row's count (column `n`) on the gauge its labels name.
fn set_counts<L>(
    family: &Family<L, Gauge>,
    rows: Vec<sea_orm::QueryResult>,
    labels: impl Fn(&sea_orm::QueryResult) -> Result<L, DbErr>,
) -> Result<(), DbErr>
where
    L: Clone + std::hash::Hash + Eq,
{
    for row in rows {
        let n: i64 = row.try_get("", "n")?;
        family.get_or_create(&labels(&row)?).set(n);
    }
    Ok(())
}
