//! Connecting to the database and running migrations.
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbBackend};

use crate::config::DatabaseConfig;

/// Connects with settings that suit the backend.
pub async fn connect(cfg: &DatabaseConfig) -> anyhow::Result<DatabaseConnection> {
    let mut opts = ConnectOptions::new(cfg.url.clone());
    opts.sqlx_logging(false)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(30))
        // sqlx pings every connection it hands out by default: one more
        // round trip before every statement (0.28 ms of a 2 ms unsubscribe
        // batch here). Only a connection idle long enough to have been
        // dropped by the server or a firewall is pinged now.
        .test_before_acquire_if_idle_for(Duration::from_secs(30));
    if cfg.url.starts_with("sqlite:") {
        // One writer at a time is SQLite's nature; WAL lets readers go on
        // meanwhile, and the busy timeout makes writers queue instead of failing.
        opts.max_connections(cfg.max_connections.min(8))
            .map_sqlx_sqlite_opts(|o| {
                o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(30))
                    .foreign_keys(true)
            });
    } else {
        opts.max_connections(cfg.max_connections);
    }
    let db = Database::connect(opts)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to the database: {e}"))?;
    Ok(db)
}

/// Applies every pending migration.
pub async fn migrate(db: &DatabaseConnection) -> anyhow::Result<()> {
    Migrator::up(db, None).await?;
    Ok(())
}

pub fn is_postgres(db: &DatabaseConnection) -> bool {
    db.get_database_backend() == DbBackend::Postgres
}

/// A subquery yielding `items`, bound as the one parameter `$n`: how a
/// single parameter carries thousands of values (a bulk check's address
/// hashes), where an `IN` list of that many parameters would be slow to plan
/// and match. PostgreSQL splits a comma-separated text (cheaper than parsing
/// JSON), SQLite walks a JSON array. Items must not contain a comma.
pub fn string_set(backend: DbBackend, n: usize, items: &[&str]) -> (String, sea_orm::Value) {
    debug_assert!(items.iter().all(|i| !i.contains(',')));
    match backend {
        DbBackend::Postgres => (
            format!("SELECT unnest(string_to_array(${n}, ','))"),
            items.join(",").into(),
        ),
        _ => (
            format!("SELECT value FROM json_each(${n})"),
            serde_json::to_string(items)
                .expect("strings serialise")
                .into(),
        ),
    }
}

/// The condition `column` is one of `ids`, the ids bound as the one
/// parameter `$n` (a JSON array). On PostgreSQL it is `= ANY` of an array
/// built by a subquery: an index scan whatever the count, and one the
/// planner cannot see the count of, so that the generic plan it caches
/// after five calls serves every later one. (`IN (SELECT unnest(..))` and
/// `= ANY` of a literal array both showed each call's count, so every call
/// was planned afresh: 0.2–0.3 ms of a 0.4–0.6 ms `outbox::complete_many`.)
pub fn id_in(backend: DbBackend, column: &str, n: usize, ids: &[i64]) -> (String, sea_orm::Value) {
    let condition = match backend {
        DbBackend::Postgres => {
            format!("{column} = ANY(ARRAY(SELECT jsonb_array_elements_text(${n}::jsonb)::bigint))")
        }
        _ => format!("{column} IN (SELECT value FROM json_each(${n}))"),
    };
    (
        condition,
        serde_json::to_string(ids)
            .expect("numbers serialise")
            .into(),
    )
}

/// [`string_set`] as a row source `w(h, ord)`, `ord` counting the items from
/// 1, for a statement that answers by position.
pub fn string_rows<S: AsRef<str>>(
    backend: DbBackend,
    n: usize,
    items: &[S],
) -> (String, sea_orm::Value) {
    let items: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    let (_, value) = string_set(backend, n, &items);
    let rows = match backend {
        DbBackend::Postgres => {
            format!("unnest(string_to_array(${n}, ',')) WITH ORDINALITY AS w(h, ord)")
        }
        _ => format!("(SELECT value AS h, key + 1 AS ord FROM json_each(${n})) AS w"),
    };
    (rows, value)
}
