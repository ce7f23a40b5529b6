//! Splitting a byte stream into NDJSON lines, chunk by chunk, without holding whole files.
//!
//! A downloader reads into a [`Chunk`] buffer; when enough bytes have arrived, the complete lines
//! are indexed ([`Chunk::index_lines`]), the trailing partial line is moved to the next buffer,
//! and the chunk goes to the consumer as one message.

use crate::manifest::Kind;
use memchr::memchr;
use std::sync::Arc;

/// A resource type name kept with a trailing NUL so the C ABI can lend it as a C string.
#[derive(Debug, PartialEq, Eq)]
pub struct TypeName(Box<str>);

impl TypeName {
    pub fn new(name: &str) -> Arc<TypeName> {
        let mut s = String::with_capacity(name.len() + 1);
        // A NUL inside the name would truncate the C string: drop it.
        s.extend(name.chars().filter(|&c| c != '\0'));
        s.push('\0');
        Arc::new(TypeName(s.into_boxed_str()))
    }
    /// The name without the NUL.
    pub fn as_str(&self) -> &str {
        &self.0[..self.0.len() - 1]
    }
    /// The name as a NUL-terminated C string.
    pub fn as_c_ptr(&self) -> *const libc::c_char {
        self.0.as_ptr().cast()
    }
}

/// Where one record sits in its chunk.
#[derive(Clone, Copy, Debug, Default)]
pub struct LineMeta {
    pub start: usize,
    pub end: usize,
    /// 1-based line number in the file.
    pub line: u64,
    /// Index into [`Chunk::types`].
    pub ty: u32,
}

/// A run of complete NDJSON lines from one file. `data[..len]` holds the lines, each followed by
/// `\n`, with blank lines and `\r` removed.
#[derive(Debug)]
pub struct Chunk {
    pub file_index: u32,
    pub kind: Kind,
    pub data: Vec<u8>,
    pub len: usize,
    pub lines: Vec<LineMeta>,
    pub types: Vec<Arc<TypeName>>,
    /// The file's last chunk.
    pub last: bool,
    /// Error records made by fhirbulk (for skipped invalid lines), not read from the file.
    pub synthetic: bool,
    /// An attachment chunk (one record): where the document's bytes sit in `data`, after
    /// the record's line.
    pub content: Option<(usize, usize)>,
    /// A record fhirbulk made for an attachment of line `Extra::line` (an attachment record or
    /// the error record of one that could not be fetched), delivered before that line.
    pub extra: Option<Extra>,
}

/// What an attachment's record is to delivery progress: position `position` of the record on
/// line `line`, with outcome `outcome` (`b's'`: the document delivered, `b'e'`: an error record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extra {
    pub line: u64,
    pub position: u32,
    pub outcome: u8,
}

/// A line that is not valid NDJSON.
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid {
    pub line: u64,
    pub reason: String,
}

/// Why a line is not a JSON object, cheaply: it must start with `{` and end with `}`
/// (leading and trailing spaces aside); with `full`, it must also be UTF-8 and parse.
pub fn check_line(line: &[u8], full: bool) -> Option<String> {
    let first = line.iter().position(|b| !b.is_ascii_whitespace())?;
    let last = line.iter().rposition(|b| !b.is_ascii_whitespace())?;
    if line[first] != b'{' {
        if line[first..].starts_with(crate::bom::BOM) {
            return Some(
                "it starts with a byte order mark (U+FEFF), which only the start of a file may have"
                    .into(),
            );
        }
        return Some(format!(
            "it does not start with '{{' (starts with {:?})",
            line[first] as char
        ));
    }
    if line[last] != b'}' {
        return Some("it does not end with '}' (cut short?)".into());
    }
    if full {
        return full_check(line).err();
    }
    None
}

/// UTF-8 (serde_json does not look inside the strings it skips) and one JSON value.
fn full_check(line: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(line).map_err(|e| {
        format!(
            "it is not valid UTF-8 (byte 0x{:02x} at offset {})",
            line[e.valid_up_to()],
            e.valid_up_to()
        )
    })?;
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map(|_| ())
        .map_err(|e| {
            if e.is_eof() {
                format!("it is cut short: the file ends inside the JSON object ({e})")
            } else {
                format!("it is not valid JSON: {e}")
            }
        })
}

/// Why the last line of a file, which has no newline, is not a record: it must be one whole
/// JSON object, UTF-8 and parsed in full (ending in `}` proves nothing: a cut just after an
/// inner `}` does). Blank is fine (nothing to deliver).
pub fn check_last_line(line: &[u8]) -> Option<String> {
    check_line(line, true)
}

impl Chunk {
    /// Index the lines of `data[..len]` (which ends with `\n`), numbering them from
    /// `first_line`; returns the number of physical lines seen (blank ones included).
    /// `file_type` is the manifest's type of the file; without one (v3 files organized by a
    /// resource), each line's own `resourceType` is used. Lines numbered up to `skip_through`
    /// were delivered before and are left out; so are lines that fail [`check_line`], which
    /// are listed in `invalid`.
    pub fn index_lines(
        &mut self,
        first_line: u64,
        file_type: Option<&Arc<TypeName>>,
        skip_through: u64,
        validate: bool,
        invalid: &mut Vec<Invalid>,
    ) -> u64 {
        self.lines.clear();
        self.types.clear();
        if let Some(t) = file_type {
            self.types.push(t.clone());
        }
        let data = &mut self.data[..self.len];
        let mut physical = 0u64;
        let mut start = 0usize;
        let mut write = 0usize; // compaction cursor, only moves when a blank line or CR was seen
        let mut compacting = false;
        // Compaction only writes below `start`, so searching on from `start` stays correct.
        while let Some(off) = memchr(b'\n', &data[start..]) {
            let nl = start + off;
            physical += 1;
            let mut end = nl;
            if end > start && data[end - 1] == b'\r' {
                end -= 1;
                compacting = true;
            }
            let number = first_line + physical - 1;
            let blank = data[start..end].iter().all(|b| b.is_ascii_whitespace());
            let skip = blank || number <= skip_through || {
                match check_line(&data[start..end], validate) {
                    None => false,
                    Some(reason) => {
                        invalid.push(Invalid {
                            line: number,
                            reason,
                        });
                        true
                    }
                }
            };
            if skip {
                compacting = true;
            } else {
                let (s, e) = if compacting {
                    let n = end - start;
                    data.copy_within(start..end, write);
                    data[write + n] = b'\n';
                    (write, write + n)
                } else {
                    (start, end)
                };
                write = e + 1;
                let ty = match file_type {
                    Some(_) => 0,
                    None => intern(&mut self.types, &resource_type_of(&data[s..e])),
                };
                self.lines.push(LineMeta {
                    start: s,
                    end: e,
                    line: number,
                    ty,
                });
            }
            start = nl + 1;
        }
        self.len = write;
        physical
    }
}

fn intern(types: &mut Vec<Arc<TypeName>>, name: &[u8]) -> u32 {
    if let Some(i) = types.iter().position(|t| t.as_str().as_bytes() == name) {
        return i as u32;
    }
    types.push(TypeName::new(&String::from_utf8_lossy(name)));
    (types.len() - 1) as u32
}

/// The value of the top-level `"resourceType"` member of a JSON line (not one of a `contained`
/// resource or any other nested object), or empty when there is none.
pub fn resource_type_of(line: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    // Fast path, hand-written because it is most lines: `{"resourceType":"X"` as the first
    // member is top-level by position.
    if let Some(t) = first_member_type(line) {
        return std::borrow::Cow::Borrowed(t);
    }
    // Otherwise serde_json walks the object, skipping nested values whole.
    #[derive(serde::Deserialize)]
    struct Top<'a> {
        #[serde(rename = "resourceType", borrow)]
        resource_type: Option<std::borrow::Cow<'a, str>>,
    }
    match serde_json::from_slice::<Top<'_>>(line) {
        Ok(Top {
            resource_type: Some(std::borrow::Cow::Borrowed(t)),
        }) => std::borrow::Cow::Borrowed(t.as_bytes()),
        Ok(Top {
            resource_type: Some(std::borrow::Cow::Owned(t)),
        }) => std::borrow::Cow::Owned(t.into_bytes()),
        _ => std::borrow::Cow::Borrowed(b""),
    }
}

/// The value of `"resourceType"` when it is the object's first member (no escapes in it).
fn first_member_type(line: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b"\"resourceType\"";
    let mut i = line.iter().position(|b| !b.is_ascii_whitespace())?;
    if line[i] != b'{' {
        return None;
    }
    i += 1;
    while line.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
        i += 1;
    }
    if !line[i..].starts_with(KEY) {
        return None;
    }
    i += KEY.len();
    let skip_ws = |i: &mut usize| {
        while line.get(*i).is_some_and(|b| b.is_ascii_whitespace()) {
            *i += 1;
        }
    };
    skip_ws(&mut i);
    if line.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    skip_ws(&mut i);
    if line.get(i) != Some(&b'"') {
        return None;
    }
    let s = i + 1;
    let n = memchr::memchr2(b'"', b'\\', &line[s..])?;
    (line[s + n] == b'"').then(|| &line[s..s + n])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(data: &[u8]) -> Chunk {
        Chunk {
            file_index: 0,
            kind: Kind::Output,
            data: data.to_vec(),
            len: data.len(),
            lines: Vec::new(),
            types: Vec::new(),
            last: false,
            synthetic: false,
            content: None,
            extra: None,
        }
    }

    #[test]
    fn splits_and_compacts() {
        let mut c = chunk(b"{\"a\":1}\r\n\n  \n{\"b\":2}\n{\"c\":3}\n");
        let t = TypeName::new("Patient");
        let n = c.index_lines(10, Some(&t), 0, false, &mut Vec::new());
        assert_eq!(n, 5);
        assert_eq!(&c.data[..c.len], b"{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n");
        let lines: Vec<_> = c
            .lines
            .iter()
            .map(|m| (&c.data[m.start..m.end], m.line))
            .collect();
        assert_eq!(
            lines,
            vec![
                (&b"{\"a\":1}"[..], 10),
                (&b"{\"b\":2}"[..], 13),
                (&b"{\"c\":3}"[..], 14)
            ]
        );
    }

    #[test]
    fn mixed_types() {
        let mut c = chunk(b"{\"resourceType\" : \"Parameters\"}\n{\"resourceType\":\"Patient\",\"id\":\"1\"}\n{\"id\":2}\n");
        c.index_lines(1, None, 0, false, &mut Vec::new());
        let names: Vec<_> = c
            .lines
            .iter()
            .map(|m| c.types[m.ty as usize].as_str())
            .collect();
        assert_eq!(names, vec!["Parameters", "Patient", ""]);
    }

    #[test]
    fn skips_delivered_and_reports_invalid_lines() {
        let mut c = chunk(b"{\"a\":1}\n{\"b\":2}\nnot json\n{\"c\":\n{\"d\":4}\n{\"e\":5 }\n");
        let t = TypeName::new("Basic");
        let mut bad = Vec::new();
        let n = c.index_lines(1, Some(&t), 1, false, &mut bad);
        assert_eq!(n, 6);
        let kept: Vec<u64> = c.lines.iter().map(|m| m.line).collect();
        assert_eq!(kept, vec![2, 5, 6]);
        assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(&c.data[..c.len], b"{\"b\":2}\n{\"d\":4}\n{\"e\":5 }\n");
        // Full validation catches what the shape check cannot.
        let mut c = chunk(b"{\"a\":}\n");
        let mut bad = Vec::new();
        c.index_lines(1, Some(&t), 0, true, &mut bad);
        assert!(c.lines.is_empty());
        assert!(bad[0].reason.contains("not valid JSON"), "{:?}", bad);
    }
}
