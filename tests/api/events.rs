//! Outbound events: signed per Standard Webhooks, delivered through the
//! outbox to a receiver on loopback, retried until it answers 2xx.
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU16, Ordering},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use listguard::{config::WebhookConfig, outbox::ExecutionOutcome};
use serde_json::Value;

use crate::helpers::{TestApp, spawn_app_with};

/// The Standard Webhooks specification's example secret, and a second one.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEXT_SECRET: &str = "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24tdGVzdHM=";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Delivery {
    path: String,
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

impl Delivery {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }

    fn event_type(&self) -> String {
        self.json()["type"].as_str().unwrap().to_string()
    }

    /// Whether `webhook-signature` holds a valid `v1` signature made with
    /// this secret, computed here independently of the service's code.
    fn signed_with(&self, secret: &str) -> bool {
        use base64::Engine as _;
        use hmac::{Hmac, Mac};
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = b64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{}.{}.{}", self.id, self.timestamp, self.body).as_bytes());
        let want = b64.encode(mac.finalize().into_bytes());
        self.signature
            .split(' ')
            .any(|s| s.strip_prefix("v1,") == Some(want.as_str()))
    }
}

/// A webhook receiver on loopback that records every request and answers
/// with the status it is set to.
#[derive(Clone)]
struct Receiver {
    base: String,
    got: Arc<Mutex<Vec<Delivery>>>,
    status: Arc<AtomicU16>,
}

impl Receiver {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let me = Self {
            base,
            got: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
        };
        let shared = me.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let shared = shared.clone();
                        async move {
                            let header = |n: &str| {
                                req.headers()
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_string()
                            };
                            let (path, id, timestamp, signature) = (
                                req.uri().path().to_string(),
                                header("webhook-id"),
                                header("webhook-timestamp"),
                                header("webhook-signature"),
                            );
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            shared.got.lock().unwrap().push(Delivery {
                                path,
                                id,
                                timestamp,
                                signature,
                                body: String::from_utf8(body.to_vec()).unwrap(),
                            });
                            let status =
                                StatusCode::from_u16(shared.status.load(Ordering::SeqCst)).unwrap();
                            let mut resp = Response::new(Full::new(Bytes::new()));
                            *resp.status_mut() = status;
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        me
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn got(&self) -> Vec<Delivery> {
        self.got.lock().unwrap().clone()
    }

    fn take(&self) -> Vec<Delivery> {
        std::mem::take(&mut *self.got.lock().unwrap())
    }
}

fn endpoint(url: String, secrets: &[&str], events: &[&str]) -> WebhookConfig {
    let secret = serde_json::from_value(serde_json::json!(secrets)).unwrap();
    WebhookConfig {
        url,
        secret,
        events: events.iter().map(|e| e.to_string()).collect(),
    }
}

/// Delivers every due event, step by step.
async fn deliver_all(app: &TestApp) -> usize {
    let mut n = 0;
    while listguard::events::try_execute_task(&app.state)
        .await
        .unwrap()
        == ExecutionOutcome::TaskCompleted
    {
        n += 1;
        assert!(n < 1000, "the event queue never empties");
    }
    n
}

#[tokio::test]
async fn each_change_reaches_the_endpoints_that_take_it_signed_and_without_the_address_once_gone() {
    let receiver = Receiver::start().await;
    let (all, added_only) = (receiver.url("/all"), receiver.url("/added"));
    let app = spawn_app_with(|c| {
        c.webhooks = vec![
            endpoint(all.clone(), &[SECRET], &[]),
            endpoint(added_only.clone(), &[SECRET], &["suppression.added"]),
        ];
    })
    .await;
    let email = "events.person@example.org";
    app.subscribe_and_confirm(email).await;
    assert_eq!(deliver_all(&app).await, 1);
    let confirmed = receiver.take();
    assert_eq!(confirmed.len(), 1);
    let d = &confirmed[0];
    assert_eq!(d.path, "/all");
    assert!(d.signed_with(SECRET), "{d:?}");
    assert!(!d.signed_with(NEXT_SECRET));
    assert!(d.id.starts_with("msg_"));
    let body = d.json();
    assert_eq!(body["type"], "subscription.confirmed");
    assert_eq!(body["data"]["email"], email);
    assert_eq!(body["data"]["list"], "newsletter");
    let hash = body["data"]["email_hash"].as_str().unwrap().to_string();

    // One-click unsubscribe: the list left, and the entry written.
    let url = app.unsubscribe_url("newsletter", email).await;
    assert_eq!(app.one_click(&url).await.status(), 200);
    assert_eq!(deliver_all(&app).await, 3);
    let left = receiver.take();
    let mut seen: Vec<(String, String)> = left
        .iter()
        .map(|d| (d.path.clone(), d.event_type()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("/added".to_string(), "suppression.added".to_string()),
            ("/all".to_string(), "subscription.unsubscribed".to_string()),
            ("/all".to_string(), "suppression.added".to_string()),
        ]
    );
    for d in &left {
        assert!(d.signed_with(SECRET));
        assert!(!d.body.contains(email), "the address left with the person");
        assert_eq!(d.json()["data"]["email_hash"], hash);
    }
    let added = left
        .iter()
        .find(|d| d.path == "/all" && d.event_type() == "suppression.added");
    let added = added.unwrap().json();
    assert_eq!(added["data"]["reason"], "unsubscribed");
    assert_eq!(added["data"]["scope"], "newsletter");
    // Delivered jobs keep nothing: no table holds the address.
    assert!(app.find_text(email).await.is_empty());

    // A month on, the purge lets the entry go and says so.
    app.clock.advance(chrono::Duration::days(40));
    let purge = app
        .admin(reqwest::Method::POST, "/v1/admin/purge")
        .send()
        .await
        .unwrap();
    assert_eq!(purge.status(), 200);
    assert_eq!(deliver_all(&app).await, 1);
    let expired = receiver.take();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].path, "/all");
    let body = expired[0].json();
    assert_eq!(body["type"], "suppression.expired");
    assert_eq!(body["data"]["email_hash"], hash);

    // An erasure: the erased event and the `erased` entry.
    let other = "erase.me@example.org";
    app.subscribe_and_confirm(other).await;
    deliver_all(&app).await;
    receiver.take();
    let erase = app
        .admin(reqwest::Method::DELETE, &format!("/v1/subscribers/{other}"))
        .send()
        .await
        .unwrap();
    assert!(erase.status().is_success(), "{}", erase.status());
    deliver_all(&app).await;
    let mut erased: Vec<(String, String)> = receiver
        .take()
        .iter()
        .map(|d| {
            assert!(!d.body.contains(other));
            (d.path.clone(), d.event_type())
        })
        .collect();
    erased.sort();
    assert_eq!(
        erased,
        [
            ("/added".to_string(), "suppression.added".to_string()),
            ("/all".to_string(), "subscriber.erased".to_string()),
            ("/all".to_string(), "suppression.added".to_string()),
        ]
    );
}

#[tokio::test]
async fn a_failing_endpoint_is_retried_with_the_same_id_and_rotation_signs_twice() {
    let receiver = Receiver::start().await;
    let url = receiver.url("/hook");
    let app = spawn_app_with(|c| {
        c.webhooks = vec![endpoint(url.clone(), &[NEXT_SECRET, SECRET], &[])];
    })
    .await;
    receiver.status.store(503, Ordering::SeqCst);
    app.subscribe_and_confirm("retry.me@example.org").await;
    assert_eq!(deliver_all(&app).await, 1);
    // Not due again until its backoff has passed.
    assert_eq!(deliver_all(&app).await, 0);
    receiver.status.store(204, Ordering::SeqCst);
    app.clock.advance(chrono::Duration::minutes(5));
    assert_eq!(deliver_all(&app).await, 1);
    let got = receiver.got();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].id, got[1].id, "a retry keeps its webhook-id");
    assert_eq!(got[0].body, got[1].body);
    for d in &got {
        assert_eq!(d.signature.split(' ').count(), 2);
        assert!(d.signed_with(SECRET) && d.signed_with(NEXT_SECRET));
    }
    // Delivered: nothing more to send, and the job holds nothing.
    app.clock.advance(chrono::Duration::hours(2));
    assert_eq!(deliver_all(&app).await, 0);
    assert!(
        app.find_text("retry.me@example.org")
            .await
            .iter()
            .all(|c| !c.starts_with("outbox."))
    );
}

#[tokio::test]
async fn an_undelivered_confirmation_event_is_withdrawn_when_the_person_leaves() {
    let receiver = Receiver::start().await;
    let url = receiver.url("/hook");
    let app = spawn_app_with(|c| {
        c.webhooks = vec![endpoint(
            url.clone(),
            &[SECRET],
            &["subscription.confirmed"],
        )];
    })
    .await;
    let email = "quick.exit@example.org";
    app.subscribe_and_confirm(email).await;
    let link = app.unsubscribe_url("newsletter", email).await;
    assert_eq!(app.one_click(&link).await.status(), 200);
    assert!(
        app.find_text(email).await.is_empty(),
        "no job keeps the address"
    );
    assert_eq!(deliver_all(&app).await, 0);
    assert!(receiver.got().is_empty());
}

#[tokio::test]
async fn a_subscribe_made_at_mailchimp_is_a_confirmation_too() {
    use crate::webhooks::{LIST_ID, form, mailchimp, mapped_app_with};
    let receiver = Receiver::start().await;
    let url = receiver.url("/hook");
    let app = mapped_app_with(|c| {
        c.webhooks = vec![endpoint(
            url.clone(),
            &[SECRET],
            &["subscription.confirmed"],
        )];
    })
    .await;
    let email = "signed.up.there@example.org";
    let body = form(&[
        ("type", "subscribe"),
        ("fired_at", "2026-01-31 10:00:00"),
        ("data[list_id]", LIST_ID),
        ("data[email]", email),
        ("data[merges][FNAME]", "Ada"),
    ]);
    let (status, _) = mailchimp(&app, &body).await;
    assert_eq!(status, 200);
    assert_eq!(deliver_all(&app).await, 1);
    let got = receiver.got();
    let event = got[0].json();
    assert_eq!(event["type"], "subscription.confirmed");
    assert_eq!(event["data"]["email"], email);
    assert_eq!(event["data"]["name"], "Ada");
    // The same event again changes nothing and sends nothing.
    let (status, _) = mailchimp(&app, &body.replace("10%3A00%3A00", "10%3A00%3A01")).await;
    assert_eq!(status, 200);
    assert_eq!(deliver_all(&app).await, 0);
}

#[tokio::test]
async fn an_unreachable_endpoint_is_retried_and_its_url_stays_out_of_the_error() {
    let app = spawn_app_with(|c| {
        // Nothing listens on the discard port; the token stands for one a
        // receiver may put in its URL.
        c.webhooks = vec![endpoint(
            "http://127.0.0.1:9/hook?token=sekrit-in-url".into(),
            &[SECRET],
            &[],
        )];
    })
    .await;
    app.subscribe_and_confirm("unreachable@example.org").await;
    assert_eq!(deliver_all(&app).await, 1);
    let rows = app
        .query(
            "SELECT status, attempts, last_error FROM outbox WHERE kind = 'event'",
            vec![],
        )
        .await;
    assert_eq!(rows.len(), 1);
    let status: String = rows[0].try_get("", "status").unwrap();
    let attempts: i32 = rows[0].try_get("", "attempts").unwrap();
    let error: String = rows[0].try_get("", "last_error").unwrap();
    assert_eq!((status.as_str(), attempts), ("pending", 1), "{error}");
    assert!(error.starts_with("request failed"), "{error}");
    assert!(!error.contains("sekrit"), "{error}");
}
