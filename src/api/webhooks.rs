//! Inbound webhooks: Mailchimp audience events at a signed URL, and Mandrill
//! (Mailchimp Transactional) events signed with `X-Mandrill-Signature`. The
//! handlers check the signature, parse, and hand over to
//! `services::webhooks`; every delivery is one transaction, well inside
//! Mailchimp's 10 s.
use poem::{Request, RequestBody};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ApiResponse, ExtractParamOptions, Object, OpenApi, Tags,
    param::{Header, Path},
    payload::Json,
    registry::{MetaMediaType, MetaRequest, Registry},
    types::Type,
};

use crate::{
    config::ListConfig,
    error::{ApiError, ErrorResponse},
    mailchimp::webhook::{
        FieldError, parse_audience, parse_mandrill, verify_audience_signature, verify_mandrill,
    },
    services::webhooks::{self, Outcome},
    state::AppState,
};

/// The inbound webhooks' endpoints.
pub struct WebhooksApi {
    pub state: AppState,
}

/// The tag of the webhook endpoints in the spec.
#[derive(Tags)]
pub enum WebhookTags {
    /// Inbound webhooks from Mailchimp (audience events) and Mandrill
    /// (bounces, complaints, unsubscribes).
    Webhooks,
}

/// The largest webhook body read. Mailchimp sends one event per request;
/// Mandrill batches up to 1000 events, so its deliveries are larger.
pub const MAX_WEBHOOK_BODY: usize = 1024 * 1024;

/// A Mailchimp audience-webhook delivery, form-encoded. Only the fields read
/// here are listed; Mailchimp sends more, and they are accepted.
#[derive(Debug, Object)]
pub struct MailchimpWebhookForm {
    /// `subscribe`, `unsubscribe`, `profile`, `cleaned` or `upemail`; other
    /// types are answered 200 and ignored.
    #[oai(rename = "type")]
    pub kind: String,
    /// When Mailchimp fired the event, `YYYY-MM-DD HH:MM:SS`.
    pub fired_at: Option<String>,
    /// The audience; must be the one the list is mapped to.
    #[oai(rename = "data[list_id]")]
    pub list_id: Option<String>,
    /// The member's address (all types but `upemail`).
    #[oai(rename = "data[email]")]
    pub email: Option<String>,
    /// `unsub` or `delete` (`unsubscribe`).
    #[oai(rename = "data[action]")]
    pub action: Option<String>,
    /// `manual` or `abuse` (`unsubscribe`); `hard` or `abuse` (`cleaned`).
    #[oai(rename = "data[reason]")]
    pub reason: Option<String>,
    /// First name (`subscribe`, `profile`).
    #[oai(rename = "data[merges][FNAME]")]
    pub fname: Option<String>,
    /// Last name (`subscribe`, `profile`).
    #[oai(rename = "data[merges][LNAME]")]
    pub lname: Option<String>,
    /// The address before the change (`upemail`).
    #[oai(rename = "data[old_email]")]
    pub old_email: Option<String>,
    /// The address after the change (`upemail`).
    #[oai(rename = "data[new_email]")]
    pub new_email: Option<String>,
}

/// A Mandrill delivery, form-encoded.
#[derive(Debug, Object)]
pub struct MandrillWebhookForm {
    /// A JSON array of events: message events (`event`: `hard_bounce`,
    /// `reject`, `spam`, `unsub`, ...; address in `msg.email`) and
    /// rejection-list sync events (`type`: `blacklist`, `action`: `add` or
    /// `remove`; address in `reject.email`). Others are ignored.
    pub mandrill_events: String,
}

/// The answer to a webhook delivery.
#[derive(Debug, Object)]
pub struct WebhookAck {
    /// `applied`, `replay` (applied before), `ignored` (nothing to act on),
    /// or `ok` (a validation request).
    pub outcome: String,
}

#[derive(ApiResponse)]
pub enum WebhookResponse {
    /// Received. Answered within Mailchimp's time limit.
    #[oai(status = 200)]
    Ok(Json<WebhookAck>),
}

impl WebhookResponse {
    fn ack(outcome: &str) -> Self {
        Self::Ok(Json(WebhookAck {
            outcome: outcome.to_string(),
        }))
    }

    fn of(outcome: Outcome) -> Self {
        Self::ack(outcome.as_str())
    }
}

/// A form-encoded body kept both as the bytes received (for deduplication)
/// and as its fields in order, with no limit on their number (Mailchimp sends
/// many). A body that cannot be read as a form does not fail the request
/// here: the handler checks the signature first, so that a wrong URL answers
/// 404 whatever the body. `S` only names the schema shown in the spec.
pub struct WebhookForm<S> {
    /// The body as received.
    pub bytes: Vec<u8>,
    /// The fields, or why the body is not a form.
    pub fields: Result<Vec<(String, String)>, ApiError>,
    _schema: std::marker::PhantomData<S>,
}

async fn read_form(
    req: &Request,
    body: &mut RequestBody,
) -> poem::Result<(Vec<u8>, Result<Vec<(String, String)>, ApiError>)> {
    let bytes = match body.take() {
        Ok(b) => match b.into_bytes_limit(MAX_WEBHOOK_BODY).await {
            Ok(bytes) => bytes.to_vec(),
            Err(poem::error::ReadBodyError::PayloadTooLarge) => {
                return Err(ApiError::PayloadTooLarge.into_poem());
            }
            Err(_) => {
                return Err(ApiError::BadRequest("the body could not be read".into()).into_poem());
            }
        },
        Err(_) => Vec::new(),
    };
    let is_form = req
        .content_type()
        .and_then(|ct| ct.parse::<mime::Mime>().ok())
        .is_some_and(|m| m.type_() == "application" && m.subtype() == "x-www-form-urlencoded");
    let fields = if is_form {
        serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes)
            .map_err(|_| ApiError::BadRequest("the form body cannot be parsed".into()))
    } else {
        Err(ApiError::UnsupportedMediaType(
            "the body must be application/x-www-form-urlencoded".into(),
        ))
    };
    Ok((bytes, fields))
}

impl<'a, S: Type> ApiExtractor<'a> for WebhookForm<S> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        S::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: "application/x-www-form-urlencoded",
                schema: S::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let (bytes, fields) = read_form(request, body).await?;
        Ok(Self {
            bytes,
            fields,
            _schema: std::marker::PhantomData,
        })
    }
}

fn field_error(e: FieldError) -> ApiError {
    ApiError::validation(&e.field, e.reason)
}

impl WebhooksApi {
    /// The list behind a signed audience-webhook URL and its Mailchimp
    /// audience; 404 for a wrong signature, an unknown or unmapped list, or no
    /// `mailchimp.webhook_key`.
    fn audience(&self, slug: &str, signature: &str) -> Result<(&ListConfig, &str), ApiError> {
        let config = &self.state.config;
        let verified = verify_audience_signature(config, slug, signature);
        let list = config.list(slug).ok_or(ApiError::NotFound)?;
        let list_id = list
            .mailchimp_list_id
            .as_deref()
            .ok_or(ApiError::NotFound)?;
        if !verified {
            return Err(ApiError::NotFound);
        }
        Ok((list, list_id))
    }

    fn mandrill_configured(&self) -> Result<(), ApiError> {
        let m = &self.state.config.mandrill;
        if m.webhook_key.is_some() && m.webhook_url.is_some() {
            Ok(())
        } else {
            Err(ApiError::NotFound)
        }
    }
}

#[OpenApi(tag = "WebhookTags::Webhooks")]
impl WebhooksApi {
    /// Mailchimp's validation request, sent when the webhook is created.
    /// Changes nothing.
    #[oai(path = "/v1/webhooks/mailchimp/:list/:signature", method = "get")]
    async fn mailchimp_validate(
        &self,
        /// The list's slug.
        list: Path<String>,
        /// Lower-case hex HMAC-SHA256 of the slug under `mailchimp.webhook_key`.
        signature: Path<String>,
    ) -> Result<WebhookResponse, ErrorResponse> {
        self.audience(&list.0, &signature.0)?;
        Ok(WebhookResponse::ack("ok"))
    }

    /// A Mailchimp audience event, form-encoded: `unsubscribe` and `cleaned`
    /// suppress here, `subscribe` records a confirmed subscription, `profile`
    /// renames, `upemail` moves the address. A delivery received before is
    /// not applied again. A wrong signature gets 404 and changes nothing.
    #[oai(path = "/v1/webhooks/mailchimp/:list/:signature", method = "post")]
    async fn mailchimp_event(
        &self,
        /// The list's slug.
        list: Path<String>,
        /// Lower-case hex HMAC-SHA256 of the slug under `mailchimp.webhook_key`.
        signature: Path<String>,
        body: WebhookForm<MailchimpWebhookForm>,
    ) -> Result<WebhookResponse, ErrorResponse> {
        let (list, list_id) = self.audience(&list.0, &signature.0)?;
        let fields = body.fields?;
        let event = parse_audience(&fields, list_id).map_err(field_error)?;
        let outcome = webhooks::apply_audience(&self.state, list, &body.bytes, &event).await?;
        Ok(WebhookResponse::of(outcome))
    }

    /// Mandrill's check when the webhook is created: 200, whether or not
    /// the key is configured yet. Mandrill makes the key only once this
    /// check has passed, so it cannot wait for the key.
    #[oai(path = "/v1/webhooks/mandrill", method = "head")]
    async fn mandrill_check(&self) -> Result<WebhookResponse, ErrorResponse> {
        Ok(WebhookResponse::ack("ok"))
    }

    /// Mandrill events (`mandrill_events`, a JSON array), verified with
    /// `X-Mandrill-Signature`: `hard_bounce` and `reject` suppress with
    /// `bounce`, `spam` with `complaint`, `unsub` with `unsubscribed`, for all
    /// lists; a rejection-list `blacklist` `add` suppresses with `bounce`, its
    /// `remove` deletes the entries Mandrill made. A missing or wrong
    /// signature gets 401 and changes nothing.
    #[oai(path = "/v1/webhooks/mandrill", method = "post")]
    async fn mandrill_events(
        &self,
        /// base64 HMAC-SHA1 of the registered URL followed by the POST keys
        /// and values sorted by key, under the webhook key.
        #[oai(name = "X-Mandrill-Signature")]
        signature: Header<Option<String>>,
        body: WebhookForm<MandrillWebhookForm>,
    ) -> Result<WebhookResponse, ErrorResponse> {
        self.mandrill_configured()?;
        // A body that is not a form cannot carry a valid signature.
        let fields = body.fields.map_err(|_| ApiError::Unauthorized)?;
        if !verify_mandrill(&self.state.config, signature.0.as_deref(), &fields) {
            return Err(ApiError::Unauthorized.into());
        }
        let events = fields
            .iter()
            .rev()
            .find(|(k, _)| k == "mandrill_events")
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| ApiError::validation("mandrill_events", "is required"))?;
        let batch = parse_mandrill(events).map_err(field_error)?;
        let outcome = webhooks::apply_mandrill(&self.state, &body.bytes, &batch).await?;
        Ok(WebhookResponse::of(outcome))
    }
}
