//! Request routing and the Bulk Data protocol handlers.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Cursor, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flate2::read::GzEncoder;
use flate2::Compression;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tiny_http::{Header, Request, Response, ResponseBox, StatusCode};

use super::auth::{self, AuthState, Bearer, TokenRequest};
use super::data::{self, TYPES};
use super::faults::{self, Endless, FaultLines, Stall};
use super::params::{parse_export, ApiError, Level, Selection};
use super::plan::{self, DeletedSource, LinesReader, Part, PartSource, Skip, Slow, VecSource};
use super::scenario::{RetryAfter, Scenario};
use super::{LoggedRequest, SandboxOptions, TruthQuery};

const MAX_BODY: u64 = 4 << 20;
const FHIR_JSON: &str = "application/fhir+json";

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
    pub fn new(opts: &SandboxOptions, port: u16, store_port: u16) -> Self {
        Shared {
            root: format!("http://127.0.0.1:{port}"),
            store_root: format!("http://127.0.0.1:{store_port}"),
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
            stop: Arc::new(AtomicBool::new(false)),
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

/// A small fully-buffered reply.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn new(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
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

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16)).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (hex(b.get(i + 1)), hex(b.get(i + 2))) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn now_instant() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    data::instant(ms)
}

enum Route {
    Metadata,
    SmartConfig,
    Token,
    Kickoff(Level),
    Status(u64),
    Page(u64, usize),
    File(u64, usize),
    AdminRequests,
    AdminTruth,
    Unknown,
}

/// Splits `/x/<scenario>` off a raw path: (raw prefix, raw scenario, raw rest).
/// The scenario ends at the first `/fhir/`, `/fhir`(end), `/jobs/`, `/files/` or `/auth/`,
/// so values may contain unescaped '/'.
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
        ["jobs", id] => id.parse().map_or(Route::Unknown, Route::Status),
        ["jobs", id, "manifest", page] => match (id.parse(), page.parse()) {
            (Ok(id), Ok(page)) => Route::Page(id, page),
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
    let protected = match route {
        Route::Kickoff(_) | Route::Status(_) | Route::Page(..) => true,
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
            if redirect
                && matches!(ctx.method.as_str(), "GET" | "HEAD")
                && sh.job(id).is_some() =>
        {
            let path = ctx.raw_url.split('?').next().unwrap_or_default();
            let to = format!("{}{}?sig={}", sh.store_root, path, auth::random_hex());
            Reply::new(307).header("Location", to).into()
        }
        (_, route) => match storm(sh, &scen, &ctx, &route) {
            Some(out) => out,
            None => dispatch(sh, &ctx, route),
        },
    };
    respond(req, resp, sh.port);
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
        Err(msg) => oo(400, "invalid", &msg).into(),
        Ok(ctx) => match route {
            Route::File(id, n) if matches!(ctx.method.as_str(), "GET" | "HEAD") => {
                file(sh, &ctx, id, n)
            }
            Route::File(..) => oo(
                405,
                "not-supported",
                &format!("method {} not allowed here", ctx.method),
            )
            .into(),
            _ => oo(
                404,
                "not-found",
                &format!("the object store has no {}", ctx.raw_url),
            )
            .into(),
        },
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
        Route::File(id, n) if m == "GET" || m == "HEAD" => return file(sh, ctx, id, n),
        Route::AdminRequests if m == "GET" => match serde_json::to_string(&*sh.log.lock()) {
            Ok(s) => Reply::new(200).body("application/json", s),
            Err(e) => oo(500, "exception", &e.to_string()),
        },
        Route::AdminRequests if m == "DELETE" => {
            sh.log.lock().clear();
            Reply::new(204)
        }
        Route::AdminTruth if m == "GET" => admin_truth(sh, ctx),
        Route::Unknown => oo(
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
            "resource": [
                {"type": "Patient", "operation": [{"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"}]},
                {"type": "Group", "operation": [{"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"}]}
            ],
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
    Reply::new(200).body(FHIR_JSON, cs.to_string())
}

fn smart_config(sh: &Shared, ctx: &Ctx) -> Reply {
    match &sh.auth {
        Some(a) if !ctx.scen.no_smart_config => {
            let doc = auth::smart_configuration(a.cfg(), &sh.token_url(&ctx.prefix));
            Reply::new(200).body("application/json", doc.to_string())
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
        .header("Pragma", "no-cache");
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

    let sel = Arc::new(req.sel);
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
        .map(|m| oo_json("information", "informational", m))
        .collect();
    if ctx.scen.errors {
        for n in 1..=2 {
            errors.push(oo_json(
                "error",
                "processing",
                &format!("sandbox simulated error {n} of 2 while exporting Observation/obs-{n}-0"),
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
        transaction_time: now_instant(),
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

fn file_url(sh: &Shared, job: &Job, n: usize) -> String {
    let root = if job.scen.files_elsewhere {
        &sh.store_root
    } else {
        &sh.root
    };
    let mut url = format!("{}{}/files/{}/{}.ndjson", root, job.prefix, job.id, n);
    if job.scen.faults.foreign_scheme {
        url = url.replacen("http://", "ftp://", 1);
    }
    if job.scen.faults.expire_files.is_some() {
        url.push_str(&format!("?g={}", job.generation.load(Ordering::SeqCst)));
    }
    url
}

/// Manifest listing files `range` (0-based indices), with an optional next page.
fn manifest(
    sh: &Shared,
    job: &Job,
    range: std::ops::Range<usize>,
    next_page: Option<usize>,
) -> String {
    let (mut output, mut error, mut deleted) = (Vec::new(), Vec::new(), Vec::new());
    for n in range {
        let Some(f) = job.files.get(n) else { break };
        let url = file_url(sh, job, n + 1);
        match &f.kind {
            FileKind::Output(p) => {
                let mut e = json!({"url": url, "count": f.count});
                if job.organized {
                    if p.continues {
                        e["continuesInFile"] = json!(file_url(sh, job, n + 2));
                    }
                } else if let plan::Mode::Type(t) = p.mode {
                    e["type"] = json!(TYPES[t]);
                }
                output.push(e);
            }
            FileKind::Error(_) => {
                error.push(json!({"type": "OperationOutcome", "url": url, "count": f.count}))
            }
            FileKind::Deleted(_) => {
                deleted.push(json!({"type": "Bundle", "url": url, "count": f.count}))
            }
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
    if let Some(p) = next_page {
        m["link"] = json!([{"relation": "next", "url": format!("{}{}/jobs/{}/manifest/{}", sh.root, job.prefix, job.id, p)}]);
    }
    m.to_string()
}

fn manifest_ct(job: &Job) -> String {
    job.scen
        .status_ct
        .clone()
        .unwrap_or_else(|| "application/json".into())
}

/// Page `page` (1-based) of the final manifest, or None when out of range.
fn paged_manifest(sh: &Shared, job: &Job, page: usize) -> Option<String> {
    let total = job.files.len();
    let size = job.scen.page.unwrap_or(usize::MAX).max(1);
    let pages = total.div_ceil(size).max(1);
    if page == 0 || page > pages {
        return None;
    }
    let start = (page - 1).saturating_mul(size);
    let end = start.saturating_add(size).min(total);
    Some(manifest(
        sh,
        job,
        start..end,
        (page < pages).then_some(page + 1),
    ))
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
        Reply::new(200).body(&manifest_ct(&job), body)
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
    let mut reply = Reply::new(202);
    match &job.scen.progress {
        None => reply = reply.header("X-Progress", format!("Processing: {pct}%")),
        Some(t) if t.is_empty() => {}
        Some(t) => reply = reply.header("X-Progress", t.clone()),
    }
    match job.scen.retry_after {
        RetryAfter::Secs(s) => reply = reply.header("Retry-After", s.to_string()),
        RetryAfter::Omit => {}
        RetryAfter::Date => {
            let at = SystemTime::now() + Duration::from_secs(2);
            reply = reply.header("Retry-After", httpdate::fmt_http_date(at));
        }
    }
    if job.partial {
        let ready = (job.files.len() as u128 * u128::from(w) / u128::from(polls)) as usize;
        reply = reply.body(&manifest_ct(job), manifest(sh, job, 0..ready, None));
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
        Some(body) => Reply::new(200).body(&manifest_ct(&job), body),
        None => oo(404, "not-found", &format!("no manifest page {page}")),
    }
}

type BoxRead = Box<dyn Read + Send>;

fn file_reader(sh: &Shared, job: &Job, f: &FileEntry) -> BoxRead {
    let stop = Arc::clone(&sh.stop);
    let fl = &job.scen.faults;
    match &f.kind {
        FileKind::Output(_) if fl.endless => Box::new(Endless::new(stop)),
        FileKind::Output(p) => {
            let src = PartSource::new(Arc::clone(&job.sel), p);
            if fl.bad_line.is_some() || fl.long_line.is_some() || fl.truncate_last {
                Box::new(LinesReader::new(FaultLines::new(src, fl), stop))
            } else if let Some(bytes) = rendered(sh, job, f) {
                Box::new(Cursor::new(ArcBytes(bytes)))
            } else {
                Box::new(LinesReader::new(src, stop))
            }
        }
        FileKind::Error(lines) => {
            Box::new(LinesReader::new(VecSource::new(Arc::clone(lines)), stop))
        }
        FileKind::Deleted(n) => Box::new(LinesReader::new(DeletedSource::new(*n), stop)),
    }
}

/// With `prerender`, an output file (without line faults) rendered once and kept in memory.
fn rendered(sh: &Shared, job: &Job, f: &FileEntry) -> Option<Arc<[u8]>> {
    let fl = &job.scen.faults;
    let FileKind::Output(p) = &f.kind else {
        return None;
    };
    if !sh.prerender
        || fl.endless
        || fl.bad_line.is_some()
        || fl.long_line.is_some()
        || fl.truncate_last
    {
        return None;
    }
    let key = format!("{} {:?} {:?} {}", job.render_key, p.mode, p.start, p.count);
    if let Some(b) = sh.rendered.lock().get(&key) {
        return Some(Arc::clone(b));
    }
    let mut v = Vec::new();
    let src = PartSource::new(Arc::clone(&job.sel), p);
    // Rendering from memory only fails when the sandbox stops; the response is moot then.
    LinesReader::new(src, Arc::clone(&sh.stop))
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

fn count_bytes(mut r: impl Read) -> u64 {
    io::copy(&mut r, &mut io::sink()).unwrap_or(0)
}

/// What a handler answers: a response, or (fault `drop`) a response cut off mid-body.
enum Out {
    Resp(ResponseBox),
    Cut {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: BoxRead,
        total: u64,
        cut: u64,
    },
}

impl From<ResponseBox> for Out {
    fn from(r: ResponseBox) -> Self {
        Out::Resp(r)
    }
}

impl From<Reply> for Out {
    fn from(r: Reply) -> Self {
        Out::Resp(r.into_response())
    }
}

fn respond(req: Request, out: Out, local_port: u16) {
    match out {
        Out::Resp(r) => {
            let _ = req.respond(r);
        }
        Out::Cut {
            status,
            headers,
            body,
            total,
            cut,
        } => faults::send_cut(req, local_port, status, &headers, body, total, cut),
    }
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
    let ct = sc
        .file_ct
        .clone()
        .unwrap_or_else(|| "application/fhir+ndjson".into());
    let gzip = sc.gzip
        && ctx
            .header("accept-encoding")
            .is_some_and(|a| a.to_ascii_lowercase().contains("gzip"));
    let endless = fl.endless && matches!(f.kind, FileKind::Output(_));
    let first = attempt == 1;
    let mut headers = vec![("Content-Type", ct)];
    let total = std::cell::OnceCell::new();
    let total_len = || {
        *total.get_or_init(|| match rendered(sh, &job, f) {
            Some(b) => b.len() as u64,
            None => count_bytes(file_reader(sh, &job, f)),
        })
    };
    let (status, body, len): (u16, BoxRead, Option<u64>) = if endless {
        (200, file_reader(sh, &job, f), None)
    } else if gzip {
        headers.push(("Content-Encoding", "gzip".into()));
        headers.push(("Vary", "Accept-Encoding".into()));
        let gz = || GzEncoder::new(file_reader(sh, &job, f), Compression::fast());
        let corrupt = match fl.corrupt_gzip {
            Some(all) => all || first,
            None => false,
        };
        if corrupt {
            // Half the compressed stream, then a clean end of the HTTP body.
            let half = count_bytes(gz()) / 2;
            (200, Box::new(gz().take(half)), None)
        } else {
            let len = sc.length.then(|| count_bytes(gz()));
            (200, Box::new(gz()), len)
        }
    } else {
        let range = if fl.no_ranges {
            RangeReq::None
        } else {
            headers.push(("Accept-Ranges", "bytes".into()));
            parse_range(ctx.header("range"), total_len)
        };
        match range {
            RangeReq::Unsatisfiable => {
                return Reply::new(416)
                    .header("Content-Range", format!("bytes */{}", total_len()))
                    .into();
            }
            RangeReq::Ok(first, last) => {
                headers.push((
                    "Content-Range",
                    format!("bytes {first}-{last}/{}", total_len()),
                ));
                let body: BoxRead =
                    Box::new(Skip::new(file_reader(sh, &job, f), first).take(last - first + 1));
                (206, body, Some(last - first + 1))
            }
            RangeReq::None => {
                if let (Some(at), true) = (fl.drop, first) {
                    let total = total_len();
                    if total > 1 {
                        return Out::Cut {
                            status: 200,
                            headers,
                            body: file_reader(sh, &job, f),
                            total,
                            cut: at.min(total - 1),
                        };
                    }
                }
                // Pre-rendered files have a known length, as files on object stores do.
                let len = ((sc.length || fl.drop.is_some() || sh.prerender) && !sc.chunked)
                    .then(total_len);
                (200, file_reader(sh, &job, f), len)
            }
        }
    };
    let body: BoxRead = if fl.stall_ms > 0 && first {
        let at = if gzip || endless {
            1024
        } else {
            total_len() / 2
        };
        Box::new(Stall::new(body, at, fl.stall_ms, Arc::clone(&sh.stop)))
    } else {
        body
    };
    let body: BoxRead = if sc.slow_ms > 0 {
        Box::new(Slow::new(body, sc.slow_ms, Arc::clone(&sh.stop)))
    } else {
        body
    };
    let len = len.and_then(|l| usize::try_from(l).ok());
    let mut resp = Response::new(StatusCode(status), Vec::new(), body, len, None);
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
            other => {
                return oo(
                    400,
                    "invalid",
                    &format!("unknown truth parameter '{other}'"),
                )
            }
        }
    }
    match truth(sh, &q) {
        Ok(m) => match serde_json::to_string(&m) {
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
