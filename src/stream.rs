//! The consumer's side: records and batches handed out from the chunks the downloaders send,
//! the delivery progress they mark (what checkpoints record), and the end of the stream.

use crate::buffers::Buffers;
use crate::error::{Error, ErrorCode, Result};
use crate::files::{Files, ProgressRef};
use crate::manifest::Kind;
use crate::monitor::{Monitor, State};
use crate::ndjson::{Chunk, LineMeta};
use crossbeam_channel::{Receiver, Select};
use parking_lot::Mutex;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// One record: an NDJSON line, borrowed until the next call on the export.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// The JSON text, without the newline.
    pub data: &'a [u8],
    pub kind: Kind,
    pub resource_type: &'a str,
    pub file_index: u32,
    /// 1-based line number in the file.
    pub line: u64,
    /// An attachment record ([`Kind::Attachment`]): the document's bytes (`data` is then its
    /// description, a JSON object). `None` for every other record.
    pub content: Option<&'a [u8]>,
}

/// Records from one file, borrowed until the next call on the export.
pub struct Batch<'a> {
    chunk: &'a Chunk,
    lines: &'a [LineMeta],
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("file_index", &self.chunk.file_index)
            .field("records", &self.lines.len())
            .finish()
    }
}

impl<'a> Batch<'a> {
    pub fn len(&self) -> usize {
        self.lines.len()
    }
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
    /// All records of the batch, each followed by `\n`.
    pub fn data(&self) -> &'a [u8] {
        match (self.lines.first(), self.lines.last()) {
            (Some(a), Some(b)) => &self.chunk.data[a.start..b.end + 1],
            _ => &[],
        }
    }
    pub fn get(&self, i: usize) -> Option<Record<'a>> {
        self.lines.get(i).map(|m| record(self.chunk, m))
    }
    pub fn iter(&self) -> impl Iterator<Item = Record<'a>> + 'a {
        let chunk = self.chunk;
        self.lines.iter().map(move |m| record(chunk, m))
    }
    pub(crate) fn parts(&self) -> (&'a Chunk, &'a [LineMeta]) {
        (self.chunk, self.lines)
    }
}

fn record<'a>(chunk: &'a Chunk, m: &LineMeta) -> Record<'a> {
    Record {
        data: &chunk.data[m.start..m.end],
        kind: chunk.kind,
        resource_type: chunk.types[m.ty as usize].as_str(),
        file_index: chunk.file_index,
        line: m.line,
        content: chunk.content.map(|(a, b)| &chunk.data[a..b]),
    }
}

/// What a pull returned when it did not fail.
#[derive(Debug)]
pub enum Next<T> {
    Item(T),
    /// The export completed and every record was delivered.
    End,
    /// Nothing arrived within the timeout.
    Timeout,
    /// The export was cancelled.
    Cancelled,
}

/// An uninhabited type for `Next<Never>` (a `Next` without an item).
#[derive(Debug)]
pub enum Never {}

impl Next<Never> {
    fn map_never<T>(self) -> Next<T> {
        match self {
            Next::Item(n) => match n {},
            Next::End => Next::End,
            Next::Timeout => Next::Timeout,
            Next::Cancelled => Next::Cancelled,
        }
    }
}

/// Where a file's delivery stood: the last line, and the attachments' records of the next.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Delivered {
    pub(crate) line: u64,
    pub(crate) attachments: Option<String>,
}

/// The records of an export as its consumer pulls them (one thread).
pub(crate) struct Stream {
    rx: Receiver<Chunk>,
    cancel_rx: Receiver<()>,
    monitor: Arc<Monitor>,
    buffers: Arc<Buffers>,
    files: Arc<Mutex<Files>>,
    current: Option<Chunk>,
    pos: usize,
    /// Delivery progress of the current chunk's file.
    progress: Option<ProgressRef>,
    /// The last batch handed out: its range in the current chunk and the file's progress
    /// before it (for [`Stream::unread`]).
    last_batch: Option<(usize, usize, Delivered)>,
}

impl Stream {
    pub(crate) fn new(
        rx: Receiver<Chunk>,
        cancel_rx: Receiver<()>,
        monitor: Arc<Monitor>,
        buffers: Arc<Buffers>,
        files: Arc<Mutex<Files>>,
    ) -> Stream {
        Stream {
            rx,
            cancel_rx,
            monitor,
            buffers,
            files,
            current: None,
            pos: 0,
            progress: None,
            last_batch: None,
        }
    }

    /// The next record. `timeout`: `None` waits as long as it takes, `Some(ZERO)` only tries.
    pub(crate) fn next_record(&mut self, timeout: Option<Duration>) -> Result<Next<Record<'_>>> {
        match self.fill(timeout)? {
            Some(n) => Ok(n.map_never()),
            None => {
                let chunk = self.current.as_ref().expect("fill leaves a chunk");
                let m = chunk.lines[self.pos];
                self.pos += 1;
                self.monitor.records.fetch_add(1, Ordering::Relaxed);
                self.mark_delivered(m.line);
                let chunk = self.current.as_ref().expect("fill leaves a chunk");
                Ok(Next::Item(record(chunk, &m)))
            }
        }
    }

    /// Up to `max` records from one file (at least one when it returns `Item`).
    pub(crate) fn next_batch(
        &mut self,
        max: usize,
        timeout: Option<Duration>,
    ) -> Result<Next<Batch<'_>>> {
        if max == 0 {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "max_records must be above 0",
            ));
        }
        match self.fill(timeout)? {
            Some(n) => Ok(n.map_never()),
            None => {
                let chunk = self.current.as_ref().expect("fill leaves a chunk");
                let start = self.pos;
                let end = (start + max).min(chunk.lines.len());
                let last_line = chunk.lines[end - 1].line;
                let before =
                    self.progress
                        .as_ref()
                        .map_or_else(Delivered::default, |p| Delivered {
                            line: p.line(),
                            attachments: p.pending(),
                        });
                self.last_batch = (!chunk.synthetic).then_some((start, end, before));
                self.pos = end;
                self.monitor
                    .records
                    .fetch_add((end - start) as u64, Ordering::Relaxed);
                self.mark_delivered(last_line);
                let chunk = self.current.as_ref().expect("fill leaves a chunk");
                Ok(Next::Item(Batch {
                    chunk,
                    lines: &chunk.lines[start..end],
                }))
            }
        }
    }

    /// Where the current file would stand had the last `unread` records of the last batch not
    /// been handed out: (file index, delivery). For checkpoints taken part-way through a
    /// batch; on the consuming thread, before the next pull.
    pub(crate) fn unread(&self, unread: usize) -> Option<(u32, Delivered)> {
        let ((start, end, before), chunk) = (self.last_batch.as_ref()?, self.current.as_ref()?);
        let handed = (end - start).saturating_sub(unread);
        let at = if handed == 0 {
            before.clone()
        } else if chunk.extra.is_some() {
            // An attachment's record (alone in its chunk) was handed out: the file stands
            // where the progress says.
            let p = self.progress.as_ref()?;
            Delivered {
                line: p.line(),
                attachments: p.pending(),
            }
        } else {
            Delivered {
                line: chunk.lines[start + handed - 1].line,
                attachments: None,
            }
        };
        Some((chunk.file_index, at))
    }

    /// Record for checkpoints that the caller now has `line` of the current chunk's file (and
    /// the whole file when the last line of its last chunk went out).
    fn mark_delivered(&self, line: u64) {
        let (Some(chunk), Some(p)) = (&self.current, &self.progress) else {
            return;
        };
        if chunk.synthetic {
            // Error records for skipped lines follow the lines after them: no progress here.
            return;
        }
        if let Some(x) = chunk.extra {
            // A record made for an attachment of the line to come.
            p.push_pending(x.line, x.position, x.outcome);
            return;
        }
        p.set_line(line);
        p.clear_pending_through(line);
        if chunk.last && self.pos == chunk.lines.len() && p.set_complete() {
            self.files.lock().completed(chunk.file_index);
        }
    }

    /// Make `current[pos]` a record, or say why there is none.
    fn fill(&mut self, timeout: Option<Duration>) -> Result<Option<Next<Never>>> {
        self.last_batch = None;
        if self
            .current
            .as_ref()
            .is_some_and(|c| self.pos < c.lines.len())
        {
            return Ok(None);
        }
        if let Some(c) = self.current.take() {
            // Hand the buffers back to the downloaders.
            self.buffers.release(c.data, c.lines);
        }
        self.pos = 0;
        loop {
            if self.monitor.cancelled() {
                return Ok(Some(Next::Cancelled));
            }
            let mut sel = Select::new();
            let i_rx = sel.recv(&self.rx);
            let i_cancel = sel.recv(&self.cancel_rx);
            let op = match timeout {
                None => sel.select(),
                Some(d) if d.is_zero() => match sel.try_select() {
                    Ok(op) => op,
                    Err(_) => return Ok(Some(Next::Timeout)),
                },
                Some(d) => match sel.select_timeout(d) {
                    Ok(op) => op,
                    Err(_) => return Ok(Some(Next::Timeout)),
                },
            };
            if op.index() == i_cancel {
                let _ = op.recv(&self.cancel_rx);
                return Ok(Some(Next::Cancelled));
            }
            debug_assert_eq!(op.index(), i_rx);
            match op.recv(&self.rx) {
                Ok(chunk) => {
                    let progress = self.files.lock().progress(chunk.file_index);
                    if chunk.lines.is_empty() {
                        // An empty last chunk: the file ended after lines already delivered.
                        if chunk.last && progress.as_ref().is_some_and(|p| p.set_complete()) {
                            self.files.lock().completed(chunk.file_index);
                        }
                        self.buffers.release(chunk.data, chunk.lines);
                        continue;
                    }
                    self.progress = progress;
                    self.current = Some(chunk);
                    return Ok(None);
                }
                Err(_) => {
                    // Every sender is gone: the coordinator has set the final state.
                    return match self.monitor.state() {
                        State::Done => Ok(Some(Next::End)),
                        State::Cancelled => Ok(Some(Next::Cancelled)),
                        _ => Err(self.monitor.error().unwrap_or_else(|| {
                            Error::new(ErrorCode::Internal, "the export stopped without a reason")
                        })),
                    };
                }
            }
        }
    }
}
