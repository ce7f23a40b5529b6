//! The threads every export of the process shares, so that their number does not grow with the
//! number of exports:
//!
//! - the **control** threads (at most [`CONTROL_THREADS`]) run the exports' control steps:
//!   kick-off, one status poll, a manifest and its pages, the final DELETE;
//! - one **timer** thread holds the exports that wait between status polls (or before a retry
//!   of one): a waiting export holds no thread, only its entry here, and a stop (cancel or
//!   failure) ends its wait at once;
//! - the **download** threads (at most [`max_downloads`], a process-wide cap) take the exports'
//!   files in turn: each export has at most one place in their queue, and takes it again at the
//!   back after each file it starts, so an export with many files cannot starve another; within
//!   that, an export runs at most its `concurrency` files at once.
//!
//! Threads start when work comes and leave after [`IDLE`] without any. A thread pool of this
//! shape is small enough to write here; an async runtime would have meant rewriting the
//! engine's blocking control path (reqwest's blocking client) for no gain at this scale.

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use once_cell::sync::Lazy;
use parking_lot::{Condvar, Mutex};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// Work for a pool thread.
pub(crate) type Task = Box<dyn FnOnce() + Send>;

/// The most control threads (kick-offs, polls and manifests of all exports share them).
pub const CONTROL_THREADS: usize = 8;
/// The default process-wide cap on files downloading at once (see [`set_max_downloads`]).
pub const DEFAULT_MAX_DOWNLOADS: usize = 32;
/// A pool thread without work for this long leaves.
pub const IDLE: Duration = Duration::from_secs(30);

/// A pool of threads that run tasks in the order they came (see the module documentation).
pub(crate) struct Pool {
    name: &'static str,
    tx: Sender<Task>,
    rx: Receiver<Task>,
    threads: AtomicUsize,
    idle: AtomicUsize,
    max: AtomicUsize,
}

impl Pool {
    fn new(name: &'static str, max: usize) -> Pool {
        let (tx, rx) = unbounded();
        Pool {
            name,
            tx,
            rx,
            threads: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        }
    }

    /// Run `task` on a pool thread, starting one when all are busy and the cap allows.
    pub(crate) fn spawn(&'static self, task: Task) {
        // The receiver lives in `self`: the channel never closes.
        let _ = self.tx.send(task);
        self.grow();
    }

    /// Threads now in the pool.
    pub(crate) fn threads(&self) -> usize {
        self.threads.load(SeqCst)
    }

    fn grow(&'static self) {
        loop {
            let n = self.threads.load(SeqCst);
            if n >= self.max.load(SeqCst) || self.rx.len() <= self.idle.load(SeqCst) {
                return;
            }
            if self
                .threads
                .compare_exchange(n, n + 1, SeqCst, SeqCst)
                .is_err()
            {
                continue;
            }
            // Counted idle from now: the next round does not start another for the same task.
            self.idle.fetch_add(1, SeqCst);
            let started = std::thread::Builder::new()
                .name(format!("fhirbulk-{}", self.name))
                .spawn(move || self.work());
            if started.is_err() {
                // The queued task waits for a thread that is busy now (or the next spawn).
                self.idle.fetch_sub(1, SeqCst);
                self.threads.fetch_sub(1, SeqCst);
                return;
            }
        }
    }

    /// A pool thread (counted idle by `grow` when it starts).
    fn work(&'static self) {
        let mut counted = true;
        loop {
            // Over the cap (it was lowered): leave, one thread at a time.
            let n = self.threads.load(SeqCst);
            if n > self.max.load(SeqCst)
                && self
                    .threads
                    .compare_exchange(n, n - 1, SeqCst, SeqCst)
                    .is_ok()
            {
                if counted {
                    self.idle.fetch_sub(1, SeqCst);
                }
                self.grow();
                return;
            }
            if !counted {
                self.idle.fetch_add(1, SeqCst);
            }
            counted = false;
            let got = self.rx.recv_timeout(IDLE);
            self.idle.fetch_sub(1, SeqCst);
            match got {
                // A task catches its own panics; this one keeps the thread alive if it does not.
                Ok(task) => {
                    let _ = catch_unwind(AssertUnwindSafe(task));
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    self.threads.fetch_sub(1, SeqCst);
                    // A task sent after the timeout, while `idle` still counted this thread, would
                    // find no thread to start: look once more before leaving.
                    if self.rx.is_empty() {
                        return;
                    }
                    self.threads.fetch_add(1, SeqCst);
                }
            }
        }
    }
}

/// One wait: its task runs on a control thread when the time comes, or at once when `early`
/// says so after a [`Timer::poke`].
struct Entry {
    early: Box<dyn Fn() -> bool + Send>,
    task: Task,
}

#[derive(Default)]
struct Waits {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    entries: HashMap<u64, Entry>,
    next_id: u64,
    poked: bool,
    started: bool,
}

/// The timer thread's waits (see the module documentation).
pub(crate) struct Timer {
    waits: Mutex<Waits>,
    cv: Condvar,
}

impl Timer {
    /// Run `task` on a control thread after `d`, or as soon as `early()` holds after a poke.
    pub(crate) fn after(
        &'static self,
        d: Duration,
        early: Box<dyn Fn() -> bool + Send>,
        task: Task,
    ) {
        let at = Instant::now() + d;
        let mut w = self.waits.lock();
        let id = w.next_id;
        w.next_id += 1;
        w.heap.push(Reverse((at, id)));
        w.entries.insert(id, Entry { early, task });
        if !w.started {
            let started = std::thread::Builder::new()
                .name("fhirbulk-timer".into())
                .spawn(move || self.run());
            if started.is_err() {
                // No timer: run the task now (the wait is cut short, never lost).
                let e = w.entries.remove(&id);
                drop(w);
                if let Some(e) = e {
                    control().spawn(e.task);
                }
                return;
            }
            w.started = true;
        }
        self.cv.notify_one();
    }

    /// Something may have stopped: run now the tasks whose `early` holds.
    pub(crate) fn poke(&self) {
        self.waits.lock().poked = true;
        self.cv.notify_one();
    }

    /// Waits held now.
    pub(crate) fn len(&self) -> usize {
        self.waits.lock().entries.len()
    }

    fn run(&'static self) {
        let mut w = self.waits.lock();
        loop {
            let now = Instant::now();
            let mut due = Vec::new();
            while let Some(&Reverse((at, id))) = w.heap.peek() {
                if at > now {
                    break;
                }
                w.heap.pop();
                // Gone when it ran early.
                if let Some(e) = w.entries.remove(&id) {
                    due.push(e.task);
                }
            }
            if w.poked {
                w.poked = false;
                let early: Vec<u64> = w
                    .entries
                    .iter()
                    .filter(|(_, e)| (e.early)())
                    .map(|(id, _)| *id)
                    .collect();
                for id in early {
                    if let Some(e) = w.entries.remove(&id) {
                        due.push(e.task);
                    }
                }
            }
            if !due.is_empty() {
                parking_lot::MutexGuard::unlocked(&mut w, || {
                    for t in due {
                        control().spawn(t);
                    }
                });
                continue;
            }
            match w.heap.peek() {
                Some(&Reverse((at, _))) => {
                    self.cv.wait_until(&mut w, at);
                }
                None => self.cv.wait(&mut w),
            }
        }
    }
}

static CONTROL: Lazy<Pool> = Lazy::new(|| Pool::new("control", CONTROL_THREADS));
static DOWNLOADS: Lazy<Pool> = Lazy::new(|| {
    let max = std::env::var("FHIRBULK_MAX_DOWNLOADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_MAX_DOWNLOADS);
    Pool::new("download", max)
});
static TIMER: Lazy<Timer> = Lazy::new(|| Timer {
    waits: Mutex::default(),
    cv: Condvar::new(),
});

pub(crate) fn control() -> &'static Pool {
    &CONTROL
}

pub(crate) fn downloads() -> &'static Pool {
    &DOWNLOADS
}

pub(crate) fn timer() -> &'static Timer {
    &TIMER
}

/// The process-wide cap on files downloading at once, over all exports (default
/// [`DEFAULT_MAX_DOWNLOADS`], or the environment variable `FHIRBULK_MAX_DOWNLOADS` read at the
/// first export). Each export still downloads at most its `concurrency` files at once.
pub fn max_downloads() -> usize {
    DOWNLOADS.max.load(SeqCst)
}

/// Set the process-wide cap on files downloading at once (at least 1; takes effect for the
/// files started from now on: threads over a lowered cap leave after their file).
pub fn set_max_downloads(n: usize) {
    DOWNLOADS.max.store(n.max(1), SeqCst);
    DOWNLOADS.grow();
}

/// The engine's threads now: control, download, and whether the timer runs.
pub fn threads() -> (usize, usize, bool) {
    (
        CONTROL.threads(),
        DOWNLOADS.threads(),
        TIMER.waits.lock().started,
    )
}

/// The exports waiting now between status polls (held by the timer, not by a thread).
pub fn waiting() -> usize {
    TIMER.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    static POOL: Lazy<Pool> = Lazy::new(|| Pool::new("test", 3));

    #[test]
    fn a_pool_runs_every_task_within_its_cap() {
        let (tx, rx) = unbounded();
        for i in 0..50 {
            let tx = tx.clone();
            POOL.spawn(Box::new(move || {
                std::thread::sleep(Duration::from_millis(2));
                let _ = tx.send((i, POOL.threads()));
            }));
        }
        let mut seen: Vec<(i32, usize)> = (0..50).map(|_| rx.recv().unwrap()).collect();
        seen.sort();
        assert_eq!(
            seen.iter().map(|s| s.0).collect::<Vec<_>>(),
            (0..50).collect::<Vec<_>>()
        );
        assert!(seen.iter().all(|s| s.1 <= 3), "{seen:?}");
    }

    static SHRINK: Lazy<Pool> = Lazy::new(|| Pool::new("shrink", 4));

    #[test]
    fn threads_over_a_lowered_cap_leave_after_their_task() {
        let (tx, rx) = unbounded();
        let run = |n: usize| {
            for _ in 0..n {
                let tx = tx.clone();
                SHRINK.spawn(Box::new(move || {
                    std::thread::sleep(Duration::from_millis(5));
                    let _ = tx.send(SHRINK.threads());
                }));
            }
            (0..n).map(|_| rx.recv().unwrap()).max().unwrap()
        };
        assert!(run(40) <= 4);
        SHRINK.max.store(1, SeqCst);
        // Each thread leaves after the next task it runs: soon one remains.
        assert!((0..20).any(|_| run(8) == 1), "{} threads", SHRINK.threads());
    }

    #[test]
    fn a_poke_ends_a_wait_early() {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = unbounded();
        let s = stop.clone();
        let t = Instant::now();
        timer().after(
            Duration::from_secs(600),
            Box::new(move || s.load(SeqCst)),
            Box::new(move || {
                let _ = tx.send(());
            }),
        );
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        stop.store(true, SeqCst);
        timer().poke();
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(10));
        let (tx, rx) = unbounded();
        timer().after(
            Duration::from_millis(20),
            Box::new(|| false),
            Box::new(move || {
                let _ = tx.send(());
            }),
        );
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
    }
}
