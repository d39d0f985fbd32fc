//! Request helpers shared by handlers.
use std::collections::HashMap;

use poem::{FromRequest, Request, RequestBody};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ExtractParamOptions,
    registry::{MetaMediaType, MetaRequest, MetaSchemaRef, Registry},
    types::Type,
};

use crate::{error::ApiError, services::RequestContext};

/// The fields of an optional body sent as `application/x-www-form-urlencoded`,
/// `multipart/form-data` or a JSON object of strings; no body gives no fields.
/// `S` only names the schema shown in the spec.
pub struct FormFields<S> {
    pub fields: HashMap<String, String>,
    _schema: std::marker::PhantomData<S>,
}

impl<S> FormFields<S> {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

const MAX_FIELDS: usize = 32;

async fn read_fields(
    req: &Request,
    body: &mut RequestBody,
) -> poem::Result<HashMap<String, String>> {
    let Some(ct) = req.content_type() else {
        // No content type: only an empty body is acceptable.
        let bytes = <Vec<u8> as FromRequest>::from_request(req, body).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(HashMap::new());
        }
        return Err(
            ApiError::UnsupportedMediaType("a body needs a content type".into()).into_poem(),
        );
    };
    let mime: mime::Mime = ct.parse().map_err(|_| {
        ApiError::UnsupportedMediaType("unreadable content type".into()).into_poem()
    })?;
    match (mime.type_().as_str(), mime.subtype().as_str()) {
        ("application", "x-www-form-urlencoded") => {
            let bytes = <Vec<u8> as FromRequest>::from_request(req, body).await?;
            let pairs: Vec<(String, String)> =
                serde_urlencoded::from_bytes(&bytes).map_err(|_| {
                    ApiError::BadRequest("the form body cannot be parsed".into()).into_poem()
                })?;
            Ok(pairs.into_iter().take(MAX_FIELDS).collect())
        }
        ("multipart", "form-data") => {
            let boundary = mime
                .get_param("boundary")
                .map(|b| b.as_str().to_string())
                .ok_or_else(|| {
                    ApiError::BadRequest("the multipart body has no boundary".into()).into_poem()
                })?;
            let bytes = <Vec<u8> as FromRequest>::from_request(req, body).await?;
            match parse_multipart(&bytes, &boundary).await {
                Some(fields) if !fields.is_empty() => Ok(fields),
                _ => lenient_multipart(&bytes, &boundary).ok_or_else(|| {
                    ApiError::BadRequest("the multipart body cannot be parsed".into()).into_poem()
                }),
            }
        }
        ("application", "json") => {
            let bytes = <Vec<u8> as FromRequest>::from_request(req, body).await?;
            let v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes)
                .map_err(|_| {
                    ApiError::BadRequest("the body is not a JSON object".into()).into_poem()
                })?;
            Ok(v.into_iter()
                .take(MAX_FIELDS)
                .filter_map(|(k, v)| match v {
                    serde_json::Value::String(s) => Some((k, s)),
                    serde_json::Value::Bool(b) => Some((k, b.to_string())),
                    _ => None,
                })
                .collect())
        }
        _ => Err(ApiError::UnsupportedMediaType(format!(
            "content type {}/{} is not accepted here",
            mime.type_(),
            mime.subtype()
        ))
        .into_poem()),
    }
}

/// A multipart body parsed by multer.
async fn parse_multipart(bytes: &[u8], boundary: &str) -> Option<HashMap<String, String>> {
    let data = bytes::Bytes::copy_from_slice(bytes);
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(data) });
    let mut mp = multer::Multipart::new(stream, boundary);
    let mut out = HashMap::new();
    loop {
        let field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(_) => return None,
        };
        if out.len() >= MAX_FIELDS {
            break;
        }
        let Some(name) = field.name().map(str::to_string) else {
            continue;
        };
        out.insert(name, field.text().await.ok()?);
    }
    Some(out)
}

/// The example body of RFC 8058 §8.3 uses the boundary parameter itself as the
/// delimiter line, without the leading `--` that RFC 2046 requires (its errata
/// corrects the example). Mail providers copied both forms, so both are read.
fn lenient_multipart(bytes: &[u8], boundary: &str) -> Option<HashMap<String, String>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let dashed = format!("--{boundary}");
    let is_delimiter = |line: &str| {
        let l = line.trim_end();
        let l = l.strip_suffix("--").unwrap_or(l);
        l == boundary || l == dashed
    };
    let mut out = HashMap::new();
    let mut part: Option<Vec<&str>> = None;
    for line in text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)) {
        if is_delimiter(line) {
            if let Some(lines) = part.take()
                && let Some((name, value)) = read_part(&lines)
            {
                out.insert(name, value);
            }
            part = Some(Vec::new());
        } else if let Some(lines) = part.as_mut() {
            lines.push(line);
        }
        if out.len() >= MAX_FIELDS {
            break;
        }
    }
    (!out.is_empty()).then_some(out)
}

/// One part: headers, a blank line, the value.
fn read_part(lines: &[&str]) -> Option<(String, String)> {
    // `str::is_empty` spelled out: poem-openapi's `Type` trait, in scope here,
    // has an `is_empty` of its own that `&&str` would resolve to.
    let blank = lines.iter().position(|l| str::is_empty(l))?;
    let name = lines[..blank].iter().find_map(|h| {
        let (k, v) = h.split_once(':')?;
        if !k.trim().eq_ignore_ascii_case("content-disposition") {
            return None;
        }
        v.split(';').find_map(|p| {
            p.trim()
                .strip_prefix("name=")
                .map(|n| n.trim_matches('"').to_string())
        })
    })?;
    Some((name, lines[blank + 1..].join("\r\n").trim_end().to_string()))
}

impl<'a, S: Type> ApiExtractor<'a> for FormFields<S> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        S::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        let schema: MetaSchemaRef = S::schema_ref();
        Some(MetaRequest {
            description: None,
            content: vec![
                MetaMediaType {
                    content_type: "application/x-www-form-urlencoded",
                    schema: schema.clone(),
                },
                MetaMediaType {
                    content_type: "multipart/form-data",
                    schema: schema.clone(),
                },
                MetaMediaType {
                    content_type: "application/json",
                    schema,
                },
            ],
            required: false,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        Ok(Self {
            fields: read_fields(request, body).await?,
            _schema: std::marker::PhantomData,
        })
    }
}

impl ApiError {
    /// For extractors, which must return `poem::Error`; the error stays
    /// downcastable, so the problem document keeps its detail.
    pub fn into_poem(self) -> poem::Error {
        poem::Error::from(self)
    }
}

/// The client's IP and user agent, for the consent record.
pub fn client_context(req: &Request) -> RequestContext {
    RequestContext {
        ip: client_ip(req).map(|ip| ip.to_string()),
        user_agent: req
            .header("user-agent")
            .map(|ua| ua.chars().take(512).collect()),
    }
}

/// The client's address: the peer's, or, when the peer is a trusted proxy
/// (`server.trusted_proxies`), the right-most `X-Forwarded-For` entry that is
/// not itself a trusted proxy. A client cannot forge it by sending the
/// header: entries left of the first untrusted one are never read.
pub fn client_ip(req: &Request) -> Option<std::net::IpAddr> {
    let peer = req.remote_addr().as_socket_addr().map(|a| a.ip())?;
    let trusted = req
        .data::<crate::state::AppState>()
        .map(|s| s.config.server.trusted_proxies.as_slice())
        .unwrap_or_default();
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let mut hops = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    hops.reverse();
    for hop in hops {
        match hop.parse::<std::net::IpAddr>() {
            Ok(ip) if trusted.contains(&ip) => continue,
            Ok(ip) => return Some(ip),
            // Garbage where an address should be: trust nothing beyond it.
            Err(_) => break,
        }
    }
    Some(peer)
}

/// A browser form post: `Accept` names `text/html` explicitly.
pub fn wants_html(req: &Request) -> bool {
    req.header("accept")
        .is_some_and(|a| a.split(',').any(|p| p.trim().starts_with("text/html")))
}

/// The client asked for JSON (by `Accept`, or by sending JSON) and not HTML.
pub fn wants_json(req: &Request) -> bool {
    let accept_json = req.header("accept").is_some_and(|a| {
        a.split(',')
            .any(|p| p.trim().starts_with("application/json"))
    });
    let sent_json = req
        .content_type()
        .is_some_and(|c| c.starts_with("application/json"));
    (accept_json || sent_json) && !wants_html(req)
}

/// A JSON body whose type errors name the offending field (serde_path_to_error),
/// so that the problem document can say which field was wrong.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: Type + Send> poem_openapi::payload::Payload for JsonBody<T> {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn check_content_type(content_type: &str) -> bool {
        matches!(content_type.parse::<mime::Mime>(), Ok(m) if m.type_() == "application"
            && (m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json")))
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

/// The path of a required field that the body left out, from serde's
/// "missing field `name`" (reported at the object that lacks it).
fn missing_field(err: &serde_json::Error, path: &str) -> Option<String> {
    if !err.is_data() {
        return None;
    }
    let msg = err.to_string();
    let name = msg.strip_prefix("missing field `")?.split('`').next()?;
    Some(match path {
        "" | "." => name.to_string(),
        parent => format!("{parent}.{name}"),
    })
}

impl<T: serde::de::DeserializeOwned + Send> poem_openapi::payload::ParsePayload for JsonBody<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let bytes = <Vec<u8> as FromRequest>::from_request(request, body).await?;
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        match serde_path_to_error::deserialize::<_, T>(de) {
            Ok(v) => Ok(Self(v)),
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let err = if let Some(field) = missing_field(&inner, &path) {
                    ApiError::validation(&field, "is required")
                } else if inner.is_data()
                    && path != "."
                    && !path.is_empty()
                    && !path.starts_with('[')
                {
                    ApiError::validation(&path, "has the wrong type")
                } else if inner.is_eof() || inner.is_syntax() {
                    ApiError::BadRequest(format!(
                        "the body is not valid JSON (line {}, column {})",
                        inner.line(),
                        inner.column()
                    ))
                } else {
                    ApiError::BadRequest("the body is not the expected JSON object".into())
                };
                Err(err.into_poem())
            }
        }
    }
}

impl<'a, T: Type + serde::de::DeserializeOwned + Send> ApiExtractor<'a> for JsonBody<T> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: <Self as poem_openapi::payload::Payload>::CONTENT_TYPE,
                schema: T::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        use poem_openapi::payload::{ParsePayload, Payload};
        match request.content_type() {
            Some(ct) if <Self as Payload>::check_content_type(ct) => {
                <Self as ParsePayload>::from_request(request, body).await
            }
            Some(_) => Err(ApiError::UnsupportedMediaType(
                "this operation takes application/json".into(),
            )
            .into_poem()),
            None => Err(ApiError::UnsupportedMediaType(
                "a JSON body with Content-Type: application/json is required".into(),
            )
            .into_poem()),
        }
    }
}

/// The per-IP limit on requests that send mail (signups, privacy requests):
/// 429 with a Retry-After past it.
pub fn check_ip_limit(state: &crate::state::State, req: &Request) -> Result<(), ApiError> {
    let Some(ip) = client_ip(req) else {
        return Ok(());
    };
    state.ip_limiter.check_key(&ip).map_err(|not_until| {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        ApiError::RateLimited {
            retry_after_secs: wait.as_secs().max(1),
        }
    })
}

/// The language of a page or mail: `?lang=`, else `Accept-Language`, else
/// `org.default_locale`.
pub fn page_locale(
    state: &crate::state::State,
    req: &Request,
    lang: Option<&str>,
) -> crate::i18n::Locale {
    crate::i18n::Locale::negotiate(
        lang,
        req.header("accept-language"),
        &state.config.org.default_locale,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_BODY: &str = "---FormBoundaryjWmhtjORrn\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n---FormBoundaryjWmhtjORrn--\r\n";
    const ERRATA_BODY: &str = "-----FormBoundaryjWmhtjORrn\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n-----FormBoundaryjWmhtjORrn--\r\n";

    #[tokio::test]
    async fn reads_both_boundary_forms_of_rfc_8058() {
        let b = "---FormBoundaryjWmhtjORrn";
        let errata = parse_multipart(ERRATA_BODY.as_bytes(), b).await.unwrap();
        assert_eq!(
            errata.get("List-Unsubscribe").map(String::as_str),
            Some("One-Click")
        );
        let original = lenient_multipart(RFC_BODY.as_bytes(), b).unwrap();
        assert_eq!(
            original.get("List-Unsubscribe").map(String::as_str),
            Some("One-Click")
        );
    }
}

/// A JSON response serialised by serde straight into the body, for answers
/// too large to go through poem-openapi's intermediate `serde_json::Value`
/// (the bulk check's 10,000 results). The schema is still `T`'s; `T`'s serde
/// derive must spell the same fields (dates as RFC 3339 via [`rfc3339`]).
#[derive(Debug)]
pub struct SerdeJson<T>(pub T);

const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

impl<T: Type + Send> poem_openapi::payload::Payload for SerdeJson<T> {
    const CONTENT_TYPE: &'static str = JSON_CONTENT_TYPE;

    fn check_content_type(content_type: &str) -> bool {
        <JsonBody<T> as poem_openapi::payload::Payload>::check_content_type(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: serde::Serialize + Send> poem::IntoResponse for SerdeJson<T> {
    fn into_response(self) -> poem::Response {
        match serde_json::to_vec(&self.0) {
            Ok(body) => poem::Response::builder()
                .content_type(JSON_CONTENT_TYPE)
                .body(body),
            Err(_) => poem::Response::builder()
                .status(poem::http::StatusCode::INTERNAL_SERVER_ERROR)
                .finish(),
        }
    }
}

/// Dates in serde output as poem-openapi writes them (`to_rfc3339`), so that
/// a [`SerdeJson`] answer reads like every other.
pub mod rfc3339 {
    use chrono::{DateTime, Utc};

    pub fn option<S: serde::Serializer>(
        value: &Option<DateTime<Utc>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_str(&d.to_rfc3339()),
            None => s.serialize_none(),
        }
    }
}
