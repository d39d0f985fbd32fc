//! The bulk check's copy in memory (PostgreSQL): every answer it gives must
//! be the database's, whatever changed and whoever changed it.
use std::{sync::Arc, time::Duration};

use listguard::{
    domain::EmailAddress,
    services::{check_cache::CheckCache, suppression},
};
use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    helpers::{TestApp, second_list, spawn_app_with},
    ops::{sample, scrape},
};

/// The app's bulk check cache; `None` on SQLite, which keeps no copy.
fn cache_of(app: &TestApp) -> Option<Arc<CheckCache>> {
    let cache = app.state.check_cache.clone();
    assert_eq!(cache.is_some(), listguard::db::is_postgres(&app.state.db));
    cache
}

/// Loads the copy (as the first check that wants it does) and waits for it.
async fn load_copy(cache: &CheckCache) {
    cache.want();
    assert!(
        cache.wait_ready(true, Duration::from_secs(20)).await,
        "the copy loads"
    );
}

/// An app with two lists whose copy is loaded; `None` on SQLite.
async fn app_with_copy() -> Option<TestApp> {
    let app = spawn_app_with(|c| c.lists.push(second_list())).await;
    let cache = cache_of(&app)?;
    load_copy(&cache).await;
    Some(app)
}

/// Checks `emails` over HTTP, and asserts that memory answered (or, with
/// `from_memory` false, that it did not) and that the database, asked
/// directly, gives the same answers. Returns the HTTP answers.
async fn check(
    app: &TestApp,
    list: Option<&str>,
    emails: &[&str],
    from_memory: bool,
) -> Vec<Value> {
    let before = app.state.metrics.checks_answered(true);
    let resp = app
        .sender(Method::POST, "/v1/suppressions/check")
        .json(&json!({"list": list, "emails": emails}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        app.state.metrics.checks_answered(true) - before,
        u64::from(from_memory),
        "answered from memory: {from_memory} expected"
    );
    let hashes: Vec<String> = emails
        .iter()
        .map(|e| app.state.keys.hasher.hash(&EmailAddress::parse(e).unwrap()))
        .collect();
    let db = suppression::check_many(&app.state.db, list, &hashes, app.clock_now())
        .await
        .unwrap();
    let results = body["results"].as_array().unwrap().clone();
    for ((r, d), email) in results.iter().zip(&db).zip(emails) {
        let what = format!("{email} on {list:?}: {r}");
        assert_eq!(r["suppressed"], d.suppressed, "{what}");
        assert_eq!(r["reason"].as_str(), d.reason.as_deref(), "{what}");
        assert_eq!(r["subscribed"], d.subscribed, "{what}");
        assert_eq!(r["mailable"], d.mailable(), "{what}");
        let expires = r["expires_at"]
            .as_str()
            .map(|t| t.parse::<chrono::DateTime<chrono::Utc>>().unwrap());
        assert_eq!(expires, d.expires_at, "{what}");
    }
    results
}

/// Every list filter, every address.
async fn check_all(app: &TestApp, emails: &[&str]) -> [Vec<Value>; 3] {
    [
        check(app, None, emails, true).await,
        check(app, Some("newsletter"), emails, true).await,
        check(app, Some("events"), emails, true).await,
    ]
}

#[tokio::test]
async fn the_copy_follows_every_kind_of_change_whoever_makes_it() {
    let Some(app) = app_with_copy().await else {
        return;
    };
    let (a, b, c, d) = (
        "Ann@Example.org",
        "bo@example.org",
        "cy@example.org",
        "di@example.org",
    );
    let all = [a, b, c, d];
    check_all(&app, &all).await;

    // Confirmed, confirmed on the other list, pending.
    app.subscribe_and_confirm(a).await;
    let link = app.confirmation_link_for(b, "events").await;
    assert_eq!(app.http.post(&link).send().await.unwrap().status(), 200);
    assert_eq!(app.subscribe(c).await.status(), 202);
    let [any, news, events] = check_all(&app, &all).await;
    assert_eq!(news[0]["mailable"], true);
    assert_eq!(events[1]["mailable"], true);
    assert_eq!(news[1]["subscribed"], false);
    assert_eq!(any[2]["subscribed"], false, "pending is not subscribed");

    // One-click unsubscribe.
    let url = app.unsubscribe_url("newsletter", a).await;
    assert_eq!(app.one_click(&url).await.status(), 200);
    let [_, news, _] = check_all(&app, &all).await;
    assert_eq!(news[0]["reason"], "unsubscribed");
    assert_eq!(news[0]["subscribed"], false);

    // An entry added and removed by hand, for all lists.
    app.add_suppression(json!({"email": d, "reason": "complaint"}))
        .await;
    let [_, _, events] = check_all(&app, &all).await;
    assert_eq!(events[3]["reason"], "complaint");
    let resp = app
        .admin(Method::DELETE, &format!("/v1/suppressions/{d}"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let [any, _, _] = check_all(&app, &all).await;
    assert_eq!(any[3]["suppressed"], false);

    // Restriction set and lifted.
    for restricted in [true, false] {
        let resp = app.patch(b, json!({"restricted": restricted})).await;
        assert_eq!(resp.status(), 200);
        let [_, _, events] = check_all(&app, &all).await;
        assert_eq!(events[1]["mailable"], !restricted);
    }

    // Erasure.
    app.erase(b).await;
    let [_, _, events] = check_all(&app, &all).await;
    assert_eq!(events[1]["reason"], "erased");
    assert_eq!(events[1]["subscribed"], false);

    // Subscribing again (after the ten minutes between confirmation mails)
    // lifts the unsubscribe entry.
    app.clock.advance(chrono::Duration::minutes(11));
    app.subscribe_and_confirm(a).await;
    let [_, news, _] = check_all(&app, &all).await;
    assert_eq!(news[0]["mailable"], true);

    // Writes that bypass this process entirely, as another replica or a
    // hand-run statement would make them.
    let hash = |e: &str| app.state.keys.hasher.hash(&EmailAddress::parse(e).unwrap());
    insert_bounce(&app, &app.state.db, c).await;
    app.query(
        "UPDATE subscriptions SET status = 'confirmed' WHERE subscriber_id = \
         (SELECT id FROM subscribers WHERE email_hash = $1)",
        vec![hash(c).into()],
    )
    .await;
    let [any, news, events] = check_all(&app, &all).await;
    assert_eq!(news[2]["reason"], "bounce");
    assert_eq!(any[2]["subscribed"], true);
    assert_eq!(events[2]["suppressed"], false);
    app.query(
        "DELETE FROM subscribers WHERE email_hash = $1",
        vec![hash(a).into()],
    )
    .await;
    let [any, _, _] = check_all(&app, &all).await;
    assert_eq!(any[0]["subscribed"], false);

    // Time: the entry stops counting at its expiry, with nothing written.
    app.clock.advance(chrono::Duration::days(31));
    let [_, news, _] = check_all(&app, &all).await;
    assert_eq!(news[2]["suppressed"], false);

    // The purge deletes what expired; the answers stay the database's.
    let resp = app
        .admin(Method::POST, "/v1/admin/purge")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    check_all(&app, &all).await;

    // Operators see where answers come from and how big the copy is.
    let metrics = scrape(&app).await;
    assert!(
        sample(&metrics, "listguard_bulk_checks_total{by=\"memory\"}").is_some(),
        "{metrics}"
    );
    let held = sample(&metrics, "listguard_bulk_check_copy_addresses").expect("the copy's size");
    assert!(held >= 1.0, "{held}");
}

#[tokio::test]
async fn a_lost_listener_sends_checks_to_the_database_until_a_new_copy_is_loaded() {
    let Some(app) = app_with_copy().await else {
        return;
    };
    let a = "lost@example.org";
    app.subscribe_and_confirm(a).await;
    check(&app, Some("newsletter"), &[a], true).await;

    let killed = app
        .query(
            "SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'LISTEN%'",
            vec![],
        )
        .await;
    assert_eq!(killed.len(), 1, "one listener");
    let cache = app.state.check_cache.clone().unwrap();
    assert!(cache.wait_ready(false, Duration::from_secs(10)).await);

    // A change the lost listener cannot hear of; the database answers.
    let url = app.unsubscribe_url("newsletter", a).await;
    assert_eq!(app.one_click(&url).await.status(), 200);
    let r = check(&app, Some("newsletter"), &[a], false).await;
    assert_eq!(r[0]["reason"], "unsubscribed");

    // A new listener loads a new copy, which has the change.
    assert!(cache.wait_ready(true, Duration::from_secs(20)).await);
    let r = check(&app, Some("newsletter"), &[a], true).await;
    assert_eq!(r[0]["reason"], "unsubscribed");
    assert_eq!(r[0]["subscribed"], false);
}

#[tokio::test]
async fn a_check_never_answers_from_a_copy_behind_the_database() {
    let Some(app) = app_with_copy().await else {
        return;
    };
    let a = "behind@example.org";
    app.subscribe_and_confirm(a).await;
    let cache = app.state.check_cache.clone().unwrap();
    let held = cache.hold_notices().await;
    // The copy cannot apply this change while the notices are held: the
    // check waits for its own notice, gives up and asks the database.
    let url = app.unsubscribe_url("newsletter", a).await;
    assert_eq!(app.one_click(&url).await.status(), 200);
    let r = check(&app, Some("newsletter"), &[a], false).await;
    assert_eq!(r[0]["reason"], "unsubscribed");
    drop(held);
    let r = check(&app, Some("newsletter"), &[a], true).await;
    assert_eq!(r[0]["reason"], "unsubscribed");
}

#[tokio::test]
async fn the_copy_is_dropped_when_no_check_comes_and_loaded_again_for_the_next() {
    let app = spawn_app_with(|_| {}).await;
    let Some(cache) = cache_of(&app) else {
        return;
    };
    let a = "idle@example.org";
    app.subscribe_and_confirm(a).await;
    assert!(!cache.is_ready(), "no copy before a check wants one");
    cache.set_idle_after(Duration::from_secs(1));
    load_copy(&cache).await;
    assert!(
        cache.wait_ready(false, Duration::from_secs(20)).await,
        "dropped after a second without a check"
    );
    cache.set_idle_after(Duration::from_secs(300));
    // The database answers the first check and the copy loads again for the
    // next.
    let r = check(&app, Some("newsletter"), &[a], false).await;
    assert_eq!(r[0]["mailable"], true);
    assert!(cache.wait_ready(true, Duration::from_secs(20)).await);
    let r = check(&app, Some("newsletter"), &[a], true).await;
    assert_eq!(r[0]["mailable"], true);
}

/// Adds a `bounce` entry for `email` on the newsletter by plain SQL, in
/// `conn`'s transaction.
async fn insert_bounce(app: &TestApp, conn: &impl sea_orm::ConnectionTrait, email: &str) {
    let hash = app
        .state
        .keys
        .hasher
        .hash(&EmailAddress::parse(email).unwrap());
    let now = app.clock_now();
    conn.execute_raw(sea_orm::Statement::from_sql_and_values(
        sea_orm::DbBackend::Postgres,
        "INSERT INTO suppressions (email_hash, scope, reason, source, created_at, expires_at) \
         VALUES ($1, 'newsletter', 'bounce', 'admin', $2, $3)",
        vec![
            hash.into(),
            now.into(),
            (now + chrono::Duration::days(30)).into(),
        ],
    ))
    .await
    .unwrap();
}

/// The notices on the check's channel up to a marker sent after them.
async fn notices_until_marker(
    app: &TestApp,
    listener: &mut sea_orm::sqlx::postgres::PgListener,
    marker: &str,
) -> Vec<String> {
    app.query(
        "SELECT pg_notify($1, $2)",
        vec![
            listguard::services::check_cache::CHANNEL.into(),
            marker.into(),
        ],
    )
    .await;
    let mut got = Vec::new();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
            .await
            .expect("the marker comes back")
            .unwrap();
        if n.payload() == marker {
            return got;
        }
        got.push(n.payload().to_string());
    }
}

#[tokio::test]
async fn writers_send_notices_only_while_some_process_keeps_a_copy() {
    let app = spawn_app_with(|_| {}).await;
    let Some(cache) = cache_of(&app) else {
        return;
    };
    let pool = app.state.db.get_postgres_connection_pool();
    let mut listener = sea_orm::sqlx::postgres::PgListener::connect_with(pool)
        .await
        .unwrap();
    listener
        .listen(listguard::services::check_cache::CHANNEL)
        .await
        .unwrap();
    let (a, b) = ("quiet@example.org", "heard@example.org");

    // No copy anywhere: confirming and unsubscribing send nothing.
    app.subscribe_and_confirm(a).await;
    app.subscribe_and_confirm(b).await;
    let url = app.unsubscribe_url("newsletter", a).await;
    assert_eq!(app.one_click(&url).await.status(), 200);
    let got = notices_until_marker(&app, &mut listener, "one").await;
    assert!(got.is_empty(), "{got:?}");

    // Once a copy is kept, the same change is announced.
    load_copy(&cache).await;
    let url = app.unsubscribe_url("newsletter", b).await;
    assert_eq!(app.one_click(&url).await.status(), 200);
    let got = notices_until_marker(&app, &mut listener, "two").await;
    assert!(
        got.iter().any(|n| n.starts_with('h')) && got.iter().any(|n| n.starts_with('i')),
        "{got:?}"
    );
    let r = check(&app, Some("newsletter"), &[a, b], true).await;
    assert_eq!(r[1]["reason"], "unsubscribed");

    // Once the copy is dropped and no other process keeps one, the
    // triggers go and writers are quiet again.
    cache.set_idle_after(Duration::from_millis(200));
    assert!(cache.wait_ready(false, Duration::from_secs(20)).await);
    eventually("the triggers are dropped", || async {
        trigger_count(&app, None).await == 0
    })
    .await;
    let c = "after@example.org";
    app.subscribe_and_confirm(c).await;
    let url = app.unsubscribe_url("newsletter", c).await;
    assert_eq!(app.one_click(&url).await.status(), 200);
    let got = notices_until_marker(&app, &mut listener, "three").await;
    // (The check above sent one of its own, `s…`.)
    assert!(got.iter().all(|n| n.starts_with('s')), "{got:?}");
}

#[tokio::test]
async fn a_copy_waits_for_a_writer_that_found_no_copy_and_has_not_committed() {
    let app = spawn_app_with(|_| {}).await;
    let Some(cache) = cache_of(&app) else {
        return;
    };
    let a = "inflight@example.org";
    // Written before any process kept a copy, so its trigger sent nothing;
    // committed only once the copy has begun to load.
    let txn = sea_orm::TransactionTrait::begin(&app.state.db)
        .await
        .unwrap();
    insert_bounce(&app, &txn, a).await;
    cache.want();
    assert!(
        !cache.wait_ready(true, Duration::from_millis(500)).await,
        "no copy while an older writer is open"
    );
    txn.commit().await.unwrap();
    assert!(cache.wait_ready(true, Duration::from_secs(20)).await);
    let r = check(&app, Some("newsletter"), &[a], true).await;
    assert_eq!(r[0]["reason"], "bounce");
}

#[tokio::test]
async fn a_repeatable_read_writer_older_than_the_copy_still_announces_its_change() {
    let app = spawn_app_with(|_| {}).await;
    let Some(cache) = cache_of(&app) else {
        return;
    };
    let a = "snapshot@example.org";
    // Its snapshot predates the copy's lease; its write comes after.
    let txn = sea_orm::TransactionTrait::begin_with_config(
        &app.state.db,
        Some(sea_orm::IsolationLevel::RepeatableRead),
        None,
    )
    .await
    .unwrap();
    sea_orm::ConnectionTrait::execute_unprepared(&txn, "SELECT 1")
        .await
        .unwrap();
    load_copy(&cache).await;
    insert_bounce(&app, &txn, a).await;
    txn.commit().await.unwrap();
    let r = check(&app, Some("newsletter"), &[a], true).await;
    assert_eq!(r[0]["reason"], "bounce");
}

/// The check's triggers on `table` (all tables when `None`).
async fn trigger_count(app: &TestApp, table: Option<&str>) -> i64 {
    let rows = app
        .query(
            "SELECT count(*) AS n FROM pg_trigger \
             WHERE tgname LIKE 'listguard_check_%' AND ($1::text IS NULL OR tgrelid::regclass::text = $1)",
            vec![table.map(str::to_string).into()],
        )
        .await;
    rows[0].try_get::<i64>("", "n").unwrap()
}

/// Polls until `done` holds, for at most 20 s.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut done: impl FnMut() -> F,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !done().await {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn dropping_the_triggers_holds_one_table_at_a_time_and_never_deadlocks_a_reader() {
    let app = spawn_app_with(|_| {}).await;
    let Some(cache) = cache_of(&app) else {
        return;
    };
    load_copy(&cache).await;
    assert_eq!(trigger_count(&app, None).await, 9);

    // A reader holds `suppressions` and will read `subscriptions` next, as
    // the database's check does, while the idle copy drops the triggers.
    let reader = sea_orm::TransactionTrait::begin(&app.state.db)
        .await
        .unwrap();
    let read = |sql: &'static str| sea_orm::ConnectionTrait::execute_unprepared(&reader, sql);
    read("SELECT count(*) FROM suppressions").await.unwrap();
    cache.set_idle_after(Duration::from_millis(200));
    assert!(cache.wait_ready(false, Duration::from_secs(20)).await);
    // The triggers of `subscriptions` go, each drop committed on its own,
    // while `suppressions` is still held by the reader.
    eventually("subscriptions' triggers dropped", || async {
        trigger_count(&app, Some("subscriptions")).await == 0
    })
    .await;
    read("SELECT count(*) FROM subscriptions").await.unwrap();
    reader.commit().await.unwrap();

    // What a busy table kept is dropped by a later release.
    cache.set_idle_after(Duration::from_secs(300));
    load_copy(&cache).await;
    assert_eq!(trigger_count(&app, None).await, 9, "recreated");
    cache.set_idle_after(Duration::from_millis(200));
    assert!(cache.wait_ready(false, Duration::from_secs(20)).await);
    eventually("every trigger dropped", || async {
        trigger_count(&app, None).await == 0
    })
    .await;
}
