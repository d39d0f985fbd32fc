use crate::helpers::spawn_app;

#[tokio::test]
async fn a_refused_mail_is_retried_with_backoff_and_its_payload_cleared_when_sent() {
    let app = spawn_app().await;
    app.smtp.refuse_next(1);
    app.subscribe("retry@example.org").await;
    assert_eq!(app.drain_mail().await, 1);
    assert!(app.smtp.mails().is_empty());
    let rows = app
        .query("SELECT status, attempts, payload FROM outbox", vec![])
        .await;
    assert_eq!(rows[0].try_get::<String>("", "status").unwrap(), "pending");
    assert_eq!(rows[0].try_get::<i32>("", "attempts").unwrap(), 1);

    // Not due yet: the worker finds nothing.
    assert_eq!(app.drain_mail().await, 0);
    app.clock.advance(chrono::Duration::minutes(2));
    assert_eq!(app.drain_mail().await, 1);
    assert_eq!(app.smtp.mails_to("retry@example.org").len(), 1);
    let rows = app
        .query("SELECT status, payload FROM outbox", vec![])
        .await;
    assert_eq!(rows[0].try_get::<String>("", "status").unwrap(), "done");
    assert_eq!(
        rows[0].try_get::<Option<String>>("", "payload").unwrap(),
        None
    );
}

#[tokio::test]
async fn a_job_held_by_a_dead_worker_is_taken_over_after_its_lease() {
    let app = spawn_app().await;
    app.subscribe("lease@example.org").await;
    // A worker claims the job and dies before finishing.
    let claimed = listguard::outbox::claim(
        &app.state.db,
        listguard::outbox::JobKind::Mail,
        listguard::outbox::JobKind::Mail.lease(&app.state.config),
        10,
        app.clock_now(),
    )
    .await
    .unwrap();
    if listguard::db::is_postgres(&app.state.db) {
        // There the signup reserved it for its own process's worker.
        assert_eq!(claimed.len(), 0, "a reserved job is not claimed");
        app.state.mail_handoff.forget();
    } else {
        assert_eq!(claimed.len(), 1);
    }
    assert_eq!(app.drain_mail().await, 0, "the lease still holds");
    app.clock.advance(chrono::Duration::minutes(6));
    assert_eq!(app.drain_mail().await, 1);
    assert_eq!(app.smtp.mails_to("lease@example.org").len(), 1);
    assert_eq!(app.drain_mail().await, 0, "sent once");
}
