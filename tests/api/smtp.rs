//! A real SMTP listener on loopback that keeps what it receives. It can be told
//! to refuse the next few messages with a temporary error.
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
};

#[derive(Debug, Clone)]
pub struct ReceivedMail {
    pub rcpt: Vec<String>,
    pub data: Vec<u8>,
}

impl ReceivedMail {
    /// The decoded text part.
    pub fn text(&self) -> String {
        let msg = mail_parser::MessageParser::default()
            .parse(&self.data)
            .expect("a parsable message");
        msg.body_text(0).expect("a text part").into_owned()
    }

    pub fn html(&self) -> String {
        let msg = mail_parser::MessageParser::default()
            .parse(&self.data)
            .expect("a parsable message");
        msg.body_html(0).expect("an html part").into_owned()
    }

    pub fn subject(&self) -> String {
        let msg = mail_parser::MessageParser::default()
            .parse(&self.data)
            .expect("a parsable message");
        msg.subject().unwrap_or_default().to_string()
    }

    /// The first link in the text part whose URL contains `needle`.
    pub fn link_containing(&self, needle: &str) -> String {
        self.text()
            .split_whitespace()
            .find(|w| w.starts_with("http") && w.contains(needle))
            .unwrap_or_else(|| panic!("no link with {needle} in the mail"))
            .to_string()
    }
}

#[derive(Clone)]
pub struct FakeSmtp {
    pub port: u16,
    mails: Arc<Mutex<Vec<ReceivedMail>>>,
    refuse_next: Arc<AtomicUsize>,
}

impl FakeSmtp {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = Self {
            port,
            mails: Arc::default(),
            refuse_next: Arc::default(),
        };
        let s = server.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = s.session(sock).await;
                });
            }
        });
        server
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    pub fn mails(&self) -> Vec<ReceivedMail> {
        self.mails.lock().unwrap().clone()
    }

    pub fn mails_to(&self, to: &str) -> Vec<ReceivedMail> {
        self.mails()
            .into_iter()
            .filter(|m| m.rcpt.iter().any(|r| r.eq_ignore_ascii_case(to)))
            .collect()
    }

    /// Answer the next `n` messages with `451`.
    pub fn refuse_next(&self, n: usize) {
        self.refuse_next.store(n, Ordering::SeqCst);
    }

    async fn session(&self, sock: tokio::net::TcpStream) -> std::io::Result<()> {
        let (r, mut w) = sock.into_split();
        let mut r = BufReader::new(r);
        w.write_all(b"220 fake-smtp ESMTP\r\n").await?;
        let mut rcpt = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let cmd = line.trim_end().to_string();
            let upper = cmd.to_ascii_uppercase();
            if upper.starts_with("EHLO") {
                w.write_all(b"250-fake-smtp\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
                    .await?;
            } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
                w.write_all(b"250 ok\r\n").await?;
            } else if upper.starts_with("RSET") {
                rcpt.clear();
                w.write_all(b"250 ok\r\n").await?;
            } else if upper.starts_with("MAIL FROM") {
                let refuse = self
                    .refuse_next
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if refuse {
                    w.write_all(b"451 4.3.0 try again later\r\n").await?;
                } else {
                    w.write_all(b"250 ok\r\n").await?;
                }
            } else if upper.starts_with("RCPT TO") {
                let addr = cmd
                    .split_once('<')
                    .and_then(|(_, r)| r.split_once('>'))
                    .map(|(a, _)| a.to_string())
                    .unwrap_or_default();
                rcpt.push(addr);
                w.write_all(b"250 ok\r\n").await?;
            } else if upper == "DATA" {
                w.write_all(b"354 go ahead\r\n").await?;
                let mut data = Vec::new();
                loop {
                    let mut l = String::new();
                    if r.read_line(&mut l).await? == 0 {
                        return Ok(());
                    }
                    if l == ".\r\n" || l == ".\n" {
                        break;
                    }
                    let l = l.strip_prefix('.').unwrap_or(&l);
                    data.extend_from_slice(l.as_bytes());
                }
                self.mails.lock().unwrap().push(ReceivedMail {
                    rcpt: std::mem::take(&mut rcpt),
                    data,
                });
                w.write_all(b"250 queued\r\n").await?;
            } else if upper.starts_with("QUIT") {
                w.write_all(b"221 bye\r\n").await?;
                return Ok(());
            } else {
                w.write_all(b"502 not implemented\r\n").await?;
            }
        }
    }
}
