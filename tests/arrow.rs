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
