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
