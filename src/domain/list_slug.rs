//! A list's slug: lower-case ASCII letters, digits and dashes, 1 to 64.
use super::ParseError;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListSlug(String);

impl ListSlug {
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let s = input.trim();
        if s.is_empty() || s.len() > 64 {
            return Err(ParseError("must be 1 to 64 characters"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(ParseError("may hold only a-z, 0-9, - and _"));
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert!(ListSlug::parse("newsletter").is_ok());
        assert!(ListSlug::parse("News").is_err());
        assert!(ListSlug::parse("a/b").is_err());
        assert!(ListSlug::parse("").is_err());
    }
}
