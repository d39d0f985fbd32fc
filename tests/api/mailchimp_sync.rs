//! Mailchimp sync through the outbox, against the stateful fake on loopback:
//! confirm, unsubscribe and expiry reach the audience; faults, 429s and
//! dropped connections are retried; many upserts go through the batch
//! endpoint; reconciliation repairs drift; two workers never do a job twice.
use entity::{subscriber, subscription};
use listguard::{
    config::Config,
    domain::EmailAddress,
    mailchimp::{jobs, reconcile, sync},
    outbox::ExecutionOutcome,
    services::{
        suppression::{Reason, Source},
        unsubscribe::{Scope, unsubscribe},
    },
};
use reqwest::Method;
use sea_orm::{EntityTrait, Set};

use crate::{
    fake_mailchimp::{FAKE_API_KEY, FakeMailchimp, Member},
    helpers::{TestApp, spawn_app_with},
};

const AUDIENCE: &str = "a6b5da1054";

fn mapped(c: &mut Config, fake: &FakeMailchimp) {
    c.lists[0].mailchimp_list_id = Some(AUDIENCE.into());
    c.mailchimp.api_key = Some(FAKE_API_KEY.into());
    c.mailchimp.base_url = Some(fake.base_url());
}

async fn app_with(fake: &FakeMailchimp, adjust: impl FnOnce(&mut Config)) -> TestApp {
    let fake = fake.clone();
    spawn_app_with(move |c| {
        mapped(c, &fake);
        adjust(c);
    })
    .await
}

fn hash_of(email: &str) -> String {
    EmailAddress::parse(email).unwrap().mailchimp_hash()
}

impl TestApp {
    /// Runs the sync worker until nothing is due; while jobs wait for a
    /// retry, moves the clock past their backoff and goes on. Returns the
    /// number of steps that did work.
    async fn settle_sync(&self) -> usize {
        let mut steps = 0;
        for _ in 0..200 {
            while sync::try_execute_task(&self.state).await.unwrap()
                == ExecutionOutcome::TaskCompleted
            {
                steps += 1;
            }
            let waiting = self
                .query(
                    "SELECT COUNT(*) AS n FROM outbox WHERE kind = 'mailchimp' AND status IN ('pending', 'in_flight')",
                    vec![],
                )
                .await[0]
                .try_get::<i64>("", "n")
                .unwrap();
            if waiting == 0 {
                return steps;
            }
            self.clock.advance(chrono::Duration::hours(2));
        }
        panic!("the Mailchimp queue never settles");
    }

    async fn dead_letters(&self) -> i64 {
        self.query(
            "SELECT COUNT(*) AS n FROM outbox WHERE status = 'dead'",
            vec![],
        )
        .await[0]
            .try_get::<i64>("", "n")
            .unwrap()
    }

    /// `n` confirmed subscribers `{prefix}-{i}@example.org` with their
    /// upserts queued, as confirming queues them, in one transaction.
    async fn seed_confirmed(&self, prefix: &str, n: usize) -> Vec<String> {
        let now = self.clock_now();
        let emails: Vec<String> = (0..n)
            .map(|i| format!("{prefix}-{i}@example.org"))
            .collect();
        let tx = self.state.begin_write().await.unwrap();
        for chunk in emails.chunks(500) {
            let people = subscriber::Entity::insert_many(chunk.iter().map(|e| {
                subscriber::ActiveModel {
                    email: Set(e.clone()),
                    email_hash: Set(self
                        .state
                        .keys
                        .hasher
                        .hash(&EmailAddress::parse(e).unwrap())),
                    name: Set(Some(format!("Reader {prefix}"))),
                    locale: Set("en".into()),
                    restricted: Set(false),
                    created_at: Set(now),
                    updated_at: Set(now),
                    ..Default::default()
                }
            }))
            .exec_with_returning(&*tx)
            .await
            .unwrap();
            for p in people {
                let sub = subscription::Entity::insert(subscription::ActiveModel {
                    subscriber_id: Set(p.id),
                    list_slug: Set("newsletter".into()),
                    status: Set("confirmed".into()),
                    source: Set(None),
                    created_at: Set(now),
                    confirmed_at: Set(Some(now)),
                    ..Default::default()
                })
                .exec(&*tx)
                .await
                .unwrap();
                jobs::queue_upsert(
                    &*tx,
                    &self.state.config,
                    &p,
                    "newsletter",
                    sub.last_insert_id,
                    now,
                )
                .await
                .unwrap();
            }
        }
        tx.commit().await.unwrap();
        emails
    }
}

#[tokio::test]
async fn confirm_unsubscribe_and_expiry_reach_the_audience_and_no_job_keeps_the_address() {
    let fake = FakeMailchimp::start(&[AUDIENCE]).await;
    let app = app_with(&fake, |_| {}).await;
    let email = "Urist.McVankab@freddiesjokes.com";
    let hash = hash_of(email);
    assert_eq!(hash, "62eeb292278cc15f5817cb78f7790b08");

    let resp = app
        .subscribe_json(
            serde_json::json!({"email": email, "name": "Urist McVankab", "consent": true}),
        )
        .await;
    assert_eq!(resp.status(), 202);
    app.drain_mail().await;
    let link = app.smtp.mails_to(email)[0].link_containing("/v1/subscriptions/confirm");
    app.clock.advance(chrono::Duration::minutes(3));
    assert_eq!(app.http.post(&link).send().await.unwrap().status(), 200);
    app.settle_sync().await;

    let m = fake
        .member(AUDIENCE, &hash)
        .expect("the member reached Mailchimp");
    assert_eq!(m.status, "subscribed");
    assert_eq!(m.email_address, email);
    assert_eq!(m.merge_fields["FNAME"], "Urist");
    assert_eq!(m.merge_fields["LNAME"], "McVankab");
    assert_eq!(m.ip_opt.as_deref(), Some("127.0.0.1"));
    assert_eq!(m.ip_signup.as_deref(), Some("127.0.0.1"));
    assert_eq!(m.timestamp_opt.as_deref(), Some("2026-01-31T10:03:00Z"));
    assert_eq!(m.timestamp_signup.as_deref(), Some("2026-01-31T10:00:00Z"));

    let url = app.unsubscribe_url("newsletter", email).await;
    assert_eq!(app.one_click(&url).await.status(), 200);
    assert!(
        app.find_text("freddiesjokes").await.is_empty(),
        "after the unsubscribe no row, job payloads included, holds the address"
    );
    app.settle_sync().await;
    assert_eq!(fake.member(AUDIENCE, &hash).unwrap().status, "unsubscribed");

    // A month on, the suppression entry expires and the member is archived.
    app.clock.advance(chrono::Duration::days(31));
    let report: serde_json::Value = app.admin_json(Method::POST, "/v1/admin/purge").await;
    assert_eq!(report["mailchimp_jobs"], 1);
    assert!(app.find_text("freddiesjokes").await.is_empty());
    app.settle_sync().await;
    assert!(fake.member(AUDIENCE, &hash).unwrap().archived);
    assert_eq!(app.dead_letters().await, 0);
}

#[tokio::test]
async fn an_administrators_entry_unsubscribes_the_member_in_mailchimp() {
    let fake = FakeMailchimp::start(&[AUDIENCE]).await;
    let app = app_with(&fake, |_| {}).await;
    let emails = app.seed_confirmed("asked", 2).await;
    app.settle_sync().await;
    for e in &emails {
        assert_eq!(
            fake.member(AUDIENCE, &hash_of(e)).unwrap().status,
            "subscribed"
        );
    }
    // One entry for the mapped list, one for all lists, one for an address
    // Mailchimp has never seen.
    for (email, list) in [
        (emails[0].as_str(), Some("newsletter")),
        (emails[1].as_str(), None),
        ("stranger@example.org", Some("newsletter")),
    ] {
        let mut entry = serde_json::json!({"email": email, "reason": "manual"});
        if let Some(l) = list {
            entry["list"] = l.into();
        }
        app.add_suppression(entry).await;
    }
    let payloads = app
        .query(
            "SELECT payload FROM outbox WHERE kind = 'mailchimp' AND status = 'pending'",
            vec![],
        )
        .await;
    assert_eq!(payloads.len(), 3, "one job per entry");
    for row in payloads {
        let payload: String = row.try_get("", "payload").unwrap();
        assert!(
            !payload.contains("asked-") && !payload.contains("stranger"),
            "a job holds only the member hash: {payload}"
        );
    }
    app.settle_sync().await;
    for e in &emails {
        assert_eq!(
            fake.member(AUDIENCE, &hash_of(e)).unwrap().status,
            "unsubscribed"
        );
    }
    assert!(
        fake.member(AUDIENCE, &hash_of("stranger@example.org"))
            .is_none()
    );
    assert_eq!(app.dead_letters().await, 0);
}

#[tokio::test]
async fn with_a_third_of_the_answers_failing_every_change_arrives_within_the_connection_limit() {
    let fake = FakeMailchimp::start(&[AUDIENCE]).await;
    let app = app_with(&fake, |c| c.mailchimp.concurrency = 4).await;
    let emails = app.seed_confirmed("flaky", 2000).await;
    fake.set_fault_rate(0.3);
    // Calls overlap only while one waits; without latency the fake answers
    // each at once and the limit is never put to the test.
    fake.set_latency(std::time::Duration::from_millis(2));
    app.settle_sync().await;
    for e in &emails {
        let m = fake
            .member(AUDIENCE, &hash_of(e))
            .expect("every upsert arrived");
        assert_eq!(m.status, "subscribed");
    }

    for e in &emails[..500] {
        let h = app.state.keys.hasher.hash(&EmailAddress::parse(e).unwrap());
        unsubscribe(
            &app.state,
            &h,
            &Scope::List("newsletter".into()),
            Source::OneClick,
            Reason::Unsubscribed,
        )
        .await
        .unwrap();
    }
    app.settle_sync().await;
    for (i, e) in emails.iter().enumerate() {
        let want = if i < 500 {
            "unsubscribed"
        } else {
            "subscribed"
        };
        assert_eq!(fake.member(AUDIENCE, &hash_of(e)).unwrap().status, want);
    }
    assert_eq!(app.dead_letters().await, 0, "none dead-lettered");
    // The limit was reached, and never passed: neither in calls nor in open
    // connections.
    assert_eq!(
        fake.max_concurrent(),
        4,
        "exactly mailchimp.concurrency calls at once at most"
    );
    assert!(
        fake.max_connections() <= 4,
        "at most mailchimp.concurrency connections at once, saw {}",
        fake.max_connections()
    );
}

#[tokio::test]
async fn twenty_thousand_members_go_out_in_at_most_45_calls() {
    let fake = FakeMailchimp::start(&[AUDIENCE]).await;
    let app = app_with(&fake, |_| {}).await;
    let emails = app.seed_confirmed("bulk", 20_000).await;
    // Mailchimp's own latency, as docs/performance.md reports it.
    fake.set_latency(std::time::Duration::from_millis(50));
    let started = std::time::Instant::now();
    app.settle_sync().await;
    let calls = fake.calls().len();
    eprintln!(
        "mailchimp batch: {} members, {calls} calls, {:.2} s at 50 ms latency",
        emails.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(calls <= 45, "{calls} calls");
    assert_eq!(fake.members(AUDIENCE).len(), emails.len());
}

#[tokio::test]
async fn a_compliance_state_member_is_sent_as_pending_and_a_forgotten_one_is_not_retried() {
    let fake = FakeMailchimp::start(&[AUDIENCE]).await;
    let app = app_with(&fake, |c| c.mailchimp.batch_threshold = 1000).await;
    let now = chrono::Utc::now();
    let member = |email: &str, status: &str| Member {
        email_address: email.into(),
        status: status.into(),
        archived: false,
        merge_fields: serde_json::json!({"FNAME": "", "LNAME": ""}),
        ip_signup: None,
        timestamp_signup: None,
        ip_opt: None,
        timestamp_opt: None,
        last_changed: now,
    };
    fake.seed_member(AUDIENCE, member("back@example.org", "unsubscribed"));
    app.subscribe_and_confirm("back@example.org").await;
    app.settle_sync().await;
    assert_eq!(
        fake.member(AUDIENCE, &hash_of("back@example.org"))
            .unwrap()
            .status,
        "pending",
        "Mailchimp sends its own opt-in mail"
    );

    // Permanently deleted at Mailchimp: recorded, not retried.
    fake.seed_member(AUDIENCE, member("gone@example.org", "subscribed"));
    let client = app.state.mailchimp.clone().unwrap();
    client
        .delete_permanent(AUDIENCE, &hash_of("gone@example.org"))
        .await
        .unwrap();
    app.subscribe_and_confirm("gone@example.org").await;
    let before = fake.calls().len();
    app.settle_sync().await;
    assert_eq!(fake.calls().len(), before + 1, "one call, no retries");
    let rows = app
        .query(
            "SELECT status, last_error FROM outbox WHERE kind = 'mailchimp' ORDER BY id DESC",
            vec![],
        )
        .await;
    assert_eq!(rows[0].try_get::<String>("", "status").unwrap(), "done");
    assert!(
        rows[0]
            .try_get::<Option<String>>("", "last_error")
            .unwrap()
            .unwrap()
            .contains("Forgotten")
    );
    assert_eq!(app.dead_letters().await, 0);
}

#[tokio::test]
async fn a_newer_change_supersedes_an_unsent_older_one() {
    let fake = FakeMailchimp::start(&[AUDIENCE]).await;
    let app = app_with(&fake, |_| {}).await;
    app.subscribe_and_confirm("quick@example.org").await;
    let url = app.unsubscribe_url("newsletter", "quick@example.org").await;
    assert_eq!(app.one_click(&url).await.status(), 200);
    app.settle_sync().await;
    // The upsert never went out: the unsubscribe replaced it, and a PATCH on
    // a member Mailchimp never had is a 404, which means nothing to do.
    let calls = fake.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].method, "PATCH");
    assert!(
        fake.member(AUDIENCE, &hash_of("quick@example.org"))
            .is_none()
    );
    assert_eq!(app.dead_letters().await, 0);
}

#[tokio::test]
async fn dead_letters_are_visible_and_retryable() {
    let fake = FakeMailchimp::start(&[AUDIENCE]).await;
    // A wrong key: every call is a 401, which no retry mends.
    let app = app_with(&fake, |c| {
        c.mailchimp.api_key = Some("ffffffffffffffffffffffffffffffff-us6".into())
    })
    .await;
    app.subscribe_and_confirm("dead@example.org").await;
    app.settle_sync().await;
    let status: serde_json::Value = app.admin_json(Method::GET, "/v1/sync").await;
    assert_eq!(status["dead"], 1);
    let letter = &status["dead_letters"][0];
    assert_eq!(letter["op"], "upsert");
    assert_eq!(letter["list_id"], AUDIENCE);
    assert!(!status.to_string().contains("dead@example.org"));
    let id = letter["id"].as_i64().unwrap();

    let missing = app
        .admin(Method::POST, "/v1/sync/dead-letters/999999/retry")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let retried = app
        .admin(Method::POST, &format!("/v1/sync/dead-letters/{id}/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), 200);
    let rows = app
        .query("SELECT status FROM outbox WHERE id = $1", vec![id.into()])
        .await;
    assert_eq!(rows[0].try_get::<String>("", "status").unwrap(), "pending");
}

#[tokio::test]
async fn reconcile_reports_drift_on_a_dry_run_and_repairs_it_otherwise() {
    let fake = FakeMailchimp::start(&[AUDIENCE]).await;
    let app = app_with(&fake, |_| {}).await;
    app.subscribe_and_confirm("left-there@example.org").await;
    app.subscribe_and_confirm("missing-there@example.org").await;
    app.settle_sync().await;
    // Drift: one unsubscribed at Mailchimp, one archived there, one only there.
    let mut left = fake
        .member(AUDIENCE, &hash_of("left-there@example.org"))
        .unwrap();
    left.status = "unsubscribed".into();
    fake.seed_member(AUDIENCE, left);
    let client = app.state.mailchimp.clone().unwrap();
    client
        .archive_member(AUDIENCE, &hash_of("missing-there@example.org"))
        .await
        .unwrap();
    let mut stranger = fake
        .member(AUDIENCE, &hash_of("left-there@example.org"))
        .unwrap();
    stranger.email_address = "stranger@example.org".into();
    stranger.status = "subscribed".into();
    fake.seed_member(AUDIENCE, stranger);

    let calls_before = fake.calls().len();
    let jobs_before = app.count("outbox").await;
    let dry = reconcile::reconcile(&app.state, "newsletter", true, |_, _| {})
        .await
        .unwrap();
    assert_eq!(dry.unsubscribed_here, 1);
    assert_eq!(dry.missing_there, 1);
    assert_eq!(dry.unknown_here, 1);
    assert!(
        fake.calls()[calls_before..]
            .iter()
            .all(|c| c.method == "GET"),
        "a dry run only reads"
    );
    assert_eq!(
        app.subscriptions_of("left-there@example.org").await,
        vec![("newsletter".into(), "confirmed".into())]
    );
    assert_eq!(
        app.count("outbox").await,
        jobs_before,
        "a dry run queues nothing"
    );

    let real = reconcile::reconcile(&app.state, "newsletter", false, |_, _| {})
        .await
        .unwrap();
    assert_eq!(real.unsubscribed_here, 1);
    app.settle_sync().await;
    assert!(
        app.subscriptions_of("left-there@example.org")
            .await
            .is_empty()
    );
    let check = app
        .check(Some("newsletter"), "left-there@example.org")
        .await;
    assert_eq!(check["reason"], "unsubscribed");
    let back = fake
        .member(AUDIENCE, &hash_of("missing-there@example.org"))
        .unwrap();
    assert!(!back.archived);
    assert_eq!(back.status, "subscribed");
    assert!(
        app.find_text("stranger@example.org").await.is_empty(),
        "a member unknown here is left alone"
    );

    let again = reconcile::reconcile(&app.state, "newsletter", true, |_, _| {})
        .await
        .unwrap();
    assert_eq!(
        (
            again.unsubscribed_here,
            again.missing_there,
            again.stale_there
        ),
        (0, 0, 0),
        "both sides agree afterwards"
    );
    let status: serde_json::Value = app.admin_json(Method::GET, "/v1/sync").await;
    assert_eq!(status["lists"][0]["last_reconcile"]["unsubscribed_here"], 1);
}

#[tokio::test]
async fn two_workers_on_one_database_do_every_job_exactly_once() {
    let fake = FakeMailchimp::start(&[AUDIENCE]).await;
    // One call a job, so that the fake's log shows each job's calls.
    let app = app_with(&fake, |c| c.mailchimp.batch_threshold = 100_000).await;
    let emails = app.seed_confirmed("pair", 300).await;
    fake.set_latency(std::time::Duration::from_millis(5));
    let second = listguard::startup::build_state(
        app.state.config.as_ref().clone(),
        &listguard::startup::BuildOptions {
            clock: app.state.clock.clone(),
            background_workers: false,
            mailer: None,
            public_url_from_port: false,
        },
    )
    .await
    .unwrap();
    let work = |state: listguard::state::AppState| async move {
        while sync::execute_batch(&state, 20).await.unwrap() > 0 {}
    };
    tokio::join!(work(app.state.clone()), work(second.clone()));
    app.settle_sync().await;
    let puts: Vec<_> = fake
        .calls()
        .into_iter()
        .filter(|c| c.method == "PUT")
        .collect();
    assert_eq!(puts.len(), emails.len(), "every job done exactly once");
    let distinct: std::collections::HashSet<_> = puts.iter().map(|c| c.path.clone()).collect();
    assert_eq!(distinct.len(), emails.len());
}

/// The real binary, killed with SIGKILL halfway through 5,000 queued jobs and
/// started again: every job arrives once the new process has taken over the
/// dead one's leases. (A real process cannot be stepped: the test waits for
/// the fake to reach a state, with a deadline.)
#[tokio::test]
async fn a_killed_service_loses_no_queued_job() {
    let fake = FakeMailchimp::start(&[AUDIENCE]).await;
    let app = app_with(&fake, |_| {}).await;
    let emails = app.seed_confirmed("crash", 5000).await;
    // Jobs queued "now" by the test clock, which stands in the past: due.
    fake.set_latency(std::time::Duration::from_millis(3));

    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_listguard"))
            .arg("serve")
            .env("LISTGUARD_DATABASE__URL", &app.state.config.database.url)
            .env("LISTGUARD_SERVER__BIND", "127.0.0.1:0")
            .env(
                "LISTGUARD_LISTS",
                r#"[{"slug":"newsletter","name":"Newsletter","mailchimp_list_id":"a6b5da1054","consent_text":"Yes, send me the newsletter.","consent_version":"1"}]"#,
            )
            .env("LISTGUARD_MAILCHIMP__API_KEY", FAKE_API_KEY)
            .env("LISTGUARD_MAILCHIMP__BASE_URL", fake.base_url())
            .env("LISTGUARD_MAILCHIMP__TIMEOUT", "2s")
            // One call a job, so that the kill lands in the middle of the work.
            .env("LISTGUARD_MAILCHIMP__BATCH_THRESHOLD", "100000")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(if std::env::var("TEST_LOG").is_ok() { std::process::Stdio::inherit() } else { std::process::Stdio::null() })
            .spawn()
            .expect("the binary starts")
    };
    let subscribed = || {
        fake.members(AUDIENCE)
            .iter()
            .filter(|m| m.status == "subscribed")
            .count()
    };

    let mut first = spawn();
    wait_for("the first process to start sending", || subscribed() >= 500).await;
    first.kill().expect("SIGKILL");
    first.wait().unwrap();
    let at_kill = subscribed();
    assert!(
        (500..emails.len()).contains(&at_kill),
        "the kill came in the middle of the work ({at_kill} sent)"
    );

    let mut second = spawn();
    wait_for("every member", || subscribed() == emails.len()).await;
    // The last calls have reached the fake; wait until the worker has also
    // recorded them done before stopping it.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let done = app
            .query(
                "SELECT COUNT(*) AS n FROM outbox WHERE kind = 'mailchimp' AND status = 'done'",
                vec![],
            )
            .await[0]
            .try_get::<i64>("", "n")
            .unwrap();
        if done == emails.len() as i64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {done} jobs recorded done"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    second.kill().unwrap();
    second.wait().unwrap();
    for e in &emails {
        assert_eq!(
            fake.member(AUDIENCE, &hash_of(e)).unwrap().status,
            "subscribed"
        );
    }
    let rows = app
        .query(
            "SELECT status, COUNT(*) AS n FROM outbox WHERE kind = 'mailchimp' GROUP BY status",
            vec![],
        )
        .await;
    let by: std::collections::HashMap<String, i64> = rows
        .iter()
        .map(|r| {
            (
                r.try_get("", "status").unwrap(),
                r.try_get("", "n").unwrap(),
            )
        })
        .collect();
    assert_eq!(by.get("done").copied(), Some(emails.len() as i64), "{by:?}");
}

/// Waits (asynchronously, so the fake keeps serving) until `pred` holds, for
/// at most two minutes.
async fn wait_for(what: &str, pred: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    while !pred() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
