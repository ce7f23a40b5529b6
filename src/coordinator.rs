//! The coordinator of one export: kick-off (or resume from a checkpoint), status polling,
//! manifest pages, and its files' downloads, as steps the engine's shared threads run
//! (`engine`): a waiting export holds no thread, and its files take their turn in the download
//! threads with every other export's. [`Job`] is what the steps share; [`start`] starts them.
//!
//! The export ends (`finish`) when its control steps are over and no file of it is
//! downloading or queued — or, once it stops (cancel or failure), as soon as none is
//! downloading: its state is set, the server's job deleted when configured, and only then the
//! record channel closed.

use crate::attachments::Resolver;
use crate::buffers::Buffers;
use crate::checkpoint::{parse_file_list, Checkpoint};
use crate::config::Config;
use crate::download::{download, Context};
use crate::engine;
use crate::error::{redact_url, stopped, Error, ErrorCode, Result};
use crate::events::fields;
use crate::files::{Files, Match, Session};
use crate::http::retry::Budget;
use crate::http::Http;
use crate::kickoff::{kickoff, Kicked};
use crate::manifest::{merge_top, Manifest, ManifestFile};
use crate::monitor::{Monitor, State};
use crate::ndjson::{Chunk, TypeName};
use crate::remote::{FileJob, FreshUrls};
use crate::status::{self, fetch_manifest_page, Pages, Polled, Poller};
use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::Mutex;
use serde_json::{Map, Value};
use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
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
    /// The files to download and the steps' bookkeeping.
    queue: Mutex<Queue>,
    /// Where downloads send their chunks; taken (closing the consumer's channel) at the end.
    tx: Mutex<Option<Sender<Chunk>>>,
    /// Signalled when the export ended.
    done_tx: Mutex<Option<Sender<()>>>,
    /// Attachments to resolve in the records (config `attachments`).
    pub(crate) attachments: Option<Resolver>,
}

/// A file waiting for a download thread.
struct Pending {
    index: u32,
    skip_lines: u64,
    /// The attachments' records of line `skip_lines + 1` already delivered.
    skip_attachments: Option<String>,
    send_token: bool,
}

/// An export's place in the engine (see the module documentation).
#[derive(Default)]
struct Queue {
    pending: VecDeque<Pending>,
    /// Files downloading now.
    running: usize,
    /// The export has its place in the download threads' queue.
    ticket: bool,
    /// The control steps are over (`control_error`: how they failed).
    control_done: bool,
    control_error: Option<Error>,
    finished: bool,
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
    /// The job of an export whose downloads send their chunks to `tx`.
    pub(crate) fn new(
        config: Arc<Config>,
        http: Http,
        monitor: Arc<Monitor>,
        buffers: Arc<Buffers>,
        tx: Sender<Chunk>,
    ) -> Job {
        Job {
            attachments: Resolver::new(&config),
            config,
            http,
            monitor,
            buffers,
            files: Arc::default(),
            info: Mutex::default(),
            refresh: Mutex::new(None),
            queue: Mutex::default(),
            tx: Mutex::new(Some(tx)),
            done_tx: Mutex::new(None),
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
    fn fresh_url(&self, index: u32, failed: &str, cause: Error) -> Result<String> {
        let mut cache = self.refresh.lock();
        let Some(status_url) = self.info.lock().status_url.clone() else {
            return Err(cause);
        };
        let fresh = match cache.as_ref() {
            // A recent fetch serves the files whose links expired with this one, but not a file
            // that already used the URL it gave (the table takes fresh URLs as they come).
            Some((at, urls))
                if at.elapsed() < Duration::from_secs(5)
                    && urls.get(&index).is_some_and(|u| u != failed) =>
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

/// Adding an export's files: manifest pages, checkpoints, the download queue.
struct Downloads {
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
        let mut fetched = 0u32;
        loop {
            self.add(job, session, &mut page, &url, complete)?;
            fetched += 1;
            let next = pages.next(&page)?;
            if complete {
                let mut info = job.info.lock();
                info.manifest_complete = true;
                info.next_page = next.clone();
            }
            let Some(next) = next else {
                manifest_event(job, complete, fetched);
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
                    manifest_event(job, complete, fetched);
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            url = next;
        }
    }

    /// Queue the files of a manifest page (from `url`) that are new; files known by identity
    /// are not fetched again, and an entry listed twice is fetched once.
    fn add(
        &mut self,
        job: &Job,
        session: &mut Session,
        m: &mut Manifest,
        url: &str,
        complete: bool,
    ) -> Result<()> {
        for n in &m.notes {
            job.monitor
                .warn(format!("manifest {}: {n}", redact_url(url)));
        }
        let entries = std::mem::take(&mut m.files);
        let listed = entries.len();
        if job.monitor.events.enabled() {
            let mut by_kind = [0u64; 3];
            for e in &entries {
                by_kind[e.kind as usize] += 1;
            }
            job.monitor.event(
                "manifest_page",
                fields! {
                    "url" => redact_url(url),
                    "output_files" => by_kind[0],
                    "error_files" => by_kind[1],
                    "deleted_files" => by_kind[2],
                    "transaction_time" => m.transaction_time.as_deref().map(event_text),
                    "complete" => complete,
                },
            );
        }
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
        // `only_files`: the files not named count as complete (never fetched).
        let only: Option<std::collections::HashSet<u32>> = job
            .config
            .only_files
            .as_ref()
            .map(|v| v.iter().copied().collect());
        let progress = |i: u32| match &only {
            Some(only) if !only.contains(&i) => (0, true, None),
            _ => {
                let (lines, complete) = cp.file_progress(i);
                (lines, complete, cp.file_attachments(i))
            }
        };
        let indexes = {
            let mut table = job.files.lock();
            let indexes = table.restore(files, &progress);
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
        let mut pending = Vec::new();
        job.info.lock().requires_access_token |= requires_token;
        {
            let table = job.files.lock();
            for index in indexes {
                let Some((_, _, url)) = table.job_parts(index) else {
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
                if job.config.manifest_only {
                    continue;
                }
                pending.push(Pending {
                    index,
                    skip_lines: p.line(),
                    skip_attachments: p.pending(),
                    send_token: requires_token,
                });
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        job.queue.lock().pending.extend(pending);
        offer(&self.job);
        Ok(())
    }
}

/// Start the export's steps on the engine's threads: they run the export, send its records'
/// chunks to the job's channel, set the final state, then close the channel (and signal the
/// receiver returned).
pub(crate) fn start(job: &Arc<Job>) -> Receiver<()> {
    let (done_tx, done_rx) = bounded::<()>(1);
    *job.done_tx.lock() = Some(done_tx);
    // A stop (cancel, failure) ends a wait between polls at once, and ends the export as soon
    // as no file of it is downloading.
    let weak: Weak<Job> = Arc::downgrade(job);
    job.monitor.on_stop(Box::new(move || {
        engine::timer().poke();
        if let Some(job) = weak.upgrade() {
            engine::control().spawn(Box::new(move || check_finish(&job)));
        }
    }));
    let j = job.clone();
    engine::control().spawn(Box::new(move || control(j, Step::Start)));
    warm(job);
    done_rx
}

/// Start the download threads this export will use, each with its HTTP client, while the
/// export kicks off: that keeps thread and client set-up off the path from the manifest to
/// the first record. Threads already there are not warmed again.
fn warm(job: &Arc<Job>) {
    let pool = engine::downloads();
    let want = job.config.concurrency.min(engine::max_downloads());
    for _ in pool.threads()..want {
        let job = job.clone();
        pool.spawn(Box::new(move || {
            let _ = job.http.with_file_client(|_| ());
        }));
    }
}

/// A control step of an export.
enum Step {
    /// Continue from the checkpoint, or kick off.
    Start,
    /// The next kick-off attempt (with its retry budget).
    Kickoff(Option<Box<Budget>>),
    /// The next status poll.
    Poll(String, Box<Poller>),
}

/// Run a control step on a control thread; a wait after it goes to the engine's timer.
fn control(job: Arc<Job>, step: Step) {
    let r = catch_unwind(AssertUnwindSafe(|| advance(&job, step))).unwrap_or_else(|_| {
        Err(Error::new(
            ErrorCode::Internal,
            "internal error: a panic in the export's control step",
        ))
    });
    match r {
        Ok(Some((wait, shown, next))) => {
            let m = job.monitor.clone();
            engine::timer().after(
                wait,
                Box::new(move || m.stopping()),
                Box::new(move || {
                    job.monitor.end_wait(shown);
                    control(job, next)
                }),
            );
        }
        Ok(None) => control_end(&job, None),
        Err(e) => control_end(&job, Some(e)),
    }
}

/// The control steps are over (with the error that ended them, if any).
fn control_end(job: &Arc<Job>, err: Option<Error>) {
    let failed = err.is_some();
    {
        let mut q = job.queue.lock();
        q.control_done = true;
        q.control_error = err;
    }
    if failed {
        job.monitor.stop();
    }
    check_finish(job);
}

/// One control step: the next one and the wait before it, or None when the manifest is in
/// (its files queued).
fn advance(job: &Arc<Job>, step: Step) -> Result<Option<(Duration, Option<u64>, Step)>> {
    let mut dl = Downloads { job: job.clone() };
    let (status_url, mut poller) = match step {
        Step::Start => match begin(job, &mut dl)? {
            Begun::Kickoff => {
                if job.config.read_capability_statement {
                    capability_event(job);
                }
                return advance(job, Step::Kickoff(None));
            }
            Begun::Poll(url) => {
                job.monitor.set_state(State::Waiting);
                (url, Box::new(Poller::new(&job.http)))
            }
            Begun::Done => return Ok(None),
        },
        Step::Kickoff(mut budget) => match kickoff(&job.http, &mut budget)? {
            Kicked::Again { wait, reason } => {
                job.monitor.retries.fetch_add(1, Ordering::Relaxed);
                let shown = job.monitor.show_wait(wait, &reason);
                return Ok(Some((wait, shown, Step::Kickoff(budget))));
            }
            Kicked::Status(url) => {
                job.info.lock().status_url = Some(url.clone());
                if job.monitor.stopping() {
                    return Err(stopped());
                }
                job.monitor.set_state(State::Waiting);
                (url, Box::new(Poller::new(&job.http)))
            }
        },
        Step::Poll(url, p) => (url, p),
    };
    let polled = poller.poll(&job.http, &job.monitor, &status_url, &mut |m| {
        // A v3 partial manifest: its files start downloading at once.
        let mut session = job.files.lock().session(true);
        dl.fetch_pages(job, &mut session, m, &status_url, false)
    })?;
    match polled {
        Polled::Again {
            wait,
            reason,
            retry,
        } => {
            if retry {
                job.monitor.retries.fetch_add(1, Ordering::Relaxed);
            }
            let shown = job.monitor.show_wait(wait, &reason);
            Ok(Some((wait, shown, Step::Poll(status_url, poller))))
        }
        Polled::Ready(manifest) => {
            job.monitor.set_state(State::Downloading);
            let mut session = job.files.lock().session(true);
            dl.fetch_pages(job, &mut session, manifest, &status_url, true)?;
            Ok(None)
        }
    }
}

/// Where the start of an export leads.
enum Begun {
    /// No checkpoint with a status URL: kick off.
    Kickoff,
    /// The checkpoint's job: poll its status URL.
    Poll(String),
    /// The checkpoint had the complete manifest (its remaining pages are fetched here).
    Done,
}

/// Check the checkpoint, if any, and continue its job.
fn begin(job: &Job, dl: &mut Downloads) -> Result<Begun> {
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
    let Some(cp) = resume.filter(|c| c.status_url.is_some()) else {
        return Ok(Begun::Kickoff);
    };
    let status_url = cp.status_url.clone().unwrap_or_default();
    job.info.lock().status_url = Some(status_url.clone());
    if job.monitor.stopping() {
        return Err(stopped());
    }
    dl.restore(job, &cp)?;
    job.monitor.event(
        "resumed",
        fields! {
            "status_url" => redact_url(&status_url),
            "files_known" => cp.files_known(),
            "manifest_complete" => cp.manifest_complete,
        },
    );
    if !cp.manifest_complete {
        return Ok(Begun::Poll(status_url));
    }
    job.monitor.set_state(State::Downloading);
    let mut session = job.files.lock().session(true);
    let next = cp.next_page.clone();
    {
        let mut info = job.info.lock();
        info.manifest_complete = true;
        info.next_page = next.clone();
    }
    if let Some(url) = next {
        let page = fetch_manifest_page(&job.http, &url)?;
        dl.fetch_pages(job, &mut session, page, &url, true)?;
    }
    Ok(Begun::Done)
}

/// Give the export its place in the download threads' queue when it has a file to start and
/// room under its `concurrency`.
fn offer(job: &Arc<Job>) {
    {
        let mut q = job.queue.lock();
        if q.ticket || q.finished || q.pending.is_empty() || q.running >= job.config.concurrency {
            return;
        }
        q.ticket = true;
    }
    let job = job.clone();
    engine::downloads().spawn(Box::new(move || take_one(&job)));
}

/// On a download thread: start the export's next file, its next place at the back of the
/// queue, and download the file.
fn take_one(job: &Arc<Job>) {
    let next = {
        let mut q = job.queue.lock();
        q.ticket = false;
        if job.monitor.stopping() || q.finished {
            q.pending.clear();
            None
        } else {
            let p = q.pending.pop_front();
            if p.is_some() {
                q.running += 1;
            }
            p
        }
    };
    let Some(p) = next else {
        check_finish(job);
        return;
    };
    offer(job);
    if catch_unwind(AssertUnwindSafe(|| download_one(job, &p))).is_err() {
        job.monitor.fail(Error::new(
            ErrorCode::Internal,
            "internal error: a panic in a download thread",
        ));
    }
    job.queue.lock().running -= 1;
    offer(job);
    check_finish(job);
}

/// Download one file of the export (its chunks to the job's channel).
fn download_one(job: &Arc<Job>, p: &Pending) {
    let m = &job.monitor;
    if m.stopping() {
        return;
    }
    let Some(tx) = job.tx.lock().clone() else {
        return;
    };
    let file = {
        let files = job.files.lock();
        let Some((kind, ty, url)) = files.job_parts(p.index) else {
            return;
        };
        FileJob {
            index: p.index,
            kind,
            url: url.to_owned(),
            resource_type: ty.map(TypeName::new),
            send_token: p.send_token,
            skip_lines: p.skip_lines,
            skip_attachments: p.skip_attachments.clone(),
        }
    };
    // After the files' lock: the other download threads need it.
    if m.events.enabled() {
        let mut f = fields! {
            "index" => file.index,
            "kind" => file.kind.name(),
            "resource_type" => file.resource_type.as_ref().map(|t| t.as_str().to_owned()),
            "url" => redact_url(&file.url),
        };
        if file.skip_lines > 0 {
            f.insert("skip_lines".into(), file.skip_lines.into());
        }
        m.event("file_started", f);
    }
    let cx = Context {
        http: &job.http,
        monitor: m,
        buffers: &job.buffers,
        fresh: &**job,
        attachments: job.attachments.as_ref(),
    };
    let r = job
        .http
        .with_file_client(|fc| download(&cx, fc, &file, &tx))
        .and_then(|r| r);
    match r {
        Ok((lines, bytes)) => {
            if let Some(progress) = job.files.lock().progress_of(p.index) {
                progress.set_fetched();
            }
            m.files_done.fetch_add(1, Ordering::Relaxed);
            if m.events.enabled() {
                m.event(
                    "file_completed",
                    fields! {
                        "index" => file.index,
                        "kind" => file.kind.name(),
                        "resource_type" => file.resource_type.as_ref().map(|t| t.as_str().to_owned()),
                        "url" => redact_url(&file.url),
                        "lines" => lines,
                        "bytes" => bytes,
                    },
                );
            }
        }
        Err(e) => {
            if !m.stopping() {
                m.fail(e);
            }
        }
    }
}

/// End the export when nothing of it runs any more (see the module documentation).
fn check_finish(job: &Arc<Job>) {
    {
        let mut q = job.queue.lock();
        if q.finished || !q.control_done || q.running > 0 {
            return;
        }
        if !job.monitor.stopping() && !q.pending.is_empty() {
            return;
        }
        q.pending.clear();
        q.finished = true;
    }
    let job = job.clone();
    // The DELETE is a control request: not on a download thread.
    engine::control().spawn(Box::new(move || finish(&job)));
}

/// Set the final state (DELETE the server's job when configured), then close the record
/// channel and signal the end (also after a panic: the consumer must not wait forever).
fn finish(job: &Job) {
    if catch_unwind(AssertUnwindSafe(|| settle(job))).is_err() {
        job.monitor.set_error(Error::new(
            ErrorCode::Internal,
            "internal error: a panic while the export ended",
        ));
        job.monitor.set_state(State::Failed);
    }
    last_event(job);
    // Only now may the consumer see the channel close.
    job.tx.lock().take();
    let done = job.done_tx.lock().take();
    if let Some(d) = done {
        let _ = d.send(());
    }
}

/// The final state (and the DELETE when configured).
fn settle(job: &Job) {
    let control_error = job.queue.lock().control_error.take();
    let m = &job.monitor;
    if m.cancelled() {
        if job.config.delete_on_cancel {
            delete_job(job);
        }
        m.set_state(State::Cancelled);
    } else if m.has_error() {
        m.set_state(State::Failed);
    } else {
        match control_error {
            None => {
                if job.config.delete_on_complete {
                    delete_job(job);
                }
                m.set_state(State::Done);
            }
            Some(e) => {
                m.set_error(e);
                m.set_state(State::Failed);
            }
        }
    }
}

/// The export's last event: how it ended.
fn last_event(job: &Job) {
    let m = &job.monitor;
    let counts = |mut f: Map<String, Value>| {
        f.insert("files".into(), job.files.lock().len().into());
        f.insert(
            "files_done".into(),
            m.files_done.load(Ordering::Relaxed).into(),
        );
        f.insert("bytes".into(), m.bytes.load(Ordering::Relaxed).into());
        f
    };
    match m.state() {
        State::Done => m.events.push_last(
            "completed",
            counts(fields! {"transaction_time" => transaction_time_of(job)}),
        ),
        State::Cancelled => m.events.push_last("cancelled", counts(fields! {})),
        _ => {
            let error = m
                .error()
                .and_then(|e| serde_json::from_str::<Value>(&e.to_json()).ok());
            m.events
                .push_last("failed", counts(fields! {"error" => error}));
        }
    }
}

fn transaction_time_of(job: &Job) -> Option<String> {
    job.info
        .lock()
        .manifest
        .as_ref()
        .and_then(|m| m.get("transactionTime"))
        .and_then(Value::as_str)
        .map(event_text)
}

/// A server's text as an event field: control characters escaped, at most 100 characters (an
/// instant has 30; the server's value may be anything).
fn event_text(s: &str) -> String {
    crate::error::escape_controls(&s.chars().take(100).collect::<String>()).into_owned()
}

/// The `capability` event: what the server's CapabilityStatement says of its software and FHIR
/// version (config `read_capability_statement`; one request before the kick-off, never fatal).
fn capability_event(job: &Job) {
    const WHAT: &str = "capability statement request";
    let url = format!("{}/metadata", job.config.base_url.trim_end_matches('/'));
    let build = |u: &str| {
        job.http
            .client
            .get(u)
            .header(reqwest::header::ACCEPT, "application/fhir+json")
            .timeout(Duration::from_millis(job.config.request_timeout_ms))
    };
    let got = job.http.send(WHAT, &url, true, &build).and_then(|r| {
        let status = r.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(Error::new(
                ErrorCode::Http,
                format!("{WHAT} answered HTTP {status}"),
            ));
        }
        let body = crate::http::response::read_capped(
            WHAT,
            &url,
            r,
            crate::http::response::DISCOVERY_BODY_LIMIT,
        )?;
        serde_json::from_slice::<Value>(crate::bom::strip_bom(&body))
            .map_err(|e| Error::protocol(format!("{WHAT}: not JSON ({e})")))
    });
    let text = |v: &Value, a: &str, b: Option<&str>| {
        let x = v.get(a)?;
        let x = match b {
            Some(b) => x.get(b)?,
            None => x,
        };
        x.as_str().map(|s| {
            crate::error::escape_controls(&s.chars().take(200).collect::<String>()).into_owned()
        })
    };
    let f = match got {
        Ok(v) => fields! {
            "url" => redact_url(&url),
            "software_name" => text(&v, "software", Some("name")),
            "software_version" => text(&v, "software", Some("version")),
            "software_release_date" => text(&v, "software", Some("releaseDate")),
            "fhir_version" => text(&v, "fhirVersion", None),
        },
        Err(e) => fields! {"url" => redact_url(&url), "error" => e.message},
    };
    job.monitor.event("capability", f);
}

/// The `manifest` event: a manifest (all its pages, or a partial one) is in.
fn manifest_event(job: &Job, complete: bool, pages: u32) {
    if !job.monitor.events.enabled() {
        return;
    }
    let [output, error, deleted] = job.files.lock().kind_counts();
    job.monitor.event(
        "manifest",
        fields! {
            "complete" => complete,
            "pages" => pages,
            "transaction_time" => transaction_time_of(job),
            "output_files" => output,
            "error_files" => error,
            "deleted_files" => deleted,
        },
    );
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
    let r = job.http.send("export DELETE", &url, true, &build);
    let mut f = fields! {"status_url" => redact_url(&url)};
    match r {
        Ok(resp) => {
            f.insert("http_status".into(), resp.status().as_u16().into());
        }
        Err(e) => {
            f.insert("error".into(), e.message.clone().into());
        }
    }
    job.monitor.event("job_deleted", f);
}
