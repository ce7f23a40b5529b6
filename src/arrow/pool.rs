//! Decoding on several threads: the reader hands each run of lines (one file's, one type) to
//! whichever of a few decode threads is free, each with its own per-type [`Decoder`]s, and takes their
//! batches as they fill. Parsing JSON is most of the cost of a batch; the download threads
//! mostly wait on the network, so the decode threads get the cores.
//!
//! Rows of a type come in batches from different threads: each batch holds rows in file order,
//! the batches of a type interleave. Every row comes once.

use super::decode::Decoder;
use crate::error::{Error, ErrorCode};
use arrow_array::RecordBatch;
use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};
use std::collections::HashMap;
use std::thread::JoinHandle;
use std::time::Duration;

/// Runs of lines queued per decode thread (each is one pull from the export: at most
/// `batch_rows` lines). The queue is shared: whichever thread is free takes the next run, so a
/// thread busy with a long run (or closing a Parquet part) holds no other back.
const QUEUE: usize = 2;

pub(crate) struct Lines {
    pub resource_type: String,
    /// The lines, one after the other.
    pub data: Vec<u8>,
    /// Where each line ends in `data`.
    pub ends: Vec<usize>,
    pub file_index: u32,
    /// Each line's number in its file.
    pub line_numbers: Vec<u64>,
}

enum Job {
    Lines(Lines),
    /// Hand out every filling batch (and close the open Parquet parts), then say so.
    Flush,
}

pub(crate) enum Out {
    Batch(String, RecordBatch),
    Failed(Error),
    /// One `Lines` job is done.
    Done,
    /// A thread flushed.
    Flushed,
}

/// Where a decode thread's full batches go: back to the reader, or (a Parquet dataset) into
/// the thread's own parts.
pub(crate) enum Sink {
    Reader,
    #[cfg(feature = "parquet")]
    Parquet(super::dataset::PartWriter),
}

pub(crate) struct Pool {
    /// The runs of lines, for any thread.
    lines: Option<Sender<Lines>>,
    /// Each thread's own: flushes.
    controls: Vec<Sender<()>>,
    results: Receiver<Out>,
    handles: Vec<JoinHandle<()>>,
    pub in_flight: usize,
    flushed: usize,
}

impl Pool {
    /// A decode thread per sink (at least 2; fewer is the reader's own thread).
    pub fn new(sinks: Vec<Sink>, batch_rows: usize) -> std::io::Result<Pool> {
        let (out_tx, results) = unbounded();
        let (lines_tx, lines_rx) = bounded::<Lines>(QUEUE * sinks.len().max(1));
        let mut controls = Vec::new();
        let mut handles = Vec::new();
        for (n, sink) in sinks.into_iter().enumerate() {
            let (tx, rx) = unbounded::<()>();
            let out = out_tx.clone();
            let lines = lines_rx.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("fhirbulk-arrow-{n}"))
                    .spawn(move || decode_thread(lines, rx, out, batch_rows, sink))?,
            );
            controls.push(tx);
        }
        Ok(Pool {
            lines: Some(lines_tx),
            controls,
            results,
            handles,
            in_flight: 0,
            flushed: 0,
        })
    }

    /// Whether another run of lines may be queued without waiting.
    pub fn has_room(&self) -> bool {
        self.in_flight < QUEUE * self.controls.len()
    }

    pub fn send(&mut self, lines: Lines) {
        self.in_flight += 1;
        // The decode threads only end when the senders are dropped (or all of them panicked:
        // then the results channel reports it as a failure).
        let sent = self.lines.as_ref().is_some_and(|l| l.send(lines).is_ok());
        if !sent {
            self.in_flight -= 1;
        }
    }

    /// Asks every thread to hand out what it holds ([`Pool::all_flushed`] counts the answers).
    /// Only with no run in flight (`in_flight == 0`): a thread's flush must come after every
    /// run it took; call again only after `all_flushed` said yes.
    pub fn flush(&mut self) {
        self.flushed = 0;
        for c in &self.controls {
            let _ = c.send(());
        }
    }

    /// Whether every thread has flushed.
    pub fn all_flushed(&self) -> bool {
        self.flushed >= self.controls.len()
    }

    /// The next result (None: waited `timeout` in vain). A thread that died is a failure.
    pub fn recv(&mut self, timeout: Option<Duration>) -> Option<Out> {
        let got = match timeout {
            None => self
                .results
                .recv()
                .map_err(|_| RecvTimeoutError::Disconnected),
            Some(t) => self.results.recv_timeout(t),
        };
        match got {
            Ok(o) => Some(self.account(o)),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(Out::Failed(Error::new(
                ErrorCode::Internal,
                "internal error: an Arrow decode thread ended",
            ))),
        }
    }

    pub fn try_recv(&mut self) -> Option<Out> {
        self.results.try_recv().ok().map(|o| self.account(o))
    }

    fn account(&mut self, o: Out) -> Out {
        match &o {
            Out::Done => self.in_flight = self.in_flight.saturating_sub(1),
            Out::Flushed => self.flushed += 1,
            _ => {}
        }
        o
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.lines = None;
        self.controls.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

fn decode_thread(
    lines: Receiver<Lines>,
    control: Receiver<()>,
    out: Sender<Out>,
    batch_rows: usize,
    mut sink: Sink,
) {
    let mut decoders: HashMap<String, Decoder> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    loop {
        let job = crossbeam_channel::select! {
            recv(lines) -> l => match l {
                Ok(l) => Job::Lines(l),
                Err(_) => return,
            },
            recv(control) -> c => match c {
                Ok(()) => Job::Flush,
                Err(_) => return,
            },
        };
        // A panic (a bug) fails the read instead of leaving the reader waiting for this job.
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_job(job, &mut decoders, &mut order, &out, batch_rows, &mut sink)
        }));
        if run.is_err() {
            let _ = out.send(Out::Failed(Error::new(
                ErrorCode::Internal,
                "internal error: a panic in an Arrow decode thread was caught",
            )));
            return;
        }
    }
}

/// Hand a full (or flushed) batch to the sink (`decoders`: the thread's other types, see
/// [`super::write_part`]).
fn emit(
    sink: &mut Sink,
    decoders: &mut HashMap<String, Decoder>,
    out: &Sender<Out>,
    resource_type: &str,
    b: RecordBatch,
) {
    match sink {
        Sink::Reader => {
            let _ = decoders; // only a Parquet sink writes the other types' rows
            let _ = out.send(Out::Batch(resource_type.to_owned(), b));
        }
        #[cfg(feature = "parquet")]
        Sink::Parquet(w) => {
            if let Err(e) = super::write_part(w, decoders, resource_type, &b) {
                let _ = out.send(Out::Failed(e));
            }
        }
    }
}

fn run_job(
    job: Job,
    decoders: &mut HashMap<String, Decoder>,
    order: &mut Vec<String>,
    out: &Sender<Out>,
    batch_rows: usize,
    sink: &mut Sink,
) {
    match job {
        Job::Lines(l) => {
            // Out of the map while its lines are decoded, so that a write can flush the others.
            let mut d = match decoders.remove(&l.resource_type) {
                Some(d) => d,
                None => {
                    order.push(l.resource_type.clone());
                    Decoder::new(&l.resource_type)
                }
            };
            let starts = std::iter::once(0).chain(l.ends.iter().copied());
            let lines = starts.zip(&l.ends).map(|(a, &b)| &l.data[a..b]);
            for (line, n) in lines.zip(&l.line_numbers) {
                if let Err(e) = d.push_line(line) {
                    let _ = out.send(Out::Failed(Error::new(
                        ErrorCode::Protocol,
                        format!("file {} line {n}: {e}", l.file_index),
                    )));
                    continue;
                }
                if d.full(batch_rows) {
                    let b = d.flush().expect("rows were pushed");
                    emit(sink, decoders, out, &l.resource_type, b);
                }
            }
            decoders.insert(l.resource_type, d);
            let _ = out.send(Out::Done);
        }
        Job::Flush => {
            for t in order.iter() {
                if let Some(b) = decoders.get_mut(t).and_then(Decoder::flush) {
                    emit(sink, decoders, out, t, b);
                }
            }
            #[cfg(feature = "parquet")]
            if let Sink::Parquet(w) = sink {
                if let Err(e) = w.close_all() {
                    let _ = out.send(Out::Failed(e));
                }
            }
            let _ = out.send(Out::Flushed);
        }
    }
}
