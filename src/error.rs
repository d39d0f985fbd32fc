//! One error type and one status mapping. Every error leaves as RFC 9457
//! `application/problem+json`; internal causes are logged with their chain and
//! never sent to the client.
use poem::http::StatusCode;
use poem_openapi::{ApiResponse, Object, payload::Json};

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Object)]
pub struct Problem {
    /// A URI reference naming the problem type.
    #[oai(rename = "type")]
    pub type_: String,
    /// Short summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request.
    #[oai(skip_serializing_if_is_none)]
    pub detail: Option<String>,
    /// The invalid fields, for validation errors.
    #[oai(skip_serializing_if_is_none)]
    pub invalid_params: Option<Vec<InvalidParam>>,
}

/// One invalid field.
#[derive(Debug, Clone, Object)]
pub struct InvalidParam {
    /// The field's name as sent.
    pub name: String,
    /// Why it was refused.
    pub reason: String,
}

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("field {field}: {reason}")]
    Validation { field: String, reason: String },
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("missing or invalid credentials")]
    Unauthorized,
    #[error("this key may not do that")]
    Forbidden,
    #[error("not found")]
    NotFound,
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("unsupported media type")]
    UnsupportedMediaType(String),
    #[error("too many requests")]
    RateLimited { retry_after_secs: u64 },
    #[error("service unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(e: sea_orm::DbErr) -> Self {
        Self::Internal(e.into())
    }
}

impl ApiError {
    pub fn validation(field: &str, reason: impl Into<String>) -> Self {
        Self::Validation {
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    /// A copy for the client's eyes (internal causes are not copied).
    pub fn clone_public(&self) -> Self {
        match self {
            Self::Validation { field, reason } => Self::validation(field, reason.clone()),
            Self::BadRequest(d) => Self::BadRequest(d.clone()),
            Self::Unauthorized => Self::Unauthorized,
            Self::Forbidden => Self::Forbidden,
            Self::NotFound => Self::NotFound,
            Self::PayloadTooLarge => Self::PayloadTooLarge,
            Self::UnsupportedMediaType(d) => Self::UnsupportedMediaType(d.clone()),
            Self::RateLimited { retry_after_secs } => Self::RateLimited {
                retry_after_secs: *retry_after_secs,
            },
            Self::Unavailable(d) => Self::Unavailable(d.clone()),
            Self::Internal(_) => Self::Internal(anyhow::anyhow!("internal error")),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Validation { .. } | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The problem document; for internal errors, logs the cause instead of
    /// sending it.
    pub fn problem(&self) -> Problem {
        let status = self.status();
        let (detail, invalid) = match self {
            Self::Validation { field, reason } => (
                Some(format!("{field} {reason}")),
                Some(vec![InvalidParam {
                    name: field.clone(),
                    reason: reason.clone(),
                }]),
            ),
            Self::BadRequest(d) | Self::UnsupportedMediaType(d) | Self::Unavailable(d) => {
                (Some(d.clone()), None)
            }
            Self::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                (None, None)
            }
            _ => (None, None),
        };
        problem(status, detail, invalid)
    }
}

/// Builds a problem document for `status`.
pub fn problem(
    status: StatusCode,
    detail: Option<String>,
    invalid_params: Option<Vec<InvalidParam>>,
) -> Problem {
    let slug = match status.as_u16() {
        400 => "bad-request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not-found",
        405 => "method-not-allowed",
        410 => "gone",
        413 => "payload-too-large",
        415 => "unsupported-media-type",
        429 => "too-many-requests",
        503 => "unavailable",
        _ if status.is_server_error() => "internal",
        _ => "error",
    };
    Problem {
        type_: format!("https://listguard.dev/problems/{slug}"),
        title: status.canonical_reason().unwrap_or("Error").to_string(),
        status: status.as_u16(),
        detail,
        invalid_params,
    }
}

/// The error half of every operation's result, so that errors show in the spec.
#[derive(Debug, ApiResponse)]
#[oai(bad_request_handler = "from_poem_error")]
pub enum ErrorResponse {
    /// The request is malformed; the field is named.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// Missing or invalid API key.
    #[oai(status = 401, content_type = "application/problem+json")]
    Unauthorized(Json<Problem>),
    /// The API key's scope does not allow this.
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
    /// Nothing there.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// The body is larger than the service accepts.
    #[oai(status = 413, content_type = "application/problem+json")]
    PayloadTooLarge(Json<Problem>),
    /// The body's content type is not one this operation takes.
    #[oai(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(Json<Problem>),
    /// Too many requests; try again after `Retry-After` seconds.
    #[oai(status = 429, content_type = "application/problem+json")]
    TooManyRequests(Json<Problem>, #[oai(header = "Retry-After")] u64),
    /// An unexpected fault; the body holds no internals.
    #[oai(status = 500, content_type = "application/problem+json")]
    Internal(Json<Problem>),
    /// A service this request depends on is unavailable.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>),
}

impl From<ApiError> for ErrorResponse {
    fn from(e: ApiError) -> Self {
        let p = Json(e.problem());
        match e {
            ApiError::Validation { .. } | ApiError::BadRequest(_) => Self::BadRequest(p),
            ApiError::Unauthorized => Self::Unauthorized(p),
            ApiError::Forbidden => Self::Forbidden(p),
            ApiError::NotFound => Self::NotFound(p),
            ApiError::PayloadTooLarge => Self::PayloadTooLarge(p),
            ApiError::UnsupportedMediaType(_) => Self::UnsupportedMediaType(p),
            ApiError::RateLimited { retry_after_secs } => {
                Self::TooManyRequests(p, retry_after_secs)
            }
            ApiError::Unavailable(_) => Self::Unavailable(p),
            ApiError::Internal(_) => Self::Internal(p),
        }
    }
}

impl From<sea_orm::DbErr> for ErrorResponse {
    fn from(e: sea_orm::DbErr) -> Self {
        ApiError::from(e).into()
    }
}

impl From<anyhow::Error> for ErrorResponse {
    fn from(e: anyhow::Error) -> Self {
        ApiError::from(e).into()
    }
}

/// Maps an extractor failure (bad JSON, wrong content type, a bad parameter)
/// to a problem document.
pub fn api_error_from_poem(err: &poem::Error) -> ApiError {
    use poem_openapi::error::{
        ContentTypeError, ParseMultipartError, ParseParamError, ParseRequestPayloadError,
    };
    if let Some(e) = err.downcast_ref::<ApiError>() {
        return e.clone_public();
    }
    if err.is::<ContentTypeError>() {
        return ApiError::UnsupportedMediaType(err.to_string());
    }
    if let Some(e) = err.downcast_ref::<ParseParamError>() {
        return ApiError::validation(e.name, e.reason.clone());
    }
    if let Some(e) = err.downcast_ref::<ParseRequestPayloadError>() {
        if let Some(field) = field_in(&e.reason) {
            return ApiError::validation(&field, "has the wrong type or format");
        }
        return ApiError::BadRequest(format!(
            "the body cannot be parsed: {}",
            first_line(&e.reason)
        ));
    }
    if err.is::<ParseMultipartError>() {
        return ApiError::BadRequest("the multipart body cannot be parsed".into());
    }
    match err.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(err.to_string()),
        StatusCode::UNAUTHORIZED => ApiError::Unauthorized,
        StatusCode::FORBIDDEN => ApiError::Forbidden,
        StatusCode::NOT_FOUND => ApiError::NotFound,
        s if s.is_client_error() => ApiError::BadRequest(err.to_string()),
        _ => ApiError::Internal(anyhow::anyhow!("{err}")),
    }
}

pub fn from_poem_error(err: poem::Error) -> ErrorResponse {
    api_error_from_poem(&err).into()
}

/// poem-openapi names the offending field as `(occurred while parsing "x")`
/// or `field `x``; pull it out so the problem can name it.
fn field_in(reason: &str) -> Option<String> {
    for (open, close) in [("field `", '`'), ("parsing \"", '"')] {
        if let Some(i) = reason.rfind(open) {
            let rest = &reason[i + open.len()..];
            if let Some(j) = rest.find(close) {
                let f = &rest[..j];
                if !f.is_empty()
                    && f.len() < 64
                    && f.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Some(f.to_string());
                }
            }
        }
    }
    None
}

/// Parser messages can quote input; keep them short and single-line.
fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    line.chars().take(120).collect()
}

impl poem::error::ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        ApiError::status(self)
    }

    fn as_response(&self) -> poem::Response {
        crate::http::problem_response(&self.problem(), ApiError::status(self))
    }
}
