//! Optional captcha verification (Cloudflare Turnstile or hCaptcha), by POSTing
//! the token to the provider's `siteverify` endpoint.
use std::net::IpAddr;

use secrecy::ExposeSecret;
use serde::Deserialize;

use crate::{config::CaptchaProvider, error::ApiError, state::State};

#[derive(Deserialize)]
struct VerifyResponse {
    success: bool,
}

fn default_url(p: CaptchaProvider) -> Option<&'static str> {
    match p {
        CaptchaProvider::None => None,
        CaptchaProvider::Turnstile => {
            Some("https://challenges.cloudflare.com/turnstile/v0/siteverify")
        }
        CaptchaProvider::Hcaptcha => Some("https://api.hcaptcha.com/siteverify"),
    }
}

/// Passes when no captcha is configured or the provider accepts the token.
pub async fn verify(
    state: &State,
    token: Option<&str>,
    ip: Option<IpAddr>,
) -> Result<(), ApiError> {
    let cfg = &state.config.captcha;
    let Some(default) = default_url(cfg.provider) else {
        return Ok(());
    };
    let token = token
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 4096)
        .ok_or_else(|| ApiError::validation("captcha_token", "is required"))?;
    let url = cfg.verify_url.as_deref().unwrap_or(default);
    let secret = cfg
        .secret
        .as_ref()
        .map(|s| s.expose_secret().to_string())
        .unwrap_or_default();
    let mut form = vec![("secret", secret), ("response", token.to_string())];
    if let Some(ip) = ip {
        form.push(("remoteip", ip.to_string()));
    }
    let resp = state.http.post(url).form(&form).send().await.map_err(|e| {
        tracing::warn!(error = %e.without_url(), "captcha verification unreachable");
        ApiError::Unavailable("captcha verification is unavailable".into())
    })?;
    if !resp.status().is_success() {
        tracing::warn!(status = %resp.status(), "captcha verification failed");
        return Err(ApiError::Unavailable(
            "captcha verification is unavailable".into(),
        ));
    }
    let body: VerifyResponse = resp
        .json()
        .await
        .map_err(|_| ApiError::Unavailable("captcha verification gave no answer".into()))?;
    if body.success {
        Ok(())
    } else {
        Err(ApiError::validation("captcha_token", "was not accepted"))
    }
}
