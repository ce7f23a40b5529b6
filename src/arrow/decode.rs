//! NDJSON resources of one type into Arrow record batches of its [`TypeSchema`], and back.
//!
//! Each resource is parsed once, straight into the column tree (serde's `DeserializeSeed`: no
//! tree of the resource is built, strings without escapes are copied from the line into the
//! columns, numbers are taken by their text), and checked as it is (syntax, `resourceType`; a
//! line that fails is cut out of the columns again): what a column holds is appended to it;
//! what none does (an element the schema has no column for, a value of the wrong JSON type, an
//! explicit `null`) goes, as its JSON text, to the row's `_remainder`, a JSON document shaped
//! like the resource that holds only those parts (arrays keep their positions, with `null`
//! where an item is wholly in the columns).
//! [`rebuild`] puts a row and its remainder back together: the resource, equal as JSON to the
//! line it came from.

use super::schema::{schema_for, Kind, Member, Node, TypeSchema, FHIR_TYPE, REMAINDER};
use arrow_array::{
    new_null_array, Array, ArrayRef, BooleanArray, Int32Array, ListArray, RecordBatch, StringArray,
    StructArray,
};
use arrow_buffer::{BooleanBufferBuilder, Buffer, NullBufferBuilder, OffsetBuffer, ScalarBuffer};
use arrow_schema::{ArrowError, DataType, Field, Fields};
use rustc_hash::FxHashMap;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// One column's values while a batch fills. A column is filled lazily: a struct's member that
/// a resource does not have gets no entry then; it is padded with nulls up to the struct's
/// length when it next gets a value, or when the batch is finished. So a row costs what its
/// JSON holds, not the width of the schema (FHIR schemas are wide and sparse: an Observation's
/// has hundreds of leaves).
enum Col {
    Bool(BooleanBufferBuilder, NullBufferBuilder),
    Int(Vec<i32>, NullBufferBuilder),
    Str {
        decimal: bool,
        offsets: Vec<i32>,
        data: Vec<u8>,
        nulls: NullBufferBuilder,
    },
    Struct {
        members: Vec<Col>,
        /// Member position by JSON key (FxHash: keys are short, and looked up for every key of
        /// every object).
        index: FxHashMap<String, usize>,
        nulls: NullBufferBuilder,
        len: usize,
    },
    List {
        child: Box<Col>,
        offsets: Vec<i32>,
        nulls: NullBufferBuilder,
    },
}

impl Col {
    fn new(node: &Node) -> Col {
        match node {
            Node::Prim(Kind::Bool, _) => {
                Col::Bool(BooleanBufferBuilder::new(0), NullBufferBuilder::new(0))
            }
            Node::Prim(Kind::Int, _) => Col::Int(Vec::new(), NullBufferBuilder::new(0)),
            Node::Prim(kind, _) => Col::Str {
                decimal: *kind == Kind::Decimal,
                offsets: vec![0],
                data: Vec::new(),
                nulls: NullBufferBuilder::new(0),
            },
            Node::Struct(members) => Col::struct_of(members),
            Node::List(child) => Col::List {
                child: Box::new(Col::new(child)),
                offsets: vec![0],
                nulls: NullBufferBuilder::new(0),
            },
        }
    }

    fn struct_of(members: &[Member]) -> Col {
        Col::Struct {
            members: members.iter().map(|m| Col::new(&m.node)).collect(),
            index: members
                .iter()
                .enumerate()
                .map(|(i, m)| (m.key.clone(), i))
                .collect(),
            nulls: NullBufferBuilder::new(0),
            len: 0,
        }
    }

    /// A plain string column (the remainder).
    fn text() -> Col {
        Col::Str {
            decimal: false,
            offsets: vec![0],
            data: Vec::new(),
            nulls: NullBufferBuilder::new(0),
        }
    }

    fn len(&self) -> usize {
        match self {
            Col::Bool(_, n) | Col::Int(_, n) => n.len(),
            Col::Str { offsets, .. } | Col::List { offsets, .. } => offsets.len() - 1,
            Col::Struct { len, .. } => *len,
        }
    }

    /// Drops the entries from `n` on, and what they hold. Used to take a line back out that
    /// failed half-way: a column the line reached was padded to its parent's entries before
    /// it got a value, so every column is cut where its parent's kept entries end.
    fn truncate(&mut self, n: usize) {
        match self {
            Col::Bool(v, nulls) => {
                v.truncate(n);
                nulls.truncate(n);
            }
            Col::Int(v, nulls) => {
                v.truncate(n);
                nulls.truncate(n);
            }
            Col::Str {
                offsets,
                data,
                nulls,
                ..
            } => {
                if offsets.len() > n + 1 {
                    offsets.truncate(n + 1);
                    data.truncate(offsets[n] as usize);
                    nulls.truncate(n);
                }
            }
            Col::Struct {
                members,
                nulls,
                len,
                ..
            } => {
                if *len > n {
                    nulls.truncate(n);
                    *len = n;
                }
                for m in members {
                    m.truncate(*len);
                }
            }
            Col::List {
                child,
                offsets,
                nulls,
            } => {
                if offsets.len() > n + 1 {
                    offsets.truncate(n + 1);
                    nulls.truncate(n);
                }
                child.truncate(*offsets.last().unwrap_or(&0) as usize);
            }
        }
    }

    /// Appends nulls up to `n` entries (a struct's members are padded when finished).
    fn pad_to(&mut self, n: usize) {
        let k = n.saturating_sub(self.len());
        if k == 0 {
            return;
        }
        match self {
            Col::Bool(v, nulls) => {
                v.append_n(k, false);
                nulls.append_n_nulls(k);
            }
            Col::Int(v, nulls) => {
                v.resize(v.len() + k, 0);
                nulls.append_n_nulls(k);
            }
            Col::Str { offsets, nulls, .. } | Col::List { offsets, nulls, .. } => {
                let last = *offsets.last().unwrap_or(&0);
                offsets.resize(offsets.len() + k, last);
                nulls.append_n_nulls(k);
            }
            Col::Struct { nulls, len, .. } => {
                nulls.append_n_nulls(k);
                *len += k;
            }
        }
    }

    fn null(&mut self) {
        let n = self.len() + 1;
        self.pad_to(n);
    }

    /// Appends a JSON number given as its text (an integer column takes a 32-bit integer
    /// written as one, a decimal column any number); else the column gets null and the text
    /// is what is left (`null` included).
    fn push_number(&mut self, text: &str) -> Left {
        let number = text.starts_with(|c: char| c == '-' || c.is_ascii_digit());
        match self {
            Col::Int(vals, n) if number => {
                // Only an integer written as one (not `1.0`, `1e2` or `-0`): its text comes back.
                if let Some(i) = text.parse::<i32>().ok().filter(|i| i.to_string() == text) {
                    vals.push(i);
                    n.append_non_null();
                    return None;
                }
            }
            Col::Str {
                decimal: true,
                offsets,
                data,
                nulls,
            } if number => {
                append_str(offsets, data, nulls, text);
                return None;
            }
            _ => {}
        }
        self.null();
        Some(text.to_owned())
    }

    /// The column's values as an array; the column is left unusable (make a new one).
    fn finish(&mut self, field: &Field) -> ArrayRef {
        let fresh =
            |c: &mut Col| std::mem::replace(c, Col::Int(Vec::new(), NullBufferBuilder::new(0)));
        match (fresh(self), field.data_type()) {
            (Col::Bool(mut v, mut n), _) => Arc::new(BooleanArray::new(v.finish(), n.finish())),
            (Col::Int(v, mut n), _) => Arc::new(Int32Array::new(ScalarBuffer::from(v), n.finish())),
            (
                Col::Str {
                    offsets,
                    data,
                    mut nulls,
                    ..
                },
                _,
            ) => Arc::new(StringArray::new(
                OffsetBuffer::new(ScalarBuffer::from(offsets)),
                Buffer::from_vec(data),
                nulls.finish(),
            )),
            (
                Col::Struct {
                    mut members,
                    mut nulls,
                    len,
                    ..
                },
                DataType::Struct(fields),
            ) => {
                let arrays: Vec<ArrayRef> = members
                    .iter_mut()
                    .zip(fields.iter())
                    .map(|(c, f)| {
                        if c.len() == 0 {
                            // A member no row of the batch had (most of a wide FHIR schema):
                            // a null array of zeroed buffers, nothing written row by row.
                            return new_null_array(f.data_type(), len);
                        }
                        c.pad_to(len);
                        c.finish(f)
                    })
                    .collect();
                Arc::new(StructArray::new(fields.clone(), arrays, nulls.finish()))
            }
            (
                Col::List {
                    mut child,
                    offsets,
                    mut nulls,
                },
                DataType::List(item),
            ) => {
                let values = child.finish(item);
                Arc::new(ListArray::new(
                    Arc::clone(item),
                    OffsetBuffer::new(ScalarBuffer::from(offsets)),
                    values,
                    nulls.finish(),
                ))
            }
            _ => unreachable!("columns are made from the schema they finish with"),
        }
    }
}

/// Decodes resources of one type into record batches of its schema.
pub struct Decoder {
    schema: Arc<TypeSchema>,
    root: Col,
    remainder: Col,
    rows: usize,
    /// Bytes of the lines pushed since the last flush (bounds every column's data).
    line_bytes: usize,
    byte_limit: usize,
}

/// A batch holds less than this many bytes of NDJSON lines: Arrow's Utf8 columns have 32-bit
/// offsets, and no column can hold more than the lines it came from.
pub const MAX_BATCH_BYTES: usize = 1 << 30;

impl Decoder {
    pub fn new(resource_type: &str) -> Decoder {
        let schema = schema_for(resource_type);
        Decoder {
            root: Col::struct_of(&schema.members),
            schema,
            remainder: Col::text(),
            rows: 0,
            line_bytes: 0,
            byte_limit: MAX_BATCH_BYTES,
        }
    }

    pub fn schema(&self) -> &Arc<TypeSchema> {
        &self.schema
    }

    /// Rows waiting for [`Decoder::flush`].
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Whether the rows waiting make a batch: `batch_rows` of them, or lines of half
    /// [`MAX_BATCH_BYTES`] (one line is less than half, so a batch stays below it).
    pub fn full(&self, batch_rows: usize) -> bool {
        self.rows >= batch_rows || self.line_bytes >= self.byte_limit / 2
    }

    /// Appends one resource (one NDJSON line). A line that is not a JSON object of this
    /// decoder's resource type is an error and appends nothing.
    pub fn push_line(&mut self, line: &[u8]) -> Result<(), ArrowError> {
        if line.len() >= self.byte_limit / 2 {
            return Err(ArrowError::JsonError(format!(
                "a resource of {} bytes is too large for an Arrow batch (at most {} bytes)",
                line.len(),
                self.byte_limit / 2 - 1
            )));
        }
        // One pass fills the columns as it checks the syntax; a line that turns out not to be
        // JSON, or not a resource of this type, is taken out of them again (truncated to the
        // rows before it), so a bad line appends nothing.
        let mut seen = TypeSeen::None;
        // UTF-8 checked once for the whole line (serde_json's slice reader checks each string
        // on its own, which costs more on lines of many short strings).
        let text = std::str::from_utf8(line)
            .map_err(|e| ArrowError::JsonError(format!("a resource line is not UTF-8: {e}")))?;
        let mut de = serde_json::Deserializer::from_str(text);
        let parsed = Seed {
            col: &mut self.root,
            item: false,
            root: Some((&self.schema.resource_type, &mut seen)),
        }
        .deserialize(&mut de)
        .and_then(|left| de.end().map(|()| left));
        let bad = match (&parsed, &seen) {
            (Err(e), _) => Some(format!("a resource line is not JSON: {e}")),
            (Ok(_), TypeSeen::Other(t)) => Some(format!(
                "a resource of type {t:?} in the {} table",
                self.schema.resource_type
            )),
            (Ok(_), TypeSeen::None) => Some(format!(
                "a resource without a resourceType in the {} table",
                self.schema.resource_type
            )),
            (Ok(_), TypeSeen::Table) => None,
        };
        if let Some(message) = bad {
            self.root.truncate(self.rows);
            return Err(ArrowError::JsonError(message));
        }
        let left = parsed.expect("checked above");
        match left {
            Some(text) => {
                let Col::Str {
                    offsets,
                    data,
                    nulls,
                    ..
                } = &mut self.remainder
                else {
                    unreachable!("the remainder is a string column")
                };
                append_str(offsets, data, nulls, &text);
            }
            None => self.remainder.null(),
        }
        self.rows += 1;
        self.line_bytes += line.len();
        Ok(())
    }

    /// Appends one resource given as a JSON value.
    pub fn push(&mut self, resource: &Value) -> Result<(), ArrowError> {
        let line = serde_json::to_vec(resource)
            .map_err(|e| ArrowError::JsonError(format!("cannot serialize a resource: {e}")))?;
        self.push_line(&line)
    }

    /// The rows pushed since the last flush as one batch (None when there are none).
    pub fn flush(&mut self) -> Option<RecordBatch> {
        if self.rows == 0 {
            return None;
        }
        let schema = self.schema.arrow_schema();
        let fields: Fields = schema.fields()[..schema.fields().len() - 1]
            .iter()
            .cloned()
            .collect();
        let root = self
            .root
            .finish(&Field::new("root", DataType::Struct(fields), true));
        self.root = Col::struct_of(&self.schema.members);
        let remainder = self
            .remainder
            .finish(&Field::new(REMAINDER, DataType::Utf8, true));
        self.remainder = Col::text();
        let root = root
            .as_any()
            .downcast_ref::<StructArray>()
            .expect("a struct");
        let mut columns: Vec<ArrayRef> = root.columns().to_vec();
        columns.push(remainder);
        self.rows = 0;
        self.line_bytes = 0;
        Some(RecordBatch::try_new(schema, columns).expect("columns match their schema"))
    }
}

/// What a column could not hold, as JSON text for the remainder.
type Left = Option<String>;

/// Fills `col` from one JSON value as it is parsed (no tree of the resource is built): what
/// the column holds goes into it, the rest comes back as JSON text. `item`: the value is a
/// list item (a `null` there is data). `root`: the resource itself (its `resourceType` is
/// noted, not a column).
struct Seed<'c> {
    col: &'c mut Col,
    item: bool,
    /// At the resource itself: the table's resource type, and where the resource's
    /// `resourceType` is noted.
    root: Option<(&'c str, &'c mut TypeSeen)>,
}

/// A resource's `resourceType`, against its table's.
enum TypeSeen {
    None,
    /// The table's.
    Table,
    Other(String),
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Left;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Left, D::Error> {
        match self.col {
            // Numbers by their text (a decimal's precision is in it).
            Col::Int(..) | Col::Str { decimal: true, .. } => {
                let raw = <&RawValue>::deserialize(d)?;
                if self.item && raw.get() == "null" {
                    self.col.null();
                    return Ok(None);
                }
                Ok(self.col.push_number(raw.get()))
            }
            _ => d.deserialize_any(self),
        }
    }
}

/// JSON text of a string.
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

impl Seed<'_> {
    /// The value does not fit the column: null there, the value to the remainder.
    fn reject(self, text: String) -> Left {
        self.col.null();
        Some(text)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Left;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Left, E> {
        if let Col::Bool(v, n) = self.col {
            v.append(b);
            n.append_non_null();
            return Ok(None);
        }
        Ok(self.reject(b.to_string()))
    }

    fn visit_i64<E: de::Error>(self, x: i64) -> Result<Left, E> {
        Ok(self.reject(x.to_string()))
    }

    fn visit_u64<E: de::Error>(self, x: u64) -> Result<Left, E> {
        Ok(self.reject(x.to_string()))
    }

    fn visit_f64<E: de::Error>(self, x: f64) -> Result<Left, E> {
        Ok(self.reject(serde_json::to_string(&x).unwrap_or_else(|_| "null".into())))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Left, E> {
        if let Col::Str {
            decimal: false,
            offsets,
            data,
            nulls,
        } = self.col
        {
            append_str(offsets, data, nulls, s);
            return Ok(None);
        }
        Ok(self.reject(quoted(s)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Left, E> {
        if self.item {
            self.col.null();
            return Ok(None);
        }
        // An explicit null: kept, so that the resource comes back as it was.
        Ok(self.reject("null".into()))
    }

    fn visit_none<E: de::Error>(self) -> Result<Left, E> {
        self.visit_unit()
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Left, A::Error> {
        let Col::Struct {
            members,
            index,
            nulls,
            len,
        } = self.col
        else {
            let v = Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
            return Ok(self.reject(v.to_string()));
        };
        let row = *len;
        let mut rem = String::new();
        let left = |rem: &mut String, key: &str, text: &str| {
            rem.push(if rem.is_empty() { '{' } else { ',' });
            rem.push_str(&quoted(key));
            rem.push(':');
            rem.push_str(text);
        };
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if key == "resourceType" {
                if let Some((table, seen)) = self.root.as_mut() {
                    let t = map.next_value_seed(KeySeed)?;
                    **seen = if t == *table {
                        TypeSeen::Table
                    } else {
                        TypeSeen::Other(t.into_owned())
                    };
                    continue;
                }
            }
            match index.get(key.as_ref()).map(|&i| &mut members[i]) {
                // A member with a value for this row already (a key given twice) goes to the
                // remainder: as when the JSON is read, the last one counts.
                Some(col) if col.len() <= row => {
                    col.pad_to(row);
                    let seed = Seed {
                        col,
                        item: false,
                        root: None,
                    };
                    if let Some(text) = map.next_value_seed(seed)? {
                        left(&mut rem, &key, &text);
                    }
                }
                // No column (an unknown element, a `_primitive` sibling, ...): as it came.
                _ => {
                    let raw = map.next_value::<&RawValue>()?;
                    left(&mut rem, &key, raw.get());
                }
            }
        }
        nulls.append_non_null();
        *len += 1;
        if rem.is_empty() {
            return Ok(None);
        }
        rem.push('}');
        Ok(Some(rem))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Left, A::Error> {
        let Col::List {
            child,
            offsets,
            nulls,
        } = self.col
        else {
            let v = Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
            return Ok(self.reject(v.to_string()));
        };
        let mut items: Vec<Left> = Vec::new();
        let mut n = 0;
        let mut any = false;
        loop {
            let seed = Seed {
                col: child,
                item: true,
                root: None,
            };
            match seq.next_element_seed(seed)? {
                Some(left) => {
                    n += 1;
                    any |= left.is_some();
                    items.push(left);
                }
                None => break,
            }
        }
        offsets.push(*offsets.last().unwrap_or(&0) + n);
        nulls.append_non_null();
        if !any {
            return Ok(None);
        }
        // Positions kept: `null` where an item is wholly in the columns.
        let mut rem = String::from("[");
        for (i, l) in items.iter().enumerate() {
            if i > 0 {
                rem.push(',');
            }
            rem.push_str(l.as_deref().unwrap_or("null"));
        }
        rem.push(']');
        Ok(Some(rem))
    }
}

/// An object key, borrowed from the line when it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s.to_owned()))
    }
}

/// Appends one string value. The offsets are 32-bit: a batch holds less than
/// [`MAX_BATCH_BYTES`] of lines, so no column's data reaches 2 GiB.
fn append_str(offsets: &mut Vec<i32>, data: &mut Vec<u8>, nulls: &mut NullBufferBuilder, s: &str) {
    data.extend_from_slice(s.as_bytes());
    offsets.push(data.len() as i32);
    nulls.append_non_null();
}

/// The resource of `row`: its columns and its remainder put back together, with
/// `resourceType` from the schema's metadata.
pub fn rebuild(batch: &RecordBatch, row: usize) -> Value {
    let schema = batch.schema();
    let mut obj = Map::new();
    if let Some(t) = schema.metadata().get("fhir.resourceType") {
        obj.insert("resourceType".into(), Value::String(t.clone()));
    }
    let mut remainder = None;
    for (field, col) in schema.fields().iter().zip(batch.columns()) {
        if field.name() == REMAINDER {
            let s = col.as_any().downcast_ref::<StringArray>().expect("utf8");
            if s.is_valid(row) {
                remainder = serde_json::from_str::<Value>(s.value(row)).ok();
            }
            continue;
        }
        if let Some(v) = value_at(field, col.as_ref(), row) {
            obj.insert(field.name().clone(), v);
        }
    }
    let mut out = Value::Object(obj);
    if let Some(r) = remainder {
        merge(&mut out, r);
    }
    out
}

fn value_at(field: &Field, a: &dyn Array, i: usize) -> Option<Value> {
    if a.is_null(i) {
        return None;
    }
    Some(match field.data_type() {
        DataType::Boolean => Value::Bool(a.as_any().downcast_ref::<BooleanArray>()?.value(i)),
        DataType::Int32 => Value::Number(a.as_any().downcast_ref::<Int32Array>()?.value(i).into()),
        DataType::Utf8 => {
            let s = a.as_any().downcast_ref::<StringArray>()?.value(i);
            if field.metadata().get(FHIR_TYPE).map(String::as_str) == Some("decimal") {
                Value::Number(s.parse::<Number>().ok()?)
            } else {
                Value::String(s.to_owned())
            }
        }
        DataType::Struct(fields) => {
            let s = a.as_any().downcast_ref::<StructArray>()?;
            let mut m = Map::new();
            for (f, c) in fields.iter().zip(s.columns()) {
                if let Some(v) = value_at(f, c.as_ref(), i) {
                    m.insert(f.name().clone(), v);
                }
            }
            Value::Object(m)
        }
        DataType::List(item) => {
            let l = a.as_any().downcast_ref::<ListArray>()?;
            let values = l.value(i);
            Value::Array(
                (0..values.len())
                    .map(|j| value_at(item, values.as_ref(), j).unwrap_or(Value::Null))
                    .collect(),
            )
        }
        _ => return None,
    })
}

/// Puts a remainder into a rebuilt value: objects key by key (`null` sets a key to null),
/// arrays position by position (`null` keeps the item), anything else replaces.
fn merge(target: &mut Value, rem: Value) {
    match (target, rem) {
        (Value::Object(t), Value::Object(r)) => {
            for (k, v) in r {
                match (t.get_mut(&k), v) {
                    (Some(existing), v) if !v.is_null() => merge(existing, v),
                    (_, v) => {
                        t.insert(k, v);
                    }
                }
            }
        }
        (Value::Array(t), Value::Array(r)) => {
            for (i, v) in r.into_iter().enumerate() {
                if v.is_null() {
                    continue;
                }
                match t.get_mut(i) {
                    Some(existing) if !existing.is_null() => merge(existing, v),
                    Some(slot) => *slot = v,
                    None => t.push(v),
                }
            }
        }
        (t, r) => *t = r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round_trip(resources: &[Value]) -> RecordBatch {
        let t = resources[0]["resourceType"].as_str().unwrap();
        let mut d = Decoder::new(t);
        for r in resources {
            d.push_line(r.to_string().as_bytes()).unwrap();
        }
        let b = d.flush().unwrap();
        assert_eq!(b.num_rows(), resources.len());
        for (i, r) in resources.iter().enumerate() {
            assert_eq!(&rebuild(&b, i), r, "row {i}");
        }
        b
    }

    #[test]
    fn rows_rebuild_their_resources() {
        let b = round_trip(&[
            json!({"resourceType": "Patient", "id": "p1", "active": true, "birthDate": "1970",
                   "name": [{"family": "Doe", "given": ["A", null], "_given": [null, {"extension": [{"url": "u", "valueString": "x"}]}]}],
                   "extension": [{"url": "http://race", "extension": [{"url": "ombCategory", "valueCoding": {"system": "s", "code": "c"}}, {"url": "text", "valueString": "T"}]}],
                   "deceasedBoolean": false}),
            json!({"resourceType": "Patient", "id": "p2", "active": "yes", "unknownElement": {"a": [1, 2]},
                   "name": [{}, {"family": "X", "extension": [{"url": "nested", "valuePeriod": {"start": "2020"}}]}],
                   "contained": [{"resourceType": "Organization", "id": "o1"}],
                   "multipleBirthInteger": 3, "link": []}),
            json!({"resourceType": "Patient"}),
        ]);
        let rem = b.column_by_name(REMAINDER).unwrap();
        assert!(rem.is_valid(0), "p1's _given has no column");
        assert!(rem.is_valid(1));
        assert!(rem.is_null(2), "an empty Patient is all in columns");
        round_trip(&[
            json!({"resourceType": "Observation", "id": "o", "status": "final",
                   "valueQuantity": {"value": 1.50, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"},
                   "component": [{"code": {"text": "a"}, "valueInteger": 2147483647}, {"code": {"text": "b"}, "valueDecimal": 1e-7}],
                   "effectiveDateTime": "2024-03-01T10:00:00+01:00", "valueInteger": 2147483648u64, "issued": null}),
        ]);
    }

    #[test]
    fn decimals_keep_their_text() {
        let mut d = Decoder::new("Observation");
        d.push_line(
            br#"{"resourceType":"Observation","valueQuantity":{"value":1.50},"valueInteger":1.0}"#,
        )
        .unwrap();
        let b = d.flush().unwrap();
        let q = b
            .column_by_name("valueQuantity")
            .unwrap()
            .as_any()
            .downcast_ref::<StructArray>()
            .unwrap()
            .column_by_name("value")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .value(0)
            .to_owned();
        assert_eq!(q, "1.50");
        // `1.0` is no 32-bit integer as written: the remainder keeps its text.
        let rem = b.column_by_name(REMAINDER).unwrap();
        let rem = rem.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(rem.value(0), r#"{"valueInteger":1.0}"#);
        let e = d.push_line(br#"{"resourceType":"Patient"}"#).unwrap_err();
        assert!(e.to_string().contains("Observation table"), "{e}");
        let e = d
            .push_line(br#"{"resourceType":"Observation""#)
            .unwrap_err();
        assert!(e.to_string().contains("not JSON"), "{e}");
        assert_eq!(d.rows(), 0, "a bad line appends nothing");
    }

    #[test]
    fn a_line_that_fails_half_way_is_taken_out_of_every_column() {
        let good = [
            json!({"resourceType": "Observation", "id": "a", "status": "final",
                   "code": {"coding": [{"system": "s", "code": "c1"}], "text": "t"},
                   "component": [{"code": {"coding": [{"code": "x"}]}, "valueInteger": 1}],
                   "extension": [{"url": "u", "valueString": "v"}]}),
            json!({"resourceType": "Observation", "id": "b", "valueQuantity": {"value": 1.5},
                   "note": [{"text": "n"}], "unknown": [1]}),
        ];
        let first = good[0].to_string();
        let mut d = Decoder::new("Observation");
        d.push_line(first.as_bytes()).unwrap();
        // Cut off inside nested lists and structs, at many places: each must leave nothing.
        for cut in (10..first.len()).step_by(7) {
            assert!(
                d.push_line(&first.as_bytes()[..cut]).is_err(),
                "cut at {cut}"
            );
            assert_eq!(d.rows(), 1);
        }
        // Another type, no type, not an object, two objects on a line: also taken out.
        let other = first.replace("\"Observation\"", "\"Patient\"");
        let two = good[1].to_string() + &first;
        for line in [
            other.as_str(),
            r#"{"id":"x","status":"final"}"#,
            "[1,2]",
            "\"x\"",
            &two,
        ] {
            assert!(d.push_line(line.as_bytes()).is_err(), "{line}");
        }
        let e = d
            .push_line(b"{\"resourceType\":\"Observation\",\"id\":\"\xff\"}")
            .unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
        d.push_line(good[1].to_string().as_bytes()).unwrap();
        let b = d.flush().unwrap();
        assert_eq!(b.num_rows(), 2);
        for (i, r) in good.iter().enumerate() {
            assert_eq!(&rebuild(&b, i), r, "row {i}");
        }
        b.columns()
            .iter()
            .for_each(|c| c.to_data().validate_full().unwrap());
    }

    #[test]
    fn batches_stay_below_the_byte_limit() {
        let mut d = Decoder::new("Patient");
        d.byte_limit = 200;
        let line = br#"{"resourceType":"Patient","id":"a-patient-with-a-long-id-0001"}"#;
        d.push_line(line).unwrap();
        assert!(!d.full(1000));
        d.push_line(line).unwrap();
        assert!(
            d.full(1000),
            "{} bytes of lines make a batch",
            2 * line.len()
        );
        let big = format!(r#"{{"resourceType":"Patient","id":"{}"}}"#, "x".repeat(100));
        let e = d.push_line(big.as_bytes()).unwrap_err();
        assert!(
            e.to_string().contains("too large for an Arrow batch"),
            "{e}"
        );
        assert_eq!(d.flush().unwrap().num_rows(), 2);
        assert!(!d.full(1000));
    }

    #[test]
    fn keys_given_twice_and_escapes() {
        round_trip(&[json!({"resourceType": "Patient", "id": "a\"b\u{e9}", "gender": "x\ny"})]);
        let mut d = Decoder::new("Patient");
        d.push_line(br#"{"resourceType":"Patient","id":"1","id":"2","birthDate":"2000"}"#)
            .unwrap();
        let b = d.flush().unwrap();
        assert_eq!(
            rebuild(&b, 0)["id"],
            "2",
            "the last key counts, as serde_json reads it"
        );
    }
}
