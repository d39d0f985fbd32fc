//! The words of pages and mails, in Swedish and English.
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Locale {
    Sv,
    En,
}

impl Locale {
    pub fn parse(s: &str) -> Option<Self> {
        let primary = s.trim().split(['-', '_']).next()?.to_ascii_lowercase();
        match primary.as_str() {
            "sv" => Some(Self::Sv),
            "en" => Some(Self::En),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::Sv => "sv",
            Self::En => "en",
        }
    }

    /// `?lang=` first, then the best match in `Accept-Language`, then the default.
    pub fn negotiate(lang: Option<&str>, accept_language: Option<&str>, default: &str) -> Self {
        if let Some(l) = lang.and_then(Self::parse) {
            return l;
        }
        if let Some(header) = accept_language {
            let mut best: Option<(f32, Self)> = None;
            for part in header.split(',').take(32) {
                let mut it = part.split(';');
                let tag = it.next().unwrap_or("");
                let q = it
                    .find_map(|p| p.trim().strip_prefix("q="))
                    .and_then(|q| q.parse::<f32>().ok())
                    .unwrap_or(1.0);
                if let Some(l) = Self::parse(tag)
                    && q > 0.0
                    && best.is_none_or(|(bq, _)| q > bq)
                {
                    best = Some((q, l));
                }
            }
            if let Some((_, l)) = best {
                return l;
            }
        }
        Self::parse(default).unwrap_or(Self::Sv)
    }
}

/// `text` with `{pending}` replaced by how long a confirmation link is valid
/// (`retention.pending`), in `locale`'s words; `text` itself when it has no
/// such place (most texts: no copy is made for them).
pub fn fill<'a>(
    locale: Locale,
    text: &'a str,
    config: &crate::config::Config,
) -> std::borrow::Cow<'a, str> {
    if text.contains("{pending}") {
        text.replace("{pending}", &duration(locale, &config.retention.pending))
            .into()
    } else {
        text.into()
    }
}

/// A unit of time in words: its length in seconds (none for a calendar
/// month), then Swedish one and many, English one and many.
type Unit = (i64, [&'static str; 4]);
const MONTH: Unit = (0, ["månad", "månader", "month", "months"]);
const DAY: Unit = (86_400, ["dag", "dagar", "day", "days"]);
const HOUR: Unit = (3_600, ["timme", "timmar", "hour", "hours"]);
const MINUTE: Unit = (60, ["minut", "minuter", "minute", "minutes"]);
const SECOND: Unit = (1, ["sekund", "sekunder", "second", "seconds"]);

/// A configured duration in words: "48 timmar", "7 days", "1 month": the
/// largest unit that measures it exactly, hours up to three days.
pub fn duration(locale: Locale, d: &crate::config::ConfigDuration) -> String {
    use crate::config::ConfigDuration;
    let (n, (_, words)) = match d {
        ConfigDuration::Months(m) => (i64::from(*m), MONTH),
        ConfigDuration::Fixed(f) => {
            let secs = f.num_seconds();
            // Hours up to three days: a link valid for 48 hours, not for 2 days.
            let in_days = secs == DAY.0 || secs >= 3 * DAY.0;
            let unit = [DAY, HOUR, MINUTE]
                .into_iter()
                .find(|u| secs % u.0 == 0 && (u.0 != DAY.0 || in_days))
                .unwrap_or(SECOND);
            (secs / unit.0, unit)
        }
    };
    let lang = match locale {
        Locale::Sv => 0,
        Locale::En => 2,
    };
    format!("{n} {}", words[lang + usize::from(n != 1)])
}

/// The text for `key` in `locale`; the key itself when unknown (a test checks
/// that every key used exists in both languages).
pub fn t(locale: Locale, key: &str) -> &'static str {
    let (sv, en) = match key {
        "mail.greeting" => ("Hej", "Hello"),
        "mail.confirm.subject" => ("Bekräfta din prenumeration", "Confirm your subscription"),
        "mail.confirm.intro" => (
            "Någon, förhoppningsvis du, har anmält den här adressen till vårt nyhetsbrev. Bekräfta att du vill ha det genom att öppna länken:",
            "Someone, hopefully you, signed this address up for our newsletter. Confirm that you want it by opening the link:",
        ),
        "mail.confirm.button" => ("Bekräfta prenumerationen", "Confirm the subscription"),
        "mail.confirm.validity" => (
            "Länken gäller i {pending}. Om du inte bekräftar raderas uppgifterna.",
            "The link is valid for {pending}. If you do not confirm, the data is deleted.",
        ),
        "mail.confirm.not_me" => (
            "Var det inte du? Då kan du ignorera det här brevet, eller se till att vi aldrig skickar ett sådant igen:",
            "Wasn't this you? Then ignore this mail, or make sure we never send you one again:",
        ),
        "mail.confirm.not_me_link" => ("Det var inte jag", "This wasn't me"),
        "mail.policy" => ("Integritetspolicy", "Privacy policy"),
        "page.check_inbox.title" => ("Kolla din inkorg", "Check your inbox"),
        "page.check_inbox.body" => (
            "Om adressen kan ta emot e-post från oss har vi skickat en länk. Öppna den för att bekräfta prenumerationen.",
            "If the address can receive mail from us, we have sent a link. Open it to confirm the subscription.",
        ),
        "page.confirm.title" => ("Bekräfta prenumerationen", "Confirm the subscription"),
        "page.confirm.body" => (
            "Tryck på knappen för att bekräfta att du vill få nyhetsbrevet.",
            "Press the button to confirm that you want the newsletter.",
        ),
        "page.confirm.button" => ("Bekräfta", "Confirm"),
        "page.confirmed.title" => ("Tack!", "Thank you!"),
        "page.confirmed.body" => (
            "Din prenumeration är bekräftad. Varje utskick har en länk för att avsluta den.",
            "Your subscription is confirmed. Every mailing carries a link to end it.",
        ),
        "page.already_confirmed.title" => ("Redan bekräftad", "Already confirmed"),
        "page.already_confirmed.body" => (
            "Den här prenumerationen är redan bekräftad.",
            "This subscription is already confirmed.",
        ),
        "page.block.title" => ("Var det inte du?", "Wasn't this you?"),
        "page.block.body" => (
            "Tryck på knappen så raderar vi anmälan och skickar inga fler bekräftelsebrev till adressen.",
            "Press the button and we delete the signup and send no more confirmation mail to the address.",
        ),
        "page.block.button" => ("Det var inte jag", "This wasn't me"),
        "page.blocked.title" => ("Klart", "Done"),
        "page.blocked.body" => (
            "Anmälan är raderad och adressen får inga fler bekräftelsebrev från oss.",
            "The signup is deleted and the address gets no more confirmation mail from us.",
        ),
        "page.expired.title" => ("Länken har gått ut", "The link has expired"),
        "page.expired.body" => (
            "Länken gällde i {pending}. Fyll i adressen igen så skickar vi en ny.",
            "The link was valid for {pending}. Enter the address again and we send a new one.",
        ),
        "page.expired.email" => ("E-postadress", "E-mail address"),
        "page.expired.button" => ("Skicka en ny länk", "Send a new link"),
        "page.not_found.title" => ("Länken fungerar inte", "The link does not work"),
        "page.not_found.body" => (
            "Länken är okänd eller redan använd.",
            "The link is unknown or already used.",
        ),
        "page.unsubscribe.title" => ("Avsluta prenumerationen", "Unsubscribe"),
        "page.unsubscribe.body" => (
            "Tryck på knappen så får adressen inga fler utskick från den här listan.",
            "Press the button and the address gets no more mailings from this list.",
        ),
        "page.unsubscribe.button" => ("Avsluta prenumerationen", "Unsubscribe"),
        "page.unsubscribe.other" => ("Avsluta även", "Also leave"),
        "page.unsubscribed.title" => ("Prenumerationen är avslutad", "You are unsubscribed"),
        "page.unsubscribed.body" => (
            "Adressen är borttagen från listan och får inga fler utskick därifrån.",
            "The address is removed from the list and gets no more mailings from it.",
        ),
        "mail.privacy.access.subject" => (
            "Din begäran om en kopia av dina uppgifter",
            "Your request for a copy of your data",
        ),
        "mail.privacy.access.intro" => (
            "Någon, förhoppningsvis du, har begärt en kopia av de uppgifter vi har om den här adressen. Öppna länken för att hämta den:",
            "Someone, hopefully you, asked for a copy of the data we hold about this address. Open the link to get it:",
        ),
        "mail.privacy.access.button" => ("Hämta mina uppgifter", "Get my data"),
        "mail.privacy.erasure.subject" => ("Din begäran om radering", "Your request for erasure"),
        "mail.privacy.erasure.intro" => (
            "Någon, förhoppningsvis du, har begärt att vi raderar allt vi har om den här adressen. Öppna länken för att bekräfta:",
            "Someone, hopefully you, asked us to erase everything we hold about this address. Open the link to confirm:",
        ),
        "mail.privacy.erasure.button" => ("Radera mina uppgifter", "Erase my data"),
        "mail.privacy.validity" => (
            "Länken gäller i 24 timmar och kan användas en gång.",
            "The link is valid for 24 hours and works once.",
        ),
        "mail.privacy.not_me" => (
            "Var det inte du? Då kan du bortse från det här brevet; ingenting händer.",
            "Wasn't it you? Then ignore this mail; nothing happens.",
        ),
        "page.privacy.access.title" => ("Hämta dina uppgifter", "Get your data"),
        "page.privacy.access.body" => (
            "Tryck på knappen så får du allt vi har om adressen som en JSON-fil.",
            "Press the button to get everything we hold about the address as a JSON file.",
        ),
        "page.privacy.erasure.title" => ("Radera dina uppgifter", "Erase your data"),
        "page.privacy.erasure.body" => (
            "Tryck på knappen så raderar vi allt vi har om adressen, här och hos Mailchimp. Adressen spärras för utskick i en månad, sedan är den glömd.",
            "Press the button and we erase everything we hold about the address, here and at Mailchimp. The address is blocked from mailings for one month, then it is forgotten.",
        ),
        "page.privacy.erased.title" => ("Uppgifterna är raderade", "Your data is erased"),
        "page.privacy.erased.body" => (
            "Vi har raderat allt vi hade om adressen. Den spärras för utskick i en månad, sedan är den glömd.",
            "We have erased everything we held about the address. It is blocked from mailings for one month, then it is forgotten.",
        ),
        "page.privacy.expired.title" => ("Länken har gått ut", "The link has expired"),
        "page.privacy.expired.body" => (
            "Länken gällde i 24 timmar. Gör en ny begäran så skickar vi en ny länk.",
            "The link was valid for 24 hours. Make a new request and we send a new link.",
        ),
        _ => return "",
    };
    match locale {
        Locale::Sv => sv,
        Locale::En => en,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_in_both_languages() {
        use crate::config::ConfigDuration;
        let d = |s: &str| s.parse::<ConfigDuration>().unwrap();
        assert_eq!(duration(Locale::Sv, &d("48h")), "48 timmar");
        assert_eq!(duration(Locale::En, &d("48h")), "48 hours");
        assert_eq!(duration(Locale::En, &d("24h")), "1 day");
        assert_eq!(duration(Locale::Sv, &d("7d")), "7 dagar");
        assert_eq!(duration(Locale::En, &d("90m")), "90 minutes");
        assert_eq!(duration(Locale::En, &d("1h")), "1 hour");
        assert_eq!(duration(Locale::Sv, &d("1 month")), "1 månad");
        assert_eq!(duration(Locale::En, &d("1 year")), "12 months");
    }

    #[test]
    fn the_confirmation_texts_name_the_configured_validity() {
        let mut config = crate::config::Config::default();
        config.retention.pending = "72h".parse().unwrap();
        let text = fill(Locale::En, t(Locale::En, "mail.confirm.validity"), &config);
        assert!(text.contains("valid for 3 days."), "{text}");
        let text = fill(Locale::Sv, t(Locale::Sv, "page.expired.body"), &config);
        assert!(text.contains("gällde i 3 dagar."), "{text}");
        assert!(!text.contains('{'), "{text}");
    }

    #[test]
    fn negotiation_prefers_query_then_header_then_default() {
        assert_eq!(Locale::negotiate(Some("en"), Some("sv"), "sv"), Locale::En);
        assert_eq!(
            Locale::negotiate(None, Some("de, en-GB;q=0.8, sv;q=0.5"), "sv"),
            Locale::En
        );
        assert_eq!(Locale::negotiate(None, Some("de"), "sv"), Locale::Sv);
        assert_eq!(Locale::negotiate(Some("xx"), None, "en"), Locale::En);
    }

    #[test]
    fn every_key_has_both_languages() {
        for key in [
            "mail.greeting",
            "mail.confirm.subject",
            "mail.confirm.intro",
            "mail.confirm.button",
            "mail.confirm.validity",
            "mail.confirm.not_me",
            "mail.confirm.not_me_link",
            "mail.policy",
            "mail.privacy.access.subject",
            "mail.privacy.access.intro",
            "mail.privacy.access.button",
            "mail.privacy.erasure.subject",
            "mail.privacy.erasure.intro",
            "mail.privacy.erasure.button",
            "mail.privacy.validity",
            "mail.privacy.not_me",
            "page.privacy.access.title",
            "page.privacy.access.body",
            "page.privacy.erasure.title",
            "page.privacy.erasure.body",
            "page.privacy.erased.title",
            "page.privacy.erased.body",
            "page.privacy.expired.title",
            "page.privacy.expired.body",
            "page.check_inbox.title",
            "page.check_inbox.body",
            "page.confirm.title",
            "page.confirm.body",
            "page.confirm.button",
            "page.confirmed.title",
            "page.confirmed.body",
            "page.already_confirmed.title",
            "page.already_confirmed.body",
            "page.block.title",
            "page.block.body",
            "page.block.button",
            "page.blocked.title",
            "page.blocked.body",
            "page.expired.title",
            "page.expired.body",
            "page.expired.email",
            "page.expired.button",
            "page.not_found.title",
            "page.not_found.body",
        ] {
            assert!(!t(Locale::Sv, key).is_empty(), "{key}");
            assert!(!t(Locale::En, key).is_empty(), "{key}");
        }
    }
}
