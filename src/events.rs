//! Outbound events: signed webhooks to the endpoints in `webhooks`, per the
//! Standard Webhooks specification, delivered through the outbox.
//!
//! An event is queued in the same transaction as the change it reports, one
//! job per endpoint that takes its type, so a crash loses none and a slow
//! endpoint holds up no other. Each delivery is a POST of
//! `{"type", "timestamp", "data"}` with `webhook-id` (the same on every
//! retry, for the receiver to drop duplicates), `webhook-timestamp` (the
//! attempt's, in Unix seconds) and `webhook-signature`: `v1,<base64
//! HMAC-SHA256 of id.timestamp.body>` for every configured secret of the
//! endpoint, space-separated, so that receivers keep working while a secret
//! is rotated. Any answer but a 2xx is retried with backoff, up to
//! [`MAX_ATTEMPTS`], then dead-lettered (`GET /v1/sync` shows it).
//!
//! What an event says about a person: `subscription.confirmed` carries the
//! address with its keyed hash (`email_hash`, as `GET /v1/suppressions`
//! shows it); every later event carries only that hash, so that no job
//! holds the address after the person has left. A `subscription.confirmed`
//! still undelivered when the person leaves is withdrawn with the address.
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbErr};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::{
    config::{Config, webhook_key},
    crypto::{b64_std_encode, hmac_sha256},
    outbox::{
        ExecutionOutcome, JobFailure, JobKind, claim_and_do, complete_many, complete_with_note,
        enqueue, fail,
    },
    shutdown::Shutdown,
    state::AppState,
};

/// Attempts before a delivery is dead-lettered: with the outbox's backoff
/// (5 s doubling, at most an hour) about three and a half hours.
pub const MAX_ATTEMPTS: i32 = 12;

/// How long a delivery may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    SubscriptionConfirmed,
    SubscriptionUnsubscribed,
    SuppressionAdded,
    SuppressionExpired,
    SubscriberErased,
}

impl EventType {
    pub const ALL: [Self; 5] = [
        Self::SubscriptionConfirmed,
        Self::SubscriptionUnsubscribed,
        Self::SuppressionAdded,
        Self::SuppressionExpired,
        Self::SubscriberErased,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SubscriptionConfirmed => "subscription.confirmed",
            Self::SubscriptionUnsubscribed => "subscription.unsubscribed",
            Self::SuppressionAdded => "suppression.added",
            Self::SuppressionExpired => "suppression.expired",
            Self::SubscriberErased => "subscriber.erased",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// Whether any endpoint takes events of this type.
pub fn wanted(config: &Config, event: EventType) -> bool {
    config.webhooks.iter().any(|w| w.wants(event.as_str()))
}

/// A queued delivery: the endpoint by its URL (its secrets are read from
/// the configuration when it is sent), the message id and the body.
#[derive(Debug, Serialize, Deserialize)]
pub struct EventJob {
    pub url: String,
    pub id: String,
    pub body: String,
}

/// Queues `event` for every endpoint that takes it, in the caller's
/// transaction; answers how many deliveries were queued. `subject_hash` is
/// given only for an event that carries the address, so that the
/// person's leaving withdraws it along with their other jobs.
pub async fn queue<C: ConnectionTrait>(
    conn: &C,
    config: &Config,
    event: EventType,
    data: serde_json::Value,
    subject_hash: Option<&str>,
    now: DateTime<Utc>,
) -> Result<usize, DbErr> {
    let endpoints: Vec<&str> = config
        .webhooks
        .iter()
        .filter(|w| w.wants(event.as_str()))
        .map(|w| w.url.as_str())
        .collect();
    if endpoints.is_empty() {
        return Ok(0);
    }
    let body = serde_json::json!({
        "type": event.as_str(),
        "timestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": data,
    })
    .to_string();
    for url in &endpoints {
        let job = EventJob {
            url: url.to_string(),
            id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
            body: body.clone(),
        };
        let payload = serde_json::to_value(&job).expect("an event job serialises");
        enqueue(conn, JobKind::Event, &payload, subject_hash, now).await?;
    }
    Ok(endpoints.len())
}

/// `subscription.confirmed`, the one event that carries the address: its
/// receiver learns who consented, and the hash by which later events name
/// them. Queued by the double opt-in confirmation and by a subscribe made at
/// Mailchimp.
pub async fn subscription_confirmed<C: ConnectionTrait>(
    conn: &C,
    config: &Config,
    person: &entity::subscriber::Model,
    list: &str,
    now: DateTime<Utc>,
) -> Result<usize, DbErr> {
    let data = serde_json::json!({
        "email": person.email,
        "email_hash": person.email_hash,
        "name": person.name,
        "list": list,
        "confirmed_at": now,
    });
    queue(
        conn,
        config,
        EventType::SubscriptionConfirmed,
        data,
        Some(&person.email_hash),
        now,
    )
    .await
}

/// The `webhook-signature` value: `v1,<base64 HMAC-SHA256 of
/// id.timestamp.body>` per key, space-separated.
pub fn signature(keys: &[Vec<u8>], id: &str, timestamp: i64, body: &str) -> String {
    let signed = format!("{id}.{timestamp}.{body}");
    keys.iter()
        .map(|k| format!("v1,{}", b64_std_encode(&hmac_sha256(k, signed.as_bytes()))))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Claims one due delivery and sends it.
pub async fn try_execute_task(state: &AppState) -> anyhow::Result<ExecutionOutcome> {
    Ok(ExecutionOutcome::of(execute_batch(state, 1).await?))
}

/// How many deliveries one worker has in flight at once.
const PARALLEL_SENDS: usize = 8;

/// Claims up to `limit` due deliveries, sends them and records the outcomes;
/// answers how many it took.
pub async fn execute_batch(state: &AppState, limit: u32) -> anyhow::Result<usize> {
    let results = claim_and_do(
        state,
        JobKind::Event,
        limit,
        PARALLEL_SENDS,
        |event: EventJob| deliver(state, event),
    )
    .await?;
    let n = results.len();
    let now = state.now();
    let mut done = Vec::new();
    for (job, result) in results {
        match result {
            Ok(Delivered::Sent) => {
                tracing::info!(job = job.id, "event delivered");
                done.push(job.id);
            }
            Ok(Delivered::EndpointGone) => {
                tracing::warn!(
                    job = job.id,
                    "event dropped: its endpoint is no longer configured"
                );
                complete_with_note(&state.db, job.id, "endpoint no longer configured", now).await?;
            }
            Err(failure) => {
                let msg = match &failure {
                    JobFailure::Retry(m) | JobFailure::Permanent(m) => m.clone(),
                };
                tracing::warn!(job = job.id, error = %msg, "event not delivered");
                fail(&state.db, &job, failure, MAX_ATTEMPTS, now).await?;
            }
        }
    }
    complete_many(&state.db, &done, now).await?;
    Ok(n)
}

enum Delivered {
    Sent,
    /// The endpoint was removed from the configuration after the event was
    /// queued: there is nobody to send it to.
    EndpointGone,
}

async fn deliver(state: &AppState, event: EventJob) -> Result<Delivered, JobFailure> {
    let Some(endpoint) = state.config.webhooks.iter().find(|w| w.url == event.url) else {
        return Ok(Delivered::EndpointGone);
    };
    let keys: Vec<Vec<u8>> = endpoint
        .secret
        .all()
        .into_iter()
        .filter_map(|s| webhook_key(s.expose_secret()).ok())
        .collect();
    let timestamp = state.now().timestamp();
    let resp = state
        .http
        .post(&event.url)
        .timeout(TIMEOUT)
        .header("content-type", "application/json")
        .header("webhook-id", &event.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            signature(&keys, &event.id, timestamp, &event.body),
        )
        .body(event.body)
        .send()
        .await
        // Without the URL: a receiver may carry a token in it, and the error
        // goes to the log and the dead-letter list.
        .map_err(|e| JobFailure::Retry(format!("request failed: {}", e.without_url())))?;
    let status = resp.status();
    if status.is_success() {
        Ok(Delivered::Sent)
    } else {
        Err(JobFailure::Retry(format!("the endpoint answered {status}")))
    }
}

/// The most deliveries one step of the loop claims.
const CLAIM_LIMIT: u32 = 64;

/// How long claimed deliveries stay this worker's: a whole claim at its
/// slowest (every delivery timing out, [`PARALLEL_SENDS`] at a time) and a
/// margin, so that another replica does not take over jobs still being
/// delivered.
pub fn lease() -> chrono::Duration {
    let rounds = CLAIM_LIMIT.div_ceil(PARALLEL_SENDS as u32);
    chrono::Duration::from_std(TIMEOUT * rounds).unwrap_or(chrono::Duration::minutes(2))
        + chrono::Duration::seconds(30)
}

/// Runs until `shutdown` fires: works while there is a full claim's worth,
/// then waits for a wake-up (a commit that queued an event) or a poll
/// interval.
pub async fn run(state: AppState, shutdown: Shutdown) {
    crate::outbox::work_loop(
        state,
        shutdown,
        "events",
        CLAIM_LIMIT,
        |s| &s.events_notify,
        Duration::ZERO,
        |state, limit| async move { execute_batch(&state, limit).await },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_like_the_standard_webhooks_test_vector() {
        let key = webhook_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            signature(
                &[key],
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                r#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn several_secrets_give_one_signature_each() {
        let a = webhook_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let b = vec![7u8; 32];
        let both = signature(&[a.clone(), b.clone()], "msg_1", 1, "{}");
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], signature(&[a], "msg_1", 1, "{}"));
        assert_eq!(parts[1], signature(&[b], "msg_1", 1, "{}"));
    }

    #[test]
    fn event_types_round_trip() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("subscription.created"), None);
    }
}
