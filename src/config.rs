//! Typed configuration: one TOML file, then `LISTGUARD_<SECTION>__<KEY>`
//! environment overrides (figment). Array and table keys take JSON in the
//! environment. Every key has a default, so no configuration at all gives the
//! embedded default: SQLite `listguard.db`, mail to the log, one list.
use std::{collections::BTreeMap, path::Path};

use chrono::{DateTime, Months, Utc};
use figment::{
    Figment,
    providers::{Format, Serialized, Toml},
};
use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub secrets: SecretsConfig,
    pub mail: MailConfig,
    pub org: OrgConfig,
    /// The lists people can subscribe to.
    pub lists: Vec<ListConfig>,
    pub retention: RetentionConfig,
    pub captcha: CaptchaConfig,
    /// API keys: `{name, scope: admin|sender, key_sha256}`.
    pub api_keys: Vec<ApiKeyConfig>,
    pub limits: LimitsConfig,
    /// Mailchimp Marketing API sync; off without `api_key`.
    pub mailchimp: MailchimpConfig,
    /// Mailchimp Transactional (Mandrill) webhooks; off without `webhook_key`.
    pub mandrill: MandrillConfig,
    /// Endpoints that receive signed outbound events (Standard Webhooks).
    pub webhooks: Vec<WebhookConfig>,
    /// Keys given (in the file or the environment) that no setting reads, a
    /// misspelling most likely; every command warns about them.
    #[serde(skip)]
    pub unknown_keys: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: Default::default(),
            database: Default::default(),
            secrets: Default::default(),
            mail: Default::default(),
            org: Default::default(),
            lists: default_lists(),
            retention: Default::default(),
            captcha: Default::default(),
            api_keys: Default::default(),
            limits: Default::default(),
            mailchimp: Default::default(),
            mandrill: Default::default(),
            webhooks: Vec::new(),
            unknown_keys: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Listen address.
    pub bind: String,
    /// Base of every link the service writes.
    pub public_url: String,
    /// Refuse unsafe defaults: generated secrets, the `log` transport, plain http.
    pub production: bool,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Largest body of the bulk sender calls (10,000 addresses), in bytes.
    pub max_bulk_body_bytes: usize,
    /// Addresses of the load balancers or proxies in front of the service.
    /// A request from one of them is attributed to the right-most address in
    /// `X-Forwarded-For` that is not itself a trusted proxy (for the consent
    /// record and the per-IP limit); from anyone else the header is ignored.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            public_url: "http://127.0.0.1:8080".into(),
            production: false,
            max_body_bytes: 64 * 1024,
            max_bulk_body_bytes: 4 * 1024 * 1024,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DatabaseConfig {
    /// `sqlite://…` or `postgres://…`.
    pub url: String,
    /// Connection pool size. SQLite has one writer however many connections it
    /// is given; PostgreSQL scales with a few per core.
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://listguard.db?mode=rwc".into(),
            max_connections: 16,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct SecretsConfig {
    /// `kid:base64key` entries; the first signs, all verify. Generated when empty.
    pub token_keys: Vec<SecretString>,
    /// Base64 key for address hashing. Generated when absent.
    pub hash_key: Option<SecretString>,
}

/// How mail leaves the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MailTransportKind {
    /// Development preview: whole mails printed to standard output.
    #[default]
    Log,
    Smtp,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct MailConfig {
    pub transport: MailTransportKind,
    /// e.g. `smtp://127.0.0.1:1025`, `smtps://user:pass@host`.
    pub smtp_url: Option<SecretString>,
    /// The From header.
    pub from: Option<String>,
    /// Attempts before a mail job is dead-lettered.
    pub max_attempts: i32,
}

impl Default for MailConfig {
    fn default() -> Self {
        Self {
            transport: MailTransportKind::Log,
            smtp_url: None,
            from: None,
            max_attempts: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct OrgConfig {
    pub name: String,
    pub privacy_policy_url: Option<String>,
    pub contact_email: Option<String>,
    /// `sv` or `en`.
    pub default_locale: String,
}

impl Default for OrgConfig {
    fn default() -> Self {
        Self {
            name: "listguard".into(),
            privacy_policy_url: None,
            contact_email: None,
            default_locale: "sv".into(),
        }
    }
}

/// One mailing list.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ListConfig {
    pub slug: String,
    pub name: String,
    pub mailchimp_list_id: Option<String>,
    /// The exact words the signup form shows next to the consent box.
    pub consent_text: String,
    pub consent_version: String,
}

fn default_lists() -> Vec<ListConfig> {
    vec![ListConfig {
        slug: "newsletter".into(),
        name: "Newsletter".into(),
        mailchimp_list_id: None,
        consent_text:
            "I want to receive the newsletter by e-mail and have read the privacy policy.".into(),
        consent_version: "1".into(),
    }]
}

#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// How long a suppression entry lives (a calendar month by default).
    pub suppression: ConfigDuration,
    /// Per-reason overrides of `suppression`, e.g. `{ bounce = "2 months" }`.
    pub suppression_by_reason: BTreeMap<String, ConfigDuration>,
    /// Validity of a confirmation token.
    pub pending: ConfigDuration,
    /// How long unconfirmed data is kept after its token expired.
    pub pending_grace: ConfigDuration,
    /// Period of the purge scheduler inside `serve`.
    pub purge_interval: ConfigDuration,
    /// How long the audit trail of administrative actions (export, rectify,
    /// restrict, erase, unsubscribe) is kept; the purge deletes older rows.
    pub audit: ConfigDuration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            suppression: ConfigDuration::Months(1),
            suppression_by_reason: BTreeMap::new(),
            pending: ConfigDuration::Fixed(chrono::Duration::hours(48)),
            pending_grace: ConfigDuration::Fixed(chrono::Duration::days(7)),
            purge_interval: ConfigDuration::Fixed(chrono::Duration::minutes(10)),
            audit: ConfigDuration::Months(12),
        }
    }
}

/// A retention key given as one duration or as a table of them.
enum DurationOrTable<T> {
    One(ConfigDuration),
    Table(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for DurationOrTable<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Either<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Either<T> {
            type Value = DurationOrTable<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration such as \"1 month\", or a table of durations")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
                s.parse().map(DurationOrTable::One).map_err(E::custom)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                m: A,
            ) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(m))
                    .map(DurationOrTable::Table)
            }
        }
        d.deserialize_any(Either(std::marker::PhantomData))
    }
}

/// `retention.pending` as a table: `{ token = "48h", grace = "7d" }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PendingTable {
    token: Option<ConfigDuration>,
    grace: Option<ConfigDuration>,
}

/// DESIGN §4 gives `retention.suppression` ("per-reason overrides allowed")
/// and `retention.pending` ("48 h token + 7 d grace") as one key each; both
/// take a plain duration or a table (`{ default = "1 month", bounce =
/// "2 months" }`, `{ token = "48h", grace = "7d" }`). The separate keys
/// `suppression_by_reason` and `pending_grace` say the same and stay valid.
impl<'de> Deserialize<'de> for RetentionConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Raw {
            suppression: Option<DurationOrTable<BTreeMap<String, ConfigDuration>>>,
            suppression_by_reason: BTreeMap<String, ConfigDuration>,
            pending: Option<DurationOrTable<PendingTable>>,
            pending_grace: Option<ConfigDuration>,
            purge_interval: Option<ConfigDuration>,
            audit: Option<ConfigDuration>,
        }
        let raw = Raw::deserialize(d)?;
        let mut out = Self {
            suppression_by_reason: raw.suppression_by_reason,
            ..Self::default()
        };
        match raw.suppression {
            None => {}
            Some(DurationOrTable::One(all)) => out.suppression = all,
            Some(DurationOrTable::Table(mut table)) => {
                if let Some(all) = table.remove("default") {
                    out.suppression = all;
                }
                for (reason, lifetime) in table {
                    if out
                        .suppression_by_reason
                        .insert(reason.clone(), lifetime)
                        .is_some()
                    {
                        return Err(D::Error::custom(format!(
                            "the retention of {reason:?} is set both in retention.suppression \
                             and in retention.suppression_by_reason"
                        )));
                    }
                }
            }
        }
        out.pending_grace = raw.pending_grace.unwrap_or(out.pending_grace);
        match raw.pending {
            None => {}
            Some(DurationOrTable::One(token)) => out.pending = token,
            Some(DurationOrTable::Table(t)) => {
                out.pending = t.token.unwrap_or(out.pending);
                if let Some(grace) = t.grace {
                    if raw.pending_grace.is_some() {
                        return Err(D::Error::custom(
                            "the grace is set both in retention.pending and in \
                             retention.pending_grace",
                        ));
                    }
                    out.pending_grace = grace;
                }
            }
        }
        out.purge_interval = raw.purge_interval.unwrap_or(out.purge_interval);
        out.audit = raw.audit.unwrap_or(out.audit);
        Ok(out)
    }
}

/// Which captcha service verifies `captcha_token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CaptchaProvider {
    #[default]
    None,
    Turnstile,
    Hcaptcha,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct CaptchaConfig {
    pub provider: CaptchaProvider,
    pub secret: Option<SecretString>,
    /// The provider's `siteverify` URL; defaults to the provider's public one.
    pub verify_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiScope {
    Admin,
    Sender,
}

/// One endpoint for outbound events.
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookConfig {
    /// Where the events are POSTed.
    pub url: String,
    /// `whsec_<base64>`; several (an array) while a key is being rotated:
    /// every delivery then carries one signature per secret.
    pub secret: WebhookSecrets,
    /// The event types this endpoint takes; all of them when empty.
    #[serde(default)]
    pub events: Vec<String>,
}

/// One signing secret, or several during a rotation.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum WebhookSecrets {
    One(SecretString),
    Many(Vec<SecretString>),
}

impl WebhookSecrets {
    pub fn all(&self) -> Vec<&SecretString> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v.iter().collect(),
        }
    }
}

impl WebhookConfig {
    /// Whether this endpoint takes events of this type.
    pub fn wants(&self, event_type: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == event_type)
    }
}

/// The key bytes of a `whsec_` secret, or why it is not one.
pub fn webhook_key(secret: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let b64 = secret
        .strip_prefix("whsec_")
        .ok_or("a secret must start with whsec_")?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "a secret must be whsec_ followed by base64".to_string())?;
    if !(16..=64).contains(&key.len()) {
        return Err("a secret must hold 16 to 64 bytes".into());
    }
    Ok(key)
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiKeyConfig {
    pub name: String,
    pub scope: ApiScope,
    /// Lower-case hex SHA-256 of the key.
    pub key_sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LimitsConfig {
    pub subscribe_per_ip_per_minute: u32,
    pub confirmations_per_address_per_day: u32,
    pub resend_cooldown: ConfigDuration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            subscribe_per_ip_per_minute: 10,
            confirmations_per_address_per_day: 5,
            resend_cooldown: ConfigDuration::Fixed(chrono::Duration::minutes(10)),
        }
    }
}

/// What happens at Mailchimp when a suppression entry of a mapped list expires
/// (and on erasure).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnExpiry {
    /// `DELETE` the member: archived, can be re-added.
    #[default]
    Archive,
    /// `POST .../actions/delete-permanent`: gone for good, cannot be re-added.
    DeletePermanent,
    /// Leave the member as it is.
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct MailchimpConfig {
    /// `<hex>-<dc>`; the data centre names the API host.
    pub api_key: Option<SecretString>,
    /// Overrides `https://<dc>.api.mailchimp.com/3.0` (tests point it at a fake).
    pub base_url: Option<String>,
    /// Keys the signature in the audience-webhook URL.
    pub webhook_key: Option<SecretString>,
    pub on_expiry: OnExpiry,
    /// Simultaneous connections to Mailchimp (it allows 10 per account).
    pub concurrency: u32,
    /// On "Member In Compliance State", re-send the member as `pending` so
    /// Mailchimp asks the person itself; `false` dead-letters the job instead.
    pub compliance_fallback_pending: bool,
    /// Attempts before a job is dead-lettered.
    pub max_attempts: i32,
    /// Time limit of one call.
    pub timeout: ConfigDuration,
    /// Upserts waiting for one list beyond this go through the batch endpoint.
    pub batch_threshold: usize,
    /// Period of the reconciliation inside `serve`.
    pub reconcile_interval: ConfigDuration,
}

impl Default for MailchimpConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            base_url: None,
            webhook_key: None,
            on_expiry: OnExpiry::Archive,
            concurrency: 4,
            compliance_fallback_pending: true,
            max_attempts: 15,
            timeout: ConfigDuration::Fixed(chrono::Duration::seconds(30)),
            batch_threshold: 5,
            reconcile_interval: ConfigDuration::Fixed(chrono::Duration::hours(6)),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct MandrillConfig {
    /// The webhook's key, as Mandrill shows it.
    pub webhook_key: Option<SecretString>,
    /// The webhook URL exactly as registered at Mandrill (it is signed).
    pub webhook_url: Option<String>,
}

/// A configured duration: fixed (`"30s"`, `"10m"`, `"48h"`, `"7d"`, `"2w"`) or
/// in calendar months (`"1 month"`), which is why it is not a `std::time::Duration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigDuration {
    Fixed(chrono::Duration),
    Months(u32),
}

impl ConfigDuration {
    /// `start` moved forward by this duration. A month from 31 January is the
    /// last day of February, at the same time of day.
    pub fn after(&self, start: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Self::Fixed(d) => start + *d,
            Self::Months(m) => start
                .checked_add_months(Months::new(*m))
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        }
    }

    /// `end` moved back by this duration.
    pub fn before(&self, end: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Self::Fixed(d) => end - *d,
            Self::Months(m) => end
                .checked_sub_months(Months::new(*m))
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
        }
    }

    /// An approximation for timers (a month counts as 30 days).
    pub fn approx_std(&self) -> std::time::Duration {
        match self {
            Self::Fixed(d) => d.to_std().unwrap_or_default(),
            Self::Months(m) => std::time::Duration::from_secs(u64::from(*m) * 30 * 86_400),
        }
    }
}

impl std::str::FromStr for ConfigDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("duration {s:?} has no unit (s, m, h, d, w, month, year)"))?;
        let (num, unit) = s.split_at(split);
        let n: i64 = num
            .parse()
            .map_err(|_| format!("duration {s:?} does not start with a number"))?;
        let fixed = |d: Option<chrono::Duration>| {
            d.map(Self::Fixed)
                .ok_or_else(|| format!("duration {s:?} is too large"))
        };
        match unit.trim() {
            "s" | "sec" | "secs" | "second" | "seconds" => fixed(chrono::Duration::try_seconds(n)),
            "m" | "min" | "mins" | "minute" | "minutes" => fixed(chrono::Duration::try_minutes(n)),
            "h" | "hour" | "hours" => fixed(chrono::Duration::try_hours(n)),
            "d" | "day" | "days" => fixed(chrono::Duration::try_days(n)),
            "w" | "week" | "weeks" => fixed(chrono::Duration::try_weeks(n)),
            "month" | "months" => u32::try_from(n)
                .map(Self::Months)
                .map_err(|_| format!("duration {s:?} is too large")),
            "y" | "year" | "years" => u32::try_from(n)
                .ok()
                .and_then(|n| n.checked_mul(12))
                .map(Self::Months)
                .ok_or_else(|| format!("duration {s:?} is too large")),
            other => Err(format!(
                "duration {s:?} has an unknown unit {other:?} (s, m, h, d, w, month, year)"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The keys in `fig` that deserialising a [`Config`] passes over, as dotted
/// paths (`server.bnid`). Best effort: a second pass over the merged values,
/// whose own errors were already reported by the first.
fn unknown_keys(fig: &Figment) -> Vec<String> {
    let Ok(value) = fig.extract::<figment::value::Value>() else {
        return Vec::new();
    };
    let mut keys = Vec::new();
    let _ = serde_ignored::deserialize::<_, _, Config>(&value, |path| {
        keys.push(path.to_string());
    });
    keys.sort();
    keys
}

/// Environment variables with the `LISTGUARD_` prefix that are not configuration keys.
const NON_KEY_VARS: &[&str] = &["CONFIG", "LOG_FORMAT", "ADMIN_KEY"];

impl Config {
    /// Loads the file (if any), then the environment on top.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        Self::load_from(file, std::env::vars())
    }

    /// As [`Config::load`], with the environment given (tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        let mut fig = Figment::new();
        if let Some(path) = file {
            if !path.exists() {
                anyhow::bail!("configuration file {} does not exist", path.display());
            }
            fig = fig.merge(Toml::file(path));
        }
        // Environment values: JSON for arrays and tables (the documented form
        // for list-valued keys), figment's own lenient parsing for the rest.
        let mut admin_key = None;
        for (k, v) in env {
            let Some(rest) = k.strip_prefix("LISTGUARD_") else {
                continue;
            };
            if rest == "ADMIN_KEY" {
                admin_key = Some(v);
                continue;
            }
            if NON_KEY_VARS.contains(&rest) || rest.is_empty() {
                continue;
            }
            let path = rest.to_ascii_lowercase().replace("__", ".");
            let t = v.trim_start();
            if t.starts_with('[') || t.starts_with('{') {
                let json: serde_json::Value = serde_json::from_str(&v).map_err(|e| {
                    anyhow::anyhow!("environment variable {k} is not valid JSON: {e}")
                })?;
                fig = fig.merge(Serialized::default(&path, json));
            } else {
                let value: figment::value::Value = v
                    .parse()
                    .unwrap_or_else(|_| figment::value::Value::from(v.clone()));
                fig = fig.merge(Serialized::default(&path, value));
            }
        }
        let mut config: Config = fig
            .extract()
            .map_err(|e| anyhow::anyhow!("configuration: {}", describe_error(&e)))?;
        config.unknown_keys = unknown_keys(&fig);
        if config.lists.is_empty() {
            config.lists = default_lists();
        }
        if let Some(key) = admin_key {
            config.api_keys.push(ApiKeyConfig {
                name: "LISTGUARD_ADMIN_KEY".into(),
                scope: ApiScope::Admin,
                key_sha256: crate::crypto::sha256_hex(key.trim().as_bytes()),
            });
        }
        config.validate()?;
        Ok(config)
    }

    /// Logs a warning for each key in [`Config::unknown_keys`].
    pub fn warn_about_unknown_keys(&self) {
        for key in &self.unknown_keys {
            tracing::warn!(key = %key, "configuration key not used by any setting; misspelt?");
        }
    }

    /// Refuses a configuration the service cannot run with, naming the
    /// setting. [`Config::load`] calls it; so does building the service, for
    /// a configuration made in code.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut seen = std::collections::HashSet::new();
        for l in &self.lists {
            crate::domain::ListSlug::parse(&l.slug)
                .map_err(|e| anyhow::anyhow!("lists: slug {:?}: {e}", l.slug))?;
            if !seen.insert(l.slug.as_str()) {
                anyhow::bail!("lists: slug {:?} appears twice", l.slug);
            }
        }
        if !matches!(self.org.default_locale.as_str(), "sv" | "en") {
            anyhow::bail!("org.default_locale must be \"sv\" or \"en\"");
        }
        if self.mail.transport == MailTransportKind::Smtp && self.mail.smtp_url.is_none() {
            anyhow::bail!("mail.transport = \"smtp\" needs mail.smtp_url");
        }
        url_like(&self.server.public_url).map_err(|e| anyhow::anyhow!("server.public_url: {e}"))?;
        if self.server.production {
            if self.mail.transport == MailTransportKind::Log {
                anyhow::bail!(
                    "production mode refuses the `log` mail transport: set mail.transport = \"smtp\""
                );
            }
            if !self.server.public_url.starts_with("https://") {
                anyhow::bail!("production mode needs an https server.public_url");
            }
            if self.secrets.token_keys.is_empty() || self.secrets.hash_key.is_none() {
                anyhow::bail!(
                    "production mode refuses generated secrets: set secrets.token_keys and secrets.hash_key (`listguard keys generate` makes them)"
                );
            }
        }
        if self.lists.iter().any(|l| l.mailchimp_list_id.is_some())
            && self.mailchimp.api_key.is_none()
        {
            anyhow::bail!("a list has a mailchimp_list_id, so mailchimp.api_key is needed");
        }
        if let Some(key) = &self.mailchimp.api_key {
            use secrecy::ExposeSecret;
            if self.mailchimp.base_url.is_none() && mailchimp_dc(key.expose_secret()).is_none() {
                anyhow::bail!("mailchimp.api_key must look like <hex>-<dc> (e.g. …-us6)");
            }
        }
        if let Some(u) = &self.mailchimp.base_url {
            url_like(u).map_err(|e| anyhow::anyhow!("mailchimp.base_url: {e}"))?;
        }
        if !(1..=10).contains(&self.mailchimp.concurrency) {
            anyhow::bail!(
                "mailchimp.concurrency must be 1 to 10 (Mailchimp allows 10 connections)"
            );
        }
        if self.mailchimp.max_attempts < 1 {
            anyhow::bail!("mailchimp.max_attempts must be at least 1");
        }
        if self.mandrill.webhook_key.is_some() != self.mandrill.webhook_url.is_some() {
            anyhow::bail!("mandrill.webhook_key and mandrill.webhook_url go together");
        }
        // A misspelt reason would leave its entries on the default retention
        // without a word.
        for reason in self.retention.suppression_by_reason.keys() {
            if crate::services::suppression::Reason::parse(reason).is_none() {
                anyhow::bail!(
                    "retention.suppression: {reason:?} is not a reason (unsubscribed, bounce, \
                     complaint, blocked, manual, erased) nor `default`"
                );
            }
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            url_like(&w.url).map_err(|e| anyhow::anyhow!("webhooks[{i}].url: {e}"))?;
            // A queued event names its endpoint by URL.
            if self.webhooks[..i].iter().any(|o| o.url == w.url) {
                anyhow::bail!("webhooks[{i}].url appears twice: one endpoint per URL");
            }
            if self.server.production && !w.url.starts_with("https://") {
                anyhow::bail!("production mode needs https webhook URLs (webhooks[{i}].url)");
            }
            let secrets = w.secret.all();
            if secrets.is_empty() {
                anyhow::bail!("webhooks[{i}].secret: at least one secret is needed");
            }
            for s in secrets {
                use secrecy::ExposeSecret;
                webhook_key(s.expose_secret())
                    .map_err(|e| anyhow::anyhow!("webhooks[{i}].secret: {e}"))?;
            }
            for e in &w.events {
                if crate::events::EventType::parse(e).is_none() {
                    anyhow::bail!(
                        "webhooks[{i}].events: {e:?} is not an event type ({})",
                        crate::events::EventType::ALL.map(|t| t.as_str()).join(", ")
                    );
                }
            }
        }
        for k in &self.api_keys {
            if k.key_sha256.len() != 64 || !k.key_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                anyhow::bail!("api_keys: {:?} needs key_sha256 as 64 hex digits", k.name);
            }
        }
        Ok(())
    }

    /// The Mailchimp API base, `https://<dc>.api.mailchimp.com/3.0` unless
    /// overridden; `None` when Mailchimp is off.
    pub fn mailchimp_base_url(&self) -> Option<String> {
        use secrecy::ExposeSecret;
        let key = self.mailchimp.api_key.as_ref()?;
        match &self.mailchimp.base_url {
            Some(u) => Some(u.trim_end_matches('/').to_string()),
            None => mailchimp_dc(key.expose_secret())
                .map(|dc| format!("https://{dc}.api.mailchimp.com/3.0")),
        }
    }

    /// The configured list with this slug.
    pub fn list(&self, slug: &str) -> Option<&ListConfig> {
        self.lists.iter().find(|l| l.slug == slug)
    }

    /// Whether a suppression scope (a list slug or `*`) reaches a Mailchimp audience.
    pub fn mailchimp_mapped(&self, scope: &str) -> bool {
        self.lists
            .iter()
            .any(|l| (scope == "*" || l.slug == scope) && l.mailchimp_list_id.is_some())
    }

    /// How long a suppression entry for `reason` lives.
    pub fn suppression_retention(&self, reason: &str) -> ConfigDuration {
        self.retention
            .suppression_by_reason
            .get(reason)
            .copied()
            .unwrap_or(self.retention.suppression)
    }

    /// The public base URL without a trailing slash.
    pub fn public_base(&self) -> &str {
        self.server.public_url.trim_end_matches('/')
    }
}

fn url_like(s: &str) -> Result<(), String> {
    if s.starts_with("http://") || s.starts_with("https://") {
        Ok(())
    } else {
        Err(format!("{s:?} is not an http(s) URL"))
    }
}

/// The data centre of a Mailchimp API key `<hex>-<dc>`.
fn mailchimp_dc(key: &str) -> Option<&str> {
    let (_, dc) = key.rsplit_once('-')?;
    (!dc.is_empty() && dc.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(dc)
}

/// A configuration error fit for a log line: the key and what was expected,
/// never the value given (it may be a secret, and figment quotes it).
fn describe_error(e: &figment::Error) -> String {
    use figment::error::Kind;
    let key = if e.path.is_empty() {
        "the configuration".to_string()
    } else {
        format!("key `{}`", e.path.join("."))
    };
    let what = match &e.kind {
        Kind::InvalidType(_, expected) | Kind::InvalidValue(_, expected) => {
            format!("has a value of the wrong form (expected {expected})")
        }
        Kind::InvalidLength(_, expected) => format!("has the wrong length (expected {expected})"),
        Kind::UnknownVariant(_, expected) => {
            format!("is not one of: {}", expected.join(", "))
        }
        Kind::UnknownField(field, _) => format!("has an unknown field `{field}`"),
        Kind::MissingField(field) => format!("lacks the field `{field}`"),
        Kind::DuplicateField(field) => format!("has the field `{field}` twice"),
        Kind::ISizeOutOfRange(_) | Kind::USizeOutOfRange(_) => "is out of range".to_string(),
        Kind::Unsupported(_) | Kind::UnsupportedKey(_, _) => "has an unsupported value".to_string(),
        // Our own parse errors (durations, keys) name the problem, not the value.
        Kind::Message(m) => m.clone(),
    };
    format!("{key} {what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(
            "30s".parse::<ConfigDuration>().unwrap(),
            ConfigDuration::Fixed(chrono::Duration::seconds(30))
        );
        assert_eq!(
            "48h".parse::<ConfigDuration>().unwrap(),
            ConfigDuration::Fixed(chrono::Duration::hours(48))
        );
        assert_eq!(
            "7d".parse::<ConfigDuration>().unwrap(),
            ConfigDuration::Fixed(chrono::Duration::days(7))
        );
        assert_eq!(
            "1 month".parse::<ConfigDuration>().unwrap(),
            ConfigDuration::Months(1)
        );
        assert_eq!(
            "1 year".parse::<ConfigDuration>().unwrap(),
            ConfigDuration::Months(12)
        );
        assert!("10 parsecs".parse::<ConfigDuration>().is_err());
        assert!("m".parse::<ConfigDuration>().is_err());
    }

    #[test]
    fn a_month_from_the_31st_of_january_is_the_end_of_february() {
        let t: DateTime<Utc> = "2026-01-31T10:00:00Z".parse().unwrap();
        assert_eq!(
            ConfigDuration::Months(1).after(t).to_rfc3339(),
            "2026-02-28T10:00:00+00:00"
        );
        let t: DateTime<Utc> = "2028-01-31T10:00:00Z".parse().unwrap();
        assert_eq!(
            ConfigDuration::Months(1).after(t).to_rfc3339(),
            "2028-02-29T10:00:00+00:00"
        );
    }

    #[test]
    fn environment_overrides_the_file_and_takes_json_for_arrays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[server]\nbind = \"0.0.0.0:1\"\n[database]\nurl = \"sqlite://x.db\"\n",
        )
        .unwrap();
        let env = vec![
            (
                "LISTGUARD_DATABASE__URL".to_string(),
                "postgres://h/db".to_string(),
            ),
            (
                "LISTGUARD_API_KEYS".to_string(),
                format!(
                    r#"[{{"name":"web","scope":"sender","key_sha256":"{}"}}]"#,
                    "a".repeat(64)
                ),
            ),
            (
                "LISTGUARD_LIMITS__SUBSCRIBE_PER_IP_PER_MINUTE".to_string(),
                "99".to_string(),
            ),
            ("LISTGUARD_ADMIN_KEY".to_string(), "secret".to_string()),
        ];
        let c = Config::load_from(Some(&path), env).unwrap();
        assert_eq!(c.server.bind, "0.0.0.0:1");
        assert_eq!(c.database.url, "postgres://h/db");
        assert_eq!(c.limits.subscribe_per_ip_per_minute, 99);
        assert_eq!(c.api_keys.len(), 2);
        assert_eq!(c.api_keys[0].scope, ApiScope::Sender);
        assert_eq!(c.lists[0].slug, "newsletter");
    }

    #[test]
    fn production_refuses_generated_secrets_and_the_log_transport() {
        let env = vec![(
            "LISTGUARD_SERVER__PRODUCTION".to_string(),
            "true".to_string(),
        )];
        let err = Config::load_from(None, env).unwrap_err().to_string();
        assert!(err.contains("log"), "{err}");
        let env = vec![
            (
                "LISTGUARD_SERVER__PRODUCTION".to_string(),
                "true".to_string(),
            ),
            (
                "LISTGUARD_SERVER__PUBLIC_URL".to_string(),
                "https://x.example".to_string(),
            ),
            ("LISTGUARD_MAIL__TRANSPORT".to_string(), "smtp".to_string()),
            (
                "LISTGUARD_MAIL__SMTP_URL".to_string(),
                "smtp://127.0.0.1:25".to_string(),
            ),
        ];
        let err = Config::load_from(None, env).unwrap_err().to_string();
        assert!(err.contains("generated secrets"), "{err}");
    }

    #[test]
    fn a_retention_for_an_unknown_reason_is_refused() {
        let env = |reason: &str| {
            vec![(
                "LISTGUARD_RETENTION__SUPPRESSION_BY_REASON".to_string(),
                format!("{{\"{reason}\": \"2 months\"}}"),
            )]
        };
        let c = Config::load_from(None, env("bounce")).unwrap();
        assert_eq!(c.suppression_retention("bounce"), ConfigDuration::Months(2),);
        let err = Config::load_from(None, env("bounced"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"bounced\" is not a reason"), "{err}");
    }

    #[test]
    fn suppression_and_pending_retention_take_a_duration_or_a_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("listguard.toml");
        std::fs::write(
            &path,
            "[retention]\nsuppression = { default = \"2 months\", bounce = \"3 months\" }\n\
             pending = { token = \"24h\", grace = \"3d\" }\n",
        )
        .unwrap();
        let c = Config::load_from(Some(&path), Vec::new()).unwrap();
        assert!(c.unknown_keys.is_empty(), "{:?}", c.unknown_keys);
        assert_eq!(c.suppression_retention("bounce"), ConfigDuration::Months(3));
        assert_eq!(
            c.suppression_retention("unsubscribed"),
            ConfigDuration::Months(2)
        );
        assert_eq!(c.retention.pending, "24h".parse().unwrap());
        assert_eq!(c.retention.pending_grace, "3d".parse().unwrap());

        // The environment takes the table as JSON, and a plain duration still works.
        let env = vec![
            (
                "LISTGUARD_RETENTION__SUPPRESSION".to_string(),
                r#"{"complaint": "6 months"}"#.to_string(),
            ),
            (
                "LISTGUARD_RETENTION__PENDING".to_string(),
                "72h".to_string(),
            ),
        ];
        let c = Config::load_from(None, env).unwrap();
        assert_eq!(
            c.suppression_retention("complaint"),
            ConfigDuration::Months(6)
        );
        assert_eq!(c.suppression_retention("manual"), ConfigDuration::Months(1));
        assert_eq!(c.retention.pending, "72h".parse().unwrap());
        assert_eq!(c.retention.pending_grace, "7d".parse().unwrap());

        for (key, json, want) in [
            (
                "SUPPRESSION",
                r#"{"bounced": "2 months"}"#,
                "\"bounced\" is not a reason",
            ),
            ("PENDING", r#"{"token": "48h", "grase": "7d"}"#, "grase"),
            ("PENDING", r#"{"token": "soon"}"#, "soon"),
        ] {
            let env = vec![(format!("LISTGUARD_RETENTION__{key}"), json.to_string())];
            let err = Config::load_from(None, env).unwrap_err().to_string();
            assert!(err.contains(want), "{json}: {err}");
        }
    }

    #[test]
    fn webhooks_come_from_a_file_or_the_environment_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("listguard.toml");
        std::fs::write(
            &path,
            "[[webhooks]]\nurl = \"https://crm.example.org/hooks\"\n\
             secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n\
             events = [\"subscription.confirmed\", \"subscriber.erased\"]\n",
        )
        .unwrap();
        let c = Config::load_from(Some(&path), Vec::new()).unwrap();
        assert_eq!(c.webhooks.len(), 1);
        assert!(c.webhooks[0].wants("subscriber.erased"));
        assert!(!c.webhooks[0].wants("suppression.added"));
        assert!(c.unknown_keys.is_empty(), "{:?}", c.unknown_keys);

        let env = |json: &str| vec![("LISTGUARD_WEBHOOKS".to_string(), json.to_string())];
        let c = Config::load_from(
            None,
            env(r#"[{"url":"http://127.0.0.1:9/h","secret":["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw","whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]}]"#),
        )
        .unwrap();
        assert_eq!(c.webhooks[0].secret.all().len(), 2);
        assert!(
            c.webhooks[0].wants("suppression.expired"),
            "no list: every type"
        );

        for (json, want) in [
            (
                r#"[{"url":"ftp://x","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]"#,
                "webhooks[0].url",
            ),
            (
                r#"[{"url":"https://x","secret":"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]"#,
                "whsec_",
            ),
            (
                r#"[{"url":"https://x","secret":"whsec_c2hvcnQ="}]"#,
                "16 to 64 bytes",
            ),
            (
                r#"[{"url":"https://x","secret":[]}]"#,
                "at least one secret",
            ),
            (
                r#"[{"url":"https://x","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},{"url":"https://x","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]"#,
                "webhooks[1].url appears twice",
            ),
            (
                r#"[{"url":"https://x","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw","events":["subscription.created"]}]"#,
                "\"subscription.created\" is not an event type",
            ),
        ] {
            let err = Config::load_from(None, env(json)).unwrap_err().to_string();
            assert!(err.contains(want), "{json}: {err}");
            assert!(!err.contains("MfKQ9r8"), "the secret is not quoted: {err}");
        }
    }

    #[test]
    fn keys_nothing_reads_are_named_and_known_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("listguard.toml");
        std::fs::write(
            &path,
            "[server]\nbind = \"127.0.0.1:1\"\nbnid = \"x\"\n[limts]\nx = 1\n\n[[lists]]\nslug = \"news\"\nname = \"News\"\nconsent_text = \"y\"\nconsent_version = \"1\"\nconsent_txt = \"y\"\n",
        )
        .unwrap();
        let env = vec![
            ("LISTGUARD_MAIL__TRANSPRT".to_string(), "smtp".to_string()),
            (
                "LISTGUARD_LIMITS__SUBSCRIBE_PER_IP_PER_MINUTE".to_string(),
                "5".to_string(),
            ),
        ];
        let c = Config::load_from(Some(&path), env).unwrap();
        assert_eq!(c.server.bind, "127.0.0.1:1");
        assert_eq!(
            c.unknown_keys,
            vec![
                "limts",
                "lists.0.consent_txt",
                "mail.transprt",
                "server.bnid"
            ]
        );
        let clean = Config::load_from(None, Vec::<(String, String)>::new()).unwrap();
        assert!(clean.unknown_keys.is_empty(), "{:?}", clean.unknown_keys);
    }

    #[test]
    fn a_bad_secret_value_is_not_quoted_in_the_error() {
        let vars = vec![(
            "LISTGUARD_SECRETS__TOKEN_KEYS".to_string(),
            "k1:c2VjcmV0LXZhbHVlLXRoYXQtbXVzdC1ub3QtbGVhaw".to_string(),
        )];
        let e = Config::load_from(None, vars).unwrap_err().to_string();
        assert!(e.contains("secrets.token_keys"), "{e}");
        assert!(!e.contains("c2VjcmV0"), "{e}");
    }
}
