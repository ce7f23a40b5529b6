//! An export as its caller sees it: [`Export::start`] wires the parts together (the HTTP side,
//! the monitor, the buffers, the coordinator and its download threads, the record stream),
//! [`Export`] hands out records, and [`Controller`] gives progress, cancel, manifest and
//! checkpoints to other threads.
//!
//! Threads: none of its own. Its control steps (kick-off, polling, manifests) and downloads run
//! on the threads the process's exports share (`engine`), at most `concurrency` of its files at
//! once. Downloads send chunks of complete lines over a bounded channel (backpressure: memory
//! is `buffer_chunks` chunks however large the export); the consumer hands out records one by
//! one or in batches and sends emptied buffers back for reuse.

use crate::auth::Authorizer;
use crate::buffers::Buffers;
use crate::checkpoint::{Checkpoint, InProgress, CHECKPOINT_VERSION};
use crate::config::Config;
use crate::coordinator::{self, Job};
use crate::error::{Error, ErrorCode, Result};
use crate::events::{Event, Pulled};
use crate::files::FileInfo;
use crate::http::retry::Policy;
use crate::http::Http;
use crate::monitor::{Monitor, State, Wait};
use crate::ndjson::Chunk;
use crate::stream::{Batch, Next, Record, Stream};
use crossbeam_channel::{bounded, Receiver};
use serde_json::{Map, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

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
    /// Documents fetched for attachments (config `attachments`), inline or saved.
    pub attachments_fetched: u64,
    /// Attachments that could not be fetched, each reported as an error record.
    pub attachment_errors: u64,
    /// Warnings so far (see [`Controller::warnings`]): a duplicate manifest entry, an ignored
    /// `count`, a `Retry-After` clamped, a `transactionTime` that is not an instant, ...
    pub warnings: u32,
    /// A wait of more than a few seconds in progress: what the server answered, and until when.
    pub wait: Option<Wait>,
}

/// A cheap, thread-safe handle on a running export: progress, cancel, manifest.
#[derive(Clone)]
pub struct Controller(Arc<Job>);

impl Controller {
    pub fn progress(&self) -> Progress {
        let job = &self.0;
        let m = &job.monitor;
        let files_total = job.files.lock().len() as u32;
        let err = m.error();
        Progress {
            state: m.reported_state(),
            error: err.as_ref().map(|e| e.code),
            http_status: err.as_ref().and_then(|e| e.http_status),
            server_progress: m.server_progress.lock().clone(),
            files_total,
            files_done: m.files_done.load(Ordering::Relaxed),
            bytes_downloaded: m.bytes.load(Ordering::Relaxed),
            records_delivered: m.records.load(Ordering::Relaxed),
            polls: m.polls.load(Ordering::Relaxed),
            retries: m.retries.load(Ordering::Relaxed),
            invalid_lines: m.invalid_lines.load(Ordering::Relaxed),
            attachments_fetched: m.attachments_fetched.load(Ordering::Relaxed),
            attachment_errors: m.attachment_errors.load(Ordering::Relaxed),
            warnings: m.warning_count(),
            wait: m.wait(),
        }
    }
    /// Cancel: stop downloads, DELETE the server job (unless `delete_on_cancel` is false) and
    /// wake a consumer blocked in a pull. No effect on an export that already ended.
    pub fn cancel(&self) {
        self.0.monitor.cancel()
    }
    /// The manifest as received (pages and partial manifests merged), once there is one. It
    /// is built for the call (the engine keeps its files as a table, not as a JSON tree): with
    /// many files prefer [`Controller::manifest_json`].
    pub fn manifest(&self) -> Option<Value> {
        self.manifest_json()
            .and_then(|t| serde_json::from_str(&t).ok())
    }
    /// The manifest as JSON text (what [`Controller::manifest`] gives, written straight from
    /// the files table).
    pub fn manifest_json(&self) -> Option<String> {
        let info = self.0.info.lock();
        let top = info.manifest.as_ref()?;
        Some(self.0.files.lock().manifest_json(top))
    }
    /// Write the manifest ([`Controller::manifest_json`]) to `w`; false before there is one.
    /// The export's files table is locked meanwhile: write to a buffer or a local file.
    pub fn write_manifest(&self, w: &mut dyn std::io::Write) -> std::io::Result<bool> {
        let info = self.0.info.lock();
        let Some(top) = info.manifest.as_ref() else {
            return Ok(false);
        };
        self.0.files.lock().write_manifest(top, w)?;
        Ok(true)
    }
    /// How many files the manifest lists so far per kind (output, error, deleted), once there
    /// is a manifest.
    pub fn manifest_file_counts(&self) -> Option<[usize; 3]> {
        let info = self.0.info.lock();
        info.manifest.as_ref()?;
        Some(self.0.files.lock().kind_counts())
    }
    /// The files known so far.
    pub fn files(&self) -> Vec<FileInfo> {
        self.0.files.lock().list_from(0)
    }
    /// File `index`, if known (its URL is the one in use: expired links are replaced).
    pub fn file(&self, index: u32) -> Option<FileInfo> {
        self.0.files.lock().info(index)
    }
    /// The files known so far from index `start` on (`files_from(n)` after `n` files seen: only
    /// the new ones, so a caller that follows a large export does not copy every file each time).
    pub fn files_from(&self, start: usize) -> Vec<FileInfo> {
        self.0.files.lock().list_from(start)
    }
    /// The file list from index `start` on as JSON: an array (`ndjson` false) or one object per
    /// line, each `{"index", "kind", "type", "url", "count"}` (and `"extra"`, the manifest
    /// entry's other fields, when it has some). The list only grows, so a caller keeps it by
    /// appending `files_json_from(n, true)` after `n` files; at resume it is the config's
    /// `resume_files` for a checkpoint that counts `files_known` files.
    pub fn files_json_from(&self, start: usize, ndjson: bool) -> String {
        self.0
            .files
            .lock()
            .files_json_from(start, usize::MAX, ndjson)
    }
    /// [`Controller::files_from`] for the indexes `start..end` only (to follow a large export
    /// in pieces).
    pub fn files_between(&self, start: usize, end: usize) -> Vec<FileInfo> {
        self.0.files.lock().list_between(start, end)
    }
    /// [`Controller::files_json_from`] for the indexes `start..end` only.
    pub fn files_json_between(&self, start: usize, end: usize, ndjson: bool) -> String {
        self.0.files.lock().files_json_from(start, end, ndjson)
    }
    /// The indexes of the files whose every record the caller has received, in the order they
    /// completed, from the `start`-th on (files complete in an earlier run come first).
    pub fn completed_files_from(&self, start: usize) -> Vec<u32> {
        self.0.files.lock().completed_from(start).to_vec()
    }
    /// What the engine noticed and worked around (oldest first, at most 100): a manifest
    /// listing a file twice, a `count` that is not a number, a `Retry-After` clamped, ...
    pub fn warnings(&self) -> Vec<String> {
        self.0.monitor.warnings().0
    }
    /// The manifest's `transactionTime` when it is a valid FHIR instant (the `_since` of the
    /// next incremental export); one that is not is reported in the warnings.
    pub fn transaction_time(&self) -> Option<String> {
        transaction_time(self.0.info.lock().manifest.as_ref())
    }
    /// The error that failed the export.
    pub fn error(&self) -> Option<Error> {
        self.0.monitor.error()
    }
    /// The next event of the export (see [`crate::events`]), waiting up to `timeout` (`None`:
    /// until there is one). [`Next::End`] once the export's last event (`completed`, `failed`
    /// or `cancelled`) was taken, or when events are off (`event_queue_size` 0). Any thread;
    /// each event goes to one caller.
    pub fn next_event(&self, timeout: Option<Duration>) -> Next<Event> {
        match self.0.monitor.events.next(timeout) {
            Pulled::Item(e) => Next::Item(e),
            Pulled::End => Next::End,
            Pulled::Timeout => Next::Timeout,
        }
    }
    /// [`Controller::next_event`], taking the event only when `take` accepts it (else it stays
    /// first): for the C ABI, whose caller's buffer may be too small for it.
    #[doc(hidden)]
    pub fn next_event_if(
        &self,
        timeout: Option<Duration>,
        take: &mut dyn FnMut(&Event) -> bool,
    ) -> Next<Option<Event>> {
        match self.0.monitor.events.next_if(timeout, take) {
            Pulled::Item(e) => Next::Item(e),
            Pulled::End => Next::End,
            Pulled::Timeout => Next::Timeout,
        }
    }
    /// Events dropped because the queue was full (nobody took them in time).
    pub fn events_dropped(&self) -> u64 {
        self.0.monitor.events.dropped()
    }
    /// The status URL (`Content-Location` of the kick-off), once known.
    pub fn status_url(&self) -> Option<String> {
        self.0.info.lock().status_url.clone()
    }
    /// A checkpoint of what the caller has received so far: pass it as the config's `resume`
    /// (in this process or another) to continue without a new kick-off and without receiving a
    /// record twice. `None` before the kick-off has answered.
    ///
    /// Its size is proportional to the files in progress (and the ranges of complete files),
    /// not to the files known: it counts the files (`files_known`) rather than listing them.
    /// At resume, give the file list ([`Controller::files_json_from`]) as `resume_files`, or
    /// let the engine fetch the manifest again from the status URL.
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        let info = self.0.info.lock();
        let status_url = info.status_url.clone()?;
        let files = self.0.files.lock().checkpoint();
        Some(Checkpoint {
            fhirbulk_checkpoint: CHECKPOINT_VERSION,
            base_url: self.0.config.base_url.clone(),
            status_url: Some(status_url),
            transaction_time: transaction_time(info.manifest.as_ref()),
            manifest: info.manifest.clone().map(Value::Object),
            manifest_complete: info.manifest_complete,
            next_page: info.next_page.clone(),
            files: Vec::new(),
            files_known: Some(files.known),
            files_digest: Some(files.digest.hex()),
            complete: files.complete,
            in_progress: files
                .delivered
                .into_iter()
                .map(|(index, lines_delivered, attachments)| InProgress {
                    index,
                    lines_delivered,
                    attachments,
                })
                .collect(),
        })
    }
}

/// The `transactionTime` of a manifest when it is a FHIR instant.
fn transaction_time(m: Option<&Map<String, Value>>) -> Option<String> {
    m.and_then(|m| m.get("transactionTime"))
        .and_then(Value::as_str)
        .filter(|t| crate::instant::is_instant(t))
        .map(str::to_owned)
}

/// A running export. Pull records with [`Export::next_record`] or [`Export::next_batch`]
/// from one thread; use [`Export::controller`] for progress and cancel from others. Dropping an
/// unfinished export cancels it.
pub struct Export {
    job: Arc<Job>,
    stream: Stream,
    done_rx: Receiver<()>,
}

impl Export {
    /// Validate the config and start the export in the background.
    pub fn start(config: Config) -> Result<Export> {
        config.validate()?;
        let config = Arc::new(config);
        let (monitor, cancel_rx) = Monitor::new(config.event_queue_size);
        let monitor = Arc::new(monitor);
        let mut auth = Authorizer::new(
            &config.auth,
            &config.base_url,
            Duration::from_millis(config.request_timeout_ms),
        )?
        .with_policy(Policy::new(&config))
        .allow_insecure_http(config.allow_insecure_http);
        for w in auth.take_warnings() {
            monitor.warn(w);
        }
        let http = Http::new(config.clone(), Box::new(auth), monitor.clone())?;
        let buffers = Arc::new(Buffers::new(
            config.chunk_bytes,
            config.buffer_chunks + config.concurrency + 2,
        ));
        let (tx, rx) = bounded::<Chunk>(config.buffer_chunks);
        let job = Arc::new(Job::new(config, http, monitor.clone(), buffers.clone(), tx));
        let stream = Stream::new(rx, cancel_rx, monitor, buffers, job.files.clone());
        let done_rx = coordinator::start(&job);
        Ok(Export {
            job,
            stream,
            done_rx,
        })
    }

    pub fn controller(&self) -> Controller {
        Controller(self.job.clone())
    }
    pub fn progress(&self) -> Progress {
        self.controller().progress()
    }
    pub fn cancel(&self) {
        self.job.monitor.cancel()
    }

    /// The next record. `timeout`: `None` waits as long as it takes, `Some(ZERO)` only tries.
    pub fn next_record(&mut self, timeout: Option<Duration>) -> Result<Next<Record<'_>>> {
        self.stream.next_record(timeout)
    }

    /// Up to `max` records from one file (at least one when it returns `Item`).
    pub fn next_batch(&mut self, max: usize, timeout: Option<Duration>) -> Result<Next<Batch<'_>>> {
        self.stream.next_batch(max, timeout)
    }

    /// A checkpoint as if the last `unread` records of the last batch had not been handed out:
    /// for callers (bindings) that pass a batch's records on one by one and checkpoint part-way
    /// through it. Call it on the consuming thread, before the next pull.
    pub fn checkpoint_unread(&self, unread: usize) -> Option<Checkpoint> {
        let mut cp = self.controller().checkpoint()?;
        if unread == 0 {
            return Some(cp);
        }
        if let Some((index, at)) = self.stream.unread(unread) {
            cp.set_file_progress(index, at.line);
            cp.set_file_attachments(index, at.attachments);
        }
        Some(cp)
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        if !self.job.monitor.state().is_terminal() {
            self.job.monitor.cancel();
        }
        // Wait for the end (the server's job deleted after a cancel) when it comes promptly; a
        // download stuck in a read that ignores the stop signal is left to end at its read
        // timeout rather than hang the caller.
        let _ = self.done_rx.recv_timeout(Duration::from_secs(5));
    }
}
