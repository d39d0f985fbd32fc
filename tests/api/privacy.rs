//! Data-subject rights as an administrator answers them: export, rectify,
//! restrict, erase, and the audit trail of each.
use listguard::{config::Config, domain::EmailAddress, mailchimp::sync, outbox::ExecutionOutcome};
use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    fake_mailchimp::{FAKE_API_KEY, FakeMailchimp},
    helpers::{TestApp, second_list, spawn_app, spawn_app_with},
};

const AUDIENCE: &str = "a6b5da1054";

fn mapped(c: &mut Config, fake: &FakeMailchimp) {
    c.lists[0].mailchimp_list_id = Some(AUDIENCE.into());
    c.mailchimp.api_key = Some(FAKE_API_KEY.into());
    c.mailchimp.base_url = Some(fake.base_url());
}

fn member_hash(email: &str) -> String {
    EmailAddress::parse(email).unwrap().mailchimp_hash()
}

impl TestApp {
    /// Subscribes with a name and a browser's user agent, and confirms.
    async fn subscribe_as_browser(&self, email: &str, name: &str) {
        let resp = self
            .http
            .post(self.url("/v1/subscriptions"))
            .header("user-agent", "SignupBrowser/2.0")
            .json(&json!({"email": email, "name": name, "consent": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        self.drain_mail().await;
        let link = self
            .smtp
            .mails_to(email)
            .last()
            .expect("a confirmation mail")
            .link_containing("/v1/subscriptions/confirm");
        let resp = self
            .http
            .post(&link)
            .header("user-agent", "ConfirmBrowser/3.0")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }

    async fn export(&self, email: &str) -> reqwest::Response {
        self.admin(Method::GET, &format!("/v1/subscribers/{email}/export"))
            .send()
            .await
            .unwrap()
    }

    async fn export_json(&self, email: &str) -> Value {
        let resp = self.export(email).await;
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    pub(crate) async fn patch(&self, email: &str, body: Value) -> reqwest::Response {
        self.admin(Method::PATCH, &format!("/v1/subscribers/{email}"))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub(crate) async fn erase(&self, email: &str) -> Value {
        let resp = self
            .admin(Method::DELETE, &format!("/v1/subscribers/{email}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    /// Runs the Mailchimp worker until its queue is empty.
    async fn drain_sync(&self) {
        for _ in 0..1000 {
            if sync::try_execute_task(&self.state).await.unwrap() == ExecutionOutcome::EmptyQueue {
                return;
            }
        }
        panic!("the Mailchimp queue never empties");
    }

    /// (actor, action, subject_hash) of every audit row, oldest first.
    async fn audit_rows(&self) -> Vec<(String, String, String)> {
        self.query(
            "SELECT actor, action, subject_hash FROM admin_audit ORDER BY id",
            vec![],
        )
        .await
        .iter()
        .map(|r| {
            (
                r.try_get("", "actor").unwrap(),
                r.try_get("", "action").unwrap(),
                r.try_get("", "subject_hash").unwrap(),
            )
        })
        .collect()
    }
}

#[tokio::test]
async fn the_export_holds_the_name_the_subscription_both_consent_events_and_the_exact_words() {
    let app = spawn_app().await;
    app.subscribe_as_browser("ada@example.org", "Ada Lovelace")
        .await;
    let resp = app.export("ada@example.org").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-disposition"],
        "attachment; filename=\"listguard-export.json\""
    );
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(doc["email"], "ada@example.org");
    assert_eq!(doc["subscriber"]["name"], "Ada Lovelace");
    assert_eq!(doc["subscriber"]["restricted"], false);
    let subs = doc["subscriptions"].as_array().unwrap();
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0]["list"], "newsletter");
    assert_eq!(subs[0]["status"], "confirmed");
    assert!(subs[0]["confirmed_at"].is_string());
    let events = doc["consent_events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["requested", "confirmed"]);
    assert_eq!(events[0]["ip"], "127.0.0.1");
    assert_eq!(events[0]["user_agent"], "SignupBrowser/2.0");
    assert_eq!(events[1]["ip"], "127.0.0.1");
    assert_eq!(events[1]["user_agent"], "ConfirmBrowser/3.0");
    assert_eq!(
        events[1]["privacy_policy_url"],
        "https://example.org/privacy"
    );
    let list = &app.state.config.lists[0];
    let texts = doc["consent_texts"].as_array().unwrap();
    assert_eq!(texts.len(), 1);
    assert_eq!(texts[0]["text"], list.consent_text.as_str());
    assert_eq!(texts[0]["version"], list.consent_version.as_str());
    assert_eq!(texts[0]["sha256"], events[1]["consent_sha256"]);
    assert_eq!(doc["suppressions"], json!([]));
}

#[tokio::test]
async fn the_old_consent_text_stays_in_the_export_after_the_configuration_moved_on() {
    let first = spawn_app().await;
    first
        .subscribe_as_browser("old@example.org", "Old Text")
        .await;
    let old_text = first.state.config.lists[0].consent_text.clone();
    let url = first.state.config.database.url.clone();
    let restarted = spawn_app_with(move |c| {
        c.database.url = url;
        c.lists[0].consent_text = "Entirely new words, version two.".into();
        c.lists[0].consent_version = "2".into();
    })
    .await;
    let doc = restarted.export_json("old@example.org").await;
    let texts = doc["consent_texts"].as_array().unwrap();
    assert_eq!(texts.len(), 1);
    assert_eq!(texts[0]["version"], "1");
    assert_eq!(texts[0]["text"], old_text.as_str());
    assert_eq!(doc["consent_events"][1]["consent_version"], "1");
}

#[tokio::test]
async fn an_address_held_only_as_a_suppression_with_its_detached_consent_still_exports() {
    let app = spawn_app().await;
    app.subscribe_and_confirm("gone@example.org").await;
    let resp = app
        .admin(Method::POST, "/v1/subscribers/gone@example.org/unsubscribe")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let doc = app.export_json("gone@example.org").await;
    assert!(doc["subscriber"].is_null());
    assert_eq!(doc["subscriptions"], json!([]));
    assert_eq!(doc["consent_events"].as_array().unwrap().len(), 2);
    assert_eq!(doc["consent_texts"].as_array().unwrap().len(), 1);
    let supp = doc["suppressions"].as_array().unwrap();
    assert_eq!(supp.len(), 1);
    assert_eq!(supp[0]["reason"], "unsubscribed");
    assert_eq!(supp[0]["scope"], "newsletter");
    assert_eq!(supp[0]["source"], "admin");
}

#[tokio::test]
async fn the_export_lists_pending_jobs_about_the_address_and_nobody_elses() {
    let app = spawn_app().await;
    app.subscribe("me@example.org").await;
    app.subscribe("someone-else@example.org").await;
    let doc = app.export_json("me@example.org").await;
    let jobs = doc["pending_jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["kind"], "mail");
    assert_eq!(jobs[0]["op"], "confirm");
    assert_eq!(jobs[0]["status"], "pending");
    assert!(!doc.to_string().contains("someone-else"));
}

#[tokio::test]
async fn exporting_an_address_nothing_is_held_about_is_a_404_problem() {
    let app = spawn_app().await;
    let resp = app.export("nobody@example.org").await;
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert!(app.audit_rows().await.is_empty());
}

#[tokio::test]
async fn rectifying_sets_and_clears_the_name_and_refuses_a_bad_one_naming_name() {
    let app = spawn_app().await;
    app.subscribe_and_confirm("name@example.org").await;
    let resp = app
        .patch("name@example.org", json!({"name": "  Grace Hopper "}))
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["name"], "Grace Hopper");
    assert_eq!(body["restricted"], false);

    let resp = app
        .patch("name@example.org", json!({"name": "bad\u{7}name"}))
        .await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["invalid_params"][0]["name"], "name");

    let resp = app.patch("name@example.org", json!({"name": null})).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert!(body["name"].is_null());

    let resp = app
        .patch("nobody@example.org", json!({"restricted": true}))
        .await;
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn restricting_makes_the_address_unmailable_and_archives_the_member_and_lifting_restores_both()
 {
    let fake = FakeMailchimp::start(&[AUDIENCE]).await;
    let f = fake.clone();
    let app = spawn_app_with(move |c| mapped(c, &f)).await;
    let email = "restrict@example.org";
    app.subscribe_and_confirm(email).await;
    app.drain_sync().await;
    let hash = member_hash(email);
    let m = fake
        .member(AUDIENCE, &hash)
        .expect("the member was upserted");
    assert_eq!(m.status, "subscribed");
    assert!(!m.archived);
    assert_eq!(app.check(Some("newsletter"), email).await["mailable"], true);

    let resp = app.patch(email, json!({"restricted": true})).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["restricted"], true);
    let check = app.check(Some("newsletter"), email).await;
    assert_eq!(check["mailable"], false);
    assert_eq!(check["subscribed"], true);
    assert_eq!(app.check(None, email).await["mailable"], false);
    app.drain_sync().await;
    assert!(fake.member(AUDIENCE, &hash).unwrap().archived);
    // The data is kept.
    assert_eq!(app.subscriptions_of(email).await.len(), 1);

    let resp = app.patch(email, json!({"restricted": false})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(app.check(Some("newsletter"), email).await["mailable"], true);
    app.drain_sync().await;
    let m = fake.member(AUDIENCE, &hash).unwrap();
    assert!(!m.archived);
    assert_eq!(m.status, "subscribed");
}

#[tokio::test]
async fn a_restricted_subscriber_gets_no_confirmation_mail_queued_or_new() {
    let app = spawn_app_with(|c| c.lists.push(second_list())).await;
    let email = "quiet@example.org";
    app.subscribe_and_confirm(email).await;
    app.clock.advance(chrono::Duration::minutes(11));
    // A confirmation mail waiting in the outbox when the restriction comes.
    let resp = app
        .subscribe_json(json!({"email": email, "consent": true, "list": "events"}))
        .await;
    assert_eq!(resp.status(), 202);
    assert_eq!(
        app.patch(email, json!({"restricted": true})).await.status(),
        200
    );
    assert_eq!(app.drain_mail().await, 0);
    app.clock.advance(chrono::Duration::minutes(11));
    let resp = app
        .subscribe_json(json!({"email": email, "consent": true, "list": "events"}))
        .await;
    assert_eq!(resp.status(), 202);
    assert_eq!(app.drain_mail().await, 0);
    assert_eq!(
        app.smtp.mails_to(email).len(),
        1,
        "only the first confirmation"
    );
    assert_eq!(
        app.check(Some("newsletter"), email).await["mailable"],
        false
    );
}

#[tokio::test]
async fn erasure_leaves_no_readable_trace_queues_the_mailchimp_removal_and_suppresses_as_erased() {
    let fake = FakeMailchimp::start(&[AUDIENCE]).await;
    let f = fake.clone();
    let app = spawn_app_with(move |c| {
        mapped(c, &f);
        c.lists.push(second_list());
    })
    .await;
    let email = "erase-me@example.org";
    app.subscribe_as_browser(email, "Erase Me Please").await;
    app.drain_sync().await;
    let hash = member_hash(email);
    assert!(!fake.member(AUDIENCE, &hash).unwrap().archived);
    // A pending signup to the second list, its confirmation mail unsent.
    app.clock.advance(chrono::Duration::minutes(11));
    let resp = app
        .subscribe_json(json!({"email": email, "consent": true, "list": "events"}))
        .await;
    assert_eq!(resp.status(), 202);
    assert!(!app.find_text(email).await.is_empty());

    let receipt = app.erase(email).await;
    assert_eq!(receipt["subscriber"], true);
    assert_eq!(receipt["subscriptions"], 2);
    assert_eq!(receipt["consent_events"], 3);
    assert!(receipt["tokens"].as_u64().unwrap() >= 2);
    assert_eq!(receipt["jobs_cancelled"], 1);
    assert_eq!(receipt["mailchimp_jobs"], 1);

    assert_eq!(app.find_text(email).await, Vec::<String>::new());
    assert_eq!(app.find_text("erase-me").await, Vec::<String>::new());
    assert_eq!(app.find_text("Erase Me Please").await, Vec::<String>::new());
    assert_eq!(app.drain_mail().await, 0, "the cancelled mail is not sent");

    app.drain_sync().await;
    assert!(fake.member(AUDIENCE, &hash).unwrap().archived);

    let check = app.check(Some("newsletter"), email).await;
    assert_eq!(check["suppressed"], true);
    assert_eq!(check["reason"], "erased");
    assert_eq!(check["mailable"], false);
    assert_eq!(app.check(Some("events"), email).await["reason"], "erased");
    assert_eq!(app.find_text(email).await, Vec::<String>::new());
}

#[tokio::test]
async fn erasing_an_unknown_address_still_writes_the_erased_entry() {
    let app = spawn_app().await;
    let receipt = app.erase("never-seen@example.org").await;
    assert_eq!(receipt["subscriber"], false);
    assert_eq!(receipt["subscriptions"], 0);
    let check = app.check(None, "never-seen@example.org").await;
    assert_eq!(check["suppressed"], true);
    assert_eq!(check["reason"], "erased");
}

#[tokio::test]
async fn the_audit_trail_names_the_key_and_the_action_and_holds_no_address() {
    let app = spawn_app().await;
    let email = "audited@example.org";
    app.subscribe_and_confirm(email).await;
    app.export_json(email).await;
    assert_eq!(
        app.patch(email, json!({"name": "Audited Person"}))
            .await
            .status(),
        200
    );
    assert_eq!(
        app.patch(email, json!({"restricted": true})).await.status(),
        200
    );
    assert_eq!(
        app.patch(email, json!({"restricted": false}))
            .await
            .status(),
        200
    );
    let resp = app
        .admin(
            Method::POST,
            &format!("/v1/subscribers/{email}/unsubscribe"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    app.erase(email).await;

    let subject = app
        .state
        .keys
        .hasher
        .hash(&EmailAddress::parse(email).unwrap());
    let rows = app.audit_rows().await;
    let actions: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(
        actions,
        [
            "export",
            "rectify",
            "restrict",
            "unrestrict",
            "unsubscribe",
            "erase"
        ]
    );
    for (actor, _, hash) in &rows {
        assert_eq!(actor, "test-admin");
        assert_eq!(hash, &subject);
    }
    assert_eq!(app.find_text(email).await, Vec::<String>::new());
}

#[tokio::test]
async fn the_purge_deletes_audit_rows_past_their_retention() {
    let app = spawn_app().await;
    app.erase("purged@example.org").await;
    assert_eq!(app.count("admin_audit").await, 1);
    app.clock.advance(chrono::Duration::days(300));
    let resp = app
        .admin(Method::POST, "/v1/admin/purge")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(app.count("admin_audit").await, 1);
    app.clock.advance(chrono::Duration::days(70));
    let resp = app
        .admin(Method::POST, "/v1/admin/purge")
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["admin_audit"], 1);
    assert_eq!(app.count("admin_audit").await, 0);
}

#[tokio::test]
async fn export_rectify_and_erase_need_the_admin_key() {
    let app = spawn_app().await;
    app.subscribe_and_confirm("guarded@example.org").await;
    let path = "/v1/subscribers/guarded@example.org";
    let export = format!("{path}/export");
    let calls = [
        (Method::GET, export.as_str()),
        (Method::PATCH, path),
        (Method::DELETE, path),
    ];
    for (method, p) in calls {
        let req = || {
            let r = app.http.request(method.clone(), app.url(p));
            if method == Method::PATCH {
                r.json(&json!({"restricted": true}))
            } else {
                r
            }
        };
        assert_eq!(req().send().await.unwrap().status(), 401, "{method} {p}");
        let resp = app
            .sender(method.clone(), p)
            .json(&json!({"restricted": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{method} {p}");
    }
    assert_eq!(app.subscriptions_of("guarded@example.org").await.len(), 1);
    assert!(app.audit_rows().await.is_empty());
}

#[tokio::test]
async fn a_signup_erased_before_its_mail_went_out_gets_no_mail() {
    let app = spawn_app().await;
    app.subscribe("gone-soon@example.org").await;
    app.subscribe("stays@example.org").await;
    let receipt = app.erase("gone-soon@example.org").await;
    // Its first mail is withdrawn with the subscription.
    assert_eq!(receipt["jobs_cancelled"], 1);
    app.drain_mail().await;
    assert!(app.smtp.mails_to("gone-soon@example.org").is_empty());
    assert_eq!(app.smtp.mails_to("stays@example.org").len(), 1);
    assert!(app.find_text("gone-soon@example.org").await.is_empty());

    // A mail sent again is a job of its own, held under the address's hash:
    // an erasure cancels it and clears its payload.
    app.clock.advance(chrono::Duration::minutes(11));
    app.subscribe("stays@example.org").await;
    let receipt = app.erase("stays@example.org").await;
    assert_eq!(receipt["jobs_cancelled"], 1);
    assert_eq!(app.drain_mail().await, 0);
    assert_eq!(app.smtp.mails_to("stays@example.org").len(), 1);
    let rows = app
        .query(
            "SELECT status FROM outbox WHERE kind = 'mail' ORDER BY id",
            vec![],
        )
        .await;
    let statuses: Vec<String> = rows
        .iter()
        .map(|r| r.try_get("", "status").unwrap())
        .collect();
    assert_eq!(statuses, ["done", "done", "cancelled"]);
}
