//! Many files: an export of 20,000 one-record files delivers exactly the ground truth, its
//! checkpoints stay the size of the files in progress (not of the files known), and a resume
//! from a mid-run checkpoint — with the file list given back, with the manifest fetched again,
//! and from the same checkpoint in the old version 1 format — delivers exactly the rest.

use fhirbulk::checkpoint::{Checkpoint, CheckpointFile};
use fhirbulk::sandbox::{Sandbox, SandboxOptions, TruthQuery};
use fhirbulk::{Config, Export, Level, Next};
use serde_json::{json, Value};
use std::time::Duration;

const FILES: usize = 20_000;

fn config(base: String) -> Config {
    let mut c = Config::new(base);
    c.level = Level::Patient;
    c.types = vec!["Patient".into()];
    c.poll_min_ms = 10;
    c.poll_max_ms = 100;
    c.concurrency = 8;
    c.delete_on_cancel = false;
    c
}

fn id_of(data: &[u8]) -> String {
    let v: Value = serde_json::from_slice(data).unwrap();
    format!("Patient/{}", v["id"].as_str().unwrap())
}

/// Pull every record to the end.
fn rest(mut export: Export, ids: &mut Vec<String>) {
    loop {
        match export
            .next_batch(4096, Some(Duration::from_secs(60)))
            .unwrap()
        {
            Next::Item(b) => ids.extend(b.iter().map(|r| id_of(r.data))),
            Next::End => return,
            other => panic!("{other:?}"),
        }
    }
}

fn assert_truth(sb: &Sandbox, mut ids: Vec<String>, what: &str) {
    ids.sort_unstable();
    let truth = sb.truth_ids(&TruthQuery {
        level: "patient".into(),
        types: vec!["Patient".into()],
        ..TruthQuery::default()
    });
    assert_eq!(truth.len(), FILES);
    assert_eq!(ids.len(), truth.len(), "{what}: the number of records");
    assert!(ids == truth, "{what}: exactly the ground truth, once each");
}

/// The version 1 form of a version 2 checkpoint (what older fhirbulk versions wrote).
fn as_v1(cp: &Checkpoint, files: &[fhirbulk::FileInfo], manifest: Value) -> Value {
    let mut v1 = serde_json::to_value(cp).unwrap();
    let o = v1.as_object_mut().unwrap();
    for k in ["files_known", "files_digest", "complete", "in_progress"] {
        o.remove(k);
    }
    o.insert("fhirbulk_checkpoint".into(), json!(1));
    o.insert("manifest".into(), manifest);
    let list: Vec<CheckpointFile> = files
        .iter()
        .map(|f| {
            let (lines, complete) = cp.file_progress(f.index);
            CheckpointFile {
                url: f.url.clone(),
                kind: f.kind.name().into(),
                resource_type: f.resource_type.clone(),
                count: f.count,
                lines_delivered: lines,
                complete,
            }
        })
        .collect();
    o.insert("files".into(), serde_json::to_value(list).unwrap());
    v1
}

/// Pull records (checking every checkpoint's size on the way) until `stop` records in all,
/// then checkpoint part-way through a batch; or to the end when `stop` is None.
fn pull(export: &mut Export, ids: &mut Vec<String>, stop: Option<usize>) -> Option<Checkpoint> {
    let mut since = 0;
    loop {
        let b = match export
            .next_batch(64, Some(Duration::from_secs(60)))
            .unwrap()
        {
            Next::Item(b) => b,
            Next::End => return None,
            other => panic!("{other:?}"),
        };
        let n = b.len();
        if stop.is_some_and(|s| ids.len() + n >= s) {
            let used = n / 2;
            ids.extend(b.iter().take(used).map(|r| id_of(r.data)));
            return Some(export.checkpoint_unread(n - used).unwrap());
        }
        ids.extend(b.iter().map(|r| id_of(r.data)));
        since += n;
        if since >= 1000 {
            since = 0;
            let cp = export.checkpoint_unread(0).unwrap();
            let len = serde_json::to_string(&cp).unwrap().len();
            let known = cp.files_known.unwrap() as usize;
            let pieces = cp.in_progress.len() + cp.complete.len();
            assert!(
                len < 2048 + 200 * pieces,
                "a checkpoint of {len} bytes for {pieces} ranges and files in progress ({known} files known)"
            );
            assert!(len < known * 10, "{len} bytes for {known} files");
        }
    }
}

#[test]
fn twenty_thousand_files_checkpoints_stay_small_and_resume_exactly() {
    let sb = Sandbox::start(SandboxOptions {
        patients: FILES,
        records_per_file: 1,
        ..SandboxOptions::default()
    })
    .unwrap();
    let base = sb.base_url();

    // Half the export, then a checkpoint part-way through a batch.
    let mut export = Export::start(config(base.clone())).unwrap();
    let ctl = export.controller();
    let mut ids = Vec::new();
    let cp = pull(&mut export, &mut ids, Some(FILES / 2)).unwrap();
    let files_list = ctl.files_json_from(0, true);
    assert_eq!(files_list.lines().count(), FILES);
    drop(export);
    assert_eq!(
        cp.files_known,
        Some(FILES as u32),
        "the manifest came before the records"
    );

    // Resumed with the file list, to 90 %: the checkpoints of the resumed run stay small too.
    let mut c = config(base.clone());
    c.resume = Some(Value::String(serde_json::to_string(&cp).unwrap()));
    c.resume_files = Some(Value::String(files_list.clone()));
    let mut export = Export::start(c).unwrap();
    let ctl = export.controller();
    let cp = pull(&mut export, &mut ids, Some(FILES * 9 / 10)).unwrap();
    assert_eq!(
        ctl.files_json_from(0, true),
        files_list,
        "the same list, in the same order"
    );
    let files = ctl.files();
    let manifest = ctl.manifest().unwrap();
    assert_eq!(manifest["output"].as_array().unwrap().len(), FILES);
    drop(export);
    let text = serde_json::to_string(&cp).unwrap();
    assert!(
        text.len() < 2048 + 200 * (cp.in_progress.len() + cp.complete.len()),
        "{text}"
    );

    // From there, three ways to resume, each to exactly the ground truth.
    let mut c = config(base.clone());
    c.resume = Some(Value::String(text.clone()));
    c.resume_files = Some(Value::String(files_list.clone()));
    let mut export = Export::start(c).unwrap();
    let ctl = export.controller();
    let mut all = ids.clone();
    assert!(pull(&mut export, &mut all, None).is_none());
    let p = ctl.progress();
    assert_eq!(
        (p.files_total as usize, p.files_done as usize),
        (FILES, FILES)
    );
    assert_eq!(ctl.checkpoint().unwrap().complete, vec![[0, FILES as u32]]);
    assert_truth(&sb, all, "resumed with resume_files");

    // Without the file list: the manifest is fetched again and checked by the digest.
    let mut c = config(base.clone());
    c.resume = Some(Value::String(text.clone()));
    let mut all = ids.clone();
    rest(Export::start(c).unwrap(), &mut all);
    assert_truth(&sb, all, "resumed with the manifest fetched again");

    // The same checkpoint as version 1 (older checkpoints on disk) resumes as well.
    let mut c = config(base.clone());
    c.resume = Some(as_v1(&cp, &files, manifest));
    let mut all = ids.clone();
    rest(Export::start(c).unwrap(), &mut all);
    assert_truth(&sb, all, "resumed from version 1");

    // A file list that is not the checkpoint's is refused before anything is delivered.
    let mut c = config(base);
    c.resume = Some(Value::String(text));
    let other: String = files_list
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 7 {
                l.replace("Patient", "Patients") + "\n"
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    c.resume_files = Some(Value::String(other));
    let mut e = Export::start(c).unwrap();
    let err = e.next_record(Some(Duration::from_secs(60))).unwrap_err();
    assert!(err.message.contains("not the file list"), "{err}");
}
