//! Request routing and the Bulk Data protocol handlers.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Cursor, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::{json, Value};
use tiny_http::{Header, Request, Response, ResponseBox, StatusCode};

use crate::id::random_hex;

use super::auth::{self, AuthState, Bearer, TokenRequest};
use super::data::{self, TYPES};
use super::faults::{
    self, Codec, Encode, Endless, FaultLines, Framing, LineFaults, RawResponse, Stall, Trickle,
};
use super::params::{parse_export, ApiError, Level, Selection};
use super::plan::{
    self, DeletedSource, LineSource, LinesReader, Part, PartSource, Skip, Slow, VecSource,
};
use super::scenario::Scenario;
use super::{AttachmentTruth, LoggedRequest, SandboxOptions, TruthQuery};

const MAX_BODY: u64 = 4 << 20;
const FHIR_JSON: &str = "application/fhir+json";
/// `Last-Modified` of representation r (faults `last_modified`, `change_file`): this many
/// seconds since the Unix epoch (2024-01-01T00:00:00Z), plus r.
const VALIDATOR_BASE_SECS: u64 = 1_704_067_200;

pub(crate) struct Shared {
    pub root: String,
    /// Root URL of the object store listener.
    pub store_root: String,
    port: u16,
    store_port: u16,
    /// Request counts by key (fault injection: "the first N requests of ...").
    counts: Mutex<HashMap<String, u64>>,
    pub auth: Option<AuthState>,
    patients: usize,
    rpf: usize,
    token: Option<String>,
    started: Instant,
    pub log: Mutex<Vec<LoggedRequest>>,
    jobs: Mutex<HashMap<u64, Arc<Job>>>,
    next_job: AtomicU64,
    pub stop: Arc<AtomicBool>,
    /// `SandboxOptions::prerender`: rendered output files by (selection, part).
    prerender: bool,
    rendered: Mutex<HashMap<String, Arc<[u8]>>>,
}

impl Shared {
    /// `roots`: the advertised roots of the FHIR server and the object store; `ports`: their
    /// plain listeners' ports.
    pub fn new(
        opts: &SandboxOptions,
        (root, store_root): (String, String),
        (port, store_port): (u16, u16),
        stop: Arc<AtomicBool>,
    ) -> Self {
        Shared {
            root,
            store_root,
            port,
            store_port,
            counts: Mutex::new(HashMap::new()),
            auth: opts.auth.clone().map(AuthState::new),
            patients: opts.patients,
            rpf: opts.records_per_file.max(1),
            token: opts.bearer_token.clone(),
            started: Instant::now(),
            log: Mutex::new(Vec::new()),
            jobs: Mutex::new(HashMap::new()),
            next_job: AtomicU64::new(1),
            stop,
            prerender: opts.prerender,
            rendered: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one more request under `key`; returns the new count (1 for the first).
    fn count(&self, key: String) -> u64 {
        let mut m = self.counts.lock();
        let n = m.entry(key).or_insert(0);
        *n += 1;
        *n
    }

    fn job(&self, id: u64) -> Option<Arc<Job>> {
        self.jobs.lock().get(&id).cloned()
    }

    /// Checks the bearer tokens presented (static token or issued ones); None
    /// when no authorization is configured.
    fn check_bearer(&self, headers: &[(String, String)]) -> Option<Bearer> {
        if self.token.is_none() && self.auth.is_none() {
            return None;
        }
        let mut best = Bearer::Invalid;
        for (_, v) in headers.iter().filter(|(k, _)| k == "authorization") {
            let Some(t) = v
                .trim()
                .split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim())
            else {
                continue;
            };
            let b = if self.token.as_deref() == Some(t) {
                Bearer::Valid
            } else {
                self.auth.as_ref().map_or(Bearer::Invalid, |a| a.bearer(t))
            };
            match b {
                Bearer::Valid => return Some(Bearer::Valid),
                Bearer::Expired => best = Bearer::Expired,
                Bearer::Invalid => {}
            }
        }
        Some(best)
    }

    /// Whether protected endpoints need a token at all.
    fn auth_configured(&self) -> bool {
        self.token.is_some() || self.auth.is_some()
    }

    fn token_url(&self, prefix: &str) -> String {
        format!("{}{}/auth/token", self.root, prefix)
    }
}

enum FileKind {
    Output(Part),
    Error(Arc<Vec<String>>),
    Deleted(u64),
}

struct FileEntry {
    kind: FileKind,
    count: u64,
}

struct Job {
    id: u64,
    prefix: String,
    scen: Scenario,
    request_url: String,
    transaction_time: String,
    separate: bool,
    partial: bool,
    organized: bool,
    sel: Arc<Selection>,
    files: Vec<FileEntry>,
    polls: AtomicU64,
    /// Identifies the selection for the prerender cache (empty when prerender is off).
    render_key: String,
    /// Complete manifests served (fault `expire_files`: URLs carry it).
    generation: AtomicU64,
    /// File requests received (fault `gone_after`).
    file_requests: AtomicU64,
}

impl Job {
    /// Status polls answered before the job completes.
    fn polls_before_done(&self) -> u64 {
        self.scen
            .transient
            .saturating_add(self.scen.throttle)
            .saturating_add(self.scen.polls)
    }
    fn done(&self) -> bool {
        self.polls.load(Ordering::SeqCst) > self.polls_before_done() && self.scen.poll.is_none()
    }
}

/// What a reply is, for the faults that change some kinds of answers (`bom`, `endless_body`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Other,
    Metadata,
    SmartConfig,
    /// Any answer of the token endpoint.
    Token,
    /// A 202 "in progress" status answer (with a partial manifest or not).
    Working,
    /// The complete manifest (status 200 or a page of it).
    Manifest,
    /// A page of a partial manifest.
    PartialPage,
}

/// A small fully-buffered reply.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    kind: Kind,
}

impl Reply {
    fn new(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            kind: Kind::Other,
        }
    }
    fn kind(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }
    fn body(mut self, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        self.headers
            .push(("Content-Type", content_type.to_string()));
        self.body = body.into();
        self
    }
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
    fn into_response(self) -> ResponseBox {
        let len = self.body.len();
        let mut resp = Response::new(
            StatusCode(self.status),
            Vec::new(),
            Cursor::new(self.body),
            Some(len),
            None,
        )
        .with_chunked_threshold(usize::MAX);
        for (k, v) in self.headers {
            if let Ok(h) = Header::from_bytes(k.as_bytes(), v.as_bytes()) {
                resp.add_header(h);
            }
        }
        resp.boxed()
    }
}

fn oo_json(severity: &str, code: &str, msg: &str) -> String {
    json!({"resourceType": "OperationOutcome", "issue": [{"severity": severity, "code": code, "diagnostics": msg}]})
        .to_string()
}

fn oo(status: u16, code: &str, msg: &str) -> Reply {
    Reply::new(status).body(FHIR_JSON, oo_json("error", code, msg))
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Self {
        oo(e.status, e.code, &e.msg)
    }
}

fn default_code(status: u16) -> &'static str {
    match status {
        400 => "invalid",
        401 => "login",
        403 => "forbidden",
        404 => "not-found",
        406 | 415 | 422 => "not-supported",
        429 => "throttled",
        503 => "transient",
        _ => "exception",
    }
}

/// Percent-decodes a path (`+` stays `+`); invalid escapes stay as they are, invalid UTF-8
/// becomes U+FFFD.
fn pct_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn now_instant() -> String {
    data::format_instant(time::OffsetDateTime::now_utc())
}

enum Route {
    Metadata,
    SmartConfig,
    Token,
    Kickoff(Level),
    Status(u64),
    Page(u64, usize),
    /// `jobs/{id}/partial/{ready}/{page}`: a page of a partial manifest.
    Partial(u64, usize, usize),
    File(u64, usize),
    /// `fhir/Binary/{docid}`: a document on the FHIR server.
    Binary(String),
    /// `binary/{docid}`: a document on the object store.
    StoreBinary(String),
    AdminRequests,
    AdminTruth,
    Unknown,
}

/// Splits `/x/<scenario>` off a raw path: (raw prefix, raw scenario, raw rest).
/// The scenario ends at the first `/fhir/`, `/fhir`(end), `/jobs/`, `/files/` or `/auth/`
/// (without any of them: at the last `/binary/`), so values may contain unescaped '/'.
fn split_prefix(raw_path: &str) -> (String, Option<String>, &str) {
    let Some(after) = raw_path.strip_prefix("/x/") else {
        return (String::new(), None, raw_path);
    };
    let mut end: Option<usize> = None;
    for m in ["/fhir/", "/jobs/", "/files/", "/auth/"] {
        if let Some(p) = after.find(m) {
            end = Some(end.map_or(p, |e| e.min(p)));
        }
    }
    if after.ends_with("/fhir") {
        let p = after.len() - "/fhir".len();
        end = Some(end.map_or(p, |e| e.min(p)));
    }
    if end.is_none() {
        end = after.rfind("/binary/");
    }
    match end {
        Some(e) => (
            format!("/x/{}", &after[..e]),
            Some(after[..e].to_string()),
            &after[e..],
        ),
        None => (String::new(), None, raw_path),
    }
}

fn parse_route(rest: &str, prefixed: bool) -> Route {
    let decoded = pct_decode(rest);
    let mut segs: Vec<&str> = decoded.split('/').skip(1).collect();
    if segs.last() == Some(&"") {
        segs.pop();
    }
    match segs.as_slice() {
        ["fhir", "metadata"] => Route::Metadata,
        ["fhir", ".well-known", "smart-configuration"] => Route::SmartConfig,
        ["auth", "token"] => Route::Token,
        ["fhir", "$export"] => Route::Kickoff(Level::System),
        ["fhir", "Patient", "$export"] => Route::Kickoff(Level::Patient),
        ["fhir", "Group", id, "$export"] => Route::Kickoff(Level::Group((*id).to_string())),
        ["fhir", "Binary", id] => Route::Binary((*id).to_string()),
        ["binary", id] => Route::StoreBinary((*id).to_string()),
        ["jobs", id] => id.parse().map_or(Route::Unknown, Route::Status),
        ["jobs", id, "manifest", page] => match (id.parse(), page.parse()) {
            (Ok(id), Ok(page)) => Route::Page(id, page),
            _ => Route::Unknown,
        },
        ["jobs", id, "partial", ready, page] => match (id.parse(), ready.parse(), page.parse()) {
            (Ok(id), Ok(ready), Ok(page)) => Route::Partial(id, ready, page),
            _ => Route::Unknown,
        },
        ["files", id, name] => {
            match (
                id.parse(),
                name.strip_suffix(".ndjson").and_then(|n| n.parse().ok()),
            ) {
                (Ok(id), Some(n)) => Route::File(id, n),
                _ => Route::Unknown,
            }
        }
        ["_sandbox", "requests"] if !prefixed => Route::AdminRequests,
        ["_sandbox", "truth"] if !prefixed => Route::AdminTruth,
        _ => Route::Unknown,
    }
}

/// Per-request data.
struct Ctx {
    method: String,
    raw_url: String,
    headers: Vec<(String, String)>,
    query: Vec<(String, String)>,
    body: String,
    prefix: String,
    scen: Scenario,
}

impl Ctx {
    /// All values of a header, comma-joined.
    fn header(&self, name: &str) -> Option<String> {
        let vals: Vec<&str> = self
            .headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect();
        (!vals.is_empty()).then(|| vals.join(", "))
    }
}

fn media_type(v: &str) -> String {
    v.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// What every handler reads from a request.
struct Incoming {
    method: String,
    raw_url: String,
    headers: Vec<(String, String)>,
    body: String,
}

fn read_request(req: &mut Request) -> Incoming {
    let raw_url = req.url().to_string();
    let method = req.method().as_str().to_ascii_uppercase();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|h| {
            (
                h.field.to_string().to_ascii_lowercase(),
                h.value.to_string(),
            )
        })
        .collect();
    let mut body = Vec::new();
    if matches!(method.as_str(), "POST" | "PUT" | "PATCH")
        || req.body_length().is_some_and(|n| n > 0)
    {
        let _ = req.as_reader().take(MAX_BODY).read_to_end(&mut body);
    }
    Incoming {
        method,
        raw_url,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Appends a request to the log with secrets redacted.
fn log_request(sh: &Shared, server: &str, inc: &Incoming, auth_ok: Option<bool>, form_body: bool) {
    let (raw_path, raw_query) = inc
        .raw_url
        .split_once('?')
        .unwrap_or((inc.raw_url.as_str(), ""));
    let query: Vec<(String, String)> = url::form_urlencoded::parse(raw_query.as_bytes())
        .into_owned()
        .collect();
    let secret_query = query.iter().any(|(k, _)| auth::is_secret_field(k));
    let logged = LoggedRequest {
        server: server.to_string(),
        method: inc.method.clone(),
        path: pct_decode(raw_path),
        query: query
            .into_iter()
            .map(|(k, v)| {
                let v = if auth::is_secret_field(&k) {
                    "***".to_string()
                } else {
                    v
                };
                (k, v)
            })
            .collect(),
        raw_query: if secret_query {
            auth::redact_form(raw_query)
        } else {
            raw_query.to_string()
        },
        headers: inc
            .headers
            .iter()
            .map(|(k, v)| {
                let v = if k == "authorization" {
                    auth::redact_authorization(v)
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect(),
        auth_ok,
        body: if form_body {
            auth::redact_form(&inc.body)
        } else {
            inc.body.clone()
        },
        at_ms: sh.started.elapsed().as_millis() as u64,
        unix_us: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64),
    };
    sh.log.lock().push(logged);
}

fn has_authorization(headers: &[(String, String)]) -> bool {
    headers.iter().any(|(k, _)| k == "authorization")
}

/// Parses the query, prefix, route and scenario of a request (Err: a bad
/// scenario, with the message).
fn prepare(inc: &Incoming) -> (Route, Result<Ctx, String>) {
    let (raw_path, raw_query) = inc
        .raw_url
        .split_once('?')
        .unwrap_or((inc.raw_url.as_str(), ""));
    let (prefix, scen_raw, rest) = split_prefix(raw_path);
    let route = parse_route(rest, scen_raw.is_some());
    let scen = match scen_raw.as_deref().map(|s| Scenario::parse(&pct_decode(s))) {
        None => Scenario::default(),
        Some(Ok(s)) => s,
        Some(Err(msg)) => return (route, Err(msg)),
    };
    let ctx = Ctx {
        method: inc.method.clone(),
        raw_url: inc.raw_url.clone(),
        headers: inc.headers.clone(),
        query: url::form_urlencoded::parse(raw_query.as_bytes())
            .into_owned()
            .collect(),
        body: inc.body.clone(),
        prefix,
        scen,
    };
    (route, Ok(ctx))
}

/// The FHIR server listener.
pub(crate) fn handle(sh: &Shared, mut req: Request) {
    let inc = read_request(&mut req);
    let (route, ctx) = prepare(&inc);
    // A job's files follow the scenario the job was started with.
    let file_scen = match route {
        Route::File(id, _) => sh
            .job(id)
            .map(|j| j.scen.clone())
            .or_else(|| ctx.as_ref().ok().map(|c| c.scen.clone())),
        _ => None,
    };
    let capability = file_scen.as_ref().is_some_and(|s| s.capability_urls);
    let redirect = file_scen.as_ref().is_some_and(|s| s.redirect_files);
    let insecure = file_scen.as_ref().is_some_and(|s| s.redirect_insecure);
    let protected = match route {
        Route::Kickoff(_)
        | Route::Status(_)
        | Route::Page(..)
        | Route::Partial(..)
        | Route::Binary(_) => true,
        Route::File(..) => !capability,
        _ => false,
    };
    // With authorization configured, protected endpoints are logged with the
    // check's result; other endpoints only when a token was presented (never
    // the token endpoint or capability URLs). Only protected endpoints reject.
    let bearer = sh.check_bearer(&inc.headers);
    let presented = has_authorization(&inc.headers);
    let auth_ok = match route {
        Route::Token => None,
        Route::File(..) if capability => None,
        _ if protected || presented => bearer.map(|b| b == Bearer::Valid),
        _ => None,
    };
    if !matches!(route, Route::AdminRequests | Route::AdminTruth) {
        let form_body = matches!(route, Route::Token);
        log_request(sh, "fhir", &inc, auth_ok, form_body);
    }
    let ctx = match ctx {
        Ok(c) => c,
        Err(msg) => {
            let _ = req.respond(oo(400, "invalid", &msg).into_response());
            return;
        }
    };
    let scen = file_scen.unwrap_or_else(|| ctx.scen.clone());
    let resp: Out = match (bearer, route) {
        (Some(Bearer::Invalid), _) if protected => {
            oo(401, "login", "a valid bearer token is required")
                .header("WWW-Authenticate", "Bearer")
                .into()
        }
        (Some(Bearer::Expired), _) if protected => {
            oo(401, "expired", "the access token has expired")
                .header("WWW-Authenticate", "Bearer")
                .into()
        }
        (_, Route::File(..)) if capability && presented => oo(
            400,
            "security",
            "access token must not be sent to capability URLs",
        )
        .into(),
        (_, Route::File(id, _))
            if (redirect || insecure)
                && matches!(ctx.method.as_str(), "GET" | "HEAD")
                && sh.job(id).is_some() =>
        {
            let path = ctx.raw_url.split('?').next().unwrap_or_default();
            let root = if insecure {
                "http://files.invalid"
            } else {
                sh.store_root.as_str()
            };
            let sig = scen.sig.clone().unwrap_or_else(|| random_hex(16));
            let to = format!("{root}{path}?sig={sig}");
            Reply::new(307).header("Location", to).into()
        }
        (_, route) => match storm(sh, &scen, &ctx, &route) {
            Some(out) => out,
            None => dispatch(sh, &ctx, route),
        },
    };
    respond(req, finish(sh, &scen, resp), sh.port);
}

/// The object store listener: files only, no authorization, and any
/// `Authorization` header is refused.
pub(crate) fn handle_store(sh: &Shared, mut req: Request) {
    let inc = read_request(&mut req);
    let (route, ctx) = prepare(&inc);
    log_request(sh, "store", &inc, None, false);
    let resp: Out = match ctx {
        _ if has_authorization(&inc.headers) => oo(
            400,
            "security",
            "Authorization header must not reach the object store",
        )
        .into(),
        Err(ref msg) => oo(400, "invalid", msg).into(),
        Ok(ref ctx) => match route {
            Route::File(id, n) if matches!(ctx.method.as_str(), "GET" | "HEAD") => {
                file(sh, ctx, id, n)
            }
            Route::File(..) => oo(
                405,
                "not-supported",
                &format!("method {} not allowed here", ctx.method),
            )
            .into(),
            Route::StoreBinary(ref docid) => document(sh, ctx, docid, true).into(),
            _ => oo(
                404,
                "not-found",
                &format!("the object store has no {}", ctx.raw_url),
            )
            .into(),
        },
    };
    let resp = match &ctx {
        Ok(c) => finish(sh, &c.scen, resp),
        Err(_) => resp,
    };
    respond(req, resp, sh.store_port);
}

fn dispatch(sh: &Shared, ctx: &Ctx, route: Route) -> Out {
    let m = ctx.method.as_str();
    let not_allowed = || {
        oo(
            405,
            "not-supported",
            &format!("method {m} not allowed here"),
        )
    };
    if matches!(route, Route::Metadata | Route::SmartConfig) && ctx.scen.faults.discovery_blip > 0 {
        let n = ctx.scen.faults.discovery_blip;
        let path = ctx.raw_url.split('?').next().unwrap_or_default();
        let k = sh.count(format!("discovery {path}"));
        if k <= n {
            return oo(
                503,
                "transient",
                &format!("sandbox fault discovery_blip: request {k} of {n} failing"),
            )
            .header("Retry-After", "0")
            .into();
        }
    }
    let reply = match route {
        Route::Metadata if m == "GET" || m == "HEAD" => metadata(sh, ctx),
        Route::SmartConfig if m == "GET" || m == "HEAD" => smart_config(sh, ctx),
        Route::Token if sh.auth.is_none() => {
            oo(404, "not-found", "no authorization server is configured")
        }
        Route::Token if m == "POST" => token(sh, ctx),
        Route::Kickoff(level) if m == "GET" || m == "POST" => kickoff(sh, ctx, level),
        Route::Status(id) if m == "GET" => status(sh, id),
        Route::Status(id) if m == "DELETE" => match sh.jobs.lock().remove(&id) {
            Some(_) => Reply::new(202),
            None => oo(404, "not-found", &format!("unknown export job {id}")),
        },
        Route::Page(id, page) if m == "GET" => manifest_page(sh, id, page),
        Route::Partial(id, ready, page) if m == "GET" => partial_page(sh, id, ready, page),
        Route::File(id, n) if m == "GET" || m == "HEAD" => return file(sh, ctx, id, n),
        Route::Binary(docid) => document(sh, ctx, &docid, false),
        Route::AdminRequests if m == "GET" => match serde_json::to_string(&*sh.log.lock()) {
            Ok(s) => Reply::new(200).body("application/json", s),
            Err(e) => oo(500, "exception", &e.to_string()),
        },
        Route::AdminRequests if m == "DELETE" => {
            sh.log.lock().clear();
            Reply::new(204)
        }
        Route::AdminTruth if m == "GET" => admin_truth(sh, ctx),
        Route::Unknown | Route::StoreBinary(_) => oo(
            404,
            "not-found",
            &format!("no such endpoint: {}", ctx.raw_url),
        ),
        _ => not_allowed(),
    };
    reply.into()
}

fn metadata(sh: &Shared, ctx: &Ctx) -> Reply {
    let base = format!("{}{}/fhir", sh.root, ctx.prefix);
    // Every type the sandbox exports (tools that read `metadata` skip types it does not list),
    // with the Patient- and Group-level export operations on their types.
    let op = |name: &str| {
        json!([{"name": "export",
                "definition": format!("http://hl7.org/fhir/uv/bulkdata/OperationDefinition/{name}")}])
    };
    let mut resources: Vec<Value> = TYPES
        .iter()
        .map(|t| {
            let mut r =
                json!({"type": t, "interaction": [{"code": "read"}, {"code": "search-type"}]});
            if *t == "Patient" {
                r["operation"] = op("patient-export");
            }
            r
        })
        .collect();
    if !TYPES.contains(&"Group") {
        resources.push(json!({"type": "Group", "interaction": [{"code": "read"}], "operation": op("group-export")}));
    }
    let mut cs = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2024-01-01",
        "kind": "instance",
        "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
        "software": {"name": "fhirbulk-sandbox", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "fhirbulk sandbox Bulk Data server", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "resource": resources,
            "operation": [{"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"}]
        }]
    });
    if sh.auth_configured() {
        cs["rest"][0]["security"] = json!({"service": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
            "code": "SMART-on-FHIR"}]}]});
    }
    if sh.auth.is_some() {
        cs["rest"][0]["security"]["extension"] = auth::oauth_uris(&sh.token_url(&ctx.prefix));
    }
    Reply::new(200)
        .body(FHIR_JSON, cs.to_string())
        .kind(Kind::Metadata)
}

fn smart_config(sh: &Shared, ctx: &Ctx) -> Reply {
    match &sh.auth {
        Some(a) if !ctx.scen.no_smart_config => {
            let doc = auth::smart_configuration(a.cfg(), &sh.token_url(&ctx.prefix));
            Reply::new(200)
                .body("application/json", doc.to_string())
                .kind(Kind::SmartConfig)
        }
        _ => oo(404, "not-found", "no SMART configuration here"),
    }
}

/// `POST {prefix}/auth/token`.
fn token(sh: &Shared, ctx: &Ctx) -> Reply {
    let Some(a) = &sh.auth else {
        return oo(404, "not-found", "no authorization server is configured");
    };
    let r = a.token(&TokenRequest {
        token_url: sh.token_url(&ctx.prefix),
        scen: &ctx.scen,
        content_type: ctx.header("content-type"),
        authorization: ctx
            .headers
            .iter()
            .filter(|(k, _)| k == "authorization")
            .map(|(_, v)| v.as_str())
            .collect(),
        body: &ctx.body,
    });
    let mut reply = Reply::new(r.status)
        .body("application/json", r.body.to_string())
        .header("Cache-Control", "no-store")
        .header("Pragma", "no-cache")
        .kind(Kind::Token);
    if let Some(ra) = r.retry_after {
        reply = reply.header("Retry-After", ra);
    }
    if r.basic_challenge {
        reply = reply.header("WWW-Authenticate", "Basic realm=\"fhirbulk-sandbox\"");
    }
    reply
}

/// Flattens a FHIR Parameters body to (name, value) pairs.
fn parameters_pairs(body: &str) -> Result<Vec<(String, String)>, ApiError> {
    let bad = |m: String| ApiError::new(400, "invalid", m);
    if body.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: Value =
        serde_json::from_str(body).map_err(|e| bad(format!("malformed Parameters body: {e}")))?;
    if v.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(bad("the body must be a FHIR Parameters resource".into()));
    }
    let params = match v.get("parameter") {
        None => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(bad("Parameters.parameter must be an array".into())),
    };
    let mut out = Vec::new();
    for p in params {
        let name = p
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("a parameter has no name".into()))?;
        let value = p.as_object().and_then(|o| {
            o.iter()
                .find(|(k, _)| k.starts_with("value"))
                .map(|(_, v)| v)
        });
        let s = match value {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Bool(b)) => b.to_string(),
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::Object(o)) => o
                .get("reference")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("parameter '{name}' has an unsupported value")))?
                .to_string(),
            _ => return Err(bad(format!("parameter '{name}' has no usable value[x]"))),
        };
        out.push((name.to_string(), s));
    }
    Ok(out)
}

fn kickoff(sh: &Shared, ctx: &Ctx, level: Level) -> Reply {
    if let Some(code) = ctx.scen.kickoff {
        return if code == 429 {
            oo(
                429,
                "throttled",
                "an export is already running for this client",
            )
            .header("Retry-After", "1")
        } else {
            oo(code, default_code(code), &format!("sandbox forced {code}"))
        };
    }
    if let Some(accept) = ctx.header("accept") {
        if !accept.split(',').any(|m| media_type(m) == FHIR_JSON) {
            return oo(
                406,
                "not-supported",
                &format!("Accept must be {FHIR_JSON}, got '{accept}'"),
            );
        }
    }
    let prefer = ctx
        .header("prefer")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let prefs: Vec<String> = prefer
        .split([',', ';'])
        .map(|p| p.chars().filter(|c| !c.is_whitespace()).collect())
        .collect();
    if !prefs.iter().any(|p| p == "respond-async") {
        return oo(
            400,
            "invalid",
            "the Prefer header must contain respond-async",
        );
    }
    let lenient = prefs.iter().any(|p| p == "handling=lenient");
    let separate = prefs.iter().any(|p| p == "separate-export-status");
    let mut pairs = ctx.query.clone();
    let is_post = ctx.method == "POST";
    if is_post {
        let ct = ctx
            .header("content-type")
            .map(|c| media_type(&c))
            .unwrap_or_default();
        if ct != FHIR_JSON && ct != "application/json" {
            return oo(
                415,
                "not-supported",
                &format!("POST Content-Type must be {FHIR_JSON}"),
            );
        }
        match parameters_pairs(&ctx.body) {
            Ok(p) => pairs.extend(p),
            Err(e) => return e.into(),
        }
    }
    let req = match parse_export(&level, &pairs, is_post, lenient, sh.patients) {
        Ok(r) => r,
        Err(e) => return e.into(),
    };

    let mut sel = req.sel;
    // Not under the scenario prefix: a record's bytes are the same whatever the scenario.
    sel.set_doc_store(&sh.store_root);
    let sel = Arc::new(sel);
    let mut files: Vec<FileEntry> = plan::build_parts(&sel, req.organize, sh.rpf)
        .into_iter()
        .map(|p| FileEntry {
            count: p.count,
            kind: FileKind::Output(p),
        })
        .collect();
    let mut errors: Vec<String> = req
        .ignored
        .iter()
        .map(|m| oo_json("information", "informational", &ctx.scen.faults.diag(m)))
        .collect();
    if ctx.scen.errors {
        for n in 1..=2 {
            errors.push(oo_json(
                "error",
                "processing",
                &ctx.scen.faults.diag(&format!(
                    "sandbox simulated error {n} of 2 while exporting Observation/obs-{n}-0"
                )),
            ));
        }
    }
    if !errors.is_empty() {
        files.push(FileEntry {
            count: errors.len() as u64,
            kind: FileKind::Error(Arc::new(errors)),
        });
    }
    if ctx.scen.deleted > 0 && sel.since.is_some() {
        files.push(FileEntry {
            count: ctx.scen.deleted,
            kind: FileKind::Deleted(ctx.scen.deleted),
        });
    }
    let id = sh.next_job.fetch_add(1, Ordering::SeqCst);
    let render_key = if sh.prerender {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&format!("{sel:?}"), &mut h);
        format!("{:x}", std::hash::Hasher::finish(&h))
    } else {
        String::new()
    };
    let job = Job {
        id,
        prefix: ctx.prefix.clone(),
        scen: ctx.scen.clone(),
        request_url: format!("{}{}", sh.root, ctx.raw_url),
        transaction_time: ctx
            .scen
            .faults
            .transaction_time
            .clone()
            .unwrap_or_else(now_instant),
        separate,
        partial: req.allow_partial && ctx.scen.partial,
        organized: req.organize,
        sel,
        files,
        polls: AtomicU64::new(0),
        render_key,
        generation: AtomicU64::new(0),
        file_requests: AtomicU64::new(0),
    };
    let location = format!("{}{}/jobs/{}", sh.root, job.prefix, id);
    sh.jobs.lock().insert(id, Arc::new(job));
    Reply::new(202).header("Content-Location", location)
}

/// The URL of file `n` (1-based) in a manifest; `sig`: fault `resign`.
fn file_url(sh: &Shared, job: &Job, n: usize, sig: Option<&str>) -> String {
    let root = if job.scen.files_elsewhere {
        &sh.store_root
    } else {
        &sh.root
    };
    let mut url = format!("{}{}/files/{}/{}.ndjson", root, job.prefix, job.id, n);
    if job.scen.faults.foreign_scheme {
        url = url.replacen("http://", "ftp://", 1);
    }
    let mut query = Vec::new();
    if job.scen.faults.expire_files.is_some() {
        query.push(format!("g={}", job.generation.load(Ordering::SeqCst)));
    }
    if let Some(sig) = sig {
        query.push(format!("sig={sig}"));
    }
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query.join("&"));
    }
    url
}

/// One entry of a manifest's listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    /// A file of the job (0-based index).
    File(usize),
    /// Fault `refresh_extra`: an output entry for a file number the job does not have.
    Missing,
}

fn is_output(job: &Job, i: usize) -> bool {
    matches!(job.files.get(i).map(|f| &f.kind), Some(FileKind::Output(_)))
}

/// Fault `dup_entry`: the first output entry twice.
fn dup_first_output(job: &Job, entries: &mut Vec<Entry>) {
    if !job.scen.faults.dup_entry {
        return;
    }
    if let Some(p) = entries
        .iter()
        .position(|e| matches!(*e, Entry::File(i) if is_output(job, i)))
    {
        entries.insert(p + 1, entries[p]);
    }
}

/// What the complete manifest served as number `generation` (1: the first) lists, in order.
fn complete_entries(job: &Job, generation: u64) -> Vec<Entry> {
    let fl = &job.scen.faults;
    let later = generation >= 2;
    let mut idx: Vec<usize> = (0..job.files.len()).collect();
    if later && fl.refresh_drop {
        if let Some(p) = idx.iter().position(|&i| is_output(job, i)) {
            idx.remove(p);
        }
    }
    if later && fl.reorder {
        idx.reverse();
    }
    let mut entries: Vec<Entry> = idx.into_iter().map(Entry::File).collect();
    if later && fl.refresh_extra && (0..job.files.len()).any(|i| is_output(job, i)) {
        entries.insert(0, Entry::Missing);
    }
    dup_first_output(job, &mut entries);
    entries
}

/// What a partial manifest with the first `ready` files lists.
fn partial_entries(job: &Job, ready: usize) -> Vec<Entry> {
    let mut entries: Vec<Entry> = (0..ready.min(job.files.len())).map(Entry::File).collect();
    dup_first_output(job, &mut entries);
    entries
}

/// Page `page` (1-based) of `entries` in pages of `size` → (the page, whether more follow).
fn page_of(entries: &[Entry], size: Option<usize>, page: usize) -> Option<(&[Entry], bool)> {
    let size = size.unwrap_or(usize::MAX).max(1);
    let pages = entries.len().div_ceil(size).max(1);
    if page == 0 || page > pages {
        return None;
    }
    let start = (page - 1).saturating_mul(size);
    let end = start.saturating_add(size).min(entries.len());
    Some((&entries[start..end], page < pages))
}

/// A manifest document listing `entries`, with an optional `next` link.
fn manifest(sh: &Shared, job: &Job, entries: &[Entry], next: Option<String>) -> String {
    let fl = &job.scen.faults;
    // resign: one fresh signature per file and document (a duplicate entry shares its twin's);
    // scenario key `sig=VALUE`: always VALUE.
    let mut sigs: HashMap<usize, String> = HashMap::new();
    let mut url_of = |n: usize| {
        let sig = fl.resign.then(|| {
            sigs.entry(n)
                .or_insert_with(|| job.scen.sig.clone().unwrap_or_else(|| random_hex(16)))
                .clone()
        });
        file_url(sh, job, n, sig.as_deref())
    };
    let first_output = job.files.iter().find_map(|f| match &f.kind {
        FileKind::Output(p) => Some((p, f.count)),
        _ => None,
    });
    let (mut output, mut error, mut deleted) = (Vec::new(), Vec::new(), Vec::new());
    for entry in entries {
        let (n, count, p) = match *entry {
            Entry::File(i) => {
                let Some(f) = job.files.get(i) else { continue };
                let p = match &f.kind {
                    FileKind::Output(p) => Some(p),
                    _ => None,
                };
                (i + 1, f.count, p)
            }
            Entry::Missing => {
                let Some((p, count)) = first_output else {
                    continue;
                };
                (job.files.len() + 1, count, Some(p))
            }
        };
        let url = url_of(n);
        let kind = match *entry {
            Entry::File(i) => &job.files[i].kind,
            Entry::Missing => &job.files[0].kind,
        };
        match (kind, p) {
            (FileKind::Output(_), Some(p)) => {
                let count = fl.bad_count.clone().unwrap_or_else(|| json!(count));
                let mut e = json!({"url": url, "count": count});
                if job.organized {
                    if p.continues && *entry != Entry::Missing {
                        e["continuesInFile"] = json!(url_of(n + 1));
                    }
                } else if let plan::Mode::Type(t) = p.mode {
                    e["type"] = json!(TYPES[t]);
                }
                output.push(e);
            }
            (FileKind::Error(_), _) => {
                error.push(json!({"type": "OperationOutcome", "url": url, "count": count}))
            }
            (FileKind::Deleted(_), _) => {
                deleted.push(json!({"type": "Bundle", "url": url, "count": count}))
            }
            _ => {}
        }
    }
    let mut m = json!({
        "transactionTime": job.transaction_time,
        "request": job.request_url,
        "requiresAccessToken": sh.auth_configured() && !job.scen.capability_urls,
        "output": output,
        "error": error,
        "deleted": deleted,
    });
    if job.organized {
        m["outputOrganizedBy"] = json!("Patient");
    }
    if let Some(url) = next {
        m["link"] = json!([{"relation": "next", "url": url}]);
    }
    m.to_string()
}

fn manifest_ct(job: &Job) -> String {
    job.scen
        .status_ct
        .clone()
        .unwrap_or_else(|| "application/json".into())
}

/// Page `page` (1-based) of the complete manifest, or None when out of range.
fn paged_manifest(sh: &Shared, job: &Job, page: usize) -> Option<String> {
    let entries = complete_entries(job, job.generation.load(Ordering::SeqCst));
    let (slice, more) = page_of(&entries, job.scen.page, page)?;
    let base = format!("{}{}/jobs/{}/manifest", sh.root, job.prefix, job.id);
    let next = if more {
        Some(format!("{base}/{}", page + 1))
    } else if job.scen.faults.page_loop {
        Some(format!("{base}/1"))
    } else {
        None
    };
    Some(manifest(sh, job, slice, next))
}

/// Page `page` (1-based) of the partial manifest listing the first `ready` files.
fn paged_partial(sh: &Shared, job: &Job, ready: usize, page: usize) -> Option<String> {
    let entries = partial_entries(job, ready);
    let (slice, more) = page_of(&entries, job.scen.page, page)?;
    let next = more.then(|| {
        format!(
            "{}{}/jobs/{}/partial/{ready}/{}",
            sh.root,
            job.prefix,
            job.id,
            page + 1
        )
    });
    Some(manifest(sh, job, slice, next))
}

fn status(sh: &Shared, id: u64) -> Reply {
    let Some(job) = sh.job(id) else {
        return oo(
            404,
            "not-found",
            &format!("unknown or deleted export job {id}"),
        );
    };
    let k = job.polls.fetch_add(1, Ordering::SeqCst).saturating_add(1);
    let sc = &job.scen;
    let transient_end = sc.transient;
    let throttle_end = transient_end.saturating_add(sc.throttle);
    let mut reply = if k <= transient_end {
        oo(500, "transient", "sandbox transient failure; please retry")
    } else if k <= throttle_end {
        oo(429, "throttled", "too many status requests; slow down").header("Retry-After", "1")
    } else if k <= job.polls_before_done() {
        working(sh, &job, k - throttle_end)
    } else if let Some(code) = sc.poll {
        oo(
            code,
            "exception",
            &format!("sandbox forced job failure ({code})"),
        )
    } else if sc.bad_manifest {
        Reply::new(200).body(&manifest_ct(&job), "{not json")
    } else {
        job.generation.fetch_add(1, Ordering::SeqCst);
        let mut body = paged_manifest(sh, &job, 1).unwrap_or_default();
        if sc.faults.no_output {
            if let Ok(mut m) = serde_json::from_str::<Value>(&body) {
                if let Some(o) = m.as_object_mut() {
                    o.remove("output");
                }
                body = m.to_string();
            }
        }
        Reply::new(200)
            .body(&manifest_ct(&job), body)
            .kind(Kind::Manifest)
    };
    if job.separate {
        reply
            .headers
            .push(("X-Export-Status", reply.status.to_string()));
        reply.status = 200;
    }
    reply
}

/// The `w`-th (1-based) "in progress" answer.
fn working(sh: &Shared, job: &Job, w: u64) -> Reply {
    let polls = job.scen.polls.saturating_add(1);
    let pct = (u128::from(w) * 100 / u128::from(polls)) as u64;
    let mut reply = Reply::new(202).kind(Kind::Working);
    match &job.scen.progress {
        None => reply = reply.header("X-Progress", format!("Processing: {pct}%")),
        Some(t) if t.is_empty() => {}
        Some(t) => reply = reply.header("X-Progress", t.clone()),
    }
    if let Some(v) = job.scen.retry_after.value() {
        reply = reply.header("Retry-After", v);
    }
    if job.partial {
        let ready = (job.files.len() as u128 * u128::from(w) / u128::from(polls)) as usize;
        let body = paged_partial(sh, job, ready, 1).unwrap_or_default();
        reply = reply.body(&manifest_ct(job), body);
    }
    reply
}

fn manifest_page(sh: &Shared, id: u64, page: usize) -> Reply {
    let Some(job) = sh.job(id) else {
        return oo(
            404,
            "not-found",
            &format!("unknown or deleted export job {id}"),
        );
    };
    if !job.done() {
        return oo(
            404,
            "not-found",
            "the manifest is not available (job not complete)",
        );
    }
    match paged_manifest(sh, &job, page) {
        Some(body) => Reply::new(200)
            .body(&manifest_ct(&job), body)
            .kind(Kind::Manifest),
        None => oo(404, "not-found", &format!("no manifest page {page}")),
    }
}

/// `GET {prefix}/jobs/{id}/partial/{ready}/{page}`: a page of a partial manifest (while the
/// job runs and after).
fn partial_page(sh: &Shared, id: u64, ready: usize, page: usize) -> Reply {
    let Some(job) = sh.job(id) else {
        return oo(
            404,
            "not-found",
            &format!("unknown or deleted export job {id}"),
        );
    };
    if !job.partial || ready > job.files.len() || job.scen.faults.partial_page_error {
        return oo(
            404,
            "not-found",
            &format!("no partial manifest with {ready} files"),
        );
    }
    match paged_partial(sh, &job, ready, page) {
        Some(body) => Reply::new(200)
            .body(&manifest_ct(&job), body)
            .kind(Kind::PartialPage),
        None => oo(
            404,
            "not-found",
            &format!("no partial manifest page {page}"),
        ),
    }
}

/// `GET|HEAD {prefix}/fhir/Binary/{docid}` (`store` false; authorized by the caller) and
/// `{prefix}/binary/{docid}` on the object store (`store`: class-12 documents only, always
/// the raw bytes). The class of the document decides the answer.
fn document(sh: &Shared, ctx: &Ctx, docid: &str, store: bool) -> Reply {
    if !matches!(ctx.method.as_str(), "GET" | "HEAD") {
        return oo(
            405,
            "not-supported",
            &format!("method {} not allowed here", ctx.method),
        );
    }
    let where_ = if store {
        "the object store"
    } else {
        "this server"
    };
    let Some(d) =
        data::document(docid).filter(|d| d.patient < sh.patients && (d.class == 12) == store)
    else {
        return oo(
            404,
            "not-found",
            &format!("{where_} has no document {docid}"),
        );
    };
    let class = d.class;
    match class {
        15 => {
            return oo(
                404,
                "not-found",
                &format!("document {docid} is missing (sandbox document class 15)"),
            )
        }
        16 => {
            return oo(
                403,
                "forbidden",
                &format!("access to document {docid} is forbidden (sandbox document class 16)"),
            )
        }
        17 => {
            return oo(
                500,
                "exception",
                &format!("document {docid} fails on every request (sandbox document class 17)"),
            )
        }
        18 if sh.count(format!("document {} {docid}", ctx.prefix)) == 1 => {
            return oo(
                503,
                "transient",
                &format!(
                "document {docid} is unavailable on the first request (sandbox document class 18)"
            ),
            )
            .header("Retry-After", "0")
        }
        _ => {}
    }
    let accept: Vec<String> = ctx
        .header("accept")
        .map(|a| a.split(',').map(media_type).collect())
        .unwrap_or_default();
    let wants_json = accept
        .iter()
        .any(|m| m == FHIR_JSON || m == "application/json");
    let own = accept.iter().any(|m| m == d.content_type);
    if !store && (class == 13 || (wants_json && !own)) {
        let binary = json!({
            "resourceType": "Binary",
            "id": docid,
            "contentType": d.content_type,
            "data": data::b64(&d.bytes),
        });
        Reply::new(200).body(FHIR_JSON, binary.to_string())
    } else {
        Reply::new(200).body(d.content_type, d.bytes)
    }
}

type BoxRead = Box<dyn Read + Send>;

/// A file's lines with line faults, as bytes.
fn fault_reader(src: impl LineSource + 'static, lf: LineFaults, stop: Arc<AtomicBool>) -> BoxRead {
    Box::new(LinesReader::new(FaultLines::new(src, lf), stop))
}

/// The bytes of a file as served in representation `rep` (1: the original; fault
/// `change_file` serves 2 after the first request), before any content coding.
fn file_reader(sh: &Shared, job: &Job, f: &FileEntry, rep: u32) -> BoxRead {
    let stop = Arc::clone(&sh.stop);
    let fl = &job.scen.faults;
    match &f.kind {
        FileKind::Output(_) if fl.endless => Box::new(Endless::new(stop)),
        FileKind::Output(p) => {
            let src = PartSource::new(Arc::clone(&job.sel), p);
            let lf = LineFaults::output(fl, rep);
            let body: BoxRead = if lf.any() {
                fault_reader(src, lf, stop)
            } else if let Some(bytes) = rendered(sh, job, f, rep) {
                Box::new(Cursor::new(ArcBytes(bytes)))
            } else {
                Box::new(LinesReader::text(src, stop))
            };
            if fl.bom {
                Box::new(Cursor::new(faults::BOM).chain(body))
            } else {
                body
            }
        }
        FileKind::Error(lines) => {
            let src = VecSource::new(Arc::clone(lines));
            let lf = LineFaults::other(fl, rep);
            if lf.any() {
                fault_reader(src, lf, stop)
            } else {
                Box::new(LinesReader::text(src, stop))
            }
        }
        FileKind::Deleted(n) => {
            let src = DeletedSource::new(*n);
            let lf = LineFaults::other(fl, rep);
            if lf.any() {
                fault_reader(src, lf, stop)
            } else {
                Box::new(LinesReader::text(src, stop))
            }
        }
    }
}

/// With `prerender`, an output file rendered once and kept in memory; None when the file as
/// served (representation `rep`) is not the plain rendering (line faults, `bom`, `endless`).
fn rendered(sh: &Shared, job: &Job, f: &FileEntry, rep: u32) -> Option<Arc<[u8]>> {
    let fl = &job.scen.faults;
    let FileKind::Output(p) = &f.kind else {
        return None;
    };
    if !sh.prerender || fl.endless || fl.bom || LineFaults::output(fl, rep).any() {
        return None;
    }
    let key = format!("{} {:?} {:?} {}", job.render_key, p.mode, p.start, p.count);
    if let Some(b) = sh.rendered.lock().get(&key) {
        return Some(Arc::clone(b));
    }
    let mut v = Vec::new();
    let src = PartSource::new(Arc::clone(&job.sel), p);
    // Rendering from memory only fails when the sandbox stops; the response is moot then.
    LinesReader::text(src, Arc::clone(&sh.stop))
        .read_to_end(&mut v)
        .ok()?;
    let v: Arc<[u8]> = v.into();
    sh.rendered.lock().insert(key, Arc::clone(&v));
    Some(v)
}

/// Shared bytes as `AsRef<[u8]>` (for `io::Cursor`).
struct ArcBytes(Arc<[u8]>);

impl AsRef<[u8]> for ArcBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// `Range: bytes=a-b | a- | -n` (single range) → (first, last) inclusive, given total length.
enum RangeReq {
    None,
    Ok(u64, u64),
    Unsatisfiable,
}

fn parse_range(h: Option<String>, total: impl Fn() -> u64) -> RangeReq {
    let Some(h) = h else { return RangeReq::None };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangeReq::None;
    };
    if spec.contains(',') {
        return RangeReq::None;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeReq::None;
    };
    let (a, b) = (a.trim(), b.trim());
    let total = total();
    let (first, last) = match (a.parse::<u64>().ok(), b.parse::<u64>().ok()) {
        (Some(f), None) if b.is_empty() => (f, total.saturating_sub(1)),
        (Some(f), Some(l)) if l >= f => (f, l.min(total.saturating_sub(1))),
        (None, Some(n)) if a.is_empty() && n > 0 => {
            (total.saturating_sub(n), total.saturating_sub(1))
        }
        _ => return RangeReq::None,
    };
    if total == 0 || first >= total {
        RangeReq::Unsatisfiable
    } else {
        RangeReq::Ok(first, last)
    }
}

/// RFC 9110 §13.1.5: whether an `If-Range` value names the current representation (strong
/// comparison for entity tags, an exact match for dates).
fn if_range_matches(value: &str, etag: Option<&str>, last_modified: Option<&str>) -> bool {
    let v = value.trim();
    if v.starts_with('"') {
        return etag == Some(v);
    }
    if v.starts_with("W/") {
        return false;
    }
    match (last_modified, httpdate::parse_http_date(v)) {
        (Some(lm), Ok(t)) => httpdate::parse_http_date(lm).ok() == Some(t),
        _ => false,
    }
}

fn count_bytes(mut r: impl Read) -> u64 {
    io::copy(&mut r, &mut io::sink()).unwrap_or(0)
}

/// What a handler answers: a buffered reply (still subject to [`finish`]), a streamed
/// response, or a response the sandbox writes itself (faults that break HTTP framing).
enum Out {
    Reply(Reply),
    Resp(ResponseBox),
    Raw(RawResponse),
}

impl From<ResponseBox> for Out {
    fn from(r: ResponseBox) -> Self {
        Out::Resp(r)
    }
}

impl From<Reply> for Out {
    fn from(r: Reply) -> Self {
        Out::Reply(r)
    }
}

fn respond(req: Request, out: Out, local_port: u16) {
    match out {
        Out::Reply(r) => {
            let _ = req.respond(r.into_response());
        }
        Out::Resp(r) => {
            let _ = req.respond(r);
        }
        Out::Raw(r) => faults::send_raw(req, local_port, r),
    }
}

/// The content coding of a file response.
struct Coding {
    /// None: the plain bytes.
    codec: Option<Codec>,
    /// The `Content-Encoding` value.
    label: String,
    /// Chosen from `Accept-Encoding` (plain `gzip` scenario), not forced by a fault.
    negotiated: bool,
}

/// The coding of a file response (None: no `Content-Encoding`).
fn coding(sc: &Scenario, ctx: &Ctx) -> Option<Coding> {
    let fl = &sc.faults;
    let forced = fl.encoding.as_deref();
    if fl.stored_gzip {
        let label = forced
            .filter(|l| matches!(*l, "gzip" | "x-gzip"))
            .unwrap_or("gzip");
        return Some(Coding {
            codec: Some(Codec::Gzip),
            label: label.into(),
            negotiated: false,
        });
    }
    if let Some(name) = forced {
        let codec = match name {
            "deflate" => Some(Codec::Zlib),
            "raw-deflate" => Some(Codec::RawDeflate),
            "identity" => None,
            _ => Some(Codec::Gzip),
        };
        let label = if name == "raw-deflate" {
            "deflate"
        } else {
            name
        };
        return Some(Coding {
            codec,
            label: label.into(),
            negotiated: false,
        });
    }
    let gzip = sc.gzip
        && ctx
            .header("accept-encoding")
            .is_some_and(|a| a.to_ascii_lowercase().contains("gzip"));
    gzip.then(|| Coding {
        codec: Some(Codec::Gzip),
        label: "gzip".into(),
        negotiated: true,
    })
}

/// The bytes of one file response before framing: representation, then content coding.
struct FileBody<'a> {
    sh: &'a Shared,
    job: &'a Job,
    f: &'a FileEntry,
    rep: u32,
    codec: Option<Codec>,
    members: u64,
    plain_len: std::cell::OnceCell<u64>,
    coded_len: std::cell::OnceCell<u64>,
}

impl FileBody<'_> {
    fn plain(&self) -> BoxRead {
        file_reader(self.sh, self.job, self.f, self.rep)
    }
    fn plain_len(&self) -> u64 {
        *self
            .plain_len
            .get_or_init(|| match rendered(self.sh, self.job, self.f, self.rep) {
                Some(b) => b.len() as u64,
                None => count_bytes(self.plain()),
            })
    }
    /// The body as sent (coded when there is a codec).
    fn read(&self) -> BoxRead {
        match self.codec {
            None => self.plain(),
            Some(c) => {
                let members = if c == Codec::Gzip && self.members > 1 {
                    faults::split_even(self.plain_len(), self.members)
                } else {
                    Vec::new()
                };
                Box::new(Encode::new(self.plain(), c, members))
            }
        }
    }
    /// The length of [`FileBody::read`] when it was computed already.
    fn len_if_known(&self) -> Option<u64> {
        match self.codec {
            None => self.plain_len.get().copied(),
            Some(_) => self.coded_len.get().copied(),
        }
    }
    /// The length of [`FileBody::read`].
    fn len(&self) -> u64 {
        match self.codec {
            None => self.plain_len(),
            Some(_) => *self.coded_len.get_or_init(|| count_bytes(self.read())),
        }
    }
}

/// Fault `short_length` on a first request: a well-framed body of the first `s` bytes (under
/// `close_delimited`, a clean close after them).
fn short_length(
    s: u64,
    body: &FileBody<'_>,
    close_delimited: bool,
    cut: &mut Option<u64>,
) -> (u16, BoxRead, Option<u64>, Option<u64>) {
    let n = s.min(body.len());
    if close_delimited {
        *cut = Some(n);
    }
    (200, Box::new(body.read().take(n)), Some(n), Some(n))
}

fn file(sh: &Shared, ctx: &Ctx, id: u64, n: usize) -> Out {
    let Some(job) = sh.job(id) else {
        return oo(
            404,
            "not-found",
            &format!("unknown or deleted export job {id}"),
        )
        .into();
    };
    let Some(f) = n.checked_sub(1).and_then(|i| job.files.get(i)) else {
        return oo(404, "not-found", &format!("no file {n} in job {id}")).into();
    };
    let sc = &job.scen;
    let fl = &sc.faults;
    let path = ctx.raw_url.split('?').next().unwrap_or_default();
    let attempt = sh.count(format!("file {path}"));
    if let Some(limit) = fl.gone_after {
        if job.file_requests.fetch_add(1, Ordering::SeqCst) >= limit {
            sh.jobs.lock().remove(&id);
            return oo(
                404,
                "not-found",
                &format!("export job {id} was deleted (sandbox fault gone_after={limit})"),
            )
            .into();
        }
    }
    if let Some(uses) = fl.expire_files {
        let g = ctx
            .query
            .iter()
            .find(|(k, _)| k == "g")
            .map_or("", |(_, v)| v.as_str());
        if sh.count(format!("url {path}?g={g}")) > uses {
            return oo(
                410,
                "expired",
                &format!("the link to file {n} has expired; fetch the manifest again"),
            )
            .into();
        }
    }
    if let Some((code, times)) = fl.file_error {
        if attempt <= times {
            let mut r = oo(
                code,
                default_code(code),
                &format!("sandbox fault: file request {attempt} of {times} failing"),
            );
            if code == 429 {
                r = r.header("Retry-After", "0");
            }
            return r.into();
        }
    }
    let first = attempt == 1;
    let rep: u32 = if fl.change_file && !first { 2 } else { 1 };
    let ct = sc
        .file_ct
        .clone()
        .unwrap_or_else(|| "application/fhir+ndjson".into());
    let endless = fl.endless && matches!(f.kind, FileKind::Output(_));
    let coding = if endless { None } else { coding(sc, ctx) };
    let codec = coding.as_ref().and_then(|c| c.codec);
    let body = FileBody {
        sh,
        job: &job,
        f,
        rep,
        codec,
        members: fl.gzip_members.unwrap_or(1),
        plain_len: std::cell::OnceCell::new(),
        coded_len: std::cell::OnceCell::new(),
    };
    let mut headers = vec![("Content-Type", ct)];
    if let Some(c) = &coding {
        headers.push(("Content-Encoding", c.label.clone()));
        if c.negotiated {
            headers.push(("Vary", "Accept-Encoding".into()));
        }
    }
    let validators = fl.validators() && !endless;
    let etag = (validators && fl.etag).then(|| match &coding {
        Some(c) if c.codec.is_some() => format!("\"f{id}-{n}-r{rep}-{}\"", c.label),
        _ => format!("\"f{id}-{n}-r{rep}\""),
    });
    let last_modified = (validators && fl.last_modified).then(|| {
        httpdate::fmt_http_date(
            UNIX_EPOCH + Duration::from_secs(VALIDATOR_BASE_SECS + u64::from(rep)),
        )
    });
    if let Some(e) = &etag {
        headers.push(("ETag", e.clone()));
    }
    if let Some(lm) = &last_modified {
        headers.push(("Last-Modified", lm.clone()));
    }
    // Body bytes to send before the connection is shut down (`drop`; under
    // `close_delimited` also `short_length`).
    let mut cut: Option<u64> = None;
    // (status, body, Content-Length, bytes the body holds when known).
    let (status, reader, len, size): (u16, BoxRead, Option<u64>, Option<u64>) = if endless {
        (200, body.plain(), None, None)
    } else if codec.is_some() && !fl.stored_gzip {
        let corrupt = match fl.corrupt_gzip {
            Some(all) => all || first,
            None => false,
        };
        if corrupt {
            // Half the compressed stream, then a clean end of the HTTP body.
            let half = body.len() / 2;
            (200, Box::new(body.read().take(half)), None, Some(half))
        } else if let (Some(s), true) = (fl.short_length, first) {
            short_length(s, &body, fl.close_delimited, &mut cut)
        } else {
            if let (Some(at), true, true) = (fl.drop, first, fl.close_delimited) {
                cut = Some(at.min(body.len().saturating_sub(1)));
            }
            let len = sc.length.then(|| body.len());
            (200, body.read(), len, len)
        }
    } else {
        // Identity bodies, and stored gzip objects (ranges over the compressed bytes).
        let ranges = !fl.no_ranges;
        if ranges {
            headers.push(("Accept-Ranges", "bytes".into()));
        }
        let mut range = if ranges {
            parse_range(ctx.header("range"), || body.len())
        } else {
            RangeReq::None
        };
        if validators && !matches!(range, RangeReq::None) {
            if let Some(ir) = ctx.header("if-range") {
                if !if_range_matches(&ir, etag.as_deref(), last_modified.as_deref()) {
                    range = RangeReq::None;
                }
            }
        }
        if fl.bad_range && !matches!(range, RangeReq::None) && body.len() > 0 {
            range = RangeReq::Ok(0, body.len() - 1);
        }
        match range {
            RangeReq::Unsatisfiable => {
                return Reply::new(416)
                    .header("Content-Range", format!("bytes */{}", body.len()))
                    .into();
            }
            RangeReq::Ok(a, mut b) => {
                if let Some(max) = fl.short_ranges {
                    b = b.min(a.saturating_add(max - 1));
                }
                headers.push(("Content-Range", format!("bytes {a}-{b}/{}", body.len())));
                let n = b - a + 1;
                (
                    206,
                    Box::new(Skip::new(body.read(), a).take(n)),
                    Some(n),
                    Some(n),
                )
            }
            RangeReq::None => {
                let total = body.len_if_known();
                if let (Some(at), true) = (fl.drop, first) {
                    let total = body.len();
                    if total > 1 {
                        cut = Some(at.min(total - 1));
                    }
                    let len = (!fl.close_delimited).then_some(total);
                    (200, body.read(), len, Some(total))
                } else if let (Some(s), true) = (fl.short_length, first) {
                    short_length(s, &body, fl.close_delimited, &mut cut)
                } else {
                    // Pre-rendered files have a known length, as files on object stores do.
                    let len = ((sc.length || fl.drop.is_some() || sh.prerender || fl.stored_gzip)
                        && !sc.chunked)
                        .then(|| body.len());
                    (200, body.read(), len, len.or(total))
                }
            }
        }
    };
    let coded = codec.is_some();
    // A `drop` cut (Content-Length framing) is neither stalled nor slowed, as before.
    let dropped = cut.is_some() && !fl.close_delimited;
    let reader: BoxRead = if fl.stall_ms > 0 && first && !dropped {
        let at = if coded || endless {
            1024
        } else {
            body.plain_len() / 2
        };
        Box::new(Stall::new(reader, at, fl.stall_ms, Arc::clone(&sh.stop)))
    } else {
        reader
    };
    let reader: BoxRead = if sc.slow_ms > 0 && !dropped {
        Box::new(Slow::new(reader, sc.slow_ms, Arc::clone(&sh.stop)))
    } else {
        reader
    };
    let size = || size.unwrap_or_else(|| if endless { 2048 } else { body.len() });
    let trickle = fl.trickle_ms.filter(|_| first);
    let reader: BoxRead = match trickle {
        Some(ms) => {
            let at = if coded || endless { 1024 } else { size() / 2 };
            Box::new(Trickle::new(reader, at, ms, Arc::clone(&sh.stop)))
        }
        None => reader,
    };
    let framing = if fl.close_delimited {
        Some(Framing::Close)
    } else if fl.bad_chunked {
        Some(Framing::Chunked)
    } else if cut.is_some() || trickle.is_some() {
        Some(len.map_or(Framing::Chunked, Framing::Length))
    } else {
        None
    };
    if let Some(framing) = framing {
        let bad_chunk_at = (framing == Framing::Chunked && fl.bad_chunked).then(|| size() / 2);
        return Out::Raw(RawResponse {
            status,
            headers,
            body: reader,
            framing,
            cut,
            bad_chunk_at,
            head_only: ctx.method == "HEAD",
        });
    }
    let len = len.and_then(|l| usize::try_from(l).ok());
    let mut resp = Response::new(StatusCode(status), Vec::new(), reader, len, None);
    if len.is_some() {
        resp = resp.with_chunked_threshold(usize::MAX);
    }
    for (k, v) in headers {
        if let Ok(h) = Header::from_bytes(k.as_bytes(), v.as_bytes()) {
            resp.add_header(h);
        }
    }
    Out::Resp(resp.boxed())
}

/// Scenario-wide faults on buffered replies: `ansi`, `error_retry_after`, `endless_body`,
/// `bom`.
fn finish(sh: &Shared, scen: &Scenario, out: Out) -> Out {
    let Out::Reply(mut r) = out else {
        return out;
    };
    let fl = &scen.faults;
    // Under separate-export-status the real status is in X-Export-Status.
    let status = r
        .headers
        .iter()
        .find(|(k, _)| *k == "X-Export-Status")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(r.status);
    if fl.ansi {
        if let Some(b) = ansi_body(&r.body) {
            r.body = b;
        }
    }
    if let Some(ra) = &fl.error_retry_after {
        if status == 429 || status == 503 {
            r.headers.retain(|(k, _)| *k != "Retry-After");
            if let Some(v) = ra.value() {
                r.headers.push(("Retry-After", v));
            }
        }
    }
    let e = &fl.endless_body;
    let endless = match r.kind {
        Kind::Token => e.token && status == 200,
        Kind::SmartConfig => e.smart_config,
        Kind::Metadata => e.metadata,
        Kind::Working => e.status,
        Kind::Manifest => e.manifest,
        Kind::Other | Kind::PartialPage => false,
    } || (e.error && status >= 400);
    let bom = fl.bom
        && match r.kind {
            Kind::Manifest | Kind::PartialPage | Kind::Token | Kind::SmartConfig => true,
            Kind::Working => !r.body.is_empty(),
            Kind::Other | Kind::Metadata => false,
        };
    if endless {
        return Out::Resp(endless_reply(sh, r, bom, status));
    }
    if bom {
        r.body.splice(0..0, faults::BOM.iter().copied());
    }
    Out::Reply(r)
}

/// Fault `ansi`: the body with the escapes in front of every OperationOutcome `diagnostics`
/// and OAuth `error_description`; None when there are none.
fn ansi_body(body: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    if !text.contains("\"diagnostics\"") && !text.contains("\"error_description\"") {
        return None;
    }
    let mut v: Value = serde_json::from_str(text).ok()?;
    let prefix = |s: &mut Value| {
        if let Some(t) = s.as_str() {
            *s = Value::String(format!("{}{t}", super::scenario::ANSI_PREFIX));
        }
    };
    if v["resourceType"] == "OperationOutcome" {
        for issue in v["issue"].as_array_mut()? {
            if let Some(d) = issue.get_mut("diagnostics") {
                prefix(d);
            }
        }
    } else if let Some(d) = v.get_mut("error_description") {
        prefix(d);
    }
    Some(v.to_string().into_bytes())
}

/// Fault `endless_body`: the reply with a body that starts like it and never ends.
fn endless_reply(sh: &Shared, r: Reply, bom: bool, status: u16) -> ResponseBox {
    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    let s = |x: &Value| x.to_string();
    let (head, unit): (String, String) = match r.kind {
        Kind::Token if status < 400 => ("{\"access_token\":\"".into(), "x".into()),
        Kind::SmartConfig if status < 400 => (
            format!(
                "{{\"token_endpoint\":{},\"grant_types_supported\":[\"client_credentials\"],\"scopes_supported\":[",
                s(&v["token_endpoint"])
            ),
            "\"system/*.read\",".into(),
        ),
        Kind::Metadata if status < 400 => (
            "{\"resourceType\":\"CapabilityStatement\",\"status\":\"active\",\"kind\":\"instance\",\"fhirVersion\":\"4.0.1\",\"format\":[\"json\"],\"rest\":[{\"mode\":\"server\",\"resource\":[".into(),
            "{\"type\":\"Patient\",\"operation\":[{\"name\":\"export\"}]},".into(),
        ),
        Kind::Manifest if status < 400 => manifest_head(sh, &v),
        Kind::Working if status < 400 && v.get("output").is_some() => manifest_head(sh, &v),
        Kind::Working if status < 400 => (
            "{\"resourceType\":\"OperationOutcome\",\"issue\":[".into(),
            "{\"severity\":\"information\",\"code\":\"informational\",\"diagnostics\":\"in progress\"},".into(),
        ),
        _ => {
            let (code, diag) = if v["resourceType"] == "OperationOutcome" {
                (
                    v["issue"][0]["code"].clone(),
                    v["issue"][0]["diagnostics"].clone(),
                )
            } else {
                (v["error"].clone(), v["error_description"].clone())
            };
            let code = if code.is_string() { code } else { json!("exception") };
            let diag = if diag.is_string() { diag } else { json!("sandbox endless error") };
            (
                "{\"resourceType\":\"OperationOutcome\",\"issue\":[".into(),
                format!(
                    "{{\"severity\":\"error\",\"code\":{},\"diagnostics\":{}}},",
                    s(&code),
                    s(&diag)
                ),
            )
        }
    };
    let mut head = head.into_bytes();
    if bom {
        head.splice(0..0, faults::BOM.iter().copied());
    }
    let body = Endless::with(head, unit.into_bytes(), Arc::clone(&sh.stop));
    let mut resp = Response::new(StatusCode(r.status), Vec::new(), body, None, None);
    for (k, v) in r.headers {
        if let Ok(h) = Header::from_bytes(k.as_bytes(), v.as_bytes()) {
            resp.add_header(h);
        }
    }
    resp.boxed()
}

/// `endless_body` of a manifest: its members (transactionTime first), then `"output":[` and
/// its first entry repeated forever.
fn manifest_head(sh: &Shared, v: &Value) -> (String, String) {
    let unit = v["output"].get(0).cloned().unwrap_or_else(
        || json!({"type": "Patient", "url": format!("{}/files/0/1.ndjson", sh.root), "count": 1}),
    );
    // {"transactionTime":…, the other members…, "output":[ entries forever
    let mut rest = v.clone();
    let mut head = String::from("{");
    if let Some(o) = rest.as_object_mut() {
        if let Some(t) = o.remove("transactionTime") {
            head.push_str(&format!("\"transactionTime\":{t},"));
        }
        for k in ["output", "error", "deleted", "link"] {
            o.remove(k);
        }
        for (k, x) in o.iter() {
            head.push_str(&format!("{}:{x},", Value::String(k.clone())));
        }
    }
    head.push_str("\"output\":[");
    (head, format!("{unit},"))
}

/// Fault `storm`: the first N requests of each endpoint answer 429.
fn storm(sh: &Shared, scen: &Scenario, ctx: &Ctx, route: &Route) -> Option<Out> {
    let n = scen.faults.storm;
    if n == 0
        || !matches!(
            route,
            Route::Kickoff(_) | Route::Status(_) | Route::File(..)
        )
    {
        return None;
    }
    let path = ctx.raw_url.split('?').next().unwrap_or_default();
    let k = sh.count(format!("storm {} {path}", ctx.method));
    (k <= n).then(|| {
        oo(
            429,
            "throttled",
            &format!("sandbox fault: request {k} of a storm of {n}"),
        )
        .header("Retry-After", "0")
        .into()
    })
}

fn admin_truth(sh: &Shared, ctx: &Ctx) -> Reply {
    let mut q = TruthQuery::default();
    let mut ids = false;
    let mut attachments = false;
    for (k, v) in &ctx.query {
        let list = || {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
        };
        match k.as_str() {
            "level" => q.level = v.clone(),
            "group" => q.group = Some(v.clone()),
            "_type" => q.types.extend(list()),
            "_since" => q.since = Some(v.clone()),
            "_until" => q.until = Some(v.clone()),
            "_typeFilter" => q.type_filters.push(v.clone()),
            "patient" => q.patients.extend(list()),
            // `ids=1`: the sorted `Type/id` of every resource instead of the counts.
            "ids" => ids = v == "1" || v == "true",
            // `attachments=1`: every attachment of the DocumentReference and DiagnosticReport
            // resources and what fetching it gives.
            "attachments" => attachments = v == "1" || v == "true",
            other => {
                return oo(
                    400,
                    "invalid",
                    &format!("unknown truth parameter '{other}'"),
                )
            }
        }
    }
    let text = if attachments {
        truth_attachments(sh, &q).map(|v| serde_json::to_string(&v))
    } else if ids {
        truth_ids(sh, &q).map(|v| serde_json::to_string(&v))
    } else {
        truth(sh, &q).map(|m| serde_json::to_string(&m))
    };
    match text {
        Ok(m) => match m {
            Ok(s) => Reply::new(200).body("application/json", s),
            Err(e) => oo(500, "exception", &e.to_string()),
        },
        Err(e) => e.into(),
    }
}

/// The selection an export for the query makes.
fn truth_selection(sh: &Shared, q: &TruthQuery) -> Result<Selection, ApiError> {
    let level = match q.level.as_str() {
        "" | "system" => Level::System,
        "patient" => Level::Patient,
        "group" => Level::Group(q.group.clone().unwrap_or_default()),
        other => {
            return Err(ApiError::new(
                400,
                "invalid",
                format!("unknown level '{other}'"),
            ))
        }
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    if !q.types.is_empty() {
        pairs.push(("_type".into(), q.types.join(",")));
    }
    if let Some(s) = &q.since {
        pairs.push(("_since".into(), s.clone()));
    }
    if let Some(u) = &q.until {
        pairs.push(("_until".into(), u.clone()));
    }
    for f in &q.type_filters {
        pairs.push(("_typeFilter".into(), f.clone()));
    }
    for p in &q.patients {
        pairs.push(("patient".into(), p.clone()));
    }
    parse_export(&level, &pairs, true, true, sh.patients).map(|r| r.sel)
}

/// Expected counts per type for a query (lenient about unsupported types).
pub(crate) fn truth(sh: &Shared, q: &TruthQuery) -> Result<BTreeMap<String, u64>, ApiError> {
    let sel = truth_selection(sh, q)?;
    Ok(sel
        .requested
        .iter()
        .map(|&t| (TYPES[t].to_string(), plan::count_type(&sel, t)))
        .collect())
}

/// `Type/id` of every resource an export for the query must deliver, sorted.
pub(crate) fn truth_ids(sh: &Shared, q: &TruthQuery) -> Result<Vec<String>, ApiError> {
    let sel = truth_selection(sh, q)?;
    let mut ids = Vec::new();
    for &t in &sel.types {
        let mut c = plan::Cursor::default();
        while let Some((k, _)) = plan::next_match(&sel, plan::Mode::Type(t), &mut c) {
            ids.push(format!("{}/{}", TYPES[t], data::resource_id(k.t, k.i, k.j)));
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Every attachment of the DocumentReference and DiagnosticReport resources an export for the
/// query delivers, sorted by (resource, position).
pub(crate) fn truth_attachments(
    sh: &Shared,
    q: &TruthQuery,
) -> Result<Vec<AttachmentTruth>, ApiError> {
    let mut sel = truth_selection(sh, q)?;
    sel.set_doc_store(&sh.store_root);
    let mut out = Vec::new();
    for &t in sel.types.iter().filter(|&&t| data::has_documents(t)) {
        let mut c = plan::Cursor::default();
        while let Some((k, _)) = plan::next_match(&sel, plan::Mode::Type(t), &mut c) {
            out.extend(data::attachments(k.t, k.i, k.j, &sel.doc_store));
        }
    }
    out.sort_by(|a, b| (&a.resource, a.position).cmp(&(&b.resource, b.position)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let (p, s, r) = split_prefix("/x/polls=0;status_ct=application/fhir+json/fhir/$export");
        assert_eq!(p, "/x/polls=0;status_ct=application/fhir+json");
        assert_eq!(
            s.as_deref(),
            Some("polls=0;status_ct=application/fhir+json")
        );
        assert_eq!(r, "/fhir/$export");
        let (p, s, r) = split_prefix("/x/gzip/files/3/1.ndjson");
        assert_eq!(
            (p.as_str(), s.as_deref(), r),
            ("/x/gzip", Some("gzip"), "/files/3/1.ndjson")
        );
        let (p, _, r) = split_prefix("/x/polls=1;sig=a/binary/b/binary/docref-2-0-0");
        assert_eq!(
            (p.as_str(), r),
            ("/x/polls=1;sig=a/binary/b", "/binary/docref-2-0-0")
        );
        let (p, _, r) = split_prefix("/x/file_ct=application/binary/fhir/Binary/docref-2-0-0");
        assert_eq!(
            (p.as_str(), r),
            ("/x/file_ct=application/binary", "/fhir/Binary/docref-2-0-0")
        );
        assert!(matches!(
            parse_route("/fhir/Binary/docref-2-0-0", true),
            Route::Binary(id) if id == "docref-2-0-0"
        ));
        assert!(matches!(
            parse_route("/binary/docref-2-0-0", true),
            Route::StoreBinary(id) if id == "docref-2-0-0"
        ));
        let (_, s, r) = split_prefix("/fhir/metadata");
        assert_eq!((s, r), (None, "/fhir/metadata"));
        assert!(matches!(
            parse_route("/fhir/%24export", false),
            Route::Kickoff(Level::System)
        ));
        assert!(matches!(
            parse_route("/files/2/3.ndjson", false),
            Route::File(2, 3)
        ));
        assert!(matches!(
            parse_route("/_sandbox/truth", true),
            Route::Unknown
        ));
    }

    /// Documents: served per class at the URLs the exported records carry, and the truth of
    /// `attachments=1` matches what is served.
    #[test]
    fn documents_are_served_per_class() {
        use super::super::{Sandbox, SandboxOptions};
        let sb = Sandbox::start(SandboxOptions {
            patients: 20,
            bearer_token: Some("tok".into()),
            threads: 2,
            ..SandboxOptions::default()
        })
        .expect("sandbox");
        let http = reqwest::blocking::Client::new();
        let prefix = "/x/polls=0";
        let base = format!("{}{prefix}/fhir", sb.root_url());
        let get = |url: &str, accept: Option<&str>, token: bool| {
            let mut r = http.get(url);
            if let Some(a) = accept {
                r = r.header("Accept", a);
            }
            if token {
                r = r.bearer_auth("tok");
            }
            r.send().expect("request")
        };
        // Kick-off, one status poll, the output files.
        let k = http
            .get(format!(
                "{base}/$export?_type=DocumentReference,DiagnosticReport"
            ))
            .header("Accept", FHIR_JSON)
            .header("Prefer", "respond-async")
            .bearer_auth("tok")
            .send()
            .expect("kick-off");
        assert_eq!(k.status(), 202);
        let status = k.headers()["content-location"]
            .to_str()
            .expect("url")
            .to_string();
        let m: Value = serde_json::from_str(&get(&status, None, true).text().expect("manifest"))
            .expect("manifest json");
        let mut urls = Vec::new();
        for o in m["output"].as_array().expect("output") {
            let body = get(o["url"].as_str().expect("url"), None, true)
                .text()
                .expect("file");
            for line in body.lines() {
                let v: Value = serde_json::from_str(line).expect("json");
                let atts: Vec<Value> = match v["content"].as_array() {
                    Some(c) => c.iter().map(|c| c["attachment"].clone()).collect(),
                    None => v["presentedForm"].as_array().cloned().unwrap_or_default(),
                };
                for a in atts {
                    urls.extend(a["url"].as_str().map(String::from));
                }
            }
        }
        let q = TruthQuery {
            types: vec!["DocumentReference".into(), "DiagnosticReport".into()],
            ..TruthQuery::default()
        };
        let truth = sb.truth_attachments(&q);
        let mut want: Vec<String> = truth.iter().filter_map(|a| a.url.clone()).collect();
        let mut got = urls.clone();
        want.sort();
        got.sort();
        assert_eq!(got, want);
        let mut classes = std::collections::BTreeSet::new();
        let hex = |b: &[u8]| {
            data::sha1(b)
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect::<String>()
        };
        for a in truth.iter().filter(|a| a.url.is_some()) {
            let url = a.url.as_deref().unwrap_or_default();
            let class = a.class.expect("class");
            classes.insert(class);
            let abs = if class == 12 {
                assert!(
                    url.starts_with(&format!("{}/binary/", sb.store_url())),
                    "{url}"
                );
                // No token to the object store.
                assert_eq!(get(url, None, true).status(), 400);
                url.to_string()
            } else {
                assert!(url.starts_with("Binary/"), "{url}");
                assert_eq!(get(&format!("{base}/{url}"), None, false).status(), 401);
                format!("{base}/{url}")
            };
            let token = class != 12;
            let r = get(
                &abs,
                Some("application/pdf, text/html, text/plain, */*"),
                token,
            );
            let code = r.status().as_u16();
            let expect = match class {
                15 => 404,
                16 => 403,
                17 => 500,
                18 => 503,
                _ => 200,
            };
            assert_eq!(code, expect, "{url} class {class}");
            if class == 18 {
                assert_eq!(r.headers()["retry-after"], "0");
                let again = get(&abs, None, token);
                assert_eq!(again.status(), 200);
            }
            if code == 200 && class != 13 {
                assert_eq!(r.headers()["content-type"], a.content_type.as_str());
                let bytes = r.bytes().expect("bytes");
                assert_eq!(
                    (bytes.len() as u64, hex(&bytes)),
                    (a.size, a.sha1.clone()),
                    "{url}"
                );
            }
            if class == 13 || (class < 10 && a.content_type != "application/json") {
                // A FHIR Binary resource when asked for JSON (always for class 13).
                let v: Value = serde_json::from_str(
                    &get(&abs, Some(FHIR_JSON), token).text().expect("Binary"),
                )
                .expect("Binary json");
                assert_eq!(v["resourceType"], "Binary");
                assert_eq!(v["contentType"], a.content_type.as_str());
                let bytes = base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    v["data"].as_str().unwrap_or_default(),
                )
                .expect("base64");
                assert_eq!(hex(&bytes), a.sha1);
            }
        }
        assert_eq!(classes.len(), 20, "{classes:?}");
        // HEAD: the length, no body.
        let ok = truth
            .iter()
            .find(|a| a.class == Some(0))
            .expect("a class-0 document");
        let h = http
            .head(format!("{base}/{}", ok.url.as_deref().unwrap_or_default()))
            .bearer_auth("tok")
            .send()
            .expect("HEAD");
        assert_eq!(h.headers()["content-length"], ok.size.to_string().as_str());
        // Unknown documents, and class-12 documents on the wrong listener.
        assert_eq!(
            get(&format!("{base}/Binary/docref-0-0-0"), None, true).status(),
            404
        );
        let c12 = truth
            .iter()
            .find(|a| a.class == Some(12))
            .expect("class 12");
        let id = c12
            .url
            .as_deref()
            .and_then(|u| u.rsplit('/').next())
            .unwrap_or_default();
        assert_eq!(
            get(&format!("{base}/Binary/{id}"), None, true).status(),
            404
        );
        assert_eq!(
            get(
                &format!(
                    "{}{prefix}/binary/{}",
                    sb.store_url(),
                    ok.url
                        .as_deref()
                        .unwrap_or_default()
                        .trim_start_matches("Binary/")
                ),
                None,
                false
            )
            .status(),
            404
        );
        // Logged with their paths, the store's under "store".
        let log = sb.requests();
        assert!(log
            .iter()
            .any(|r| r.server == "store" && r.path == format!("/binary/{id}")));
        assert!(log
            .iter()
            .any(|r| r.server == "fhir" && r.path.starts_with(&format!("{prefix}/fhir/Binary/"))));
        // The admin endpoint gives the same truth.
        let t: Value = http
            .get(format!(
                "{}/_sandbox/truth?_type=DocumentReference,DiagnosticReport&attachments=1",
                sb.root_url()
            ))
            .send()
            .and_then(|r| r.text())
            .map(|t| serde_json::from_str(&t).expect("json"))
            .expect("truth");
        assert_eq!(t, serde_json::to_value(&truth).expect("value"));
        assert!(truth
            .iter()
            .any(|a| a.outcome == "inline" && a.url.is_none()));
    }

    #[test]
    fn partial_page_route() {
        assert!(matches!(
            parse_route("/jobs/3/partial/12/2", true),
            Route::Partial(3, 12, 2)
        ));
        assert!(matches!(
            parse_route("/jobs/3/partial/x/2", true),
            Route::Unknown
        ));
    }

    #[test]
    fn if_range() {
        let lm = "Mon, 01 Jan 2024 00:00:01 GMT";
        assert!(if_range_matches("\"f1-1-r1\"", Some("\"f1-1-r1\""), None));
        assert!(!if_range_matches("\"f1-1-r2\"", Some("\"f1-1-r1\""), None));
        // Strong comparison: a weak tag never matches.
        assert!(!if_range_matches(
            "W/\"f1-1-r1\"",
            Some("\"f1-1-r1\""),
            None
        ));
        assert!(if_range_matches(lm, None, Some(lm)));
        // The same instant in the obsolete RFC 850 form is still exactly that date.
        assert!(if_range_matches(
            "Monday, 01-Jan-24 00:00:01 GMT",
            None,
            Some(lm)
        ));
        assert!(!if_range_matches(
            "Mon, 01 Jan 2024 00:00:02 GMT",
            None,
            Some(lm)
        ));
        assert!(!if_range_matches(lm, Some("\"f1-1-r1\""), None));
        assert!(!if_range_matches("\"f1-1-r1\"", None, Some(lm)));
        assert!(!if_range_matches("garbage", Some("\"x\""), Some(lm)));
    }

    #[test]
    fn pages() {
        let e: Vec<Entry> = (0..5).map(Entry::File).collect();
        let (p, more) = page_of(&e, Some(2), 1).expect("page 1");
        assert_eq!((p, more), (&e[0..2], true));
        let (p, more) = page_of(&e, Some(2), 3).expect("page 3");
        assert_eq!((p, more), (&e[4..5], false));
        assert!(page_of(&e, Some(2), 4).is_none());
        assert!(page_of(&e, Some(2), 0).is_none());
        let (p, more) = page_of(&e, None, 1).expect("one page");
        assert_eq!((p.len(), more), (5, false));
        let (p, more) = page_of(&[], Some(2), 1).expect("an empty manifest has page 1");
        assert_eq!((p.len(), more), (0, false));
    }

    #[test]
    fn ansi_in_outcomes_and_oauth_errors() {
        let body = oo_json("error", "processing", "boom").into_bytes();
        let v: Value = serde_json::from_slice(&ansi_body(&body).expect("changed")).expect("json");
        assert_eq!(
            v["issue"][0]["diagnostics"].as_str(),
            Some(format!("{}boom", super::super::scenario::ANSI_PREFIX).as_str())
        );
        let body = br#"{"error":"invalid_grant","error_description":"no"}"#;
        let out = ansi_body(body).expect("changed");
        let text = String::from_utf8(out).expect("utf8");
        assert!(
            text.contains("\\u001b[31m\\u001b]0;sandbox\\u0007no"),
            "{text}"
        );
        assert!(ansi_body(br#"{"output":[]}"#).is_none());
    }

    #[test]
    fn ranges() {
        assert!(matches!(
            parse_range(Some("bytes=10-".into()), || 100),
            RangeReq::Ok(10, 99)
        ));
        assert!(matches!(
            parse_range(Some("bytes=10-19".into()), || 100),
            RangeReq::Ok(10, 19)
        ));
        assert!(matches!(
            parse_range(Some("bytes=-5".into()), || 100),
            RangeReq::Ok(95, 99)
        ));
        assert!(matches!(
            parse_range(Some("bytes=100-".into()), || 100),
            RangeReq::Unsatisfiable
        ));
        assert!(matches!(
            parse_range(Some("items=1-".into()), || 100),
            RangeReq::None
        ));
    }
}
