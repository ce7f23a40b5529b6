//! One file's bytes as the server holds them (its representation, compressed or not), read as
//! one stream across as many HTTP responses as it takes.
//!
//! What a server or proxy may do, and what happens then:
//! - the transfer breaks, stalls, or trickles below `min_bytes_per_s` over `stall_window_ms`:
//!   after a wait from the file's retry budget, the rest is asked for with
//!   `Range: bytes=<offset>-` (when the server advertised `Accept-Ranges: bytes`) and
//!   `If-Range` with the first answer's strong `ETag` or `Last-Modified`, so that a file that
//!   changed in between is never spliced;
//! - a `206` that covers less than asked (servers and proxies that answer ranges in pieces):
//!   the next piece is asked for from where it ended, until `Content-Range`'s total;
//! - a `206` that does not match (another start, another total, another ETag or encoding), a
//!   `200` to a resume (If-Range said the file changed, or ranges are not honoured), or no
//!   ranges at all: the file is read again from its first byte ([`Interrupt::Restart`]); the
//!   layer above skips the lines it delivered;
//! - a body without length framing (HTTP/1.x without `Content-Length` or chunking) that ends:
//!   with ranges, one request from the end confirms it (`416`) or continues;
//! - `404`/`410`: the URL expired; the manifest is fetched again for this file's new URL
//!   (matched by identity, see `files`), and the download continues there.
//!
//! The stream is read through decoders (`decode`): its interruptions travel inside
//! `io::Error`s ([`interrupt_of`]) so they are never taken for corrupt compression.

use crate::error::{from_reqwest, stopped, Error, ErrorCode, Result};
use crate::http::decode::{self, Coding};
use crate::http::retry::Budget;
use crate::http::{content_type, FileClient, Http, HttpResponse};
use crate::manifest::Kind;
use crate::ndjson::TypeName;
use crate::secret::Secret;
use reqwest::header::{
    HeaderMap, ACCEPT, ACCEPT_ENCODING, ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, ETAG,
    IF_RANGE, LAST_MODIFIED, RANGE, TRANSFER_ENCODING,
};
use std::io::{self, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A file to download.
pub(crate) struct FileJob {
    pub index: u32,
    pub kind: Kind,
    pub url: String,
    pub resource_type: Option<Arc<TypeName>>,
    pub send_token: bool,
    /// Lines the caller already has (from a checkpoint): not sent again.
    pub skip_lines: u64,
    /// The records of line `skip_lines + 1`'s attachments the caller already has (see
    /// `checkpoint::InProgress::attachments`).
    pub skip_attachments: Option<String>,
}

/// Fresh URLs for files whose link expired: the manifest fetched again, the file found in it
/// by identity (see `files`).
pub(crate) trait FreshUrls {
    /// The new URL of file `index`, whose URL `failed` answered 404/410, or the error to fail
    /// with (`cause` when there is none). Never `failed` itself.
    fn fresh_url(&self, index: u32, failed: &str, cause: Error) -> Result<String>;
}

/// How often a download waiting for the server looks whether the export was stopped.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// Times a file's URL may be refreshed from the manifest.
const MAX_REFRESHES: u32 = 3;

pub(crate) enum Waited {
    TimedOut,
    Stopped,
}

/// Run `fut` on the thread's runtime for at most `timeout`, giving up early when the export
/// stops (a cancel or a failure elsewhere ends a stalled download at once, not after
/// `read_timeout_ms`).
pub(crate) fn wait_on<F: std::future::Future>(
    http: &Http,
    rt: &tokio::runtime::Runtime,
    timeout: Duration,
    fut: F,
) -> std::result::Result<F::Output, Waited> {
    let deadline = Instant::now() + timeout;
    rt.block_on(async {
        let mut fut = std::pin::pin!(fut);
        loop {
            if http.stopping() {
                return Err(Waited::Stopped);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Waited::TimedOut);
            }
            if let Ok(v) = tokio::time::timeout(left.min(STOP_CHECK), fut.as_mut()).await {
                return Ok(v);
            }
        }
    })
}

/// A file response of a [`FileClient`].
pub(crate) struct FileResponse<'a> {
    http: &'a Http,
    rt: &'a tokio::runtime::Runtime,
    resp: reqwest::Response,
}

impl<'a> FileResponse<'a> {
    pub(crate) fn new(
        http: &'a Http,
        rt: &'a tokio::runtime::Runtime,
        resp: reqwest::Response,
    ) -> FileResponse<'a> {
        FileResponse { http, rt, resp }
    }
    pub(crate) fn into_inner(self) -> reqwest::Response {
        self.resp
    }
}

impl HttpResponse for FileResponse<'_> {
    fn status_code(&self) -> u16 {
        self.resp.status().as_u16()
    }
    fn header_map(&self) -> &HeaderMap {
        self.resp.headers()
    }
    fn error_body(mut self, limit: u64) -> Vec<u8> {
        // An error body is read for its OperationOutcome within read_timeout_ms in all; one
        // that breaks off or never ends is used as far as it came.
        let mut body = Vec::new();
        let deadline = Instant::now() + Duration::from_millis(self.http.config.read_timeout_ms);
        while (body.len() as u64) < limit {
            let left = deadline.saturating_duration_since(Instant::now());
            match wait_on(self.http, self.rt, left, self.resp.chunk()) {
                Ok(Ok(Some(b))) => body.extend_from_slice(&b),
                _ => break,
            }
        }
        body.truncate(limit as usize);
        let codings = decode::codings(self.resp.headers()).unwrap_or_default();
        if codings.is_empty() {
            return body;
        }
        let mut out = Vec::new();
        let _ = decode::reader(&codings, &body[..])
            .take(limit)
            .read_to_end(&mut out);
        out
    }
}

fn acceptable_file_type(ct: &str) -> bool {
    ct.is_empty()
        || ct.contains("ndjson")
        || matches!(
            ct,
            "text/plain"
                | "application/octet-stream"
                | "application/json"
                | "application/fhir+json"
        )
}

/// GET a file under the request and retry policies (token, trusted origins, redirects, 401
/// refresh, retryable statuses), from `range` (offset and the If-Range validator) when set.
fn send_file<'a>(
    http: &'a Http,
    fc: &'a FileClient,
    url: &str,
    use_token: bool,
    range: Option<(u64, Option<&str>)>,
) -> Result<FileResponse<'a>> {
    let what = "file download";
    let timeout = Duration::from_millis(http.config.read_timeout_ms);
    let mut one = |u: &str, token: Option<&Secret>| {
        let mut rb = fc
            .client
            .get(u)
            .header(ACCEPT, "application/fhir+ndjson")
            .header(ACCEPT_ENCODING, "gzip, deflate");
        if let Some((from, validator)) = range {
            rb = rb.header(RANGE, format!("bytes={from}-"));
            if let Some(v) = validator {
                rb = rb.header(IF_RANGE, v);
            }
        }
        rb = rb.headers(http.auth_headers(u, token)?);
        match wait_on(http, &fc.rt, timeout, rb.send()) {
            Err(Waited::TimedOut) => Err(Error::new(
                ErrorCode::Timeout,
                format!(
                    "{what} failed: no response within read_timeout_ms ({} ms); raise it for a slow server",
                    http.config.read_timeout_ms
                ),
            )
            .with_url(u)),
            Err(Waited::Stopped) => Err(stopped()),
            Ok(Err(e)) => Err(from_reqwest(what, u, &e)),
            Ok(Ok(resp)) => Ok(FileResponse {
                http,
                rt: &fc.rt,
                resp,
            }),
        }
    };
    let ranged = range.is_some();
    http.retrying(
        what,
        url,
        &|s| s == 200 || s == 206 || (ranged && s == 416),
        true,
        &mut || http.send_with(what, url, use_token, &mut one),
    )
}

/// Why reading stopped short of the end.
#[derive(Debug)]
pub(crate) enum Interrupt {
    /// Read the file again from its first byte: it cannot be resumed (no ranges, a changed
    /// file, a range answer that does not fit). Lines already delivered are to be skipped.
    Restart,
    /// Give up on the file: the export fails with this.
    Fatal(Error),
}

/// An [`Interrupt`] inside an `io::Error`, through the decoders.
#[derive(Debug)]
struct Carried(Interrupt);

impl std::fmt::Display for Carried {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Interrupt::Restart => f.write_str("the file is read again from its start"),
            Interrupt::Fatal(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Carried {}

/// The interruption a read error of a [`Remote`] carries (Err: an error of a decoder).
pub(crate) fn interrupt_of(e: io::Error) -> std::result::Result<Interrupt, io::Error> {
    if !e.get_ref().is_some_and(|i| i.is::<Carried>()) {
        return Err(e);
    }
    let inner = e.into_inner().expect("checked above");
    match inner.downcast::<Carried>() {
        Ok(c) => Ok(c.0),
        Err(other) => Err(io::Error::other(other)),
    }
}

/// The representation being read, as its first answer described it.
struct Rep {
    codings: Vec<Coding>,
    /// Its length: `Content-Length` of a 200, the total of a `Content-Range`.
    total: Option<u64>,
    /// `Accept-Ranges: bytes` (or a 206 came).
    ranges: bool,
    /// For `If-Range`: a strong ETag, else `Last-Modified`.
    validator: Option<String>,
    etag: Option<String>,
    /// HTTP/1.x without `Content-Length` or chunking: the end of the body is the end of the
    /// connection, which proves nothing.
    close_delimited: bool,
}

/// `Content-Range: bytes a-b/total` (total `None` for `*`).
fn content_range(h: &HeaderMap) -> Option<(u64, u64, Option<u64>)> {
    let v = h.get(CONTENT_RANGE)?.to_str().ok()?.trim();
    let (range, total) = v.strip_prefix("bytes ")?.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b) = (a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?);
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse::<u64>().ok()?),
    };
    (b >= a && total.map_or(true, |t| b < t)).then_some((a, b, total))
}

/// The length a 416 names: `Content-Range: bytes */N`.
fn unsatisfied_total(h: &HeaderMap) -> Option<u64> {
    let v = h.get(CONTENT_RANGE)?.to_str().ok()?.trim();
    v.strip_prefix("bytes */")?.trim().parse().ok()
}

fn header_str(h: &HeaderMap, name: reqwest::header::HeaderName) -> Option<String> {
    h.get(name)?.to_str().ok().map(|s| s.trim().to_owned())
}

/// Too little data over a window of time spent waiting for it (time blocked on the consumer
/// does not count).
struct StallClock {
    window: Duration,
    min_bytes: u64,
    waited: Duration,
    bytes: u64,
}

impl StallClock {
    fn new(c: &crate::config::Config) -> StallClock {
        let window = Duration::from_millis(c.stall_window_ms);
        StallClock {
            window,
            min_bytes: c.min_bytes_per_s.saturating_mul(c.stall_window_ms) / 1000,
            waited: Duration::ZERO,
            bytes: 0,
        }
    }
    fn enabled(&self) -> bool {
        self.min_bytes > 0 && !self.window.is_zero()
    }
    /// Wait left in this window.
    fn left(&self) -> Duration {
        if self.enabled() {
            self.window.saturating_sub(self.waited) + Duration::from_millis(1)
        } else {
            Duration::MAX
        }
    }
    fn reset(&mut self) {
        self.waited = Duration::ZERO;
        self.bytes = 0;
    }
    /// Count a wait and what it brought; Some(bytes of the window) when the window closed below
    /// the minimum.
    fn record(&mut self, waited: Duration, bytes: u64) -> Option<u64> {
        if !self.enabled() {
            return None;
        }
        self.waited += waited;
        self.bytes += bytes;
        if self.waited < self.window {
            return None;
        }
        let got = self.bytes;
        self.reset();
        (got < self.min_bytes).then_some(got)
    }
}

/// One file's bytes across responses (see the module documentation).
pub(crate) struct Remote<'a> {
    http: &'a Http,
    fresh: &'a dyn FreshUrls,
    fc: &'a FileClient,
    job: &'a FileJob,
    url: String,
    budget: Budget,
    refreshes: u32,
    rep: Option<Rep>,
    resp: Option<FileResponse<'a>>,
    /// End (exclusive) of what `resp` covers, when its framing says.
    resp_end: Option<u64>,
    /// A full answer that came to a resume: the restart begins with it.
    pending: Option<FileResponse<'a>>,
    /// Why `resp` was given up while data still came (a stall): resumed at the next read.
    broken: Option<Error>,
    /// Bytes of the representation read so far.
    offset: u64,
    /// A close-delimited end was checked with a range request.
    end_checked: bool,
    ended: bool,
    stall: StallClock,
    cur: bytes::Bytes,
    /// A shown line number for messages (the layer above keeps it current).
    pub(crate) line_hint: u64,
}

impl<'a> Remote<'a> {
    pub(crate) fn new(
        http: &'a Http,
        fresh: &'a dyn FreshUrls,
        fc: &'a FileClient,
        job: &'a FileJob,
    ) -> Remote<'a> {
        Remote {
            http,
            fresh,
            fc,
            job,
            url: job.url.clone(),
            budget: http.policy.budget(),
            refreshes: 0,
            rep: None,
            resp: None,
            resp_end: None,
            pending: None,
            broken: None,
            offset: 0,
            end_checked: false,
            ended: false,
            stall: StallClock::new(&http.config),
            cur: bytes::Bytes::new(),
            line_hint: 1,
        }
    }

    /// The download client of this thread.
    pub(crate) fn file_client(&self) -> &'a FileClient {
        self.fc
    }

    /// The URL in use (it changes when an expired one is refreshed).
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Start reading from the first byte (again): the codings of the representation.
    pub(crate) fn open(&mut self) -> std::result::Result<Vec<Coding>, Interrupt> {
        self.offset = 0;
        self.ended = false;
        self.end_checked = false;
        self.broken = None;
        self.cur = bytes::Bytes::new();
        self.stall.reset();
        self.resp = None;
        let resp = match self.pending.take() {
            Some(r) => r,
            None => self.request(None)?,
        };
        let h = resp.header_map();
        let ct = content_type(h);
        if !acceptable_file_type(&ct) {
            return Err(self.fatal(format!(
                "file download got Content-Type {:?}; expected application/fhir+ndjson",
                crate::error::escape_controls(&ct)
            )));
        }
        let codings = decode::codings(h)
            .map_err(|e| self.fatal(format!("file download: the response has a {e}")))?;
        let length = header_str(h, CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
        let (total, resp_end) = match resp.status_code() {
            206 => match content_range(h) {
                // A piece from the start is a start: the rest is asked for when it ends.
                Some((0, b, total)) => (total, Some(b + 1)),
                _ => {
                    return Err(self.fatal(
                        "file download answered 206 with a Content-Range that does not start at byte 0 to a request without Range".into(),
                    ))
                }
            },
            _ => (length, length),
        };
        let etag = header_str(h, ETAG);
        let strong = etag.clone().filter(|e| !e.starts_with("W/"));
        let chunked = header_str(h, TRANSFER_ENCODING)
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let http1 = resp.resp.version() < reqwest::Version::HTTP_2;
        self.rep = Some(Rep {
            codings: codings.clone(),
            total,
            ranges: resp.status_code() == 206
                || header_str(h, ACCEPT_RANGES).is_some_and(|v| v.eq_ignore_ascii_case("bytes")),
            validator: strong.or_else(|| header_str(h, LAST_MODIFIED)),
            etag,
            close_delimited: http1 && length.is_none() && !chunked,
        });
        self.resp_end = resp_end;
        self.resp = Some(resp);
        Ok(codings)
    }

    fn fatal(&self, msg: String) -> Interrupt {
        Interrupt::Fatal(Error::protocol(msg).with_url(&self.url))
    }

    /// Wait per the file's retry budget after `cause`; Restart to read the file again from its
    /// start, or Fatal with `cause` when the budget is spent. For failures the layer above
    /// finds (a corrupt compressed stream).
    pub(crate) fn failed(&mut self, cause: Error) -> Interrupt {
        self.resp = None;
        match self.budget.wait(self.http.waiter(), cause, None) {
            Ok(()) => Interrupt::Restart,
            Err(e) => Interrupt::Fatal(e),
        }
    }

    /// GET the file (from `range`), refreshing an expired URL.
    fn request(&mut self, range: Option<u64>) -> std::result::Result<FileResponse<'a>, Interrupt> {
        loop {
            let validator = self.rep.as_ref().and_then(|r| r.validator.clone());
            let range = range.map(|o| (o, validator.as_deref()));
            match send_file(self.http, self.fc, &self.url, self.job.send_token, range) {
                Ok(r) => return Ok(r),
                Err(e) if e.code == ErrorCode::NotFound => {
                    self.refreshes += 1;
                    if self.refreshes > MAX_REFRESHES {
                        return Err(Interrupt::Fatal(e));
                    }
                    self.url = self
                        .fresh
                        .fresh_url(self.job.index, &self.url, e)
                        .map_err(Interrupt::Fatal)?;
                }
                Err(e) => return Err(Interrupt::Fatal(e)),
            }
        }
    }

    /// The transfer broke with `cause`: wait (retry budget), then continue.
    fn recover(&mut self, cause: Error) -> std::result::Result<(), Interrupt> {
        self.resp = None;
        self.budget
            .wait(self.http.waiter(), cause, None)
            .map_err(Interrupt::Fatal)?;
        self.stall.reset();
        self.resume()?;
        // Continued where it broke (a restart from the first byte is the caller's event).
        self.http.waiter().event(
            "file_resumed",
            crate::events::fields! {
                "index" => self.job.index,
                "url" => crate::error::redact_url(&self.url),
                "from_byte" => self.offset,
            },
        );
        Ok(())
    }

    /// Ask for the rest from `offset`: a fitting 206 continues the stream; anything else
    /// restarts it.
    fn resume(&mut self) -> std::result::Result<(), Interrupt> {
        let Some(rep) = &self.rep else {
            return Err(Interrupt::Restart);
        };
        if self.offset == 0 || !rep.ranges {
            return Err(Interrupt::Restart);
        }
        let resp = self.request(Some(self.offset))?;
        let rep = self.rep.as_mut().expect("set by open");
        let h = resp.header_map();
        match resp.status_code() {
            206 => {
                let fits = content_range(h).filter(|&(a, _, total)| {
                    a == self.offset
                        && (rep.total.is_none() || total.is_none() || rep.total == total)
                        && decode::codings(h).is_ok_and(|c| c == rep.codings)
                        && match (&rep.etag, header_str(h, ETAG)) {
                            (Some(a), Some(b)) => *a == b,
                            _ => true,
                        }
                });
                let Some((_, b, total)) = fits else {
                    return Err(Interrupt::Restart);
                };
                rep.total = rep.total.or(total);
                self.resp_end = Some(b + 1);
                self.resp = Some(resp);
                Ok(())
            }
            200 => {
                // If-Range said the file changed, or the server ignores ranges after all.
                self.pending = Some(resp);
                Err(Interrupt::Restart)
            }
            _ => {
                // 416: nothing from this offset. The end only when the length says so (the
                // known one, or the `bytes */N` of this answer); else the file is read again.
                let total = rep.total.or_else(|| unsatisfied_total(h));
                if total == Some(self.offset) {
                    self.ended = true;
                    Ok(())
                } else {
                    Err(Interrupt::Restart)
                }
            }
        }
    }

    /// The current response ended cleanly (by its framing).
    fn body_ended(&mut self) -> std::result::Result<(), Interrupt> {
        self.resp = None;
        if let Some(end) = self.resp_end {
            if self.offset < end {
                let e = Error::new(
                    ErrorCode::Network,
                    format!(
                        "file download broke at line {}: the body ended after byte {} of {end}",
                        self.line_hint, self.offset
                    ),
                )
                .with_url(&self.url);
                return self.recover(e);
            }
        }
        let rep = self.rep.as_ref().expect("set by open");
        if rep.total.is_some_and(|t| self.offset < t) {
            // A 206 that covered less than the rest: ask for the next piece.
            return self.resume();
        }
        if rep.close_delimited && rep.ranges && !self.end_checked && self.offset > 0 {
            // The connection closed; was that the end? One range request from here tells.
            self.end_checked = true;
            return self.resume();
        }
        self.ended = true;
        Ok(())
    }

    /// Make `cur` hold bytes; false at the end of the file.
    fn fill(&mut self) -> std::result::Result<bool, Interrupt> {
        let read_timeout = Duration::from_millis(self.http.config.read_timeout_ms);
        loop {
            if !self.cur.is_empty() {
                return Ok(true);
            }
            if self.ended {
                return Ok(false);
            }
            if let Some(cause) = self.broken.take() {
                self.recover(cause)?;
                continue;
            }
            let (http, fc, limit) = (self.http, self.fc, read_timeout.min(self.stall.left()));
            let Some(resp) = self.resp.as_mut() else {
                self.resume()?;
                continue;
            };
            let t0 = Instant::now();
            let got = wait_on(http, &fc.rt, limit, resp.resp.chunk());
            let waited = t0.elapsed();
            let n = match &got {
                Ok(Ok(Some(b))) => b.len() as u64,
                _ => 0,
            };
            let stalled = self.stall.record(waited, n);
            match got {
                Err(Waited::Stopped) => return Err(Interrupt::Fatal(stopped())),
                Ok(Ok(Some(b))) => {
                    self.cur = b;
                    if let Some(got) = stalled {
                        // Keep what came; resume after it.
                        self.resp = None;
                        self.broken = Some(self.stall_error(got));
                    }
                    return Ok(true);
                }
                Ok(Ok(None)) => self.body_ended()?,
                Ok(Err(e)) => {
                    let e = from_reqwest("file download", &self.url, &e);
                    let e = Error::new(
                        e.code,
                        format!(
                            "{} (at line {})",
                            e.message
                                .replacen("file download failed", "file download broke", 1),
                            self.line_hint
                        ),
                    )
                    .with_url(&self.url);
                    self.recover(e)?;
                }
                Err(Waited::TimedOut) => {
                    if let Some(got) = stalled {
                        let e = self.stall_error(got);
                        self.recover(e)?;
                    } else if waited >= read_timeout {
                        let e = Error::new(
                            ErrorCode::Timeout,
                            format!(
                                "file download stalled at line {}: no data within read_timeout_ms ({} ms)",
                                self.line_hint, self.http.config.read_timeout_ms
                            ),
                        )
                        .with_url(&self.url);
                        self.recover(e)?;
                    }
                    // Else a stall window closed with enough data: wait on.
                }
            }
        }
    }

    fn stall_error(&self, got: u64) -> Error {
        Error::new(
            ErrorCode::Timeout,
            format!(
                "file download stalled at line {}: {got} bytes in {} ms, below min_bytes_per_s ({})",
                self.line_hint, self.http.config.stall_window_ms, self.http.config.min_bytes_per_s
            ),
        )
        .with_url(&self.url)
    }
}

impl Read for Remote<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self.fill() {
            Ok(true) => {
                let n = out.len().min(self.cur.len());
                out[..n].copy_from_slice(&self.cur.split_to(n));
                self.offset += n as u64;
                Ok(n)
            }
            Ok(false) => Ok(0),
            Err(i) => Err(io::Error::other(Carried(i))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn content_ranges() {
        let mut h = HeaderMap::new();
        for (v, want) in [
            ("bytes 10-19/100", Some((10, 19, Some(100)))),
            ("bytes 0-0/*", Some((0, 0, None))),
            ("bytes 10-9/100", None),
            ("bytes 10-100/100", None),
            ("bytes */100", None),
            ("items 1-2/3", None),
        ] {
            h.insert(CONTENT_RANGE, HeaderValue::from_static(v));
            assert_eq!(content_range(&h), want, "{v}");
        }
        h.insert(CONTENT_RANGE, HeaderValue::from_static("bytes */4096"));
        assert_eq!(unsatisfied_total(&h), Some(4096));
    }
}
