//! Fault injection: what hospital networks and servers do to a bulk export, on demand
//! (scenario keys in [`super::scenario::Faults`]). Line faults wrap a file's line source; body
//! faults wrap the byte stream or cut the connection.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::plan::LineSource;
use super::scenario::Faults;

/// The extra line `bad_line` inserts: what a proxy's error page looks like in a file.
pub const BAD_LINE: &str = "<html><body>502 Bad Gateway</body></html>";
/// The cut-off line `truncate_last` appends (no newline).
pub const TRUNCATED_LINE: &str =
    "{\"resourceType\":\"Observation\",\"id\":\"sandbox-truncated\",\"status\":\"fin";

/// Inserts the line faults of `faults` into an output file's lines.
pub struct FaultLines<S> {
    inner: S,
    lines: u64,
    bad_line: Option<u64>,
    long_line: Option<u64>,
    truncate_last: bool,
}

impl<S: LineSource> FaultLines<S> {
    pub fn new(inner: S, faults: &Faults) -> Self {
        FaultLines {
            inner,
            lines: 0,
            bad_line: faults.bad_line,
            long_line: faults.long_line,
            truncate_last: faults.truncate_last,
        }
    }
}

/// `{"resourceType":"Basic","id":"sandbox-long-line","note":"xxx…"}` of `len` bytes (at
/// least its fixed part).
pub fn long_line(len: u64) -> String {
    let head = "{\"resourceType\":\"Basic\",\"id\":\"sandbox-long-line\",\"note\":\"";
    let tail = "\"}";
    let fill = usize::try_from(len)
        .unwrap_or(usize::MAX)
        .saturating_sub(head.len() + tail.len());
    let mut s = String::with_capacity(head.len() + fill + tail.len());
    s.push_str(head);
    s.extend(std::iter::repeat('x').take(fill));
    s.push_str(tail);
    s
}

impl<S: LineSource> LineSource for FaultLines<S> {
    fn next_line(&mut self, out: &mut String) -> bool {
        if !self.inner.next_line(out) {
            if std::mem::take(&mut self.truncate_last) {
                out.push_str(TRUNCATED_LINE);
                return true;
            }
            return false;
        }
        self.lines += 1;
        if self.bad_line == Some(self.lines) {
            out.push_str(BAD_LINE);
            out.push('\n');
        }
        if self.lines == 1 {
            if let Some(len) = self.long_line {
                out.push_str(&long_line(len));
                out.push('\n');
            }
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

/// An endless line: `{"resourceType":"Basic","note":"xxxx…` forever, until the sandbox stops.
pub struct Endless {
    head: &'static [u8],
    pos: usize,
    stop: Arc<AtomicBool>,
}

impl Endless {
    pub fn new(stop: Arc<AtomicBool>) -> Self {
        Endless {
            head: b"{\"resourceType\":\"Basic\",\"note\":\"",
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
        out.fill(b'x');
        Ok(out.len())
    }
}

/// Writes a response head announcing `Content-Length: total`, then the first `cut` bytes of
/// `body`, flushes, and closes the connection: the client sees the transfer break mid-body.
pub fn send_cut(
    req: tiny_http::Request,
    local_port: u16,
    status: u16,
    headers: &[(&'static str, String)],
    body: impl Read,
    total: u64,
    cut: u64,
) {
    let peer = req.remote_addr().copied();
    let mut w = req.into_writer();
    let reason = tiny_http::StatusCode(status).default_reason_phrase();
    let mut head = format!("HTTP/1.1 {status} {reason}\r\nContent-Length: {total}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let sent = w
        .write_all(head.as_bytes())
        .and_then(|()| io::copy(&mut body.take(cut), &mut w))
        .and_then(|_| w.flush());
    if sent.is_ok() {
        if let Some(peer) = peer {
            kill_connection(local_port, peer);
        }
    }
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
    use crate::sandbox::plan::VecSource;

    fn render(src: &mut impl LineSource) -> String {
        let mut out = String::new();
        while src.next_line(&mut out) {}
        out
    }

    #[test]
    fn line_faults() {
        let lines = Arc::new(vec!["{\"a\":1}".to_string(), "{\"a\":2}".to_string()]);
        let f = Faults {
            bad_line: Some(2),
            long_line: Some(100),
            truncate_last: true,
            ..Faults::default()
        };
        let out = render(&mut FaultLines::new(VecSource::new(lines), &f));
        let got: Vec<&str> = out.split('\n').collect();
        assert_eq!(got.len(), 5, "{out}");
        assert_eq!(got[0], "{\"a\":1}");
        assert_eq!(got[1].len(), 100);
        assert!(serde_json::from_str::<serde_json::Value>(got[1]).is_ok());
        assert_eq!(got[2], "{\"a\":2}");
        assert_eq!(got[3], BAD_LINE);
        assert_eq!(got[4], TRUNCATED_LINE);
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
}
