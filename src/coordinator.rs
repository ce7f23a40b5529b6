//! The coordinator of one export: kick-off (or resume from a checkpoint), status polling,
//! manifest pages, and the download threads its files are queued to. [`Job`] is what these
//! threads share; [`spawn`] starts the coordinator.

use crate::buffers::Buffers;
use crate::checkpoint::{parse_file_list, Checkpoint};
use crate::config::Config;
use crate::download::{download, Context};
use crate::error::{redact_url, stopped, Error, ErrorCode, Result};
use crate::files::{Files, Match, Session};
use crate::http::Http;
use crate::kickoff::kickoff;
use crate::manifest::{merge_top, Manifest, ManifestFile};
use crate::monitor::{Monitor, State};
use crate::ndjson::{Chunk, TypeName};
use crate::remote::{FileJob, FreshUrls};
use crate::status::{self, fetch_manifest_page, poll_status, Pages};
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use parking_lot::Mutex;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the threads of one export share.
pub(crate) struct Job {
    pub(crate) config: Arc<Config>,
    pub(crate) http: Http,
    pub(crate) monitor: Arc<Monitor>,
    pub(crate) buffers: Arc<Buffers>,
    /// The files (lock `info` first when both are needed).
    pub(crate) files: Arc<Mutex<Files>>,
    pub(crate) info: Mutex<Info>,
    /// The file URLs of the last manifest fetched again for expired links (by file index), and
    /// when.
    refresh: Mutex<Option<(Instant, HashMap<u32, String>)>>,
}

/// What the export knows of the server's job.
#[derive(Default)]
pub(crate) struct Info {
    pub(crate) status_url: Option<String>,
    /// The manifest's top-level fields as received (pages and partial manifests merged, the
    /// latest value winning); its entries are the files table's (see `Files::manifest_json`).
    pub(crate) manifest: Option<Map<String, Value>>,
    pub(crate) requires_access_token: bool,
    /// The final manifest arrived; `next_page` is the page still to fetch, if any.
    pub(crate) manifest_complete: bool,
    pub(crate) next_page: Option<String>,
}

impl Job {
    pub(crate) fn new(
        config: Arc<Config>,
        http: Http,
        monitor: Arc<Monitor>,
        buffers: Arc<Buffers>,
    ) -> Job {
        Job {
            config,
            http,
            monitor,
            buffers,
            files: Arc::default(),
            info: Mutex::default(),
            refresh: Mutex::new(None),
        }
    }

    /// The error when the status URL is gone: it names the files not delivered completely.
    fn job_gone(&self, status_url: &str, e: Error) -> Error {
        let missing = self.files.lock().undelivered();
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

impl FreshUrls for Job {
    /// A file URL answered 404/410: fetch the manifest again from the status URL (servers hand
    /// out fresh links) and return the new URL of the same file, found by its identity (see
    /// `files`), not its place in the lists. When the job itself is gone, the error names the
    /// files not yet delivered.
    fn fresh_url(&self, index: u32, cause: Error) -> Result<String> {
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
                let urls =
                    status::urls_again(&self.http, &self.files, &status_url).map_err(|e| {
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
        self.files.lock().set_url(index, url.clone());
        Ok(url.clone())
    }
}

/// The download side: a job queue and the worker threads, started with the export.
struct Downloads {
    jobs_tx: Option<Sender<FileJob>>,
    jobs_rx: Receiver<FileJob>,
    workers: Vec<JoinHandle<()>>,
    tx: Sender<Chunk>,
    job: Arc<Job>,
}

impl Downloads {
    /// A manifest's first page and the pages it links (one fetch of the manifest), each page's
    /// new files queued as it comes. `complete`: the complete manifest (checkpoints record
    /// the page still to fetch).
    fn fetch_pages(
        &mut self,
        job: &Job,
        session: &mut Session,
        first: Manifest,
        first_url: &str,
        complete: bool,
    ) -> Result<()> {
        let mut pages = Pages::new(first_url);
        let mut page = first;
        let mut url = first_url.to_owned();
        loop {
            self.add(job, session, &mut page, &url)?;
            let next = pages.next(&page)?;
            if complete {
                let mut info = job.info.lock();
                info.manifest_complete = true;
                info.next_page = next.clone();
            }
            let Some(next) = next else {
                return Ok(());
            };
            if job.monitor.stopping() {
                return Err(stopped());
            }
            page = match fetch_manifest_page(&job.http, &next) {
                Ok(p) => p,
                // A page of a partial manifest that cannot be had now: its files come with a
                // later poll or the complete manifest.
                Err(e) if !complete && !job.monitor.stopping() => {
                    job.monitor.warn(format!(
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
    fn add(&mut self, job: &Job, session: &mut Session, m: &mut Manifest, url: &str) -> Result<()> {
        for n in &m.notes {
            job.monitor
                .warn(format!("manifest {}: {n}", redact_url(url)));
        }
        let entries = std::mem::take(&mut m.files);
        let listed = entries.len();
        let mut new = Vec::new();
        {
            // The entries move into the files table (new files) or are dropped (known ones).
            let mut table = job.files.lock();
            let matches = table.resolve(session, entries)?;
            if listed > 0 && matches.iter().all(|x| matches!(x, Match::Duplicate(_))) {
                return Err(Error::protocol(
                    "the manifest page lists only files already listed in this manifest: its pages repeat",
                )
                .with_url(url));
            }
            for x in &matches {
                match *x {
                    Match::New(idx) => new.push(idx),
                    Match::Duplicate(idx) => {
                        let (kind, _, u) = table.job_parts(idx).unwrap_or((
                            crate::manifest::Kind::Output,
                            None,
                            "",
                        ));
                        job.monitor.warn(format!(
                            "the manifest lists the {} file {} more than once; it is downloaded once",
                            kind.name(),
                            redact_url(u)
                        ))
                    }
                    Match::Known(_) | Match::Unknown => {}
                }
            }
        }
        self.register(job, new, m.requires_access_token)?;
        let mut info = job.info.lock();
        merge_top(&mut info.manifest, m);
        Ok(())
    }

    /// Continue from a checkpoint: its files keep their indexes; complete ones are not fetched
    /// again, the others skip the lines the caller already has. The files come from the
    /// checkpoint (version 1), from the config's `resume_files`, or from the manifest fetched
    /// again from the status URL (version 2); the digest tells that they are the files the
    /// checkpoint counted.
    fn restore(&mut self, job: &Job, cp: &Checkpoint) -> Result<()> {
        let top = cp.manifest_top();
        let requires_token = top
            .as_ref()
            .and_then(|m| m.get("requiresAccessToken"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let known = cp.files_known();
        let files: Vec<ManifestFile> = if cp.fhirbulk_checkpoint == 1 {
            cp.v1_files()
        } else if known == 0 {
            Vec::new()
        } else if let Some(list) = &job.config.resume_files {
            parse_file_list(list, known)?
        } else {
            let status_url = job.info.lock().status_url.clone().unwrap_or_default();
            let mut files = status::manifest_again(&job.http, &status_url).map_err(|e| {
                let mut e = e;
                e.message = format!(
                    "resume: the checkpoint counts {known} files and resume_files was not given, so the manifest was fetched again from the status URL, which failed: {}",
                    e.message
                );
                e
            })?;
            if files.len() < known as usize {
                return Err(Error::config(format!(
                    "invalid config: resume counts {known} files, but the manifest fetched again from the status URL lists {}; pass the file list as resume_files",
                    files.len()
                )));
            }
            files.truncate(known as usize);
            files
        };
        let indexes = {
            let mut table = job.files.lock();
            let indexes = table.restore(files, &|i| cp.file_progress(i));
            if let Some(d) = &cp.files_digest {
                if table.digest().hex() != *d {
                    return Err(Error::config(if job.config.resume_files.is_some() {
                        "invalid config: resume_files is not the file list of this checkpoint (the digest of its files' kind, type and URL path differs)".to_owned()
                    } else {
                        "invalid config: the manifest fetched again from the status URL does not list the checkpoint's files in the same order; pass the file list as resume_files".to_owned()
                    }));
                }
            }
            indexes
        };
        self.register(job, indexes, requires_token)?;
        if top.is_some() {
            job.info.lock().manifest = top;
        }
        Ok(())
    }

    /// Queue the new files `indexes` (already in the table) that have lines left; count the
    /// complete ones done.
    fn register(&mut self, job: &Job, indexes: Vec<u32>, requires_token: bool) -> Result<()> {
        let mut jobs = Vec::new();
        // One shared name per resource type, not one per file.
        let mut names: HashMap<String, Arc<TypeName>> = HashMap::new();
        job.info.lock().requires_access_token |= requires_token;
        {
            let table = job.files.lock();
            for index in indexes {
                let Some((kind, ty, url)) = table.job_parts(index) else {
                    continue;
                };
                if requires_token && job.http.uses_token() && !job.http.trusted(url) {
                    let origin = url::Url::parse(url)
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
                    .with_url(url));
                }
                let Some(p) = table.progress_of(index) else {
                    continue;
                };
                if p.complete() {
                    job.monitor.files_done.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                jobs.push(FileJob {
                    index,
                    kind,
                    url: url.to_owned(),
                    resource_type: ty.map(|t| {
                        names
                            .entry(t.to_owned())
                            .or_insert_with(|| TypeName::new(t))
                            .clone()
                    }),
                    send_token: requires_token,
                    skip_lines: p.line(),
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
        for i in 0..self.job.config.concurrency {
            let job = self.job.clone();
            let jobs = self.jobs_rx.clone();
            let tx = self.tx.clone();
            let h = std::thread::Builder::new()
                .name(format!("fhirbulk-dl-{i}"))
                .spawn(move || worker(&job, &jobs, &tx))
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

/// Start the coordinator thread: it runs the export, sends its records' chunks to `tx`, sets
/// the final state, then closes `tx` (and signals the receiver it returns).
pub(crate) fn spawn(job: &Arc<Job>, tx: Sender<Chunk>) -> Result<(JoinHandle<()>, Receiver<()>)> {
    let (done_tx, done_rx) = bounded::<()>(1);
    let job = job.clone();
    let h = std::thread::Builder::new()
        .name("fhirbulk-export".into())
        .spawn(move || {
            coordinate(&job, tx);
            let _ = done_tx.send(());
        })
        .map_err(|e| Error::new(ErrorCode::Internal, format!("cannot start a thread: {e}")))?;
    Ok((h, done_rx))
}

fn coordinate(job: &Arc<Job>, tx: Sender<Chunk>) {
    let (jobs_tx, jobs_rx) = unbounded();
    let mut dl = Downloads {
        jobs_tx: Some(jobs_tx),
        jobs_rx,
        workers: Vec::new(),
        tx: tx.clone(),
        job: job.clone(),
    };
    let result = catch_unwind(AssertUnwindSafe(|| {
        dl.start_workers()?;
        run(job, &mut dl)
    }))
    .unwrap_or_else(|_| {
        Err(Error::new(
            ErrorCode::Internal,
            "internal error: a panic in the export thread",
        ))
    });
    let m = &job.monitor;
    if result.is_err() {
        m.stop();
    }
    dl.finish();
    if m.cancelled() {
        if job.config.delete_on_cancel {
            delete_job(job);
        }
        m.set_state(State::Cancelled);
    } else if m.has_error() {
        m.set_state(State::Failed);
    } else {
        match result {
            Ok(()) => {
                if job.config.delete_on_complete {
                    delete_job(job);
                }
                m.set_state(State::Done);
            }
            Err(e) => {
                m.set_error(e);
                m.set_state(State::Failed);
            }
        }
    }
    // Only now may the consumer see the channel close.
    drop(dl);
    drop(tx);
}

fn run(job: &Job, dl: &mut Downloads) -> Result<()> {
    let resume = match &job.config.resume {
        Some(v) => Some(Checkpoint::from_value(v)?),
        None => None,
    };
    if let Some(cp) = &resume {
        if cp.base_url.trim_end_matches('/') != job.config.base_url.trim_end_matches('/') {
            return Err(Error::config(format!(
                "invalid config: resume is a checkpoint of an export from {}, not from base_url",
                redact_url(&cp.base_url)
            )));
        }
    }
    let status_url = match resume.as_ref().and_then(|c| c.status_url.clone()) {
        Some(u) => u,
        None => kickoff(&job.http)?,
    };
    job.info.lock().status_url = Some(status_url.clone());
    if job.monitor.stopping() {
        return Err(stopped());
    }
    let mut resumed_pages = None;
    if let Some(cp) = &resume {
        dl.restore(job, cp)?;
        if cp.manifest_complete {
            resumed_pages = Some(cp.next_page.clone());
        }
    }
    match resumed_pages {
        None => {
            job.monitor.set_state(State::Waiting);
            let manifest = poll_status(&job.http, &job.monitor, &status_url, &mut |m| {
                // A v3 partial manifest: its files start downloading at once.
                let mut session = job.files.lock().session(true);
                dl.fetch_pages(job, &mut session, m, &status_url, false)
            })?;
            job.monitor.set_state(State::Downloading);
            let mut session = job.files.lock().session(true);
            dl.fetch_pages(job, &mut session, manifest, &status_url, true)?;
        }
        Some(next) => {
            job.monitor.set_state(State::Downloading);
            let mut session = job.files.lock().session(true);
            {
                let mut info = job.info.lock();
                info.manifest_complete = true;
                info.next_page = next.clone();
            }
            if let Some(url) = next {
                let page = fetch_manifest_page(&job.http, &url)?;
                dl.fetch_pages(job, &mut session, page, &url, true)?;
            }
        }
    }
    dl.finish();
    if let Some(e) = job.monitor.error() {
        return Err(e);
    }
    if job.monitor.stopping() {
        return Err(stopped());
    }
    Ok(())
}

/// DELETE the server's job (after a cancel, or a completed export when configured).
fn delete_job(job: &Job) {
    let Some(url) = job.info.lock().status_url.clone() else {
        return;
    };
    let build = |u: &str| {
        job.http.client.delete(u).timeout(Duration::from_millis(
            job.config.request_timeout_ms.min(10_000),
        ))
    };
    let _ = job.http.send("export DELETE", &url, true, &build);
}

/// A download thread: files from the queue until it closes or the export stops.
fn worker(job: &Arc<Job>, jobs: &Receiver<FileJob>, tx: &Sender<Chunk>) {
    let m = &job.monitor;
    let r = catch_unwind(AssertUnwindSafe(|| {
        let fc = match job.http.file_client() {
            Ok(c) => c,
            Err(e) => return m.fail(e),
        };
        let cx = Context {
            http: &job.http,
            monitor: m,
            buffers: &job.buffers,
            fresh: &**job,
        };
        while let Ok(file) = jobs.recv() {
            if m.stopping() {
                return;
            }
            match download(&cx, &fc, &file, tx) {
                Ok(()) => {
                    m.files_done.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    if !m.stopping() {
                        m.fail(e);
                    }
                    return;
                }
            }
        }
    }));
    if r.is_err() {
        m.fail(Error::new(
            ErrorCode::Internal,
            "internal error: a panic in a download thread",
        ));
    }
}
