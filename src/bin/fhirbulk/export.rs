//! `fhirbulk export`: run (or resume) an export into a directory.

use crate::cli::{ExportArgs, FormatArg, ParquetCompressionArg};
use crate::config::{self, Since};
use crate::eventlog::EventLog;
use crate::output::{self, FileState, Outputs, Totals};
use crate::parquet::{self, ParquetOut};
use crate::progress::{Display, Written};
use crate::state;
use crate::util::{self, CliError, EXIT_INTERRUPTED, EXIT_OK};
use fhirbulk::arrow::{ParquetCompression, PartsState};
use fhirbulk::error::redact_url;
use fhirbulk::kickoff::{kickoff_query, kickoff_url};
use fhirbulk::{Config, Controller, Export, Method, Next};
use indicatif::{HumanBytes, HumanCount};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const CHECKPOINT_FILE: &str = ".fhirbulk-checkpoint.json";
/// The engine's file list, one JSON object per line, appended as files become known (the
/// checkpoint counts its bytes: lines after that are ignored and cut at resume).
pub const FILES_FILE: &str = ".fhirbulk-files.ndjson";
/// The output files of manifest files delivered completely (index, path, state), appended as
/// they complete; like the file list, the checkpoint counts its bytes.
pub const DONE_FILE: &str = ".fhirbulk-done.ndjson";
/// 2: the checkpoint names only the files in progress; the file list and the complete files
/// are in `FILES_FILE` and `DONE_FILE`. 1 (read): everything in the checkpoint.
const CLI_CHECKPOINT_VERSION: u32 = 2;
/// Records per pull.
const BATCH: usize = 4096;
/// Files taken from the engine at a time.
const FILES_PER_LOOK: usize = 4096;
/// How often the display and the event log look at the engine.
const TICK: Duration = Duration::from_millis(100);

static INTERRUPTS: AtomicU32 = AtomicU32::new(0);

/// Which events are already in the log (kept in the checkpoint, so a resumed run does not
/// repeat them).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Logged {
    pub kickoff: bool,
    pub status_complete: bool,
    /// Version 1: the files whose download_request is logged (now `requested_files`).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub requested: BTreeSet<u32>,
    /// Version 1: the files whose download_complete is logged (now in `DONE_FILE`).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub completed: BTreeSet<u32>,
    /// download_request is logged for files 0..requested_files (they start in order).
    #[serde(default)]
    pub requested_files: u32,
}

/// `--since auto` of the run that wrote the checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SinceAuto {
    pub state_file: PathBuf,
    pub base_url: String,
    pub target: String,
    /// The `_since` it chose (none for a first export).
    pub since: Option<String>,
}

/// `OUT/.fhirbulk-checkpoint.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CliCheckpoint {
    pub fhirbulk_cli_checkpoint: u32,
    /// What identifies the request: a run with a different one does not resume this.
    pub request: Value,
    /// The engine config without inline secrets (for `fhirbulk cancel`).
    pub config: Value,
    /// False when the config had inline secrets (cancel then needs --config or auth flags).
    pub config_has_credentials: bool,
    pub export_id: String,
    pub started_at: String,
    pub written_at: String,
    pub gzip: bool,
    /// The engine's checkpoint (the config's `resume`).
    pub checkpoint: Value,
    /// The length and counts of each output file in progress at the checkpoint (version 1:
    /// of every output file written).
    pub files: BTreeMap<String, FileState>,
    /// Bytes of `FILES_FILE` and `DONE_FILE` this checkpoint counts.
    #[serde(default)]
    pub files_list_bytes: u64,
    #[serde(default)]
    pub done_bytes: u64,
    pub log_bytes: u64,
    pub totals: Totals,
    pub logged: Logged,
    #[serde(default)]
    pub since_auto: Option<SinceAuto>,
    /// `--format parquet|both`: the Parquet parts committed with this checkpoint (a resumed
    /// run removes the others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parquet: Option<PartsState>,
    /// The zero-padded widths of the output file names (`Patient.001.ndjson`) per directory
    /// and type; absent in checkpoints from before padding (their names stay unpadded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_widths: Option<BTreeMap<String, usize>>,
    /// Where the event log is, relative to the directory (absent: `log.ndjson`, before the log
    /// moved to `log/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
}

/// The event log, relative to the output directory: out of `cat DIR/*.ndjson`.
pub const LOG_PATH: &str = "log/log.ndjson";
/// Where runs before the move wrote it (a checkpoint of theirs resumes there).
const OLD_LOG_PATH: &str = "log.ndjson";

pub fn read_checkpoint(path: &Path) -> Result<Option<CliCheckpoint>, CliError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<CliCheckpoint>(&bytes)
            .map(Some)
            .map_err(|e| {
                CliError::usage(format!(
                    "{} is not a readable fhirbulk checkpoint ({e}); remove it to start over",
                    path.display()
                ))
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CliError::io(
            format_args!("cannot read {}", path.display()),
            &e,
        )),
    }
}

/// What must match for a run to continue the export a checkpoint describes.
fn request_fingerprint(c: &Config, gzip: bool, format: FormatArg) -> Value {
    let mut v = json!({
        "base_url": c.base_url.trim_end_matches('/'),
        "kickoff": kickoff_url(c),
        "query": kickoff_query(c),
        "patients": c.patients,
        "method": format!("{:?}", c.method),
        "gzip": gzip,
    });
    // (Only when not NDJSON: checkpoints written before --format existed still match.)
    if format != FormatArg::Ndjson {
        v["format"] = json!(format!("{format:?}").to_lowercase());
    }
    v
}

/// How often to checkpoint: `(records, interval)`. With Parquet output pending, a checkpoint
/// closes the open parts, so by default it comes every 1,000,000 records or 60 s.
fn cadence(a: &ExportArgs, parquet_pending: bool) -> (u64, Duration) {
    let (records, ms) = if parquet_pending {
        (1_000_000, 60_000)
    } else {
        (100_000, 1000)
    };
    (
        a.checkpoint_records.unwrap_or(records),
        Duration::from_millis(a.checkpoint_interval_ms.unwrap_or(ms).max(10)),
    )
}

/// Does the directory hold the results of an earlier export?
fn previous_results(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    if dir.join("manifest.json").exists() {
        found.push("manifest.json".to_owned());
    }
    for sub in ["", "error", "deleted"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(".fhirbulk-") {
                    continue; // the checkpoint's lists
                }
                if name.ends_with(".ndjson") && name != OLD_LOG_PATH || name.ends_with(".ndjson.gz")
                {
                    found.push(if sub.is_empty() {
                        name
                    } else {
                        format!("{sub}/{name}")
                    });
                }
            }
        }
    }
    found.extend(parquet::previous_parts(dir));
    found.sort();
    found
}

fn remove_previous(dir: &Path, files: &[String]) -> Result<(), CliError> {
    for f in files {
        let p = dir.join(f);
        std::fs::remove_file(&p)
            .map_err(|e| CliError::io(format_args!("cannot remove {}", p.display()), &e))?;
    }
    Ok(())
}

fn install_interrupt_handler() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTS.fetch_add(1, Ordering::SeqCst) >= 1 {
            // A second Ctrl-C: leave at once (the last checkpoint on disk stays valid).
            eprintln!("\nfhirbulk: interrupted again; exiting without a final checkpoint");
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
    });
}

fn interrupted() -> bool {
    INTERRUPTS.load(Ordering::SeqCst) > 0
}

enum Outcome {
    Complete,
    Interrupted,
    Failed(CliError),
}

struct Run {
    out: PathBuf,
    gzip: bool,
    /// `--file-mode`: what every file written gets.
    perms: util::Perms,
    cfg_for_cancel: Value,
    config_has_credentials: bool,
    request: Value,
    export_id: String,
    started_at: String,
    since_auto: Option<SinceAuto>,
    outputs: Outputs,
    log: EventLog,
    /// Where `log` is, relative to `out` (for the checkpoint).
    log_path: String,
    logged: Logged,
    display: Display,
    kickoff_detail: Value,
    /// Pages of the complete manifest logged (`status_page_complete`).
    manifest_pages: u64,
    /// Engine events dropped so far (said once in the log).
    events_dropped: u64,
    /// Files whose download_request is logged beyond the prefix `logged.requested_files`.
    requested_ahead: BTreeSet<u32>,
    /// The CLI's own warnings, shown already, for the log after its first event (`kickoff`).
    pending_warnings: Vec<String>,
    /// Files and completed files taken from the engine so far (each tick asks for the rest only).
    files_seen: usize,
    completed_seen: usize,
    /// The sum of the manifest's `count` hints; None once one is missing or they overflow.
    expected_records: Option<u64>,
    checkpoint_written: bool,
    /// `--format parquet|both`.
    parquet: Option<ParquetOut>,
    /// Set when a local write failed: the checkpoint on disk must stay as it is.
    broken: bool,
    /// The file list and the complete files, appended to (see `FILES_FILE`, `DONE_FILE`).
    files_list: Journal,
    done_list: Journal,
    /// Files in `files_list` (the next index to append).
    files_listed: usize,
    /// Files in `done_list`.
    journaled_done: BTreeSet<u32>,
}

/// An append-only file next to the checkpoint.
pub struct Journal {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    len: u64,
}

impl Journal {
    /// Open `path` holding its first `keep` bytes (0: a new, empty file), with the file mode.
    pub fn open(path: &Path, keep: u64, perms: util::Perms) -> Result<Journal, CliError> {
        let io =
            |e: std::io::Error| CliError::io(format_args!("cannot open {}", path.display()), &e);
        let f = perms.open(path, true).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        if len < keep {
            return Err(CliError::usage(format!(
                "cannot resume: {} is {len} bytes, shorter than the {keep} bytes the checkpoint recorded \
(was it modified?); cancel with `fhirbulk cancel --out DIR` and start again",
                path.display()
            )));
        }
        f.set_len(keep).map_err(io)?;
        Ok(Journal {
            path: path.to_owned(),
            file: std::io::BufWriter::with_capacity(64 * 1024, f),
            len: keep,
        })
    }

    /// The first `len` bytes of `path`.
    pub fn read(path: &Path, len: u64) -> Result<String, CliError> {
        if len == 0 {
            return Ok(String::new());
        }
        let mut b = std::fs::read(path)
            .map_err(|e| CliError::io(format_args!("cannot read {}", path.display()), &e))?;
        if (b.len() as u64) < len {
            return Err(CliError::usage(format!(
                "cannot resume: {} is shorter than the {len} bytes the checkpoint recorded; cancel with \
`fhirbulk cancel --out DIR` and start again",
                path.display()
            )));
        }
        b.truncate(len as usize);
        String::from_utf8(b)
            .map_err(|_| CliError::usage(format!("cannot resume: {} is not UTF-8", path.display())))
    }

    fn append(&mut self, data: &[u8]) -> Result<(), CliError> {
        use std::io::Write;
        self.file
            .write_all(data)
            .map_err(|e| CliError::io(format_args!("cannot write {}", self.path.display()), &e))?;
        self.len += data.len() as u64;
        Ok(())
    }

    /// Flush and fsync; the length that is now durable.
    fn sync(&mut self) -> Result<u64, CliError> {
        use std::io::Write;
        let io = |e| CliError::io(format_args!("cannot write {}", self.path.display()), &e);
        self.file.flush().map_err(io)?;
        self.file.get_ref().sync_data().map_err(io)?;
        Ok(self.len)
    }
}

/// One line of `DONE_FILE`.
#[derive(Serialize, Deserialize)]
struct DoneLine {
    index: u32,
    path: String,
    #[serde(flatten)]
    state: FileState,
}

impl Run {
    fn written(&self, files_total: usize) -> Written {
        let records = self.outputs.totals.records.values().sum::<u64>()
            + self.outputs.totals.error_records
            + self.outputs.totals.deleted_records;
        Written {
            records,
            bytes: self.outputs.totals.ndjson_bytes,
            files_done: self.logged.completed.len(),
            files_total,
            expected_records: self.expected_records.filter(|_| files_total > 0),
        }
    }

    /// Look at the engine: its events (the log, the display), the manifest, finished files.
    fn tick(&mut self, ctl: &Controller) -> Result<(), CliError> {
        let p = ctl.progress();
        // The log is written from the engine's events (one source of truth); the queue is
        // drained at every look, so none are dropped unless a look came very late.
        while let Next::Item(ev) = ctl.next_event(Some(Duration::ZERO)) {
            self.on_event(ctl, &ev)?;
        }
        let dropped = ctl.events_dropped();
        if dropped > self.events_dropped {
            let n = dropped - self.events_dropped;
            self.events_dropped = dropped;
            self.log.event(
                "warning",
                json!({ "message": format!("{n} engine events were dropped before they could be logged") }),
            );
        }
        // Only what is new since the last look: a tick costs the files that changed, not the
        // manifest.
        // In pieces: a manifest of 200,000 files is not copied at once.
        loop {
            let new = ctl.files_between(self.files_seen, self.files_seen + FILES_PER_LOOK);
            if new.is_empty() {
                break;
            }
            self.files_seen += new.len();
            self.learn_files(&new)?;
        }
        while self.files_seen > self.files_listed {
            let end = self.files_seen.min(self.files_listed + FILES_PER_LOOK);
            let lines = ctl.files_json_between(self.files_listed, end, true);
            self.files_list.append(lines.as_bytes())?;
            self.files_listed = end;
        }
        let done = ctl.completed_files_from(self.completed_seen);
        self.completed_seen += done.len();
        for i in done {
            if self.logged.completed.contains(&i) {
                // Complete in the run this one resumes (in the complete files' list unless that
                // run wrote a version 1 checkpoint).
                self.outputs.mark_done(i as usize);
                if !self.journaled_done.contains(&i) {
                    self.journal_done(i)?;
                }
                continue;
            }
            self.outputs.close_file(i as usize)?;
            self.journal_done(i)?;
            self.logged.completed.insert(i);
        }
        let w = self.written(self.files_seen);
        self.display.update(&p, &w);
        Ok(())
    }

    /// One engine event: its line in the log (the SMART bulk-data-client's event ids where it
    /// has one), and in the display.
    fn on_event(&mut self, ctl: &Controller, ev: &fhirbulk::Event) -> Result<(), CliError> {
        let fields = ev.fields();
        let f = |k: &str| fields.get(k).cloned().unwrap_or(Value::Null);
        let u = |k: &str| fields.get(k).and_then(Value::as_u64);
        match ev.kind {
            "capability" => {
                for (from, to) in [
                    ("software_name", "softwareName"),
                    ("software_version", "softwareVersion"),
                    ("software_release_date", "softwareReleaseDate"),
                    ("fhir_version", "fhirVersion"),
                ] {
                    self.kickoff_detail[to] = f(from);
                }
            }
            "kickoff" if !self.logged.kickoff => {
                let mut d = self.kickoff_detail.clone();
                d["errorCode"] = Value::Null;
                d["errorBody"] = Value::Null;
                self.log.event_with("kickoff", d, &kickoff_extra());
                self.logged.kickoff = true;
                self.log_pending_warnings();
                if let Some(url) = fields.get("status_url").and_then(Value::as_str) {
                    self.display
                        .line(&format!("export started; status URL {url}"));
                }
            }
            "status" => self.log.event(
                "status_progress",
                json!({"body": null, "xProgress": f("x_progress"), "retryAfter": f("retry_after")}),
            ),
            "manifest_page" => {
                if fields.get("complete") == Some(&Value::Bool(true)) {
                    if self.logged.status_complete {
                        // Logged by the run this one resumes (the manifest was fetched again).
                        return Ok(());
                    }
                    if self.manifest_pages == 0 {
                        // The status request answered with the manifest (its first page).
                        self.log.event(
                            "status_complete",
                            json!({"transactionTime": f("transaction_time")}),
                        );
                    }
                    self.manifest_pages += 1;
                }
                self.log.event(
                    "status_page_complete",
                    json!({
                        "transactionTime": f("transaction_time"),
                        "outputFileCount": f("output_files"),
                        "deletedFileCount": f("deleted_files"),
                        "errorFileCount": f("error_files"),
                    }),
                );
            }
            "manifest" if fields.get("complete") == Some(&Value::Bool(true)) => {
                if self.logged.status_complete {
                    // Logged by the run this one resumes (the manifest was fetched again).
                    return Ok(());
                }
                let tt = ctl.transaction_time();
                let [output, error, deleted] =
                    ["output_files", "error_files", "deleted_files"].map(|k| u(k).unwrap_or(0));
                self.log.event(
                    "manifest_complete",
                    json!({
                        "transactionTime": tt,
                        "totalOutputFileCount": output,
                        "totalDeletedFileCount": deleted,
                        "totalErrorFileCount": error,
                        "totalManifests": self.manifest_pages.max(f("pages").as_u64().unwrap_or(1)),
                    }),
                );
                self.logged.status_complete = true;
                self.write_manifest(ctl)?;
                self.display.line(&format!(
                    "manifest: {} files, transactionTime {}",
                    output + error + deleted,
                    tt.as_deref().unwrap_or("-")
                ));
            }
            "file_started" => {
                let i = u("index").unwrap_or(0) as u32;
                if i < self.logged.requested_files {
                    // Its request is in the log from the run this one resumes: the rest of it.
                    self.log.event(
                        "download_resumed",
                        json!({"fileUrl": f("url"), "skipLines": f("skip_lines")}),
                    );
                } else {
                    self.log.event(
                        "download_request",
                        json!({
                            "fileUrl": f("url"),
                            "itemType": f("kind"),
                            "resourceType": f("resource_type"),
                        }),
                    );
                    // The checkpoint counts the requests logged as a prefix of the files (they
                    // start in order, a few at once).
                    self.requested_ahead.insert(i);
                    while self.requested_ahead.remove(&self.logged.requested_files) {
                        self.logged.requested_files += 1;
                    }
                }
            }
            "file_completed" => self.log.event(
                "download_complete",
                json!({
                    "fileUrl": f("url"),
                    "resourceCount": f("lines"),
                    "fileSize": f("bytes"),
                }),
            ),
            "file_resumed" => self.log.event(
                "download_resumed",
                json!({"fileUrl": f("url"), "fromByte": f("from_byte")}),
            ),
            "file_restarted" => self.log.event(
                "download_restarted",
                json!({"fileUrl": f("url"), "skipLines": f("skip_lines")}),
            ),
            "retry" => self.log.event(
                "retry",
                json!({
                    "url": f("url"),
                    "code": f("http_status"),
                    "error": f("code"),
                    "message": f("reason"),
                    "attempt": f("attempt"),
                    "waitMs": f("wait_ms"),
                }),
            ),
            "token" => self.log.event(
                "token",
                json!({"refreshed": f("refreshed"), "shared": f("shared")}),
            ),
            "warning" => {
                let w = fields
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                self.display.line(&format!("warning: {w}"));
                if self.logged.kickoff {
                    self.log.event("warning", json!({ "message": w }));
                } else {
                    // The log starts with the kick-off, as the SMART client's does.
                    self.pending_warnings.push(w);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Files new to this run: output slots, the count hints.
    fn learn_files(&mut self, new: &[fhirbulk::FileInfo]) -> Result<(), CliError> {
        self.outputs.sync_files(new);
        for f in new {
            // The server's hints: none when one is missing or they overflow.
            self.expected_records = match (self.expected_records, f.count) {
                (Some(sum), Some(c)) => sum.checked_add(c),
                _ => None,
            };
        }
        Ok(())
    }

    fn write_manifest(&self, ctl: &Controller) -> Result<(), CliError> {
        let path = self.out.join("manifest.json");
        // Streamed into the file (with 200,000 files the text is tens of MB).
        util::write_atomic_with(&path, self.perms, &mut |w| {
            if !ctl.write_manifest(w)? {
                w.write_all(b"null")?;
            }
            Ok(())
        })
        .map_err(|e| CliError::io(format_args!("cannot write {}", path.display()), &e))
    }

    /// Append file `i`'s output (complete) to the complete files' list.
    fn journal_done(&mut self, i: u32) -> Result<(), CliError> {
        let (path, state) = self.outputs.done_state(i as usize);
        let mut line = serde_json::to_vec(&DoneLine {
            index: i,
            path,
            state,
        })
        .unwrap_or_default();
        line.push(b'\n');
        self.done_list.append(&line)?;
        self.journaled_done.insert(i);
        Ok(())
    }

    /// Flush the output files, then write the checkpoint atomically with their lengths.
    fn checkpoint(&mut self, export: &Export) -> Result<bool, CliError> {
        if self.broken {
            return Ok(false);
        }
        let Some(cp) = export.checkpoint_unread(0) else {
            return Ok(false);
        };
        // Every file the checkpoint counts is in the file list before it.
        let known = cp.files_known() as usize;
        while known > self.files_listed {
            let end = known.min(self.files_listed + FILES_PER_LOOK);
            let lines = export
                .controller()
                .files_json_between(self.files_listed, end, true);
            self.files_list.append(lines.as_bytes())?;
            self.files_listed = end;
        }
        // Every record delivered so far is in a closed part before the checkpoint counts it.
        let parquet = match self.parquet.as_mut() {
            Some(p) => Some(p.commit()?),
            None => None,
        };
        self.outputs.flush_all(true)?;
        let log_bytes = self.log.flush(true)?;
        // The lists the checkpoint counts are on disk before it.
        let files_list_bytes = self.files_list.sync()?;
        let done_bytes = self.done_list.sync()?;
        let logged = Logged {
            kickoff: self.logged.kickoff,
            status_complete: self.logged.status_complete,
            requested: BTreeSet::new(),
            completed: BTreeSet::new(),
            requested_files: self.logged.requested_files,
        };
        let doc = CliCheckpoint {
            fhirbulk_cli_checkpoint: CLI_CHECKPOINT_VERSION,
            request: self.request.clone(),
            config: self.cfg_for_cancel.clone(),
            config_has_credentials: self.config_has_credentials,
            export_id: self.export_id.clone(),
            started_at: self.started_at.clone(),
            written_at: util::now(),
            gzip: self.gzip,
            checkpoint: serde_json::to_value(&cp).unwrap_or(Value::Null),
            files: self.outputs.states(),
            files_list_bytes,
            done_bytes,
            log_bytes,
            totals: self.outputs.totals.clone(),
            logged,
            since_auto: self.since_auto.clone(),
            parquet,
            name_widths: self.outputs.widths(),
            log_path: Some(self.log_path.clone()),
        };
        let path = self.out.join(CHECKPOINT_FILE);
        let text = serde_json::to_vec(&doc).unwrap_or_default();
        util::write_atomic(&path, self.perms, &text)
            .map_err(|e| CliError::io(format_args!("cannot write {}", path.display()), &e))?;
        self.checkpoint_written = true;
        Ok(true)
    }

    fn log_pending_warnings(&mut self) {
        for w in std::mem::take(&mut self.pending_warnings) {
            self.log.event("warning", json!({ "message": w }));
        }
    }

    /// The event for an error, in the log schema: where the export was decides which one.
    fn log_error(&mut self, e: &CliError) {
        let (code, message, body, url) = match e {
            CliError::Engine(e) => (
                e.http_status.map(Value::from).unwrap_or(Value::Null),
                e.message.clone(),
                if e.issues.is_empty() {
                    Value::Null
                } else {
                    json!({"resourceType": "OperationOutcome", "issue": e.issues})
                },
                e.url.clone(),
            ),
            CliError::Local { message, .. } => (Value::Null, message.clone(), Value::Null, None),
        };
        if !self.logged.kickoff {
            let mut d = self.kickoff_detail.clone();
            d["errorCode"] = code;
            d["errorBody"] = if body.is_null() { json!(message) } else { body };
            self.log.event_with("kickoff", d, &kickoff_extra());
            self.logged.kickoff = true;
            self.log_pending_warnings();
        } else if !self.logged.status_complete {
            self.log.event(
                "status_error",
                json!({"body": body, "code": code, "message": message, "responseHeaders": null}),
            );
        } else {
            self.log.event(
                "download_error",
                json!({"fileUrl": url, "body": body, "code": code, "message": message, "responseHeaders": null}),
            );
        }
    }
}

/// The version of this log's layout (lines and fields), and who wrote it, on the kick-off
/// line (as SMART Fetch marks its logs).
const LOG_VERSION: u32 = 2;

fn kickoff_extra() -> String {
    format!(
        ",\"_client\":\"fhirbulk\",\"_clientVersion\":{},\"logVersion\":{LOG_VERSION}",
        Value::String(env!("CARGO_PKG_VERSION").to_owned())
    )
}

pub fn run(a: ExportArgs) -> u8 {
    let t0 = Instant::now();
    let mut summary = json!({"status": "failed", "out": a.out.display().to_string()});
    let code = match run_export(&a, t0, &mut summary) {
        Ok(code) => code,
        Err(e) => {
            e.report();
            summary["status"] = json!("failed");
            summary["error"] = e.to_json();
            e.exit_code()
        }
    };
    if a.json {
        summary["exitCode"] = json!(code);
        summary["durationSeconds"] = json!(t0.elapsed().as_secs_f64());
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        );
    }
    code
}

fn run_export(a: &ExportArgs, t0: Instant, summary: &mut Value) -> Result<u8, CliError> {
    let (mut map, since_mode) = config::build(a)?;
    let out = a.out.clone();
    let cp_path = out.join(CHECKPOINT_FILE);
    if out.exists() && !out.is_dir() {
        return Err(CliError::usage(format!(
            "--out {} exists and is not a directory",
            out.display()
        )));
    }
    let previous = read_checkpoint(&cp_path)?;

    // The config as given, to know the target for --since auto.
    let base_cfg = Config::from_json(&Value::Object(map.clone()).to_string())?;
    let mut bad_state: Option<String> = None;
    let since_auto = if since_mode == Since::Auto {
        let (base_url, target) = state::target_key(&base_cfg);
        let state_file = match &a.state_file {
            Some(p) => p.clone(),
            None => state::default_path()?,
        };
        // A resumed run keeps the _since it started with.
        let since = match previous.as_ref().and_then(|c| c.since_auto.as_ref()) {
            Some(s) if s.base_url == base_url && s.target == target => s.since.clone(),
            _ => match state::lookup(&state_file, &base_url, &target)? {
                // A value that is not an instant (a hand edit, an older version) must never
                // block later runs: it is ignored, with a note.
                Some(v) if !fhirbulk::config::is_instant(&v) => {
                    bad_state = Some(v);
                    None
                }
                other => other,
            },
        };
        if let Some(s) = &since {
            map.insert("since".into(), json!(s));
        }
        Some(SinceAuto {
            state_file,
            base_url,
            target,
            since,
        })
    } else {
        None
    };
    let mut cfg = Config::from_json(&Value::Object(map.clone()).to_string())?;
    let request = request_fingerprint(&cfg, a.gzip, a.format);
    // The log is written from the engine's events: room for all of them between two looks
    // (a look every 100 ms; 65,536 events are some 20 MB at most), and the CapabilityStatement
    // read for the kick-off line's software fields (unless the config says not to).
    cfg.event_queue_size = 1 << 16;
    if !map.contains_key("read_capability_statement") {
        cfg.read_capability_statement = true;
    }
    let (for_cancel, has_credentials) = config::without_inline_secrets(&map);

    let mut notes: Vec<String> = Vec::new();
    if let (Some(v), Some(s)) = (&bad_state, &since_auto) {
        notes.push(format!(
            "--since auto: the state file {} holds {:?} for this target, which is not a FHIR instant; it is ignored",
            s.state_file.display(),
            fhirbulk::error::escape_controls(&v.chars().take(60).collect::<String>())
        ));
    }
    if let Some(s) = &since_auto {
        match &s.since {
            Some(v) => notes.push(format!("--since auto: _since={v} (last complete export)")),
            None => notes.push(format!(
                "--since auto: no earlier complete export of {} {} in {}; exporting everything",
                redact_url(&s.base_url),
                s.target,
                s.state_file.display()
            )),
        }
    }

    // PHI: the directory fhirbulk creates is the owner's only (with --file-mode's group bits);
    // one that exists already is left as it is, with a warning when it is more open.
    let perms = a.file_mode;
    let created = perms
        .create_dir_all(&out)
        .map_err(|e| CliError::io(format_args!("cannot create {}", out.display()), &e))?;
    let mut warnings: Vec<String> = Vec::new();
    if !created {
        if let Some(mode) = perms.too_open(&out) {
            warnings.push(format!(
                "the output directory {} has mode {mode:03o}, which grants group or others more \
than {:03o} (--file-mode {:03o}); its files are written {:03o}, but consider chmod {:03o} on it",
                out.display(),
                perms.dir,
                perms.file,
                perms.file,
                perms.dir
            ));
        }
    }
    let mut committed_parts = PartsState::new();
    let (outputs, log, log_path, logged, export_id, started_at, resumed, journals) = match previous
    {
        Some(prev) => {
            if prev.request != request {
                return Err(CliError::usage(format!(
                    "{} holds an unfinished export of a different request ({}); run the command \
that started it to resume it, cancel it with `fhirbulk cancel --out {}`, or use another --out",
                    out.display(),
                    prev.request
                        .get("kickoff")
                        .and_then(Value::as_str)
                        .map(redact_url)
                        .unwrap_or_default(),
                    out.display()
                )));
            }
            output::truncate_to_checkpoint(&out, perms, &prev.files)?;
            committed_parts = prev.parquet.clone().unwrap_or_default();
            let log_rel = prev
                .log_path
                .clone()
                .unwrap_or_else(|| OLD_LOG_PATH.to_owned());
            if log_rel.contains("..") || log_rel.starts_with('/') {
                return Err(CliError::usage(format!(
                    "the checkpoint in {} names a log outside it ({log_rel:?}); remove the checkpoint",
                    out.display()
                )));
            }
            let log = EventLog::open(
                &out.join(&log_rel),
                &prev.export_id,
                Some(prev.log_bytes),
                perms,
            )?;
            cfg.resume = Some(prev.checkpoint.clone());
            let mut logged = prev.logged.clone();
            let mut files: std::collections::HashMap<String, FileState> =
                prev.files.clone().into_iter().collect();
            let journals = if prev.fhirbulk_cli_checkpoint >= 2 {
                let list = Journal::read(&out.join(FILES_FILE), prev.files_list_bytes)?;
                let listed = list.lines().count();
                if !list.is_empty() {
                    cfg.resume_files = Some(Value::String(list));
                }
                let done = Journal::read(&out.join(DONE_FILE), prev.done_bytes)?;
                for line in done.lines() {
                    let d: DoneLine = serde_json::from_str(line).map_err(|e| {
                        CliError::usage(format!(
                            "cannot resume: {} has a line that is not a complete file ({e}); remove the checkpoint to start over",
                            out.join(DONE_FILE).display()
                        ))
                    })?;
                    logged.completed.insert(d.index);
                    files.insert(d.path, d.state);
                }
                let journaled = logged.completed.clone();
                (
                    Journal::open(&out.join(FILES_FILE), prev.files_list_bytes, perms)?,
                    Journal::open(&out.join(DONE_FILE), prev.done_bytes, perms)?,
                    listed,
                    journaled,
                )
            } else {
                // Version 1: the engine's checkpoint lists every file; the lists start now.
                logged.requested_files = logged.requested.iter().next_back().map_or(0, |m| m + 1);
                logged.requested.clear();
                (
                    Journal::open(&out.join(FILES_FILE), 0, perms)?,
                    Journal::open(&out.join(DONE_FILE), 0, perms)?,
                    0,
                    BTreeSet::new(),
                )
            };
            // Output files the checkpoint does not count were written after it: their
            // records come again (under the same name, or another if the names' widths were
            // fixed after the checkpoint), so what they hold goes.
            for rel in previous_results(&out) {
                if (rel.ends_with(".ndjson") || rel.ends_with(".ndjson.gz"))
                    && !files.contains_key(&rel)
                {
                    let p = out.join(&rel);
                    std::fs::remove_file(&p).map_err(|e| {
                        CliError::io(format_args!("cannot remove {}", p.display()), &e)
                    })?;
                }
            }
            let records: u64 = if a.format == FormatArg::Parquet {
                committed_parts.values().map(|p| p.rows).sum::<u64>()
                    + files
                        .iter()
                        .filter(|(rel, _)| rel.starts_with("error/") || rel.starts_with("deleted/"))
                        .map(|(_, f)| f.records)
                        .sum::<u64>()
            } else {
                files.values().map(|f| f.records).sum()
            };
            notes.push(format!(
                "resuming the export in {} from its checkpoint of {} ({records} records already written)",
                out.display(),
                prev.written_at
            ));
            (
                Outputs::new(&out, a.gzip, perms, files, prev.totals.clone())
                    .with_widths(prev.name_widths.clone()),
                log,
                log_rel,
                logged,
                prev.export_id.clone(),
                prev.started_at.clone(),
                true,
                journals,
            )
        }
        None => {
            let found = previous_results(&out);
            if !found.is_empty() {
                if !a.force {
                    return Err(CliError::usage(format!(
                        "{} already holds the results of an export ({}{}); use --force to \
overwrite them, or another --out",
                        out.display(),
                        found[..found.len().min(3)].join(", "),
                        if found.len() > 3 { ", ..." } else { "" }
                    )));
                }
                remove_previous(&out, &found)?;
            }
            // 20 hex characters, like the SMART client's `exportId`.
            let export_id = fhirbulk::id::random_hex(10);
            let log_dir = out.join("log");
            perms.create_dir_all(&log_dir).map_err(|e| {
                CliError::io(format_args!("cannot create {}", log_dir.display()), &e)
            })?;
            let log = EventLog::open(&out.join(LOG_PATH), &export_id, None, perms)?;
            (
                Outputs::new(&out, a.gzip, perms, Default::default(), Totals::default()),
                log,
                LOG_PATH.to_owned(),
                Logged::default(),
                export_id,
                util::now(),
                false,
                (
                    Journal::open(&out.join(FILES_FILE), 0, perms)?,
                    Journal::open(&out.join(DONE_FILE), 0, perms)?,
                    0,
                    BTreeSet::new(),
                ),
            )
        }
    };

    let outputs = if a.format == FormatArg::Parquet {
        outputs.without_output_files()
    } else {
        outputs
    };
    let parquet = if a.format == FormatArg::Ndjson {
        None
    } else {
        let compression = match a.parquet_compression {
            ParquetCompressionArg::Snappy => ParquetCompression::Snappy,
            ParquetCompressionArg::Zstd => ParquetCompression::Zstd,
            ParquetCompressionArg::None => ParquetCompression::None,
        };
        Some(ParquetOut::open(
            &out,
            perms,
            compression,
            &committed_parts,
        )?)
    };

    let query = kickoff_query(&cfg);
    let get = cfg.method == Method::Get || (cfg.method == Method::Auto && cfg.patients.is_empty());
    let export_url = if get && !query.is_empty() {
        format!("{}?{query}", kickoff_url(&cfg))
    } else {
        kickoff_url(&cfg)
    };
    let mut params = Map::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        params.insert(k.into_owned(), json!(v));
    }
    if !cfg.patients.is_empty() {
        params.insert("patient".into(), json!(cfg.patients));
    }
    let kickoff_detail = json!({
        "exportUrl": export_url,
        "errorCode": null,
        "errorBody": null,
        "softwareName": null,
        "softwareVersion": null,
        "softwareReleaseDate": null,
        "fhirVersion": null,
        "requestParameters": params,
    });

    let display = Display::new(a.quiet);
    for n in &notes {
        display.line(n);
    }
    for w in &warnings {
        display.line(&format!("warning: {w}"));
    }
    let mut run = Run {
        out: out.clone(),
        gzip: a.gzip,
        perms,
        cfg_for_cancel: Value::Object(for_cancel),
        config_has_credentials: has_credentials,
        request,
        export_id,
        started_at,
        since_auto,
        outputs,
        log,
        log_path,
        logged,
        display,
        kickoff_detail,
        manifest_pages: 0,
        events_dropped: 0,
        requested_ahead: BTreeSet::new(),
        pending_warnings: warnings,
        files_seen: 0,
        completed_seen: 0,
        expected_records: Some(0),
        checkpoint_written: false,
        parquet,
        broken: false,
        files_list: journals.0,
        done_list: journals.1,
        files_listed: journals.2,
        journaled_done: journals.3,
    };
    summary["resumed"] = json!(resumed);
    // The log starts with the kick-off (as the SMART client's does): the warnings follow it.
    if run.logged.kickoff {
        run.log_pending_warnings();
    }

    install_interrupt_handler();
    let outcome = match Export::start(cfg) {
        Ok(export) => match drive(&mut run, export, a, summary) {
            Ok(o) => o,
            Err(e) => Outcome::Failed(e),
        },
        Err(e) => Outcome::Failed(e.into()),
    };
    run.display.finish();
    let duration = t0.elapsed();
    match outcome {
        Outcome::Complete => {
            summary["status"] = json!("complete");
            summary["error"] = Value::Null;
            if !a.quiet {
                let t = &run.outputs.totals;
                let per_type: Vec<String> = t
                    .records
                    .iter()
                    .map(|(k, v)| format!("{k} {}", HumanCount(*v)))
                    .collect();
                eprintln!(
                    "fhirbulk: done in {:.1} s: {} records ({}), {} error, {} deleted, {} -> {}",
                    duration.as_secs_f64(),
                    HumanCount(t.records.values().sum::<u64>()),
                    if per_type.is_empty() {
                        "none".to_owned()
                    } else {
                        per_type.join(", ")
                    },
                    HumanCount(t.error_records),
                    HumanCount(t.deleted_records),
                    HumanBytes(t.ndjson_bytes),
                    out.display()
                );
            }
            Ok(EXIT_OK)
        }
        Outcome::Interrupted => {
            summary["status"] = json!("interrupted");
            summary["error"] = json!({"name": "interrupted", "message": "interrupted", "exit_code": EXIT_INTERRUPTED});
            partial_summary(&run, summary);
            let resumable = run.checkpoint_written;
            if resumable {
                eprintln!(
                    "fhirbulk: interrupted; the checkpoint is saved. Run the same command again to \
resume, or cancel the server's job with: fhirbulk cancel --out {}",
                    out.display()
                );
            } else {
                eprintln!(
                    "fhirbulk: interrupted before the server accepted the export; nothing to resume"
                );
            }
            Ok(EXIT_INTERRUPTED)
        }
        Outcome::Failed(e) => {
            run.log_error(&e);
            let _ = run.log.flush(true);
            partial_summary(&run, summary);
            if run.checkpoint_written && !run.broken {
                e.report();
                eprintln!(
                    "fhirbulk: the checkpoint in {} is kept: run the same command again to resume \
(after fixing the cause), or cancel the server's job with: fhirbulk cancel --out {}",
                    out.display(),
                    out.display()
                );
                summary["error"] = e.to_json();
                return Ok(e.exit_code());
            }
            Err(e)
        }
    }
}

fn partial_summary(run: &Run, summary: &mut Value) {
    let t = &run.outputs.totals;
    summary["records"] = json!(t.records);
    summary["errorRecords"] = json!(t.error_records);
    summary["deletedRecords"] = json!(t.deleted_records);
    summary["bytes"] = json!(t.ndjson_bytes);
    summary["checkpoint"] = if run.checkpoint_written {
        json!(run.out.join(CHECKPOINT_FILE).display().to_string())
    } else {
        Value::Null
    };
}

/// Pull every record into the files, checkpointing as it goes.
fn drive(
    run: &mut Run,
    mut export: Export,
    a: &ExportArgs,
    summary: &mut Value,
) -> Result<Outcome, CliError> {
    let ctl = export.controller();
    let mut last_tick = Instant::now() - TICK;
    let mut last_cp = Instant::now();
    let mut since_cp: u64 = 0;
    let mut cp_signature = (false, 0usize, 0u32);
    let outcome = loop {
        if interrupted() {
            break Outcome::Interrupted;
        }
        match export.next_batch(BATCH, Some(TICK)) {
            Ok(Next::Item(batch)) => {
                let n = batch.len() as u64;
                if let Err(e) = run.outputs.write_batch(&batch, &ctl) {
                    run.broken = true;
                    break Outcome::Failed(e);
                }
                if let Some(p) = run.parquet.as_mut() {
                    if let Err(e) = p.push(&batch) {
                        // The parts written since the last checkpoint are dropped by a rerun.
                        run.broken = true;
                        break Outcome::Failed(e.into());
                    }
                }
                since_cp += n;
            }
            Ok(Next::Timeout) => {}
            Ok(Next::End) => break Outcome::Complete,
            Ok(Next::Cancelled) => break Outcome::Interrupted,
            Err(e) => break Outcome::Failed(e.into()),
        }
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            if let Err(e) = run.tick(&ctl) {
                run.broken = true;
                break Outcome::Failed(e);
            }
        }
        let p = ctl.progress();
        let signature = (
            ctl.status_url().is_some(),
            p.files_total as usize,
            p.state as u32,
        );
        let (every, interval) = cadence(a, run.parquet.as_ref().is_some_and(|p| p.pending() > 0));
        let due = since_cp >= every
            || (last_cp.elapsed() >= interval && (since_cp > 0 || signature != cp_signature))
            || (signature.0 && !run.checkpoint_written);
        if due {
            if let Err(e) = run.tick(&ctl).and_then(|_| run.checkpoint(&export)) {
                run.broken = true;
                break Outcome::Failed(e);
            }
            last_cp = Instant::now();
            since_cp = 0;
            cp_signature = signature;
        }
    };
    match outcome {
        Outcome::Complete => {
            run.tick(&ctl)?;
            if let Some(p) = run.parquet.as_mut() {
                p.commit()?;
            }
            let files = run.outputs.finish()?;
            run.write_manifest(&ctl)?;
            // What the manifest's counts promised against what was written.
            for (name, count, written, n, example) in run.outputs.count_mismatches(&ctl.files()) {
                let w = format!(
                    "{name}: the manifest's count says {} records, {} were written ({} file{} differ{}, e.g. {example})",
                    HumanCount(count),
                    HumanCount(written),
                    HumanCount(n as u64),
                    if n == 1 { "" } else { "s" },
                    if n == 1 { "s" } else { "" },
                );
                run.display.line(&format!("warning: {w}"));
                run.log.event("warning", json!({ "message": w }));
                summary["countMismatches"][name] =
                    json!({"count": count, "written": written, "files": n});
            }
            let t = run.outputs.totals.clone();
            let resources = t.records.values().sum::<u64>() + t.error_records + t.deleted_records;
            let duration_ms = export_duration_ms(&run.started_at);
            run.log.event(
                "export_complete",
                json!({
                    "files": files.files,
                    "resources": resources,
                    "bytes": t.ndjson_bytes,
                    // No attachments are fetched (yet): none, as a number.
                    "attachments": 0,
                    "duration": duration_ms,
                }),
            );
            run.log.flush(true)?;
            let cp_path = run.out.join(CHECKPOINT_FILE);
            if cp_path.exists() {
                std::fs::remove_file(&cp_path).map_err(|e| {
                    CliError::io(format_args!("cannot remove {}", cp_path.display()), &e)
                })?;
            }
            remove_lists(&run.out)?;
            util::sync_dir(&run.out);
            // Only a valid FHIR instant may become the next _since (the engine warns of others).
            let tt = ctl.transaction_time();
            if let Some(s) = &run.since_auto {
                match &tt {
                    Some(tt) => {
                        state::store(&s.state_file, run.perms, &s.base_url, &s.target, tt)?;
                        run.display.line(&format!(
                            "--since auto: next export of this target starts from {tt} ({})",
                            s.state_file.display()
                        ));
                    }
                    None => run.display.line(
                        "--since auto: the manifest has no valid transactionTime; the state file is unchanged",
                    ),
                }
            }
            summary["transactionTime"] = json!(tt);
            summary["records"] = json!(t.records);
            summary["errorRecords"] = json!(t.error_records);
            summary["deletedRecords"] = json!(t.deleted_records);
            summary["bytes"] = json!(t.ndjson_bytes);
            summary["bytesOnDisk"] = json!(files.bytes_on_disk);
            // The per-file listing only for --json (with many files it is large).
            let files = if a.json {
                run.outputs.written(&ctl.files())
            } else {
                Vec::new()
            };
            summary["files"] = Value::Array(
                files
                    .iter()
                    .map(|f| {
                        json!({
                            "path": f.rel,
                            "kind": f.kind.name(),
                            "type": f.resource_type,
                            "url": if f.url.is_empty() { Value::Null } else { json!(redact_url(&f.url)) },
                            "records": f.state.records,
                            "bytes": f.state.bytes,
                            "ndjsonBytes": f.state.ndjson_bytes,
                        })
                    })
                    .collect(),
            );
            if let Some(p) = &run.parquet {
                let parts = p.state();
                summary["parquet"] = json!({
                    "parts": parts.values().map(|t| t.parts).sum::<u32>(),
                    "types": parts,
                    "files": if a.json { json!(p.files()) } else { json!([]) },
                });
            }
            summary["retries"] = json!(ctl.progress().retries);
            Ok(Outcome::Complete)
        }
        Outcome::Interrupted => {
            // Everything written so far goes into a final checkpoint; the server job stays.
            run.tick(&ctl)?;
            run.checkpoint(&export)?;
            // Leave without joining the download threads (they may sit in a slow read).
            std::mem::forget(export);
            Ok(Outcome::Interrupted)
        }
        Outcome::Failed(e) => {
            if !run.broken {
                let _ = run.tick(&ctl);
                // What was received before the failure is kept: a rerun resumes from here.
                if ctl.status_url().is_some() {
                    let _ = run.checkpoint(&export);
                }
            }
            Ok(Outcome::Failed(e))
        }
    }
}

/// Remove the file list and the complete files' list (the export is over).
pub fn remove_lists(dir: &Path) -> Result<(), CliError> {
    for name in [FILES_FILE, DONE_FILE] {
        let p = dir.join(name);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(CliError::io(
                    format_args!("cannot remove {}", p.display()),
                    &e,
                ))
            }
        }
    }
    Ok(())
}

/// Milliseconds since the export started (across resumes), like the SMART client's `duration`.
fn export_duration_ms(started_at: &str) -> u64 {
    parse_rfc3339_ms(started_at)
        .and_then(|start| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_millis() as u64;
            now.checked_sub(start)
        })
        .unwrap_or(0)
}

/// Milliseconds since 1970 of an RFC 3339 timestamp (such as [`util::rfc3339`] writes).
fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_own_timestamps() {
        let t = std::time::UNIX_EPOCH + Duration::from_millis(1_709_251_199_123);
        assert_eq!(parse_rfc3339_ms(&util::rfc3339(t)), Some(1_709_251_199_123));
        assert_eq!(parse_rfc3339_ms("1969-12-31T23:59:59.999Z"), None);
        assert_eq!(parse_rfc3339_ms("2024-02-30T00:00:00.000Z"), None);
        assert_eq!(parse_rfc3339_ms("not a time"), None);
    }
}
