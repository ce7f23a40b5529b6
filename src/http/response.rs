//! Responses: the trait the request and retry policies work on (blocking or async), the media
//! type, and reading a control body (status, manifest, token, discovery, error answers) decoded
//! and within a byte cap.

use super::decode;
use crate::bom::BOM;
use crate::error::{from_reqwest, Error, ErrorCode, Result};
use reqwest::blocking::Response;
use reqwest::header::{HeaderMap, CONTENT_TYPE};
use std::io::Read;

/// Caps of the bodies the engine reads whole: a server sending without end gets an error after
/// this many bytes (after decoding), never unbounded memory.
pub(crate) const STATUS_BODY_LIMIT: u64 = 64 << 20;
/// Token endpoint answers.
pub(crate) const TOKEN_BODY_LIMIT: u64 = 1 << 20;
/// `.well-known/smart-configuration` and `metadata` (CapabilityStatements can be large).
pub(crate) const DISCOVERY_BODY_LIMIT: u64 = 16 << 20;
/// Error answers: read this far for the OperationOutcome, the rest is ignored.
pub(crate) const ERROR_BODY_LIMIT: u64 = 1 << 20;

/// What the request policy needs of a response, blocking or async.
pub(crate) trait HttpResponse {
    fn status_code(&self) -> u16;
    fn header_map(&self) -> &HeaderMap;
    /// The body of an error answer, at most `limit` bytes (what arrived when it breaks off).
    fn error_body(self, limit: u64) -> Vec<u8>;
}

impl HttpResponse for Response {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
    fn header_map(&self) -> &HeaderMap {
        self.headers()
    }
    fn error_body(self, limit: u64) -> Vec<u8> {
        let codings = decode::codings(self.headers()).unwrap_or_default();
        let mut body = Vec::new();
        let _ = decode::reader(&codings, self)
            .take(limit)
            .read_to_end(&mut body);
        body
    }
}

/// The media type of a response (`type/subtype`, lower-cased, without parameters).
pub(crate) fn content_type(h: &HeaderMap) -> String {
    let Some(v) = h.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return String::new();
    };
    match v.trim().parse::<mime::Mime>() {
        Ok(m) => m.essence_str().to_ascii_lowercase(),
        // Not a media type: what comes before its parameters, for the error it causes.
        Err(_) => v
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    }
}

/// Read a whole control body: decoded per its `Content-Encoding`, a leading UTF-8 BOM removed,
/// and an error when it is longer than `limit` bytes. Transport failures are network errors
/// (timeouts: timeout errors), a corrupt compressed body a protocol error.
pub(crate) fn read_capped(what: &str, url: &str, resp: Response, limit: u64) -> Result<Vec<u8>> {
    let codings = decode::codings(resp.headers())
        .map_err(|e| Error::protocol(format!("{what}: the response has a {e}")).with_url(url))?;
    let mut body = Vec::new();
    let res = decode::reader(&codings, Tagged(resp))
        .take(limit + 1)
        .read_to_end(&mut body);
    if let Err(e) = res {
        return Err(match transport_error(&e) {
            Some(r) => from_reqwest(what, url, r),
            None if e.get_ref().is_some_and(|i| i.is::<TransportFailed>()) => Error::new(
                ErrorCode::Network,
                format!("{what} failed while reading the body: {e}"),
            )
            .with_url(url),
            None => Error::protocol(format!(
                "{what}: the {} body could not be decoded: {e}",
                decode::describe(&codings)
            ))
            .with_url(url),
        });
    }
    if body.len() as u64 > limit {
        return Err(Error::protocol(format!(
            "{what}: the response body is larger than {limit} bytes; fhirbulk stops reading there (a server sending without end?)"
        ))
        .with_url(url));
    }
    if body.starts_with(BOM) {
        body.drain(..BOM.len());
    }
    Ok(body)
}

/// Marks errors of the transport underneath a decoder (see [`Tagged`]).
#[derive(Debug)]
struct TransportFailed(String);

impl std::fmt::Display for TransportFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TransportFailed {}

/// A blocking response whose read errors keep the reqwest error findable (decoders pass it
/// through), so transport failures are not taken for corrupt compression.
struct Tagged(Response);

impl Read for Tagged {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(out).map_err(|e| {
            if transport_error(&e).is_some() {
                e
            } else {
                std::io::Error::new(e.kind(), TransportFailed(e.to_string()))
            }
        })
    }
}

/// The reqwest error inside an I/O error from a blocking body.
fn transport_error(e: &std::io::Error) -> Option<&reqwest::Error> {
    e.get_ref().and_then(|i| i.downcast_ref::<reqwest::Error>())
}
