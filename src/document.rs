//! Fetching one document an attachment links (config `attachments`): a GET under the export's
//! request and retry policies (the token only to trusted origins, redirects followed by the
//! policy, 429/5xx and broken transfers retried within the budget), its body read whole within
//! a byte cap and a time bound per read, and a FHIR `Binary` answer unwrapped.
//!
//! A document is small next to an export's files, and it is held whole anyway (it goes into a
//! record, inline or as an attachment record), so a broken transfer is fetched again from the
//! start rather than resumed with ranges.

use crate::error::{from_reqwest, stopped, Error, ErrorCode};
use crate::http::decode;
use crate::http::{content_type, FileClient, Http, HttpResponse};
use crate::remote::{wait_on, FileResponse, Waited};
use crate::secret::Secret;
use base64::Engine as _;
use reqwest::header::{ACCEPT, ACCEPT_ENCODING, CONTENT_LENGTH, TRANSFER_ENCODING};
use std::io::Read;
use std::time::Duration;

const WHAT: &str = "attachment download";

/// A document as fetched.
pub(crate) struct Fetched {
    pub(crate) bytes: Vec<u8>,
    /// The response's media type (of the `Binary`'s `contentType` when it came as one).
    pub(crate) content_type: String,
}

/// Why a document could not be had, for its error record: the OperationOutcome issue code and
/// the error.
pub(crate) struct Failed {
    pub(crate) code: &'static str,
    pub(crate) error: Box<Error>,
}

impl Failed {
    fn new(code: &'static str, error: Error) -> Failed {
        Failed {
            code,
            error: Box::new(error),
        }
    }
}

fn is_json(media: &str) -> bool {
    media == "application/fhir+json" || media == "application/json"
}

/// The issue code of an HTTP or transport failure.
fn issue_code(e: &Error) -> &'static str {
    match e.http_status {
        Some(404 | 410) => "not-found",
        Some(401 | 403) => "forbidden",
        Some(429) => "throttled",
        Some(_) => "exception",
        None if e.code == ErrorCode::Timeout => "timeout",
        None if e.code == ErrorCode::Protocol => "security",
        None => "exception",
    }
}

/// GET `url` (absolute http(s)) with `Accept: accept`; the document, at most `cap` bytes.
/// `checked`: the attachment declares a size or hash that the caller checks, so a body
/// without length framing can be taken (it is checked after).
pub(crate) fn fetch(
    http: &Http,
    fc: &FileClient,
    url: &str,
    accept: &str,
    cap: u64,
    checked: bool,
) -> std::result::Result<Fetched, Failed> {
    let mut budget = http.policy.budget();
    loop {
        if http.stopping() {
            return Err(Failed::new("exception", stopped()));
        }
        match attempt(http, fc, url, accept, cap, checked) {
            Ok(f) => return Ok(f),
            Err(Try::Fail(f)) => return Err(f),
            Err(Try::Again(e)) => {
                // A transfer that broke or stalled: again from the start, within the budget.
                if let Err(e) = budget.wait(http.waiter(), *e, None) {
                    let code = issue_code(&e);
                    return Err(Failed::new(code, e));
                }
            }
        }
    }
}

enum Try {
    Fail(Failed),
    Again(Box<Error>),
}

fn attempt(
    http: &Http,
    fc: &FileClient,
    url: &str,
    accept: &str,
    cap: u64,
    checked: bool,
) -> std::result::Result<Fetched, Try> {
    let timeout = Duration::from_millis(http.config.read_timeout_ms);
    let mut one = |u: &str, token: Option<&Secret>| {
        let rb = fc
            .client
            .get(u)
            .header(ACCEPT, accept)
            .header(ACCEPT_ENCODING, "gzip, deflate")
            .headers(http.auth_headers(u, token)?);
        match wait_on(http, &fc.rt, timeout, rb.send()) {
            Err(Waited::TimedOut) => Err(Error::new(
                ErrorCode::Timeout,
                format!(
                    "{WHAT} failed: no response within read_timeout_ms ({} ms)",
                    http.config.read_timeout_ms
                ),
            )
            .with_url(u)),
            Err(Waited::Stopped) => Err(stopped()),
            Ok(Err(e)) => Err(from_reqwest(WHAT, u, &e)),
            Ok(Ok(resp)) => Ok(FileResponse::new(http, &fc.rt, resp)),
        }
    };
    let resp = http
        .retrying(WHAT, url, &|s| s == 200, true, &mut || {
            http.send_with(WHAT, url, true, &mut one)
        })
        .map_err(|e| Try::Fail(Failed::new(issue_code(&e), e)))?;
    let h = resp.header_map().clone();
    let media = content_type(&h);
    let codings = decode::codings(&h).map_err(|e| {
        Try::Fail(Failed::new(
            "not-supported",
            Error::protocol(format!("{WHAT}: the response has a {e}")).with_url(url),
        ))
    })?;
    // A Binary resource carries the document in base64: a third more bytes, and the JSON.
    let raw_cap = if is_json(&media) {
        cap.saturating_mul(4) / 3 + (64 << 10)
    } else {
        cap
    };
    let too_large = |n: String| {
        Try::Fail(Failed::new(
            "too-costly",
            Error::protocol(format!(
                "{WHAT}: the document is larger than attachment_max_bytes ({cap} bytes){n}"
            ))
            .with_url(url),
        ))
    };
    let length = h
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if length.is_some_and(|n| codings.is_empty() && n > raw_cap) {
        return Err(too_large(format!(
            ": Content-Length is {}",
            length.unwrap_or(0)
        )));
    }
    let chunked = h
        .get(TRANSFER_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let mut resp = resp.into_inner();
    let http1 = resp.version() < reqwest::Version::HTTP_2;
    let mut body: Vec<u8> = Vec::with_capacity(length.unwrap_or(0).min(raw_cap) as usize);
    loop {
        match wait_on(http, &fc.rt, timeout, resp.chunk()) {
            Err(Waited::Stopped) => return Err(Try::Fail(Failed::new("exception", stopped()))),
            Err(Waited::TimedOut) => {
                return Err(Try::Again(Box::new(
                    Error::new(
                        ErrorCode::Timeout,
                        format!(
                            "{WHAT} stalled: nothing received for read_timeout_ms ({} ms) after {} bytes",
                            http.config.read_timeout_ms,
                            body.len()
                        ),
                    )
                    .with_url(url),
                )))
            }
            Ok(Err(e)) => return Err(Try::Again(Box::new(from_reqwest(WHAT, url, &e)))),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(b))) => {
                if (body.len() + b.len()) as u64 > raw_cap {
                    return Err(too_large(String::new()));
                }
                body.extend_from_slice(&b);
            }
        }
    }
    if let Some(n) = length {
        if body.len() as u64 != n {
            return Err(Try::Again(Box::new(
                Error::new(
                    ErrorCode::Network,
                    format!(
                        "{WHAT} broke: the body ended after {} of {n} bytes",
                        body.len()
                    ),
                )
                .with_url(url),
            )));
        }
    } else if http1 && !chunked && !checked {
        // The end of the connection is the end of the body: nothing says it was complete.
        return Err(Try::Fail(Failed::new(
            "incomplete",
            Error::protocol(format!(
                "{WHAT}: the response has neither Content-Length nor chunked framing and the \
                 attachment declares no size or hash, so a cut-short body cannot be told from a \
                 complete one"
            ))
            .with_url(url),
        )));
    }
    if !codings.is_empty() {
        let mut out = Vec::new();
        let read = decode::reader(&codings, &body[..])
            .take(raw_cap + 1)
            .read_to_end(&mut out);
        if let Err(e) = read {
            return Err(Try::Again(Box::new(
                Error::protocol(format!(
                    "{WHAT} could not be decoded ({}): {e}",
                    decode::describe(&codings)
                ))
                .with_url(url),
            )));
        }
        if out.len() as u64 > raw_cap {
            return Err(too_large(String::new()));
        }
        body = out;
    }
    if is_json(&media) {
        if let Some(f) = unwrap_binary(&body, url, cap).map_err(Try::Fail)? {
            return Ok(f);
        }
    }
    if body.len() as u64 > cap {
        return Err(too_large(String::new()));
    }
    Ok(Fetched {
        bytes: body,
        content_type: media,
    })
}

/// A FHIR `Binary` resource's document (`data`, base64); None when the JSON is not a Binary
/// (a JSON document).
fn unwrap_binary(body: &[u8], url: &str, cap: u64) -> std::result::Result<Option<Fetched>, Failed> {
    #[derive(serde::Deserialize)]
    struct Binary {
        #[serde(rename = "resourceType")]
        resource_type: Option<String>,
        #[serde(rename = "contentType")]
        content_type: Option<String>,
        data: Option<String>,
    }
    let Ok(b) = serde_json::from_slice::<Binary>(crate::bom::strip_bom(body)) else {
        return Ok(None);
    };
    if b.resource_type.as_deref() != Some("Binary") {
        return Ok(None);
    }
    let Some(data) = b.data else {
        return Err(Failed::new(
            "incomplete",
            Error::protocol(format!(
                "{WHAT}: the server answered a Binary resource without data"
            ))
            .with_url(url),
        ));
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| {
            Failed::new(
                "structure",
                Error::protocol(format!(
                    "{WHAT}: the Binary resource's data is not base64: {e}"
                ))
                .with_url(url),
            )
        })?;
    if bytes.len() as u64 > cap {
        return Err(Failed::new(
            "too-costly",
            Error::protocol(format!(
                "{WHAT}: the document is larger than attachment_max_bytes ({cap} bytes)"
            ))
            .with_url(url),
        ));
    }
    Ok(Some(Fetched {
        bytes,
        content_type: b
            .content_type
            .map(|c| {
                c.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default(),
    }))
}
