//! What the threads of one export share to stop together and to report: its [`State`], the
//! stop and cancel signals, the first error, the counters of the progress, the warnings and the
//! long wait in progress. It is the export's [`Waiter`]: retry waits end early when it stops
//! and show in the progress.

use crate::error::{escape_controls, Error};
use crate::events::{fields, Events};
use crate::http::retry::Waiter;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

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

/// See the module documentation.
pub(crate) struct Monitor {
    state: AtomicU32,
    cancelled: AtomicBool,
    stopping: AtomicBool,
    cancel_tx: Mutex<Option<Sender<()>>>,
    stop_tx: Mutex<Option<Sender<()>>>,
    /// Disconnected when the export stops: a `select!` on it ends a blocked send at once.
    pub(crate) stop_rx: Receiver<()>,
    error: Mutex<Option<Error>>,
    warnings: Mutex<(Vec<String>, u32)>,
    wait: Mutex<Option<(u64, Wait)>>,
    wait_ids: AtomicU64,
    /// The server's last `X-Progress` text.
    pub(crate) server_progress: Mutex<Option<String>>,
    /// Status requests made.
    pub(crate) polls: AtomicU32,
    /// Bytes of NDJSON received (after decoding).
    pub(crate) bytes: AtomicU64,
    pub(crate) records: AtomicU64,
    pub(crate) files_done: AtomicU32,
    /// Attempts repeated after retryable failures.
    pub(crate) retries: AtomicU32,
    /// Invalid lines skipped (policy `skip`).
    pub(crate) invalid_lines: AtomicU64,
    /// Documents fetched for attachments (config `attachments`), and attachments reported
    /// as error records.
    pub(crate) attachments_fetched: AtomicU64,
    pub(crate) attachment_errors: AtomicU64,
    /// Called once, when the export first stops (the engine wakes what waits for it).
    on_stop: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
    /// What the export does, for the caller to pull.
    pub(crate) events: Events,
}

impl Monitor {
    /// A monitor keeping up to `events` events, and the receiver a consumer selects on to wake
    /// at a cancel.
    pub(crate) fn new(events: usize) -> (Monitor, Receiver<()>) {
        let (cancel_tx, cancel_rx) = bounded::<()>(0);
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let m = Monitor {
            state: AtomicU32::new(State::KickingOff as u32),
            cancelled: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            cancel_tx: Mutex::new(Some(cancel_tx)),
            stop_tx: Mutex::new(Some(stop_tx)),
            stop_rx,
            error: Mutex::new(None),
            warnings: Mutex::new((Vec::new(), 0)),
            wait: Mutex::new(None),
            wait_ids: AtomicU64::new(0),
            server_progress: Mutex::new(None),
            polls: AtomicU32::new(0),
            bytes: AtomicU64::new(0),
            records: AtomicU64::new(0),
            files_done: AtomicU32::new(0),
            retries: AtomicU32::new(0),
            invalid_lines: AtomicU64::new(0),
            attachments_fetched: AtomicU64::new(0),
            attachment_errors: AtomicU64::new(0),
            on_stop: Mutex::new(None),
            events: Events::new(events),
        };
        (m, cancel_rx)
    }

    /// The state as the coordinator last set it.
    pub(crate) fn state(&self) -> State {
        State::from_u32(self.state.load(Ordering::Acquire))
    }

    pub(crate) fn set_state(&self, s: State) {
        self.state.store(s as u32, Ordering::Release);
    }

    /// The state to report: the outcome as soon as it is decided, not when the threads have
    /// wound down.
    pub(crate) fn reported_state(&self) -> State {
        if self.cancelled() {
            State::Cancelled
        } else if self.error.lock().is_some() {
            State::Failed
        } else {
            self.state()
        }
    }

    pub(crate) fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Stop every thread of the export (sleeps and blocked sends end at once).
    pub(crate) fn stop(&self) {
        let first = !self.stopping.swap(true, Ordering::AcqRel);
        self.stop_tx.lock().take();
        if first {
            let f = self.on_stop.lock().take();
            if let Some(f) = f {
                f();
            }
        }
    }

    /// What to call when the export first stops (once; after a stop, at once).
    pub(crate) fn on_stop(&self, f: Box<dyn Fn() + Send + Sync>) {
        if self.stopping() {
            f();
        } else {
            *self.on_stop.lock() = Some(f);
            // A stop between the check and the store has not seen it.
            if self.stopping() {
                let f = self.on_stop.lock().take();
                if let Some(f) = f {
                    f();
                }
            }
        }
    }

    /// Cancel: stop, and wake a consumer blocked in a pull. No effect once the export ended.
    pub(crate) fn cancel(&self) {
        if self.state().is_terminal() || self.error.lock().is_some() {
            return;
        }
        self.cancelled.store(true, Ordering::Release);
        self.cancel_tx.lock().take();
        self.stop();
    }

    /// Record the first fatal error and stop everything.
    pub(crate) fn fail(&self, e: Error) {
        {
            let mut err = self.error.lock();
            if err.is_none() && !self.cancelled() {
                *err = Some(e);
            }
        }
        self.stop();
    }

    /// Set the error that ends the export (the coordinator's own, after the threads ended).
    pub(crate) fn set_error(&self, e: Error) {
        *self.error.lock() = Some(e);
    }

    /// The error that failed the export.
    pub(crate) fn error(&self) -> Option<Error> {
        self.error.lock().clone()
    }

    pub(crate) fn has_error(&self) -> bool {
        self.error.lock().is_some()
    }

    /// Sleep, waking early when the export stops; false when it stopped.
    pub(crate) fn sleep(&self, d: Duration) -> bool {
        matches!(self.stop_rx.recv_timeout(d), Err(RecvTimeoutError::Timeout))
    }

    /// Sleep `d`, showing it in the progress when it is long; false when the export stopped.
    pub(crate) fn wait_shown(&self, d: Duration, reason: &str) -> bool {
        let id = self.show_wait(d, reason);
        let awake = self.sleep(d);
        self.end_wait(id);
        awake
    }

    /// A wait of `d` begins (without a thread sleeping through it: the engine's timer holds it):
    /// show it in the progress when it is long. Pass what it returns to [`Monitor::end_wait`].
    pub(crate) fn show_wait(&self, d: Duration, reason: &str) -> Option<u64> {
        if d < SHOWN_WAIT {
            return None;
        }
        let id = self.wait_ids.fetch_add(1, Ordering::Relaxed);
        let w = Wait {
            reason: escape_controls(reason).into_owned(),
            until: SystemTime::now() + d,
        };
        // The wait that ends last is the one to show.
        let mut cur = self.wait.lock();
        if cur.as_ref().map_or(true, |(_, c)| c.until <= w.until) {
            *cur = Some((id, w));
        }
        Some(id)
    }

    /// The wait [`Monitor::show_wait`] began is over.
    pub(crate) fn end_wait(&self, id: Option<u64>) {
        let Some(id) = id else { return };
        let mut cur = self.wait.lock();
        if cur.as_ref().is_some_and(|(i, _)| *i == id) {
            *cur = None;
        }
    }

    /// The long wait in progress, if any.
    pub(crate) fn wait(&self) -> Option<Wait> {
        self.wait.lock().as_ref().map(|(_, w)| w.clone())
    }

    /// Note a warning (kept up to MAX_WARNINGS, all counted; each one an event).
    pub(crate) fn warn(&self, message: String) {
        let message = escape_controls(&message).into_owned();
        if self.events.enabled() {
            self.events
                .push("warning", fields! {"message" => message.clone()});
        }
        let mut w = self.warnings.lock();
        w.1 = w.1.saturating_add(1);
        if w.0.len() < MAX_WARNINGS {
            w.0.push(message);
        }
    }

    /// Note an event.
    pub(crate) fn event(
        &self,
        kind: &'static str,
        fields: serde_json::Map<String, serde_json::Value>,
    ) {
        self.events.push(kind, fields);
    }

    /// How many warnings there were (a progress snapshot needs only this).
    pub(crate) fn warning_count(&self) -> u32 {
        self.warnings.lock().1
    }

    /// The warnings kept (oldest first) and how many there were.
    pub(crate) fn warnings(&self) -> (Vec<String>, u32) {
        self.warnings.lock().clone()
    }
}

impl Waiter for Monitor {
    fn stopping(&self) -> bool {
        Monitor::stopping(self)
    }
    fn wait_retry(&self, d: Duration, reason: &str) -> bool {
        self.retries.fetch_add(1, Ordering::Relaxed);
        self.wait_shown(d, reason)
    }
    fn warn(&self, message: String) {
        Monitor::warn(self, message)
    }
    fn event(&self, kind: &'static str, fields: serde_json::Map<String, serde_json::Value>) {
        Monitor::event(self, kind, fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn warnings_are_capped_counted_and_escaped() {
        let (m, _) = Monitor::new(10);
        for i in 0..150 {
            m.warn(format!("w{i}\x1b[31m"));
        }
        let (kept, n) = m.warnings();
        assert_eq!((kept.len(), n), (MAX_WARNINGS, 150));
        assert!(!kept[0].contains('\x1b'), "{:?}", kept[0]);
    }

    #[test]
    fn the_first_outcome_wins() {
        let (m, cancel_rx) = Monitor::new(10);
        m.fail(Error::new(ErrorCode::Network, "first"));
        m.fail(Error::new(ErrorCode::Timeout, "second"));
        m.cancel();
        assert_eq!(m.error().unwrap().message, "first");
        assert_eq!(m.reported_state(), State::Failed);
        assert!(cancel_rx.try_recv().is_err() && !m.cancelled());
        assert!(
            !m.sleep(Duration::from_secs(5)),
            "a stopped export does not sleep"
        );

        let (m, cancel_rx) = Monitor::new(10);
        m.cancel();
        m.fail(Error::new(ErrorCode::Network, "after the cancel"));
        assert!(m.error().is_none());
        assert_eq!(m.reported_state(), State::Cancelled);
        assert!(
            cancel_rx.recv().is_err(),
            "the consumer wakes: the channel closed"
        );
    }

    #[test]
    fn only_long_waits_show() {
        let (m, _) = Monitor::new(10);
        assert!(m.wait_shown(Duration::from_millis(1), "short"));
        assert_eq!(m.wait(), None);
        std::thread::scope(|s| {
            s.spawn(|| m.wait_shown(Duration::from_secs(30), "long\n"));
            let t = std::time::Instant::now();
            while m.wait().is_none() && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(5));
            }
            let shown = m.wait();
            m.stop();
            assert_eq!(shown.unwrap().reason, "long\\u{a}");
        });
        assert_eq!(m.wait(), None, "a wait that ended is not shown");
    }
}
