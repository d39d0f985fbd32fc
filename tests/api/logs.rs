use crate::helpers::{captured_logs, spawn_app, token_of};

#[tokio::test]
async fn a_full_subscribe_and_confirm_flow_logs_neither_address_nor_token() {
    let app = spawn_app().await;
    let email = "Private.Person-7731@Example.org";
    let link = app.confirmation_link(email).await;
    let token = token_of(&link);
    app.http.get(&link).send().await.unwrap();
    assert_eq!(app.http.post(&link).send().await.unwrap().status(), 200);
    let block = link.replace("/confirm?", "/block?");
    app.http.post(&block).send().await.unwrap();

    let logs = captured_logs();
    assert!(logs.contains("mail sent"), "the flow was logged at all");
    assert!(logs.contains("DEBUG") || logs.contains("INFO"));
    for needle in [
        email.to_string(),
        email.to_lowercase(),
        "private.person-7731".into(),
        token.clone(),
    ] {
        assert!(
            !logs.to_lowercase().contains(&needle.to_lowercase()),
            "the logs hold {needle:?}"
        );
    }
}
