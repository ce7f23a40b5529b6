//! The one place a request goes out. [`Http`] holds the export's HTTP clients and its request
//! policy: which origins are trusted with the access token and the extra headers, attaching the
//! token (and getting a new one after a 401), following redirects by hand so that nothing
//! trusted follows one to another origin, and retrying under [`retry`]. Below it: building the
//! clients (`client`), reading responses within byte caps (`response`), `Content-Encoding`
//! (`decode`) and the retry policy and backoff (`retry`).

pub(crate) mod client;
pub(crate) mod decode;
pub(crate) mod response;
pub(crate) mod retry;

pub(crate) use client::FileClient;
pub(crate) use response::{
    content_type, read_capped, HttpResponse, DISCOVERY_BODY_LIMIT, ERROR_BODY_LIMIT,
    STATUS_BODY_LIMIT, TOKEN_BODY_LIMIT,
};

use crate::config::Config;
use crate::error::{from_reqwest, Error, ErrorCode, Result};
use crate::secret::Secret;
use client::Tls;
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, AUTHORIZATION};
use retry::{Policy, Waiter};
use std::sync::Arc;
use std::time::Duration;

/// Where the access token comes from (`auth::Authorizer` in an export).
pub(crate) trait Credentials: Send + Sync {
    /// Whether requests carry a token at all.
    fn enabled(&self) -> bool;
    /// The token to send now (getting or refreshing it first, waiting through `w`).
    fn bearer(&self, client: &Client, w: &dyn Waiter) -> Result<Option<Secret>>;
    /// The server rejected `used` (401): forget it; whether a new one is worth a retry.
    fn invalidate(&self, used: &Secret) -> bool;
}

/// The HTTP side of one export (see the module documentation).
pub(crate) struct Http {
    pub(crate) config: Arc<Config>,
    /// The blocking client of the control requests (kick-off, status, manifests, DELETE),
    /// shared with the exports of the same client settings.
    pub(crate) client: Arc<Client>,
    tls: Tls,
    base_origin: url::Origin,
    token_origins: Vec<url::Origin>,
    credentials: Box<dyn Credentials>,
    /// The config's extra headers, parsed (validated with the config).
    extra_headers: HeaderMap,
    pub(crate) policy: Policy,
    /// Waits between attempts (a stop ends them, the progress shows them) and warnings.
    waiter: Arc<dyn Waiter + Send + Sync>,
}

impl Http {
    pub(crate) fn new(
        config: Arc<Config>,
        credentials: Box<dyn Credentials>,
        waiter: Arc<dyn Waiter + Send + Sync>,
    ) -> Result<Http> {
        let tls = Tls::load(&config)?;
        let client = tls.blocking_client(&config)?;
        let token_origins = config
            .token_origins
            .iter()
            .filter_map(|o| url::Url::parse(o).ok().map(|u| u.origin()))
            .collect();
        let base_origin = url::Url::parse(&config.base_url)
            .map_err(|e| Error::config(format!("invalid config: base_url: {e}")))?
            .origin();
        let mut extra_headers = HeaderMap::new();
        for (k, v) in &config.headers {
            let name = HeaderName::from_bytes(k.as_bytes());
            let value = HeaderValue::from_str(v);
            let (Ok(name), Ok(value)) = (name, value) else {
                return Err(Error::config(format!(
                    "invalid config: headers has an invalid header {k:?}"
                )));
            };
            extra_headers.append(name, value);
        }
        Ok(Http {
            extra_headers,
            policy: Policy::new(&config),
            config,
            client,
            tls,
            base_origin,
            token_origins,
            credentials,
            waiter,
        })
    }

    /// Whether the export stops (a cancel or a failure).
    pub(crate) fn stopping(&self) -> bool {
        self.waiter.stopping()
    }

    /// Waits and warnings of the export.
    pub(crate) fn waiter(&self) -> &dyn Waiter {
        &*self.waiter
    }

    /// Whether requests carry a token at all.
    pub(crate) fn uses_token(&self) -> bool {
        self.credentials.enabled()
    }

    /// May this URL receive the access token and the extra headers? The FHIR server's origin
    /// and the origins the caller listed in `token_origins`.
    pub(crate) fn trusted(&self, url: &str) -> bool {
        url::Url::parse(url).is_ok_and(|u| {
            let o = u.origin();
            o == self.base_origin || self.token_origins.contains(&o)
        })
    }

    /// What a request to `url` carries besides its own headers: the extra headers of the config
    /// and the access token `token` (which [`Http::send_with`] gets only for trusted origins),
    /// both only when `url` is trusted. Every request, blocking or async, adds these.
    pub(crate) fn auth_headers(&self, url: &str, token: Option<&Secret>) -> Result<HeaderMap> {
        if !self.trusted(url) {
            return Ok(HeaderMap::new());
        }
        let mut h = self.extra_headers.clone();
        if let Some(t) = token {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", t.expose())).map_err(|_| {
                Error::new(
                    ErrorCode::Auth,
                    "the access token is not a valid HTTP header value (it holds control or \
                     non-ASCII characters): check auth.token, or what the token endpoint answered",
                )
                .with_url(url)
            })?;
            v.set_sensitive(true);
            h.insert(AUTHORIZATION, v);
        }
        Ok(h)
    }

    /// Run `f` with the download thread's HTTP client for this export's settings (see
    /// [`FileClient`]).
    pub(crate) fn with_file_client<R>(&self, f: impl FnOnce(&FileClient) -> R) -> Result<R> {
        self.tls.with_file_client(&self.config, f)
    }

    /// A GET of JSON (status, manifest pages) within `request_timeout_ms`.
    pub(crate) fn get_json(&self, url: &str) -> RequestBuilder {
        self.client
            .get(url)
            .header(ACCEPT, "application/json")
            .timeout(Duration::from_millis(self.config.request_timeout_ms))
    }

    /// Send a request: `build` makes it for a URL (method, headers, body, timeout). Adds the
    /// extra headers and, when `use_token`, the access token — only for trusted origins. A 401
    /// while a token was in use gets a new token and one retry. Redirects are followed here
    /// (at most 10), so the token and extra headers never follow a redirect to another origin
    /// (Oracle Health answers file requests with 307 to a pre-signed object-store URL).
    pub(crate) fn send(
        &self,
        what: &str,
        url: &str,
        use_token: bool,
        build: &dyn Fn(&str) -> RequestBuilder,
    ) -> Result<Response> {
        self.send_with(what, url, use_token, &mut |u, token| {
            build(u)
                .headers(self.auth_headers(u, token)?)
                .send()
                .map_err(|e| from_reqwest(what, u, &e))
        })
    }

    /// The policy of [`Http::send`] over any HTTP client: `one` sends one request to a URL
    /// (adding the extra headers for trusted origins) with the token given, if any.
    pub(crate) fn send_with<R: HttpResponse>(
        &self,
        what: &str,
        url: &str,
        use_token: bool,
        one: &mut dyn FnMut(&str, Option<&Secret>) -> Result<R>,
    ) -> Result<R> {
        let mut url = url.to_owned();
        let mut retried = false;
        let mut redirects = 0;
        let mut from_https = false;
        loop {
            self.check_secure(what, &url, from_https)?;
            let token = if use_token && self.trusted(&url) {
                self.credentials.bearer(&self.client, self.waiter())?
            } else {
                None
            };
            let resp = one(&url, token.as_ref())?;
            let status = resp.status_code();
            if status == 401 && !retried {
                if let Some(t) = &token {
                    if self.credentials.invalidate(t) {
                        retried = true;
                        continue;
                    }
                }
            }
            if matches!(status, 301 | 302 | 303 | 307 | 308) {
                let next = resp
                    .header_map()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|loc| url::Url::parse(&url).ok()?.join(loc).ok());
                if let Some(next) = next {
                    redirects += 1;
                    if redirects > 10 {
                        return Err(Error::protocol(format!("{what}: more than 10 redirects"))
                            .with_url(&url));
                    }
                    if next.scheme() != "http" && next.scheme() != "https" {
                        return Err(Error::protocol(format!(
                            "{what}: redirect to a {:?} URL",
                            next.scheme()
                        ))
                        .with_url(&url));
                    }
                    from_https |= url.starts_with("https:");
                    url = next.to_string();
                    continue;
                }
            }
            return Ok(resp);
        }
    }

    /// Refuse plain HTTP off loopback, and a redirect from https to http, unless the config
    /// allows insecure HTTP (before anything is sent: no token or header goes out in clear).
    fn check_secure(&self, what: &str, url: &str, from_https: bool) -> Result<()> {
        if self.config.allow_insecure_http {
            return Ok(());
        }
        let Ok(u) = url::Url::parse(url) else {
            return Ok(());
        };
        let downgrade = from_https && u.scheme() == "http";
        if !downgrade && !crate::config::plain_http_off_loopback(&u) {
            return Ok(());
        }
        let how = if downgrade {
            "a redirect from https:// to plain http://"
        } else {
            "plain http:// to a host that is not loopback"
        };
        Err(Error::protocol(format!(
            "{what}: refused {how} ({}): {}",
            u.host_str().unwrap_or_default(),
            crate::config::INSECURE_WHY
        ))
        .with_url(url))
    }

    /// `send` under the retry policy: transport errors and retryable statuses (see
    /// [`retry::is_retryable`]) are tried again after `Retry-After` or an exponential backoff
    /// with jitter, within `retry_max_attempts` and `retry_max_wait_ms`. Statuses `accept`
    /// takes come back as responses; any other final status is an error carrying the
    /// server's OperationOutcome.
    pub(crate) fn send_retrying(
        &self,
        what: &str,
        url: &str,
        use_token: bool,
        build: &dyn Fn(&str) -> RequestBuilder,
        accept: &dyn Fn(u16) -> bool,
    ) -> Result<Response> {
        self.send_retrying_on(what, url, use_token, build, accept, true)
    }

    /// [`Http::send_retrying`]; with `network` false, a connection error or timeout is not
    /// retried (a request that is not idempotent may have reached the server).
    pub(crate) fn send_retrying_on(
        &self,
        what: &str,
        url: &str,
        use_token: bool,
        build: &dyn Fn(&str) -> RequestBuilder,
        accept: &dyn Fn(u16) -> bool,
        network: bool,
    ) -> Result<Response> {
        self.retrying(what, url, accept, network, &mut || {
            self.send(what, url, use_token, build)
        })
    }

    /// The retry policy of [`Http::send_retrying_on`] around any `send`.
    pub(crate) fn retrying<R: HttpResponse>(
        &self,
        what: &str,
        url: &str,
        accept: &dyn Fn(u16) -> bool,
        network: bool,
        send: &mut dyn FnMut() -> Result<R>,
    ) -> Result<R> {
        retry::run(&self.policy, self.waiter(), &mut || {
            retry::classify(what, url, send(), accept, network)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoToken;
    impl Credentials for NoToken {
        fn enabled(&self) -> bool {
            false
        }
        fn bearer(&self, _: &Client, _: &dyn Waiter) -> Result<Option<Secret>> {
            Ok(None)
        }
        fn invalidate(&self, _: &Secret) -> bool {
            false
        }
    }
    struct Quiet;
    impl Waiter for Quiet {
        fn stopping(&self) -> bool {
            false
        }
        fn wait_retry(&self, _: Duration, _: &str) -> bool {
            true
        }
        fn warn(&self, _: String) {}
    }

    #[test]
    fn only_the_server_and_listed_origins_are_trusted() {
        let mut c = Config::new("https://ehr.example:8443/fhir");
        c.token_origins = vec!["https://files.example".into()];
        let h = Http::new(Arc::new(c), Box::new(NoToken), Arc::new(Quiet)).unwrap();
        assert!(h.trusted("https://ehr.example:8443/fhir/jobs/1"));
        assert!(h.trusted("https://files.example/a.ndjson?sig=1"));
        assert!(!h.trusted("http://ehr.example:8443/fhir"), "another scheme");
        assert!(!h.trusted("https://ehr.example/fhir"), "another port");
        assert!(!h.trusted("https://ehr.example.evil:8443/fhir"));
        assert!(!h.trusted("https://user@files.example.evil/"));
        assert!(!h.trusted("not a url"));
    }

    #[test]
    fn plain_http_off_loopback_and_downgrades_are_refused_unless_allowed() {
        let h = Http::new(
            Arc::new(Config::new("https://ehr.example/fhir")),
            Box::new(NoToken),
            Arc::new(Quiet),
        )
        .unwrap();
        assert!(h.check_secure("x", "https://ehr.example/a", false).is_ok());
        assert!(h
            .check_secure("x", "http://127.0.0.1:8080/a", false)
            .is_ok());
        let e = h
            .check_secure("x", "http://files.example/a?sig=1", false)
            .unwrap_err();
        assert!(e.message.contains("not loopback"), "{}", e.message);
        let e = h.check_secure("x", "http://127.0.0.1/a", true).unwrap_err();
        assert!(
            e.message.contains("from https:// to plain http://"),
            "{}",
            e.message
        );
        let mut c = Config::new("https://ehr.example/fhir");
        c.allow_insecure_http = true;
        let h = Http::new(Arc::new(c), Box::new(NoToken), Arc::new(Quiet)).unwrap();
        assert!(h.check_secure("x", "http://files.example/a", true).is_ok());
    }

    #[test]
    fn extra_headers_and_the_token_go_to_trusted_origins_only() {
        let mut c = Config::new("https://ehr.example/fhir");
        c.headers.insert("Epic-Client-ID".into(), "abc".into());
        let h = Http::new(Arc::new(c), Box::new(NoToken), Arc::new(Quiet)).unwrap();
        let t = Secret::new("tok");
        let got = h
            .auth_headers("https://ehr.example/fhir/f.ndjson", Some(&t))
            .unwrap();
        assert_eq!(got["epic-client-id"], "abc");
        assert_eq!(got[AUTHORIZATION], "Bearer tok");
        assert!(got[AUTHORIZATION].is_sensitive());
        let foreign = h
            .auth_headers("https://bucket.example/f?sig=1", Some(&t))
            .unwrap();
        assert!(foreign.is_empty());
        let bad = h.auth_headers("https://ehr.example/x", Some(&Secret::new("a\nb")));
        let e = bad.unwrap_err();
        assert!(!e.message.contains("a\nb"), "{}", e.message);
    }
}
