//! `/v1/privacy/requests`: self-service access and erasure (GDPR art. 15, 17,
//! 20), proven by a link mailed to the address.
use poem::{Request, http::StatusCode};
use poem_openapi::{
    ApiRequest, ApiResponse, Object, OpenApi,
    param::{Path, Query},
    payload::{Form, Json},
    registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchema, MetaSchemaRef, Registry},
};
use serde::Deserialize;

use super::{ApiTags, extract::JsonBody};
use crate::{
    domain::EmailAddress,
    error::{ApiError, ErrorResponse},
    i18n::Locale,
    pages::{Form as PageForm, Page, PageResponse},
    services::{
        privacy::Export,
        privacy_requests::{self, Kind, LinkState, Outcome},
    },
    state::AppState,
};

pub struct PrivacyApi {
    pub state: AppState,
}

/// A request to see or erase what is held about an address.
#[derive(Debug, Object, Deserialize)]
pub struct PrivacyRequest {
    /// The address the request is about; the link goes there.
    pub email: Option<String>,
    /// `access` (a copy, as JSON) or `erasure`.
    pub kind: Option<String>,
    /// `sv` or `en`, for the mail and the page.
    pub locale: Option<String>,
}

#[derive(ApiRequest)]
pub enum PrivacyRequestBody {
    Json(JsonBody<PrivacyRequest>),
    Form(Form<PrivacyRequest>),
}

/// The same answer whatever is known about the address.
#[derive(Debug, Object)]
pub struct RequestAccepted {
    /// Always `accepted`.
    pub status: String,
    pub message: String,
}

#[derive(ApiResponse)]
pub enum RequestResponse {
    /// Accepted. If data is held about the address, a link is on its way there.
    #[oai(status = 202)]
    Accepted(Json<RequestAccepted>),
}

/// The answer to carrying a request out: the export as a JSON attachment
/// (access), or a page (erasure done, link used up or expired). Written by
/// hand because both kinds of 200 must appear in the spec.
pub enum CarryOutResponse {
    Export(Box<Export>),
    Page(StatusCode, String),
}

impl poem::IntoResponse for CarryOutResponse {
    fn into_response(self) -> poem::Response {
        match self {
            Self::Export(doc) => poem::Response::builder()
                .status(StatusCode::OK)
                .content_type("application/json; charset=utf-8")
                .header(
                    "content-disposition",
                    "attachment; filename=\"listguard-export.json\"",
                )
                .header("cache-control", "no-store")
                .body(poem_openapi::types::ToJSON::to_json_string(&*doc)),
            Self::Page(status, html) => poem::Response::builder()
                .status(status)
                .content_type("text/html; charset=utf-8")
                .header("cache-control", "no-store")
                .body(html),
        }
    }
}

impl ApiResponse for CarryOutResponse {
    fn meta() -> MetaResponses {
        let html = || MetaMediaType {
            content_type: "text/html; charset=utf-8",
            schema: MetaSchemaRef::Inline(Box::new(MetaSchema::new("string"))),
        };
        let resp = |status, description, content| MetaResponse {
            description,
            status: Some(status),
            status_range: None,
            content,
            headers: vec![],
        };
        MetaResponses {
            responses: vec![
                resp(
                    200,
                    "Access: everything held, as a JSON attachment (Content-Disposition). Erasure: the receipt page.",
                    vec![
                        MetaMediaType {
                            content_type: "application/json; charset=utf-8",
                            schema: <Export as poem_openapi::types::Type>::schema_ref(),
                        },
                        html(),
                    ],
                ),
                resp(404, "The link is unknown or used up.", vec![html()]),
                resp(
                    410,
                    "The link has expired; a new request sends a new one.",
                    vec![html()],
                ),
            ],
        }
    }

    fn register(registry: &mut Registry) {
        <Export as poem_openapi::types::Type>::register(registry);
    }
}

const ACCEPTED: &str =
    "If we hold data about this address, a link to carry out the request is on its way to it.";

impl PrivacyApi {
    fn locale(&self, req: &Request, lang: Option<&str>) -> Locale {
        super::extract::page_locale(&self.state, req, lang)
    }

    fn page(&self, l: Locale, title: &'static str, body: &'static str) -> String {
        Page::simple(l, title, body).render(&self.state)
    }
}

#[OpenApi(prefix_path = "/v1/privacy/requests", tag = "ApiTags::Privacy")]
impl PrivacyApi {
    /// Ask for a copy of, or the erasure of, what is held about an address.
    ///
    /// Answers 202 with the same body whatever is known about the address; a
    /// link valid 24 hours goes only to an address the service holds
    /// something about (a subscriber record, a suppression entry or kept
    /// consent events).
    #[oai(path = "/", method = "post")]
    async fn request(
        &self,
        req: &Request,
        body: PrivacyRequestBody,
    ) -> Result<RequestResponse, ErrorResponse> {
        let body = match body {
            PrivacyRequestBody::Json(JsonBody(b)) | PrivacyRequestBody::Form(Form(b)) => b,
        };
        super::extract::check_ip_limit(&self.state, req)?;
        let email = body
            .email
            .as_deref()
            .ok_or_else(|| ApiError::validation("email", "is required"))
            .and_then(|e| EmailAddress::parse(e).map_err(|e| ApiError::validation("email", e.0)))?;
        let kind = body
            .kind
            .as_deref()
            .ok_or_else(|| ApiError::validation("kind", "is required"))
            .and_then(|k| {
                Kind::parse(k)
                    .ok_or_else(|| ApiError::validation("kind", "must be access or erasure"))
            })?;
        let l = self.locale(req, body.locale.as_deref());
        privacy_requests::request(&self.state, &email, kind, l).await?;
        Ok(RequestResponse::Accepted(Json(RequestAccepted {
            status: "accepted".into(),
            message: ACCEPTED.into(),
        })))
    }

    /// The page behind the mailed link: one button; changes nothing.
    #[oai(path = "/:token", method = "get")]
    async fn page_for(
        &self,
        req: &Request,
        token: Path<String>,
        lang: Query<Option<String>>,
    ) -> Result<PageResponse, ErrorResponse> {
        let l = self.locale(req, lang.0.as_deref());
        Ok(
            match privacy_requests::inspect(&self.state, &token.0).await? {
                LinkState::Usable(kind) => {
                    let (title, body, button) = match kind {
                        Kind::Access => (
                            "page.privacy.access.title",
                            "page.privacy.access.body",
                            "mail.privacy.access.button",
                        ),
                        Kind::Erasure => (
                            "page.privacy.erasure.title",
                            "page.privacy.erasure.body",
                            "mail.privacy.erasure.button",
                        ),
                    };
                    let page = Page::simple(l, title, body).with_form(PageForm {
                        action: format!(
                            "{}/v1/privacy/requests/{}?lang={}",
                            self.state.config.public_base(),
                            token.0,
                            l.code()
                        ),
                        hidden: vec![],
                        button: crate::i18n::t(l, button),
                        email_label: None,
                        consent_label: None,
                    });
                    PageResponse::html(StatusCode::OK, &page, &self.state)
                }
                LinkState::Expired => PageResponse::html(
                    StatusCode::GONE,
                    &Page::simple(l, "page.privacy.expired.title", "page.privacy.expired.body"),
                    &self.state,
                ),
                LinkState::Unknown => PageResponse::html(
                    StatusCode::NOT_FOUND,
                    &Page::simple(l, "page.not_found.title", "page.not_found.body"),
                    &self.state,
                ),
            },
        )
    }

    /// Carry the request out: the export as a JSON attachment (access), or
    /// the erasure and a receipt page. The link works once.
    #[oai(path = "/:token", method = "post")]
    async fn carry_out(
        &self,
        req: &Request,
        token: Path<String>,
        lang: Query<Option<String>>,
    ) -> Result<CarryOutResponse, ErrorResponse> {
        let l = self.locale(req, lang.0.as_deref());
        Ok(
            match privacy_requests::carry_out(&self.state, &token.0).await? {
                Outcome::Exported(doc) => CarryOutResponse::Export(doc),
                Outcome::Erased(_) => CarryOutResponse::Page(
                    StatusCode::OK,
                    self.page(l, "page.privacy.erased.title", "page.privacy.erased.body"),
                ),
                Outcome::Expired => CarryOutResponse::Page(
                    StatusCode::GONE,
                    self.page(l, "page.privacy.expired.title", "page.privacy.expired.body"),
                ),
                Outcome::Unknown => CarryOutResponse::Page(
                    StatusCode::NOT_FOUND,
                    self.page(l, "page.not_found.title", "page.not_found.body"),
                ),
            },
        )
    }
}
