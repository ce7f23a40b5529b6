//! The output directory: one NDJSON file per manifest file (`<Type>.<n>.ndjson[.gz]`, errors under
//! `error/`, deleted under `deleted/`), written so that a checkpoint can name each file's length.
//!
//! Gzip output is written as a multi-member gzip file: every checkpoint ends a member, so the
//! length recorded in the checkpoint is always a member boundary and truncating to it on resume
//! leaves a valid file.

use crate::util::{safe_name, CliError, Perms};
use fhirbulk::{Batch, Controller, FileInfo, Kind};
use flate2::write::GzEncoder;
use flate2::Compression;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Files kept open at once; more are closed least recently used first and reopened to append.
const MAX_OPEN: usize = 64;
/// The slot index of the skipped lines' file in `Outputs::open_list`.
const SKIPPED: usize = usize::MAX;
/// Where error records for skipped invalid lines (`--on-invalid-line skip`) go.
const SKIPPED_LINES: &str = "error/fhirbulk-skipped-lines.ndjson";
/// The slot index of the attachment errors' file in `Outputs::open_list`.
const ATTACHMENT_ERRORS: usize = usize::MAX - 1;
/// Where error records for attachments that could not be fetched (`--attachments`) go.
const ATTACHMENT_ERRORS_FILE: &str = "error/fhirbulk-attachments.ndjson";
/// What marks an error record fhirbulk made for an attachment.
const ATTACHMENT_ERROR_MARK: &[u8] = b"fhirbulk.dev/fhir/StructureDefinition/attachment-error";

/// What the checkpoint remembers of one output file.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileState {
    /// Length on disk at the checkpoint.
    pub bytes: u64,
    /// Records written.
    pub records: u64,
    /// NDJSON bytes written (uncompressed).
    pub ndjson_bytes: u64,
}

/// Totals carried across a resume.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Totals {
    /// Output records per resource type.
    pub records: BTreeMap<String, u64>,
    pub error_records: u64,
    pub deleted_records: u64,
    pub ndjson_bytes: u64,
    /// Documents saved under `attachments/` (`--attachments save`), and their bytes.
    #[serde(default)]
    pub attachments: u64,
    #[serde(default)]
    pub attachment_bytes: u64,
}

/// One output file at the end of an export.
pub struct WrittenFile {
    pub rel: String,
    pub kind: Kind,
    pub resource_type: Option<String>,
    pub url: String,
    pub state: FileState,
}

/// What [`Outputs::finish`] counts.
pub struct Finished {
    /// Output files (manifest files, and the file of skipped lines if any).
    pub files: usize,
    pub bytes_on_disk: u64,
}

struct Writer {
    idle: Option<BufWriter<File>>,
    gz: Option<GzEncoder<BufWriter<File>>>,
    gzip: bool,
}

impl Writer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        if self.gzip {
            if self.gz.is_none() {
                let f = self.idle.take().expect("an idle file");
                self.gz = Some(GzEncoder::new(f, Compression::default()));
            }
            self.gz.as_mut().expect("encoder").write_all(data)
        } else {
            self.idle.as_mut().expect("a file").write_all(data)
        }
    }

    /// Flush to the OS (ending the gzip member) and give the file's length.
    fn flush(&mut self) -> std::io::Result<u64> {
        if let Some(enc) = self.gz.take() {
            self.idle = Some(enc.finish()?);
        }
        let f = self.idle.as_mut().expect("a file");
        f.flush()?;
        Ok(f.get_ref().metadata()?.len())
    }

    fn sync(&self) -> std::io::Result<()> {
        match &self.idle {
            Some(f) => f.get_ref().sync_data(),
            None => Ok(()),
        }
    }
}

/// One output file (about 100 bytes: with 200,000 files the slots stay small; the URL and
/// type are the engine's).
struct Slot {
    rel: Box<str>,
    kind: Kind,
    writer: Option<Box<Writer>>,
    state: FileState,
    /// Written since the last flush / sync.
    dirty: bool,
    unsynced: bool,
    /// Opened in this run (a reopen appends).
    opened: bool,
    last_use: u64,
}

impl Slot {
    /// A file not written in this run yet; `state` is what a resumed run had written.
    fn new(rel: String, kind: Kind, state: FileState) -> Slot {
        Slot {
            rel: rel.into(),
            kind,
            writer: None,
            state,
            dirty: false,
            unsynced: false,
            opened: false,
            last_use: 0,
        }
    }
}

pub struct Outputs {
    dir: PathBuf,
    gzip: bool,
    /// The mode of the files and of the subdirectories created (`error/`, `deleted/`).
    perms: Perms,
    slots: Vec<Slot>,
    skipped: Option<Slot>,
    /// The file of attachment error records.
    attachment_errors: Option<Slot>,
    /// Documents written since the last sync (`flush_all(true)`, before every checkpoint):
    /// synced then, not one by one (a sync per document made saving them 4 times slower).
    unsynced_documents: Vec<PathBuf>,
    per_name: HashMap<(Kind, String), u32>,
    /// The width the numbers of each kind and type's files are zero-padded to
    /// (`Patient.001.ndjson`, so that names sort in file order): fixed when its first file is
    /// named, to the digits of the number of its files known then (at least 3), and kept in
    /// the checkpoint so a resumed run names its files the same. `None`: the unpadded names of
    /// a checkpoint written before padding (`Patient.1.ndjson`).
    widths: Option<BTreeMap<String, usize>>,
    /// Lengths from the checkpoint this run resumes: these files were truncated to them and are
    /// appended to.
    resumed: HashMap<String, FileState>,
    /// Slots written (or resumed) and not complete: what a checkpoint records.
    active: BTreeSet<usize>,
    open: usize,
    /// The slots with an open file (`SKIPPED` for the skipped lines' slot): eviction and
    /// flushes look at these, not at every file.
    open_list: Vec<usize>,
    clock: u64,
    pub totals: Totals,
    /// False with `--format parquet`: output records are counted, not written (the Parquet
    /// dataset holds them); error and deleted records are written all the same.
    write_output: bool,
}

impl Outputs {
    pub fn new(
        dir: &Path,
        gzip: bool,
        perms: Perms,
        resumed: HashMap<String, FileState>,
        totals: Totals,
    ) -> Outputs {
        Outputs {
            dir: dir.to_owned(),
            gzip,
            perms,
            slots: Vec::new(),
            skipped: None,
            attachment_errors: None,
            unsynced_documents: Vec::new(),
            per_name: HashMap::new(),
            widths: Some(BTreeMap::new()),
            resumed,
            active: BTreeSet::new(),
            open: 0,
            open_list: Vec::new(),
            clock: 0,
            totals,
            write_output: true,
        }
    }

    /// Where the records written differ from the manifest's `count` of their file, per kind
    /// and type: (name, the counts' sum, records written, files that differ, one of them).
    /// Only files whose entry has a `count` are compared.
    pub fn count_mismatches(&self, files: &[FileInfo]) -> Vec<(String, u64, u64, usize, String)> {
        let mut by: BTreeMap<String, (u64, u64, usize, String)> = BTreeMap::new();
        for (slot, f) in self.slots.iter().zip(files) {
            let Some(count) = f.count else { continue };
            if slot.state.records == count {
                continue;
            }
            let name = match f.kind {
                Kind::Output => f.resource_type.clone().unwrap_or_else(|| "output".into()),
                k => format!(
                    "{} {}",
                    k.name(),
                    f.resource_type.clone().unwrap_or_default()
                )
                .trim_end()
                .to_owned(),
            };
            let e = by.entry(name).or_insert((0, 0, 0, slot.rel.to_string()));
            e.0 += count;
            e.1 += slot.state.records;
            e.2 += 1;
        }
        by.into_iter()
            .map(|(n, (c, r, k, ex))| (n, c, r, k, ex))
            .collect()
    }

    /// The name widths of the checkpoint this run resumes (`None`: unpadded names).
    pub fn with_widths(mut self, widths: Option<BTreeMap<String, usize>>) -> Outputs {
        self.widths = widths;
        self
    }

    /// The name widths fixed so far, for the checkpoint.
    pub fn widths(&self) -> Option<BTreeMap<String, usize>> {
        self.widths.clone()
    }

    /// Output records are counted but not written (`--format parquet`).
    pub fn without_output_files(mut self) -> Outputs {
        self.write_output = false;
        self
    }

    fn ext(&self) -> &'static str {
        if self.gzip {
            "ndjson.gz"
        } else {
            "ndjson"
        }
    }

    /// Learn the files listed so far (file indexes are stable and only grow).
    pub fn sync_files(&mut self, files: &[FileInfo]) {
        // `files` is a run of the engine's list (the new ones, or all): slots go by index.
        let known = self.slots.len();
        let new: Vec<&FileInfo> = files
            .iter()
            .skip_while(|f| (f.index as usize) < known)
            .enumerate()
            .take_while(|(i, f)| f.index as usize == known + i) // a gap: the next call has it
            .map(|(_, f)| f)
            .collect();
        let group = |f: &FileInfo| {
            let (dir, default_type) = match f.kind {
                Kind::Output | Kind::Attachment => ("", "output"),
                Kind::Error => ("error/", "OperationOutcome"),
                Kind::Deleted => ("deleted/", "Bundle"),
            };
            (
                dir,
                safe_name(f.resource_type.as_deref().unwrap_or(default_type)),
            )
        };
        // The files of each name known after this call (for the widths fixed now).
        let mut counts: HashMap<(Kind, String), u32> = HashMap::new();
        for f in &new {
            let (_, ty) = group(f);
            *counts.entry((f.kind, ty)).or_insert(0) += 1;
        }
        for f in new {
            let (dir, ty) = group(f);
            let ext = self.ext();
            let key = (f.kind, ty.clone());
            let n = self.per_name.entry(key.clone()).or_insert(0);
            *n += 1;
            let n = *n;
            let rel = match self.widths.as_mut() {
                None => format!("{dir}{ty}.{n}.{ext}"),
                Some(w) => {
                    let total = n - 1 + counts.get(&key).copied().unwrap_or(1);
                    let width = *w
                        .entry(format!("{dir}{ty}"))
                        .or_insert_with(|| total.to_string().len().max(3));
                    format!("{dir}{ty}.{n:0width$}.{ext}")
                }
            };
            let state = match self.resumed.remove(&rel) {
                Some(st) => {
                    self.active.insert(self.slots.len());
                    st
                }
                None => FileState::default(),
            };
            self.slots.push(Slot::new(rel, f.kind, state));
        }
    }

    /// The slot of fhirbulk's own error records: `SKIPPED` (skipped lines) or
    /// `ATTACHMENT_ERRORS`.
    fn own_slot(&mut self, which: usize) -> &mut Slot {
        let (name, slot) = if which == ATTACHMENT_ERRORS {
            (ATTACHMENT_ERRORS_FILE, &mut self.attachment_errors)
        } else {
            (SKIPPED_LINES, &mut self.skipped)
        };
        let rel = if self.gzip {
            format!("{name}.gz")
        } else {
            name.to_owned()
        };
        let state = self.resumed.get(&rel).cloned().unwrap_or_default();
        slot.get_or_insert_with(|| Slot::new(rel, Kind::Error, state))
    }

    /// The slots of fhirbulk's own error records that exist.
    fn own_slots(&self) -> impl Iterator<Item = &Slot> {
        self.skipped.iter().chain(self.attachment_errors.iter())
    }

    /// Save a document (`--attachments save`) where its record's url now points:
    /// `DIR/attachments/<name>`, written whole under a temporary name and renamed, so a file
    /// there is always a whole document (a run killed half-way writes it again at resume); it
    /// is synced, with its directory, before the next checkpoint counts it.
    fn write_attachment(&mut self, r: &fhirbulk::Record<'_>) -> Result<(), CliError> {
        #[derive(Deserialize)]
        struct Meta {
            file: String,
        }
        let bad = |why: String| CliError::Local {
            exit: crate::util::EXIT_OTHER,
            message: format!("internal error: an attachment record {why}"),
        };
        let meta: Meta =
            serde_json::from_slice(r.data).map_err(|e| bad(format!("without a file name: {e}")))?;
        let rel = Path::new(&meta.file);
        let safe = rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
            && meta.file.starts_with("attachments/");
        if !safe {
            return Err(bad(format!(
                "names {:?}, outside DIR/attachments/",
                meta.file
            )));
        }
        let path = self.dir.join(rel);
        if let Some(parent) = path.parent() {
            self.perms.create_dir_all(parent).map_err(|e| {
                CliError::io(format_args!("cannot create {}", parent.display()), &e)
            })?;
        }
        let content = r.content.unwrap_or_default();
        let tmp = path.with_extension("part");
        let write = || -> std::io::Result<()> {
            let mut f = self.perms.open(&tmp, false)?;
            f.write_all(content)?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| CliError::io(format_args!("cannot write {}", path.display()), &e))?;
        self.unsynced_documents.push(path);
        self.totals.attachments += 1;
        self.totals.attachment_bytes += content.len() as u64;
        Ok(())
    }

    /// Write a batch (all records of one file) and count it.
    pub fn write_batch(&mut self, batch: &Batch<'_>, ctl: &Controller) -> Result<(), CliError> {
        let Some(first) = batch.get(0) else {
            return Ok(());
        };
        let index = first.file_index as usize;
        if index >= self.slots.len() {
            self.sync_files(&ctl.files_from(self.slots.len()));
        }
        let Some(slot_kind) = self.slots.get(index).map(|s| s.kind) else {
            return Err(CliError::Local {
                exit: crate::util::EXIT_OTHER,
                message: format!("internal error: a record of unknown file {index}"),
            });
        };
        if first.kind == Kind::Attachment {
            // Alone in its batch: the document goes to its file, not into an NDJSON file.
            return self.write_attachment(&first);
        }
        let data = batch.data();
        let mut count = 0u64;
        for r in batch.iter() {
            count += 1;
            match r.kind {
                Kind::Attachment => {}
                Kind::Output => {
                    if let Some(n) = self.totals.records.get_mut(r.resource_type) {
                        *n += 1;
                    } else {
                        self.totals.records.insert(r.resource_type.to_owned(), 1);
                    }
                }
                Kind::Error => self.totals.error_records += 1,
                Kind::Deleted => self.totals.deleted_records += 1,
            }
        }
        self.totals.ndjson_bytes += data.len() as u64;
        // Error records for skipped invalid lines and for attachments carry the index of the
        // file they came from.
        let synthetic = first.kind != slot_kind;
        let own = if memchr_has(data, ATTACHMENT_ERROR_MARK) {
            ATTACHMENT_ERRORS
        } else {
            SKIPPED
        };
        if !self.write_output && first.kind == Kind::Output {
            self.active.insert(index);
            let slot = &mut self.slots[index];
            slot.state.records += count;
            slot.state.ndjson_bytes += data.len() as u64;
            return Ok(());
        }
        self.clock += 1;
        let clock = self.clock;
        let need_open = if synthetic {
            self.own_slot(own).writer.is_none()
        } else {
            self.slots[index].writer.is_none()
        };
        if need_open {
            if self.open >= MAX_OPEN {
                self.evict()?;
            }
            let dir = self.dir.clone();
            let gzip = self.gzip;
            let perms = self.perms;
            let slot = if synthetic {
                self.own_slot(own)
            } else {
                &mut self.slots[index]
            };
            open(&dir, perms, gzip, slot)?;
            self.open += 1;
            self.open_list.push(if synthetic { own } else { index });
        }
        if !synthetic {
            self.active.insert(index);
        }
        let dir = self.dir.clone();
        let slot = if synthetic {
            self.own_slot(own)
        } else {
            &mut self.slots[index]
        };
        slot.last_use = clock;
        slot.writer
            .as_mut()
            .expect("open")
            .write(data)
            .map_err(|e| {
                CliError::io(
                    format_args!("cannot write {}", dir.join(&*slot.rel).display()),
                    &e,
                )
            })?;
        slot.state.records += count;
        slot.state.ndjson_bytes += data.len() as u64;
        slot.dirty = true;
        slot.unsynced = true;
        Ok(())
    }

    fn slot_mut(&mut self, i: usize) -> Option<&mut Slot> {
        if i == SKIPPED {
            self.skipped.as_mut()
        } else if i == ATTACHMENT_ERRORS {
            self.attachment_errors.as_mut()
        } else {
            self.slots.get_mut(i)
        }
    }

    fn evict(&mut self) -> Result<(), CliError> {
        let dir = self.dir.clone();
        let victim = (0..self.open_list.len()).min_by_key(|&k| {
            let i = self.open_list[k];
            if i == SKIPPED {
                self.skipped.as_ref().map_or(0, |s| s.last_use)
            } else if i == ATTACHMENT_ERRORS {
                self.attachment_errors.as_ref().map_or(0, |s| s.last_use)
            } else {
                self.slots[i].last_use
            }
        });
        if let Some(k) = victim {
            let i = self.open_list.swap_remove(k);
            if let Some(s) = self.slot_mut(i) {
                close(&dir, s, true)?;
            }
            self.open -= 1;
        }
        Ok(())
    }

    /// Flush every file written since the last call (ending gzip members) and fsync them, so
    /// their lengths can go into a checkpoint.
    /// Sync the documents saved since the last time, and their directory (the renames).
    fn sync_documents(&mut self) -> Result<(), CliError> {
        let mut dirs = BTreeSet::new();
        for p in self.unsynced_documents.drain(..) {
            let synced = File::open(&p).and_then(|f| f.sync_data());
            synced.map_err(|e| CliError::io(format_args!("cannot sync {}", p.display()), &e))?;
            if let Some(d) = p.parent() {
                dirs.insert(d.to_owned());
            }
        }
        for d in dirs {
            let synced = File::open(&d).and_then(|f| f.sync_all());
            synced.map_err(|e| CliError::io(format_args!("cannot sync {}", d.display()), &e))?;
        }
        Ok(())
    }

    pub fn flush_all(&mut self, sync: bool) -> Result<(), CliError> {
        let dir = self.dir.clone();
        if sync {
            self.sync_documents()?;
        }
        for k in 0..self.open_list.len() {
            let i = self.open_list[k];
            let Some(s) = self.slot_mut(i) else {
                continue;
            };
            if let Some(w) = s.writer.as_mut() {
                if s.dirty {
                    s.state.bytes = w.flush().map_err(|e| {
                        CliError::io(
                            format_args!("cannot write {}", dir.join(&*s.rel).display()),
                            &e,
                        )
                    })?;
                    s.dirty = false;
                }
                if sync && s.unsynced {
                    w.sync().map_err(|e| {
                        CliError::io(
                            format_args!("cannot sync {}", dir.join(&*s.rel).display()),
                            &e,
                        )
                    })?;
                    s.unsynced = false;
                }
            }
        }
        Ok(())
    }

    /// Close a file the engine delivered completely.
    pub fn close_file(&mut self, index: usize) -> Result<(), CliError> {
        self.active.remove(&index);
        let dir = self.dir.clone();
        if let Some(s) = self.slots.get_mut(index) {
            if s.writer.is_some() {
                close(&dir, s, true)?;
                self.open -= 1;
                if let Some(k) = self.open_list.iter().position(|&i| i == index) {
                    self.open_list.swap_remove(k);
                }
            }
        }
        Ok(())
    }

    /// File `index` was complete before this run (its state came with the resume).
    pub fn mark_done(&mut self, index: usize) {
        self.active.remove(&index);
    }

    /// Path and state of file `index` (complete: for the complete files' list).
    pub fn done_state(&self, index: usize) -> (String, FileState) {
        self.slots
            .get(index)
            .map(|s| (s.rel.to_string(), s.state.clone()))
            .unwrap_or_default()
    }

    /// The state of the files in progress, for a checkpoint (call after
    /// [`Outputs::flush_all`]): the complete ones are in the complete files' list.
    pub fn states(&self) -> BTreeMap<String, FileState> {
        // States resumed for files the engine has not listed again yet stay.
        let mut m: BTreeMap<String, FileState> = self
            .resumed
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for &i in &self.active {
            let s = &self.slots[i];
            m.insert(s.rel.to_string(), s.state.clone());
        }
        for s in self.own_slots() {
            if s.opened || s.state != FileState::default() {
                m.insert(s.rel.to_string(), s.state.clone());
            }
        }
        m
    }

    /// Close everything and create the files that got no record, so every manifest file has
    /// its file.
    pub fn finish(&mut self) -> Result<Finished, CliError> {
        self.sync_documents()?;
        let dir = self.dir.clone();
        let gzip = self.gzip;
        let perms = self.perms;
        let write_output = self.write_output;
        for s in self
            .slots
            .iter_mut()
            .chain(self.skipped.iter_mut())
            .chain(self.attachment_errors.iter_mut())
        {
            if !write_output && s.kind == Kind::Output {
                continue;
            }
            if s.writer.is_some() {
                close(&dir, s, true)?;
            } else if s.state.records == 0 && !dir.join(&*s.rel).exists() {
                // A file without records: create it (an empty gzip member for .gz).
                open(&dir, perms, gzip, s)?;
                if gzip {
                    if let Some(w) = s.writer.as_deref_mut() {
                        w.gz = Some(GzEncoder::new(
                            w.idle.take().expect("file"),
                            Compression::default(),
                        ));
                    }
                }
                close(&dir, s, true)?;
            }
        }
        self.open = 0;
        self.open_list.clear();
        self.active.clear();
        let written = |s: &&Slot| write_output || s.kind != Kind::Output;
        let all = self.slots.iter().chain(self.own_slots()).filter(written);
        Ok(Finished {
            files: self.slots.iter().filter(written).count() + self.own_slots().count(),
            bytes_on_disk: all.map(|s| s.state.bytes).sum(),
        })
    }

    /// Every output file after [`Outputs::finish`], with the engine's `files` for their URL
    /// and type.
    pub fn written(&self, files: &[FileInfo]) -> Vec<WrittenFile> {
        let mut out: Vec<WrittenFile> = self
            .slots
            .iter()
            .zip(files)
            .filter(|(s, _)| self.write_output || s.kind != Kind::Output)
            .map(|(s, f)| WrittenFile {
                rel: s.rel.to_string(),
                kind: s.kind,
                resource_type: f.resource_type.clone(),
                url: f.url.clone(),
                state: s.state.clone(),
            })
            .collect();
        for s in self.own_slots() {
            out.push(WrittenFile {
                rel: s.rel.to_string(),
                kind: Kind::Error,
                resource_type: Some("OperationOutcome".into()),
                url: String::new(),
                state: s.state.clone(),
            });
        }
        out
    }
}

fn memchr_has(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

fn open(dir: &Path, perms: Perms, gzip: bool, s: &mut Slot) -> Result<(), CliError> {
    let path = dir.join(&*s.rel);
    if let Some(parent) = path.parent() {
        perms
            .create_dir_all(parent)
            .map_err(|e| CliError::io(format_args!("cannot create {}", parent.display()), &e))?;
    }
    // Reopened in this run, or truncated to its checkpointed length at start: append.
    // Otherwise the file is new in this export: start it empty.
    let append = s.opened || s.state.bytes > 0 || s.state.records > 0;
    let f = perms
        .open(&path, append)
        .map_err(|e| CliError::io(format_args!("cannot open {}", path.display()), &e))?;
    s.writer = Some(Box::new(Writer {
        idle: Some(BufWriter::with_capacity(256 * 1024, f)),
        gz: None,
        gzip,
    }));
    s.opened = true;
    Ok(())
}

fn close(dir: &Path, s: &mut Slot, sync: bool) -> Result<(), CliError> {
    if let Some(mut w) = s.writer.take() {
        let path = dir.join(&*s.rel);
        s.state.bytes = w
            .flush()
            .map_err(|e| CliError::io(format_args!("cannot write {}", path.display()), &e))?;
        if sync {
            w.sync()
                .map_err(|e| CliError::io(format_args!("cannot sync {}", path.display()), &e))?;
        }
        s.dirty = false;
        s.unsynced = false;
    }
    Ok(())
}

/// On resume: cut every file back to its checkpointed length, so no line written after the
/// checkpoint is there twice. A file shorter than recorded was changed by someone else.
pub fn truncate_to_checkpoint(
    dir: &Path,
    perms: Perms,
    files: &BTreeMap<String, FileState>,
) -> Result<(), CliError> {
    for (rel, st) in files {
        if rel.contains("..") || rel.starts_with('/') {
            return Err(CliError::usage(format!(
                "the checkpoint in {} names a file outside it ({rel:?}); remove the checkpoint",
                dir.display()
            )));
        }
        let path = dir.join(rel);
        match std::fs::metadata(&path) {
            Ok(m) if m.len() >= st.bytes => {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| CliError::io(format_args!("cannot open {}", path.display()), &e))?;
                perms
                    .fix_file(&f)
                    .map_err(|e| CliError::io(format_args!("cannot chmod {}", path.display()), &e))?;
                f.set_len(st.bytes)
                    .map_err(|e| CliError::io(format_args!("cannot truncate {}", path.display()), &e))?;
                f.sync_all()
                    .map_err(|e| CliError::io(format_args!("cannot sync {}", path.display()), &e))?;
            }
            Ok(m) => {
                return Err(CliError::usage(format!(
                    "cannot resume: {} is {} bytes, shorter than the {} bytes the checkpoint recorded \
(was it modified?); cancel with `fhirbulk cancel --out {}` and start again",
                    path.display(),
                    m.len(),
                    st.bytes,
                    dir.display()
                )))
            }
            Err(_) if st.bytes == 0 => {}
            Err(e) => {
                return Err(CliError::usage(format!(
                    "cannot resume: {} ({e}) is missing; the checkpoint recorded {} bytes; cancel with \
`fhirbulk cancel --out {}` and start again",
                    path.display(),
                    st.bytes,
                    dir.display()
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(index: u32) -> FileInfo {
        FileInfo {
            index,
            kind: Kind::Output,
            resource_type: Some("Patient".into()),
            url: format!("http://h/f{index}"),
            count: None,
            position: index as usize,
        }
    }

    #[test]
    fn files_are_learned_by_index_from_any_run_of_the_list() {
        let mut o = Outputs::new(
            Path::new("/nonexistent"),
            false,
            Perms::default(),
            HashMap::new(),
            Totals::default(),
        );
        o.sync_files(&[file(0), file(1)]);
        o.sync_files(&[file(1), file(2)]); // overlaps: 1 is known
        o.sync_files(&[file(3)]); // only the new one
        o.sync_files(&[file(5)]); // a gap: waits for 4
        o.sync_files(&(0..6).map(file).collect::<Vec<_>>());
        let rels: Vec<&str> = o.slots.iter().map(|s| &*s.rel).collect();
        assert_eq!(
            rels,
            (1..=6)
                .map(|n| format!("Patient.{n:03}.ndjson"))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn names_are_padded_to_the_count_known_at_the_first_and_kept() {
        let new = || {
            Outputs::new(
                Path::new("/nonexistent"),
                false,
                Perms::default(),
                HashMap::new(),
                Totals::default(),
            )
        };
        let mut o = new();
        o.sync_files(&(0..1200).map(file).collect::<Vec<_>>());
        assert_eq!(&*o.slots[0].rel, "Patient.0001.ndjson");
        assert_eq!(&*o.slots[1199].rel, "Patient.1200.ndjson");
        // Fixed at the first name: more files later keep the width.
        let mut o = new();
        o.sync_files(&(0..5).map(file).collect::<Vec<_>>());
        o.sync_files(&(5..1001).map(file).collect::<Vec<_>>());
        assert_eq!(&*o.slots[4].rel, "Patient.005.ndjson");
        assert_eq!(&*o.slots[1000].rel, "Patient.1001.ndjson");
        assert_eq!(o.widths().unwrap()["Patient"], 3);
        // A resumed run names as the checkpoint's widths say; an old checkpoint's: unpadded.
        let mut o = new().with_widths(Some([("Patient".to_owned(), 5)].into()));
        o.sync_files(&[file(0)]);
        assert_eq!(&*o.slots[0].rel, "Patient.00001.ndjson");
        let mut o = new().with_widths(None);
        o.sync_files(&[file(0)]);
        assert_eq!(&*o.slots[0].rel, "Patient.1.ndjson");
    }
}
