use chrono::{DateTime, Utc};
use reqwest::Method;

use crate::helpers::spawn_app;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

async fn unsubscribe_at(app: &crate::helpers::TestApp, email: &str, when: DateTime<Utc>) {
    app.clock.set(when - chrono::Duration::hours(1));
    app.subscribe_and_confirm(email).await;
    app.clock.set(when);
    let url = app.unsubscribe_url("newsletter", email).await;
    assert_eq!(app.one_click(&url).await.status(), 200);
}

#[tokio::test]
async fn an_entry_from_the_31st_of_january_stops_counting_at_the_end_of_february() {
    let app = spawn_app().await;
    unsubscribe_at(&app, "jan@example.org", at("2026-01-31T10:00:00Z")).await;

    app.clock.set(at("2026-02-28T09:59:59Z"));
    assert_eq!(
        app.check(Some("newsletter"), "jan@example.org").await["suppressed"],
        true
    );
    let report: serde_json::Value = app.admin_json(Method::POST, "/v1/admin/purge").await;
    assert_eq!(report["suppressions"], 0);
    assert_eq!(app.count("consent_events").await, 2);

    app.clock.set(at("2026-02-28T10:00:00Z"));
    let check = app.check(Some("newsletter"), "jan@example.org").await;
    assert_eq!(
        check["suppressed"], false,
        "an expired entry stops counting at once"
    );

    let dry: serde_json::Value = app
        .admin_json(Method::POST, "/v1/admin/purge?dry_run=true")
        .await;
    assert_eq!(dry["suppressions"], 1);
    assert_eq!(
        dry["consent_events"], 2,
        "the consent rows kept under the hash go with the entry"
    );
    assert_eq!(
        app.count("suppressions").await,
        1,
        "a dry run deletes nothing"
    );

    let report: serde_json::Value = app.admin_json(Method::POST, "/v1/admin/purge").await;
    assert_eq!(report["suppressions"], 1);
    assert_eq!(report["consent_events"], 2);
    assert_eq!(app.count("suppressions").await, 0);
    assert_eq!(app.count("consent_events").await, 0);
}

#[tokio::test]
async fn in_a_leap_year_the_month_ends_on_the_29th() {
    let app = spawn_app().await;
    unsubscribe_at(&app, "leap@example.org", at("2028-01-31T10:00:00Z")).await;
    app.clock.set(at("2028-02-29T09:59:59Z"));
    assert_eq!(
        app.check(Some("newsletter"), "leap@example.org").await["suppressed"],
        true
    );
    app.clock.set(at("2028-02-29T10:00:00Z"));
    assert_eq!(
        app.check(Some("newsletter"), "leap@example.org").await["suppressed"],
        false
    );
}

#[tokio::test]
async fn a_pending_subscription_past_expiry_and_grace_is_deleted_with_its_rows() {
    let app = spawn_app().await;
    app.subscribe("never@example.org").await;
    app.drain_mail().await;
    app.subscribe_and_confirm("kept@example.org").await;
    // 48 h token + 7 d grace, minus a second: still there.
    app.clock.advance(
        chrono::Duration::hours(48) + chrono::Duration::days(7) - chrono::Duration::seconds(1),
    );
    app.admin(Method::POST, "/v1/admin/purge")
        .send()
        .await
        .unwrap();
    assert_eq!(app.subscriptions_of("never@example.org").await.len(), 1);

    app.clock.advance(chrono::Duration::seconds(1));
    let dry: serde_json::Value = app
        .admin_json(Method::POST, "/v1/admin/purge?dry_run=true")
        .await;
    assert_eq!(dry["pending_subscriptions"], 1);
    assert_eq!(
        dry["subscribers"], 1,
        "a dry run counts the subscriber the pending signup leaves behind"
    );
    let report: serde_json::Value = app.admin_json(Method::POST, "/v1/admin/purge").await;
    assert_eq!(report["pending_subscriptions"], 1);
    assert_eq!(report["subscribers"], 1);
    assert!(app.subscriptions_of("never@example.org").await.is_empty());
    assert!(app.find_text("never@example.org").await.is_empty());
    assert_eq!(
        app.count("consent_events").await,
        2,
        "only the confirmed subscriber's"
    );
    assert_eq!(app.subscriptions_of("kept@example.org").await.len(), 1);
    // Finished bookkeeping is gone as well.
    assert_eq!(app.count("tokens").await, 0);
    assert_eq!(app.count("outbox").await, 0);
}

#[tokio::test]
async fn an_expired_link_keeps_answering_410_while_its_signup_waits() {
    let app = spawn_app().await;
    let first = app.confirmation_link("slow@example.org").await;
    // The first link expires; the person asks again a day later.
    app.clock.advance(chrono::Duration::hours(72));
    let second = app.confirmation_link("slow@example.org").await;
    assert_ne!(first, second);
    // Day 10: the first link (expired on day 2) is past expiry + grace; the
    // renewed signup (link valid until day 5) is not, until day 12.
    app.clock.advance(chrono::Duration::days(7));
    app.admin(Method::POST, "/v1/admin/purge")
        .send()
        .await
        .unwrap();
    assert_eq!(app.subscriptions_of("slow@example.org").await.len(), 1);
    assert_eq!(
        app.http.get(&first).send().await.unwrap().status(),
        410,
        "an expired link offers a new mail until its signup is purged"
    );
}

#[tokio::test]
async fn a_dead_lettered_confirmation_mail_goes_with_its_signup() {
    let app = crate::helpers::spawn_app_with(|c| c.mail.max_attempts = 1).await;
    app.smtp.refuse_next(1);
    app.subscribe("bounced@example.org").await;
    app.drain_mail().await;
    // The refused first mail got a job of its own, which holds it.
    let rows = app
        .query("SELECT status FROM outbox ORDER BY id", vec![])
        .await;
    assert_eq!(rows[1].try_get::<String>("", "status").unwrap(), "dead");

    app.clock.advance(
        chrono::Duration::hours(48) + chrono::Duration::days(7) + chrono::Duration::seconds(1),
    );
    app.admin(Method::POST, "/v1/admin/purge")
        .send()
        .await
        .unwrap();
    assert_eq!(app.count("outbox").await, 0);
    assert!(
        app.find_text("bounced@example.org").await.is_empty(),
        "no table keeps the address of a mail that was never sent"
    );
}

#[tokio::test]
async fn deleting_a_subscriber_takes_its_subscriptions_and_tokens_and_detaches_its_consent() {
    // The foreign keys' actions, which every path that deletes people or
    // subscriptions relies on, on both backends.
    let app = spawn_app().await;
    app.subscribe("cascade@example.org").await;
    app.drain_mail().await;
    // Sent again: the first token is held on the subscription's row, this
    // one is a `tokens` row.
    app.clock.advance(chrono::Duration::minutes(11));
    app.subscribe("cascade@example.org").await;
    app.subscribe_and_confirm("other@example.org").await;
    let (subs, tokens, events) = (
        app.count("subscriptions").await,
        app.count("tokens").await,
        app.count("consent_events").await,
    );
    app.query(
        "DELETE FROM subscribers WHERE email = 'cascade@example.org'",
        vec![],
    )
    .await;
    assert_eq!(app.count("subscriptions").await, subs - 1);
    assert_eq!(app.count("tokens").await, tokens - 1);
    assert_eq!(app.count("consent_events").await, events, "proof stays");
    let detached = app
        .query(
            "SELECT COUNT(*) AS n FROM consent_events WHERE subscription_id IS NULL",
            vec![],
        )
        .await;
    assert_eq!(
        detached[0].try_get::<i64>("", "n").unwrap(),
        2,
        "both of its requests"
    );
    let dangling = app
        .query(
            "SELECT COUNT(*) AS n FROM consent_events c WHERE c.subscription_id IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM subscriptions s WHERE s.id = c.subscription_id)",
            vec![],
        )
        .await;
    assert_eq!(dangling[0].try_get::<i64>("", "n").unwrap(), 0);
}
