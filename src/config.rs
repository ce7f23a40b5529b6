//! The export configuration: one JSON document (or a [`Config`] built in Rust). Unknown keys are
//! errors; every check names the key and the value that was wrong.

use crate::error::{Error, Result};
use crate::instant::is_date_or_instant;
pub use crate::instant::is_instant;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Which `$export` operation to kick off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// `[base]/$export`
    #[default]
    System,
    /// `[base]/Patient/$export`
    Patient,
    /// `[base]/Group/[id]/$export`
    Group,
}

/// How the kick-off request is sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// GET with query parameters, POST when `patients` is given.
    #[default]
    Auto,
    Get,
    Post,
}

/// Where a secret comes from: inline (`"..."`), a file (`{"file": "/path"}`) or an environment
/// variable (`{"env": "NAME"}`), so it need not sit in the calling program or its config file.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(
    untagged,
    expecting = "a secret: a string, {\"file\": \"/path\"} or {\"env\": \"VARIABLE\"}"
)]
pub enum SecretSource {
    Inline(String),
    File { file: String },
    Env { env: String },
}

impl From<&str> for SecretSource {
    fn from(s: &str) -> SecretSource {
        SecretSource::Inline(s.to_owned())
    }
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Never print secrets; file names and variable names are not secret.
            SecretSource::Inline(_) => f.write_str("***"),
            SecretSource::File { file } => write!(f, "file {file:?}"),
            SecretSource::Env { env } => write!(f, "env {env:?}"),
        }
    }
}

/// What to do with an invalid NDJSON line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InvalidLinePolicy {
    /// Fail the export with a protocol error naming the file and line.
    #[default]
    Fail,
    /// Skip the line and deliver an error record (OperationOutcome) in its place.
    Skip,
}

/// What to do with the attachments (`DocumentReference.content[].attachment`,
/// `DiagnosticReport.presentedForm[]`, ...) of the resource types in `attachment_types` that
/// point at their document by `url` and hold no `data`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachmentMode {
    /// Leave them as they are (the default): records are delivered as the server wrote them.
    #[default]
    None,
    /// Fetch each document and deliver the record with it in `attachment.data` (base64), its
    /// `size` and `hash` filled when absent and checked when present.
    Inline,
    /// Fetch each document and hand it to the caller as an attachment record
    /// (`Kind::Attachment`) before the record that links it; the record's `attachment.url`
    /// becomes the relative path `attachment_dir` + the attachment's file name.
    Save,
}

/// Where each resource type keeps its attachments (FHIR R4): the path of its `Attachment`
/// elements, `[]` after an element that repeats.
pub const ATTACHMENT_PLACES: &[(&str, &[&str])] = &[
    ("DocumentReference", &["content[]", "attachment"]),
    ("DiagnosticReport", &["presentedForm[]"]),
    ("Media", &["content"]),
    ("Communication", &["payload[]", "contentAttachment"]),
    ("CommunicationRequest", &["payload[]", "contentAttachment"]),
    ("Patient", &["photo[]"]),
    ("Practitioner", &["photo[]"]),
    ("RelatedPerson", &["photo[]"]),
    ("Person", &["photo"]),
];

/// The largest `attachment_max_bytes` (a FHIR R4 `size` is an unsignedInt; a record holding
/// a larger document inline could not be handed out as one line anyway).
const MAX_DOCUMENT_BYTES: u64 = 1 << 31;

/// Check the config's attachment keys.
fn validate_attachments(c: &Config) -> Result<()> {
    let bad = |msg: String| Error::config(format!("invalid config: {msg}"));
    for t in &c.attachment_types {
        if !ATTACHMENT_PLACES.iter().any(|(p, _)| p == t) {
            let known: Vec<&str> = ATTACHMENT_PLACES.iter().map(|(p, _)| *p).collect();
            return Err(bad(format!(
                "attachment_types has {t:?}, whose attachments fhirbulk does not know where to find; it knows {}",
                known.join(", ")
            )));
        }
    }
    if c.attachments != AttachmentMode::None && c.attachment_types.is_empty() {
        return Err(bad("attachments is on but attachment_types is empty".into()));
    }
    if c.attachment_max_bytes == 0 || c.attachment_max_bytes > MAX_DOCUMENT_BYTES {
        return Err(bad(format!(
            "attachment_max_bytes must be between 1 and {MAX_DOCUMENT_BYTES}, got {}",
            c.attachment_max_bytes
        )));
    }
    for ct in &c.attachment_content_types {
        let ok = ct
            .split_once('/')
            .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && !ct.contains([' ', ';', ',']));
        if !ok {
            return Err(bad(format!(
                "attachment_content_types has {ct:?}; expected a media type such as application/pdf or text/*"
            )));
        }
    }
    let d = &c.attachment_dir;
    if d.starts_with('/')
        || d.contains(['\\', '\0', '?', '#'])
        || d.split('/').any(|p| p == "..")
        || !(d.is_empty() || d.ends_with('/'))
    {
        return Err(bad(format!(
            "attachment_dir {d:?} must be a relative directory ending in '/', without '..' (or empty)"
        )));
    }
    Ok(())
}

/// The value(s) of an extra kick-off parameter (config `params`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ParamValues {
    One(String),
    Many(Vec<String>),
}

impl ParamValues {
    /// The values, in order.
    pub fn values(&self) -> &[String] {
        match self {
            ParamValues::One(v) => std::slice::from_ref(v),
            ParamValues::Many(v) => v,
        }
    }
}

/// Kick-off parameters the engine sends from its own keys (config `params` may not name them).
pub(crate) const ENGINE_PARAMS: [(&str, &str); 10] = [
    ("_outputFormat", "output_format"),
    ("_since", "since"),
    ("_until", "until"),
    ("_type", "types"),
    ("_elements", "elements"),
    ("_typeFilter", "type_filters"),
    ("includeAssociatedData", "include_associated_data"),
    ("organizeOutputBy", "organize_output_by"),
    ("allowPartialManifests", "allow_partial_manifests"),
    ("patient", "patients"),
];

/// How requests are authorized.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    /// No `Authorization` header.
    #[default]
    None,
    /// A static bearer token.
    Bearer {
        /// The token.
        token: SecretSource,
    },
    /// SMART Backend Services: OAuth 2.0 client credentials, authenticated with a signed JWT
    /// (`private_key`, the SMART way) or with a client secret over HTTP Basic (`client_secret`).
    ClientCredentials {
        client_id: String,
        /// PEM (PKCS#8, PKCS#1 RSA or SEC1 EC P-384) or a JWK / JWKS with the private key.
        #[serde(default)]
        private_key: Option<SecretSource>,
        /// For `client_secret_basic`.
        #[serde(default)]
        client_secret: Option<SecretSource>,
        /// The key id registered with the server (default: the JWK's `kid`).
        #[serde(default)]
        kid: Option<String>,
        /// Optional `jku` header: the URL of the client's JWKS.
        #[serde(default)]
        jku: Option<String>,
        /// `RS384` or `ES384`; default from the key.
        #[serde(default)]
        alg: Option<String>,
        /// Default `system/*.read` (or the server's v2 `system/*.rs` if it lists only v2).
        #[serde(default)]
        scope: Option<String>,
        /// Overrides discovery through `.well-known/smart-configuration` and `metadata`.
        #[serde(default)]
        token_url: Option<String>,
    },
}

fn d_event_queue_size() -> usize {
    crate::events::DEFAULT_QUEUE_SIZE
}
fn d_true() -> bool {
    true
}
fn d_concurrency() -> usize {
    4
}
fn d_buffer_chunks() -> usize {
    16
}
fn d_chunk_bytes() -> usize {
    64 * 1024
}
fn d_max_line_bytes() -> usize {
    64 * 1024 * 1024
}
fn d_connect_timeout_ms() -> u64 {
    10_000
}
fn d_request_timeout_ms() -> u64 {
    60_000
}
fn d_read_timeout_ms() -> u64 {
    120_000
}
fn d_poll_min_ms() -> u64 {
    1_000
}
fn d_poll_max_ms() -> u64 {
    600_000
}
fn d_poll_backoff_max_ms() -> u64 {
    30_000
}
fn d_retry_max_attempts() -> u32 {
    6
}
fn d_retry_max_wait_ms() -> u64 {
    600_000
}
fn d_retry_backoff_min_ms() -> u64 {
    500
}
fn d_retry_backoff_max_ms() -> u64 {
    30_000
}
fn d_min_bytes_per_s() -> u64 {
    1024
}
fn d_stall_window_ms() -> u64 {
    60_000
}
fn d_attachment_types() -> Vec<String> {
    vec!["DocumentReference".into(), "DiagnosticReport".into()]
}
fn d_attachment_max_bytes() -> u64 {
    16 << 20
}
fn d_attachment_dir() -> String {
    "attachments/".into()
}

/// Everything an export needs. Build it from JSON with [`Config::from_json`] or in Rust with
/// [`Config::new`] and field updates, then call [`Config::validate`] (done by `Export::start`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The FHIR base URL (service root), e.g. `https://ehr.example.org/r4/tenant`.
    pub base_url: String,
    /// `system`, `patient` or `group`.
    #[serde(default)]
    pub level: Level,
    /// The Group id, required when `level` is `group`.
    #[serde(default)]
    pub group_id: Option<String>,

    /// `_outputFormat` (e.g. `application/fhir+ndjson`).
    #[serde(default)]
    pub output_format: Option<String>,
    /// `_since`: FHIR instant.
    #[serde(default)]
    pub since: Option<String>,
    /// `_until` (v3): FHIR instant.
    #[serde(default)]
    pub until: Option<String>,
    /// `_type`: resource types, sent comma-joined.
    #[serde(default)]
    pub types: Vec<String>,
    /// `_elements`.
    #[serde(default)]
    pub elements: Vec<String>,
    /// `_typeFilter`: FHIR search queries such as `Observation?status=final`.
    #[serde(default)]
    pub type_filters: Vec<String>,
    /// `includeAssociatedData` values.
    #[serde(default)]
    pub include_associated_data: Vec<String>,
    /// `organizeOutputBy` (v3), e.g. `Patient`.
    #[serde(default)]
    pub organize_output_by: Option<String>,
    /// `allowPartialManifests` (v3).
    #[serde(default)]
    pub allow_partial_manifests: bool,
    /// `patient`: Patient references (`Patient/123` or `123`); forces POST.
    #[serde(default)]
    pub patients: Vec<String>,
    /// `auto` (GET unless `patients`), `get` or `post`.
    #[serde(default)]
    pub method: Method,
    /// Send `Prefer: handling=lenient`.
    #[serde(default)]
    pub lenient: bool,
    /// Ask for v3 `separate-export-status` (job status in `X-Export-Status`).
    #[serde(default)]
    pub separate_export_status: bool,
    /// Kick-off parameters the engine does not know (vendor parameters), sent as given: in
    /// the query of a GET kick-off, as `valueString` parameters of a POST one. A name maps to
    /// a value or a list of values (the parameter repeated).
    #[serde(default)]
    pub params: BTreeMap<String, ParamValues>,
    /// Extra headers sent on every request to the FHIR server.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Authorization.
    #[serde(default)]
    pub auth: Auth,
    /// Origins (`https://files.example.org`) besides the FHIR server's that may receive the
    /// access token for file downloads.
    #[serde(default)]
    pub token_origins: Vec<String>,
    /// Allow plain `http://` to hosts other than loopback (and redirects from https to http).
    /// Off by default: the Bulk Data IG requires TLS, and the token and patient data would
    /// travel in clear.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Extra CA certificates (PEM file) trusted besides the system store.
    #[serde(default)]
    pub ca_bundle: Option<String>,
    /// Client certificate chain and private key (PEM file) for mutual TLS.
    #[serde(default)]
    pub client_cert: Option<String>,

    /// Files downloaded at once.
    #[serde(default = "d_concurrency")]
    pub concurrency: usize,
    /// Chunks of records buffered between the downloaders and the consumer.
    #[serde(default = "d_buffer_chunks")]
    pub buffer_chunks: usize,
    /// Target size of one chunk of lines handed to the consumer.
    #[serde(default = "d_chunk_bytes")]
    pub chunk_bytes: usize,
    /// A longer line is invalid (`on_invalid_line`); under `skip`, a line 16 times longer still
    /// fails the export (a server sending bytes forever).
    #[serde(default = "d_max_line_bytes")]
    pub max_line_bytes: usize,
    /// TCP/TLS connect timeout.
    #[serde(default = "d_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Timeout of kick-off, status and DELETE requests.
    #[serde(default = "d_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// A file download that receives nothing for this long is stalled: it is resumed (retry
    /// budget). Also the bound of each wait for a file response.
    #[serde(default = "d_read_timeout_ms")]
    pub read_timeout_ms: u64,
    /// A file download that receives less than this many bytes per second, over
    /// `stall_window_ms` of waiting for data, is stalled and resumed like a broken transfer (a
    /// server that trickles cannot hold an export). 0 turns the check off.
    #[serde(default = "d_min_bytes_per_s")]
    pub min_bytes_per_s: u64,
    /// The window of `min_bytes_per_s`.
    #[serde(default = "d_stall_window_ms")]
    pub stall_window_ms: u64,
    /// Shortest wait between status polls (also the first backoff step).
    #[serde(default = "d_poll_min_ms")]
    pub poll_min_ms: u64,
    /// Longest wait between polls; a larger `Retry-After` is clamped to this.
    #[serde(default = "d_poll_max_ms")]
    pub poll_max_ms: u64,
    /// Cap of the exponential backoff used when the server sends no `Retry-After`.
    #[serde(default = "d_poll_backoff_max_ms")]
    pub poll_backoff_max_ms: u64,
    /// Attempts per request (the first included) when it meets a retryable failure: 429, 503,
    /// other 5xx (unless its OperationOutcome names a non-transient issue), an OperationOutcome
    /// from the transient branch, a connection error, a timeout, a broken transfer.
    #[serde(default = "d_retry_max_attempts")]
    pub retry_max_attempts: u32,
    /// Total time one request may spend waiting between its attempts.
    #[serde(default = "d_retry_max_wait_ms")]
    pub retry_max_wait_ms: u64,
    /// First backoff step when the server sends no `Retry-After` (doubles, with jitter).
    #[serde(default = "d_retry_backoff_min_ms")]
    pub retry_backoff_min_ms: u64,
    /// Cap of the backoff between attempts.
    #[serde(default = "d_retry_backoff_max_ms")]
    pub retry_backoff_max_ms: u64,
    /// What to do with an NDJSON line that is not a JSON object (or too long, or a truncated last
    /// line): `fail` the export, or `skip` it and deliver an error record (an OperationOutcome
    /// naming the file and line) in its place.
    #[serde(default)]
    pub on_invalid_line: InvalidLinePolicy,
    /// Parse every line fully (in the download threads) instead of the cheap shape check.
    #[serde(default)]
    pub validate_json: bool,
    /// A checkpoint (from `export_checkpoint`) to continue from: no new kick-off, and records
    /// delivered before the checkpoint are not delivered again.
    #[serde(default)]
    pub resume: Option<serde_json::Value>,
    /// The file list of the export `resume` continues (a version 2 checkpoint counts its files
    /// rather than listing them): the JSON array of `export_files_json`, or a string holding
    /// such an array or NDJSON lines of its objects (`export_files_json_from`). Without it,
    /// the manifest is fetched again from the status URL and must list the same files.
    #[serde(default)]
    pub resume_files: Option<serde_json::Value>,
    /// With `resume`: read only these files of the checkpoint's export (their indexes, as in
    /// `export_files_json`); the others count as complete. For a reader that shares out an
    /// export's files between processes (a Spark task per file): each resumes the same
    /// checkpoint, taken once the whole manifest arrived, with its own files.
    #[serde(default)]
    pub only_files: Option<Vec<u32>>,
    /// Take the manifest and download nothing: the export ends (done, no records) once the
    /// whole manifest arrived, and its checkpoint and file list are what `only_files` readers
    /// resume (a Spark driver plans its partitions from them).
    #[serde(default)]
    pub manifest_only: bool,
    /// Before the kick-off, read the server's CapabilityStatement (`GET metadata`) for the
    /// `capability` event (its software name and version, its FHIR version). Never fatal.
    #[serde(default)]
    pub read_capability_statement: bool,
    /// Events kept for the caller to pull (`export_next_event`); when the caller does not read
    /// them, the oldest are dropped (counted). 0 turns events off.
    #[serde(default = "d_event_queue_size")]
    pub event_queue_size: usize,
    /// DELETE the server's job when the export is cancelled (or freed unfinished).
    #[serde(default = "d_true")]
    pub delete_on_cancel: bool,
    /// DELETE the server's job after a completed export, so it can free the files.
    #[serde(default)]
    pub delete_on_complete: bool,
    /// Resolve attachments: `none` (default), `inline` or `save` (see [`AttachmentMode`]).
    /// Documents are fetched in the download threads, with the export's retry policy and
    /// origin rules (the token goes only to the FHIR server and `token_origins`).
    #[serde(default)]
    pub attachments: AttachmentMode,
    /// The resource types whose attachments are resolved (default `DocumentReference`,
    /// `DiagnosticReport`); also `Media`, `Communication`, `CommunicationRequest`,
    /// `Patient`, `Practitioner`, `RelatedPerson`, `Person`.
    #[serde(default = "d_attachment_types")]
    pub attachment_types: Vec<String>,
    /// Only attachments of these content types (`application/pdf`, `text/*`) are fetched;
    /// empty (default): all.
    #[serde(default)]
    pub attachment_content_types: Vec<String>,
    /// A document larger than this is not fetched: the record keeps its URL and an error
    /// record says why (memory stays bounded whatever the documents' sizes).
    #[serde(default = "d_attachment_max_bytes")]
    pub attachment_max_bytes: u64,
    /// `save`: the relative directory written into rewritten URLs (default `attachments/`).
    #[serde(default = "d_attachment_dir")]
    pub attachment_dir: String,
}

/// Why plain HTTP is refused (the end of the errors that refuse it).
pub(crate) const INSECURE_WHY: &str = "the Bulk Data IG requires TLS, and the access token and \
     patient data would travel in clear; use https://, or set allow_insecure_http: true \
     (CLI --allow-insecure-http) if this network is trusted";

/// Plain `http://` to a host that is not loopback (127.0.0.0/8, ::1, `localhost`).
pub(crate) fn plain_http_off_loopback(u: &url::Url) -> bool {
    if u.scheme() != "http" {
        return false;
    }
    match u.host() {
        Some(url::Host::Ipv4(ip)) => !ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => !ip.is_loopback(),
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d != "localhost" && !d.ends_with(".localhost")
        }
        None => true,
    }
}

impl Config {
    /// A config with defaults for everything but the base URL.
    pub fn new(base_url: impl Into<String>) -> Config {
        let mut c: Config = serde_json::from_value(serde_json::json!({ "base_url": "x" }))
            .expect("defaults deserialize");
        c.base_url = base_url.into();
        c
    }

    /// Parse and validate a JSON config document.
    pub fn from_json(json: &str) -> Result<Config> {
        // A config file saved by a Windows editor may start with a byte order mark.
        let json = json.strip_prefix('\u{feff}').unwrap_or(json);
        let mut de = serde_json::Deserializer::from_str(json);
        let c: Config = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            // The path names the key ("level", "auth.type", "types[0]"); serde's text says
            // what was wrong ("unknown variant `planet`, expected one of ...").
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path.is_empty() || path == "." {
                Error::config(format!("invalid config: {inner}"))
            } else {
                Error::config(format!("invalid config: {path}: {inner}"))
            }
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Check values that JSON types alone cannot.
    pub fn validate(&self) -> Result<()> {
        let base = url::Url::parse(&self.base_url).map_err(|e| {
            Error::config(format!(
                "invalid config: base_url {:?} is not a URL: {e}",
                self.base_url
            ))
        })?;
        if base.scheme() != "http" && base.scheme() != "https" {
            return Err(Error::config(format!(
                "invalid config: base_url must be http or https, got scheme {:?}",
                base.scheme()
            )));
        }
        if base.query().is_some() {
            return Err(Error::config(
                "invalid config: base_url must not have a query string",
            ));
        }
        match (self.level, &self.group_id) {
            (Level::Group, None) => {
                return Err(Error::config(
                    "invalid config: level \"group\" needs group_id",
                ))
            }
            (Level::Group, Some(g)) if g.is_empty() || g.contains(['/', '?', '#']) => {
                return Err(Error::config(format!(
                    "invalid config: group_id {g:?} is not a valid id"
                )))
            }
            (Level::System | Level::Patient, Some(_)) => {
                return Err(Error::config(
                    "invalid config: group_id is only allowed with level \"group\"",
                ))
            }
            _ => {}
        }
        if !self.patients.is_empty() {
            if self.level == Level::System {
                return Err(Error::config(
                    "invalid config: patients needs level \"patient\" or \"group\"",
                ));
            }
            if self.method == Method::Get {
                return Err(Error::config(
                    "invalid config: patients is sent in a POST body; method \"get\" cannot carry it",
                ));
            }
        }
        for (key, list) in [
            ("types", &self.types),
            ("elements", &self.elements),
            ("type_filters", &self.type_filters),
            ("include_associated_data", &self.include_associated_data),
            ("patients", &self.patients),
        ] {
            if let Some(bad) = list.iter().find(|v| v.trim().is_empty()) {
                return Err(Error::config(format!(
                    "invalid config: {key} has an empty value {bad:?}"
                )));
            }
        }
        if let Some(t) = self.types.iter().find(|t| !is_resource_type_name(t)) {
            return Err(Error::config(format!(
                "invalid config: types has {t:?}, which is not a FHIR resource type name"
            )));
        }
        for f in &self.type_filters {
            let ty = f.split('?').next().unwrap_or("");
            if !f.contains('?') || !is_resource_type_name(ty) {
                return Err(Error::config(format!(
                    "invalid config: type_filters entry {f:?} must look like \"Type?param=value\""
                )));
            }
        }
        for (key, v) in [("since", &self.since), ("until", &self.until)] {
            if let Some(v) = v {
                if !is_date_or_instant(v) {
                    return Err(Error::config(format!(
                        "invalid config: {key} {v:?} is not a FHIR instant such as 2024-01-31T00:00:00Z"
                    )));
                }
            }
        }
        for (key, v, lo, hi) in [
            ("concurrency", self.concurrency, 1, 64),
            ("buffer_chunks", self.buffer_chunks, 1, 4096),
            ("chunk_bytes", self.chunk_bytes, 1024, 64 << 20),
            ("max_line_bytes", self.max_line_bytes, 1024, 1 << 31),
            ("event_queue_size", self.event_queue_size, 0, 1 << 20),
        ] {
            if v < lo || v > hi {
                return Err(Error::config(format!(
                    "invalid config: {key} must be between {lo} and {hi}, got {v}"
                )));
            }
        }
        for (key, v) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("read_timeout_ms", self.read_timeout_ms),
            ("poll_max_ms", self.poll_max_ms),
            ("poll_backoff_max_ms", self.poll_backoff_max_ms),
            ("stall_window_ms", self.stall_window_ms),
        ] {
            if v == 0 {
                return Err(Error::config(format!(
                    "invalid config: {key} must be above 0"
                )));
            }
        }
        if self.retry_max_attempts == 0 {
            return Err(Error::config(
                "invalid config: retry_max_attempts must be at least 1",
            ));
        }
        if self.retry_backoff_min_ms > self.retry_backoff_max_ms {
            return Err(Error::config(format!(
                "invalid config: retry_backoff_min_ms ({}) is above retry_backoff_max_ms ({})",
                self.retry_backoff_min_ms, self.retry_backoff_max_ms
            )));
        }
        if let Some(r) = &self.resume {
            crate::checkpoint::Checkpoint::from_value(r)?;
        }
        match &self.resume_files {
            None | Some(serde_json::Value::Array(_) | serde_json::Value::String(_)) => {}
            Some(_) => {
                return Err(Error::config(
                    "invalid config: resume_files is neither an array nor a string",
                ))
            }
        }
        if self.resume_files.is_some() && self.resume.is_none() {
            return Err(Error::config(
                "invalid config: resume_files is given without resume",
            ));
        }
        if let Some(only) = &self.only_files {
            let Some(r) = &self.resume else {
                return Err(Error::config(
                    "invalid config: only_files is given without resume (the checkpoint of the export whose files it names)",
                ));
            };
            let cp = crate::checkpoint::Checkpoint::from_value(r)?;
            if cp.status_url.is_none() || !cp.manifest_complete || cp.next_page.is_some() {
                return Err(Error::config(
                    "invalid config: only_files needs a checkpoint taken after the whole manifest arrived (manifest_complete true, no next_page); this one was taken before",
                ));
            }
            let known = cp.files_known();
            if let Some(i) = only.iter().find(|&&i| i >= known) {
                let indexes = match known {
                    0 => "none".to_owned(),
                    n => format!("indexes 0 to {}", n - 1),
                };
                return Err(Error::config(format!(
                    "invalid config: only_files names file {i}, but the checkpoint counts {known} files ({indexes})"
                )));
            }
        }
        validate_attachments(self)?;
        if self.poll_min_ms > self.poll_max_ms {
            return Err(Error::config(format!(
                "invalid config: poll_min_ms ({}) is above poll_max_ms ({})",
                self.poll_min_ms, self.poll_max_ms
            )));
        }
        for (name, values) in &self.params {
            if let Some((_, key)) = ENGINE_PARAMS.iter().find(|(p, _)| p == name) {
                return Err(Error::config(format!(
                    "invalid config: params names {name}, which the engine sends from its own key {key}"
                )));
            }
            if name.is_empty() || name.chars().any(|c| c.is_control() || "&=#?".contains(c)) {
                return Err(Error::config(format!(
                    "invalid config: params has a parameter name that is empty or holds &, =, #, ? or a control character: {name:?}"
                )));
            }
            if values.values().is_empty() {
                return Err(Error::config(format!(
                    "invalid config: params.{name} is an empty list"
                )));
            }
        }
        for (name, value) in &self.headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                || reqwest::header::HeaderValue::from_str(value).is_err()
            {
                return Err(Error::config(format!(
                    "invalid config: headers has an invalid header {name:?}"
                )));
            }
            if name.eq_ignore_ascii_case("authorization") {
                return Err(Error::config(
                    "invalid config: put credentials in \"auth\", not in headers.Authorization",
                ));
            }
        }
        match &self.auth {
            Auth::None | Auth::Bearer { .. } => {}
            Auth::ClientCredentials {
                client_id,
                private_key,
                client_secret,
                alg,
                token_url,
                ..
            } => {
                if client_id.trim().is_empty() {
                    return Err(Error::config("invalid config: auth.client_id is empty"));
                }
                if private_key.is_some() == client_secret.is_some() {
                    return Err(Error::config(
                        "invalid config: auth type \"client_credentials\" needs exactly one of private_key (private_key_jwt) or client_secret (client_secret_basic)",
                    ));
                }
                if let Some(a) = alg {
                    if a != "RS384" && a != "ES384" {
                        return Err(Error::config(format!(
                            "invalid config: auth.alg {a:?} is not supported; SMART uses RS384 or ES384"
                        )));
                    }
                }
                if let Some(u) = token_url {
                    if !url::Url::parse(u).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
                        return Err(Error::config(format!(
                            "invalid config: auth.token_url {u:?} is not an http(s) URL"
                        )));
                    }
                }
            }
        }
        for o in &self.token_origins {
            if !url::Url::parse(o).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
                return Err(Error::config(format!(
                    "invalid config: token_origins entry {o:?} is not an http(s) origin"
                )));
            }
        }
        for (key, path) in [
            ("ca_bundle", &self.ca_bundle),
            ("client_cert", &self.client_cert),
        ] {
            if let Some(p) = path {
                if !std::path::Path::new(p).is_file() {
                    return Err(Error::config(format!(
                        "invalid config: {key}: {p:?} is not a readable file"
                    )));
                }
            }
        }
        // Last, so that a config with other mistakes names them first.
        if !self.allow_insecure_http && plain_http_off_loopback(&base) {
            return Err(Error::config(format!(
                "invalid config: base_url is plain http:// to {}, which is not loopback: {INSECURE_WHY}",
                base.host_str().unwrap_or_default()
            )));
        }
        Ok(())
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

fn is_resource_type_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_uppercase())
        && chars.all(|c| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_json(r#"{"base_url":"http://x/fhir","concurency":2}"#).unwrap_err();
        assert!(e.message.contains("concurency"), "{}", e.message);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (json, needle) in [
            (
                r#"{"base_url":"http://x/f","level":"planet"}"#,
                "level: unknown variant `planet`",
            ),
            (
                r#"{"base_url":"http://x/f","concurrency":"4"}"#,
                "concurrency: invalid type",
            ),
            (
                r#"{"base_url":"http://x/f","types":"Patient"}"#,
                "types: invalid type",
            ),
            (
                r#"{"base_url":"http://x/f","poll_min_ms":-5}"#,
                "poll_min_ms",
            ),
            (
                r#"{"base_url":"http://x/f","auth":{"type":"magic"}}"#,
                "auth",
            ),
        ] {
            let e = Config::from_json(json).unwrap_err();
            assert!(e.message.contains(needle), "{json}: {}", e.message);
        }
    }

    #[test]
    fn group_needs_id() {
        let e = Config::from_json(r#"{"base_url":"http://x/fhir","level":"group"}"#).unwrap_err();
        assert!(e.message.contains("group_id"));
    }
}
