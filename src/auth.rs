//! API keys: `Authorization: Bearer <key>`, checked against the configured
//! SHA-256 of each key in constant time. Scope `admin` may do everything,
//! `sender` only the two sender calls.
use poem::Request;
use poem_openapi::{SecurityScheme, auth::Bearer};

use crate::{
    config::ApiScope,
    crypto::{ct_eq, sha256_hex},
    error::ApiError,
    state::AppState,
};

/// Who called.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    pub scope: ApiScope,
}

/// An API key (`Authorization: Bearer <key>`).
#[derive(SecurityScheme)]
#[oai(ty = "bearer", checker = "check_key")]
pub struct ApiKey(pub Principal);

async fn check_key(req: &Request, bearer: Bearer) -> Option<Principal> {
    let state = req.data::<AppState>()?;
    let presented = sha256_hex(bearer.token.trim().as_bytes());
    state
        .config
        .api_keys
        .iter()
        .find(|k| {
            ct_eq(
                k.key_sha256.to_ascii_lowercase().as_bytes(),
                presented.as_bytes(),
            )
        })
        .map(|k| Principal {
            name: k.name.clone(),
            scope: k.scope,
        })
}

impl ApiKey {
    /// Admin keys only.
    pub fn admin(&self) -> Result<&Principal, ApiError> {
        match self.0.scope {
            ApiScope::Admin => Ok(&self.0),
            ApiScope::Sender => Err(ApiError::Forbidden),
        }
    }

    /// Sender or admin keys.
    pub fn sender(&self) -> Result<&Principal, ApiError> {
        Ok(&self.0)
    }
}
