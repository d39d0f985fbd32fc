//! The HTTP API: one `#[OpenApi]` impl per resource, combined in [`apis`].
mod extract;
mod ops;
mod privacy;
mod spec;
mod subscribers;
mod subscriptions;
mod suppressions;
mod sync;
mod unsubscribe;
mod webhooks;

pub use extract::{FormFields, client_context, wants_html, wants_json};
pub use spec::merge_repeated_keys;
pub use webhooks::MAX_WEBHOOK_BODY;

use poem_openapi::{OpenApiService, Tags};

use crate::{config::Config, config::ListConfig, error::ApiError, state::AppState};

/// The configured list `slug` names, or the 400 that every operation taking
/// a list gives for one that is not configured.
fn known_list<'a>(config: &'a Config, slug: &str) -> Result<&'a ListConfig, ApiError> {
    config
        .list(slug)
        .ok_or_else(|| ApiError::validation("list", "is not a known list"))
}

#[derive(Tags)]
pub enum ApiTags {
    /// Signup, double opt-in confirmation and "this wasn't me".
    Subscriptions,
    /// One-click unsubscribe and the links for mailings.
    Unsubscribe,
    /// The suppression list.
    Suppressions,
    /// Subscribers, lists and maintenance (administrators).
    Admin,
    /// Self-service access and erasure, proven by a mailed link.
    Privacy,
    /// Health, readiness and metrics.
    Ops,
}

pub type Apis = (
    subscriptions::SubscriptionsApi,
    unsubscribe::UnsubscribeApi,
    suppressions::SuppressionsApi,
    subscribers::SubscribersApi,
    sync::SyncApi,
    privacy::PrivacyApi,
    webhooks::WebhooksApi,
    ops::OpsApi,
);

/// The combined API as an OpenAPI service.
pub fn service(state: AppState) -> OpenApiService<Apis, ()> {
    let public_url = state.config.public_base().to_string();
    OpenApiService::new(
        (
            subscriptions::SubscriptionsApi {
                state: state.clone(),
            },
            unsubscribe::UnsubscribeApi {
                state: state.clone(),
            },
            suppressions::SuppressionsApi {
                state: state.clone(),
            },
            subscribers::SubscribersApi {
                state: state.clone(),
            },
            sync::SyncApi {
                state: state.clone(),
            },
            privacy::PrivacyApi {
                state: state.clone(),
            },
            webhooks::WebhooksApi {
                state: state.clone(),
            },
            ops::OpsApi { state },
        ),
        "listguard",
        env!("CARGO_PKG_VERSION"),
    )
    .description("Newsletter subscription and suppression-list service: double opt-in, one-click unsubscribe, a suppression list purged after one month, Mailchimp sync and data-subject rights.")
    .server(public_url)
}
