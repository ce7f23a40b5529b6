//! Authorization: static bearer tokens and SMART Backend Services (OAuth 2.0 client credentials
//! with a signed JWT client assertion, or a client secret with HTTP Basic), with discovery and a
//! cached, refreshed access token.
//!
//! Secrets (keys, tokens, client secrets, assertions) live in [`Secret`], whose `Debug` prints
//! `***`, and never enter error messages.

use crate::config::{Auth, SecretSource};
use crate::error::{escape_controls, from_reqwest, redact_url, Error, ErrorCode, Result};
use crate::http::retry::{self, retry_after, Attempt, Policy, Waiter};
use crate::http::{read_capped, Credentials, DISCOVERY_BODY_LIMIT, TOKEN_BODY_LIMIT};
pub use crate::secret::Secret;
use parking_lot::Mutex;
use reqwest::blocking::Client;
use reqwest::header::ACCEPT;
use serde_json::Value;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Read a secret from where the config says it is. Errors name the config key and the file or
/// variable, never the content.
pub fn resolve(key: &str, src: &SecretSource) -> Result<Secret> {
    let value = zeroize::Zeroizing::new(match src {
        SecretSource::Inline(s) => s.clone(),
        SecretSource::File { file } => std::fs::read_to_string(file).map_err(|e| {
            Error::config(format!(
                "invalid config: {key}: cannot read file {file:?}: {e}"
            ))
        })?,
        SecretSource::Env { env } => std::env::var(env).map_err(|_| {
            Error::config(format!(
                "invalid config: {key}: environment variable {env:?} is not set (or not UTF-8)"
            ))
        })?,
    });
    let value = value.trim();
    if value.is_empty() {
        return Err(Error::config(format!("invalid config: {key} is empty")));
    }
    Ok(Secret::new(value))
}

/// A warning when the key file `path` can be read by its group or others (as ssh warns).
fn readable_by_others(path: &str) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Some(format!(
                "the private key file {path:?} has mode {mode:03o}: its group or others can read it; chmod 600 it"
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    None
}

/// A private key ready to sign client assertions, kept as the RustCrypto key types, which wipe
/// their secret parts when dropped (`ZeroizeOnDrop`); an encoded copy of the key is never kept.
struct SigningKey {
    key: KeyMaterial,
    kid: String,
}

enum KeyMaterial {
    /// RS384: RSASSA-PKCS1-v1_5 with SHA-384.
    Rsa(Box<rsa::RsaPrivateKey>),
    /// ES384: ECDSA on P-384 with SHA-384.
    Ec(p384::SecretKey),
}

impl SigningKey {
    /// The JWS `alg`.
    fn alg(&self) -> &'static str {
        match self.key {
            KeyMaterial::Rsa(_) => "RS384",
            KeyMaterial::Ec(_) => "ES384",
        }
    }

    /// The JWS signature of `input` (RFC 7518 §3.3, §3.4: for ES384 the 96 bytes R || S).
    fn sign(&self, input: &[u8]) -> Result<Vec<u8>> {
        use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer};
        match &self.key {
            KeyMaterial::Rsa(k) => {
                // Blinded with fresh randomness, as the rsa crate advises for private-key use.
                let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha384>::new((**k).clone());
                signer
                    .try_sign_with_rng(&mut rand_core::OsRng, input)
                    .map(|s| s.to_vec())
                    .map_err(|_| {
                        Error::new(ErrorCode::Auth, "cannot sign the client assertion (RS384)")
                    })
            }
            KeyMaterial::Ec(k) => {
                let signer = p384::ecdsa::SigningKey::from(k);
                let sig: p384::ecdsa::Signature = signer.try_sign(input).map_err(|_| {
                    Error::new(ErrorCode::Auth, "cannot sign the client assertion (ES384)")
                })?;
                Ok(sig.to_bytes().to_vec())
            }
        }
    }
}

fn key_error(msg: impl std::fmt::Display) -> Error {
    Error::config(format!("invalid config: auth.private_key: {msg}"))
}

/// Parse a private key given as PEM (PKCS#8, PKCS#1 RSA, SEC1 EC) or as a JWK / JWKS (JSON).
/// RSA keys sign with RS384, P-384 keys with ES384 (the two algorithms SMART requires).
fn parse_private_key(text: &str, kid: Option<&str>, alg: Option<&str>) -> Result<SigningKey> {
    use p384::pkcs8::DecodePrivateKey;
    use rsa::pkcs1::DecodeRsaPrivateKey;
    let (key, jwk_kid) = if text.starts_with("-----BEGIN") {
        if let Ok(k) = rsa::RsaPrivateKey::from_pkcs8_pem(text)
            .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(text))
        {
            (KeyMaterial::Rsa(Box::new(k)), None)
        } else if let Ok(k) =
            p384::SecretKey::from_pkcs8_pem(text).or_else(|_| p384::SecretKey::from_sec1_pem(text))
        {
            (KeyMaterial::Ec(k), None)
        } else {
            return Err(key_error(
                "the PEM is neither an RSA private key nor an EC P-384 private key (ES384 needs P-384)",
            ));
        }
    } else if text.starts_with('{') {
        let v = WipedJson(
            serde_json::from_str(text).map_err(|e| key_error(format!("not valid JSON: {e}")))?,
        );
        let jwk = WipedJson(match v.0.get("keys").and_then(Value::as_array) {
            Some(keys) => keys
                .iter()
                .filter(|k| k.get("d").is_some())
                .find(|k| kid.is_none() || k.get("kid").and_then(Value::as_str) == kid)
                .ok_or_else(|| match kid {
                    Some(kid) => key_error(format!("the JWKS has no private key with kid {kid:?}")),
                    None => key_error("the JWKS has no private key (a JWK with \"d\")"),
                })?
                .clone(),
            None => v.0.clone(),
        });
        let jwk = &jwk.0;
        if jwk.get("d").is_none() {
            return Err(key_error(
                "the JWK is a public key (no \"d\"); give the private key",
            ));
        }
        let jwk_kid = jwk.get("kid").and_then(Value::as_str).map(str::to_owned);
        match jwk.get("kty").and_then(Value::as_str) {
            Some("RSA") => {
                let n = |k: &str| -> Result<rsa::BigUint> {
                    let s = jwk
                        .get(k)
                        .and_then(Value::as_str)
                        .ok_or_else(|| key_error(format!("the RSA JWK lacks \"{k}\"")))?;
                    let b = zeroize::Zeroizing::new(b64url(s).ok_or_else(|| {
                        key_error(format!("the RSA JWK's \"{k}\" is not base64url"))
                    })?);
                    Ok(rsa::BigUint::from_bytes_be(&b))
                };
                let k = rsa::RsaPrivateKey::from_components(
                    n("n")?,
                    n("e")?,
                    n("d")?,
                    vec![n("p")?, n("q")?],
                )
                .map_err(|e| key_error(format!("the RSA JWK is not a valid key: {e}")))?;
                (KeyMaterial::Rsa(Box::new(k)), jwk_kid)
            }
            Some("EC") => {
                if jwk.get("crv").and_then(Value::as_str) != Some("P-384") {
                    return Err(key_error("the EC JWK must use curve P-384 (ES384)"));
                }
                // The elliptic-curve JWK parser accepts only the key members.
                let bare: serde_json::Map<String, Value> = jwk
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(k, _)| matches!(k.as_str(), "kty" | "crv" | "x" | "y" | "d"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let bare = WipedJson(Value::Object(bare));
                let bare_text = zeroize::Zeroizing::new(bare.0.to_string());
                let k = p384::SecretKey::from_jwk_str(&bare_text)
                    .map_err(|_| key_error("the EC JWK is not a valid P-384 private key"))?;
                (KeyMaterial::Ec(k), jwk_kid)
            }
            other => {
                return Err(key_error(format!(
                    "unsupported JWK kty {other:?}; use RSA or EC P-384"
                )))
            }
        }
    } else {
        return Err(key_error("expected a PEM private key or a JWK/JWKS (JSON)"));
    };
    let (family, default_alg) = match key {
        KeyMaterial::Rsa(_) => ("RSA", "RS384"),
        KeyMaterial::Ec(_) => ("EC", "ES384"),
    };
    if let Some(a) = alg.filter(|a| *a != default_alg) {
        return Err(Error::config(format!(
            "invalid config: auth.alg {a:?} does not fit the {family} key (RSA keys sign RS384, EC P-384 keys ES384)"
        )));
    }
    let kid = kid.map(str::to_owned).or(jwk_kid).ok_or_else(|| {
        Error::config("invalid config: auth.kid is required (the key id registered with the server) unless the JWK has a \"kid\"")
    })?;
    Ok(SigningKey { key, kid })
}

/// A JSON document holding key material: its strings are wiped when it is dropped.
struct WipedJson(Value);

impl Drop for WipedJson {
    fn drop(&mut self) {
        fn wipe(v: &mut Value) {
            match v {
                Value::String(s) => zeroize::Zeroize::zeroize(s),
                Value::Array(a) => a.iter_mut().for_each(wipe),
                Value::Object(o) => o.values_mut().for_each(wipe),
                _ => {}
            }
        }
        wipe(&mut self.0);
    }
}

fn b64url(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

enum Method {
    None,
    Static(Secret),
    Jwt {
        client_id: String,
        key: SigningKey,
        jku: Option<String>,
    },
    Basic {
        client_id: String,
        secret: Secret,
    },
}

struct Token {
    value: Secret,
    refresh_at: Instant,
}

/// Gives the access token for requests, getting and refreshing it as needed.
pub struct Authorizer {
    method: Method,
    base_url: String,
    token_url: Option<String>,
    scope: Option<String>,
    token: Mutex<Option<Token>>,
    /// The token endpoint and scopes found by discovery (once).
    discovered: Mutex<Option<(String, Vec<String>)>>,
    timeout: Duration,
    /// The retry policy of token and discovery requests.
    policy: Policy,
    /// Plain http:// token endpoints off loopback are allowed (config `allow_insecure_http`).
    allow_insecure_http: bool,
    /// What the caller should know about the credentials (a key file others can read).
    warnings: Vec<String>,
    /// Token requests made (for progress and tests).
    pub(crate) token_requests: std::sync::atomic::AtomicU32,
    /// The digest of everything a token depends on (method, client, credentials, scope,
    /// endpoints), under which the process shares tokens between exports; `None` without
    /// client credentials.
    share_key: Option<[u8; 32]>,
}

/// Access tokens shared by the exports of one process that use the same credentials against
/// the same server: a distributed reader starts an export per file (a Spark task), and each
/// must not ask the token endpoint again (its rate limits) while a token is good. Keyed by
/// [`Authorizer::share_key`] and `allow_insecure_http`; a few entries, the oldest dropped.
static SHARED_TOKENS: once_cell::sync::Lazy<Mutex<Vec<SharedToken>>> =
    once_cell::sync::Lazy::new(Mutex::default);
/// A shared token: its share key, `allow_insecure_http`, the token, when to refresh it.
type SharedToken = ([u8; 32], bool, Secret, Instant);
const SHARED_TOKENS_KEPT: usize = 16;

/// The digest of the parts a token depends on, each length-prefixed (no two lists of parts
/// give the same bytes).
fn share_key(parts: &[&str]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().into()
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authorizer(***)")
    }
}

impl Authorizer {
    /// Build from the config, reading secrets and parsing keys now so errors come at start.
    pub fn new(auth: &Auth, base_url: &str, timeout: Duration) -> Result<Authorizer> {
        let mut warnings = Vec::new();
        let mut key = None;
        let (method, token_url, scope) = match auth {
            Auth::None => (Method::None, None, None),
            Auth::Bearer { token } => (Method::Static(resolve("auth.token", token)?), None, None),
            Auth::ClientCredentials {
                client_id,
                private_key,
                client_secret,
                kid,
                jku,
                alg,
                scope,
                token_url,
            } => {
                let method = match (private_key, client_secret) {
                    (Some(pk), None) => {
                        if let SecretSource::File { file } = pk {
                            if let Some(w) = readable_by_others(file) {
                                warnings.push(w);
                            }
                        }
                        let text = resolve("auth.private_key", pk)?;
                        key = Some(share_key(&[
                            "jwt",
                            client_id,
                            text.expose(),
                            kid.as_deref().unwrap_or(""),
                            alg.as_deref().unwrap_or(""),
                            jku.as_deref().unwrap_or(""),
                        ]));
                        Method::Jwt {
                            client_id: client_id.clone(),
                            key: parse_private_key(text.expose(), kid.as_deref(), alg.as_deref())?,
                            jku: jku.clone(),
                        }
                    }
                    (None, Some(cs)) => {
                        let secret = resolve("auth.client_secret", cs)?;
                        key = Some(share_key(&["basic", client_id, secret.expose()]));
                        Method::Basic {
                            client_id: client_id.clone(),
                            secret,
                        }
                    }
                    _ => {
                        return Err(Error::config(
                            "invalid config: auth type \"client_credentials\" needs exactly one of private_key (private_key_jwt) or client_secret (client_secret_basic)",
                        ))
                    }
                };
                key = key.map(|k| {
                    let hex: String = k.iter().map(|b| format!("{b:02x}")).collect();
                    share_key(&[
                        &hex,
                        base_url.trim_end_matches('/'),
                        token_url.as_deref().unwrap_or(""),
                        scope.as_deref().unwrap_or(""),
                    ])
                });
                (method, token_url.clone(), scope.clone())
            }
        };
        Ok(Authorizer {
            method,
            base_url: base_url.trim_end_matches('/').to_owned(),
            token_url,
            scope,
            token: Mutex::new(None),
            discovered: Mutex::new(None),
            timeout,
            policy: Policy::new(&crate::config::Config::new(base_url)),
            allow_insecure_http: false,
            warnings,
            token_requests: Default::default(),
            share_key: key,
        })
    }

    /// Use the export's retry policy for token and discovery requests.
    pub(crate) fn with_policy(mut self, policy: Policy) -> Authorizer {
        self.policy = policy;
        self
    }

    /// Allow a plain http:// token endpoint that is not loopback (config
    /// `allow_insecure_http`); refused by default, before the credentials are sent.
    pub fn allow_insecure_http(mut self, allow: bool) -> Authorizer {
        self.allow_insecure_http = allow;
        self
    }

    /// What the caller should know about the credentials, taken once (a private-key file
    /// readable by group or others).
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// Whether requests carry a token at all.
    pub fn enabled(&self) -> bool {
        !matches!(self.method, Method::None)
    }

    /// The token to send now, getting or refreshing it first when needed (token and discovery
    /// requests retried per the default policy).
    pub fn bearer(&self, client: &Client) -> Result<Option<Secret>> {
        self.bearer_with(client, &Sleeping)
    }

    /// [`Authorizer::bearer`], waiting between attempts through `w` (the export's, which a
    /// cancel interrupts and the progress shows).
    pub(crate) fn bearer_with(&self, client: &Client, w: &dyn Waiter) -> Result<Option<Secret>> {
        match &self.method {
            Method::None => Ok(None),
            Method::Static(t) => Ok(Some(t.clone())),
            _ => {
                let mut slot = self.token.lock();
                if let Some(t) = slot.as_ref() {
                    if Instant::now() < t.refresh_at {
                        return Ok(Some(t.value.clone()));
                    }
                }
                let refreshed = slot.is_some();
                // What the caller may know of a token: when it was had, never its value.
                let event = |t: &Token, shared: bool| {
                    let left = t.refresh_at.saturating_duration_since(Instant::now());
                    w.event(
                        "token",
                        crate::events::fields! {
                            "refreshed" => refreshed,
                            "shared" => shared,
                            "refresh_in_s" => left.as_secs(),
                        },
                    );
                };
                if let Some(t) = self.shared_token() {
                    event(&t, true);
                    let v = t.value.clone();
                    *slot = Some(t);
                    return Ok(Some(v));
                }
                let t = self.fetch_token(client, w)?;
                event(&t, false);
                let v = t.value.clone();
                self.share(&t);
                *slot = Some(t);
                Ok(Some(v))
            }
        }
    }

    /// The server rejected `used` (401): forget it so the next `bearer` gets a new one.
    /// Returns whether a retry with a new token makes sense.
    pub fn invalidate(&self, used: &Secret) -> bool {
        match &self.method {
            Method::Jwt { .. } | Method::Basic { .. } => {
                let mut slot = self.token.lock();
                if slot.as_ref().is_some_and(|t| &t.value == used) {
                    *slot = None;
                }
                SHARED_TOKENS.lock().retain(|(_, _, v, _)| v != used);
                true
            }
            _ => false,
        }
    }

    /// A token another export of this process got with the same credentials, still good.
    fn shared_token(&self) -> Option<Token> {
        let key = self.share_key?;
        let now = Instant::now();
        let mut shared = SHARED_TOKENS.lock();
        shared.retain(|(_, _, _, refresh_at)| now < *refresh_at);
        shared
            .iter()
            .find(|(k, insecure, _, _)| *k == key && *insecure == self.allow_insecure_http)
            .map(|(_, _, v, refresh_at)| Token {
                value: v.clone(),
                refresh_at: *refresh_at,
            })
    }

    /// Offer a token just got to the other exports of this process with the same credentials.
    fn share(&self, t: &Token) {
        let Some(key) = self.share_key else {
            return;
        };
        let mut shared = SHARED_TOKENS.lock();
        shared.retain(|(k, insecure, _, _)| !(*k == key && *insecure == self.allow_insecure_http));
        if shared.len() >= SHARED_TOKENS_KEPT {
            shared.remove(0);
        }
        shared.push((key, self.allow_insecure_http, t.value.clone(), t.refresh_at));
    }

    fn discover(&self, client: &Client, w: &dyn Waiter) -> Result<(String, Vec<String>)> {
        if let Some(u) = &self.token_url {
            return Ok((u.clone(), Vec::new()));
        }
        if let Some(d) = self.discovered.lock().clone() {
            return Ok(d);
        }
        let found = self.discover_now(client, w)?;
        *self.discovered.lock() = Some(found.clone());
        Ok(found)
    }

    fn discover_now(&self, client: &Client, w: &dyn Waiter) -> Result<(String, Vec<String>)> {
        let mut problems = Vec::new();
        let wk = format!("{}/.well-known/smart-configuration", self.base_url);
        match self.get_json(client, &wk, "application/json", w) {
            Ok(v) => {
                if let Some(t) = v.get("token_endpoint").and_then(Value::as_str) {
                    let scopes = v
                        .get("scopes_supported")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .map(str::to_owned)
                                .collect()
                        })
                        .unwrap_or_default();
                    return Ok((t.to_owned(), scopes));
                }
                problems.push(format!("{} has no token_endpoint", redact_url(&wk)));
            }
            // The server's TLS refuses this client: no other URL of it can do better.
            Err(e) if e.permanent => return Err(e),
            Err(e) => problems.push(e.message),
        }
        if w.stopping() {
            return Err(crate::error::stopped());
        }
        let md = format!("{}/metadata", self.base_url);
        match self.get_json(client, &md, "application/fhir+json", w) {
            Ok(v) => match token_from_capability_statement(&v) {
                Some(t) => return Ok((t, Vec::new())),
                None => problems.push(format!(
                    "{} has no OAuth token URL in rest.security",
                    redact_url(&md)
                )),
            },
            Err(e) if e.permanent => return Err(e),
            Err(e) => problems.push(e.message),
        }
        Err(Error::new(
            ErrorCode::Auth,
            format!(
                "cannot find the token endpoint: {}; set auth.token_url",
                problems.join("; ")
            ),
        ))
    }

    /// GET a JSON document for discovery (retried per the policy, read within a cap); the
    /// error's message says what went wrong with it.
    fn get_json(&self, client: &Client, url: &str, accept: &str, w: &dyn Waiter) -> Result<Value> {
        let what = "discovery request";
        let r = retry::run(&self.policy, w, &mut || {
            let sent = client
                .get(url)
                .header(ACCEPT, accept)
                .timeout(self.timeout)
                .send()
                .map_err(|e| from_reqwest(what, url, &e));
            retry::classify(what, url, sent, &|s| s != 429 && s < 500, true)
        })?;
        let problem = |m: String| Error::new(ErrorCode::Auth, m);
        if !r.status().is_success() {
            return Err(problem(format!(
                "{} answered HTTP {}",
                redact_url(url),
                r.status().as_u16()
            )));
        }
        let body = read_capped(what, url, r, DISCOVERY_BODY_LIMIT)?;
        serde_json::from_slice(&body).map_err(|_| {
            problem(format!(
                "{} did not answer JSON{}",
                redact_url(url),
                crate::bom::bom_hint(&body)
            ))
        })
    }

    fn fetch_token(&self, client: &Client, w: &dyn Waiter) -> Result<Token> {
        let (token_url, scopes_supported) = self.discover(client, w)?;
        if !self.allow_insecure_http
            && url::Url::parse(&token_url).is_ok_and(|u| crate::config::plain_http_off_loopback(&u))
        {
            return Err(Error::new(
                ErrorCode::Auth,
                format!(
                    "refused to send the client's credentials to the plain http:// token endpoint {}: {}",
                    crate::error::redact_url(&token_url),
                    crate::config::INSECURE_WHY
                ),
            ));
        }
        let scope = self
            .scope
            .clone()
            .unwrap_or_else(|| default_scope(&scopes_supported));
        let form: Vec<(&str, String)> = vec![
            ("grant_type", "client_credentials".into()),
            ("scope", scope),
        ];
        // A fresh request (and client assertion, with its own jti) for every attempt.
        let build = || -> Result<reqwest::blocking::RequestBuilder> {
            let mut form = form.clone();
            let mut rb = client
                .post(&token_url)
                .header(ACCEPT, "application/json")
                .timeout(self.timeout);
            match &self.method {
                Method::Jwt {
                    client_id,
                    key,
                    jku,
                } => {
                    form.push((
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                    ));
                    form.push((
                        "client_assertion",
                        client_assertion(client_id, key, jku.as_deref(), &token_url)?,
                    ));
                }
                Method::Basic { client_id, secret } => {
                    rb = rb.basic_auth(form_encode(client_id), Some(form_encode(secret.expose())));
                }
                _ => unreachable!("only client credentials fetch tokens"),
            }
            Ok(rb.form(&form))
        };
        let what = "token request";
        let started = Instant::now();
        // 429 and 5xx (and a broken connection: asking again for a token is harmless) are
        // retried; an OAuth error answer (4xx) is final.
        let (status, body) = retry::run(&self.policy, w, &mut || {
            let rb = match build() {
                Ok(rb) => rb,
                Err(e) => return Attempt::Fail(e),
            };
            self.token_requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let resp = match rb.send() {
                Ok(r) => r,
                Err(e) => {
                    let e = from_reqwest(what, &token_url, &e);
                    return if e.permanent {
                        Attempt::Fail(e)
                    } else {
                        Attempt::Retry(e, None)
                    };
                }
            };
            let status = resp.status().as_u16();
            let after = retry_after(resp.headers());
            let body = match read_capped(what, &token_url, resp, TOKEN_BODY_LIMIT) {
                Ok(b) => b,
                Err(e) if matches!(e.code, ErrorCode::Network | ErrorCode::Timeout) => {
                    return Attempt::Retry(e, None)
                }
                Err(e) => return Attempt::Fail(e),
            };
            if status == 429 || status >= 500 {
                return Attempt::Retry(token_error(status, &body, &token_url), after);
            }
            Attempt::Done((status, body))
        })?;
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status != 200 || v.get("error").is_some() {
            return Err(token_error(status, &body, &token_url));
        }
        let token = v
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Error::new(ErrorCode::Auth, "token response has no access_token")
                    .with_url(&token_url)
            })?;
        let lifetime =
            Duration::from_secs(v.get("expires_in").and_then(Value::as_u64).unwrap_or(300));
        // Refresh before it runs out: a fifth of the lifetime early, at most 30 s.
        let margin = (lifetime / 5).min(Duration::from_secs(30));
        Ok(Token {
            value: Secret::new(token),
            refresh_at: started + lifetime.saturating_sub(margin),
        })
    }
}

/// The error of a failed token request: the OAuth `error` code kept as a field and quoted, with
/// its `error_description` (control characters escaped).
fn token_error(status: u16, body: &[u8], token_url: &str) -> Error {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let code = v
        .get("error")
        .and_then(Value::as_str)
        .map(|c| escape_controls(c).into_owned());
    let desc = v
        .get("error_description")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut msg = format!("token request failed: HTTP {status}");
    if status == 200 {
        msg.push_str(" with an OAuth error and no access_token");
    }
    if let Some(c) = &code {
        msg.push_str(&format!(": {c}"));
    }
    if !desc.is_empty() {
        msg.push_str(&format!(": {desc}"));
    }
    let mut e = Error::new(
        if status == 429 || status >= 500 {
            ErrorCode::from_http(status)
        } else {
            ErrorCode::Auth
        },
        msg,
    )
    .with_url(token_url);
    e.http_status = Some(status);
    e.oauth_error = code;
    e
}

impl Credentials for Authorizer {
    fn enabled(&self) -> bool {
        Authorizer::enabled(self)
    }
    fn bearer(&self, client: &Client, w: &dyn Waiter) -> Result<Option<Secret>> {
        self.bearer_with(client, w)
    }
    fn invalidate(&self, used: &Secret) -> bool {
        Authorizer::invalidate(self, used)
    }
}

/// A waiter for requests outside an export (the CLI's cancel): plain sleeps.
struct Sleeping;

impl Waiter for Sleeping {
    fn stopping(&self) -> bool {
        false
    }
    fn wait_retry(&self, d: Duration, _reason: &str) -> bool {
        std::thread::sleep(d);
        true
    }
    fn warn(&self, _message: String) {}
}

/// SMART v1 `system/*.read` unless the server lists only v2 scopes.
fn default_scope(supported: &[String]) -> String {
    let v1 = supported
        .iter()
        .any(|s| s.ends_with(".read") || s.ends_with(".write") || s.ends_with(".*"));
    let v2 = supported
        .iter()
        .find(|s| s.starts_with("system/") && s.ends_with(".rs"));
    match (v1, v2) {
        (false, Some(s)) => s.clone(),
        _ => "system/*.read".into(),
    }
}

fn token_from_capability_statement(v: &Value) -> Option<String> {
    v.get("rest")?.as_array()?.iter().find_map(|rest| {
        rest.get("security")?
            .get("extension")?
            .as_array()?
            .iter()
            .find_map(|ext| {
                if ext.get("url")?.as_str()?
                    != "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
                {
                    return None;
                }
                ext.get("extension")?.as_array()?.iter().find_map(|e| {
                    (e.get("url")?.as_str()? == "token")
                        .then(|| e.get("valueUri")?.as_str().map(str::to_owned))?
                })
            })
    })
}

fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The signed client assertion: `iss` = `sub` = client id, `aud` = token URL, a unique `jti`,
/// `exp` four minutes ahead (SMART allows at most five).
fn client_assertion(
    client_id: &str,
    key: &SigningKey,
    jku: Option<&str>,
    token_url: &str,
) -> Result<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut header = serde_json::json!({"alg": key.alg(), "typ": "JWT", "kid": key.kid});
    if let Some(jku) = jku {
        header["jku"] = jku.into();
    }
    let claims = serde_json::json!({
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "exp": now + 240,
        "jti": crate::id::random_hex(16),
    });
    // JWS compact serialization (RFC 7515 §7.1), signed here rather than by a JWT crate so
    // that the key stays in the wiping key types above.
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let mut jwt = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = key.sign(jwt.as_bytes())?;
    jwt.push('.');
    jwt.push_str(&b64(&sig));
    Ok(jwt)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_PEM: &str = include_str!("../tests/keys/rsa384-private.pem");
    const EC_JWK: &str = include_str!("../tests/keys/es384-private.jwk.json");
    const RSA_JWK: &str = include_str!("../tests/keys/rsa384-private.jwk.json");

    #[test]
    fn keys_choose_their_algorithm() {
        let k = parse_private_key(RSA_PEM, Some("k1"), None).unwrap();
        assert_eq!((k.alg(), k.kid.as_str()), ("RS384", "k1"));
        let k = parse_private_key(EC_JWK, None, None).unwrap();
        assert_eq!((k.alg(), k.kid.as_str()), ("ES384", "ec-test-1"));
        let k = parse_private_key(RSA_JWK, None, Some("RS384")).unwrap();
        assert_eq!(k.kid, "rsa-test-1");
        let e = parse_private_key(RSA_PEM, None, None).err().unwrap();
        assert!(e.message.contains("kid"), "{}", e.message);
        let e = parse_private_key(RSA_PEM, Some("k"), Some("ES384"))
            .err()
            .unwrap();
        assert!(e.message.contains("does not fit"), "{}", e.message);
        let e = parse_private_key("hello", Some("k"), None).err().unwrap();
        assert!(!e.message.contains("hello"));
    }

    #[test]
    fn assertion_claims() {
        let k = parse_private_key(EC_JWK, None, None).unwrap();
        let jwt =
            client_assertion("my-app", &k, Some("https://app/jwks"), "https://auth/token").unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: Value = serde_json::from_slice(&b64url(parts[0]).unwrap()).unwrap();
        let claims: Value = serde_json::from_slice(&b64url(parts[1]).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES384");
        assert_eq!(header["kid"], "ec-test-1");
        assert_eq!(header["jku"], "https://app/jwks");
        assert_eq!(claims["iss"], "my-app");
        assert_eq!(claims["sub"], "my-app");
        assert_eq!(claims["aud"], "https://auth/token");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let exp = claims["exp"].as_u64().unwrap();
        assert!(exp > now && exp <= now + 300);
        let other = client_assertion("my-app", &k, None, "https://auth/token").unwrap();
        let c2: Value =
            serde_json::from_slice(&b64url(other.split('.').nth(1).unwrap()).unwrap()).unwrap();
        assert_ne!(claims["jti"], c2["jti"]);
    }

    #[test]
    fn scope_defaults() {
        assert_eq!(default_scope(&[]), "system/*.read");
        assert_eq!(
            default_scope(&["system/*.read".into(), "system/*.rs".into()]),
            "system/*.read"
        );
        assert_eq!(default_scope(&["system/*.rs".into()]), "system/*.rs");
    }

    #[test]
    fn signing_keys_are_wiped_when_dropped() {
        fn wiped<T: zeroize::ZeroizeOnDrop>() {}
        wiped::<rsa::RsaPrivateKey>();
        wiped::<p384::SecretKey>();
        wiped::<p384::ecdsa::SigningKey>();
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("sentinel")), "***");
    }
}
