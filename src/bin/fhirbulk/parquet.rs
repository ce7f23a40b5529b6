//! `--format parquet|both`: the output resources decoded into their type's Arrow schema and
//! written as a Parquet dataset in `--out` (`<Type>/part-<n>.parquet`).
//!
//! Exactly once across a crash: a Parquet file is only readable once closed, so every
//! checkpoint first drains the decoders, closes the parts being written (renamed from their
//! in-progress names), and records the committed parts in the checkpoint. A resumed run removes
//! the parts the checkpoint does not count (in progress, or closed after it), and the engine
//! delivers again exactly the records after the checkpoint. Checkpoints are therefore rarer
//! with Parquet (every 1,000,000 records or 60 s by default), so parts stay large.

use crate::util::{CliError, Perms, EXIT_OTHER};
use fhirbulk::arrow::{
    ArrowReader, ParquetCompression, ParquetDataset, ParquetOptions, PartsState, PARQUET_BATCH_ROWS,
};
use fhirbulk::{Batch, Kind};
use std::path::Path;

pub struct ParquetOut {
    reader: ArrowReader,
    dataset: ParquetDataset,
    /// Output records pushed since the last commit.
    pending: u64,
}

fn local(e: fhirbulk::Error) -> CliError {
    CliError::Local {
        exit: EXIT_OTHER,
        message: format!("Parquet output: {}", e.message),
    }
}

impl ParquetOut {
    /// The dataset in `dir`, continuing `committed` (a resumed run's checkpoint; parts it does
    /// not count are removed).
    pub fn open(
        dir: &Path,
        perms: Perms,
        compression: ParquetCompression,
        committed: &PartsState,
    ) -> Result<ParquetOut, CliError> {
        let options = ParquetOptions {
            compression,
            file_mode: perms.file,
            dir_mode: perms.dir,
            ..ParquetOptions::default()
        };
        let dataset = ParquetDataset::open(dir, options, committed).map_err(local)?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        Ok(ParquetOut {
            reader: ArrowReader::to_parquet(&dataset, PARQUET_BATCH_ROWS, threads),
            dataset,
            pending: 0,
        })
    }

    /// Decode the output records of `batch` and write the batches that filled.
    pub fn push(&mut self, batch: &Batch<'_>) -> Result<(), fhirbulk::Error> {
        if !matches!(batch.get(0), Some(r) if r.kind == Kind::Output) {
            return Ok(());
        }
        self.pending += batch.len() as u64;
        self.reader.push(batch)?;
        // (Nothing comes out: the decode threads write the parts. A failure does.)
        self.reader.pop().map(|_| ())
    }

    /// Output records not committed yet (a checkpoint must commit them).
    pub fn pending(&self) -> u64 {
        self.pending
    }

    /// Everything pushed written and every part closed: the state for the checkpoint.
    pub fn commit(&mut self) -> Result<PartsState, CliError> {
        self.reader.drain().map_err(local)?;
        let state = self.dataset.commit().map_err(local)?;
        self.pending = 0;
        Ok(state)
    }

    /// The committed state (as of the last commit).
    pub fn state(&self) -> PartsState {
        self.dataset.state()
    }

    /// The committed part files, relative to `--out`.
    pub fn files(&self) -> Vec<String> {
        self.dataset.committed_files()
    }
}

/// Part files (`<Type>/part-<n>.parquet` and parts in progress) in `dir`: an earlier export's
/// results.
pub fn previous_parts(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in rd.flatten() {
        let t = e.file_name().to_string_lossy().into_owned();
        if !t.starts_with(|c: char| c.is_ascii_uppercase()) || !e.path().is_dir() {
            continue;
        }
        if let Ok(files) = std::fs::read_dir(e.path()) {
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                let part = name.starts_with("part-") && name.ends_with(".parquet");
                let in_progress = name.starts_with(".part-") && name.ends_with(".inprogress");
                if part || in_progress {
                    found.push(format!("{t}/{name}"));
                }
            }
        }
    }
    found.sort();
    found
}
