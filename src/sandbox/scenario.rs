//! Behaviour switches selected by the `/x/<scenario>/` path prefix.

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryAfter {
    Secs(u64),
    Omit,
    /// An HTTP-date two seconds ahead.
    Date,
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
    /// Files need no token (`requiresAccessToken: false`) and reject any Authorization.
    pub capability_urls: bool,
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
    /// After line 1 of each output file, an extra JSON line of this many bytes.
    pub long_line: Option<u64>,
    /// Each output file ends with an extra line cut off before its end (no newline).
    pub truncate_last: bool,
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
            capability_urls: false,
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
                "retry_after" => {
                    s.retry_after = match v {
                        Some("none") => RetryAfter::Omit,
                        Some("date") => RetryAfter::Date,
                        _ => RetryAfter::Secs(num(k, v)?),
                    }
                }
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
                "capability_urls" => s.capability_urls = flag(k, v)?,
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
                "long_line" => s.faults.long_line = Some(num(k, v)?),
                "truncate_last" => s.faults.truncate_last = flag(k, v)?,
                "foreign_scheme" => s.faults.foreign_scheme = flag(k, v)?,
                "expire_files" => s.faults.expire_files = Some(num(k, v)?),
                "gone_after" => s.faults.gone_after = Some(num(k, v)?),
                "no_output" => s.faults.no_output = flag(k, v)?,
                "endless" => s.faults.endless = flag(k, v)?,
                _ => return Err(format!("unknown scenario key '{k}'")),
            }
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
        let f = Scenario::parse("drop=100;no_ranges;file_error=503:2;storm=3;stall=500;corrupt_gzip=all;bad_line=4;long_line=9000;truncate_last;foreign_scheme;expire_files=1;gone_after=2;no_output;endless")
            .expect("valid")
            .faults;
        assert_eq!(
            (f.drop, f.file_error, f.storm, f.stall_ms),
            (Some(100), Some((503, 2)), 3, 500)
        );
        assert_eq!(
            (f.corrupt_gzip, f.bad_line, f.long_line),
            (Some(true), Some(4), Some(9000))
        );
        assert_eq!((f.expire_files, f.gone_after), (Some(1), Some(2)));
        assert!(f.no_ranges && f.truncate_last && f.foreign_scheme && f.no_output && f.endless);
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
}
