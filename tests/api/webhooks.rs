//! Inbound webhooks: Mailchimp audience events at the signed URL, Mandrill
//! events signed with `X-Mandrill-Signature`, and registering the audience
//! webhook at (a fake) Mailchimp.
use listguard::{
    config::Config,
    mailchimp::webhook::{audience_signature, mandrill_signature},
};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    fake_mailchimp::{FAKE_API_KEY, FakeMailchimp},
    helpers::{TestApp, captured_logs, spawn_app_with},
};

const HOOK_KEY: &str = "audience-hook-key";
pub(crate) const LIST_ID: &str = "a6b5da1054";
const MANDRILL_KEY: &str = "mandrill-webhook-key";
const MANDRILL_URL: &str = "https://hooks.example.org/v1/webhooks/mandrill";

/// Mailchimp's own sample delivery.
const SAMPLE: &str = "type=unsubscribe&fired_at=2009-03-26+21%3A40%3A57&data[action]=unsub&data[reason]=manual&data[id]=8a25ff1d98&data[list_id]=a6b5da1054&data[email]=api%2Bunsub%40mailchimp.com&data[email_type]=html&data[merges][EMAIL]=api%2Bunsub%40mailchimp.com&data[merges][FNAME]=MailChimp&data[ip_opt]=10.20.10.30&data[campaign_id]=cb398d21d2";
const SAMPLE_EMAIL: &str = "api+unsub@mailchimp.com";

/// An app whose `newsletter` list is mapped to [`LIST_ID`], with an audience
/// webhook key and a Mandrill webhook.
async fn mapped_app() -> TestApp {
    mapped_app_with(|_| {}).await
}

/// [`mapped_app`] with more configuration.
pub(crate) async fn mapped_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_with(|c| {
        c.mailchimp.webhook_key = Some(HOOK_KEY.into());
        c.mailchimp.api_key = Some(FAKE_API_KEY.into());
        c.mailchimp.base_url = Some("http://127.0.0.1:9/3.0".into());
        c.lists[0].mailchimp_list_id = Some(LIST_ID.into());
        c.mandrill.webhook_key = Some(MANDRILL_KEY.into());
        c.mandrill.webhook_url = Some(MANDRILL_URL.into());
        adjust(c);
    })
    .await
}

fn signed_path(slug: &str) -> String {
    format!(
        "/v1/webhooks/mailchimp/{slug}/{}",
        audience_signature(HOOK_KEY.as_bytes(), slug)
    )
}

async fn post_form(app: &TestApp, path: &str, body: &str) -> (StatusCode, Value) {
    let resp = app
        .http
        .post(app.url(path))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Posts a Mailchimp event to the newsletter's signed URL.
pub(crate) async fn mailchimp(app: &TestApp, body: &str) -> (StatusCode, Value) {
    post_form(app, &signed_path("newsletter"), body).await
}

pub(crate) fn form(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap()
}

async fn mailchimp_jobs(app: &TestApp) -> i64 {
    let rows = app
        .query(
            "SELECT COUNT(*) AS n FROM outbox WHERE kind = 'mailchimp'",
            vec![],
        )
        .await;
    rows[0].try_get("", "n").unwrap()
}

async fn names(app: &TestApp) -> Vec<(String, Option<String>)> {
    app.query("SELECT email, name FROM subscribers ORDER BY id", vec![])
        .await
        .iter()
        .map(|r| {
            (
                r.try_get("", "email").unwrap(),
                r.try_get("", "name").unwrap(),
            )
        })
        .collect()
}

async fn entries(app: &TestApp) -> Vec<(String, String, String)> {
    app.query(
        "SELECT scope, reason, source FROM suppressions ORDER BY scope",
        vec![],
    )
    .await
    .iter()
    .map(|r| {
        (
            r.try_get("", "scope").unwrap(),
            r.try_get("", "reason").unwrap(),
            r.try_get("", "source").unwrap(),
        )
    })
    .collect()
}

#[tokio::test]
async fn the_sample_unsubscribe_suppresses_at_the_signed_url_and_nowhere_else() {
    let app = mapped_app().await;
    let wrong = format!(
        "/v1/webhooks/mailchimp/newsletter/{}",
        audience_signature(b"another key", "newsletter")
    );
    let (status, body) = post_form(&app, &wrong, SAMPLE).await;
    assert_eq!(status, 404);
    assert_eq!(body["status"], 404, "a problem document");
    for path in [
        "/v1/webhooks/mailchimp/newsletter/".to_string() + &"0".repeat(64),
        "/v1/webhooks/mailchimp/newsletter/x".into(),
        signed_path("nope"),
    ] {
        assert_eq!(post_form(&app, &path, SAMPLE).await.0, 404, "{path}");
    }
    assert_eq!(
        app.check(Some("newsletter"), SAMPLE_EMAIL).await["suppressed"],
        false
    );
    assert_eq!(app.count("suppressions").await, 0);
    assert_eq!(app.count("webhook_receipts").await, 0);

    let (status, body) = mailchimp(&app, SAMPLE).await;
    assert_eq!(status, 200);
    assert_eq!(body["outcome"], "applied");
    let check = app.check(Some("newsletter"), SAMPLE_EMAIL).await;
    assert_eq!(check["suppressed"], true);
    assert_eq!(check["reason"], "unsubscribed");
    assert_eq!(
        entries(&app).await,
        vec![(
            "newsletter".into(),
            "unsubscribed".into(),
            "mailchimp".into()
        )]
    );
    assert_eq!(
        mailchimp_jobs(&app).await,
        0,
        "nothing is echoed to Mailchimp"
    );

    let logs = captured_logs().to_lowercase();
    assert!(!logs.contains(SAMPLE_EMAIL), "the logs hold the address");
    assert!(!logs.contains(&audience_signature(HOOK_KEY.as_bytes(), "newsletter")));
}

#[tokio::test]
async fn a_subscriber_unsubscribed_at_mailchimp_leaves_the_list_without_an_echo() {
    let app = mapped_app().await;
    let email = "ada@example.org";
    let subscribe = form(&[
        ("type", "subscribe"),
        ("fired_at", "2026-01-31 10:00:00"),
        ("data[list_id]", LIST_ID),
        ("data[email]", email),
        ("data[merges][FNAME]", "Ada"),
    ]);
    assert_eq!(mailchimp(&app, &subscribe).await.0, 200);
    assert_eq!(app.check(Some("newsletter"), email).await["mailable"], true);

    let unsubscribe = form(&[
        ("type", "unsubscribe"),
        ("fired_at", "2026-01-31 10:05:00"),
        ("data[action]", "unsub"),
        ("data[reason]", "manual"),
        ("data[list_id]", LIST_ID),
        ("data[email]", email),
    ]);
    assert_eq!(mailchimp(&app, &unsubscribe).await.0, 200);
    let check = app.check(Some("newsletter"), email).await;
    assert_eq!(check["subscribed"], false);
    assert_eq!(check["reason"], "unsubscribed");
    assert_eq!(app.count("subscribers").await, 0);
    assert_eq!(mailchimp_jobs(&app).await, 0, "no Mailchimp job was queued");
    let kept: Vec<Option<String>> = app
        .query("SELECT mailchimp_hash FROM suppressions", vec![])
        .await
        .iter()
        .map(|r| r.try_get("", "mailchimp_hash").unwrap())
        .collect();
    assert_eq!(
        kept,
        vec![Some(md5_hex(email))],
        "the member hash is kept to archive the member on expiry"
    );
}

fn md5_hex(email: &str) -> String {
    listguard::domain::EmailAddress::parse(email)
        .unwrap()
        .mailchimp_hash()
}

#[tokio::test]
async fn a_replayed_delivery_applies_once() {
    let app = mapped_app().await;
    let (_, first) = mailchimp(&app, SAMPLE).await;
    assert_eq!(first["outcome"], "applied");
    // The person comes back at Mailchimp; then the old delivery is replayed.
    let back = form(&[
        ("type", "subscribe"),
        ("fired_at", "2009-03-27 08:00:00"),
        ("data[list_id]", LIST_ID),
        ("data[email]", SAMPLE_EMAIL),
    ]);
    assert_eq!(mailchimp(&app, &back).await.1["outcome"], "applied");
    let check = app.check(Some("newsletter"), SAMPLE_EMAIL).await;
    assert_eq!(
        check["suppressed"], false,
        "subscribing lifts `unsubscribed`"
    );
    assert_eq!(check["mailable"], true);

    let (status, again) = mailchimp(&app, SAMPLE).await;
    assert_eq!(status, 200);
    assert_eq!(again["outcome"], "replay");
    let check = app.check(Some("newsletter"), SAMPLE_EMAIL).await;
    assert_eq!(check["mailable"], true, "the replay changed nothing");
    assert_eq!(app.count("webhook_receipts").await, 2);

    // Receipts go after a week.
    app.clock.advance(chrono::Duration::days(8));
    let report = listguard::services::purge::purge(&app.state, false, |_, _| {})
        .await
        .unwrap();
    assert_eq!(report.webhook_receipts, 2);
    assert_eq!(app.count("webhook_receipts").await, 0);
}

#[tokio::test]
async fn cleaned_events_suppress_with_bounce_or_complaint() {
    let app = mapped_app().await;
    let cleaned = |email: &str, reason: &str| {
        form(&[
            ("type", "cleaned"),
            ("fired_at", "2026-01-31 10:00:00"),
            ("data[list_id]", LIST_ID),
            ("data[campaign_id]", "4fjk2ma9xd"),
            ("data[reason]", reason),
            ("data[email]", email),
        ])
    };
    assert_eq!(
        mailchimp(&app, &cleaned("spam@example.org", "abuse"))
            .await
            .0,
        200
    );
    assert_eq!(
        mailchimp(&app, &cleaned("gone@example.org", "hard"))
            .await
            .0,
        200
    );
    let spam = app.check(Some("newsletter"), "spam@example.org").await;
    assert_eq!(spam["suppressed"], true);
    assert_eq!(spam["reason"], "complaint");
    assert_eq!(
        app.check(Some("newsletter"), "gone@example.org").await["reason"],
        "bounce"
    );

    // An `unsubscribed` entry gives way to a complaint.
    assert_eq!(mailchimp(&app, SAMPLE).await.0, 200);
    let abuse = SAMPLE
        .replace("data[reason]=manual", "data[reason]=abuse")
        .replace("2009-03-26", "2009-03-28");
    assert_eq!(mailchimp(&app, &abuse).await.0, 200);
    assert_eq!(
        app.check(Some("newsletter"), SAMPLE_EMAIL).await["reason"],
        "complaint"
    );
    // A complaint blocks a new signup's confirmation mail.
    assert_eq!(app.subscribe("spam@example.org").await.status(), 202);
    assert_eq!(app.drain_mail().await, 0);
    assert_eq!(mailchimp_jobs(&app).await, 0);
}

#[tokio::test]
async fn subscribe_then_profile_then_upemail() {
    let app = mapped_app().await;
    let old = "grace@example.org";
    let new = "grace.hopper@example.org";
    let subscribe = form(&[
        ("type", "subscribe"),
        ("fired_at", "2026-01-31 10:00:00"),
        ("data[id]", "8a25ff1d98"),
        ("data[list_id]", LIST_ID),
        ("data[email]", old),
        ("data[email_type]", "html"),
        ("data[merges][EMAIL]", old),
        ("data[merges][FNAME]", "Grace"),
        ("data[merges][LNAME]", "Murray"),
        ("data[merges][INTERESTS]", "Group1,Group2"),
        ("data[ip_opt]", "10.20.10.30"),
        ("data[ip_signup]", "10.20.10.30"),
    ]);
    let (status, body) = mailchimp(&app, &subscribe).await;
    assert_eq!(
        (status, body["outcome"].clone()),
        (StatusCode::OK, json!("applied"))
    );
    assert_eq!(
        app.subscriptions_of(old).await,
        vec![("newsletter".into(), "confirmed".into())]
    );
    assert_eq!(
        names(&app).await,
        vec![(old.into(), Some("Grace Murray".into()))]
    );
    let check = app.check(Some("newsletter"), old).await;
    assert_eq!(
        (check["subscribed"].clone(), check["mailable"].clone()),
        (json!(true), json!(true))
    );
    let consent = app
        .query("SELECT kind, source, ip FROM consent_events", vec![])
        .await;
    assert_eq!(consent.len(), 1);
    assert_eq!(
        consent[0].try_get::<String>("", "kind").unwrap(),
        "confirmed"
    );
    assert_eq!(
        consent[0]
            .try_get::<Option<String>>("", "source")
            .unwrap()
            .as_deref(),
        Some("mailchimp")
    );
    assert_eq!(
        consent[0]
            .try_get::<Option<String>>("", "ip")
            .unwrap()
            .as_deref(),
        Some("10.20.10.30")
    );
    let source: Vec<Option<String>> = app
        .query("SELECT source FROM subscriptions", vec![])
        .await
        .iter()
        .map(|r| r.try_get("", "source").unwrap())
        .collect();
    assert_eq!(source, vec![Some("mailchimp".to_string())]);

    let profile = form(&[
        ("type", "profile"),
        ("fired_at", "2026-01-31 10:10:00"),
        ("data[list_id]", LIST_ID),
        ("data[email]", old),
        ("data[merges][FNAME]", "Grace"),
        ("data[merges][LNAME]", "Hopper"),
    ]);
    assert_eq!(mailchimp(&app, &profile).await.0, 200);
    assert_eq!(
        names(&app).await,
        vec![(old.into(), Some("Grace Hopper".into()))]
    );

    let upemail = form(&[
        ("type", "upemail"),
        ("fired_at", "2026-01-31 10:20:00"),
        ("data[list_id]", LIST_ID),
        ("data[new_id]", "51aa6795f1"),
        ("data[new_email]", new),
        ("data[old_email]", old),
    ]);
    assert_eq!(mailchimp(&app, &upemail).await.0, 200);
    assert_eq!(
        names(&app).await,
        vec![(new.into(), Some("Grace Hopper".into()))]
    );
    assert!(app.subscriptions_of(old).await.is_empty());
    assert_eq!(
        app.subscriptions_of(new).await,
        vec![("newsletter".into(), "confirmed".into())]
    );
    assert_eq!(app.check(Some("newsletter"), new).await["mailable"], true);
    assert_eq!(
        app.check(Some("newsletter"), old).await["subscribed"],
        false
    );
    // The consent record moved with the address: unsubscribing the new one
    // keeps it under the new hash.
    let url = app.unsubscribe_url("newsletter", new).await;
    assert_eq!(app.one_click(&url).await.status(), 200);
    assert_eq!(app.count("consent_events").await, 1);

    assert_eq!(
        mailchimp_jobs(&app).await,
        1,
        "only the unsubscribe made here is told to Mailchimp"
    );
}

#[tokio::test]
async fn upemail_to_an_address_with_a_subscriber_changes_nothing() {
    let app = mapped_app().await;
    for email in ["one@example.org", "two@example.org"] {
        let body = form(&[
            ("type", "subscribe"),
            ("data[list_id]", LIST_ID),
            ("data[email]", email),
        ]);
        assert_eq!(mailchimp(&app, &body).await.0, 200);
    }
    let upemail = form(&[
        ("type", "upemail"),
        ("data[list_id]", LIST_ID),
        ("data[new_email]", "two@example.org"),
        ("data[old_email]", "one@example.org"),
    ]);
    assert_eq!(mailchimp(&app, &upemail).await.0, 200);
    assert_eq!(
        names(&app).await,
        vec![
            ("one@example.org".into(), None),
            ("two@example.org".into(), None)
        ]
    );
    assert!(captured_logs().contains("to one that has a subscriber here"));
}

#[tokio::test]
async fn hostile_and_foreign_audience_deliveries_are_4xx_and_change_nothing() {
    let app = mapped_app().await;
    let other_list = SAMPLE.replace("a6b5da1054", "ffffffffff");
    let cases: Vec<(String, u16)> = vec![
        (other_list, 400),
        (
            SAMPLE.replace("api%2Bunsub%40mailchimp.com", "not-an-address"),
            400,
        ),
        (SAMPLE.replace("type=unsubscribe&", ""), 400),
        ("type=unsubscribe&data[list_id]=a6b5da1054".into(), 400),
        (
            "type=upemail&data[list_id]=a6b5da1054&data[old_email]=a%40example.org".into(),
            400,
        ),
        ("%%%&&&===".into(), 400),
        (
            format!(
                "type=subscribe&data[list_id]=a6b5da1054&data[email]={}",
                "a".repeat(listguard::api::MAX_WEBHOOK_BODY + 1)
            ),
            413,
        ),
    ];
    for (body, want) in cases {
        let (status, problem) = mailchimp(&app, &body).await;
        assert_eq!(status.as_u16(), want, "{}", &body[..body.len().min(80)]);
        assert_eq!(problem["status"], want);
    }
    // Not a form.
    let resp = app
        .http
        .post(app.url(&signed_path("newsletter")))
        .json(&json!({"type": "unsubscribe"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    let resp = app
        .http
        .post(app.url(&signed_path("newsletter")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    // An unknown type is acknowledged and ignored.
    let (status, body) = mailchimp(
        &app,
        "type=campaign&data[id]=5aa2102003&data[list_id]=a6b5da1054",
    )
    .await;
    assert_eq!(
        (status.as_u16(), body["outcome"].clone()),
        (200, json!("ignored"))
    );
    assert_eq!(app.count("suppressions").await, 0);
    assert_eq!(app.count("subscribers").await, 0);
    assert_eq!(app.count("webhook_receipts").await, 0);
}

#[tokio::test]
async fn the_validation_get_answers_only_at_the_signed_url() {
    let app = mapped_app().await;
    let resp = app
        .http
        .get(app.url(&signed_path("newsletter")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = app
        .http
        .get(app.url("/v1/webhooks/mailchimp/newsletter/abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let resp = app
        .http
        .delete(app.url(&signed_path("newsletter")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
}

#[tokio::test]
async fn without_a_key_or_a_mapped_list_the_audience_webhook_is_not_there() {
    let no_key = spawn_app_with(|c| {
        c.mailchimp.api_key = Some(FAKE_API_KEY.into());
        c.mailchimp.base_url = Some("http://127.0.0.1:9/3.0".into());
        c.lists[0].mailchimp_list_id = Some(LIST_ID.into());
    })
    .await;
    assert_eq!(mailchimp(&no_key, SAMPLE).await.0, 404);
    let resp = no_key
        .http
        .get(no_key.url(&signed_path("newsletter")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let err = listguard::mailchimp::webhook::register(&no_key.state, "newsletter")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("webhook_key"), "{err}");

    let unmapped = spawn_app_with(|c| c.mailchimp.webhook_key = Some(HOOK_KEY.into())).await;
    assert_eq!(mailchimp(&unmapped, SAMPLE).await.0, 404);
    assert_eq!(unmapped.count("suppressions").await, 0);
    let err = listguard::mailchimp::webhook::register(&unmapped.state, "newsletter")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("mailchimp_list_id"), "{err}");
    assert!(
        listguard::mailchimp::webhook::register(&unmapped.state, "nope")
            .await
            .is_err()
    );
}

// ---------------------------------------------------------------------------
// Mandrill
// ---------------------------------------------------------------------------

/// The body and signature of a Mandrill delivery of `events`.
fn mandrill_delivery(events: &Value) -> (String, String) {
    let events = events.to_string();
    let body = form(&[("mandrill_events", &events)]);
    let signature = mandrill_signature(
        MANDRILL_KEY.as_bytes(),
        MANDRILL_URL,
        &[("mandrill_events".to_string(), events)],
    )
    .unwrap();
    (body, signature)
}

async fn mandrill(app: &TestApp, body: &str, signature: Option<&str>) -> (StatusCode, Value) {
    let mut req = app
        .http
        .post(app.url("/v1/webhooks/mandrill"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_string());
    if let Some(s) = signature {
        req = req.header("x-mandrill-signature", s);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn message_event(event: &str, email: &str) -> Value {
    json!({
        "event": event,
        "ts": 1365109999,
        "_id": "exampleaaaaaaaaaaaaaaaaaaaaaaaaa",
        "msg": {"ts": 1365109999, "email": email, "subject": "This an example webhook message", "state": "bounced"}
    })
}

#[tokio::test]
async fn a_signed_mandrill_hard_bounce_suppresses_for_all_lists() {
    let app = mapped_app().await;
    let resp = app
        .http
        .head(app.url("/v1/webhooks/mandrill"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let email = "bounced@example.org";
    app.subscribe_and_confirm(email).await;
    let jobs_before = mailchimp_jobs(&app).await;
    let (body, signature) = mandrill_delivery(&json!([message_event("hard_bounce", email)]));

    // A wrong or missing signature: 401, nothing changes.
    let tampered = body.replace("bounced%40", "other%40");
    for (b, s) in [
        (body.as_str(), Some("mOvq6ELcRGPELc0BwAFZn/PLZQA=")),
        (body.as_str(), None),
        (body.as_str(), Some("")),
        (tampered.as_str(), Some(signature.as_str())),
    ] {
        let (status, problem) = mandrill(&app, b, s).await;
        assert_eq!(status, 401);
        assert_eq!(problem["status"], 401);
    }
    assert_eq!(app.check(None, email).await["suppressed"], false);
    assert_eq!(app.check(Some("newsletter"), email).await["mailable"], true);

    let (status, ack) = mandrill(&app, &body, Some(&signature)).await;
    assert_eq!(status, 200);
    assert_eq!(ack["outcome"], "applied");
    let check = app.check(None, email).await;
    assert_eq!(check["suppressed"], true);
    assert_eq!(check["reason"], "bounce");
    let check = app.check(Some("newsletter"), email).await;
    assert_eq!(
        (check["subscribed"].clone(), check["reason"].clone()),
        (json!(false), json!("bounce"))
    );
    assert_eq!(
        entries(&app).await,
        vec![
            ("*".into(), "bounce".into(), "mandrill".into()),
            ("newsletter".into(), "bounce".into(), "mandrill".into())
        ]
    );
    assert_eq!(
        mailchimp_jobs(&app).await,
        jobs_before + 1,
        "Mailchimp hears of the unsubscribe Mandrill caused"
    );

    let (_, again) = mandrill(&app, &body, Some(&signature)).await;
    assert_eq!(again["outcome"], "replay");
}

#[tokio::test]
async fn mandrill_events_map_to_reasons_and_blacklist_removal_lifts() {
    let app = mapped_app().await;
    let events = json!([
        message_event("reject", "reject@example.org"),
        message_event("spam", "spam@example.org"),
        message_event("unsub", "unsub@example.org"),
        message_event("soft_bounce", "soft@example.org"),
        message_event("open", "open@example.org"),
        {"type": "blacklist", "action": "add", "reject": {"reason": "hard-bounce", "detail": "", "email": "listed@example.org"}},
        {"type": "whitelist", "action": "add", "entry": {"email": "white@example.org"}},
    ]);
    let (body, signature) = mandrill_delivery(&events);
    let (status, ack) = mandrill(&app, &body, Some(&signature)).await;
    assert_eq!(
        (status.as_u16(), ack["outcome"].clone()),
        (200, json!("applied"))
    );
    for (email, reason) in [
        ("reject@example.org", Some("bounce")),
        ("spam@example.org", Some("complaint")),
        ("unsub@example.org", Some("unsubscribed")),
        ("soft@example.org", None),
        ("open@example.org", None),
        ("listed@example.org", Some("bounce")),
        ("white@example.org", None),
    ] {
        let check = app.check(Some("newsletter"), email).await;
        assert_eq!(check["reason"].as_str(), reason, "{email}");
    }
    // An entry made by hand survives the rejection-list removal.
    app.add_suppression(
        json!({"email": "listed@example.org", "list": "newsletter", "reason": "manual"}),
    )
    .await;
    let (body, signature) = mandrill_delivery(&json!([
        {"type": "blacklist", "action": "remove", "reject": {"email": "listed@example.org"}}
    ]));
    assert_eq!(mandrill(&app, &body, Some(&signature)).await.0, 200);
    assert_eq!(
        app.check(None, "listed@example.org").await["reason"],
        "manual",
        "only Mandrill's own entry went"
    );
}

#[tokio::test]
async fn hostile_mandrill_deliveries_are_4xx() {
    let app = mapped_app().await;
    let sign = |pairs: &[(&str, &str)]| {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        (
            form(pairs),
            mandrill_signature(MANDRILL_KEY.as_bytes(), MANDRILL_URL, &owned).unwrap(),
        )
    };
    for (pairs, want) in [
        (vec![("mandrill_events", "not json")], 400),
        (vec![("mandrill_events", "{\"event\":\"spam\"}")], 400),
        (vec![("other", "[]")], 400),
    ] {
        let (body, signature) = sign(&pairs);
        let (status, problem) = mandrill(&app, &body, Some(&signature)).await;
        assert_eq!(status.as_u16(), want, "{pairs:?}");
        assert_eq!(problem["status"], want);
    }
    let many = serde_json::to_string(&vec![json!({}); 1001]).unwrap();
    let (body, signature) = sign(&[("mandrill_events", &many)]);
    assert_eq!(mandrill(&app, &body, Some(&signature)).await.0, 400);
    // Not a form: cannot carry a valid signature.
    let resp = app
        .http
        .post(app.url("/v1/webhooks/mandrill"))
        .header("x-mandrill-signature", "x")
        .json(&json!([]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let (body, signature) = sign(&[("mandrill_events", "[]")]);
    assert_eq!(
        mandrill(&app, &body, Some(&signature)).await.1["outcome"],
        "ignored"
    );
    assert_eq!(app.count("suppressions").await, 0);
}

/// Mandrill makes the webhook's key only after its HEAD check has passed,
/// so the check must pass before the key is configured; events cannot be
/// verified until then and are not taken.
#[tokio::test]
async fn without_configuration_the_mandrill_check_passes_and_events_are_not_taken() {
    let app = spawn_app_with(|_| {}).await;
    let resp = app
        .http
        .head(app.url("/v1/webhooks/mandrill"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (body, signature) = mandrill_delivery(&json!([message_event("spam", "a@example.org")]));
    assert_eq!(mandrill(&app, &body, Some(&signature)).await.0, 404);
}

// ---------------------------------------------------------------------------
// Registration
// ---------------------------------------------------------------------------

#[tokio::test]
async fn register_webhook_puts_the_signed_url_at_mailchimp_after_its_validation_get() {
    let fake = FakeMailchimp::start(&[LIST_ID]).await;
    let base = fake.base_url();
    let app = spawn_app_with(|c| {
        c.mailchimp.webhook_key = Some(HOOK_KEY.into());
        c.mailchimp.api_key = Some(FAKE_API_KEY.into());
        c.mailchimp.base_url = Some(base);
        c.lists[0].mailchimp_list_id = Some(LIST_ID.into());
    })
    .await;
    let url = listguard::mailchimp::webhook::register(&app.state, "newsletter")
        .await
        .unwrap();
    assert_eq!(url, app.url(&signed_path("newsletter")));
    let hooks = fake.webhooks(LIST_ID);
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0]["url"], url);
    assert_eq!(
        hooks[0]["sources"]["api"], false,
        "no echoes of our own changes"
    );
    assert_eq!(hooks[0]["events"]["upemail"], true);
}

#[tokio::test]
async fn concurrent_identical_deliveries_apply_once() {
    let app = mapped_app().await;
    let body = form(&[
        ("type", "subscribe"),
        ("fired_at", "2026-01-31 10:00:00"),
        ("data[list_id]", LIST_ID),
        ("data[email]", "twice@example.org"),
    ]);
    let outcomes = futures_util::future::join_all((0..6).map(|_| mailchimp(&app, &body))).await;
    let mut applied = 0;
    for (status, ack) in outcomes {
        assert_eq!(status, 200);
        applied += usize::from(ack["outcome"] == "applied");
    }
    assert_eq!(applied, 1);
    assert_eq!(app.count("consent_events").await, 1);
    assert_eq!(app.count("webhook_receipts").await, 1);
}

#[tokio::test]
async fn a_large_mandrill_batch_passes_the_general_body_limit() {
    let app = mapped_app().await;
    // Mandrill sends up to 1,000 events a POST: far past the 64 KiB default.
    let events: Vec<Value> = (0..600)
        .map(|i| message_event("soft_bounce", &format!("many-{i}@example.org")))
        .collect();
    let (body, signature) = mandrill_delivery(&json!(events));
    assert!(body.len() > 64 * 1024);
    let (status, _) = mandrill(&app, &body, Some(&signature)).await;
    assert_eq!(status, 200);
}
