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
//! downloaded once.

use crate::checkpoint::CheckpointFile;
use crate::error::{redact_url, Error, Result};
use crate::manifest::{Kind, ManifestFile};
use std::collections::{HashMap, HashSet};
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
pub(crate) struct FileProgress {
    /// Physical line number of the last line delivered.
    line: AtomicU64,
    /// Every line was delivered.
    complete: AtomicBool,
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
    /// Mark every line delivered; true the first time.
    pub(crate) fn set_complete(&self) -> bool {
        !self.complete.swap(true, Ordering::AcqRel)
    }
}

/// Every file of an export, by index: its entry, its delivery progress, and the registry that
/// decides which entries are files already known.
#[derive(Default)]
pub(crate) struct Files {
    list: Vec<FileInfo>,
    /// Parallel to `list`.
    delivered: Vec<Arc<FileProgress>>,
    /// Files seen per kind, for `FileInfo::position`.
    kind_counts: [usize; 3],
    /// The files delivered completely, in the order they completed (for callers that follow
    /// the export without scanning every file).
    completed: Vec<u32>,
    pub(crate) registry: Registry,
}

impl Files {
    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    pub(crate) fn list(&self) -> &[FileInfo] {
        &self.list
    }

    /// Add the file the registry gave `index` (the next one), with `lines` already delivered.
    pub(crate) fn push(&mut self, index: u32, f: &ManifestFile, lines: u64, complete: bool) {
        debug_assert_eq!(index as usize, self.list.len(), "registry and files agree");
        let position = self.kind_counts[f.kind as usize];
        self.kind_counts[f.kind as usize] += 1;
        self.list.push(FileInfo {
            index,
            kind: f.kind,
            resource_type: f.resource_type.clone(),
            url: f.url.clone(),
            count: f.count,
            position,
        });
        self.delivered.push(Arc::new(FileProgress {
            line: AtomicU64::new(lines),
            complete: AtomicBool::new(complete),
        }));
        if complete {
            self.completed.push(index);
        }
    }

    /// The files from index `start` on.
    pub(crate) fn list_from(&self, start: usize) -> &[FileInfo] {
        self.list.get(start..).unwrap_or(&[])
    }

    /// File `index` was delivered completely (called once per file, by the consumer).
    pub(crate) fn completed(&mut self, index: u32) {
        self.completed.push(index);
    }

    /// The files delivered completely, from the `start`-th to complete on.
    pub(crate) fn completed_from(&self, start: usize) -> &[u32] {
        self.completed.get(start..).unwrap_or(&[])
    }

    /// The delivery progress of file `index`.
    pub(crate) fn progress(&self, index: u32) -> Option<Arc<FileProgress>> {
        self.delivered.get(index as usize).cloned()
    }

    /// The file's URL changed (an expired link fetched again).
    pub(crate) fn set_url(&mut self, index: u32, url: String) {
        if let Some(f) = self.list.get_mut(index as usize) {
            f.url = url;
        }
    }

    /// The files as a checkpoint records them.
    pub(crate) fn checkpoint(&self) -> Vec<CheckpointFile> {
        self.list
            .iter()
            .zip(&self.delivered)
            .map(|(f, p)| CheckpointFile {
                url: f.url.clone(),
                kind: f.kind.name().into(),
                resource_type: f.resource_type.clone(),
                count: f.count,
                lines_delivered: p.line(),
                complete: p.complete(),
            })
            .collect()
    }

    /// The (redacted) URLs of the files not delivered completely.
    pub(crate) fn undelivered(&self) -> Vec<String> {
        self.list
            .iter()
            .zip(&self.delivered)
            .filter(|(_, p)| !p.complete())
            .map(|(f, _)| redact_url(&f.url))
            .collect()
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

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    kind: Kind,
    resource_type: Option<String>,
    path: String,
}

fn key(f: &ManifestFile) -> Key {
    let path = match url::Url::parse(&f.url) {
        Ok(mut u) => {
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => f.url.split(['?', '#']).next().unwrap_or("").to_owned(),
    };
    Key {
        kind: f.kind,
        resource_type: f.resource_type.clone(),
        path,
    }
}

/// Every file of the export, findable by URL and by identity.
#[derive(Default)]
pub(crate) struct Registry {
    by_url: HashMap<String, u32>,
    by_key: HashMap<Key, Vec<u32>>,
    /// The session each file was registered in.
    born: Vec<u32>,
    sessions: u32,
}

/// One fetch of a manifest (first page and the pages it links).
pub(crate) struct Session {
    id: u32,
    /// Register entries not known before (false for a manifest fetched again for fresh links).
    register: bool,
    /// Files matched in this session: true when by identity (not by exact URL).
    claimed: HashMap<u32, bool>,
    urls: HashMap<String, u32>,
    /// Per identity: files listed in this session, and whether one was matched by identity.
    keys: HashMap<Key, (HashSet<u32>, bool)>,
}

impl Registry {
    /// How many files are registered (the next index).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.born.len()
    }

    /// Start a fetch of a manifest.
    pub(crate) fn session(&mut self, register: bool) -> Session {
        self.sessions += 1;
        Session {
            id: self.sessions,
            register,
            claimed: HashMap::new(),
            urls: HashMap::new(),
            keys: HashMap::new(),
        }
    }

    fn add(&mut self, s: &mut Session, f: &ManifestFile, k: Key) -> u32 {
        let idx = self.born.len() as u32;
        self.born.push(s.id);
        self.by_url.insert(f.url.clone(), idx);
        self.by_key.entry(k).or_default().push(idx);
        s.urls.insert(f.url.clone(), idx);
        idx
    }

    /// Register files restored from a checkpoint (in their order, as an earlier session).
    pub(crate) fn restore(&mut self, files: &[ManifestFile]) {
        let mut s = self.session(true);
        for f in files {
            let k = key(f);
            self.add(&mut s, f, k);
        }
    }

    /// Match the entries of one manifest page of session `s`.
    pub(crate) fn resolve(&mut self, s: &mut Session, page: &[ManifestFile]) -> Result<Vec<Match>> {
        let mut out: Vec<Option<Match>> = vec![None; page.len()];
        // By exact URL first, so that identity is only asked of entries that need it.
        for (i, f) in page.iter().enumerate() {
            if let Some(&idx) = s.urls.get(&f.url) {
                out[i] = Some(Match::Duplicate(idx));
                continue;
            }
            let Some(&idx) = self.by_url.get(&f.url) else {
                continue;
            };
            if self.born[idx as usize] == s.id {
                out[i] = Some(Match::Duplicate(idx));
                continue;
            }
            if s.claimed.get(&idx) == Some(&true) {
                return Err(ambiguous(
                    f,
                    "it was matched to another entry by its path before",
                ));
            }
            s.claimed.insert(idx, false);
            s.urls.insert(f.url.clone(), idx);
            s.keys.entry(key(f)).or_default().0.insert(idx);
            out[i] = Some(Match::Known(idx));
        }
        for (i, f) in page.iter().enumerate() {
            if out[i].is_some() {
                continue;
            }
            if let Some(&idx) = s.urls.get(&f.url) {
                out[i] = Some(Match::Duplicate(idx));
                continue;
            }
            let k = key(f);
            let all = self.by_key.get(&k).map_or(&[][..], Vec::as_slice);
            let candidates: Vec<u32> = all
                .iter()
                .copied()
                .filter(|&idx| self.born[idx as usize] != s.id && !s.claimed.contains_key(&idx))
                .collect();
            let m = match candidates.as_slice() {
                [] if s.register => {
                    let idx = self.add(s, f, k.clone());
                    Match::New(idx)
                }
                [] => Match::Unknown,
                [one] if all.len() == 1 => {
                    // The same file under a fresh signature.
                    s.claimed.insert(*one, true);
                    s.urls.insert(f.url.clone(), *one);
                    self.by_url.insert(f.url.clone(), *one);
                    Match::Known(*one)
                }
                _ => {
                    return Err(ambiguous(
                        f,
                        "several files have this kind, type and URL path, and their URLs differ only in the query",
                    ))
                }
            };
            if let Match::New(idx) | Match::Known(idx) = m {
                let e = s.keys.entry(k).or_default();
                e.0.insert(idx);
                e.1 |= matches!(m, Match::Known(_));
            }
            out[i] = Some(m);
        }
        // A match by identity is only sound when its identity names one file of this fetch.
        for (i, f) in page.iter().enumerate() {
            if let Some(Match::Known(idx) | Match::New(idx)) = out[i] {
                if let Some((files, by_identity)) = s.keys.get(&key(f)) {
                    if *by_identity && files.len() > 1 {
                        return Err(ambiguous(
                            f,
                            &format!(
                                "{} files of this fetch of the manifest have its kind, type and URL path and one was matched by path alone (file {idx})",
                                files.len()
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
        ManifestFile {
            kind: Kind::Output,
            resource_type: Some(ty.into()),
            url: url.into(),
            count: None,
            continues_in_file: None,
        }
    }

    fn resolve(r: &mut Registry, files: &[ManifestFile]) -> Result<Vec<Match>> {
        let mut s = r.session(true);
        r.resolve(&mut s, files)
    }

    #[test]
    fn resigned_and_reordered_links_match_their_files() {
        let mut r = Registry::default();
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
        let mut r = Registry::default();
        let mut s = r.session(true);
        let page1 = [f("Patient", "http://h/1"), f("Patient", "http://h/1")];
        assert_eq!(
            r.resolve(&mut s, &page1).unwrap(),
            vec![Match::New(0), Match::Duplicate(0)]
        );
        assert_eq!(
            r.resolve(&mut s, &[f("Patient", "http://h/1")]).unwrap(),
            vec![Match::Duplicate(0)]
        );
    }

    #[test]
    fn files_told_apart_by_query_match_only_exactly() {
        let mut r = Registry::default();
        let mut s = r.session(true);
        // Pages of one fetch: distinct files on one path.
        r.resolve(&mut s, &[f("Patient", "http://h/f?id=1")])
            .unwrap();
        r.resolve(&mut s, &[f("Patient", "http://h/f?id=2")])
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
        let mut r = Registry::default();
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
        let mut r = Registry::default();
        resolve(&mut r, &[f("Patient", "http://h/1?g=1")]).unwrap();
        let mut s = r.session(false);
        let m = r
            .resolve(
                &mut s,
                &[
                    f("Patient", "http://h/9?g=2"),
                    f("Patient", "http://h/1?g=2"),
                ],
            )
            .unwrap();
        assert_eq!(m, vec![Match::Unknown, Match::Known(0)]);
        assert_eq!(r.len(), 1);
    }
}
