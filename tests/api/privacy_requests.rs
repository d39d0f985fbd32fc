//! Self-service access and erasure through a mailed link (POST
//! /v1/privacy/requests, then the link's page and its POST).
use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    fake_mailchimp::{FAKE_API_KEY, FakeMailchimp},
    helpers::{TestApp, spawn_app, spawn_app_with},
};

async fn ask(app: &TestApp, email: &str, kind: &str) -> (u16, String) {
    let resp = app
        .http
        .post(app.url("/v1/privacy/requests"))
        .json(&json!({"email": email, "kind": kind, "locale": "en"}))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// Asks, sends the mail, and returns the link from it.
async fn link_for(app: &TestApp, email: &str, kind: &str) -> String {
    assert_eq!(ask(app, email, kind).await.0, 202);
    app.drain_mail().await;
    app.smtp
        .mails_to(email)
        .last()
        .expect("a mail with the link")
        .link_containing("/v1/privacy/requests/")
}

#[tokio::test]
async fn an_access_request_mails_a_link_whose_post_returns_everything_held() {
    let app = spawn_app().await;
    let email = "ada@example.org";
    let resp = app
        .http
        .post(app.url("/v1/subscriptions"))
        .header("user-agent", "ConsentBrowser/1.0")
        .json(&json!({"email": email, "name": "Ada Lovelace", "consent": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    app.drain_mail().await;
    let confirm = app.smtp.mails_to(email)[0].link_containing("/v1/subscriptions/confirm");
    app.http
        .post(&confirm)
        .header("user-agent", "ConsentBrowser/1.0")
        .send()
        .await
        .unwrap();

    let link = link_for(&app, email, "access").await;
    let page = app.http.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<form"));

    let resp = app.http.post(&link).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    let doc: Value = resp.json().await.unwrap();
    let text = doc.to_string();
    assert!(text.contains("Ada Lovelace"), "{text}");
    assert!(text.contains("newsletter"));
    assert!(
        text.contains("ConsentBrowser/1.0"),
        "user agents of the consent events"
    );
    assert!(text.contains("127.0.0.1"), "IPs of the consent events");
    assert!(text.contains("\"requested\"") && text.contains("\"confirmed\""));
    let words = &app.state.config.lists[0].consent_text;
    assert!(text.contains(words.as_str()), "the exact consent text");

    // The link works once.
    assert_eq!(app.http.post(&link).send().await.unwrap().status(), 404);
}

#[tokio::test]
async fn the_answer_is_byte_identical_for_known_and_unknown_addresses_and_the_unknown_gets_no_mail()
{
    let app = spawn_app().await;
    app.subscribe_and_confirm("known@example.org").await;
    let known = ask(&app, "known@example.org", "access").await;
    let unknown = ask(&app, "stranger@example.org", "access").await;
    assert_eq!(known, unknown);
    assert_eq!(known.0, 202);
    app.drain_mail().await;
    assert_eq!(app.smtp.mails_to("known@example.org").len(), 2);
    assert!(app.smtp.mails_to("stranger@example.org").is_empty());

    let (status, body) = ask(&app, "known@example.org", "delete-everything").await;
    assert_eq!(status, 400);
    assert!(body.contains("kind"));
}

#[tokio::test]
async fn a_self_service_erasure_leaves_no_trace_and_reaches_mailchimp() {
    let fake = FakeMailchimp::start(&["a6b5da1054"]).await;
    let base = fake.base_url();
    let app = spawn_app_with(move |c| {
        c.lists[0].mailchimp_list_id = Some("a6b5da1054".into());
        c.mailchimp.api_key = Some(FAKE_API_KEY.into());
        c.mailchimp.base_url = Some(base);
    })
    .await;
    let email = "forget.me@example.org";
    app.subscribe_and_confirm(email).await;
    while listguard::mailchimp::sync::try_execute_task(&app.state)
        .await
        .unwrap()
        == listguard::outbox::ExecutionOutcome::TaskCompleted
    {}
    let hash = FakeMailchimp::subscriber_hash(email);
    assert_eq!(
        fake.member("a6b5da1054", &hash).unwrap().status,
        "subscribed"
    );

    let link = link_for(&app, email, "erasure").await;
    assert_eq!(app.http.get(&link).send().await.unwrap().status(), 200);
    let resp = app.http.post(&link).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        app.find_text("forget.me").await.is_empty(),
        "no table holds the address"
    );
    let check = app.check(None, email).await;
    assert_eq!(check["suppressed"], true);
    assert_eq!(check["reason"], "erased");
    while listguard::mailchimp::sync::try_execute_task(&app.state)
        .await
        .unwrap()
        == listguard::outbox::ExecutionOutcome::TaskCompleted
    {}
    assert!(
        fake.member("a6b5da1054", &hash).unwrap().archived,
        "the member is removed at Mailchimp"
    );
    let status: Value = app.admin_json(Method::GET, "/v1/sync").await;
    assert_eq!(status["dead"], 0);
}

#[tokio::test]
async fn an_expired_link_gets_a_410_page_and_changes_nothing() {
    let app = spawn_app().await;
    app.subscribe_and_confirm("late@example.org").await;
    let link = link_for(&app, "late@example.org", "erasure").await;
    app.clock.advance(chrono::Duration::hours(25));
    assert_eq!(app.http.get(&link).send().await.unwrap().status(), 410);
    assert_eq!(app.http.post(&link).send().await.unwrap().status(), 410);
    assert_eq!(
        app.subscriptions_of("late@example.org").await,
        vec![("newsletter".into(), "confirmed".into())]
    );
    let bogus = app.url("/v1/privacy/requests/not-a-real-token");
    assert_eq!(app.http.get(&bogus).send().await.unwrap().status(), 404);
}

#[tokio::test]
async fn someone_who_left_every_list_can_still_get_the_consent_proof_kept_about_them() {
    let app = spawn_app().await;
    let email = "left@example.org";
    app.subscribe_and_confirm(email).await;
    let url = app.unsubscribe_url("newsletter", email).await;
    assert_eq!(app.one_click(&url).await.status(), 200);
    assert!(app.subscriptions_of(email).await.is_empty());

    let link = link_for(&app, email, "access").await;
    assert!(
        app.find_text(email).await.is_empty(),
        "the pending request keeps the address only sealed"
    );
    let doc: Value = app
        .http
        .post(&link)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = doc.to_string();
    assert!(
        text.contains("\"confirmed\""),
        "the detached consent proof: {text}"
    );
    assert!(text.contains("unsubscribed"), "the suppression entry");

    // At most one such mail per address within the cooldown.
    assert_eq!(ask(&app, email, "access").await.0, 202);
    app.drain_mail().await;
    let privacy_mails = app
        .smtp
        .mails_to(email)
        .iter()
        .filter(|m| m.text().contains("/v1/privacy/requests/"))
        .count();
    assert_eq!(privacy_mails, 1);
}
