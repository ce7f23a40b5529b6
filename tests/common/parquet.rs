//! Parquet datasets read back (feature `parquet`): every row of every committed part, rebuilt.

use fhirbulk::arrow::{rebuild, schema_for};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// Every row of the dataset in `dir` (`<Type>/part-<n>.parquet`), rebuilt into its resource,
/// by `Type/id`, each once; only committed parts may be in the type directories, and each
/// file's schema (with its metadata) is the type's. Other entries of `dir` (the CLI's NDJSON,
/// `error/`, the log) are passed over.
pub fn parquet_rows(dir: &Path) -> BTreeMap<String, Value> {
    let mut rows = BTreeMap::new();
    for t in std::fs::read_dir(dir).unwrap().flatten() {
        let ty = t.file_name().to_string_lossy().into_owned();
        if !t.path().is_dir() || !ty.starts_with(|c: char| c.is_ascii_uppercase()) {
            continue;
        }
        for f in std::fs::read_dir(t.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            assert!(
                name.starts_with("part-") && name.ends_with(".parquet"),
                "{ty}/{name}: only committed parts are left"
            );
            let file = std::fs::File::open(f.path()).unwrap();
            let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
            // The file's schema, with its metadata (the resource type `rebuild` reads); the
            // batches a Parquet reader gives carry the fields only.
            let schema = builder.schema().clone();
            assert_eq!(
                schema,
                schema_for(&ty).arrow_schema(),
                "{ty}: the FHIR schema"
            );
            for b in builder.build().unwrap() {
                let b = b.unwrap().with_schema(schema.clone()).unwrap();
                for i in 0..b.num_rows() {
                    let v = rebuild(&b, i);
                    let key = format!("{ty}/{}", v["id"].as_str().unwrap());
                    assert!(rows.insert(key.clone(), v).is_none(), "{key} twice");
                }
            }
        }
    }
    rows
}
