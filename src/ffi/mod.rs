//! The C ABI: a thin layer over [`crate::export`]. The only place with `extern "C"`.
//!
//! Rules (also stated in the generated header):
//! - every function returns a `FhirbulkStatus` (or a length), outputs are written only on
//!   success, and no panic crosses the boundary (it becomes `FHIRBULK_ERR_INTERNAL`);
//! - handles are ids looked up in a registry, never dereferenced: NULL, freed and foreign
//!   pointers give `FHIRBULK_ERR_INVALID_HANDLE`;
//! - `export_poll`, `export_cancel`, `export_last_error*`, `export_manifest`,
//!   `export_warnings_json`, `export_files_json` and `export_next_event` may be called from any
//!   thread at any time; the consuming calls
//!   (`export_next_record`, `export_next_batch`) from one thread at a time (a second concurrent
//!   consumer gets `FHIRBULK_ERR_BUSY`).

mod arrow;
pub use arrow::*;
mod config;
pub use config::*;

use crate::error::{Error, ErrorCode};
use crate::export::{Controller, Export};
use crate::stream::Next;
use crate::Config;
use libc::c_char;
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Status of every call. Values below 100 are outcomes, 100 and above are errors; the numbers
/// never change meaning.
pub type FhirbulkStatus = i32;

/// ABI version of this header and library; bindings check that both agree.
pub const FHIRBULK_ABI_VERSION: u32 = 3;

/// Success.
pub const FHIRBULK_OK: FhirbulkStatus = 0;
/// A record (or a non-empty batch) was returned.
pub const FHIRBULK_RECORD: FhirbulkStatus = 1;
/// The export completed and every record was delivered.
pub const FHIRBULK_END: FhirbulkStatus = 2;
/// Nothing arrived within `timeout_ms`.
pub const FHIRBULK_TIMEOUT: FhirbulkStatus = 3;
/// The export was cancelled.
pub const FHIRBULK_CANCELLED: FhirbulkStatus = 4;

/// A NULL pointer or an out-of-range argument.
pub const FHIRBULK_ERR_INVALID_ARGUMENT: FhirbulkStatus = 100;
/// A NULL, freed or foreign handle.
pub const FHIRBULK_ERR_INVALID_HANDLE: FhirbulkStatus = 101;
/// Two threads consumed one handle at the same time.
pub const FHIRBULK_ERR_BUSY: FhirbulkStatus = 102;
/// The config is not valid (the message names the key).
pub const FHIRBULK_ERR_CONFIG: FhirbulkStatus = 103;
/// A bug in fhirbulk (a caught panic).
pub const FHIRBULK_ERR_INTERNAL: FhirbulkStatus = 104;
/// Connection refused or reset, DNS, TLS, a broken transfer.
pub const FHIRBULK_ERR_NETWORK: FhirbulkStatus = 200;
/// A request or a read timed out.
pub const FHIRBULK_ERR_TIMEOUT: FhirbulkStatus = 201;
/// The server broke the protocol (malformed manifest, wrong content type, overlong line).
pub const FHIRBULK_ERR_PROTOCOL: FhirbulkStatus = 202;
/// Authorization failed.
pub const FHIRBULK_ERR_AUTH: FhirbulkStatus = 203;
/// HTTP 400.
pub const FHIRBULK_ERR_BAD_REQUEST: FhirbulkStatus = 300;
/// HTTP 401.
pub const FHIRBULK_ERR_UNAUTHORIZED: FhirbulkStatus = 301;
/// HTTP 403.
pub const FHIRBULK_ERR_FORBIDDEN: FhirbulkStatus = 302;
/// HTTP 404 or 410.
pub const FHIRBULK_ERR_NOT_FOUND: FhirbulkStatus = 303;
/// HTTP 406.
pub const FHIRBULK_ERR_NOT_ACCEPTABLE: FhirbulkStatus = 304;
/// HTTP 415.
pub const FHIRBULK_ERR_UNSUPPORTED_MEDIA_TYPE: FhirbulkStatus = 305;
/// HTTP 422.
pub const FHIRBULK_ERR_UNPROCESSABLE: FhirbulkStatus = 306;
/// HTTP 429 (after the retries ran out).
pub const FHIRBULK_ERR_THROTTLED: FhirbulkStatus = 307;
/// HTTP 5xx.
pub const FHIRBULK_ERR_SERVER: FhirbulkStatus = 308;
/// Any other HTTP status.
pub const FHIRBULK_ERR_HTTP: FhirbulkStatus = 309;

/// Record from a manifest `output` file.
pub const FHIRBULK_KIND_OUTPUT: u32 = 0;
/// Record from a manifest `error` file (an OperationOutcome).
pub const FHIRBULK_KIND_ERROR: u32 = 1;
/// Record from a manifest `deleted` file (a Bundle of deletions).
pub const FHIRBULK_KIND_DELETED: u32 = 2;

/// A document an attachment links, fetched by fhirbulk (config `attachments: "save"`). Its
/// `data` is a JSON object describing it (`resource` such as `DocumentReference/123`,
/// `position` among the record's attachments, `path` such as `content[0].attachment`, the
/// `url` it came from, `contentType`, `size`, `hash` (SHA-1, base64) and `file`, the
/// relative path the record's `url` now names); the document's bytes are `content` /
/// `content_len`. `resource_type`, `file_index` and `line` are those of the record that links
/// it, which comes after its attachments' records in its file's order (records of other files
/// may come between: match them by `file_index` and `line`).
///
/// Why a record kind and not a separate pull call: a document then travels the same way as
/// every record — in order before the record that names it, through the same bounded queue,
/// counted by the same delivery progress, so a checkpoint taken between a document and its
/// record is exact (at resume neither is fetched or delivered again) — and a consumer that
/// does not ask for documents never sees the kind. An attachment that cannot be fetched gives
/// an error record (`FHIRBULK_KIND_ERROR`, resource type `OperationOutcome`, with the file
/// index and line of the record; it names the resource, the URL and the reason) in the same
/// place instead.
pub const FHIRBULK_KIND_ATTACHMENT: u32 = 3;

/// Sending the kick-off request.
pub const FHIRBULK_STATE_KICKING_OFF: u32 = 0;
/// The server is preparing the files (polling).
pub const FHIRBULK_STATE_WAITING: u32 = 1;
/// Files are downloading.
pub const FHIRBULK_STATE_DOWNLOADING: u32 = 2;
/// Every file downloaded (records may still wait to be pulled).
pub const FHIRBULK_STATE_DONE: u32 = 3;
/// Failed; `error` says why.
pub const FHIRBULK_STATE_FAILED: u32 = 4;
/// Cancelled.
pub const FHIRBULK_STATE_CANCELLED: u32 = 5;

/// An export. Opaque: the pointer value is an id, never dereferenced.
pub struct FhirbulkExport {
    _private: [u8; 0],
}

/// One record, borrowed: valid until the next call on the same handle.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FhirbulkRecord {
    /// The NDJSON line (a JSON object), without the newline; NOT NUL-terminated.
    pub data: *const u8,
    pub len: usize,
    /// The resource type (the manifest's, or the line's own `resourceType` when the file has
    /// none), NUL-terminated.
    pub resource_type: *const c_char,
    pub resource_type_len: usize,
    /// `FHIRBULK_KIND_*`.
    pub kind: u32,
    /// Index into `export_files_json`.
    pub file_index: u32,
    /// 1-based line number in that file.
    pub line: u64,
    /// `FHIRBULK_KIND_ATTACHMENT`: the document's bytes (NOT NUL-terminated); else NULL.
    pub content: *const u8,
    /// `FHIRBULK_KIND_ATTACHMENT`: the document's length in bytes; else 0.
    pub content_len: usize,
}

/// Records from one file, borrowed: valid until the next call on the same handle.
#[repr(C)]
pub struct FhirbulkBatch {
    pub records: *const FhirbulkRecord,
    pub count: usize,
    /// The same records as one buffer, each followed by `\n`.
    pub data: *const u8,
    pub data_len: usize,
}

/// A progress snapshot.
#[repr(C)]
pub struct FhirbulkProgress {
    /// `FHIRBULK_STATE_*`.
    pub state: u32,
    /// The error code once `state` is `FHIRBULK_STATE_FAILED`, else 0.
    pub error: FhirbulkStatus,
    /// HTTP status of the failed response, else 0.
    pub http_status: u32,
    pub files_total: u32,
    pub files_done: u32,
    /// NDJSON bytes received (after decompression).
    pub bytes_downloaded: u64,
    pub records_delivered: u64,
    /// Status requests made.
    pub polls: u32,
    /// Attempts repeated after retryable failures (429, 5xx, broken transfers, ...).
    pub retries: u32,
    /// Invalid NDJSON lines skipped and reported as error records (`on_invalid_line: skip`).
    pub invalid_lines: u64,
    /// The server's last `X-Progress` text, NUL-terminated, truncated to fit.
    pub server_progress: [c_char; 128],
    /// While the export waits more than 2 s (a `Retry-After`, a backoff, the time between
    /// status polls): when the wait ends, in milliseconds since the Unix epoch; else 0.
    pub wait_until_ms: i64,
    /// Warnings so far (`export_warnings_json`): a manifest listing a file twice, a `count`
    /// that is not a number, a `Retry-After` clamped, ...
    pub warnings: u32,
    /// What the wait is for (what the server answered), NUL-terminated, truncated; else empty.
    pub wait_reason: [c_char; 128],
    /// Documents fetched for attachments (config `attachments`), inline or saved.
    pub attachments_fetched: u64,
    /// Attachments that could not be fetched, each reported as an error record.
    pub attachment_errors: u64,
}

struct Consumer {
    export: Export,
    batch: BatchViews,
    /// The Arrow side (`export_next_arrow_batch`, `export_arrow_stream`), made at first use.
    #[cfg(feature = "arrow")]
    arrow: Option<arrow::imp::State>,
}

/// The record views of the last batch handed out.
struct BatchViews(Vec<FhirbulkRecord>);

// SAFETY: the raw pointers point into the chunk owned by the same `Consumer` (or to static
// type names); they are only written and read under the consumer's mutex, and the caller reads
// them only until its next call on the handle, which also needs that mutex.
unsafe impl Send for BatchViews {}

struct Handle {
    ctl: Controller,
    consumer: Mutex<Option<Consumer>>,
}

static REGISTRY: Lazy<Mutex<HashMap<usize, Arc<Handle>>>> =
    Lazy::new(|| Mutex::new(HashMap::new()));
/// Handle ids: never reused, so a stale pointer can never name a newer export.
static NEXT_ID: AtomicUsize = AtomicUsize::new(0x00f1_b000);

thread_local! {
    static LAST_ERROR: RefCell<Option<Error>> = const { RefCell::new(None) };
}

fn set_last_error(e: Error) {
    LAST_ERROR.with(|l| *l.borrow_mut() = Some(e));
}

fn invalid_handle() -> Error {
    Error::new(
        ErrorCode::InvalidHandle,
        "invalid handle: NULL, already freed, or not returned by export_start",
    )
}

fn invalid_argument(what: &str) -> Error {
    Error::new(
        ErrorCode::InvalidArgument,
        format!("invalid argument: {what}"),
    )
}

fn lookup(h: *const FhirbulkExport) -> Result<Arc<Handle>, Error> {
    REGISTRY
        .lock()
        .get(&(h as usize))
        .cloned()
        .ok_or_else(invalid_handle)
}

/// Run a call body: catch panics, turn errors into a status and this thread's last error.
fn boundary(f: impl FnOnce() -> Result<FhirbulkStatus, Error>) -> FhirbulkStatus {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let code = e.code as i32;
            set_last_error(e);
            code
        }
        Err(_) => {
            set_last_error(Error::new(
                ErrorCode::Internal,
                "internal error: a panic was caught",
            ));
            FHIRBULK_ERR_INTERNAL
        }
    }
}

fn timeout(ms: i32) -> Option<Duration> {
    if ms < 0 {
        None
    } else {
        Some(Duration::from_millis(ms as u64))
    }
}

fn next_status<T>(n: &Next<T>) -> FhirbulkStatus {
    match n {
        Next::Item(_) => FHIRBULK_RECORD,
        Next::End => FHIRBULK_END,
        Next::Timeout => FHIRBULK_TIMEOUT,
        Next::Cancelled => FHIRBULK_CANCELLED,
    }
}

fn with_consumer<R>(
    h: *mut FhirbulkExport,
    f: impl FnOnce(&mut Consumer) -> Result<R, Error>,
) -> Result<R, Error> {
    let handle = lookup(h)?;
    let mut guard = handle.consumer.try_lock().ok_or_else(|| {
        Error::new(
            ErrorCode::Busy,
            "busy: another thread is consuming this export",
        )
    })?;
    let consumer = guard.as_mut().ok_or_else(invalid_handle)?;
    f(consumer)
}

/// Copy `s` into `buf` like snprintf: at most `buf_len - 1` bytes (cut at a character boundary)
/// and a NUL; returns the full length of `s`.
///
/// # Safety
/// `buf` is NULL or valid for `buf_len` bytes of writes.
unsafe fn copy_out(s: &str, buf: *mut c_char, buf_len: usize) -> usize {
    if !buf.is_null() && buf_len > 0 {
        let mut n = s.len().min(buf_len - 1);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        // SAFETY: the caller guarantees `buf` holds `buf_len` bytes; we write `n + 1 <= buf_len`.
        unsafe {
            std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), n);
            *buf.add(n) = 0;
        }
    }
    s.len()
}

/// Start an export described by a JSON config (NUL-terminated UTF-8). On success writes a new
/// handle to `*out_handle` and returns `FHIRBULK_OK`; the work runs on background threads. On
/// failure (`FHIRBULK_ERR_CONFIG` naming the bad key or value, ...) `*out_handle` is untouched
/// and `export_last_error(NULL, ...)` tells why.
///
/// # Safety
/// `config_json` is NULL or a NUL-terminated string; `out_handle` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn export_start(
    config_json: *const c_char,
    out_handle: *mut *mut FhirbulkExport,
) -> FhirbulkStatus {
    boundary(|| {
        if config_json.is_null() {
            return Err(invalid_argument("config_json is NULL"));
        }
        if out_handle.is_null() {
            return Err(invalid_argument("out_handle is NULL"));
        }
        // SAFETY: non-NULL and NUL-terminated per the contract above.
        let text = unsafe { CStr::from_ptr(config_json) }
            .to_str()
            .map_err(|_| Error::config("invalid config: not UTF-8"))?;
        let config = Config::from_json(text)?;
        // SAFETY: `out_handle` is non-NULL and writable per the contract.
        unsafe { start_into(config, out_handle) }
    })
}

/// Start `config` and write the new handle to `*out_handle`.
///
/// # Safety
/// `out_handle` is non-NULL and writable.
unsafe fn start_into(
    config: Config,
    out_handle: *mut *mut FhirbulkExport,
) -> Result<FhirbulkStatus, Error> {
    {
        let export = Export::start(config)?;
        let handle = Arc::new(Handle {
            ctl: export.controller(),
            consumer: Mutex::new(Some(Consumer {
                export,
                batch: BatchViews(Vec::new()),
                #[cfg(feature = "arrow")]
                arrow: None,
            })),
        });
        let id = NEXT_ID.fetch_add(16, Ordering::Relaxed);
        REGISTRY.lock().insert(id, handle);
        // SAFETY: `out_handle` is non-NULL and writable per the caller's contract.
        unsafe { *out_handle = id as *mut FhirbulkExport };
        Ok(FHIRBULK_OK)
    }
}

/// Write a progress snapshot to `*out`. Never blocks; any thread.
///
/// # Safety
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn export_poll(
    h: *const FhirbulkExport,
    out: *mut FhirbulkProgress,
) -> FhirbulkStatus {
    boundary(|| {
        let handle = lookup(h)?;
        if out.is_null() {
            return Err(invalid_argument("out is NULL"));
        }
        let p = handle.ctl.progress();
        let mut text = [0 as c_char; 128];
        if let Some(s) = &p.server_progress {
            // SAFETY: `text` is a local array of 128 bytes.
            unsafe { copy_out(s, text.as_mut_ptr(), text.len()) };
        }
        let mut reason = [0 as c_char; 128];
        let mut wait_until_ms = 0;
        if let Some(w) = &p.wait {
            // SAFETY: `reason` is a local array of 128 bytes.
            unsafe { copy_out(&w.reason, reason.as_mut_ptr(), reason.len()) };
            wait_until_ms = w
                .until
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        }
        let snapshot = FhirbulkProgress {
            state: p.state as u32,
            error: p.error.map_or(0, |c| c as i32),
            http_status: p.http_status.map_or(0, u32::from),
            files_total: p.files_total,
            files_done: p.files_done,
            bytes_downloaded: p.bytes_downloaded,
            records_delivered: p.records_delivered,
            polls: p.polls,
            retries: p.retries,
            invalid_lines: p.invalid_lines,
            server_progress: text,
            wait_until_ms,
            warnings: p.warnings,
            wait_reason: reason,
            attachments_fetched: p.attachments_fetched,
            attachment_errors: p.attachment_errors,
        };
        // SAFETY: `out` is non-NULL and writable per the contract.
        unsafe { out.write(snapshot) };
        Ok(FHIRBULK_OK)
    })
}

/// Pull the next record. `timeout_ms`: -1 waits as long as it takes, 0 only tries. Returns
/// `FHIRBULK_RECORD` (and fills `*out`), `FHIRBULK_END`, `FHIRBULK_TIMEOUT`, `FHIRBULK_CANCELLED`
/// or the export's error. The record stays valid until the next call on this handle.
///
/// # Safety
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn export_next_record(
    h: *mut FhirbulkExport,
    timeout_ms: i32,
    out: *mut FhirbulkRecord,
) -> FhirbulkStatus {
    boundary(|| {
        if out.is_null() {
            lookup(h)?;
            return Err(invalid_argument("out is NULL"));
        }
        with_consumer(h, |c| {
            let next = c.export.next_record(timeout(timeout_ms))?;
            let status = next_status(&next);
            if let Next::Item(r) = next {
                // Record type names are slices of a `TypeName`, which keeps a NUL right after
                // the name, so this pointer is a valid C string.
                let ty = r.resource_type.as_ptr().cast();
                let rec = FhirbulkRecord {
                    data: r.data.as_ptr(),
                    len: r.data.len(),
                    resource_type: ty,
                    resource_type_len: r.resource_type.len(),
                    kind: r.kind as u32,
                    file_index: r.file_index,
                    line: r.line,
                    content: r.content.map_or(std::ptr::null(), <[u8]>::as_ptr),
                    content_len: r.content.map_or(0, <[u8]>::len),
                };
                // SAFETY: `out` is non-NULL and writable per the contract.
                unsafe { out.write(rec) };
            }
            Ok(status)
        })
    })
}

/// Pull up to `max_records` records of one file at once (the fast path for bindings). Returns
/// `FHIRBULK_RECORD` with `out->count >= 1`, or the same outcomes as `export_next_record`.
/// The batch stays valid until the next call on this handle.
///
/// # Safety
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn export_next_batch(
    h: *mut FhirbulkExport,
    max_records: usize,
    timeout_ms: i32,
    out: *mut FhirbulkBatch,
) -> FhirbulkStatus {
    boundary(|| {
        if out.is_null() {
            lookup(h)?;
            return Err(invalid_argument("out is NULL"));
        }
        if max_records == 0 {
            lookup(h)?;
            return Err(invalid_argument("max_records is 0"));
        }
        with_consumer(h, |c| {
            let Consumer {
                export,
                batch: BatchViews(batch),
                ..
            } = c;
            let next = export.next_batch(max_records, timeout(timeout_ms))?;
            let status = next_status(&next);
            if let Next::Item(b) = next {
                let (chunk, lines) = b.parts();
                batch.clear();
                let content = chunk.content.map(|(a, b)| &chunk.data[a..b]);
                batch.extend(lines.iter().map(|m| {
                    let ty = &chunk.types[m.ty as usize];
                    FhirbulkRecord {
                        content: content.map_or(std::ptr::null(), <[u8]>::as_ptr),
                        content_len: content.map_or(0, <[u8]>::len),
                        // SAFETY: `m.start <= chunk.data.len()` (indexed by `index_lines`).
                        data: unsafe { chunk.data.as_ptr().add(m.start) },
                        len: m.end - m.start,
                        resource_type: ty.as_c_ptr(),
                        resource_type_len: ty.as_str().len(),
                        kind: chunk.kind as u32,
                        file_index: chunk.file_index,
                        line: m.line,
                    }
                }));
                let data = b.data();
                let out_batch = FhirbulkBatch {
                    records: batch.as_ptr(),
                    count: batch.len(),
                    data: data.as_ptr(),
                    data_len: data.len(),
                };
                // SAFETY: `out` is non-NULL and writable per the contract.
                unsafe { out.write(out_batch) };
            }
            Ok(status)
        })
    })
}

/// Cancel the export: stop downloads, DELETE the server's job, and wake a consumer blocked in a
/// pull (it returns `FHIRBULK_CANCELLED`). Any thread; no effect on an export that ended.
#[no_mangle]
pub extern "C" fn export_cancel(h: *const FhirbulkExport) -> FhirbulkStatus {
    boundary(|| {
        lookup(h)?.ctl.cancel();
        Ok(FHIRBULK_OK)
    })
}

/// Free the handle: cancels an unfinished export, waits for a blocked consumer to return, and
/// joins the threads. NULL gives `FHIRBULK_OK`; a freed or foreign handle
/// `FHIRBULK_ERR_INVALID_HANDLE`. Order at shutdown: cancel, stop consuming, free.
#[no_mangle]
pub extern "C" fn export_free(h: *mut FhirbulkExport) -> FhirbulkStatus {
    boundary(|| {
        if h.is_null() {
            return Ok(FHIRBULK_OK);
        }
        let handle = REGISTRY
            .lock()
            .remove(&(h as usize))
            .ok_or_else(invalid_handle)?;
        if !handle.ctl.progress().state.is_terminal() {
            handle.ctl.cancel();
        }
        let consumer = handle.consumer.lock().take();
        drop(consumer);
        Ok(FHIRBULK_OK)
    })
}

fn last_error_for(h: *const FhirbulkExport) -> Option<Error> {
    if !h.is_null() {
        if let Ok(handle) = lookup(h) {
            if let Some(e) = handle.ctl.error() {
                return Some(e);
            }
        }
    }
    LAST_ERROR.with(|l| l.borrow().clone())
}

/// The last error's message, copied into `buf` with snprintf semantics (returns the full length;
/// writes at most `buf_len` bytes including the NUL; `buf` may be NULL to ask for the length).
/// With a valid handle whose export failed: that failure. Otherwise (and with `h` NULL): the
/// last error returned to this thread. Empty when there was none.
///
/// # Safety
/// `buf` is NULL or valid for `buf_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn export_last_error(
    h: *const FhirbulkExport,
    buf: *mut c_char,
    buf_len: usize,
) -> usize {
    let msg = catch_unwind(|| last_error_for(h).map(|e| e.to_string()).unwrap_or_default())
        .unwrap_or_default();
    // SAFETY: forwarded caller contract on `buf`.
    unsafe { copy_out(&msg, buf, buf_len) }
}

/// Like `export_last_error`, as JSON: `{"code":303,"name":"not_found","http_status":404,
/// "url":"...","message":"...","issues":[{"severity":"error","code":"not-found",
/// "diagnostics":"..."}]}`. Empty when there was no error.
///
/// # Safety
/// `buf` is NULL or valid for `buf_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn export_last_error_json(
    h: *const FhirbulkExport,
    buf: *mut c_char,
    buf_len: usize,
) -> usize {
    let msg = catch_unwind(|| last_error_for(h).map(|e| e.to_json()).unwrap_or_default())
        .unwrap_or_default();
    // SAFETY: forwarded caller contract on `buf`.
    unsafe { copy_out(&msg, buf, buf_len) }
}

/// The last error's status code (`FHIRBULK_ERR_*`), chosen like `export_last_error` (the
/// handle's failure, else this thread's last error); `FHIRBULK_OK` when there was none. With
/// the calls below, the error without parsing JSON: its HTTP status, URL, message and the
/// server's OperationOutcome issues.
#[no_mangle]
pub extern "C" fn export_error_code(h: *const FhirbulkExport) -> FhirbulkStatus {
    catch_unwind(|| last_error_for(h).map_or(FHIRBULK_OK, |e| e.code as i32)).unwrap_or(FHIRBULK_OK)
}

/// The HTTP status of the response that caused the last error; 0 when none did (a network
/// error, a config error, no error).
#[no_mangle]
pub extern "C" fn export_error_http_status(h: *const FhirbulkExport) -> u32 {
    catch_unwind(|| {
        last_error_for(h)
            .and_then(|e| e.http_status)
            .map_or(0, u32::from)
    })
    .unwrap_or(0)
}

/// The last error's message alone (`export_last_error` adds the URL in parentheses), snprintf
/// semantics; empty when there was none.
///
/// # Safety
/// `buf` is NULL or valid for `buf_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn export_error_message(
    h: *const FhirbulkExport,
    buf: *mut c_char,
    buf_len: usize,
) -> usize {
    let text = catch_unwind(|| last_error_for(h).map(|e| e.message).unwrap_or_default())
        .unwrap_or_default();
    // SAFETY: forwarded caller contract on `buf`.
    unsafe { copy_out(&text, buf, buf_len) }
}

/// The URL of the request that failed (without its query string), snprintf semantics; empty
/// when none.
///
/// # Safety
/// `buf` is NULL or valid for `buf_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn export_error_url(
    h: *const FhirbulkExport,
    buf: *mut c_char,
    buf_len: usize,
) -> usize {
    let text = catch_unwind(|| last_error_for(h).and_then(|e| e.url).unwrap_or_default())
        .unwrap_or_default();
    // SAFETY: forwarded caller contract on `buf`.
    unsafe { copy_out(&text, buf, buf_len) }
}

/// How many OperationOutcome issues the server sent with the last error (0 when none).
#[no_mangle]
pub extern "C" fn export_error_issue_count(h: *const FhirbulkExport) -> usize {
    catch_unwind(|| last_error_for(h).map_or(0, |e| e.issues.len())).unwrap_or(0)
}

/// `export_error_issue` field: the issue's `severity` (`fatal`, `error`, `warning`,
/// `information`).
pub const FHIRBULK_ISSUE_SEVERITY: u32 = 0;
/// `export_error_issue` field: the issue's `code` (`not-found`, `too-costly`, ...).
pub const FHIRBULK_ISSUE_CODE: u32 = 1;
/// `export_error_issue` field: the issue's `diagnostics` text (empty when absent).
pub const FHIRBULK_ISSUE_DIAGNOSTICS: u32 = 2;
/// `export_error_issue` field: the issue's `details.text` (empty when absent).
pub const FHIRBULK_ISSUE_DETAILS: u32 = 3;

/// One field (`FHIRBULK_ISSUE_*`) of issue `index` (from 0) of the last error, snprintf
/// semantics; empty when there is no such issue or field.
///
/// # Safety
/// `buf` is NULL or valid for `buf_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn export_error_issue(
    h: *const FhirbulkExport,
    index: usize,
    field: u32,
    buf: *mut c_char,
    buf_len: usize,
) -> usize {
    let text = catch_unwind(|| {
        let e = last_error_for(h)?;
        let i = e.issues.get(index)?;
        match field {
            FHIRBULK_ISSUE_SEVERITY => Some(i.severity.clone()),
            FHIRBULK_ISSUE_CODE => Some(i.code.clone()),
            FHIRBULK_ISSUE_DIAGNOSTICS => i.diagnostics.clone(),
            FHIRBULK_ISSUE_DETAILS => i.details.clone(),
            _ => None,
        }
    })
    .ok()
    .flatten()
    .unwrap_or_default();
    // SAFETY: forwarded caller contract on `buf`.
    unsafe { copy_out(&text, buf, buf_len) }
}

/// The manifest as JSON (pages and partial manifests merged; `transactionTime` is what the next
/// incremental export passes as `since`), snprintf semantics; 0 before there is one.
///
/// # Safety
/// `buf` is NULL or valid for `buf_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn export_manifest(
    h: *const FhirbulkExport,
    buf: *mut c_char,
    buf_len: usize,
) -> usize {
    let text = catch_unwind(|| {
        lookup(h)
            .ok()
            .and_then(|hd| hd.ctl.manifest_json())
            .unwrap_or_default()
    })
    .unwrap_or_default();
    // SAFETY: forwarded caller contract on `buf`.
    unsafe { copy_out(&text, buf, buf_len) }
}

/// A checkpoint as JSON, snprintf semantics: what the caller has received so far (status URL,
/// the number of files known, the ranges of complete files, the lines delivered of the files
/// in progress). Store it; pass it later as the config's `"resume"` (in this process or
/// another) to continue the export without a new kick-off and without receiving a record
/// twice. Its size is proportional to the files in progress, not to the files known: with it,
/// pass the file list (`export_files_json`, or the lines of `export_files_json_from` kept as
/// they come) as `"resume_files"`, or leave that out and the manifest is fetched again from
/// the status URL. Take it on the consuming thread between pulls to be exact: it
/// counts the records handed out up to that moment — a whole batch counts once
/// `export_next_batch` has returned it, so a caller that stops part-way through a batch must
/// checkpoint before pulling the batch, or after finishing it. 0 before the kick-off answered.
///
/// # Safety
/// `buf` is NULL or valid for `buf_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn export_checkpoint(
    h: *const FhirbulkExport,
    buf: *mut c_char,
    buf_len: usize,
) -> usize {
    let text = catch_unwind(|| {
        lookup(h)
            .ok()
            .and_then(|hd| hd.ctl.checkpoint())
            .and_then(|c| serde_json::to_string(&c).ok())
            .unwrap_or_default()
    })
    .unwrap_or_default();
    // SAFETY: forwarded caller contract on `buf`.
    unsafe { copy_out(&text, buf, buf_len) }
}

/// Like `export_checkpoint`, as if the last `unread` records of the last batch from
/// `export_next_batch` had not been handed out: for callers that pass a batch's records on one
/// by one and checkpoint part-way through it (the language bindings). Call it on the consuming
/// thread, between pulls. 0 before the kick-off has answered or on a bad handle.
///
/// # Safety
/// `buf` is NULL or valid for `buf_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn export_checkpoint_unread(
    h: *const FhirbulkExport,
    unread: usize,
    buf: *mut c_char,
    buf_len: usize,
) -> usize {
    let text = catch_unwind(|| {
        let Ok(hd) = lookup(h) else {
            return String::new();
        };
        let guard = hd.consumer.lock();
        guard
            .as_ref()
            .and_then(|c| c.export.checkpoint_unread(unread))
            .and_then(|c| serde_json::to_string(&c).ok())
            .unwrap_or_default()
    })
    .unwrap_or_default();
    // SAFETY: forwarded caller contract on `buf`.
    unsafe { copy_out(&text, buf, buf_len) }
}

/// The warnings so far as a JSON array of strings, oldest first (at most 100; `warnings` of
/// `export_poll` counts them all): what the engine noticed and worked around, such as a
/// manifest listing a file twice or a `Retry-After` that had to be clamped.
///
/// # Safety
/// `buf` is NULL or valid for `buf_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn export_warnings_json(
    h: *const FhirbulkExport,
    buf: *mut c_char,
    buf_len: usize,
) -> usize {
    let text = catch_unwind(|| match lookup(h) {
        Ok(hd) => serde_json::Value::from(hd.ctl.warnings()).to_string(),
        Err(_) => String::new(),
    })
    .unwrap_or_default();
    // SAFETY: forwarded caller contract on `buf`.
    unsafe { copy_out(&text, buf, buf_len) }
}

/// The files known so far as JSON, in `file_index` order:
/// `[{"index":0,"kind":"output","type":"Patient","url":"...","count":12}, ...]`.
///
/// # Safety
/// `buf` is NULL or valid for `buf_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn export_files_json(
    h: *const FhirbulkExport,
    buf: *mut c_char,
    buf_len: usize,
) -> usize {
    let text = catch_unwind(|| {
        let Ok(hd) = lookup(h) else {
            return String::new();
        };
        hd.ctl.files_json_from(0, false)
    })
    .unwrap_or_default();
    // SAFETY: forwarded caller contract on `buf`.
    unsafe { copy_out(&text, buf, buf_len) }
}

/// The files from index `start` on, snprintf semantics: one JSON object per line (NDJSON),
/// each as in `export_files_json` (plus `"extra"`, the manifest entry's other fields, when it
/// has some). The list only grows: a caller that has `n` files asks for `start` = `n` and
/// appends, so following a large export costs the new files only; the lines kept are the
/// `"resume_files"` of a later resume (as one string). An empty string when there are none.
///
/// # Safety
/// `buf` is NULL or valid for `buf_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn export_files_json_from(
    h: *const FhirbulkExport,
    start: usize,
    buf: *mut c_char,
    buf_len: usize,
) -> usize {
    let text = catch_unwind(|| match lookup(h) {
        Ok(hd) => hd.ctl.files_json_from(start, true),
        Err(_) => String::new(),
    })
    .unwrap_or_default();
    // SAFETY: forwarded caller contract on `buf`.
    unsafe { copy_out(&text, buf, buf_len) }
}

/// The export's next event (what it is doing: kick-off, status polls, manifest, each file
/// started/completed/resumed/retried, tokens, warnings, the end), as one JSON object,
/// NUL-terminated, in `buf`: `{"seq":1,"time":"2026-12-01T10:00:00.123Z","type":"kickoff",...}`
/// (README, "Events", lists the types and their fields). JSON rather than a struct: each type
/// has its own fields, new fields and types come without an ABI change, and events are few
/// (per file and per poll, never per record), so parsing them costs nothing that matters.
///
/// Waits up to `timeout_ms` (0: only looks; -1: until there is one). Returns
/// `FHIRBULK_RECORD` with the event in `buf` and its length (without the NUL) in `*out_len`;
/// `FHIRBULK_TIMEOUT` when none came in time; `FHIRBULK_END` once the export's last event
/// (`completed`, `failed` or `cancelled`) was taken, or when events are off
/// (`event_queue_size` 0). When `buf_len` is too small for the event, it stays queued,
/// `*out_len` is its length and the call returns `FHIRBULK_ERR_INVALID_ARGUMENT`: call again
/// with at least `*out_len + 1` bytes (events are small; 4096 bytes hold almost all).
///
/// The engine keeps the latest `event_queue_size` events (config; default 1000): a caller that
/// reads late loses the oldest, counted by `export_events_dropped` (and seen as gaps in `seq`);
/// the export never waits for its events to be read. Any thread; each event goes to one caller.
///
/// # Safety
/// `buf` is valid for `buf_len` bytes of writes; `out_len` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn export_next_event(
    h: *const FhirbulkExport,
    timeout_ms: i32,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> FhirbulkStatus {
    boundary(|| {
        let handle = lookup(h)?;
        if buf.is_null() {
            return Err(invalid_argument("buf is NULL"));
        }
        let mut need = 0usize;
        let got = handle.ctl.next_event_if(timeout(timeout_ms), &mut |e| {
            let text = e.to_json();
            need = text.len();
            if text.len() >= buf_len {
                return false;
            }
            // SAFETY: `buf` holds `buf_len` bytes (caller contract) and `text.len() + 1 <=
            // buf_len` was checked just above.
            unsafe { copy_out(&text, buf, buf_len) };
            true
        });
        let status = match got {
            Next::Item(Some(_)) => FHIRBULK_RECORD,
            Next::Item(None) => {
                if !out_len.is_null() {
                    // SAFETY: non-NULL and writable per the contract above.
                    unsafe { *out_len = need };
                }
                return Err(invalid_argument(&format!(
                    "buf_len {buf_len} is too small for the next event ({need} bytes and the NUL); it stays queued"
                )));
            }
            Next::End => FHIRBULK_END,
            Next::Timeout => FHIRBULK_TIMEOUT,
            Next::Cancelled => FHIRBULK_CANCELLED,
        };
        if !out_len.is_null() {
            // SAFETY: non-NULL and writable per the contract above.
            unsafe { *out_len = if status == FHIRBULK_RECORD { need } else { 0 } };
        }
        Ok(status)
    })
}

/// Events the engine dropped because the queue was full (nobody read them in time); 0 on a
/// bad handle.
#[no_mangle]
pub extern "C" fn export_events_dropped(h: *const FhirbulkExport) -> u64 {
    catch_unwind(|| lookup(h).map(|hd| hd.ctl.events_dropped()).unwrap_or(0)).unwrap_or(0)
}

/// The library version, e.g. "0.1.0" (static string).
#[no_mangle]
pub extern "C" fn fhirbulk_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The library version as a number, `MAJOR * 10000 + MINOR * 100 + PATCH` (0.1.0 is 100):
/// compare it with the header's `FHIRBULK_VERSION_NUM`, or use `FHIRBULK_VERSION_COMPATIBLE()`.
#[no_mangle]
pub extern "C" fn fhirbulk_version_num() -> u32 {
    let part = |s: &str| s.parse::<u32>().unwrap_or(0);
    part(env!("CARGO_PKG_VERSION_MAJOR")) * 10000
        + part(env!("CARGO_PKG_VERSION_MINOR")) * 100
        + part(env!("CARGO_PKG_VERSION_PATCH"))
}

/// The ABI version; equals `FHIRBULK_ABI_VERSION` of the header the library was built with.
#[no_mangle]
pub extern "C" fn fhirbulk_abi_version() -> u32 {
    FHIRBULK_ABI_VERSION
}

/// Set the process-wide cap on files downloading at once, over all exports (at least 1; 0 sets
/// the default, 32). Each export still downloads at most its `concurrency` files at once; the
/// download threads the exports share number at most this. Any thread, any time: files started
/// from now on follow it.
#[no_mangle]
pub extern "C" fn fhirbulk_set_max_downloads(n: u32) -> FhirbulkStatus {
    let n = if n == 0 {
        crate::engine::DEFAULT_MAX_DOWNLOADS
    } else {
        n as usize
    };
    crate::engine::set_max_downloads(n);
    FHIRBULK_OK
}

/// A short stable name for a status ("record", "not_found", ...); "unknown" for other values.
/// Static string.
#[no_mangle]
pub extern "C" fn fhirbulk_status_name(s: FhirbulkStatus) -> *const c_char {
    let name: &'static str = match s {
        FHIRBULK_OK => "ok\0",
        FHIRBULK_RECORD => "record\0",
        FHIRBULK_END => "end\0",
        FHIRBULK_TIMEOUT => "timeout\0",
        FHIRBULK_CANCELLED => "cancelled\0",
        FHIRBULK_ERR_INVALID_ARGUMENT => "invalid_argument\0",
        FHIRBULK_ERR_INVALID_HANDLE => "invalid_handle\0",
        FHIRBULK_ERR_BUSY => "busy\0",
        FHIRBULK_ERR_CONFIG => "config\0",
        FHIRBULK_ERR_INTERNAL => "internal\0",
        FHIRBULK_ERR_NETWORK => "network\0",
        FHIRBULK_ERR_TIMEOUT => "timeout_error\0",
        FHIRBULK_ERR_PROTOCOL => "protocol\0",
        FHIRBULK_ERR_AUTH => "auth\0",
        FHIRBULK_ERR_BAD_REQUEST => "bad_request\0",
        FHIRBULK_ERR_UNAUTHORIZED => "unauthorized\0",
        FHIRBULK_ERR_FORBIDDEN => "forbidden\0",
        FHIRBULK_ERR_NOT_FOUND => "not_found\0",
        FHIRBULK_ERR_NOT_ACCEPTABLE => "not_acceptable\0",
        FHIRBULK_ERR_UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type\0",
        FHIRBULK_ERR_UNPROCESSABLE => "unprocessable\0",
        FHIRBULK_ERR_THROTTLED => "throttled\0",
        FHIRBULK_ERR_SERVER => "server\0",
        FHIRBULK_ERR_HTTP => "http\0",
        _ => "unknown\0",
    };
    name.as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::State;

    #[test]
    fn constants_match_the_core() {
        for code in [
            ErrorCode::InvalidArgument,
            ErrorCode::InvalidHandle,
            ErrorCode::Busy,
            ErrorCode::Config,
            ErrorCode::Internal,
            ErrorCode::Network,
            ErrorCode::Timeout,
            ErrorCode::Protocol,
            ErrorCode::Auth,
            ErrorCode::BadRequest,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::NotAcceptable,
            ErrorCode::UnsupportedMediaType,
            ErrorCode::Unprocessable,
            ErrorCode::Throttled,
            ErrorCode::Server,
            ErrorCode::Http,
        ] {
            // SAFETY: fhirbulk_status_name returns static NUL-terminated strings.
            let name = unsafe { CStr::from_ptr(fhirbulk_status_name(code as i32)) };
            assert_eq!(name.to_str().unwrap(), code.name(), "{code:?}");
        }
        assert_eq!(FHIRBULK_ERR_HTTP, ErrorCode::Http as i32);
        assert_eq!(
            FHIRBULK_ERR_INVALID_ARGUMENT,
            ErrorCode::InvalidArgument as i32
        );
        for (c, s) in [
            (FHIRBULK_STATE_KICKING_OFF, State::KickingOff),
            (FHIRBULK_STATE_WAITING, State::Waiting),
            (FHIRBULK_STATE_DOWNLOADING, State::Downloading),
            (FHIRBULK_STATE_DONE, State::Done),
            (FHIRBULK_STATE_FAILED, State::Failed),
            (FHIRBULK_STATE_CANCELLED, State::Cancelled),
        ] {
            assert_eq!(c, s as u32);
        }
        assert_eq!(FHIRBULK_KIND_ERROR, crate::Kind::Error as u32);
        assert_eq!(FHIRBULK_KIND_DELETED, crate::Kind::Deleted as u32);
        assert_eq!(FHIRBULK_KIND_ATTACHMENT, crate::Kind::Attachment as u32);
    }
}
