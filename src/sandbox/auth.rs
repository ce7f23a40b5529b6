//! SMART Backend Services authorization for the sandbox: the token endpoint
//! (`private_key_jwt` with RS384/ES384 and `client_secret_basic`), issued access
//! tokens, and request-log redaction.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::id::random_hex;

use super::scenario::Scenario;

/// The only `client_assertion_type` accepted.
pub(crate) const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Maximum assertion lifetime (`exp - now`), plus clock slack.
const MAX_ASSERTION_SECS: f64 = 300.0 + 5.0;

/// SMART Backend Services configuration of the sandbox.
#[derive(Clone, Debug)]
pub struct SandboxAuth {
    /// Registered clients.
    pub clients: Vec<SandboxClient>,
    /// `expires_in` of issued access tokens (scenario key `token_ttl` overrides).
    pub token_ttl_secs: u64,
    /// Scopes a client may request.
    pub scopes_supported: Vec<String>,
}

impl Default for SandboxAuth {
    fn default() -> Self {
        SandboxAuth {
            clients: Vec::new(),
            token_ttl_secs: 300,
            scopes_supported: vec!["system/*.read".into(), "system/*.rs".into()],
        }
    }
}

/// One registered client.
#[derive(Clone, Debug)]
pub struct SandboxClient {
    pub client_id: String,
    /// Public JWKS (`{"keys": [...]}`) for `private_key_jwt`.
    pub jwks: Option<Value>,
    /// Shared secret for `client_secret_basic`.
    pub secret: Option<String>,
}

/// Result of checking a presented bearer token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bearer {
    Valid,
    Expired,
    Invalid,
}

struct Issued {
    /// `expires_in` elapsed.
    expires: Instant,
    /// Scenario `revoke_after`: the server stops honouring the token earlier.
    revoked: Option<Instant>,
}

/// Runtime state of the authorization server.
pub(crate) struct AuthState {
    cfg: SandboxAuth,
    tokens: Mutex<HashMap<String, Issued>>,
    /// (iss, jti) of every accepted assertion.
    jtis: Mutex<HashSet<(String, String)>>,
    pub assertions: Mutex<Vec<Value>>,
    pub issued: AtomicUsize,
    /// Token requests that met fault `token_blip` after a token was issued (per sandbox).
    blips: AtomicU64,
}

/// A token endpoint answer (JSON body).
pub(crate) struct TokenReply {
    pub status: u16,
    pub body: Value,
    /// Add `WWW-Authenticate: Basic` (401 after a Basic attempt).
    pub basic_challenge: bool,
    /// A `Retry-After` value (fault `token_blip`).
    pub retry_after: Option<String>,
}

fn oauth_error(status: u16, code: &str, desc: impl Into<String>) -> TokenReply {
    TokenReply {
        status,
        body: json!({"error": code, "error_description": desc.into()}),
        basic_challenge: false,
        retry_after: None,
    }
}

fn invalid_client(desc: impl Into<String>) -> TokenReply {
    oauth_error(401, "invalid_client", desc)
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Decodes one base64url JWT segment to JSON (Null when malformed).
fn segment(s: &str) -> Value {
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

/// `{"header": .., "claims": ..}` of a JWT, without verifying anything.
fn decode_unverified(jwt: &str) -> Value {
    let mut parts = jwt.split('.');
    let header = parts.next().map_or(Value::Null, segment);
    let claims = parts.next().map_or(Value::Null, segment);
    json!({"header": header, "claims": claims})
}

/// The `smart-configuration` document for a token endpoint URL.
pub(crate) fn smart_configuration(cfg: &SandboxAuth, token_url: &str) -> Value {
    json!({
        "token_endpoint": token_url,
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": cfg.scopes_supported,
        "capabilities": ["client-confidential-asymmetric"],
    })
}

/// CapabilityStatement `rest.security.extension` value pointing at the token endpoint.
pub(crate) fn oauth_uris(token_url: &str) -> Value {
    json!([{
        "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
        "extension": [{"url": "token", "valueUri": token_url}]
    }])
}

/// Replaces secret form fields (`client_assertion`, `client_secret`) by `***`.
pub(crate) fn redact_form(body: &str) -> String {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    if !pairs.iter().any(|(k, _)| is_secret_field(k)) {
        return body.to_string();
    }
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in &pairs {
        ser.append_pair(k, if is_secret_field(k) { "***" } else { v });
    }
    ser.finish()
}

pub(crate) fn is_secret_field(k: &str) -> bool {
    k == "client_assertion" || k == "client_secret"
}

/// `Authorization` value for the log: the scheme kept, the credentials hidden.
pub(crate) fn redact_authorization(v: &str) -> String {
    match v.trim().split_once(' ') {
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("basic") => "Basic ***".into(),
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("bearer") => "Bearer ***".into(),
        Some((scheme, _)) => format!("{scheme} ***"),
        None => "***".into(),
    }
}

/// What the token endpoint needs from the HTTP request.
pub(crate) struct TokenRequest<'a> {
    /// The token endpoint URL as advertised for this request's prefix (the `aud`).
    pub token_url: String,
    pub scen: &'a Scenario,
    pub content_type: Option<String>,
    pub authorization: Vec<&'a str>,
    pub body: &'a str,
}

impl AuthState {
    pub fn new(cfg: SandboxAuth) -> Self {
        AuthState {
            cfg,
            tokens: Mutex::new(HashMap::new()),
            jtis: Mutex::new(HashSet::new()),
            assertions: Mutex::new(Vec::new()),
            issued: AtomicUsize::new(0),
            blips: AtomicU64::new(0),
        }
    }

    pub fn cfg(&self) -> &SandboxAuth {
        &self.cfg
    }

    /// Checks one presented access token.
    pub fn bearer(&self, token: &str) -> Bearer {
        let tokens = self.tokens.lock();
        let Some(t) = tokens.get(token) else {
            return Bearer::Invalid;
        };
        let now = Instant::now();
        if now >= t.expires || t.revoked.is_some_and(|r| now >= r) {
            Bearer::Expired
        } else {
            Bearer::Valid
        }
    }

    /// `POST .../auth/token` (client credentials grant).
    pub fn token(&self, req: &TokenRequest<'_>) -> TokenReply {
        let form: Vec<(String, String)> = url::form_urlencoded::parse(req.body.as_bytes())
            .into_owned()
            .collect();
        let field = |name: &str| -> Option<&str> {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let assertion = field("client_assertion");
        // Recorded before any check so tests can inspect what a client sent.
        if let Some(a) = assertion {
            self.assertions.lock().push(decode_unverified(a));
        }
        if let Some((code, n)) = req.scen.faults.token_blip {
            // After the first token issued, N failures (counted per sandbox).
            if self.issued.load(Ordering::SeqCst) > 0
                && self.blips.fetch_add(1, Ordering::SeqCst) < n
            {
                let mut r = oauth_error(code, "temporarily_unavailable", "sandbox token_blip");
                r.retry_after = match &req.scen.faults.error_retry_after {
                    Some(ra) => ra.value(),
                    None => Some("0".into()),
                };
                return r;
            }
        }
        if let Some(code) = &req.scen.token_error {
            let status = if req.scen.faults.token_error_200 {
                200
            } else if code == "invalid_client" {
                401
            } else {
                400
            };
            return oauth_error(status, code, format!("sandbox forced {code}"));
        }
        let ct = req
            .content_type
            .as_deref()
            .and_then(|c| c.split(';').next())
            .map(|c| c.trim().to_ascii_lowercase());
        if ct.as_deref() != Some("application/x-www-form-urlencoded") {
            return oauth_error(
                400,
                "invalid_request",
                "Content-Type must be application/x-www-form-urlencoded",
            );
        }
        if field("grant_type") != Some("client_credentials") {
            return oauth_error(
                400,
                "unsupported_grant_type",
                "grant_type must be client_credentials",
            );
        }

        let basic: Vec<&str> = req
            .authorization
            .iter()
            .filter_map(|v| {
                v.trim()
                    .split_once(' ')
                    .filter(|(s, _)| s.eq_ignore_ascii_case("basic"))
                    .map(|(_, c)| c.trim())
            })
            .collect();
        if field("client_secret").is_some() {
            return invalid_client("client_secret_post is not supported; use client_secret_basic");
        }
        let _client_id = match (assertion, basic.as_slice()) {
            (Some(_), [_, ..]) => {
                return oauth_error(
                    400,
                    "invalid_request",
                    "more than one client authentication method",
                )
            }
            (Some(a), []) => {
                if field("client_assertion_type") != Some(JWT_BEARER) {
                    return invalid_client(format!("client_assertion_type must be {JWT_BEARER}"));
                }
                match self.verify_assertion(a, &req.token_url) {
                    Ok(id) => id,
                    Err(desc) => return invalid_client(desc),
                }
            }
            (None, [cred]) => match self.check_basic(cred) {
                Ok(id) => id,
                Err(desc) => {
                    let mut r = invalid_client(desc);
                    r.basic_challenge = true;
                    return r;
                }
            },
            (None, [_, _, ..]) => {
                return oauth_error(400, "invalid_request", "more than one Authorization header")
            }
            (None, []) => return invalid_client("no client authentication"),
        };

        let scopes: Vec<&str> = field("scope").unwrap_or("").split_whitespace().collect();
        if scopes.is_empty() {
            return oauth_error(400, "invalid_scope", "scope is required");
        }
        if let Some(bad) = scopes
            .iter()
            .find(|s| !self.cfg.scopes_supported.iter().any(|k| k == *s))
        {
            return oauth_error(
                400,
                "invalid_scope",
                format!("scope '{bad}' is not supported"),
            );
        }

        let ttl = req.scen.token_ttl.unwrap_or(self.cfg.token_ttl_secs);
        let now = Instant::now();
        let far = || now + Duration::from_secs(100 * 365 * 86_400);
        let issued = Issued {
            expires: now
                .checked_add(Duration::from_secs(ttl))
                .unwrap_or_else(far),
            revoked: req
                .scen
                .revoke_after
                .map(|s| now.checked_add(Duration::from_secs(s)).unwrap_or_else(far)),
        };
        let token = random_hex(16);
        self.tokens.lock().insert(token.clone(), issued);
        self.issued.fetch_add(1, Ordering::SeqCst);
        TokenReply {
            status: 200,
            body: json!({
                "access_token": token,
                "token_type": "bearer",
                "expires_in": ttl,
                "scope": scopes.join(" "),
            }),
            basic_challenge: false,
            retry_after: None,
        }
    }

    /// `Basic base64(client_id:secret)` → client_id.
    fn check_basic(&self, cred: &str) -> Result<String, String> {
        let raw = STANDARD
            .decode(cred)
            .map_err(|_| "malformed Basic credentials".to_string())?;
        let raw = String::from_utf8(raw).map_err(|_| "malformed Basic credentials".to_string())?;
        let (id, secret) = raw
            .split_once(':')
            .ok_or_else(|| "malformed Basic credentials".to_string())?;
        // RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
        let dec = |s: &str| -> String {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let (id, secret) = (dec(id), dec(secret));
        let ok = self
            .cfg
            .clients
            .iter()
            .any(|c| c.client_id == id && c.secret.as_deref() == Some(secret.as_str()));
        if ok {
            Ok(id)
        } else {
            Err("unknown client or wrong client secret".into())
        }
    }

    /// Verifies a `private_key_jwt` client assertion → client_id.
    fn verify_assertion(&self, jwt: &str, aud_expected: &str) -> Result<String, String> {
        let parts: Vec<&str> = jwt.split('.').collect();
        if parts.len() != 3 {
            return Err("client_assertion is not a compact JWS".into());
        }
        let header = segment(parts[0]);
        let claims = segment(parts[1]);
        if !header.is_object() || !claims.is_object() {
            return Err("client_assertion header or claims are not JSON objects".into());
        }
        let (alg, kty) = match header["alg"].as_str() {
            Some("RS384") => (Algorithm::RS384, "RSA"),
            Some("ES384") => (Algorithm::ES384, "EC"),
            other => {
                return Err(format!(
                    "alg {} is not allowed (RS384 or ES384)",
                    other.unwrap_or("(missing)")
                ))
            }
        };
        let iss = claims["iss"]
            .as_str()
            .ok_or_else(|| "iss claim missing".to_string())?;
        if claims["sub"].as_str() != Some(iss) {
            return Err("sub must equal iss (the client_id)".into());
        }
        let client = self
            .cfg
            .clients
            .iter()
            .find(|c| c.client_id == iss)
            .ok_or_else(|| format!("unknown client '{iss}'"))?;
        let jwks = client
            .jwks
            .as_ref()
            .ok_or_else(|| format!("client '{iss}' has no registered JWKS"))?;
        let kid = header["kid"]
            .as_str()
            .ok_or_else(|| "kid header missing".to_string())?;
        let jwk = jwks["keys"]
            .as_array()
            .and_then(|keys| keys.iter().find(|k| k["kid"].as_str() == Some(kid)))
            .ok_or_else(|| format!("no key with kid '{kid}' in the client's JWKS"))?;
        let alg_name = header["alg"].as_str().unwrap_or_default();
        if jwk["kty"].as_str() != Some(kty)
            || (kty == "EC" && jwk["crv"].as_str() != Some("P-384"))
            || jwk["alg"].as_str().is_some_and(|a| a != alg_name)
        {
            return Err(format!("key '{kid}' does not fit alg {alg:?}"));
        }
        let s = |name: &str| jwk[name].as_str().unwrap_or("");
        let key = match kty {
            "RSA" => DecodingKey::from_rsa_components(s("n"), s("e")),
            _ => DecodingKey::from_ec_components(s("x"), s("y")),
        }
        .map_err(|e| format!("key '{kid}' is unusable: {e}"))?;
        let mut v = Validation::new(alg);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        v.validate_aud = false;
        jsonwebtoken::decode::<Value>(jwt, &key, &v)
            .map_err(|e| format!("signature verification failed: {e}"))?;

        let aud_ok = match &claims["aud"] {
            Value::String(a) => a == aud_expected,
            Value::Array(a) => a.len() == 1 && a[0].as_str() == Some(aud_expected),
            _ => false,
        };
        if !aud_ok {
            return Err(format!("aud must be the token endpoint URL {aud_expected}"));
        }
        let exp = claims["exp"]
            .as_f64()
            .ok_or_else(|| "exp claim missing".to_string())?;
        let now = now_secs();
        if exp <= now {
            return Err("client_assertion expired".into());
        }
        if exp > now + MAX_ASSERTION_SECS {
            return Err("exp is more than 5 minutes in the future".into());
        }
        let jti = claims["jti"]
            .as_str()
            .filter(|j| !j.is_empty())
            .ok_or_else(|| "jti claim missing".to_string())?;
        if !self.jtis.lock().insert((iss.to_string(), jti.to_string())) {
            return Err(format!("jti '{jti}' was already used (replay)"));
        }
        Ok(iss.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        let r = redact_form(
            "grant_type=client_credentials&client_assertion=abc.def.ghi&scope=system%2F*.read",
        );
        assert_eq!(
            r,
            "grant_type=client_credentials&client_assertion=***&scope=system%2F*.read"
        );
        assert_eq!(redact_form("a=1"), "a=1");
        assert_eq!(redact_authorization("Basic Zm9vOmJhcg=="), "Basic ***");
        assert_eq!(redact_authorization("bearer t"), "Bearer ***");
        assert_eq!(redact_authorization("token"), "***");
    }

    #[test]
    fn unverified_decode() {
        let v = decode_unverified("eyJhbGciOiJub25lIn0.eyJpc3MiOiJ4In0.");
        assert_eq!(v["header"]["alg"], "none");
        assert_eq!(v["claims"]["iss"], "x");
        assert_eq!(decode_unverified("garbage")["claims"], Value::Null);
    }
}
