//! Unsubscribe tokens: `v1.<kid>.<list>.<hash>.<sig>`, where `hash` is the keyed
//! address hash (no readable personal data) and `sig` an HMAC-SHA256 over a
//! purpose label, the list and the hash, under the key named by `kid`. They never
//! expire and need no database row, so they work after the subscriber is gone;
//! the signature binds the list, so a token cannot be turned into another list's.
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use secrecy::ExposeSecret;

use crate::{crypto, secrets::TokenKey};

const PURPOSE: &[u8] = b"listguard/unsubscribe/v1";
const VERSION: &str = "v1";

/// A verified token's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubscribeToken {
    pub list: String,
    /// Lower-case hex of the keyed address hash.
    pub email_hash: String,
}

fn mac(key: &TokenKey, list: &str, hash: &[u8]) -> [u8; 32] {
    let mut msg = Vec::with_capacity(PURPOSE.len() + list.len() + hash.len() + 2);
    msg.extend_from_slice(PURPOSE);
    msg.push(0);
    msg.extend_from_slice(list.as_bytes());
    msg.push(0);
    msg.extend_from_slice(hash);
    crypto::hmac_sha256(key.key.expose_secret(), &msg)
}

impl UnsubscribeToken {
    /// Signs with `key` (the first configured key).
    pub fn sign(&self, key: &TokenKey) -> String {
        let hash = hex::decode(&self.email_hash).expect("address hashes are hex");
        let sig = mac(key, &self.list, &hash);
        format!(
            "{VERSION}.{}.{}.{}.{}",
            key.kid,
            self.list,
            URL_SAFE_NO_PAD.encode(&hash),
            URL_SAFE_NO_PAD.encode(sig)
        )
    }

    /// Verifies against every configured key; `None` for anything that does not
    /// verify (bad shape, unknown key id, wrong signature).
    pub fn verify(token: &str, keys: &[TokenKey]) -> Option<Self> {
        if token.len() > 256 {
            return None;
        }
        let mut parts = token.split('.');
        let (v, kid, list, hash, sig) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        if parts.next().is_some() || v != VERSION {
            return None;
        }
        let key = keys.iter().find(|k| k.kid == kid)?;
        let hash = URL_SAFE_NO_PAD.decode(hash).ok()?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        if hash.len() != 32 {
            return None;
        }
        let expected = mac(key, list, &hash);
        crypto::ct_eq(&expected, &sig).then(|| Self {
            list: list.to_string(),
            email_hash: hex::encode(hash),
        })
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretBox;

    use super::*;

    fn key(kid: &str, byte: u8) -> TokenKey {
        TokenKey {
            kid: kid.into(),
            key: SecretBox::new(Box::new(vec![byte; 32])),
        }
    }

    fn token() -> UnsubscribeToken {
        UnsubscribeToken {
            list: "newsletter".into(),
            email_hash: "ab".repeat(32),
        }
    }

    #[test]
    fn round_trips_and_verifies_with_an_older_key() {
        let old = key("old", 1);
        let t = token().sign(&old);
        assert_eq!(
            UnsubscribeToken::verify(&t, &[key("new", 2), key("old", 1)]),
            Some(token())
        );
    }

    #[test]
    fn refuses_tampering() {
        let k = key("k1", 1);
        let t = token().sign(&k);
        let keys = [key("k1", 1)];
        // one character changed, anywhere
        for i in 0..t.len() {
            let mut b = t.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            if let Ok(s) = String::from_utf8(b)
                && s != t
            {
                assert_eq!(UnsubscribeToken::verify(&s, &keys), None, "{s}");
            }
        }
        // list swapped
        let other = t.replacen(".newsletter.", ".other.", 1);
        assert_eq!(UnsubscribeToken::verify(&other, &keys), None);
        // unknown key id
        assert_eq!(UnsubscribeToken::verify(&t, &[key("k2", 1)]), None);
        assert_eq!(UnsubscribeToken::verify("", &keys), None);
        assert_eq!(UnsubscribeToken::verify("v1.k1", &keys), None);
    }

    #[test]
    fn carries_no_readable_address() {
        let t = token().sign(&key("k", 1));
        assert!(!t.contains('@'));
    }
}
