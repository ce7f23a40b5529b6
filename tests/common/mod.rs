//! What the fault-injection suites share: a sandbox, a config with fast polling and retries,
//! the ground truth, and a run that records every id delivered (type checked against the
//! record's own JSON) so that tests compare exact multisets.

#![allow(dead_code)]

#[cfg(feature = "parquet")]
pub mod parquet;
pub mod sig;

use fhirbulk::config::InvalidLinePolicy;
use fhirbulk::sandbox::{LoggedRequest, Sandbox, SandboxOptions, TruthQuery};
use fhirbulk::{Config, Error, Export, Kind, Level, Next, Progress};
use std::collections::BTreeSet;
use std::time::Duration;

pub const TYPES: [&str; 2] = ["Patient", "Observation"];

/// 30 patients, 25 resources per file: seven files, each ~10-20 KB.
pub fn sandbox() -> Sandbox {
    Sandbox::start(SandboxOptions {
        patients: 30,
        records_per_file: 25,
        ..SandboxOptions::default()
    })
    .expect("sandbox starts")
}

/// A group export of TYPES with fast polling and retries, small chunks (so a file spans many
/// chunks and a break lands between deliveries), and invalid lines skipped.
pub fn config(sb: &Sandbox, scenario: &str) -> Config {
    let mut c = Config::new(sb.scenario_url(&format!("polls=0;{scenario}")));
    c.level = Level::Group;
    c.group_id = Some("g1".into());
    c.types = TYPES.iter().map(|t| t.to_string()).collect();
    c.poll_min_ms = 10;
    c.poll_max_ms = 100;
    c.retry_backoff_min_ms = 10;
    c.retry_backoff_max_ms = 100;
    c.chunk_bytes = 2048;
    c.on_invalid_line = InvalidLinePolicy::Skip;
    c
}

pub fn truth(sb: &Sandbox) -> Vec<String> {
    let ids = sb.truth_ids(&TruthQuery {
        level: "group".into(),
        group: Some("g1".into()),
        types: TYPES.iter().map(|t| t.to_string()).collect(),
        ..TruthQuery::default()
    });
    assert!(
        ids.len() > 100,
        "a ground truth of some size: {}",
        ids.len()
    );
    ids
}

/// What an export delivered.
#[derive(Debug, Default)]
pub struct Delivered {
    /// `Type/id` of every output record, in delivery order (duplicates kept).
    pub ids: Vec<String>,
    /// Diagnostics of error records.
    pub errors: Vec<String>,
    /// `Parameters` header lines (files organized by patient).
    pub headers: usize,
    pub progress: Option<Progress>,
    pub warnings: Vec<String>,
}

impl Delivered {
    pub fn sorted(&self) -> Vec<String> {
        let mut v = self.ids.clone();
        v.sort_unstable();
        v
    }

    /// No id twice and every id in the truth.
    pub fn assert_subset_of(&self, truth: &[String]) {
        let truth: BTreeSet<&String> = truth.iter().collect();
        let mut seen = BTreeSet::new();
        for id in &self.ids {
            assert!(seen.insert(id), "{id} delivered twice");
            assert!(truth.contains(id), "{id} is not in the ground truth");
        }
    }

    pub fn retries(&self) -> u32 {
        self.progress.as_ref().map_or(0, |p| p.retries)
    }

    pub fn warned(&self, needle: &str) -> bool {
        self.warnings.iter().any(|w| w.contains(needle))
    }
}

/// Runs an export to its end; on failure returns the error with what was delivered before it.
/// Every output record's type (as the engine files it) must be its own `resourceType`.
pub fn run(cfg: Config) -> (Delivered, Option<Error>) {
    let mut d = Delivered::default();
    let mut export = match Export::start(cfg) {
        Ok(e) => e,
        Err(e) => return (d, Some(e)),
    };
    let err = loop {
        match export.next_record(Some(Duration::from_secs(30))) {
            Ok(Next::Item(r)) => {
                let v: serde_json::Value = serde_json::from_slice(r.data).expect("record is JSON");
                match r.kind {
                    Kind::Output => {
                        let ty = v["resourceType"].as_str().expect("resourceType");
                        let id = v["id"].as_str().unwrap_or("");
                        // Lines a fault inserts (`sandbox-...`) sit in files of another type.
                        if !id.starts_with("sandbox-") {
                            assert_eq!(r.resource_type, ty, "{id} filed under its own type");
                        }
                        if ty == "Parameters" {
                            d.headers += 1;
                            continue;
                        }
                        d.ids
                            .push(format!("{ty}/{}", v["id"].as_str().expect("id")));
                    }
                    Kind::Error => d.errors.push(v["issue"][0]["diagnostics"].to_string()),
                    Kind::Deleted => panic!("no deleted records were asked for"),
                    Kind::Attachment => panic!("no attachments were asked for"),
                }
            }
            Ok(Next::End) => break None,
            Ok(Next::Timeout) => panic!("no record within 30 s: {:?}", export.progress()),
            Ok(Next::Cancelled) => panic!("cancelled"),
            Err(e) => break Some(e),
        }
    };
    d.progress = Some(export.progress());
    d.warnings = export.controller().warnings();
    (d, err)
}

/// Runs an export that must succeed and deliver exactly the ground truth.
pub fn run_exact(sb: &Sandbox, cfg: Config) -> Delivered {
    let (d, err) = run(cfg);
    if let Some(e) = err {
        panic!("export failed: {e}");
    }
    assert_eq!(d.sorted(), truth(sb), "delivered ids differ from the truth");
    d
}

pub fn file_requests(sb: &Sandbox) -> Vec<LoggedRequest> {
    sb.requests()
        .into_iter()
        .filter(|r| r.path.contains("/files/"))
        .collect()
}

/// The distinct file paths requested.
pub fn file_paths(sb: &Sandbox) -> BTreeSet<String> {
    file_requests(sb).into_iter().map(|r| r.path).collect()
}

pub fn header<'a>(r: &'a LoggedRequest, name: &str) -> Option<&'a str> {
    r.header(name)
}
