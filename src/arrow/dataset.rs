//! Parquet datasets (feature `parquet`): the record batches of each resource type written to
//! `DIR/<Type>/part-<n>.parquet`, a layout DuckDB (`read_parquet('DIR/Observation/*.parquet')`),
//! pandas/pyarrow (`pyarrow.dataset`) and Spark read as a table per type.
//!
//! A Parquet file is readable only once closed (the footer holds its metadata), so a part is
//! written as `.part-<n>.parquet.inprogress` (a name the readers above pass over) and renamed
//! when closed. [`ParquetDataset::commit`] closes every open part and returns what is committed,
//! [`PartsState`]; a caller that checkpoints stores it with the checkpoint and opens the
//! dataset again with it after a crash: parts the state does not count (in progress, or closed
//! after the checkpoint) are removed, so the rows the checkpoint's position delivers again are
//! not written twice. The writing is the `parquet` crate's `ArrowWriter`.

use crate::error::{Error, ErrorCode, Result};
use arrow_array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// The compression of the column chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParquetCompression {
    None,
    /// The default (fast, and what most readers expect).
    Snappy,
    /// Smaller files, slower to write (level 3).
    Zstd,
}

impl ParquetCompression {
    /// `none`, `snappy` or `zstd`.
    pub fn parse(s: &str) -> Option<ParquetCompression> {
        match s {
            "none" | "uncompressed" => Some(ParquetCompression::None),
            "snappy" => Some(ParquetCompression::Snappy),
            "zstd" => Some(ParquetCompression::Zstd),
            _ => None,
        }
    }
}

/// How the parts are written.
#[derive(Clone, Debug)]
pub struct ParquetOptions {
    pub compression: ParquetCompression,
    /// A row group is closed at this many rows, or sooner at `row_group_bytes`.
    pub row_group_rows: usize,
    /// A row group is closed when its encoded, buffered size reaches this: the bound of the
    /// writer's memory per open part (the schemas are wide: a row group of 1M rows could be
    /// large).
    pub row_group_bytes: usize,
    /// A part is closed (and the next one begun) when it has this many bytes on disk.
    pub part_bytes: u64,
    /// Mode of the files written and of the directories created (Unix).
    pub file_mode: u32,
    pub dir_mode: u32,
}

impl Default for ParquetOptions {
    fn default() -> ParquetOptions {
        ParquetOptions {
            compression: ParquetCompression::Snappy,
            row_group_rows: 1 << 20,
            row_group_bytes: 64 << 20,
            part_bytes: 512 << 20,
            file_mode: 0o644,
            dir_mode: 0o755,
        }
    }
}

/// What is committed of one resource type: parts `0..parts`, `rows` rows in all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeParts {
    pub parts: u32,
    pub rows: u64,
}

/// What is committed of a dataset, per resource type.
pub type PartsState = BTreeMap<String, TypeParts>;

struct OpenPart {
    index: u32,
    tmp: PathBuf,
    writer: ArrowWriter<BufWriter<File>>,
    rows: u64,
}

#[derive(Default)]
struct TypeState {
    /// Closed parts: `0..closed` (the last commit counted `committed.parts` of them).
    closed: u32,
    closed_rows: u64,
    committed: TypeParts,
    open: Option<OpenPart>,
}

/// A Parquet dataset being written: one open part at most per resource type.
pub struct ParquetDataset {
    dir: PathBuf,
    options: ParquetOptions,
    props: WriterProperties,
    types: BTreeMap<String, TypeState>,
}

impl std::fmt::Debug for ParquetDataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetDataset")
            .field("dir", &self.dir)
            .field("types", &self.types.len())
            .finish()
    }
}

/// A resource type's directory name: a FHIR type name (`Observation`), nothing a server could
/// use to reach outside the dataset's directory.
fn valid_type(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_uppercase()
        && b.iter().all(u8::is_ascii_alphanumeric)
}

fn part_name(index: u32) -> String {
    format!("part-{index:05}.parquet")
}

fn tmp_name(index: u32) -> String {
    format!(".part-{index:05}.parquet.inprogress")
}

/// The index of a file named like a part (`part-<n>.parquet`) or a part in progress.
fn part_index(name: &str) -> Option<u32> {
    let n = name
        .strip_prefix("part-")
        .and_then(|r| r.strip_suffix(".parquet"))
        .or_else(|| {
            name.strip_prefix(".part-")
                .and_then(|r| r.strip_suffix(".parquet.inprogress"))
        })?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

fn io_error(what: std::fmt::Arguments<'_>, e: &dyn std::fmt::Display) -> Error {
    Error::new(ErrorCode::Internal, format!("{what}: {e}"))
}

#[cfg(unix)]
fn create_file(path: &Path, mode: u32) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
}

#[cfg(not(unix))]
fn create_file(path: &Path, _mode: u32) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

#[cfg(unix)]
fn create_dir(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        r => r,
    }
}

#[cfg(not(unix))]
fn create_dir(path: &Path, _mode: u32) -> std::io::Result<()> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        r => r,
    }
}

/// Make a rename or a new file in `dir` durable (a no-op where directories cannot be opened).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl ParquetDataset {
    /// A dataset in `dir` (created if missing), continuing `committed` (empty for a new one):
    /// part files in the type directories of `dir` that `committed` does not count are removed.
    pub fn open(
        dir: &Path,
        options: ParquetOptions,
        committed: &PartsState,
    ) -> Result<ParquetDataset> {
        create_dir(dir, options.dir_mode)
            .map_err(|e| io_error(format_args!("cannot create {}", dir.display()), &e))?;
        let mut types = BTreeMap::new();
        for (t, c) in committed {
            if !valid_type(t) {
                return Err(Error::new(
                    ErrorCode::InvalidArgument,
                    format!("the committed parts name {t:?}, which is not a resource type"),
                ));
            }
            types.insert(
                t.clone(),
                TypeState {
                    closed: c.parts,
                    closed_rows: c.rows,
                    committed: c.clone(),
                    open: None,
                },
            );
        }
        let ds = ParquetDataset {
            dir: dir.to_owned(),
            props: properties(&options),
            options,
            types,
        };
        ds.remove_uncommitted()?;
        for (t, c) in committed {
            for i in 0..c.parts {
                let p = dir.join(t).join(part_name(i));
                if !p.is_file() {
                    return Err(Error::new(
                        ErrorCode::InvalidArgument,
                        format!(
                            "cannot continue the Parquet dataset: {} is missing ({} parts of {t} were committed)",
                            p.display(),
                            c.parts
                        ),
                    ));
                }
            }
        }
        Ok(ds)
    }

    /// Remove the parts of every type directory that the committed state does not count.
    fn remove_uncommitted(&self) -> Result<()> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                return Err(io_error(
                    format_args!("cannot read {}", self.dir.display()),
                    &e,
                ))
            }
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(t) = name.to_str().filter(|t| valid_type(t)) else {
                continue;
            };
            if !e.file_type().is_ok_and(|f| f.is_dir()) {
                continue;
            }
            let keep = self.types.get(t).map_or(0, |s| s.committed.parts);
            let sub = e.path();
            let Ok(files) = std::fs::read_dir(&sub) else {
                continue;
            };
            let mut removed = false;
            for f in files.flatten() {
                let fname = f.file_name();
                let Some(i) = fname.to_str().and_then(part_index) else {
                    continue;
                };
                let in_progress = fname.to_str().is_some_and(|n| n.starts_with('.'));
                if in_progress || i >= keep {
                    std::fs::remove_file(f.path()).map_err(|e| {
                        io_error(format_args!("cannot remove {}", f.path().display()), &e)
                    })?;
                    removed = true;
                }
            }
            if removed {
                sync_dir(&sub);
            }
        }
        Ok(())
    }

    /// The dataset's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Append a batch of `resource_type` (a FHIR type name) to its open part, opening one (the
    /// type's directory too) if none is.
    pub fn write(&mut self, resource_type: &str, batch: &RecordBatch) -> Result<()> {
        if !valid_type(resource_type) {
            return Err(Error::new(
                ErrorCode::Protocol,
                format!("{resource_type:?} is not a FHIR resource type name: not written as a Parquet directory"),
            ));
        }
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if !self.types.contains_key(resource_type) {
            self.types
                .insert(resource_type.to_owned(), TypeState::default());
        }
        let dir = self.dir.join(resource_type);
        let st = self.types.get_mut(resource_type).expect("inserted above");
        if st.open.is_none() {
            create_dir(&dir, self.options.dir_mode)
                .map_err(|e| io_error(format_args!("cannot create {}", dir.display()), &e))?;
            let tmp = dir.join(tmp_name(st.closed));
            let f = create_file(&tmp, self.options.file_mode)
                .map_err(|e| io_error(format_args!("cannot create {}", tmp.display()), &e))?;
            let writer = ArrowWriter::try_new(
                BufWriter::with_capacity(1 << 20, f),
                batch.schema(),
                Some(self.props.clone()),
            )
            .map_err(|e| io_error(format_args!("cannot write {}", tmp.display()), &e))?;
            st.open = Some(OpenPart {
                index: st.closed,
                tmp,
                writer,
                rows: 0,
            });
        }
        let part = st.open.as_mut().expect("opened above");
        part.writer
            .write(batch)
            .map_err(|e| io_error(format_args!("cannot write {}", part.tmp.display()), &e))?;
        part.rows += batch.num_rows() as u64;
        if part.writer.in_progress_size() >= self.options.row_group_bytes {
            part.writer
                .flush()
                .map_err(|e| io_error(format_args!("cannot write {}", part.tmp.display()), &e))?;
        }
        if part.writer.bytes_written() as u64 >= self.options.part_bytes {
            close_part(st, &dir)?;
        }
        Ok(())
    }

    /// Rows written and not committed yet.
    pub fn uncommitted_rows(&self) -> u64 {
        self.types
            .values()
            .map(|s| s.closed_rows + s.open.as_ref().map_or(0, |p| p.rows) - s.committed.rows)
            .sum()
    }

    /// Close every open part (written, synced, renamed to its final name) and return what is
    /// committed: every row written so far.
    pub fn commit(&mut self) -> Result<PartsState> {
        for (t, st) in self.types.iter_mut() {
            if st.open.is_some() {
                close_part(st, &self.dir.join(t))?;
            }
            st.committed = TypeParts {
                parts: st.closed,
                rows: st.closed_rows,
            };
        }
        Ok(self.state())
    }

    /// What the last [`ParquetDataset::commit`] (or [`ParquetDataset::open`]) committed.
    pub fn state(&self) -> PartsState {
        self.types
            .iter()
            .filter(|(_, s)| s.committed.parts > 0)
            .map(|(t, s)| (t.clone(), s.committed.clone()))
            .collect()
    }

    /// The committed part files, relative to the dataset's directory (`Observation/part-00000.parquet`).
    pub fn committed_files(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (t, s) in &self.types {
            for i in 0..s.committed.parts {
                v.push(format!("{t}/{}", part_name(i)));
            }
        }
        v
    }
}

fn close_part(st: &mut TypeState, dir: &Path) -> Result<()> {
    let Some(part) = st.open.take() else {
        return Ok(());
    };
    let tmp = part.tmp.clone();
    let buf = part
        .writer
        .into_inner()
        .map_err(|e| io_error(format_args!("cannot write {}", tmp.display()), &e))?;
    let file = buf
        .into_inner()
        .map_err(|e| io_error(format_args!("cannot write {}", tmp.display()), e.error()))?;
    file.sync_all()
        .map_err(|e| io_error(format_args!("cannot sync {}", tmp.display()), &e))?;
    let final_path = dir.join(part_name(part.index));
    std::fs::rename(&tmp, &final_path)
        .map_err(|e| io_error(format_args!("cannot rename {}", tmp.display()), &e))?;
    sync_dir(dir);
    st.closed = part.index + 1;
    st.closed_rows += part.rows;
    Ok(())
}

fn properties(o: &ParquetOptions) -> WriterProperties {
    let compression = match o.compression {
        ParquetCompression::None => Compression::UNCOMPRESSED,
        ParquetCompression::Snappy => Compression::SNAPPY,
        ParquetCompression::Zstd => {
            Compression::ZSTD(ZstdLevel::try_new(3).expect("3 is a valid zstd level"))
        }
    };
    WriterProperties::builder()
        .set_compression(compression)
        .set_max_row_group_size(o.row_group_rows.max(1))
        .set_created_by(format!("fhirbulk {}", env!("CARGO_PKG_VERSION")))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_names() {
        assert_eq!(part_index("part-00012.parquet"), Some(12));
        assert_eq!(part_index(".part-00003.parquet.inprogress"), Some(3));
        assert_eq!(part_index("part-.parquet"), None);
        assert_eq!(part_index("part-1a.parquet"), None);
        assert_eq!(part_index("other.parquet"), None);
        assert!(valid_type("Observation"));
        assert!(!valid_type("../etc"));
        assert!(!valid_type("error"));
        assert!(!valid_type(""));
    }
}
