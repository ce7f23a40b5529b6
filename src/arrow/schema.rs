//! The Arrow schema of a FHIR R4 resource type, derived from the specification's
//! StructureDefinitions (the digest `fhir-r4.json`, made by `tools/fhir-defs/gen.py` from the
//! FHIR R4 4.0.1 snapshots; the specification's content is CC0).
//!
//! The rules, so that a resource type has one schema for every batch and every export:
//! - elements in the specification's order, named by their JSON keys; a choice element
//!   (`value[x]`) becomes one field per allowed type (`valueQuantity`, `valueString`, ...);
//! - an element that repeats (`max` other than 1) is a list; a complex datatype or a backbone
//!   element is a struct of its elements; every field is nullable;
//! - primitives: `boolean` as Boolean; `integer`, `positiveInt`, `unsignedInt` as Int32 (FHIR
//!   integers are 32-bit); `decimal` as Utf8 holding the JSON number's exact text (no binary
//!   or fixed-scale type keeps every FHIR decimal: precision is significant, `1.50` is not
//!   `1.5`); dates, dateTimes, instants and times as Utf8 in their FHIR form (they may be
//!   partial, `2024` or `2024-03`, and keep their own time zone: a timestamp column would
//!   invent precision and lose the offset); every other primitive as Utf8;
//! - bounded depth, like Pathling's encoders: a datatype is not nested inside itself
//!   (`Identifier.assigner.identifier` is left out), a `contentReference` backbone
//!   (`Questionnaire.item.item`) nests at most [`MAX_REF_DEPTH`] times; `extension` and
//!   `modifierExtension` are columns at the resource's top level only: `extension` as a list
//!   of Extension structs whose `value[x]` has the [`INNER_OPEN_TYPES`] and [`TOP_OPEN_TYPES`]
//!   and whose own `extension` nests [`MAX_EXTENSION_DEPTH`] deep with the
//!   [`INNER_OPEN_TYPES`] only; `modifierExtension` as a
//!   list of Extension structs with the [`INNER_OPEN_TYPES`] and no nested extensions; the `id`
//!   of an element (not the resource's) has no column; `contained` resources and
//!   `Bundle.entry.resource` (type `Resource`) are not columns. Every leaf column costs the
//!   Parquet writer work for every row, null or not: these rules cut an Observation's leaf
//!   columns from 927 to 559, leaving out what bulk data rarely holds (the remainder keeps it);
//! - whatever a column cannot hold goes to the `_remainder` column (see [`super::decode`]).

use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

/// The column of what the other columns do not hold: JSON text, null when nothing is left.
pub const REMAINDER: &str = "_remainder";
/// Field metadata naming a primitive column's FHIR type (`decimal`, `date`, `code`, ...).
pub const FHIR_TYPE: &str = "fhir.type";
/// How many times a `contentReference` backbone nests inside itself.
pub const MAX_REF_DEPTH: usize = 3;
/// How deep extensions nest inside top-level extensions (US Core race: 2).
pub const MAX_EXTENSION_DEPTH: usize = 2;
/// The types of `value[x]` that get columns in every Extension struct: in a top-level
/// `extension`, in an extension nested in another, and in a `modifierExtension` (which has no
/// nested extensions as columns): the primitive open types and the coded ones.
pub const INNER_OPEN_TYPES: [&str; 10] = [
    "boolean",
    "code",
    "date",
    "dateTime",
    "decimal",
    "integer",
    "string",
    "uri",
    "Coding",
    "CodeableConcept",
];
/// The types of `value[x]` that get columns in a top-level `extension` besides the
/// [`INNER_OPEN_TYPES`] (together: Pathling's standard open types, plus `uri`, `Quantity` and
/// `Period`). Every other type goes to the remainder.
pub const TOP_OPEN_TYPES: [&str; 5] = ["Address", "Identifier", "Reference", "Quantity", "Period"];

static DIGEST_JSON: &str = include_str!("fhir-r4.json");

#[derive(Deserialize)]
struct Digest {
    #[serde(rename = "fhirVersion")]
    fhir_version: String,
    primitives: HashMap<String, String>,
    types: HashMap<String, Vec<Element>>,
    aliases: HashMap<String, String>,
    resources: HashMap<String, Vec<Element>>,
}

#[derive(Deserialize)]
struct Element {
    name: String,
    #[serde(default)]
    types: Vec<String>,
    max: String,
    #[serde(default)]
    children: Vec<Element>,
    #[serde(rename = "ref")]
    reference: Option<String>,
}

static DIGEST: Lazy<Digest> =
    Lazy::new(|| serde_json::from_str(DIGEST_JSON).expect("the bundled FHIR R4 digest parses"));

/// The JSON kind of a primitive column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Bool,
    Int,
    /// A JSON number kept as its text.
    Decimal,
    Str,
}

/// A column's shape, mirroring its Arrow type.
#[derive(Debug)]
pub(crate) enum Node {
    Prim(Kind, String),
    Struct(Vec<Member>),
    List(Box<Node>),
}

#[derive(Debug)]
pub(crate) struct Member {
    /// The JSON key (`valueQuantity` for a choice).
    pub key: String,
    pub node: Node,
}

/// The schema of one resource type: its Arrow schema and the column tree the decoder fills.
#[derive(Debug)]
pub struct TypeSchema {
    pub(crate) resource_type: String,
    pub(crate) members: Vec<Member>,
    pub(crate) arrow: SchemaRef,
}

impl TypeSchema {
    /// The Arrow schema: one field per element, then [`REMAINDER`].
    pub fn arrow_schema(&self) -> SchemaRef {
        Arc::clone(&self.arrow)
    }

    pub fn resource_type(&self) -> &str {
        &self.resource_type
    }
}

static CACHE: Lazy<Mutex<HashMap<String, Arc<TypeSchema>>>> = Lazy::new(Default::default);

/// The schema of `resource_type` (built once per process). A type FHIR R4 does not define has
/// only `id` and the remainder.
pub fn schema_for(resource_type: &str) -> Arc<TypeSchema> {
    if let Some(s) = CACHE.lock().get(resource_type) {
        return Arc::clone(s);
    }
    let built = Arc::new(build(resource_type));
    CACHE
        .lock()
        .entry(resource_type.to_owned())
        .or_insert(built)
        .clone()
}

/// Whether FHIR R4 defines `resource_type`.
pub fn is_r4_resource(resource_type: &str) -> bool {
    DIGEST.resources.contains_key(resource_type)
        && !matches!(resource_type, "Resource" | "DomainResource")
}

struct Ctx<'a> {
    /// Complex datatypes on the path from the resource (no datatype inside itself).
    types: Vec<&'a str>,
    /// `contentReference` targets on the path, with repeats.
    refs: Vec<&'a str>,
    /// Extensions on the path.
    extension_depth: usize,
    /// Inside the resource's `modifierExtension`.
    modifier: bool,
    /// Backbone children by full path (`Questionnaire.item`), for `ref`.
    backbones: HashMap<String, &'a [Element]>,
}

fn build(resource_type: &str) -> TypeSchema {
    let d = &*DIGEST;
    let mut members = Vec::new();
    let elements = d
        .resources
        .get(resource_type)
        .filter(|_| is_r4_resource(resource_type));
    match elements {
        Some(elements) => {
            let mut backbones = HashMap::new();
            index_backbones(resource_type, elements, &mut backbones);
            let mut ctx = Ctx {
                types: Vec::new(),
                refs: Vec::new(),
                extension_depth: 0,
                modifier: false,
                backbones,
            };
            members = elements_to_members(elements, &mut ctx, true);
        }
        None => members.push(Member {
            key: "id".into(),
            node: Node::Prim(Kind::Str, "id".into()),
        }),
    }
    let mut fields: Vec<Field> = members.iter().map(member_field).collect();
    fields.push(Field::new(REMAINDER, DataType::Utf8, true));
    let metadata = HashMap::from([
        ("fhir.version".to_owned(), d.fhir_version.clone()),
        ("fhir.resourceType".to_owned(), resource_type.to_owned()),
    ]);
    TypeSchema {
        resource_type: resource_type.to_owned(),
        members,
        arrow: Arc::new(Schema::new_with_metadata(fields, metadata)),
    }
}

fn index_backbones<'a>(
    path: &str,
    elements: &'a [Element],
    out: &mut HashMap<String, &'a [Element]>,
) {
    for e in elements {
        if !e.children.is_empty() {
            let p = format!("{path}.{}", e.name);
            index_backbones(&p, &e.children, out);
            out.insert(p, &e.children);
        }
    }
}

fn elements_to_members<'a>(elements: &'a [Element], ctx: &mut Ctx<'a>, top: bool) -> Vec<Member> {
    let mut out = Vec::new();
    for e in elements {
        let is_extension = e.name == "extension" || e.name == "modifierExtension";
        // Extensions: at the top level, and as the nested extensions of an extension.
        let nested = ctx.types.last() == Some(&"Extension")
            && ctx.extension_depth < MAX_EXTENSION_DEPTH
            && !ctx.modifier;
        if is_extension && !(top || nested) {
            continue;
        }
        // An element's `id` (an anchor inside the resource, rare in bulk data): remainder.
        if e.name == "id" && !top {
            continue;
        }
        let repeated = e.max != "1";
        let wrap = |node: Node| {
            if repeated {
                Node::List(Box::new(node))
            } else {
                node
            }
        };
        if let Some(target) = &e.reference {
            let depth = ctx.refs.iter().filter(|r| **r == target.as_str()).count();
            let Some(children) = ctx.backbones.get(target.as_str()).copied() else {
                continue;
            };
            if depth >= MAX_REF_DEPTH {
                continue;
            }
            ctx.refs.push(target);
            let members = elements_to_members(children, ctx, false);
            ctx.refs.pop();
            if !members.is_empty() {
                out.push(Member {
                    key: e.name.clone(),
                    node: wrap(Node::Struct(members)),
                });
            }
            continue;
        }
        if !e.children.is_empty() {
            let members = elements_to_members(&e.children, ctx, false);
            if !members.is_empty() {
                out.push(Member {
                    key: e.name.clone(),
                    node: wrap(Node::Struct(members)),
                });
            }
            continue;
        }
        if let Some(base) = e.name.strip_suffix("[x]") {
            let in_extension = ctx.types.last() == Some(&"Extension");
            let top_extension = in_extension && ctx.extension_depth == 1 && !ctx.modifier;
            for t in &e.types {
                let t_name = t.as_str();
                let open = INNER_OPEN_TYPES.contains(&t_name)
                    || (top_extension && TOP_OPEN_TYPES.contains(&t_name));
                if in_extension && !open {
                    continue;
                }
                if let Some(node) = type_node(t, ctx) {
                    out.push(Member {
                        key: format!("{base}{}", capitalize(t)),
                        node: wrap(node),
                    });
                }
            }
            continue;
        }
        let modifier = top && e.name == "modifierExtension";
        ctx.modifier |= modifier;
        let node = e.types.first().and_then(|t| type_node(t, ctx));
        ctx.modifier &= !modifier;
        if let Some(node) = node {
            out.push(Member {
                key: e.name.clone(),
                node: wrap(node),
            });
        }
    }
    out
}

fn type_node<'a>(t: &'a str, ctx: &mut Ctx<'a>) -> Option<Node> {
    let d = &*DIGEST;
    let t: &'a str = d.aliases.get(t).map(String::as_str).unwrap_or(t);
    if let Some(kind) = d.primitives.get(t) {
        let kind = match kind.as_str() {
            "boolean" => Kind::Bool,
            "integer" => Kind::Int,
            "decimal" => Kind::Decimal,
            _ => Kind::Str,
        };
        return Some(Node::Prim(kind, t.to_owned()));
    }
    let elements = d.types.get(t)?; // `Resource` and unknown codes: no column
    if ctx.types.contains(&t) && t != "Extension" {
        return None;
    }
    let extension = t == "Extension";
    if extension {
        ctx.extension_depth += 1;
    }
    ctx.types.push(t);
    let members = elements_to_members(elements, ctx, false);
    ctx.types.pop();
    if extension {
        ctx.extension_depth -= 1;
    }
    (!members.is_empty()).then_some(Node::Struct(members))
}

fn capitalize(t: &str) -> String {
    let mut c = t.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn member_field(m: &Member) -> Field {
    node_field(&m.key, &m.node)
}

pub(crate) fn node_field(name: &str, node: &Node) -> Field {
    match node {
        Node::Prim(kind, fhir) => Field::new(
            name,
            match kind {
                Kind::Bool => DataType::Boolean,
                Kind::Int => DataType::Int32,
                Kind::Decimal | Kind::Str => DataType::Utf8,
            },
            true,
        )
        .with_metadata(HashMap::from([(FHIR_TYPE.to_owned(), fhir.clone())])),
        Node::Struct(members) => Field::new(
            name,
            DataType::Struct(Fields::from(
                members.iter().map(member_field).collect::<Vec<_>>(),
            )),
            true,
        ),
        Node::List(child) => Field::new(
            name,
            DataType::List(Arc::new(node_field("item", child))),
            true,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field<'a>(s: &'a Schema, path: &[&str]) -> Option<&'a Field> {
        let mut f = s.field_with_name(path[0]).ok()?;
        for p in &path[1..] {
            let dt = match f.data_type() {
                DataType::List(item) => item.data_type(),
                other => other,
            };
            let DataType::Struct(fields) = dt else {
                return None;
            };
            f = fields.iter().find(|x| x.name() == p)?;
        }
        Some(f)
    }

    #[test]
    fn patient_and_observation_schemas() {
        let p = schema_for("Patient").arrow_schema();
        assert_eq!(p.field(0).name(), "id");
        assert_eq!(p.fields().last().unwrap().name(), REMAINDER);
        assert_eq!(
            field(&p, &["birthDate"]).unwrap().data_type(),
            &DataType::Utf8
        );
        assert_eq!(
            field(&p, &["active"]).unwrap().data_type(),
            &DataType::Boolean
        );
        assert!(field(&p, &["deceasedBoolean"]).is_some());
        assert!(field(&p, &["deceasedDateTime"]).is_some());
        assert!(matches!(
            field(&p, &["name"]).unwrap().data_type(),
            DataType::List(_)
        ));
        assert!(field(&p, &["name", "given"]).is_some());
        assert!(field(&p, &["contact", "name", "family"]).is_some());
        assert!(field(&p, &["extension", "url"]).is_some());
        assert!(field(&p, &["extension", "valueCoding", "code"]).is_some());
        assert!(field(&p, &["extension", "extension", "valueString"]).is_some());
        // Bounded: no extensions below the top level, no Identifier inside its Reference.
        assert!(field(&p, &["name", "extension"]).is_none());
        assert!(field(&p, &["identifier", "assigner", "display"]).is_some());
        assert!(field(&p, &["identifier", "assigner", "identifier"]).is_none());
        assert!(field(&p, &["contained"]).is_none());
        let o = schema_for("Observation").arrow_schema();
        let vq = field(&o, &["valueQuantity", "value"]).unwrap();
        assert_eq!(
            vq.metadata().get(FHIR_TYPE).map(String::as_str),
            Some("decimal")
        );
        assert_eq!(
            field(&o, &["valueInteger"]).unwrap().data_type(),
            &DataType::Int32
        );
        assert!(field(
            &o,
            &["component", "valueCodeableConcept", "coding", "system"]
        )
        .is_some());
        // The same schema every time.
        assert!(Arc::ptr_eq(
            &schema_for("Observation"),
            &schema_for("Observation")
        ));
        let q = schema_for("Questionnaire").arrow_schema();
        assert!(field(&q, &["item", "item", "item", "linkId"]).is_some());
        assert!(field(&q, &["item", "item", "item", "item", "item"]).is_none());
    }

    #[test]
    fn every_r4_resource_has_a_schema_of_bounded_size() {
        fn leaves(dt: &DataType) -> usize {
            match dt {
                DataType::Struct(f) => f.iter().map(|f| leaves(f.data_type())).sum(),
                DataType::List(f) => leaves(f.data_type()),
                _ => 1,
            }
        }
        let mut most = (0, String::new());
        for t in DIGEST.resources.keys().filter(|t| is_r4_resource(t)) {
            let s = schema_for(t).arrow_schema();
            let n: usize = s.fields().iter().map(|f| leaves(f.data_type())).sum();
            if n > most.0 {
                most = (n, t.clone());
            }
        }
        assert!(most.0 < 20_000, "{most:?}");
        let unknown = schema_for("NotAFhirType").arrow_schema();
        assert_eq!(unknown.fields().len(), 2);
    }
}
