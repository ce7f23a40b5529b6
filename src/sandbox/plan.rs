//! Walking the selected records, splitting them into files, and streaming files.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::data::{self, Record};
use super::params::Selection;

/// Position in a walk (patient/block position, type position, record number).
#[derive(Clone, Copy, Debug, Default)]
pub struct Cursor {
    p: usize,
    ti: usize,
    j: usize,
}

#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// One resource type, patients in order.
    Type(usize),
    /// Blocks per patient (all types), then one header-less block of non-patient types.
    Organized,
}

pub struct Key {
    pub block: usize,
    pub t: usize,
    pub i: usize,
    pub j: usize,
}

/// Next candidate record (before time/filter checks).
fn walk_next(sel: &Selection, mode: Mode, c: &mut Cursor) -> Option<Key> {
    match mode {
        Mode::Type(t) if data::is_patient_type(t) => loop {
            let i = *sel.patients.get(c.p)?;
            if c.j < data::count_for(t, i) {
                let k = Key {
                    block: c.p,
                    t,
                    i,
                    j: c.j,
                };
                c.j += 1;
                return Some(k);
            }
            c.p += 1;
            c.j = 0;
        },
        Mode::Type(t) => {
            if !sel.otypes.contains(&t) || c.j >= data::count_for(t, 0) {
                return None;
            }
            let k = Key {
                block: 0,
                t,
                i: 0,
                j: c.j,
            };
            c.j += 1;
            Some(k)
        }
        Mode::Organized => loop {
            let np = sel.patients.len();
            let (types, i) = match c.p.cmp(&np) {
                std::cmp::Ordering::Less => (&sel.ptypes, sel.patients[c.p]),
                std::cmp::Ordering::Equal => (&sel.otypes, 0),
                std::cmp::Ordering::Greater => return None,
            };
            let Some(&t) = types.get(c.ti) else {
                c.p += 1;
                c.ti = 0;
                c.j = 0;
                continue;
            };
            if c.j < data::count_for(t, i) {
                let k = Key {
                    block: c.p,
                    t,
                    i,
                    j: c.j,
                };
                c.j += 1;
                return Some(k);
            }
            c.ti += 1;
            c.j = 0;
        },
    }
}

/// Next selected record; the built record is returned when filtering needed it.
pub fn next_match(sel: &Selection, mode: Mode, c: &mut Cursor) -> Option<(Key, Option<Record>)> {
    loop {
        let k = walk_next(sel, mode, c)?;
        if !sel.time_ok(k.t, k.i, k.j) {
            continue;
        }
        if !sel.has_filter(k.t) {
            return Some((k, None));
        }
        let rec = data::build(k.t, k.i, k.j);
        if sel.filter_ok(&rec) {
            return Some((k, Some(rec)));
        }
    }
}

/// Number of selected records of type `t`.
pub fn count_type(sel: &Selection, t: usize) -> u64 {
    if !sel.types.contains(&t) {
        return 0;
    }
    let mut c = Cursor::default();
    let mut n = 0;
    while next_match(sel, Mode::Type(t), &mut c).is_some() {
        n += 1;
    }
    n
}

/// One output file: where it starts and how many resources it holds.
#[derive(Clone, Debug)]
pub struct Part {
    pub mode: Mode,
    pub start: Cursor,
    pub count: u64,
    /// Organized output: the last patient block continues in the next file.
    pub continues: bool,
}

/// Splits the selection into files of at most `rpf` resources.
pub fn build_parts(sel: &Selection, organized: bool, rpf: usize) -> Vec<Part> {
    let rpf = rpf.max(1) as u64;
    let modes: Vec<Mode> = if organized {
        vec![Mode::Organized]
    } else {
        sel.types.iter().map(|&t| Mode::Type(t)).collect()
    };
    let mut parts = Vec::new();
    for mode in modes {
        let mut c = Cursor::default();
        let mut cur: Option<Part> = None;
        let mut last_block = None;
        loop {
            let before = c;
            let Some((k, _)) = next_match(sel, mode, &mut c) else {
                break;
            };
            match cur.as_mut() {
                Some(p) if p.count < rpf => p.count += 1,
                _ => {
                    if let Some(mut p) = cur.take() {
                        p.continues = organized
                            && last_block == Some(k.block)
                            && k.block < sel.patients.len();
                        parts.push(p);
                    }
                    cur = Some(Part {
                        mode,
                        start: before,
                        count: 1,
                        continues: false,
                    });
                }
            }
            last_block = Some(k.block);
        }
        parts.extend(cur);
    }
    parts
}

/// Produces the lines of a file, one at a time (each ending in '\n').
pub trait LineSource: Send {
    fn next_line(&mut self, out: &mut String) -> bool;
}

/// Produces the lines of a file as bytes (line faults can write bytes that are not UTF-8).
pub trait ByteLineSource: Send {
    fn next_line(&mut self, out: &mut Vec<u8>) -> bool;
}

pub struct PartSource {
    sel: Arc<Selection>,
    mode: Mode,
    c: Cursor,
    remaining: u64,
    cur_block: Option<usize>,
}

impl PartSource {
    pub fn new(sel: Arc<Selection>, part: &Part) -> Self {
        PartSource {
            sel,
            mode: part.mode,
            c: part.start,
            remaining: part.count,
            cur_block: None,
        }
    }
}

impl LineSource for PartSource {
    fn next_line(&mut self, out: &mut String) -> bool {
        if self.remaining == 0 {
            return false;
        }
        let Some((k, rec)) = next_match(&self.sel, self.mode, &mut self.c) else {
            self.remaining = 0;
            return false;
        };
        if matches!(self.mode, Mode::Organized) && self.cur_block != Some(k.block) {
            self.cur_block = Some(k.block);
            if k.block < self.sel.patients.len() {
                out.push_str(&header_line(k.i));
                out.push('\n');
            }
        }
        let rec = rec.unwrap_or_else(|| data::build(k.t, k.i, k.j));
        let start = out.len();
        data::render(
            &rec,
            self.sel.elements.get(k.t).and_then(|e| e.as_deref()),
            out,
        );
        if data::has_documents(k.t) {
            data::relocate_docs(out, start, &self.sel.doc_store);
        }
        out.push('\n');
        self.remaining -= 1;
        true
    }
}

pub fn header_line(i: usize) -> String {
    format!(
        "{{\"resourceType\":\"Parameters\",\"parameter\":[{{\"name\":\"header\",\"valueReference\":{{\"reference\":\"Patient/p{i}\"}}}}]}}"
    )
}

/// Fixed lines (error files).
pub struct VecSource {
    lines: Arc<Vec<String>>,
    idx: usize,
}

impl VecSource {
    pub fn new(lines: Arc<Vec<String>>) -> Self {
        VecSource { lines, idx: 0 }
    }
}

impl LineSource for VecSource {
    fn next_line(&mut self, out: &mut String) -> bool {
        let Some(l) = self.lines.get(self.idx) else {
            return false;
        };
        self.idx += 1;
        out.push_str(l);
        out.push('\n');
        true
    }
}

/// Deleted-resource transaction Bundles for Patient/d0..d{n-1}.
pub struct DeletedSource {
    n: u64,
    idx: u64,
}

impl DeletedSource {
    pub fn new(n: u64) -> Self {
        DeletedSource { n, idx: 0 }
    }
}

impl LineSource for DeletedSource {
    fn next_line(&mut self, out: &mut String) -> bool {
        if self.idx >= self.n {
            return false;
        }
        out.push_str(&format!(
            "{{\"resourceType\":\"Bundle\",\"type\":\"transaction\",\"entry\":[{{\"request\":{{\"method\":\"DELETE\",\"url\":\"Patient/d{}\"}}}}]}}\n",
            self.idx
        ));
        self.idx += 1;
        true
    }
}

const CHUNK: usize = 64 * 1024;

fn stopping() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "sandbox stopping")
}

/// A [`LineSource`] as a [`ByteLineSource`] (one copy per line, far below the cost of
/// rendering it).
pub struct Text<S> {
    src: S,
    line: String,
}

impl<S: LineSource> Text<S> {
    pub fn new(src: S) -> Self {
        Text {
            src,
            line: String::new(),
        }
    }
}

impl<S: LineSource> ByteLineSource for Text<S> {
    fn next_line(&mut self, out: &mut Vec<u8>) -> bool {
        self.line.clear();
        let more = self.src.next_line(&mut self.line);
        out.extend_from_slice(self.line.as_bytes());
        more
    }
}

/// Adapts a [`ByteLineSource`] to `Read`, rendering about 64 KiB at a time (wrap a
/// [`LineSource`] in [`Text`]).
pub struct LinesReader<S> {
    src: S,
    buf: Vec<u8>,
    pos: usize,
    stop: Arc<AtomicBool>,
}

impl<S: ByteLineSource> LinesReader<S> {
    pub fn new(src: S, stop: Arc<AtomicBool>) -> Self {
        LinesReader {
            src,
            buf: Vec::with_capacity(CHUNK + 4096),
            pos: 0,
            stop,
        }
    }
}

impl<S: LineSource> LinesReader<Text<S>> {
    /// The reader of a [`LineSource`].
    pub fn text(src: S, stop: Arc<AtomicBool>) -> Self {
        LinesReader::new(Text::new(src), stop)
    }
}

impl<S: ByteLineSource> Read for LinesReader<S> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.buf.len() {
            if self.stop.load(Ordering::Relaxed) {
                return Err(stopping());
            }
            self.buf.clear();
            self.pos = 0;
            while self.buf.len() < CHUNK && self.src.next_line(&mut self.buf) {}
            if self.buf.is_empty() {
                return Ok(0);
            }
        }
        let bytes = &self.buf[self.pos..];
        let n = bytes.len().min(out.len());
        out[..n].copy_from_slice(&bytes[..n]);
        self.pos += n;
        Ok(n)
    }
}

/// Sleeps `ms` before each 64 KiB chunk of the wrapped stream (the first one
/// too, so small files are slow as well).
pub struct Slow<R> {
    inner: R,
    ms: u64,
    in_chunk: usize,
    stop: Arc<AtomicBool>,
}

impl<R: Read> Slow<R> {
    pub fn new(inner: R, ms: u64, stop: Arc<AtomicBool>) -> Self {
        Slow {
            inner,
            ms,
            in_chunk: CHUNK,
            stop,
        }
    }
}

impl<R: Read> Read for Slow<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.in_chunk >= CHUNK {
            let mut left = self.ms;
            while left > 0 {
                if self.stop.load(Ordering::Relaxed) {
                    return Err(stopping());
                }
                let step = left.min(50);
                std::thread::sleep(Duration::from_millis(step));
                left -= step;
            }
            self.in_chunk = 0;
        }
        let max = out.len().min(CHUNK - self.in_chunk);
        let n = self.inner.read(&mut out[..max])?;
        self.in_chunk += n;
        Ok(n)
    }
}

/// Discards the first `skip` bytes of the wrapped stream.
pub struct Skip<R> {
    inner: R,
    skip: u64,
}

impl<R: Read> Skip<R> {
    pub fn new(inner: R, skip: u64) -> Self {
        Skip { inner, skip }
    }
}

impl<R: Read> Read for Skip<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut tmp = [0u8; 8192];
        while self.skip > 0 {
            let want = tmp
                .len()
                .min(usize::try_from(self.skip).unwrap_or(usize::MAX));
            let n = self.inner.read(&mut tmp[..want])?;
            if n == 0 {
                return Ok(0);
            }
            self.skip -= n as u64;
        }
        self.inner.read(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::params::{parse_export, Level};
    use super::*;

    fn sel(pairs: &[(&str, &str)], level: Level, n: usize) -> Selection {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match parse_export(&level, &pairs, true, false, n) {
            Ok(r) => r.sel,
            Err(e) => panic!("{e:?}"),
        }
    }

    fn read_part(sel: &Arc<Selection>, p: &Part) -> String {
        let mut s = String::new();
        let stop = Arc::new(AtomicBool::new(false));
        LinesReader::text(PartSource::new(sel.clone(), p), stop)
            .read_to_string(&mut s)
            .expect("read");
        s
    }

    #[test]
    fn parts_cover_counts() {
        let s = Arc::new(sel(&[], Level::System, 37));
        let parts = build_parts(&s, false, 10);
        for &t in &s.types {
            let total: u64 = parts
                .iter()
                .filter(|p| matches!(p.mode, Mode::Type(x) if x == t))
                .map(|p| p.count)
                .sum();
            assert_eq!(total, count_type(&s, t));
        }
        for p in &parts {
            assert!(p.count <= 10);
            assert_eq!(read_part(&s, p).lines().count() as u64, p.count);
        }
    }

    #[test]
    fn organized_blocks() {
        let s = Arc::new(sel(
            &[("_type", "Patient,Observation")],
            Level::Group("g1".into()),
            9,
        ));
        let parts = build_parts(&s, true, 4);
        let mut resources = 0;
        for (n, p) in parts.iter().enumerate() {
            let body = read_part(&s, p);
            let first = body.lines().next().unwrap_or_default();
            assert!(first.contains("\"header\""), "{first}");
            let res = body.lines().filter(|l| !l.contains("\"header\"")).count() as u64;
            assert_eq!(res, p.count);
            resources += res;
            if n + 1 < parts.len() {
                let next = read_part(&s, &parts[n + 1]);
                let last_hdr = body.lines().rfind(|l| l.contains("\"header\""));
                let next_hdr = next.lines().next();
                assert_eq!(p.continues, last_hdr == next_hdr);
            }
        }
        assert_eq!(resources, count_type(&s, 0) + count_type(&s, 2));
    }
}
