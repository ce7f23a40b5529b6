//! Checkpoints: everything needed to continue an export in another process — the status URL,
//! and per file how many lines the caller has already received.
//!
//! Version 2 (written now) costs what is in progress, not the manifest: the files are counted
//! (`files_known`, with a digest of their identities) rather than listed, complete files are
//! ranges of indexes, and only the files part-way delivered are named (index and lines). The
//! file list itself is append-only and handed out incrementally (`Controller::files_json_from`,
//! `export_files_json_from`); at resume it comes back as the config's `resume_files`, or, when
//! that is not given, the engine fetches the manifest again from the status URL and checks that
//! it lists the same files in the same order (the digest).
//!
//! Version 1 (whole manifest and every file inline) is still read.

use crate::error::{Error, Result};
use crate::manifest::{Kind, ManifestFile};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The other fields of a manifest entry.
type Extra = Option<Box<Map<String, Value>>>;

/// The checkpoint format version written.
pub const CHECKPOINT_VERSION: u32 = 2;

/// A checkpoint, as JSON (version 2): `{"fhirbulk_checkpoint": 2, "base_url": ...,
/// "status_url": ..., "transaction_time": ..., "manifest": {top-level fields, no file entries},
/// "manifest_complete": true, "next_page": null, "files_known": 20000, "files_digest": "...",
/// "complete": [[0, 1500], [1502, 1600]], "in_progress": [{"index": 1500,
/// "lines_delivered": 12}]}`. Version 1 had `"manifest"` whole and `"files": [{"url": ...,
/// "kind": "output", "type": "Patient", "lines_delivered": 120, "complete": false}, ...]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub fhirbulk_checkpoint: u32,
    pub base_url: String,
    #[serde(default)]
    pub status_url: Option<String>,
    #[serde(default)]
    pub transaction_time: Option<String>,
    /// Version 2: the manifest's top-level fields (`transactionTime`, `request`,
    /// `requiresAccessToken`, ...) without its file lists. Version 1: the manifest as merged.
    #[serde(default)]
    pub manifest: Option<Value>,
    /// The final manifest has arrived (pages may remain: `next_page`).
    #[serde(default)]
    pub manifest_complete: bool,
    #[serde(default)]
    pub next_page: Option<String>,
    /// Version 1: every file and its progress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<CheckpointFile>,
    /// Version 2: how many files were known (the first `files_known` of the file list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_known: Option<u32>,
    /// Version 2: a digest of the known files' kind, type and URL path in index order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_digest: Option<String>,
    /// Version 2: the files delivered completely, as `[start, end)` index ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub complete: Vec<[u32; 2]>,
    /// Version 2: the files part-way delivered (the others are not started).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_progress: Vec<InProgress>,
}

/// One file part-way delivered (version 2).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InProgress {
    pub index: u32,
    /// The physical line number of the last line the caller received.
    pub lines_delivered: u64,
    /// The records fhirbulk made for the attachments of the next line (config `attachments`)
    /// that the caller received before that line: one character per attachment position up
    /// to the last one delivered, `s` (its document), `e` (its error record) or `-` (none).
    /// At resume those documents are not fetched again nor their records delivered again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachments: Option<String>,
}

/// One file's progress (version 1): the physical line number of the last line the caller
/// received.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CheckpointFile {
    pub url: String,
    pub kind: String,
    #[serde(rename = "type", default)]
    pub resource_type: Option<String>,
    #[serde(default)]
    pub count: Option<u64>,
    pub lines_delivered: u64,
    #[serde(default)]
    pub complete: bool,
}

impl CheckpointFile {
    pub fn kind(&self) -> Kind {
        Kind::from_name(&self.kind).unwrap_or(Kind::Output)
    }
}

/// One file of a file list (`export_files_json`, `Controller::files_json_from`), as
/// `resume_files` takes it back.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListedFile {
    index: u32,
    kind: String,
    #[serde(rename = "type", default)]
    resource_type: Option<String>,
    url: String,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    extra: Option<Map<String, Value>>,
}

fn bad(msg: impl std::fmt::Display) -> Error {
    Error::config(format!("invalid config: {msg}"))
}

fn check_url(url: &str, what: &str) -> Result<()> {
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(bad(format!("{what} has a file URL that is not http(s)")));
    }
    Ok(())
}

impl Checkpoint {
    /// Parse and check a checkpoint given in the config's `resume` (version 1 or 2).
    pub fn from_value(v: &Value) -> Result<Checkpoint> {
        let cp: Checkpoint = match v {
            // Accept the checkpoint as a JSON string too (what export_checkpoint returns).
            Value::String(s) => serde_json::from_str(s),
            other => Checkpoint::deserialize(other),
        }
        .map_err(|e| bad(format!("resume is not a checkpoint: {e}")))?;
        match cp.fhirbulk_checkpoint {
            1 => {
                if cp.files_known.is_some() || !cp.complete.is_empty() || !cp.in_progress.is_empty()
                {
                    return Err(bad(
                        "resume is a version 1 checkpoint with version 2 fields",
                    ));
                }
                for f in &cp.files {
                    if Kind::from_name(&f.kind).is_none() {
                        return Err(bad(format!("resume has a file of kind {:?}", f.kind)));
                    }
                    check_url(&f.url, "resume")?;
                }
            }
            2 => {
                if !cp.files.is_empty() {
                    return Err(bad(
                        "resume is a version 2 checkpoint with a version 1 file list",
                    ));
                }
                let known = cp.files_known.unwrap_or(0);
                if known > 0 && cp.files_digest.is_none() {
                    return Err(bad("resume counts files but has no files_digest"));
                }
                let mut last_end = 0;
                for &[s, e] in &cp.complete {
                    if s >= e || e > known || s < last_end {
                        return Err(bad(format!(
                            "resume has a range of complete files [{s}, {e}) that is not within the {known} files known and in order"
                        )));
                    }
                    last_end = e;
                }
                for p in &cp.in_progress {
                    if let Some(a) = &p.attachments {
                        if a.is_empty()
                            || a.len() > 1 << 16
                            || !a.bytes().all(|b| b"se-".contains(&b))
                        {
                            return Err(bad(format!(
                                "resume has file {} with attachments {:?}: expected one of s, e or - per attachment",
                                p.index,
                                crate::error::escape_controls(&a.chars().take(40).collect::<String>())
                            )));
                        }
                    }
                    if p.index >= known {
                        return Err(bad(format!(
                            "resume has file {} in progress of {known} files known",
                            p.index
                        )));
                    }
                }
            }
            n => {
                return Err(bad(format!(
                "resume has checkpoint version {n}, this library reads 1 and {CHECKPOINT_VERSION}"
            )))
            }
        }
        if let Some(m) = &cp.manifest {
            if !m.is_object() {
                return Err(bad("resume has a manifest that is not a JSON object"));
            }
        }
        Ok(cp)
    }

    /// The manifest's top-level fields (without its file lists).
    pub(crate) fn manifest_top(&self) -> Option<Map<String, Value>> {
        let mut m = self.manifest.as_ref()?.as_object()?.clone();
        for k in ["output", "error", "deleted", "link"] {
            m.remove(k);
        }
        Some(m)
    }

    /// How many files the checkpoint knows of.
    pub fn files_known(&self) -> u32 {
        match self.fhirbulk_checkpoint {
            1 => self.files.len() as u32,
            _ => self.files_known.unwrap_or(0),
        }
    }

    /// File `index`: (lines delivered, complete).
    pub fn file_progress(&self, index: u32) -> (u64, bool) {
        if self.fhirbulk_checkpoint == 1 {
            return self
                .files
                .get(index as usize)
                .map_or((0, false), |f| (f.lines_delivered, f.complete));
        }
        let i = self.complete.partition_point(|r| r[1] <= index);
        if self.complete.get(i).is_some_and(|r| r[0] <= index) {
            return (0, true);
        }
        match self.in_progress.binary_search_by_key(&index, |p| p.index) {
            Ok(i) => (self.in_progress[i].lines_delivered, false),
            Err(_) => (0, false),
        }
    }

    /// File `index`: the attachments' records of its next line already delivered (see
    /// [`InProgress::attachments`]).
    pub fn file_attachments(&self, index: u32) -> Option<String> {
        if self.fhirbulk_checkpoint == 1 {
            return None;
        }
        let i = self
            .in_progress
            .binary_search_by_key(&index, |p| p.index)
            .ok()?;
        self.in_progress[i].attachments.clone()
    }

    /// Record the attachments' records of file `index`'s next line as delivered (`None`:
    /// none); after [`Checkpoint::set_file_progress`].
    pub fn set_file_attachments(&mut self, index: u32, outcomes: Option<String>) {
        match self.in_progress.binary_search_by_key(&index, |p| p.index) {
            Ok(i) => self.in_progress[i].attachments = outcomes,
            Err(i) if outcomes.is_some() => self.in_progress.insert(
                i,
                InProgress {
                    index,
                    lines_delivered: 0,
                    attachments: outcomes,
                },
            ),
            Err(_) => {}
        }
    }

    /// Record file `index` as delivered up to `line` and not complete (a checkpoint taken
    /// part-way through a batch).
    pub fn set_file_progress(&mut self, index: u32, line: u64) {
        if self.fhirbulk_checkpoint == 1 {
            if let Some(f) = self.files.get_mut(index as usize) {
                f.lines_delivered = line;
                f.complete = false;
            }
            return;
        }
        let i = self.complete.partition_point(|r| r[1] <= index);
        if let Some(&[s, e]) = self.complete.get(i).filter(|r| r[0] <= index) {
            let mut parts = Vec::new();
            if s < index {
                parts.push([s, index]);
            }
            if index + 1 < e {
                parts.push([index + 1, e]);
            }
            self.complete.splice(i..=i, parts);
        }
        match self.in_progress.binary_search_by_key(&index, |p| p.index) {
            Ok(i) if line == 0 => {
                self.in_progress.remove(i);
            }
            Ok(i) => {
                self.in_progress[i].lines_delivered = line;
                self.in_progress[i].attachments = None;
            }
            Err(_) if line == 0 => {}
            Err(i) => self.in_progress.insert(
                i,
                InProgress {
                    index,
                    lines_delivered: line,
                    attachments: None,
                },
            ),
        }
    }

    /// Version 1: the files, with the other fields of their manifest entries.
    pub(crate) fn v1_files(&self) -> Vec<ManifestFile> {
        // The entries' other fields come from the manifest, matched by kind and position.
        let mut extras: [Vec<Extra>; 3] = Default::default();
        if let Some(m) = self.manifest.as_ref().and_then(Value::as_object) {
            for (kind, key) in [(0, "output"), (1, "error"), (2, "deleted")] {
                for e in m.get(key).and_then(Value::as_array).into_iter().flatten() {
                    let mut o = e.as_object().cloned().unwrap_or_default();
                    o.remove("url");
                    if o.get("type").is_some_and(Value::is_string) {
                        o.remove("type");
                    }
                    if o.get("count").is_some_and(Value::is_u64) {
                        o.remove("count");
                    }
                    extras[kind].push((!o.is_empty()).then(|| Box::new(o)));
                }
            }
        }
        let mut pos = [0usize; 3];
        self.files
            .iter()
            .map(|f| {
                let k = f.kind();
                let extra = extras[k as usize]
                    .get_mut(pos[k as usize])
                    .and_then(Option::take);
                pos[k as usize] += 1;
                ManifestFile::new(k, f.resource_type.clone(), f.url.clone(), f.count, extra)
            })
            .collect()
    }
}

/// The first `known` files of a file list given as `resume_files`: a JSON array of file
/// objects (`export_files_json`), or a string holding such an array or NDJSON lines of them
/// (`export_files_json_from`, the CLI's `.fhirbulk-files.ndjson`). Indexes must run 0, 1, ...
pub(crate) fn parse_file_list(v: &Value, known: u32) -> Result<Vec<ManifestFile>> {
    let mut out = Vec::with_capacity(known as usize);
    let mut take = |f: ListedFile| -> Result<bool> {
        if out.len() as u32 >= known {
            return Ok(false);
        }
        if f.index as usize != out.len() {
            return Err(bad(format!(
                "resume_files lists file {} where file {} belongs (files in index order from 0)",
                f.index,
                out.len()
            )));
        }
        let kind = Kind::from_name(&f.kind)
            .ok_or_else(|| bad(format!("resume_files has a file of kind {:?}", f.kind)))?;
        check_url(&f.url, "resume_files")?;
        let extra = f.extra.filter(|m| !m.is_empty()).map(Box::new);
        out.push(ManifestFile::new(
            kind,
            f.resource_type,
            f.url,
            f.count,
            extra,
        ));
        Ok(true)
    };
    let err = |e: serde_json::Error| bad(format!("resume_files is not a file list: {e}"));
    match v {
        Value::Array(a) => {
            for f in a {
                let f = ListedFile::deserialize(f).map_err(err)?;
                if !take(f)? {
                    break;
                }
            }
        }
        Value::String(s) if s.trim_start().starts_with('[') => {
            let a: Vec<ListedFile> = serde_json::from_str(s).map_err(err)?;
            for f in a {
                if !take(f)? {
                    break;
                }
            }
        }
        Value::String(s) => {
            for f in serde_json::Deserializer::from_str(s).into_iter::<ListedFile>() {
                if !take(f.map_err(err)?)? {
                    break;
                }
            }
        }
        _ => return Err(bad("resume_files is neither an array nor a string")),
    }
    if (out.len() as u32) < known {
        return Err(bad(format!(
            "resume_files lists {} files; the checkpoint counts {known}",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v2(complete: Vec<[u32; 2]>, in_progress: Vec<(u32, u64)>) -> Checkpoint {
        Checkpoint {
            fhirbulk_checkpoint: 2,
            base_url: "http://h".into(),
            status_url: None,
            transaction_time: None,
            manifest: None,
            manifest_complete: true,
            next_page: None,
            files: Vec::new(),
            files_known: Some(10),
            files_digest: Some("0".into()),
            complete,
            in_progress: in_progress
                .into_iter()
                .map(|(index, lines_delivered)| InProgress {
                    index,
                    lines_delivered,
                    attachments: None,
                })
                .collect(),
        }
    }

    #[test]
    fn ranges_and_progress() {
        let mut cp = v2(vec![[0, 3], [5, 8]], vec![(3, 7)]);
        let p: Vec<_> = (0..10).map(|i| cp.file_progress(i)).collect();
        assert_eq!(p[0], (0, true));
        assert_eq!(p[2], (0, true));
        assert_eq!(p[3], (7, false));
        assert_eq!(p[4], (0, false));
        assert_eq!(p[7], (0, true));
        assert_eq!(p[8], (0, false));
        cp.set_file_progress(6, 4);
        assert_eq!(cp.complete, vec![[0, 3], [5, 6], [7, 8]]);
        assert_eq!(cp.file_progress(6), (4, false));
        cp.set_file_progress(0, 0);
        assert_eq!(cp.complete[0], [1, 3]);
        let text = serde_json::to_value(&cp).unwrap();
        assert_eq!(Checkpoint::from_value(&text).unwrap(), cp);
    }

    #[test]
    fn attachments_of_the_next_line_round_trip_and_are_checked() {
        let mut cp = v2(vec![], vec![(3, 7)]);
        cp.set_file_attachments(3, Some("s-e".into()));
        cp.set_file_attachments(4, Some("s".into()));
        assert_eq!(cp.file_attachments(3).as_deref(), Some("s-e"));
        assert_eq!(cp.file_progress(4), (0, false));
        let v = serde_json::to_value(&cp).unwrap();
        assert_eq!(v["in_progress"][0]["attachments"], "s-e");
        assert_eq!(Checkpoint::from_value(&v).unwrap(), cp);
        // A line delivered since: its attachments are behind it.
        cp.set_file_progress(3, 8);
        assert_eq!(cp.file_attachments(3), None);
        for bad in ["", "sx", "s\u{0}"] {
            let mut v = serde_json::to_value(v2(vec![], vec![(3, 7)])).unwrap();
            v["in_progress"][0]["attachments"] = serde_json::Value::String(bad.to_owned());
            let e = Checkpoint::from_value(&v).unwrap_err();
            assert!(e.message.contains("attachments"), "{e}");
        }
    }

    #[test]
    fn bad_ranges_are_config_errors() {
        for (c, p) in [
            (vec![[3, 3]], vec![]),
            (vec![[0, 11]], vec![]),
            (vec![[4, 6], [0, 2]], vec![]),
            (vec![], vec![(10, 1)]),
        ] {
            let v = serde_json::to_value(v2(c, p)).unwrap();
            assert!(Checkpoint::from_value(&v).is_err(), "{v}");
        }
    }

    #[test]
    fn file_lists_as_array_json_text_or_ndjson() {
        let a = json!([
            {"index": 0, "kind": "output", "type": "Patient", "url": "http://h/1", "count": 3},
            {"index": 1, "kind": "error", "type": null, "url": "http://h/2", "count": null,
             "extra": {"extension": {"x": 1}}},
        ]);
        let nd = a
            .as_array()
            .unwrap()
            .iter()
            .map(|v| format!("{v}\n"))
            .collect::<String>();
        for v in [a.clone(), Value::String(a.to_string()), Value::String(nd)] {
            let l = parse_file_list(&v, 2).unwrap();
            assert_eq!(l[1].kind, Kind::Error);
            assert!(l[1].extra.is_some());
            assert_eq!(parse_file_list(&v, 1).unwrap().len(), 1);
            let e = parse_file_list(&v, 3).unwrap_err();
            assert!(e.message.contains("lists 2 files"), "{e}");
        }
        let e = parse_file_list(
            &json!([{"index": 1, "kind": "output", "url": "http://h"}]),
            1,
        )
        .unwrap_err();
        assert!(e.message.contains("index order"), "{e}");
    }
}
