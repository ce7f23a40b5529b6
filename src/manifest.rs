//! The completion manifest (`200 OK` body of the status URL, or a v3 partial manifest / page).

use crate::error::{Error, Result};
use serde_json::Value;

/// Which list of the manifest a file came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Kind {
    Output = 0,
    Error = 1,
    Deleted = 2,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Output => "output",
            Kind::Error => "error",
            Kind::Deleted => "deleted",
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
}

/// A parsed manifest (one page).
#[derive(Clone, Debug)]
pub struct Manifest {
    pub transaction_time: Option<String>,
    pub request: Option<String>,
    pub requires_access_token: bool,
    pub output_organized_by: Option<String>,
    pub files: Vec<ManifestFile>,
    /// `link` with relation `next` (v3 paging).
    pub next: Option<String>,
    /// The document as received.
    pub raw: Value,
    /// What was wrong but not worth failing for (a `count` that is not a whole number, a
    /// `transactionTime` that is not an instant).
    pub notes: Vec<String>,
}

impl Manifest {
    /// Parse a manifest body; relative URLs resolve against `base` (the URL it came from). A
    /// leading UTF-8 byte order mark is skipped.
    pub fn parse(body: &[u8], base: &str) -> Result<Manifest> {
        let body = crate::bom::strip_bom(body);
        let raw: Value = serde_json::from_slice(body).map_err(|e| {
            Error::protocol(format!(
                "the export manifest is not valid JSON: {e}{}",
                crate::bom::bom_hint(body)
            ))
            .with_url(base)
        })?;
        Self::from_value(raw, base)
    }

    pub fn from_value(raw: Value, base: &str) -> Result<Manifest> {
        let bad =
            |msg: String| Error::protocol(format!("invalid export manifest: {msg}")).with_url(base);
        let obj = raw
            .as_object()
            .ok_or_else(|| bad("it is not a JSON object".into()))?;
        if !obj.contains_key("output") {
            return Err(bad("it has no \"output\" array".into()));
        }
        let base_url = url::Url::parse(base).ok();
        let mut files = Vec::new();
        let mut notes = Vec::new();
        let mut bad_counts = (0usize, None::<String>);
        for (key, kind) in [
            ("output", Kind::Output),
            ("error", Kind::Error),
            ("deleted", Kind::Deleted),
        ] {
            let Some(list) = obj.get(key) else { continue };
            if list.is_null() {
                continue;
            }
            let list = list
                .as_array()
                .ok_or_else(|| bad(format!("\"{key}\" is not an array")))?;
            for (i, entry) in list.iter().enumerate() {
                let url = entry
                    .get("url")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("{key}[{i}] has no \"url\" string")))?;
                let resolved = match &base_url {
                    Some(b) => b.join(url),
                    None => url::Url::parse(url),
                }
                .map_err(|e| bad(format!("{key}[{i}].url {url:?} is not a URL: {e}")))?;
                if resolved.scheme() != "http" && resolved.scheme() != "https" {
                    return Err(bad(format!(
                        "{key}[{i}].url uses scheme {:?}; only http and https are fetched",
                        resolved.scheme()
                    )));
                }
                let resource_type = match entry.get("type") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(_) => return Err(bad(format!("{key}[{i}].type is not a string"))),
                };
                // `count` is a hint: one that is not a whole number is ignored (and noted).
                let count = match entry.get("count") {
                    None | Some(Value::Null) => None,
                    Some(v) => {
                        let c = v.as_u64();
                        if c.is_none() {
                            bad_counts.0 += 1;
                            bad_counts.1.get_or_insert_with(|| {
                                let t: String = v.to_string().chars().take(40).collect();
                                format!("{key}[{i}].count is {}", crate::error::escape_controls(&t))
                            });
                        }
                        c
                    }
                };
                files.push(ManifestFile {
                    kind,
                    resource_type,
                    url: resolved.to_string(),
                    count,
                    continues_in_file: entry
                        .get("continuesInFile")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                });
            }
        }
        if let (n, Some(first)) = bad_counts {
            notes.push(format!(
                "{n} file entr{} a \"count\" that is not a whole number ({first}); ignored (count is only a hint)",
                if n == 1 { "y has" } else { "ies have" }
            ));
        }
        let s = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
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
        } else if obj.get("transactionTime").is_some_and(|v| !v.is_null()) {
            notes.push("transactionTime is not a string; it is not used".into());
        }
        let requires_access_token = match obj.get("requiresAccessToken") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(bad("\"requiresAccessToken\" is not a boolean".into())),
        };
        let next = obj
            .get("link")
            .and_then(Value::as_array)
            .and_then(|links| {
                links
                    .iter()
                    .find(|l| l.get("relation").and_then(Value::as_str) == Some("next"))
            })
            .and_then(|l| l.get("url").and_then(Value::as_str))
            .map(|u| match &base_url {
                Some(b) => b
                    .join(u)
                    .map(|u| u.to_string())
                    .unwrap_or_else(|_| u.to_owned()),
                None => u.to_owned(),
            });
        Ok(Manifest {
            transaction_time,
            request: s("request"),
            requires_access_token,
            output_organized_by: s("outputOrganizedBy"),
            files,
            next,
            raw,
            notes,
        })
    }
}

/// Merge a later manifest page (or a newer partial manifest) into the caller-visible manifest:
/// the entries of `page.files` whose `is_new` is set are appended to `output`/`error`/
/// `deleted`; `link` is dropped. The entries are moved out of `page.raw`.
pub fn merge_into(combined: &mut Option<Value>, page: &mut Manifest, is_new: &[bool]) {
    // The entries move from the page into the merged manifest, not copied: with many files
    // they are most of the manifest's memory. The page keeps its other fields and `files`.
    let lists = ["output", "error", "deleted"].map(|key| {
        page.raw
            .get_mut(key)
            .and_then(Value::as_array_mut)
            .map(std::mem::take)
            .unwrap_or_default()
    });
    let target = combined.get_or_insert_with(|| {
        let mut v = page.raw.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("link");
            for k in ["output", "error", "deleted"] {
                o.insert(k.into(), Value::Array(Vec::new()));
            }
        }
        v
    });
    let Some(obj) = target.as_object_mut() else {
        return;
    };
    // Take the latest top-level fields (transactionTime etc.) from a final page.
    for (k, v) in page.raw.as_object().into_iter().flatten() {
        if !matches!(k.as_str(), "output" | "error" | "deleted" | "link") {
            obj.insert(k.clone(), v.clone());
        }
    }
    // `page.files` lists the entries of output, error and deleted in document order.
    let mut files = page.files.iter().zip(is_new);
    for (key, list) in ["output", "error", "deleted"].into_iter().zip(lists) {
        for mut entry in list {
            let Some((f, &new)) = files.next() else {
                return;
            };
            if new {
                if let Some(e) = entry.as_object_mut() {
                    e.insert("url".into(), Value::String(f.url.clone()));
                }
                if let Some(arr) = obj.get_mut(key).and_then(Value::as_array_mut) {
                    arr.push(entry);
                }
            }
        }
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
    }
}
