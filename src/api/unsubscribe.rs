//! One-click unsubscribe (RFC 8058) and the links senders put in every mailing.
use std::collections::BTreeMap;

use entity::{subscriber, subscription};
use poem::{Request, http::StatusCode};
use poem_openapi::{ApiResponse, Object, OpenApi, param::Path, param::Query, payload::Json};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde::Deserialize;

use super::{ApiTags, FormFields, extract::JsonBody, wants_json};
use crate::{
    auth::ApiKey,
    domain::{EmailAddress, UnsubscribeToken},
    error::{ApiError, ErrorResponse},
    i18n::{Locale, t},
    pages::{Form as PageForm, Hidden, Link, Page, PageResponse, UNKNOWN_LINK, outcome_json},
    services::{
        suppression::{Reason, Source},
        unsubscribe::{Scope, unsubscribe},
    },
    state::AppState,
};

pub struct UnsubscribeApi {
    pub state: AppState,
}

/// Most addresses one request may carry.
pub const MAX_ADDRESSES: usize = 10_000;

/// Addresses to make unsubscribe links for.
#[derive(Debug, Object, Deserialize)]
pub struct UnsubscribeLinksRequest {
    /// The list the mailing goes to.
    pub list: String,
    /// Up to 10,000 addresses.
    pub emails: Vec<String>,
}

/// The link and headers for one address.
#[derive(Debug, Object)]
pub struct UnsubscribeLink {
    /// The address as sent.
    pub email: String,
    /// The unsubscribe URL (GET shows a page, POST unsubscribes at once).
    pub url: String,
    /// `List-Unsubscribe` and `List-Unsubscribe-Post`, ready to add to the mail.
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Object)]
pub struct UnsubscribeLinks {
    pub links: Vec<UnsubscribeLink>,
}

#[derive(ApiResponse)]
pub enum LinksResponse {
    /// One link per address, in the order given.
    #[oai(status = 200)]
    Ok(Json<UnsubscribeLinks>),
}

/// The one-click body: `List-Unsubscribe=One-Click`.
#[derive(Debug, Object)]
pub struct OneClickForm {
    #[oai(rename = "List-Unsubscribe")]
    pub list_unsubscribe: Option<String>,
}

impl UnsubscribeApi {
    fn locale(&self, req: &Request, lang: Option<&str>) -> Locale {
        super::extract::page_locale(&self.state, req, lang)
    }

    fn not_found(&self, l: Locale, json: bool) -> PageResponse {
        PageResponse::html(
            StatusCode::NOT_FOUND,
            &Page::simple(l, "page.not_found.title", "page.not_found.body"),
            &self.state,
        )
        .or_problem(json, UNKNOWN_LINK)
    }

    /// A verified token for a list that is still configured.
    fn verify(&self, token: &str) -> Option<UnsubscribeToken> {
        let t = UnsubscribeToken::verify(token, &self.state.keys.token_keys)?;
        self.state.config.list(&t.list).is_some().then_some(t)
    }

    pub fn url_for(&self, token: &UnsubscribeToken) -> String {
        let signed = token.sign(&self.state.keys.token_keys[0]);
        format!(
            "{}/v1/unsubscribe/{signed}",
            self.state.config.public_base()
        )
    }
}

#[OpenApi(tag = "ApiTags::Unsubscribe")]
impl UnsubscribeApi {
    /// The unsubscribe page: one button; never unsubscribes by itself.
    #[oai(path = "/v1/unsubscribe/:token", method = "get")]
    async fn page(
        &self,
        req: &Request,
        token: Path<String>,
        lang: Query<Option<String>>,
    ) -> Result<PageResponse, ErrorResponse> {
        let l = self.locale(req, lang.0.as_deref());
        let Some(tok) = self.verify(&token.0) else {
            return Ok(self.not_found(l, false));
        };
        // Links to leave the address's other lists too.
        let mut links = Vec::new();
        if let Some(p) = subscriber::Entity::find()
            .filter(subscriber::Column::EmailHash.eq(&tok.email_hash))
            .one(&self.state.db)
            .await?
        {
            let subs = subscription::Entity::find()
                .filter(subscription::Column::SubscriberId.eq(p.id))
                .filter(subscription::Column::ListSlug.ne(&tok.list))
                .all(&self.state.db)
                .await?;
            for s in subs {
                if let Some(list) = self.state.config.list(&s.list_slug) {
                    let other = UnsubscribeToken {
                        list: s.list_slug.clone(),
                        email_hash: tok.email_hash.clone(),
                    };
                    links.push(Link {
                        href: format!("{}?lang={}", self.url_for(&other), l.code()),
                        label: format!("{}: {}", t(l, "page.unsubscribe.other"), list.name),
                    });
                }
            }
        }
        let mut page = Page::simple(l, "page.unsubscribe.title", "page.unsubscribe.body")
            .with_form(PageForm {
                action: format!(
                    "{}/v1/unsubscribe/{}?lang={}",
                    self.state.config.public_base(),
                    token.0,
                    l.code()
                ),
                hidden: vec![Hidden {
                    name: "List-Unsubscribe",
                    value: "One-Click".into(),
                }],
                button: t(l, "page.unsubscribe.button"),
                email_label: None,
                consent_label: None,
            });
        page.links = links;
        Ok(PageResponse::html(StatusCode::OK, &page, &self.state))
    }

    /// One-click unsubscribe (RFC 8058): body `List-Unsubscribe=One-Click`,
    /// form-encoded or multipart. No cookies, no auth, no redirect; idempotent.
    #[oai(path = "/v1/unsubscribe/:token", method = "post")]
    async fn one_click(
        &self,
        req: &Request,
        token: Path<String>,
        lang: Query<Option<String>>,
        body: FormFields<OneClickForm>,
    ) -> Result<PageResponse, ErrorResponse> {
        let l = self.locale(req, lang.0.as_deref());
        let json = wants_json(req);
        let Some(t) = self.verify(&token.0) else {
            return Ok(self.not_found(l, json));
        };
        if body.get("List-Unsubscribe").map(str::trim) != Some("One-Click") {
            return Err(ApiError::validation("List-Unsubscribe", "must be One-Click").into());
        }
        let source = if req
            .header("accept")
            .is_some_and(|a| a.contains("text/html"))
        {
            Source::Link
        } else {
            Source::OneClick
        };
        unsubscribe(
            &self.state,
            &t.email_hash,
            &Scope::List(t.list.clone()),
            source,
            Reason::Unsubscribed,
        )
        .await?;
        Ok(PageResponse::html(
            StatusCode::OK,
            &Page::simple(l, "page.unsubscribed.title", "page.unsubscribed.body"),
            &self.state,
        )
        .or_json(json, outcome_json("unsubscribed")))
    }

    /// The unsubscribe URL and RFC 8058 headers for each address (scope `sender`).
    #[oai(path = "/v1/unsubscribe-links", method = "post")]
    async fn links(
        &self,
        auth: ApiKey,
        body: JsonBody<UnsubscribeLinksRequest>,
    ) -> Result<LinksResponse, ErrorResponse> {
        auth.sender()?;
        let body = body.0;
        super::known_list(&self.state.config, &body.list)?;
        if body.emails.len() > MAX_ADDRESSES {
            return Err(ApiError::validation("emails", "may hold at most 10000 addresses").into());
        }
        let mut links = Vec::with_capacity(body.emails.len());
        for (i, raw) in body.emails.into_iter().enumerate() {
            let email = EmailAddress::parse(&raw)
                .map_err(|e| ApiError::validation(&format!("emails[{i}]"), e.0))?;
            let token = UnsubscribeToken {
                list: body.list.clone(),
                email_hash: self.state.keys.hasher.hash(&email),
            };
            let url = self.url_for(&token);
            let headers = BTreeMap::from([
                ("List-Unsubscribe".to_string(), format!("<{url}>")),
                (
                    "List-Unsubscribe-Post".to_string(),
                    "List-Unsubscribe=One-Click".to_string(),
                ),
            ]);
            links.push(UnsubscribeLink {
                email: raw,
                url,
                headers,
            });
        }
        Ok(LinksResponse::Ok(Json(UnsubscribeLinks { links })))
    }
}
