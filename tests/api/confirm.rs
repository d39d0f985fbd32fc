use crate::helpers::{spawn_app, token_of};

#[tokio::test]
async fn get_on_the_link_changes_nothing_and_post_confirms() {
    let app = spawn_app().await;
    let link = app.confirmation_link("click@example.org").await;

    let page = app.http.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("<form method=\"post\""));
    assert!(html.contains(&token_of(&link)));
    // Mail scanners follow GET links: a second and third GET change nothing either.
    app.http.get(&link).send().await.unwrap();
    assert_eq!(
        app.subscriptions_of("click@example.org").await,
        vec![("newsletter".into(), "pending".into())]
    );

    // The page's form posts the token in the body.
    let resp = app
        .http
        .post(app.url("/v1/subscriptions/confirm"))
        .form(&[("token", token_of(&link))])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(
        app.subscriptions_of("click@example.org").await,
        vec![("newsletter".into(), "confirmed".into())]
    );

    // A second POST says so and changes nothing.
    let again = app.post_asking_json(&link).await;
    assert_eq!(again.status(), 200);
    let body: serde_json::Value = again.json().await.unwrap();
    assert_eq!(body["status"], "already_confirmed");
    assert_eq!(app.count("consent_events").await, 2);
}

#[tokio::test]
async fn a_first_and_a_resent_link_each_work_and_agree_once_one_is_used() {
    // The first link's token is held on the subscription's row, the re-sent
    // one's in `tokens`; the two must behave alike.
    let app = spawn_app().await;
    let first = app.confirmation_link("twice@example.org").await;
    app.clock.advance(chrono::Duration::minutes(11));
    let second = app.confirmation_link("twice@example.org").await;
    assert_ne!(first, second);
    // Each link is valid for 48 hours from its own mail, however the other runs.
    app.clock.advance(
        chrono::Duration::hours(48) - chrono::Duration::minutes(11) + chrono::Duration::seconds(1),
    );
    assert_eq!(app.http.get(&first).send().await.unwrap().status(), 410);
    assert_eq!(app.http.get(&second).send().await.unwrap().status(), 200);

    let status = |resp: reqwest::Response| async move {
        assert_eq!(resp.status(), 200);
        let body: serde_json::Value = resp.json().await.unwrap();
        body["status"].as_str().unwrap().to_string()
    };
    assert_eq!(
        status(app.post_asking_json(&second).await).await,
        "confirmed"
    );
    assert_eq!(
        status(app.post_asking_json(&first).await).await,
        "already_confirmed"
    );
    assert_eq!(
        status(app.post_asking_json(&second).await).await,
        "already_confirmed"
    );
    assert_eq!(
        app.count("consent_events").await,
        3,
        "two requests, one confirmation"
    );
    let held = app
        .query(
            "SELECT COUNT(*) AS n FROM subscriptions WHERE token_hash IS NOT NULL",
            vec![],
        )
        .await;
    assert_eq!(
        held[0].try_get::<i64>("", "n").unwrap(),
        0,
        "a confirmed subscription holds no token"
    );
    // Both go in the purge: the used one after a day, the other after its
    // expiry and the grace.
    app.clock.advance(chrono::Duration::days(7));
    app.admin_json(reqwest::Method::POST, "/v1/admin/purge")
        .await;
    assert_eq!(app.count("tokens").await, 0);
    assert_eq!(
        app.subscriptions_of("twice@example.org").await,
        vec![("newsletter".into(), "confirmed".into())]
    );
}

#[tokio::test]
async fn confirming_answers_json_when_asked() {
    let app = spawn_app().await;
    let link = app.confirmation_link("json@example.org").await;
    let resp = app.post_asking_json(&link).await;
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "confirmed");
}

#[tokio::test]
async fn an_unknown_token_gets_a_404_page() {
    let app = spawn_app().await;
    let url = app.url("/v1/subscriptions/confirm?token=doesnotexist");
    let page = app.http.get(&url).send().await.unwrap();
    assert_eq!(page.status(), 404);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(app.http.post(&url).send().await.unwrap().status(), 404);
    let missing = app
        .http
        .get(app.url("/v1/subscriptions/confirm"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
}

/// Asked for JSON, an unknown link is an error like any other: 404 with a
/// problem document, on each of the three link endpoints.
#[tokio::test]
async fn an_unknown_token_asked_for_as_json_gets_a_problem_document() {
    let app = spawn_app().await;
    for path in [
        "/v1/subscriptions/confirm?token=doesnotexist",
        "/v1/subscriptions/block?token=doesnotexist",
        "/v1/unsubscribe/doesnotexist",
    ] {
        let resp = app
            .http
            .post(app.url(path))
            .header("accept", "application/json")
            .form(&[("List-Unsubscribe", "One-Click")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        assert_eq!(
            resp.headers()["content-type"],
            "application/problem+json",
            "{path}"
        );
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["status"], 404, "{path}");
        assert_eq!(body["detail"], "the link is unknown or used up", "{path}");
    }
}

#[tokio::test]
async fn an_expired_token_gets_a_410_page_offering_a_new_mail() {
    let app = spawn_app().await;
    let link = app.confirmation_link("late@example.org").await;
    app.clock
        .advance(chrono::Duration::hours(48) + chrono::Duration::seconds(1));
    let page = app.http.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 410);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("name=\"email\""),
        "the page asks for the address again"
    );
    assert!(
        html.contains("subscriptions\""),
        "the form posts a new signup"
    );
    let post = app.http.post(&link).send().await.unwrap();
    assert_eq!(post.status(), 410);
    let as_json = app.post_asking_json(&link).await;
    assert_eq!(as_json.status(), 410);
    assert_eq!(
        as_json.headers()["content-type"],
        "application/problem+json"
    );
    let problem: serde_json::Value = as_json.json().await.unwrap();
    assert_eq!(problem["status"], 410);
    assert!(problem["detail"].as_str().unwrap().contains("new mail"));
    assert_eq!(
        app.subscriptions_of("late@example.org").await,
        vec![("newsletter".into(), "pending".into())]
    );
    // Asking again sends a new, working link.
    let fresh = app.confirmation_link("late@example.org").await;
    assert_ne!(fresh, link);
    assert_eq!(app.http.post(&fresh).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn this_was_not_me_deletes_the_signup_and_blocks_confirmation_mail() {
    let app = spawn_app().await;
    let link = app.confirmation_link("victim@example.org").await;
    let block = link.replace("/confirm?", "/block?");

    let page = app.http.get(&block).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(
        app.subscriptions_of("victim@example.org").await.len(),
        1,
        "GET changes nothing"
    );

    let resp = app.http.post(&block).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(app.subscriptions_of("victim@example.org").await.is_empty());
    assert_eq!(app.count("subscribers").await, 0);
    assert_eq!(app.count("consent_events").await, 0);
    let rows = app
        .query("SELECT reason, scope, source FROM suppressions", vec![])
        .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].try_get::<String>("", "reason").unwrap(), "blocked");

    // The token is used up.
    assert_eq!(app.http.post(&block).send().await.unwrap().status(), 404);
    assert_eq!(app.http.post(&link).send().await.unwrap().status(), 404);

    // No more confirmation mail, and the same answer as ever.
    app.clock.advance(chrono::Duration::hours(1));
    let resp = app.subscribe("victim@example.org").await;
    assert_eq!(resp.status(), 202);
    assert_eq!(app.drain_mail().await, 0);
    assert_eq!(app.smtp.mails_to("victim@example.org").len(), 1);
}

#[tokio::test]
async fn pages_come_in_swedish_and_english() {
    let app = spawn_app().await;
    let link = app.confirmation_link("lang@example.org").await;
    let sv = app
        .http
        .get(&link)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(sv.contains("lang=\"sv\"") && sv.contains("Bekräfta"));
    let en_url = link.replace("lang=sv", "lang=en");
    let en = app
        .http
        .get(&en_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(en.contains("lang=\"en\"") && en.contains("Confirm"));
    let no_lang = link.split("&lang").next().unwrap().to_string();
    let by_header = app
        .http
        .get(&no_lang)
        .header("accept-language", "en-GB,en;q=0.9")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(by_header.contains("lang=\"en\""));
}

#[tokio::test]
async fn the_410_page_asks_again_for_the_same_list_under_its_own_consent_text() {
    let app = crate::helpers::spawn_app_with(|c| c.lists.push(crate::helpers::second_list())).await;
    let link = app
        .confirmation_link_for("late@example.org", "events")
        .await;
    app.clock
        .advance(chrono::Duration::hours(48) + chrono::Duration::seconds(1));
    let page = app.http.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 410);
    let html = page.text().await.unwrap();
    assert!(
        html.contains(r#"name="list" value="events""#),
        "the form signs up for the list of the link: {html}"
    );
    assert!(
        html.contains("Tell me about events."),
        "the checkbox shows the words the consent event will record"
    );
}

#[tokio::test]
async fn two_confirmations_of_one_link_record_consent_once() {
    let app = spawn_app().await;
    let link = app.confirmation_link("twice@example.org").await;
    let (a, b) = tokio::join!(app.http.post(&link).send(), app.http.post(&link).send());
    assert_eq!(a.unwrap().status(), 200);
    assert_eq!(b.unwrap().status(), 200);
    let rows = app
        .query(
            "SELECT kind FROM consent_events WHERE kind = 'confirmed'",
            vec![],
        )
        .await;
    assert_eq!(rows.len(), 1, "one confirmation, one consent event");
}

#[tokio::test]
async fn a_link_does_not_confirm_an_address_suppressed_since_the_signup() {
    let app = spawn_app().await;
    let link = app.confirmation_link("bounced@example.org").await;
    // A bounce arrives (Mandrill, an administrator) before the click.
    let resp = app
        .admin(reqwest::Method::POST, "/v1/suppressions")
        .json(&serde_json::json!({"email": "bounced@example.org", "reason": "bounce"}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    assert_eq!(app.http.post(&link).send().await.unwrap().status(), 404);
    assert_eq!(
        app.subscriptions_of("bounced@example.org").await,
        vec![("newsletter".into(), "pending".into())]
    );
    assert_eq!(
        app.check(Some("newsletter"), "bounced@example.org").await["mailable"],
        false
    );
}
