//! Logging: human-readable by default, JSON with `LISTGUARD_LOG_FORMAT=json`,
//! the filter from `RUST_LOG`. No line carries an address, a token or a secret:
//! addresses appear as their hash prefix, paths with tokens are redacted.
use tracing_subscriber::{
    EnvFilter, fmt::MakeWriter, layer::SubscriberExt, util::SubscriberInitExt,
};

pub const DEFAULT_FILTER: &str = "info,sqlx=warn,sea_orm=warn,sea_orm_migration=warn";

/// Installs the global subscriber writing to `writer`.
pub fn init<W>(json: bool, filter: &str, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let ansi = !json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    // The whole span list, so the request id of the outer
                    // request span reaches lines logged in inner spans.
                    .with_current_span(false)
                    .with_span_list(true)
                    .with_writer(writer),
            )
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(writer),
            )
            .try_init()
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}

/// From the environment: `RUST_LOG` and `LISTGUARD_LOG_FORMAT`, to standard
/// error, so that what a command prints on standard output (the OpenAPI
/// document, key lines, the mail preview) stays clean.
pub fn init_from_env() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| DEFAULT_FILTER.to_string());
    let json = std::env::var("LISTGUARD_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    init(json, &filter, std::io::stderr);
}

/// A request path fit for a log line: segments that may hold a token or an
/// address are replaced by `*`.
pub fn redact_path(path: &str) -> String {
    const KEEP: &[&str] = &[
        "v1",
        "subscriptions",
        "confirm",
        "block",
        "check-inbox",
        "unsubscribe",
        "unsubscribe-links",
        "privacy",
        "requests",
        "webhooks",
        "mailchimp",
        "mandrill",
        "subscribers",
        "export",
        "lists",
        "suppressions",
        "check",
        "admin",
        "purge",
        "sync",
        "dead-letters",
        "retry",
        "healthz",
        "readyz",
        "metrics",
        "openapi.json",
        "docs",
    ];
    let mut out = String::with_capacity(path.len());
    for seg in path.split('/').skip(1).take(8) {
        out.push('/');
        out.push_str(if seg.is_empty() || KEEP.contains(&seg) {
            seg
        } else {
            "*"
        });
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_path;

    #[test]
    fn paths_lose_tokens_and_addresses() {
        assert_eq!(redact_path("/v1/unsubscribe/abc.def"), "/v1/unsubscribe/*");
        assert_eq!(
            redact_path("/v1/subscribers/a@b.c/export"),
            "/v1/subscribers/*/export"
        );
        assert_eq!(redact_path("/"), "/");
        assert_eq!(redact_path("/healthz"), "/healthz");
    }
}
