//! Typed errors. Every failure a caller can meet maps to one stable [`ErrorCode`]; the C ABI
//! exposes the same numbers.

use serde::Serialize;
use std::fmt;

/// Stable error codes. The numbers are part of the C ABI and never change meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum ErrorCode {
    /// A NULL pointer or an out-of-range argument.
    InvalidArgument = 100,
    /// A NULL, freed or foreign handle.
    InvalidHandle = 101,
    /// Two threads consumed the same export at once.
    Busy = 102,
    /// The configuration is not valid.
    Config = 103,
    /// A bug in fhirbulk (a caught panic).
    Internal = 104,
    /// Connection refused/reset, DNS, TLS, or a broken transfer.
    Network = 200,
    /// A request or read timed out.
    Timeout = 201,
    /// The server broke the protocol: malformed manifest, wrong content type, bad NDJSON.
    Protocol = 202,
    /// Authorization failed before a request could be made.
    Auth = 203,
    /// HTTP 400.
    BadRequest = 300,
    /// HTTP 401 (OperationOutcome code `login` or `expired`).
    Unauthorized = 301,
    /// HTTP 403.
    Forbidden = 302,
    /// HTTP 404 or 410.
    NotFound = 303,
    /// HTTP 406.
    NotAcceptable = 304,
    /// HTTP 415.
    UnsupportedMediaType = 305,
    /// HTTP 422 (unsupported parameter values).
    Unprocessable = 306,
    /// HTTP 429 after retries ran out.
    Throttled = 307,
    /// HTTP 5xx.
    Server = 308,
    /// Any other HTTP status.
    Http = 309,
}

impl ErrorCode {
    /// The code for an HTTP error status.
    pub fn from_http(status: u16) -> ErrorCode {
        match status {
            400 => ErrorCode::BadRequest,
            401 => ErrorCode::Unauthorized,
            403 => ErrorCode::Forbidden,
            404 | 410 => ErrorCode::NotFound,
            406 => ErrorCode::NotAcceptable,
            415 => ErrorCode::UnsupportedMediaType,
            422 => ErrorCode::Unprocessable,
            429 => ErrorCode::Throttled,
            500..=599 => ErrorCode::Server,
            _ => ErrorCode::Http,
        }
    }

    /// A short stable name (`"not_found"`), used in JSON details and by the bindings.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::InvalidHandle => "invalid_handle",
            ErrorCode::Busy => "busy",
            ErrorCode::Config => "config",
            ErrorCode::Internal => "internal",
            ErrorCode::Network => "network",
            ErrorCode::Timeout => "timeout_error",
            ErrorCode::Protocol => "protocol",
            ErrorCode::Auth => "auth",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NotAcceptable => "not_acceptable",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::Unprocessable => "unprocessable",
            ErrorCode::Throttled => "throttled",
            ErrorCode::Server => "server",
            ErrorCode::Http => "http",
        }
    }
}

/// One `OperationOutcome.issue` as the server sent it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Issue {
    pub severity: String,
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

/// Parse the issues of an OperationOutcome body; empty when the body is not one. Text fields
/// have their control characters escaped ([`escape_controls`]).
pub fn parse_operation_outcome(body: &[u8]) -> Vec<Issue> {
    let body = crate::bom::strip_bom(body);
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    if v.get("resourceType").and_then(|r| r.as_str()) != Some("OperationOutcome") {
        return Vec::new();
    }
    let s = |i: &serde_json::Value, k: &str| {
        i.get(k)
            .and_then(|x| x.as_str())
            .map(|t| escape_controls(t).into_owned())
    };
    v.get("issue")
        .and_then(|i| i.as_array())
        .map(|issues| {
            issues
                .iter()
                .map(|i| Issue {
                    severity: s(i, "severity").unwrap_or_default(),
                    code: s(i, "code").unwrap_or_default(),
                    diagnostics: s(i, "diagnostics"),
                    details: i
                        .get("details")
                        .and_then(|d| d.get("text"))
                        .and_then(|t| t.as_str())
                        .map(|t| escape_controls(t).into_owned()),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Issue codes from the `transient` branch of the FHIR issue-type hierarchy: the request failed,
/// the job may not have.
pub fn is_transient_issue_code(code: &str) -> bool {
    matches!(
        code,
        "transient"
            | "lock-error"
            | "no-store"
            | "exception"
            | "timeout"
            | "incomplete"
            | "throttled"
    )
}

/// An export error: a code, the HTTP status and URL when a response caused it, a message, and
/// the OperationOutcome issues when the server sent some.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Error {
    #[serde(serialize_with = "ser_code")]
    pub code: ErrorCode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// The request URL without its query string (queries may hold secrets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub message: String,
    pub issues: Vec<Issue>,
    /// The OAuth 2.0 `error` code of a failed token request (`invalid_client`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oauth_error: Option<String>,
    /// A failure no retry can change (a TLS refusal: certificate, protocol version): tried
    /// once, never again.
    #[serde(skip)]
    pub(crate) permanent: bool,
}

/// Server text made safe for terminals and logs: control characters (C0 but tab, DEL, C1 —
/// ANSI escape sequences start with ESC or CSI) and the Unicode bidirectional overrides become
/// `\u{..}` escapes. Everything that quotes a server into a message goes through here.
pub fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    fn bad(c: char) -> bool {
        (c.is_control() && c != '\t')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    if !s.chars().any(bad) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if bad(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

fn ser_code<S: serde::Serializer>(c: &ErrorCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_i32(*c as i32)
}

impl Error {
    /// An error with this message; control characters in it (from server text it quotes) are
    /// escaped.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Error {
        let message: String = message.into();
        Error {
            code,
            http_status: None,
            url: None,
            message: match escape_controls(&message) {
                std::borrow::Cow::Borrowed(_) => message,
                std::borrow::Cow::Owned(m) => m,
            },
            issues: Vec::new(),
            oauth_error: None,
            permanent: false,
        }
    }

    pub fn config(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::Config, message)
    }

    pub fn protocol(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::Protocol, message)
    }

    /// Attach the URL a request went to, with its query and userinfo stripped.
    pub fn with_url(mut self, url: &str) -> Error {
        self.url = Some(redact_url(url));
        self
    }

    /// Build the error for an HTTP error response: its status, the URL and the OperationOutcome.
    pub fn from_response(what: &str, status: u16, url: &str, body: &[u8]) -> Error {
        let issues = parse_operation_outcome(body);
        let body = crate::bom::strip_bom(body);
        let code = ErrorCode::from_http(status);
        let mut message = format!("{what} failed: HTTP {status}");
        if let Some(reason) = reqwest::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
        {
            message.push(' ');
            message.push_str(reason);
        }
        if let Some(first) = issues
            .iter()
            .find(|i| i.diagnostics.is_some() || i.details.is_some())
        {
            message.push_str(": ");
            message.push_str(
                first
                    .diagnostics
                    .as_deref()
                    .or(first.details.as_deref())
                    .unwrap_or(""),
            );
        } else if issues.is_empty() && !body.is_empty() && body.len() < 300 {
            if let Ok(text) = std::str::from_utf8(body) {
                let text = text.trim();
                if !text.is_empty() {
                    message.push_str(": ");
                    message.push_str(&escape_controls(text));
                }
            }
        }
        Error {
            code,
            http_status: Some(status),
            url: Some(redact_url(url)),
            message,
            issues,
            oauth_error: None,
            permanent: false,
        }
    }

    /// The error as the JSON detail the C ABI hands out.
    pub fn to_json(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("name".into(), self.code.name().into());
        }
        v.to_string()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(url) = &self.url {
            write!(f, " ({url})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

/// Strip query, fragment and credentials from a URL before it reaches an error or a log.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            u.set_query(None);
            u.set_fragment(None);
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => escape_controls(url.split(['?', '#']).next().unwrap_or("")).into_owned(),
    }
}

/// Map a transport error from reqwest to a typed error.
pub fn from_reqwest(what: &str, url: &str, e: &reqwest::Error) -> Error {
    let code = if e.is_timeout() {
        ErrorCode::Timeout
    } else {
        // Also a body that stopped mid-way (decode, body): the transfer broke.
        ErrorCode::Network
    };
    // reqwest's Display includes the URL with query; describe the source chain instead.
    let mut msg = format!("{what} failed: ");
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut parts = Vec::new();
    let refusal = tls_refusal(e);
    if let Some(why) = refusal {
        parts.push(format!("TLS handshake refused: {why}"));
    } else if e.is_timeout() {
        parts.push("timed out".to_owned());
    } else if e.is_connect() {
        parts.push("could not connect".to_owned());
    }
    while let Some(s) = src {
        let t = s.to_string();
        if !parts.contains(&t) {
            parts.push(t);
        }
        src = s.source();
    }
    if parts.is_empty() {
        parts.push("transport error".into());
    }
    msg.push_str(&parts.join(": "));
    let mut err = Error::new(code, msg).with_url(url);
    err.permanent = refusal.is_some();
    err
}

/// What a TLS refusal among a transport error's causes means, when there is one: the handshake
/// failed in a way that trying again cannot change (the server's certificate, the protocol
/// version, a client certificate the server wants). Other TLS failures (a connection cut
/// mid-handshake, a garbled record) stay transient.
fn tls_refusal(e: &reqwest::Error) -> Option<&'static str> {
    use rustls::{AlertDescription as A, CertificateError as C, Error as T};
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        // rustls' error reaches here wrapped in io::Errors (one in another), whose source()
        // skips the error they wrap: look inside them.
        let mut inner: &(dyn std::error::Error + 'static) = s;
        while let Some(wrapped) = inner
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            inner = wrapped;
        }
        let tls = inner.downcast_ref::<T>();
        if let Some(t) = tls {
            return match t {
                T::InvalidCertificate(C::UnknownIssuer) => Some(
                    "the server's certificate is not issued by a CA this client trusts (the \
                     system's trust store, and ca_bundle when set)",
                ),
                T::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                    Some("the server's certificate is for another host name")
                }
                T::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
                    Some("the server's certificate has expired")
                }
                T::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
                    Some("the server's certificate is not valid yet")
                }
                T::InvalidCertificate(C::Revoked) => Some("the server's certificate is revoked"),
                T::InvalidCertificate(_) => Some("the server's certificate is not acceptable"),
                T::AlertReceived(A::CertificateRequired) => {
                    Some("the server requires a client certificate (client_cert)")
                }
                T::AlertReceived(
                    A::BadCertificate
                    | A::UnknownCA
                    | A::CertificateUnknown
                    | A::CertificateExpired
                    | A::CertificateRevoked
                    | A::UnsupportedCertificate
                    | A::AccessDenied,
                ) => Some("the server refused the client certificate (client_cert)"),
                T::AlertReceived(A::ProtocolVersion) | T::PeerIncompatible(_) => {
                    Some("the server does not speak TLS 1.2 or 1.3 (older versions are never used)")
                }
                T::AlertReceived(A::HandshakeFailure | A::InsufficientSecurity) => {
                    Some("the server and this client share no acceptable TLS parameters")
                }
                T::NoCertificatesPresented | T::UnsupportedNameType => {
                    Some("the server presented no usable certificate")
                }
                _ => None,
            };
        }
        src = s.source();
    }
    None
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error of an operation cut short because the export is stopping (cancelled, or failed
/// elsewhere); never the export's reported error.
pub(crate) fn stopped() -> Error {
    Error::new(ErrorCode::Internal, "stopped")
}
