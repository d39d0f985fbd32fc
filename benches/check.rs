//! Bulk suppression check: `POST /v1/suppressions/check` with 10,000
//! addresses a request, through HTTP against the real app on port 0.
//!
//! On PostgreSQL when `LISTGUARD_BENCH_DATABASE_URL` names a server (a fresh
//! database is made there and dropped after), else on a temporary SQLite
//! file. Of the 10,000 addresses a third are confirmed subscribers, a third
//! are suppressed and a third are unknown, so every branch of the check runs.
//! On PostgreSQL 300,000 other confirmed subscribers and 300,000 other
//! entries fill the tables around them.
//!
//!     cargo bench --bench check
//!     LISTGUARD_BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench check
//!
//! Criterion reports the throughput in addresses per second. On PostgreSQL
//! the service answers from its copy in memory (`services::check_cache`);
//! `database_only` is the statement the database would run instead.
use std::{sync::Arc, time::Duration};

use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use entity::{subscriber, subscription, suppression};
use listguard::{
    clock::SystemClock,
    config::{ApiKeyConfig, ApiScope, Config},
    domain::EmailAddress,
    startup::{Application, BuildOptions},
};
use sea_orm::{ConnectionTrait, Database, EntityTrait, Set, Statement};

const ADDRESSES: usize = 10_000;
const SENDER_KEY: &str = "bench-sender-key-0123456789";
/// On PostgreSQL: other subscribers, and other suppression entries, besides
/// the addresses checked.
const BACKGROUND: usize = 300_000;

struct Bench {
    base: String,
    /// Serialised once: the client's own work is not the service's.
    body: Vec<u8>,
    http: reqwest::Client,
    cleanup: Option<(String, String)>,
    state: listguard::state::AppState,
    emails: Vec<String>,
    hashes: Vec<String>,
}

async fn database_url() -> (String, Option<(String, String)>) {
    match std::env::var("LISTGUARD_BENCH_DATABASE_URL") {
        Ok(server) if server.starts_with("postgres") => {
            let name = format!("lg_bench_check_{}", std::process::id());
            let admin = Database::connect(&server)
                .await
                .expect("PostgreSQL reachable");
            admin
                .execute_raw(Statement::from_string(
                    admin.get_database_backend(),
                    format!("CREATE DATABASE {name}"),
                ))
                .await
                .expect("create bench database");
            let (base, _) = server.rsplit_once('/').expect("URL with a database");
            (format!("{base}/{name}"), Some((server, name)))
        }
        _ => {
            let dir = tempfile::tempdir().unwrap().keep();
            (
                format!("sqlite://{}?mode=rwc", dir.join("bench.db").display()),
                None,
            )
        }
    }
}

async fn setup() -> Bench {
    let (url, cleanup) = database_url().await;
    let mut config = Config::default();
    config.server.bind = "127.0.0.1:0".into();
    config.database.url = url;
    config.database.max_connections = 8;
    config.api_keys = vec![ApiKeyConfig {
        name: "bench".into(),
        scope: ApiScope::Sender,
        key_sha256: listguard::crypto::sha256_hex(SENDER_KEY.as_bytes()),
    }];
    let app = Application::build_with(
        config,
        BuildOptions {
            clock: Arc::new(SystemClock),
            background_workers: false,
            mailer: None,
            public_url_from_port: true,
        },
    )
    .await
    .expect("app builds");
    let base = format!("http://127.0.0.1:{}", app.port());
    let state = app.state();
    tokio::spawn(app.run_until(std::future::pending()));

    let now = Utc::now();
    let emails: Vec<String> = (0..ADDRESSES)
        .map(|i| format!("reader-{i}@bench.example.org"))
        .collect();
    let hashes: Vec<String> = emails
        .iter()
        .map(|e| state.keys.hasher.hash(&EmailAddress::parse(e).unwrap()))
        .collect();
    let (mut people, mut suppressed) = (Vec::new(), Vec::new());
    for (i, (email, hash)) in emails.iter().zip(&hashes).enumerate() {
        match i % 3 {
            0 => people.push(subscriber::ActiveModel {
                email: Set(email.clone()),
                email_hash: Set(hash.clone()),
                locale: Set("en".into()),
                restricted: Set(false),
                created_at: Set(now),
                updated_at: Set(now),
                ..Default::default()
            }),
            1 => suppressed.push(suppression::ActiveModel {
                email_hash: Set(hash.clone()),
                scope: Set("newsletter".into()),
                reason: Set("unsubscribed".into()),
                source: Set("admin".into()),
                created_at: Set(now),
                expires_at: Set(now + chrono::Duration::days(30)),
                ..Default::default()
            }),
            _ => {}
        }
    }
    for chunk in people.chunks(1000) {
        let rows = subscriber::Entity::insert_many(chunk.to_vec())
            .exec_with_returning(&state.db)
            .await
            .expect("seed subscribers");
        let subs = rows.iter().map(|p| subscription::ActiveModel {
            subscriber_id: Set(p.id),
            list_slug: Set("newsletter".into()),
            status: Set("confirmed".into()),
            source: Set(Some("bench".into())),
            created_at: Set(now),
            confirmed_at: Set(Some(now)),
            ..Default::default()
        });
        subscription::Entity::insert_many(subs)
            .exec_without_returning(&state.db)
            .await
            .expect("seed subscriptions");
    }
    for chunk in suppressed.chunks(1000) {
        suppression::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(&state.db)
            .await
            .expect("seed suppressions");
    }
    if state.db.get_database_backend() == sea_orm::DbBackend::Postgres {
        // A deployment holds many more people and entries than one request
        // asks about: the probes go into indexes of a deployment's depth.
        state
            .db
            .execute_unprepared(&format!(
                "INSERT INTO subscribers (email, email_hash, locale, restricted, created_at, updated_at) \
                   SELECT 'other-' || i || '@bench.example.org', md5('p' || i) || md5('q' || i), \
                     'en', false, now(), now() FROM generate_series(1, {BACKGROUND}) i; \
                 INSERT INTO subscriptions (subscriber_id, list_slug, status, source, created_at, confirmed_at) \
                   SELECT id, 'newsletter', 'confirmed', 'bench', now(), now() FROM subscribers \
                   WHERE email LIKE 'other-%'; \
                 INSERT INTO suppressions (email_hash, scope, reason, source, created_at, expires_at) \
                   SELECT md5('s' || i) || md5('t' || i), 'newsletter', 'unsubscribed', 'admin', \
                     now(), now() + interval '30 days' FROM generate_series(1, {BACKGROUND}) i"
            ))
            .await
            .expect("seed the background");
        // A deployment's tables have statistics and a visibility map; a table
        // filled a moment ago has neither until autovacuum comes by (see
        // docs/performance.md).
        state
            .db
            .execute_unprepared("VACUUM ANALYZE")
            .await
            .expect("vacuum analyze");
    }
    if let Some(cache) = &state.check_cache {
        // The copy in memory follows the seeding through its notices; the
        // bench starts once it has caught up with all of them.
        cache.want();
        assert!(
            cache.wait_ready(true, Duration::from_secs(120)).await,
            "the check's copy loads"
        );
        let pool = state.db.get_postgres_connection_pool();
        while !cache.catch_up(pool).await {}
        eprintln!(
            "the check's copy holds {} addresses",
            cache.held().unwrap_or(0)
        );
    }
    Bench {
        base,
        body: serde_json::to_vec(&serde_json::json!({"list": "newsletter", "emails": emails}))
            .expect("body"),
        http: reqwest::Client::new(),
        cleanup,
        state,
        emails,
        hashes,
    }
}

async fn check_once(b: &Bench) {
    let resp = b
        .http
        .post(format!("{}/v1/suppressions/check", b.base))
        .bearer_auth(SENDER_KEY)
        .header("content-type", "application/json")
        .body(b.body.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200, "the check answers 200");
    // Parsed, but not into a `serde_json::Value` tree: the client's work is
    // not the service's.
    #[derive(serde::Deserialize)]
    struct Answer {
        results: Vec<serde::de::IgnoredAny>,
    }
    let answer: Answer = serde_json::from_slice(&resp.bytes().await.expect("body")).expect("JSON");
    assert_eq!(answer.results.len(), ADDRESSES);
}

fn bulk_check(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bench = rt.block_on(setup());
    let mut group = c.benchmark_group("suppressions_check");
    group.throughput(Throughput::Elements(ADDRESSES as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("10000_addresses_per_request", |b| {
        b.to_async(&rt).iter(|| check_once(&bench))
    });
    // The parts, to see where a request's time goes.
    group.bench_function("parse_and_hash_only", |b| {
        b.iter(|| {
            let hashes: Vec<String> = bench
                .emails
                .iter()
                .map(|e| {
                    bench
                        .state
                        .keys
                        .hasher
                        .hash(&EmailAddress::parse(e).unwrap())
                })
                .collect();
            std::hint::black_box(hashes)
        })
    });
    group.bench_function("database_only", |b| {
        b.to_async(&rt).iter(|| async {
            listguard::services::suppression::check_many(
                &bench.state.db,
                Some("newsletter"),
                &bench.hashes,
                Utc::now(),
            )
            .await
            .unwrap()
        })
    });
    group.bench_function("without_http", |b| {
        b.to_async(&rt).iter(|| async {
            listguard::services::suppression::check_addresses(
                &bench.state,
                Some("newsletter"),
                bench.emails.clone(),
            )
            .await
            .unwrap()
        })
    });
    group.finish();
    eprintln!(
        "checks answered from memory: {}, by the database: {}",
        bench.state.metrics.checks_answered(true),
        bench.state.metrics.checks_answered(false)
    );
    if let Some((server, name)) = &bench.cleanup {
        rt.block_on(async {
            let admin = Database::connect(server)
                .await
                .expect("PostgreSQL reachable");
            let _ = admin
                .execute_raw(Statement::from_string(
                    admin.get_database_backend(),
                    format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                ))
                .await;
        });
    }
}

criterion_group!(benches, bulk_check);
criterion_main!(benches);
