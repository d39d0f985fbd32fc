use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with};

#[tokio::test]
async fn a_new_address_gets_a_confirmation_mail_over_smtp() {
    let app = spawn_app().await;
    let resp = app
        .subscribe_json(
            json!({"email": "Anna@Example.org", "name": "Anna", "consent": true, "locale": "en"}),
        )
        .await;
    assert_eq!(resp.status(), 202);
    // Nothing is sent inside the request.
    assert!(app.smtp.mails().is_empty());
    assert_eq!(app.drain_mail().await, 1);
    let mails = app.smtp.mails_to("Anna@example.org");
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert!(
        mail.subject().contains("Confirm your subscription"),
        "{}",
        mail.subject()
    );
    assert!(mail.text().contains("Hello Anna"));
    assert!(mail.html().contains("confirm?token="));
    let confirm = mail.link_containing("/v1/subscriptions/confirm");
    let block = mail.link_containing("/v1/subscriptions/block");
    assert!(confirm.starts_with(&app.state.config.server.public_url));
    assert_eq!(
        crate::helpers::token_of(&confirm),
        crate::helpers::token_of(&block)
    );
    assert_eq!(
        app.subscriptions_of("anna@example.org").await,
        vec![("newsletter".into(), "pending".into())]
    );
}

#[tokio::test]
async fn the_answer_is_byte_identical_for_new_pending_confirmed_and_blocked_addresses() {
    let app = spawn_app().await;
    // confirmed
    app.subscribe_and_confirm("confirmed@example.org").await;
    // blocked ("this wasn't me")
    let link = app.confirmation_link("blocked@example.org").await;
    let block = link.replace("/confirm?", "/block?");
    assert_eq!(app.http.post(&block).send().await.unwrap().status(), 200);
    // pending
    app.subscribe("pending@example.org").await;

    let mut answers = Vec::new();
    for email in [
        "new@example.org",
        "pending@example.org",
        "confirmed@example.org",
        "blocked@example.org",
    ] {
        let resp = app.subscribe(email).await;
        let status = resp.status();
        let ct = resp.headers()["content-type"].clone();
        let body = resp.bytes().await.unwrap();
        answers.push((status, ct, body));
    }
    for a in &answers[1..] {
        assert_eq!(a, &answers[0]);
    }
    assert_eq!(answers[0].0, 202);
}

#[tokio::test]
async fn a_confirmed_address_gets_no_further_mail() {
    let app = spawn_app().await;
    app.subscribe_and_confirm("c@example.org").await;
    app.clock.advance(chrono::Duration::hours(1));
    assert_eq!(app.subscribe("c@example.org").await.status(), 202);
    assert_eq!(app.drain_mail().await, 0);
    assert_eq!(app.smtp.mails_to("c@example.org").len(), 1);
}

#[tokio::test]
async fn resubmitting_resends_at_most_once_per_cooldown_and_a_few_times_a_day() {
    let app = spawn_app().await;
    for _ in 0..3 {
        app.subscribe("r@example.org").await;
    }
    app.drain_mail().await;
    assert_eq!(
        app.smtp.mails_to("r@example.org").len(),
        1,
        "cooldown holds back resends"
    );

    app.clock.advance(chrono::Duration::minutes(11));
    app.subscribe("r@example.org").await;
    app.drain_mail().await;
    assert_eq!(app.smtp.mails_to("r@example.org").len(), 2);

    // The daily limit (5) caps the rest of the day even with the cooldown passed.
    for _ in 0..10 {
        app.clock.advance(chrono::Duration::minutes(11));
        app.subscribe("r@example.org").await;
    }
    app.drain_mail().await;
    assert_eq!(app.smtp.mails_to("r@example.org").len(), 5);
}

#[tokio::test]
async fn a_filled_honeypot_gets_the_normal_answer_and_nothing_happens() {
    let app = spawn_app().await;
    let resp = app
        .subscribe_json(
            json!({"email": "bot@example.org", "consent": true, "website": "http://spam"}),
        )
        .await;
    assert_eq!(resp.status(), 202);
    let honeypot_body = resp.bytes().await.unwrap();
    let normal = app
        .subscribe("human@example.org")
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(honeypot_body, normal);
    assert!(app.subscriptions_of("bot@example.org").await.is_empty());
    app.drain_mail().await;
    assert!(app.smtp.mails_to("bot@example.org").is_empty());
}

#[tokio::test]
async fn a_browser_form_post_is_redirected_to_a_check_your_inbox_page() {
    let app = spawn_app().await;
    let resp = app
        .http
        .post(app.url("/v1/subscriptions"))
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .form(&[
            ("email", "form@example.org"),
            ("consent", "on"),
            ("list", "newsletter"),
            ("locale", "sv"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(location.contains("/v1/subscriptions/check-inbox"));
    let page = app.http.get(&location).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Kolla din inkorg"));
    assert_eq!(app.subscriptions_of("form@example.org").await.len(), 1);

    // `*/*` is not a browser asking for HTML.
    let resp = app
        .http
        .post(app.url("/v1/subscriptions"))
        .header("accept", "*/*")
        .form(&[("email", "form2@example.org"), ("consent", "true")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
}

#[tokio::test]
async fn the_per_ip_limit_answers_429_with_retry_after() {
    let app = spawn_app_with(|c| c.limits.subscribe_per_ip_per_minute = 3).await;
    for i in 0..3 {
        assert_eq!(
            app.subscribe(&format!("ip{i}@example.org")).await.status(),
            202
        );
    }
    let resp = app.subscribe("ip9@example.org").await;
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert!(app.subscriptions_of("ip9@example.org").await.is_empty());
}

#[tokio::test]
async fn captcha_tokens_are_verified_with_the_provider() {
    let verifier = crate::helpers::fake_captcha().await;
    let app = spawn_app_with(|c| {
        c.captcha.provider = listguard::config::CaptchaProvider::Turnstile;
        c.captcha.secret = Some("s3cret".to_string().into());
        c.captcha.verify_url = Some(verifier.clone());
    })
    .await;
    let missing = app.subscribe("cap@example.org").await;
    assert_eq!(missing.status(), 400);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["invalid_params"][0]["name"], "captcha_token");

    let refused = app
        .subscribe_json(
            json!({"email": "cap@example.org", "consent": true, "captcha_token": "bad"}),
        )
        .await;
    assert_eq!(refused.status(), 400);
    assert!(app.subscriptions_of("cap@example.org").await.is_empty());

    let ok = app
        .subscribe_json(
            json!({"email": "cap@example.org", "consent": true, "captcha_token": "good"}),
        )
        .await;
    assert_eq!(ok.status(), 202);
    assert_eq!(app.subscriptions_of("cap@example.org").await.len(), 1);

    // A form with a stock widget posts the token under the widget's own
    // name (Turnstile's `cf-turnstile-response`, hCaptcha's
    // `h-captcha-response`).
    for (field, email) in [
        ("cf-turnstile-response", "turnstile@example.org"),
        ("h-captcha-response", "hcaptcha@example.org"),
    ] {
        for (token, status) in [("bad", 400), ("good", 202)] {
            let resp = app
                .http
                .post(app.url("/v1/subscriptions"))
                .form(&[("email", email), ("consent", "on"), (field, token)])
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), status, "{field}={token}");
        }
        assert_eq!(app.subscriptions_of(email).await.len(), 1, "{field}");
    }
}

#[tokio::test]
async fn an_unknown_list_is_a_400_naming_list() {
    let app = spawn_app().await;
    let resp = app
        .subscribe_json(json!({"email": "l@example.org", "consent": true, "list": "nope"}))
        .await;
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["invalid_params"][0]["name"], "list");
}

#[tokio::test]
async fn consent_events_record_when_where_and_which_text() {
    let app = spawn_app().await;
    let link = app.confirmation_link("proof@example.org").await;
    app.http
        .post(&link)
        .header("user-agent", "ProofBrowser/1.0")
        .send()
        .await
        .unwrap();
    let rows = app
        .query(
            "SELECT kind, ip, user_agent, consent_version, consent_sha256, privacy_policy_url FROM consent_events ORDER BY id",
            vec![],
        )
        .await;
    assert_eq!(rows.len(), 2);
    let kinds: Vec<String> = rows
        .iter()
        .map(|r| r.try_get("", "kind").unwrap())
        .collect();
    assert_eq!(kinds, ["requested", "confirmed"]);
    let confirmed = &rows[1];
    assert_eq!(confirmed.try_get::<String>("", "ip").unwrap(), "127.0.0.1");
    assert_eq!(
        confirmed.try_get::<String>("", "user_agent").unwrap(),
        "ProofBrowser/1.0"
    );
    assert_eq!(
        confirmed.try_get::<String>("", "consent_version").unwrap(),
        "1"
    );
    let text = &app.state.config.lists[0].consent_text;
    assert_eq!(
        confirmed.try_get::<String>("", "consent_sha256").unwrap(),
        listguard::crypto::sha256_hex(text.as_bytes())
    );
    assert_eq!(
        confirmed
            .try_get::<String>("", "privacy_policy_url")
            .unwrap(),
        "https://example.org/privacy"
    );
    let stored = app
        .query(
            "SELECT text FROM consent_texts WHERE list_slug = 'newsletter' AND version = '1'",
            vec![],
        )
        .await;
    assert_eq!(stored[0].try_get::<String>("", "text").unwrap(), *text);
}

#[tokio::test]
async fn concurrent_signups_share_transactions_and_each_address_gets_one_mail() {
    let app = spawn_app().await;
    app.subscribe_and_confirm("old-hand@example.org").await;
    let mut emails = Vec::new();
    for _ in 0..2 {
        emails.extend((0..25).map(|i| format!("burst{i}@example.org")));
        emails.push("old-hand@example.org".to_string());
    }
    let requests = emails
        .iter()
        .map(|e| async { app.subscribe(e).await.status() });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    assert_eq!(app.count("subscribers").await, 26);
    app.drain_mail().await;
    for i in 0..25 {
        assert_eq!(app.smtp.mails_to(&format!("burst{i}@example.org")).len(), 1);
    }
    assert_eq!(app.smtp.mails_to("old-hand@example.org").len(), 1);
    assert_eq!(app.count("consent_events").await, 25 + 2);
    // The batches took their set-based statements, not the one-by-one
    // fallback (which gives the same answers, only slower).
    assert_eq!(
        app.state
            .signup_batch_failures
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_recorded_and_limited() {
    let app = crate::helpers::spawn_app_with(|c| {
        c.server.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        c.limits.subscribe_per_ip_per_minute = 1;
    })
    .await;
    let post = |email: &str, forwarded: &str| {
        app.http
            .post(app.url("/v1/subscriptions"))
            .header("x-forwarded-for", forwarded)
            .json(&serde_json::json!({"email": email, "consent": true}))
            .send()
    };
    // The left-most entry is whatever the client sent; the proxy appended
    // the address it saw, which is the one that counts.
    let first = post("p1@example.org", "10.9.9.9, 203.0.113.7")
        .await
        .unwrap();
    let second = post("p2@example.org", "198.51.100.9").await.unwrap();
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (202, 202)
    );
    let again = post("p3@example.org", "203.0.113.7").await.unwrap();
    assert_eq!(again.status(), 429, "the limit is per forwarded client");
    let rows = app
        .query("SELECT ip FROM consent_events ORDER BY id", vec![])
        .await;
    assert_eq!(
        rows[0]
            .try_get::<Option<String>>("", "ip")
            .unwrap()
            .as_deref(),
        Some("203.0.113.7")
    );
}

#[tokio::test]
async fn without_trusted_proxies_a_forwarded_for_header_is_ignored() {
    let app = spawn_app().await;
    let resp = app
        .http
        .post(app.url("/v1/subscriptions"))
        .header("x-forwarded-for", "203.0.113.7")
        .json(&serde_json::json!({"email": "direct@example.org", "consent": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let rows = app.query("SELECT ip FROM consent_events", vec![]).await;
    assert_eq!(
        rows[0]
            .try_get::<Option<String>>("", "ip")
            .unwrap()
            .as_deref(),
        Some("127.0.0.1")
    );
}

#[tokio::test]
async fn a_signup_that_meets_a_concurrent_insert_of_its_address_is_taken_on_its_own() {
    use sea_orm::{ConnectionTrait, TransactionTrait};

    let app = spawn_app().await;
    // Needs a second writer at the same moment: SQLite has one.
    if !listguard::db::is_postgres(&app.state.db) {
        return;
    }
    let email = "racing@example.org";
    let hash = app
        .state
        .keys
        .hasher
        .hash(&listguard::domain::EmailAddress::parse(email).unwrap());
    // Another transaction (a webhook, another replica) has inserted the
    // address and not yet committed.
    let other = app.state.db.begin().await.unwrap();
    other
        .execute_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "INSERT INTO subscribers (email, email_hash, locale, restricted, created_at, updated_at) \
             VALUES ($1, $2, 'en', false, now(), now())",
            [email.into(), hash.clone().into()],
        ))
        .await
        .unwrap();
    let commit_once_blocked = async {
        // The signup's batch statement now waits on that row's key.
        for _ in 0..500 {
            let waiting = app
                .query(
                    "SELECT COUNT(*) AS n FROM pg_stat_activity \
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    vec![],
                )
                .await;
            if waiting[0].try_get::<i64>("", "n").unwrap() > 0 {
                return other.commit().await.unwrap();
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the signup never waited on the uncommitted insert");
    };
    let (resp, ()) = tokio::join!(app.subscribe(email), commit_once_blocked);
    assert_eq!(resp.status(), 202);

    // The batch statement failed on the unique key and the signup went
    // through the general path: one subscriber, now pending, and one mail.
    assert_eq!(app.count("subscribers").await, 1);
    assert_eq!(app.subscriptions_of(email).await.len(), 1);
    assert_eq!(app.drain_mail().await, 1);
    assert_eq!(app.smtp.mails_to(email).len(), 1);
    assert_eq!(
        app.state
            .signup_batch_failures
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a unique violation is a race, not a failure"
    );
}
