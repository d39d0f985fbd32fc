//! Outgoing mail: rendering (Swedish and English, text and HTML parts) and the
//! transports. The `log` transport is a development preview that prints whole
//! mails to standard output between marker lines; `smtp` uses lettre.
use std::{io::Write, sync::Arc};

use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, MultiPart},
};
use secrecy::ExposeSecret;
use serde::Serialize;

use crate::{
    config::{Config, MailTransportKind},
    i18n::{Locale, t},
};

/// A mail ready to send.
pub struct OutgoingMail {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// Worth another attempt later (connection refused, 4xx from the server).
    #[error("transient mail failure: {0}")]
    Transient(String),
    /// Will never succeed (bad recipient, 5xx).
    #[error("permanent mail failure: {0}")]
    Permanent(String),
}

#[async_trait::async_trait]
pub trait MailTransport: Send + Sync + 'static {
    async fn send(&self, mail: &OutgoingMail) -> Result<(), MailError>;
}

pub const PREVIEW_BEGIN: &str = "----- BEGIN MAIL (preview) -----";
pub const PREVIEW_END: &str = "----- END MAIL -----";

/// Prints each mail, whole, to standard output (development only).
pub struct LogTransport {
    from: String,
}

#[async_trait::async_trait]
impl MailTransport for LogTransport {
    async fn send(&self, mail: &OutgoingMail) -> Result<(), MailError> {
        let block = format!(
            "{PREVIEW_BEGIN}\nFrom: {}\nTo: {}\nSubject: {}\n\n{}\n{PREVIEW_END}\n",
            self.from, mail.to, mail.subject, mail.text
        );
        // One locked write, so that log lines from other tasks cannot land
        // inside the block.
        let mut out = std::io::stdout().lock();
        out.write_all(block.as_bytes())
            .and_then(|_| out.flush())
            .map_err(|e| MailError::Transient(e.to_string()))
    }
}

/// Sends through an SMTP server.
pub struct SmtpTransport {
    inner: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

#[async_trait::async_trait]
impl MailTransport for SmtpTransport {
    async fn send(&self, mail: &OutgoingMail) -> Result<(), MailError> {
        let to: Mailbox = mail
            .to
            .parse()
            .map_err(|_| MailError::Permanent("recipient is not a valid mailbox".into()))?;
        let msg = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject.clone())
            .multipart(MultiPart::alternative_plain_html(
                mail.text.clone(),
                mail.html.clone(),
            ))
            .map_err(|e| MailError::Permanent(format!("cannot build the message: {e}")))?;
        match self.inner.send(msg).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(MailError::Permanent(redact_smtp_error(&e))),
            Err(e) => Err(MailError::Transient(redact_smtp_error(&e))),
        }
    }
}

/// lettre's errors can quote the server's reply, which may echo the recipient.
fn redact_smtp_error(e: &lettre::transport::smtp::Error) -> String {
    if let Some(code) = e.status() {
        format!("smtp status {code}")
    } else if e.is_timeout() {
        "smtp timeout".into()
    } else if e.is_tls() {
        "smtp tls error".into()
    } else {
        "smtp connection error".into()
    }
}

/// Builds the configured transport.
pub fn transport_from_config(config: &Config) -> anyhow::Result<Arc<dyn MailTransport>> {
    let from = config
        .mail
        .from
        .clone()
        .unwrap_or_else(|| format!("{} <noreply@localhost.localdomain>", config.org.name));
    Ok(match config.mail.transport {
        MailTransportKind::Log => Arc::new(LogTransport { from }),
        MailTransportKind::Smtp => {
            let url = config
                .mail
                .smtp_url
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("mail.smtp_url is not set"))?;
            let inner = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose_secret())
                .map_err(|_| {
                    anyhow::anyhow!("mail.smtp_url is not a valid smtp:// or smtps:// URL")
                })?
                .timeout(Some(std::time::Duration::from_secs(30)))
                .build();
            let from: Mailbox = from
                .parse()
                .map_err(|_| anyhow::anyhow!("mail.from is not a valid mailbox"))?;
            Arc::new(SmtpTransport { inner, from })
        }
    })
}

/// Mail and page templates (minijinja, auto-escaping for `.html`).
pub struct Templates {
    env: minijinja::Environment<'static>,
}

impl Templates {
    pub fn new() -> anyhow::Result<Self> {
        let mut env = minijinja::Environment::new();
        env.add_template("page.html", include_str!("pages/templates/page.html"))?;
        env.add_template(
            "confirm_mail.txt",
            include_str!("pages/templates/confirm_mail.txt"),
        )?;
        env.add_template(
            "confirm_mail.html",
            include_str!("pages/templates/confirm_mail.html"),
        )?;
        env.add_template(
            "privacy_mail.txt",
            include_str!("pages/templates/privacy_mail.txt"),
        )?;
        env.add_template(
            "privacy_mail.html",
            include_str!("pages/templates/privacy_mail.html"),
        )?;
        Ok(Self { env })
    }

    pub fn render<S: Serialize>(&self, name: &str, ctx: S) -> anyhow::Result<String> {
        Ok(self.env.get_template(name)?.render(ctx)?)
    }
}

/// What a confirmation mail needs.
pub struct ConfirmationMail<'a> {
    pub to: &'a str,
    pub name: Option<&'a str>,
    pub list_name: &'a str,
    pub confirm_url: &'a str,
    pub block_url: &'a str,
    pub locale: Locale,
}

/// Renders the double opt-in mail.
pub fn render_confirmation(
    templates: &Templates,
    config: &Config,
    m: &ConfirmationMail<'_>,
) -> anyhow::Result<OutgoingMail> {
    let l = m.locale;
    let ctx = minijinja::context! {
        name => m.name,
        list_name => m.list_name,
        org_name => config.org.name,
        confirm_url => m.confirm_url,
        block_url => m.block_url,
        privacy_policy_url => config.org.privacy_policy_url,
        greeting => t(l, "mail.greeting"),
        intro => t(l, "mail.confirm.intro"),
        button => t(l, "mail.confirm.button"),
        validity => crate::i18n::fill(l, t(l, "mail.confirm.validity"), config),
        not_me => t(l, "mail.confirm.not_me"),
        not_me_link => t(l, "mail.confirm.not_me_link"),
        policy => t(l, "mail.policy"),
        lang => l.code(),
    };
    Ok(OutgoingMail {
        to: m.to.to_string(),
        subject: format!("{}: {}", t(l, "mail.confirm.subject"), m.list_name),
        text: templates.render("confirm_mail.txt", &ctx)?,
        html: templates.render("confirm_mail.html", &ctx)?,
    })
}

/// Renders the mail that answers a self-service privacy request: the link to
/// carry it out. `kind` is `access` or `erasure`.
pub fn render_privacy(
    templates: &Templates,
    config: &Config,
    to: &str,
    kind: &str,
    url: &str,
    l: Locale,
) -> anyhow::Result<OutgoingMail> {
    let key = |k: &str| t(l, &format!("mail.privacy.{kind}.{k}"));
    let ctx = minijinja::context! {
        org_name => config.org.name,
        url => url,
        privacy_policy_url => config.org.privacy_policy_url,
        greeting => t(l, "mail.greeting"),
        intro => key("intro"),
        button => key("button"),
        validity => t(l, "mail.privacy.validity"),
        not_me => t(l, "mail.privacy.not_me"),
        policy => t(l, "mail.policy"),
        lang => l.code(),
    };
    Ok(OutgoingMail {
        to: to.to_string(),
        subject: key("subject").to_string(),
        text: templates.render("privacy_mail.txt", &ctx)?,
        html: templates.render("privacy_mail.html", &ctx)?,
    })
}
