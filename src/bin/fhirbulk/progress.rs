//! What the user sees while an export runs: a live indicatif display on a terminal (server
//! progress while waiting; files, bytes, records, rate and ETA while downloading), plain log
//! lines on stderr otherwise (each with its time), nothing with `--quiet`. Numbers are written
//! the same way live and at the end (`indicatif`'s `HumanCount`, `HumanBytes`).

use fhirbulk::{Progress, State};
use indicatif::{
    HumanBytes, HumanCount, HumanDuration, ProgressBar, ProgressDrawTarget, ProgressStyle,
};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Starting,
    Waiting,
    Downloading,
}

enum Mode {
    Bar(ProgressBar),
    Plain,
    Quiet,
}

pub struct Display {
    mode: Mode,
    phase: Phase,
    last_plain: Instant,
    last_xprogress: Option<String>,
    download_start: Option<(Instant, u64)>,
    /// The end of the last long wait printed (plain mode prints each once).
    last_wait: Option<std::time::SystemTime>,
}

/// What the consumer has written so far (the engine's counters are per process).
pub struct Written {
    pub records: u64,
    pub bytes: u64,
    pub files_done: usize,
    pub files_total: usize,
    /// Sum of the manifest's `count` hints, when every file has one.
    pub expected_records: Option<u64>,
}

/// A plain progress line on stderr (not a terminal: a log), with the time it was written:
/// `2026-12-01T10:31:07.123Z fhirbulk: ...`.
fn plain(text: &str) {
    eprintln!("{} fhirbulk: {text}", crate::util::now());
}

/// "waiting 42 seconds (until 10:31:07 UTC): <reason>" while the engine waits long.
fn wait_text(p: &Progress) -> Option<String> {
    let w = p.wait.as_ref()?;
    let left = w
        .until
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    Some(format!(
        "waiting {} (until {} UTC): {}",
        HumanDuration(left),
        crate::util::clock_utc(w.until),
        w.reason
    ))
}

impl Display {
    pub fn new(quiet: bool) -> Display {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(10));
            bar.set_style(
                ProgressStyle::with_template("{spinner:.green} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar.set_message("kicking off the export");
            Mode::Bar(bar)
        } else {
            Mode::Plain
        };
        Display {
            mode,
            phase: Phase::Starting,
            last_plain: Instant::now(),
            last_xprogress: None,
            download_start: None,
            last_wait: None,
        }
    }

    /// A line of its own (above the live display on a terminal).
    pub fn line(&self, text: &str) {
        match &self.mode {
            Mode::Bar(b) => b.println(format!("fhirbulk: {text}")),
            Mode::Plain => plain(text),
            Mode::Quiet => {}
        }
    }

    pub fn update(&mut self, p: &Progress, w: &Written) {
        let phase = match p.state {
            State::KickingOff => Phase::Starting,
            State::Waiting => Phase::Waiting,
            State::Downloading | State::Done => Phase::Downloading,
            // The end is told by the caller: a kick-off that failed did not download anything.
            State::Failed | State::Cancelled => return,
        };
        let changed = phase != self.phase;
        self.phase = phase;
        if let (Mode::Plain, Some(w)) = (&self.mode, &p.wait) {
            if self.last_wait != Some(w.until) {
                self.last_wait = Some(w.until);
                if let Some(t) = wait_text(p) {
                    plain(&t);
                }
            }
        }
        match phase {
            Phase::Starting => {
                if let Mode::Bar(b) = &self.mode {
                    b.set_message(match wait_text(p) {
                        Some(w) => format!("kicking off the export; {w}"),
                        None => "kicking off the export".to_owned(),
                    });
                }
            }
            Phase::Waiting => {
                let xp = p
                    .server_progress
                    .clone()
                    .unwrap_or_else(|| "in progress".into());
                let mut text =
                    format!("waiting for the server: {xp} ({} status requests)", p.polls);
                if let Some(w) = wait_text(p) {
                    text = format!("{text}; {w}");
                }
                match &self.mode {
                    Mode::Bar(b) => b.set_message(text),
                    Mode::Plain => {
                        if changed
                            || (self.last_xprogress.as_deref() != Some(xp.as_str())
                                && self.last_plain.elapsed() >= Duration::from_secs(2))
                        {
                            plain(&text);
                            self.last_plain = Instant::now();
                            self.last_xprogress = Some(xp);
                        }
                    }
                    Mode::Quiet => {}
                }
            }
            Phase::Downloading => {
                if changed || self.download_start.is_none() {
                    self.download_start = Some((Instant::now(), w.records));
                    if let Mode::Bar(b) = &self.mode {
                        b.set_style(
                            ProgressStyle::with_template(
                                "{spinner:.green} {elapsed_precise} {bar:20.cyan/blue} {wide_msg}",
                            )
                            .unwrap_or_else(|_| ProgressStyle::default_bar())
                            .progress_chars("=> "),
                        );
                    }
                }
                let (t0, r0) = self.download_start.unwrap_or((Instant::now(), 0));
                let secs = t0.elapsed().as_secs_f64().max(0.001);
                let rate = (w.records.saturating_sub(r0)) as f64 / secs;
                let eta = match w.expected_records {
                    // try_from: a huge count hint must not panic.
                    Some(total) if rate > 0.0 && total >= w.records => {
                        Duration::try_from_secs_f64((total - w.records) as f64 / rate).ok()
                    }
                    _ if w.files_done > 0 && w.files_total > w.files_done => {
                        let per_file = secs / w.files_done as f64;
                        Duration::try_from_secs_f64(
                            per_file * (w.files_total - w.files_done) as f64,
                        )
                        .ok()
                    }
                    _ => None,
                };
                // While the engine waits out a Retry-After or a backoff, say so instead of an
                // ETA (which would be a guess, or 0:00).
                let wait = wait_text(p);
                let eta = if wait.is_some() { None } else { eta };
                // Most important first: a narrow terminal cuts the end.
                let text = format!(
                    "{}{} records, {} rec/s{}, files {}/{}, {}",
                    wait.map(|w| format!("{w}; ")).unwrap_or_default(),
                    HumanCount(w.records),
                    HumanCount(rate as u64),
                    eta.map(|d| format!(", ETA {}", HumanDuration(d)))
                        .unwrap_or_default(),
                    HumanCount(w.files_done as u64),
                    HumanCount(w.files_total as u64),
                    HumanBytes(w.bytes),
                );
                match &self.mode {
                    Mode::Bar(b) => {
                        match w.expected_records {
                            Some(total) if total > 0 => {
                                b.set_length(total);
                                b.set_position(w.records.min(total));
                            }
                            _ => {
                                b.set_length(w.files_total.max(1) as u64);
                                b.set_position(w.files_done as u64);
                            }
                        }
                        b.set_message(text);
                    }
                    Mode::Plain => {
                        if changed || self.last_plain.elapsed() >= Duration::from_secs(5) {
                            plain(&format!("downloading: {text}"));
                            self.last_plain = Instant::now();
                        }
                    }
                    Mode::Quiet => {}
                }
            }
        }
    }

    /// Remove the live display.
    pub fn finish(&self) {
        if let Mode::Bar(b) = &self.mode {
            b.finish_and_clear();
        }
    }
}
