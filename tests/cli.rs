//! The `fhirbulk` command line against an in-process sandbox: files equal to the ground truth
//! and to the bytes served, `--since auto`, kill -9 and resume, Ctrl-C and cancel, the event log,
//! the progress display on a pseudo-terminal, exit codes and the `--json` summary.

mod common;

use common::sig::{assert_no_sig, sandbox_saw_sig, sig_url, without_urls};
use fhirbulk::sandbox::{Sandbox, SandboxAuth, SandboxClient, SandboxOptions, TruthQuery};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_fhirbulk");
const TYPES: &str = "Patient,Observation,Condition";

fn sandbox(patients: usize, per_file: usize) -> Sandbox {
    Sandbox::start(SandboxOptions {
        patients,
        records_per_file: per_file,
        ..SandboxOptions::default()
    })
    .expect("sandbox starts")
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fhirbulk-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    // The owner's only, as fhirbulk wants an output directory (a more open one is warned of).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    d
}

/// `fhirbulk export` with fast polling and retries.
fn export_cmd(base: &str, out: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.args(["export", "--base-url", base, "--out"])
        .arg(out)
        .args([
            "--poll-min-ms",
            "10",
            "--retry-backoff-min-ms",
            "10",
            "--retry-backoff-max-ms",
            "100",
        ])
        .stdin(Stdio::null());
    c
}

fn run(c: &mut Command) -> Output {
    c.output().expect("fhirbulk runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn truth(sb: &Sandbox, group: &str, types: &str, since: Option<&str>) -> BTreeMap<String, u64> {
    let mut t = sb.truth(&TruthQuery {
        level: "group".into(),
        group: Some(group.into()),
        types: types.split(',').map(str::to_owned).collect(),
        since: since.map(str::to_owned),
        ..TruthQuery::default()
    });
    t.retain(|_, n| *n > 0);
    t
}

/// The lines of an output file (gzip: all members).
fn lines(path: &Path) -> Vec<Vec<u8>> {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let data = if path.extension().is_some_and(|e| e == "gz") {
        let mut d = flate2::read::MultiGzDecoder::new(&raw[..]);
        let mut v = Vec::new();
        d.read_to_end(&mut v).expect("valid gzip");
        v
    } else {
        raw
    };
    assert!(
        data.is_empty() || data.ends_with(b"\n"),
        "{} ends mid-line",
        path.display()
    );
    data.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// type -> ids of the output files in `out` (top level), asserting each id appears once.
fn ids_by_type(out: &Path) -> BTreeMap<String, u64> {
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in std::fs::read_dir(out).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "log.ndjson" || !(name.ends_with(".ndjson") || name.ends_with(".ndjson.gz")) {
            continue;
        }
        let file_type = name.split('.').next().unwrap().to_owned();
        for l in lines(&e.path()) {
            let v: Value = serde_json::from_slice(&l).expect("each line is JSON");
            assert_eq!(v["resourceType"], file_type.as_str(), "{name}");
            let id = v["id"].as_str().expect("an id").to_owned();
            assert!(
                seen.entry(file_type.clone())
                    .or_default()
                    .insert(id.clone()),
                "{file_type}/{id} is in the output twice"
            );
        }
    }
    seen.into_iter()
        .map(|(t, ids)| (t, ids.len() as u64))
        .collect()
}

fn kickoffs(sb: &Sandbox) -> Vec<fhirbulk::sandbox::LoggedRequest> {
    sb.requests()
        .into_iter()
        .filter(|r| r.path.ends_with("$export"))
        .collect()
}

fn read_log(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("log/log.ndjson"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("log line is JSON"))
        .collect()
}

/// The event log: the SMART client's shape, one export id, events in order.
fn check_log(events: &[Value], files: usize) {
    assert!(!events.is_empty());
    let id = events[0]["exportId"].as_str().unwrap();
    for e in events {
        for k in ["exportId", "timestamp", "eventId", "eventDetail"] {
            assert!(e.get(k).is_some(), "{k} missing in {e}");
        }
        assert_eq!(e["exportId"], id);
        assert!(e["eventDetail"].is_object());
    }
    let ids: Vec<&str> = events
        .iter()
        .map(|e| e["eventId"].as_str().unwrap())
        .collect();
    let pos = |name: &str| ids.iter().position(|x| *x == name);
    assert_eq!(ids[0], "kickoff", "{ids:?}");
    assert_eq!(ids.iter().filter(|x| **x == "kickoff").count(), 1);
    // Who wrote the log, in which layout; the server's software from its CapabilityStatement.
    assert_eq!(events[0]["_client"], "fhirbulk");
    assert_eq!(events[0]["logVersion"], 2);
    assert_eq!(events[0]["eventDetail"]["softwareName"], "fhirbulk-sandbox");
    assert_eq!(events[0]["eventDetail"]["fhirVersion"], "4.0.1");
    let complete = pos("status_complete").expect("status_complete");
    assert!(
        ids[1..complete].iter().all(|x| *x == "status_progress"),
        "{ids:?}"
    );
    // Then the manifest's pages, then the whole manifest (downloads start with the first
    // page's files, so their events may come before the manifest is complete).
    let manifest = pos("manifest_complete").expect("manifest_complete");
    assert!(manifest > complete + 1, "{ids:?}");
    assert_eq!(ids[complete + 1], "status_page_complete", "{ids:?}");
    assert!(
        ids[manifest..].iter().all(|x| *x != "status_page_complete"),
        "{ids:?}"
    );
    let pages = ids[complete + 1..manifest]
        .iter()
        .filter(|x| **x == "status_page_complete")
        .count();
    let m = &events[manifest]["eventDetail"];
    assert_eq!(
        m["totalOutputFileCount"].as_u64().unwrap()
            + m["totalErrorFileCount"].as_u64().unwrap()
            + m["totalDeletedFileCount"].as_u64().unwrap(),
        files as u64
    );
    assert_eq!(m["totalManifests"], pages as u64);
    assert_eq!(*ids.last().unwrap(), "export_complete");
    let mut requested = BTreeSet::new();
    let mut completed = BTreeSet::new();
    for e in &events[complete + 1..events.len() - 1] {
        if matches!(
            e["eventId"].as_str().unwrap(),
            "retry"
                | "download_resumed"
                | "download_restarted"
                | "warning"
                | "token"
                | "status_page_complete"
                | "manifest_complete"
        ) {
            continue;
        }
        let url = e["eventDetail"]["fileUrl"].as_str().unwrap().to_owned();
        match e["eventId"].as_str().unwrap() {
            "download_request" => assert!(requested.insert(url)),
            "download_complete" => {
                assert!(requested.contains(&url), "complete before request: {url}");
                assert!(e["eventDetail"]["resourceCount"].is_u64());
                assert!(e["eventDetail"]["fileSize"].as_u64().unwrap() > 0);
                assert!(completed.insert(url));
            }
            other => panic!("unexpected event {other}"),
        }
    }
    assert_eq!(requested.len(), files);
    assert_eq!(completed.len(), files);
    let done = &events.last().unwrap()["eventDetail"];
    assert_eq!(done["files"], files);
    assert_eq!(done["attachments"], 0, "a number, not null");
    let parse = |e: &Value| e["timestamp"].as_str().unwrap().to_owned();
    let stamps: Vec<String> = events.iter().map(parse).collect();
    let mut sorted = stamps.clone();
    sorted.sort();
    assert_eq!(stamps, sorted, "timestamps in order");
}

#[test]
fn full_export_matches_truth_and_served_bytes() {
    let sb = sandbox(30, 20);
    let base = sb.scenario_url("retry_after=0;errors");
    let out = tempdir("full");
    let o = run(export_cmd(&base, &out).args(["--group", "g1", "--type", TYPES, "--json"]));
    assert_eq!(o.status.code(), Some(0), "stderr: {}", text(&o.stderr));
    let summary: Value = serde_json::from_slice(&o.stdout).expect("--json summary parses");
    assert_eq!(summary["status"], "complete");
    assert_eq!(summary["exitCode"], 0);
    assert!(summary["error"].is_null());
    assert!(summary["transactionTime"].is_string());
    assert!(summary["durationSeconds"].as_f64().unwrap() > 0.0);
    let want = truth(&sb, "g1", TYPES, None);
    let got: BTreeMap<String, u64> = serde_json::from_value(summary["records"].clone()).unwrap();
    assert_eq!(got, want, "summary counts");
    assert_eq!(
        ids_by_type(&out),
        want,
        "every record once, as the ground truth"
    );

    // Every file holds exactly the lines the server serves at its manifest URL.
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let files = summary["files"].as_array().unwrap();
    let listed = ["output", "error", "deleted"]
        .iter()
        .map(|k| manifest[k].as_array().map_or(0, Vec::len))
        .sum::<usize>();
    assert_eq!(files.len(), listed);
    assert!(
        files.iter().any(|f| f["kind"] == "error"),
        "errors scenario"
    );
    let http = reqwest::blocking::Client::new();
    let mut per_type_n: BTreeMap<(String, String), u64> = BTreeMap::new();
    // Names are zero-padded to the digits of their type's file count (at least 3): they
    // sort in file order.
    let mut per_type_total: BTreeMap<(String, String), usize> = BTreeMap::new();
    for f in files {
        let key = (
            f["kind"].as_str().unwrap().to_owned(),
            f["type"].as_str().unwrap().to_owned(),
        );
        *per_type_total.entry(key).or_default() += 1;
    }
    for f in files {
        let path = f["path"].as_str().unwrap();
        let kind = f["kind"].as_str().unwrap();
        let ty = f["type"].as_str().unwrap();
        let n = per_type_n.entry((kind.into(), ty.into())).or_default();
        *n += 1;
        let dir = match kind {
            "output" => "",
            "error" => "error/",
            _ => "deleted/",
        };
        let width = per_type_total[&(kind.to_owned(), ty.to_owned())]
            .to_string()
            .len()
            .max(3);
        assert_eq!(path, format!("{dir}{ty}.{n:0width$}.ndjson"), "file naming");
        let served = http
            .get(f["url"].as_str().unwrap())
            .send()
            .unwrap()
            .bytes()
            .unwrap();
        let served: Vec<Vec<u8>> = served
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        let written = lines(&out.join(path));
        assert_eq!(written, served, "{path}: the bytes the server served");
        assert_eq!(f["records"], written.len());
    }
    check_log(&read_log(&out), files.len());
    assert!(!out.join(".fhirbulk-checkpoint.json").exists());

    // A second export into the same directory needs --force.
    let o = run(export_cmd(&base, &out).args(["--group", "g1", "--type", "Patient"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("--force"), "{}", text(&o.stderr));
    let o =
        run(export_cmd(&base, &out).args(["--group", "g1", "--type", "Patient", "--force", "-q"]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        !out.join("Observation.001.ndjson").exists(),
        "old results removed"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn since_auto_uses_the_last_transaction_time() {
    let sb = sandbox(20, 50);
    let base = sb.scenario_url("retry_after=0;deleted=2");
    let dir = tempdir("since");
    let state = dir.join("state").join("state.json");
    let run_auto = |out: &str| {
        let o = run(export_cmd(&base, &dir.join(out))
            .args([
                "-g",
                "g2",
                "-t",
                "Patient,Condition",
                "--since",
                "auto",
                "--json",
                "--state-file",
            ])
            .arg(&state));
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        serde_json::from_slice::<Value>(&o.stdout).unwrap()
    };
    let first = run_auto("one");
    let k1 = kickoffs(&sb);
    assert_eq!(k1.len(), 1);
    assert!(
        k1[0].query.iter().all(|(k, _)| k != "_since"),
        "no _since on the first run: {:?}",
        k1[0].query
    );
    let tt1 = first["transactionTime"].as_str().unwrap().to_owned();
    let st: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let base_key = base.trim_end_matches('/');
    assert_eq!(
        st["exports"][base_key]["group/g2"]["transactionTime"],
        tt1.as_str()
    );

    let second = run_auto("two");
    let k2 = kickoffs(&sb);
    assert_eq!(k2.len(), 2);
    let since: Vec<&String> = k2[1]
        .query
        .iter()
        .filter(|(k, _)| k == "_since")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(since, vec![&tt1], "the second kick-off's _since");
    assert_eq!(
        ids_by_type(&dir.join("two")),
        truth(&sb, "g2", "Patient,Condition", Some(&tt1))
    );
    assert!(
        dir.join("two/deleted/Bundle.001.ndjson").exists(),
        "deleted entries go under deleted/"
    );
    let st: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(
        st["exports"][base_key]["group/g2"]["transactionTime"],
        second["transactionTime"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Wait until the checkpoint records some written lines.
/// Start `cmd` (output discarded), wait for its first checkpoint in `out`, let it write on for
/// `ms` more, then kill -9 it.
fn kill_after_checkpoint(cmd: &mut Command, out: &Path, ms: u64) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_checkpoint(out, &mut child);
    std::thread::sleep(Duration::from_millis(ms));
    child.kill().unwrap();
    child.wait().unwrap();
}

fn wait_for_checkpoint(out: &Path, child: &mut std::process::Child) -> Value {
    let t0 = Instant::now();
    loop {
        if let Ok(b) = std::fs::read(out.join(".fhirbulk-checkpoint.json")) {
            let cp: Value = serde_json::from_slice(&b).expect("the checkpoint is always whole");
            // `files` names the output files in progress only (checkpoint version 2); the
            // totals count every record written.
            let records: u64 = cp["totals"]["records"]
                .as_object()
                .map(|m| m.values().map(|n| n.as_u64().unwrap()).sum())
                .unwrap_or(0);
            if records > 0 {
                return cp;
            }
        }
        if let Some(s) = child.try_wait().unwrap() {
            panic!("the export ended ({s}) before a checkpoint with records");
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kill_9_then_rerun_resumes_without_duplicates_or_kickoff() {
    let sb = sandbox(30, 10);
    let base = sb.scenario_url("retry_after=0;slow=120");
    let out = tempdir("kill");
    let args = [
        "-g",
        "g1",
        "-t",
        TYPES,
        "--concurrency",
        "1",
        "--gzip",
        "--checkpoint-interval-ms",
        "50",
        "-q",
    ];
    kill_after_checkpoint(export_cmd(&base, &out).args(args), &out, 150);
    assert!(out.join(".fhirbulk-checkpoint.json").exists());
    let before = kickoffs(&sb).len();
    assert_eq!(before, 1);

    // Another request does not take over the unfinished export.
    let o = run(export_cmd(&base, &out).args(["-g", "g1", "-t", "Patient", "--gzip"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("different request"),
        "{}",
        text(&o.stderr)
    );

    let o = run(export_cmd(&base, &out).args(args).arg("--json"));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["resumed"], true);
    assert_eq!(kickoffs(&sb).len(), before, "no second kick-off");
    let want = truth(&sb, "g1", TYPES, None);
    assert_eq!(ids_by_type(&out), want, "complete files, no line twice");
    let got: BTreeMap<String, u64> = serde_json::from_value(summary["records"].clone()).unwrap();
    assert_eq!(got, want);
    for f in summary["files"].as_array().unwrap() {
        assert!(f["path"].as_str().unwrap().ends_with(".ndjson.gz"));
    }
    assert!(!out.join(".fhirbulk-checkpoint.json").exists());
    let events = read_log(&out);
    check_log(&events, summary["files"].as_array().unwrap().len());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn ctrl_c_keeps_the_job_and_cancel_deletes_it() {
    let sb = sandbox(20, 10);
    let base = sb.scenario_url("retry_after=0;slow=150");
    let out = tempdir("cancel");
    let mut child = export_cmd(&base, &out)
        .args([
            "-g",
            "g1",
            "--concurrency",
            "1",
            "--checkpoint-interval-ms",
            "50",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_checkpoint(&out, &mut child);
    // SAFETY: sending SIGINT to our own child process.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(7), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("Run the same command again"), "{err}");
    assert!(err.contains("fhirbulk cancel --out"), "{err}");
    let deletes = |sb: &Sandbox| {
        sb.requests()
            .into_iter()
            .filter(|r| r.method == "DELETE")
            .count()
    };
    assert_eq!(deletes(&sb), 0, "Ctrl-C leaves the server job");

    let o = run(Command::new(BIN)
        .args(["cancel", "--json", "--out"])
        .arg(&out));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["status"], "cancelled");
    assert_eq!(deletes(&sb), 1, "cancel DELETEs the job");
    assert!(!out.join(".fhirbulk-checkpoint.json").exists());
    let o = run(Command::new(BIN).args(["cancel", "--out"]).arg(&out));
    assert_eq!(o.status.code(), Some(2), "nothing left to cancel");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn progress_on_a_terminal_and_plain_lines_otherwise() {
    let sb = sandbox(20, 10);
    let base = sb.scenario_url("retry_after=1;slow=30");
    let dir = tempdir("pty");
    // Plain log lines when stderr is not a terminal.
    let o = run(export_cmd(&base, &dir.join("plain")).args(["-g", "g2", "--concurrency", "1"]));
    assert_eq!(o.status.code(), Some(0));
    let err = text(&o.stderr);
    assert!(err.contains("fhirbulk: waiting for the server"), "{err}");
    assert!(err.contains("fhirbulk: done"), "{err}");
    // Each progress line says when it was written (stderr is a log here).
    for l in err
        .lines()
        .filter(|l| l.contains("fhirbulk: waiting") || l.contains("fhirbulk: downloading"))
    {
        let (stamp, _) = l.split_once(" fhirbulk: ").unwrap();
        assert!(
            stamp.len() == 24 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "{l}"
        );
    }
    assert!(!err.contains('\u{1b}'), "no escape codes off a terminal");
    // --quiet: nothing.
    let o = run(export_cmd(&base, &dir.join("quiet")).args(["-g", "g2", "-q"]));
    assert_eq!(o.status.code(), Some(0));
    assert!(o.stderr.is_empty(), "{}", text(&o.stderr));

    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipping the terminal check: no `script` utility");
        return;
    }
    let cmd = format!(
        "'{BIN}' export --base-url '{base}' --out '{}' -g g2 --concurrency 1 --poll-min-ms 10",
        dir.join("tty").display()
    );
    let o = run(Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null()));
    let screen = text(&o.stdout);
    assert!(o.status.success(), "{screen}");
    assert!(screen.contains("waiting for the server"), "{screen}");
    assert!(screen.contains("rec/s"), "the download display: {screen}");
    assert!(
        screen.contains("\u{1b}["),
        "indicatif draws with escape codes"
    );
    assert!(screen.contains('\r'), "redraws in place");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn exit_codes_and_error_summaries() {
    let sb = sandbox(10, 50);
    let base = sb.scenario_url("retry_after=0");
    let dir = tempdir("codes");

    // HTTP 404 for an unknown group: exit 4, an error object in --json.
    let o = run(export_cmd(&base, &dir.join("404")).args(["-g", "nosuchgroup", "--json"]));
    assert_eq!(o.status.code(), Some(4), "{}", text(&o.stderr));
    assert!(
        !text(&o.stderr).contains("downloading"),
        "nothing downloaded: {}",
        text(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["status"], "failed");
    assert_eq!(v["error"]["name"], "not_found");
    assert_eq!(v["error"]["http_status"], 404);
    assert_eq!(v["exitCode"], 4);
    let log = read_log(&dir.join("404"));
    assert_eq!(log[0]["eventId"], "kickoff");
    assert_eq!(log[0]["eventDetail"]["errorCode"], 404);
    // The failed kick-off left nothing to resume: a rerun starts afresh.
    let o = run(export_cmd(&base, &dir.join("404")).args(["-g", "g1", "-q"]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));

    // A bad config file: exit 2, naming the key.
    let cfg = dir.join("bad.json");
    std::fs::write(
        &cfg,
        format!(r#"{{"base_url": "{base}", "concurency": 2}}"#),
    )
    .unwrap();
    let o = run(Command::new(BIN)
        .args(["export", "--out"])
        .arg(dir.join("bad"))
        .arg("--config")
        .arg(&cfg)
        .arg("--json"));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("concurency"),
        "{}",
        text(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error"]["name"], "config");
    // Not JSON, a bad flag value, no base URL, an unknown flag: exit 2 with a clear message.
    std::fs::write(&cfg, "{not json").unwrap();
    for (args, needle) in [
        (vec!["--config", cfg.to_str().unwrap()], "not valid JSON"),
        (vec!["--base-url", &base, "--since", "yesterday"], "since"),
        (vec!["--base-url", "ftp://x/fhir"], "http or https"),
        (vec![], "no FHIR base URL"),
        (vec!["--base-url", &base, "--bogus"], "--bogus"),
        (
            vec!["--base-url", &base, "--type-filter", "nonsense"],
            "type_filters",
        ),
    ] {
        let o = run(Command::new(BIN)
            .args(["export", "--out"])
            .arg(dir.join("bad"))
            .args(&args));
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains(needle),
            "{args:?}: {}",
            text(&o.stderr)
        );
    }
    let o = run(Command::new(BIN).arg("--help"));
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o.stdout).contains("Exit codes"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn auth_failure_is_exit_3_and_never_prints_the_secret() {
    let sb = Sandbox::start(SandboxOptions {
        patients: 5,
        auth: Some(SandboxAuth {
            clients: vec![SandboxClient {
                client_id: "cli-client".into(),
                jwks: None,
                secret: Some("right-secret-4711".into()),
            }],
            ..SandboxAuth::default()
        }),
        ..SandboxOptions::default()
    })
    .unwrap();
    let base = sb.scenario_url("retry_after=0");
    let dir = tempdir("auth");
    let export = |secret: &str, out: &str| {
        run(export_cmd(&base, &dir.join(out))
            .args([
                "-g",
                "g1",
                "-t",
                "Patient",
                "--json",
                "--client-id",
                "cli-client",
            ])
            .args(["--client-secret-env", "FHIRBULK_TEST_SECRET"])
            .env("FHIRBULK_TEST_SECRET", secret))
    };
    let o = export("wrong-secret-0815", "wrong");
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let all = format!("{}{}", text(&o.stdout), text(&o.stderr))
        + &std::fs::read_to_string(dir.join("wrong/log/log.ndjson")).unwrap_or_default();
    assert!(!all.contains("wrong-secret-0815"), "secret leaked: {all}");
    let o = export("right-secret-4711", "right");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let mut all = format!("{}{}", text(&o.stdout), text(&o.stderr));
    for f in ["log/log.ndjson", "manifest.json"] {
        all += &std::fs::read_to_string(dir.join("right").join(f)).unwrap();
    }
    assert!(!all.contains("right-secret-4711"), "secret leaked");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Servers that misbehave at the byte level: what lands in the files is exactly the truth,
/// each record in the file of its type.
#[test]
fn misbehaving_servers_leave_exactly_the_truth_in_the_files() {
    let sb = sandbox(30, 25);
    let want = truth(&sb, "g1", TYPES, None);
    for (i, scenario) in [
        "gzip;gzip_members=3",
        "encoding=x-gzip;gzip_members=2",
        "stored_gzip;drop=1500",
        "drop=3000;short_ranges=1000",
        "drop=3000;bad_range",
        "drop=3000;change_file",
        "drop=3000;expire_files=1;reorder;resign",
        "truncate_last=inner",
        "close_delimited;drop=3000",
        "partial;page=1;polls=3;resign",
    ]
    .iter()
    .enumerate()
    {
        let out = tempdir(&format!("hostile-{i}"));
        let base = sb.scenario_url(&format!("retry_after=0;{scenario}"));
        let mut cmd = export_cmd(&base, &out);
        cmd.args([
            "--group",
            "g1",
            "--type",
            TYPES,
            "--on-invalid-line",
            "skip",
            "-q",
        ]);
        if scenario.contains("partial") {
            cmd.arg("--allow-partial-manifests");
        }
        let o = run(&mut cmd);
        assert_eq!(o.status.code(), Some(0), "{scenario}: {}", text(&o.stderr));
        assert_eq!(ids_by_type(&out), want, "{scenario}");
        let skipped = out.join("error/fhirbulk-skipped-lines.ndjson");
        assert_eq!(
            skipped.exists(),
            scenario.starts_with("truncate_last"),
            "{scenario}: error records only for cut lines"
        );
        let _ = std::fs::remove_dir_all(&out);
    }
}

#[test]
fn error_classes_and_escaped_server_text_on_the_command_line() {
    let sb = sandbox(10, 25);
    let dir = tempdir("classes");
    // A broken uncompressed transfer is a network error: exit 5.
    let base = sb.scenario_url("retry_after=0;bad_chunked");
    let o = run(export_cmd(&base, &dir.join("chunked")).args([
        "-g",
        "g1",
        "-t",
        "Patient",
        "--retry-max-attempts",
        "2",
    ]));
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    // Terminal escapes from the server are shown escaped.
    let base = sb.scenario_url("kickoff=400;ansi");
    let o = run(export_cmd(&base, &dir.join("ansi")).args(["-g", "g1", "--json"]));
    assert_eq!(o.status.code(), Some(4), "{}", text(&o.stderr));
    for (name, bytes) in [("stderr", &o.stderr), ("stdout", &o.stdout)] {
        assert!(
            !bytes.contains(&0x1b) && !bytes.contains(&0x07),
            "{name}: raw escapes"
        );
    }
    assert!(
        text(&o.stderr).contains("\\u{1b}[31m"),
        "{}",
        text(&o.stderr)
    );
    // A manifest listing a file twice: downloaded once, a warning on stderr and in the log.
    let base = sb.scenario_url("retry_after=0;dup_entry");
    let out = dir.join("dup");
    let o = run(export_cmd(&base, &out).args(["-g", "g1", "-t", "Patient"]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("more than once"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(ids_by_type(&out), truth(&sb, "g1", "Patient", None));
    assert!(read_log(&out).iter().any(|e| e["eventId"] == "warning"
        && e["eventDetail"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("more than once")));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn since_auto_never_keeps_or_trips_over_a_bad_transaction_time() {
    let sb = sandbox(10, 25);
    let dir = tempdir("badtt");
    let state = dir.join("state.json");
    let auto = |scenario: &str, out: &str| {
        let base = sb.scenario_url(&format!("retry_after=0;{scenario}"));
        run(export_cmd(&base, &dir.join(out))
            .args([
                "-g",
                "g1",
                "-t",
                "Patient",
                "--since",
                "auto",
                "--state-file",
            ])
            .arg(&state))
    };
    let o = auto("transaction_time=yesterday", "one");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("not a FHIR instant"),
        "{}",
        text(&o.stderr)
    );
    assert!(!state.exists(), "nothing stored");
    // A state file holding a bad value (an older version, a hand edit) does not block.
    let base_key = sb.scenario_url("retry_after=0;");
    std::fs::write(
        &state,
        serde_json::json!({"fhirbulk_state": 1, "exports": {base_key.trim_end_matches('/'): {"group/g1": {"transactionTime": "2024-13-45"}}}})
            .to_string(),
    )
    .unwrap();
    sb.clear_requests();
    let o = auto("", "two");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("it is ignored"),
        "{}",
        text(&o.stderr)
    );
    let k = kickoffs(&sb);
    assert!(
        k[0].query.iter().all(|(k, _)| k != "_since"),
        "{:?}",
        k[0].query
    );
    let st: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let tt = st["exports"][base_key.trim_end_matches('/')]["group/g1"]["transactionTime"]
        .as_str()
        .unwrap();
    assert!(fhirbulk::config::is_instant(tt), "{tt}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_long_wait_is_shown_not_an_eta() {
    let sb = sandbox(10, 25);
    let dir = tempdir("wait");
    let base = sb.scenario_url("retry_after=0;file_error=429:1;error_retry_after=3");
    let o = run(export_cmd(&base, &dir.join("out")).args([
        "-g",
        "g1",
        "-t",
        "Patient",
        "--poll-max-ms",
        "10000",
    ]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("waiting") && l.contains("until"))
        .unwrap_or_else(|| panic!("no wait shown: {err}"));
    assert!(line.contains("HTTP 429"), "{line}");
    assert!(!line.contains("ETA"), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Run the command under this umask (set in the child before exec).
#[cfg(unix)]
fn umask(c: &mut Command, mask: libc::mode_t) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: umask is async-signal-safe and touches nothing but the child's own mask.
    unsafe {
        c.pre_exec(move || {
            libc::umask(mask);
            Ok(())
        })
    }
}

/// The permission bits of `p`.
#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every file and directory under `root` (hidden ones too), relative, with its mode.
#[cfg(unix)]
fn modes_under(root: &Path) -> BTreeMap<String, (bool, u32)> {
    let mut found = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let is_dir = e.file_type().unwrap().is_dir();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            found.insert(rel, (is_dir, mode(&p)));
            if is_dir {
                stack.push(p);
            }
        }
    }
    found
}

/// Every file under `out` has `file`, every directory `dir`.
#[cfg(unix)]
fn assert_modes(out: &Path, file: u32, dir: u32) -> BTreeMap<String, (bool, u32)> {
    let all = modes_under(out);
    for (rel, (is_dir, m)) in &all {
        let want = if *is_dir { dir } else { file };
        assert_eq!(*m, want, "{rel} is {m:03o}, not {want:03o}: {all:?}");
    }
    all
}

#[cfg(unix)]
#[test]
fn files_on_disk_are_the_owners_only_whatever_the_umask() {
    let sb = sandbox(20, 10);
    let base = sb.scenario_url("retry_after=0;slow=120;errors");
    let dir = tempdir("perm");
    // Neither the output directory nor the state file's directories exist: fhirbulk makes them.
    let out = dir.join("new").join("out");
    let state = dir.join("state").join("fhirbulk").join("state.json");
    let args = [
        "-g",
        "g1",
        "-t",
        TYPES,
        "--concurrency",
        "1",
        "--checkpoint-interval-ms",
        "50",
        "--since",
        "auto",
    ];
    kill_after_checkpoint(
        umask(&mut export_cmd(&base, &out), 0o022)
            .args(args)
            .arg("--state-file")
            .arg(&state)
            .arg("-q"),
        &out,
        100,
    );
    // Unfinished: the checkpoint, the two lists, the log and files in progress, all 0600.
    let unfinished = assert_modes(&out, 0o600, 0o700);
    for f in [
        ".fhirbulk-checkpoint.json",
        ".fhirbulk-files.ndjson",
        ".fhirbulk-done.ndjson",
        "log/log.ndjson",
    ] {
        assert!(unfinished.contains_key(f), "{f} written: {unfinished:?}");
    }
    assert!(unfinished
        .keys()
        .any(|k| k.ends_with(".ndjson") && !k.starts_with('.') && !k.starts_with("log/")));
    assert_eq!(mode(&out), 0o700, "the output directory fhirbulk created");
    assert_eq!(mode(&dir.join("new")), 0o700, "its parent, created too");

    // Resumed to the end (into the 0700 directory it made: no warning).
    let o = run(umask(&mut export_cmd(&base, &out), 0o022)
        .args(args)
        .arg("--state-file")
        .arg(&state));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        !text(&o.stderr).contains("grants group or others"),
        "{}",
        text(&o.stderr)
    );
    let done = assert_modes(&out, 0o600, 0o700);
    for f in ["manifest.json", "log/log.ndjson", "error"] {
        assert!(done.contains_key(f), "{f} written: {done:?}");
    }
    assert!(done.keys().any(|k| k.starts_with("error/")), "{done:?}");
    assert_eq!(mode(&out), 0o700);
    // The --since auto state: the file 0600, the directories made for it 0700.
    assert_eq!(mode(&state), 0o600);
    assert_eq!(mode(state.parent().unwrap()), 0o700);
    assert_eq!(mode(&dir.join("state")), 0o700);
    assert_eq!(
        std::fs::read_dir(state.parent().unwrap()).unwrap().count(),
        1,
        "no temporary file left next to the state file"
    );

    // --file-mode 640: group may read. The umask (077 here) narrows nothing: the modes are
    // set exactly.
    let g = dir.join("group").join("out");
    let o = run(umask(&mut export_cmd(&base, &g), 0o077)
        .args([
            "-g",
            "g1",
            "-t",
            "Patient",
            "--gzip",
            "--file-mode",
            "640",
            "--since",
            "auto",
            "--state-file",
        ])
        .arg(&state));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let all = assert_modes(&g, 0o640, 0o750);
    assert!(all.keys().any(|k| k.ends_with(".ndjson.gz")), "{all:?}");
    assert!(all.contains_key("manifest.json") && all.contains_key("log/log.ndjson"));
    assert_eq!(mode(&g), 0o750);
    assert_eq!(mode(&dir.join("group")), 0o750);
    assert_eq!(
        mode(&state),
        0o640,
        "the state file rewritten with --file-mode"
    );

    // An existing directory open to others: a warning (stderr and the log), not an error;
    // its mode is left as it is, the files are still 0600.
    let open = dir.join("open");
    std::fs::create_dir(&open).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let o = run(umask(&mut export_cmd(&base, &open), 0o022).args(["-g", "g1", "-t", "Patient"]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("warning") && l.contains("grants group or others"))
        .unwrap_or_else(|| panic!("no warning: {err}"));
    assert!(line.contains(&open.display().to_string()), "{line}");
    assert!(line.contains("755"), "{line}");
    // In the log right after the kick-off (which stays the first event).
    let events = read_log(&open);
    assert_eq!(events[0]["eventId"], "kickoff", "{events:?}");
    assert_eq!(events[1]["eventId"], "warning", "{events:?}");
    let logged = events[1]["eventDetail"]["message"].as_str().unwrap();
    assert!(
        logged.contains("has mode 755") && logged.contains(&open.display().to_string()),
        "{logged}"
    );
    assert_eq!(mode(&open), 0o755, "an existing directory is not changed");
    assert_modes(&open, 0o600, 0o700);
    // 750 is not more than --file-mode 640 allows: no warning.
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o750)).unwrap();
    }
    let o = run(umask(&mut export_cmd(&base, &shared), 0o022).args([
        "-g",
        "g1",
        "-t",
        "Patient",
        "--file-mode",
        "640",
    ]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        !text(&o.stderr).contains("grants group or others"),
        "{}",
        text(&o.stderr)
    );
    assert_modes(&shared, 0o640, 0o750);

    // Bad modes are usage errors, before anything is written.
    for (bad, why) in [
        ("abc", "octal"),
        ("680", "octal"),
        ("1777", "more than 777"),
        ("440", "owner read and write"),
        ("200", "owner read and write"),
    ] {
        let nothing = dir.join("bad");
        let o = run(export_cmd(&base, &nothing).args(["-g", "g1", "--file-mode", bad]));
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", text(&o.stderr));
        let err = text(&o.stderr);
        assert!(
            err.contains("--file-mode") && err.contains(why),
            "{bad}: {err}"
        );
        assert!(!nothing.exists());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every file under `dir` (relative name, bytes), recursively.
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            let sub = e.file_name().to_string_lossy().into_owned();
            all.extend(
                files_under(&p)
                    .into_iter()
                    .map(|(n, b)| (format!("{sub}/{n}"), b)),
            );
        } else {
            all.push((
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            ));
        }
    }
    all
}

/// Pre-signed file URLs (sandbox `sig=`) whose downloads are retried or fail: stdout (the
/// `--json` summary), stderr, `log.ndjson`, the skipped-lines file and every other file never
/// hold the signature; the checkpoint, its file lists and `manifest.json` (0600 files resume
/// needs) only inside the files' URLs. The sandbox saw the signature in each run.
#[test]
fn signatures_in_file_urls_never_reach_the_log_or_the_terminal() {
    let sb = sandbox(20, 10);
    let dir = tempdir("sig");
    for (i, (keys, code)) in [
        // Retried (500, then a bad line skipped), refreshed (410: a new manifest), failed.
        ("redirect_files;file_error=500:1;bad_line=2", 0),
        ("resign;expire_files=1;drop=2000", 0),
        ("redirect_files;file_error=503:20", 4),
        ("resign;file_error=404:99", 4),
        ("resign;bad_chunked", 5),
    ]
    .into_iter()
    .enumerate()
    {
        sb.clear_requests();
        let out = dir.join(i.to_string());
        let base = sig_url(&sb, &format!("retry_after=0;{keys}"));
        let o = run(export_cmd(&base, &out).args([
            "-g",
            "g1",
            "-t",
            TYPES,
            "--on-invalid-line",
            "skip",
            "--retry-max-attempts",
            "3",
            "--json",
        ]));
        let stderr = text(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{keys}: {stderr}");
        assert!(sandbox_saw_sig(&sb), "{keys}: the URLs carried no sentinel");
        assert_no_sig(&format!("{keys}: stdout"), &text(&o.stdout));
        assert_no_sig(&format!("{keys}: stderr"), &stderr);
        let files = files_under(&out);
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        let want: &[&str] = if code == 0 {
            &["log/log.ndjson", "manifest.json"]
        } else {
            &[
                "log/log.ndjson",
                ".fhirbulk-checkpoint.json",
                ".fhirbulk-files.ndjson",
            ]
        };
        for w in want {
            assert!(names.contains(w), "{keys}: {w} in {names:?}");
        }
        if keys.contains("bad_line") {
            assert!(
                names.contains(&"error/fhirbulk-skipped-lines.ndjson"),
                "{names:?}"
            );
        }
        for (name, bytes) in &files {
            let t = text(bytes);
            let what = format!("{keys}: {name}");
            if name.starts_with(".fhirbulk-") || name == "manifest.json" {
                // JSON or NDJSON: searched without the strings that are URLs.
                for doc in serde_json::Deserializer::from_str(&t).into_iter::<Value>() {
                    assert_no_sig(&what, &without_urls(doc.expect("JSON")).to_string());
                }
            } else {
                assert_no_sig(&what, &t);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn param_flags_are_sent_as_kickoff_parameters() {
    let sb = sandbox(4, 5);
    let out = tempdir("params");
    let o = run(export_cmd(&sb.base_url(), &out).args([
        "--lenient",
        "--param",
        "_mdm=true",
        "--param",
        "x=1",
        "--param",
        "x=a b",
    ]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let k = kickoffs(&sb);
    let sent: Vec<(String, String)> = k[0]
        .query
        .iter()
        .filter(|(n, _)| n == "_mdm" || n == "x")
        .cloned()
        .collect();
    assert_eq!(
        sent,
        [
            ("_mdm".to_owned(), "true".to_owned()),
            ("x".to_owned(), "1".to_owned()),
            ("x".to_owned(), "a b".to_owned())
        ]
    );
    let o = run(export_cmd(&sb.base_url(), &tempdir("params-bad")).args(["--param", "novalue"]));
    assert_eq!(o.status.code(), Some(2), "a usage error");
    assert!(text(&o.stderr).contains("--param \"novalue\" must look like name=value"));
}

/// `fhirbulk export --help`: every flag says what it does, and the defaults it shows are the
/// engine's (the flags of engine keys have no clap default: an unset flag leaves the key to the
/// config file or the engine).
#[test]
fn every_flag_has_help_and_its_default() {
    let o = Command::new(BIN)
        .args(["export", "--help"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let help = text(&o.stdout);
    let mut flags: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let t = line.trim_start();
        let indent = line.len() - t.len();
        if (t.starts_with("--") || (t.starts_with('-') && t.get(2..4) == Some(", "))) && indent <= 6
        {
            let name = t
                .split([' ', '=', '<'])
                .find(|w| w.starts_with("--"))
                .unwrap()
                .trim_end_matches(',')
                .to_owned();
            // Help on the same line (short help) or on the next ones (long help).
            let same_line = t
                .split_once("  ")
                .map(|(_, h)| h.trim().to_owned())
                .unwrap_or_default();
            flags.insert(name.clone(), same_line);
            current = Some(name);
        } else if t.is_empty() {
            // A blank line inside a flag's help (before its possible values and default).
        } else if indent < 6 {
            current = None;
        } else if let Some(c) = &current {
            let e = flags.get_mut(c).unwrap();
            e.push(' ');
            e.push_str(t);
        }
    }
    assert!(flags.len() > 50, "{flags:?}");
    for (flag, h) in &flags {
        assert!(!h.trim().is_empty(), "{flag} has no help text");
    }
    let c = fhirbulk::Config::new("https://x/fhir");
    for (flag, v) in [
        ("--concurrency", c.concurrency as u64),
        ("--max-line-bytes", c.max_line_bytes as u64),
        ("--connect-timeout-ms", c.connect_timeout_ms),
        ("--request-timeout-ms", c.request_timeout_ms),
        ("--read-timeout-ms", c.read_timeout_ms),
        ("--min-bytes-per-s", c.min_bytes_per_s),
        ("--stall-window-ms", c.stall_window_ms),
        ("--poll-min-ms", c.poll_min_ms),
        ("--poll-max-ms", c.poll_max_ms),
        ("--poll-backoff-max-ms", c.poll_backoff_max_ms),
        ("--retry-max-attempts", c.retry_max_attempts as u64),
        ("--retry-max-wait-ms", c.retry_max_wait_ms),
        ("--retry-backoff-min-ms", c.retry_backoff_min_ms),
        ("--retry-backoff-max-ms", c.retry_backoff_max_ms),
    ] {
        let h = &flags[flag];
        assert!(h.contains(&format!("[default: {v}]")), "{flag}: {h}");
    }
    assert!(flags["--on-invalid-line"].contains("[default: fail]"));
    assert!(flags["--format"].contains("[default: ndjson]"));
}

/// The manifest's `count` of each file is checked against what was written: a difference is a
/// warning (stderr, log, the `--json` summary's `countMismatches`), the export still complete.
#[test]
fn a_count_the_records_do_not_match_is_a_warning() {
    let sb = sandbox(20, 10);
    let dir = tempdir("count");
    // Every output entry says it has 3 resources; the files have up to 10.
    let o = run(
        export_cmd(&sb.scenario_url("bad_count=3"), &dir.join("off"))
            .args(["-g", "g1", "-t", "Patient", "--json"]),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let patients = truth(&sb, "g1", "Patient", None)["Patient"];
    let files = v["files"].as_array().unwrap().len() as u64;
    let m = &v["countMismatches"]["Patient"];
    assert_eq!(m["count"], 3 * files, "{v}");
    assert_eq!(m["written"], patients);
    let err = text(&o.stderr);
    assert!(
        err.contains("warning: Patient: the manifest's count says"),
        "{err}"
    );
    let log = read_log(&dir.join("off"));
    assert!(log.iter().any(|e| e["eventId"] == "warning"
        && e["eventDetail"]["message"]
            .as_str()
            .unwrap()
            .contains("count says")));
    // Right counts: no warning.
    let o = run(export_cmd(&sb.scenario_url("polls=0"), &dir.join("ok"))
        .args(["-g", "g1", "-t", "Patient", "--json"]));
    assert_eq!(o.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v.get("countMismatches").is_none(), "{v}");
    // The names sort in file order: `ls` order is the manifest's.
    let mut names: Vec<String> = std::fs::read_dir(dir.join("ok"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("Patient."))
        .collect();
    names.sort();
    let listed: Vec<String> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, listed);
    assert!(names[0].starts_with("Patient.001."), "{names:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
