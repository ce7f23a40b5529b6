//! Downloading one file: stream it, split it into chunks of complete lines, and survive what
//! networks do — a transfer that breaks resumes with `Range` when the server supports byte
//! ranges, else the file is fetched again and the lines already sent are skipped; an expired
//! file URL (404/410) is refreshed from the manifest. A line is sent once, whatever happens.

use crate::auth::Secret;
use crate::config::InvalidLinePolicy;
use crate::error::from_reqwest;
use crate::error::{redact_url, Error, ErrorCode, Result};
use crate::export::{content_type, stopped, HttpResponse, Retry, Shared};
use crate::manifest::Kind;
use crate::ndjson::{Chunk, Invalid, LineMeta, TypeName};
use crossbeam_channel::{select, Sender};
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_LENGTH, RANGE};
use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Policy `skip` skips overlong lines, but a line longer than this many times
/// `max_line_bytes` fails the file: it is a server sending bytes forever, not a long record.
pub(crate) const MAX_SKIPPED_LINE_FACTOR: u64 = 16;

/// A file to download.
pub(crate) struct FileJob {
    pub index: u32,
    pub kind: Kind,
    pub url: String,
    pub resource_type: Option<Arc<TypeName>>,
    pub send_token: bool,
    /// Lines the caller already has (from a checkpoint): not sent again.
    pub skip_lines: u64,
}

/// Where a download stands: what has been sent, in lines and in bytes of the body.
struct Cursor {
    /// Physical line number of the next line to read.
    next_line: u64,
    /// Lines up to this number were sent before (or by an earlier process): skip them.
    skip_through: u64,
    /// Offset in the (identity) body of the next byte to read.
    offset: u64,
}

enum Failure {
    /// Give up: the export fails with this.
    Fatal(Error),
    /// The transfer broke: try again (with the retry budget).
    Broken(Error),
    /// 404/410: the URL expired; get a fresh one from the manifest.
    Expired(Error),
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

/// The HTTP client of one download thread: reqwest's async API driven by a runtime of this
/// thread, so that a connection and the loop reading its body run on the same thread. With
/// `reqwest::blocking`, every chunk of a body crosses from reqwest's runtime thread to the
/// reading thread (two wake-ups per chunk): on chunked responses that halved throughput and
/// tripled CPU per GB (bench/run.py).
pub(crate) struct FileClient {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) client: reqwest::Client,
}

/// How often a download waiting for the server looks whether the export was stopped.
const STOP_CHECK: Duration = Duration::from_millis(100);

enum Waited {
    TimedOut,
    Stopped,
}

/// Run `fut` on the thread's runtime for at most `timeout`, giving up early when the export
/// stops (a cancel or a failure elsewhere ends a stalled download at once, not after
/// `read_timeout_ms`).
fn wait_on<F: std::future::Future>(
    sh: &Shared,
    rt: &tokio::runtime::Runtime,
    timeout: Duration,
    fut: F,
) -> Result<F::Output, Waited> {
    let deadline = Instant::now() + timeout;
    rt.block_on(async {
        let mut fut = std::pin::pin!(fut);
        loop {
            if sh.stopping() {
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

/// A file response of a [`FileClient`], read with `Read` (each read waits at most `timeout`
/// for data).
struct FileResponse<'a> {
    sh: &'a Shared,
    rt: &'a tokio::runtime::Runtime,
    resp: reqwest::Response,
    timeout: Duration,
    cur: bytes::Bytes,
}

impl Read for FileResponse<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match wait_on(self.sh, self.rt, self.timeout, self.resp.chunk()) {
                Err(Waited::TimedOut) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no data within read_timeout_ms",
                    ))
                }
                // Not `Interrupted`: that one is retried.
                Err(Waited::Stopped) => return Err(std::io::Error::other("export stopped")),
                Ok(Err(e)) => return Err(std::io::Error::other(e)),
                Ok(Ok(None)) => return Ok(0),
                Ok(Ok(Some(b))) => self.cur = b,
            }
        }
        let n = out.len().min(self.cur.len());
        out[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}

impl HttpResponse for FileResponse<'_> {
    fn status_code(&self) -> u16 {
        self.resp.status().as_u16()
    }
    fn header_map(&self) -> &HeaderMap {
        self.resp.headers()
    }
    fn read_limited(self, _what: &str, _url: &str, limit: u64) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        // An error body that breaks off is used as far as it came.
        let _ = self.take(limit).read_to_end(&mut body);
        Ok(body)
    }
}

/// GET a file under the request and retry policies (token, trusted origins, redirects, 401
/// refresh, retries), from `range_from` when set.
fn send_file<'a>(
    sh: &'a Shared,
    fc: &'a FileClient,
    url: &str,
    use_token: bool,
    range_from: Option<u64>,
) -> Result<FileResponse<'a>> {
    let what = "file download";
    let timeout = Duration::from_millis(sh.config.read_timeout_ms);
    let mut one = |u: &str, token: Option<&Secret>| {
        let mut rb = fc.client.get(u).header(ACCEPT, "application/fhir+ndjson");
        if let Some(o) = range_from {
            rb = rb.header(RANGE, format!("bytes={o}-"));
        }
        if sh.trusted(u) {
            for (k, v) in &sh.config.headers {
                rb = rb.header(k.as_str(), v.as_str());
            }
        }
        if let Some(t) = token {
            rb = rb.bearer_auth(t.expose());
        }
        match wait_on(sh, &fc.rt, timeout, rb.send()) {
            Err(Waited::TimedOut) => Err(Error::new(
                ErrorCode::Timeout,
                format!(
                    "{what} failed: no response within read_timeout_ms ({} ms); raise it for a slow server",
                    sh.config.read_timeout_ms
                ),
            )
            .with_url(u)),
            Err(Waited::Stopped) => Err(stopped()),
            Ok(Err(e)) => Err(from_reqwest(what, u, &e)),
            Ok(Ok(resp)) => Ok(FileResponse {
                sh,
                rt: &fc.rt,
                resp,
                timeout,
                cur: bytes::Bytes::new(),
            }),
        }
    };
    sh.retrying(what, url, &|s| s == 200 || s == 206, true, &mut || {
        sh.send_with(what, url, use_token, &mut one)
    })
}

/// Download one file and send its lines to the consumer in chunks.
pub(crate) fn download(
    sh: &Shared,
    fc: &FileClient,
    job: &FileJob,
    tx: &Sender<Chunk>,
) -> Result<()> {
    let mut url = job.url.clone();
    let mut cur = Cursor {
        next_line: 1,
        skip_through: job.skip_lines,
        offset: 0,
    };
    let mut retry = Retry::new(&sh.config);
    let mut refreshes = 0;
    let mut ranges = false;
    loop {
        match attempt(sh, fc, job, &url, tx, &mut cur, &mut ranges) {
            Ok(()) => return Ok(()),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Broken(e)) => sh.wait_retry(&mut retry, e, None)?,
            Err(Failure::Expired(e)) => {
                refreshes += 1;
                if refreshes > 3 {
                    return Err(e);
                }
                url = sh.refresh_file_url(job.index, e)?;
            }
        }
    }
}

fn attempt(
    sh: &Shared,
    fc: &FileClient,
    job: &FileJob,
    url: &str,
    tx: &Sender<Chunk>,
    cur: &mut Cursor,
    ranges: &mut bool,
) -> Result<(), Failure> {
    let c = &sh.config;
    let range_from = (*ranges && cur.offset > 0).then_some(cur.offset);
    let mut resp = match send_file(sh, fc, url, job.send_token, range_from) {
        Ok(r) => r,
        Err(e) if e.code == ErrorCode::NotFound => return Err(Failure::Expired(e)),
        Err(e) => return Err(Failure::Fatal(e)),
    };
    let h = resp.header_map();
    // reqwest drops Content-Length when it decompresses: with it and `Accept-Ranges: bytes`, the
    // body is identity-encoded and byte offsets can resume it.
    *ranges = h
        .get("accept-ranges")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("bytes"))
        && h.contains_key(CONTENT_LENGTH);
    let ct = content_type(h);
    if !acceptable_file_type(&ct) {
        return Err(Failure::Fatal(
            Error::protocol(format!(
                "file download got Content-Type {ct:?}; expected application/fhir+ndjson"
            ))
            .with_url(url),
        ));
    }
    if resp.status_code() == 206 {
        let start = h
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes "))
            .and_then(|v| v.split('-').next())
            .and_then(|v| v.parse::<u64>().ok());
        if start != range_from {
            return Err(Failure::Fatal(
                Error::protocol(format!(
                    "file download asked for bytes from {range_from:?} and got Content-Range starting at {start:?}"
                ))
                .with_url(url),
            ));
        }
    } else {
        // The whole file again: skip what was sent already.
        cur.skip_through = cur.skip_through.max(cur.next_line - 1);
        cur.next_line = 1;
        cur.offset = 0;
    }

    let target = c.chunk_bytes;
    let mut buf = take_buffer(sh, target * 2);
    let mut filled = 0usize;
    let mut last_emit = Instant::now();
    let mut first = true;
    let mut eof = false;
    // Skipping the rest of an overlong line (policy skip), and how much of it so far: a line
    // that has not ended after MAX_SKIPPED_LINE_FACTOR times the limit fails the file (a
    // server sending bytes forever).
    let mut discarding = false;
    let mut discarded: u64 = 0;
    let give_up = (c.max_line_bytes as u64).saturating_mul(MAX_SKIPPED_LINE_FACTOR);
    let mut invalid: Vec<Invalid> = Vec::new();
    let mut sent_last = false;
    while !eof {
        if sh.stopping() {
            return Err(Failure::Fatal(stopped()));
        }
        if filled == buf.0.len() {
            // Full without a complete line: one long line. Grow up to the limit.
            if buf.0.len() > c.max_line_bytes {
                let msg = format!(
                    "line {} is longer than max_line_bytes ({})",
                    cur.next_line, c.max_line_bytes
                );
                if c.on_invalid_line == InvalidLinePolicy::Fail {
                    return Err(Failure::Fatal(
                        Error::protocol(format!("file download: {msg}")).with_url(url),
                    ));
                }
                if !discarding && cur.next_line > cur.skip_through {
                    invalid.push(Invalid {
                        line: cur.next_line,
                        reason: msg,
                    });
                }
                discarding = true;
                discarded = filled as u64;
                cur.offset += filled as u64;
                filled = 0;
            } else {
                let new_len = (buf.0.len() * 2).min(c.max_line_bytes + 2);
                buf.0.resize(new_len, 0);
            }
        }
        let n = loop {
            match resp.read(&mut buf.0[filled..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::Broken(broken(url, cur.next_line, &e))),
            }
        };
        if n == 0 {
            eof = true;
            if filled > 0 && buf.0[filled - 1] != b'\n' {
                // A last line without a newline: a line all the same (the shape check catches
                // one that was cut short).
                if filled == buf.0.len() {
                    buf.0.push(0);
                }
                buf.0[filled] = b'\n';
                filled += 1;
            }
        } else {
            sh.bytes.fetch_add(n as u64, Ordering::Relaxed);
            if discarding {
                // Drop bytes up to the end of the overlong line.
                match memchr::memchr(b'\n', &buf.0[filled..filled + n]) {
                    None => {
                        cur.offset += n as u64;
                        discarded += n as u64;
                        if discarded > give_up {
                            return Err(Failure::Fatal(
                                Error::protocol(format!(
                                    "file download: line {} has not ended after {discarded} bytes \
                                     ({MAX_SKIPPED_LINE_FACTOR} x max_line_bytes); giving up on the file",
                                    cur.next_line
                                ))
                                .with_url(url),
                            ));
                        }
                        continue;
                    }
                    Some(p) => {
                        let rest = n - (p + 1);
                        buf.0.copy_within(filled + p + 1..filled + n, 0);
                        cur.offset += (p + 1) as u64;
                        cur.next_line += 1;
                        filled = rest;
                        discarding = false;
                        if !invalid.is_empty() {
                            send_invalid(sh, job, url, tx, &mut invalid)?;
                        }
                    }
                }
            } else {
                filled += n;
            }
        }
        let due = eof
            || filled >= target
            || filled == buf.0.len()
            || first
            || last_emit.elapsed() >= Duration::from_millis(20);
        if !due {
            continue;
        }
        let Some(cut) = memchr::memrchr(b'\n', &buf.0[..filled]).map(|p| p + 1) else {
            continue;
        };
        // Move the partial tail into the next buffer, then index and send this one.
        let mut next = take_buffer(sh, target * 2);
        let tail = filled - cut;
        if next.0.len() < tail + target {
            next.0.resize(tail + target, 0);
        }
        next.0[..tail].copy_from_slice(&buf.0[cut..filled]);
        let (data, lines) = std::mem::replace(&mut buf, next);
        filled = tail;
        let mut chunk = Chunk {
            file_index: job.index,
            kind: job.kind,
            data,
            len: cut,
            lines,
            types: Vec::with_capacity(1),
            last: eof && tail == 0,
            synthetic: false,
        };
        let physical = chunk.index_lines(
            cur.next_line,
            job.resource_type.as_ref(),
            cur.skip_through,
            c.validate_json,
            &mut invalid,
        );
        if !invalid.is_empty() && c.on_invalid_line == InvalidLinePolicy::Fail {
            let bad = &invalid[0];
            return Err(Failure::Fatal(
                Error::protocol(format!(
                    "file download: line {} is not valid NDJSON: {}",
                    bad.line, bad.reason
                ))
                .with_url(url),
            ));
        }
        cur.next_line += physical;
        cur.offset += cut as u64;
        last_emit = Instant::now();
        first = false;
        if chunk.lines.is_empty() && !chunk.last {
            let _ = sh.recycle_tx.try_send((chunk.data, chunk.lines));
        } else {
            sent_last = chunk.last;
            send(sh, tx, chunk)?;
        }
        if !invalid.is_empty() {
            send_invalid(sh, job, url, tx, &mut invalid)?;
        }
    }
    if !invalid.is_empty() {
        // An overlong last line still being discarded at the end of the file.
        send_invalid(sh, job, url, tx, &mut invalid)?;
    }
    if !sent_last {
        // The data went out before the end was known: tell the consumer the file is complete
        // (for checkpoints) with an empty last chunk.
        let (data, mut lines) = buf;
        lines.clear();
        send(
            sh,
            tx,
            Chunk {
                file_index: job.index,
                kind: job.kind,
                data,
                len: 0,
                lines,
                types: Vec::new(),
                last: true,
                synthetic: false,
            },
        )?;
    } else {
        let _ = sh.recycle_tx.try_send(buf);
    }
    Ok(())
}

fn send(sh: &Shared, tx: &Sender<Chunk>, chunk: Chunk) -> Result<(), Failure> {
    select! {
        send(tx, chunk) -> r => r.map_err(|_| Failure::Fatal(stopped())),
        recv(sh.stop_rx) -> _ => Err(Failure::Fatal(stopped())),
    }
}

/// Deliver skipped lines as error records: OperationOutcomes naming the file and the line.
fn send_invalid(
    sh: &Shared,
    job: &FileJob,
    url: &str,
    tx: &Sender<Chunk>,
    invalid: &mut Vec<Invalid>,
) -> Result<(), Failure> {
    let mut data = Vec::new();
    let mut lines = Vec::with_capacity(invalid.len());
    for bad in invalid.drain(..) {
        let oo = serde_json::json!({
            "resourceType": "OperationOutcome",
            "issue": [{
                "severity": "error",
                "code": "structure",
                "diagnostics": format!(
                    "fhirbulk skipped line {} of {}: {}",
                    bad.line,
                    redact_url(url),
                    bad.reason
                ),
            }],
        })
        .to_string();
        let start = data.len();
        data.extend_from_slice(oo.as_bytes());
        lines.push(LineMeta {
            start,
            end: data.len(),
            line: bad.line,
            ty: 0,
        });
        data.push(b'\n');
    }
    sh.invalid_lines
        .fetch_add(lines.len() as u64, Ordering::Relaxed);
    let len = data.len();
    let chunk = Chunk {
        file_index: job.index,
        kind: Kind::Error,
        data,
        len,
        lines,
        types: vec![TypeName::new("OperationOutcome")],
        last: false,
        synthetic: true,
    };
    send(sh, tx, chunk)
}

fn broken(url: &str, line: u64, e: &std::io::Error) -> Error {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<reqwest::Error>());
    // A decompressor's error inside reqwest's (a truncated or corrupt gzip stream) is an I/O
    // error of kind UnexpectedEof / InvalidData / InvalidInput; a dropped connection is not.
    let mut decode = inner.is_some_and(|r| r.is_decode());
    let mut link = inner.and_then(|r| std::error::Error::source(r));
    while let Some(s) = link {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::{InvalidData, InvalidInput, UnexpectedEof};
            decode |= matches!(io.kind(), UnexpectedEof | InvalidData | InvalidInput);
        }
        link = s.source();
    }
    let timeout = e.kind() == std::io::ErrorKind::TimedOut || inner.is_some_and(|r| r.is_timeout());
    let mut detail = e.to_string();
    let mut src = inner.and_then(|r| std::error::Error::source(r));
    while let Some(s) = src {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        src = s.source();
    }
    let (code, what) = if timeout {
        (
            ErrorCode::Timeout,
            "stalled (no data within read_timeout_ms)",
        )
    } else if decode {
        (
            ErrorCode::Protocol,
            "could not be decoded (corrupt or truncated compression)",
        )
    } else {
        (ErrorCode::Network, "broke")
    };
    Error::new(
        code,
        format!("file download {what} at line {line}: {detail}"),
    )
    .with_url(url)
}

/// A zero-filled buffer of at least `len` bytes (reused when the consumer gave one back).
pub(crate) fn take_buffer(sh: &Shared, len: usize) -> (Vec<u8>, Vec<LineMeta>) {
    match sh.recycle_rx.try_recv() {
        Ok((mut d, l)) => {
            if d.len() < len {
                d.resize(len, 0);
            }
            (d, l)
        }
        Err(_) => (vec![0u8; len], Vec::new()),
    }
}
