//! `fhirbulk export`: run (or resume) an export into a directory.

use crate::cli::ExportArgs;
use crate::config::{self, Since};
use crate::eventlog::EventLog;
use crate::output::{self, FileState, Outputs, Totals};
use crate::progress::{Display, Written};
use crate::state;
use crate::util::{self, CliError, EXIT_INTERRUPTED, EXIT_OK};
use fhirbulk::error::redact_url;
use fhirbulk::kickoff::{kickoff_query, kickoff_url};
use fhirbulk::{Config, Controller, Export, Method, Next, State};
use indicatif::{HumanBytes, HumanCount};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const CHECKPOINT_FILE: &str = ".fhirbulk-checkpoint.json";
const CLI_CHECKPOINT_VERSION: u32 = 1;
/// Records per pull.
const BATCH: usize = 4096;
/// How often the display and the event log look at the engine.
const TICK: Duration = Duration::from_millis(100);

static INTERRUPTS: AtomicU32 = AtomicU32::new(0);

/// Which events are already in the log (kept in the checkpoint, so a resumed run does not
/// repeat them).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Logged {
    pub kickoff: bool,
    pub status_complete: bool,
    pub requested: BTreeSet<u32>,
    pub completed: BTreeSet<u32>,
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
    /// Each output file's length and counts at the checkpoint.
    pub files: BTreeMap<String, FileState>,
    pub log_bytes: u64,
    pub totals: Totals,
    pub logged: Logged,
    #[serde(default)]
    pub since_auto: Option<SinceAuto>,
}

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
fn request_fingerprint(c: &Config, gzip: bool) -> Value {
    json!({
        "base_url": c.base_url.trim_end_matches('/'),
        "kickoff": kickoff_url(c),
        "query": kickoff_query(c),
        "patients": c.patients,
        "method": format!("{:?}", c.method),
        "gzip": gzip,
    })
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
                if name.ends_with(".ndjson") && name != "log.ndjson" || name.ends_with(".ndjson.gz")
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
    cfg_for_cancel: Value,
    config_has_credentials: bool,
    request: Value,
    export_id: String,
    started_at: String,
    since_auto: Option<SinceAuto>,
    outputs: Outputs,
    log: EventLog,
    logged: Logged,
    display: Display,
    kickoff_detail: Value,
    last_polls: u32,
    /// Engine warnings already shown and logged (this process's engine counts from 0).
    warnings_seen: usize,
    /// Files and completed files taken from the engine so far (each tick asks for the rest only).
    files_seen: usize,
    completed_seen: usize,
    /// The sum of the manifest's `count` hints; None once one is missing or they overflow.
    expected_records: Option<u64>,
    checkpoint_written: bool,
    /// Set when a local write failed: the checkpoint on disk must stay as it is.
    broken: bool,
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

    /// Look at the engine: events for the log, the manifest, finished files, the display.
    fn tick(&mut self, ctl: &Controller) -> Result<(), CliError> {
        let p = ctl.progress();
        if !self.logged.kickoff {
            if let Some(url) = ctl.status_url() {
                let mut d = self.kickoff_detail.clone();
                d["errorCode"] = Value::Null;
                d["errorBody"] = Value::Null;
                self.log.event("kickoff", d);
                self.logged.kickoff = true;
                self.display
                    .line(&format!("export started; status URL {}", redact_url(&url)));
            }
        }
        if p.state == State::Waiting {
            // One event per status request answered "in progress" (several may fall between
            // two looks when the server asks for fast polling).
            while self.last_polls < p.polls {
                self.last_polls += 1;
                self.log.event(
                    "status_progress",
                    json!({"body": null, "xProgress": p.server_progress, "retryAfter": null}),
                );
            }
        }
        let waiting = matches!(p.state, State::KickingOff | State::Waiting);
        if !self.logged.status_complete && !waiting && p.error.is_none() {
            if let Some(m) = ctl.manifest() {
                let count = |k: &str| m.get(k).and_then(Value::as_array).map_or(0, Vec::len);
                self.log.event(
                    "status_complete",
                    json!({
                        "transactionTime": m.get("transactionTime"),
                        "outputFileCount": count("output"),
                        "deletedFileCount": count("deleted"),
                        "errorFileCount": count("error"),
                    }),
                );
                self.logged.status_complete = true;
                self.write_manifest(&m)?;
                self.display.line(&format!(
                    "manifest: {} files, transactionTime {}",
                    count("output") + count("error") + count("deleted"),
                    m.get("transactionTime")
                        .and_then(Value::as_str)
                        .unwrap_or("-")
                ));
            }
        }
        if p.warnings as usize > self.warnings_seen {
            let all = ctl.warnings();
            for w in all.iter().skip(self.warnings_seen) {
                self.log.event("warning", json!({ "message": w }));
                self.display.line(&format!("warning: {w}"));
            }
            self.warnings_seen = all.len().max(self.warnings_seen);
            if p.warnings as usize > all.len() && self.warnings_seen == all.len() {
                // The engine keeps the first 100; say once that there are more.
                self.display
                    .line("warning: more warnings than the engine keeps; see the progress count");
                self.warnings_seen = usize::MAX;
            }
        }
        // Only what is new since the last look: a tick costs the files that changed, not the
        // manifest.
        let new = ctl.files_from(self.files_seen);
        self.files_seen += new.len();
        self.outputs.sync_files(&new);
        for f in &new {
            // The server's hints: none when one is missing or they overflow.
            self.expected_records = match (self.expected_records, f.count) {
                (Some(sum), Some(c)) => sum.checked_add(c),
                _ => None,
            };
            if self.logged.requested.insert(f.index) {
                self.log.event(
                    "download_request",
                    json!({
                        "fileUrl": redact_url(&f.url),
                        "itemType": f.kind.name(),
                        "resourceType": f.resource_type,
                    }),
                );
            }
        }
        let done = ctl.completed_files_from(self.completed_seen);
        self.completed_seen += done.len();
        for i in done {
            if self.logged.completed.contains(&i) {
                continue; // logged by the run this one resumes
            }
            self.outputs.close_file(i as usize)?;
            let st = self
                .outputs
                .file_state(i as usize)
                .cloned()
                .unwrap_or_default();
            let url = ctl.file(i).map(|f| f.url).unwrap_or_default();
            self.log.event(
                "download_complete",
                json!({
                    "fileUrl": redact_url(&url),
                    "resourceCount": st.records,
                    "fileSize": st.ndjson_bytes,
                }),
            );
            self.logged.completed.insert(i);
        }
        let w = self.written(self.files_seen);
        self.display.update(&p, &w);
        Ok(())
    }

    fn write_manifest(&self, m: &Value) -> Result<(), CliError> {
        let path = self.out.join("manifest.json");
        let text = serde_json::to_vec_pretty(m).unwrap_or_default();
        util::write_atomic(&path, &text)
            .map_err(|e| CliError::io(format_args!("cannot write {}", path.display()), &e))
    }

    /// Flush the output files, then write the checkpoint atomically with their lengths.
    fn checkpoint(&mut self, export: &Export) -> Result<bool, CliError> {
        if self.broken {
            return Ok(false);
        }
        let Some(cp) = export.checkpoint_unread(0) else {
            return Ok(false);
        };
        self.outputs.flush_all(true)?;
        let log_bytes = self.log.flush(true)?;
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
            log_bytes,
            totals: self.outputs.totals.clone(),
            logged: self.logged.clone(),
            since_auto: self.since_auto.clone(),
        };
        let path = self.out.join(CHECKPOINT_FILE);
        let text = serde_json::to_vec(&doc).unwrap_or_default();
        util::write_atomic(&path, &text)
            .map_err(|e| CliError::io(format_args!("cannot write {}", path.display()), &e))?;
        self.checkpoint_written = true;
        Ok(true)
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
            self.log.event("kickoff", d);
            self.logged.kickoff = true;
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
    let request = request_fingerprint(&cfg, a.gzip);
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

    std::fs::create_dir_all(&out)
        .map_err(|e| CliError::io(format_args!("cannot create {}", out.display()), &e))?;
    let (outputs, log, logged, export_id, started_at, resumed) = match previous {
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
            output::truncate_to_checkpoint(&out, &prev.files)?;
            let log = EventLog::open(
                &out.join("log.ndjson"),
                &prev.export_id,
                Some(prev.log_bytes),
            )?;
            cfg.resume = Some(prev.checkpoint.clone());
            let records: u64 = prev.files.values().map(|f| f.records).sum();
            notes.push(format!(
                "resuming the export in {} from its checkpoint of {} ({records} records already written)",
                out.display(),
                prev.written_at
            ));
            let files: std::collections::HashMap<String, FileState> =
                prev.files.clone().into_iter().collect();
            (
                Outputs::new(&out, a.gzip, files, prev.totals.clone()),
                log,
                prev.logged.clone(),
                prev.export_id.clone(),
                prev.started_at.clone(),
                true,
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
            let log = EventLog::open(&out.join("log.ndjson"), &export_id, None)?;
            (
                Outputs::new(&out, a.gzip, Default::default(), Totals::default()),
                log,
                Logged::default(),
                export_id,
                util::now(),
                false,
            )
        }
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
    let mut run = Run {
        out: out.clone(),
        gzip: a.gzip,
        cfg_for_cancel: Value::Object(for_cancel),
        config_has_credentials: has_credentials,
        request,
        export_id,
        started_at,
        since_auto,
        outputs,
        log,
        logged,
        display,
        kickoff_detail,
        last_polls: 0,
        warnings_seen: 0,
        files_seen: 0,
        completed_seen: 0,
        expected_records: Some(0),
        checkpoint_written: false,
        broken: false,
    };
    summary["resumed"] = json!(resumed);

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
    let interval = Duration::from_millis(a.checkpoint_interval_ms.max(10));
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
        let due = since_cp >= a.checkpoint_records
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
            let files = run.outputs.finish()?;
            let manifest = ctl.manifest().unwrap_or(Value::Null);
            run.write_manifest(&manifest)?;
            let t = run.outputs.totals.clone();
            let resources = t.records.values().sum::<u64>() + t.error_records + t.deleted_records;
            let duration_ms = export_duration_ms(&run.started_at);
            run.log.event(
                "export_complete",
                json!({
                    "files": files.len(),
                    "resources": resources,
                    "bytes": t.ndjson_bytes,
                    "attachments": null,
                    "duration": duration_ms,
                }),
            );
            run.log.flush(true)?;
            let cp_path = run.out.join(CHECKPOINT_FILE);
            if cp_path.exists() {
                std::fs::remove_file(&cp_path).map_err(|e| {
                    CliError::io(format_args!("cannot remove {}", cp_path.display()), &e)
                })?;
                util::sync_dir(&run.out);
            }
            // Only a valid FHIR instant may become the next _since (the engine warns of others).
            let tt = ctl.transaction_time();
            if let Some(s) = &run.since_auto {
                match &tt {
                    Some(tt) => {
                        state::store(&s.state_file, &s.base_url, &s.target, tt)?;
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
            summary["bytesOnDisk"] = json!(files.iter().map(|f| f.state.bytes).sum::<u64>());
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
