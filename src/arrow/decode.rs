//! NDJSON resources of one type into Arrow record batches of its [`TypeSchema`], and back.
//!
//! Each resource is parsed (serde_json, decimals kept as their text) and walked against the
//! column tree: what a column holds is appended to it; what none does (an element the schema
//! has no column for, a value of the wrong JSON type, an explicit `null`) goes to the row's
//! `_remainder`, a JSON document shaped like the resource that holds only those parts
//! (arrays keep their positions, with `null` where an item is wholly in the columns).
//! [`rebuild`] puts a row and its remainder back together: the resource, equal as JSON to the
//! line it came from.

use super::schema::{schema_for, Kind, Member, Node, TypeSchema, FHIR_TYPE, REMAINDER};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Int32Array, ListArray, RecordBatch, StringArray, StructArray,
};
use arrow_buffer::{BooleanBufferBuilder, Buffer, NullBufferBuilder, OffsetBuffer, ScalarBuffer};
use arrow_schema::{ArrowError, DataType, Field, Fields};
use serde_json::{Map, Number, Value};
use std::sync::Arc;

/// One column's values while a batch fills.
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
        members: Vec<(String, Col)>,
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
            Node::Struct(members) => Col::Struct {
                members: members
                    .iter()
                    .map(|m| (m.key.clone(), Col::new(&m.node)))
                    .collect(),
                nulls: NullBufferBuilder::new(0),
                len: 0,
            },
            Node::List(child) => Col::List {
                child: Box::new(Col::new(child)),
                offsets: vec![0],
                nulls: NullBufferBuilder::new(0),
            },
        }
    }

    fn null(&mut self) {
        match self {
            Col::Bool(v, n) => {
                v.append(false);
                n.append_null();
            }
            Col::Int(v, n) => {
                v.push(0);
                n.append_null();
            }
            Col::Str { offsets, nulls, .. } => {
                offsets.push(*offsets.last().unwrap_or(&0));
                nulls.append_null();
            }
            Col::Struct {
                members,
                nulls,
                len,
            } => {
                for (_, c) in members {
                    c.null();
                }
                nulls.append_null();
                *len += 1;
            }
            Col::List { offsets, nulls, .. } => {
                offsets.push(*offsets.last().unwrap_or(&0));
                nulls.append_null();
            }
        }
    }

    /// Appends `v` (None: absent); returns what the column could not hold.
    fn push(&mut self, v: Option<&Value>) -> Option<Value> {
        let Some(v) = v else {
            self.null();
            return None;
        };
        let taken = match (&mut *self, v) {
            (Col::Bool(b, n), Value::Bool(x)) => {
                b.append(*x);
                n.append_non_null();
                true
            }
            (Col::Int(vals, n), Value::Number(x)) => {
                match x.as_i64().and_then(|i| i32::try_from(i).ok()) {
                    Some(i) if x.to_string() == i.to_string() => {
                        vals.push(i);
                        n.append_non_null();
                        true
                    }
                    _ => false,
                }
            }
            (
                Col::Str {
                    decimal: false,
                    offsets,
                    data,
                    nulls,
                },
                Value::String(s),
            ) => {
                data.extend_from_slice(s.as_bytes());
                offsets.push(data.len() as i32);
                nulls.append_non_null();
                true
            }
            (
                Col::Str {
                    decimal: true,
                    offsets,
                    data,
                    nulls,
                },
                Value::Number(x),
            ) => {
                // The number's own text (serde_json's arbitrary_precision).
                data.extend_from_slice(x.to_string().as_bytes());
                offsets.push(data.len() as i32);
                nulls.append_non_null();
                true
            }
            (
                Col::Struct {
                    members,
                    nulls,
                    len,
                },
                Value::Object(map),
            ) => {
                let mut rem = Map::new();
                let mut found = 0;
                for (key, col) in members.iter_mut() {
                    let v = map.get(key.as_str());
                    found += usize::from(v.is_some());
                    if let Some(left) = col.push(v) {
                        rem.insert(key.clone(), left);
                    }
                }
                if found < map.len() {
                    // Keys no column has (unknown elements, `_primitive` siblings, ...).
                    for (k, x) in map {
                        if !members.iter().any(|(key, _)| key == k) {
                            rem.insert(k.clone(), x.clone());
                        }
                    }
                }
                nulls.append_non_null();
                *len += 1;
                return (!rem.is_empty()).then_some(Value::Object(rem));
            }
            (
                Col::List {
                    child,
                    offsets,
                    nulls,
                },
                Value::Array(items),
            ) => {
                let mut rem: Vec<Value> = Vec::new();
                let mut any = false;
                for item in items {
                    // A null item is data in a list (primitive arrays align with `_name`).
                    let left = if item.is_null() {
                        child.push(None)
                    } else {
                        child.push(Some(item))
                    };
                    any |= left.is_some();
                    rem.push(left.unwrap_or(Value::Null));
                }
                offsets.push(*offsets.last().unwrap_or(&0) + items.len() as i32);
                nulls.append_non_null();
                return any.then_some(Value::Array(rem));
            }
            _ => false,
        };
        if taken {
            None
        } else {
            // The wrong JSON type (or an explicit null): the column gets null, the value stays.
            self.null();
            Some(v.clone())
        }
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
                    ..
                },
                DataType::Struct(fields),
            ) => {
                let arrays: Vec<ArrayRef> = members
                    .iter_mut()
                    .zip(fields.iter())
                    .map(|((_, c), f)| c.finish(f))
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
}

impl Decoder {
    pub fn new(resource_type: &str) -> Decoder {
        let schema = schema_for(resource_type);
        let root = Col::new(&Node::Struct(
            schema
                .members
                .iter()
                .map(|m| Member {
                    key: m.key.clone(),
                    node: clone_node(&m.node),
                })
                .collect(),
        ));
        Decoder {
            schema,
            root,
            remainder: Col::new(&Node::Prim(Kind::Str, "string".into())),
            rows: 0,
        }
    }

    pub fn schema(&self) -> &Arc<TypeSchema> {
        &self.schema
    }

    /// Rows waiting for [`Decoder::flush`].
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Appends one resource (one NDJSON line). A line that is not a JSON object is an error
    /// and appends nothing.
    pub fn push_line(&mut self, line: &[u8]) -> Result<(), ArrowError> {
        let v: Value = serde_json::from_slice(line)
            .map_err(|e| ArrowError::JsonError(format!("a resource line is not JSON: {e}")))?;
        self.push(&v)
    }

    /// Appends one resource.
    pub fn push(&mut self, resource: &Value) -> Result<(), ArrowError> {
        let Value::Object(map) = resource else {
            return Err(ArrowError::JsonError(
                "a resource is not a JSON object".into(),
            ));
        };
        match map.get("resourceType") {
            Some(Value::String(t)) if *t == self.schema.resource_type => {}
            other => {
                return Err(ArrowError::JsonError(format!(
                    "a resource of type {other:?} in the {} table",
                    self.schema.resource_type
                )))
            }
        }
        let left = self.root.push(Some(resource));
        // `resourceType` is the table's: not a remainder.
        let left = match left {
            Some(Value::Object(mut m)) => {
                m.remove("resourceType");
                (!m.is_empty()).then_some(Value::Object(m))
            }
            other => other,
        };
        let text = left.map(|l| Value::String(l.to_string()));
        self.remainder.push(text.as_ref());
        self.rows += 1;
        Ok(())
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
        self.root = Col::new(&Node::Struct(
            self.schema
                .members
                .iter()
                .map(|m| Member {
                    key: m.key.clone(),
                    node: clone_node(&m.node),
                })
                .collect(),
        ));
        let remainder = self
            .remainder
            .finish(&Field::new(REMAINDER, DataType::Utf8, true));
        self.remainder = Col::new(&Node::Prim(Kind::Str, "string".into()));
        let root = root
            .as_any()
            .downcast_ref::<StructArray>()
            .expect("a struct");
        let mut columns: Vec<ArrayRef> = root.columns().to_vec();
        columns.push(remainder);
        self.rows = 0;
        Some(RecordBatch::try_new(schema, columns).expect("columns match their schema"))
    }
}

fn clone_node(n: &Node) -> Node {
    match n {
        Node::Prim(k, t) => Node::Prim(*k, t.clone()),
        Node::Struct(ms) => Node::Struct(
            ms.iter()
                .map(|m| Member {
                    key: m.key.clone(),
                    node: clone_node(&m.node),
                })
                .collect(),
        ),
        Node::List(c) => Node::List(Box::new(clone_node(c))),
    }
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
        d.push_line(br#"{"resourceType":"Observation","valueQuantity":{"value":1.50}}"#)
            .unwrap();
        let b = d.flush().unwrap();
        assert_eq!(
            rebuild(&b, 0).to_string(),
            r#"{"resourceType":"Observation","valueQuantity":{"value":1.50}}"#
        );
        let e = d.push_line(br#"{"resourceType":"Patient"}"#).unwrap_err();
        assert!(e.to_string().contains("Observation table"), "{e}");
    }
}
