//! An export's records as typed Arrow record batches (feature `arrow`): one schema per FHIR R4
//! resource type ([`schema`]), the resources decoded into it with nothing lost ([`decode`]),
//! and [`ArrowBatches`], which turns an [`Export`] into batches of one type each.

#[cfg(feature = "parquet")]
pub mod dataset;
pub mod decode;
mod pool;
pub mod schema;

#[cfg(feature = "parquet")]
pub use dataset::{
    ParquetCompression, ParquetDataset, ParquetOptions, PartWriter, PartsState, TypeParts,
};
pub use decode::{rebuild, Decoder};
pub use schema::{schema_for, TypeSchema, REMAINDER};

use crate::error::{Error, ErrorCode, Result};
use crate::export::Export;
use crate::manifest::Kind;
use crate::stream::{Batch, Next};
use arrow_array::RecordBatch;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// Rows per batch unless told otherwise.
pub const DEFAULT_BATCH_ROWS: usize = 8192;

/// Rows per decoded batch when writing Parquet: the writer gathers batches into row groups of
/// its own, so a smaller batch lowers the memory of the filling batches (one per type and
/// decode thread), and a larger one the writer's cost per batch and column (on the benchmark's
/// data, 2048 rows took 8% less CPU than 1024, for 10 MB more peak RSS).
pub const PARQUET_BATCH_ROWS: usize = 2048;

/// The output resources of an export as record batches, each of one resource type, with at
/// most `batch_rows` rows. A type's batch is handed out when it is full, and what is left at the
/// end of the export (one short batch per decode thread at most); memory is one filling batch
/// per type seen and decode thread. Error and deleted
/// records (the manifest's `error` and `deleted` files) are not decoded: they are counted
/// ([`ArrowBatches::skipped`]) and can be read with the record API.
pub struct ArrowBatches {
    export: Export,
    reader: ArrowReader,
}

impl ArrowBatches {
    pub fn new(export: Export, batch_rows: usize) -> ArrowBatches {
        ArrowBatches {
            export,
            reader: ArrowReader::new(batch_rows),
        }
    }

    /// [`ArrowBatches::new`] with `threads` decode threads (1: on the caller's thread).
    pub fn with_threads(export: Export, batch_rows: usize, threads: usize) -> ArrowBatches {
        ArrowBatches {
            export,
            reader: ArrowReader::with_threads(batch_rows, threads),
        }
    }

    /// The export (progress, controller, checkpoints).
    pub fn export(&self) -> &Export {
        &self.export
    }

    /// Error and deleted records passed over.
    pub fn skipped(&self) -> u64 {
        self.reader.skipped
    }

    /// The next batch and its resource type; `End` when the export completed and every batch
    /// was handed out. A resource that is not a JSON object of its file's type fails the read
    /// with a protocol error naming the file and line.
    pub fn next_batch(&mut self, timeout: Option<Duration>) -> Result<Next<(String, RecordBatch)>> {
        self.reader.next_batch(&mut self.export, timeout)
    }
}

/// [`ArrowBatches`] without the export: the decoders, fed from an export the caller keeps (the
/// C ABI's handle). With more than one core, the lines are decoded on up to 4 threads of the
/// reader's own ([`pool`]); rows then come in no particular order within a type.
pub struct ArrowReader {
    batch_rows: usize,
    threads: usize,
    pool: Option<pool::Pool>,
    decoders: HashMap<String, Decoder>,
    /// Types in the order first seen, so that the final flush is deterministic.
    order: Vec<String>,
    ready: VecDeque<(String, RecordBatch)>,
    ended: bool,
    failed: Option<Error>,
    skipped: u64,
    /// Writing into a Parquet dataset instead of handing batches out.
    #[cfg(feature = "parquet")]
    parquet: Option<ParquetSinks>,
}

/// The writers of [`ArrowReader::to_parquet`]: the reader's own (rows decoded on its thread)
/// and one per decode thread, until the threads start.
#[cfg(feature = "parquet")]
struct ParquetSinks {
    inline: PartWriter,
    threads: Vec<PartWriter>,
}

impl ArrowReader {
    pub fn new(batch_rows: usize) -> ArrowReader {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        ArrowReader::with_threads(batch_rows, cores.min(4))
    }

    /// `threads` decode threads; 1 decodes on the caller's thread.
    pub fn with_threads(batch_rows: usize, threads: usize) -> ArrowReader {
        ArrowReader {
            batch_rows: batch_rows.max(1),
            threads: threads.max(1),
            pool: None,
            decoders: HashMap::new(),
            order: Vec::new(),
            ready: VecDeque::new(),
            ended: false,
            failed: None,
            skipped: 0,
            #[cfg(feature = "parquet")]
            parquet: None,
        }
    }

    /// A reader that writes what it decodes into `dataset` instead of handing batches out
    /// ([`ArrowReader::pop`] gives nothing): each decode thread writes its own parts, so the
    /// Parquet encoding runs on all of them. [`ArrowReader::drain`] closes every part the
    /// threads have open; then [`ParquetDataset::commit`] can commit them.
    #[cfg(feature = "parquet")]
    pub fn to_parquet(dataset: &ParquetDataset, batch_rows: usize, threads: usize) -> ArrowReader {
        let mut r = ArrowReader::with_threads(batch_rows, threads);
        let threads = if r.threads > 1 { r.threads } else { 0 };
        r.parquet = Some(ParquetSinks {
            inline: dataset.writer(),
            threads: (0..threads).map(|_| dataset.writer()).collect(),
        });
        r
    }

    /// A full or flushed batch decoded on this thread: to the Parquet writer, or handed out.
    fn emit(&mut self, resource_type: &str, b: RecordBatch) -> Result<()> {
        #[cfg(feature = "parquet")]
        if let Some(p) = self.parquet.as_mut() {
            return write_part(&mut p.inline, &mut self.decoders, resource_type, &b);
        }
        self.ready.push_back((resource_type.to_owned(), b));
        Ok(())
    }

    fn sinks(&mut self) -> Vec<pool::Sink> {
        #[cfg(feature = "parquet")]
        if let Some(p) = self.parquet.as_mut() {
            return std::mem::take(&mut p.threads)
                .into_iter()
                .map(pool::Sink::Parquet)
                .collect();
        }
        (0..self.threads).map(|_| pool::Sink::Reader).collect()
    }

    /// Error and deleted records passed over.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Rows per batch.
    pub fn batch_rows(&self) -> usize {
        self.batch_rows
    }

    /// See [`ArrowBatches::next_batch`].
    pub fn next_batch(
        &mut self,
        export: &mut Export,
        timeout: Option<Duration>,
    ) -> Result<Next<(String, RecordBatch)>> {
        let r = self.next_unchecked(export, timeout);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    fn next_unchecked(
        &mut self,
        export: &mut Export,
        timeout: Option<Duration>,
    ) -> Result<Next<(String, RecordBatch)>> {
        loop {
            if let Some(b) = self.pop()? {
                return Ok(Next::Item(b));
            }
            if self.ended {
                return Ok(Next::End);
            }
            // With the decode threads busy, wait for one of their batches rather than queue more.
            if let Some(pool) = self.pool.as_mut() {
                if !pool.has_room() {
                    match pool.recv(timeout) {
                        Some(o) => take(o, &mut self.ready)?,
                        None => return Ok(Next::Timeout),
                    }
                    continue;
                }
            }
            match export.next_batch(self.batch_rows, timeout)? {
                Next::Item(b) => self.push(&b)?,
                Next::End => {
                    self.drain()?;
                    self.ended = true;
                }
                Next::Timeout => return Ok(Next::Timeout),
                Next::Cancelled => return Ok(Next::Cancelled),
            }
        }
    }

    /// Decode the output records of `batch` (error and deleted records are counted in
    /// [`ArrowReader::skipped`]). With decode threads, this waits while they are all busy; their
    /// batches are then kept for [`ArrowReader::pop`]. For a caller that pulls from the export
    /// itself (the CLI, which also writes the error records).
    pub fn push(&mut self, batch: &Batch<'_>) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.push_unchecked(batch);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    fn push_unchecked(&mut self, batch: &Batch<'_>) -> Result<()> {
        if self.threads > 1 && self.pool.is_none() {
            let sinks = self.sinks();
            self.pool = pool::Pool::new(sinks, self.batch_rows).ok();
            if self.pool.is_none() {
                // No threads to be had: decode on this one from now on (once: the sinks are
                // taken).
                self.threads = 1;
            }
        }
        let Some(pool) = self.pool.as_mut() else {
            return self.push_inline(batch);
        };
        // One run of lines per resource type in the batch (one, unless a file without a type in
        // the manifest mixes them).
        let mut runs: Vec<pool::Lines> = Vec::new();
        for r in batch.iter() {
            if r.kind != Kind::Output {
                self.skipped += 1;
                continue;
            }
            let run = match runs.iter_mut().find(|l| l.resource_type == r.resource_type) {
                Some(l) => l,
                None => {
                    runs.push(pool::Lines {
                        resource_type: r.resource_type.to_owned(),
                        data: Vec::with_capacity(batch.data().len()),
                        file_index: r.file_index,
                        ends: Vec::new(),
                        line_numbers: Vec::new(),
                    });
                    runs.last_mut().expect("pushed")
                }
            };
            run.data.extend_from_slice(r.data);
            run.ends.push(run.data.len());
            run.line_numbers.push(r.line);
        }
        for run in runs {
            while !pool.has_room() {
                if let Some(o) = pool.recv(None) {
                    take(o, &mut self.ready)?;
                }
            }
            pool.send(run);
        }
        Ok(())
    }

    fn push_inline(&mut self, batch: &Batch<'_>) -> Result<()> {
        for r in batch.iter() {
            if r.kind != Kind::Output {
                self.skipped += 1;
                continue;
            }
            if !self.decoders.contains_key(r.resource_type) {
                self.order.push(r.resource_type.to_owned());
                self.decoders
                    .insert(r.resource_type.to_owned(), Decoder::new(r.resource_type));
            }
            let d = self
                .decoders
                .get_mut(r.resource_type)
                .expect("inserted above");
            d.push_line(r.data).map_err(|e| {
                Error::new(
                    ErrorCode::Protocol,
                    format!("file {} line {}: {e}", r.file_index, r.line),
                )
            })?;
            if d.full(self.batch_rows) {
                let b = d.flush().expect("rows were pushed");
                self.emit(r.resource_type, b)?;
            }
        }
        Ok(())
    }

    /// A batch that is full (or drained), without waiting.
    pub fn pop(&mut self) -> Result<Option<(String, RecordBatch)>> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if let Some(pool) = self.pool.as_mut() {
            while let Some(o) = pool.try_recv() {
                if let Err(e) = take(o, &mut self.ready) {
                    self.failed = Some(e.clone());
                    return Err(e);
                }
            }
        }
        Ok(self.ready.pop_front())
    }

    /// Make every row pushed so far ready for [`ArrowReader::pop`], in short batches where a
    /// type's batch is not full: waits for the decode threads to finish what they were given.
    /// Pushing may go on afterwards (the CLI drains at each checkpoint).
    pub fn drain(&mut self) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.drain_unchecked();
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    fn drain_unchecked(&mut self) -> Result<()> {
        for t in self.order.clone() {
            if let Some(b) = self.decoders.get_mut(&t).and_then(Decoder::flush) {
                self.emit(&t, b)?;
            }
        }
        #[cfg(feature = "parquet")]
        if let Some(p) = self.parquet.as_mut() {
            p.inline.close_all()?;
        }
        if let Some(pool) = self.pool.as_mut() {
            // Every run done first (any thread may have taken it), then each thread flushes.
            while pool.in_flight > 0 {
                if let Some(o) = pool.recv(None) {
                    take(o, &mut self.ready)?;
                }
            }
            pool.flush();
            while !pool.all_flushed() {
                if let Some(o) = pool.recv(None) {
                    take(o, &mut self.ready)?;
                }
            }
        }
        Ok(())
    }
}

/// Writes a batch of `resource_type` into `w`. When that closes the part of another type (the
/// one written to least recently), the rows of that type that `decoders` still hold go into
/// that part first: a part closes with every row of its type its writer has, so that a type
/// whose rows have ended does not get a part of its own for its last rows at the final drain.
#[cfg(feature = "parquet")]
pub(crate) fn write_part(
    w: &mut PartWriter,
    decoders: &mut HashMap<String, Decoder>,
    resource_type: &str,
    b: &RecordBatch,
) -> Result<()> {
    if let Some(t) = w.evicts(resource_type).map(str::to_owned) {
        if let Some(tail) = decoders.get_mut(&t).and_then(Decoder::flush) {
            w.write(&t, &tail)?;
        }
    }
    w.write(resource_type, b)
}

fn take(o: pool::Out, ready: &mut VecDeque<(String, RecordBatch)>) -> Result<()> {
    match o {
        pool::Out::Batch(t, b) => ready.push_back((t, b)),
        pool::Out::Failed(e) => return Err(e),
        pool::Out::Done | pool::Out::Flushed => {}
    }
    Ok(())
}
