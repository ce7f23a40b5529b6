//! The export's records as Arrow record batches through the Arrow C Data Interface and the
//! Arrow C Stream Interface (feature `arrow`; without it these calls return
//! `FHIRBULK_ERR_INVALID_ARGUMENT` saying so, and `fhirbulk_has_arrow()` is 0).

#[cfg(feature = "arrow")]
use super::FHIRBULK_OK;
use super::{boundary, invalid_argument, lookup, FhirbulkExport, FhirbulkStatus};
use libc::c_char;

/// `struct ArrowArray` of the Arrow C Data Interface (defined in fhirbulk.h as the Arrow
/// specification gives it).
pub struct ArrowArray {
    _private: [u8; 0],
}

/// `struct ArrowSchema` of the Arrow C Data Interface.
pub struct ArrowSchema {
    _private: [u8; 0],
}

/// `struct ArrowArrayStream` of the Arrow C Stream Interface.
pub struct ArrowArrayStream {
    _private: [u8; 0],
}

/// 1 when this library was built with Arrow support (the `arrow` feature), else 0.
#[no_mangle]
pub extern "C" fn fhirbulk_has_arrow() -> u32 {
    u32::from(cfg!(feature = "arrow"))
}

#[cfg(not(feature = "arrow"))]
fn no_arrow() -> crate::error::Error {
    invalid_argument("this libfhirbulk was built without Arrow support (cargo feature `arrow`)")
}

/// The Arrow schema of a FHIR R4 resource type (NUL-terminated name), the same for every batch
/// and every export: one field per element, then `_remainder`. On `FHIRBULK_OK`, `*out_schema`
/// is a new ArrowSchema the caller owns (call its `release`).
///
/// # Safety
/// `resource_type` is NULL or a NUL-terminated string; `out_schema` is NULL or points to
/// writable memory for one `struct ArrowSchema` (its old content is not released).
#[no_mangle]
pub unsafe extern "C" fn fhirbulk_arrow_schema(
    resource_type: *const c_char,
    out_schema: *mut ArrowSchema,
) -> FhirbulkStatus {
    boundary(|| {
        if resource_type.is_null() || out_schema.is_null() {
            return Err(invalid_argument("resource_type or out_schema is NULL"));
        }
        #[cfg(feature = "arrow")]
        {
            // SAFETY: non-NULL and NUL-terminated per the contract.
            let t = unsafe { std::ffi::CStr::from_ptr(resource_type) }
                .to_str()
                .map_err(|_| invalid_argument("resource_type is not UTF-8"))?;
            let schema = crate::arrow::schema_for(t).arrow_schema();
            let ffi = imp::schema_to_ffi(&schema)?;
            // SAFETY: `out_schema` is writable for one ArrowSchema per the contract; the
            // write moves ownership to the caller (nothing is dropped here).
            unsafe {
                out_schema
                    .cast::<arrow_schema::ffi::FFI_ArrowSchema>()
                    .write(ffi)
            };
            Ok(FHIRBULK_OK)
        }
        #[cfg(not(feature = "arrow"))]
        Err(no_arrow())
    })
}

/// Pull the next Arrow record batch: up to `max_rows` rows, all of one resource type, in the
/// schema of `fhirbulk_arrow_schema` for that type (the first call's `max_rows` applies to the
/// rest of the export). A type's batch comes when it is full; at the end each decode thread (up to 4) hands out what it holds.
/// Returns `FHIRBULK_RECORD` and fills `*out_array` and `*out_schema` (a struct array of the
/// rows and its schema, both owned by the caller: call their `release`) and `type_buf` (the
/// resource type, snprintf semantics; 64 bytes hold every FHIR type), or the outcomes of
/// `export_next_batch`. Error and deleted records are not decoded (read them with
/// `export_next_record` on another export). Records pulled as Arrow are not seen by
/// `export_next_record`/`export_next_batch`, and the reverse.
///
/// # Safety
/// `out_array` / `out_schema` are NULL or point to writable memory for one `struct ArrowArray`
/// / `struct ArrowSchema`; `type_buf` is NULL or valid for `type_buf_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn export_next_arrow_batch(
    h: *mut FhirbulkExport,
    max_rows: usize,
    timeout_ms: i32,
    out_array: *mut ArrowArray,
    out_schema: *mut ArrowSchema,
    type_buf: *mut c_char,
    type_buf_len: usize,
) -> FhirbulkStatus {
    boundary(|| {
        lookup(h)?;
        if out_array.is_null() || out_schema.is_null() {
            return Err(invalid_argument("out_array or out_schema is NULL"));
        }
        if max_rows == 0 {
            return Err(invalid_argument("max_rows is 0"));
        }
        #[cfg(feature = "arrow")]
        {
            super::with_consumer(h, |c| {
                let next = imp::next_any(c, max_rows, super::timeout(timeout_ms))?;
                let status = super::next_status(&next);
                if let crate::stream::Next::Item((t, batch)) = next {
                    let (array, schema) = imp::batch_to_ffi(batch)?;
                    // SAFETY: the outputs are writable per the contract; the writes move
                    // ownership to the caller; `type_buf` holds `type_buf_len` bytes.
                    unsafe {
                        out_array
                            .cast::<arrow_array::ffi::FFI_ArrowArray>()
                            .write(array);
                        out_schema
                            .cast::<arrow_schema::ffi::FFI_ArrowSchema>()
                            .write(schema);
                        super::copy_out(&t, type_buf, type_buf_len);
                    }
                }
                Ok(status)
            })
        }
        #[cfg(not(feature = "arrow"))]
        {
            let _ = (timeout_ms, type_buf, type_buf_len);
            Err(no_arrow())
        }
    })
}

/// An Arrow C stream of one resource type's batches (up to `max_rows` rows each): what
/// pyarrow's `RecordBatchReader._import_from_c`, Polars, DuckDB, Arrow C++/Java and nanoarrow
/// read. On `FHIRBULK_OK`, `*out_stream` is a new stream the caller owns: call its `release`
/// when done (after or before the end). `get_next` waits for the export (no timeout; a cancel
/// or `export_free` ends the wait with an error) and ends with a released array once every
/// batch of the type was handed out. Batches of other types that come meanwhile are kept for
/// their own streams (or `export_next_arrow_batch`) until taken: for a bounded memory, read an
/// export of several types with one stream per type, each on its own thread (they take turns),
/// or with `export_next_arrow_batch`. The stream keeps what it needs alive: it stays valid after
/// `export_free` (its `get_next` then fails saying so). One thread at a time per stream. A
/// failed `get_next` returns an errno value and `get_last_error` a text that starts with the
/// error's name in brackets: `[protocol] file 3 line 7: ...`, `[network] ...`, `[cancelled] ...`,
/// `[invalid_handle] the export was freed ...` (the names of `export_last_error_json`).
///
/// # Safety
/// `resource_type` is NULL or NUL-terminated; `out_stream` is NULL or points to writable
/// memory for one `struct ArrowArrayStream`.
#[no_mangle]
pub unsafe extern "C" fn export_arrow_stream(
    h: *mut FhirbulkExport,
    resource_type: *const c_char,
    max_rows: usize,
    out_stream: *mut ArrowArrayStream,
) -> FhirbulkStatus {
    boundary(|| {
        let handle = lookup(h)?;
        if resource_type.is_null() || out_stream.is_null() {
            return Err(invalid_argument("resource_type or out_stream is NULL"));
        }
        if max_rows == 0 {
            return Err(invalid_argument("max_rows is 0"));
        }
        #[cfg(feature = "arrow")]
        {
            // SAFETY: non-NULL and NUL-terminated per the contract.
            let t = unsafe { std::ffi::CStr::from_ptr(resource_type) }
                .to_str()
                .map_err(|_| invalid_argument("resource_type is not UTF-8"))?;
            let stream = imp::stream(handle, t, max_rows);
            // SAFETY: `out_stream` is writable per the contract; the write moves ownership.
            unsafe {
                out_stream
                    .cast::<arrow_array::ffi_stream::FFI_ArrowArrayStream>()
                    .write(stream)
            };
            Ok(FHIRBULK_OK)
        }
        #[cfg(not(feature = "arrow"))]
        {
            let _ = handle;
            Err(no_arrow())
        }
    })
}

/// Write the export's output resources as a Parquet dataset in `dir` (NUL-terminated path):
/// `<dir>/<Type>/part-<n>.parquet`, one table per resource type in the schema of
/// `fhirbulk_arrow_schema` (with its schema and field metadata), decoded and encoded by the
/// library on up to 4 threads of its own, each writing its own parts (memory stays bounded: a
/// few open parts and a filling batch per type and thread). A part is written as
/// `.part-<n>.parquet.inprogress` and renamed when closed, so a reader never sees half a file.
///
/// `options_json` is NULL or a JSON object: `compression` (`"snappy"`, the default, `"zstd"`,
/// `"none"`), `row_group_rows` (32768), `part_bytes` (536870912: a part is closed at that
/// size), `max_open_parts` (per thread, 2), `batch_rows` (2048), `threads` (1-4; default the
/// cores, at most 4), `overwrite` (false: a `dir` that holds parts already is refused; true:
/// they are removed). Options apply at the first call.
///
/// Returns `FHIRBULK_END` when every output resource is written and every part closed, and
/// then writes a summary into `summary_buf` (snprintf semantics; NULL/0 for none):
/// `{"types":{"Patient":{"parts":1,"rows":300},...},"skipped":N}` (`skipped`: error and
/// deleted records, which are not written; read them with `export_next_record` on another
/// export). `FHIRBULK_TIMEOUT` when `timeout_ms` (negative: no limit) passed first: call again
/// with the same `dir` to go on; another call after `FHIRBULK_END` gives the summary again.
/// `FHIRBULK_CANCELLED` after `export_cancel`, or an error: every part of this write is removed
/// (in progress or closed), so a directory never holds an incomplete dataset. An export any record of which was
/// pulled already (records, batches, Arrow) is refused, and so are Arrow pulls while it writes.
/// Needs the `parquet` feature (`fhirbulk_has_parquet()`).
///
/// # Safety
/// `dir` is NULL or NUL-terminated; `options_json` is NULL or NUL-terminated; `summary_buf` is
/// NULL or valid for `summary_buf_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn export_write_parquet(
    h: *mut FhirbulkExport,
    dir: *const c_char,
    options_json: *const c_char,
    timeout_ms: i32,
    summary_buf: *mut c_char,
    summary_buf_len: usize,
) -> FhirbulkStatus {
    boundary(|| {
        lookup(h)?;
        if dir.is_null() {
            return Err(invalid_argument("dir is NULL"));
        }
        #[cfg(feature = "parquet")]
        {
            // SAFETY: non-NULL and NUL-terminated per the contract.
            let dir = unsafe { std::ffi::CStr::from_ptr(dir) }
                .to_str()
                .map_err(|_| invalid_argument("dir is not UTF-8"))?;
            let options = if options_json.is_null() {
                None
            } else {
                // SAFETY: non-NULL and NUL-terminated per the contract.
                Some(
                    unsafe { std::ffi::CStr::from_ptr(options_json) }
                        .to_str()
                        .map_err(|_| invalid_argument("options_json is not UTF-8"))?,
                )
            };
            super::with_consumer(h, |c| {
                let (status, summary) =
                    imp::write_parquet(c, dir, options, super::timeout(timeout_ms))?;
                if let Some(s) = summary {
                    // SAFETY: `summary_buf` holds `summary_buf_len` bytes per the contract.
                    unsafe { super::copy_out(&s, summary_buf, summary_buf_len) };
                }
                Ok(status)
            })
        }
        #[cfg(not(feature = "parquet"))]
        {
            let _ = (options_json, timeout_ms, summary_buf, summary_buf_len);
            Err(invalid_argument(
                "this libfhirbulk was built without Parquet support (cargo feature `parquet`)",
            ))
        }
    })
}

/// 1 when this library was built with Parquet support (the `parquet` feature, which includes
/// `arrow`), else 0.
#[no_mangle]
pub extern "C" fn fhirbulk_has_parquet() -> u32 {
    u32::from(cfg!(feature = "parquet"))
}

#[cfg(feature = "arrow")]
pub(super) mod imp {
    use super::super::{Consumer, Handle};
    use crate::arrow::{schema_for, ArrowReader};
    use crate::error::{Error, ErrorCode};
    use crate::stream::Next;
    use arrow_array::ffi::FFI_ArrowArray;
    use arrow_array::ffi_stream::FFI_ArrowArrayStream;
    use arrow_array::{Array, RecordBatch, RecordBatchReader, StructArray};
    use arrow_schema::ffi::FFI_ArrowSchema;
    use arrow_schema::{ArrowError, Schema, SchemaRef};
    use std::collections::VecDeque;
    use std::sync::Arc;
    use std::time::Duration;

    /// A handle's Arrow side: the decoders and the batches a type's stream passed over, or
    /// the Parquet dataset being written.
    pub(in crate::ffi) struct State {
        reader: ArrowReader,
        held: VecDeque<(String, RecordBatch)>,
        #[cfg(feature = "parquet")]
        parquet: Option<parquet::Job>,
    }

    impl State {
        fn new(max_rows: usize) -> State {
            State {
                reader: ArrowReader::new(max_rows),
                held: VecDeque::new(),
                #[cfg(feature = "parquet")]
                parquet: None,
            }
        }

        /// Batches and Parquet do not mix on one export.
        fn not_parquet(&self) -> Result<(), Error> {
            #[cfg(feature = "parquet")]
            if let Some(j) = &self.parquet {
                return Err(Error::new(
                    ErrorCode::InvalidArgument,
                    format!(
                        "this export is being written as Parquet to {} (export_write_parquet): its records cannot be pulled as Arrow too",
                        j.dir
                    ),
                ));
            }
            Ok(())
        }
    }

    #[cfg(feature = "parquet")]
    pub(super) use parquet::write_parquet;

    #[cfg(feature = "parquet")]
    mod parquet {
        use super::super::super::Consumer;
        use super::super::super::{
            FhirbulkStatus, FHIRBULK_CANCELLED as CANCELLED, FHIRBULK_END as END,
            FHIRBULK_TIMEOUT as TIMEOUT,
        };
        use super::State;
        use crate::arrow::{
            ArrowReader, ParquetCompression, ParquetDataset, ParquetOptions, PARQUET_BATCH_ROWS,
        };
        use crate::error::{Error, ErrorCode};
        use crate::stream::Next;
        use serde_json::{json, Map, Value};
        use std::path::Path;
        use std::time::{Duration, Instant};

        pub(in crate::ffi) struct Job {
            pub dir: String,
            dataset: ParquetDataset,
            reader: ArrowReader,
            summary: Option<String>,
        }

        fn bad(msg: String) -> Error {
            Error::new(ErrorCode::InvalidArgument, msg)
        }

        fn parse_options(
            text: Option<&str>,
        ) -> Result<(ParquetOptions, usize, usize, bool), Error> {
            let mut o = ParquetOptions::default();
            let mut batch_rows = PARQUET_BATCH_ROWS;
            let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
            let mut overwrite = false;
            let Some(text) = text else {
                return Ok((o, batch_rows, threads, overwrite));
            };
            let m: Map<String, Value> = serde_json::from_str(text)
                .map_err(|e| bad(format!("options_json is not a JSON object: {e}")))?;
            let count = |k: &str, v: &Value, max: u64| -> Result<u64, Error> {
                v.as_u64().filter(|n| (1..=max).contains(n)).ok_or_else(|| {
                    bad(format!(
                        "Parquet option {k}: {v} is not a whole number from 1 to {max}"
                    ))
                })
            };
            for (k, v) in &m {
                match k.as_str() {
                    "compression" => {
                        o.compression = v.as_str().and_then(ParquetCompression::parse).ok_or_else(|| {
                            bad(format!("Parquet option compression: {v} is not \"snappy\", \"zstd\" or \"none\""))
                        })?
                    }
                    "row_group_rows" => o.row_group_rows = count(k, v, 1 << 30)? as usize,
                    "part_bytes" => o.part_bytes = count(k, v, u64::MAX)?,
                    "max_open_parts" => o.max_open_parts = count(k, v, 1024)? as usize,
                    "batch_rows" => batch_rows = count(k, v, 1 << 20)? as usize,
                    "threads" => threads = count(k, v, 4)? as usize,
                    "overwrite" => {
                        overwrite = v
                            .as_bool()
                            .ok_or_else(|| bad(format!("Parquet option overwrite: {v} is not true or false")))?
                    }
                    other => {
                        return Err(bad(format!(
                            "unknown Parquet option {other:?} (known: compression, row_group_rows, part_bytes, max_open_parts, batch_rows, threads, overwrite)"
                        )))
                    }
                }
            }
            Ok((o, batch_rows, threads, overwrite))
        }

        /// Part files in the type directories of `dir` (a dataset written before).
        fn has_parts(dir: &Path) -> bool {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return false;
            };
            rd.flatten().any(|e| {
                e.path().is_dir()
                    && std::fs::read_dir(e.path()).is_ok_and(|f| {
                        f.flatten().any(|f| {
                            let n = f.file_name();
                            let n = n.to_string_lossy();
                            n.ends_with(".parquet") || n.ends_with(".parquet.inprogress")
                        })
                    })
            })
        }

        /// A write that failed or was cancelled: its decode threads stopped (their parts in
        /// progress removed as they end), then every part it closed removed, so that a
        /// directory never holds an incomplete dataset.
        fn discard(job: Option<Job>) {
            if let Some(Job {
                mut dataset,
                reader,
                ..
            }) = job
            {
                drop(reader);
                let _ = dataset.remove_written();
            }
        }

        pub(in crate::ffi) fn write_parquet(
            c: &mut Consumer,
            dir: &str,
            options: Option<&str>,
            timeout: Option<Duration>,
        ) -> Result<(FhirbulkStatus, Option<String>), Error> {
            let Consumer { export, arrow, .. } = c;
            let state = arrow.get_or_insert_with(|| State::new(PARQUET_BATCH_ROWS));
            let job = match &mut state.parquet {
                Some(j) if j.dir != dir => {
                    return Err(bad(format!(
                        "this export is being written as Parquet to {}, not {dir}",
                        j.dir
                    )))
                }
                Some(j) => j,
                None => {
                    // Records taken by any pull (records, batches, Arrow) would be missing.
                    let taken = export.progress().records_delivered;
                    if taken > 0 {
                        return Err(bad(format!(
                            "{taken} records of this export were pulled already (export_next_record, export_next_batch or Arrow): a Parquet dataset of it would miss them; write a new export"
                        )));
                    }
                    let (opts, batch_rows, threads, overwrite) = parse_options(options)?;
                    if !overwrite && has_parts(Path::new(dir)) {
                        return Err(bad(format!(
                            "{dir} holds Parquet parts already: choose another directory, or set \"overwrite\": true"
                        )));
                    }
                    let dataset = ParquetDataset::open(Path::new(dir), opts, &Default::default())?;
                    let reader = ArrowReader::to_parquet(&dataset, batch_rows, threads);
                    state.parquet.insert(Job {
                        dir: dir.to_owned(),
                        dataset,
                        reader,
                        summary: None,
                    })
                }
            };
            if let Some(s) = &job.summary {
                return Ok((END, Some(s.clone())));
            }
            let deadline = timeout.map(|t| Instant::now() + t);
            // (A batch that is there already comes even when the time is up: with a timeout of
            // 0, a call writes what has arrived.)
            let r = loop {
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                // Records pulled 4096 at a time at least (as the CLI does): fewer, longer runs
                // for the decode threads.
                match export.next_batch(job.reader.batch_rows().max(4096), left) {
                    Ok(Next::Item(b)) => {
                        if let Err(e) = job.reader.push(&b).and_then(|_| job.reader.pop()) {
                            break Err(e);
                        }
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            break Ok(TIMEOUT);
                        }
                    }
                    Ok(Next::End) => break Ok(END),
                    Ok(Next::Timeout) => break Ok(TIMEOUT),
                    Ok(Next::Cancelled) => break Ok(CANCELLED),
                    Err(e) => break Err(e),
                }
            };
            match r {
                Ok(END) => {
                    let done = job.reader.drain().and_then(|_| job.dataset.commit());
                    match done {
                        Ok(parts) => {
                            let s = json!({"types": parts, "skipped": job.reader.skipped()})
                                .to_string();
                            job.summary = Some(s.clone());
                            Ok((END, Some(s)))
                        }
                        Err(e) => {
                            discard(state.parquet.take());
                            Err(e)
                        }
                    }
                }
                Ok(TIMEOUT) => Ok((TIMEOUT, None)),
                Ok(other) => {
                    discard(state.parquet.take());
                    Ok((other, None))
                }
                Err(e) => {
                    discard(state.parquet.take());
                    Err(e)
                }
            }
        }
    }

    fn arrow_failed(e: ArrowError) -> Error {
        Error::new(ErrorCode::Internal, format!("Arrow export failed: {e}"))
    }

    pub(super) fn schema_to_ffi(schema: &Schema) -> Result<FFI_ArrowSchema, Error> {
        FFI_ArrowSchema::try_from(schema).map_err(arrow_failed)
    }

    pub(super) fn batch_to_ffi(b: RecordBatch) -> Result<(FFI_ArrowArray, FFI_ArrowSchema), Error> {
        let schema = schema_to_ffi(b.schema().as_ref())?;
        let array = FFI_ArrowArray::new(&StructArray::from(b).to_data());
        Ok((array, schema))
    }

    /// The next batch of any type: those a stream passed over first.
    pub(super) fn next_any(
        c: &mut Consumer,
        max_rows: usize,
        timeout: Option<Duration>,
    ) -> Result<Next<(String, RecordBatch)>, Error> {
        let Consumer { export, arrow, .. } = c;
        let s = arrow.get_or_insert_with(|| State::new(max_rows));
        s.not_parquet()?;
        if let Some(b) = s.held.pop_front() {
            return Ok(Next::Item(b));
        }
        s.reader.next_batch(export, timeout)
    }

    /// How long a stream waits for the export in one turn of the consumer lock.
    const TURN: Duration = Duration::from_millis(50);

    /// One type's batches, pulled from the handle's export under its consumer lock.
    struct TypeStream {
        handle: Arc<Handle>,
        resource_type: String,
        max_rows: usize,
        schema: SchemaRef,
    }

    /// A stream's error as its `get_last_error` text: the error's name in brackets, then the
    /// message (`[protocol] file 3 line 7: ...`, `[cancelled] ...`), so that a binding can tell
    /// the kinds apart without the export's handle.
    #[derive(Debug)]
    struct StreamError(String);

    impl std::fmt::Display for StreamError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for StreamError {}

    fn external(e: Error) -> ArrowError {
        ArrowError::ExternalError(Box::new(StreamError(format!("[{}] {e}", e.code.name()))))
    }

    impl Iterator for TypeStream {
        type Item = Result<RecordBatch, ArrowError>;

        fn next(&mut self) -> Option<Self::Item> {
            loop {
                // The handle's consumer lock is taken for one short pull at a time, so that
                // the streams of other types (other threads) get their turns and take the
                // batches this one passes over.
                let mut guard = self.handle.consumer.lock();
                let Some(c) = guard.as_mut() else {
                    return Some(Err(external(Error::new(
                        ErrorCode::InvalidHandle,
                        "the export was freed (export_free) before its stream ended",
                    ))));
                };
                let Consumer { export, arrow, .. } = c;
                let s = arrow.get_or_insert_with(|| State::new(self.max_rows));
                if let Err(e) = s.not_parquet() {
                    return Some(Err(external(e)));
                }
                if let Some(at) = s.held.iter().position(|(t, _)| *t == self.resource_type) {
                    return s.held.remove(at).map(|(_, b)| Ok(b));
                }
                match s.reader.next_batch(export, Some(TURN)) {
                    Ok(Next::Item((t, b))) if t == self.resource_type => return Some(Ok(b)),
                    Ok(Next::Item(other)) => s.held.push_back(other),
                    Ok(Next::End) => return None,
                    Ok(Next::Timeout) => {}
                    Ok(Next::Cancelled) => {
                        return Some(Err(ArrowError::ExternalError(Box::new(StreamError(
                            "[cancelled] the export was cancelled (export_cancel)".into(),
                        )))))
                    }
                    Err(e) => return Some(Err(external(e))),
                }
            }
        }
    }

    impl RecordBatchReader for TypeStream {
        fn schema(&self) -> SchemaRef {
            Arc::clone(&self.schema)
        }
    }

    pub(super) fn stream(
        handle: Arc<Handle>,
        resource_type: &str,
        max_rows: usize,
    ) -> FFI_ArrowArrayStream {
        FFI_ArrowArrayStream::new(Box::new(TypeStream {
            handle,
            resource_type: resource_type.to_owned(),
            max_rows,
            schema: schema_for(resource_type).arrow_schema(),
        }))
    }
}
