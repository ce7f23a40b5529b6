//! Attachments (config `attachments`): every document the sandbox serves for DocumentReference
//! and DiagnosticReport records, fetched once and delivered with the bytes the sandbox's truth
//! says (SHA-1 compared), the rest reported as error records; the token only on the FHIR
//! server's origin; a checkpoint between a document and its record resumed without fetching or
//! delivering that document again; and the `fhirbulk` command's `--attachments save` files,
//! through a kill -9 and a resume.

use base64::Engine as _;
use fhirbulk::sandbox::{AttachmentTruth, Sandbox, SandboxOptions, TruthQuery};
use fhirbulk::{AttachmentMode, Auth, Config, Export, Kind, Level, Next};
use serde_json::Value;
use sha1::{Digest, Sha1};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TYPES: [&str; 2] = ["DocumentReference", "DiagnosticReport"];
const TOKEN: &str = "attachments-test-token";
/// Below the "large" documents (1.2-1.4 MB), above every other.
const MAX_BYTES: u64 = 1_000_000;
const FAILURES: [&str; 5] = [
    "missing",
    "forbidden",
    "server_error",
    "hash_mismatch",
    "large",
];

fn sandbox() -> Sandbox {
    Sandbox::start(SandboxOptions {
        patients: 20,
        records_per_file: 15,
        bearer_token: Some(TOKEN.into()),
        ..SandboxOptions::default()
    })
    .expect("sandbox starts")
}

const SCENARIO: &str = "polls=0";

fn config(sb: &Sandbox, mode: AttachmentMode) -> Config {
    let mut c = Config::new(sb.scenario_url(SCENARIO));
    c.level = Level::Group;
    c.group_id = Some("g1".into());
    c.types = TYPES.iter().map(|t| t.to_string()).collect();
    c.auth = Auth::Bearer {
        token: TOKEN.into(),
    };
    c.poll_min_ms = 10;
    c.poll_max_ms = 100;
    c.retry_max_attempts = 2;
    c.retry_backoff_min_ms = 10;
    c.retry_backoff_max_ms = 20;
    c.chunk_bytes = 4096;
    c.attachments = mode;
    c.attachment_max_bytes = MAX_BYTES;
    c
}

fn query() -> TruthQuery {
    TruthQuery {
        level: "group".into(),
        group: Some("g1".into()),
        types: TYPES.iter().map(|t| t.to_string()).collect(),
        ..TruthQuery::default()
    }
}

fn truth(sb: &Sandbox) -> Vec<AttachmentTruth> {
    let t = sb.truth_attachments(&query());
    let outcomes: BTreeSet<&str> = t.iter().map(|a| a.outcome.as_str()).collect();
    for o in ["ok", "inline"].iter().chain(FAILURES.iter()) {
        assert!(
            outcomes.contains(o),
            "the truth has {o} attachments: {outcomes:?}"
        );
    }
    t
}

type Key = (String, u64);

fn key(a: &AttachmentTruth) -> Key {
    (a.resource.clone(), a.position as u64)
}

fn hex_sha1(b: &[u8]) -> String {
    Sha1::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// Which attachment an error record made for one names: (resource, position).
fn failed_attachment(v: &Value) -> Option<Key> {
    let ext = v["extension"].as_array()?.iter().find(|e| {
        e["url"]
            .as_str()
            .is_some_and(|u| u.ends_with("/attachment-error"))
    })?;
    let sub = ext["extension"].as_array()?;
    let get = |name: &str| sub.iter().find(|e| e["url"] == name);
    Some((
        get("resource")?["valueString"].as_str()?.to_owned(),
        get("position")?["valueInteger"].as_u64()?,
    ))
}

/// The attachments of a record, in the order the sandbox's truth numbers them.
fn attachments_of(v: &Value) -> Vec<Value> {
    match v["resourceType"].as_str() {
        Some("DocumentReference") => v["content"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c["attachment"].clone())
            .collect(),
        _ => v["presentedForm"].as_array().cloned().unwrap_or_default(),
    }
}

/// What an export delivered.
#[derive(Default)]
struct Seen {
    /// `Type/id` of every output record (duplicates kept).
    ids: Vec<String>,
    /// Attachment records: (resource, position) -> hex SHA-1 of the bytes (a second one for
    /// the same attachment fails the test).
    documents: BTreeMap<Key, String>,
    /// Error records for attachments.
    failures: BTreeSet<Key>,
    /// Records as delivered, by `Type/id`.
    records: BTreeMap<String, Value>,
}

impl Seen {
    /// Take one record, checking the order (a document before its record) and once-ness.
    fn take(&mut self, kind: Kind, ty: &str, data: &[u8], content: Option<&[u8]>) {
        let v: Value = serde_json::from_slice(data).expect("records are JSON");
        match kind {
            Kind::Attachment => {
                let k = (
                    v["resource"].as_str().unwrap().to_owned(),
                    v["position"].as_u64().unwrap(),
                );
                assert!(
                    !self.records.contains_key(&k.0),
                    "the document of {k:?} came after its record"
                );
                let bytes = content.expect("an attachment record has content");
                assert_eq!(v["size"].as_u64(), Some(bytes.len() as u64));
                let b64 = base64::engine::general_purpose::STANDARD.encode(Sha1::digest(bytes));
                assert_eq!(v["hash"].as_str(), Some(b64.as_str()));
                let prev = self.documents.insert(k.clone(), hex_sha1(bytes));
                assert!(prev.is_none(), "the document of {k:?} was delivered twice");
            }
            Kind::Error => {
                let k = failed_attachment(&v)
                    .unwrap_or_else(|| panic!("error records here are attachments': {v}"));
                assert!(
                    !self.records.contains_key(&k.0),
                    "the error record of {k:?} came after its record"
                );
                assert!(self.failures.insert(k.clone()), "{k:?} reported twice");
            }
            _ => {
                assert!(content.is_none());
                let id = format!(
                    "{ty}/{}",
                    v["id"].as_str().unwrap_or_else(|| panic!("{kind:?} {v}"))
                );
                self.ids.push(id.clone());
                self.records.insert(id, v);
            }
        }
    }

    fn pull(&mut self, export: &mut Export, limit: Option<usize>) -> bool {
        let mut n = 0;
        loop {
            if limit.is_some_and(|l| n >= l) {
                return false;
            }
            match export.next_record(Some(Duration::from_secs(60))).unwrap() {
                Next::Item(r) => {
                    let (kind, ty, data, content) = (
                        r.kind,
                        r.resource_type.to_owned(),
                        r.data.to_vec(),
                        r.content,
                    );
                    self.take(kind, &ty, &data, content);
                    n += 1;
                    if limit.is_none() {
                        continue;
                    }
                    // Stop right after a document whose record is still to come.
                    if kind == Kind::Attachment && n >= 10 {
                        return false;
                    }
                }
                Next::End => return true,
                other => panic!("{other:?}"),
            }
        }
    }

    fn check_ids(&self, sb: &Sandbox) {
        let mut ids = self.ids.clone();
        ids.sort();
        assert_eq!(ids, sb.truth_ids(&query()), "every record exactly once");
    }
}

fn expected(t: &[AttachmentTruth], outcomes: &[&str]) -> BTreeSet<Key> {
    t.iter()
        .filter(|a| outcomes.contains(&a.outcome.as_str()))
        .map(key)
        .collect()
}

#[test]
fn save_delivers_each_document_once_before_its_record() {
    let sb = sandbox();
    let t = truth(&sb);
    let mut export = Export::start(config(&sb, AttachmentMode::Save)).unwrap();
    let mut seen = Seen::default();
    assert!(seen.pull(&mut export, None));
    seen.check_ids(&sb);
    let ok: BTreeMap<Key, String> = t
        .iter()
        .filter(|a| a.outcome == "ok")
        .map(|a| (key(a), a.sha1.clone()))
        .collect();
    assert_eq!(seen.documents, ok, "every document, its bytes as served");
    assert_eq!(seen.failures, expected(&t, &FAILURES), "the rest reported");
    let p = export.progress();
    assert_eq!(p.attachments_fetched, ok.len() as u64);
    assert_eq!(p.attachment_errors, seen.failures.len() as u64);
    // Records point at the saved files; failed and inline attachments are as they were.
    for a in &t {
        let rec = &seen.records[&a.resource];
        let att = &attachments_of(rec)[a.position];
        match a.outcome.as_str() {
            "ok" => {
                let url = att["url"].as_str().unwrap();
                assert!(url.starts_with("attachments/"), "{url}");
                assert!(att.get("data").is_none());
            }
            "inline" => assert!(att["data"].is_string()),
            _ => assert_eq!(att["url"].as_str(), a.url.as_deref()),
        }
    }
    // The token went to the FHIR server's Binary endpoint and never to the other origin (the
    // object store answers 400 to a request with Authorization: its documents arrived).
    let reqs = sb.requests();
    let binary = |server: &str| {
        reqs.iter()
            .filter(|r| r.server == server && r.path.to_ascii_lowercase().contains("/binary/"))
            .collect::<Vec<_>>()
    };
    assert!(!binary("store").is_empty(), "documents on another origin");
    for r in binary("store") {
        assert!(
            !r.headers.iter().any(|(k, _)| k == "authorization"),
            "no token to another origin: {r:?}"
        );
    }
    assert!(binary("fhir").iter().all(|r| r
        .headers
        .iter()
        .any(|(k, v)| k == "authorization" && v.starts_with("Bearer"))));
}

#[test]
fn inline_puts_each_document_into_its_record() {
    let sb = sandbox();
    let t = truth(&sb);
    let mut export = Export::start(config(&sb, AttachmentMode::Inline)).unwrap();
    let mut seen = Seen::default();
    assert!(seen.pull(&mut export, None));
    seen.check_ids(&sb);
    assert!(seen.documents.is_empty(), "inline: no attachment records");
    assert_eq!(seen.failures, expected(&t, &FAILURES));
    for a in &t {
        let att = &attachments_of(&seen.records[&a.resource])[a.position];
        match a.outcome.as_str() {
            "ok" | "inline" => {
                let data = base64::engine::general_purpose::STANDARD
                    .decode(att["data"].as_str().expect("data inline"))
                    .unwrap();
                assert_eq!(hex_sha1(&data), a.sha1, "{:?}", key(a));
                assert_eq!(att["size"].as_u64(), Some(a.size));
                assert!(att["hash"].is_string());
            }
            _ => assert!(att.get("data").is_none(), "{:?} failed: no data", key(a)),
        }
    }
    assert_eq!(
        export.progress().attachments_fetched,
        expected(&t, &["ok"]).len() as u64
    );
}

#[test]
fn content_types_and_types_choose_what_is_fetched() {
    let sb = sandbox();
    let t = truth(&sb);
    let mut c = config(&sb, AttachmentMode::Save);
    c.attachment_content_types = vec!["text/*".into()];
    c.attachment_types = vec!["DocumentReference".into()];
    let mut export = Export::start(c).unwrap();
    let mut seen = Seen::default();
    assert!(seen.pull(&mut export, None));
    seen.check_ids(&sb);
    let want: BTreeMap<Key, String> = t
        .iter()
        .filter(|a| {
            a.outcome == "ok"
                && a.content_type.starts_with("text/")
                && a.resource.starts_with("DocumentReference/")
        })
        .map(|a| (key(a), a.sha1.clone()))
        .collect();
    assert!(!want.is_empty());
    assert_eq!(seen.documents, want);
    let mut bad = Config::new("http://127.0.0.1:1/fhir");
    bad.attachments = AttachmentMode::Save;
    bad.attachment_types = vec!["Observation".into()];
    let e = Export::start(bad).err().unwrap();
    assert!(e.message.contains("attachment_types"), "{e}");
}

#[test]
fn a_checkpoint_between_a_document_and_its_record_resumes_exactly() {
    let sb = sandbox();
    let t = truth(&sb);
    let mut c = config(&sb, AttachmentMode::Save);
    c.delete_on_cancel = false;
    c.concurrency = 1;
    let mut first = Export::start(c.clone()).unwrap();
    let mut seen = Seen::default();
    assert!(!seen.pull(&mut first, Some(1000)), "stopped part-way");
    let cp = first.controller().checkpoint().unwrap();
    let cp_json = serde_json::to_value(&cp).unwrap();
    assert!(
        cp.in_progress.iter().any(|p| p.attachments.is_some()),
        "the checkpoint holds a document delivered before its record: {cp_json}"
    );
    first.cancel();
    drop(first);
    let before: BTreeSet<Key> = seen.documents.keys().cloned().collect();
    sb.clear_requests();
    let mut c2 = c;
    c2.resume = Some(cp_json);
    let mut second = Export::start(c2).unwrap();
    assert!(seen.pull(&mut second, None));
    seen.check_ids(&sb);
    let ok: BTreeMap<Key, String> = t
        .iter()
        .filter(|a| a.outcome == "ok")
        .map(|a| (key(a), a.sha1.clone()))
        .collect();
    assert_eq!(seen.documents, ok, "each document once across the resume");
    assert_eq!(seen.failures, expected(&t, &FAILURES));
    // No document delivered before the checkpoint was fetched again.
    let fetched_again: Vec<String> = sb
        .requests()
        .iter()
        .filter(|r| r.path.to_ascii_lowercase().contains("/binary/"))
        .map(|r| r.path.clone())
        .filter(|p| {
            t.iter().any(|a| {
                before.contains(&key(a))
                    && a.url
                        .as_deref()
                        .and_then(|u| u.rsplit('/').next())
                        .is_some_and(|doc| p.ends_with(&format!("/{doc}")))
            })
        })
        .collect();
    assert!(fetched_again.is_empty(), "fetched again: {fetched_again:?}");
    // The records whose documents came before the checkpoint still point at the saved files.
    for k in &before {
        let rec = &seen.records[&k.0];
        let url = attachments_of(rec)[k.1 as usize]["url"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(url.starts_with("attachments/"), "{k:?}: {url}");
    }
}

// ---- the command line --------------------------------------------------------------------

const BIN: &str = env!("CARGO_BIN_EXE_fhirbulk");

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fhirbulk-att-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    d
}

fn cli(base: &str, out: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.args(["export", "--base-url", base, "--out"])
        .arg(out)
        .args([
            "-g",
            "g1",
            "-t",
            &TYPES.join(","),
            "--bearer-token-env",
            "FHIRBULK_TEST_TOKEN",
            "--poll-min-ms",
            "10",
            "--retry-max-attempts",
            "2",
            "--retry-backoff-min-ms",
            "10",
            "--retry-backoff-max-ms",
            "20",
            "--attachments",
            "save",
            "--attachment-max-bytes",
            &MAX_BYTES.to_string(),
            "-q",
        ])
        .env("FHIRBULK_TEST_TOKEN", TOKEN)
        .stdin(Stdio::null());
    c
}

/// Every NDJSON line of the files under `dir` whose name starts with `prefix`.
fn lines_of(dir: &Path, prefix: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) && name.ends_with(".ndjson") {
            for l in std::fs::read_to_string(e.path()).unwrap().lines() {
                if !l.trim().is_empty() {
                    out.push(serde_json::from_str(l).unwrap());
                }
            }
        }
    }
    out
}

/// The export in `out` against the truth: every record once, every ok document saved with its
/// bytes where its record's url points, each failure once in the attachment error file.
fn check_cli_output(sb: &Sandbox, out: &Path, t: &[AttachmentTruth]) {
    let records: Vec<Value> = TYPES.iter().flat_map(|ty| lines_of(out, ty)).collect();
    let mut ids: Vec<String> = records
        .iter()
        .map(|v| {
            format!(
                "{}/{}",
                v["resourceType"].as_str().unwrap(),
                v["id"].as_str().unwrap()
            )
        })
        .collect();
    ids.sort();
    assert_eq!(ids, sb.truth_ids(&query()), "every record once");
    let by_id: BTreeMap<String, &Value> = records
        .iter()
        .map(|v| {
            let id = format!(
                "{}/{}",
                v["resourceType"].as_str().unwrap(),
                v["id"].as_str().unwrap()
            );
            (id, v)
        })
        .collect();
    let mut saved = BTreeSet::new();
    for a in t.iter().filter(|a| a.outcome == "ok") {
        let att = &attachments_of(by_id[&a.resource])[a.position];
        let rel = att["url"].as_str().unwrap();
        assert!(rel.starts_with("attachments/"), "{rel}");
        let bytes = std::fs::read(out.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(hex_sha1(&bytes), a.sha1, "{rel}");
        saved.insert(rel.to_owned());
    }
    let on_disk: BTreeSet<String> = std::fs::read_dir(out.join("attachments"))
        .unwrap()
        .flatten()
        .map(|e| format!("attachments/{}", e.file_name().to_string_lossy()))
        .collect();
    assert_eq!(
        on_disk, saved,
        "the saved documents and nothing else (no .part left)"
    );
    let errors = lines_of(&out.join("error"), "fhirbulk-attachments");
    let failed: Vec<Key> = errors.iter().filter_map(failed_attachment).collect();
    let unique: BTreeSet<Key> = failed.iter().cloned().collect();
    assert_eq!(failed.len(), unique.len(), "each failure reported once");
    assert_eq!(unique, expected(t, &FAILURES));
}

#[test]
fn cli_saves_documents_and_survives_kill_9() {
    let sb = sandbox();
    let t = truth(&sb);
    // Once straight through.
    let out = tempdir("save");
    let o = cli(&sb.scenario_url(SCENARIO), &out).output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    check_cli_output(&sb, &out, &t);
    let _ = std::fs::remove_dir_all(&out);

    // Killed while documents are being fetched (slow files, frequent checkpoints), then run
    // again: the same result, no document fetched twice.
    let slow = "polls=0;slow=40";
    let t = sb.truth_attachments(&query());
    let out = tempdir("kill");
    sb.clear_requests();
    let mut child = cli(&sb.scenario_url(slow), &out)
        .args(["--concurrency", "1", "--checkpoint-interval-ms", "20"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        let n = std::fs::read_dir(out.join("attachments"))
            .map(|d| d.count())
            .unwrap_or(0);
        if n >= 5 && out.join(".fhirbulk-checkpoint.json").exists() {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "ended before the kill");
        assert!(t0.elapsed() < Duration::from_secs(60), "no documents saved");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let o = cli(&sb.scenario_url(slow), &out)
        .args(["--concurrency", "1"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    check_cli_output(&sb, &out, &t);
    let _ = std::fs::remove_dir_all(&out);
}
