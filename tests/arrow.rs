//! Records as Arrow (issue 18): every resource of an export, decoded into its type's schema,
//! rebuilds from its row and `_remainder` into the very resource of the NDJSON line (semantic
//! JSON equality), for every type the sandbox serves; the schemas are the same in two exports.

mod common;

use fhirbulk::arrow::{rebuild, schema_for, ArrowBatches, REMAINDER};
use fhirbulk::sandbox::{Sandbox, SandboxOptions};
use fhirbulk::{Config, Export, Kind, Next};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

fn sandbox() -> Sandbox {
    Sandbox::start(SandboxOptions {
        patients: 60,
        records_per_file: 50,
        ..SandboxOptions::default()
    })
    .unwrap()
}

fn config(sb: &Sandbox) -> Config {
    let mut c = Config::new(sb.scenario_url("polls=0"));
    c.poll_min_ms = 10;
    c
}

/// Every output resource of the export, by `Type/id` (parsed from its NDJSON line).
fn lines(sb: &Sandbox) -> BTreeMap<String, Value> {
    let mut e = Export::start(config(sb)).unwrap();
    let mut out = BTreeMap::new();
    loop {
        match e.next_record(Some(Duration::from_secs(30))).unwrap() {
            Next::Item(r) if r.kind == Kind::Output => {
                let v: Value = serde_json::from_slice(r.data).unwrap();
                let key = format!("{}/{}", r.resource_type, v["id"].as_str().unwrap());
                assert!(out.insert(key.clone(), v).is_none(), "{key} twice");
            }
            Next::Item(_) => {}
            Next::End => return out,
            other => panic!("{other:?}"),
        }
    }
}

/// Every row of the export as Arrow, rebuilt, by `Type/id`; and each type's schema.
fn rows(
    sb: &Sandbox,
    batch_rows: usize,
    threads: usize,
) -> (BTreeMap<String, Value>, BTreeMap<String, String>) {
    let mut a = ArrowBatches::with_threads(Export::start(config(sb)).unwrap(), batch_rows, threads);
    let mut out = BTreeMap::new();
    let mut schemas = BTreeMap::new();
    let mut remainders = 0;
    loop {
        match a.next_batch(Some(Duration::from_secs(30))).unwrap() {
            Next::Item((t, b)) => {
                assert!(b.num_rows() <= batch_rows && b.num_rows() > 0);
                assert_eq!(b.schema(), schema_for(&t).arrow_schema(), "{t}: one schema");
                schemas.insert(t.clone(), format!("{:?}", b.schema()));
                remainders += b.num_rows() - b.column_by_name(REMAINDER).unwrap().null_count();
                for i in 0..b.num_rows() {
                    let v = rebuild(&b, i);
                    assert_eq!(v["resourceType"], t.as_str());
                    let key = format!("{t}/{}", v["id"].as_str().unwrap());
                    assert!(out.insert(key.clone(), v).is_none(), "{key} twice");
                }
            }
            Next::End => break,
            other => panic!("{other:?}"),
        }
    }
    eprintln!("{} rows, {remainders} with a remainder", out.len());
    (out, schemas)
}

#[test]
fn every_resource_rebuilds_from_its_row() {
    let sb = sandbox();
    let want = lines(&sb);
    assert!(want.len() > 400, "{}", want.len());
    let types: std::collections::BTreeSet<&str> =
        want.keys().map(|k| k.split('/').next().unwrap()).collect();
    assert!(types.len() >= 5, "{types:?}");
    // Decoded on the reader's thread, then on 3 decode threads.
    let (got, schemas) = rows(&sb, 100, 1);
    assert_eq!(got.len(), want.len());
    for (k, v) in &want {
        assert_eq!(got.get(k), Some(v), "{k}");
    }
    // A second export, other batch sizes, several threads: the same rows and schemas.
    let (again, schemas2) = rows(&sb, 7, 3);
    assert_eq!(again, got);
    assert_eq!(schemas, schemas2);
}

#[cfg(feature = "parquet")]
use common::parquet::parquet_rows;

/// The export written as a Parquet dataset in `dir`, committed every 4 pulls: either the
/// reader's batches written on this thread, or (`threaded`) the decode threads writing their
/// own parts (the CLI's way). The state of the end, and of a commit in the middle.
#[cfg(feature = "parquet")]
fn write_dataset(
    sb: &Sandbox,
    dir: &std::path::Path,
    opts: &fhirbulk::arrow::ParquetOptions,
    threaded: bool,
) -> (fhirbulk::arrow::PartsState, fhirbulk::arrow::PartsState) {
    use fhirbulk::arrow::{ArrowReader, ParquetDataset};
    let mut ds = ParquetDataset::open(dir, opts.clone(), &Default::default()).unwrap();
    let mut reader = if threaded {
        ArrowReader::to_parquet(&ds, 64, 3)
    } else {
        ArrowReader::with_threads(64, 2)
    };
    let mut e = Export::start(config(sb)).unwrap();
    let mut pulls = 0;
    let mut committed = None;
    let drain = |reader: &mut ArrowReader, ds: &mut ParquetDataset| {
        reader.drain().unwrap();
        while let Some((t, b)) = reader.pop().unwrap() {
            assert!(!threaded, "a Parquet reader hands nothing out");
            ds.write(&t, &b).unwrap();
        }
        let state = ds.commit().unwrap();
        assert_eq!(ds.uncommitted_rows(), 0);
        state
    };
    loop {
        match e.next_batch(100, Some(Duration::from_secs(30))).unwrap() {
            Next::Item(b) => reader.push(&b).unwrap(),
            Next::End => break,
            other => panic!("{other:?}"),
        }
        while let Some((t, b)) = reader.pop().unwrap() {
            ds.write(&t, &b).unwrap();
        }
        pulls += 1;
        if pulls % 4 == 0 {
            let state = drain(&mut reader, &mut ds);
            if committed.is_none() && pulls >= 8 {
                committed = Some(state);
            }
        }
    }
    let end = drain(&mut reader, &mut ds);
    (end, committed.expect("a commit in the middle"))
}

/// The export written as a Parquet dataset (inline, and by the decode threads), read back:
/// every resource, once, rebuilt equal; then a crash after a commit (parts closed and in
/// progress after it) and a reopen with the committed state: only the committed rows are left.
#[cfg(feature = "parquet")]
#[test]
fn parquet_dataset_round_trips_and_resumes_from_a_commit() {
    use fhirbulk::arrow::{ParquetDataset, ParquetOptions};
    let sb = sandbox();
    let want = lines(&sb);
    for threaded in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let opts = ParquetOptions {
            part_bytes: 200_000,
            max_open_parts: 3,
            ..ParquetOptions::default()
        };
        let (end, committed) = write_dataset(&sb, dir.path(), &opts, threaded);
        assert!(
            end.values().any(|p| p.parts > 1),
            "parts roll at part_bytes and max_open_parts: {end:?}"
        );
        let got = parquet_rows(dir.path());
        assert_eq!(got.len(), want.len());
        for (k, v) in &want {
            assert_eq!(got.get(k), Some(v), "{k}");
        }
        // Crash: a part in progress beside the parts closed after the earlier commit.
        let (t, _) = end.iter().next().unwrap();
        std::fs::write(
            dir.path().join(t).join(".part-00099.parquet.inprogress"),
            b"PAR1",
        )
        .unwrap();
        let mut ds = ParquetDataset::open(dir.path(), opts, &committed).unwrap();
        assert_eq!(ds.state(), committed);
        // A write after it that fails: every part it made, closed or not, is removed.
        let (key, v) = want.iter().next().unwrap();
        let t = key.split('/').next().unwrap();
        let mut d = fhirbulk::arrow::Decoder::new(t);
        d.push_line(v.to_string().as_bytes()).unwrap();
        let b = d.flush().unwrap();
        let mut w = ds.writer();
        w.write(t, &b).unwrap();
        w.close_all().unwrap();
        ds.write(t, &b).unwrap();
        drop(w);
        ds.remove_written().unwrap();
        assert_eq!(ds.state(), committed);
        let left = parquet_rows(dir.path());
        let rows: u64 = committed.values().map(|p| p.rows).sum();
        assert_eq!(left.len() as u64, rows);
        assert!(rows > 0 && (rows as usize) < want.len(), "{rows}");
        for (k, v) in &left {
            assert_eq!(want.get(k), Some(v), "{k}");
        }
    }
}
