//! A mutation fuzzer for the parsers that read what servers and callers send: the NDJSON
//! splitter, the manifest, the OperationOutcome, the config and the checkpoint. (cargo-fuzz
//! needs a nightly toolchain, which this project's machines cannot download; this harness does
//! the same job on stable: seeded mutations of a small corpus, invariants checked, no panic.)
//!
//! Runs a few thousand cases per target in the test suite; `FHIRBULK_FUZZ_SECS=N cargo test
//! --test fuzz -- --nocapture` fuzzes each target for N seconds, and `FHIRBULK_FUZZ_SEED`
//! replays a seed.

use fhirbulk::error::parse_operation_outcome;
use fhirbulk::manifest::{Kind, Manifest};
use fhirbulk::ndjson::{check_line, resource_type_of, Chunk, TypeName};
use fhirbulk::Config;
use std::time::{Duration, Instant};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz-corpus");

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"\n",
    b"\r\n",
    b"\\",
    b"\\u0000",
    b"null",
    b"true",
    b"-1",
    b"1e999",
    b"\"output\"",
    b"\"url\"",
    b"\"resourceType\"",
    b"\"issue\"",
    b"\"type\"",
    b"ftp://x",
    b"http://",
    b"\xff\xfe",
    b"\xc3\xa9",
    b"\"count\":18446744073709551616",
];

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(8) {
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = rng.below(16).min(v.len() - i);
                v.drain(i..i + n);
            }
            2 => {
                let i = rng.below(v.len() + 1);
                let t = TOKENS[rng.below(TOKENS.len())];
                v.splice(i..i, t.iter().copied());
            }
            3 if !v.is_empty() => {
                // Duplicate a slice.
                let i = rng.below(v.len());
                let n = rng.below(64).min(v.len() - i);
                let s: Vec<u8> = v[i..i + n].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, s);
            }
            4 => v.truncate(rng.below(v.len() + 1)),
            _ => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next() as u8);
            }
        }
    }
    v
}

fn corpus(prefix: &str) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = std::fs::read_dir(CORPUS)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    v.push(Vec::new());
    v
}

/// Run `check` on mutations of the corpus for the configured time or case count.
fn fuzz(name: &str, prefix: &str, check: impl Fn(&[u8])) {
    let seeds = corpus(prefix);
    let seed = std::env::var("FHIRBULK_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f00d_u64);
    let secs: u64 = std::env::var("FHIRBULK_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut rng = Rng(seed | 1);
    let mut cases = 0u64;
    for s in &seeds {
        check(s);
    }
    while cases < 3000 || Instant::now() < deadline {
        let base = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, base);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&input)));
        if r.is_err() {
            panic!(
                "{name}: panic on input {:?} (seed {seed})",
                String::from_utf8_lossy(&input)
            );
        }
        cases += 1;
    }
    if secs > 0 {
        eprintln!("{name}: {cases} cases");
    }
}

#[test]
fn fuzz_ndjson_splitter() {
    fuzz("ndjson", "ndjson", |input| {
        let mut data = input.to_vec();
        data.push(b'\n');
        let len = data.len();
        let mut chunk = Chunk {
            file_index: 0,
            kind: Kind::Output,
            data,
            len,
            lines: Vec::new(),
            types: Vec::new(),
            last: true,
            synthetic: false,
            content: None,
            extra: None,
        };
        let mut invalid = Vec::new();
        let physical = chunk.index_lines(1, None, 1, false, &mut invalid);
        assert_eq!(
            physical as usize,
            input.iter().filter(|b| **b == b'\n').count() + 1
        );
        assert!(chunk.len <= len);
        let mut prev_end = 0;
        let mut prev_line = 0;
        for m in &chunk.lines {
            assert!(m.start >= prev_end && m.end >= m.start && m.end < chunk.len);
            assert_eq!(chunk.data[m.end], b'\n');
            assert!(
                m.line > prev_line && m.line > 1,
                "line 1 was skipped as delivered"
            );
            assert!(check_line(&chunk.data[m.start..m.end], false).is_none());
            let _ = chunk.types[m.ty as usize].as_str();
            prev_end = m.end + 1;
            prev_line = m.line;
        }
        assert_eq!(
            prev_end, chunk.len,
            "compacted data is exactly the kept lines"
        );
        let _ = resource_type_of(input);
        let _ = TypeName::new(&String::from_utf8_lossy(input));
    });
}

#[test]
fn fuzz_manifest_parser() {
    fuzz("manifest", "manifest", |input| {
        if let Ok(m) = Manifest::parse(input, "http://h/jobs/1") {
            for f in &m.files {
                assert!(f.url.starts_with("http://") || f.url.starts_with("https://"));
            }
        }
    });
}

#[test]
fn fuzz_operation_outcome_parser() {
    fuzz("oo", "oo", |input| {
        for i in parse_operation_outcome(input) {
            let _ = fhirbulk::error::is_transient_issue_code(&i.code);
        }
        let e = fhirbulk::Error::from_response("x", 500, "http://h/x?secret=1", input);
        assert!(!e.url.as_deref().unwrap_or("").contains("secret"));
        let _ = e.to_json();
    });
}

#[test]
fn fuzz_config_and_checkpoint_parsers() {
    fuzz("config", "config", |input| {
        if let Ok(text) = std::str::from_utf8(input) {
            if let Ok(c) = Config::from_json(text) {
                assert!(c.concurrency >= 1);
            }
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
                let _ = fhirbulk::checkpoint::Checkpoint::from_value(&v);
                if let Some(r) = v.get("resume") {
                    let _ = fhirbulk::checkpoint::Checkpoint::from_value(r);
                }
            }
        }
    });
}
