//! Behaviour switches selected by the `/x/<scenario>/` path prefix.

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryAfter {
    Secs(u64),
    Omit,
    /// An HTTP-date two seconds ahead.
    Date,
    /// The current Unix time in seconds plus 2, as a plain integer (a confused server).
    Epoch,
}

impl RetryAfter {
    /// The `Retry-After` header value (None: no header).
    pub fn value(&self) -> Option<String> {
        let ahead = || std::time::SystemTime::now() + std::time::Duration::from_secs(2);
        match self {
            RetryAfter::Secs(s) => Some(s.to_string()),
            RetryAfter::Omit => None,
            RetryAfter::Date => Some(httpdate::fmt_http_date(ahead())),
            RetryAfter::Epoch => Some(
                ahead()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
                    .to_string(),
            ),
        }
    }

    fn parse(k: &str, v: Option<&str>) -> Result<RetryAfter, String> {
        Ok(match v {
            Some("none") => RetryAfter::Omit,
            Some("date") => RetryAfter::Date,
            Some("epoch") => RetryAfter::Epoch,
            _ => RetryAfter::Secs(v.and_then(|v| v.parse().ok()).ok_or_else(|| {
                format!("scenario key '{k}' needs seconds, 'date', 'epoch' or 'none'")
            })?),
        })
    }
}

/// How `truncate_last` cuts the extra last line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Truncate {
    /// [`super::faults::TRUNCATED_LINE`]: cut inside a string.
    Plain,
    /// [`super::faults::TRUNCATED_INNER_LINE`]: cut just after an inner `}`.
    Inner,
}

/// Responses `endless_body` makes endless.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndlessBody {
    pub token: bool,
    pub smart_config: bool,
    pub metadata: bool,
    pub status: bool,
    pub manifest: bool,
    pub error: bool,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub polls: u64,
    pub retry_after: RetryAfter,
    /// None: "Processing: NN%"; Some("") omits the header.
    pub progress: Option<String>,
    pub kickoff: Option<u16>,
    pub poll: Option<u16>,
    pub transient: u64,
    pub throttle: u64,
    pub gzip: bool,
    pub length: bool,
    /// Never send Content-Length on files (chunked transfer encoding), even when pre-rendered.
    pub chunked: bool,
    pub errors: bool,
    pub deleted: u64,
    pub partial: bool,
    pub page: Option<usize>,
    pub slow_ms: u64,
    pub status_ct: Option<String>,
    pub bad_manifest: bool,
    pub file_ct: Option<String>,
    /// `expires_in` of tokens issued via this scenario's token endpoint.
    pub token_ttl: Option<u64>,
    /// Tokens issued via this scenario stop working this many seconds after issue.
    pub revoke_after: Option<u64>,
    /// `.well-known/smart-configuration` answers 404.
    pub no_smart_config: bool,
    /// The token endpoint answers this OAuth error code.
    pub token_error: Option<String>,
    /// Manifest file URLs point at the object store.
    pub files_elsewhere: bool,
    /// File requests answer 307 to a signed object-store URL.
    pub redirect_files: bool,
    /// File requests answer 307 to plain `http://files.invalid/...` (off loopback, never
    /// resolvable): the engine must refuse to follow.
    pub redirect_insecure: bool,
    /// Files need no token (`requiresAccessToken: false`) and reject any Authorization.
    pub capability_urls: bool,
    /// The signature every pre-signed URL of this scenario carries (`?sig=` of the
    /// `redirect_files` / `redirect_insecure` redirects, `sig=` of `resign` manifests) instead
    /// of a random one: a sentinel tests search the client's outputs for.
    pub sig: Option<String>,
    /// Fault injection (README, "Fault injection"); "first request" is per file path.
    pub faults: Faults,
}

/// Faults a scenario injects into an export.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// The first request of each file: send this many bytes of the body (at most all but the
    /// last byte), then close the connection.
    pub drop: Option<u64>,
    /// No `Accept-Ranges`, and `Range` headers are ignored (always 200 with the whole file).
    pub no_ranges: bool,
    /// The first N requests of each file answer this status (429 with `Retry-After: 0`).
    pub file_error: Option<(u16, u64)>,
    /// The first N requests of every endpoint (kick-off, status, each file) answer 429 with
    /// `Retry-After: 0`.
    pub storm: u64,
    /// The first request of each file stops sending halfway for this many milliseconds.
    pub stall_ms: u64,
    /// Gzip bodies cut in half (a clean end of the HTTP body, a truncated deflate stream):
    /// `Some(false)` on the first request of each file, `Some(true)` on every request.
    pub corrupt_gzip: Option<bool>,
    /// After line N of each output file, an extra line that is not JSON.
    pub bad_line: Option<u64>,
    /// (BYTES, N): after each of records 1..N of each output file, an extra JSON line of
    /// BYTES bytes.
    pub long_line: Option<(u64, u64)>,
    /// Each output file ends with an extra line cut off before its end (no newline).
    pub truncate_last: Option<Truncate>,
    /// The manifest's output URLs use the `ftp` scheme.
    pub foreign_scheme: bool,
    /// File URLs carry a generation; each URL answers 410 Gone after this many requests, and a
    /// new manifest fetch hands out new URLs.
    pub expire_files: Option<u64>,
    /// After this many file requests the job is deleted (status and files answer 404).
    pub gone_after: Option<u64>,
    /// The complete manifest has no `output` member.
    pub no_output: bool,
    /// Output files are one line that never ends (bytes forever, no newline).
    pub endless: bool,
    /// Gzip bodies are this many concatenated gzip members (None: one).
    pub gzip_members: Option<u64>,
    /// Files are sent with this `Content-Encoding` whatever the request asked.
    pub encoding: Option<String>,
    /// Files are a stored gzip object: gzip always, `Content-Length`, ranges on the
    /// compressed bytes.
    pub stored_gzip: bool,
    /// A 206 answer carries at most this many bytes.
    pub short_ranges: Option<u64>,
    /// Every `Range` request is answered 206 with the whole file.
    pub bad_range: bool,
    /// Files carry a strong `ETag` (and `If-Range` is honoured).
    pub etag: bool,
    /// Files carry `Last-Modified` (and `If-Range` is honoured).
    pub last_modified: bool,
    /// After the first request of each file, the file is served re-serialized (other bytes).
    pub change_file: bool,
    /// File bodies end when the server closes the connection (no length, not chunked).
    pub close_delimited: bool,
    /// The first request of each file announces and sends only this many bytes.
    pub short_length: Option<u64>,
    /// Every manifest gives each file URL a fresh `sig=` parameter.
    pub resign: bool,
    /// Complete manifests after the first list their entries in another order.
    pub reorder: bool,
    /// Every manifest lists its first output entry twice.
    pub dup_entry: bool,
    /// Complete manifests after the first start with an output entry for a missing file.
    pub refresh_extra: bool,
    /// Complete manifests after the first omit the first output entry.
    pub refresh_drop: bool,
    /// The last page of the complete manifest links back to page 1.
    pub page_loop: bool,
    /// Pages 2.. of partial manifests answer 404 (only page 1, the 202 body, is there).
    pub partial_page_error: bool,
    /// After record N of each output file, a line that is not UTF-8.
    pub bad_utf8: Option<u64>,
    /// Every output record starts with a `contained` member.
    pub contained_first: bool,
    /// The first request of each file sends half, then one byte every this many ms.
    pub trickle_ms: Option<u64>,
    /// Responses whose body never ends.
    pub endless_body: EndlessBody,
    /// `Retry-After` of every 429 and 503 (None: each keeps its own).
    pub error_retry_after: Option<RetryAfter>,
    /// (CODE, N): token requests after the first success answer CODE N times.
    pub token_blip: Option<(u16, u64)>,
    /// The first N requests of smart-configuration and of metadata answer 503.
    pub discovery_blip: u64,
    /// `token_error` answers come with status 200.
    pub token_error_200: bool,
    /// File responses are chunked and the framing breaks halfway.
    pub bad_chunked: bool,
    /// A UTF-8 byte order mark starts output files, manifests, token and smart-config JSON.
    pub bom: bool,
    /// Diagnostics and OAuth error descriptions start with terminal escape sequences.
    pub ansi: bool,
    /// Manifests carry this `transactionTime` verbatim.
    pub transaction_time: Option<String>,
    /// Every output entry's `count` is this JSON value.
    pub bad_count: Option<serde_json::Value>,
}

/// The terminal escapes `ansi` puts in front of diagnostics: red, then a window title.
pub const ANSI_PREFIX: &str = "\u{1b}[31m\u{1b}]0;sandbox\u{7}";

impl Faults {
    /// Whether file responses carry validators (and `If-Range` is honoured).
    pub fn validators(&self) -> bool {
        self.etag || self.last_modified
    }

    /// `msg`, with the `ansi` escapes in front when that fault is on.
    pub fn diag(&self, msg: &str) -> String {
        if self.ansi {
            format!("{ANSI_PREFIX}{msg}")
        } else {
            msg.to_string()
        }
    }
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            polls: 1,
            retry_after: RetryAfter::Secs(1),
            progress: None,
            kickoff: None,
            poll: None,
            transient: 0,
            throttle: 0,
            gzip: false,
            length: false,
            chunked: false,
            errors: false,
            deleted: 0,
            partial: false,
            page: None,
            slow_ms: 0,
            status_ct: None,
            bad_manifest: false,
            file_ct: None,
            token_ttl: None,
            revoke_after: None,
            no_smart_config: false,
            token_error: None,
            files_elsewhere: false,
            redirect_files: false,
            redirect_insecure: false,
            capability_urls: false,
            sig: None,
            faults: Faults::default(),
        }
    }
}

fn num(k: &str, v: Option<&str>) -> Result<u64, String> {
    v.and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("scenario key '{k}' needs a non-negative integer value"))
}

fn code(k: &str, v: Option<&str>) -> Result<u16, String> {
    v.and_then(|v| v.parse::<u16>().ok())
        .filter(|c| (400..=599).contains(c))
        .ok_or_else(|| format!("scenario key '{k}' needs an HTTP status code 400-599"))
}

fn flag(k: &str, v: Option<&str>) -> Result<bool, String> {
    match v {
        None | Some("1") | Some("true") => Ok(true),
        Some("0") | Some("false") => Ok(false),
        Some(_) => Err(format!("scenario key '{k}' is a flag")),
    }
}

fn text(k: &str, v: Option<&str>) -> Result<String, String> {
    v.filter(|v| !v.is_empty())
        .map(str::to_string)
        .ok_or_else(|| format!("scenario key '{k}' needs a value"))
}

impl Scenario {
    /// Parses `key;key=value;...` (already percent-decoded).
    pub fn parse(raw: &str) -> Result<Scenario, String> {
        let mut s = Scenario::default();
        for item in raw.split(';').map(str::trim).filter(|i| !i.is_empty()) {
            let (k, v) = match item.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (item, None),
            };
            match k {
                "polls" => s.polls = num(k, v)?,
                "retry_after" => s.retry_after = RetryAfter::parse(k, v)?,
                "progress" => {
                    let t = text(k, v)?;
                    s.progress = Some(if t == "none" { String::new() } else { t });
                }
                "kickoff" => s.kickoff = Some(code(k, v)?),
                "poll" => s.poll = Some(code(k, v)?),
                "transient" => s.transient = num(k, v)?,
                "throttle" => s.throttle = num(k, v)?,
                "gzip" => s.gzip = flag(k, v)?,
                "length" => s.length = flag(k, v)?,
                "chunked" => s.chunked = flag(k, v)?,
                "errors" => s.errors = flag(k, v)?,
                "deleted" => s.deleted = num(k, v)?,
                "partial" => s.partial = flag(k, v)?,
                "page" => {
                    let n = num(k, v)?;
                    if n == 0 {
                        return Err("scenario key 'page' must be at least 1".into());
                    }
                    s.page = Some(usize::try_from(n).unwrap_or(usize::MAX));
                }
                "slow" => s.slow_ms = num(k, v)?,
                "status_ct" => s.status_ct = Some(text(k, v)?),
                "bad_manifest" => s.bad_manifest = flag(k, v)?,
                "file_ct" => s.file_ct = Some(text(k, v)?),
                "token_ttl" => s.token_ttl = Some(num(k, v)?),
                "revoke_after" => s.revoke_after = Some(num(k, v)?),
                "no_smart_config" => s.no_smart_config = flag(k, v)?,
                "token_error" => {
                    let c = text(k, v)?;
                    if !c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                        return Err("scenario key 'token_error' needs an OAuth error code".into());
                    }
                    s.token_error = Some(c);
                }
                "files_elsewhere" => s.files_elsewhere = flag(k, v)?,
                "redirect_files" => s.redirect_files = flag(k, v)?,
                "redirect_insecure" => s.redirect_insecure = flag(k, v)?,
                "capability_urls" => s.capability_urls = flag(k, v)?,
                "sig" => {
                    let t = text(k, v)?;
                    // It goes into query strings verbatim: unreserved characters only.
                    if !t
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
                    {
                        return Err(
                            "scenario key 'sig' needs letters, digits, '-', '.', '_' or '~'".into(),
                        );
                    }
                    s.sig = Some(t);
                }
                "drop" => s.faults.drop = Some(num(k, v)?),
                "no_ranges" => s.faults.no_ranges = flag(k, v)?,
                "file_error" => {
                    let (c, n) = match v.and_then(|v| v.split_once(':')) {
                        Some((c, n)) => (code(k, Some(c))?, num(k, Some(n))?),
                        None => (code(k, v)?, 1),
                    };
                    s.faults.file_error = Some((c, n));
                }
                "storm" => s.faults.storm = num(k, v)?,
                "stall" => s.faults.stall_ms = num(k, v)?,
                "corrupt_gzip" => {
                    s.faults.corrupt_gzip = match v {
                        Some("all") => Some(true),
                        _ => flag(k, v)?.then_some(false),
                    };
                    s.gzip |= s.faults.corrupt_gzip.is_some();
                }
                "bad_line" => s.faults.bad_line = Some(num(k, v)?),
                "long_line" => {
                    let (b, n) = match v.and_then(|v| v.split_once(':')) {
                        Some((b, n)) => (num(k, Some(b))?, num(k, Some(n))?),
                        None => (num(k, v)?, 1),
                    };
                    if n == 0 {
                        return Err(
                            "scenario key 'long_line' needs BYTES[:N] with N at least 1".into()
                        );
                    }
                    s.faults.long_line = Some((b, n));
                }
                "truncate_last" => {
                    s.faults.truncate_last = match v {
                        Some("inner") => Some(Truncate::Inner),
                        _ => flag(k, v)?.then_some(Truncate::Plain),
                    }
                }
                "foreign_scheme" => s.faults.foreign_scheme = flag(k, v)?,
                "expire_files" => s.faults.expire_files = Some(num(k, v)?),
                "gone_after" => s.faults.gone_after = Some(num(k, v)?),
                "no_output" => s.faults.no_output = flag(k, v)?,
                "endless" => s.faults.endless = flag(k, v)?,
                "gzip_members" => {
                    let n = num(k, v)?;
                    if n == 0 {
                        return Err("scenario key 'gzip_members' must be at least 1".into());
                    }
                    s.faults.gzip_members = Some(n);
                    s.gzip = true;
                }
                "encoding" => {
                    let e = text(k, v)?;
                    if !e
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+.^_`|~-".contains(&b))
                    {
                        return Err("scenario key 'encoding' needs a content-coding name".into());
                    }
                    s.faults.encoding = Some(e.to_ascii_lowercase());
                }
                "stored_gzip" => {
                    s.faults.stored_gzip = flag(k, v)?;
                    s.gzip |= s.faults.stored_gzip;
                }
                "short_ranges" => {
                    let n = num(k, v)?;
                    if n == 0 {
                        return Err("scenario key 'short_ranges' must be at least 1".into());
                    }
                    s.faults.short_ranges = Some(n);
                }
                "bad_range" => s.faults.bad_range = flag(k, v)?,
                "etag" => s.faults.etag = flag(k, v)?,
                "last_modified" => s.faults.last_modified = flag(k, v)?,
                "change_file" => s.faults.change_file = flag(k, v)?,
                "close_delimited" => s.faults.close_delimited = flag(k, v)?,
                "short_length" => s.faults.short_length = Some(num(k, v)?),
                "resign" => s.faults.resign = flag(k, v)?,
                "reorder" => s.faults.reorder = flag(k, v)?,
                "dup_entry" => s.faults.dup_entry = flag(k, v)?,
                "refresh_extra" => s.faults.refresh_extra = flag(k, v)?,
                "refresh_drop" => s.faults.refresh_drop = flag(k, v)?,
                "page_loop" => s.faults.page_loop = flag(k, v)?,
                "partial_page_error" => s.faults.partial_page_error = flag(k, v)?,
                "bad_utf8" => s.faults.bad_utf8 = Some(num(k, v)?),
                "contained_first" => s.faults.contained_first = flag(k, v)?,
                "trickle" => s.faults.trickle_ms = Some(num(k, v)?),
                "endless_body" => {
                    let e = &mut s.faults.endless_body;
                    for w in text(k, v)?.split(',').map(str::trim) {
                        match w {
                            "token" => e.token = true,
                            "smart_config" => e.smart_config = true,
                            "metadata" => e.metadata = true,
                            "status" => e.status = true,
                            "manifest" => e.manifest = true,
                            "error" => e.error = true,
                            _ => return Err(format!("scenario key 'endless_body': unknown response '{w}' (token, smart_config, metadata, status, manifest, error)")),
                        }
                    }
                }
                "error_retry_after" => s.faults.error_retry_after = Some(RetryAfter::parse(k, v)?),
                "token_blip" => {
                    let (c, n) = match v.and_then(|v| v.split_once(':')) {
                        Some((c, n)) => (code(k, Some(c))?, num(k, Some(n))?),
                        None => (503, num(k, v)?),
                    };
                    s.faults.token_blip = Some((c, n));
                }
                "discovery_blip" => s.faults.discovery_blip = num(k, v)?,
                "token_error_200" => s.faults.token_error_200 = flag(k, v)?,
                "bad_chunked" => s.faults.bad_chunked = flag(k, v)?,
                "bom" => s.faults.bom = flag(k, v)?,
                "ansi" => s.faults.ansi = flag(k, v)?,
                "transaction_time" => s.faults.transaction_time = Some(text(k, v)?),
                "bad_count" => {
                    let t = text(k, v)?;
                    s.faults.bad_count =
                        Some(serde_json::from_str(&t).unwrap_or(serde_json::Value::String(t)));
                }
                _ => return Err(format!("unknown scenario key '{k}'")),
            }
        }
        if s.faults.change_file && !s.faults.last_modified {
            s.faults.etag = true;
        }
        if s.faults.page_loop && s.page.is_none() {
            return Err("scenario key 'page_loop' needs page=N".into());
        }
        if s.faults.token_error_200 && s.token_error.is_none() {
            return Err("scenario key 'token_error_200' needs token_error=CODE".into());
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_keys() {
        let s = Scenario::parse(
            "polls=0;gzip;retry_after=none;page=2;status_ct=text/plain;kickoff=429",
        )
        .expect("valid");
        assert_eq!(s.polls, 0);
        assert!(s.gzip);
        assert_eq!(s.retry_after, RetryAfter::Omit);
        assert_eq!(s.page, Some(2));
        assert_eq!(s.status_ct.as_deref(), Some("text/plain"));
        assert_eq!(s.kickoff, Some(429));
        assert!(Scenario::parse("bogus").is_err());
        assert!(Scenario::parse("polls=x").is_err());
        assert!(Scenario::parse("kickoff=200").is_err());
        assert!(Scenario::parse("").is_ok());
        let s = Scenario::parse("token_ttl=1;revoke_after=0;no_smart_config;token_error=invalid_grant;files_elsewhere;redirect_files;capability_urls")
            .expect("valid");
        assert_eq!((s.token_ttl, s.revoke_after), (Some(1), Some(0)));
        assert_eq!(s.token_error.as_deref(), Some("invalid_grant"));
        assert!(s.no_smart_config && s.files_elsewhere && s.redirect_files && s.capability_urls);
        assert!(Scenario::parse("token_error=Bad<x>").is_err());
        assert_eq!(
            Scenario::parse("sig=SENTINEL-sig_1.~;redirect_files")
                .expect("valid")
                .sig
                .as_deref(),
            Some("SENTINEL-sig_1.~")
        );
        assert_eq!(Scenario::parse("").expect("valid").sig, None);
        for bad in ["sig", "sig=", "sig=a&b", "sig=a b", "sig=a%20b", "sig=a#b"] {
            assert!(Scenario::parse(bad).is_err(), "{bad}");
        }
        let f = Scenario::parse("drop=100;no_ranges;file_error=503:2;storm=3;stall=500;corrupt_gzip=all;bad_line=4;long_line=9000;truncate_last;foreign_scheme;expire_files=1;gone_after=2;no_output;endless")
            .expect("valid")
            .faults;
        assert_eq!(
            (f.drop, f.file_error, f.storm, f.stall_ms),
            (Some(100), Some((503, 2)), 3, 500)
        );
        assert_eq!(
            (f.corrupt_gzip, f.bad_line, f.long_line),
            (Some(true), Some(4), Some((9000, 1)))
        );
        assert_eq!((f.expire_files, f.gone_after), (Some(1), Some(2)));
        assert_eq!(f.truncate_last, Some(Truncate::Plain));
        assert!(f.no_ranges && f.foreign_scheme && f.no_output && f.endless);
        assert_eq!(
            Scenario::parse("file_error=429")
                .expect("valid")
                .faults
                .file_error,
            Some((429, 1))
        );
        assert!(Scenario::parse("corrupt_gzip").expect("valid").gzip);
        assert!(Scenario::parse("file_error=200:1").is_err());
        assert!(Scenario::parse("drop=x").is_err());
    }

    #[test]
    fn parse_new_fault_keys() {
        let s = Scenario::parse(
            "gzip_members=3;encoding=X-Gzip;short_ranges=10;bad_range;last_modified;change_file;\
             close_delimited;short_length=7;truncate_last=inner;resign;reorder;dup_entry;\
             refresh_extra;refresh_drop;page=2;page_loop;bad_utf8=2;contained_first;trickle=5",
        )
        .expect("valid");
        let f = &s.faults;
        assert!(s.gzip, "gzip_members implies gzip");
        assert_eq!(f.gzip_members, Some(3));
        assert_eq!(f.encoding.as_deref(), Some("x-gzip"));
        assert_eq!((f.short_ranges, f.short_length), (Some(10), Some(7)));
        assert!(f.bad_range && f.last_modified && f.change_file && f.close_delimited);
        assert!(!f.etag, "change_file with last_modified does not add etag");
        assert_eq!(f.truncate_last, Some(Truncate::Inner));
        assert!(f.resign && f.reorder && f.dup_entry && f.refresh_extra && f.refresh_drop);
        assert!(f.page_loop && f.contained_first);
        assert_eq!((f.bad_utf8, f.trickle_ms), (Some(2), Some(5)));
        assert!(Scenario::parse("change_file").expect("valid").faults.etag);
        let s = Scenario::parse("stored_gzip").expect("valid");
        assert!(s.gzip && s.faults.stored_gzip);

        let s = Scenario::parse(
            "endless_body=token,manifest,error;error_retry_after=epoch;retry_after=epoch;\
             token_blip=429:2;discovery_blip=3;token_error=invalid_grant;token_error_200;\
             bad_chunked;bom;ansi;transaction_time=not a time;bad_count=-3;long_line=500:4;etag",
        )
        .expect("valid");
        let f = &s.faults;
        let e = f.endless_body;
        assert!(e.token && e.manifest && e.error);
        assert!(!e.status && !e.smart_config && !e.metadata);
        assert_eq!(f.error_retry_after, Some(RetryAfter::Epoch));
        assert_eq!(s.retry_after, RetryAfter::Epoch);
        assert_eq!((f.token_blip, f.discovery_blip), (Some((429, 2)), 3));
        assert!(f.token_error_200 && f.bad_chunked && f.bom && f.ansi && f.etag);
        assert_eq!(f.transaction_time.as_deref(), Some("not a time"));
        assert_eq!(f.bad_count, Some(serde_json::json!(-3)));
        assert_eq!(f.long_line, Some((500, 4)));
        assert_eq!(f.diag("x"), format!("{ANSI_PREFIX}x"));
        assert_eq!(
            Scenario::parse("token_blip=2")
                .expect("valid")
                .faults
                .token_blip,
            Some((503, 2))
        );
        let count = |v: &str| {
            Scenario::parse(&format!("bad_count={v}"))
                .expect("valid")
                .faults
                .bad_count
        };
        assert_eq!(count("1.5"), Some(serde_json::json!(1.5)));
        assert_eq!(count("\"12\""), Some(serde_json::json!("12")));
        assert_eq!(count("null"), Some(serde_json::Value::Null));
        assert_eq!(count("twelve"), Some(serde_json::json!("twelve")));
        assert_eq!(
            Scenario::parse("error_retry_after=none")
                .expect("valid")
                .faults
                .error_retry_after,
            Some(RetryAfter::Omit)
        );
        assert_eq!(
            Scenario::parse("error_retry_after=7")
                .expect("valid")
                .faults
                .error_retry_after,
            Some(RetryAfter::Secs(7))
        );
        let epoch = RetryAfter::Epoch.value().expect("value");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let at: u64 = epoch.parse().expect("integer");
        assert!(at > now && at <= now + 3, "{epoch}");
        assert!(httpdate::parse_http_date(&RetryAfter::Date.value().expect("date")).is_ok());
        assert_eq!(RetryAfter::Omit.value(), None);

        for bad in [
            "gzip_members=0",
            "short_ranges=0",
            "long_line=10:0",
            "long_line=x:1",
            "encoding=a b",
            "encoding=",
            "endless_body=files",
            "error_retry_after=soon",
            "retry_after=soon",
            "token_blip=200:1",
            "page_loop",
            "token_error_200",
            "transaction_time=",
            "trickle=x",
            "truncate_last=outer",
        ] {
            assert!(Scenario::parse(bad).is_err(), "{bad}");
        }
    }
}
