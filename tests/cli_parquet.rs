//! `fhirbulk export --format parquet|both` (issue 18): the Parquet dataset read back holds
//! every output resource of the sandbox's truth once, each row rebuilding into the very
//! resource of the NDJSON line; error records stay NDJSON; kill -9 in the middle and a rerun
//! leave every resource exactly once (parts the checkpoint does not count are removed).

mod common;

use common::parquet::parquet_rows;
use fhirbulk::sandbox::{Sandbox, SandboxOptions, TruthQuery};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_fhirbulk");
const TYPES: &str = "Patient,Observation,Condition,MedicationRequest";

fn sandbox(patients: usize, per_file: usize) -> Sandbox {
    Sandbox::start(SandboxOptions {
        patients,
        records_per_file: per_file,
        ..SandboxOptions::default()
    })
    .expect("sandbox starts")
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fhirbulk-pq-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    d
}

fn export_cmd(base: &str, out: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.args(["export", "--base-url", base, "--out"])
        .arg(out)
        .args(["--poll-min-ms", "10", "--retry-backoff-min-ms", "10"])
        .args(["--retry-backoff-max-ms", "100", "-g", "g1", "-t", TYPES])
        .stdin(Stdio::null());
    c
}

fn run(c: &mut Command) -> Output {
    c.output().expect("fhirbulk runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn truth(sb: &Sandbox) -> BTreeMap<String, u64> {
    let mut t = sb.truth(&TruthQuery {
        level: "group".into(),
        group: Some("g1".into()),
        types: TYPES.split(',').map(str::to_owned).collect(),
        ..TruthQuery::default()
    });
    t.retain(|_, n| *n > 0);
    t
}

fn count_by_type(rows: &BTreeMap<String, Value>) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for k in rows.keys() {
        *m.entry(k.split('/').next().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    m
}

/// The output NDJSON lines in `out` (top level), by `Type/id`.
fn ndjson_rows(out: &Path) -> BTreeMap<String, Value> {
    let mut rows = BTreeMap::new();
    for e in std::fs::read_dir(out).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "log.ndjson" || !name.ends_with(".ndjson") {
            continue;
        }
        for l in std::fs::read_to_string(e.path()).unwrap().lines() {
            let v: Value = serde_json::from_str(l).unwrap();
            let key = format!(
                "{}/{}",
                v["resourceType"].as_str().unwrap(),
                v["id"].as_str().unwrap()
            );
            assert!(rows.insert(key.clone(), v).is_none(), "{key} twice");
        }
    }
    rows
}

#[test]
fn both_formats_hold_the_same_resources_and_parquet_alone_writes_no_output_ndjson() {
    let sb = sandbox(40, 25);
    let base = sb.scenario_url("retry_after=0;errors");
    let out = tempdir("both");
    let o = run(export_cmd(&base, &out).args(["--format", "both", "--json"]));
    assert_eq!(o.status.code(), Some(0), "stderr: {}", text(&o.stderr));
    let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
    let want = truth(&sb);
    let lines = ndjson_rows(&out);
    let rows = parquet_rows(&out);
    assert_eq!(count_by_type(&rows), want);
    assert_eq!(rows.len(), lines.len());
    for (k, v) in &lines {
        assert_eq!(
            rows.get(k),
            Some(v),
            "{k}: the row rebuilds into the NDJSON line"
        );
    }
    let parts = &summary["parquet"];
    assert!(
        parts["parts"].as_u64().unwrap() >= want.len() as u64,
        "{parts}"
    );
    for (t, n) in &want {
        assert_eq!(parts["types"][t]["rows"], *n, "{parts}");
    }
    let files: Vec<&str> = parts["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(files.contains(&"Patient/part-00000.parquet"), "{files:?}");
    assert!(!out.join(".fhirbulk-checkpoint.json").exists());

    // Parquet only (zstd): the same rows; only error records are NDJSON.
    let out2 = tempdir("parquet");
    let o = run(export_cmd(&base, &out2).args([
        "--format",
        "parquet",
        "--parquet-compression",
        "zstd",
        "--json",
    ]));
    assert_eq!(o.status.code(), Some(0), "stderr: {}", text(&o.stderr));
    let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(parquet_rows(&out2), rows);
    assert!(ndjson_rows(&out2).is_empty(), "no output NDJSON");
    assert!(
        summary["errorRecords"].as_u64().unwrap() > 0,
        "{}",
        summary["errorRecords"]
    );
    let errors: Vec<String> = std::fs::read_dir(out2.join("error"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!errors.is_empty() && errors.iter().all(|e| e.ends_with(".ndjson")));
    for f in summary["files"].as_array().unwrap() {
        assert_ne!(f["kind"], "output", "{f}");
    }
    let got: BTreeMap<String, u64> = serde_json::from_value(summary["records"].clone()).unwrap();
    assert_eq!(got, want);

    // A new export into a directory with a dataset needs --force, which replaces it.
    let o = run(export_cmd(&base, &out2).args(["--format", "parquet"]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("part-00000.parquet"),
        "{}",
        text(&o.stderr)
    );
    let o = run(export_cmd(&base, &out2).args(["--format", "parquet", "--force", "-q"]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(parquet_rows(&out2), rows);
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&out2);
}

/// The checkpoint once it has committed Parquet rows.
fn wait_for_committed_parts(out: &Path, child: &mut std::process::Child) -> Value {
    let t0 = Instant::now();
    loop {
        if let Ok(b) = std::fs::read(out.join(".fhirbulk-checkpoint.json")) {
            let cp: Value = serde_json::from_slice(&b).expect("the checkpoint is always whole");
            if cp["parquet"].as_object().is_some_and(|m| !m.is_empty()) {
                return cp;
            }
        }
        if let Some(s) = child.try_wait().unwrap() {
            panic!("the export ended ({s}) before a checkpoint with Parquet parts");
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kill_9_in_the_middle_of_parts_then_rerun_gives_every_resource_once() {
    let sb = sandbox(60, 10);
    let base = sb.scenario_url("retry_after=0;slow=100");
    let out = tempdir("kill");
    let args = [
        "--format",
        "parquet",
        "--concurrency",
        "2",
        "--checkpoint-interval-ms",
        "100",
        "-q",
    ];
    let mut child = export_cmd(&base, &out)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let cp = wait_for_committed_parts(&out, &mut child);
    std::thread::sleep(Duration::from_millis(250));
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.code().is_none(),
        "killed in the middle, not ended: {status}"
    );
    assert!(cp["request"]["format"] == "parquet", "{}", cp["request"]);

    // What a crash can leave beside the committed parts: a part in progress and a part
    // closed after the last checkpoint (renamed, not yet counted).
    let (t, committed) = cp["parquet"].as_object().unwrap().iter().next().unwrap();
    let n = committed["parts"].as_u64().unwrap();
    std::fs::write(
        out.join(t)
            .join(format!(".part-{:05}.parquet.inprogress", n + 7)),
        b"PAR1 cut short",
    )
    .unwrap();
    std::fs::copy(
        out.join(t).join("part-00000.parquet"),
        out.join(t).join(format!("part-{:05}.parquet", n + 3)),
    )
    .unwrap();

    // The same command in another format does not take the export over.
    let o = run(export_cmd(&base, &out).args(["--format", "ndjson"]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));

    let o = run(export_cmd(&base, &out).args(args).arg("--json"));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["resumed"], true);
    let want = truth(&sb);
    let rows = parquet_rows(&out);
    assert_eq!(count_by_type(&rows), want, "every resource once");
    let got: BTreeMap<String, u64> = serde_json::from_value(summary["records"].clone()).unwrap();
    assert_eq!(got, want);
    for (t, n) in &want {
        assert_eq!(summary["parquet"]["types"][t]["rows"], *n);
    }
    let _ = std::fs::remove_dir_all(&out);
}
