//! Deterministic synthetic FHIR R4 data, rendered on the fly.

use std::fmt::Write as _;

use time::format_description::BorrowedFormatItem;
use time::macros::{datetime, format_description};
use time::OffsetDateTime;

/// Supported resource types, in canonical output order. Indices `0..N_PATIENT_TYPES`
/// are patient-compartment types; the rest exist only at system level.
pub const TYPES: [&str; 7] = [
    "Patient",
    "Encounter",
    "Observation",
    "Condition",
    "MedicationRequest",
    "Organization",
    "Practitioner",
];
pub const N_PATIENT_TYPES: usize = 5;

pub const DAY_MS: i64 = 86_400_000;
/// 2024-01-01T00:00:00Z in epoch milliseconds.
pub const YEAR_START_MS: i64 = 1_704_067_200_000;

pub fn type_index(name: &str) -> Option<usize> {
    TYPES.iter().position(|t| *t == name)
}

pub fn is_patient_type(t: usize) -> bool {
    t < N_PATIENT_TYPES
}

/// Number of resources of type `t` for patient `i` (non-patient types ignore `i`).
pub fn count_for(t: usize, i: usize) -> usize {
    match t {
        0 => 1,
        1 => 1 + i % 3,
        2 => 2 + i % 5,
        3 => i % 2,
        4 => i % 3,
        5 => 3,
        6 => 5,
        _ => 0,
    }
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub fn hash(t: usize, i: usize, j: usize) -> u64 {
    mix(mix(mix(t as u64 + 1) ^ i as u64) ^ j as u64)
}

/// `meta.lastUpdated` of a resource, spread over 2024 (epoch ms).
pub fn last_updated_ms(t: usize, i: usize, j: usize) -> i64 {
    let h = hash(t, i, j);
    YEAR_START_MS + (h % 366) as i64 * DAY_MS + ((h >> 20) % DAY_MS as u64) as i64
}

/// The range [`instant`] writes: FHIR instants have four-digit years.
const MIN_MS: i64 = datetime!(0000-01-01 0:00 UTC).unix_timestamp() * 1000;
const MAX_MS: i64 = datetime!(9999-12-31 23:59:59 UTC).unix_timestamp() * 1000 + 999;

const INSTANT: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
const DATE: &[BorrowedFormatItem<'_>] = format_description!("[year]-[month]-[day]");

/// `ms` since the Unix epoch in UTC, clamped to years 0000..=9999.
fn utc(ms: i64) -> OffsetDateTime {
    let nanos = i128::from(ms.clamp(MIN_MS, MAX_MS)) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// `YYYY-MM-DDThh:mm:ss.sssZ` of a UTC time (years 0000..=9999).
pub fn format_instant(t: OffsetDateTime) -> String {
    t.format(INSTANT).unwrap_or_default()
}

/// Appends `YYYY-MM-DDThh:mm:ss.sssZ` (years outside 0000..=9999 are clamped to it).
pub fn push_instant(out: &mut String, ms: i64) {
    out.push_str(&instant(ms));
}

/// `YYYY-MM-DDThh:mm:ss.sssZ` (years outside 0000..=9999 are clamped to it).
pub fn instant(ms: i64) -> String {
    format_instant(utc(ms))
}

fn date(ms: i64) -> String {
    utc(ms).date().format(DATE).unwrap_or_default()
}

/// Appends `s` as a JSON string literal.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn js(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    push_json_str(&mut o, s);
    o
}

/// A top-level element value: a JSON string, or raw JSON (object/array/bool/number).
pub enum Val {
    Str(String),
    Raw(String),
}

pub struct Record {
    pub t: usize,
    pub id: String,
    pub last_updated: i64,
    pub fields: Vec<(&'static str, Val)>,
}

impl Record {
    /// Scalar value of a top-level element as text (for `_typeFilter`).
    pub fn scalar(&self, name: &str) -> Option<&str> {
        match name {
            "resourceType" => return Some(TYPES[self.t]),
            "id" => return Some(&self.id),
            _ => {}
        }
        self.fields
            .iter()
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| match v {
                Val::Str(s) => Some(s.as_str()),
                Val::Raw(r) if !r.starts_with(['{', '[']) => Some(r.as_str()),
                Val::Raw(_) => None,
            })
    }
}

const SUBSETTED: &str = ",\"tag\":[{\"system\":\"http://terminology.hl7.org/CodeSystem/v3-ObservationValue\",\"code\":\"SUBSETTED\",\"display\":\"Resource encoded in summary mode\"}]";

/// Appends the resource JSON (no newline). `elements` keeps only those top-level
/// elements (plus resourceType, id, meta) and tags the resource SUBSETTED.
pub fn render(rec: &Record, elements: Option<&[String]>, out: &mut String) {
    out.push_str("{\"resourceType\":");
    push_json_str(out, TYPES[rec.t]);
    out.push_str(",\"id\":");
    push_json_str(out, &rec.id);
    out.push_str(",\"meta\":{\"versionId\":\"1\",\"lastUpdated\":\"");
    push_instant(out, rec.last_updated);
    out.push('"');
    if elements.is_some() {
        out.push_str(SUBSETTED);
    }
    out.push('}');
    for (k, v) in &rec.fields {
        if let Some(el) = elements {
            if !el.iter().any(|e| e == k) {
                continue;
            }
        }
        out.push(',');
        push_json_str(out, k);
        out.push(':');
        match v {
            Val::Str(s) => push_json_str(out, s),
            Val::Raw(r) => out.push_str(r),
        }
    }
    out.push('}');
}

// (given, family, gender, display)
const PEOPLE: [(&str, &str, &str, &str); 10] = [
    ("José", "García", "male", "José García"),
    ("Zoë", "Müller", "female", "Zoë Müller"),
    ("芳", "王", "female", "王芳"),
    ("John", "Smith", "male", "John Smith"),
    ("Siobhán", "O'Brien", "female", "Siobhán O'Brien"),
    ("Văn An", "Nguyễn", "male", "Nguyễn Văn An"),
    ("Łukasz", "Wójcik", "male", "Łukasz Wójcik"),
    ("Amélie", "Lefèvre", "female", "Amélie Lefèvre"),
    ("Søren", "Kierkegård", "male", "Søren Kierkegård"),
    ("Aarav", "Sharma", "male", "Aarav Sharma"),
];
// (city, postal code, country, language)
const CITIES: [(&str, &str, &str, &str); 6] = [
    ("Ærøskøbing", "5970", "DK", "da"),
    ("São Paulo", "01310-100", "BR", "pt"),
    ("Zürich", "8001", "CH", "de"),
    ("Boston", "02115", "US", "en"),
    ("北京市", "100000", "CN", "zh"),
    ("Kraków", "30-001", "PL", "pl"),
];
// (LOINC, display, unit, base, spread)
const VITALS: [(&str, &str, &str, u64, u64); 5] = [
    ("8867-4", "Heart rate", "/min", 55, 50),
    ("8310-5", "Body temperature", "Cel", 36, 3),
    ("29463-7", "Body weight", "kg", 45, 60),
    ("8302-2", "Body height", "cm", 150, 45),
    ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", 70, 90),
];
const CONDITIONS: [(&str, &str, &str); 4] = [
    ("44054006", "Diabetes mellitus type 2", "Type 2-diabetes"),
    (
        "38341003",
        "Hypertensive disorder",
        "Hypertonie — Bluthochdruck",
    ),
    ("195967001", "Asthma", "Astma"),
    ("35489007", "Depressive disorder", "Trouble dépressif"),
];
const MEDS: [(&str, &str, &str); 4] = [
    (
        "860975",
        "Metformin hydrochloride 500 MG Oral Tablet",
        "1 Tablette täglich zum Frühstück",
    ),
    ("197361", "Amlodipine 5 MG Oral Tablet", "1 tablet daily"),
    (
        "745679",
        "Albuterol 0.09 MG/ACTUAT Metered Dose Inhaler",
        "2 puffs as needed — max 8/día",
    ),
    (
        "312938",
        "Sertraline 50 MG Oral Tablet",
        "1 tablet every morning",
    ),
];
const ORGS: [(&str, &str, &str); 3] = [
    ("Ærøskøbing Sundhedscenter", "Ærøskøbing", "DK"),
    ("Klinikum München-Süd", "München", "DE"),
    ("Hospital das Clínicas de São Paulo", "São Paulo", "BR"),
];
const PRACTITIONERS: [(&str, &str, &str); 5] = [
    ("Ingrid", "Bjørnstad", "female"),
    ("Karl", "Straße", "male"),
    ("美玲", "陈", "female"),
    ("François", "Dubois", "male"),
    ("Emily", "Carter", "female"),
];

fn s(v: impl Into<String>) -> Val {
    Val::Str(v.into())
}
fn r(v: impl Into<String>) -> Val {
    Val::Raw(v.into())
}
fn reference(target: &str) -> Val {
    r(format!("{{\"reference\":{}}}", js(target)))
}

/// Resource id of record `(t, i, j)`.
pub fn resource_id(t: usize, i: usize, j: usize) -> String {
    match t {
        0 => format!("p{i}"),
        1 => format!("enc-{i}-{j}"),
        2 => format!("obs-{i}-{j}"),
        3 => format!("cond-{i}-{j}"),
        4 => format!("medreq-{i}-{j}"),
        5 => format!("org-{j}"),
        _ => format!("pract-{j}"),
    }
}

/// Builds record `j` of type `t` for patient `i` (`i` ignored for non-patient types).
pub fn build(t: usize, i: usize, j: usize) -> Record {
    let h = hash(t, i, j);
    let last_updated = last_updated_ms(t, i, j);
    // Clinical timestamps a little before lastUpdated.
    let when = last_updated - ((h >> 8) % (30 * DAY_MS as u64)) as i64;
    let pid = format!("Patient/p{i}");
    let fields = match t {
        0 => {
            let (given, family, gender, display) = PEOPLE[i % PEOPLE.len()];
            let (city, zip, country, lang) = CITIES[(i / 3) % CITIES.len()];
            let birth = YEAR_START_MS - (((h >> 12) % 32_000) as i64 + 365) * DAY_MS;
            vec![
                ("text", r(format!(
                    "{{\"status\":\"generated\",\"div\":{}}}",
                    js(&format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{display}</div>"))
                ))),
                ("identifier", r(format!(
                    "[{{\"use\":\"usual\",\"type\":{{\"coding\":[{{\"system\":\"http://terminology.hl7.org/CodeSystem/v2-0203\",\"code\":\"MR\"}}]}},\"system\":\"urn:oid:1.2.36.146.595.217.0.1\",\"value\":\"MRN-{i:08}\"}}]"
                ))),
                ("active", r("true")),
                ("name", r(format!(
                    "[{{\"use\":\"official\",\"text\":{},\"family\":{},\"given\":[{}]}}]",
                    js(display), js(family), js(given)
                ))),
                ("telecom", r(format!(
                    "[{{\"system\":\"phone\",\"value\":\"+1-555-{:04}\",\"use\":\"home\"}},{{\"system\":\"email\",\"value\":\"patient{i}@example.org\"}}]",
                    h % 10_000
                ))),
                ("gender", s(gender)),
                ("birthDate", s(date(birth))),
                ("address", r(format!(
                    "[{{\"use\":\"home\",\"line\":[\"{} Main Street\"],\"city\":{},\"postalCode\":{},\"country\":{}}}]",
                    1 + h % 200, js(city), js(zip), js(country)
                ))),
                ("communication", r(format!(
                    "[{{\"language\":{{\"coding\":[{{\"system\":\"urn:ietf:bcp:47\",\"code\":{}}}]}},\"preferred\":true}}]",
                    js(lang)
                ))),
            ]
        }
        1 => vec![
            ("status", s("finished")),
            ("class", r("{\"system\":\"http://terminology.hl7.org/CodeSystem/v3-ActCode\",\"code\":\"AMB\",\"display\":\"ambulatory\"}")),
            ("type", r("[{\"coding\":[{\"system\":\"http://snomed.info/sct\",\"code\":\"185349003\",\"display\":\"Encounter for check up\"}],\"text\":\"Kontrolbesøg\"}]")),
            ("subject", reference(&pid)),
            ("participant", r(format!(
                "[{{\"individual\":{{\"reference\":\"Practitioner/pract-{}\"}}}}]",
                (i + j) % PRACTITIONERS.len()
            ))),
            ("period", r(format!(
                "{{\"start\":\"{}\",\"end\":\"{}\"}}",
                instant(when),
                instant(when + 1_800_000)
            ))),
            ("serviceProvider", r(format!(
                "{{\"reference\":\"Organization/org-{}\"}}",
                i % ORGS.len()
            ))),
        ],
        2 => {
            let (code, display, unit, base, spread) = VITALS[(i + j) % VITALS.len()];
            let v = base * 10 + (h >> 24) % (spread * 10);
            let mut f = vec![
                ("status", s(if j % 2 == 0 { "final" } else { "amended" })),
                ("category", r("[{\"coding\":[{\"system\":\"http://terminology.hl7.org/CodeSystem/observation-category\",\"code\":\"vital-signs\",\"display\":\"Vital Signs\"}]}]")),
                ("code", r(format!(
                    "{{\"coding\":[{{\"system\":\"http://loinc.org\",\"code\":{},\"display\":{}}}],\"text\":{}}}",
                    js(code), js(display), js(display)
                ))),
                ("subject", reference(&pid)),
                ("encounter", r(format!(
                    "{{\"reference\":\"Encounter/enc-{i}-{}\"}}",
                    j % count_for(1, i)
                ))),
                ("effectiveDateTime", s(instant(when))),
                ("issued", s(instant(when + 600_000))),
                ("valueQuantity", r(format!(
                    "{{\"value\":{}.{},\"unit\":{},\"system\":\"http://unitsofmeasure.org\",\"code\":{}}}",
                    v / 10, v % 10, js(unit), js(unit)
                ))),
            ];
            if h % 3 == 0 {
                f.push(("note", r("[{\"text\":\"Måling udført i hvile — mesure au repos\"}]")));
            }
            f
        }
        3 => {
            let (code, display, text) = CONDITIONS[(i + j) % CONDITIONS.len()];
            let active = (i + j) % 3 != 0;
            vec![
                ("clinicalStatus", r(format!(
                    "{{\"coding\":[{{\"system\":\"http://terminology.hl7.org/CodeSystem/condition-clinical\",\"code\":\"{}\"}}]}}",
                    if active { "active" } else { "resolved" }
                ))),
                ("verificationStatus", r("{\"coding\":[{\"system\":\"http://terminology.hl7.org/CodeSystem/condition-ver-status\",\"code\":\"confirmed\"}]}")),
                ("category", r("[{\"coding\":[{\"system\":\"http://terminology.hl7.org/CodeSystem/condition-category\",\"code\":\"problem-list-item\",\"display\":\"Problem List Item\"}]}]")),
                ("code", r(format!(
                    "{{\"coding\":[{{\"system\":\"http://snomed.info/sct\",\"code\":{},\"display\":{}}}],\"text\":{}}}",
                    js(code), js(display), js(text)
                ))),
                ("subject", reference(&pid)),
                ("onsetDateTime", s(instant(when - 400 * DAY_MS))),
                ("recordedDate", s(instant(when))),
            ]
        }
        4 => {
            let (code, display, dosage) = MEDS[(i + j) % MEDS.len()];
            vec![
                ("status", s(if (i + j) % 2 == 0 { "active" } else { "completed" })),
                ("intent", s("order")),
                ("medicationCodeableConcept", r(format!(
                    "{{\"coding\":[{{\"system\":\"http://www.nlm.nih.gov/research/umls/rxnorm\",\"code\":{},\"display\":{}}}],\"text\":{}}}",
                    js(code), js(display), js(display)
                ))),
                ("subject", reference(&pid)),
                ("authoredOn", s(instant(when))),
                ("requester", r(format!(
                    "{{\"reference\":\"Practitioner/pract-{}\"}}",
                    (i + j) % PRACTITIONERS.len()
                ))),
                ("dosageInstruction", r(format!(
                    "[{{\"text\":{},\"timing\":{{\"repeat\":{{\"frequency\":1,\"period\":1,\"periodUnit\":\"d\"}}}}}}]",
                    js(dosage)
                ))),
            ]
        }
        5 => {
            let (name, city, country) = ORGS[j % ORGS.len()];
            vec![
                ("identifier", r(format!(
                    "[{{\"system\":\"urn:oid:2.16.840.1.113883.4.7\",\"value\":\"ORG-{j:04}\"}}]"
                ))),
                ("active", r("true")),
                ("type", r("[{\"coding\":[{\"system\":\"http://terminology.hl7.org/CodeSystem/organization-type\",\"code\":\"prov\",\"display\":\"Healthcare Provider\"}]}]")),
                ("name", s(name)),
                ("telecom", r(format!(
                    "[{{\"system\":\"phone\",\"value\":\"+45-62-{:06}\"}}]",
                    h % 1_000_000
                ))),
                ("address", r(format!(
                    "[{{\"city\":{},\"country\":{}}}]",
                    js(city), js(country)
                ))),
            ]
        }
        _ => {
            let (given, family, gender) = PRACTITIONERS[j % PRACTITIONERS.len()];
            vec![
                ("identifier", r(format!(
                    "[{{\"system\":\"http://hl7.org/fhir/sid/us-npi\",\"value\":\"{}\"}}]",
                    1_000_000_000 + h % 1_000_000_000
                ))),
                ("active", r("true")),
                ("name", r(format!(
                    "[{{\"family\":{},\"given\":[{}],\"prefix\":[\"Dr.\"]}}]",
                    js(family), js(given)
                ))),
                ("gender", s(gender)),
                ("qualification", r("[{\"code\":{\"coding\":[{\"system\":\"http://terminology.hl7.org/CodeSystem/v2-0360\",\"code\":\"MD\",\"display\":\"Doctor of Medicine\"}]}}]")),
            ]
        }
    };
    Record {
        t,
        id: resource_id(t, i, j),
        last_updated,
        fields,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_roundtrip() {
        assert_eq!(instant(YEAR_START_MS), "2024-01-01T00:00:00.000Z");
        assert_eq!(
            utc(YEAR_START_MS).date(),
            time::macros::date!(2024 - 01 - 01)
        );
        assert_eq!(instant(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(instant(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(instant(i64::MIN), "0000-01-01T00:00:00.000Z");
        assert_eq!(date(YEAR_START_MS - 1), "2023-12-31");
    }

    #[test]
    fn records_are_valid_json_of_sane_size() {
        for (t, name) in TYPES.iter().enumerate() {
            for i in 0..20 {
                for j in 0..count_for(t, i) {
                    let rec = build(t, i, j);
                    let mut out = String::new();
                    render(&rec, None, &mut out);
                    let v: serde_json::Value = serde_json::from_str(&out).expect("valid json");
                    assert_eq!(v["resourceType"], *name);
                    assert!(
                        out.len() >= 300 && out.len() <= 2048,
                        "{} bytes: {out}",
                        out.len()
                    );
                    let lu = v["meta"]["lastUpdated"].as_str().unwrap_or_default();
                    assert!(lu.starts_with("2024-"), "{lu}");
                }
            }
        }
    }
}
