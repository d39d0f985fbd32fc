use crate::helpers::{TestApp, spawn_app};

/// The mail jobs that another worker (one that dies at once) claims now.
async fn claim_as_another_worker(app: &TestApp) -> Vec<listguard::outbox::ClaimedJob> {
    listguard::outbox::claim(
        &app.state.db,
        listguard::outbox::JobKind::Mail,
        listguard::outbox::JobKind::Mail.lease(&app.state.config),
        10,
        app.clock_now(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_refused_mail_is_retried_with_backoff_and_its_payload_cleared_when_sent() {
    let app = spawn_app().await;
    app.smtp.refuse_next(1);
    app.subscribe("retry@example.org").await;
    assert_eq!(app.drain_mail().await, 1);
    assert!(app.smtp.mails().is_empty());
    // The signup batch's job is done; the refused mail has a job of its own.
    let rows = app
        .query(
            "SELECT status, attempts, payload, subject_hash FROM outbox ORDER BY id",
            vec![],
        )
        .await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].try_get::<String>("", "status").unwrap(), "done");
    assert_eq!(
        rows[0].try_get::<Option<String>>("", "payload").unwrap(),
        None
    );
    assert_eq!(rows[1].try_get::<String>("", "status").unwrap(), "pending");
    assert_eq!(rows[1].try_get::<i32>("", "attempts").unwrap(), 1);
    assert!(
        rows[1]
            .try_get::<Option<String>>("", "subject_hash")
            .unwrap()
            .is_some(),
        "an erasure finds it by the address hash"
    );

    // Not due yet: the worker finds nothing.
    assert_eq!(app.drain_mail().await, 0);
    app.clock.advance(chrono::Duration::minutes(2));
    assert_eq!(app.drain_mail().await, 1);
    assert_eq!(app.smtp.mails_to("retry@example.org").len(), 1);
    let rows = app
        .query("SELECT status, payload FROM outbox ORDER BY id", vec![])
        .await;
    assert_eq!(rows[1].try_get::<String>("", "status").unwrap(), "done");
    assert_eq!(
        rows[1].try_get::<Option<String>>("", "payload").unwrap(),
        None
    );
    // The link sent on the retry is the signup's own, and it confirms.
    let link =
        app.smtp.mails_to("retry@example.org")[0].link_containing("/v1/subscriptions/confirm");
    assert_eq!(app.http.post(&link).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_job_held_by_a_dead_worker_is_taken_over_after_its_lease() {
    let app = spawn_app().await;
    app.subscribe("lease@example.org").await;
    app.drain_mail().await;
    // Sent again: a job of its own, in the table for any worker.
    app.clock.advance(chrono::Duration::minutes(11));
    app.subscribe("lease@example.org").await;
    // A worker claims the job and dies before finishing.
    let claimed = claim_as_another_worker(&app).await;
    assert_eq!(claimed.len(), 1);
    assert_eq!(app.drain_mail().await, 0, "the lease still holds");
    app.clock.advance(chrono::Duration::minutes(6));
    assert_eq!(app.drain_mail().await, 1);
    assert_eq!(app.smtp.mails_to("lease@example.org").len(), 2);
    assert_eq!(app.drain_mail().await, 0, "sent once");
}

#[tokio::test]
async fn first_mails_whose_process_stopped_go_out_with_new_links_after_the_lease() {
    let app = spawn_app().await;
    app.subscribe("kept@example.org").await;
    app.subscribe("erased@example.org").await;
    // The signups reserved their batch jobs for this process's worker.
    let claimed = claim_as_another_worker(&app).await;
    assert_eq!(claimed.len(), 0, "a reserved job is not claimed");
    // The process stops: the mails and their links, held only in its
    // memory, are gone. One of the two people is erased meanwhile.
    app.state.mail_handoff.forget();
    app.erase("erased@example.org").await;
    assert_eq!(app.drain_mail().await, 0, "the lease still holds");
    assert!(app.smtp.mails().is_empty());

    app.clock.advance(chrono::Duration::seconds(61));
    assert_eq!(app.drain_mail().await, 2, "both batch jobs, taken over");
    assert!(app.smtp.mails_to("erased@example.org").is_empty());
    let mails = app.smtp.mails_to("kept@example.org");
    assert_eq!(mails.len(), 1);
    // The new link is a `tokens` row; the first, never delivered, stays on
    // the subscription's row and expires with it.
    assert_eq!(app.count("tokens").await, 1);
    let link = mails[0].link_containing("/v1/subscriptions/confirm");
    assert_eq!(app.http.post(&link).send().await.unwrap().status(), 200);
    assert_eq!(
        app.subscriptions_of("kept@example.org").await,
        [("newsletter".to_string(), "confirmed".to_string())]
    );
    let open = app
        .query(
            "SELECT COUNT(*) AS n FROM outbox WHERE status <> 'done'",
            vec![],
        )
        .await;
    assert_eq!(open[0].try_get::<i64>("", "n").unwrap(), 0);
    assert_eq!(app.drain_mail().await, 0, "sent once");
}
