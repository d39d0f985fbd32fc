//! The service's keys: token-signing keys (with key ids, so they can rotate) and
//! the address-hashing key. Configured in production; on the embedded default
//! they are generated once and kept in the database's `settings` table.
use entity::setting;
use sea_orm::{ActiveModelTrait, DatabaseConnection, EntityTrait, Set};
use secrecy::{ExposeSecret, SecretBox};

use crate::{config::Config, crypto, domain::EmailAddress};

/// One token-signing key.
pub struct TokenKey {
    pub kid: String,
    pub key: SecretBox<Vec<u8>>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenKey({}, <redacted>)", self.kid)
    }
}

/// All keys, resolved.
#[derive(Debug)]
pub struct Keys {
    /// The first signs, all verify.
    pub token_keys: Vec<TokenKey>,
    pub hasher: AddressHasher,
    /// True when any key was generated rather than configured.
    pub generated: bool,
}

/// Keyed hashing of addresses: the only identity that reaches logs and the
/// suppression list.
pub struct AddressHasher {
    key: SecretBox<Vec<u8>>,
}

impl std::fmt::Debug for AddressHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AddressHasher(<redacted>)")
    }
}

impl AddressHasher {
    pub fn new(key: Vec<u8>) -> Self {
        Self {
            key: SecretBox::new(Box::new(key)),
        }
    }

    /// Lower-case hex HMAC-SHA256 of the address's comparison key.
    pub fn hash(&self, email: &EmailAddress) -> String {
        hex::encode(self.digest(email))
    }

    /// The same hash as raw bytes.
    pub fn digest(&self, email: &EmailAddress) -> [u8; 32] {
        crypto::hmac_sha256(self.key.expose_secret(), email.key().as_bytes())
    }
}

/// The first 12 hex digits of an address hash: what log lines carry.
pub fn log_id(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

const MIN_KEY_BYTES: usize = 32;

/// Parses one `kid:base64key` entry.
pub fn parse_token_key(entry: &str) -> anyhow::Result<TokenKey> {
    let (kid, b64) = entry
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("secrets.token_keys entries look like kid:base64key"))?;
    if kid.is_empty()
        || kid.len() > 32
        || !kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        anyhow::bail!("secrets.token_keys: a key id is 1 to 32 of A-Z a-z 0-9 - _");
    }
    let key = crypto::b64_std_decode(b64)
        .ok_or_else(|| anyhow::anyhow!("secrets.token_keys: key {kid:?} is not standard base64"))?;
    if key.len() < MIN_KEY_BYTES {
        anyhow::bail!("secrets.token_keys: key {kid:?} is shorter than 32 bytes");
    }
    Ok(TokenKey {
        kid: kid.to_string(),
        key: SecretBox::new(Box::new(key)),
    })
}

fn parse_hash_key(b64: &str) -> anyhow::Result<Vec<u8>> {
    let key = crypto::b64_std_decode(b64)
        .ok_or_else(|| anyhow::anyhow!("secrets.hash_key is not standard base64"))?;
    if key.len() < MIN_KEY_BYTES {
        anyhow::bail!("secrets.hash_key is shorter than 32 bytes");
    }
    Ok(key)
}

/// A fresh `kid:base64key` entry and a fresh hash key (`listguard keys generate`).
pub fn generate() -> (String, String) {
    let kid = format!("k{}", chrono::Utc::now().format("%Y%m%d"));
    (
        format!(
            "{kid}:{}",
            crypto::b64_std_encode(&crypto::random_bytes(32))
        ),
        crypto::b64_std_encode(&crypto::random_bytes(32)),
    )
}

const SETTING_TOKEN_KEY: &str = "generated_token_key";
const SETTING_HASH_KEY: &str = "generated_hash_key";

/// Resolves the keys: configuration first, else generated ones from the database
/// (created on first use). The caller has already refused generated keys in
/// production mode.
pub async fn load(config: &Config, db: &DatabaseConnection) -> anyhow::Result<Keys> {
    let mut generated = false;
    let token_keys = if config.secrets.token_keys.is_empty() {
        generated = true;
        let (entry, _) = generate();
        let entry = get_or_create(db, SETTING_TOKEN_KEY, &entry).await?;
        vec![parse_token_key(&entry)?]
    } else {
        config
            .secrets
            .token_keys
            .iter()
            .map(|k| parse_token_key(k.expose_secret()))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let mut kids = std::collections::HashSet::new();
    for k in &token_keys {
        if !kids.insert(k.kid.as_str()) {
            anyhow::bail!("secrets.token_keys: key id {:?} appears twice", k.kid);
        }
    }
    let hash_key = match &config.secrets.hash_key {
        Some(k) => parse_hash_key(k.expose_secret())?,
        None => {
            generated = true;
            let (_, fresh) = generate();
            parse_hash_key(&get_or_create(db, SETTING_HASH_KEY, &fresh).await?)?
        }
    };
    if generated {
        tracing::warn!(
            "using generated secrets kept in the database; set secrets.token_keys and secrets.hash_key for production (`listguard keys generate`)"
        );
    }
    Ok(Keys {
        token_keys,
        hasher: AddressHasher::new(hash_key),
        generated,
    })
}

/// Reads a setting, inserting `fresh` when absent. Two replicas starting at
/// once both end up with the row that won the insert.
async fn get_or_create(db: &DatabaseConnection, key: &str, fresh: &str) -> anyhow::Result<String> {
    if let Some(row) = setting::Entity::find_by_id(key.to_string()).one(db).await? {
        return Ok(row.value);
    }
    let insert = setting::ActiveModel {
        key: Set(key.to_string()),
        value: Set(fresh.to_string()),
    }
    .insert(db)
    .await;
    if let Err(e) = insert {
        tracing::debug!(error = %e, "setting insert lost a race; reading the winner");
    }
    setting::Entity::find_by_id(key.to_string())
        .one(db)
        .await?
        .map(|r| r.value)
        .ok_or_else(|| anyhow::anyhow!("could not store generated secret {key}"))
}
