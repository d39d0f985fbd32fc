//! Domain types: once one exists it is valid. Parse, don't validate.
mod display_name;
mod email;
mod list_slug;
mod unsubscribe_token;

pub use display_name::DisplayName;
pub use email::EmailAddress;
pub use list_slug::ListSlug;
pub use unsubscribe_token::UnsubscribeToken;

/// Why a value was refused; the message names no personal data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub &'static str);
