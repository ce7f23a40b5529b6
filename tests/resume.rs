//! Checkpoints and resume: in one process and across a kill -9, each record is delivered
//! exactly once (ids unique per type, counts equal to the sandbox's ground truth), with no new
//! kick-off.

use fhirbulk::sandbox::{Sandbox, SandboxOptions, TruthQuery};
use fhirbulk::{Config, Export, Level, Next};
use std::collections::BTreeMap;
use std::time::Duration;

const TYPES: [&str; 3] = ["Patient", "Observation", "Condition"];

fn sandbox() -> Sandbox {
    Sandbox::start(SandboxOptions {
        patients: 30,
        records_per_file: 25,
        ..SandboxOptions::default()
    })
    .unwrap()
}

fn config(base: String) -> Config {
    let mut c = Config::new(base);
    c.level = Level::Group;
    c.group_id = Some("g1".into());
    c.types = TYPES.iter().map(|t| t.to_string()).collect();
    c.poll_min_ms = 10;
    c.poll_max_ms = 100;
    c.retry_backoff_min_ms = 10;
    c.retry_backoff_max_ms = 100;
    c.chunk_bytes = 2048;
    c
}

/// type -> sorted ids of the output records of an export run to the end.
fn run(c: Config) -> Result<(BTreeMap<String, Vec<String>>, Export), fhirbulk::Error> {
    let mut export = Export::start(c)?;
    let mut ids: BTreeMap<String, Vec<String>> = BTreeMap::new();
    loop {
        match export.next_record(Some(Duration::from_secs(60)))? {
            Next::Item(r) => {
                let v: serde_json::Value = serde_json::from_slice(r.data).unwrap();
                ids.entry(r.resource_type.to_owned())
                    .or_default()
                    .push(v["id"].as_str().unwrap().to_owned());
            }
            Next::End => break,
            other => panic!("{other:?}"),
        }
    }
    Ok((ids, export))
}

/// Check that `seen` holds every record of the ground truth exactly once.
fn assert_exactly_once(sb: &Sandbox, mut seen: BTreeMap<String, Vec<String>>) {
    let truth = sb.truth(&TruthQuery {
        level: "group".into(),
        group: Some("g1".into()),
        types: TYPES.iter().map(|t| t.to_string()).collect(),
        ..TruthQuery::default()
    });
    for (t, ids) in seen.iter_mut() {
        ids.sort();
        let n = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), n, "{t}: a record was delivered twice");
    }
    let counts: BTreeMap<String, u64> = seen
        .iter()
        .map(|(t, ids)| (t.clone(), ids.len() as u64))
        .collect();
    let mut truth = truth;
    truth.retain(|_, n| *n > 0);
    assert_eq!(counts, truth, "every record of the ground truth, once");
}

#[test]
fn checkpoint_and_resume_in_process_deliver_each_record_once() {
    let sb = sandbox();
    let scenario = "slow=20";
    let mut c = config(sb.scenario_url(scenario));
    c.concurrency = 2;
    // The first export "dies": its server job must survive, so no DELETE on cancel.
    c.delete_on_cancel = false;
    let mut first = Export::start(c.clone()).unwrap();
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut taken = 0;
    while taken < 150 {
        match first.next_record(Some(Duration::from_secs(30))).unwrap() {
            Next::Item(r) => {
                let v: serde_json::Value = serde_json::from_slice(r.data).unwrap();
                seen.entry(r.resource_type.to_owned())
                    .or_default()
                    .push(v["id"].as_str().unwrap().to_owned());
                taken += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    let cp = first.controller().checkpoint().expect("a checkpoint");
    let cp_json = serde_json::to_value(&cp).unwrap();
    first.controller().cancel();
    drop(first);
    let kickoffs_before = sb
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("$export"))
        .count();

    let mut c2 = c;
    c2.resume = Some(cp_json);
    let (rest, _) = run(c2).unwrap();
    let kickoffs_after = sb
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("$export"))
        .count();
    assert_eq!(kickoffs_before, kickoffs_after, "no new kick-off");
    for (t, ids) in rest {
        seen.entry(t).or_default().extend(ids);
    }
    assert_exactly_once(&sb, seen);
}

/// The child half of the kill-and-resume test: runs only when the parent starts this test
/// binary with FHIRBULK_RESUME_CHILD set. It commits its records and a checkpoint together
/// (one segment file, written then renamed) every 40 records, as a careful caller would.
#[test]
#[ignore = "child process of kill_and_resume_across_processes"]
fn resume_child() {
    let Ok(dir) = std::env::var("FHIRBULK_RESUME_CHILD") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let base = std::env::var("FHIRBULK_RESUME_BASE").unwrap();
    let mut c = config(base);
    c.concurrency = 2;
    c.delete_on_cancel = false;
    if let Ok(cp) = std::fs::read_to_string(dir.join("resume.json")) {
        c.resume = Some(serde_json::from_str(&cp).unwrap());
    }
    let tag = std::process::id();
    let mut export = Export::start(c).unwrap();
    let mut pending: Vec<String> = Vec::new();
    let mut segment = 0;
    let commit = |export: &Export, pending: &mut Vec<String>, segment: &mut u32| {
        let cp = export.controller().checkpoint().unwrap();
        let seg = serde_json::json!({"records": pending, "checkpoint": cp});
        let tmp = dir.join(format!("tmp-{tag}"));
        std::fs::write(&tmp, seg.to_string()).unwrap();
        std::fs::rename(&tmp, dir.join(format!("seg-{tag}-{:05}.json", *segment))).unwrap();
        *segment += 1;
        pending.clear();
    };
    loop {
        match export.next_record(Some(Duration::from_secs(60))).unwrap() {
            Next::Item(r) => {
                let v: serde_json::Value = serde_json::from_slice(r.data).unwrap();
                pending.push(format!("{}/{}", r.resource_type, v["id"].as_str().unwrap()));
                if pending.len() == 40 {
                    commit(&export, &mut pending, &mut segment);
                }
            }
            Next::End => break,
            other => panic!("{other:?}"),
        }
    }
    commit(&export, &mut pending, &mut segment);
}

#[test]
fn kill_and_resume_across_processes() {
    let sb = sandbox();
    let scenario = "slow=30";
    let dir = std::env::temp_dir().join(format!("fhirbulk-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let child = || {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "resume_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("FHIRBULK_RESUME_CHILD", &dir)
            .env("FHIRBULK_RESUME_BASE", sb.scenario_url(scenario))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let segments = |dir: &std::path::Path| {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("seg-"))
            .collect();
        v.sort_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap());
        v
    };
    // First process: kill -9 once it has committed a few segments.
    let mut first = child();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while segments(&dir).len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first process made no progress"
        );
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first process ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let first_segments = segments(&dir).len();
    let last = segments(&dir).pop().unwrap();
    let seg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(last).unwrap()).unwrap();
    std::fs::write(dir.join("resume.json"), seg["checkpoint"].to_string()).unwrap();
    let kickoffs_before = sb
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("$export"))
        .count();

    // Second process: resumes from the checkpoint and finishes.
    let status = child().wait().unwrap();
    assert!(status.success(), "the resumed process failed");
    assert_eq!(
        sb.requests()
            .iter()
            .filter(|r| r.path.ends_with("$export"))
            .count(),
        kickoffs_before,
        "no new kick-off"
    );
    let mut union: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in segments(&dir) {
        let seg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        for r in seg["records"].as_array().unwrap() {
            let (t, id) = r.as_str().unwrap().split_once('/').unwrap();
            union.entry(t.to_owned()).or_default().push(id.to_owned());
        }
    }
    let total: usize = union.values().map(Vec::len).sum();
    assert!(
        segments(&dir).len() > first_segments,
        "the second process delivered the rest"
    );
    assert!(
        first_segments * 40 < total,
        "the first process was killed before the end"
    );
    assert_exactly_once(&sb, union);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_checkpoint_part_way_through_a_batch_counts_only_what_was_used() {
    let sb = sandbox();
    let mut c = config(sb.scenario_url("slow=10"));
    c.delete_on_cancel = false;
    c.chunk_bytes = 16 * 1024;
    let mut first = Export::start(c.clone()).unwrap();
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // Take a few batches, use only half of the last one, checkpoint.
    let mut cp = None;
    for round in 0..3 {
        let Next::Item(b) = first
            .next_batch(1000, Some(Duration::from_secs(30)))
            .unwrap()
        else {
            panic!("a batch");
        };
        let n = b.len();
        let used = if round == 2 { n / 2 } else { n };
        for r in b.iter().take(used) {
            let v: serde_json::Value = serde_json::from_slice(r.data).unwrap();
            seen.entry(r.resource_type.to_owned())
                .or_default()
                .push(v["id"].as_str().unwrap().to_owned());
        }
        if round == 2 {
            assert!(n - used > 0, "a batch of one record cannot be split: {n}");
            cp = first.checkpoint_unread(n - used);
        }
    }
    first.cancel();
    drop(first);
    let mut c2 = c;
    c2.resume = Some(serde_json::to_value(cp.unwrap()).unwrap());
    let (rest, _) = run(c2).unwrap();
    for (t, ids) in rest {
        seen.entry(t).or_default().extend(ids);
    }
    assert_exactly_once(&sb, seen);
}
