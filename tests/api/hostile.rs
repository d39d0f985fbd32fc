//! Hostile input gets a clear 4xx problem document and changes nothing.
use crate::helpers::spawn_app;

async fn assert_problem(resp: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], status);
    body
}

#[tokio::test]
async fn malformed_requests_get_4xx_problem_documents() {
    let app = spawn_app().await;
    let post = |ct: &'static str, body: Vec<u8>| {
        app.http
            .post(app.url("/v1/subscriptions"))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    assert_problem(
        post("application/json", b"{\"email\":".to_vec())
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_problem(
        post("application/json", b"[1,2]".to_vec()).await.unwrap(),
        400,
    )
    .await;
    assert_problem(post("text/plain", b"email=a".to_vec()).await.unwrap(), 415).await;
    assert_problem(
        post("application/xml", b"<a/>".to_vec()).await.unwrap(),
        415,
    )
    .await;
    let big = vec![b'a'; 2 * 1024 * 1024];
    assert_problem(post("application/json", big).await.unwrap(), 413).await;

    let field = |body: serde_json::Value| async {
        let resp = app.subscribe_json(body).await;
        let p = assert_problem(resp, 400).await;
        p["invalid_params"][0]["name"].as_str().unwrap().to_string()
    };
    let long = format!("{}@example.org", "a".repeat(300));
    assert_eq!(
        field(serde_json::json!({"email": long, "consent": true})).await,
        "email"
    );
    assert_eq!(
        field(serde_json::json!({"email": "a@b@c", "consent": true})).await,
        "email"
    );
    assert_eq!(
        field(serde_json::json!({"email": "a@example.org", "consent": true, "name": "a\u{7}b"}))
            .await,
        "name"
    );
    assert_eq!(
        field(serde_json::json!({"email": "a@example.org"})).await,
        "consent"
    );
    assert_eq!(
        field(serde_json::json!({"email": "a@example.org", "consent": false})).await,
        "consent"
    );
    assert_eq!(
        field(serde_json::json!({"email": "a@example.org", "consent": "yes"})).await,
        "consent"
    );
    assert_eq!(
        field(serde_json::json!({"email": 5, "consent": true})).await,
        "email"
    );
    assert_eq!(field(serde_json::json!({"consent": true})).await, "email");

    assert_eq!(app.count("subscribers").await, 0);
    assert_eq!(app.count("outbox").await, 0);
}

/// A JSON body that leaves out a required field gets 400 naming it, as
/// one with a field of the wrong type does.
#[tokio::test]
async fn a_body_without_a_required_field_gets_400_naming_it() {
    use reqwest::Method;
    use serde_json::json;

    let app = spawn_app().await;
    for (method, path, body, missing) in [
        (
            Method::POST,
            "/v1/unsubscribe-links",
            json!({"emails": ["a@example.org"]}),
            "list",
        ),
        (
            Method::POST,
            "/v1/unsubscribe-links",
            json!({"list": "newsletter"}),
            "emails",
        ),
        (
            Method::POST,
            "/v1/suppressions/check",
            json!({"list": "newsletter"}),
            "emails",
        ),
        (
            Method::POST,
            "/v1/suppressions",
            json!({"reason": "manual"}),
            "email",
        ),
    ] {
        let send = if path == "/v1/suppressions" {
            app.admin(method, path)
        } else {
            app.sender(method, path)
        };
        let p = assert_problem(send.json(&body).send().await.unwrap(), 400).await;
        assert_eq!(p["invalid_params"][0]["name"], missing, "{path} {body}");
        assert!(
            p["detail"].as_str().unwrap_or_default().contains(missing),
            "{path}: {p}"
        );
    }
    assert_eq!(app.count("suppressions").await, 0);
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_refused() {
    let app = spawn_app().await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..40).map(|_| Ok(vec![b' '; 64 * 1024])).collect();
    let body = reqwest::Body::wrap_stream(futures_stream(chunks));
    let resp = app
        .http
        .post(app.url("/v1/subscriptions"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_problem(resp, 413).await;
}

fn futures_stream(
    items: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    tokio_stream::iter(items)
}

#[tokio::test]
async fn wrong_methods_get_405_with_allow_and_unknown_paths_404() {
    let app = spawn_app().await;
    let resp = app
        .http
        .delete(app.url("/v1/subscriptions"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["allow"], "POST");
    assert_problem(resp, 405).await;
    let resp = app
        .http
        .put(app.url("/v1/subscriptions/confirm"))
        .send()
        .await
        .unwrap();
    let allow = resp.headers()["allow"].to_str().unwrap().to_string();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    assert_problem(resp, 405).await;
    assert_problem(
        app.http.get(app.url("/v2/nothing")).send().await.unwrap(),
        404,
    )
    .await;
}

#[tokio::test]
async fn confirm_tokens_of_any_shape_never_cause_a_5xx() {
    let app = spawn_app().await;
    for token in [
        "",
        "%00",
        "x".repeat(5000).as_str(),
        "'; DROP TABLE subscribers; --",
        "../../etc/passwd",
        "ä€𝄞",
    ] {
        for path in ["/v1/subscriptions/confirm", "/v1/subscriptions/block"] {
            let url = format!("{}?token={}", app.url(path), urlencode(token));
            let get = app.http.get(&url).send().await.unwrap();
            assert!(
                get.status().is_client_error(),
                "{path} GET {token:?}: {}",
                get.status()
            );
            let post = app.http.post(&url).send().await.unwrap();
            assert!(
                post.status().is_client_error(),
                "{path} POST {token:?}: {}",
                post.status()
            );
        }
    }
    assert_eq!(app.count("subscribers").await, 0);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
