//! The export engine: kick-off, status polling, manifest paging, concurrent downloads, and the
//! record stream a consumer pulls from.
//!
//! Threads: one coordinator (kick-off, polling, manifests) and `concurrency` downloaders. The
//! downloaders send [`Chunk`]s of complete lines over a bounded channel (backpressure: memory is
//! `buffer_chunks` chunks however large the export); the consumer hands out records one by one
//! or in batches and sends emptied buffers back for reuse.

use crate::auth::{Authorizer, Secret};
use crate::checkpoint::{Checkpoint, CheckpointFile, CHECKPOINT_VERSION};
use crate::config::{Config, Level, Method};
use crate::download::download;
use crate::error::{from_reqwest, stopped, Error, ErrorCode, Result};
use crate::files::{Match, Registry, Session};
use crate::http::{content_type, read_capped, HttpResponse, ERROR_BODY_LIMIT, STATUS_BODY_LIMIT};
use crate::manifest::{merge_into, Kind, Manifest, ManifestFile};
use crate::ndjson::{Chunk, LineMeta, TypeName};
use crate::remote::{FileClient, FileJob};
use crate::retry::{self, retry_after, Policy, Waiter};
use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Select, Sender};
use parking_lot::Mutex;
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// Where an export is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum State {
    KickingOff = 0,
    /// The server is preparing the files (status polls answer 202).
    Waiting = 1,
    Downloading = 2,
    Done = 3,
    Failed = 4,
    Cancelled = 5,
}

impl State {
    fn from_u32(v: u32) -> State {
        match v {
            0 => State::KickingOff,
            1 => State::Waiting,
            2 => State::Downloading,
            3 => State::Done,
            4 => State::Failed,
            _ => State::Cancelled,
        }
    }
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Done | State::Failed | State::Cancelled)
    }
}

/// A snapshot of an export's progress.
#[derive(Clone, Debug)]
pub struct Progress {
    pub state: State,
    /// The error code once `state` is `Failed`.
    pub error: Option<ErrorCode>,
    pub http_status: Option<u16>,
    /// The server's last `X-Progress` text.
    pub server_progress: Option<String>,
    pub files_total: u32,
    pub files_done: u32,
    /// Bytes of NDJSON received (after decompression).
    pub bytes_downloaded: u64,
    pub records_delivered: u64,
    /// Status requests made.
    pub polls: u32,
    /// Attempts repeated after retryable failures (429, 5xx, broken transfers, ...).
    pub retries: u32,
    /// Invalid lines skipped and reported as error records (policy `skip`).
    pub invalid_lines: u64,
    /// Warnings so far (see [`Controller::warnings`]): a duplicate manifest entry, an ignored
    /// `count`, a `Retry-After` clamped, a `transactionTime` that is not an instant, ...
    pub warnings: u32,
    /// A wait of more than a few seconds in progress: what the server answered, and until when.
    pub wait: Option<Wait>,
}

/// A long wait (for a `Retry-After`, a backoff, or between status polls).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wait {
    /// What is waited for, e.g. `export status request failed: HTTP 429 Too Many Requests`.
    pub reason: String,
    pub until: SystemTime,
}

/// Waits at least this long show in the progress.
const SHOWN_WAIT: Duration = Duration::from_secs(2);
/// Warnings kept (more are counted).
const MAX_WARNINGS: usize = 100;

/// A file listed by the manifest; `index` is what records carry as `file_index`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    pub index: u32,
    pub kind: Kind,
    pub resource_type: Option<String>,
    pub url: String,
    pub count: Option<u64>,
    /// Index within its manifest list (`output`, `error` or `deleted`), across pages.
    pub position: usize,
}

/// One record: an NDJSON line, borrowed until the next call on the export.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// The JSON text, without the newline.
    pub data: &'a [u8],
    pub kind: Kind,
    pub resource_type: &'a str,
    pub file_index: u32,
    /// 1-based line number in the file.
    pub line: u64,
}

/// Records from one file, borrowed until the next call on the export.
pub struct Batch<'a> {
    chunk: &'a Chunk,
    lines: &'a [LineMeta],
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("file_index", &self.chunk.file_index)
            .field("records", &self.lines.len())
            .finish()
    }
}

impl<'a> Batch<'a> {
    pub fn len(&self) -> usize {
        self.lines.len()
    }
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
    /// All records of the batch, each followed by `\n`.
    pub fn data(&self) -> &'a [u8] {
        match (self.lines.first(), self.lines.last()) {
            (Some(a), Some(b)) => &self.chunk.data[a.start..b.end + 1],
            _ => &[],
        }
    }
    pub fn get(&self, i: usize) -> Option<Record<'a>> {
        self.lines.get(i).map(|m| record(self.chunk, m))
    }
    pub fn iter(&self) -> impl Iterator<Item = Record<'a>> + 'a {
        let chunk = self.chunk;
        self.lines.iter().map(move |m| record(chunk, m))
    }
    pub(crate) fn parts(&self) -> (&'a Chunk, &'a [LineMeta]) {
        (self.chunk, self.lines)
    }
}

fn record<'a>(chunk: &'a Chunk, m: &LineMeta) -> Record<'a> {
    Record {
        data: &chunk.data[m.start..m.end],
        kind: chunk.kind,
        resource_type: chunk.types[m.ty as usize].as_str(),
        file_index: chunk.file_index,
        line: m.line,
    }
}

/// What a pull returned when it did not fail.
#[derive(Debug)]
pub enum Next<T> {
    Item(T),
    /// The export completed and every record was delivered.
    End,
    /// Nothing arrived within the timeout.
    Timeout,
    /// The export was cancelled.
    Cancelled,
}

struct Info {
    server_progress: Option<String>,
    polls: u32,
    status_url: Option<String>,
    manifest: Option<Value>,
    requires_access_token: bool,
    /// The final manifest arrived; `next_page` is the page still to fetch, if any.
    manifest_complete: bool,
    next_page: Option<String>,
    files: Vec<FileInfo>,
    /// Per file, what the caller has received (parallel to `files`).
    delivered: Vec<Arc<FileProgress>>,
    /// Files seen per kind, for `FileInfo::position`.
    kind_counts: [usize; 3],
    /// Every file by URL and identity.
    registry: Registry,
}

/// What the caller has received of one file.
pub(crate) struct FileProgress {
    /// Physical line number of the last line delivered.
    line: AtomicU64,
    /// Every line was delivered.
    complete: AtomicBool,
}

pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) client: Client,
    tls: Tls,
    base_origin: url::Origin,
    token_origins: Vec<url::Origin>,
    auth: Authorizer,
    state: AtomicU32,
    cancelled: AtomicBool,
    stopping: AtomicBool,
    cancel_tx: Mutex<Option<Sender<()>>>,
    stop_tx: Mutex<Option<Sender<()>>>,
    pub(crate) stop_rx: Receiver<()>,
    error: Mutex<Option<Error>>,
    info: Mutex<Info>,
    /// The file URLs of the last manifest fetched again for expired links (by file index), and
    /// when.
    refresh: Mutex<Option<(Instant, HashMap<u32, String>)>>,
    pub(crate) policy: Policy,
    warnings: Mutex<(Vec<String>, u32)>,
    wait: Mutex<Option<(u64, Wait)>>,
    wait_ids: AtomicU64,
    /// Places for chunks with a big buffer (long lines): a downloader takes one before it sends
    /// such a chunk, the consumer gives it back when done with it.
    pub(crate) big_tx: Sender<()>,
    big_rx: Receiver<()>,
    pub(crate) bytes: AtomicU64,
    records: AtomicU64,
    files_done: AtomicU32,
    /// Attempts repeated after retryable failures.
    pub(crate) retries: AtomicU32,
    /// Invalid lines skipped (policy `skip`).
    pub(crate) invalid_lines: AtomicU64,
    pub(crate) recycle_tx: Sender<(Vec<u8>, Vec<LineMeta>)>,
    pub(crate) recycle_rx: Receiver<(Vec<u8>, Vec<LineMeta>)>,
}

/// A cheap, thread-safe handle on a running export: progress, cancel, manifest.
#[derive(Clone)]
pub struct Controller(Arc<Shared>);

impl Controller {
    pub fn progress(&self) -> Progress {
        self.0.progress()
    }
    /// Cancel: stop downloads, DELETE the server job (unless `delete_on_cancel` is false) and
    /// wake a consumer blocked in a pull. No effect on an export that already ended.
    pub fn cancel(&self) {
        self.0.cancel()
    }
    /// The manifest as received (pages and partial manifests merged), once there is one.
    pub fn manifest(&self) -> Option<Value> {
        self.0.info.lock().manifest.clone()
    }
    /// The files known so far.
    pub fn files(&self) -> Vec<FileInfo> {
        self.0.info.lock().files.clone()
    }
    /// What the engine noticed and worked around (oldest first, at most 100): a manifest
    /// listing a file twice, a `count` that is not a number, a `Retry-After` clamped, ...
    pub fn warnings(&self) -> Vec<String> {
        self.0.warnings.lock().0.clone()
    }
    /// The manifest's `transactionTime` when it is a valid FHIR instant (the `_since` of the
    /// next incremental export); one that is not is reported in the warnings.
    pub fn transaction_time(&self) -> Option<String> {
        transaction_time(self.0.info.lock().manifest.as_ref())
    }
    /// The error that failed the export.
    pub fn error(&self) -> Option<Error> {
        self.0.error.lock().clone()
    }
    /// The status URL (`Content-Location` of the kick-off), once known.
    pub fn status_url(&self) -> Option<String> {
        self.0.info.lock().status_url.clone()
    }
    /// A checkpoint of what the caller has received so far: pass it as the config's `resume`
    /// (in this process or another) to continue without a new kick-off and without receiving a
    /// record twice. `None` before the kick-off has answered.
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        let info = self.0.info.lock();
        let status_url = info.status_url.clone()?;
        let files = info
            .files
            .iter()
            .zip(&info.delivered)
            .map(|(f, p)| CheckpointFile {
                url: f.url.clone(),
                kind: f.kind.name().into(),
                resource_type: f.resource_type.clone(),
                count: f.count,
                lines_delivered: p.line.load(Ordering::Acquire),
                complete: p.complete.load(Ordering::Acquire),
            })
            .collect();
        Some(Checkpoint {
            fhirbulk_checkpoint: CHECKPOINT_VERSION,
            base_url: self.0.config.base_url.clone(),
            status_url: Some(status_url),
            transaction_time: transaction_time(info.manifest.as_ref()),
            manifest: info.manifest.clone(),
            manifest_complete: info.manifest_complete,
            next_page: info.next_page.clone(),
            files,
        })
    }
}

/// The `transactionTime` of a manifest when it is a FHIR instant.
fn transaction_time(m: Option<&Value>) -> Option<String> {
    m.and_then(|m| m.get("transactionTime"))
        .and_then(Value::as_str)
        .filter(|t| crate::config::is_instant(t))
        .map(str::to_owned)
}

/// A running export. Pull records with [`Export::next_record`] or [`Export::next_batch`]
/// from one thread; use [`Export::controller`] for progress and cancel from others. Dropping an
/// unfinished export cancels it.
pub struct Export {
    sh: Arc<Shared>,
    rx: Receiver<Chunk>,
    cancel_rx: Receiver<()>,
    current: Option<Chunk>,
    pos: usize,
    /// Delivery progress of the current chunk's file.
    progress: Option<Arc<FileProgress>>,
    /// The last batch handed out: its range in the current chunk and the file's progress
    /// before it (for [`Export::checkpoint_unread`]).
    last_batch: Option<(usize, usize, u64)>,
    coordinator: Option<JoinHandle<()>>,
    done_rx: Receiver<()>,
}

/// Extra trust roots and the client certificate, read once from the config's PEM files; every
/// HTTP client of an export (the control client and each download thread's) uses them.
pub(crate) struct Tls {
    roots: Vec<reqwest::Certificate>,
    identity: Option<reqwest::Identity>,
}

impl Tls {
    fn load(config: &Config) -> Result<Tls> {
        let mut roots = Vec::new();
        if let Some(path) = &config.ca_bundle {
            let pem = std::fs::read(path)
                .map_err(|e| Error::config(format!("invalid config: ca_bundle {path:?}: {e}")))?;
            roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::config(format!(
                    "invalid config: ca_bundle {path:?} is not PEM certificates: {e}"
                ))
            })?;
        }
        let mut identity = None;
        if let Some(path) = &config.client_cert {
            let pem = std::fs::read(path)
                .map_err(|e| Error::config(format!("invalid config: client_cert {path:?}: {e}")))?;
            // The error text of a failed parse could quote the key: keep it out.
            identity = Some(reqwest::Identity::from_pem(&pem).map_err(|_| {
                Error::config(format!(
                    "invalid config: client_cert {path:?} must hold a PEM certificate chain and its PKCS#8 private key"
                ))
            })?);
        }
        Ok(Tls { roots, identity })
    }
}

fn client_failed(e: reqwest::Error) -> Error {
    Error::new(
        ErrorCode::Internal,
        format!("cannot build HTTP client: {e}"),
    )
}

/// The settings every HTTP client of an export shares, on a blocking or an async
/// `ClientBuilder` (same method names, different types).
macro_rules! configure_client {
    ($builder:expr, $config:expr, $tls:expr) => {{
        let mut b = $builder
            .connect_timeout($config.connect_timeout())
            .pool_max_idle_per_host($config.concurrency + 1)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("fhirbulk/", env!("CARGO_PKG_VERSION")));
        for c in &$tls.roots {
            b = b.add_root_certificate(c.clone());
        }
        if let Some(id) = &$tls.identity {
            b = b.identity(id.clone());
        }
        b
    }};
}

impl Export {
    /// Validate the config and start the export in the background.
    pub fn start(config: Config) -> Result<Export> {
        config.validate()?;
        let tls = Tls::load(&config)?;
        let client = configure_client!(Client::builder(), &config, &tls)
            .timeout(Duration::from_millis(config.read_timeout_ms))
            .build()
            .map_err(client_failed)?;
        let auth = Authorizer::new(
            &config.auth,
            &config.base_url,
            Duration::from_millis(config.request_timeout_ms),
        )?
        .with_policy(Policy::new(&config));
        let token_origins = config
            .token_origins
            .iter()
            .filter_map(|o| url::Url::parse(o).ok().map(|u| u.origin()))
            .collect();
        let base_origin = url::Url::parse(&config.base_url)
            .map_err(|e| Error::config(format!("invalid config: base_url: {e}")))?
            .origin();
        let (tx, rx) = bounded::<Chunk>(config.buffer_chunks);
        let (cancel_tx, cancel_rx) = bounded::<()>(0);
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let (recycle_tx, recycle_rx) = bounded(config.buffer_chunks + config.concurrency + 2);
        let (done_tx, done_rx) = bounded::<()>(1);
        let (big_tx, big_rx) = bounded::<()>(2);
        let policy = Policy::new(&config);
        let sh = Arc::new(Shared {
            config,
            client,
            tls,
            base_origin,
            token_origins,
            auth,
            state: AtomicU32::new(State::KickingOff as u32),
            cancelled: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            cancel_tx: Mutex::new(Some(cancel_tx)),
            stop_tx: Mutex::new(Some(stop_tx)),
            stop_rx,
            error: Mutex::new(None),
            info: Mutex::new(Info {
                server_progress: None,
                polls: 0,
                status_url: None,
                manifest: None,
                requires_access_token: false,
                manifest_complete: false,
                next_page: None,
                files: Vec::new(),
                delivered: Vec::new(),
                kind_counts: [0; 3],
                registry: Registry::default(),
            }),
            refresh: Mutex::new(None),
            policy,
            warnings: Mutex::new((Vec::new(), 0)),
            wait: Mutex::new(None),
            wait_ids: AtomicU64::new(0),
            big_tx,
            big_rx,
            retries: AtomicU32::new(0),
            invalid_lines: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            records: AtomicU64::new(0),
            files_done: AtomicU32::new(0),
            recycle_tx,
            recycle_rx,
        });
        let sh2 = sh.clone();
        let coordinator = std::thread::Builder::new()
            .name("fhirbulk-export".into())
            .spawn(move || {
                coordinate(&sh2, tx);
                let _ = done_tx.send(());
            })
            .map_err(|e| Error::new(ErrorCode::Internal, format!("cannot start a thread: {e}")))?;
        Ok(Export {
            sh,
            rx,
            cancel_rx,
            current: None,
            pos: 0,
            progress: None,
            last_batch: None,
            coordinator: Some(coordinator),
            done_rx,
        })
    }

    pub fn controller(&self) -> Controller {
        Controller(self.sh.clone())
    }
    pub fn progress(&self) -> Progress {
        self.sh.progress()
    }
    pub fn cancel(&self) {
        self.sh.cancel()
    }

    /// The next record. `timeout`: `None` waits as long as it takes, `Some(ZERO)` only tries.
    pub fn next_record(&mut self, timeout: Option<Duration>) -> Result<Next<Record<'_>>> {
        match self.fill(timeout)? {
            Some(n) => Ok(n.map_never()),
            None => {
                let chunk = self.current.as_ref().expect("fill leaves a chunk");
                let m = chunk.lines[self.pos];
                self.pos += 1;
                self.sh.records.fetch_add(1, Ordering::Relaxed);
                self.mark_delivered(m.line);
                let chunk = self.current.as_ref().expect("fill leaves a chunk");
                Ok(Next::Item(record(chunk, &m)))
            }
        }
    }

    /// Up to `max` records from one file (at least one when it returns `Item`).
    pub fn next_batch(&mut self, max: usize, timeout: Option<Duration>) -> Result<Next<Batch<'_>>> {
        if max == 0 {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "max_records must be above 0",
            ));
        }
        match self.fill(timeout)? {
            Some(n) => Ok(n.map_never()),
            None => {
                let chunk = self.current.as_ref().expect("fill leaves a chunk");
                let start = self.pos;
                let end = (start + max).min(chunk.lines.len());
                let last_line = chunk.lines[end - 1].line;
                let before = self
                    .progress
                    .as_ref()
                    .map_or(0, |p| p.line.load(Ordering::Acquire));
                self.last_batch = (!chunk.synthetic).then_some((start, end, before));
                self.pos = end;
                self.sh
                    .records
                    .fetch_add((end - start) as u64, Ordering::Relaxed);
                self.mark_delivered(last_line);
                let chunk = self.current.as_ref().expect("fill leaves a chunk");
                Ok(Next::Item(Batch {
                    chunk,
                    lines: &chunk.lines[start..end],
                }))
            }
        }
    }

    /// Record for checkpoints that the caller now has `line` of the current chunk's file (and
    /// the whole file when the last line of its last chunk went out).
    fn mark_delivered(&self, line: u64) {
        let (Some(chunk), Some(p)) = (&self.current, &self.progress) else {
            return;
        };
        if chunk.synthetic {
            // Error records for skipped lines follow the lines after them: no progress here.
            return;
        }
        p.line.store(line, Ordering::Release);
        if chunk.last && self.pos == chunk.lines.len() {
            p.complete.store(true, Ordering::Release);
        }
    }

    /// A checkpoint as if the last `unread` records of the last batch had not been handed out:
    /// for callers (bindings) that pass a batch's records on one by one and checkpoint part-way
    /// through it. Call it on the consuming thread, before the next pull.
    pub fn checkpoint_unread(&self, unread: usize) -> Option<Checkpoint> {
        let mut cp = self.controller().checkpoint()?;
        if unread == 0 {
            return Some(cp);
        }
        if let (Some((start, end, before)), Some(chunk)) = (self.last_batch, &self.current) {
            let handed = (end - start).saturating_sub(unread);
            let line = if handed == 0 {
                before
            } else {
                chunk.lines[start + handed - 1].line
            };
            if let Some(f) = cp.files.get_mut(chunk.file_index as usize) {
                f.lines_delivered = line;
                f.complete = false;
            }
        }
        Some(cp)
    }

    /// Make `current[pos]` a record, or say why there is none.
    fn fill(&mut self, timeout: Option<Duration>) -> Result<Option<Next<Never>>> {
        self.last_batch = None;
        if self
            .current
            .as_ref()
            .is_some_and(|c| self.pos < c.lines.len())
        {
            return Ok(None);
        }
        if let Some(c) = self.current.take() {
            // Hand the buffers back to the downloaders.
            self.sh.release(c.data, c.lines);
        }
        self.pos = 0;
        loop {
            if self.sh.cancelled.load(Ordering::Acquire) {
                return Ok(Some(Next::Cancelled));
            }
            let mut sel = Select::new();
            let i_rx = sel.recv(&self.rx);
            let i_cancel = sel.recv(&self.cancel_rx);
            let op = match timeout {
                None => sel.select(),
                Some(d) if d.is_zero() => match sel.try_select() {
                    Ok(op) => op,
                    Err(_) => return Ok(Some(Next::Timeout)),
                },
                Some(d) => match sel.select_timeout(d) {
                    Ok(op) => op,
                    Err(_) => return Ok(Some(Next::Timeout)),
                },
            };
            if op.index() == i_cancel {
                let _ = op.recv(&self.cancel_rx);
                return Ok(Some(Next::Cancelled));
            }
            debug_assert_eq!(op.index(), i_rx);
            match op.recv(&self.rx) {
                Ok(chunk) => {
                    let progress = self
                        .sh
                        .info
                        .lock()
                        .delivered
                        .get(chunk.file_index as usize)
                        .cloned();
                    if chunk.lines.is_empty() {
                        // An empty last chunk: the file ended after lines already delivered.
                        if chunk.last {
                            if let Some(p) = &progress {
                                p.complete.store(true, Ordering::Release);
                            }
                        }
                        self.sh.release(chunk.data, chunk.lines);
                        continue;
                    }
                    self.progress = progress;
                    self.current = Some(chunk);
                    return Ok(None);
                }
                Err(_) => {
                    // Every sender is gone: the coordinator has set the final state.
                    return match self.sh.state() {
                        State::Done => Ok(Some(Next::End)),
                        State::Cancelled => Ok(Some(Next::Cancelled)),
                        _ => Err(self.sh.error.lock().clone().unwrap_or_else(|| {
                            Error::new(ErrorCode::Internal, "the export stopped without a reason")
                        })),
                    };
                }
            }
        }
    }
}

/// An uninhabited type for `Next<Never>` (a `Next` without an item).
#[derive(Debug)]
pub enum Never {}

impl Next<Never> {
    fn map_never<T>(self) -> Next<T> {
        match self {
            Next::Item(n) => match n {},
            Next::End => Next::End,
            Next::Timeout => Next::Timeout,
            Next::Cancelled => Next::Cancelled,
        }
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        if !self.sh.state().is_terminal() {
            self.sh.cancel();
        }
        if let Some(h) = self.coordinator.take() {
            // Join when the coordinator ends promptly; a download stuck in a read that ignores
            // the stop signal is left to end at its read timeout rather than hang the caller.
            if self.done_rx.recv_timeout(Duration::from_secs(5)).is_ok() {
                let _ = h.join();
            }
        }
    }
}

impl Shared {
    fn state(&self) -> State {
        State::from_u32(self.state.load(Ordering::Acquire))
    }

    fn set_state(&self, s: State) {
        self.state.store(s as u32, Ordering::Release);
    }

    fn progress(&self) -> Progress {
        let info = self.info.lock();
        let err = self.error.lock();
        let mut state = self.state();
        // Report the outcome as soon as it is decided, not when the threads have wound down.
        if self.cancelled.load(Ordering::Acquire) {
            state = State::Cancelled;
        } else if err.is_some() {
            state = State::Failed;
        }
        Progress {
            state,
            error: err.as_ref().map(|e| e.code),
            http_status: err.as_ref().and_then(|e| e.http_status),
            server_progress: info.server_progress.clone(),
            files_total: info.files.len() as u32,
            files_done: self.files_done.load(Ordering::Relaxed),
            bytes_downloaded: self.bytes.load(Ordering::Relaxed),
            records_delivered: self.records.load(Ordering::Relaxed),
            polls: info.polls,
            retries: self.retries.load(Ordering::Relaxed),
            invalid_lines: self.invalid_lines.load(Ordering::Relaxed),
            warnings: self.warnings.lock().1,
            wait: self.wait.lock().as_ref().map(|(_, w)| w.clone()),
        }
    }

    /// Note a warning (kept up to MAX_WARNINGS, all counted).
    pub(crate) fn warn(&self, message: String) {
        let mut w = self.warnings.lock();
        w.1 = w.1.saturating_add(1);
        if w.0.len() < MAX_WARNINGS {
            w.0.push(crate::error::escape_controls(&message).into_owned());
        }
    }

    /// Sleep `d`, showing it in the progress when it is long; false when the export stopped.
    fn wait_shown(&self, d: Duration, reason: &str) -> bool {
        if d < SHOWN_WAIT {
            return self.sleep(d);
        }
        let id = self.wait_ids.fetch_add(1, Ordering::Relaxed);
        let w = Wait {
            reason: crate::error::escape_controls(reason).into_owned(),
            until: SystemTime::now() + d,
        };
        {
            // The wait that ends last is the one to show.
            let mut cur = self.wait.lock();
            if cur.as_ref().map_or(true, |(_, c)| c.until <= w.until) {
                *cur = Some((id, w));
            }
        }
        let awake = self.sleep(d);
        let mut cur = self.wait.lock();
        if cur.as_ref().is_some_and(|(i, _)| *i == id) {
            *cur = None;
        }
        awake
    }

    /// Done with a chunk's buffers: back to the downloaders' pool, unless they grew for a long
    /// line (then they are freed and their place among the big chunks is given back).
    pub(crate) fn release(&self, data: Vec<u8>, lines: Vec<LineMeta>) {
        if data.capacity() > self.big_chunk_bytes() {
            let _ = self.big_rx.try_recv();
            return;
        }
        self.recycle(data, lines);
    }

    /// Put buffers into the pool (dropped when it is full or they are too big to keep).
    pub(crate) fn recycle(&self, data: Vec<u8>, lines: Vec<LineMeta>) {
        if data.capacity() <= self.big_chunk_bytes() {
            let _ = self.recycle_tx.try_send((data, lines));
        }
    }

    /// A chunk buffer above this size holds a long line (see [`Shared::release`]).
    pub(crate) fn big_chunk_bytes(&self) -> usize {
        4 * self.config.chunk_bytes + 64
    }

    fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stop_tx.lock().take();
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    fn cancel(&self) {
        if self.state().is_terminal() || self.error.lock().is_some() {
            return;
        }
        self.cancelled.store(true, Ordering::Release);
        self.cancel_tx.lock().take();
        self.stop();
    }

    /// Record the first fatal error and stop everything.
    fn fail(&self, e: Error) {
        {
            let mut err = self.error.lock();
            if err.is_none() && !self.cancelled.load(Ordering::Acquire) {
                *err = Some(e);
            }
        }
        self.stop();
    }

    /// Sleep, waking early when the export stops; false when it stopped.
    fn sleep(&self, d: Duration) -> bool {
        matches!(self.stop_rx.recv_timeout(d), Err(RecvTimeoutError::Timeout))
    }

    /// May this URL receive the access token and the extra headers? The FHIR server's origin
    /// and the origins the caller listed in `token_origins`.
    pub(crate) fn trusted(&self, url: &str) -> bool {
        url::Url::parse(url).is_ok_and(|u| {
            let o = u.origin();
            o == self.base_origin || self.token_origins.contains(&o)
        })
    }

    /// Send a request: `build` makes it for a URL (method, headers, body, timeout). Adds the
    /// extra headers and, when `use_token`, the access token — only for trusted origins. A 401
    /// while a token was in use gets a new token and one retry. Redirects are followed here
    /// (at most 10), so the token and extra headers never follow a redirect to another origin
    /// (Oracle Health answers file requests with 307 to a pre-signed object-store URL).
    pub(crate) fn send(
        &self,
        what: &str,
        url: &str,
        use_token: bool,
        build: &dyn Fn(&str) -> RequestBuilder,
    ) -> Result<Response> {
        self.send_with(what, url, use_token, &mut |u, token| {
            let mut rb = build(u);
            if self.trusted(u) {
                for (k, v) in &self.config.headers {
                    rb = rb.header(k.as_str(), v.as_str());
                }
            }
            if let Some(t) = token {
                rb = rb.bearer_auth(t.expose());
            }
            rb.send().map_err(|e| from_reqwest(what, u, &e))
        })
    }

    /// The policy of [`Shared::send`] over any HTTP client: `one` sends one request to a URL
    /// (adding the extra headers for trusted origins) with the token given, if any.
    pub(crate) fn send_with<R: HttpResponse>(
        &self,
        what: &str,
        url: &str,
        use_token: bool,
        one: &mut dyn FnMut(&str, Option<&Secret>) -> Result<R>,
    ) -> Result<R> {
        let mut url = url.to_owned();
        let mut retried = false;
        let mut redirects = 0;
        loop {
            let token = if use_token && self.trusted(&url) {
                self.auth.bearer_with(&self.client, self)?
            } else {
                None
            };
            let resp = one(&url, token.as_ref())?;
            let status = resp.status_code();
            if status == 401 && !retried {
                if let Some(t) = &token {
                    if self.auth.invalidate(t) {
                        retried = true;
                        continue;
                    }
                }
            }
            if matches!(status, 301 | 302 | 303 | 307 | 308) {
                let next = resp
                    .header_map()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|loc| url::Url::parse(&url).ok()?.join(loc).ok());
                if let Some(next) = next {
                    redirects += 1;
                    if redirects > 10 {
                        return Err(Error::protocol(format!("{what}: more than 10 redirects"))
                            .with_url(&url));
                    }
                    if next.scheme() != "http" && next.scheme() != "https" {
                        return Err(Error::protocol(format!(
                            "{what}: redirect to a {:?} URL",
                            next.scheme()
                        ))
                        .with_url(&url));
                    }
                    url = next.to_string();
                    continue;
                }
            }
            return Ok(resp);
        }
    }

    /// `send` under the retry policy: transport errors and retryable statuses (see
    /// [`retry::is_retryable`]) are tried again after `Retry-After` or an exponential backoff
    /// with jitter, within `retry_max_attempts` and `retry_max_wait_ms`. Statuses `accept`
    /// takes come back as responses; any other final status is an error carrying the
    /// server's OperationOutcome.
    pub(crate) fn send_retrying(
        &self,
        what: &str,
        url: &str,
        use_token: bool,
        build: &dyn Fn(&str) -> RequestBuilder,
        accept: &dyn Fn(u16) -> bool,
    ) -> Result<Response> {
        self.send_retrying_on(what, url, use_token, build, accept, true)
    }

    /// [`Shared::send_retrying`]; with `network` false, a connection error or timeout is not
    /// retried (a request that is not idempotent may have reached the server).
    pub(crate) fn send_retrying_on(
        &self,
        what: &str,
        url: &str,
        use_token: bool,
        build: &dyn Fn(&str) -> RequestBuilder,
        accept: &dyn Fn(u16) -> bool,
        network: bool,
    ) -> Result<Response> {
        self.retrying(what, url, accept, network, &mut || {
            self.send(what, url, use_token, build)
        })
    }

    /// The retry policy of [`Shared::send_retrying_on`] around any `send`.
    pub(crate) fn retrying<R: HttpResponse>(
        &self,
        what: &str,
        url: &str,
        accept: &dyn Fn(u16) -> bool,
        network: bool,
        send: &mut dyn FnMut() -> Result<R>,
    ) -> Result<R> {
        retry::run(&self.policy, self, &mut || {
            retry::classify(what, url, send(), accept, network)
        })
    }

    /// The HTTP client of one download thread (see [`FileClient`]).
    pub(crate) fn file_client(&self) -> Result<FileClient> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::new(ErrorCode::Internal, format!("cannot start a runtime: {e}")))?;
        let client = configure_client!(reqwest::Client::builder(), &self.config, &self.tls)
            .build()
            .map_err(client_failed)?;
        Ok(FileClient { rt, client })
    }

    /// A file URL answered 404/410: fetch the manifest again from the status URL (servers hand
    /// out fresh links) and return the new URL of the same file, found by its identity (see
    /// `files`), not its place in the lists. When the job itself is gone, the error names the
    /// files not yet delivered.
    pub(crate) fn refresh_file_url(&self, index: u32, cause: Error) -> Result<String> {
        let mut cache = self.refresh.lock();
        let Some(status_url) = self.info.lock().status_url.clone() else {
            return Err(cause);
        };
        let fresh = match cache.as_ref() {
            Some((at, urls))
                if at.elapsed() < Duration::from_secs(5) && urls.contains_key(&index) =>
            {
                urls.clone()
            }
            _ => {
                let urls = self.fetch_fresh_urls(&status_url).map_err(|e| {
                    if e.code == ErrorCode::NotFound {
                        self.job_gone(&status_url, e)
                    } else {
                        e
                    }
                })?;
                *cache = Some((Instant::now(), urls.clone()));
                urls
            }
        };
        let Some(url) = fresh.get(&index) else {
            let mut e = cause;
            e.message
                .push_str(" (and the manifest fetched again no longer lists this file)");
            return Err(e);
        };
        self.info.lock().files[index as usize].url = url.clone();
        Ok(url.clone())
    }

    /// Fetch the complete manifest again (every page) and match its entries to the known files.
    fn fetch_fresh_urls(&self, status_url: &str) -> Result<HashMap<u32, String>> {
        let build = |u: &str| {
            self.client
                .get(u)
                .header(ACCEPT, "application/json")
                .timeout(Duration::from_millis(self.config.request_timeout_ms))
        };
        let resp =
            self.send_retrying("manifest request", status_url, true, &build, &|s| s == 200)?;
        let body = read_capped("manifest request", status_url, resp, STATUS_BODY_LIMIT)?;
        let first = Manifest::parse(&body, status_url)?;
        let mut session = self.info.lock().registry.session(false);
        let mut urls = HashMap::new();
        let mut pages = Pages::new(status_url);
        let mut page = first;
        loop {
            let matches = self
                .info
                .lock()
                .registry
                .resolve(&mut session, &page.files)?;
            for (f, m) in page.files.iter().zip(matches) {
                match m {
                    Match::Known(i) => {
                        urls.insert(i, f.url.clone());
                    }
                    Match::Unknown => self.warn(format!(
                        "the manifest fetched again lists a file the first did not ({}); it is ignored",
                        crate::error::redact_url(&f.url)
                    )),
                    Match::New(_) | Match::Duplicate(_) => {}
                }
            }
            let Some(next) = pages.next(&page)? else {
                break;
            };
            page = fetch_manifest_page(self, &next)?;
        }
        Ok(urls)
    }

    fn job_gone(&self, status_url: &str, e: Error) -> Error {
        let info = self.info.lock();
        let missing: Vec<String> = info
            .files
            .iter()
            .zip(&info.delivered)
            .filter(|(_, p)| !p.complete.load(Ordering::Acquire))
            .map(|(f, _)| crate::error::redact_url(&f.url))
            .collect();
        let shown = missing
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        let more = if missing.len() > 10 {
            format!(" and {} more", missing.len() - 10)
        } else {
            String::new()
        };
        let mut err = Error::new(
            ErrorCode::NotFound,
            format!(
                "the export job is gone (its status URL answers {}): {} file(s) were not delivered completely: {shown}{more}",
                e.http_status.unwrap_or(404),
                missing.len()
            ),
        )
        .with_url(status_url);
        err.http_status = e.http_status;
        err.issues = e.issues;
        err
    }
}

impl Waiter for Shared {
    fn stopping(&self) -> bool {
        Shared::stopping(self)
    }
    fn wait_retry(&self, d: Duration, reason: &str) -> bool {
        self.retries.fetch_add(1, Ordering::Relaxed);
        self.wait_shown(d, reason)
    }
    fn warn(&self, message: String) {
        Shared::warn(self, message)
    }
}

/// Following a manifest's `link` pages: a page fetched twice (a `next` pointing back) is a
/// protocol error at once, not an endless walk.
struct Pages {
    seen: HashSet<String>,
}

impl Pages {
    /// Paging from the manifest at `first` (the status URL for the complete manifest).
    fn new(first: &str) -> Pages {
        Pages {
            seen: HashSet::from([first.to_owned()]),
        }
    }

    /// The next page to fetch after `page`, if any.
    fn next(&mut self, page: &Manifest) -> Result<Option<String>> {
        let Some(next) = page.next.clone() else {
            return Ok(None);
        };
        if !self.seen.insert(next.clone()) {
            return Err(Error::protocol(format!(
                "the manifest's link \"next\" points back to a page already fetched: its pages repeat (after {} pages)",
                self.seen.len()
            ))
            .with_url(&next));
        }
        if self.seen.len() > 100_000 {
            return Err(
                Error::protocol("the manifest has more than 100000 pages; giving up")
                    .with_url(&next),
            );
        }
        Ok(Some(next))
    }
}

/// Percent-encode everything but RFC 3986 unreserved characters.
fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The kick-off URL for the configured level.
pub fn kickoff_url(c: &Config) -> String {
    let base = c.base_url.trim_end_matches('/');
    match c.level {
        Level::System => format!("{base}/$export"),
        Level::Patient => format!("{base}/Patient/$export"),
        Level::Group => format!(
            "{base}/Group/{}/$export",
            pct(c.group_id.as_deref().unwrap_or(""))
        ),
    }
}

fn patient_reference(p: &str) -> String {
    if p.contains('/') {
        p.to_owned()
    } else {
        format!("Patient/{p}")
    }
}

/// The kick-off query string (GET). Lists go comma-joined, each value percent-encoded, so inner
/// commas of a `_typeFilter` query arrive as `%2C` and only the separators are literal.
pub fn kickoff_query(c: &Config) -> String {
    let mut q: Vec<String> = Vec::new();
    let mut one = |k: &str, v: &str| q.push(format!("{k}={}", pct(v)));
    if let Some(f) = &c.output_format {
        one("_outputFormat", f);
    }
    if let Some(s) = &c.since {
        one("_since", s);
    }
    if let Some(u) = &c.until {
        one("_until", u);
    }
    if let Some(o) = &c.organize_output_by {
        one("organizeOutputBy", o);
    }
    if c.allow_partial_manifests {
        one("allowPartialManifests", "true");
    }
    for (k, list) in [
        ("_type", &c.types),
        ("_elements", &c.elements),
        ("_typeFilter", &c.type_filters),
        ("includeAssociatedData", &c.include_associated_data),
    ] {
        if !list.is_empty() {
            let joined: Vec<String> = list.iter().map(|v| pct(v)).collect();
            q.push(format!("{k}={}", joined.join(",")));
        }
    }
    q.join("&")
}

/// The kick-off `Parameters` body (POST).
pub fn kickoff_parameters(c: &Config) -> Value {
    let mut p: Vec<Value> = Vec::new();
    if let Some(f) = &c.output_format {
        p.push(json!({"name": "_outputFormat", "valueString": f}));
    }
    if let Some(s) = &c.since {
        p.push(json!({"name": "_since", "valueInstant": s}));
    }
    if let Some(u) = &c.until {
        p.push(json!({"name": "_until", "valueInstant": u}));
    }
    if !c.types.is_empty() {
        p.push(json!({"name": "_type", "valueString": c.types.join(",")}));
    }
    if !c.elements.is_empty() {
        p.push(json!({"name": "_elements", "valueString": c.elements.join(",")}));
    }
    for f in &c.type_filters {
        p.push(json!({"name": "_typeFilter", "valueString": f}));
    }
    for v in &c.include_associated_data {
        p.push(json!({"name": "includeAssociatedData", "valueCode": v}));
    }
    if let Some(o) = &c.organize_output_by {
        p.push(json!({"name": "organizeOutputBy", "valueString": o}));
    }
    if c.allow_partial_manifests {
        p.push(json!({"name": "allowPartialManifests", "valueBoolean": true}));
    }
    for pt in &c.patients {
        p.push(json!({"name": "patient", "valueReference": {"reference": patient_reference(pt)}}));
    }
    json!({"resourceType": "Parameters", "parameter": p})
}

fn kickoff(sh: &Shared) -> Result<String> {
    let c = &sh.config;
    let post = c.method == Method::Post || (c.method == Method::Auto && !c.patients.is_empty());
    let mut url = kickoff_url(c);
    let mut prefer = String::from("respond-async");
    if c.separate_export_status {
        prefer.push_str(",separate-export-status");
    }
    if c.lenient {
        prefer.push_str(", handling=lenient");
    }
    let body = post.then(|| kickoff_parameters(c).to_string());
    if !post {
        let q = kickoff_query(c);
        if !q.is_empty() {
            url = format!("{url}?{q}");
        }
    }
    let build = |u: &str| {
        let rb = match &body {
            Some(b) => sh
                .client
                .post(u)
                .header(CONTENT_TYPE, "application/fhir+json")
                .body(b.clone()),
            None => sh.client.get(u),
        };
        rb.header(ACCEPT, "application/fhir+json")
            .header("Prefer", prefer.as_str())
            .timeout(Duration::from_millis(c.request_timeout_ms))
    };
    // A 429 or 5xx means the server refused the job: asking again is safe (with Retry-After and
    // the retry budget). A broken connection is not retried: the job may have started.
    let refused = |s: u16| s == 429 || s >= 500;
    let resp = sh
        .send_retrying_on(
            "export kick-off",
            &url,
            true,
            &build,
            &|s| !refused(s),
            false,
        )
        .map_err(|mut e| {
            if e.http_status == Some(429) {
                e.message.push_str(KICKOFF_429_HINT);
            }
            e
        })?;
    let status = resp.status().as_u16();
    if status == 202 {
        let loc = resp
            .headers()
            .get("content-location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| {
                Error::protocol("export kick-off answered 202 without a Content-Location header")
                    .with_url(&url)
            })?;
        let abs = url::Url::parse(&url)
            .and_then(|u| u.join(&loc))
            .map_err(|e| {
                Error::protocol(format!(
                    "export kick-off gave an invalid Content-Location: {e}"
                ))
                .with_url(&url)
            })?;
        return Ok(abs.to_string());
    }
    if (200..300).contains(&status) {
        return Err(Error::protocol(format!(
            "export kick-off answered HTTP {status}; a bulk data server answers 202 Accepted"
        ))
        .with_url(&url));
    }
    let body = resp.error_body(ERROR_BODY_LIMIT);
    Err(Error::from_response("export kick-off", status, &url, &body))
}

const KICKOFF_429_HINT: &str = " (servers answer 429 to a kick-off when an export of this client \
     is already running: wait for it to finish or cancel it with DELETE on its status URL)";

/// Poll the status URL until the export is complete; the complete manifest's first page.
/// Partial manifests (v3) of 202 answers, and the pages they link, start downloads at once.
fn poll_status(sh: &Shared, status_url: &str, dl: &mut Downloads) -> Result<Manifest> {
    let c = &sh.config;
    let min = Duration::from_millis(c.poll_min_ms);
    let max = Duration::from_millis(c.poll_max_ms);
    let backoff_max = Duration::from_millis(c.poll_backoff_max_ms.min(c.poll_max_ms)).max(min);
    let mut backoff = min;
    // For job failures reported with X-Export-Status on a 200 (v3 separate-export-status).
    let mut budget = sh.policy.budget();
    loop {
        if sh.stopping() {
            return Err(stopped());
        }
        let build = |u: &str| {
            // Called for every attempt: count status requests as sent.
            sh.info.lock().polls += 1;
            sh.client
                .get(u)
                .header(ACCEPT, "application/json")
                .timeout(Duration::from_millis(c.request_timeout_ms))
        };
        let accept = |s: u16| s == 200 || s == 202;
        let resp = sh.send_retrying("export status request", status_url, true, &build, &accept)?;
        let headers = resp.headers().clone();
        let mut status = resp.status().as_u16();
        if let Some(s) = headers
            .get("x-export-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().get(..3))
            .and_then(|v| v.parse::<u16>().ok())
        {
            status = s;
        }
        if let Some(p) = headers.get("x-progress").and_then(|v| v.to_str().ok()) {
            let p: String = p.chars().take(500).collect();
            sh.info.lock().server_progress = Some(crate::error::escape_controls(&p).into_owned());
        }
        match status {
            200 => {
                let body =
                    read_capped("export status request", status_url, resp, STATUS_BODY_LIMIT)?;
                let ct = content_type(&headers);
                if !ct.is_empty() && !ct.contains("json") {
                    return Err(Error::protocol(format!(
                        "the export manifest came as Content-Type {:?}, not JSON",
                        crate::error::escape_controls(&ct)
                    ))
                    .with_url(status_url));
                }
                return Manifest::parse(&body, status_url);
            }
            202 => {
                let body =
                    read_capped("export status request", status_url, resp, STATUS_BODY_LIMIT)?;
                // v3: a 202 may carry a partial manifest of the files ready so far, with pages.
                if body.iter().any(|b| !b.is_ascii_whitespace()) {
                    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                        if v.get("output").is_some() {
                            let m = Manifest::from_value(v, status_url)?;
                            let mut session = sh.info.lock().registry.session(true);
                            dl.fetch_pages(sh, &mut session, m, status_url, false)?;
                        }
                    }
                }
                sh.set_state(State::Waiting);
                let ra = retry_after(&headers);
                let d = match &ra {
                    Some(r) => {
                        let d = r.wait.clamp(min, max);
                        if let Some(n) = &r.note {
                            sh.warn(format!("export status request: {n}"));
                        }
                        if r.wait > max {
                            sh.warn(format!(
                                "export status request: the server asked to wait {} s before the next poll (Retry-After {}); waiting {} s (poll_max_ms)",
                                r.wait.as_secs(),
                                r.raw,
                                d.as_secs()
                            ));
                        }
                        d
                    }
                    None => {
                        let d = backoff;
                        backoff = (backoff * 2).min(backoff_max);
                        d
                    }
                };
                let progress = sh.info.lock().server_progress.clone();
                let reason = match progress {
                    Some(p) => format!("the server is preparing the export ({p})"),
                    None => "the server is preparing the export".to_owned(),
                };
                if !sh.wait_shown(d, &reason) {
                    return Err(stopped());
                }
            }
            _ => {
                let after = retry_after(&headers);
                let body = resp.error_body(ERROR_BODY_LIMIT);
                let e = Error::from_response("export status request", status, status_url, &body);
                if !retry::is_retryable(status, &e.issues) {
                    return Err(e);
                }
                budget.wait(sh, e, after.as_ref())?;
            }
        }
    }
}

fn fetch_manifest_page(sh: &Shared, url: &str) -> Result<Manifest> {
    let build = |u: &str| {
        sh.client
            .get(u)
            .header(ACCEPT, "application/json")
            .timeout(Duration::from_millis(sh.config.request_timeout_ms))
    };
    let resp = sh.send_retrying("manifest page request", url, true, &build, &|s| s == 200)?;
    let body = read_capped("manifest page request", url, resp, STATUS_BODY_LIMIT)?;
    Manifest::parse(&body, url)
}

/// The download side: a job queue and the worker threads, started with the export.
struct Downloads {
    jobs_tx: Option<Sender<FileJob>>,
    jobs_rx: Receiver<FileJob>,
    workers: Vec<JoinHandle<()>>,
    tx: Sender<Chunk>,
    sh: Arc<Shared>,
}

impl Downloads {
    /// A manifest's first page and the pages it links (one fetch of the manifest), each page's
    /// new files queued as it comes. `complete`: the complete manifest (checkpoints record
    /// the page still to fetch).
    fn fetch_pages(
        &mut self,
        sh: &Shared,
        session: &mut Session,
        first: Manifest,
        first_url: &str,
        complete: bool,
    ) -> Result<()> {
        let mut pages = Pages::new(first_url);
        let mut page = first;
        let mut url = first_url.to_owned();
        loop {
            self.add(sh, session, &page, &url)?;
            let next = pages.next(&page)?;
            if complete {
                let mut info = sh.info.lock();
                info.manifest_complete = true;
                info.next_page = next.clone();
            }
            let Some(next) = next else {
                return Ok(());
            };
            if sh.stopping() {
                return Err(stopped());
            }
            page = match fetch_manifest_page(sh, &next) {
                Ok(p) => p,
                // A page of a partial manifest that cannot be had now: its files come with a
                // later poll or the complete manifest.
                Err(e) if !complete && !sh.stopping() => {
                    sh.warn(format!(
                        "a page of a partial manifest could not be fetched ({e}); its files come with the complete manifest"
                    ));
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            url = next;
        }
    }

    /// Queue the files of a manifest page (from `url`) that are new; files known by identity
    /// are not fetched again, and an entry listed twice is fetched once.
    fn add(&mut self, sh: &Shared, session: &mut Session, m: &Manifest, url: &str) -> Result<()> {
        for n in &m.notes {
            sh.warn(format!("manifest {}: {n}", crate::error::redact_url(url)));
        }
        let matches = {
            let mut info = sh.info.lock();
            info.registry.resolve(session, &m.files)?
        };
        if !m.files.is_empty() && matches.iter().all(|x| matches!(x, Match::Duplicate(_))) {
            return Err(Error::protocol(
                "the manifest page lists only files already listed in this manifest: its pages repeat",
            )
            .with_url(url));
        }
        let mut new = Vec::new();
        let mut is_new = vec![false; m.files.len()];
        for (i, (f, x)) in m.files.iter().zip(&matches).enumerate() {
            match x {
                Match::New(idx) => {
                    is_new[i] = true;
                    new.push((*idx, f.clone(), 0, false));
                }
                Match::Duplicate(_) => sh.warn(format!(
                    "the manifest lists the {} file {} more than once; it is downloaded once",
                    f.kind.name(),
                    crate::error::redact_url(&f.url)
                )),
                Match::Known(_) | Match::Unknown => {}
            }
        }
        self.register(sh, new, m.requires_access_token)?;
        let mut info = sh.info.lock();
        merge_into(&mut info.manifest, m, &is_new);
        Ok(())
    }

    /// Continue from a checkpoint: its files keep their indexes; complete ones are not fetched
    /// again, the others skip the lines the caller already has.
    fn restore(&mut self, sh: &Shared, cp: &Checkpoint) -> Result<()> {
        let requires_token = cp
            .manifest
            .as_ref()
            .and_then(|m| m.get("requiresAccessToken"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let files: Vec<ManifestFile> = cp
            .files
            .iter()
            .map(|f| ManifestFile {
                kind: f.kind(),
                resource_type: f.resource_type.clone(),
                url: f.url.clone(),
                count: f.count,
                continues_in_file: None,
            })
            .collect();
        sh.info.lock().registry.restore(&files);
        let new = files
            .into_iter()
            .zip(&cp.files)
            .enumerate()
            .map(|(i, (m, f))| (i as u32, m, f.lines_delivered, f.complete))
            .collect();
        self.register(sh, new, requires_token)?;
        sh.info.lock().manifest = cp.manifest.clone();
        Ok(())
    }

    /// Add new files (index, entry, lines already delivered, complete) and queue those with
    /// lines left.
    fn register(
        &mut self,
        sh: &Shared,
        files: Vec<(u32, ManifestFile, u64, bool)>,
        requires_token: bool,
    ) -> Result<()> {
        let mut jobs = Vec::new();
        {
            let mut info = sh.info.lock();
            info.requires_access_token |= requires_token;
            for (index, f, skip_lines, complete) in files {
                if requires_token && sh.auth.enabled() && !sh.trusted(&f.url) {
                    let origin = url::Url::parse(&f.url)
                        .map(|u| u.origin().ascii_serialization())
                        .unwrap_or_default();
                    return Err(Error::new(
                        ErrorCode::Auth,
                        format!(
                            "the manifest requires the access token for a file on {origin}, \
                             which is not the FHIR server's origin; the token is not sent there \
                             (list the origin in token_origins if it is trusted)"
                        ),
                    )
                    .with_url(&f.url));
                }
                debug_assert_eq!(index as usize, info.files.len(), "registry and files agree");
                let position = info.kind_counts[f.kind as usize];
                info.kind_counts[f.kind as usize] += 1;
                info.files.push(FileInfo {
                    index,
                    kind: f.kind,
                    resource_type: f.resource_type.clone(),
                    url: f.url.clone(),
                    count: f.count,
                    position,
                });
                info.delivered.push(Arc::new(FileProgress {
                    line: AtomicU64::new(skip_lines),
                    complete: AtomicBool::new(complete),
                }));
                if complete {
                    sh.files_done.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                jobs.push(FileJob {
                    index,
                    kind: f.kind,
                    url: f.url.clone(),
                    resource_type: f.resource_type.as_deref().map(TypeName::new),
                    send_token: requires_token,
                    skip_lines,
                });
            }
        }
        if jobs.is_empty() {
            return Ok(());
        }
        self.start_workers()?;
        if let Some(q) = &self.jobs_tx {
            for j in jobs {
                let _ = q.send(j);
            }
        }
        Ok(())
    }

    /// Start the download threads (once). Each sets up its HTTP client before it waits for
    /// files, so starting them early keeps that off the path from manifest to first record.
    fn start_workers(&mut self) -> Result<()> {
        if !self.workers.is_empty() {
            return Ok(());
        }
        for i in 0..self.sh.config.concurrency {
            let sh = self.sh.clone();
            let jobs = self.jobs_rx.clone();
            let tx = self.tx.clone();
            let h = std::thread::Builder::new()
                .name(format!("fhirbulk-dl-{i}"))
                .spawn(move || worker(&sh, &jobs, &tx))
                .map_err(|e| {
                    Error::new(ErrorCode::Internal, format!("cannot start a thread: {e}"))
                })?;
            self.workers.push(h);
        }
        Ok(())
    }

    fn finish(&mut self) {
        self.jobs_tx.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn coordinate(sh: &Arc<Shared>, tx: Sender<Chunk>) {
    let (jobs_tx, jobs_rx) = unbounded();
    let mut dl = Downloads {
        jobs_tx: Some(jobs_tx),
        jobs_rx,
        workers: Vec::new(),
        tx: tx.clone(),
        sh: sh.clone(),
    };
    let result = catch_unwind(AssertUnwindSafe(|| {
        dl.start_workers()?;
        run(sh, &mut dl)
    }))
    .unwrap_or_else(|_| {
        Err(Error::new(
            ErrorCode::Internal,
            "internal error: a panic in the export thread",
        ))
    });
    if result.is_err() {
        sh.stop();
    }
    dl.finish();
    if sh.cancelled.load(Ordering::Acquire) {
        if sh.config.delete_on_cancel {
            delete_job(sh);
        }
        sh.set_state(State::Cancelled);
    } else if sh.error.lock().is_some() {
        sh.set_state(State::Failed);
    } else {
        match result {
            Ok(()) => {
                if sh.config.delete_on_complete {
                    delete_job(sh);
                }
                sh.set_state(State::Done);
            }
            Err(e) => {
                *sh.error.lock() = Some(e);
                sh.set_state(State::Failed);
            }
        }
    }
    // Only now may the consumer see the channel close.
    drop(dl);
    drop(tx);
}

fn run(sh: &Shared, dl: &mut Downloads) -> Result<()> {
    let resume = match &sh.config.resume {
        Some(v) => Some(Checkpoint::from_value(v)?),
        None => None,
    };
    if let Some(cp) = &resume {
        if cp.base_url.trim_end_matches('/') != sh.config.base_url.trim_end_matches('/') {
            return Err(Error::config(format!(
                "invalid config: resume is a checkpoint of an export from {}, not from base_url",
                crate::error::redact_url(&cp.base_url)
            )));
        }
    }
    let status_url = match resume.as_ref().and_then(|c| c.status_url.clone()) {
        Some(u) => u,
        None => kickoff(sh)?,
    };
    sh.info.lock().status_url = Some(status_url.clone());
    if sh.stopping() {
        return Err(stopped());
    }
    let mut resumed_pages = None;
    if let Some(cp) = &resume {
        dl.restore(sh, cp)?;
        if cp.manifest_complete {
            resumed_pages = Some(cp.next_page.clone());
        }
    }
    match resumed_pages {
        None => {
            sh.set_state(State::Waiting);
            let manifest = poll_status(sh, &status_url, dl)?;
            sh.set_state(State::Downloading);
            let mut session = sh.info.lock().registry.session(true);
            dl.fetch_pages(sh, &mut session, manifest, &status_url, true)?;
        }
        Some(next) => {
            sh.set_state(State::Downloading);
            let mut session = sh.info.lock().registry.session(true);
            {
                let mut info = sh.info.lock();
                info.manifest_complete = true;
                info.next_page = next.clone();
            }
            if let Some(url) = next {
                let page = fetch_manifest_page(sh, &url)?;
                dl.fetch_pages(sh, &mut session, page, &url, true)?;
            }
        }
    }
    dl.finish();
    if let Some(e) = sh.error.lock().clone() {
        return Err(e);
    }
    if sh.stopping() {
        return Err(stopped());
    }
    Ok(())
}

fn delete_job(sh: &Shared) {
    let Some(url) = sh.info.lock().status_url.clone() else {
        return;
    };
    let build = |u: &str| {
        sh.client.delete(u).timeout(Duration::from_millis(
            sh.config.request_timeout_ms.min(10_000),
        ))
    };
    let _ = sh.send("export DELETE", &url, true, &build);
}

fn worker(sh: &Arc<Shared>, jobs: &Receiver<FileJob>, tx: &Sender<Chunk>) {
    let r = catch_unwind(AssertUnwindSafe(|| {
        let fc = match sh.file_client() {
            Ok(c) => c,
            Err(e) => return sh.fail(e),
        };
        while let Ok(job) = jobs.recv() {
            if sh.stopping() {
                return;
            }
            match download(sh, &fc, &job, tx) {
                Ok(()) => {
                    sh.files_done.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    if !sh.stopping() {
                        sh.fail(e);
                    }
                    return;
                }
            }
        }
    }));
    if r.is_err() {
        sh.fail(Error::new(
            ErrorCode::Internal,
            "internal error: a panic in a download thread",
        ));
    }
}
