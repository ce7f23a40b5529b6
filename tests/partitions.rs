//! Reading given files of an existing export (`only_files` with `resume`), as a distributed
//! reader does: a driver kicks off and waits for the manifest, takes a checkpoint and the file
//! list, and each task reads its own files with them, without a new kick-off. The union of the
//! tasks' records is the export, exactly once, under faults too; a task run again (a retry)
//! gives the same records.

mod common;

use common::{config, sandbox, truth};
use fhirbulk::sandbox::Sandbox;
use fhirbulk::{Config, Export, Kind, Next};
use std::time::{Duration, Instant};

/// The driver's part: the checkpoint (taken once the whole manifest arrived, before any record
/// was pulled) and the file list.
fn plan(c: &Config) -> (serde_json::Value, String, usize) {
    let mut c = c.clone();
    c.delete_on_cancel = false;
    let driver = Export::start(c).expect("kick-off");
    let deadline = Instant::now() + Duration::from_secs(30);
    let cp = loop {
        let cp = driver.controller().checkpoint();
        if let Some(cp) = cp.filter(|cp| cp.manifest_complete && cp.next_page.is_none()) {
            break cp;
        }
        assert!(Instant::now() < deadline, "no manifest within 30 s");
        std::thread::sleep(Duration::from_millis(10));
    };
    let files = driver.controller().files_json_from(0, false);
    let n = cp.files_known() as usize;
    driver.controller().cancel();
    (serde_json::to_value(&cp).unwrap(), files, n)
}

/// One task: the output ids of `only` (asserting that every record comes from those files).
fn task(c: &Config, cp: &serde_json::Value, files: &str, only: &[u32]) -> Vec<String> {
    let mut c = c.clone();
    c.resume = Some(cp.clone());
    c.resume_files = Some(serde_json::Value::String(files.to_owned()));
    c.only_files = Some(only.to_vec());
    c.delete_on_cancel = false;
    c.delete_on_complete = false;
    let mut export = Export::start(c).expect("task starts");
    let mut ids = Vec::new();
    loop {
        match export.next_record(Some(Duration::from_secs(30))) {
            Ok(Next::Item(r)) => {
                assert!(
                    only.contains(&r.file_index),
                    "a record of file {} in the task of {only:?}",
                    r.file_index
                );
                if r.kind != Kind::Output {
                    continue;
                }
                let v: serde_json::Value = serde_json::from_slice(r.data).unwrap();
                ids.push(format!(
                    "{}/{}",
                    v["resourceType"].as_str().unwrap(),
                    v["id"].as_str().unwrap()
                ));
            }
            Ok(Next::End) => break,
            other => panic!("task {only:?}: {other:?}"),
        }
    }
    ids
}

fn kickoffs(sb: &Sandbox) -> usize {
    sb.requests()
        .iter()
        .filter(|r| r.path.ends_with("$export"))
        .count()
}

fn deletes(sb: &Sandbox) -> usize {
    sb.requests()
        .iter()
        .filter(|r| r.method == "DELETE")
        .count()
}

fn file_gets(sb: &Sandbox) -> usize {
    sb.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/files/"))
        .count()
}

/// The driver's part with `manifest_only`: the export ends once the whole manifest arrived,
/// with no record and no file fetched.
fn plan_manifest_only(sb: &Sandbox, c: &Config) -> (serde_json::Value, String, usize) {
    let mut c = c.clone();
    c.manifest_only = true;
    c.delete_on_cancel = false;
    let mut driver = Export::start(c).expect("kick-off");
    match driver.next_record(Some(Duration::from_secs(30))) {
        Ok(Next::End) => {}
        other => panic!("a manifest_only export delivers no record: {other:?}"),
    }
    let p = driver.progress();
    assert_eq!(p.state, fhirbulk::State::Done, "{p:?}");
    assert_eq!(p.records_delivered, 0);
    assert_eq!(p.bytes_downloaded, 0);
    let cp = driver.controller().checkpoint().expect("a checkpoint");
    assert!(cp.manifest_complete && cp.next_page.is_none());
    let files = driver.controller().files_json_from(0, false);
    assert_eq!(file_gets(sb), 0, "the driver fetched no file");
    assert_eq!(deletes(sb), 0, "nor deleted the job");
    (
        serde_json::to_value(&cp).unwrap(),
        files,
        cp.files_known() as usize,
    )
}

#[test]
fn a_driver_with_manifest_only_plans_without_downloading() {
    let sb = sandbox();
    let c = config(&sb, "");
    let (cp, files, n) = plan_manifest_only(&sb, &c);
    assert!(n >= 4, "an export of several files: {n}");
    let mut all = Vec::new();
    for k in 0..n as u32 {
        all.extend(task(&c, &cp, &files, &[k]));
    }
    all.sort();
    assert_eq!(all, truth(&sb), "the tasks' records are the export, once");
    assert_eq!(kickoffs(&sb), 1);
    assert_eq!(deletes(&sb), 0);
    // A task cancelled with its job: an export that takes the checkpoint over, fetches nothing
    // and deletes the server's job when it completes.
    let gets = file_gets(&sb);
    let mut d = c.clone();
    d.resume = Some(cp.clone());
    d.resume_files = Some(serde_json::Value::String(files.clone()));
    d.only_files = Some(vec![0]);
    d.manifest_only = true;
    d.delete_on_complete = true;
    let mut del = Export::start(d).expect("starts");
    assert!(matches!(
        del.next_record(Some(Duration::from_secs(30))),
        Ok(Next::End)
    ));
    assert_eq!(deletes(&sb), 1, "the job is deleted once");
    assert_eq!(file_gets(&sb), gets, "no file fetched for it");
    assert_eq!(kickoffs(&sb), 1, "no kick-off for it");
}

fn one_task_per_file(scenario: &str) {
    let sb = sandbox();
    let c = config(&sb, scenario);
    let (cp, files, n) = plan(&c);
    assert!(n >= 4, "an export of several files: {n}");
    let before = kickoffs(&sb);
    let mut all = Vec::new();
    // In reverse order: a task does not depend on the others.
    for k in (0..n as u32).rev() {
        let ids = task(&c, &cp, &files, &[k]);
        if k == 0 {
            // A task run again (Spark's retry of a failed task) reads the same records.
            let mut again = task(&c, &cp, &files, &[k]);
            let mut first = ids.clone();
            first.sort();
            again.sort();
            assert_eq!(first, again, "file 0 read again");
        }
        all.extend(ids);
    }
    all.sort();
    assert_eq!(
        all,
        truth(&sb),
        "{scenario}: the tasks' records are the export, once"
    );
    assert_eq!(kickoffs(&sb), before, "no task kicked off");
    assert_eq!(deletes(&sb), 0, "no task deleted the server's job");
}

#[test]
fn each_file_read_by_its_own_task_gives_the_export_exactly_once() {
    one_task_per_file("");
}

#[test]
fn tasks_resume_broken_transfers_and_expired_links() {
    one_task_per_file("drop=3000");
    one_task_per_file("drop=3000;expire_files=1");
}

#[test]
fn tasks_of_several_files_and_a_task_of_none() {
    let sb = sandbox();
    let c = config(&sb, "");
    let (cp, files, n) = plan(&c);
    let n = n as u32;
    let evens: Vec<u32> = (0..n).filter(|i| i % 2 == 0).collect();
    let odds: Vec<u32> = (0..n).filter(|i| i % 2 == 1).collect();
    let mut all = task(&c, &cp, &files, &evens);
    all.extend(task(&c, &cp, &files, &odds));
    all.sort();
    assert_eq!(all, truth(&sb));
    assert!(
        task(&c, &cp, &files, &[]).is_empty(),
        "no files, no records"
    );
}

#[test]
fn only_files_is_checked() {
    let sb = sandbox();
    let c = config(&sb, "");
    let (cp, files, n) = plan(&c);
    let start = |f: &dyn Fn(&mut Config)| {
        let mut c = c.clone();
        f(&mut c);
        Export::start(c).err().expect("refused").to_string()
    };
    let e = start(&|c| c.only_files = Some(vec![0]));
    assert!(e.contains("only_files is given without resume"), "{e}");
    let e = start(&|c| {
        c.resume = Some(cp.clone());
        c.resume_files = Some(serde_json::Value::String(files.clone()));
        c.only_files = Some(vec![n as u32]);
    });
    assert!(e.contains(&format!("only_files names file {n}")), "{e}");
    // A checkpoint taken before the manifest arrived cannot say which files there are.
    let mut early = cp.clone();
    early["manifest_complete"] = serde_json::Value::Bool(false);
    let e = start(&|c| {
        c.resume = Some(early.clone());
        c.only_files = Some(vec![0]);
    });
    assert!(e.contains("after the whole manifest arrived"), "{e}");
}
