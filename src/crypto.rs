//! Small cryptographic helpers shared by tokens, hashing and webhooks.
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

pub type HmacSha256 = Hmac<Sha256>;

/// Lower-case hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// HMAC-SHA256 of `data` under `key`.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// `n` random bytes from the OS generator.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut v);
    v
}

/// A random, URL-safe token with 256 bits of entropy.
pub fn random_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(32))
}

/// Constant-time equality.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

pub fn b64_std_decode(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()
}

pub fn b64_std_encode(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Seals `plain` under a key derived from `token` (AES-256-GCM, random
/// nonce): only the holder of the token can open it. Standard base64.
pub fn seal_with_token(token: &str, plain: &str) -> String {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let key =
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &token_key(token)).expect("a 32-byte key"));
    let nonce_bytes: [u8; 12] = random_bytes(12).try_into().expect("12 bytes");
    let mut data = plain.as_bytes().to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce_bytes),
        Aad::empty(),
        &mut data,
    )
    .expect("sealing in memory does not fail");
    let mut out = nonce_bytes.to_vec();
    out.extend(data);
    b64_std_encode(&out)
}

/// Opens what [`seal_with_token`] sealed; `None` for a wrong token or
/// tampered data.
pub fn open_with_token(token: &str, sealed: &str) -> Option<String> {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let raw = b64_std_decode(sealed)?;
    if raw.len() < 12 {
        return None;
    }
    let (nonce, rest) = raw.split_at(12);
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &token_key(token)).ok()?);
    let mut data = rest.to_vec();
    let plain = key
        .open_in_place(
            Nonce::try_assume_unique_for_key(nonce).ok()?,
            Aad::empty(),
            &mut data,
        )
        .ok()?;
    String::from_utf8(plain.to_vec()).ok()
}

/// The sealing key of a token: a purpose-bound HMAC of it.
fn token_key(token: &str) -> [u8; 32] {
    hmac_sha256(token.as_bytes(), b"listguard privacy-request address")
}

#[cfg(test)]
mod sealing_tests {
    use super::*;

    #[test]
    fn only_the_token_opens_what_it_sealed() {
        let t = random_token();
        let sealed = seal_with_token(&t, "ada@example.org");
        assert!(!sealed.contains("ada"));
        assert_eq!(
            open_with_token(&t, &sealed).as_deref(),
            Some("ada@example.org")
        );
        assert_eq!(open_with_token(&random_token(), &sealed), None);
        let mut tampered = b64_std_decode(&sealed).unwrap();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(open_with_token(&t, &b64_std_encode(&tampered)), None);
    }
}
