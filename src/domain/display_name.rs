//! A subscriber's name: bounded, no control characters.
use std::fmt;

use super::ParseError;

#[derive(Clone, PartialEq, Eq)]
pub struct DisplayName(String);

const MAX_CHARS: usize = 200;

impl DisplayName {
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(ParseError("is empty"));
        }
        if s.chars().count() > MAX_CHARS {
            return Err(ParseError("is over 200 characters"));
        }
        if s.chars().any(char::is_control) {
            return Err(ParseError("contains control characters"));
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DisplayName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DisplayName(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names_and_refuses_control_characters() {
        assert_eq!(
            DisplayName::parse(" Åsa Öberg ").unwrap().as_str(),
            "Åsa Öberg"
        );
        assert!(DisplayName::parse("a\nb").is_err());
        assert!(DisplayName::parse("a\u{7}").is_err());
        assert!(DisplayName::parse("   ").is_err());
        assert!(DisplayName::parse(&"x".repeat(201)).is_err());
    }
}
