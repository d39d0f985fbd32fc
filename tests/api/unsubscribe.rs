use listguard::{
    domain::{EmailAddress, UnsubscribeToken},
    secrets::parse_token_key,
};
use reqwest::Method;

use crate::helpers::{second_list, spawn_app, spawn_app_with};

#[tokio::test]
async fn one_click_unsubscribe_needs_no_cookie_and_never_redirects() {
    let app = spawn_app().await;
    app.subscribe_and_confirm("leaver@example.org").await;
    assert_eq!(
        app.check(Some("newsletter"), "leaver@example.org").await["mailable"],
        true
    );

    let resp = app
        .sender(Method::POST, "/v1/unsubscribe-links")
        .json(&serde_json::json!({"list": "newsletter", "emails": ["leaver@example.org"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    let link = &body["links"][0];
    let url = link["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{}/v1/unsubscribe/", app.base)));
    assert!(!url.contains("leaver"));
    assert_eq!(link["headers"]["List-Unsubscribe"], format!("<{url}>"));
    assert_eq!(
        link["headers"]["List-Unsubscribe-Post"],
        "List-Unsubscribe=One-Click"
    );

    let resp = app.one_click(url).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("location").is_none());
    assert!(app.subscriptions_of("leaver@example.org").await.is_empty());
    let check = app.check(Some("newsletter"), "leaver@example.org").await;
    assert_eq!(check["suppressed"], true);
    assert_eq!(check["reason"], "unsubscribed");
    assert_eq!(check["subscribed"], false);
    assert_eq!(check["mailable"], false);

    // Idempotent.
    let again = app.one_click(url).await;
    assert_eq!(again.status(), 200);
    assert_eq!(app.count("suppressions").await, 1);
}

#[tokio::test]
async fn the_multipart_body_of_rfc_8058_unsubscribes_too_with_and_without_its_errata() {
    let app = spawn_app().await;
    for (i, body_boundary) in ["---FormBoundaryjWmhtjORrn", "-----FormBoundaryjWmhtjORrn"]
        .iter()
        .enumerate()
    {
        let email = format!("multi{i}@example.org");
        app.subscribe_and_confirm(&email).await;
        let url = app.unsubscribe_url("newsletter", &email).await;
        let body = format!(
            "{body_boundary}\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n{body_boundary}--\r\n"
        );
        let resp = app
            .http
            .post(&url)
            .header(
                "content-type",
                "multipart/form-data; boundary=---FormBoundaryjWmhtjORrn",
            )
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "boundary form {body_boundary}");
        assert!(app.subscriptions_of(&email).await.is_empty());
        assert_eq!(
            app.check(Some("newsletter"), &email).await["reason"],
            "unsubscribed"
        );
    }
    // And a multipart body as a library writes it.
    app.subscribe_and_confirm("multi9@example.org").await;
    let url = app
        .unsubscribe_url("newsletter", "multi9@example.org")
        .await;
    let form = reqwest::multipart::Form::new().text("List-Unsubscribe", "One-Click");
    let resp = app.http.post(&url).multipart(form).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(app.subscriptions_of("multi9@example.org").await.is_empty());
}

#[tokio::test]
async fn get_on_the_unsubscribe_url_shows_a_page_and_changes_nothing() {
    let app = spawn_app_with(|c| c.lists.push(second_list())).await;
    app.subscribe_and_confirm("page@example.org").await;
    app.clock.advance(chrono::Duration::minutes(11));
    let link = app
        .confirmation_link_for("page@example.org", "events")
        .await;
    app.http.post(&link).send().await.unwrap();
    let url = app.unsubscribe_url("newsletter", "page@example.org").await;
    let page = app.http.get(&url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    let html = page.text().await.unwrap();
    assert!(html.contains("List-Unsubscribe") && html.contains("One-Click"));
    assert!(html.contains("Events"), "links to leave the other list too");
    assert_eq!(app.subscriptions_of("page@example.org").await.len(), 2);
    assert_eq!(app.count("suppressions").await, 0);
}

#[tokio::test]
async fn forged_and_stale_tokens_get_a_4xx_and_change_nothing() {
    let old = "old:".to_string() + &listguard::crypto::b64_std_encode(&[7u8; 32]);
    let new = "new:".to_string() + &listguard::crypto::b64_std_encode(&[9u8; 32]);
    let keys = vec![new.clone().into(), old.clone().into()];
    let app = spawn_app_with(|c| {
        c.lists.push(second_list());
        c.secrets.token_keys = keys.clone();
    })
    .await;
    app.subscribe_and_confirm("target@example.org").await;
    let url = app
        .unsubscribe_url("newsletter", "target@example.org")
        .await;
    let token = url.rsplit('/').next().unwrap().to_string();
    let base = format!("{}/v1/unsubscribe/", app.base);

    let mut forged = Vec::new();
    // one character changed
    let mut b = token.clone().into_bytes();
    let i = b.len() - 5;
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    forged.push(String::from_utf8(b).unwrap());
    // an unknown key id
    forged.push(token.replacen(".new.", ".nokey.", 1));
    // the list part swapped for another list's
    forged.push(token.replacen(".newsletter.", ".events.", 1));
    for f in &forged {
        assert_ne!(f, &token);
        let resp = app.one_click(&format!("{base}{f}")).await;
        assert!(resp.status().is_client_error(), "{f}: {}", resp.status());
        let get = app.http.get(format!("{base}{f}")).send().await.unwrap();
        assert!(get.status().is_client_error());
    }
    assert_eq!(app.subscriptions_of("target@example.org").await.len(), 1);
    assert_eq!(app.count("suppressions").await, 0);

    // A token signed with the older configured key still works.
    let hash = app
        .state
        .keys
        .hasher
        .hash(&EmailAddress::parse("target@example.org").unwrap());
    let older = UnsubscribeToken {
        list: "newsletter".into(),
        email_hash: hash.clone(),
    }
    .sign(&parse_token_key(&old).unwrap());
    assert!(older.contains(".old."));
    assert_eq!(app.one_click(&format!("{base}{older}")).await.status(), 200);
    assert!(app.subscriptions_of("target@example.org").await.is_empty());

    // A token for a list no longer configured: the same database and keys,
    // restarted without the list.
    let events_token = UnsubscribeToken {
        list: "events".into(),
        email_hash: hash,
    }
    .sign(&parse_token_key(&new).unwrap());
    let db_url = app.state.config.database.url.clone();
    let restarted = spawn_app_with(|c| {
        c.database.url = db_url.clone();
        c.secrets.token_keys = keys.clone();
    })
    .await;
    let resp = restarted
        .one_click(&format!("{}/v1/unsubscribe/{events_token}", restarted.base))
        .await;
    assert_eq!(resp.status(), 404);
    assert_eq!(
        restarted.count("suppressions").await,
        1,
        "only the earlier unsubscribe"
    );
}

#[tokio::test]
async fn after_an_unsubscribe_no_table_holds_the_address_in_readable_form() {
    let app = spawn_app().await;
    let email = "Findable.Person@Example.org";
    app.subscribe_and_confirm(email).await;
    assert!(
        !app.find_text("findable.person").await.is_empty(),
        "the scan does find the address while subscribed"
    );
    let url = app.unsubscribe_url("newsletter", email).await;
    assert_eq!(app.one_click(&url).await.status(), 200);
    let hits = app.find_text("findable.person").await;
    assert!(hits.is_empty(), "the address is still in {hits:?}");
    // The proof of consent is kept, under the hash.
    assert_eq!(app.count("consent_events").await, 2);
}

#[tokio::test]
async fn a_pending_confirmation_mail_is_cancelled_by_an_unsubscribe() {
    let app = spawn_app().await;
    app.subscribe("early@example.org").await;
    let url = app.unsubscribe_url("newsletter", "early@example.org").await;
    assert_eq!(app.one_click(&url).await.status(), 200);
    app.drain_mail().await;
    assert!(app.smtp.mails().is_empty());
    assert!(app.find_text("early@example.org").await.is_empty());
}

#[tokio::test]
async fn an_unsubscribed_address_may_opt_in_again_and_confirming_lifts_the_entry() {
    let app = spawn_app().await;
    app.subscribe_and_confirm("back@example.org").await;
    let url = app.unsubscribe_url("newsletter", "back@example.org").await;
    app.one_click(&url).await;
    app.clock.advance(chrono::Duration::hours(1));
    app.subscribe_and_confirm("back@example.org").await;
    assert_eq!(app.smtp.mails_to("back@example.org").len(), 2);
    let check = app.check(Some("newsletter"), "back@example.org").await;
    assert_eq!(check["suppressed"], false);
    assert_eq!(check["mailable"], true);
    assert_eq!(app.count("suppressions").await, 0);
}

#[tokio::test]
async fn complaint_bounce_and_blocked_entries_stop_confirmation_mail_behind_the_uniform_answer() {
    let app = spawn_app().await;
    let uniform = app
        .subscribe("someone-else@example.org")
        .await
        .bytes()
        .await
        .unwrap();
    for (email, reason) in [
        ("c@example.org", "complaint"),
        ("b@example.org", "bounce"),
        ("x@example.org", "blocked"),
    ] {
        app.add_suppression(serde_json::json!({"email": email, "reason": reason}))
            .await;
        let resp = app.subscribe(email).await;
        assert_eq!(resp.status(), 202);
        assert_eq!(resp.bytes().await.unwrap(), uniform);
    }
    app.drain_mail().await;
    for email in ["c@example.org", "b@example.org", "x@example.org"] {
        assert!(app.smtp.mails_to(email).is_empty(), "{email} got mail");
    }
}

#[tokio::test]
async fn api_keys_are_required_and_scoped() {
    let app = spawn_app().await;
    let none = app.http.get(app.url("/v1/lists")).send().await.unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(none.headers()["content-type"], "application/problem+json");
    let wrong = app
        .http
        .get(app.url("/v1/lists"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let sender = app.sender(Method::GET, "/v1/lists").send().await.unwrap();
    assert_eq!(sender.status(), 403);
    let admin = app.admin(Method::GET, "/v1/lists").send().await.unwrap();
    assert_eq!(admin.status(), 200);
    // Sender calls take either key.
    let check = app
        .admin(Method::POST, "/v1/suppressions/check")
        .json(&serde_json::json!({"emails": ["a@example.org"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(check.status(), 200);
}

#[tokio::test]
async fn an_administrator_unsubscribes_on_a_persons_behalf() {
    let app = spawn_app_with(|c| c.lists.push(second_list())).await;
    app.subscribe_and_confirm("mail-me-not@example.org").await;
    app.clock.advance(chrono::Duration::minutes(11));
    let link = app
        .confirmation_link_for("mail-me-not@example.org", "events")
        .await;
    app.http.post(&link).send().await.unwrap();

    let view = app
        .admin(Method::GET, "/v1/subscribers/mail-me-not@example.org")
        .send()
        .await
        .unwrap();
    assert_eq!(view.status(), 200);
    let view: serde_json::Value = view.json().await.unwrap();
    assert_eq!(view["subscriptions"].as_array().unwrap().len(), 2);

    let lists: serde_json::Value = app.admin_json(Method::GET, "/v1/lists").await;
    assert_eq!(lists["lists"][0]["confirmed"], 1);

    let resp = app
        .admin(
            Method::POST,
            "/v1/subscribers/mail-me-not@example.org/unsubscribe",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["left"], serde_json::json!(["events", "newsletter"]));
    assert!(
        app.subscriptions_of("mail-me-not@example.org")
            .await
            .is_empty()
    );
    assert_eq!(
        app.check(None, "mail-me-not@example.org").await["reason"],
        "unsubscribed"
    );
    let gone = app
        .admin(Method::GET, "/v1/subscribers/mail-me-not@example.org")
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
}

#[tokio::test]
async fn subscribers_are_paged_with_a_cursor() {
    let app = spawn_app().await;
    for i in 0..5 {
        app.subscribe_and_confirm(&format!("p{i}@example.org"))
            .await;
    }
    app.subscribe("pending-one@example.org").await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/v1/subscribers?status=confirmed&limit=2".to_string();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page: serde_json::Value = app.admin_json(Method::GET, &path).await;
        for item in page["items"].as_array().unwrap() {
            seen.push(item["email"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        (0..5)
            .map(|i| format!("p{i}@example.org"))
            .collect::<Vec<_>>()
    );
    let bad = app
        .admin(Method::GET, "/v1/subscribers?cursor=zz")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let bad = app
        .admin(Method::GET, "/v1/subscribers?list=nope")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let problem: serde_json::Value = bad.json().await.unwrap();
    assert!(problem.to_string().contains("list"), "{problem}");
    let known = app
        .admin(Method::GET, "/v1/subscribers?list=newsletter")
        .send()
        .await
        .unwrap();
    assert_eq!(known.status(), 200);
}

#[tokio::test]
async fn suppression_entries_can_be_listed_and_removed_by_an_administrator() {
    let app = spawn_app().await;
    let add = app
        .admin(Method::POST, "/v1/suppressions")
        .json(&serde_json::json!({"email": "oops@example.org", "list": "newsletter"}))
        .send()
        .await
        .unwrap();
    assert_eq!(add.status(), 201);
    let entry: serde_json::Value = add.json().await.unwrap();
    assert_eq!(entry["reason"], "manual");
    assert_eq!(entry["scope"], "newsletter");
    assert!(!entry.to_string().contains("oops"));
    let page: serde_json::Value = app.admin_json(Method::GET, "/v1/suppressions").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let del = app
        .admin(
            Method::DELETE,
            "/v1/suppressions/oops@example.org?list=newsletter",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    let again = app
        .admin(Method::DELETE, "/v1/suppressions/oops@example.org")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
}

#[tokio::test]
async fn the_bulk_check_takes_ten_thousand_addresses_and_reports_bad_ones() {
    let app = spawn_app().await;
    app.subscribe_and_confirm("in@example.org").await;
    app.subscribe_and_confirm("in2@example.org").await;
    for out in ["out@example.org", "out2@example.org"] {
        app.add_suppression(serde_json::json!({"email": out, "list": "newsletter"}))
            .await;
    }
    let mut emails: Vec<String> = (0..9_998).map(|i| format!("bulk{i}@example.org")).collect();
    emails.push("in@example.org".into());
    emails.push("not an address".into());
    // Known addresses in the first half too: a large check is answered in
    // parts, and every part must answer in place.
    emails[10] = "in2@example.org".into();
    emails[20] = "out@example.org".into();
    emails[30] = "not an address either".into();
    emails[6_000] = "out2@example.org".into();
    let resp = app
        .sender(Method::POST, "/v1/suppressions/check")
        .json(&serde_json::json!({"list": "newsletter", "emails": emails}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    if status != 200 {
        panic!("{status}: {}", resp.text().await.unwrap());
    }
    let body: serde_json::Value = resp.json().await.unwrap();
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 10_000);
    for (sent, got) in emails.iter().zip(results) {
        assert_eq!(got["email"], sent.as_str(), "answers in the order sent");
    }
    for i in [10, 9_998] {
        assert_eq!(results[i]["mailable"], true, "{i}");
        assert_eq!(results[i]["subscribed"], true, "{i}");
    }
    for i in [20, 6_000] {
        assert_eq!(results[i]["suppressed"], true, "{i}");
        assert_eq!(results[i]["reason"], "manual", "{i}");
        assert_eq!(results[i]["mailable"], false, "{i}");
    }
    for i in [30, 9_999] {
        assert!(results[i]["error"].is_string(), "{i}");
    }
    assert_eq!(results[0]["mailable"], false);
    assert!(results[0].get("error").is_none());
    let flagged = results
        .iter()
        .filter(|r| r["suppressed"] == true || r["subscribed"] == true || r.get("error").is_some())
        .count();
    assert_eq!(flagged, 6, "nothing else is known");
    let too_many: Vec<String> = (0..10_001).map(|i| format!("x{i}@example.org")).collect();
    let resp = app
        .sender(Method::POST, "/v1/suppressions/check")
        .json(&serde_json::json!({"emails": too_many}))
        .send()
        .await
        .unwrap();
    assert!(
        resp.status() == 400 || resp.status() == 413,
        "{}",
        resp.status()
    );
}

#[tokio::test]
async fn an_unsubscribe_from_a_mailchimp_list_keeps_only_the_member_hash_for_later() {
    let fake = crate::fake_mailchimp::FakeMailchimp::start(&["a6b5da1054"]).await;
    let app = spawn_app_with(move |c| {
        c.lists[0].mailchimp_list_id = Some("a6b5da1054".into());
        c.mailchimp.api_key = Some(crate::fake_mailchimp::FAKE_API_KEY.into());
        c.mailchimp.base_url = Some(fake.base_url());
    })
    .await;
    app.subscribe_and_confirm("Urist.McVankab@freddiesjokes.com")
        .await;
    let url = app
        .unsubscribe_url("newsletter", "Urist.McVankab@freddiesjokes.com")
        .await;
    assert_eq!(app.one_click(&url).await.status(), 200);
    let rows = app
        .query("SELECT mailchimp_hash FROM suppressions", vec![])
        .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0]
            .try_get::<Option<String>>("", "mailchimp_hash")
            .unwrap()
            .as_deref(),
        Some("62eeb292278cc15f5817cb78f7790b08"),
        "Mailchimp's member id, so the member can be archived when the entry expires"
    );
    assert!(
        app.find_text("freddiesjokes").await.is_empty(),
        "the address itself is gone"
    );
}

#[tokio::test]
async fn an_unsubscribe_from_an_unmapped_list_keeps_no_member_hash() {
    let app = spawn_app().await;
    app.subscribe_and_confirm("plain@example.org").await;
    let url = app.unsubscribe_url("newsletter", "plain@example.org").await;
    assert_eq!(app.one_click(&url).await.status(), 200);
    let rows = app
        .query("SELECT mailchimp_hash FROM suppressions", vec![])
        .await;
    assert_eq!(
        rows[0]
            .try_get::<Option<String>>("", "mailchimp_hash")
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn concurrent_unsubscribes_share_transactions_and_each_leaves_only_its_list() {
    let app = spawn_app_with(|c| c.lists.push(second_list())).await;
    // Ten confirmed on one list, five also on the second, five only pending.
    let mut urls = Vec::new();
    for i in 0..10 {
        let email = format!("many-{i}@example.org");
        app.subscribe_and_confirm(&email).await;
        if i < 5 {
            // Past the per-address resend cooldown.
            app.clock.advance(chrono::Duration::minutes(11));
            let link = app.confirmation_link_for(&email, "events").await;
            assert_eq!(app.http.post(&link).send().await.unwrap().status(), 200);
        }
        urls.push((
            email.clone(),
            app.unsubscribe_url("newsletter", &email).await,
        ));
    }
    for i in 0..5 {
        let email = format!("pending-{i}@example.org");
        app.subscribe(&email).await;
        urls.push((
            email.clone(),
            app.unsubscribe_url("newsletter", &email).await,
        ));
    }
    app.drain_mail().await;
    assert_eq!(
        app.subscriptions_of("many-0@example.org").await,
        vec![
            ("events".into(), "confirmed".into()),
            ("newsletter".into(), "confirmed".into())
        ]
    );

    let answers = futures_util::future::join_all(urls.iter().map(|(_, u)| app.one_click(u))).await;
    assert!(answers.iter().all(|r| r.status() == 200));

    for (i, (email, _)) in urls.iter().enumerate() {
        let check = app.check(Some("newsletter"), email).await;
        assert_eq!(check["suppressed"], true, "{email}");
        assert_eq!(check["reason"], "unsubscribed");
        let subs = app.subscriptions_of(email).await;
        if i < 5 {
            assert_eq!(subs, vec![("events".into(), "confirmed".into())], "{email}");
        } else {
            assert!(subs.is_empty(), "{email}");
            assert!(
                app.find_text(email).await.is_empty(),
                "{email} left no trace"
            );
        }
    }
    // Consent proof of the confirmed ones stays, detached; the pending ones'
    // requests go.
    let detached = app
        .query(
            "SELECT COUNT(*) AS n FROM consent_events WHERE subscription_id IS NULL",
            vec![],
        )
        .await[0]
        .try_get::<i64>("", "n")
        .unwrap();
    assert_eq!(
        detached, 20,
        "requested + confirmed of the ten newsletter subscriptions"
    );
    // A second round is a no-op that still answers 200.
    let again = futures_util::future::join_all(urls.iter().map(|(_, u)| app.one_click(u))).await;
    assert!(again.iter().all(|r| r.status() == 200));
    assert_eq!(app.count("suppressions").await, 15);
}
