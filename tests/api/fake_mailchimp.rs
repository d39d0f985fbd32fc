//! A stateful fake of the Mailchimp Marketing API v3, served over HTTP/1.1 on
//! loopback, for the sync, reconciliation and webhook tests.
//!
//! It keeps members per audience (list) and follows the rules of the real API
//! that listguard depends on: subscriber hashes, the compliance state of
//! unsubscribed and cleaned members (only `pending` brings them back),
//! archiving, permanent deletion ("forgotten" addresses), the batch endpoint
//! and its 500-member cap, paging and `since_last_changed`, the validation
//! `GET` before a webhook is registered, and at most 10 requests in flight.
//!
//! Tests can also make it slow ([`FakeMailchimp::set_latency`]) or unreliable
//! ([`FakeMailchimp::set_fault_rate`]) and look at what it received.
//!
//! Besides the routes the sync code uses, it answers `GET` on a list, on one
//! member (an archived member shows status `archived`, as in the real API) and
//! on a list's webhooks. `status=archived` lists archived members.
//! Not faked: changing a member's address with `PATCH`, and passing an email
//! address instead of a subscriber hash in the path.
use std::{
    collections::{HashMap, HashSet},
    error::Error,
    fmt,
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    HeaderMap, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use md5::{Digest, Md5};
use rand::Rng;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

/// The only API key the fake accepts (as the password of HTTP Basic auth; the
/// user name may be anything). Its `-us6` suffix is the data centre.
pub const FAKE_API_KEY: &str = "0123456789abcdef0123456789abcdef-us6";

/// Mailchimp answers 429 past this many simultaneous requests per account.
const MAX_IN_FLIGHT: usize = 10;
/// The batch endpoint takes at most this many members per call.
const MAX_BATCH: usize = 500;
/// `count` on a listing is capped at this.
const MAX_COUNT: usize = 1000;
/// `count` on a listing when the client gives none.
const DEFAULT_COUNT: usize = 10;
/// Request bodies larger than this are refused.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// How long the webhook validation `GET` may take.
const WEBHOOK_VALIDATION_TIMEOUT: Duration = Duration::from_secs(5);
/// The `type` of every problem document.
const ERROR_DOCS: &str = "https://mailchimp.com/developer/marketing/docs/errors/";
/// The statuses a member can have.
const STATUSES: [&str; 5] = [
    "subscribed",
    "unsubscribed",
    "cleaned",
    "pending",
    "transactional",
];

/// One audience member as the fake keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// As last written; the subscriber hash is that of its lower-cased form.
    pub email_address: String,
    /// `subscribed`, `unsubscribed`, `cleaned`, `pending` or `transactional`.
    pub status: String,
    /// Set by `DELETE` (archive). An archived member is not listed, and
    /// `PATCH` on it is a 404; `PUT` brings it back with `status_if_new`.
    pub archived: bool,
    /// `{"FNAME": .., "LNAME": ..}`; `PUT` and `PATCH` merge into it.
    pub merge_fields: Value,
    /// The IP address the person signed up from, if given.
    pub ip_signup: Option<String>,
    /// When the person signed up, as given (the fake does not parse it).
    pub timestamp_signup: Option<String>,
    /// The IP address the person confirmed from, if given.
    pub ip_opt: Option<String>,
    /// When the person confirmed, as given (the fake does not parse it).
    pub timestamp_opt: Option<String>,
    /// Bumped by every write; what `since_last_changed` compares against.
    pub last_changed: DateTime<Utc>,
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Call {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The path without the query, e.g. `/3.0/lists/abc/members/<hash>`.
    pub path: String,
    /// The raw query string without `?`; empty when there is none.
    pub query: String,
}

/// The fake server. Clones share the same state and server.
#[derive(Clone)]
pub struct FakeMailchimp {
    shared: Arc<Shared>,
}

impl FakeMailchimp {
    /// Binds 127.0.0.1 on a free port and serves in a spawned task, with the
    /// given audiences (lists) and no members. Any other list id is a 404.
    pub async fn start(list_ids: &[&str]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the fake Mailchimp binds loopback");
        let addr = listener
            .local_addr()
            .expect("the fake Mailchimp's listener has an address");
        let state = State {
            lists: list_ids
                .iter()
                .map(|id| ((*id).to_owned(), Audience::default()))
                .collect(),
            calls: Vec::new(),
            fault_rate: 0.0,
            latency: Duration::ZERO,
        };
        let shared = Arc::new(Shared {
            addr,
            state: Mutex::new(state),
            requests: Arc::default(),
            connections: Arc::default(),
            http: reqwest::Client::builder()
                .timeout(WEBHOOK_VALIDATION_TIMEOUT)
                .no_proxy()
                .build()
                .expect("a reqwest client for webhook validation"),
        });
        tokio::spawn(serve(listener, shared.clone()));
        Self { shared }
    }

    /// `http://127.0.0.1:PORT/3.0`: what the client uses in place of
    /// `https://us6.api.mailchimp.com/3.0`.
    pub fn base_url(&self) -> String {
        format!("http://{}/3.0", self.shared.addr)
    }

    /// The member under `hash` in `list_id`, archived or not.
    pub fn member(&self, list_id: &str, hash: &str) -> Option<Member> {
        self.shared.lock().lists.get(list_id)?.get(hash).cloned()
    }

    /// Every member of `list_id` in insertion order, archived ones included.
    pub fn members(&self, list_id: &str) -> Vec<Member> {
        self.shared
            .lock()
            .lists
            .get(list_id)
            .map(|audience| audience.members.iter().map(|(_, m)| m.clone()).collect())
            .unwrap_or_default()
    }

    /// Puts `member` in `list_id` directly, under the hash of its address,
    /// replacing any member there and clearing a forgotten mark. Its
    /// `last_changed` is kept as given. Panics on a list the fake does not have.
    pub fn seed_member(&self, list_id: &str, member: Member) {
        let hash = Self::subscriber_hash(&member.email_address);
        let mut state = self.shared.lock();
        let Some(audience) = state.lists.get_mut(list_id) else {
            panic!("the fake Mailchimp has no list {list_id}");
        };
        audience.forgotten.remove(&hash);
        audience.put(&hash, member);
    }

    /// Whether `hash` was permanently deleted from `list_id`.
    pub fn is_forgotten(&self, list_id: &str, hash: &str) -> bool {
        self.shared
            .lock()
            .lists
            .get(list_id)
            .is_some_and(|audience| audience.forgotten.contains(hash))
    }

    /// From now on, this fraction (0 to 1) of requests get a random fault: a
    /// 429, 500 or 503 problem document, a 403 with an empty body, or a dropped
    /// connection, chosen uniformly. A faulted request changes no state.
    pub fn set_fault_rate(&self, ratio: f64) {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        self.shared.lock().fault_rate = ratio;
    }

    /// From now on, every answer waits this long first (while counted as in
    /// flight).
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// Every request received, in order, faulted and refused ones included.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().calls.clone()
    }

    /// The highest number of requests in flight at once ever seen, including
    /// those that were answered 429 for being over the limit.
    pub fn max_concurrent(&self) -> usize {
        self.shared.requests.max()
    }

    /// The highest number of simultaneously open TCP connections ever seen.
    pub fn max_connections(&self) -> usize {
        self.shared.connections.max()
    }

    /// The bodies of the webhooks registered on `list_id`, in order.
    pub fn webhooks(&self, list_id: &str) -> Vec<Value> {
        self.shared
            .lock()
            .lists
            .get(list_id)
            .map(|audience| audience.webhooks.iter().map(|(_, w)| w.clone()).collect())
            .unwrap_or_default()
    }

    /// Mailchimp's subscriber hash: the lower-case hex MD5 of the lower-cased
    /// address.
    pub fn subscriber_hash(email: &str) -> String {
        hex::encode(Md5::digest(email.to_lowercase().as_bytes()))
    }
}

// ---------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------

/// What the server task and the handles share.
struct Shared {
    addr: SocketAddr,
    state: Mutex<State>,
    requests: Arc<HighWater>,
    connections: Arc<HighWater>,
    /// For the webhook validation `GET`.
    http: reqwest::Client,
}

impl Shared {
    /// The state; never held across an `.await`.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the audience `list_id` under the lock; 404 if there is none.
    fn with_audience<T>(
        &self,
        list_id: &str,
        f: impl FnOnce(&mut Audience) -> Result<T, Problem>,
    ) -> Result<T, Problem> {
        let mut state = self.lock();
        let audience = state
            .lists
            .get_mut(list_id)
            .ok_or_else(Problem::not_found)?;
        f(audience)
    }
}

struct State {
    lists: HashMap<String, Audience>,
    calls: Vec<Call>,
    fault_rate: f64,
    latency: Duration,
}

/// One list's members, forgotten hashes and webhooks.
#[derive(Default)]
struct Audience {
    /// In insertion order, each under its subscriber hash.
    members: Vec<(String, Member)>,
    /// Hashes of permanently deleted members.
    forgotten: HashSet<String>,
    /// `(id, body)` of each registered webhook.
    webhooks: Vec<(String, Value)>,
}

impl Audience {
    fn get(&self, hash: &str) -> Option<&Member> {
        self.members.iter().find(|(h, _)| h == hash).map(|(_, m)| m)
    }

    fn get_mut(&mut self, hash: &str) -> Option<&mut Member> {
        self.members
            .iter_mut()
            .find(|(h, _)| h == hash)
            .map(|(_, m)| m)
    }

    /// Replaces the member under `hash` in place, or appends it.
    fn put(&mut self, hash: &str, member: Member) {
        match self.get_mut(hash) {
            Some(slot) => *slot = member,
            None => self.members.push((hash.to_owned(), member)),
        }
    }

    /// Whether there was a member under `hash` to remove.
    fn remove(&mut self, hash: &str) -> bool {
        let before = self.members.len();
        self.members.retain(|(h, _)| h != hash);
        self.members.len() != before
    }
}

/// A gauge that remembers its highest reading.
#[derive(Default)]
struct HighWater {
    current: AtomicUsize,
    max: AtomicUsize,
}

impl HighWater {
    /// Counts one more until the returned guard is dropped; also returns the
    /// reading including this one.
    fn enter(self: &Arc<Self>) -> (Level, usize) {
        let now = self.current.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        (Level(self.clone()), now)
    }

    fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

/// One unit on a [`HighWater`] gauge, given back on drop.
struct Level(Arc<HighWater>);

impl Drop for Level {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

type Answer = Response<Full<Bytes>>;

/// What the service returns to make hyper close the connection without
/// answering.
#[derive(Debug)]
struct DropConnection;

impl fmt::Display for DropConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("fault: connection dropped on purpose")
    }
}

impl Error for DropConnection {}

/// Accepts connections until the runtime ends, one task per connection.
async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors or similar: wait and go on.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (open, _) = shared.connections.enter();
        let shared = shared.clone();
        tokio::spawn(async move {
            let _open = open;
            let service = service_fn(move |req| handle(shared.clone(), req));
            // Errors here are dropped connections, on purpose or by the client.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// One request: record it, count it in flight, wait the latency, maybe fault,
/// check the key, then route it.
async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Answer, DropConnection> {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let (fault_rate, latency) = {
        let mut state = shared.lock();
        state.calls.push(Call {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
        });
        (state.fault_rate, state.latency)
    };
    let (_in_flight, in_flight) = shared.requests.enter();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if in_flight > MAX_IN_FLIGHT {
        return Ok(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too Many Requests",
            format!("You have exceeded the limit of {MAX_IN_FLIGHT} simultaneous connections."),
        )
        .into_answer());
    }
    if fault_rate > 0.0 && rand::random::<f64>() < fault_rate {
        return fault();
    }
    if !authorized(req.headers()) {
        return Ok(Problem::new(
            StatusCode::UNAUTHORIZED,
            "API Key Invalid",
            "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
        )
        .into_answer());
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Ok(Problem::invalid("The request body could not be read.").into_answer());
        }
    };
    let answer = match route(&shared, &method, &path, &query, &body).await {
        Ok(Reply::Json(value)) => json_answer(StatusCode::OK, "application/json", &value),
        Ok(Reply::NoContent) => answer(StatusCode::NO_CONTENT, None, Bytes::new()),
        Err(problem) => problem.into_answer(),
    };
    Ok(answer)
}

/// One of the five faults, uniformly.
fn fault() -> Result<Answer, DropConnection> {
    let kind = rand::thread_rng().gen_range(0..5);
    let problem = match kind {
        0 => Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too Many Requests",
            "You have exceeded the limit of 10 simultaneous connections.",
        ),
        1 => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error",
            "An unexpected internal error has occurred. Please contact Support for more information.",
        ),
        2 => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            "This service is temporarily unavailable. Please try again later.",
        ),
        // What an edge proxy answers: no JSON at all.
        3 => return Ok(answer(StatusCode::FORBIDDEN, None, Bytes::new())),
        _ => return Err(DropConnection),
    };
    Ok(problem.into_answer())
}

/// HTTP Basic with [`FAKE_API_KEY`] as the password.
fn authorized(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, credentials)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(credentials.trim()) else {
        return false;
    };
    let Ok(text) = String::from_utf8(decoded) else {
        return false;
    };
    matches!(text.split_once(':'), Some((_, password)) if password == FAKE_API_KEY)
}

// ---------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------

/// The resources the fake knows.
#[derive(Clone, Copy)]
enum Route<'a> {
    /// `/lists/{list}`
    List(&'a str),
    /// `/lists/{list}/members`
    Members(&'a str),
    /// `/lists/{list}/members/{hash}`
    Member(&'a str, &'a str),
    /// `/lists/{list}/members/{hash}/actions/delete-permanent`
    DeletePermanent(&'a str, &'a str),
    /// `/lists/{list}/webhooks`
    Webhooks(&'a str),
}

impl<'a> Route<'a> {
    fn parse(path: &'a str) -> Option<Self> {
        let rest = path.strip_prefix("/3.0/")?.trim_end_matches('/');
        let segments: Vec<&str> = rest.split('/').collect();
        Some(match segments.as_slice() {
            ["lists", list] => Self::List(list),
            ["lists", list, "members"] => Self::Members(list),
            ["lists", list, "members", hash] => Self::Member(list, hash),
            [
                "lists",
                list,
                "members",
                hash,
                "actions",
                "delete-permanent",
            ] => Self::DeletePermanent(list, hash),
            ["lists", list, "webhooks"] => Self::Webhooks(list),
            _ => return None,
        })
    }

    fn allowed(self) -> &'static [&'static str] {
        match self {
            Self::List(_) => &["GET", "POST"],
            Self::Members(_) => &["GET"],
            Self::Member(..) => &["GET", "PUT", "PATCH", "DELETE"],
            Self::DeletePermanent(..) => &["POST"],
            Self::Webhooks(_) => &["GET", "POST"],
        }
    }
}

/// A successful answer.
enum Reply {
    /// 200 with this JSON.
    Json(Value),
    /// 204, empty.
    NoContent,
}

async fn route(
    shared: &Shared,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
) -> Result<Reply, Problem> {
    let route = Route::parse(path).ok_or_else(Problem::not_found)?;
    let allowed = route.allowed();
    if !allowed.contains(&method) {
        return Err(Problem::method_not_allowed(allowed));
    }
    match (route, method) {
        (Route::List(list), "GET") => shared.with_audience(list, |a| Ok(list_info(a, list))),
        (Route::List(list), _) => shared.with_audience(list, |a| batch(a, list, body)),
        (Route::Members(list), _) => shared.with_audience(list, |a| list_members(a, list, query)),
        (Route::Member(list, hash), "GET") => shared.with_audience(list, |a| {
            let member = a.get(hash).ok_or_else(Problem::not_found)?;
            Ok(Reply::Json(member_json(list, hash, member)))
        }),
        (Route::Member(list, hash), "PUT") => {
            shared.with_audience(list, |a| put_member(a, list, hash, body))
        }
        (Route::Member(list, hash), "PATCH") => {
            shared.with_audience(list, |a| patch_member(a, list, hash, body))
        }
        (Route::Member(list, hash), _) => shared.with_audience(list, |a| archive_member(a, hash)),
        (Route::DeletePermanent(list, hash), _) => {
            shared.with_audience(list, |a| delete_permanent(a, hash))
        }
        (Route::Webhooks(list), "GET") => shared.with_audience(list, |a| {
            let hooks: Vec<Value> = a
                .webhooks
                .iter()
                .map(|(id, body)| webhook_json(list, id, body))
                .collect();
            Ok(Reply::Json(json!({
                "webhooks": hooks,
                "list_id": list,
                "total_items": hooks.len(),
            })))
        }),
        (Route::Webhooks(list), _) => add_webhook(shared, list, body).await,
    }
}

// ---------------------------------------------------------------------------
// Members
// ---------------------------------------------------------------------------

/// The member fields a `PUT`, `PATCH` or batch entry may carry; others
/// (`email_type`, `tags`, `vip`, ...) are ignored.
#[derive(Debug, Default, Deserialize)]
struct MemberInput {
    email_address: Option<String>,
    status: Option<String>,
    status_if_new: Option<String>,
    merge_fields: Option<Map<String, Value>>,
    ip_signup: Option<String>,
    timestamp_signup: Option<String>,
    ip_opt: Option<String>,
    timestamp_opt: Option<String>,
}

/// Reads and checks one member object; the error is a problem detail.
fn member_input(value: Value) -> Result<MemberInput, String> {
    let input: MemberInput = serde_json::from_value(value)
        .map_err(|e| format!("The resource submitted could not be validated: {e}"))?;
    for status in [&input.status, &input.status_if_new].into_iter().flatten() {
        if !STATUSES.contains(&status.as_str()) {
            return Err(format!(
                "The resource submitted could not be validated: status {status:?} is not one of {STATUSES:?}."
            ));
        }
    }
    if let Some(email) = &input.email_address
        && !looks_like_email(email)
    {
        return Err(format!(
            "{email} looks fake or invalid, please enter a real email address."
        ));
    }
    Ok(input)
}

fn looks_like_email(email: &str) -> bool {
    match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
                && !email.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

/// What an upsert did.
enum Written {
    /// A new member, or an archived one brought back.
    Created,
    /// An existing, non-archived member.
    Updated,
}

/// The shared core of `PUT` and the batch endpoint.
///
/// `new_status` is the status of a new (or unarchived) member; `existing_status`
/// the status to give an existing one, if any; `update_existing` false makes an
/// existing member an `ERROR_CONTACT_EXISTS`.
fn upsert(
    audience: &mut Audience,
    hash: &str,
    email: &str,
    input: &MemberInput,
    new_status: Option<&str>,
    existing_status: Option<&str>,
    update_existing: bool,
) -> Result<(Written, Member), Problem> {
    if audience.forgotten.contains(hash) {
        return Err(Problem::forgotten(email));
    }
    let now = Utc::now();
    if let Some(member) = audience.get_mut(hash)
        && !member.archived
    {
        if !update_existing {
            return Err(Problem::invalid(format!(
                "{email} is already a list member. Use PUT to insert or update list members."
            ))
            .with_title("Member Exists")
            .with_code("ERROR_CONTACT_EXISTS"));
        }
        check_compliance(member, existing_status)?;
        if let Some(status) = existing_status {
            member.status = status.to_owned();
        }
        member.email_address = email.to_owned();
        apply(member, input, now);
        return Ok((Written::Updated, member.clone()));
    }
    let status = new_status.ok_or_else(|| {
        Problem::invalid(
            "The resource submitted could not be validated: a new member needs a status \
             (status_if_new with PUT, status in a batch).",
        )
    })?;
    let mut member = match audience.get(hash) {
        // Archived: brought back, keeping its merge fields.
        Some(archived) => archived.clone(),
        None => Member {
            email_address: email.to_owned(),
            status: status.to_owned(),
            archived: false,
            merge_fields: json!({"FNAME": "", "LNAME": ""}),
            ip_signup: None,
            timestamp_signup: None,
            ip_opt: None,
            timestamp_opt: None,
            last_changed: now,
        },
    };
    member.archived = false;
    member.status = status.to_owned();
    member.email_address = email.to_owned();
    apply(&mut member, input, now);
    audience.put(hash, member.clone());
    Ok((Written::Created, member))
}

/// An unsubscribed or cleaned member cannot be made `subscribed` again.
fn check_compliance(member: &Member, wanted: Option<&str>) -> Result<(), Problem> {
    let locked = matches!(member.status.as_str(), "unsubscribed" | "cleaned");
    if !member.archived && locked && wanted == Some("subscribed") {
        return Err(Problem::compliance(&member.email_address));
    }
    Ok(())
}

/// Copies the given fields (merge fields are merged key by key) and bumps
/// `last_changed`.
fn apply(member: &mut Member, input: &MemberInput, now: DateTime<Utc>) {
    if let Some(fields) = &input.merge_fields {
        if !member.merge_fields.is_object() {
            member.merge_fields = json!({});
        }
        if let Some(existing) = member.merge_fields.as_object_mut() {
            for (key, value) in fields {
                existing.insert(key.clone(), value.clone());
            }
        }
    }
    let pairs = [
        (&mut member.ip_signup, &input.ip_signup),
        (&mut member.timestamp_signup, &input.timestamp_signup),
        (&mut member.ip_opt, &input.ip_opt),
        (&mut member.timestamp_opt, &input.timestamp_opt),
    ];
    for (field, given) in pairs {
        if let Some(value) = given {
            *field = Some(value.clone());
        }
    }
    member.last_changed = now;
}

/// `PUT /lists/{list}/members/{hash}`: add or update.
fn put_member(
    audience: &mut Audience,
    list_id: &str,
    hash: &str,
    body: &[u8],
) -> Result<Reply, Problem> {
    let input = member_input(parse_json(body)?).map_err(Problem::invalid)?;
    let email = input
        .email_address
        .clone()
        .ok_or_else(|| Problem::invalid("email_address is required."))?;
    if FakeMailchimp::subscriber_hash(&email) != hash {
        return Err(Problem::invalid(
            "The subscriber hash in the URL is not the MD5 of the lower-cased email_address.",
        ));
    }
    let (_, member) = upsert(
        audience,
        hash,
        &email,
        &input,
        input.status_if_new.as_deref(),
        input.status.as_deref(),
        true,
    )?;
    Ok(Reply::Json(member_json(list_id, hash, &member)))
}

/// `PATCH /lists/{list}/members/{hash}`: update an existing member.
fn patch_member(
    audience: &mut Audience,
    list_id: &str,
    hash: &str,
    body: &[u8],
) -> Result<Reply, Problem> {
    let input = member_input(parse_json(body)?).map_err(Problem::invalid)?;
    let member = audience
        .get_mut(hash)
        .filter(|m| !m.archived)
        .ok_or_else(Problem::not_found)?;
    if let Some(email) = &input.email_address {
        if FakeMailchimp::subscriber_hash(email) != hash {
            return Err(Problem::invalid(
                "The fake Mailchimp does not change a member's address with PATCH.",
            ));
        }
        member.email_address = email.clone();
    }
    check_compliance(member, input.status.as_deref())?;
    if let Some(status) = &input.status {
        member.status = status.clone();
    }
    apply(member, &input, Utc::now());
    Ok(Reply::Json(member_json(list_id, hash, member)))
}

/// `DELETE /lists/{list}/members/{hash}`: archive.
fn archive_member(audience: &mut Audience, hash: &str) -> Result<Reply, Problem> {
    let member = audience.get_mut(hash).ok_or_else(Problem::not_found)?;
    if member.archived {
        return Err(Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed",
            format!("{} is already archived.", member.email_address),
        ));
    }
    if matches!(member.status.as_str(), "cleaned" | "pending") {
        return Err(Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed",
            format!(
                "{} is {} and cannot be archived.",
                member.email_address, member.status
            ),
        ));
    }
    member.archived = true;
    member.last_changed = Utc::now();
    Ok(Reply::NoContent)
}

/// `POST /lists/{list}/members/{hash}/actions/delete-permanent`.
fn delete_permanent(audience: &mut Audience, hash: &str) -> Result<Reply, Problem> {
    if !audience.remove(hash) {
        return Err(Problem::not_found());
    }
    audience.forgotten.insert(hash.to_owned());
    Ok(Reply::NoContent)
}

/// `POST /lists/{list}`: batch subscribe or unsubscribe.
fn batch(audience: &mut Audience, list_id: &str, body: &[u8]) -> Result<Reply, Problem> {
    let request = parse_json(body)?;
    let members = request
        .get("members")
        .and_then(Value::as_array)
        .ok_or_else(|| Problem::invalid("members must be an array of members."))?;
    let update_existing = match request.get("update_existing") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(Problem::invalid("update_existing must be a boolean.")),
    };
    if members.len() > MAX_BATCH {
        return Err(Problem::invalid(format!(
            "The resource submitted could not be validated: at most {MAX_BATCH} members per batch, got {}.",
            members.len()
        )));
    }
    let (mut created, mut updated, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for raw in members {
        let email_hint = raw
            .get("email_address")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let outcome = member_input(raw.clone())
            .map_err(Problem::invalid)
            .and_then(|input| {
                let email = input
                    .email_address
                    .clone()
                    .ok_or_else(|| Problem::invalid("email_address is required."))?;
                let hash = FakeMailchimp::subscriber_hash(&email);
                let status = input.status.as_deref();
                let (written, member) = upsert(
                    audience,
                    &hash,
                    &email,
                    &input,
                    status.or(input.status_if_new.as_deref()),
                    status,
                    update_existing,
                )?;
                Ok((written, member_json(list_id, &hash, &member)))
            });
        match outcome {
            Ok((Written::Created, json)) => created.push(json),
            Ok((Written::Updated, json)) => updated.push(json),
            Err(problem) => errors.push(json!({
                "email_address": email_hint,
                "error": problem.detail,
                "error_code": problem.code,
            })),
        }
    }
    Ok(Reply::Json(json!({
        "total_created": created.len(),
        "total_updated": updated.len(),
        "error_count": errors.len(),
        "new_members": created,
        "updated_members": updated,
        "errors": errors,
    })))
}

/// `GET /lists/{list}/members` with `count`, `offset`, `status` and
/// `since_last_changed`.
fn list_members(audience: &Audience, list_id: &str, query: &str) -> Result<Reply, Problem> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|_| Problem::invalid("The query string could not be parsed."))?;
    let mut count = DEFAULT_COUNT;
    let mut offset = 0;
    let mut status = None;
    let mut since = None;
    for (key, value) in &pairs {
        match key.as_str() {
            "count" => count = parse_index("count", value)?.min(MAX_COUNT),
            "offset" => offset = parse_index("offset", value)?,
            "status" => {
                if !STATUSES.contains(&value.as_str()) && value != "archived" {
                    return Err(Problem::invalid(format!(
                        "status {value:?} is not a member status."
                    )));
                }
                status = Some(value.as_str());
            }
            "since_last_changed" => {
                let parsed = parse_time(value).ok_or_else(|| {
                    Problem::invalid(format!(
                        "since_last_changed {value:?} is not an ISO 8601 date-time."
                    ))
                })?;
                since = Some(parsed);
            }
            // fields, exclude_fields and the rest are accepted and ignored.
            _ => {}
        }
    }
    let matching: Vec<&(String, Member)> = audience
        .members
        .iter()
        .filter(|(_, m)| match status {
            Some("archived") => m.archived,
            Some(wanted) => !m.archived && m.status == wanted,
            None => !m.archived,
        })
        .filter(|(_, m)| since.is_none_or(|since| m.last_changed >= since))
        .collect();
    let total_items = matching.len();
    let page: Vec<Value> = matching
        .into_iter()
        .skip(offset)
        .take(count)
        .map(|(hash, m)| member_json(list_id, hash, m))
        .collect();
    Ok(Reply::Json(json!({
        "members": page,
        "list_id": list_id,
        "total_items": total_items,
    })))
}

fn parse_index(name: &str, value: &str) -> Result<usize, Problem> {
    value.parse().map_err(|_| {
        Problem::invalid(format!(
            "{name} must be a non-negative integer, got {value:?}."
        ))
    })
}

/// ISO 8601 with an offset; a `+` that arrived unencoded (and so decoded to a
/// space) is taken back.
fn parse_time(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value)
        .or_else(|_| DateTime::parse_from_rfc3339(&value.replace(' ', "+")))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A member as the API shows it.
fn member_json(list_id: &str, hash: &str, m: &Member) -> Value {
    let status = if m.archived {
        "archived"
    } else {
        m.status.as_str()
    };
    json!({
        "id": hash,
        "email_address": m.email_address,
        "unique_email_id": hash.get(..10).unwrap_or(hash),
        "status": status,
        "merge_fields": m.merge_fields,
        "ip_signup": m.ip_signup.as_deref().unwrap_or_default(),
        "timestamp_signup": m.timestamp_signup.as_deref().unwrap_or_default(),
        "ip_opt": m.ip_opt.as_deref().unwrap_or_default(),
        "timestamp_opt": m.timestamp_opt.as_deref().unwrap_or_default(),
        "last_changed": m.last_changed.to_rfc3339_opts(SecondsFormat::Secs, false),
        "list_id": list_id,
    })
}

/// `GET /lists/{list}`: a little of what the real one shows.
fn list_info(audience: &Audience, list_id: &str) -> Reply {
    let count = |status: &str| {
        audience
            .members
            .iter()
            .filter(|(_, m)| !m.archived && m.status == status)
            .count()
    };
    Reply::Json(json!({
        "id": list_id,
        "name": format!("Fake list {list_id}"),
        "stats": {
            "member_count": count("subscribed"),
            "unsubscribe_count": count("unsubscribed"),
            "cleaned_count": count("cleaned"),
        },
    }))
}

// ---------------------------------------------------------------------------
// Webhooks
// ---------------------------------------------------------------------------

/// `POST /lists/{list}/webhooks`: validates the URL with a `GET`, then records
/// the body.
async fn add_webhook(shared: &Shared, list_id: &str, body: &[u8]) -> Result<Reply, Problem> {
    let request = parse_json(body)?;
    let url = request
        .get("url")
        .and_then(Value::as_str)
        .filter(|url| !url.is_empty())
        .ok_or_else(|| Problem::invalid("url is required."))?
        .to_owned();
    shared.with_audience(list_id, |_| Ok(()))?;
    let validated = match shared
        .http
        .get(&url)
        .header(header::USER_AGENT, "MailChimp.com WebHook Validator")
        .send()
        .await
    {
        Ok(response) => response.status().is_success(),
        Err(_) => false,
    };
    if !validated {
        return Err(Problem::invalid(
            "The resource submitted could not be validated. For field-specific details, see the 'errors' array.",
        )
        .with_errors(json!([{
            "field": "url",
            "message": format!("The URL {url} did not answer a GET with a 2xx status."),
        }])));
    }
    let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    shared.with_audience(list_id, |audience| {
        audience.webhooks.push((id.clone(), request.clone()));
        Ok(())
    })?;
    Ok(Reply::Json(webhook_json(list_id, &id, &request)))
}

fn webhook_json(list_id: &str, id: &str, body: &Value) -> Value {
    json!({
        "id": id,
        "url": body.get("url").cloned().unwrap_or(Value::Null),
        "list_id": list_id,
        "events": body.get("events").cloned().unwrap_or_else(|| json!({})),
        "sources": body.get("sources").cloned().unwrap_or_else(|| json!({})),
    })
}

// ---------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------

/// An `application/problem+json` error, as every Mailchimp error is.
#[derive(Debug)]
struct Problem {
    status: StatusCode,
    title: &'static str,
    detail: String,
    /// `Allow` header of a 405 on a route.
    allow: Option<String>,
    /// Field errors, shown as `errors` when present.
    errors: Option<Value>,
    /// The batch endpoint's `error_code` for this problem.
    code: &'static str,
}

impl Problem {
    fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            title,
            detail: detail.into(),
            allow: None,
            errors: None,
            code: "ERROR_GENERIC",
        }
    }

    /// 400 "Invalid Resource".
    fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Invalid Resource", detail)
    }

    fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "Resource Not Found",
            "The requested resource could not be found.",
        )
    }

    fn method_not_allowed(allowed: &[&str]) -> Self {
        let mut problem = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed",
            "The requested method and resource are not compatible. See the Allow header for this resource's available methods.",
        );
        problem.allow = Some(allowed.join(", "));
        problem
    }

    fn compliance(email: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "Member In Compliance State",
            format!(
                "{email} is already a list member in compliance state due to unsubscribe, bounce, or compliance review."
            ),
        )
    }

    fn forgotten(email: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "Forgotten Email Not Subscribed",
            format!(
                "{email} was permanently deleted and cannot be re-imported. The contact must re-subscribe to get back on the list."
            ),
        )
    }

    fn with_title(mut self, title: &'static str) -> Self {
        self.title = title;
        self
    }

    fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }

    fn with_errors(mut self, errors: Value) -> Self {
        self.errors = Some(errors);
        self
    }

    fn into_answer(self) -> Answer {
        let mut body = json!({
            "type": ERROR_DOCS,
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
            "instance": uuid::Uuid::new_v4().to_string(),
        });
        if let (Some(errors), Some(object)) = (self.errors, body.as_object_mut()) {
            object.insert("errors".to_owned(), errors);
        }
        let mut answer = json_answer(self.status, "application/problem+json", &body);
        if let Some(allow) = self.allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
            answer.headers_mut().insert(header::ALLOW, allow);
        }
        answer
    }
}

/// Parses a JSON request body; 400 "JSON Parse Error" when it is not JSON.
fn parse_json(body: &[u8]) -> Result<Value, Problem> {
    serde_json::from_slice(body).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "JSON Parse Error",
            format!("We encountered an unspecified JSON parsing error: {e}"),
        )
    })
}

fn json_answer(status: StatusCode, content_type: &'static str, body: &Value) -> Answer {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    answer(status, Some(content_type), Bytes::from(bytes))
}

fn answer(status: StatusCode, content_type: Option<&'static str>, body: Bytes) -> Answer {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    if let Some(content_type) = content_type {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    response
}

// ---------------------------------------------------------------------------
// Tests of the fake itself
// ---------------------------------------------------------------------------

mod tests {
    use super::*;

    const LIST: &str = "a1b2c3d4e5";

    /// A reqwest client for the fake, with the key.
    struct Api {
        http: reqwest::Client,
        base: String,
    }

    impl Api {
        fn new(fake: &FakeMailchimp) -> Self {
            Self {
                http: reqwest::Client::builder()
                    .no_proxy()
                    .build()
                    .expect("a reqwest client"),
                base: fake.base_url(),
            }
        }

        fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
            self.http
                .request(method, format!("{}{path}", self.base))
                .basic_auth("listguard", Some(FAKE_API_KEY))
        }

        /// Sends, and reads the answer as (status, JSON or `null` when empty).
        async fn call(
            &self,
            method: reqwest::Method,
            path: &str,
            body: Option<Value>,
        ) -> (u16, Value) {
            let mut request = self.request(method, path);
            if let Some(body) = body {
                request = request.json(&body);
            }
            read(request.send().await.expect("the fake answers")).await
        }

        async fn put(&self, email: &str, body: Value) -> (u16, Value) {
            let path = member_path(email);
            self.call(reqwest::Method::PUT, &path, Some(body)).await
        }

        async fn patch(&self, email: &str, body: Value) -> (u16, Value) {
            let path = member_path(email);
            self.call(reqwest::Method::PATCH, &path, Some(body)).await
        }

        async fn delete(&self, email: &str) -> (u16, Value) {
            let path = member_path(email);
            self.call(reqwest::Method::DELETE, &path, None).await
        }

        async fn delete_permanent(&self, email: &str) -> (u16, Value) {
            let path = format!("{}/actions/delete-permanent", member_path(email));
            self.call(reqwest::Method::POST, &path, None).await
        }

        async fn batch(&self, body: Value) -> (u16, Value) {
            let path = format!("/lists/{LIST}");
            self.call(reqwest::Method::POST, &path, Some(body)).await
        }

        async fn list(&self, query: &[(&str, &str)]) -> (u16, Value) {
            let request = self
                .request(reqwest::Method::GET, &format!("/lists/{LIST}/members"))
                .query(query);
            read(request.send().await.expect("the fake answers")).await
        }
    }

    async fn read(response: reqwest::Response) -> (u16, Value) {
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("a whole body");
        if bytes.is_empty() {
            (status, Value::Null)
        } else {
            (status, serde_json::from_slice(&bytes).expect("a JSON body"))
        }
    }

    fn member_path(email: &str) -> String {
        format!(
            "/lists/{LIST}/members/{}",
            FakeMailchimp::subscriber_hash(email)
        )
    }

    fn seeded(email: &str, status: &str, last_changed: DateTime<Utc>) -> Member {
        Member {
            email_address: email.to_owned(),
            status: status.to_owned(),
            archived: false,
            merge_fields: json!({"FNAME": "", "LNAME": ""}),
            ip_signup: None,
            timestamp_signup: None,
            ip_opt: None,
            timestamp_opt: None,
            last_changed,
        }
    }

    fn emails(listing: &Value) -> Vec<String> {
        listing["members"]
            .as_array()
            .expect("members")
            .iter()
            .map(|m| m["email_address"].as_str().expect("an address").to_owned())
            .collect()
    }

    #[tokio::test]
    async fn the_subscriber_hash_is_the_md5_of_the_lower_cased_address() {
        assert_eq!(
            FakeMailchimp::subscriber_hash("Urist.McVankab@freddiesjokes.com"),
            "62eeb292278cc15f5817cb78f7790b08"
        );
    }

    #[tokio::test]
    async fn requests_without_the_key_get_401_and_unknown_lists_routes_and_methods_are_told_apart()
    {
        let fake = FakeMailchimp::start(&[LIST]).await;
        let api = Api::new(&fake);
        let url = format!("{}/lists/{LIST}/members", fake.base_url());

        let without = api.http.get(&url).send().await.expect("an answer");
        assert_eq!(without.status(), 401);
        assert_eq!(
            without.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let (_, problem) = read(without).await;
        assert_eq!(problem["title"], "API Key Invalid");
        assert_eq!(problem["status"], 401);
        assert_eq!(problem["type"], ERROR_DOCS);
        assert!(uuid::Uuid::parse_str(problem["instance"].as_str().unwrap_or_default()).is_ok());

        let wrong = api
            .http
            .get(&url)
            .basic_auth("listguard", Some("0123456789abcdef0123456789abcdef-us1"))
            .send()
            .await
            .expect("an answer");
        assert_eq!(wrong.status(), 401);

        let (status, problem) = api
            .call(reqwest::Method::GET, "/lists/nope/members", None)
            .await;
        assert_eq!(
            (status, problem["title"].as_str()),
            (404, Some("Resource Not Found"))
        );
        let (status, _) = api.call(reqwest::Method::GET, "/campaigns", None).await;
        assert_eq!(status, 404);
        let (status, problem) = api
            .call(
                reqwest::Method::DELETE,
                &format!("/lists/{LIST}/members"),
                None,
            )
            .await;
        assert_eq!(
            (status, problem["title"].as_str()),
            (405, Some("Method Not Allowed"))
        );

        let not_json = api
            .request(reqwest::Method::PUT, &member_path("a@example.com"))
            .body("{not json")
            .send()
            .await
            .expect("an answer");
        assert_eq!(not_json.status(), 400);
        let (status, problem) = api
            .put(
                "a@example.com",
                json!({"email_address": "b@example.com", "status_if_new": "subscribed"}),
            )
            .await;
        assert_eq!(
            (status, problem["title"].as_str()),
            (400, Some("Invalid Resource"))
        );
        let (status, _) = api
            .put(
                "a@example.com",
                json!({"email_address": "a@example.com", "status_if_new": 7}),
            )
            .await;
        assert_eq!(status, 400);
        let (status, _) = api
            .put("a@example.com", json!({"email_address": "a@example.com"}))
            .await;
        assert_eq!(status, 400, "a new member needs status_if_new");
        assert!(fake.members(LIST).is_empty());
        assert_eq!(fake.calls().len(), 9);
        assert_eq!(fake.calls()[0].path, format!("/3.0/lists/{LIST}/members"));
        assert_eq!(fake.calls()[0].method, "GET");
    }

    #[tokio::test]
    async fn a_member_who_unsubscribed_cannot_be_resubscribed_and_pending_is_the_way_back() {
        let fake = FakeMailchimp::start(&[LIST]).await;
        let api = Api::new(&fake);
        let email = "Ada@Example.com";
        let hash = FakeMailchimp::subscriber_hash(email);

        let (status, member) = api
            .put(
                email,
                json!({
                    "email_address": email,
                    "status_if_new": "subscribed",
                    "status": "subscribed",
                    "merge_fields": {"FNAME": "Ada"},
                    "ip_signup": "192.0.2.1",
                }),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(member["id"], hash);
        assert_eq!(member["status"], "subscribed");
        assert_eq!(member["merge_fields"]["FNAME"], "Ada");
        assert!(
            DateTime::parse_from_rfc3339(member["last_changed"].as_str().unwrap_or_default())
                .is_ok()
        );
        let stored = fake.member(LIST, &hash).expect("stored");
        assert_eq!(stored.ip_signup.as_deref(), Some("192.0.2.1"));

        let (status, member) = api.patch(email, json!({"status": "unsubscribed"})).await;
        assert_eq!(
            (status, member["status"].as_str()),
            (200, Some("unsubscribed"))
        );
        let unsubscribed_at = fake.member(LIST, &hash).expect("stored").last_changed;

        let body =
            json!({"email_address": email, "status_if_new": "subscribed", "status": "subscribed"});
        let (status, problem) = api.put(email, body).await;
        assert_eq!(status, 400);
        assert_eq!(problem["title"], "Member In Compliance State");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("compliance state due to unsubscribe, bounce, or compliance review"),
            "{problem}"
        );
        let (status, problem) = api.patch(email, json!({"status": "subscribed"})).await;
        assert_eq!(
            (status, problem["title"].as_str()),
            (400, Some("Member In Compliance State"))
        );
        let stored = fake.member(LIST, &hash).expect("stored");
        assert_eq!(stored.status, "unsubscribed");
        assert_eq!(
            stored.last_changed, unsubscribed_at,
            "a refusal changes nothing"
        );

        let body = json!({"email_address": email, "status_if_new": "pending", "status": "pending"});
        let (status, member) = api.put(email, body).await;
        assert_eq!((status, member["status"].as_str()), (200, Some("pending")));
        let (status, member) = api.patch(email, json!({"status": "subscribed"})).await;
        assert_eq!(
            (status, member["status"].as_str()),
            (200, Some("subscribed"))
        );

        fake.seed_member(LIST, seeded("bounced@example.com", "cleaned", Utc::now()));
        let (status, problem) = api
            .put(
                "bounced@example.com",
                json!({"email_address": "bounced@example.com", "status_if_new": "subscribed", "status": "subscribed"}),
            )
            .await;
        assert_eq!(
            (status, problem["title"].as_str()),
            (400, Some("Member In Compliance State"))
        );
    }

    #[tokio::test]
    async fn archiving_a_cleaned_member_is_405_and_an_archived_member_is_hidden_until_put_again() {
        let fake = FakeMailchimp::start(&[LIST]).await;
        let api = Api::new(&fake);
        fake.seed_member(LIST, seeded("bounced@example.com", "cleaned", Utc::now()));
        fake.seed_member(LIST, seeded("waiting@example.com", "pending", Utc::now()));
        fake.seed_member(LIST, seeded("grace@example.com", "subscribed", Utc::now()));

        let (status, problem) = api.delete("bounced@example.com").await;
        assert_eq!(
            (status, problem["title"].as_str()),
            (405, Some("Method Not Allowed"))
        );
        let (status, _) = api.delete("waiting@example.com").await;
        assert_eq!(status, 405);
        let (status, _) = api.delete("nobody@example.com").await;
        assert_eq!(status, 404);

        let (status, body) = api.delete("grace@example.com").await;
        assert_eq!((status, body), (204, Value::Null));
        let hash = FakeMailchimp::subscriber_hash("grace@example.com");
        assert!(fake.member(LIST, &hash).expect("kept").archived);
        assert_eq!(
            fake.members(LIST).len(),
            3,
            "archived members are still there"
        );
        let (_, listing) = api.list(&[]).await;
        assert_eq!(
            emails(&listing),
            ["bounced@example.com", "waiting@example.com"]
        );
        let (status, _) = api
            .patch("grace@example.com", json!({"status": "unsubscribed"}))
            .await;
        assert_eq!(status, 404);
        let (status, _) = api.delete("grace@example.com").await;
        assert_eq!(status, 405, "already archived");

        let body = json!({"email_address": "grace@example.com", "status_if_new": "unsubscribed", "status": "subscribed"});
        let (status, member) = api.put("grace@example.com", body).await;
        assert_eq!(
            (status, member["status"].as_str()),
            (200, Some("unsubscribed"))
        );
        assert!(!fake.member(LIST, &hash).expect("kept").archived);
    }

    #[tokio::test]
    async fn a_permanently_deleted_member_is_forgotten_and_cannot_be_added_again() {
        let fake = FakeMailchimp::start(&[LIST]).await;
        let api = Api::new(&fake);
        let email = "gone@example.com";
        let hash = FakeMailchimp::subscriber_hash(email);
        let body = json!({"email_address": email, "status_if_new": "subscribed"});
        assert_eq!(api.put(email, body.clone()).await.0, 200);

        let (status, answer) = api.delete_permanent(email).await;
        assert_eq!((status, answer), (204, Value::Null));
        assert!(fake.is_forgotten(LIST, &hash));
        assert_eq!(fake.member(LIST, &hash), None);

        let (status, problem) = api.put(email, body).await;
        assert_eq!(status, 400);
        assert_eq!(problem["title"], "Forgotten Email Not Subscribed");
        assert_eq!(api.delete_permanent(email).await.0, 404);
        assert_eq!(
            api.patch(email, json!({"status": "unsubscribed"})).await.0,
            404
        );
        let (_, answer) = api
            .batch(json!({"members": [{"email_address": email, "status": "subscribed"}]}))
            .await;
        assert_eq!(answer["error_count"], 1);
        assert_eq!(answer["errors"][0]["error_code"], "ERROR_GENERIC");
        assert!(fake.members(LIST).is_empty());
        assert_eq!(api.delete_permanent("never@example.com").await.0, 404);
    }

    #[tokio::test]
    async fn the_batch_reports_new_updated_and_failed_members_and_takes_at_most_500() {
        let fake = FakeMailchimp::start(&[LIST]).await;
        let api = Api::new(&fake);
        fake.seed_member(LIST, seeded("old@example.com", "subscribed", Utc::now()));
        fake.seed_member(LIST, seeded("left@example.com", "unsubscribed", Utc::now()));

        let (status, answer) = api
            .batch(json!({"members": [
                {"email_address": "old@example.com", "status": "subscribed"},
                {"email_address": "new@example.com", "status": "subscribed", "merge_fields": {"FNAME": "Nia"}},
                {"email_address": "not-an-address", "status": "subscribed"},
            ]}))
            .await;
        assert_eq!(status, 200);
        assert_eq!(answer["total_created"], 1);
        assert_eq!(answer["total_updated"], 0);
        assert_eq!(answer["error_count"], 2);
        assert_eq!(answer["new_members"][0]["email_address"], "new@example.com");
        assert_eq!(answer["new_members"][0]["merge_fields"]["FNAME"], "Nia");
        assert_eq!(answer["updated_members"], json!([]));
        assert_eq!(answer["errors"][0]["email_address"], "old@example.com");
        assert_eq!(answer["errors"][0]["error_code"], "ERROR_CONTACT_EXISTS");
        assert_eq!(answer["errors"][1]["error_code"], "ERROR_GENERIC");

        let (status, answer) = api
            .batch(json!({"update_existing": true, "members": [
                {"email_address": "old@example.com", "status": "unsubscribed"},
                {"email_address": "left@example.com", "status": "subscribed"},
                {"email_address": "third@example.com", "status": "pending"},
            ]}))
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            (
                &answer["total_created"],
                &answer["total_updated"],
                &answer["error_count"]
            ),
            (&json!(1), &json!(1), &json!(1))
        );
        assert_eq!(answer["updated_members"][0]["status"], "unsubscribed");
        assert_eq!(answer["new_members"][0]["status"], "pending");
        assert_eq!(answer["errors"][0]["email_address"], "left@example.com");
        assert_eq!(answer["errors"][0]["error_code"], "ERROR_GENERIC");
        assert!(
            answer["errors"][0]["error"]
                .as_str()
                .unwrap_or_default()
                .contains("compliance state"),
            "{answer}"
        );
        let left = fake
            .member(LIST, &FakeMailchimp::subscriber_hash("left@example.com"))
            .expect("kept");
        assert_eq!(left.status, "unsubscribed");

        let too_many: Vec<Value> = (0..501)
            .map(|i| json!({"email_address": format!("m{i}@example.com"), "status": "subscribed"}))
            .collect();
        let (status, problem) = api.batch(json!({"members": too_many})).await;
        assert_eq!(
            (status, problem["title"].as_str()),
            (400, Some("Invalid Resource"))
        );
        assert_eq!(
            fake.members(LIST).len(),
            4,
            "nothing of a refused batch is kept"
        );

        let just_enough: Vec<Value> = (0..500)
            .map(|i| json!({"email_address": format!("m{i}@example.com"), "status": "subscribed"}))
            .collect();
        let (status, answer) = api.batch(json!({"members": just_enough})).await;
        assert_eq!((status, &answer["total_created"]), (200, &json!(500)));
        let (status, _) = api.batch(json!({"members": "everyone"})).await;
        assert_eq!(status, 400);
    }

    #[tokio::test]
    async fn listing_pages_in_insertion_order_and_filters_by_status_and_since_last_changed() {
        let fake = FakeMailchimp::start(&[LIST]).await;
        let api = Api::new(&fake);
        let start = DateTime::parse_from_rfc3339("2024-01-01T00:00:00+00:00")
            .expect("a date")
            .with_timezone(&Utc);
        for i in 0..25 {
            let status = if i % 5 == 0 {
                "unsubscribed"
            } else {
                "subscribed"
            };
            let changed = start + chrono::Duration::minutes(i);
            fake.seed_member(
                LIST,
                seeded(&format!("m{i:02}@example.com"), status, changed),
            );
        }
        assert_eq!(api.delete("m03@example.com").await.0, 204);

        let (status, page) = api.list(&[]).await;
        assert_eq!(status, 200);
        assert_eq!(page["total_items"], 24);
        assert_eq!(page["list_id"], LIST);
        assert_eq!(
            emails(&page),
            [
                "m00", "m01", "m02", "m04", "m05", "m06", "m07", "m08", "m09", "m10"
            ]
            .map(|m| format!("{m}@example.com"))
        );
        let (_, page) = api.list(&[("count", "10"), ("offset", "20")]).await;
        assert_eq!(
            emails(&page),
            ["m21", "m22", "m23", "m24"].map(|m| format!("{m}@example.com"))
        );
        let (_, page) = api.list(&[("count", "5000")]).await;
        assert_eq!(emails(&page).len(), 24);
        let (_, page) = api.list(&[("status", "unsubscribed")]).await;
        assert_eq!(page["total_items"], 5);
        assert_eq!(emails(&page)[1], "m05@example.com");
        let (_, page) = api.list(&[("status", "archived")]).await;
        assert_eq!(emails(&page), ["m03@example.com"]);

        let (_, page) = api
            .list(&[
                ("since_last_changed", "2024-01-01T00:20:00+00:00"),
                ("count", "3"),
            ])
            .await;
        assert_eq!(page["total_items"], 5);
        assert_eq!(
            emails(&page),
            ["m20", "m21", "m22"].map(|m| format!("{m}@example.com"))
        );
        // A `+` sent unencoded arrives as a space; it is still understood.
        let path = format!("/lists/{LIST}/members?since_last_changed=2024-01-01T00:24:00+00:00");
        let (status, page) = api.call(reqwest::Method::GET, &path, None).await;
        assert_eq!(
            (status, emails(&page)),
            (200, vec!["m24@example.com".to_owned()])
        );

        let before_write = Utc::now();
        let body = json!({"email_address": "m07@example.com", "status_if_new": "subscribed", "status": "subscribed"});
        assert_eq!(api.put("m07@example.com", body).await.0, 200);
        let since = before_write.to_rfc3339();
        let (_, page) = api.list(&[("since_last_changed", since.as_str())]).await;
        assert_eq!(emails(&page), ["m07@example.com"]);

        for bad in [
            ("count", "-1"),
            ("offset", "x"),
            ("status", "gone"),
            ("since_last_changed", "yesterday"),
        ] {
            assert_eq!(api.list(&[bad]).await.0, 400, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn registering_a_webhook_first_checks_that_its_url_answers() {
        let fake = FakeMailchimp::start(&[LIST]).await;
        let api = Api::new(&fake);
        let (target, validations) = validation_target().await;
        let events = json!({"unsubscribe": true, "cleaned": true, "subscribe": false});
        let sources = json!({"user": true, "admin": true, "api": false});

        let body = json!({"url": format!("{target}/ok"), "events": events, "sources": sources});
        let path = format!("/lists/{LIST}/webhooks");
        let (status, hook) = api
            .call(reqwest::Method::POST, &path, Some(body.clone()))
            .await;
        assert_eq!(status, 200);
        assert_eq!(hook["url"], format!("{target}/ok"));
        assert_eq!(hook["list_id"], LIST);
        assert_eq!(hook["events"], events);
        assert_eq!(hook["sources"], sources);
        assert!(hook["id"].as_str().is_some_and(|id| !id.is_empty()));
        assert_eq!(validations.load(Ordering::SeqCst), 1);
        assert_eq!(fake.webhooks(LIST), vec![body]);

        let refused =
            json!({"url": format!("{target}/missing"), "events": events, "sources": sources});
        let (status, problem) = api.call(reqwest::Method::POST, &path, Some(refused)).await;
        assert_eq!(
            (status, problem["title"].as_str()),
            (400, Some("Invalid Resource"))
        );
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .starts_with("The resource submitted could not be validated")
        );
        let nowhere = json!({"url": "not a url", "events": events, "sources": sources});
        assert_eq!(
            api.call(reqwest::Method::POST, &path, Some(nowhere))
                .await
                .0,
            400
        );
        assert_eq!(fake.webhooks(LIST).len(), 1);
        let (_, listed) = api.call(reqwest::Method::GET, &path, None).await;
        assert_eq!(listed["total_items"], 1);
    }

    /// A tiny HTTP server that answers 200 on `/ok` and 404 elsewhere, and
    /// counts the requests it got.
    async fn validation_target() -> (String, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("an address");
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0; 4096];
                    let Ok(n) = socket.read(&mut buffer).await else {
                        return;
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    let request = String::from_utf8_lossy(&buffer[..n]);
                    let status = if request.starts_with("GET /ok ") {
                        "200 OK"
                    } else {
                        "404 Not Found"
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = socket.write_all(reply.as_bytes()).await;
                });
            }
        });
        (format!("http://{addr}"), seen)
    }

    #[tokio::test]
    async fn faulted_requests_change_nothing_and_every_kind_of_fault_happens() {
        let fake = FakeMailchimp::start(&[LIST]).await;
        let api = Api::new(&fake);
        let kept = seeded("kept@example.com", "subscribed", Utc::now());
        fake.seed_member(LIST, kept.clone());
        fake.set_fault_rate(1.0);

        let mut seen: HashMap<&str, usize> = HashMap::new();
        const ROUNDS: usize = 20;
        for i in 0..ROUNDS {
            let email = format!("new{i}@example.com");
            let put = api
                .request(reqwest::Method::PUT, &member_path(&email))
                .json(&json!({"email_address": email, "status_if_new": "subscribed"}));
            let patch = api
                .request(reqwest::Method::PATCH, &member_path("kept@example.com"))
                .json(&json!({"status": "unsubscribed"}));
            let delete = api.request(reqwest::Method::DELETE, &member_path("kept@example.com"));
            let forget = api.request(
                reqwest::Method::POST,
                &format!(
                    "{}/actions/delete-permanent",
                    member_path("kept@example.com")
                ),
            );
            let batch = api
                .request(reqwest::Method::POST, &format!("/lists/{LIST}"))
                .json(&json!({"members": [{"email_address": email, "status": "subscribed"}]}));
            for request in [put, patch, delete, forget, batch] {
                let kind = match request.send().await {
                    Err(_) => "dropped",
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let content_type = response
                            .headers()
                            .get(header::CONTENT_TYPE)
                            .map(|v| v.to_str().unwrap_or_default().to_owned());
                        let body = response.bytes().await.expect("a whole body");
                        match status {
                            403 => {
                                assert!(body.is_empty());
                                assert_eq!(content_type, None);
                                "403"
                            }
                            429 | 500 | 503 => {
                                assert_eq!(
                                    content_type.as_deref(),
                                    Some("application/problem+json")
                                );
                                let problem: Value = serde_json::from_slice(&body).expect("JSON");
                                assert_eq!(problem["status"], status);
                                match status {
                                    429 => "429",
                                    500 => "500",
                                    _ => "503",
                                }
                            }
                            other => panic!("a faulted request answered {other}"),
                        }
                    }
                };
                *seen.entry(kind).or_default() += 1;
            }
        }

        assert_eq!(
            seen.len(),
            5,
            "every kind of fault in {} requests: {seen:?}",
            ROUNDS * 5
        );
        assert_eq!(fake.members(LIST), vec![kept]);
        assert!(!fake.is_forgotten(LIST, &FakeMailchimp::subscriber_hash("kept@example.com")));
        assert_eq!(
            fake.calls().len(),
            ROUNDS * 5,
            "faulted requests are recorded too"
        );

        fake.set_fault_rate(0.0);
        let (status, _) = api.list(&[]).await;
        assert_eq!(status, 200);
    }

    #[tokio::test]
    async fn more_than_ten_requests_in_flight_get_429() {
        let fake = FakeMailchimp::start(&[LIST]).await;
        let api = Arc::new(Api::new(&fake));
        fake.set_latency(Duration::from_millis(500));

        let mut tasks = Vec::new();
        for _ in 0..15 {
            let api = api.clone();
            tasks.push(tokio::spawn(async move { api.list(&[]).await }));
        }
        let mut statuses = Vec::new();
        for task in tasks {
            let (status, body) = task.await.expect("the task ends");
            if status == 429 {
                assert_eq!(body["title"], "Too Many Requests");
            }
            statuses.push(status);
        }
        let refused = statuses.iter().filter(|s| **s == 429).count();
        let served = statuses.iter().filter(|s| **s == 200).count();
        assert!(refused >= 1, "{statuses:?}");
        assert_eq!(served + refused, 15, "{statuses:?}");
        assert!(fake.max_concurrent() >= 11, "{}", fake.max_concurrent());
        assert!(fake.max_connections() >= 11, "{}", fake.max_connections());

        // The slots come back.
        fake.set_latency(Duration::ZERO);
        assert_eq!(api.list(&[]).await.0, 200);
        assert_eq!(fake.calls().len(), 16);
        assert!(fake.calls().iter().all(|c| c.query.is_empty()));
    }
}
