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
    }
}
