//! The export's files: what each is (its manifest entry and index), what the caller has received
//! of it (for checkpoints), and how an entry is matched to a file already known.
//!
//! Files are known by identity, never by their position in a manifest's lists nor by their full
//! URL: a manifest fetched again (for expired links), a v3 partial manifest at the next poll, or
//! the final manifest after partial ones may list the same files in another order, drop or add
//! entries, and sign every link afresh. A file's identity is its kind, resource type and URL
//! without the query (pre-signed URLs change only their signature).
//!
//! Each fetch of a manifest (its first page and the pages it links) is one [`Session`]. An
//! entry is matched to a file known from an earlier session by its exact URL, else by identity
//! when exactly one known file has it. When that cannot be told — several files share the path
//! and differ only in their query, and links are re-signed — matching fails naming the file
//! rather than guessing. An entry whose URL appears twice in one session is a duplicate:
//! downloaded once. A file matched by identity takes the entry's (fresh) URL.
//!
//! Memory is a few hundred bytes per file, the URL included, whatever the number of files: the
//! table holds each URL once (the lookup tables hold indexes under a hash of the URL or of the
//! identity), the resource types are shared, and the manifest handed to the caller is written
//! from the table rather than kept as a JSON tree.

use crate::error::{redact_url, Error, Result};
use crate::manifest::{Kind, ManifestFile};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, Hash, Hasher};
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// A file listed by the manifest; `index` is what records carry as `file_index`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    pub index: u32,
    pub kind: Kind,
    pub resource_type: Option<String>,
    pub url: String,
    pub count: Option<u64>,
    /// Index within its manifest list (`output`, `error` or `deleted`), across pages.
    pub position: usize,
}

/// What the caller has received of one file (the consumer writes it, checkpoints read it).
#[derive(Default)]
pub(crate) struct FileProgress {
    /// Physical line number of the last line delivered.
    line: AtomicU64,
    /// Every line was delivered.
    complete: AtomicBool,
    /// Every line was downloaded (handed to the buffer, from which the caller gets it before
    /// an error that ends the export).
    fetched: AtomicBool,
    /// `pending` holds something (read without the lock on every record).
    has_pending: AtomicBool,
    /// The records made for the attachments of the line after `line` that the caller has
    /// received, before that line itself: the line, and per attachment position up to the
    /// last one delivered its outcome (`s` document, `e` error record, `-` none).
    pending: parking_lot::Mutex<Option<Box<(u64, String)>>>,
}

impl FileProgress {
    pub(crate) fn line(&self) -> u64 {
        self.line.load(Ordering::Acquire)
    }
    pub(crate) fn set_line(&self, line: u64) {
        self.line.store(line, Ordering::Release);
    }
    pub(crate) fn complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }
    pub(crate) fn fetched(&self) -> bool {
        self.fetched.load(Ordering::Acquire)
    }
    pub(crate) fn set_fetched(&self) {
        self.fetched.store(true, Ordering::Release);
    }
    /// The caller received the record made for attachment `position` of line `line`.
    pub(crate) fn push_pending(&self, line: u64, position: u32, outcome: u8) {
        let mut p = self.pending.lock();
        let e = p.get_or_insert_with(|| Box::new((line, String::new())));
        if e.0 != line {
            **e = (line, String::new());
        }
        while e.1.len() < position as usize {
            e.1.push('-');
        }
        e.1.truncate(position as usize);
        e.1.push(outcome as char);
        self.has_pending.store(true, Ordering::Release);
    }
    /// The attachments' records delivered of the line after the last line delivered.
    pub(crate) fn pending(&self) -> Option<String> {
        if !self.has_pending.load(Ordering::Acquire) {
            return None;
        }
        let p = self.pending.lock();
        p.as_ref()
            .filter(|e| e.0 == self.line() + 1)
            .map(|e| e.1.clone())
    }
    /// Set what [`FileProgress::pending`] gives (a checkpoint restored, a batch handed back).
    pub(crate) fn set_pending(&self, outcomes: Option<String>) {
        let mut p = self.pending.lock();
        *p = outcomes
            .filter(|o| !o.is_empty())
            .map(|o| Box::new((self.line() + 1, o)));
        self.has_pending.store(p.is_some(), Ordering::Release);
    }
    /// Line `line` was delivered: the records of its attachments are behind it.
    pub(crate) fn clear_pending_through(&self, line: u64) {
        if !self.has_pending.load(Ordering::Acquire) {
            return;
        }
        let mut p = self.pending.lock();
        if p.as_ref().is_some_and(|e| e.0 <= line) {
            *p = None;
            self.has_pending.store(false, Ordering::Release);
        }
    }
    /// Mark every line delivered; true the first time.
    pub(crate) fn set_complete(&self) -> bool {
        !self.complete.swap(true, Ordering::AcqRel)
    }
}

/// Progress is kept in blocks of this many files (one allocation per block, not per file).
const BLOCK: usize = 1024;

/// One file's delivery progress, shared with the consumer without holding the table's lock.
#[derive(Clone)]
pub(crate) struct ProgressRef(Arc<[FileProgress]>, u32);

impl Deref for ProgressRef {
    type Target = FileProgress;
    fn deref(&self) -> &FileProgress {
        &self.0[self.1 as usize]
    }
}

/// No index (end of a hash chain, no resource type).
const NONE: u32 = u32::MAX;

/// One file as the table keeps it (about 56 bytes plus its URL).
struct Entry {
    url: Box<str>,
    /// The manifest entry's other fields (rare).
    extra: Option<Box<Map<String, Value>>>,
    count: Option<u64>,
    position: u32,
    /// Index into `Files::types`, or `NONE`.
    ty: u32,
    kind: Kind,
}

/// Every file of an export, by index: its entry, its delivery progress, the registry that
/// decides which entries are files already known, and what checkpoints need.
#[derive(Default)]
pub(crate) struct Files {
    entries: Vec<Entry>,
    /// Resource types, each once.
    types: Vec<Box<str>>,
    type_index: HashMap<Box<str>, u32>,
    /// Delivery progress, `BLOCK` files per allocation.
    progress: Vec<Arc<[FileProgress]>>,
    /// Files seen per kind, for `FileInfo::position`.
    kind_counts: [u32; 3],
    /// The files delivered completely, in the order they completed (for callers that follow
    /// the export without scanning every file).
    completed: Vec<u32>,
    /// The same as ranges of indexes (start -> end, exclusive), for checkpoints.
    complete_ranges: BTreeMap<u32, u32>,
    /// Files the consumer has received part of and not all: with the ranges, a checkpoint
    /// costs the files in progress, not the files known.
    started: BTreeSet<u32>,
    /// A digest of the identities of the files in index order (see [`identity_digest`]).
    digest: Digest,
    registry: Registry,
}

/// FNV-1a over the files' identities in index order: the same in every process and version,
/// so that a checkpoint can tell whether a file list given at resume is the one it counted.
#[derive(Clone, Copy)]
pub(crate) struct Digest(u64);

impl Default for Digest {
    fn default() -> Digest {
        Digest(0xcbf2_9ce4_8422_2325)
    }
}

impl Digest {
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn add(&mut self, kind: Kind, ty: Option<&str>, path: &str) {
        self.bytes(kind.name().as_bytes());
        self.bytes(&[0]);
        self.bytes(ty.unwrap_or("").as_bytes());
        self.bytes(&[0]);
        self.bytes(path.as_bytes());
        self.bytes(&[0xff]);
    }
    pub(crate) fn hex(self) -> String {
        format!("{:016x}", self.0)
    }
}

/// The URL without query and fragment: with kind and type, a file's identity.
fn path_of(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => url.split(['?', '#']).next().unwrap_or("").to_owned(),
    }
}

impl Files {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn type_name(&self, e: &Entry) -> Option<&str> {
        (e.ty != NONE).then(|| &*self.types[e.ty as usize])
    }

    fn info_of(&self, index: usize, e: &Entry) -> FileInfo {
        FileInfo {
            index: index as u32,
            kind: e.kind,
            resource_type: self.type_name(e).map(str::to_owned),
            url: e.url.to_string(),
            count: e.count,
            position: e.position as usize,
        }
    }

    /// File `index`.
    pub(crate) fn info(&self, index: u32) -> Option<FileInfo> {
        self.entries
            .get(index as usize)
            .map(|e| self.info_of(index as usize, e))
    }

    /// The files from index `start` on.
    pub(crate) fn list_from(&self, start: usize) -> Vec<FileInfo> {
        self.list_between(start, usize::MAX)
    }

    /// The files with indexes in `start..end` (as far as known).
    pub(crate) fn list_between(&self, start: usize, end: usize) -> Vec<FileInfo> {
        let end = end.min(self.entries.len());
        let start = start.min(end);
        self.entries[start..end]
            .iter()
            .enumerate()
            .map(|(i, e)| self.info_of(start + i, e))
            .collect()
    }

    /// Kind, resource type and URL of file `index` (what a download needs).
    pub(crate) fn job_parts(&self, index: u32) -> Option<(Kind, Option<&str>, &str)> {
        let e = self.entries.get(index as usize)?;
        Some((e.kind, self.type_name(e), &e.url))
    }

    /// Files per kind (output, error, deleted).
    pub(crate) fn kind_counts(&self) -> [usize; 3] {
        self.kind_counts.map(|n| n as usize)
    }

    fn intern(&mut self, ty: Option<String>) -> u32 {
        let Some(ty) = ty else { return NONE };
        if let Some(&i) = self.type_index.get(ty.as_str()) {
            return i;
        }
        let i = self.types.len() as u32;
        let b: Box<str> = ty.into();
        self.types.push(b.clone());
        self.type_index.insert(b, i);
        i
    }

    /// Add a file (the next index) registered in session `s`, with `lines` already delivered.
    fn push(&mut self, s: &Session, f: ManifestFile, k: &Ident, at: Restored) -> u32 {
        let (lines, complete, pending) = at;
        let index = self.entries.len() as u32;
        let position = self.kind_counts[f.kind as usize];
        self.kind_counts[f.kind as usize] += 1;
        self.digest.add(f.kind, f.resource_type.as_deref(), &k.path);
        let ty = self.intern(f.resource_type);
        let url: Box<str> = f.url.into();
        let h = self.registry.url_hash(&url);
        self.entries.push(Entry {
            url,
            extra: f.extra,
            count: f.count,
            position,
            ty,
            kind: f.kind,
        });
        if index as usize % BLOCK == 0 {
            self.progress
                .push((0..BLOCK).map(|_| FileProgress::default()).collect());
        }
        let p = self.progress_ref(index);
        p.set_line(lines);
        if complete {
            p.set_complete();
            self.completed(index);
        } else if lines > 0 || pending.is_some() {
            p.set_pending(pending);
            self.started.insert(index);
        }
        self.registry.link_url(h, index);
        self.registry.born.push(s.id);
        let e = self.registry.by_key.entry(k.hash).or_insert((index, 0));
        e.1 += 1;
        index
    }

    fn progress_ref(&self, index: u32) -> ProgressRef {
        let i = index as usize;
        ProgressRef(self.progress[i / BLOCK].clone(), (i % BLOCK) as u32)
    }

    /// File `index` was delivered completely (called once per file, by the consumer).
    pub(crate) fn completed(&mut self, index: u32) {
        self.completed.push(index);
        self.started.remove(&index);
        // Join the ranges on either side.
        let mut start = index;
        let mut end = index + 1;
        if let Some((&s, &e)) = self.complete_ranges.range(..=index).next_back() {
            if e >= index {
                if e > index {
                    return; // already in a range
                }
                start = s;
            }
        }
        if let Some(e) = self.complete_ranges.remove(&end) {
            end = e;
        }
        self.complete_ranges.insert(start, end);
    }

    /// The files delivered completely, from the `start`-th to complete on.
    pub(crate) fn completed_from(&self, start: usize) -> &[u32] {
        self.completed.get(start..).unwrap_or(&[])
    }

    /// The delivery progress of file `index`, for the consumer about to hand out its records.
    pub(crate) fn progress(&mut self, index: u32) -> Option<ProgressRef> {
        if index as usize >= self.entries.len() {
            return None;
        }
        let p = self.progress_ref(index);
        if !p.complete() {
            self.started.insert(index);
        }
        Some(p)
    }

    /// The delivery progress of file `index` (without marking it started).
    pub(crate) fn progress_of(&self, index: u32) -> Option<ProgressRef> {
        ((index as usize) < self.entries.len()).then(|| self.progress_ref(index))
    }

    /// The file's URL changed (an expired link fetched again).
    pub(crate) fn set_url(&mut self, index: u32, url: String) {
        let Some(e) = self.entries.get(index as usize) else {
            return;
        };
        if *e.url == *url {
            return;
        }
        let old = self.registry.url_hash(&e.url);
        self.registry.unlink_url(old, index);
        let url: Box<str> = url.into();
        let h = self.registry.url_hash(&url);
        self.entries[index as usize].url = url;
        self.registry.link_url(h, index);
    }

    /// The (redacted) URLs of the files not delivered completely, and not downloaded
    /// completely either (the lines of a downloaded file still reach the caller, from the
    /// buffer, before the error that ends the export).
    pub(crate) fn undelivered(&self) -> Vec<String> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                let p = self.progress_ref(*i as u32);
                !p.complete() && !p.fetched()
            })
            .map(|(_, e)| redact_url(&e.url))
            .collect()
    }

    /// What a checkpoint records of the files: how many are known, the digest of their
    /// identities, the ranges of complete files and the files in progress (index, lines
    /// delivered). Costs the ranges and files in progress, not the files known.
    pub(crate) fn checkpoint(&self) -> FilesCheckpoint {
        FilesCheckpoint {
            known: self.entries.len() as u32,
            digest: self.digest,
            complete: self.complete_ranges.iter().map(|(&s, &e)| [s, e]).collect(),
            delivered: self
                .started
                .iter()
                .map(|&i| {
                    let p = self.progress_ref(i);
                    (i, p.line(), p.pending())
                })
                .filter(|(_, l, p)| *l > 0 || p.is_some())
                .collect(),
        }
    }

    /// The digest of the identities of the files known.
    pub(crate) fn digest(&self) -> Digest {
        self.digest
    }

    /// The files `start..end` (as far as known) as JSON objects (`{"index", "kind", "type", "url", "count"}`,
    /// and `"extra"` with the entry's other fields when it has some): a JSON array, or NDJSON
    /// lines. What `resume_files` takes back.
    pub(crate) fn files_json_from(&self, start: usize, end: usize, ndjson: bool) -> String {
        let end = end.min(self.entries.len());
        let start = start.min(end);
        let mut out = Vec::with_capacity((end - start) * 120 + 2);
        if !ndjson {
            out.push(b'[');
        }
        for (i, e) in self.entries[start..end].iter().enumerate() {
            if !ndjson && i > 0 {
                out.push(b',');
            }
            let doc = ListedRef {
                index: (start + i) as u32,
                kind: e.kind.name(),
                resource_type: self.type_name(e),
                url: &e.url,
                count: e.count,
                extra: e.extra.as_deref(),
            };
            let _ = serde_json::to_writer(&mut out, &doc);
            if ndjson {
                out.push(b'\n');
            }
        }
        if !ndjson {
            out.push(b']');
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// The manifest handed to the caller: `top` (the top-level fields of the pages and partial
    /// manifests, the latest winning) with every file in `output`, `error` and `deleted` in
    /// index order, written from the table (keys in sorted order, like a `serde_json::Value`).
    pub(crate) fn manifest_json(&self, top: &Map<String, Value>) -> String {
        serde_json::to_string(&ManifestDoc { top, files: self }).unwrap_or_default()
    }

    /// [`Files::manifest_json`] written to `w` (no copy of the whole text in memory).
    pub(crate) fn write_manifest(
        &self,
        top: &Map<String, Value>,
        w: &mut dyn std::io::Write,
    ) -> std::io::Result<()> {
        serde_json::to_writer(w, &ManifestDoc { top, files: self }).map_err(std::io::Error::from)
    }
}

/// What a checkpoint records of the files (see [`Files::checkpoint`]).
pub(crate) struct FilesCheckpoint {
    pub(crate) known: u32,
    pub(crate) digest: Digest,
    pub(crate) complete: Vec<[u32; 2]>,
    /// Files part-way delivered: index, last line delivered, and the records of the next
    /// line's attachments delivered (see [`FileProgress::pending`]).
    pub(crate) delivered: Vec<(u32, u64, Option<String>)>,
}

/// What a checkpoint says of a file: lines delivered, complete, and the attachments' records
/// of the next line delivered.
pub(crate) type Restored = (u64, bool, Option<String>);

#[derive(Serialize)]
struct ListedRef<'a> {
    index: u32,
    kind: &'static str,
    #[serde(rename = "type")]
    resource_type: Option<&'a str>,
    url: &'a str,
    count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    extra: Option<&'a Map<String, Value>>,
}

struct ManifestDoc<'a> {
    top: &'a Map<String, Value>,
    files: &'a Files,
}

impl Serialize for ManifestDoc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let lists = ["deleted", "error", "output"];
        let mut keys: Vec<&str> = self
            .top
            .keys()
            .map(String::as_str)
            .filter(|k| !lists.contains(k))
            .chain(lists)
            .collect();
        keys.sort_unstable();
        let mut m = s.serialize_map(Some(keys.len()))?;
        for k in keys {
            match Kind::from_name(k) {
                Some(kind) => m.serialize_entry(
                    k,
                    &EntriesOf {
                        files: self.files,
                        kind,
                    },
                )?,
                None => m.serialize_entry(k, &self.top[k])?,
            }
        }
        m.end()
    }
}

struct EntriesOf<'a> {
    files: &'a Files,
    kind: Kind,
}

impl Serialize for EntriesOf<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let n = self.files.kind_counts[self.kind as usize] as usize;
        let mut seq = s.serialize_seq(Some(n))?;
        for e in self.files.entries.iter().filter(|e| e.kind == self.kind) {
            seq.serialize_element(&EntryDoc {
                files: self.files,
                e,
            })?;
        }
        seq.end()
    }
}

struct EntryDoc<'a> {
    files: &'a Files,
    e: &'a Entry,
}

enum Field<'a> {
    Str(&'a str),
    Count(u64),
    Other(&'a Value),
}

impl Serialize for EntryDoc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut fields: Vec<(&str, Field<'_>)> = vec![("url", Field::Str(&self.e.url))];
        if let Some(t) = self.files.type_name(self.e) {
            fields.push(("type", Field::Str(t)));
        }
        if let Some(c) = self.e.count {
            fields.push(("count", Field::Count(c)));
        }
        for (k, v) in self.e.extra.iter().flat_map(|m| m.iter()) {
            fields.push((k, Field::Other(v)));
        }
        fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut m = s.serialize_map(Some(fields.len()))?;
        for (k, v) in fields {
            match v {
                Field::Str(x) => m.serialize_entry(k, x)?,
                Field::Count(x) => m.serialize_entry(k, &x)?,
                Field::Other(x) => m.serialize_entry(k, x)?,
            }
        }
        m.end()
    }
}

/// What a manifest entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Match {
    /// A file not known before, registered with this index.
    New(u32),
    /// A known file (its URL may have changed).
    Known(u32),
    /// Listed twice in this fetch of the manifest.
    Duplicate(u32),
    /// Not known, and the session does not register new files (a manifest fetched again).
    Unknown,
}

/// A file's identity: its path, and a 128-bit hash of kind, type and path.
struct Ident {
    path: String,
    hash: u128,
}

/// The lookup tables: indexes by a hash of the URL (chained, checked against the URL in the
/// table) and by a 128-bit hash of the identity (the first file with it, and how many).
#[derive(Default)]
struct Registry {
    url_hasher: RandomState,
    key_hashers: (RandomState, RandomState),
    by_url: HashMap<u64, u32>,
    /// The next file in the same `by_url` chain, per file.
    url_next: Vec<u32>,
    by_key: HashMap<u128, (u32, u32)>,
    /// The session each file was registered in.
    born: Vec<u32>,
    sessions: u32,
}

impl Registry {
    fn url_hash(&self, url: &str) -> u64 {
        self.url_hasher.hash_one(url)
    }

    fn ident(&self, f: &ManifestFile) -> Ident {
        let path = path_of(&f.url);
        let h = |s: &RandomState| {
            let mut h = s.build_hasher();
            f.kind.hash(&mut h);
            f.resource_type.hash(&mut h);
            path.hash(&mut h);
            h.finish()
        };
        let hash = (u128::from(h(&self.key_hashers.0)) << 64) | u128::from(h(&self.key_hashers.1));
        Ident { path, hash }
    }

    fn link_url(&mut self, h: u64, index: u32) {
        let next = self.by_url.insert(h, index).unwrap_or(NONE);
        let i = index as usize;
        if self.url_next.len() <= i {
            self.url_next.resize(i + 1, NONE);
        }
        self.url_next[i] = next;
    }

    fn unlink_url(&mut self, h: u64, index: u32) {
        let Some(&head) = self.by_url.get(&h) else {
            return;
        };
        let next = self.url_next[index as usize];
        if head == index {
            if next == NONE {
                self.by_url.remove(&h);
            } else {
                self.by_url.insert(h, next);
            }
            return;
        }
        let mut at = head;
        while at != NONE {
            let n = self.url_next[at as usize];
            if n == index {
                self.url_next[at as usize] = next;
                return;
            }
            at = n;
        }
    }
}

/// One fetch of a manifest (first page and the pages it links).
pub(crate) struct Session {
    id: u32,
    /// Register entries not known before (false for a manifest fetched again for fresh links).
    register: bool,
    /// Files matched in this session: true when by identity (not by exact URL).
    claimed: HashMap<u32, bool>,
    /// Per identity: files listed in this session, and whether one was matched by identity.
    keys: HashMap<u128, (u32, bool)>,
}

impl Files {
    /// How many files are registered (the next index).
    #[cfg(test)]
    fn registered(&self) -> usize {
        self.registry.born.len()
    }

    /// Start a fetch of a manifest.
    pub(crate) fn session(&mut self, register: bool) -> Session {
        self.registry.sessions += 1;
        Session {
            id: self.registry.sessions,
            register,
            claimed: HashMap::new(),
            keys: HashMap::new(),
        }
    }

    /// The file whose URL is `url`.
    fn find_url(&self, url: &str) -> Option<u32> {
        let mut at = *self.registry.by_url.get(&self.registry.url_hash(url))?;
        while at != NONE {
            if *self.entries[at as usize].url == *url {
                return Some(at);
            }
            at = self.registry.url_next[at as usize];
        }
        None
    }

    /// Add files restored from a checkpoint (in their order, as an earlier session), each with
    /// the lines already delivered and whether it is complete.
    pub(crate) fn restore(
        &mut self,
        files: Vec<ManifestFile>,
        progress: &dyn Fn(u32) -> Restored,
    ) -> Vec<u32> {
        let s = self.session(true);
        let mut out = Vec::with_capacity(files.len());
        for f in files {
            let k = self.registry.ident(&f);
            let at = progress(self.entries.len() as u32);
            out.push(self.push(&s, f, &k, at));
        }
        out
    }

    /// Match the entries of one manifest page of session `s`; new files are added to the
    /// table (the entries move into it).
    pub(crate) fn resolve(
        &mut self,
        s: &mut Session,
        page: Vec<ManifestFile>,
    ) -> Result<Vec<Match>> {
        let mut out: Vec<Option<Match>> = vec![None; page.len()];
        let idents: Vec<Ident> = page.iter().map(|f| self.registry.ident(f)).collect();
        // By exact URL first, so that identity is only asked of entries that need it.
        for (i, f) in page.iter().enumerate() {
            let Some(idx) = self.find_url(&f.url) else {
                continue;
            };
            if self.registry.born[idx as usize] == s.id || s.claimed.contains_key(&idx) {
                out[i] = Some(Match::Duplicate(idx));
                continue;
            }
            s.claimed.insert(idx, false);
            s.keys.entry(idents[i].hash).or_default().0 += 1;
            out[i] = Some(Match::Known(idx));
        }
        for (i, f) in page.into_iter().enumerate() {
            if out[i].is_some() {
                continue;
            }
            // Listed before on this page (registered or matched by identity just now).
            if let Some(idx) = self.find_url(&f.url) {
                out[i] = Some(Match::Duplicate(idx));
                continue;
            }
            let k = &idents[i];
            let (first, total) = self
                .registry
                .by_key
                .get(&k.hash)
                .copied()
                .unwrap_or((NONE, 0));
            let listed = s.keys.get(&k.hash).map_or(0, |e| e.0);
            // Files with this identity neither registered nor matched in this session.
            let candidates = total.saturating_sub(listed);
            let m = match candidates {
                0 if s.register => Match::New(self.push(s, f, k, (0, false, None))),
                0 => Match::Unknown,
                1 if total == 1 => {
                    // The same file under a fresh signature.
                    s.claimed.insert(first, true);
                    self.set_url(first, f.url);
                    Match::Known(first)
                }
                _ => {
                    return Err(ambiguous(
                        &f,
                        "several files have this kind, type and URL path, and their URLs differ only in the query",
                    ))
                }
            };
            if let Match::New(_) | Match::Known(_) = m {
                let e = s.keys.entry(k.hash).or_default();
                e.0 += 1;
                e.1 |= matches!(m, Match::Known(_));
            }
            out[i] = Some(m);
        }
        // A match by identity is only sound when its identity names one file of this fetch.
        for (i, m) in out.iter().enumerate() {
            if let Some(Match::Known(idx) | Match::New(idx)) = *m {
                if let Some(&(files, by_identity)) = s.keys.get(&idents[i].hash) {
                    if by_identity && files > 1 {
                        let e = &self.entries[idx as usize];
                        let f = ManifestFile::new(
                            e.kind,
                            self.type_name(e).map(str::to_owned),
                            e.url.to_string(),
                            None,
                            None,
                        );
                        return Err(ambiguous(
                            &f,
                            &format!(
                                "{files} files of this fetch of the manifest have its kind, type and URL path and one was matched by path alone (file {idx})",
                            ),
                        ));
                    }
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|m| m.unwrap_or(Match::Unknown))
            .collect())
    }
}

fn ambiguous(f: &ManifestFile, why: &str) -> Error {
    Error::protocol(format!(
        "the manifest lists a {} file{} at {} that fhirbulk cannot tell apart from another: {why}; \
         it fails rather than guess which file this is",
        f.kind.name(),
        f.resource_type
            .as_deref()
            .map(|t| format!(" of type {t}"))
            .unwrap_or_default(),
        redact_url(&f.url)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(ty: &str, url: &str) -> ManifestFile {
        ManifestFile::new(Kind::Output, Some(ty.into()), url.into(), None, None)
    }

    fn resolve(r: &mut Files, files: &[ManifestFile]) -> Result<Vec<Match>> {
        let mut s = r.session(true);
        r.resolve(&mut s, files.to_vec())
    }

    #[test]
    fn resigned_and_reordered_links_match_their_files() {
        let mut r = Files::default();
        let first = [
            f("Patient", "http://h/1?sig=a"),
            f("Patient", "http://h/2?sig=b"),
        ];
        assert_eq!(
            resolve(&mut r, &first).unwrap(),
            vec![Match::New(0), Match::New(1)]
        );
        let again = [
            f("Patient", "http://h/2?sig=c"),
            f("Observation", "http://h/3?sig=d"),
            f("Patient", "http://h/1?sig=e"),
        ];
        assert_eq!(
            resolve(&mut r, &again).unwrap(),
            vec![Match::Known(1), Match::New(2), Match::Known(0)]
        );
        // The fresh URL is now known exactly.
        assert_eq!(
            resolve(&mut r, &[f("Patient", "http://h/2?sig=c")]).unwrap(),
            vec![Match::Known(1)]
        );
    }

    #[test]
    fn duplicates_within_a_fetch() {
        let mut r = Files::default();
        let mut s = r.session(true);
        let page1 = [f("Patient", "http://h/1"), f("Patient", "http://h/1")];
        assert_eq!(
            r.resolve(&mut s, page1.to_vec()).unwrap(),
            vec![Match::New(0), Match::Duplicate(0)]
        );
        assert_eq!(
            r.resolve(&mut s, vec![f("Patient", "http://h/1")]).unwrap(),
            vec![Match::Duplicate(0)]
        );
    }

    #[test]
    fn files_told_apart_by_query_match_only_exactly() {
        let mut r = Files::default();
        let mut s = r.session(true);
        // Pages of one fetch: distinct files on one path.
        r.resolve(&mut s, vec![f("Patient", "http://h/f?id=1")])
            .unwrap();
        r.resolve(&mut s, vec![f("Patient", "http://h/f?id=2")])
            .unwrap();
        let same = [
            f("Patient", "http://h/f?id=2"),
            f("Patient", "http://h/f?id=1"),
            f("Patient", "http://h/f?id=3"),
        ];
        assert_eq!(
            resolve(&mut r, &same).unwrap(),
            vec![Match::Known(1), Match::Known(0), Match::New(2)]
        );
        // Re-signed, they cannot be told apart.
        let e = resolve(&mut r, &[f("Patient", "http://h/f?id=1&sig=x")]).unwrap_err();
        assert!(e.message.contains("cannot tell apart"), "{e}");
        assert!(e.message.contains("http://h/f"), "{e}");
        assert!(!e.message.contains("sig=x"), "no query in messages: {e}");
    }

    #[test]
    fn one_known_file_and_a_new_one_on_the_same_path_fail() {
        let mut r = Files::default();
        resolve(&mut r, &[f("Patient", "http://h/f?id=1&sig=a")]).unwrap();
        // Re-signed file 1 and a new file 2 on the same path: which is which is a guess.
        let e = resolve(
            &mut r,
            &[
                f("Patient", "http://h/f?id=2&sig=b"),
                f("Patient", "http://h/f?id=1&sig=c"),
            ],
        )
        .unwrap_err();
        assert!(e.message.contains("matched by path alone"), "{e}");
    }

    #[test]
    fn a_refresh_registers_nothing() {
        let mut r = Files::default();
        resolve(&mut r, &[f("Patient", "http://h/1?g=1")]).unwrap();
        let mut s = r.session(false);
        let m = r
            .resolve(
                &mut s,
                vec![
                    f("Patient", "http://h/9?g=2"),
                    f("Patient", "http://h/1?g=2"),
                ],
            )
            .unwrap();
        assert_eq!(m, vec![Match::Unknown, Match::Known(0)]);
        assert_eq!(r.registered(), 1);
    }
}
