//! The HTML pages people see. They work without script and carry a strict
//! Content-Security-Policy and `Referrer-Policy: no-referrer` (tokens travel in
//! their URLs). One template serves them all; the words come from [`crate::i18n`].
use poem::{IntoResponse, Response, http::StatusCode};
use poem_openapi::{
    ApiResponse,
    registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchema, MetaSchemaRef, Registry},
};
use serde::Serialize;

use crate::{
    i18n::{Locale, t},
    state::State,
};

pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// A hidden form field.
#[derive(Serialize)]
pub struct Hidden {
    pub name: &'static str,
    pub value: String,
}

/// The one form a page may have.
#[derive(Serialize)]
pub struct Form {
    pub action: String,
    pub hidden: Vec<Hidden>,
    pub button: &'static str,
    /// Set on the "send a new link" form, which asks for the address again.
    pub email_label: Option<&'static str>,
    /// The list's configured consent text: the words the consent event records.
    pub consent_label: Option<String>,
}

#[derive(Serialize)]
pub struct Link {
    pub href: String,
    pub label: String,
}

/// A page to render.
pub struct Page {
    pub locale: Locale,
    pub title_key: &'static str,
    pub body_key: &'static str,
    pub form: Option<Form>,
    pub links: Vec<Link>,
}

impl Page {
    pub fn simple(locale: Locale, title_key: &'static str, body_key: &'static str) -> Self {
        Self {
            locale,
            title_key,
            body_key,
            form: None,
            links: vec![],
        }
    }

    pub fn with_form(mut self, form: Form) -> Self {
        self.form = Some(form);
        self
    }

    pub fn render(&self, state: &State) -> String {
        let l = self.locale;
        let ctx = minijinja::context! {
            lang => l.code(),
            title => crate::i18n::fill(l, t(l, self.title_key), &state.config),
            paragraphs => vec![crate::i18n::fill(l, t(l, self.body_key), &state.config)],
            form => self.form,
            links => self.links,
            org_name => state.config.org.name,
            privacy_policy_url => state.config.org.privacy_policy_url,
            policy_label => t(l, "mail.policy"),
        };
        state
            .templates
            .render("page.html", ctx)
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "page template failed");
                String::from("<!doctype html><title>Error</title><p>Error</p>")
            })
    }
}

/// An HTML page, or the same outcome as JSON when the client asked for JSON.
pub struct PageResponse {
    pub status: StatusCode,
    pub html: String,
    pub json: Option<PageJson>,
}

/// What a page answers instead when the client asks for JSON.
pub enum PageJson {
    /// The outcome (`PageOutcome`).
    Outcome(serde_json::Value),
    /// An error like any other: a problem document with this detail.
    Problem(&'static str),
}

/// The detail of an unknown or used-up link asked for as JSON.
pub const UNKNOWN_LINK: &str = "the link is unknown or used up";
/// The detail of an expired link asked for as JSON.
pub const EXPIRED_LINK: &str = "the link has expired; a new mail can be asked for";

impl PageResponse {
    pub fn html(status: StatusCode, page: &Page, state: &State) -> Self {
        Self {
            status,
            html: page.render(state),
            json: None,
        }
    }

    /// Answers with `json` instead of the page when `want_json`.
    pub fn or_json(mut self, want_json: bool, json: serde_json::Value) -> Self {
        if want_json {
            self.json = Some(PageJson::Outcome(json));
        }
        self
    }

    /// Answers with a problem document instead of the (error) page when
    /// `want_json`.
    pub fn or_problem(mut self, want_json: bool, detail: &'static str) -> Self {
        if want_json {
            self.json = Some(PageJson::Problem(detail));
        }
        self
    }
}

impl IntoResponse for PageResponse {
    fn into_response(self) -> Response {
        match self.json {
            Some(PageJson::Problem(detail)) => {
                let problem = crate::error::problem(self.status, Some(detail.into()), None);
                Response::builder()
                    .status(self.status)
                    .content_type("application/problem+json")
                    .header("cache-control", "no-store")
                    .body(poem_openapi::types::ToJSON::to_json_string(&problem))
            }
            Some(PageJson::Outcome(v)) => Response::builder()
                .status(self.status)
                .content_type("application/json; charset=utf-8")
                .header("cache-control", "no-store")
                .body(v.to_string()),
            None => Response::builder()
                .status(self.status)
                .content_type("text/html; charset=utf-8")
                .header("content-security-policy", CSP)
                .header("cache-control", "no-store")
                .body(self.html),
        }
    }
}

impl ApiResponse for PageResponse {
    fn meta() -> MetaResponses {
        let content = |status: u16| {
            vec![
                MetaMediaType {
                    content_type: "text/html; charset=utf-8",
                    schema: MetaSchemaRef::Inline(Box::new(MetaSchema::new("string"))),
                },
                if status < 400 {
                    MetaMediaType {
                        content_type: "application/json; charset=utf-8",
                        schema: MetaSchemaRef::Reference("PageOutcome".into()),
                    }
                } else {
                    MetaMediaType {
                        content_type: "application/problem+json",
                        schema: MetaSchemaRef::Reference("Problem".into()),
                    }
                },
            ]
        };
        let resp = |status, description| MetaResponse {
            description,
            status: Some(status),
            status_range: None,
            content: content(status),
            headers: vec![],
        };
        MetaResponses {
            responses: vec![
                resp(
                    200,
                    "The page (or, when the client asks for JSON, the outcome).",
                ),
                resp(400, "The token is missing."),
                resp(404, "The token is unknown or used up."),
                resp(410, "The token has expired; the page offers a new mail."),
            ],
        }
    }

    fn register(registry: &mut Registry) {
        <PageOutcome as poem_openapi::types::Type>::register(registry);
        <crate::error::Problem as poem_openapi::types::Type>::register(registry);
    }
}

/// The JSON form of a page's outcome. An unknown, used-up or expired link
/// is answered as a problem document instead (404, 410).
#[derive(Debug, poem_openapi::Object, Serialize)]
pub struct PageOutcome {
    /// `confirmed`, `already_confirmed`, `blocked`, `unsubscribed`.
    pub status: String,
}

pub fn outcome_json(status: &str) -> serde_json::Value {
    serde_json::json!({ "status": status })
}
