//! The completion manifest (`200 OK` body of the status URL, or a v3 partial manifest / page).
//!
//! A manifest of 200,000 files is parsed entry by entry: each entry becomes a [`ManifestFile`]
//! as it is read, and no tree of the whole document is built (as a `serde_json::Value` it would
//! cost about 650 bytes per file).

use crate::error::{Error, Result};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::fmt;

/// Which list of the manifest a file came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Kind {
    Output = 0,
    Error = 1,
    Deleted = 2,
    /// Not a manifest list: a document an attachment links, fetched by fhirbulk (config
    /// `attachments: save`).
    Attachment = 3,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Output => "output",
            Kind::Error => "error",
            Kind::Deleted => "deleted",
            Kind::Attachment => "attachment",
        }
    }

    /// The kind named `name` (`"output"`, `"error"`, `"deleted"`).
    pub fn from_name(name: &str) -> Option<Kind> {
        match name {
            "output" => Some(Kind::Output),
            "error" => Some(Kind::Error),
            "deleted" => Some(Kind::Deleted),
            _ => None,
        }
    }
}

/// One file entry of a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestFile {
    pub kind: Kind,
    /// `type`; absent in v3 manifests organized by a resource (`outputOrganizedBy`).
    pub resource_type: Option<String>,
    /// Absolute http(s) URL.
    pub url: String,
    /// `count`, a hint only.
    pub count: Option<u64>,
    /// v3 `continuesInFile`.
    pub continues_in_file: Option<String>,
    /// The entry's other fields (`extension`, `continuesInFile`, a `count` that is not a whole
    /// number, ...), kept for the manifest handed to the caller; `None` for most entries.
    pub extra: Option<Box<Map<String, Value>>>,
}

impl ManifestFile {
    /// An entry; `continues_in_file` comes from `extra`, where the entry's other fields are.
    pub fn new(
        kind: Kind,
        resource_type: Option<String>,
        url: String,
        count: Option<u64>,
        extra: Option<Box<Map<String, Value>>>,
    ) -> ManifestFile {
        let continues_in_file = extra
            .as_ref()
            .and_then(|m| m.get("continuesInFile"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        ManifestFile {
            kind,
            resource_type,
            url,
            count,
            continues_in_file,
            extra,
        }
    }
}

/// A parsed manifest (one page).
#[derive(Clone, Debug)]
pub struct Manifest {
    pub transaction_time: Option<String>,
    pub request: Option<String>,
    pub requires_access_token: bool,
    pub output_organized_by: Option<String>,
    /// The entries of `output`, `error` and `deleted`, in that order.
    pub files: Vec<ManifestFile>,
    /// `link` with relation `next` (v3 paging).
    pub next: Option<String>,
    /// The document's top-level fields as received, without `output`, `error`, `deleted` and
    /// `link`.
    pub top: Map<String, Value>,
    /// What was wrong but not worth failing for (a `count` that is not a whole number, a
    /// `transactionTime` that is not an instant).
    pub notes: Vec<String>,
}

const LISTS: [(&str, Kind); 3] = [
    ("output", Kind::Output),
    ("error", Kind::Error),
    ("deleted", Kind::Deleted),
];

/// What parsing found out before it stopped: the reason is kept here, serde only unwinds.
struct Parse<'a> {
    base: Option<&'a url::Url>,
    base_str: &'a str,
    lists: [Option<Vec<ManifestFile>>; 3],
    bad_counts: (usize, Option<String>),
    failure: RefCell<Option<Error>>,
}

impl Parse<'_> {
    fn fail<E: de::Error>(&self, msg: String) -> E {
        *self.failure.borrow_mut() = Some(
            Error::protocol(format!("invalid export manifest: {msg}")).with_url(self.base_str),
        );
        E::custom("invalid export manifest")
    }

    /// One entry of list `key`, index `i`.
    fn entry(
        &mut self,
        key: &str,
        kind: Kind,
        i: usize,
        entry: Value,
    ) -> std::result::Result<ManifestFile, String> {
        let mut obj = match entry {
            Value::Object(o) => o,
            _ => return Err(format!("{key}[{i}] has no \"url\" string")),
        };
        let url = match obj.remove("url") {
            Some(Value::String(s)) => s,
            _ => return Err(format!("{key}[{i}] has no \"url\" string")),
        };
        let resolved = match self.base {
            Some(b) => b.join(&url),
            None => url::Url::parse(&url),
        }
        // Quoted without its query: a pre-signed URL's signature stays out of the error.
        .map_err(|e| {
            format!(
                "{key}[{i}].url {:?} is not a URL: {e}",
                crate::error::redact_url(&url)
            )
        })?;
        if resolved.scheme() != "http" && resolved.scheme() != "https" {
            return Err(format!(
                "{key}[{i}].url uses scheme {:?}; only http and https are fetched",
                resolved.scheme()
            ));
        }
        let resource_type = match obj.get("type") {
            None | Some(Value::Null) => None,
            Some(Value::String(_)) => match obj.remove("type") {
                Some(Value::String(s)) => Some(s),
                _ => None,
            },
            Some(_) => return Err(format!("{key}[{i}].type is not a string")),
        };
        // `count` is a hint: one that is not a whole number is ignored (and noted, and kept
        // as it came in the manifest handed to the caller).
        let count = match obj.get("count") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(c) => {
                    obj.remove("count");
                    Some(c)
                }
                None => {
                    self.bad_counts.0 += 1;
                    self.bad_counts.1.get_or_insert_with(|| {
                        let t: String = v.to_string().chars().take(40).collect();
                        format!("{key}[{i}].count is {}", crate::error::escape_controls(&t))
                    });
                    None
                }
            },
        };
        Ok(ManifestFile::new(
            kind,
            resource_type,
            resolved.into(),
            count,
            (!obj.is_empty()).then(|| Box::new(obj)),
        ))
    }
}

struct Top<'p, 'a>(&'p mut Parse<'a>, &'p mut Map<String, Value>);

impl<'de> Visitor<'de> for Top<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        let Top(p, top) = self;
        while let Some(key) = map.next_key::<String>()? {
            match LISTS.iter().position(|(k, _)| *k == key) {
                Some(li) => {
                    let list = map.next_value_seed(List { p, li })?;
                    p.lists[li] = Some(list);
                }
                None => {
                    let v: Value = map.next_value()?;
                    top.insert(key, v);
                }
            }
        }
        Ok(())
    }
}

/// `output`, `error` or `deleted`: null, or an array of entries.
struct List<'p, 'a> {
    p: &'p mut Parse<'a>,
    li: usize,
}

impl<'de> DeserializeSeed<'de> for List<'_, '_> {
    type Value = Vec<ManifestFile>;
    fn deserialize<D: de::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for List<'_, '_> {
    type Value = Vec<ManifestFile>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array")
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_seq<A: SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let (key, kind) = LISTS[self.li];
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(entry) = seq.next_element::<Value>()? {
            let i = out.len();
            match self.p.entry(key, kind, i, entry) {
                Ok(f) => out.push(f),
                Err(msg) => return Err(self.p.fail(msg)),
            }
        }
        Ok(out)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> std::result::Result<Self::Value, E> {
        Err(self.not_array())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> std::result::Result<Self::Value, E> {
        Err(self.not_array())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> std::result::Result<Self::Value, E> {
        Err(self.not_array())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> std::result::Result<Self::Value, E> {
        Err(self.not_array())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> std::result::Result<Self::Value, E> {
        Err(self.not_array())
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> std::result::Result<Self::Value, A::Error> {
        Err(self.not_array())
    }
}

impl List<'_, '_> {
    fn not_array<E: de::Error>(&self) -> E {
        let key = LISTS[self.li].0;
        self.p.fail(format!("\"{key}\" is not an array"))
    }
}

/// Why a body is not a manifest.
pub(crate) enum NotManifest {
    /// Not JSON (or not an object).
    NotJson(Error),
    /// A JSON object without `output`.
    NoOutput(Error),
    /// A manifest with an invalid entry or field.
    Invalid(Error),
}

impl NotManifest {
    pub(crate) fn into_error(self) -> Error {
        match self {
            NotManifest::NotJson(e) | NotManifest::NoOutput(e) | NotManifest::Invalid(e) => e,
        }
    }
}

impl Manifest {
    /// Parse a manifest body; relative URLs resolve against `base` (the URL it came from). A
    /// leading UTF-8 byte order mark is skipped.
    pub fn parse(body: &[u8], base: &str) -> Result<Manifest> {
        Self::parse_or(body, base).map_err(NotManifest::into_error)
    }

    /// [`Manifest::parse`], telling a body that is no manifest at all from a broken one.
    pub(crate) fn parse_or(body: &[u8], base: &str) -> std::result::Result<Manifest, NotManifest> {
        let body = crate::bom::strip_bom(body);
        let base_url = url::Url::parse(base).ok();
        let mut p = Parse {
            base: base_url.as_ref(),
            base_str: base,
            lists: [None, None, None],
            bad_counts: (0, None),
            failure: RefCell::new(None),
        };
        let mut top = Map::new();
        let mut de = serde_json::Deserializer::from_slice(body);
        let r = de::Deserializer::deserialize_any(&mut de, Top(&mut p, &mut top))
            .and_then(|()| de.end());
        if let Err(e) = r {
            if let Some(f) = p.failure.take() {
                return Err(NotManifest::Invalid(f));
            }
            let not_object = e.classify() == serde_json::error::Category::Data;
            return Err(NotManifest::NotJson(if not_object {
                Error::protocol("invalid export manifest: it is not a JSON object").with_url(base)
            } else {
                Error::protocol(format!(
                    "the export manifest is not valid JSON: {e}{}",
                    crate::bom::bom_hint(body)
                ))
                .with_url(base)
            }));
        }
        Self::finish(p, top, base, base_url.as_ref())
    }

    /// A manifest from a JSON document already parsed.
    pub fn from_value(raw: Value, base: &str) -> Result<Manifest> {
        let text = serde_json::to_vec(&raw).unwrap_or_default();
        Self::parse(&text, base)
    }

    fn finish(
        p: Parse<'_>,
        mut top: Map<String, Value>,
        base: &str,
        base_url: Option<&url::Url>,
    ) -> std::result::Result<Manifest, NotManifest> {
        let bad =
            |msg: String| Error::protocol(format!("invalid export manifest: {msg}")).with_url(base);
        let Parse {
            lists, bad_counts, ..
        } = p;
        if lists[0].is_none() && !top.contains_key("output") {
            return Err(NotManifest::NoOutput(bad(
                "it has no \"output\" array".into()
            )));
        }
        let mut files = Vec::with_capacity(lists.iter().flatten().map(Vec::len).sum());
        for l in lists.into_iter().flatten() {
            files.extend(l);
        }
        let mut notes = Vec::new();
        if let (n, Some(first)) = bad_counts {
            notes.push(format!(
                "{n} file entr{} a \"count\" that is not a whole number ({first}); ignored (count is only a hint)",
                if n == 1 { "y has" } else { "ies have" }
            ));
        }
        let s = |k: &str| top.get(k).and_then(Value::as_str).map(str::to_owned);
        let mut transaction_time = s("transactionTime");
        if let Some(t) = &transaction_time {
            if !crate::instant::is_instant(t) {
                let shown: String = t.chars().take(60).collect();
                notes.push(format!(
                    "transactionTime {:?} is not a FHIR instant; it is not used as the _since of a next export",
                    crate::error::escape_controls(&shown)
                ));
                transaction_time = None;
            }
        } else if top.get("transactionTime").is_some_and(|v| !v.is_null()) {
            notes.push("transactionTime is not a string; it is not used".into());
        }
        let requires_access_token = match top.get("requiresAccessToken") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(NotManifest::Invalid(bad(
                    "\"requiresAccessToken\" is not a boolean".into(),
                )))
            }
        };
        let next = top
            .get("link")
            .and_then(Value::as_array)
            .and_then(|links| {
                links
                    .iter()
                    .find(|l| l.get("relation").and_then(Value::as_str) == Some("next"))
            })
            .and_then(|l| l.get("url").and_then(Value::as_str))
            .map(|u| match base_url {
                Some(b) => b
                    .join(u)
                    .map(|u| u.to_string())
                    .unwrap_or_else(|_| u.to_owned()),
                None => u.to_owned(),
            });
        let request = s("request");
        let output_organized_by = s("outputOrganizedBy");
        for k in ["output", "error", "deleted", "link"] {
            top.remove(k);
        }
        Ok(Manifest {
            transaction_time,
            request,
            requires_access_token,
            output_organized_by,
            files,
            next,
            top,
            notes,
        })
    }
}

/// Merge the top-level fields of a later manifest page (or a newer partial manifest) into the
/// caller-visible manifest's: the latest value of each wins. The entries are not kept here:
/// the manifest handed to the caller is written from the files table (see `files`).
pub fn merge_top(combined: &mut Option<Map<String, Value>>, page: &Manifest) {
    let target = combined.get_or_insert_with(Map::new);
    for (k, v) in &page.top {
        target.insert(k.clone(), v.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_that_are_wrong_are_noted_not_fatal() {
        let m = Manifest::parse(
            b"\xEF\xBB\xBF{\"transactionTime\":\"yesterday\",\"output\":[{\"type\":\"P\",\"url\":\"http://h/1\",\"count\":-3},{\"type\":\"P\",\"url\":\"http://h/2\",\"count\":\"12\"},{\"type\":\"P\",\"url\":\"http://h/3\",\"count\":7}]}",
            "http://h/s",
        )
        .unwrap();
        assert_eq!(
            m.files.iter().map(|f| f.count).collect::<Vec<_>>(),
            vec![None, None, Some(7)]
        );
        assert_eq!(m.transaction_time, None);
        assert_eq!(m.notes.len(), 2, "{:?}", m.notes);
        assert!(m.notes[0].contains("2 file entries") && m.notes[0].contains("-3"));
        assert!(m.notes[1].contains("not a FHIR instant"));
    }

    #[test]
    fn parses_and_resolves() {
        let m = Manifest::parse(
            br#"{"transactionTime":"2024-01-01T00:00:00Z","request":"x","requiresAccessToken":true,
                "output":[{"type":"Patient","url":"files/1.ndjson","count":3}],
                "error":[{"type":"OperationOutcome","url":"http://h/e.ndjson"}],
                "link":[{"relation":"next","url":"page/2"}]}"#,
            "http://h/jobs/1",
        )
        .unwrap();
        assert_eq!(m.files.len(), 2);
        assert_eq!(m.files[0].url, "http://h/jobs/files/1.ndjson");
        assert_eq!(m.files[1].kind, Kind::Error);
        assert!(m.requires_access_token);
        assert_eq!(m.next.as_deref(), Some("http://h/jobs/page/2"));
    }

    #[test]
    fn rejects_bad_manifests() {
        for (body, needle) in [
            (&b"{not json"[..], "not valid JSON"),
            (b"[]", "not a JSON object"),
            (b"{}", "no \"output\""),
            (br#"{"output":[{"type":"P"}]}"#, "no \"url\""),
            (br#"{"output":[{"url":"ftp://h/x"}]}"#, "scheme"),
            (b"\xFF\xFE{\0}\0", "UTF-16 byte order mark"),
        ] {
            let e = Manifest::parse(body, "http://h/s").unwrap_err();
            assert!(e.message.contains(needle), "{} lacks {needle}", e.message);
        }
        // A URL that does not parse is quoted without its query (a pre-signed signature).
        let e = Manifest::parse(
            br#"{"output":[{"url":"http://[::1/x.ndjson?sig=SENTINELSIG123"}]}"#,
            "http://h/s",
        )
        .unwrap_err();
        assert!(e.message.contains("http://[::1/x.ndjson"), "{}", e.message);
        assert!(
            !format!("{e} {}", e.to_json()).contains("SENTINELSIG123"),
            "{e}"
        );
    }
}
