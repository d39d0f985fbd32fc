//! The Mailchimp Marketing API v3 through reqwest: the calls the sync worker,
//! the reconciliation and `register-webhook` make, and one classification of
//! their failures (retry, or not).
//!
//! At most `mailchimp.concurrency` calls are in flight at once, whoever makes
//! them, and each has its own connection, which Mailchimp closes after its
//! answer: Mailchimp allows 10 simultaneous connections per account and
//! answers 429 past that.
use std::{sync::Arc, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::config::Config;

/// A member as `PUT /lists/{id}/members/{hash}` and the batch endpoint take it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberBody {
    pub email_address: String,
    pub status_if_new: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merge_fields: Option<MergeFields>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_signup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp_signup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_opt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp_opt: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MergeFields {
    #[serde(rename = "FNAME", default)]
    pub fname: String,
    #[serde(rename = "LNAME", default)]
    pub lname: String,
}

/// How a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// 429, 403 without a JSON body, 5xx, a timeout or a dropped connection:
    /// try again later.
    Transient(String),
    /// 404: Mailchimp has no such member (or list).
    NotFound,
    /// 405 on a member: archiving a bounced, pending or archived member.
    NotAllowed,
    /// 400 "Member In Compliance State": the person unsubscribed or bounced
    /// there; only `pending` can bring them back.
    ComplianceState,
    /// 400 "Forgotten Email Not Subscribed": permanently deleted there.
    Forgotten,
    /// Anything else: retrying will not help.
    Permanent(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Transient(m) => write!(f, "transient: {m}"),
            Self::NotFound => f.write_str("404 not found"),
            Self::NotAllowed => f.write_str("405 method not allowed"),
            Self::ComplianceState => f.write_str("400 Member In Compliance State"),
            Self::Forgotten => f.write_str("400 Forgotten Email Not Subscribed"),
            Self::Permanent(m) => write!(f, "permanent: {m}"),
        }
    }
}

/// Mailchimp's error body (`application/problem+json`).
#[derive(Debug, Deserialize, Default)]
struct Problem {
    #[serde(default)]
    title: String,
    #[serde(default)]
    detail: String,
}

/// The answer of the batch endpoint `POST /lists/{id}`.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct BatchAnswer {
    #[serde(default)]
    pub new_members: Vec<BatchMember>,
    #[serde(default)]
    pub updated_members: Vec<BatchMember>,
    #[serde(default)]
    pub errors: Vec<BatchError>,
    #[serde(default)]
    pub error_count: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BatchMember {
    pub email_address: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BatchError {
    pub email_address: String,
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub error_code: String,
}

/// A member as `GET /lists/{id}/members` lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct ListedMember {
    pub email_address: String,
    pub status: String,
    #[serde(default)]
    pub merge_fields: serde_json::Value,
    #[serde(default)]
    pub last_changed: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MembersPage {
    #[serde(default)]
    pub members: Vec<ListedMember>,
    #[serde(default)]
    pub total_items: u64,
}

pub struct MailchimpClient {
    http: reqwest::Client,
    base: String,
    key: SecretString,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for MailchimpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailchimpClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl MailchimpClient {
    /// The client, or `None` when Mailchimp is off (no `mailchimp.api_key`).
    pub fn from_config(config: &Config) -> anyhow::Result<Option<Self>> {
        let (Some(key), Some(base)) = (&config.mailchimp.api_key, config.mailchimp_base_url())
        else {
            return Ok(None);
        };
        let concurrency = config.mailchimp.concurrency.clamp(1, 10) as usize;
        let http = reqwest::Client::builder()
            .timeout(config.mailchimp.timeout.approx_std())
            .connect_timeout(Duration::from_secs(10))
            // No pooled connections: see `call`.
            .pool_max_idle_per_host(0)
            .user_agent(concat!("listguard/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Some(Self {
            http,
            base,
            key: key.clone(),
            permits: Arc::new(Semaphore::new(concurrency)),
        }))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends one request under a concurrency permit; the answer's body as
    /// JSON (or `Null` when empty), or the classified failure.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, CallError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| CallError::Transient("client closed".into()))?;
        // `Connection: close`: Mailchimp closes the connection once it has
        // answered, before the permit goes back, so it never sees more open
        // connections than `mailchimp.concurrency` (it allows 10 per account).
        // A pooled keep-alive connection goes back to hyper's pool only a
        // moment after its answer has been read, and a call starting in that
        // moment opens one more; reqwest has no per-host connection limit.
        // The price is a TLS handshake per call, small next to Mailchimp's
        // own latency, and bulk changes go through the batch endpoint.
        let mut req = self
            .http
            .request(method, self.url(path))
            .header(reqwest::header::CONNECTION, "close")
            .basic_auth("listguard", Some(self.key.expose_secret()));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            // reqwest's error text holds the URL, which holds no address (paths
            // carry the subscriber hash) and no key (it travels in a header).
            CallError::Transient(format!("request failed: {}", e.without_url()))
        })?;
        let status = resp.status();
        let is_json = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        let bytes = resp.bytes().await.map_err(|e| {
            CallError::Transient(format!("reading the answer: {}", e.without_url()))
        })?;
        if status.is_success() {
            return Ok(if bytes.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_slice(&bytes).map_err(|e| {
                    CallError::Transient(format!("unreadable answer to a {status}: {e}"))
                })?
            });
        }
        let problem: Problem = if is_json {
            serde_json::from_slice(&bytes).unwrap_or_default()
        } else {
            Problem::default()
        };
        Err(classify(
            status.as_u16(),
            is_json && !bytes.is_empty(),
            &problem,
        ))
    }

    /// `PUT /lists/{id}/members/{hash}`: add or update.
    pub async fn put_member(
        &self,
        list_id: &str,
        hash: &str,
        member: &MemberBody,
    ) -> Result<(), CallError> {
        let body = serde_json::to_value(member).expect("a member serialises");
        self.call(
            reqwest::Method::PUT,
            &format!("/lists/{list_id}/members/{hash}"),
            Some(&body),
        )
        .await
        .map(drop)
    }

    /// `PATCH /lists/{id}/members/{hash}`: change an existing member.
    pub async fn patch_member(
        &self,
        list_id: &str,
        hash: &str,
        body: &serde_json::Value,
    ) -> Result<(), CallError> {
        self.call(
            reqwest::Method::PATCH,
            &format!("/lists/{list_id}/members/{hash}"),
            Some(body),
        )
        .await
        .map(drop)
    }

    /// `DELETE /lists/{id}/members/{hash}`: archive.
    pub async fn archive_member(&self, list_id: &str, hash: &str) -> Result<(), CallError> {
        self.call(
            reqwest::Method::DELETE,
            &format!("/lists/{list_id}/members/{hash}"),
            None,
        )
        .await
        .map(drop)
    }

    /// `POST /lists/{id}/members/{hash}/actions/delete-permanent`.
    pub async fn delete_permanent(&self, list_id: &str, hash: &str) -> Result<(), CallError> {
        self.call(
            reqwest::Method::POST,
            &format!("/lists/{list_id}/members/{hash}/actions/delete-permanent"),
            None,
        )
        .await
        .map(drop)
    }

    /// `POST /lists/{id}` with up to 500 members and `update_existing`.
    pub async fn batch_upsert(
        &self,
        list_id: &str,
        members: &[MemberBody],
    ) -> Result<BatchAnswer, CallError> {
        let body = serde_json::json!({"members": members, "update_existing": true});
        let answer = self
            .call(
                reqwest::Method::POST,
                &format!("/lists/{list_id}"),
                Some(&body),
            )
            .await?;
        serde_json::from_value(answer)
            .map_err(|e| CallError::Transient(format!("unreadable batch answer: {e}")))
    }

    /// `GET /lists/{id}/members`, one page.
    pub async fn list_members(
        &self,
        list_id: &str,
        offset: u64,
        count: u64,
        since_last_changed: Option<&str>,
    ) -> Result<MembersPage, CallError> {
        let mut path = format!("/lists/{list_id}/members?count={count}&offset={offset}");
        if let Some(since) = since_last_changed {
            path.push_str("&since_last_changed=");
            path.push_str(&urlencode(since));
        }
        let answer = self.call(reqwest::Method::GET, &path, None).await?;
        serde_json::from_value(answer)
            .map_err(|e| CallError::Transient(format!("unreadable members page: {e}")))
    }

    /// `POST /lists/{id}/webhooks`: every event, from users and admins, never
    /// from the API (so our own changes do not echo back).
    pub async fn create_webhook(&self, list_id: &str, url: &str) -> Result<(), CallError> {
        let body = serde_json::json!({
            "url": url,
            "events": {"subscribe": true, "unsubscribe": true, "profile": true,
                       "cleaned": true, "upemail": true, "campaign": false},
            "sources": {"user": true, "admin": true, "api": false},
        });
        self.call(
            reqwest::Method::POST,
            &format!("/lists/{list_id}/webhooks"),
            Some(&body),
        )
        .await
        .map(drop)
    }
}

fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("v", s)])
        .map(|e| e[2..].to_string())
        .unwrap_or_default()
}

/// One mapping from Mailchimp's answers to what the worker does about them.
fn classify(status: u16, has_json_body: bool, p: &Problem) -> CallError {
    let says = |needle: &str| {
        p.title.eq_ignore_ascii_case(needle)
            || p.detail.to_lowercase().contains(&needle.to_lowercase())
    };
    match status {
        429 => CallError::Transient("429 too many requests".into()),
        // Past the connection limit Mailchimp sometimes answers 403 with no body.
        403 if !has_json_body => CallError::Transient("403 without a body".into()),
        500..=599 => CallError::Transient(format!("{status} {}", p.title)),
        404 => CallError::NotFound,
        405 => CallError::NotAllowed,
        400 if says("Member In Compliance State") => CallError::ComplianceState,
        400 if says("Forgotten Email Not Subscribed") => CallError::Forgotten,
        _ => CallError::Permanent(format!("{status} {}", p.title)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(title: &str) -> Problem {
        Problem {
            title: title.into(),
            detail: String::new(),
        }
    }

    #[test]
    fn answers_are_classified_as_mailchimp_means_them() {
        assert!(matches!(
            classify(429, true, &problem("Too Many Requests")),
            CallError::Transient(_)
        ));
        assert!(matches!(
            classify(403, false, &Problem::default()),
            CallError::Transient(_)
        ));
        assert!(matches!(
            classify(403, true, &problem("Forbidden")),
            CallError::Permanent(_)
        ));
        assert!(matches!(
            classify(503, false, &Problem::default()),
            CallError::Transient(_)
        ));
        assert_eq!(
            classify(404, true, &problem("Resource Not Found")),
            CallError::NotFound
        );
        assert_eq!(
            classify(405, true, &problem("Method Not Allowed")),
            CallError::NotAllowed
        );
        assert_eq!(
            classify(400, true, &problem("Member In Compliance State")),
            CallError::ComplianceState
        );
        assert_eq!(
            classify(400, true, &problem("Forgotten Email Not Subscribed")),
            CallError::Forgotten
        );
        assert!(matches!(
            classify(400, true, &problem("Invalid Resource")),
            CallError::Permanent(_)
        ));
    }
}
