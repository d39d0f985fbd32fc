//! Inbound Mailchimp webhooks: audience webhooks at a signed URL, and
//! Mandrill (Mailchimp Transactional) webhooks signed with
//! `X-Mandrill-Signature`. This module holds the signatures, the parsing of
//! the deliveries into events, and [`register`]; applying the events is
//! `services::webhooks`' job.
//!
//! Mailchimp does not sign audience webhooks, so the URL carries the
//! signature: `/v1/webhooks/mailchimp/{list}/{signature}`, where the signature
//! is the lower-case hex HMAC-SHA256 of the list slug keyed with the bytes of
//! `mailchimp.webhook_key` as configured.
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use sha1::Sha1;

use crate::{
    config::Config,
    crypto,
    domain::{DisplayName, EmailAddress},
    services::suppression::Reason,
    state::AppState,
};

/// A field of a delivery that is missing or unusable; the handler answers 400
/// naming it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's name as sent (`data[email]`, `mandrill_events`, ...).
    pub field: String,
    /// Why it was refused.
    pub reason: String,
}

impl FieldError {
    fn new(field: &str, reason: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

// ---------------------------------------------------------------------------
// Audience webhooks
// ---------------------------------------------------------------------------

/// The signature in the audience-webhook URL of `slug`: lower-case hex
/// HMAC-SHA256 of the slug under `key`.
pub fn audience_signature(key: &[u8], slug: &str) -> String {
    hex::encode(crypto::hmac_sha256(key, slug.as_bytes()))
}

/// Whether `signature` is the right one for `slug` (constant time). False
/// when no `mailchimp.webhook_key` is configured.
pub fn verify_audience_signature(config: &Config, slug: &str, signature: &str) -> bool {
    let Some(key) = config.mailchimp.webhook_key.as_ref() else {
        return false;
    };
    let expected = audience_signature(key.expose_secret().as_bytes(), slug);
    crypto::ct_eq(expected.as_bytes(), signature.as_bytes())
}

/// The signed audience-webhook URL of `slug` under the public base URL.
pub fn audience_url(config: &Config, slug: &str) -> anyhow::Result<String> {
    let key = config.mailchimp.webhook_key.as_ref().ok_or_else(|| {
        anyhow::anyhow!("mailchimp.webhook_key is not set; it signs the webhook URL")
    })?;
    let signature = audience_signature(key.expose_secret().as_bytes(), slug);
    Ok(format!(
        "{}/v1/webhooks/mailchimp/{slug}/{signature}",
        config.public_base()
    ))
}

/// One audience-webhook delivery, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudienceEvent {
    /// `unsubscribe` (`data[action]` unsub or delete): leave the list;
    /// `reason` is `unsubscribed`, or `complaint` for `data[reason]=abuse`.
    Unsubscribe { email: EmailAddress, reason: Reason },
    /// `cleaned`: the address bounced (`hard`) or complained (`abuse`).
    Cleaned { email: EmailAddress, reason: Reason },
    /// `subscribe`: a confirmed subscription made at Mailchimp.
    Subscribe {
        email: EmailAddress,
        name: Option<DisplayName>,
        /// `data[ip_opt]` when it is an IP address: where the person opted in.
        ip_opt: Option<String>,
    },
    /// `profile`: the name may have changed.
    Profile {
        email: EmailAddress,
        name: Option<DisplayName>,
    },
    /// `upemail`: the address changed.
    UpEmail {
        old: EmailAddress,
        new: EmailAddress,
    },
    /// A `type` this service does not act on (`campaign`, or anything new).
    Ignored { kind: String },
}

impl AudienceEvent {
    /// The event's `type` as Mailchimp names it, for logs.
    pub fn kind(&self) -> &str {
        match self {
            Self::Unsubscribe { .. } => "unsubscribe",
            Self::Cleaned { .. } => "cleaned",
            Self::Subscribe { .. } => "subscribe",
            Self::Profile { .. } => "profile",
            Self::UpEmail { .. } => "upemail",
            Self::Ignored { kind } => kind,
        }
    }
}

/// The last value of a form field (later values win, as in PHP's `$_POST`).
fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn required<'a>(pairs: &'a [(String, String)], name: &str) -> Result<&'a str, FieldError> {
    match field(pairs, name) {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(FieldError::new(name, "is required")),
    }
}

fn address(pairs: &[(String, String)], name: &str) -> Result<EmailAddress, FieldError> {
    EmailAddress::parse(required(pairs, name)?).map_err(|e| FieldError::new(name, e.0))
}

/// The name from `FNAME` and `LNAME`, made to fit [`DisplayName`]: control
/// characters become spaces and it is cut at 200 characters. `None` when
/// both are empty.
fn merged_name(pairs: &[(String, String)]) -> Option<DisplayName> {
    let first = field(pairs, "data[merges][FNAME]").unwrap_or("").trim();
    let last = field(pairs, "data[merges][LNAME]").unwrap_or("").trim();
    let joined = format!("{first} {last}");
    let cleaned: String = joined
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let cut: String = cleaned.trim().chars().take(200).collect();
    DisplayName::parse(&cut).ok()
}

/// Parses an audience-webhook delivery (its form fields) for a list mapped
/// to `expected_list_id`. An unknown `type` parses as
/// [`AudienceEvent::Ignored`] without further checks.
pub fn parse_audience(
    pairs: &[(String, String)],
    expected_list_id: &str,
) -> Result<AudienceEvent, FieldError> {
    let kind = required(pairs, "type")?.trim();
    if !matches!(
        kind,
        "unsubscribe" | "cleaned" | "subscribe" | "profile" | "upemail"
    ) {
        return Ok(AudienceEvent::Ignored {
            kind: kind.chars().take(32).collect(),
        });
    }
    let list_id = required(pairs, "data[list_id]")?;
    if !crypto::ct_eq(list_id.trim().as_bytes(), expected_list_id.as_bytes()) {
        return Err(FieldError::new(
            "data[list_id]",
            "is not the audience this list is mapped to",
        ));
    }
    let reason = field(pairs, "data[reason]").map(str::trim);
    Ok(match kind {
        "unsubscribe" => AudienceEvent::Unsubscribe {
            email: address(pairs, "data[email]")?,
            reason: match reason {
                Some("abuse") => Reason::Complaint,
                _ => Reason::Unsubscribed,
            },
        },
        "cleaned" => AudienceEvent::Cleaned {
            email: address(pairs, "data[email]")?,
            reason: match reason {
                Some("abuse") => Reason::Complaint,
                _ => Reason::Bounce,
            },
        },
        "subscribe" => AudienceEvent::Subscribe {
            email: address(pairs, "data[email]")?,
            name: merged_name(pairs),
            ip_opt: field(pairs, "data[ip_opt]")
                .and_then(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
                .map(|ip| ip.to_string()),
        },
        "profile" => AudienceEvent::Profile {
            email: address(pairs, "data[email]")?,
            name: merged_name(pairs),
        },
        _ => AudienceEvent::UpEmail {
            old: address(pairs, "data[old_email]")?,
            new: address(pairs, "data[new_email]")?,
        },
    })
}

/// Registers the signed audience-webhook URL of `slug` at Mailchimp (events
/// subscribe, unsubscribe, profile, cleaned, upemail; `sources.api = false`
/// so the service's own changes are not echoed back) and returns it.
/// Mailchimp sends a validation `GET` to the URL first, so the service must
/// be reachable at `server.public_url`.
pub async fn register(state: &AppState, slug: &str) -> anyhow::Result<String> {
    let config = &state.config;
    let list = config
        .list(slug)
        .ok_or_else(|| anyhow::anyhow!("no list {slug:?} is configured"))?;
    let list_id = list.mailchimp_list_id.as_deref().ok_or_else(|| {
        anyhow::anyhow!("list {slug:?} has no mailchimp_list_id; it is not mapped to an audience")
    })?;
    let url = audience_url(config, slug)?;
    let client = match &state.mailchimp {
        Some(c) => c.clone(),
        None => std::sync::Arc::new(
            crate::mailchimp::MailchimpClient::from_config(config)?
                .ok_or_else(|| anyhow::anyhow!("mailchimp.api_key is not set"))?,
        ),
    };
    client
        .create_webhook(list_id, &url)
        .await
        .map_err(|e| anyhow::anyhow!("Mailchimp did not register the webhook: {e}"))?;
    tracing::info!(list = %slug, "Mailchimp audience webhook registered");
    Ok(url)
}

// ---------------------------------------------------------------------------
// Mandrill webhooks
// ---------------------------------------------------------------------------

/// The most events one Mandrill delivery may carry (Mandrill batches up to
/// 1000).
pub const MAX_MANDRILL_EVENTS: usize = 1000;

/// `X-Mandrill-Signature` for a delivery: base64 of HMAC-SHA1 under `key` of
/// `url` followed by each POST field's key and value, sorted by key.
pub fn mandrill_signature(key: &[u8], url: &str, fields: &[(String, String)]) -> Option<String> {
    let mut sorted: Vec<&(String, String)> = fields.iter().collect();
    // Stable: equal keys keep the order they were sent in.
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut mac = Hmac::<Sha1>::new_from_slice(key).ok()?;
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    Some(crypto::b64_std_encode(&mac.finalize().into_bytes()))
}

/// Whether `header` is the right `X-Mandrill-Signature` for `fields` under
/// `mandrill.webhook_key` and `mandrill.webhook_url` (constant time). False
/// when Mandrill is not configured or the header is missing.
pub fn verify_mandrill(config: &Config, header: Option<&str>, fields: &[(String, String)]) -> bool {
    let (Some(key), Some(url), Some(given)) = (
        config.mandrill.webhook_key.as_ref(),
        config.mandrill.webhook_url.as_deref(),
        header.map(str::trim).filter(|h| !h.is_empty()),
    ) else {
        return false;
    };
    mandrill_signature(key.expose_secret().as_bytes(), url, fields)
        .is_some_and(|expected| crypto::ct_eq(expected.as_bytes(), given.as_bytes()))
}

/// What one Mandrill event asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MandrillAction {
    /// `hard_bounce`, `reject` (→ `bounce`), `spam` (→ `complaint`) or a
    /// rejection-list `blacklist`/`add` (→ `bounce`): suppress for all lists.
    Suppress { email: EmailAddress, reason: Reason },
    /// `unsub`: leave every list.
    Unsubscribe { email: EmailAddress },
    /// `blacklist`/`remove`: delete the entries Mandrill made.
    Lift { email: EmailAddress },
}

/// A Mandrill delivery, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MandrillBatch {
    /// What to do, in the order sent.
    pub actions: Vec<MandrillAction>,
    /// Events ignored: kinds not acted on, or without a usable address.
    pub ignored: usize,
}

/// Parses the `mandrill_events` field: a JSON array of message events
/// (`event`, `msg.email`) and sync events (`type`, `action`, `reject.email`).
/// Malformed JSON is an error; an event this service does not act on, or
/// one without a usable address, is counted as ignored (Mandrill retries a
/// whole batch, so one odd event must not hold back the others).
pub fn parse_mandrill(events_json: &str) -> Result<MandrillBatch, FieldError> {
    const FIELD: &str = "mandrill_events";
    let events: Vec<serde_json::Value> = serde_json::from_str(events_json)
        .map_err(|_| FieldError::new(FIELD, "is not a JSON array of events"))?;
    if events.len() > MAX_MANDRILL_EVENTS {
        return Err(FieldError::new(FIELD, "holds more than 1000 events"));
    }
    let mut batch = MandrillBatch::default();
    for ev in &events {
        let email_at = |outer: &str| {
            ev.get(outer)
                .and_then(|o| o.get("email"))
                .and_then(serde_json::Value::as_str)
                .and_then(|e| EmailAddress::parse(e).ok())
        };
        let event = ev.get("event").and_then(serde_json::Value::as_str);
        let sync_type = ev.get("type").and_then(serde_json::Value::as_str);
        let action = match (event, sync_type) {
            (Some(kind), _) => {
                let reason = match kind {
                    "hard_bounce" | "reject" => Some(Reason::Bounce),
                    "spam" => Some(Reason::Complaint),
                    "unsub" => Some(Reason::Unsubscribed),
                    _ => None,
                };
                match (reason, email_at("msg")) {
                    (Some(Reason::Unsubscribed), Some(email)) => {
                        Some(MandrillAction::Unsubscribe { email })
                    }
                    (Some(reason), Some(email)) => Some(MandrillAction::Suppress { email, reason }),
                    _ => None,
                }
            }
            (None, Some("blacklist")) => {
                let action = ev.get("action").and_then(serde_json::Value::as_str);
                match (action, email_at("reject")) {
                    (Some("add"), Some(email)) => Some(MandrillAction::Suppress {
                        email,
                        reason: Reason::Bounce,
                    }),
                    (Some("remove"), Some(email)) => Some(MandrillAction::Lift { email }),
                    _ => None,
                }
            }
            _ => None,
        };
        match action {
            Some(a) => batch.actions.push(a),
            None => batch.ignored += 1,
        }
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(body: &str) -> Vec<(String, String)> {
        serde_urlencoded::from_str(body).unwrap()
    }

    #[test]
    fn mandrill_vectors() {
        let fields = pairs("mandrill_events=%5B%5D");
        assert_eq!(
            mandrill_signature(b"testkey", "https://testhost/", &fields).as_deref(),
            Some("mOvq6ELcRGPELc0BwAFZn/PLZQA=")
        );
        assert_eq!(
            mandrill_signature(
                b"test-webhook",
                "https://example.com/webhooks/mandrill",
                &fields
            )
            .as_deref(),
            Some("RkoiKvvb1/ST8DFDdTB9MQGqorM=")
        );
    }

    #[test]
    fn mandrill_signs_fields_sorted_by_key() {
        let a = vec![
            ("b".to_string(), "2".to_string()),
            ("a".to_string(), "1".to_string()),
        ];
        let b = vec![
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "2".to_string()),
        ];
        assert_eq!(
            mandrill_signature(b"k", "https://x/", &a),
            mandrill_signature(b"k", "https://x/", &b)
        );
    }

    #[test]
    fn verify_mandrill_needs_configuration_and_the_right_header() {
        let fields = pairs("mandrill_events=%5B%5D");
        let mut c = Config::default();
        assert!(!verify_mandrill(
            &c,
            Some("mOvq6ELcRGPELc0BwAFZn/PLZQA="),
            &fields
        ));
        c.mandrill.webhook_key = Some("testkey".into());
        c.mandrill.webhook_url = Some("https://testhost/".into());
        assert!(verify_mandrill(
            &c,
            Some("mOvq6ELcRGPELc0BwAFZn/PLZQA="),
            &fields
        ));
        assert!(!verify_mandrill(
            &c,
            Some("mOvq6ELcRGPELc0BwAFZn/PLZQB="),
            &fields
        ));
        assert!(!verify_mandrill(&c, Some(""), &fields));
        assert!(!verify_mandrill(&c, None, &fields));
    }

    #[test]
    fn audience_signature_is_hex_hmac_of_the_slug() {
        let mut c = Config::default();
        assert!(!verify_audience_signature(&c, "newsletter", ""));
        c.mailchimp.webhook_key = Some("k".into());
        let sig = audience_signature(b"k", "newsletter");
        assert_eq!(sig.len(), 64);
        assert!(sig.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        assert!(verify_audience_signature(&c, "newsletter", &sig));
        assert!(!verify_audience_signature(&c, "events", &sig));
        assert!(!verify_audience_signature(
            &c,
            "newsletter",
            &sig.to_uppercase()
        ));
        let url = audience_url(&c, "newsletter").unwrap();
        assert!(url.ends_with(&format!("/v1/webhooks/mailchimp/newsletter/{sig}")));
    }

    const SAMPLE: &str = "type=unsubscribe&fired_at=2009-03-26+21%3A40%3A57&data[action]=unsub&data[reason]=manual&data[id]=8a25ff1d98&data[list_id]=a6b5da1054&data[email]=api%2Bunsub%40mailchimp.com&data[email_type]=html&data[merges][EMAIL]=api%2Bunsub%40mailchimp.com&data[merges][FNAME]=MailChimp&data[ip_opt]=10.20.10.30&data[campaign_id]=cb398d21d2";

    #[test]
    fn parses_the_sample_unsubscribe() {
        let ev = parse_audience(&pairs(SAMPLE), "a6b5da1054").unwrap();
        match ev {
            AudienceEvent::Unsubscribe { email, reason } => {
                assert_eq!(email.as_str(), "api+unsub@mailchimp.com");
                assert_eq!(reason, Reason::Unsubscribed);
            }
            other => panic!("unexpected {other:?}"),
        }
        let err = parse_audience(&pairs(SAMPLE), "other").unwrap_err();
        assert_eq!(err.field, "data[list_id]");
    }

    #[test]
    fn parses_the_other_types() {
        let p =
            pairs("type=cleaned&data[list_id]=L&data[email]=a%40example.com&data[reason]=abuse");
        assert!(matches!(
            parse_audience(&p, "L").unwrap(),
            AudienceEvent::Cleaned {
                reason: Reason::Complaint,
                ..
            }
        ));
        let p = pairs("type=cleaned&data[list_id]=L&data[email]=a%40example.com&data[reason]=hard");
        assert!(matches!(
            parse_audience(&p, "L").unwrap(),
            AudienceEvent::Cleaned {
                reason: Reason::Bounce,
                ..
            }
        ));
        let p = pairs(
            "type=subscribe&data[list_id]=L&data[email]=a%40example.com&data[merges][FNAME]=Ada&data[merges][LNAME]=Lovelace&data[ip_opt]=10.0.0.1",
        );
        match parse_audience(&p, "L").unwrap() {
            AudienceEvent::Subscribe { name, ip_opt, .. } => {
                assert_eq!(name.unwrap().as_str(), "Ada Lovelace");
                assert_eq!(ip_opt.as_deref(), Some("10.0.0.1"));
            }
            other => panic!("unexpected {other:?}"),
        }
        let p = pairs(
            "type=upemail&data[list_id]=L&data[old_email]=a%40example.com&data[new_email]=b%40example.com",
        );
        assert!(matches!(
            parse_audience(&p, "L").unwrap(),
            AudienceEvent::UpEmail { .. }
        ));
        let p = pairs("type=campaign&data[list_id]=other");
        assert!(matches!(
            parse_audience(&p, "L").unwrap(),
            AudienceEvent::Ignored { .. }
        ));
    }

    #[test]
    fn refuses_missing_and_bad_fields() {
        assert_eq!(parse_audience(&[], "L").unwrap_err().field, "type");
        let p = pairs("type=unsubscribe&data[list_id]=L");
        assert_eq!(parse_audience(&p, "L").unwrap_err().field, "data[email]");
        let p = pairs("type=unsubscribe&data[list_id]=L&data[email]=nope");
        assert_eq!(parse_audience(&p, "L").unwrap_err().field, "data[email]");
        let p = pairs("type=upemail&data[list_id]=L&data[old_email]=a%40example.com");
        assert_eq!(
            parse_audience(&p, "L").unwrap_err().field,
            "data[new_email]"
        );
    }

    #[test]
    fn names_are_bounded_and_cleaned() {
        let long = "x".repeat(500);
        let p = vec![
            ("data[merges][FNAME]".to_string(), long),
            ("data[merges][LNAME]".to_string(), "a\u{7}b".to_string()),
        ];
        let name = merged_name(&p).unwrap();
        assert_eq!(name.as_str().chars().count(), 200);
        let p = vec![("data[merges][FNAME]".to_string(), "A\nB".to_string())];
        assert_eq!(merged_name(&p).unwrap().as_str(), "A B");
        assert!(merged_name(&[]).is_none());
    }

    #[test]
    fn parses_mandrill_events() {
        let json = serde_json::json!([
            {"event": "hard_bounce", "msg": {"email": "a@example.com"}},
            {"event": "reject", "msg": {"email": "b@example.com"}},
            {"event": "spam", "msg": {"email": "c@example.com"}},
            {"event": "unsub", "msg": {"email": "d@example.com"}},
            {"event": "soft_bounce", "msg": {"email": "e@example.com"}},
            {"event": "hard_bounce", "msg": {"email": "not an address"}},
            {"event": "hard_bounce"},
            {"type": "blacklist", "action": "add", "reject": {"email": "f@example.com"}},
            {"type": "blacklist", "action": "remove", "reject": {"email": "g@example.com"}},
            {"type": "whitelist", "action": "add", "entry": {"email": "h@example.com"}},
            42
        ])
        .to_string();
        let batch = parse_mandrill(&json).unwrap();
        assert_eq!(batch.actions.len(), 6);
        assert_eq!(batch.ignored, 5);
        assert!(matches!(
            &batch.actions[2],
            MandrillAction::Suppress {
                reason: Reason::Complaint,
                ..
            }
        ));
        assert!(matches!(
            &batch.actions[3],
            MandrillAction::Unsubscribe { .. }
        ));
        assert!(matches!(&batch.actions[5], MandrillAction::Lift { .. }));
        assert!(parse_mandrill("{").is_err());
        assert!(parse_mandrill("{}").is_err());
        assert!(parse_mandrill("[]").unwrap().actions.is_empty());
    }
}
