//! Fault injection: what hospital networks and servers do to a bulk export, on demand
//! (scenario keys in [`super::scenario::Faults`]). Line faults wrap a file's line source; body
//! faults wrap the byte stream or cut the connection.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flate2::read::{DeflateEncoder, GzEncoder, ZlibEncoder};
use flate2::{Compression, GzBuilder};

use super::plan::{ByteLineSource, LineSource};
use super::scenario::{Faults, Truncate};

/// The extra line `bad_line` inserts: what a proxy's error page looks like in a file.
pub const BAD_LINE: &str = "<html><body>502 Bad Gateway</body></html>";
/// The cut-off line `truncate_last` appends (no newline).
pub const TRUNCATED_LINE: &str =
    "{\"resourceType\":\"Observation\",\"id\":\"sandbox-truncated\",\"status\":\"fin";
/// The cut-off line `truncate_last=inner` appends (no newline): it ends just after an inner `}`.
pub const TRUNCATED_INNER_LINE: &str =
    "{\"resourceType\":\"Observation\",\"id\":\"sandbox-truncated\",\"code\":{\"text\":\"cut\"}";
/// The line `bad_utf8` inserts (without its newline): JSON-looking, but 0xFF 0xFE is not UTF-8.
pub const BAD_UTF8_LINE: &[u8] =
    b"{\"resourceType\":\"Basic\",\"id\":\"sandbox-bad-utf8\",\"note\":\"\xFF\xFE\"}";
/// What `contained_first` puts before each record's own members.
pub const CONTAINED_MEMBER: &str =
    "\"contained\":[{\"resourceType\":\"Basic\",\"id\":\"sandbox-contained\"}]";
/// The UTF-8 byte order mark `bom` puts in front of files and JSON documents.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The line faults applied to one file as served (its representation included).
#[derive(Clone, Debug, Default)]
pub struct LineFaults {
    pub bad_line: Option<u64>,
    /// (BYTES, N) as in [`Faults::long_line`].
    pub long_line: Option<(u64, u64)>,
    pub truncate: Option<Truncate>,
    pub bad_utf8: Option<u64>,
    pub contained_first: bool,
    /// `change_file`, representation 2 and later: each line is ` ` + line + `\r\n`.
    pub reformat: bool,
}

impl LineFaults {
    /// The faults of an output file served as representation `rep` (1 = the original).
    pub fn output(f: &Faults, rep: u32) -> Self {
        LineFaults {
            bad_line: f.bad_line,
            long_line: f.long_line,
            truncate: f.truncate_last,
            bad_utf8: f.bad_utf8,
            contained_first: f.contained_first,
            reformat: f.change_file && rep >= 2,
        }
    }

    /// The faults of an error or deleted-resources file (only the re-serialization).
    pub fn other(f: &Faults, rep: u32) -> Self {
        LineFaults {
            reformat: f.change_file && rep >= 2,
            ..LineFaults::default()
        }
    }

    /// Whether the file's bytes differ from the plain rendering.
    pub fn any(&self) -> bool {
        self.bad_line.is_some()
            || self.long_line.is_some()
            || self.truncate.is_some()
            || self.bad_utf8.is_some()
            || self.contained_first
            || self.reformat
    }
}

/// Inserts line faults into a file's lines; writes bytes, since `bad_utf8` is not UTF-8.
pub struct FaultLines<S> {
    inner: S,
    /// Records so far (calls of the inner source that produced lines).
    lines: u64,
    f: LineFaults,
    scratch: String,
    /// Lines of this call, before `reformat`.
    raw: Vec<u8>,
}

impl<S: LineSource> FaultLines<S> {
    pub fn new(inner: S, f: LineFaults) -> Self {
        FaultLines {
            inner,
            lines: 0,
            f,
            scratch: String::new(),
            raw: Vec::new(),
        }
    }

    /// Appends this call's lines to `raw`; false at the end.
    fn produce(&mut self) -> bool {
        self.scratch.clear();
        if !self.inner.next_line(&mut self.scratch) {
            return match self.f.truncate.take() {
                Some(Truncate::Plain) => {
                    self.raw.extend_from_slice(TRUNCATED_LINE.as_bytes());
                    true
                }
                Some(Truncate::Inner) => {
                    self.raw.extend_from_slice(TRUNCATED_INNER_LINE.as_bytes());
                    true
                }
                None => false,
            };
        }
        if self.f.contained_first {
            // Lines start with '{'; a source call may yield more than one line (headers).
            for line in self.scratch.split_inclusive('\n') {
                // A resource with contained resources of its own (MedicationRequest's
                // Medication) gets the Basic first in its array: one `contained` member.
                if let Some(at) = line.find("\"contained\":[") {
                    let at = at + "\"contained\":[".len();
                    let own =
                        &CONTAINED_MEMBER["\"contained\":[".len()..CONTAINED_MEMBER.len() - 1];
                    self.raw.extend_from_slice(&line.as_bytes()[..at]);
                    self.raw.extend_from_slice(own.as_bytes());
                    self.raw.push(b',');
                    self.raw.extend_from_slice(&line.as_bytes()[at..]);
                    continue;
                }
                match line.strip_prefix('{') {
                    Some(rest) => {
                        self.raw.push(b'{');
                        self.raw.extend_from_slice(CONTAINED_MEMBER.as_bytes());
                        if !rest.starts_with('}') {
                            self.raw.push(b',');
                        }
                        self.raw.extend_from_slice(rest.as_bytes());
                    }
                    None => self.raw.extend_from_slice(line.as_bytes()),
                }
            }
        } else {
            self.raw.extend_from_slice(self.scratch.as_bytes());
        }
        self.lines += 1;
        let k = self.lines;
        if self.f.bad_line == Some(k) {
            self.raw.extend_from_slice(BAD_LINE.as_bytes());
            self.raw.push(b'\n');
        }
        if let Some((len, n)) = self.f.long_line {
            if k <= n {
                let id = if n == 1 {
                    "sandbox-long-line".to_string()
                } else {
                    format!("sandbox-long-line-{k}")
                };
                self.raw.extend_from_slice(long_line(len, &id).as_bytes());
                self.raw.push(b'\n');
            }
        }
        if self.f.bad_utf8 == Some(k) {
            self.raw.extend_from_slice(BAD_UTF8_LINE);
            self.raw.push(b'\n');
        }
        true
    }
}

/// `{"resourceType":"Basic","id":"<id>","note":"xxx…"}` of `len` bytes (at least its fixed
/// part).
pub fn long_line(len: u64, id: &str) -> String {
    let head = format!("{{\"resourceType\":\"Basic\",\"id\":\"{id}\",\"note\":\"");
    let tail = "\"}";
    let fill = usize::try_from(len)
        .unwrap_or(usize::MAX)
        .saturating_sub(head.len() + tail.len());
    let mut s = String::with_capacity(head.len() + fill + tail.len());
    s.push_str(&head);
    s.extend(std::iter::repeat('x').take(fill));
    s.push_str(tail);
    s
}

impl<S: LineSource> ByteLineSource for FaultLines<S> {
    fn next_line(&mut self, out: &mut Vec<u8>) -> bool {
        self.raw.clear();
        if !self.produce() {
            return false;
        }
        if self.f.reformat {
            for line in self.raw.split_inclusive(|&b| b == b'\n') {
                out.push(b' ');
                match line.strip_suffix(b"\n") {
                    Some(l) => {
                        out.extend_from_slice(l);
                        out.extend_from_slice(b"\r\n");
                    }
                    None => out.extend_from_slice(line),
                }
            }
        } else {
            out.extend_from_slice(&self.raw);
        }
        true
    }
}

fn stopping() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "sandbox stopping")
}

/// Sleeps `ms` until stopped; false when stopped.
fn pause(ms: u64, stop: &AtomicBool) -> bool {
    let mut left = ms;
    while left > 0 {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let step = left.min(50);
        std::thread::sleep(Duration::from_millis(step));
        left -= step;
    }
    true
}

/// Passes `at` bytes through, then stalls for `ms` once, then goes on.
pub struct Stall<R> {
    inner: R,
    left: u64,
    ms: u64,
    stop: Arc<AtomicBool>,
}

impl<R: Read> Stall<R> {
    pub fn new(inner: R, at: u64, ms: u64, stop: Arc<AtomicBool>) -> Self {
        Stall {
            inner,
            left: at,
            ms,
            stop,
        }
    }
}

impl<R: Read> Read for Stall<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 && self.ms > 0 && !pause(std::mem::take(&mut self.ms), &self.stop) {
            return Err(stopping());
        }
        let max = if self.ms > 0 {
            out.len()
                .min(usize::try_from(self.left).unwrap_or(usize::MAX))
        } else {
            out.len()
        };
        let n = self.inner.read(&mut out[..max])?;
        self.left = self.left.saturating_sub(n as u64);
        Ok(n)
    }
}

/// A body that never ends: `head`, then `unit` repeated forever, until the sandbox stops
/// (or the client goes away and the write fails).
pub struct Endless {
    head: Vec<u8>,
    unit: Vec<u8>,
    pos: usize,
    stop: Arc<AtomicBool>,
}

impl Endless {
    /// An endless line: `{"resourceType":"Basic","note":"xxxx…` forever.
    pub fn new(stop: Arc<AtomicBool>) -> Self {
        Endless::with(
            b"{\"resourceType\":\"Basic\",\"note\":\"".to_vec(),
            b"x".to_vec(),
            stop,
        )
    }

    /// `head`, then `unit` (not empty) forever.
    pub fn with(head: Vec<u8>, unit: Vec<u8>, stop: Arc<AtomicBool>) -> Self {
        let unit = if unit.is_empty() { b"x".to_vec() } else { unit };
        Endless {
            head,
            unit,
            pos: 0,
            stop,
        }
    }
}

impl Read for Endless {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(stopping());
        }
        if self.pos < self.head.len() {
            let n = out.len().min(self.head.len() - self.pos);
            out[..n].copy_from_slice(&self.head[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        let u = self.unit.len();
        let mut at = (self.pos - self.head.len()) % u;
        for b in out.iter_mut() {
            *b = self.unit[at];
            at = (at + 1) % u;
        }
        self.pos = self.head.len() + at;
        Ok(out.len())
    }
}

/// Passes `at` bytes through, then one byte every `ms` milliseconds (fault `trickle`).
pub struct Trickle<R> {
    inner: R,
    left: u64,
    ms: u64,
    stop: Arc<AtomicBool>,
}

impl<R: Read> Trickle<R> {
    pub fn new(inner: R, at: u64, ms: u64, stop: Arc<AtomicBool>) -> Self {
        Trickle {
            inner,
            left: at,
            ms,
            stop,
        }
    }
}

impl<R: Read> Read for Trickle<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.left > 0 {
            let max = out
                .len()
                .min(usize::try_from(self.left).unwrap_or(usize::MAX));
            let n = self.inner.read(&mut out[..max])?;
            self.left -= n as u64;
            return Ok(n);
        }
        if !pause(self.ms, &self.stop) {
            return Err(stopping());
        }
        self.inner.read(&mut out[..1])
    }
}

/// A content coding the sandbox can produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// RFC 1952 (one or more members).
    Gzip,
    /// RFC 1950 (what HTTP calls `deflate`).
    Zlib,
    /// A bare RFC 1951 stream.
    RawDeflate,
}

enum Stage<R: Read> {
    Gzip(GzEncoder<io::Take<R>>),
    Zlib(ZlibEncoder<R>),
    Raw(DeflateEncoder<R>),
    Done,
}

/// Compresses a stream, deterministically (no mtime, fixed level): the same input gives the
/// same bytes on every request. Gzip output is one member per entry of `members` (lengths of
/// the uncompressed pieces; the last one takes the rest).
pub struct Encode<R: Read> {
    stage: Stage<R>,
    members: std::collections::VecDeque<u64>,
}

fn gz_member<R: Read>(r: R, len: u64) -> GzEncoder<io::Take<R>> {
    GzBuilder::new()
        .mtime(0)
        .read(r.take(len), Compression::fast())
}

impl<R: Read> Encode<R> {
    pub fn new(inner: R, codec: Codec, members: Vec<u64>) -> Self {
        let mut members: std::collections::VecDeque<u64> = members.into();
        let stage = match codec {
            Codec::Gzip => {
                let len = if members.len() > 1 {
                    members.pop_front().unwrap_or(u64::MAX)
                } else {
                    members.clear();
                    u64::MAX
                };
                Stage::Gzip(gz_member(inner, len))
            }
            Codec::Zlib => Stage::Zlib(ZlibEncoder::new(inner, Compression::fast())),
            Codec::RawDeflate => Stage::Raw(DeflateEncoder::new(inner, Compression::fast())),
        };
        Encode { stage, members }
    }
}

/// Splits `total` bytes into `n` nearly equal piece lengths.
pub fn split_even(total: u64, n: u64) -> Vec<u64> {
    let n = n.max(1);
    (0..n)
        .map(|k| {
            let a = u128::from(total) * u128::from(k) / u128::from(n);
            let b = u128::from(total) * u128::from(k + 1) / u128::from(n);
            (b - a) as u64
        })
        .collect()
}

impl<R: Read> Read for Encode<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = match &mut self.stage {
                Stage::Gzip(g) => g.read(out)?,
                Stage::Zlib(z) => return z.read(out),
                Stage::Raw(d) => return d.read(out),
                Stage::Done => return Ok(0),
            };
            if n > 0 || out.is_empty() {
                return Ok(n);
            }
            // This member is complete: start the next one on the rest of the input.
            let Stage::Gzip(g) = std::mem::replace(&mut self.stage, Stage::Done) else {
                return Ok(0);
            };
            let Some(len) = self.members.pop_front() else {
                return Ok(0);
            };
            let inner = g.into_inner().into_inner();
            let len = if self.members.is_empty() {
                u64::MAX
            } else {
                len
            };
            self.stage = Stage::Gzip(gz_member(inner, len));
        }
    }
}

/// How a raw response delimits its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length: N`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Neither: `Connection: close`, and the body ends when the connection is shut down.
    Close,
}

/// A response written byte by byte by the sandbox itself (faults tiny_http cannot express).
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Box<dyn Read + Send>,
    pub framing: Framing,
    /// Send at most this many body bytes, then shut the connection down.
    pub cut: Option<u64>,
    /// Chunked: after this many body bytes, a chunk-size line that is not hex
    /// (`zz\r\n`), then the connection is shut down.
    pub bad_chunk_at: Option<u64>,
    /// HEAD: the head only.
    pub head_only: bool,
}

/// Writes `r` on the request's connection, flushing after every piece (so that pauses in
/// the body reach the client), and shuts the connection down when the framing requires it
/// (close-delimited bodies, cuts, broken chunking, or a body that failed mid-way).
pub fn send_raw(req: tiny_http::Request, local_port: u16, mut r: RawResponse) {
    let peer = req.remote_addr().copied();
    let mut w = req.into_writer();
    let kill = write_raw(&mut w, &mut r).unwrap_or(true);
    let _ = w.flush();
    if kill {
        if let Some(peer) = peer {
            kill_connection(local_port, peer);
        }
    }
}

/// Writes the response; Ok(true) when the connection must be shut down afterwards.
fn write_raw(w: &mut dyn Write, r: &mut RawResponse) -> io::Result<bool> {
    let reason = tiny_http::StatusCode(r.status).default_reason_phrase();
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", r.status);
    match r.framing {
        Framing::Length(n) => head.push_str(&format!("Content-Length: {n}\r\n")),
        Framing::Chunked => head.push_str("Transfer-Encoding: chunked\r\n"),
        Framing::Close => head.push_str("Connection: close\r\n"),
    }
    for (k, v) in &r.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    w.flush()?;
    if r.head_only {
        return Ok(r.framing == Framing::Close);
    }
    let chunked = r.framing == Framing::Chunked;
    let mut sent: u64 = 0;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let mut want = buf.len() as u64;
        if let Some(c) = r.cut {
            want = want.min(c.saturating_sub(sent));
        }
        if let (true, Some(b)) = (chunked, r.bad_chunk_at) {
            want = want.min(b.saturating_sub(sent));
        }
        if want == 0 {
            if chunked && r.bad_chunk_at.is_some_and(|b| sent >= b) {
                w.write_all(b"zz\r\n")?;
            }
            w.flush()?;
            return Ok(true);
        }
        let n = r.body.read(&mut buf[..want as usize])?;
        if n == 0 {
            break;
        }
        if chunked {
            w.write_all(format!("{n:x}\r\n").as_bytes())?;
            w.write_all(&buf[..n])?;
            w.write_all(b"\r\n")?;
        } else {
            w.write_all(&buf[..n])?;
        }
        w.flush()?;
        sent += n as u64;
    }
    if chunked {
        w.write_all(b"0\r\n\r\n")?;
    }
    w.flush()?;
    // A close-delimited body ends here; a short Content-Length body must not be followed by
    // another response either.
    Ok(match r.framing {
        Framing::Close => true,
        Framing::Length(n) => sent < n,
        Framing::Chunked => false,
    })
}

/// Shuts down this process's TCP socket bound to `local_port` and connected to `peer` (both
/// directions): tiny_http owns the socket and offers no way to close a kept-alive connection.
#[cfg(target_os = "linux")]
fn kill_connection(local_port: u16, peer: SocketAddr) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::c_int>().ok())
        else {
            continue;
        };
        if sock_addr(fd, false).map(|a| a.port()) == Some(local_port)
            && sock_addr(fd, true) == Some(peer)
        {
            // SAFETY: shutdown(2) on an fd number only changes the state of that socket; the fd
            // stays open (owned by tiny_http), so nothing is closed behind its owner's back. An
            // fd that is not a socket (closed and reused meanwhile) just returns an error.
            unsafe {
                libc::shutdown(fd, libc::SHUT_RDWR);
            }
            return;
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn kill_connection(_local_port: u16, _peer: SocketAddr) {}

/// The local (`peer` false) or remote address of socket `fd`, when it is an IP socket.
#[cfg(target_os = "linux")]
fn sock_addr(fd: libc::c_int, peer: bool) -> Option<SocketAddr> {
    // SAFETY: sockaddr_storage is plain data for which all-zero bytes are valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = (&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr>();
    // SAFETY: `p` points to a sockaddr_storage of `len` bytes, the size both calls are told;
    // they write at most that much and fail harmlessly on an fd that is not a socket.
    let rc = unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    };
    if rc != 0 {
        return None;
    }
    match libc::c_int::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large
            // enough and suitably aligned for.
            let a = unsafe { &*(&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a =
                unsafe { &*(&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::from((ip, u16::from_be(a.sin6_port))))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::plan::{LinesReader, VecSource};

    fn render(f: LineFaults, lines: &[&str]) -> Vec<u8> {
        let lines = Arc::new(lines.iter().map(|l| l.to_string()).collect::<Vec<_>>());
        let mut out = Vec::new();
        let stop = Arc::new(AtomicBool::new(false));
        LinesReader::new(FaultLines::new(VecSource::new(lines), f), stop)
            .read_to_end(&mut out)
            .expect("read");
        out
    }

    const TWO: [&str; 2] = ["{\"a\":1}", "{\"a\":2}"];

    #[test]
    fn line_faults() {
        let faults = Faults {
            bad_line: Some(2),
            long_line: Some((100, 1)),
            truncate_last: Some(Truncate::Plain),
            ..Faults::default()
        };
        let out = String::from_utf8(render(LineFaults::output(&faults, 1), &TWO)).expect("utf8");
        let got: Vec<&str> = out.split('\n').collect();
        assert_eq!(got.len(), 5, "{out}");
        assert_eq!(got[0], "{\"a\":1}");
        assert_eq!(got[1].len(), 100);
        let v: serde_json::Value = serde_json::from_str(got[1]).expect("long line is JSON");
        assert_eq!(v["id"], "sandbox-long-line");
        assert_eq!(got[2], "{\"a\":2}");
        assert_eq!(got[3], BAD_LINE);
        assert_eq!(got[4], TRUNCATED_LINE);
        // Nothing on: the same bytes as the source.
        assert_eq!(
            render(LineFaults::default(), &TWO),
            b"{\"a\":1}\n{\"a\":2}\n"
        );
        assert!(!LineFaults::output(&Faults::default(), 2).any());
    }

    #[test]
    fn several_long_lines_and_inner_truncation() {
        let f = LineFaults {
            long_line: Some((200, 2)),
            truncate: Some(Truncate::Inner),
            ..LineFaults::default()
        };
        let out =
            String::from_utf8(render(f, &["{\"a\":1}", "{\"a\":2}", "{\"a\":3}"])).expect("utf8");
        let got: Vec<&str> = out.split('\n').collect();
        assert_eq!(got.len(), 6, "{out}");
        for (i, k) in [(1, 1), (3, 2)] {
            let v: serde_json::Value = serde_json::from_str(got[i]).expect("JSON");
            assert_eq!(v["id"], format!("sandbox-long-line-{k}"));
            assert_eq!(got[i].len(), 200);
        }
        assert_eq!(got[4], "{\"a\":3}");
        assert_eq!(got[5], TRUNCATED_INNER_LINE);
        assert!(TRUNCATED_INNER_LINE.ends_with('}'));
        assert!(serde_json::from_str::<serde_json::Value>(TRUNCATED_INNER_LINE).is_err());
    }

    #[test]
    fn bad_utf8_line() {
        let f = LineFaults {
            bad_utf8: Some(1),
            ..LineFaults::default()
        };
        let out = render(f, &TWO);
        assert!(String::from_utf8(out.clone()).is_err());
        let lines: Vec<&[u8]> = out.split(|&b| b == b'\n').collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], b"{\"a\":1}");
        assert_eq!(lines[1], BAD_UTF8_LINE);
        assert!(lines[1].windows(2).any(|w| w == [0xFF, 0xFE]));
        assert_eq!(lines[2], b"{\"a\":2}");
        assert_eq!(lines[3], b"");
    }

    #[test]
    fn contained_first_and_reformat() {
        let f = LineFaults {
            contained_first: true,
            ..LineFaults::default()
        };
        let src = ["{\"resourceType\":\"Patient\",\"id\":\"p1\"}\n{\"resourceType\":\"Patient\",\"id\":\"p2\"}"];
        let out = String::from_utf8(render(f, &src)).expect("utf8");
        for (line, id) in out.lines().zip(["p1", "p2"]) {
            assert!(
                line.starts_with(&format!(
                    "{{{CONTAINED_MEMBER},\"resourceType\":\"Patient\""
                )),
                "{line}"
            );
            let v: serde_json::Value = serde_json::from_str(line).expect("JSON");
            assert_eq!(v["id"], id);
            assert_eq!(v["contained"][0]["id"], "sandbox-contained");
        }
        // A resource with contained resources of its own: one `contained`, the Basic first.
        let src = ["{\"resourceType\":\"MedicationRequest\",\"contained\":[{\"resourceType\":\"Medication\",\"id\":\"med1\"}]}"];
        let f = LineFaults {
            contained_first: true,
            ..LineFaults::default()
        };
        let out = String::from_utf8(render(f, &src)).expect("utf8");
        assert_eq!(out.matches("\"contained\"").count(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
        assert_eq!(v["contained"][0]["id"], "sandbox-contained");
        assert_eq!(v["contained"][1]["id"], "med1");
        let faults = Faults {
            change_file: true,
            truncate_last: Some(Truncate::Plain),
            ..Faults::default()
        };
        assert!(!LineFaults::output(&faults, 1).reformat);
        let out = render(LineFaults::output(&faults, 2), &TWO);
        let want = format!(" {{\"a\":1}}\r\n {{\"a\":2}}\r\n {TRUNCATED_LINE}");
        assert_eq!(String::from_utf8(out).expect("utf8"), want);
        assert!(LineFaults::other(&faults, 2).reformat && !LineFaults::other(&faults, 1).any());
    }

    #[test]
    fn stall_passes_everything_through() {
        let stop = Arc::new(AtomicBool::new(false));
        let mut s = Stall::new(&b"0123456789"[..], 4, 60, stop);
        let t = std::time::Instant::now();
        let mut out = Vec::new();
        s.read_to_end(&mut out).expect("read");
        assert_eq!(out, b"0123456789");
        assert!(t.elapsed() >= Duration::from_millis(60));
    }

    #[test]
    fn trickle_sends_one_byte_per_pause() {
        let stop = Arc::new(AtomicBool::new(false));
        let mut t = Trickle::new(&b"0123456789"[..], 6, 20, Arc::clone(&stop));
        let mut buf = [0u8; 64];
        assert_eq!(t.read(&mut buf).expect("read"), 6);
        let at = std::time::Instant::now();
        assert_eq!(t.read(&mut buf).expect("read"), 1);
        assert_eq!(buf[0], b'6');
        assert!(at.elapsed() >= Duration::from_millis(20));
        let mut rest = Vec::new();
        t.read_to_end(&mut rest).expect("read");
        assert_eq!(rest, b"789");
        stop.store(true, Ordering::Relaxed);
        let mut t = Trickle::new(&b"01"[..], 0, 10, stop);
        assert!(t.read(&mut buf).is_err());
    }

    #[test]
    fn endless_stops_with_the_sandbox() {
        let stop = Arc::new(AtomicBool::new(false));
        let mut e = Endless::new(Arc::clone(&stop));
        let mut buf = [0u8; 100];
        let mut total = 0;
        for _ in 0..10 {
            total += e.read(&mut buf).expect("read");
        }
        assert!(total > 500);
        stop.store(true, Ordering::Relaxed);
        assert!(e.read(&mut buf).is_err());
    }

    #[test]
    fn endless_repeats_its_unit() {
        let stop = Arc::new(AtomicBool::new(false));
        let mut e = Endless::with(b"[".to_vec(), b"{\"a\":1},".to_vec(), stop);
        let mut out = vec![0u8; 3];
        let mut all = Vec::new();
        for _ in 0..10 {
            let n = e.read(&mut out).expect("read");
            all.extend_from_slice(&out[..n]);
        }
        let text = String::from_utf8(all).expect("utf8");
        assert!(
            text.starts_with("[{\"a\":1},{\"a\":1},{\"a\":1},{\"a"),
            "{text}"
        );
    }

    fn encode(data: &[u8], codec: Codec, members: Vec<u64>) -> Vec<u8> {
        let mut out = Vec::new();
        Encode::new(data, codec, members)
            .read_to_end(&mut out)
            .expect("encode");
        out
    }

    #[test]
    fn gzip_members_zlib_and_raw_deflate() {
        let data: Vec<u8> = (0..5000u32)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        let parts = split_even(data.len() as u64, 3);
        assert_eq!(parts.iter().sum::<u64>(), data.len() as u64);
        assert!(parts.iter().max().unwrap_or(&0) - parts.iter().min().unwrap_or(&0) <= 1);
        let gz = encode(&data, Codec::Gzip, parts.clone());
        // Deterministic: the same bytes again.
        assert_eq!(gz, encode(&data, Codec::Gzip, parts));
        let mut all = Vec::new();
        flate2::read::MultiGzDecoder::new(&gz[..])
            .read_to_end(&mut all)
            .expect("gunzip");
        assert_eq!(all, data);
        // A reader of only the first member gets the first third.
        let mut first = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut first)
            .expect("gunzip");
        assert_eq!(first, &data[..data.len() / 3]);
        let one = encode(&data, Codec::Gzip, Vec::new());
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&one[..])
            .read_to_end(&mut back)
            .expect("gunzip");
        assert_eq!(back, data);
        assert_eq!(&one[4..8], &[0, 0, 0, 0], "no mtime");

        let z = encode(&data, Codec::Zlib, Vec::new());
        let mut back = Vec::new();
        flate2::read::ZlibDecoder::new(&z[..])
            .read_to_end(&mut back)
            .expect("zlib");
        assert_eq!(back, data);
        let d = encode(&data, Codec::RawDeflate, Vec::new());
        let mut back = Vec::new();
        flate2::read::DeflateDecoder::new(&d[..])
            .read_to_end(&mut back)
            .expect("deflate");
        assert_eq!(back, data);
        assert_ne!(z, d);
    }
}
