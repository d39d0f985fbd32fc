use crate::helpers::spawn_app;

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = spawn_app().await;
    let h = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(h.status(), 200);
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let spec = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(spec.status(), 200);
    let docs = app.http.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
}

#[tokio::test]
async fn the_committed_openapi_document_matches_the_code() {
    let generated = listguard::startup::spec_json().await.unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    if std::env::var("UPDATE_OPENAPI").is_ok() {
        std::fs::write(path, format!("{generated}\n")).unwrap();
        return;
    }
    assert_eq!(
        committed.trim_end(),
        generated.trim_end(),
        "openapi/openapi.json is stale: run `cargo run -- openapi > openapi/openapi.json` (or UPDATE_OPENAPI=1 cargo test)"
    );
}

#[tokio::test]
async fn a_configuration_made_in_code_is_checked_as_a_loaded_one_is() {
    let mut config = listguard::config::Config::default();
    config.server.bind = "127.0.0.1:0".into();
    config.lists[0].mailchimp_list_id = Some("a6b5da1054".into());
    let err = listguard::startup::Application::build_with(
        config,
        listguard::startup::BuildOptions::default(),
    )
    .await
    .err()
    .expect("a mapped list without a Mailchimp key is refused")
    .to_string();
    assert!(err.contains("mailchimp.api_key"), "{err}");
}

/// The value of one sample line of `/metrics`, by its name and labels as
/// written there.
pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

pub(crate) async fn scrape(app: &crate::helpers::TestApp) -> String {
    let resp = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
    );
    resp.text().await.unwrap()
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_read_the_queues_without_personal_data() {
    let app = spawn_app().await;
    let email = "metrics.person@example.org";
    app.subscribe_and_confirm("confirmed.person@example.org")
        .await;
    assert_eq!(app.subscribe(email).await.status(), 202);
    let url = app.unsubscribe_url("newsletter", email).await;
    let token = url.rsplit('/').next().unwrap().to_string();
    assert_eq!(app.http.get(&url).send().await.unwrap().status(), 200);
    app.add_suppression(serde_json::json!({"email": "gone@example.org", "reason": "complaint"}))
        .await;

    let text = scrape(&app).await;
    assert!(text.ends_with("# EOF\n"), "{text}");
    for secret in [
        email,
        "confirmed.person",
        "gone@example.org",
        token.as_str(),
    ] {
        assert!(!text.contains(secret), "{secret} in the metrics");
    }
    let requests = |series: &str| sample(&text, &format!("listguard_http_requests_total{series}"));
    assert_eq!(
        requests(r#"{method="POST",route="/v1/subscriptions",status="202"}"#),
        Some(2.0)
    );
    // The token's route by its template, never by its path.
    assert_eq!(
        requests(r#"{method="GET",route="/v1/unsubscribe/{token}",status="200"}"#),
        Some(1.0)
    );
    // The confirmed address's mail was sent; the other's waits.
    assert_eq!(
        sample(
            &text,
            r#"listguard_outbox_jobs{kind="mail",status="pending"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"listguard_outbox_jobs{kind="mail",status="dead"}"#),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"listguard_subscriptions{list="newsletter",status="pending"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"listguard_subscriptions{list="newsletter",status="confirmed"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"listguard_suppressions{reason="complaint"}"#),
        Some(1.0)
    );
    assert_eq!(sample(&text, "listguard_database_counts_ok"), Some(1.0));

    // Counts read from the database are kept for ten seconds of the
    // service's clock, then read again: the entry has expired a month on.
    app.clock.advance(chrono::Duration::days(40));
    let text = scrape(&app).await;
    assert_eq!(
        sample(&text, r#"listguard_suppressions{reason="complaint"}"#),
        Some(0.0)
    );
    // An unknown path counts as `other`, whatever it was.
    app.http.get(app.url("/a/b/c")).send().await.unwrap();
    let text = scrape(&app).await;
    assert_eq!(
        sample(
            &text,
            r#"listguard_http_requests_total{method="GET",route="other",status="404"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn ops_endpoints_answer_a_wrong_method_with_405_and_allow() {
    let app = spawn_app().await;
    for (method, path) in [
        (reqwest::Method::POST, "/metrics"),
        (reqwest::Method::POST, "/openapi.json"),
        (reqwest::Method::DELETE, "/docs"),
        (reqwest::Method::PUT, "/healthz"),
    ] {
        let resp = app
            .http
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{method} {path}");
        assert_eq!(resp.headers()["allow"], "GET, HEAD", "{method} {path}");
        assert_eq!(
            resp.headers()["content-type"],
            "application/problem+json",
            "{method} {path}"
        );
    }
    let head = app.http.head(app.url("/metrics")).send().await.unwrap();
    assert_eq!(head.status(), 200);
}

#[tokio::test]
async fn the_served_document_lists_every_answer_an_operation_gives() {
    let app = spawn_app().await;
    let spec: serde_json::Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // A page answers 404 as HTML (or JSON), a malformed request as a
    // problem: one entry with every media type, not two `"404"` keys of
    // which a parser keeps one.
    let not_found =
        &spec["paths"]["/v1/subscriptions/confirm"]["get"]["responses"]["404"]["content"];
    for media in ["text/html; charset=utf-8", "application/problem+json"] {
        assert!(not_found.get(media).is_some(), "{media}: {not_found}");
    }
    // A field answered as `null` is documented as nullable.
    let lists = app.admin_json(reqwest::Method::GET, "/v1/lists").await;
    assert!(lists["lists"][0]["mailchimp_list_id"].is_null());
    assert_eq!(
        spec["components"]["schemas"]["ListView"]["properties"]["mailchimp_list_id"]["nullable"],
        true
    );
}

/// Migration 000009 builds its indexes concurrently, outside a transaction;
/// a build that failed halfway leaves an invalid index, which running the
/// migration again replaces. (PostgreSQL only: SQLite has no such indexes.)
#[tokio::test]
async fn an_invalid_probe_index_left_by_a_failed_build_is_rebuilt() {
    use migration::MigratorTrait;
    let app = spawn_app().await;
    let valid = |rows: Vec<sea_orm::QueryResult>| -> Option<bool> {
        rows.first().map(|r| r.try_get("", "v").unwrap())
    };
    let probe = "SELECT indisvalid AS v FROM pg_index \
                 WHERE indexrelid = to_regclass('ix_subscribers_hash_probe')";
    if app.state.db.get_database_backend() != sea_orm::DbBackend::Postgres {
        return;
    }
    assert_eq!(valid(app.query(probe, vec![]).await), Some(true));
    // What an interrupted CREATE INDEX CONCURRENTLY leaves behind.
    app.query(
        "UPDATE pg_index SET indisvalid = false \
         WHERE indexrelid = to_regclass('ix_subscribers_hash_probe') RETURNING 1 AS x",
        vec![],
    )
    .await;
    assert_eq!(valid(app.query(probe, vec![]).await), Some(false));
    app.query(
        "DELETE FROM seaql_migrations WHERE version LIKE '%000009%' RETURNING 1 AS x",
        vec![],
    )
    .await;
    migration::Migrator::up(&app.state.db, None).await.unwrap();
    assert_eq!(valid(app.query(probe, vec![]).await), Some(true));
}
