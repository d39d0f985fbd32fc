//! An e-mail address, normalised: trimmed, domain as lower-case ASCII (IDN to
//! punycode), within the RFC 5321 limits. Its comparison key is the lower-cased
//! whole address, the same form Mailchimp's subscriber hash uses.
use std::fmt;

use super::ParseError;

#[derive(Clone, PartialEq, Eq)]
pub struct EmailAddress {
    address: String,
}

/// RFC 5321 §4.5.3.1.
const MAX_LOCAL: usize = 64;
const MAX_TOTAL: usize = 254;

impl EmailAddress {
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(ParseError("is empty"));
        }
        // Cheap bound before any parsing work on hostile input.
        if s.len() > MAX_TOTAL * 4 {
            return Err(ParseError("is too long"));
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ParseError("contains spaces or control characters"));
        }
        let at = s.rfind('@').ok_or(ParseError("has no @"))?;
        let (local, domain) = (&s[..at], &s[at + 1..]);
        if local.is_empty() || domain.is_empty() {
            return Err(ParseError("is not an address"));
        }
        if local.len() > MAX_LOCAL {
            return Err(ParseError("has a local part over 64 characters"));
        }
        // IDNA (UTS 46) maps and lower-cases the domain, then punycode.
        let ascii_domain = idna::domain_to_ascii_strict(domain)
            .map_err(|_| ParseError("has an invalid domain"))?;
        if !ascii_domain.contains('.') {
            return Err(ParseError("has a domain without a dot"));
        }
        let address = format!("{local}@{ascii_domain}");
        if address.len() > MAX_TOTAL {
            return Err(ParseError("is over 254 characters"));
        }
        // The addr-spec grammar itself (quoted local parts, dot-atoms, no second @)
        // is the email_address crate's job.
        let parsed = email_address::EmailAddress::parse_with_options(
            &address,
            email_address::Options::default()
                .without_display_text()
                .without_domain_literal(),
        )
        .map_err(|_| ParseError("is not a valid address"))?;
        Ok(Self {
            address: parsed.as_str().to_string(),
        })
    }

    /// The normalised address, for sending mail.
    pub fn as_str(&self) -> &str {
        &self.address
    }

    /// The comparison key: the whole address in lower case.
    pub fn key(&self) -> String {
        self.address.to_lowercase()
    }

    /// Mailchimp's member id: lower-case hex MD5 of the lower-cased address.
    pub fn mailchimp_hash(&self) -> String {
        use md5::{Digest, Md5};
        hex::encode(Md5::digest(self.key().as_bytes()))
    }
}

/// Never prints the address: debug output ends up in logs.
impl fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EmailAddress(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalises_domain_and_keeps_local_case() {
        let e = EmailAddress::parse("  Urist.McVankab@FreddiesJokes.COM ").unwrap();
        assert_eq!(e.as_str(), "Urist.McVankab@freddiesjokes.com");
        assert_eq!(e.key(), "urist.mcvankab@freddiesjokes.com");
        assert_eq!(e.mailchimp_hash(), "62eeb292278cc15f5817cb78f7790b08");
    }

    #[test]
    fn idn_domains_become_punycode() {
        let e = EmailAddress::parse("anna@Räksmörgås.se").unwrap();
        assert_eq!(e.as_str(), "anna@xn--rksmrgs-5wao1o.se");
    }

    #[test]
    fn refuses_what_is_not_an_address() {
        for bad in [
            "",
            "a@b@c",
            "plain",
            "@example.org",
            "a@",
            "a b@example.org",
            "a@localhost",
            "a\u{0}@example.org",
            "a..b@example.org",
            "a@exa mple.org",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn enforces_rfc5321_lengths() {
        let local = "a".repeat(65);
        assert!(EmailAddress::parse(&format!("{local}@example.org")).is_err());
        let long = format!("{}@{}.org", "a".repeat(60), "b".repeat(250));
        assert!(EmailAddress::parse(&long).is_err());
        let ok = format!("{}@example.org", "a".repeat(64));
        assert!(EmailAddress::parse(&ok).is_ok());
        assert!(EmailAddress::parse(&"x".repeat(300)).is_err());
    }

    #[test]
    fn debug_output_hides_the_address() {
        let e = EmailAddress::parse("secret@example.org").unwrap();
        assert!(!format!("{e:?}").contains("secret"));
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in "\\PC{0,300}") {
            let _ = EmailAddress::parse(&s);
        }

        #[test]
        fn parsing_is_idempotent(local in "[a-zA-Z0-9._%+-]{1,20}", domain in "[a-zA-Z0-9]{1,20}\\.[a-z]{2,6}") {
            if let Ok(e) = EmailAddress::parse(&format!("{local}@{domain}")) {
                let again = EmailAddress::parse(e.as_str()).unwrap();
                prop_assert_eq!(again.as_str(), e.as_str());
                prop_assert!(e.as_str().len() <= 254);
            }
        }
    }
}
