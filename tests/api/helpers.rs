//! The test harness: a fresh app on port 0 with its own database (SQLite, or
//! PostgreSQL when `LISTGUARD_TEST_DATABASE_URL` names a server), a real SMTP
//! listener on loopback, a clock the test controls, and workers the test steps.
use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
};

use chrono::{DateTime, Utc};
use listguard::{
    clock::TestClock,
    config::{ApiKeyConfig, ApiScope, Config, MailTransportKind},
    outbox::{ExecutionOutcome, mail_worker},
    startup::{Application, BuildOptions},
    state::AppState,
};
use sea_orm::{ConnectionTrait, Database, Statement};
use secrecy::SecretString;

use crate::smtp::FakeSmtp;

/// Everything the tests log, at debug level, so a test can search it.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.get_or_init(Default::default).lock().unwrap()).into_owned()
}

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        if std::env::var("TEST_LOG").is_ok() {
            std::io::stderr().write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let buf = LOGS.get_or_init(Default::default).clone();
        let writer = LogWriter(buf);
        listguard::telemetry::init(false, "debug", move || writer.clone());
    });
}

pub struct TestApp {
    pub base: String,
    pub state: AppState,
    pub clock: TestClock,
    pub smtp: FakeSmtp,
    pub http: reqwest::Client,
}

/// A point in time that tests start from.
pub fn t0() -> DateTime<Utc> {
    "2026-01-31T10:00:00Z".parse().unwrap()
}

/// Set once this test process has dropped the databases of earlier runs.
static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// Drops the test databases of test processes that are no longer running
/// (each test's database is named after its process), so that runs do not
/// pile databases up on the server. A run still going is left alone.
async fn sweep_finished_runs(admin: &sea_orm::DatabaseConnection) {
    if !std::path::Path::new("/proc/self").exists() {
        // No way to tell a finished run from one going on.
        return;
    }
    let backend = admin.get_database_backend();
    let Ok(rows) = admin
        .query_all_raw(Statement::from_string(
            backend,
            "SELECT datname FROM pg_database WHERE datname LIKE 'lg\\_test\\_%'",
        ))
        .await
    else {
        return;
    };
    for row in rows {
        let Ok(name) = row.try_get::<String>("", "datname") else {
            continue;
        };
        let finished = name
            .strip_prefix("lg_test_")
            .and_then(|rest| rest.split_once('_'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
            .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists());
        if finished {
            let _ = admin
                .execute_raw(Statement::from_string(
                    backend,
                    format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                ))
                .await;
        }
    }
}

/// The database URL for a new test: a fresh SQLite file, or a fresh PostgreSQL
/// database on the server named by `LISTGUARD_TEST_DATABASE_URL`.
async fn fresh_database_url() -> String {
    match std::env::var("LISTGUARD_TEST_DATABASE_URL") {
        Ok(server) if server.starts_with("postgres") => {
            let name = format!(
                "lg_test_{}_{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            );
            let admin = Database::connect(&server)
                .await
                .expect("PostgreSQL reachable");
            SWEPT.get_or_init(|| sweep_finished_runs(&admin)).await;
            admin
                .execute_raw(Statement::from_string(
                    admin.get_database_backend(),
                    format!("CREATE DATABASE {name}"),
                ))
                .await
                .expect("create test database");
            admin.close().await.ok();
            let (base, _) = server.rsplit_once('/').expect("URL with a database");
            format!("{base}/{name}")
        }
        _ => {
            let dir = tempfile::tempdir().unwrap().keep();
            format!("sqlite://{}?mode=rwc", dir.join("test.db").display())
        }
    }
}

/// A configuration for tests: SMTP to the fake, generous limits.
pub async fn test_config(smtp: &FakeSmtp) -> Config {
    let mut c = Config::default();
    c.server.bind = "127.0.0.1:0".into();
    c.database.url = fresh_database_url().await;
    c.database.max_connections = 5;
    c.mail.transport = MailTransportKind::Smtp;
    c.mail.smtp_url = Some(SecretString::from(smtp.url()));
    c.mail.from = Some("Listguard Test <news@example.org>".into());
    c.org.privacy_policy_url = Some("https://example.org/privacy".into());
    c.limits.subscribe_per_ip_per_minute = 10_000;
    c.api_keys = vec![
        ApiKeyConfig {
            name: "test-admin".into(),
            scope: ApiScope::Admin,
            key_sha256: listguard::crypto::sha256_hex(ADMIN_KEY.as_bytes()),
        },
        ApiKeyConfig {
            name: "test-sender".into(),
            scope: ApiScope::Sender,
            key_sha256: listguard::crypto::sha256_hex(SENDER_KEY.as_bytes()),
        },
    ];
    c
}

/// A second list, for tests that need two.
pub fn second_list() -> listguard::config::ListConfig {
    listguard::config::ListConfig {
        slug: "events".into(),
        name: "Events".into(),
        mailchimp_list_id: None,
        consent_text: "Tell me about events.".into(),
        consent_version: "1".into(),
    }
}

pub const ADMIN_KEY: &str = "test-admin-key-0123456789";
pub const SENDER_KEY: &str = "test-sender-key-0123456789";

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// An app whose configuration `adjust` may change first.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    init_logs();
    let smtp = FakeSmtp::start().await;
    let mut config = test_config(&smtp).await;
    adjust(&mut config);
    let clock = TestClock::new(t0());
    let app = Application::build_with(
        config,
        BuildOptions {
            clock: Arc::new(clock.clone()),
            background_workers: false,
            mailer: None,
            public_url_from_port: true,
        },
    )
    .await
    .expect("app builds");
    let port = app.port();
    let state = app.state();
    tokio::spawn(app.run_until(std::future::pending()));
    TestApp {
        base: format!("http://127.0.0.1:{port}"),
        state,
        clock,
        smtp,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POST /v1/subscriptions with a JSON body.
    pub async fn subscribe_json(&self, body: serde_json::Value) -> reqwest::Response {
        self.http
            .post(self.url("/v1/subscriptions"))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Subscribes `email` with consent.
    pub async fn subscribe(&self, email: &str) -> reqwest::Response {
        self.subscribe_json(serde_json::json!({"email": email, "consent": true}))
            .await
    }

    /// Runs the mail worker until its queue is empty; returns how many jobs it did.
    pub async fn drain_mail(&self) -> usize {
        let mut n = 0;
        while mail_worker::try_execute_task(&self.state).await.unwrap()
            == ExecutionOutcome::TaskCompleted
        {
            n += 1;
            assert!(n < 10_000, "the mail queue never empties");
        }
        n
    }

    /// Subscribes, sends the mail and returns the confirmation link from it.
    pub async fn confirmation_link(&self, email: &str) -> String {
        self.confirmation_link_for(email, "newsletter").await
    }

    /// The same for another list.
    pub async fn confirmation_link_for(&self, email: &str, list: &str) -> String {
        let resp = self
            .subscribe_json(serde_json::json!({"email": email, "consent": true, "list": list}))
            .await;
        assert_eq!(resp.status(), 202);
        self.drain_mail().await;
        let mails = self.smtp.mails_to(email);
        mails
            .last()
            .expect("a confirmation mail")
            .link_containing("/v1/subscriptions/confirm")
    }

    /// Subscribes and confirms `email`.
    pub async fn subscribe_and_confirm(&self, email: &str) {
        let link = self.confirmation_link(email).await;
        let resp = self.http.post(&link).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }

    /// One row per subscription: (list, status) for `email`'s subscriber.
    pub async fn subscriptions_of(&self, email: &str) -> Vec<(String, String)> {
        let rows = self
            .query(
                "SELECT s.list_slug, s.status FROM subscriptions s JOIN subscribers p ON p.id = s.subscriber_id WHERE lower(p.email) = lower($1) ORDER BY s.list_slug",
                vec![email.into()],
            )
            .await;
        rows.iter()
            .map(|r| {
                (
                    r.try_get("", "list_slug").unwrap(),
                    r.try_get("", "status").unwrap(),
                )
            })
            .collect()
    }

    pub async fn query(&self, sql: &str, values: Vec<sea_orm::Value>) -> Vec<sea_orm::QueryResult> {
        let db = &self.state.db;
        db.query_all_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            sql,
            values,
        ))
        .await
        .unwrap()
    }

    pub async fn count(&self, table: &str) -> i64 {
        let rows = self
            .query(&format!("SELECT COUNT(*) AS n FROM {table}"), vec![])
            .await;
        rows[0].try_get("", "n").unwrap()
    }
}

/// The token in a link's query.
pub fn token_of(link: &str) -> String {
    let q = link.split_once("token=").expect("a token in the link").1;
    q.split('&').next().unwrap().to_string()
}

/// A fake captcha `siteverify` endpoint: the token `good` passes.
pub async fn fake_captcha() -> String {
    use poem::{EndpointExt, Route, handler, post, web::Form};
    #[derive(serde::Deserialize)]
    struct Verify {
        secret: String,
        response: String,
    }
    #[handler]
    fn verify(Form(v): Form<Verify>) -> poem::web::Json<serde_json::Value> {
        poem::web::Json(
            serde_json::json!({"success": v.secret == "s3cret" && v.response == "good"}),
        )
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = Route::new().at("/siteverify", post(verify)).boxed();
    tokio::spawn(async move {
        poem::Server::new_with_acceptor(poem::listener::TcpAcceptor::from_tokio(listener).unwrap())
            .run(app)
            .await
    });
    format!("http://127.0.0.1:{port}/siteverify")
}

impl TestApp {
    pub fn clock_now(&self) -> DateTime<Utc> {
        use listguard::clock::Clock;
        self.clock.now()
    }
}

impl TestApp {
    /// An admin call without a body, answered with JSON.
    pub async fn admin_json(&self, method: reqwest::Method, path: &str) -> serde_json::Value {
        self.admin(method, path)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A request with the admin key.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(ADMIN_KEY)
    }

    /// An entry added by hand (`POST /v1/suppressions`), which must answer 201.
    pub async fn add_suppression(&self, entry: serde_json::Value) {
        let resp = self
            .admin(reqwest::Method::POST, "/v1/suppressions")
            .json(&entry)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "{entry}");
    }

    /// A request with the sender key.
    pub fn sender(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(SENDER_KEY)
    }

    /// The unsubscribe URL for `email` on `list`, from the sender API.
    pub async fn unsubscribe_url(&self, list: &str, email: &str) -> String {
        let resp = self
            .sender(reqwest::Method::POST, "/v1/unsubscribe-links")
            .json(&serde_json::json!({"list": list, "emails": [email]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: serde_json::Value = resp.json().await.unwrap();
        body["links"][0]["url"].as_str().unwrap().to_string()
    }

    /// The bulk check's answer for one address.
    pub async fn check(&self, list: Option<&str>, email: &str) -> serde_json::Value {
        let resp = self
            .sender(reqwest::Method::POST, "/v1/suppressions/check")
            .json(&serde_json::json!({"list": list, "emails": [email]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: serde_json::Value = resp.json().await.unwrap();
        body["results"][0].clone()
    }

    /// POST on a link, asking for JSON instead of the page.
    pub async fn post_asking_json(&self, url: &str) -> reqwest::Response {
        self.http
            .post(url)
            .header("accept", "application/json")
            .send()
            .await
            .unwrap()
    }

    /// One-click POST as RFC 8058 describes it.
    pub async fn one_click(&self, url: &str) -> reqwest::Response {
        self.http
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("List-Unsubscribe=One-Click")
            .send()
            .await
            .unwrap()
    }

    /// Every (table, column) of text type.
    pub async fn text_columns(&self) -> Vec<(String, String)> {
        let db = &self.state.db;
        let mut out = Vec::new();
        if listguard::db::is_postgres(db) {
            let rows = self
                .query(
                    "SELECT table_name::text AS t, column_name::text AS c FROM information_schema.columns WHERE table_schema = 'public' AND data_type IN ('text', 'character varying', 'character')",
                    vec![],
                )
                .await;
            for r in rows {
                out.push((r.try_get("", "t").unwrap(), r.try_get("", "c").unwrap()));
            }
        } else {
            let tables = self
                .query("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'", vec![])
                .await;
            for t in tables {
                let t: String = t.try_get("", "name").unwrap();
                let cols = self
                    .query(
                        &format!("SELECT name, type FROM pragma_table_info('{t}')"),
                        vec![],
                    )
                    .await;
                for c in cols {
                    let ty: String = c.try_get("", "type").unwrap();
                    let ty = ty.to_ascii_lowercase();
                    if ty.contains("char")
                        || ty.contains("text")
                        || ty.contains("clob")
                        || ty.is_empty()
                    {
                        out.push((t.clone(), c.try_get("", "name").unwrap()));
                    }
                }
            }
        }
        assert!(out.len() > 10, "the scan found the text columns");
        out
    }

    /// Every place a text column holds `needle` (case-insensitive).
    pub async fn find_text(&self, needle: &str) -> Vec<String> {
        let mut hits = Vec::new();
        for (t, c) in self.text_columns().await {
            let rows = self
                .query(
                    &format!("SELECT COUNT(*) AS n FROM \"{t}\" WHERE lower(CAST(\"{c}\" AS TEXT)) LIKE $1"),
                    vec![format!("%{}%", needle.to_lowercase()).into()],
                )
                .await;
            let n: i64 = rows[0].try_get("", "n").unwrap();
            if n > 0 {
                hits.push(format!("{t}.{c}"));
            }
        }
        hits
    }
}
