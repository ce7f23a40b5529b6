//! Attachments (config `attachments`): the documents that `DocumentReference`,
//! `DiagnosticReport` and other records link by `url`, fetched and delivered with their record.
//!
//! For each record of a type in `attachment_types`, every `Attachment` at the places the type
//! keeps them ([`PLACES`], FHIR R4) is numbered in document order (its *position*). One with a
//! `url` and no `data`, of a content type asked for, is fetched (by the caller's [`Fetch`]:
//! the download thread, under the export's HTTP policies), its `size` and `hash` (SHA-1,
//! base64) checked when the attachment declares them, then:
//! - `inline`: the record gets `data` (base64), and `size`/`hash` when it had none;
//! - `save`: an attachment record (its description as JSON, the document's bytes beside it)
//!   goes out before the record, whose `url` becomes `attachment_dir` + the file name.
//!
//! A document that cannot be had leaves its attachment as it was and gives an error record
//! (an OperationOutcome naming the resource, the attachment, the URL and why) before the
//! record. Records made for attachments carry their position, so that delivery progress (and
//! checkpoints) can say which of a record's attachments the caller already has: at resume
//! those are neither fetched nor delivered again ([`Resolver::resolve`]'s `skip`).

use crate::config::{AttachmentMode, Config, ATTACHMENT_PLACES as PLACES};
use crate::document::{Failed, Fetched};
use crate::error::{redact_url, Error, Result};
use base64::Engine as _;
use serde_json::{json, Map, Value};
use sha1::{Digest, Sha1};

/// How the caller fetches a document: `url` absolute, `accept` the `Accept` header, at most
/// `cap` bytes; `checked`: the attachment declares a size or hash (checked after).
pub(crate) trait Fetch {
    fn fetch(
        &self,
        url: &str,
        accept: &str,
        cap: u64,
        checked: bool,
    ) -> std::result::Result<Fetched, Failed>;
}

/// The record an attachment's resolution made, to go out before its record.
pub(crate) enum Made {
    /// `save`: the attachment record (its description, a JSON object) and the document.
    Document { meta: Vec<u8>, bytes: Vec<u8> },
    /// The error record (an OperationOutcome) and what to say in the `attachment_failed` event.
    Failure {
        outcome: Vec<u8>,
        resource: String,
        path: String,
        url: String,
        reason: String,
    },
}

/// What resolving a record's attachments did.
#[derive(Default, Debug, PartialEq, Eq)]
pub(crate) struct Resolved {
    /// The record as it is now, when it changed.
    pub(crate) line: Option<Vec<u8>>,
    /// Documents fetched and delivered (inline or saved).
    pub(crate) fetched: u32,
    /// Attachments reported as error records.
    pub(crate) failed: u32,
}

/// Where a record is: its resource type, file and line (for names and messages).
pub(crate) struct At<'a> {
    pub(crate) resource_type: &'a str,
    pub(crate) file_index: u32,
    pub(crate) line: u64,
}

/// An export's attachment settings (see the module documentation).
pub(crate) struct Resolver {
    save: bool,
    types: Vec<(&'static str, &'static [&'static str])>,
    content_types: Vec<String>,
    max_bytes: u64,
    max_record_bytes: usize,
    dir: String,
    base: url::Url,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// SHA-1 of `bytes`, base64 (an Attachment's `hash`).
pub(crate) fn sha1_b64(bytes: &[u8]) -> String {
    b64(&Sha1::digest(bytes))
}

/// The media type of a `contentType` (`type/subtype`, lower-cased, no parameters).
fn media(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// A file name extension for a media type.
fn extension(media: &str) -> &'static str {
    match media {
        "application/pdf" => ".pdf",
        "text/plain" => ".txt",
        "text/html" => ".html",
        "text/xml" | "application/xml" => ".xml",
        "application/json" | "application/fhir+json" => ".json",
        "application/fhir+xml" => ".xml",
        "text/rtf" | "application/rtf" => ".rtf",
        "image/jpeg" => ".jpg",
        "image/png" => ".png",
        "image/gif" => ".gif",
        "image/tiff" => ".tif",
        "application/dicom" => ".dcm",
        "text/csv" => ".csv",
        "application/msword" => ".doc",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => ".docx",
        _ => ".bin",
    }
}

/// A FHIR id (`[A-Za-z0-9\-\.]{1,64}`), safe in a file name unless it is only dots.
fn safe_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !id.bytes().all(|b| b == b'.')
}

/// A JSON number or a string holding one (R5's integer64 `size` is a string).
fn as_u64(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The attachments of `v` at `steps` from `ptr`/`shown`, in document order: (JSON pointer,
/// the path as shown in messages).
fn find(v: &Value, steps: &[&str], ptr: String, shown: String, out: &mut Vec<(String, String)>) {
    let Some((step, rest)) = steps.split_first() else {
        if v.is_object() {
            out.push((ptr, shown));
        }
        return;
    };
    let (name, many) = match step.strip_suffix("[]") {
        Some(n) => (n, true),
        None => (*step, false),
    };
    let Some(child) = v.get(name) else {
        return;
    };
    let sep = if shown.is_empty() { "" } else { "." };
    match (many, child) {
        (true, Value::Array(items)) => {
            for (i, it) in items.iter().enumerate() {
                find(
                    it,
                    rest,
                    format!("{ptr}/{name}/{i}"),
                    format!("{shown}{sep}{name}[{i}]"),
                    out,
                );
            }
        }
        // A repeating element written as one value, or one written as an array: taken as
        // the server wrote it.
        (_, Value::Array(_)) => {}
        (_, other) => find(
            other,
            rest,
            format!("{ptr}/{name}"),
            format!("{shown}{sep}{name}"),
            out,
        ),
    }
}

impl Resolver {
    /// The export's resolver; None when `attachments` is `none`.
    pub(crate) fn new(c: &Config) -> Option<Resolver> {
        let save = match c.attachments {
            AttachmentMode::None => return None,
            AttachmentMode::Inline => false,
            AttachmentMode::Save => true,
        };
        let mut base = url::Url::parse(&c.base_url).ok()?;
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        Some(Resolver {
            save,
            types: PLACES
                .iter()
                .filter(|(t, _)| c.attachment_types.iter().any(|x| x == t))
                .copied()
                .collect(),
            content_types: c
                .attachment_content_types
                .iter()
                .map(|t| t.to_ascii_lowercase())
                .collect(),
            max_bytes: c.attachment_max_bytes,
            max_record_bytes: c.max_line_bytes,
            dir: c.attachment_dir.clone(),
            base,
        })
    }

    /// Whether records of this type have attachments to resolve.
    pub(crate) fn wants(&self, resource_type: &str) -> bool {
        self.types.iter().any(|(t, _)| *t == resource_type)
    }

    fn wanted_type(&self, ct: &str) -> bool {
        self.content_types.is_empty()
            || self
                .content_types
                .iter()
                .any(|w| match w.strip_suffix("/*") {
                    Some(top) => ct.split('/').next() == Some(top),
                    None => w == ct,
                })
    }

    /// The file name of attachment `position` of a record (the same at every resume: it
    /// depends on the record alone).
    fn file_name(&self, at: &At<'_>, id: Option<&str>, position: usize, media: &str) -> String {
        let ext = extension(media);
        match id.filter(|i| safe_id(i)) {
            Some(id) => format!("{}.{id}.{position}{ext}", at.resource_type),
            None => format!(
                "{}.f{}.l{}.{position}{ext}",
                at.resource_type, at.file_index, at.line
            ),
        }
    }

    /// Resolve the attachments of one record (`line`, a JSON object). `skip`: the outcomes of
    /// its first attachments delivered before a resume (`s`, `e` or `-` per position), not
    /// fetched or delivered again. `emit` sends each record made, in position order, before
    /// the record; its error ends the resolution.
    pub(crate) fn resolve<E>(
        &self,
        net: &dyn Fetch,
        at: &At<'_>,
        line: &[u8],
        skip: Option<&str>,
        emit: &mut dyn FnMut(u32, Made) -> std::result::Result<(), E>,
    ) -> std::result::Result<Resolved, E> {
        let mut out = Resolved::default();
        let Some(steps) = self
            .types
            .iter()
            .find(|(t, _)| *t == at.resource_type)
            .map(|(_, s)| *s)
        else {
            return Ok(out);
        };
        // A line that is not a JSON object was reported (or delivered) as it is: nothing here.
        let Ok(mut v) = serde_json::from_slice::<Value>(line) else {
            return Ok(out);
        };
        let mut places = Vec::new();
        find(&v, steps, String::new(), String::new(), &mut places);
        if places.is_empty() {
            return Ok(out);
        }
        let id = v.get("id").and_then(Value::as_str).map(str::to_owned);
        let resource = format!(
            "{}/{}",
            at.resource_type,
            id.as_deref().unwrap_or("(no id)")
        );
        let skip = skip.unwrap_or("").as_bytes();
        let mut changed = false;
        // Bytes the record grows by with its documents inline (bounded by max_line_bytes).
        let mut size = line.len();
        for (position, (ptr, shown)) in places.iter().enumerate() {
            let Some(a) = v.pointer_mut(ptr).and_then(Value::as_object_mut) else {
                continue;
            };
            let declared_ct = a.get("contentType").and_then(Value::as_str).map(media);
            match skip.get(position) {
                Some(b's') => {
                    // Delivered before the resume: the record points at the saved file.
                    if self.save {
                        let name = self.file_name(
                            at,
                            id.as_deref(),
                            position,
                            declared_ct.as_deref().unwrap_or(""),
                        );
                        a.insert("url".into(), Value::String(format!("{}{name}", self.dir)));
                        changed = true;
                    }
                    continue;
                }
                Some(b'e') => continue,
                _ => {}
            }
            if a.get("data").is_some() {
                continue;
            }
            let Some(url) = a.get("url").and_then(Value::as_str).map(str::to_owned) else {
                continue;
            };
            if !self.wanted_type(declared_ct.as_deref().unwrap_or("")) {
                continue;
            }
            let declared_size = as_u64(a.get("size"));
            let declared_hash = a.get("hash").and_then(Value::as_str).map(str::to_owned);
            let fail = |code: &'static str, e: Error| -> Made {
                failure(&resource, at, shown, position, &url, code, &e)
            };
            let got = match self.target(&url) {
                Err(e) => Err(fail("not-supported", e)),
                Ok(_) if declared_size.is_some_and(|n| n > self.max_bytes) => Err(fail(
                    "too-costly",
                    Error::protocol(format!(
                        "the attachment declares size {}, above attachment_max_bytes ({}); not fetched",
                        declared_size.unwrap_or(0),
                        self.max_bytes
                    )),
                )),
                Ok(target) => {
                    let accept = match declared_ct.as_deref() {
                        Some(ct) if !ct.is_empty() && reqwest::header::HeaderValue::from_str(ct).is_ok() => {
                            format!("{ct}, application/fhir+json;q=0.5")
                        }
                        _ => "application/fhir+json".to_owned(),
                    };
                    let checked = declared_size.is_some() || declared_hash.is_some();
                    match net.fetch(target.as_str(), &accept, self.max_bytes, checked) {
                        Err(f) => Err(fail(f.code, *f.error)),
                        Ok(f) => check(&f, declared_size, declared_hash.as_deref())
                            .map(|hash| (f, hash))
                            .map_err(|e| fail("value", e)),
                    }
                }
            };
            let (doc, hash) = match got {
                Err(made) => {
                    out.failed += 1;
                    emit(position as u32, made)?;
                    continue;
                }
                Ok(x) => x,
            };
            if self.save {
                let ct = declared_ct
                    .clone()
                    .filter(|c| !c.is_empty())
                    .unwrap_or(doc.content_type.clone());
                let name = self.file_name(
                    at,
                    id.as_deref(),
                    position,
                    declared_ct.as_deref().unwrap_or(""),
                );
                let file = format!("{}{name}", self.dir);
                let meta = json!({
                    "resource": resource,
                    "position": position,
                    "path": shown,
                    "url": url,
                    "contentType": ct,
                    "size": doc.bytes.len(),
                    "hash": hash,
                    "file": file,
                });
                a.insert("url".into(), Value::String(file));
                changed = true;
                out.fetched += 1;
                emit(
                    position as u32,
                    Made::Document {
                        meta: meta.to_string().into_bytes(),
                        bytes: doc.bytes,
                    },
                )?;
                continue;
            }
            let data = b64(&doc.bytes);
            if size + data.len() + 64 > self.max_record_bytes {
                out.failed += 1;
                emit(
                    position as u32,
                    fail(
                        "too-long",
                        Error::protocol(format!(
                            "with this document inline the record would be longer than max_line_bytes ({})",
                            self.max_record_bytes
                        )),
                    ),
                )?;
                continue;
            }
            size += data.len() + 64;
            a.insert("data".into(), Value::String(data));
            if declared_size.is_none() {
                a.insert("size".into(), Value::from(doc.bytes.len()));
            }
            if declared_hash.is_none() {
                a.insert("hash".into(), Value::String(hash));
            }
            if declared_ct.is_none() && !doc.content_type.is_empty() {
                a.insert("contentType".into(), Value::String(doc.content_type));
            }
            changed = true;
            out.fetched += 1;
        }
        if changed {
            out.line = Some(serde_json::to_vec(&v).unwrap_or_else(|_| line.to_vec()));
        }
        Ok(out)
    }

    /// The absolute http(s) URL of an attachment's `url` (relative ones against the FHIR base).
    fn target(&self, url: &str) -> Result<url::Url> {
        let u = match url::Url::parse(url) {
            Ok(u) => u,
            Err(url::ParseError::RelativeUrlWithoutBase) => self
                .base
                .join(url)
                .map_err(|e| Error::protocol(format!("the attachment url is not a URL: {e}")))?,
            Err(e) => {
                return Err(Error::protocol(format!(
                    "the attachment url is not a URL: {e}"
                )))
            }
        };
        if u.scheme() != "http" && u.scheme() != "https" {
            return Err(Error::protocol(format!(
                "the attachment url is a {:?} URL; fhirbulk fetches http(s) only",
                u.scheme()
            )));
        }
        Ok(u)
    }
}

/// Check a document against the attachment's declared size and hash; its hash.
fn check(f: &Fetched, size: Option<u64>, hash: Option<&str>) -> Result<String> {
    if let Some(n) = size {
        if n != f.bytes.len() as u64 {
            return Err(Error::protocol(format!(
                "the document has {} bytes; the attachment's size says {n}",
                f.bytes.len()
            )));
        }
    }
    let got = sha1_b64(&f.bytes);
    if let Some(h) = hash {
        if h.trim() != got {
            return Err(Error::protocol(format!(
                "the document's SHA-1 is {got}; the attachment's hash says {}",
                crate::error::escape_controls(&h.chars().take(64).collect::<String>())
            )));
        }
    }
    Ok(got)
}

/// The error record of an attachment that could not be had.
fn failure(
    resource: &str,
    at: &At<'_>,
    path: &str,
    position: usize,
    url: &str,
    code: &str,
    e: &Error,
) -> Made {
    let shown_url = redact_url(url);
    let reason = e.message.clone();
    let diagnostics = format!(
        "fhirbulk could not fetch attachment {path} of {resource} (file {}, line {}) from {shown_url}: {reason}",
        at.file_index, at.line
    );
    let mut ext = Map::new();
    ext.insert(
        "url".into(),
        Value::String("https://fhirbulk.dev/fhir/StructureDefinition/attachment-error".into()),
    );
    ext.insert(
        "extension".into(),
        json!([
            {"url": "resource", "valueString": resource},
            {"url": "position", "valueInteger": position},
            {"url": "path", "valueString": path},
            {"url": "url", "valueString": shown_url},
        ]),
    );
    let mut issue = json!({
        "severity": "error",
        "code": code,
        "diagnostics": diagnostics,
        "expression": [format!("{}.{path}", at.resource_type)],
    });
    if let Some(s) = e.http_status {
        issue["details"] = json!({"text": format!("HTTP {s}")});
    }
    let outcome = json!({
        "resourceType": "OperationOutcome",
        "extension": [Value::Object(ext)],
        "issue": [issue],
    });
    Made::Failure {
        outcome: outcome.to_string().into_bytes(),
        resource: resource.to_owned(),
        path: path.to_owned(),
        url: shown_url,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Documents by absolute URL; every fetch is recorded.
    struct Fake {
        docs: Vec<(&'static str, &'static [u8])>,
        asked: RefCell<Vec<(String, String)>>,
    }

    impl Fetch for Fake {
        fn fetch(
            &self,
            url: &str,
            accept: &str,
            cap: u64,
            _: bool,
        ) -> std::result::Result<Fetched, Failed> {
            self.asked
                .borrow_mut()
                .push((url.to_owned(), accept.to_owned()));
            match self.docs.iter().find(|(u, _)| *u == url) {
                Some((_, b)) if b.len() as u64 > cap => Err(Failed {
                    code: "too-costly",
                    error: Box::new(Error::protocol("too large")),
                }),
                Some((_, b)) => Ok(Fetched {
                    bytes: b.to_vec(),
                    content_type: "text/plain".into(),
                }),
                None => Err(Failed {
                    code: "not-found",
                    error: Box::new(Error::protocol("HTTP 404")),
                }),
            }
        }
    }

    fn resolver(mode: AttachmentMode) -> Resolver {
        let mut c = Config::new("https://ehr.example/fhir");
        c.attachments = mode;
        Resolver::new(&c).unwrap()
    }

    const AT: At<'static> = At {
        resource_type: "DocumentReference",
        file_index: 3,
        line: 7,
    };

    fn doc_ref(atts: &[Value]) -> Vec<u8> {
        let content: Vec<Value> = atts.iter().map(|a| json!({ "attachment": a })).collect();
        json!({"resourceType": "DocumentReference", "id": "d1", "content": content})
            .to_string()
            .into_bytes()
    }

    fn run(
        r: &Resolver,
        net: &Fake,
        line: &[u8],
        skip: Option<&str>,
    ) -> (Resolved, Vec<(u32, Made)>) {
        let mut made = Vec::new();
        let res = r
            .resolve::<()>(net, &AT, line, skip, &mut |p, m| {
                made.push((p, m));
                Ok(())
            })
            .unwrap();
        (res, made)
    }

    fn fake() -> Fake {
        Fake {
            docs: vec![
                ("https://ehr.example/fhir/Binary/a", b"hello"),
                ("https://docs.example/b", b"world"),
            ],
            asked: RefCell::new(Vec::new()),
        }
    }

    #[test]
    fn save_hands_out_documents_in_position_order_and_rewrites_urls() {
        let r = resolver(AttachmentMode::Save);
        let net = fake();
        let line = doc_ref(&[
            json!({"contentType": "text/plain", "url": "Binary/a", "size": 5}),
            json!({"contentType": "text/plain", "data": "aGk="}),
            json!({"contentType": "application/pdf", "url": "Binary/missing"}),
            json!({"url": "https://docs.example/b", "hash": sha1_b64(b"world")}),
        ]);
        let (res, made) = run(&r, &net, &line, None);
        assert_eq!((res.fetched, res.failed), (2, 1));
        let positions: Vec<u32> = made.iter().map(|(p, _)| *p).collect();
        assert_eq!(positions, [0, 2, 3]);
        match &made[0].1 {
            Made::Document { meta, bytes } => {
                assert_eq!(bytes, b"hello");
                let m: Value = serde_json::from_slice(meta).unwrap();
                assert_eq!(m["file"], "attachments/DocumentReference.d1.0.txt");
                assert_eq!(m["resource"], "DocumentReference/d1");
                assert_eq!(m["hash"], sha1_b64(b"hello"));
            }
            _ => panic!("a document first"),
        }
        match &made[1].1 {
            Made::Failure { outcome, .. } => {
                let v: Value = serde_json::from_slice(outcome).unwrap();
                assert_eq!(v["issue"][0]["code"], "not-found");
                let d = v["issue"][0]["diagnostics"].as_str().unwrap();
                assert!(
                    d.contains("content[2].attachment of DocumentReference/d1"),
                    "{d}"
                );
            }
            _ => panic!("then the failure"),
        }
        let v: Value = serde_json::from_slice(&res.line.unwrap()).unwrap();
        assert_eq!(
            v["content"][0]["attachment"]["url"],
            "attachments/DocumentReference.d1.0.txt"
        );
        assert_eq!(v["content"][2]["attachment"]["url"], "Binary/missing");
        assert_eq!(
            v["content"][3]["attachment"]["url"],
            "attachments/DocumentReference.d1.3.bin"
        );
        // The relative URL against the base; Accept names the declared type.
        let asked = net.asked.borrow();
        assert_eq!(asked[0].0, "https://ehr.example/fhir/Binary/a");
        assert_eq!(asked[0].1, "text/plain, application/fhir+json;q=0.5");
        assert_eq!(asked[2].1, "application/fhir+json");
    }

    #[test]
    fn a_resume_skips_what_was_delivered() {
        let r = resolver(AttachmentMode::Save);
        let net = fake();
        let line = doc_ref(&[
            json!({"contentType": "text/plain", "url": "Binary/a"}),
            json!({"contentType": "application/pdf", "url": "Binary/missing"}),
            json!({"url": "https://docs.example/b"}),
        ]);
        let (res, made) = run(&r, &net, &line, Some("se"));
        assert_eq!(made.len(), 1, "only the third");
        assert_eq!(made[0].0, 2);
        assert_eq!(net.asked.borrow().len(), 1, "nothing fetched again");
        let v: Value = serde_json::from_slice(&res.line.unwrap()).unwrap();
        assert_eq!(
            v["content"][0]["attachment"]["url"],
            "attachments/DocumentReference.d1.0.txt"
        );
        assert_eq!(v["content"][1]["attachment"]["url"], "Binary/missing");
    }

    #[test]
    fn inline_fills_data_size_and_hash_and_checks_declared_ones() {
        let r = resolver(AttachmentMode::Inline);
        let net = fake();
        let line = doc_ref(&[
            json!({"contentType": "text/plain", "url": "Binary/a"}),
            json!({"url": "https://docs.example/b", "size": 4}),
            json!({"url": "https://docs.example/b", "hash": "AAAA"}),
            json!({"url": "urn:uuid:1234"}),
        ]);
        let (res, made) = run(&r, &net, &line, None);
        assert_eq!((res.fetched, res.failed), (1, 3));
        let v: Value = serde_json::from_slice(&res.line.unwrap()).unwrap();
        let a = &v["content"][0]["attachment"];
        assert_eq!(a["data"], b64(b"hello"));
        assert_eq!(a["size"], 5);
        assert_eq!(a["hash"], sha1_b64(b"hello"));
        assert!(v["content"][1]["attachment"].get("data").is_none());
        let why: Vec<String> = made
            .iter()
            .map(|(_, m)| match m {
                Made::Failure { reason, .. } => reason.clone(),
                _ => panic!("inline makes no attachment records"),
            })
            .collect();
        assert!(why[0].contains("size says 4"), "{why:?}");
        assert!(why[1].contains("hash says AAAA"), "{why:?}");
        assert!(why[2].contains("\"urn\" URL"), "{why:?}");
    }

    #[test]
    fn content_types_file_names_and_odd_records() {
        let mut c = Config::new("https://ehr.example/fhir");
        c.attachments = AttachmentMode::Save;
        c.attachment_content_types = vec!["text/*".into()];
        let r = Resolver::new(&c).unwrap();
        let net = fake();
        let line = doc_ref(&[
            json!({"contentType": "application/pdf", "url": "Binary/a"}),
            json!({"contentType": "text/plain; charset=utf-8", "url": "Binary/a"}),
        ]);
        let (_, made) = run(&r, &net, &line, None);
        assert_eq!(made.len(), 1);
        assert_eq!(made[0].0, 1);
        // Not JSON, no attachments, an unsafe id: nothing, nothing, a name from file and line.
        assert_eq!(run(&r, &net, b"{not json", None).0, Resolved::default());
        assert_eq!(run(&r, &net, br#"{"id":"x"}"#, None).0, Resolved::default());
        let odd = json!({"id": "../x", "content": [{"attachment": {"contentType": "text/plain", "url": "Binary/a"}}]});
        let (_, made) = run(&r, &net, odd.to_string().as_bytes(), None);
        match &made[0].1 {
            Made::Document { meta, .. } => {
                let m: Value = serde_json::from_slice(meta).unwrap();
                assert_eq!(m["file"], "attachments/DocumentReference.f3.l7.0.txt");
            }
            _ => panic!(),
        }
    }

    #[test]
    fn config_checks() {
        let mut c = Config::new("https://ehr.example/fhir");
        c.attachment_types = vec!["Observation".into()];
        assert!(c
            .validate()
            .unwrap_err()
            .message
            .contains("attachment_types"));
        let mut c = Config::new("https://ehr.example/fhir");
        c.attachment_dir = "../up/".into();
        assert!(c.validate().unwrap_err().message.contains("attachment_dir"));
        let mut c = Config::new("https://ehr.example/fhir");
        c.attachment_content_types = vec!["pdf".into()];
        assert!(c
            .validate()
            .unwrap_err()
            .message
            .contains("attachment_content_types"));
        let mut c = Config::new("https://ehr.example/fhir");
        c.attachment_max_bytes = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .message
            .contains("attachment_max_bytes"));
        assert!(
            Config::from_json(r#"{"base_url":"https://h/fhir","attachments":"everything"}"#)
                .is_err()
        );
    }
}
