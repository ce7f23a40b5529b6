//! An export's records as typed Arrow record batches (feature `arrow`): one schema per FHIR R4
//! resource type ([`schema`]), the resources decoded into it with nothing lost ([`decode`]),
//! and [`ArrowBatches`], which turns an [`Export`] into batches of one type each.

pub mod decode;
pub mod schema;

pub use decode::{rebuild, Decoder};
pub use schema::{schema_for, TypeSchema, REMAINDER};

use crate::error::{Error, ErrorCode, Result};
use crate::export::Export;
use crate::manifest::Kind;
use crate::stream::Next;
use arrow_array::RecordBatch;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// Rows per batch unless told otherwise.
pub const DEFAULT_BATCH_ROWS: usize = 8192;

/// The output resources of an export as record batches, each of one resource type, with at
/// most `batch_rows` rows. A type's batch is handed out when it is full, and every type's last
/// one at the end of the export; memory is one filling batch per type seen. Error and deleted
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

/// [`ArrowBatches`] without the export: the per-type decoders, fed from an export the caller
/// keeps (the C ABI's handle).
pub struct ArrowReader {
    batch_rows: usize,
    decoders: HashMap<String, Decoder>,
    /// Types in the order first seen, so that the final flush is deterministic.
    order: Vec<String>,
    ready: VecDeque<(String, RecordBatch)>,
    ended: bool,
    skipped: u64,
}

impl ArrowReader {
    pub fn new(batch_rows: usize) -> ArrowReader {
        ArrowReader {
            batch_rows: batch_rows.max(1),
            decoders: HashMap::new(),
            order: Vec::new(),
            ready: VecDeque::new(),
            ended: false,
            skipped: 0,
        }
    }

    /// Error and deleted records passed over.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// See [`ArrowBatches::next_batch`].
    pub fn next_batch(
        &mut self,
        export: &mut Export,
        timeout: Option<Duration>,
    ) -> Result<Next<(String, RecordBatch)>> {
        loop {
            if let Some(b) = self.ready.pop_front() {
                return Ok(Next::Item(b));
            }
            if self.ended {
                return Ok(Next::End);
            }
            let batch = match export.next_batch(self.batch_rows, timeout)? {
                Next::Item(b) => b,
                Next::End => {
                    self.ended = true;
                    for t in &self.order {
                        if let Some(b) = self.decoders.get_mut(t).and_then(Decoder::flush) {
                            self.ready.push_back((t.clone(), b));
                        }
                    }
                    continue;
                }
                Next::Timeout => return Ok(Next::Timeout),
                Next::Cancelled => return Ok(Next::Cancelled),
            };
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
                if d.rows() >= self.batch_rows {
                    let b = d.flush().expect("rows were pushed");
                    self.ready.push_back((r.resource_type.to_owned(), b));
                }
            }
        }
    }
}
