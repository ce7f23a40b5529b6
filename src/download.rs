//! Downloading one file: read its bytes (`remote`, which resumes broken transfers), undo its
//! `Content-Encoding` (`decode`), split the result into chunks of complete lines and send them
//! to the consumer. When the file has to be read again from its start (it cannot be resumed,
//! it changed, its compressed stream was corrupt), the lines already sent are skipped: a line
//! is sent once, whatever happens.

use crate::attachments::{At, Fetch, Made, Resolver};
use crate::bom::{is_utf16, BOM};
use crate::buffers::Buffers;
use crate::config::InvalidLinePolicy;
use crate::document::{self, Failed, Fetched};
use crate::error::{redact_url, stopped, Error, Result};
use crate::events::fields;
use crate::http::decode::{self, Coding};
use crate::http::{FileClient, Http};
use crate::manifest::Kind;
use crate::monitor::Monitor;
use crate::ndjson::{check_last_line, Chunk, Extra, Invalid, LineMeta, TypeName};
use crate::remote::{interrupt_of, FileJob, FreshUrls, Interrupt, Remote};
use crossbeam_channel::{select, Sender};
use std::cell::RefCell;
use std::io::Read;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Policy `skip` skips overlong lines, but a line longer than this many times
/// `max_line_bytes` fails the file: it is a server sending bytes forever, not a long record.
pub(crate) const MAX_SKIPPED_LINE_FACTOR: u64 = 16;

/// What downloading a file needs of its export.
pub(crate) struct Context<'a> {
    pub(crate) http: &'a Http,
    pub(crate) monitor: &'a Monitor,
    pub(crate) buffers: &'a Buffers,
    pub(crate) fresh: &'a dyn FreshUrls,
    /// The attachments to resolve in records (config `attachments`), if any.
    pub(crate) attachments: Option<&'a Resolver>,
}

/// Where a download stands in lines.
struct Cursor {
    /// Physical line number of the next line to read.
    next_line: u64,
    /// Lines up to this number were sent before (or by an earlier process): skip them.
    skip_through: u64,
    /// Bytes of the file (decoded) read since its first byte.
    bytes: u64,
    /// The records of line `skip_through + 1`'s attachments the caller has (from a
    /// checkpoint), until that line is resolved.
    skip_attachments: Option<String>,
}

/// Download one file and send its lines to the consumer in chunks; the number of lines and
/// of (decoded) bytes the file has.
pub(crate) fn download(
    cx: &Context<'_>,
    fc: &FileClient,
    job: &FileJob,
    tx: &Sender<Chunk>,
) -> Result<(u64, u64)> {
    let remote = RefCell::new(Remote::new(cx.http, cx.fresh, fc, job));
    let mut cur = Cursor {
        next_line: 1,
        skip_through: job.skip_lines,
        bytes: 0,
        skip_attachments: job.skip_attachments.clone(),
    };
    loop {
        let opened = remote.borrow_mut().open();
        let res = opened.and_then(|codings| read_file(cx, job, &remote, &codings, &mut cur, tx));
        match res {
            Ok(()) => return Ok((cur.next_line - 1, cur.bytes)),
            Err(Interrupt::Fatal(e)) => return Err(e),
            Err(Interrupt::Restart) => {
                // From the first byte again: what was sent is skipped.
                cur.skip_through = cur.skip_through.max(cur.next_line - 1);
                cur.next_line = 1;
                cur.bytes = 0;
                cx.monitor.event(
                    "file_restarted",
                    fields! {
                        "index" => job.index,
                        "url" => redact_url(remote.borrow().url()),
                        "skip_lines" => cur.skip_through,
                    },
                );
            }
        }
    }
}

/// The remote stream as a reader that lends it back between reads.
struct Lent<'r, 'a>(&'r RefCell<Remote<'a>>);

impl Read for Lent<'_, '_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().read(out)
    }
}

/// Read the file from its first byte, sending its lines.
fn read_file(
    cx: &Context<'_>,
    job: &FileJob,
    remote: &RefCell<Remote<'_>>,
    codings: &[Coding],
    cur: &mut Cursor,
    tx: &Sender<Chunk>,
) -> Result<(), Interrupt> {
    let c = &cx.http.config;
    let url = || remote.borrow().url().to_owned();
    let fatal = |msg: String| Interrupt::Fatal(Error::protocol(msg).with_url(&url()));
    let mut src = decode::reader(codings, Lent(remote));
    let target = c.chunk_bytes;
    let mut buf = cx.buffers.take(target * 2);
    let mut filled = 0usize;
    // The end of the last complete line in `buf[..filled]`: found in the bytes of each read
    // alone, so a long line is scanned once, not at every read (that was quadratic).
    let mut last_nl: Option<usize> = None;
    let mut last_emit = Instant::now();
    let mut first = true;
    let mut eof = false;
    // The start of the file, where a byte order mark may be, is still to be looked at.
    let mut at_start = true;
    // Skipping the rest of an overlong line (policy skip), and how much of it so far: a line
    // that has not ended after MAX_SKIPPED_LINE_FACTOR times the limit fails the file (a
    // server sending bytes forever).
    let mut discarding = false;
    let mut discarded: u64 = 0;
    let give_up = (c.max_line_bytes as u64).saturating_mul(MAX_SKIPPED_LINE_FACTOR);
    let mut invalid: Vec<Invalid> = Vec::new();
    let mut sent_last = false;
    while !eof {
        if cx.monitor.stopping() {
            return Err(Interrupt::Fatal(stopped()));
        }
        if filled == buf.0.len() {
            // Full without a complete line: one long line. Grow up to the limit.
            if buf.0.len() > c.max_line_bytes {
                let msg = format!(
                    "line {} is longer than max_line_bytes ({})",
                    cur.next_line, c.max_line_bytes
                );
                if c.on_invalid_line == InvalidLinePolicy::Fail {
                    return Err(fatal(format!("file download: {msg}")));
                }
                if !discarding && cur.next_line > cur.skip_through {
                    invalid.push(Invalid {
                        line: cur.next_line,
                        reason: msg,
                    });
                }
                discarding = true;
                discarded = filled as u64;
                filled = 0;
                last_nl = None;
                // The long line's buffer is not needed any more.
                buf.0 = vec![0u8; target * 2];
            } else {
                let new_len = (buf.0.len() * 2).min(c.max_line_bytes + 2);
                buf.0.resize(new_len, 0);
            }
        }
        remote.borrow_mut().line_hint = cur.next_line;
        let n = loop {
            match src.read(&mut buf.0[filled..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(match interrupt_of(e) {
                        Ok(i) => i,
                        Err(e) => {
                            // Only a decoder fails on its own: the compressed stream is corrupt
                            // or cut short. Read the file again (retry budget), then give up.
                            let err = Error::protocol(format!(
                                "file download could not be decoded ({} body, corrupt or truncated compression) at line {}: {e}",
                                decode::describe(codings),
                                cur.next_line
                            ))
                            .with_url(&url());
                            remote.borrow_mut().failed(err)
                        }
                    });
                }
            }
        };
        if n == 0 {
            eof = true;
        } else {
            cx.monitor.bytes.fetch_add(n as u64, Ordering::Relaxed);
            cur.bytes += n as u64;
        }
        if at_start {
            let have = filled + n;
            let data = &buf.0[..have];
            if have >= BOM.len() || eof || memchr::memchr(b'\n', data).is_some() {
                at_start = false;
                if data.starts_with(BOM) {
                    buf.0.copy_within(BOM.len()..have, 0);
                    filled = have - BOM.len();
                    last_nl = memchr::memrchr(b'\n', &buf.0[..filled]).map(|p| p + 1);
                    // Counted as received, but not NDJSON.
                    cx.monitor
                        .bytes
                        .fetch_sub(BOM.len() as u64, Ordering::Relaxed);
                    if !eof && filled == 0 {
                        continue;
                    }
                } else if is_utf16(data) {
                    return Err(fatal(
                        "file download: the file starts with a UTF-16 byte order mark; NDJSON files must be UTF-8".into(),
                    ));
                } else {
                    filled = have;
                    last_nl = memchr::memrchr(b'\n', &buf.0[..filled]).map(|p| p + 1);
                }
            } else {
                filled = have;
                continue;
            }
        } else if discarding && n > 0 {
            // Drop bytes up to the end of the overlong line.
            match memchr::memchr(b'\n', &buf.0[filled..filled + n]) {
                None => {
                    discarded += n as u64;
                    if discarded > give_up {
                        return Err(fatal(format!(
                            "file download: line {} has not ended after {discarded} bytes \
                             ({MAX_SKIPPED_LINE_FACTOR} x max_line_bytes); giving up on the file",
                            cur.next_line
                        )));
                    }
                    continue;
                }
                Some(p) => {
                    let rest = n - (p + 1);
                    buf.0.copy_within(filled + p + 1..filled + n, 0);
                    cur.next_line += 1;
                    filled = rest;
                    last_nl = memchr::memrchr(b'\n', &buf.0[..filled]).map(|p| p + 1);
                    discarding = false;
                    if !invalid.is_empty() {
                        send_invalid(cx, job, &url(), tx, &mut invalid)?;
                    }
                }
            }
        } else {
            if let Some(p) = memchr::memrchr(b'\n', &buf.0[filled..filled + n]) {
                last_nl = Some(filled + p + 1);
            }
            filled += n;
        }
        if eof && !discarding && filled > 0 && buf.0[filled - 1] != b'\n' {
            // A last line without a newline: a record only when it is one whole JSON object
            // (a body that ended is not a body that was complete).
            let start = last_nl.unwrap_or(0);
            match check_last_line(&buf.0[start..filled]) {
                None => {
                    if filled == buf.0.len() {
                        buf.0.push(0);
                    }
                    buf.0[filled] = b'\n';
                    filled += 1;
                    last_nl = Some(filled);
                }
                Some(reason) => {
                    let line =
                        cur.next_line + memchr::memchr_iter(b'\n', &buf.0[..start]).count() as u64;
                    if c.on_invalid_line == InvalidLinePolicy::Fail {
                        return Err(fatal(format!(
                            "file download: line {line} is not valid NDJSON: {reason}"
                        )));
                    }
                    if line > cur.skip_through {
                        invalid.push(Invalid { line, reason });
                    }
                    filled = start;
                }
            }
        }
        let due = eof
            || filled >= target
            || filled == buf.0.len()
            || first
            || last_emit.elapsed() >= Duration::from_millis(20);
        if !due || discarding {
            continue;
        }
        let Some(cut) = last_nl.take() else {
            continue;
        };
        let tail = filled - cut;
        let data = if tail > cut {
            // A long line is coming in: it stays in this buffer, the complete lines before it go
            // out in another (the smaller copy, and the big buffer is not handed out early).
            let mut out = cx.buffers.take(target * 2);
            if out.0.len() < cut {
                out.0.resize(cut, 0);
            }
            out.0[..cut].copy_from_slice(&buf.0[..cut]);
            buf.0.copy_within(cut..filled, 0);
            out
        } else {
            // Move the partial tail into the next buffer, then index and send this one.
            let mut next = cx.buffers.take(target * 2);
            if next.0.len() < tail + target {
                next.0.resize(tail + target, 0);
            }
            next.0[..tail].copy_from_slice(&buf.0[cut..filled]);
            std::mem::replace(&mut buf, next)
        };
        filled = tail;
        let mut chunk = Chunk {
            file_index: job.index,
            kind: job.kind,
            data: data.0,
            len: cut,
            lines: data.1,
            types: Vec::with_capacity(1),
            last: eof && tail == 0,
            synthetic: false,
            content: None,
            extra: None,
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
            return Err(fatal(format!(
                "file download: line {} is not valid NDJSON: {}",
                bad.line, bad.reason
            )));
        }
        cur.next_line += physical;
        last_emit = Instant::now();
        first = false;
        if chunk.lines.is_empty() && !chunk.last {
            cx.buffers.recycle(chunk.data, chunk.lines);
        } else {
            sent_last = chunk.last;
            match cx.attachments {
                Some(r) if chunk.types.iter().any(|t| r.wants(t.as_str())) => {
                    let fc = remote.borrow().file_client();
                    send_resolved(cx, r, fc, job, chunk, tx, &mut cur.skip_attachments)?;
                }
                _ => send(cx, tx, chunk)?,
            }
        }
        if !invalid.is_empty() {
            send_invalid(cx, job, &url(), tx, &mut invalid)?;
        }
    }
    if !invalid.is_empty() {
        // An overlong or cut last line at the end of the file.
        send_invalid(cx, job, &url(), tx, &mut invalid)?;
    }
    if !sent_last {
        // The data went out before the end was known: tell the consumer the file is complete
        // (for checkpoints) with an empty last chunk.
        let (mut data, mut lines) = buf;
        lines.clear();
        if data.capacity() > cx.buffers.big_chunk_bytes() {
            data = Vec::new();
        }
        send(
            cx,
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
                content: None,
                extra: None,
            },
        )?;
    } else {
        cx.buffers.recycle(buf.0, buf.1);
    }
    Ok(())
}

/// Send a chunk, waiting for the consumer (and, for a chunk with a big buffer, for one of the
/// two places such chunks may take: long lines must not fill the channel).
fn send(cx: &Context<'_>, tx: &Sender<Chunk>, chunk: Chunk) -> Result<(), Interrupt> {
    if chunk.data.capacity() > cx.buffers.big_chunk_bytes()
        && !cx.buffers.reserve_big(&cx.monitor.stop_rx)
    {
        return Err(Interrupt::Fatal(stopped()));
    }
    select! {
        send(tx, chunk) -> r => r.map_err(|_| Interrupt::Fatal(stopped())),
        recv(cx.monitor.stop_rx) -> _ => Err(Interrupt::Fatal(stopped())),
    }
}

/// Fetches documents for [`Resolver::resolve`] on this download thread.
struct Net<'a> {
    http: &'a Http,
    fc: &'a FileClient,
}

impl Fetch for Net<'_> {
    fn fetch(
        &self,
        url: &str,
        accept: &str,
        cap: u64,
        checked: bool,
    ) -> std::result::Result<Fetched, Failed> {
        document::fetch(self.http, self.fc, url, accept, cap, checked)
    }
}

/// An empty chunk of `like`'s file and kind to copy lines into.
fn piece(cx: &Context<'_>, like: &Chunk) -> Chunk {
    let (data, mut lines) = cx.buffers.take(cx.http.config.chunk_bytes * 2);
    // A buffer given back keeps its old line index.
    lines.clear();
    Chunk {
        file_index: like.file_index,
        kind: like.kind,
        data,
        len: 0,
        lines,
        types: like.types.clone(),
        last: false,
        synthetic: false,
        content: None,
        extra: None,
    }
}

/// Send `out` when it holds lines, and start a new one.
fn flush(cx: &Context<'_>, tx: &Sender<Chunk>, out: &mut Chunk) -> Result<(), Interrupt> {
    if out.lines.is_empty() {
        return Ok(());
    }
    let next = piece(cx, out);
    send(cx, tx, std::mem::replace(out, next))
}

/// Append a record to `out` (as line `m` of the file).
fn push_line(out: &mut Chunk, bytes: &[u8], m: &LineMeta) {
    let start = out.len;
    let end = start + bytes.len();
    if out.data.len() < end + 1 {
        out.data.resize(end + 1, 0);
    }
    out.data[start..end].copy_from_slice(bytes);
    out.data[end] = b'\n';
    out.len = end + 1;
    out.lines.push(LineMeta {
        start,
        end,
        line: m.line,
        ty: m.ty,
    });
}

/// Send a chunk whose records may have attachments to resolve: each record's attachments'
/// records (documents, error records) go out before it, and the record as resolved.
fn send_resolved(
    cx: &Context<'_>,
    r: &Resolver,
    fc: &FileClient,
    job: &FileJob,
    chunk: Chunk,
    tx: &Sender<Chunk>,
    skip: &mut Option<String>,
) -> Result<(), Interrupt> {
    let net = Net { http: cx.http, fc };
    let target = cx.http.config.chunk_bytes;
    let mut out = piece(cx, &chunk);
    for m in &chunk.lines {
        let ty = &chunk.types[m.ty as usize];
        let line = &chunk.data[m.start..m.end];
        let mut resolved = None;
        if r.wants(ty.as_str()) {
            let at = At {
                resource_type: ty.as_str(),
                file_index: job.index,
                line: m.line,
            };
            let skip_here = if m.line == job.skip_lines + 1 {
                skip.take()
            } else {
                None
            };
            let res = r.resolve(
                &net,
                &at,
                line,
                skip_here.as_deref(),
                &mut |position, made| {
                    // The records before this one go first.
                    flush(cx, tx, &mut out)?;
                    send_made(cx, job, tx, ty, m.line, position, made)
                },
            )?;
            cx.monitor
                .attachments_fetched
                .fetch_add(u64::from(res.fetched), Ordering::Relaxed);
            resolved = res.line;
        }
        let bytes = resolved.as_deref().unwrap_or(line);
        if !out.lines.is_empty() && out.len + bytes.len() + 1 > target {
            flush(cx, tx, &mut out)?;
        }
        push_line(&mut out, bytes, m);
    }
    out.last = chunk.last;
    cx.buffers.recycle(chunk.data, chunk.lines);
    if out.lines.is_empty() && !out.last {
        cx.buffers.recycle(out.data, out.lines);
        return Ok(());
    }
    send(cx, tx, out)
}

/// Send the record made for attachment `position` of line `line` (alone in its chunk, which
/// tells the consumer's progress where it belongs).
fn send_made(
    cx: &Context<'_>,
    job: &FileJob,
    tx: &Sender<Chunk>,
    ty: &std::sync::Arc<TypeName>,
    line: u64,
    position: u32,
    made: Made,
) -> Result<(), Interrupt> {
    let (kind, data, meta_len, types, outcome) = match made {
        Made::Document { meta, bytes } => {
            let mut data = Vec::with_capacity(meta.len() + 1 + bytes.len());
            data.extend_from_slice(&meta);
            data.push(b'\n');
            data.extend_from_slice(&bytes);
            (Kind::Attachment, data, meta.len(), vec![ty.clone()], b's')
        }
        Made::Failure {
            outcome,
            resource,
            path,
            url,
            reason,
        } => {
            cx.monitor.attachment_errors.fetch_add(1, Ordering::Relaxed);
            cx.monitor.event(
                "attachment_failed",
                fields! {
                    "index" => job.index,
                    "line" => line,
                    "resource" => resource,
                    "path" => path,
                    "position" => position,
                    "url" => url,
                    "reason" => reason,
                },
            );
            let n = outcome.len();
            let mut data = outcome;
            data.push(b'\n');
            (
                Kind::Error,
                data,
                n,
                vec![TypeName::new("OperationOutcome")],
                b'e',
            )
        }
    };
    let content = (kind == Kind::Attachment).then_some((meta_len + 1, data.len()));
    let len = if content.is_some() {
        meta_len + 1
    } else {
        data.len()
    };
    send(
        cx,
        tx,
        Chunk {
            file_index: job.index,
            kind,
            data,
            len,
            lines: vec![LineMeta {
                start: 0,
                end: meta_len,
                line,
                ty: 0,
            }],
            types,
            last: false,
            synthetic: false,
            content,
            extra: Some(Extra {
                line,
                position,
                outcome,
            }),
        },
    )
}

/// Deliver skipped lines as error records: OperationOutcomes naming the file and the line.
fn send_invalid(
    cx: &Context<'_>,
    job: &FileJob,
    url: &str,
    tx: &Sender<Chunk>,
    invalid: &mut Vec<Invalid>,
) -> Result<(), Interrupt> {
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
    cx.monitor
        .invalid_lines
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
        content: None,
        extra: None,
    };
    send(cx, tx, chunk)
}
