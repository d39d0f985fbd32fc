//! HTTP plumbing shared by every route: request ids and access logs, the body
//! size limit, problem+json for every error, `Allow` on 405, security headers
//! and panic safety.
use std::{sync::Arc, time::Instant};

use poem::{Body, Endpoint, IntoResponse, Request, Response, http::StatusCode};
use tracing::Instrument;

use crate::{
    error::{Problem, api_error_from_poem, problem},
    telemetry::redact_path,
};

/// Renders a problem document as a response.
pub fn problem_response(p: &Problem, status: StatusCode) -> Response {
    let body = serde_json::json!({
        "type": p.type_,
        "title": p.title,
        "status": p.status,
        "detail": p.detail,
        "invalid_params": p.invalid_params.as_ref().map(|v| v.iter().map(|i| serde_json::json!({"name": i.name, "reason": i.reason})).collect::<Vec<_>>()),
    });
    let mut obj = body.as_object().cloned().unwrap_or_default();
    obj.retain(|_, v| !v.is_null());
    Response::builder()
        .status(status)
        .content_type("application/problem+json")
        .body(serde_json::Value::Object(obj).to_string())
}

/// Turns any error into a problem response. Errors that already carry a
/// problem document (our handlers' and extractors') keep it.
fn error_response(e: poem::Error) -> Response {
    let api = api_error_from_poem(&e);
    let status = e.status();
    let resp = e.into_response();
    let is_problem = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if is_problem {
        return resp;
    }
    match api {
        crate::error::ApiError::BadRequest(_) if status != StatusCode::BAD_REQUEST => {
            problem_response(&problem(status, None, None), status)
        }
        api => problem_response(&api.problem(), api.status()),
    }
}

/// Which methods each documented path takes, read from the OpenAPI spec, for
/// the `Allow` header of a 405.
#[derive(Debug, Default)]
pub struct AllowTable {
    /// Per route: its segments (`None` for a parameter), its methods and
    /// its template as the spec writes it.
    routes: Vec<(Vec<Option<String>>, String, String)>,
}

impl AllowTable {
    pub fn from_spec(spec_json: &str) -> Self {
        let mut routes = Vec::new();
        let Ok(spec) = serde_json::from_str::<serde_json::Value>(spec_json) else {
            return Self::default();
        };
        if let Some(paths) = spec.get("paths").and_then(|p| p.as_object()) {
            for (path, ops) in paths {
                let segs = path
                    .split('/')
                    .skip(1)
                    .map(|s| (!s.starts_with('{')).then(|| s.to_string()))
                    .collect();
                let mut methods: Vec<String> = ops
                    .as_object()
                    .map(|o| o.keys().map(|k| k.to_ascii_uppercase()).collect())
                    .unwrap_or_default();
                if methods.iter().any(|m| m == "GET") && !methods.iter().any(|m| m == "HEAD") {
                    methods.push("HEAD".into());
                }
                routes.push((segs, methods.join(", "), path.clone()));
            }
        }
        for fixed in ["/openapi.json", "/docs"] {
            routes.push((
                vec![Some(fixed[1..].to_string())],
                "GET, HEAD".into(),
                fixed.into(),
            ));
        }
        Self { routes }
    }

    fn route(&self, path: &str) -> Option<&(Vec<Option<String>>, String, String)> {
        let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        self.routes.iter().find(|(pattern, _, _)| {
            pattern.len() == segs.len()
                && pattern
                    .iter()
                    .zip(&segs)
                    .all(|(p, s)| p.as_deref().is_none_or(|p| p == *s))
        })
    }

    fn allow_for(&self, path: &str) -> Option<&str> {
        self.route(path).map(|(_, m, _)| m.as_str())
    }

    /// The documented template a path matches (`/v1/unsubscribe/{token}`),
    /// or `other`: what metrics may name, never the path itself.
    pub fn template_for(&self, path: &str) -> &str {
        self.route(path).map_or("other", |(_, _, t)| t.as_str())
    }
}

/// Wraps the whole app.
pub struct Plumbing {
    pub max_body: usize,
    /// For the bulk sender calls, which take up to 10,000 addresses.
    pub max_bulk_body: usize,
    pub allow: Arc<AllowTable>,
    /// Whose metrics count the requests.
    pub state: crate::state::AppState,
}

impl Plumbing {
    pub async fn handle<E: Endpoint>(&self, ep: &E, mut req: Request) -> poem::Result<Response> {
        let request_id = req
            .header("x-request-id")
            .filter(|v| v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let span = tracing::info_span!(
            "request",
            request_id = %request_id,
            method = %method,
            path = %redact_path(&path)
        );
        let started = Instant::now();
        let result = async {
            if let Err(resp) = self.limit_body(&mut req).await {
                return resp;
            }
            let resp = match ep.call(req).await {
                Ok(r) => r.into_response(),
                Err(e) => error_response(e),
            };
            self.finish(resp, &path)
        }
        .instrument(span.clone())
        .await;
        let mut resp = result;
        let elapsed = started.elapsed();
        span.in_scope(|| {
            tracing::info!(
                status = resp.status().as_u16(),
                elapsed_ms = elapsed.as_millis() as u64,
                "request finished"
            )
        });
        self.state.metrics.observe_request(
            method.as_str(),
            self.allow.template_for(&path),
            resp.status().as_u16(),
            elapsed,
        );
        if let Ok(v) = request_id.parse() {
            resp.headers_mut().insert("x-request-id", v);
        }
        Ok(resp)
    }

    async fn limit_body(&self, req: &mut Request) -> Result<(), Response> {
        let path = req.uri().path();
        let max = match path {
            "/v1/suppressions/check" | "/v1/unsubscribe-links" => self.max_bulk_body,
            // Mandrill posts up to 1,000 events at once; the handler bounds it.
            _ if path.starts_with("/v1/webhooks/") => {
                crate::api::MAX_WEBHOOK_BODY.max(self.max_body)
            }
            _ => self.max_body,
        };
        let too_large = || {
            problem_response(
                &problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Some(format!("the body may be at most {max} bytes")),
                    None,
                ),
                StatusCode::PAYLOAD_TOO_LARGE,
            )
        };
        if let Some(len) = req
            .header("content-length")
            .and_then(|v| v.parse::<u64>().ok())
            && len > max as u64
        {
            return Err(too_large());
        }
        let body = req.take_body();
        match body.into_bytes_limit(max).await {
            Ok(bytes) => {
                req.set_body(Body::from(bytes));
                Ok(())
            }
            Err(poem::error::ReadBodyError::PayloadTooLarge) => Err(too_large()),
            Err(_) => Err(problem_response(
                &problem(
                    StatusCode::BAD_REQUEST,
                    Some("the body could not be read".into()),
                    None,
                ),
                StatusCode::BAD_REQUEST,
            )),
        }
    }

    fn finish(&self, mut resp: Response, path: &str) -> Response {
        let status = resp.status();
        let bare = resp.headers().get("content-type").is_none();
        if bare && (status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED) {
            resp = problem_response(&problem(status, None, None), status);
        }
        if status == StatusCode::METHOD_NOT_ALLOWED
            && let Some(allow) = self.allow.allow_for(path)
            && let Ok(v) = allow.parse()
        {
            resp.headers_mut().insert("allow", v);
        }
        let is_html = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/html"));
        let h = resp.headers_mut();
        if is_html && !h.contains_key("content-security-policy") {
            h.insert(
                "content-security-policy",
                crate::pages::CSP.parse().expect("static header"),
            );
        }
        h.insert(
            "referrer-policy",
            "no-referrer".parse().expect("static header"),
        );
        h.insert(
            "x-content-type-options",
            "nosniff".parse().expect("static header"),
        );
        resp
    }
}

/// The answer to a panic: a 500 problem with no internals.
pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    problem_response(
        &problem(StatusCode::INTERNAL_SERVER_ERROR, None, None),
        StatusCode::INTERNAL_SERVER_ERROR,
    )
}
