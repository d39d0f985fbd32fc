//! `/v1/subscriptions`: the signup form, the confirmation link and "this wasn't me".
use poem::{Request, http::StatusCode};
use poem_openapi::{
    ApiRequest, ApiResponse, Object, OpenApi,
    param::Query,
    payload::{Form, Json},
};
use serde::Deserialize;

use super::{
    ApiTags, FormFields, client_context,
    extract::{JsonBody, client_ip},
    wants_html, wants_json,
};
use crate::{
    captcha,
    domain::{DisplayName, EmailAddress, ListSlug},
    error::{ApiError, ErrorResponse},
    i18n::Locale,
    pages::{
        EXPIRED_LINK, Form as PageForm, Hidden, Page, PageResponse, UNKNOWN_LINK, outcome_json,
    },
    services::{
        confirm::{self, BlockOutcome, ConfirmOutcome, TokenState},
        subscribe::{NewSubscription, subscribe},
    },
    state::AppState,
};

pub struct SubscriptionsApi {
    pub state: AppState,
}

/// The signup form as JSON.
#[derive(Debug, Object, Deserialize)]
pub struct SubscribeJson {
    /// The address to subscribe.
    pub email: Option<String>,
    /// The subscriber's name (optional).
    pub name: Option<String>,
    /// The list's slug; the first configured list when absent.
    pub list: Option<String>,
    /// Must be `true`: the person ticked the consent box.
    pub consent: Option<bool>,
    /// `sv` or `en`, for the mail and pages.
    pub locale: Option<String>,
    /// Which form the signup came from.
    pub source: Option<String>,
    /// The captcha widget's token, when a captcha is configured.
    pub captcha_token: Option<String>,
    /// Honeypot: humans leave it empty.
    pub website: Option<String>,
}

/// The signup form as `application/x-www-form-urlencoded`.
#[derive(Debug, Object, Deserialize)]
pub struct SubscribeForm {
    pub email: Option<String>,
    pub name: Option<String>,
    pub list: Option<String>,
    /// `true`, `on`, `yes` or `1`.
    pub consent: Option<String>,
    pub locale: Option<String>,
    pub source: Option<String>,
    pub captcha_token: Option<String>,
    /// What a stock Cloudflare Turnstile widget adds to its form; taken
    /// when `captcha_token` is absent.
    #[oai(rename = "cf-turnstile-response")]
    #[serde(rename = "cf-turnstile-response")]
    pub cf_turnstile_response: Option<String>,
    /// What a stock hCaptcha widget adds to its form; taken when
    /// `captcha_token` is absent.
    #[oai(rename = "h-captcha-response")]
    #[serde(rename = "h-captcha-response")]
    pub h_captcha_response: Option<String>,
    pub website: Option<String>,
}

#[derive(Debug, ApiRequest)]
pub enum SubscribeBody {
    Json(JsonBody<SubscribeJson>),
    Form(Form<SubscribeForm>),
}

impl From<SubscribeBody> for SubscribeJson {
    fn from(b: SubscribeBody) -> Self {
        match b {
            SubscribeBody::Json(JsonBody(j)) => j,
            SubscribeBody::Form(Form(f)) => SubscribeJson {
                consent: f.consent.map(|c| {
                    matches!(
                        c.trim().to_ascii_lowercase().as_str(),
                        "true" | "on" | "yes" | "1"
                    )
                }),
                email: f.email,
                name: f.name,
                list: f.list,
                locale: f.locale,
                source: f.source,
                captcha_token: f
                    .captcha_token
                    .or(f.cf_turnstile_response)
                    .or(f.h_captcha_response),
                website: f.website,
            },
        }
    }
}

/// The same answer whatever is known about the address.
#[derive(Debug, Object)]
pub struct Accepted {
    /// Always `accepted`.
    pub status: String,
    pub message: String,
}

#[derive(ApiResponse)]
pub enum SubscribeResponse {
    /// Accepted. If the address can receive mail, a confirmation link is on its way.
    #[oai(status = 202)]
    Accepted(Json<Accepted>),
    /// A browser form post (`Accept: text/html`): go to the "check your inbox" page.
    #[oai(status = 303)]
    SeeOther(#[oai(header = "Location")] String),
}

/// The token of a confirmation link, in a form body.
#[derive(Debug, Object)]
pub struct TokenForm {
    /// The token from the link.
    pub token: Option<String>,
}

impl SubscriptionsApi {
    fn to_new_subscription(
        &self,
        body: SubscribeJson,
        req: &Request,
    ) -> Result<NewSubscription, ApiError> {
        let email = body
            .email
            .as_deref()
            .ok_or_else(|| ApiError::validation("email", "is required"))
            .and_then(|e| EmailAddress::parse(e).map_err(|e| ApiError::validation("email", e.0)))?;
        if body.consent != Some(true) {
            return Err(ApiError::validation("consent", "must be true"));
        }
        let name = match body.name.as_deref() {
            Some(n) if !n.trim().is_empty() => {
                Some(DisplayName::parse(n).map_err(|e| ApiError::validation("name", e.0))?)
            }
            _ => None,
        };
        let config = &self.state.config;
        let list = match body.list.as_deref() {
            Some(l) => {
                let slug = ListSlug::parse(l).map_err(|e| ApiError::validation("list", e.0))?;
                super::known_list(config, slug.as_str())?
            }
            None => &config.lists[0],
        };
        let locale = match body.locale.as_deref() {
            Some(l) => Locale::parse(l)
                .ok_or_else(|| ApiError::validation("locale", "must be sv or en"))?,
            None => self.locale(req, None),
        };
        let source = match body.source {
            Some(s) if s.chars().count() > 200 || s.chars().any(char::is_control) => {
                return Err(ApiError::validation(
                    "source",
                    "must be at most 200 plain characters",
                ));
            }
            s => s.filter(|s| !s.trim().is_empty()),
        };
        Ok(NewSubscription {
            email,
            name,
            list: list.clone(),
            locale,
            source,
        })
    }

    fn check_ip_limit(&self, req: &Request) -> Result<(), ApiError> {
        super::extract::check_ip_limit(&self.state, req)
    }

    fn uniform_answer(&self, req: &Request, locale: Option<&str>) -> SubscribeResponse {
        if wants_html(req) {
            let lang = self.locale(req, locale);
            return SubscribeResponse::SeeOther(format!(
                "{}/v1/subscriptions/check-inbox?lang={}",
                self.state.config.public_base(),
                lang.code()
            ));
        }
        SubscribeResponse::Accepted(Json(Accepted {
            status: "accepted".into(),
            message: "If this address can receive our mail, a confirmation link is on its way."
                .into(),
        }))
    }

    fn locale(&self, req: &Request, lang: Option<&str>) -> Locale {
        super::extract::page_locale(&self.state, req, lang)
    }

    fn token_page(
        &self,
        l: Locale,
        status: StatusCode,
        title: &'static str,
        body: &'static str,
    ) -> PageResponse {
        PageResponse::html(status, &Page::simple(l, title, body), &self.state)
    }

    /// 410: the link is past its validity; a form asks for a new mail to the
    /// same list, under that list's own consent text. A list no longer
    /// configured gets the 404 page.
    fn expired_page(&self, l: Locale, slug: &str) -> PageResponse {
        let Some(list) = self.state.config.list(slug) else {
            return self.token_page(
                l,
                StatusCode::NOT_FOUND,
                "page.not_found.title",
                "page.not_found.body",
            );
        };
        let page = Page::simple(l, "page.expired.title", "page.expired.body").with_form(PageForm {
            action: format!("{}/v1/subscriptions", self.state.config.public_base()),
            hidden: vec![
                Hidden {
                    name: "list",
                    value: list.slug.clone(),
                },
                Hidden {
                    name: "locale",
                    value: l.code().into(),
                },
            ],
            button: crate::i18n::t(l, "page.expired.button"),
            email_label: Some(crate::i18n::t(l, "page.expired.email")),
            consent_label: Some(list.consent_text.clone()),
        });
        PageResponse::html(StatusCode::GONE, &page, &self.state)
    }

    fn button_page(
        &self,
        l: Locale,
        path: &str,
        token: String,
        title: &'static str,
        body: &'static str,
        button: &'static str,
    ) -> PageResponse {
        let page = Page::simple(l, title, body).with_form(PageForm {
            action: format!(
                "{}{path}?lang={}",
                self.state.config.public_base(),
                l.code()
            ),
            hidden: vec![Hidden {
                name: "token",
                value: token,
            }],
            button: crate::i18n::t(l, button),
            email_label: None,
            consent_label: None,
        });
        PageResponse::html(StatusCode::OK, &page, &self.state)
    }

    /// The token from the form body, else from the query.
    fn token_from(body: &FormFields<TokenForm>, query: Option<String>) -> Option<String> {
        body.get("token")
            .map(str::to_string)
            .or(query)
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    }
}

#[OpenApi(prefix_path = "/v1/subscriptions", tag = "ApiTags::Subscriptions")]
impl SubscriptionsApi {
    /// Subscribe (double opt-in, step one).
    ///
    /// Answers the same whether the address is new, pending, confirmed or
    /// suppressed. A confirmation mail is queued when appropriate.
    #[oai(path = "/", method = "post")]
    async fn subscribe(
        &self,
        req: &Request,
        body: SubscribeBody,
    ) -> Result<SubscribeResponse, ErrorResponse> {
        let body: SubscribeJson = body.into();
        // A filled honeypot is a bot: the normal answer, and nothing else.
        if body
            .website
            .as_deref()
            .is_some_and(|w| !w.trim().is_empty())
        {
            return Ok(self.uniform_answer(req, body.locale.as_deref()));
        }
        self.check_ip_limit(req)?;
        let locale = body.locale.clone();
        let captcha_token = body.captcha_token.clone();
        let signup = self.to_new_subscription(body, req)?;
        captcha::verify(&self.state, captcha_token.as_deref(), client_ip(req)).await?;
        subscribe(&self.state, signup, client_context(req)).await?;
        Ok(self.uniform_answer(req, locale.as_deref()))
    }

    /// The "check your inbox" page a browser form post is sent to.
    #[oai(path = "/check-inbox", method = "get")]
    async fn check_inbox(&self, req: &Request, lang: Query<Option<String>>) -> PageResponse {
        let l = self.locale(req, lang.0.as_deref());
        self.token_page(
            l,
            StatusCode::OK,
            "page.check_inbox.title",
            "page.check_inbox.body",
        )
    }

    /// The confirmation page: shows a button, changes nothing.
    #[oai(path = "/confirm", method = "get")]
    async fn confirm_page(
        &self,
        req: &Request,
        token: Query<Option<String>>,
        lang: Query<Option<String>>,
    ) -> Result<PageResponse, ErrorResponse> {
        let l = self.locale(req, lang.0.as_deref());
        let Some(token) = token.0.filter(|t| !t.is_empty()) else {
            return Err(ApiError::validation("token", "is required").into());
        };
        Ok(match confirm::inspect(&self.state, &token).await? {
            TokenState::Pending { .. } => self.button_page(
                l,
                "/v1/subscriptions/confirm",
                token,
                "page.confirm.title",
                "page.confirm.body",
                "page.confirm.button",
            ),
            TokenState::Confirmed { .. } => self.token_page(
                l,
                StatusCode::OK,
                "page.already_confirmed.title",
                "page.already_confirmed.body",
            ),
            TokenState::Expired { list } => self.expired_page(l, &list),
            TokenState::Unknown => self.token_page(
                l,
                StatusCode::NOT_FOUND,
                "page.not_found.title",
                "page.not_found.body",
            ),
        })
    }

    /// Confirm the subscription (idempotent).
    ///
    /// The token comes in the form body or the query. Answers with a page, or
    /// with JSON when the client asks for it.
    #[oai(path = "/confirm", method = "post")]
    async fn confirm(
        &self,
        req: &Request,
        token: Query<Option<String>>,
        lang: Query<Option<String>>,
        body: FormFields<TokenForm>,
    ) -> Result<PageResponse, ErrorResponse> {
        let l = self.locale(req, lang.0.as_deref());
        let json = wants_json(req);
        let Some(token) = Self::token_from(&body, token.0) else {
            return Err(ApiError::validation("token", "is required").into());
        };
        let outcome = confirm::confirm(&self.state, &token, &client_context(req)).await?;
        Ok(match outcome {
            ConfirmOutcome::Confirmed => self
                .token_page(
                    l,
                    StatusCode::OK,
                    "page.confirmed.title",
                    "page.confirmed.body",
                )
                .or_json(json, outcome_json("confirmed")),
            ConfirmOutcome::AlreadyConfirmed => self
                .token_page(
                    l,
                    StatusCode::OK,
                    "page.already_confirmed.title",
                    "page.already_confirmed.body",
                )
                .or_json(json, outcome_json("already_confirmed")),
            ConfirmOutcome::Expired { ref list } => {
                self.expired_page(l, list).or_problem(json, EXPIRED_LINK)
            }
            ConfirmOutcome::Unknown => self
                .token_page(
                    l,
                    StatusCode::NOT_FOUND,
                    "page.not_found.title",
                    "page.not_found.body",
                )
                .or_problem(json, UNKNOWN_LINK),
        })
    }

    /// The "this wasn't me" page: shows a button, changes nothing.
    #[oai(path = "/block", method = "get")]
    async fn block_page(
        &self,
        req: &Request,
        token: Query<Option<String>>,
        lang: Query<Option<String>>,
    ) -> Result<PageResponse, ErrorResponse> {
        let l = self.locale(req, lang.0.as_deref());
        let Some(token) = token.0.filter(|t| !t.is_empty()) else {
            return Err(ApiError::validation("token", "is required").into());
        };
        Ok(match confirm::inspect(&self.state, &token).await? {
            TokenState::Pending { .. } => self.button_page(
                l,
                "/v1/subscriptions/block",
                token,
                "page.block.title",
                "page.block.body",
                "page.block.button",
            ),
            TokenState::Expired { list } => self.expired_page(l, &list),
            TokenState::Confirmed { .. } | TokenState::Unknown => self.token_page(
                l,
                StatusCode::NOT_FOUND,
                "page.not_found.title",
                "page.not_found.body",
            ),
        })
    }

    /// "This wasn't me": deletes the pending signup and blocks further
    /// confirmation mail to the address.
    #[oai(path = "/block", method = "post")]
    async fn block(
        &self,
        req: &Request,
        token: Query<Option<String>>,
        lang: Query<Option<String>>,
        body: FormFields<TokenForm>,
    ) -> Result<PageResponse, ErrorResponse> {
        let l = self.locale(req, lang.0.as_deref());
        let json = wants_json(req);
        let Some(token) = Self::token_from(&body, token.0) else {
            return Err(ApiError::validation("token", "is required").into());
        };
        Ok(match confirm::block(&self.state, &token).await? {
            BlockOutcome::Blocked => self
                .token_page(l, StatusCode::OK, "page.blocked.title", "page.blocked.body")
                .or_json(json, outcome_json("blocked")),
            BlockOutcome::Expired { list } => {
                self.expired_page(l, &list).or_problem(json, EXPIRED_LINK)
            }
            BlockOutcome::Unknown => self
                .token_page(
                    l,
                    StatusCode::NOT_FOUND,
                    "page.not_found.title",
                    "page.not_found.body",
                )
                .or_problem(json, UNKNOWN_LINK),
        })
    }
}
