//! Deterministic synthetic FHIR R4 data, rendered on the fly.
//!
//! Resources are realistic and deeply nested, valid against FHIR R4 (4.0.1): US Core
//! extensions (race, ethnicity, birth sex), extensions inside elements (`Patient.address`
//! geolocation), a rare `modifierExtension` (AllergyIntolerance substance exposure risk),
//! primitive extensions (`_birthDate`, `name[0]._given` aligned with `given` by position),
//! `contained` resources referenced as `#id`, many choice types (`value[x]`, `effective[x]`,
//! `onset[x]`, `deceased[x]`, `multipleBirth[x]`, `performed[x]`, `occurrence[x]`, ...),
//! decimals whose text matters (`1.50`, `0.0`, `98.60`, `3.14159265358979`, written as
//! they are into the JSON), `meta.profile` / `meta.security` / `meta.tag`, typed identifiers
//! with assigners, XHTML narratives and attachments (by URL, pointing at a [`document`] the
//! server serves, or inline base64 with the SHA-1 of the bytes). Which resource carries what
//! is decided by hashes of (type, patient, record), so every export of the same records is
//! byte-identical; documents are generated from a hash of their id ([`doc_class`]).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use base64::Engine as _;
use time::format_description::BorrowedFormatItem;
use time::macros::{datetime, format_description};
use time::OffsetDateTime;

/// Supported resource types, in canonical output order. Indices `0..N_PATIENT_TYPES`
/// are patient-compartment types; the rest exist only at system level.
pub const TYPES: [&str; 12] = [
    "Patient",
    "Encounter",
    "Observation",
    "Condition",
    "MedicationRequest",
    "DiagnosticReport",
    "DocumentReference",
    "Procedure",
    "Immunization",
    "AllergyIntolerance",
    "Organization",
    "Practitioner",
];
pub const N_PATIENT_TYPES: usize = 10;

const PATIENT: usize = 0;
const ENCOUNTER: usize = 1;
const OBSERVATION: usize = 2;
const CONDITION: usize = 3;
const MEDICATION_REQUEST: usize = 4;
const DIAGNOSTIC_REPORT: usize = 5;
const DOCUMENT_REFERENCE: usize = 6;
const PROCEDURE: usize = 7;
const IMMUNIZATION: usize = 8;
const ALLERGY_INTOLERANCE: usize = 9;
const ORGANIZATION: usize = 10;
const PRACTITIONER: usize = 11;

/// The hash seed of each type. The first seven types keep the seeds of the positions they had
/// before the others were added, so that their `lastUpdated` (and thus `_since` selections)
/// stayed the same.
const SEED: [u64; 12] = [0, 1, 2, 3, 4, 7, 8, 9, 10, 11, 5, 6];

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
        PATIENT => 1,
        ENCOUNTER => 1 + i % 3,
        OBSERVATION => 2 + i % 5,
        CONDITION => i % 2,
        MEDICATION_REQUEST => i % 3,
        DIAGNOSTIC_REPORT => (i + 1) % 3,
        DOCUMENT_REFERENCE => (i / 2) % 2,
        PROCEDURE => (i % 5) / 2,
        IMMUNIZATION => 1 + i % 2,
        ALLERGY_INTOLERANCE => [0, 1, 0, 2][i % 4],
        ORGANIZATION => 3,
        PRACTITIONER => 5,
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
    let seed = SEED.get(t).copied().unwrap_or(t as u64);
    mix(mix(mix(seed + 1) ^ i as u64) ^ j as u64)
}

/// A second hash of a record, independent of [`hash`]: it picks the optional content, so
/// that the values [`hash`] chose before that content existed stayed the same.
fn hash2(t: usize, i: usize, j: usize) -> u64 {
    mix(hash(t, i, j) ^ 0x5851_F42D_4C95_7F2D)
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

/// `s` as the inside of a JSON string literal (escaped, without the quotes).
pub fn json_inner(s: &str) -> String {
    let q = js(s);
    q[1..q.len() - 1].to_string()
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

/// What a resource's `meta` holds besides `versionId` and `lastUpdated`.
#[derive(Default)]
pub struct Meta {
    pub profile: Vec<&'static str>,
    /// Codings (raw JSON objects).
    pub security: Vec<String>,
    /// Codings (raw JSON objects); `_elements` puts SUBSETTED first.
    pub tag: Vec<String>,
}

pub struct Record {
    pub t: usize,
    pub id: String,
    pub last_updated: i64,
    pub meta: Meta,
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

const SUBSETTED: &str = "{\"system\":\"http://terminology.hl7.org/CodeSystem/v3-ObservationValue\",\"code\":\"SUBSETTED\",\"display\":\"Resource encoded in summary mode\"}";

fn push_list<S: AsRef<str>>(out: &mut String, key: &str, items: &[S], quote: bool) {
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":[");
    for (n, it) in items.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        if quote {
            push_json_str(out, it.as_ref());
        } else {
            out.push_str(it.as_ref());
        }
    }
    out.push(']');
}

/// Appends the resource JSON (no newline). `elements` keeps only those top-level
/// elements (plus resourceType, id, meta; a primitive's `_name` goes with `name`) and tags
/// the resource SUBSETTED.
pub fn render(rec: &Record, elements: Option<&[String]>, out: &mut String) {
    out.push_str("{\"resourceType\":");
    push_json_str(out, TYPES[rec.t]);
    out.push_str(",\"id\":");
    push_json_str(out, &rec.id);
    out.push_str(",\"meta\":{\"versionId\":\"1\",\"lastUpdated\":\"");
    push_instant(out, rec.last_updated);
    out.push('"');
    let m = &rec.meta;
    if !m.profile.is_empty() {
        push_list(out, "profile", &m.profile, true);
    }
    if !m.security.is_empty() {
        push_list(out, "security", &m.security, false);
    }
    match elements {
        Some(_) => {
            let mut tags = vec![SUBSETTED];
            tags.extend(m.tag.iter().map(String::as_str));
            push_list(out, "tag", &tags, false);
        }
        None if !m.tag.is_empty() => push_list(out, "tag", &m.tag, false),
        None => {}
    }
    out.push('}');
    for (k, v) in &rec.fields {
        if let Some(el) = elements {
            let name = k.strip_prefix('_').unwrap_or(k);
            if !el.iter().any(|e| e == name) {
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
/// A second given name each, called by (`_given`: iso21090-EN-qualifier `CL`).
const NICKNAMES: [&str; 10] = [
    "Pepe",
    "Zoe",
    "小芳",
    "Johnny",
    "Shiv",
    "An",
    "Łukaszek",
    "Mimi",
    "Søs",
    "Aaru",
];
/// US Core race per person of [`PEOPLE`]: OMB category, a detailed category, Hispanic.
#[allow(clippy::type_complexity)]
const RACE: [((&str, &str), Option<(&str, &str)>, bool); 10] = [
    (("2106-3", "White"), None, true),
    (("2106-3", "White"), Some(("2108-9", "European")), false),
    (("2028-9", "Asian"), Some(("2034-7", "Chinese")), false),
    (("2054-5", "Black or African American"), None, false),
    (("2106-3", "White"), None, false),
    (("2028-9", "Asian"), Some(("2047-9", "Vietnamese")), false),
    (("2106-3", "White"), None, false),
    (("2106-3", "White"), Some(("2108-9", "European")), false),
    (("2106-3", "White"), None, false),
    (("2028-9", "Asian"), Some(("2029-7", "Asian Indian")), false),
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
/// Per city of [`CITIES`]: latitude and longitude as JSON decimal text (trailing zeros
/// kept), the UTC offset of a local time, the state, and the national person identifier
/// (system, assigner).
#[allow(clippy::type_complexity)]
const PLACES: [(&str, &str, &str, Option<&str>, (&str, &str)); 6] = [
    (
        "54.8880",
        "10.4120",
        "+01:00",
        None,
        ("urn:oid:1.2.208.176.1.2", "CPR-kontoret"),
    ),
    (
        "-23.5505",
        "-46.6333",
        "-03:00",
        Some("SP"),
        (
            "urn:oid:2.16.840.1.113883.13.237",
            "Receita Federal do Brasil",
        ),
    ),
    (
        "47.3769",
        "8.5417",
        "+01:00",
        Some("ZH"),
        ("urn:oid:2.16.756.5.32", "Zentrale Ausgleichsstelle ZAS"),
    ),
    (
        "42.3601",
        "-71.0589",
        "-05:00",
        Some("MA"),
        (
            "http://hl7.org/fhir/sid/us-ssn",
            "Social Security Administration",
        ),
    ),
    (
        "39.9042",
        "116.4074",
        "+08:00",
        None,
        ("urn:oid:2.16.156.10011.1.1", "公安部"),
    ),
    (
        "50.0647",
        "19.9450",
        "+01:00",
        None,
        (
            "urn:oid:2.16.840.1.113883.3.4424.1.1.616",
            "Ministerstwo Cyfryzacji",
        ),
    ),
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
/// Per medication of [`MEDS`]: RxNorm ingredient (code, name), strength per unit (value
/// text, UCUM unit), the dose unit (code, display), SNOMED route (code, display), the dose
/// form (v3-orderableDrugForm code, display) and the quantity dispensed (in dose units).
#[allow(clippy::type_complexity)]
const MED_DETAILS: [(
    (&str, &str),
    (&str, &str),
    (&str, &str),
    (&str, &str),
    (&str, &str),
    &str,
); 4] = [
    (
        ("6809", "Metformin"),
        ("500", "mg"),
        ("TAB", "tablet"),
        ("26643006", "Oral route"),
        ("TAB", "Tablet"),
        "90",
    ),
    (
        ("17767", "Amlodipine"),
        ("5", "mg"),
        ("TAB", "tablet"),
        ("26643006", "Oral route"),
        ("TAB", "Tablet"),
        "30",
    ),
    (
        ("435", "Albuterol"),
        ("0.09", "mg"),
        ("{actuat}", "actuation"),
        ("447694001", "Respiratory tract route"),
        ("MDINHL", "Metered Dose Inhaler"),
        "200",
    ),
    (
        ("36437", "Sertraline"),
        ("50", "mg"),
        ("TAB", "tablet"),
        ("26643006", "Oral route"),
        ("TAB", "Tablet"),
        "30",
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
/// Encounter reasons (SNOMED).
const REASONS: [(&str, &str); 4] = [
    ("21522001", "Abdominal pain"),
    ("29857009", "Chest pain"),
    ("25064002", "Headache"),
    ("386661006", "Fever"),
];
/// DiagnosticReport panels: (LOINC, display, text).
const PANELS: [(&str, &str, &str); 4] = [
    (
        "58410-2",
        "CBC panel - Blood by Automated count",
        "Blutbild",
    ),
    (
        "24323-8",
        "Comprehensive metabolic 2000 panel - Serum or Plasma",
        "Metabolic panel",
    ),
    (
        "57698-3",
        "Lipid panel with direct LDL - Serum or Plasma",
        "Lipidpanel",
    ),
    ("11502-2", "Laboratory report", "Rapport de laboratoire"),
];
/// DocumentReference types: (LOINC, display, title, text of the note).
const NOTES: [(&str, &str, &str, &str); 4] = [
    ("11488-4", "Consult note", "Konsil Kardiologie", "Konsil: Belastungs-EKG unauffällig.\nEmpfehlung: Kontrolle in 6 Monaten."),
    ("18842-5", "Discharge summary", "Discharge summary", "Discharged home in stable condition.\nFollow-up with GP in 2 weeks — \"no driving\" for 24 h."),
    ("34117-2", "History and physical note", "Anamnèse et examen", "Anamnèse : toux depuis 3 jours.\nExamen : auscultation normale, T° 37,8 °C."),
    ("11506-3", "Progress note", "Notat", "Pasienten føler seg bedre.\nFortsett behandlingen."),
];
/// Procedures: (SNOMED code, display, text, body site, category).
#[allow(clippy::type_complexity)]
const PROCEDURES: [(&str, &str, &str, Option<(&str, &str)>, (&str, &str)); 4] = [
    (
        "80146002",
        "Appendectomy",
        "Appendektomie",
        Some(("66754008", "Appendix structure")),
        ("387713003", "Surgical procedure"),
    ),
    (
        "73761001",
        "Colonoscopy",
        "Koloskopi",
        Some(("71854001", "Colon structure")),
        ("103693007", "Diagnostic procedure"),
    ),
    (
        "40701008",
        "Echocardiography",
        "Échocardiographie",
        Some(("80891009", "Heart structure")),
        ("103693007", "Diagnostic procedure"),
    ),
    (
        "430193006",
        "Medication reconciliation",
        "Medikamentenabgleich",
        None,
        ("409063005", "Counseling"),
    ),
];
/// Vaccines: (CVX, display, dose in mL as decimal text, manufacturer, target disease).
#[allow(clippy::type_complexity)]
const VACCINES: [(&str, &str, &str, &str, (&str, &str)); 4] = [
    (
        "140",
        "Influenza, seasonal, injectable, preservative free",
        "0.5",
        "Sanofi Pasteur",
        ("6142004", "Influenza"),
    ),
    (
        "208",
        "COVID-19, mRNA, LNP-S, PF, 30 mcg/0.3 mL dose",
        "0.30",
        "Pfizer, Inc",
        (
            "840539006",
            "Disease caused by severe acute respiratory syndrome coronavirus 2",
        ),
    ),
    (
        "115",
        "Tdap",
        "0.5",
        "GlaxoSmithKline",
        ("76902006", "Tetanus"),
    ),
    (
        "133",
        "Pneumococcal conjugate PCV 13",
        "0.5",
        "Pfizer, Inc",
        ("16814004", "Pneumococcal infectious disease"),
    ),
];
/// Allergens: (SNOMED substance, display, text, type, category, criticality, manifestation,
/// severity).
#[allow(clippy::type_complexity)]
const ALLERGENS: [(&str, &str, &str, &str, &str, &str, (&str, &str), &str); 5] = [
    (
        "764146007",
        "Penicillin",
        "Penicillin-Allergie",
        "allergy",
        "medication",
        "high",
        ("247472004", "Wheal"),
        "moderate",
    ),
    (
        "227493005",
        "Cashew nuts",
        "Allergie aux noix de cajou",
        "allergy",
        "food",
        "high",
        ("39579001", "Anaphylactic reaction"),
        "severe",
    ),
    (
        "256259004",
        "Pollen",
        "Pollenallergi",
        "allergy",
        "environment",
        "low",
        ("76067001", "Sneezing"),
        "mild",
    ),
    (
        "111088007",
        "Latex",
        "Latexallergie",
        "allergy",
        "environment",
        "low",
        ("247472004", "Wheal"),
        "mild",
    ),
    (
        "3718001",
        "Cow's milk",
        "Intolerancia a la leche",
        "intolerance",
        "food",
        "low",
        ("62315008", "Diarrhea"),
        "mild",
    ),
];

const LOINC: &str = "http://loinc.org";
const SNOMED: &str = "http://snomed.info/sct";
const UCUM: &str = "http://unitsofmeasure.org";
const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
const V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";
const OBS_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const INTERPRETATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";
const CDC_RACE: &str = "urn:oid:2.16.840.1.113883.6.238";
const SANDBOX_CODES: &str = "http://example.org/fhir/CodeSystem/sandbox-observation";
const VITALSIGNS: &str = "http://hl7.org/fhir/StructureDefinition/vitalsigns";

fn s(v: impl Into<String>) -> Val {
    Val::Str(v.into())
}
fn r(v: impl Into<String>) -> Val {
    Val::Raw(v.into())
}
fn reference(target: &str) -> Val {
    r(refer(target))
}

/// A JSON object under construction, members in the order added.
struct Obj(String);

impl Obj {
    fn new() -> Obj {
        Obj(String::from("{"))
    }
    fn key(&mut self, k: &str) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        push_json_str(&mut self.0, k);
        self.0.push(':');
    }
    /// A member whose value is raw JSON.
    fn raw(mut self, k: &str, v: impl AsRef<str>) -> Obj {
        self.key(k);
        self.0.push_str(v.as_ref());
        self
    }
    /// A string member.
    fn str(mut self, k: &str, v: &str) -> Obj {
        self.key(k);
        push_json_str(&mut self.0, v);
        self
    }
    fn end(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

/// A JSON array of raw JSON items.
fn arr<S: AsRef<str>>(items: &[S]) -> String {
    let mut o = String::from("[");
    for (n, it) in items.iter().enumerate() {
        if n > 0 {
            o.push(',');
        }
        o.push_str(it.as_ref());
    }
    o.push(']');
    o
}

fn coding(system: &str, code: &str, display: &str) -> String {
    Obj::new()
        .str("system", system)
        .str("code", code)
        .str("display", display)
        .end()
}
/// A CodeableConcept of one coding.
fn cc(system: &str, code: &str, display: &str) -> String {
    format!("{{\"coding\":[{}]}}", coding(system, code, display))
}
/// A CodeableConcept of one coding and a text.
fn cct(system: &str, code: &str, display: &str, text: &str) -> String {
    format!(
        "{{\"coding\":[{}],\"text\":{}}}",
        coding(system, code, display),
        js(text)
    )
}
/// A UCUM Quantity; `value` is the decimal's JSON text, written as it is.
fn qty(value: &str, unit: &str, code: &str) -> String {
    format!(
        "{{\"value\":{value},\"unit\":{},\"system\":\"{UCUM}\",\"code\":{}}}",
        js(unit),
        js(code)
    )
}
fn refer(target: &str) -> String {
    format!("{{\"reference\":{}}}", js(target))
}
fn refer_as(target: &str, display: &str) -> String {
    format!(
        "{{\"reference\":{},\"display\":{}}}",
        js(target),
        js(display)
    )
}
fn practitioner(k: usize) -> String {
    let k = k % PRACTITIONERS.len();
    let (given, family, _) = PRACTITIONERS[k];
    refer_as(
        &format!("Practitioner/pract-{k}"),
        &format!("Dr. {given} {family}"),
    )
}
fn organization(k: usize) -> String {
    let k = k % ORGS.len();
    refer_as(&format!("Organization/org-{k}"), ORGS[k].0)
}
fn period(start: i64, end: Option<i64>) -> String {
    match end {
        Some(e) => format!(
            "{{\"start\":\"{}\",\"end\":\"{}\"}}",
            instant(start),
            instant(e)
        ),
        None => format!("{{\"start\":\"{}\"}}", instant(start)),
    }
}
/// An extension with a value (`value_key` such as `valueCoding`, `value` raw JSON).
fn ext(url: &str, value_key: &str, value: impl AsRef<str>) -> String {
    format!("{{\"url\":{},\"{value_key}\":{}}}", js(url), value.as_ref())
}
/// A complex extension: nested extensions, no value.
fn ext_nested<S: AsRef<str>>(url: &str, parts: &[S]) -> String {
    format!("{{\"url\":{},\"extension\":{}}}", js(url), arr(parts))
}
/// Text content for XHTML.
fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
/// A generated Narrative around XHTML content (JSON-escaped by [`js`]).
fn narrative(inner: &str) -> String {
    format!(
        "{{\"status\":\"generated\",\"div\":{}}}",
        js(&format!(
            "<div xmlns=\"http://www.w3.org/1999/xhtml\">{inner}</div>"
        ))
    )
}
/// A `urn:uuid:` (version 4 layout) from two hashes.
fn uuid(a: u64, b: u64) -> String {
    format!(
        "urn:uuid:{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// SHA-1 of `data` (what FHIR's `Attachment.hash` holds, base64-encoded).
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let full = data.len() - data.len() % 64;
    // The last partial block, the 0x80 terminator and the bit length: one or two blocks.
    let mut tail = data[full..].to_vec();
    tail.push(0x80);
    while tail.len() % 64 != 56 {
        tail.push(0);
    }
    tail.extend_from_slice(&(data.len() as u64).wrapping_mul(8).to_be_bytes());
    for block in data[..full].chunks_exact(64).chain(tail.chunks_exact(64)) {
        sha1_block(&mut h, block);
    }
    let mut out = [0u8; 20];
    for (o, x) in out.chunks_exact_mut(4).zip(h) {
        o.copy_from_slice(&x.to_be_bytes());
    }
    out
}

fn sha1_block(h: &mut [u32; 5], block: &[u8]) {
    let mut w = [0u32; 80];
    for (n, word) in block.chunks_exact(4).enumerate() {
        w[n] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
    }
    for n in 16..80 {
        w[n] = (w[n - 3] ^ w[n - 8] ^ w[n - 14] ^ w[n - 16]).rotate_left(1);
    }
    let [mut a, mut b, mut c, mut d, mut e] = *h;
    for (n, wn) in w.iter().enumerate() {
        let (f, k) = match n {
            0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
            20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
            40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
            _ => (b ^ c ^ d, 0xCA62_C1D6),
        };
        let next = a
            .rotate_left(5)
            .wrapping_add(f)
            .wrapping_add(e)
            .wrapping_add(k)
            .wrapping_add(*wn);
        e = d;
        d = c;
        c = b.rotate_left(30);
        b = a;
        a = next;
    }
    for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
        *x = x.wrapping_add(y);
    }
}

/// An Attachment holding `text` inline (base64 `data`, its `size` and SHA-1 `hash`).
fn inline_attachment(
    content_type: &str,
    language: &str,
    text: &str,
    title: &str,
    at: i64,
) -> String {
    let bytes = text.as_bytes();
    Obj::new()
        .str("contentType", content_type)
        .str("language", language)
        .str("data", &b64(bytes))
        .raw("size", bytes.len().to_string())
        .str("hash", &b64(&sha1(bytes)))
        .str("title", title)
        .str("creation", &instant(at))
        .end()
}
/// An Attachment by URL pointing at document `docid` (see [`document`]): its URL, content type,
/// and the size and hash its class declares.
///
/// `(t, i, j, k)`: attachment `k` of record `(t, i, j)` ([`doc_id`]).
fn url_attachment(
    (t, i, j, k): (usize, usize, usize, usize),
    base_ct: &'static str,
    title: &str,
    at: i64,
) -> String {
    let docid = doc_id(t, i, j, k);
    let class = doc_class(&docid);
    let ct = doc_content_type(class, base_ct);
    let mut o = Obj::new()
        .str("contentType", ct)
        .str("url", &doc_url(&docid, class));
    match class {
        // text/plain documents that declare neither size nor hash
        10 | 11 => {}
        // large: the size (known without generating the bytes), no hash
        14 => o = o.raw("size", doc_len(&docid, class).to_string()),
        _ => {
            let digest = if class == 19 {
                // hash_mismatch: the SHA-1 of other bytes
                sha1(format!("not {docid}").as_bytes())
            } else {
                doc_digest((t, i, j, k), &docid, class, ct)
            };
            o = o
                .raw("size", doc_len(&docid, class).to_string())
                .str("hash", &b64(&digest));
        }
    }
    o.str("title", title).str("creation", &instant(at)).end()
}

/// The SHA-1 of the documents rendered so far, by (type, patient, record, position): a record
/// is rendered with its documents' hashes without generating them again. Cleared when it
/// holds [`DIGESTS_MAX`] (about 40 MB).
type DocKey = (usize, usize, usize, usize);
static DIGESTS: Mutex<Option<HashMap<DocKey, [u8; 20]>>> = Mutex::new(None);
const DIGESTS_MAX: usize = 1 << 20;

/// The SHA-1 of document `docid` (attachment `key`), of class `class` and type `ct`.
fn doc_digest(key: DocKey, docid: &str, class: u8, ct: &str) -> [u8; 20] {
    let lock = || DIGESTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = lock().as_ref().and_then(|m| m.get(&key)) {
        return *d;
    }
    let d = sha1(&doc_bytes(docid, class, ct));
    let mut g = lock();
    let m = g.get_or_insert_with(HashMap::new);
    if m.len() >= DIGESTS_MAX {
        m.clear();
    }
    m.insert(key, d);
    d
}

/// Where class-12 documents ("on another origin") point in the rendered data; the server
/// replaces it with the object store's `{origin}{prefix}/binary/` when it serves output files.
pub const FOREIGN_DOCS: &str = "https://docs.example.org/binary/";

/// Whether records of type `t` can point at documents ([`document`]).
pub fn has_documents(t: usize) -> bool {
    t == DOCUMENT_REFERENCE || t == DIAGNOSTIC_REPORT
}

/// Replaces [`FOREIGN_DOCS`] in `out[start..]` (one rendered record) by `with` (JSON-escaped,
/// see [`json_inner`]); nothing when `with` is empty.
pub fn relocate_docs(out: &mut String, start: usize, with: &str) {
    if with.is_empty() || !out[start..].contains(FOREIGN_DOCS) {
        return;
    }
    let moved = out[start..].replace(FOREIGN_DOCS, with);
    out.truncate(start);
    out.push_str(&moved);
}

/// Every attachment of record (t, i, j) (DocumentReference `content[n].attachment`,
/// DiagnosticReport `presentedForm[n]`), in document order, with the truth about its bytes;
/// class-12 URLs relocated with `doc_store` ([`relocate_docs`]).
pub fn attachments(t: usize, i: usize, j: usize, doc_store: &str) -> Vec<super::AttachmentTruth> {
    if !has_documents(t) {
        return Vec::new();
    }
    let mut line = String::new();
    render(&build(t, i, j), None, &mut line);
    relocate_docs(&mut line, 0, doc_store);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
    let atts: Vec<(String, &serde_json::Value)> = if t == DOCUMENT_REFERENCE {
        v["content"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(n, c)| (format!("content[{n}].attachment"), &c["attachment"]))
            .collect()
    } else {
        v["presentedForm"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(n, a)| (format!("presentedForm[{n}]"), a))
            .collect()
    };
    let hex = |d: [u8; 20]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let resource = format!("{}/{}", TYPES[t], resource_id(t, i, j));
    let mut out = Vec::new();
    for (position, (path, a)) in atts.into_iter().enumerate() {
        let url = a["url"].as_str().map(String::from);
        let (class, bytes, content_type) = match &url {
            Some(_) => {
                let Some(d) = document(&doc_id(t, i, j, position)) else {
                    continue;
                };
                (Some(d.class), d.bytes, d.content_type.to_string())
            }
            None => {
                let data = a["data"].as_str().unwrap_or_default();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .unwrap_or_default();
                let ct = a["contentType"].as_str().unwrap_or_default().to_string();
                (None, bytes, ct)
            }
        };
        out.push(super::AttachmentTruth {
            resource: resource.clone(),
            position,
            path,
            url,
            content_type,
            class,
            size: bytes.len() as u64,
            sha1: hex(sha1(&bytes)),
            outcome: class.map_or("inline", doc_outcome).to_string(),
        });
    }
    out
}

/// The number of document classes ([`doc_class`]).
pub const DOC_CLASSES: u8 = 20;

/// Seed of [`doc_hash`]. Chosen so that the documents of the first 20 patients fall into every
/// class (test `twenty_patients_have_every_document_class`).
const DOC_SEED: u64 = 0x00D0_C5EE_D000_0077;

/// The hash of a document id (picks its class and its bytes).
fn doc_hash(docid: &str) -> u64 {
    mix(docid.bytes().fold(DOC_SEED, |h, b| mix(h ^ u64::from(b))))
}

/// The class of a document, `hash(docid) % 20`: 0..=9 ok; 10, 11 ok, text/plain, neither size
/// nor hash declared; 12 ok on another origin (the object store); 13 served only as a FHIR
/// Binary resource; 14 large (1.2-1.4 MB, size declared, no hash); 15 missing (404);
/// 16 forbidden (403); 17 server error (500 on every request); 18 503 with `Retry-After: 0`
/// on the first request, then ok; 19 a wrong `hash` declared.
pub fn doc_class(docid: &str) -> u8 {
    (doc_hash(docid) % u64::from(DOC_CLASSES)) as u8
}

/// What the export-side truth calls a document of `class`.
pub fn doc_outcome(class: u8) -> &'static str {
    match class {
        14 => "large",
        15 => "missing",
        16 => "forbidden",
        17 => "server_error",
        19 => "hash_mismatch",
        _ => "ok",
    }
}

/// The content type of a document of `class` whose attachment slot is `base_ct`.
fn doc_content_type(class: u8, base_ct: &'static str) -> &'static str {
    match class {
        10 | 11 => "text/plain",
        12 => "text/html",
        13 | 14 => "application/pdf",
        _ => base_ct,
    }
}

/// The content type of the document at attachment `k` of record (t, i, j), whose slot has
/// `base_ct`.
fn doc_type(t: usize, i: usize, j: usize, k: usize, base_ct: &'static str) -> &'static str {
    doc_content_type(doc_class(&doc_id(t, i, j, k)), base_ct)
}

/// The URL of a document as the rendered data has it.
fn doc_url(docid: &str, class: u8) -> String {
    if class == 12 {
        format!("{FOREIGN_DOCS}{docid}")
    } else {
        format!("Binary/{docid}")
    }
}

/// The byte count of a document.
fn doc_len(docid: &str, class: u8) -> usize {
    let x = mix(doc_hash(docid) ^ 1);
    if class == 14 {
        1_200_000 + (x % 200_001) as usize
    } else {
        200 + (x % 7_800) as usize
    }
}

/// Printable filler of text documents: 64 characters, no markup.
const DOC_TEXT: &[u8; 64] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n";

/// The bytes of a document: a short header naming it, then filler from a PRNG seeded by the
/// id (printable text for text types, any byte for PDF).
fn doc_bytes(docid: &str, class: u8, ct: &str) -> Vec<u8> {
    let len = doc_len(docid, class);
    let (head, foot) = match ct {
        "application/pdf" => (
            format!("%PDF-1.4\n%fhirbulk sandbox document {docid}\n"),
            "\n%%EOF\n",
        ),
        "text/html" => (
            format!("<!DOCTYPE html><html><head><title>{docid}</title></head><body><pre>\n"),
            "\n</pre></body></html>\n",
        ),
        _ => (format!("fhirbulk sandbox document {docid}\n"), "\n"),
    };
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(head.as_bytes());
    let text = ct != "application/pdf";
    let fill = len.saturating_sub(out.len() + foot.len());
    let seed = mix(doc_hash(docid) ^ 2);
    for n in 0..fill.div_ceil(8) {
        let mut x = mix(seed ^ n as u64).to_le_bytes();
        if text {
            for b in &mut x {
                *b = DOC_TEXT[usize::from(*b & 63)];
            }
        }
        let room = head.len() + fill - out.len();
        out.extend_from_slice(&x[..room.min(8)]);
    }
    out.extend_from_slice(foot.as_bytes());
    out
}

/// A document a DocumentReference or DiagnosticReport points at by URL.
pub struct Document {
    /// The patient of the record pointing at it.
    pub patient: usize,
    /// [`doc_class`].
    pub class: u8,
    pub content_type: &'static str,
    pub bytes: Vec<u8>,
}

/// What an attachment slot of a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Inline,
    /// By URL, with this content type unless its class says otherwise.
    Url(&'static str),
}

/// The attachments of record (t, i, j) in document order (DocumentReference
/// `content[n].attachment`, DiagnosticReport `presentedForm[n]`).
fn slots(t: usize, i: usize, j: usize) -> Vec<Slot> {
    let g = hash2(t, i, j);
    match t {
        DOCUMENT_REFERENCE if roll(g, 5, 4) == 0 => vec![Slot::Inline],
        DOCUMENT_REFERENCE if roll(g, 6, 3) != 0 => {
            vec![Slot::Url("application/pdf"), Slot::Url("text/html")]
        }
        DOCUMENT_REFERENCE => vec![Slot::Url("application/pdf")],
        DIAGNOSTIC_REPORT if roll(g, 9, 4) == 0 => vec![Slot::Inline],
        DIAGNOSTIC_REPORT if roll(g, 10, 2) == 0 => {
            vec![Slot::Url("application/pdf"), Slot::Url("text/html")]
        }
        DIAGNOSTIC_REPORT => vec![Slot::Url("application/pdf")],
        _ => Vec::new(),
    }
}

/// The id of the document at attachment position `k` of record (t, i, j).
pub fn doc_id(t: usize, i: usize, j: usize, k: usize) -> String {
    format!("{}-{k}", resource_id(t, i, j))
}

/// The document `docid` (`docref-{i}-{j}-{k}` / `diagrep-{i}-{j}-{k}`: attachment `k` of that
/// record, by URL), whatever its class; None when no record points at such a document (the
/// patient bound is the server's to check).
pub fn document(docid: &str) -> Option<Document> {
    let (t, rest) = if let Some(r) = docid.strip_prefix("docref-") {
        (DOCUMENT_REFERENCE, r)
    } else {
        (DIAGNOSTIC_REPORT, docid.strip_prefix("diagrep-")?)
    };
    let mut n = [0usize; 3];
    let mut parts = rest.split('-');
    for x in &mut n {
        *x = parts.next()?.parse().ok()?;
    }
    let [i, j, k] = n;
    if parts.next().is_some() || j >= count_for(t, i) || doc_id(t, i, j, k) != docid {
        return None;
    }
    let Slot::Url(base_ct) = *slots(t, i, j).get(k)? else {
        return None;
    };
    let class = doc_class(docid);
    let content_type = doc_content_type(class, base_ct);
    Some(Document {
        patient: i,
        class,
        content_type,
        bytes: doc_bytes(docid, class, content_type),
    })
}

/// The test data tag (v3-ActReason HTEST) some resources carry in `meta.tag`.
fn htest() -> String {
    coding(
        "http://terminology.hl7.org/CodeSystem/v3-ActReason",
        "HTEST",
        "test health data",
    )
}

/// Resource id of record `(t, i, j)`.
pub fn resource_id(t: usize, i: usize, j: usize) -> String {
    match t {
        PATIENT => format!("p{i}"),
        ENCOUNTER => format!("enc-{i}-{j}"),
        OBSERVATION => format!("obs-{i}-{j}"),
        CONDITION => format!("cond-{i}-{j}"),
        MEDICATION_REQUEST => format!("medreq-{i}-{j}"),
        DIAGNOSTIC_REPORT => format!("diagrep-{i}-{j}"),
        DOCUMENT_REFERENCE => format!("docref-{i}-{j}"),
        PROCEDURE => format!("proc-{i}-{j}"),
        IMMUNIZATION => format!("imm-{i}-{j}"),
        ALLERGY_INTOLERANCE => format!("allergy-{i}-{j}"),
        ORGANIZATION => format!("org-{j}"),
        _ => format!("pract-{j}"),
    }
}

type Fields = Vec<(&'static str, Val)>;

/// What building one record needs.
struct Ctx {
    i: usize,
    j: usize,
    /// [`hash`]: the values the sandbox always had.
    h: u64,
    /// [`hash2`]: the optional content.
    g: u64,
    /// A clinical time a little before `lastUpdated`.
    when: i64,
    /// `Patient/p{i}`.
    pid: String,
}

impl Ctx {
    /// A number in `0..n` for this record's decision `salt` (decisions are independent).
    fn roll(&self, salt: u64, n: u64) -> u64 {
        roll(self.g, salt, n)
    }
    /// One of `items`, by the record's second hash.
    fn pick<T: Copy>(&self, items: &[T]) -> T {
        items[((self.g >> 24) % items.len() as u64) as usize]
    }
    /// A reference to an Encounter of the same patient.
    fn encounter(&self) -> String {
        format!(
            "{{\"reference\":\"Encounter/enc-{}-{}\"}}",
            self.i,
            self.j % count_for(ENCOUNTER, self.i)
        )
    }
    /// The patient's first Condition, if there is one.
    fn condition(&self) -> Option<String> {
        (count_for(CONDITION, self.i) > 0).then(|| format!("Condition/cond-{}-0", self.i))
    }
}

/// A number in `0..n` for decision `salt` of the record whose [`hash2`] is `g`.
fn roll(g: u64, salt: u64, n: u64) -> u64 {
    mix(g ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)) % n
}

/// Builds record `j` of type `t` for patient `i` (`i` ignored for non-patient types).
pub fn build(t: usize, i: usize, j: usize) -> Record {
    let h = hash(t, i, j);
    let last_updated = last_updated_ms(t, i, j);
    let c = Ctx {
        i,
        j,
        h,
        g: hash2(t, i, j),
        // Clinical timestamps a little before lastUpdated.
        when: last_updated - ((h >> 8) % (30 * DAY_MS as u64)) as i64,
        pid: format!("Patient/p{i}"),
    };
    let mut meta = Meta::default();
    let fields = match t {
        PATIENT => patient(&c, &mut meta),
        ENCOUNTER => encounter(&c),
        OBSERVATION => observation(&c, &mut meta),
        CONDITION => condition(&c),
        MEDICATION_REQUEST => medication_request(&c),
        DIAGNOSTIC_REPORT => diagnostic_report(&c, &mut meta),
        DOCUMENT_REFERENCE => document_reference(&c, &mut meta),
        PROCEDURE => procedure(&c),
        IMMUNIZATION => immunization(&c, &mut meta),
        ALLERGY_INTOLERANCE => allergy_intolerance(&c, &mut meta),
        ORGANIZATION => organization_fields(&c),
        _ => practitioner_fields(&c),
    };
    if c.roll(99, 7) == 0 {
        meta.tag.push(htest());
    }
    Record {
        t,
        id: resource_id(t, i, j),
        last_updated,
        meta,
        fields,
    }
}

fn patient(c: &Ctx, meta: &mut Meta) -> Fields {
    let (i, h) = (c.i, c.h);
    let (given, family, gender, display) = PEOPLE[i % PEOPLE.len()];
    let place = (i / 3) % CITIES.len();
    let (city, zip, country, lang) = CITIES[place];
    let (lat, lon, offset, state, (id_system, id_assigner)) = PLACES[place];
    let birth = YEAR_START_MS - (((h >> 12) % 32_000) as i64 + 365) * DAY_MS;
    let birth_date = date(birth);
    let org = i % ORGS.len();
    let mut f: Fields = vec![(
        "text",
        r(narrative(&format!(
            "<p><b>{}</b> ({gender}, born {birth_date})</p><p class=\"mrn\">MRN-{i:08} &#8212; {}</p>",
            xml(display),
            xml(city)
        ))),
    )];
    if c.roll(1, 4) != 0 {
        meta.profile
            .push("http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient");
        let ((omb, omb_display), detailed, hispanic) = RACE[i % RACE.len()];
        let mut race = vec![ext(
            "ombCategory",
            "valueCoding",
            coding(CDC_RACE, omb, omb_display),
        )];
        if let Some((code, d)) = detailed {
            race.push(ext("detailed", "valueCoding", coding(CDC_RACE, code, d)));
        }
        race.push(ext(
            "text",
            "valueString",
            js(detailed.map_or(omb_display, |d| d.1)),
        ));
        let (ec, ed) = if hispanic {
            ("2135-2", "Hispanic or Latino")
        } else {
            ("2186-5", "Not Hispanic or Latino")
        };
        let ethnicity = [
            ext("ombCategory", "valueCoding", coding(CDC_RACE, ec, ed)),
            ext("text", "valueString", js(ed)),
        ];
        let sex = match (c.roll(2, 29), gender) {
            (0, _) => "UNK",
            (_, "male") => "M",
            _ => "F",
        };
        f.push((
            "extension",
            r(arr(&[
                ext_nested(
                    "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
                    &race,
                ),
                ext_nested(
                    "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity",
                    &ethnicity,
                ),
                ext(
                    "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex",
                    "valueCode",
                    js(sex),
                ),
            ])),
        ));
    }
    if c.roll(3, 13) == 0 {
        meta.security.push(coding(
            "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
            "R",
            "restricted",
        ));
    }
    let mut ids = vec![Obj::new()
        .str("use", "usual")
        .raw("type", cc(V2_0203, "MR", "Medical record number"))
        .str("system", "urn:oid:1.2.36.146.595.217.0.1")
        .str("value", &format!("MRN-{i:08}"))
        .raw("assigner", format!("{{\"display\":{}}}", js(ORGS[org].0)))
        .end()];
    if c.roll(4, 3) == 0 {
        let (code, d, value) = if country == "US" {
            (
                "SS",
                "Social Security number",
                format!("{:09}", (c.g >> 8) % 1_000_000_000),
            )
        } else {
            (
                "NI",
                "National unique individual identifier",
                format!("{:010}", (c.g >> 8) % 10_000_000_000),
            )
        };
        ids.push(
            Obj::new()
                .str("use", "official")
                .raw("type", cct(V2_0203, code, d, "National ID"))
                .str("system", id_system)
                .str("value", &value)
                .raw("period", format!("{{\"start\":\"{birth_date}\"}}"))
                .raw("assigner", format!("{{\"display\":{}}}", js(id_assigner)))
                .end(),
        );
    }
    f.push(("identifier", r(arr(&ids))));
    f.push(("active", r("true")));
    let name = if c.roll(5, 5) == 1 {
        // A second given name, the one the patient is called by: `_given` is aligned with
        // `given` by position, null where a name has no extension.
        format!(
            "[{{\"use\":\"official\",\"text\":{},\"family\":{},\"given\":[{},{}],\"_given\":[null,{{\"extension\":[{}]}}]}}]",
            js(display),
            js(family),
            js(given),
            js(NICKNAMES[i % NICKNAMES.len()]),
            ext(
                "http://hl7.org/fhir/StructureDefinition/iso21090-EN-qualifier",
                "valueCode",
                "\"CL\""
            )
        )
    } else {
        format!(
            "[{{\"use\":\"official\",\"text\":{},\"family\":{},\"given\":[{}]}}]",
            js(display),
            js(family),
            js(given)
        )
    };
    f.push(("name", r(name)));
    f.push((
        "telecom",
        r(format!(
            "[{{\"system\":\"phone\",\"value\":\"+1-555-{:04}\",\"use\":\"home\"}},{{\"system\":\"email\",\"value\":\"patient{i}@example.org\"}}]",
            h % 10_000
        )),
    ));
    f.push(("gender", s(gender)));
    f.push(("birthDate", s(birth_date.clone())));
    if c.roll(6, 3) == 0 {
        let time = format!(
            "\"{birth_date}T{:02}:{:02}:00{offset}\"",
            (c.g >> 8) % 24,
            (c.g >> 16) % 60
        );
        f.push((
            "_birthDate",
            r(format!(
                "{{\"extension\":[{}]}}",
                ext(
                    "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                    "valueDateTime",
                    time
                )
            )),
        ));
    }
    match c.roll(7, 11) {
        0 => f.push(("deceasedDateTime", s(instant(c.when - 40 * DAY_MS)))),
        1..=4 => f.push(("deceasedBoolean", r("false"))),
        _ => {}
    }
    let geo = if c.roll(8, 2) == 0 {
        format!(
            "\"extension\":[{}],",
            ext_nested(
                "http://hl7.org/fhir/StructureDefinition/geolocation",
                &[
                    ext("latitude", "valueDecimal", lat),
                    ext("longitude", "valueDecimal", lon)
                ]
            )
        )
    } else {
        String::new()
    };
    let state = state.map_or(String::new(), |st| format!("\"state\":{},", js(st)));
    f.push((
        "address",
        r(format!(
            "[{{{geo}\"use\":\"home\",\"line\":[\"{} Main Street\"],\"city\":{},{state}\"postalCode\":{},\"country\":{}}}]",
            1 + h % 200,
            js(city),
            js(zip),
            js(country)
        )),
    ));
    if c.roll(9, 4) == 0 {
        let (code, d) = c.pick(&[
            ("M", "Married"),
            ("S", "Never Married"),
            ("W", "Widowed"),
            ("D", "Divorced"),
        ]);
        f.push((
            "maritalStatus",
            r(cct(
                "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                code,
                d,
                d,
            )),
        ));
    }
    match c.roll(10, 7) {
        0 => f.push((
            "multipleBirthInteger",
            r(if c.roll(11, 5) == 0 { "3" } else { "2" }),
        )),
        1 | 2 => f.push(("multipleBirthBoolean", r("false"))),
        _ => {}
    }
    f.push((
        "communication",
        r(format!(
            "[{{\"language\":{{\"coding\":[{{\"system\":\"urn:ietf:bcp:47\",\"code\":{}}}]}},\"preferred\":true}}]",
            js(lang)
        )),
    ));
    if c.roll(12, 2) == 0 {
        f.push(("generalPractitioner", r(arr(&[practitioner(i)]))));
    }
    if c.roll(13, 5) != 0 {
        f.push(("managingOrganization", r(organization(org))));
    }
    f
}

fn encounter(c: &Ctx) -> Fields {
    let (i, j) = (c.i, c.j);
    let mut f = Fields::new();
    if c.roll(1, 2) == 0 {
        let id = Obj::new()
            .str("use", "official")
            .raw("type", cc(V2_0203, "VN", "Visit number"))
            .str("system", "urn:oid:1.2.36.146.595.217.0.2")
            .str("value", &format!("V-{i:06}-{j}"))
            .raw(
                "assigner",
                format!("{{\"display\":{}}}", js(ORGS[i % ORGS.len()].0)),
            )
            .end();
        f.push(("identifier", r(arr(&[id]))));
    }
    f.push(("status", s("finished")));
    f.push(("class", r("{\"system\":\"http://terminology.hl7.org/CodeSystem/v3-ActCode\",\"code\":\"AMB\",\"display\":\"ambulatory\"}")));
    f.push(("type", r("[{\"coding\":[{\"system\":\"http://snomed.info/sct\",\"code\":\"185349003\",\"display\":\"Encounter for check up\"}],\"text\":\"Kontrolbesøg\"}]")));
    f.push(("subject", reference(&c.pid)));
    let participant = Obj::new()
        .raw(
            "type",
            arr(&[cc(
                "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                "PPRF",
                "primary performer",
            )]),
        )
        .raw("individual", practitioner(i + j))
        .end();
    f.push(("participant", r(arr(&[participant]))));
    f.push(("period", r(period(c.when, Some(c.when + 1_800_000)))));
    if c.roll(2, 3) != 0 {
        f.push(("length", r(qty("30", "min", "min"))));
    }
    if c.roll(3, 3) == 0 {
        let (code, d) = c.pick(&REASONS);
        f.push(("reasonCode", r(arr(&[cc(SNOMED, code, d)]))));
    }
    if let Some(cond) = c.condition().filter(|_| c.roll(4, 2) == 0) {
        let diagnosis = Obj::new()
            .raw("condition", refer(&cond))
            .raw(
                "use",
                cc(
                    "http://terminology.hl7.org/CodeSystem/diagnosis-role",
                    "CC",
                    "Chief complaint",
                ),
            )
            .raw("rank", "1")
            .end();
        f.push(("diagnosis", r(arr(&[diagnosis]))));
    }
    f.push(("serviceProvider", r(organization(i))));
    f
}

/// status, category, code, subject and encounter of an Observation.
fn obs_head(f: &mut Fields, c: &Ctx, category: (&str, &str), code: String) {
    f.push(("status", s(if c.j % 2 == 0 { "final" } else { "amended" })));
    f.push((
        "category",
        r(arr(&[cc(OBS_CATEGORY, category.0, category.1)])),
    ));
    f.push(("code", r(code)));
    f.push(("subject", reference(&c.pid)));
    f.push(("encounter", r(c.encounter())));
}

fn observation(c: &Ctx, meta: &mut Meta) -> Fields {
    let (i, j, h) = (c.i, c.j, c.h);
    const VITAL: (&str, &str) = ("vital-signs", "Vital Signs");
    let mut f = Fields::new();
    let effective = || ("effectiveDateTime", s(instant(c.when)));
    let issued = || ("issued", s(instant(c.when + 600_000)));
    let kind = c.roll(1, 20);
    match kind {
        0..=9 => {
            // The vital sign every Observation used to be.
            let (code, display, unit, base, spread) = VITALS[(i + j) % VITALS.len()];
            let v = base * 10 + (h >> 24) % (spread * 10);
            // Blood glucose is no vital sign, whatever its category says.
            if code != "2339-0" {
                meta.profile.push(VITALSIGNS);
            }
            if kind == 0 {
                f.push((
                    "text",
                    r(narrative(&format!(
                        "<p>{}: <b>{}.{} {}</b></p>",
                        xml(display),
                        v / 10,
                        v % 10,
                        xml(unit)
                    ))),
                ));
            }
            obs_head(&mut f, c, VITAL, cct(LOINC, code, display, display));
            f.push(effective());
            f.push(issued());
            f.push((
                "valueQuantity",
                r(qty(&format!("{}.{}", v / 10, v % 10), unit, unit)),
            ));
            if h % 3 == 0 {
                f.push((
                    "note",
                    r("[{\"text\":\"Måling udført i hvile — mesure au repos\"}]"),
                ));
            }
        }
        10 | 11 => {
            meta.profile
                .extend([VITALSIGNS, "http://hl7.org/fhir/StructureDefinition/bp"]);
            obs_head(
                &mut f,
                c,
                VITAL,
                cct(
                    LOINC,
                    "85354-9",
                    "Blood pressure panel with all children optional",
                    "Blood pressure",
                ),
            );
            f.push(effective());
            f.push(issued());
            let systolic = 100 + (c.g >> 8) % 60;
            let diastolic = 60 + (c.g >> 16) % 35;
            if systolic >= 140 {
                f.push(("interpretation", r(arr(&[cc(INTERPRETATION, "H", "High")]))));
            }
            f.push((
                "bodySite",
                r(cc(SNOMED, "368208006", "Left upper arm structure")),
            ));
            let (position, position_display) = c.pick(&[
                ("33586001", "Sitting position"),
                ("40199007", "Supine body position"),
                ("10904000", "Orthostatic body position"),
            ]);
            let mut components = vec![
                Obj::new()
                    .raw("code", cc(LOINC, "8480-6", "Systolic blood pressure"))
                    .raw(
                        "valueQuantity",
                        qty(&systolic.to_string(), "mmHg", "mm[Hg]"),
                    )
                    .end(),
                Obj::new()
                    .raw("code", cc(LOINC, "8462-4", "Diastolic blood pressure"))
                    .raw(
                        "valueQuantity",
                        qty(&diastolic.to_string(), "mmHg", "mm[Hg]"),
                    )
                    .end(),
                Obj::new()
                    .raw(
                        "code",
                        cc(LOINC, "8361-8", "Body position with respect to gravity"),
                    )
                    .raw(
                        "valueCodeableConcept",
                        cc(SNOMED, position, position_display),
                    )
                    .end(),
            ];
            if c.roll(2, 2) == 0 {
                components.push(
                    Obj::new()
                        .raw("code", cc(LOINC, "8357-6", "Blood pressure method"))
                        .str("valueString", "Oscillometric — automated cuff, 3 readings")
                        .end(),
                );
            }
            if c.roll(3, 3) == 0 {
                components.push(
                    Obj::new()
                        .raw(
                            "code",
                            cc(
                                SANDBOX_CODES,
                                "irregular-heartbeat",
                                "Irregular heartbeat detected",
                            ),
                        )
                        .raw("valueBoolean", (c.roll(4, 4) == 0).to_string())
                        .end(),
                );
            }
            f.push(("component", r(arr(&components))));
        }
        12 => {
            meta.profile
                .push("http://hl7.org/fhir/us/core/StructureDefinition/us-core-smokingstatus");
            obs_head(
                &mut f,
                c,
                ("social-history", "Social History"),
                cct(
                    LOINC,
                    "72166-2",
                    "Tobacco smoking status",
                    "Tobacco smoking status",
                ),
            );
            f.push(effective());
            f.push(issued());
            let (code, d) = c.pick(&[
                ("266919005", "Never smoked tobacco"),
                ("8517006", "Ex-smoker"),
                ("449868002", "Smokes tobacco daily"),
            ]);
            f.push(("valueCodeableConcept", r(cct(SNOMED, code, d, d))));
        }
        13 => {
            obs_head(
                &mut f,
                c,
                ("survey", "Survey"),
                cct(
                    LOINC,
                    "72514-3",
                    "Pain severity - 0-10 verbal numeric rating [Score] - Reported",
                    "Pain severity",
                ),
            );
            f.push((
                "effectivePeriod",
                r(period(c.when - 7_200_000, Some(c.when))),
            ));
            f.push(issued());
            f.push(("performer", r(arr(&[practitioner(i + j)]))));
            f.push(("valueInteger", r(((c.g >> 8) % 11).to_string())));
        }
        14 => {
            obs_head(
                &mut f,
                c,
                ("exam", "Exam"),
                cct(
                    LOINC,
                    "48767-8",
                    "Annotation comment [Interpretation] Narrative",
                    "Comment",
                ),
            );
            f.push(effective());
            f.push(issued());
            let text = c.pick(&[
                "Patient says she feels \"much better\" — deutlich besser.",
                "Keine Beschwerden.\nKontrolle bei Bedarf.",
                "Douleur thoracique atypique ; ECG normal.",
                "Dosierung:\t3 × täglich",
            ]);
            f.push(("valueString", s(text)));
        }
        15 => {
            obs_head(
                &mut f,
                c,
                ("exam", "Exam"),
                cct(
                    SANDBOX_CODES,
                    "fall-past-year",
                    "Fell in the past 12 months",
                    "Sturz in den letzten 12 Monaten",
                ),
            );
            f.push((
                "effectivePeriod",
                r(period(c.when - 365 * DAY_MS, Some(c.when))),
            ));
            f.push(issued());
            f.push(("valueBoolean", r((c.roll(2, 3) == 0).to_string())));
        }
        16 | 17 => {
            let (code, display, unit, values, low, high): (_, _, _, &[&str], _, _) = if kind == 16 {
                (
                    "2160-0",
                    "Creatinine [Mass/volume] in Serum or Plasma",
                    "mg/dL",
                    &["0.90", "1.50", "1.10", "0.75"],
                    "0.70",
                    "1.30",
                )
            } else {
                (
                    "10839-9",
                    "Troponin I.cardiac [Mass/volume] in Serum or Plasma",
                    "ng/mL",
                    &["0.0", "0.01", "0.40"],
                    "0.0",
                    "0.04",
                )
            };
            let v = c.pick(values);
            let raised = v.parse::<f64>().unwrap_or(0.0) > high.parse::<f64>().unwrap_or(0.0);
            meta.profile
                .push("http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation-lab");
            let id = Obj::new()
                .str("use", "official")
                .raw(
                    "type",
                    cct(V2_0203, "FILL", "Filler Identifier", "Lab accession"),
                )
                .str("system", "urn:oid:2.16.840.1.113883.19.5.1")
                .str("value", &format!("LAB-{i:06}-{j:02}-{:05}", c.g % 100_000))
                .raw(
                    "assigner",
                    format!(
                        "{{\"display\":{}}}",
                        js(&format!("Laboratory, {}", ORGS[i % ORGS.len()].0))
                    ),
                )
                .end();
            f.push(("identifier", r(arr(&[id]))));
            obs_head(
                &mut f,
                c,
                ("laboratory", "Laboratory"),
                cct(LOINC, code, display, display),
            );
            f.push(effective());
            f.push(issued());
            f.push(("performer", r(arr(&[organization(i)]))));
            f.push(("valueQuantity", r(qty(v, unit, unit))));
            let (flag, flag_display) = if raised {
                ("H", "High")
            } else {
                ("N", "Normal")
            };
            f.push((
                "interpretation",
                r(arr(&[cc(INTERPRETATION, flag, flag_display)])),
            ));
            let range = Obj::new()
                .raw("low", qty(low, unit, unit))
                .raw("high", qty(high, unit, unit))
                .str("text", &format!("{low}–{high} {unit}"))
                .end();
            f.push(("referenceRange", r(arr(&[range]))));
        }
        18 => {
            meta.profile.extend([
                VITALSIGNS,
                "http://hl7.org/fhir/StructureDefinition/bodytemp",
            ]);
            obs_head(
                &mut f,
                c,
                VITAL,
                cct(LOINC, "8310-5", "Body temperature", "Body temperature"),
            );
            f.push(effective());
            f.push(issued());
            let v = c.pick(&["98.60", "99.50", "97.70", "100.40"]);
            f.push(("valueQuantity", r(qty(v, "°F", "[degF]"))));
            if v == "100.40" {
                f.push(("interpretation", r(arr(&[cc(INTERPRETATION, "H", "High")]))));
            }
        }
        _ => {
            if c.roll(2, 2) == 0 {
                meta.profile
                    .extend([VITALSIGNS, "http://hl7.org/fhir/StructureDefinition/bmi"]);
                obs_head(
                    &mut f,
                    c,
                    VITAL,
                    cct(LOINC, "39156-5", "Body mass index (BMI) [Ratio]", "BMI"),
                );
                f.push(effective());
                f.push(issued());
                let v = c.pick(&["22.50", "24.691358024691358", "31.0"]);
                f.push(("valueQuantity", r(qty(v, "kg/m2", "kg/m2"))));
            } else {
                obs_head(
                    &mut f,
                    c,
                    ("procedure", "Procedure"),
                    cct(
                        LOINC,
                        "8741-1",
                        "Left ventricular Cardiac output",
                        "Cardiac output",
                    ),
                );
                f.push(effective());
                f.push(issued());
                let v = c.pick(&["3.14159265358979", "5.20", "4.0"]);
                f.push(("valueQuantity", r(qty(v, "L/min", "L/min"))));
                f.push(("method", r(cc(SNOMED, "40701008", "Echocardiography"))));
            }
        }
    }
    f
}

fn condition(c: &Ctx) -> Fields {
    let (i, j) = (c.i, c.j);
    let (code, display, text) = CONDITIONS[(i + j) % CONDITIONS.len()];
    let active = (i + j) % 3 != 0;
    let onset = c.when - 400 * DAY_MS;
    let mut f: Fields = vec![
        (
            "clinicalStatus",
            r(format!(
                "{{\"coding\":[{{\"system\":\"http://terminology.hl7.org/CodeSystem/condition-clinical\",\"code\":\"{}\"}}]}}",
                if active { "active" } else { "resolved" }
            )),
        ),
        ("verificationStatus", r("{\"coding\":[{\"system\":\"http://terminology.hl7.org/CodeSystem/condition-ver-status\",\"code\":\"confirmed\"}]}")),
        ("category", r("[{\"coding\":[{\"system\":\"http://terminology.hl7.org/CodeSystem/condition-category\",\"code\":\"problem-list-item\",\"display\":\"Problem List Item\"}]}]")),
    ];
    if c.roll(1, 4) == 0 {
        let (sc, sd) = c.pick(&[
            ("255604002", "Mild"),
            ("6736007", "Moderate"),
            ("24484000", "Severe"),
        ]);
        f.push(("severity", r(cc(SNOMED, sc, sd))));
    }
    f.push(("code", r(cct(SNOMED, code, display, text))));
    f.push(("subject", reference(&c.pid)));
    if c.roll(2, 2) == 0 {
        f.push(("encounter", r(c.encounter())));
    }
    match c.roll(3, 6) {
        0 | 1 => f.push((
            "onsetAge",
            r(format!(
                "{{\"value\":{},\"unit\":\"years\",\"system\":\"{UCUM}\",\"code\":\"a\"}}",
                18 + (c.g >> 8) % 60
            )),
        )),
        2 => f.push(("onsetPeriod", r(period(onset - 30 * DAY_MS, Some(onset))))),
        3 => f.push((
            "onsetString",
            s("Vor etwa fünf Jahren — about five years ago"),
        )),
        _ => f.push(("onsetDateTime", s(instant(onset)))),
    }
    if !active {
        f.push(("abatementDateTime", s(instant(c.when - 30 * DAY_MS))));
    }
    f.push(("recordedDate", s(instant(c.when))));
    if c.roll(4, 2) == 0 {
        f.push(("recorder", r(practitioner(i + j))));
    }
    if c.roll(5, 5) == 0 {
        let author = if c.roll(6, 2) == 0 {
            ("authorReference", practitioner(i))
        } else {
            ("authorString", js("Pflegedienst Süd"))
        };
        let note = Obj::new()
            .raw(author.0, author.1)
            .str("time", &instant(c.when))
            .str(
                "text",
                "Patient **adherent** to treatment; review in 3 months.",
            )
            .end();
        f.push(("note", r(arr(&[note]))));
    }
    f
}

fn medication_request(c: &Ctx) -> Fields {
    let (i, j) = (c.i, c.j);
    let m = (i + j) % MEDS.len();
    let (code, display, dosage) = MEDS[m];
    let (
        (ingredient, ingredient_name),
        (strength, strength_unit),
        (unit_code, unit_name),
        (route, route_name),
        (form, form_name),
        dispense,
    ) = MED_DETAILS[m];
    let inhaler = m == 2;
    let medication = cct(RXNORM, code, display, display);
    let unit_system = if unit_code == "TAB" {
        "http://terminology.hl7.org/CodeSystem/v3-orderableDrugForm"
    } else {
        UCUM
    };
    let units = |value: &str| {
        Obj::new()
            .raw("value", value)
            .str("unit", unit_name)
            .str("system", unit_system)
            .str("code", unit_code)
            .end()
    };
    let contained = c.roll(1, 3) == 0;
    let mut f = Fields::new();
    if contained {
        let strength = Obj::new()
            .raw("numerator", qty(strength, strength_unit, strength_unit))
            .raw("denominator", units("1"))
            .end();
        let med = Obj::new()
            .str("resourceType", "Medication")
            .str("id", "med1")
            .raw("code", &medication)
            .raw(
                "form",
                cc(
                    "http://terminology.hl7.org/CodeSystem/v3-orderableDrugForm",
                    form,
                    form_name,
                ),
            )
            .raw(
                "ingredient",
                arr(&[Obj::new()
                    .raw(
                        "itemCodeableConcept",
                        cc(RXNORM, ingredient, ingredient_name),
                    )
                    .raw("isActive", "true")
                    .raw("strength", strength)
                    .end()]),
            )
            .raw(
                "batch",
                Obj::new()
                    .str("lotNumber", &format!("LOT-{:06}", c.g % 1_000_000))
                    .str("expirationDate", &date(c.when + 400 * DAY_MS))
                    .end(),
            )
            .end();
        f.push(("contained", r(arr(&[med]))));
    }
    f.push((
        "status",
        s(if (i + j) % 2 == 0 {
            "active"
        } else {
            "completed"
        }),
    ));
    f.push(("intent", s("order")));
    if c.roll(2, 2) == 0 {
        f.push((
            "category",
            r(arr(&[cc(
                "http://terminology.hl7.org/CodeSystem/medicationrequest-category",
                "outpatient",
                "Outpatient",
            )])),
        ));
    }
    if contained {
        f.push(("medicationReference", r(refer_as("#med1", display))));
    } else {
        f.push(("medicationCodeableConcept", r(medication)));
    }
    f.push(("subject", reference(&c.pid)));
    if c.roll(3, 2) == 0 {
        f.push(("encounter", r(c.encounter())));
    }
    f.push(("authoredOn", s(instant(c.when))));
    f.push(("requester", r(practitioner(i + j))));
    // The first prescription treats the first condition (both tables are in step).
    if let Some(cond) = c.condition().filter(|_| j == 0) {
        f.push((
            "reasonReference",
            r(arr(&[refer_as(&cond, CONDITIONS[i % CONDITIONS.len()].1)])),
        ));
    }
    let mut d = Obj::new().raw("sequence", "1").str("text", dosage);
    if inhaler {
        d = d
            .raw(
                "timing",
                "{\"repeat\":{\"frequency\":1,\"period\":4,\"periodUnit\":\"h\"}}",
            )
            .raw(
                "asNeededCodeableConcept",
                cc(SNOMED, "56018004", "Wheezing"),
            );
    } else {
        d = d.raw(
            "timing",
            "{\"repeat\":{\"frequency\":1,\"period\":1,\"periodUnit\":\"d\"}}",
        );
        if c.roll(4, 2) == 0 {
            d = d.raw("asNeededBoolean", "false");
        }
    }
    d = d.raw("route", cc(SNOMED, route, route_name)).raw(
        "doseAndRate",
        arr(&[Obj::new()
            .raw(
                "type",
                cc(
                    "http://terminology.hl7.org/CodeSystem/dose-rate-type",
                    "ordered",
                    "Ordered",
                ),
            )
            .raw("doseQuantity", units(if inhaler { "2" } else { "1" }))
            .end()]),
    );
    if inhaler {
        d = d.raw(
            "maxDosePerPeriod",
            Obj::new()
                .raw("numerator", units("8"))
                .raw("denominator", qty("1", "day", "d"))
                .end(),
        );
    }
    f.push(("dosageInstruction", r(arr(&[d.end()]))));
    if c.roll(5, 2) == 0 {
        let days = if inhaler { "25" } else { dispense };
        f.push((
            "dispenseRequest",
            r(Obj::new()
                .raw(
                    "validityPeriod",
                    period(c.when, Some(c.when + 365 * DAY_MS)),
                )
                .raw("numberOfRepeatsAllowed", "3")
                .raw("quantity", units(dispense))
                .raw("expectedSupplyDuration", qty(days, "days", "d"))
                .end()),
        ));
    }
    if c.roll(6, 3) == 0 {
        f.push((
            "substitution",
            r(Obj::new()
                .raw("allowedBoolean", "true")
                .raw(
                    "reason",
                    cc(
                        "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                        "FP",
                        "formulary policy",
                    ),
                )
                .end()),
        ));
    }
    f
}

fn diagnostic_report(c: &Ctx, meta: &mut Meta) -> Fields {
    let (i, j) = (c.i, c.j);
    let (code, display, text) = PANELS[(i + j) % PANELS.len()];
    let abnormal = c.roll(1, 4) == 0;
    let conclusion = if abnormal {
        "Leicht erhöhte Werte — slightly raised values; recheck in 3 months."
    } else {
        "All values within reference ranges."
    };
    if c.roll(2, 2) == 0 {
        meta.profile
            .push("http://hl7.org/fhir/us/core/StructureDefinition/us-core-diagnosticreport-lab");
    }
    let mut f = Fields::new();
    if c.roll(3, 4) == 0 {
        f.push((
            "text",
            r(narrative(&format!(
                "<h3>{}</h3><p>{}</p>",
                xml(display),
                xml(conclusion)
            ))),
        ));
    }
    let id = Obj::new()
        .str("use", "usual")
        .raw(
            "type",
            cct(V2_0203, "FILL", "Filler Identifier", "Report number"),
        )
        .str("system", "urn:oid:2.16.840.1.113883.19.5.2")
        .str("value", &format!("DR-{i:06}-{j}-{:05}", c.g % 100_000))
        .raw(
            "assigner",
            format!("{{\"display\":{}}}", js(ORGS[(i + j) % ORGS.len()].0)),
        )
        .end();
    f.push(("identifier", r(arr(&[id]))));
    f.push((
        "status",
        s(if c.roll(4, 10) == 0 {
            "preliminary"
        } else {
            "final"
        }),
    ));
    f.push((
        "category",
        r(arr(&[cc(
            "http://terminology.hl7.org/CodeSystem/v2-0074",
            "LAB",
            "Laboratory",
        )])),
    ));
    f.push(("code", r(cct(LOINC, code, display, text))));
    f.push(("subject", reference(&c.pid)));
    f.push(("encounter", r(c.encounter())));
    let taken = c.when - DAY_MS;
    if c.roll(5, 2) == 0 {
        f.push(("effectiveDateTime", s(instant(taken))));
    } else {
        f.push(("effectivePeriod", r(period(taken - 3_600_000, Some(taken)))));
    }
    f.push(("issued", s(instant(c.when))));
    f.push(("performer", r(arr(&[organization(i + j)]))));
    if c.roll(6, 3) == 0 {
        f.push(("resultsInterpreter", r(arr(&[practitioner(i + 2)]))));
    }
    let n = count_for(OBSERVATION, i);
    let results: Vec<String> = (0..n.min(1 + ((c.g >> 8) % 3) as usize))
        .map(|k| refer(&format!("Observation/obs-{i}-{}", (j + k) % n)))
        .collect();
    f.push(("result", r(arr(&results))));
    f.push(("conclusion", s(conclusion)));
    let (cc_code, cc_display) = if abnormal {
        ("263654008", "Abnormal")
    } else {
        ("17621005", "Normal")
    };
    f.push(("conclusionCode", r(arr(&[cc(SNOMED, cc_code, cc_display)]))));
    let forms: Vec<String> = slots(DIAGNOSTIC_REPORT, i, j)
        .into_iter()
        .enumerate()
        .map(|(k, slot)| match slot {
            Slot::Inline => inline_attachment(
                "text/plain",
                "en",
                &format!("{display}\n{conclusion}\n"),
                "Laborbefund",
                c.when,
            ),
            Slot::Url(ct) => url_attachment(
                (DIAGNOSTIC_REPORT, i, j, k),
                ct,
                match doc_type(DIAGNOSTIC_REPORT, i, j, k, ct) {
                    "application/pdf" => "Laborbefund (PDF)",
                    "text/html" => "Laborbefund (HTML)",
                    _ => "Laborbefund",
                },
                c.when,
            ),
        })
        .collect();
    if !forms.is_empty() {
        f.push(("presentedForm", r(arr(&forms))));
    }
    f
}

fn document_reference(c: &Ctx, meta: &mut Meta) -> Fields {
    let (i, j) = (c.i, c.j);
    let kind = ((c.g >> 8) % NOTES.len() as u64) as usize;
    let (code, display, title, note) = NOTES[kind];
    let language = ["de", "en", "fr", "no"][kind];
    if c.roll(1, 2) == 0 {
        meta.profile
            .push("http://hl7.org/fhir/us/core/StructureDefinition/us-core-documentreference");
    }
    let mut f = Fields::new();
    f.push((
        "masterIdentifier",
        r(Obj::new()
            .str("system", "urn:ietf:rfc:3986")
            .str("value", &uuid(c.g, c.h))
            .end()),
    ));
    f.push(("status", s("current")));
    f.push((
        "docStatus",
        s(if c.roll(2, 6) == 0 {
            "preliminary"
        } else {
            "final"
        }),
    ));
    f.push(("type", r(cct(LOINC, code, display, title))));
    f.push((
        "category",
        r(arr(&[cc(
            "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
            "clinical-note",
            "Clinical Note",
        )])),
    ));
    f.push(("subject", reference(&c.pid)));
    f.push(("date", s(instant(c.when))));
    f.push(("author", r(arr(&[practitioner(i + j + 1)]))));
    if c.roll(3, 2) == 0 {
        f.push(("authenticator", r(practitioner(i + 3))));
    }
    f.push(("custodian", r(organization(i))));
    f.push(("description", s(title)));
    if c.roll(4, 3) == 0 {
        f.push((
            "securityLabel",
            r(arr(&[cc(
                "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                "N",
                "normal",
            )])),
        ));
    }
    const FORMATS: &str = "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode";
    let written = c.when - 3_600_000;
    let content: Vec<String> = slots(DOCUMENT_REFERENCE, i, j)
        .into_iter()
        .enumerate()
        .map(|(k, slot)| match slot {
            Slot::Inline => Obj::new()
                .raw(
                    "attachment",
                    inline_attachment("text/plain", language, note, title, written),
                )
                .raw(
                    "format",
                    coding(
                        FORMATS,
                        "urn:ihe:iti:xds:2017:mimeTypeSufficient",
                        "mimeType Sufficient",
                    ),
                )
                .end(),
            Slot::Url(ct) => {
                let a = Obj::new().raw(
                    "attachment",
                    url_attachment((DOCUMENT_REFERENCE, i, j, k), ct, title, written),
                );
                if doc_type(DOCUMENT_REFERENCE, i, j, k, ct) == "application/pdf" {
                    a.raw(
                        "format",
                        coding(
                            FORMATS,
                            "urn:ihe:iti:xds-sd:pdf:2008",
                            "Scanned Documents (PDF)",
                        ),
                    )
                    .end()
                } else {
                    a.end()
                }
            }
        })
        .collect();
    f.push(("content", r(arr(&content))));
    f.push((
        "context",
        r(Obj::new()
            .raw("encounter", arr(&[c.encounter()]))
            .raw("period", period(written, Some(c.when)))
            .raw(
                "practiceSetting",
                cc(SNOMED, "408443003", "General medical practice"),
            )
            .end()),
    ));
    f
}

fn procedure(c: &Ctx) -> Fields {
    let (i, j) = (c.i, c.j);
    let (code, display, text, site, (category, category_display)) =
        PROCEDURES[(i + j) % PROCEDURES.len()];
    let in_progress = c.roll(1, 13) == 0;
    let mut f = Fields::new();
    f.push((
        "status",
        s(if in_progress {
            "in-progress"
        } else {
            "completed"
        }),
    ));
    f.push(("category", r(cc(SNOMED, category, category_display))));
    f.push(("code", r(cct(SNOMED, code, display, text))));
    f.push(("subject", reference(&c.pid)));
    f.push(("encounter", r(c.encounter())));
    if in_progress {
        f.push(("performedPeriod", r(period(c.when, None))));
    } else {
        match c.roll(2, 7) {
            0 => f.push(("performedString", s("Frühjahr 2019 (Angabe der Patientin)"))),
            1..=3 => f.push(("performedDateTime", s(instant(c.when)))),
            _ => f.push((
                "performedPeriod",
                r(period(c.when - 2_700_000, Some(c.when))),
            )),
        }
    }
    let function = if category == "387713003" {
        cc(SNOMED, "304292004", "Surgeon")
    } else {
        cc(SNOMED, "309343006", "Physician")
    };
    let performer = Obj::new()
        .raw("function", function)
        .raw("actor", practitioner(i + j))
        .raw("onBehalfOf", organization(i))
        .end();
    f.push(("performer", r(arr(&[performer]))));
    match c.condition() {
        Some(cond) if c.roll(3, 2) == 0 => {
            f.push(("reasonReference", r(arr(&[refer(&cond)]))));
        }
        _ if c.roll(4, 2) == 0 => {
            let (rc, rd) = c.pick(&REASONS);
            f.push(("reasonCode", r(arr(&[cc(SNOMED, rc, rd)]))));
        }
        _ => {}
    }
    if let Some((sc, sd)) = site {
        f.push(("bodySite", r(arr(&[cc(SNOMED, sc, sd)]))));
    }
    if !in_progress {
        f.push(("outcome", r(cc(SNOMED, "385669000", "Successful"))));
        if c.roll(5, 9) == 0 {
            f.push((
                "complication",
                r(arr(&[cc(SNOMED, "131148009", "Bleeding")])),
            ));
        }
    }
    if c.roll(6, 4) == 0 {
        f.push((
            "followUp",
            r(arr(&[format!(
                "{{\"text\":{}}}",
                js("Kontrolle in 2 Wochen — review in two weeks")
            )])),
        ));
    }
    if c.roll(7, 5) == 0 {
        f.push((
            "note",
            r(arr(&[Obj::new()
                .str("time", &instant(c.when))
                .str(
                    "text",
                    "Uncomplicated; patient tolerated the procedure well.",
                )
                .end()])),
        ));
    }
    f
}

fn immunization(c: &Ctx, meta: &mut Meta) -> Fields {
    let (i, j) = (c.i, c.j);
    let v = (i + j) % VACCINES.len();
    let (cvx, display, dose, maker, (disease, disease_display)) = VACCINES[v];
    let done = c.roll(1, 11) != 0;
    if c.roll(2, 2) == 0 {
        meta.profile
            .push("http://hl7.org/fhir/us/core/StructureDefinition/us-core-immunization");
    }
    let mut f = Fields::new();
    f.push((
        "identifier",
        r(arr(&[Obj::new()
            .str("system", "urn:ietf:rfc:3986")
            .str("value", &uuid(c.h, c.g))
            .end()])),
    ));
    f.push(("status", s(if done { "completed" } else { "not-done" })));
    if !done {
        f.push((
            "statusReason",
            r(cc(
                "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                "PATOBJ",
                "patient objection",
            )),
        ));
    }
    f.push((
        "vaccineCode",
        r(cct("http://hl7.org/fhir/sid/cvx", cvx, display, display)),
    ));
    f.push(("patient", reference(&c.pid)));
    f.push(("encounter", r(c.encounter())));
    if c.roll(3, 6) == 0 {
        f.push(("occurrenceString", s("Herbst 2023 — autumn 2023")));
    } else {
        f.push(("occurrenceDateTime", s(instant(c.when))));
    }
    f.push(("recorded", s(instant(c.when + 3_600_000))));
    let primary = c.roll(4, 4) != 0;
    f.push(("primarySource", r(primary.to_string())));
    if !primary {
        f.push((
            "reportOrigin",
            r(cc(
                "http://terminology.hl7.org/CodeSystem/immunization-origin",
                "record",
                "Written Record",
            )),
        ));
    }
    if done {
        f.push(("manufacturer", r(format!("{{\"display\":{}}}", js(maker)))));
        f.push((
            "lotNumber",
            s(format!(
                "{}{:04}",
                ["EL", "FH", "AC", "PN"][v],
                c.g % 10_000
            )),
        ));
        f.push(("expirationDate", s(date(c.when + 200 * DAY_MS))));
        let (site, site_display) = if c.roll(5, 2) == 0 {
            ("LA", "left arm")
        } else {
            ("RA", "right arm")
        };
        f.push((
            "site",
            r(cc(
                "http://terminology.hl7.org/CodeSystem/v3-ActSite",
                site,
                site_display,
            )),
        ));
        f.push((
            "route",
            r(cc(
                "http://terminology.hl7.org/CodeSystem/v3-RouteOfAdministration",
                "IM",
                "Injection, intramuscular",
            )),
        ));
        f.push(("doseQuantity", r(qty(dose, "mL", "mL"))));
        let performer = Obj::new()
            .raw(
                "function",
                cc(
                    "http://terminology.hl7.org/CodeSystem/v2-0443",
                    "AP",
                    "Administering Provider",
                ),
            )
            .raw("actor", practitioner(i + j + 2))
            .end();
        f.push(("performer", r(arr(&[performer]))));
    }
    if c.roll(6, 5) == 0 {
        f.push((
            "note",
            r(arr(&[format!(
                "{{\"text\":{}}}",
                js("Keine Reaktion nach 15 Minuten Beobachtung.")
            )])),
        ));
    }
    if done {
        let mut p = Obj::new().str("series", &format!("{display} series")).raw(
            "targetDisease",
            arr(&[cc(SNOMED, disease, disease_display)]),
        );
        p = if c.roll(7, 5) == 0 {
            p.str("doseNumberString", "Booster")
        } else {
            p.raw("doseNumberPositiveInt", (1 + j).to_string())
                .raw("seriesDosesPositiveInt", "2")
        };
        f.push(("protocolApplied", r(arr(&[p.end()]))));
    }
    f
}

fn allergy_intolerance(c: &Ctx, meta: &mut Meta) -> Fields {
    let (i, j) = (c.i, c.j);
    let clinical = |code: &str, d: &str| {
        cc(
            "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
            code,
            d,
        )
    };
    let verification = |code: &str, d: &str| {
        cc(
            "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
            code,
            d,
        )
    };
    let mut f = Fields::new();
    if c.roll(2, 13) == 0 {
        // No known reaction risk to peanuts: a modifier extension, and no `code` (the
        // extension's rule).
        let risk = ext_nested(
            "http://hl7.org/fhir/StructureDefinition/allergyintolerance-substanceExposureRisk",
            &[
                ext(
                    "substance",
                    "valueCodeableConcept",
                    cct(SNOMED, "256349002", "Peanut", "Erdnuss"),
                ),
                ext(
                    "exposureRisk",
                    "valueCodeableConcept",
                    cc(
                        "http://hl7.org/fhir/allergy-intolerance-substance-exposure-risk",
                        "no-known-reaction-risk",
                        "No Known Reaction Risk",
                    ),
                ),
            ],
        );
        f.push(("modifierExtension", r(arr(&[risk]))));
        f.push(("clinicalStatus", r(clinical("active", "Active"))));
        f.push((
            "verificationStatus",
            r(verification("confirmed", "Confirmed")),
        ));
        f.push(("type", s("allergy")));
        f.push(("category", r("[\"food\"]")));
        f.push(("patient", reference(&c.pid)));
        f.push(("recordedDate", s(instant(c.when))));
        f.push(("recorder", r(practitioner(i + j))));
        return f;
    }
    // US Core wants a code, which the modifier extension above rules out.
    if c.roll(1, 2) == 0 {
        meta.profile
            .push("http://hl7.org/fhir/us/core/StructureDefinition/us-core-allergyintolerance");
    }
    let a = (i + j + ((c.g >> 8) % ALLERGENS.len() as u64) as usize) % ALLERGENS.len();
    let (
        code,
        display,
        text,
        kind,
        category,
        criticality,
        (manifestation, manifestation_display),
        severity,
    ) = ALLERGENS[a];
    let (status, status_display) = c.pick(&[
        ("active", "Active"),
        ("active", "Active"),
        ("active", "Active"),
        ("inactive", "Inactive"),
        ("resolved", "Resolved"),
    ]);
    f.push(("clinicalStatus", r(clinical(status, status_display))));
    f.push((
        "verificationStatus",
        r(if c.roll(3, 5) == 0 {
            verification("unconfirmed", "Unconfirmed")
        } else {
            verification("confirmed", "Confirmed")
        }),
    ));
    f.push(("type", s(kind)));
    f.push(("category", r(format!("[{}]", js(category)))));
    f.push(("criticality", s(criticality)));
    f.push(("code", r(cct(SNOMED, code, display, text))));
    f.push(("patient", reference(&c.pid)));
    if c.roll(4, 2) == 0 {
        f.push(("encounter", r(c.encounter())));
    }
    match c.roll(5, 4) {
        0 => f.push((
            "onsetAge",
            r(format!(
                "{{\"value\":{},\"unit\":\"years\",\"system\":\"{UCUM}\",\"code\":\"a\"}}",
                2 + (c.g >> 16) % 40
            )),
        )),
        1 => f.push(("onsetString", s("Seit der Kindheit — since childhood"))),
        _ => f.push(("onsetDateTime", s(instant(c.when - 700 * DAY_MS)))),
    }
    f.push(("recordedDate", s(instant(c.when))));
    f.push(("recorder", r(practitioner(i + j))));
    if c.roll(6, 3) == 0 {
        f.push(("asserter", reference(&c.pid)));
    }
    if c.roll(7, 3) == 0 {
        f.push(("lastOccurrence", s(instant(c.when - 20 * DAY_MS))));
    }
    if c.roll(8, 5) == 0 {
        f.push((
            "note",
            r(arr(&[format!(
                "{{\"text\":{}}}",
                js("Reaktion laut Patient \"sehr stark\" — carry an epinephrine pen.")
            )])),
        ));
    }
    if c.roll(9, 4) != 0 {
        let mut reaction = Obj::new()
            .raw(
                "manifestation",
                arr(&[cc(SNOMED, manifestation, manifestation_display)]),
            )
            .str(
                "description",
                &format!(
                    "{manifestation_display} after exposure to {}",
                    display.to_lowercase()
                ),
            )
            .str("onset", &instant(c.when - 20 * DAY_MS))
            .str("severity", severity);
        if category != "environment" {
            reaction = reaction.raw("exposureRoute", cc(SNOMED, "26643006", "Oral route"));
        }
        f.push(("reaction", r(arr(&[reaction.end()]))));
    }
    f
}

fn organization_fields(c: &Ctx) -> Fields {
    let (j, h) = (c.j, c.h);
    let (name, city, country) = ORGS[j % ORGS.len()];
    vec![
        (
            "identifier",
            r(format!(
                "[{{\"system\":\"urn:oid:2.16.840.1.113883.4.7\",\"value\":\"ORG-{j:04}\"}}]"
            )),
        ),
        ("active", r("true")),
        ("type", r("[{\"coding\":[{\"system\":\"http://terminology.hl7.org/CodeSystem/organization-type\",\"code\":\"prov\",\"display\":\"Healthcare Provider\"}]}]")),
        ("name", s(name)),
        (
            "telecom",
            r(format!(
                "[{{\"system\":\"phone\",\"value\":\"+45-62-{:06}\"}}]",
                h % 1_000_000
            )),
        ),
        (
            "address",
            r(format!(
                "[{{\"city\":{},\"country\":{}}}]",
                js(city),
                js(country)
            )),
        ),
    ]
}

fn practitioner_fields(c: &Ctx) -> Fields {
    let (j, h) = (c.j, c.h);
    let (given, family, gender) = PRACTITIONERS[j % PRACTITIONERS.len()];
    vec![
        (
            "identifier",
            r(format!(
                "[{{\"system\":\"http://hl7.org/fhir/sid/us-npi\",\"value\":\"{}\"}}]",
                1_000_000_000 + h % 1_000_000_000
            )),
        ),
        ("active", r("true")),
        (
            "name",
            r(format!(
                "[{{\"family\":{},\"given\":[{}],\"prefix\":[\"Dr.\"]}}]",
                js(family),
                js(given)
            )),
        ),
        ("gender", s(gender)),
        ("qualification", r("[{\"code\":{\"coding\":[{\"system\":\"http://terminology.hl7.org/CodeSystem/v2-0360\",\"code\":\"MD\",\"display\":\"Doctor of Medicine\"}]}}]")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

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

    fn rendered(t: usize, i: usize, j: usize) -> String {
        let mut out = String::new();
        render(&build(t, i, j), None, &mut out);
        out
    }

    /// Every record of `patients` patients (and the system-level ones): (t, i, line).
    fn all(patients: usize) -> Vec<(usize, usize, String)> {
        let mut v = Vec::new();
        for t in 0..TYPES.len() {
            let owners = if is_patient_type(t) { patients } else { 1 };
            for i in 0..owners {
                for j in 0..count_for(t, i) {
                    v.push((t, i, rendered(t, i, j)));
                }
            }
        }
        v
    }

    #[test]
    fn records_are_valid_json_of_sane_size() {
        for (t, name) in TYPES.iter().enumerate() {
            for i in 0..20 {
                for j in 0..count_for(t, i) {
                    let out = rendered(t, i, j);
                    let v: serde_json::Value = serde_json::from_str(&out).expect("valid json");
                    assert_eq!(v["resourceType"], *name);
                    assert_eq!(v["id"], resource_id(t, i, j).as_str());
                    assert!(
                        out.len() >= 300 && out.len() <= 4096,
                        "{} bytes: {out}",
                        out.len()
                    );
                    assert!(!out.contains('\n'), "one line: {out}");
                    let lu = v["meta"]["lastUpdated"].as_str().unwrap_or_default();
                    assert!(lu.starts_with("2024-"), "{lu}");
                }
            }
        }
    }

    #[test]
    fn every_type_has_records_and_a_compartment() {
        for (t, name) in TYPES.iter().enumerate() {
            let n: usize = (0..12).map(|i| count_for(t, i)).sum();
            assert!(n > 0, "{name}");
        }
        for (t, i, line) in all(40) {
            if t == PATIENT || !is_patient_type(t) {
                continue;
            }
            let v: Value = serde_json::from_str(&line).expect("json");
            let owner = v["subject"]["reference"]
                .as_str()
                .or(v["patient"]["reference"].as_str());
            assert_eq!(owner, Some(format!("Patient/p{i}").as_str()), "{line}");
        }
    }

    /// The types the sandbox served first kept their hash seeds: lastUpdated (and so every
    /// `_since` selection) did not move when types were added.
    #[test]
    fn first_types_keep_their_seeds() {
        let old = |t: u64, i: usize, j: usize| {
            let h = mix(mix(mix(t + 1) ^ i as u64) ^ j as u64);
            YEAR_START_MS + (h % 366) as i64 * DAY_MS + ((h >> 20) % DAY_MS as u64) as i64
        };
        for (name, old_index) in [
            ("Patient", 0),
            ("Encounter", 1),
            ("Observation", 2),
            ("Condition", 3),
            ("MedicationRequest", 4),
            ("Organization", 5),
            ("Practitioner", 6),
        ] {
            let t = type_index(name).expect("type");
            for (i, j) in [(0, 0), (3, 1), (17, 2)] {
                assert_eq!(last_updated_ms(t, i, j), old(old_index, i, j), "{name}");
            }
        }
        // Ids and counts of those types stayed the same too.
        assert_eq!(resource_id(ORGANIZATION, 9, 2), "org-2");
        assert_eq!(count_for(PRACTITIONER, 0), 5);
        assert_eq!(
            (0..10).map(|i| count_for(OBSERVATION, i)).sum::<usize>(),
            40
        );
    }

    #[test]
    fn sha1_vectors() {
        let hex = |b: [u8; 20]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(hex(sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            hex(sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            hex(sha1(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
    }

    /// FHIR JSON: no empty objects, arrays or strings; null only inside a primitive's
    /// `_name` array; at most one type of each choice element.
    fn check_fhir_json(v: &Value, path: &str, nulls_ok: bool) {
        match v {
            Value::Null => assert!(nulls_ok, "null at {path}"),
            Value::String(s) => assert!(!s.is_empty(), "empty string at {path}"),
            Value::Array(a) => {
                assert!(!a.is_empty(), "empty array at {path}");
                for (n, x) in a.iter().enumerate() {
                    check_fhir_json(x, &format!("{path}[{n}]"), nulls_ok);
                }
            }
            Value::Object(m) => {
                assert!(!m.is_empty(), "empty object at {path}");
                for choice in [
                    "value",
                    "effective",
                    "onset",
                    "abatement",
                    "deceased",
                    "multipleBirth",
                    "performed",
                    "occurrence",
                    "medication",
                    "asNeeded",
                    "doseNumber",
                    "author",
                ] {
                    let n = m
                        .keys()
                        .filter(|k| {
                            k.strip_prefix(choice).is_some_and(|rest| {
                                rest.starts_with(|c: char| c.is_ascii_uppercase())
                            })
                        })
                        .count();
                    assert!(n <= 1, "{n} types of {choice}[x] at {path}");
                }
                for (k, x) in m {
                    check_fhir_json(x, &format!("{path}.{k}"), k.starts_with('_'));
                }
            }
            _ => {}
        }
    }

    #[test]
    fn resources_follow_fhir_json_rules() {
        for (_, _, line) in all(60) {
            let v: Value = serde_json::from_str(&line).expect("json");
            check_fhir_json(&v, v["resourceType"].as_str().unwrap_or("?"), false);
            // `_given` is aligned with `given`.
            for name in v["name"].as_array().into_iter().flatten() {
                if let Some(ext) = name.get("_given") {
                    assert_eq!(
                        ext.as_array().map(Vec::len),
                        name["given"].as_array().map(Vec::len),
                        "{line}"
                    );
                }
            }
            // Local references point to contained resources.
            let contained: Vec<&str> = v["contained"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["id"].as_str())
                .collect();
            for (at, _) in line.match_indices("\"reference\":\"#") {
                let rest = &line[at + "\"reference\":\"#".len()..];
                let id = &rest[..rest.find('"').expect("end")];
                assert!(contained.contains(&id), "#{id} in {line}");
            }
            // Contained resources have no meta.lastUpdated and no narrative.
            for c in v["contained"].as_array().into_iter().flatten() {
                assert!(c.get("meta").is_none() && c.get("text").is_none());
            }
        }
    }

    #[test]
    fn inline_attachments_carry_their_size_and_sha1() {
        let mut seen = 0;
        for (_, _, line) in all(60) {
            let v: Value = serde_json::from_str(&line).expect("json");
            let mut atts: Vec<&Value> = v["presentedForm"]
                .as_array()
                .into_iter()
                .flatten()
                .collect();
            atts.extend(
                v["content"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| &c["attachment"]),
            );
            for a in atts {
                let Some(data) = a["data"].as_str() else {
                    assert!(a["url"]
                        .as_str()
                        .is_some_and(|u| u.starts_with("Binary/") || u.starts_with(FOREIGN_DOCS)));
                    continue;
                };
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .expect("base64");
                assert!(std::str::from_utf8(&bytes).is_ok());
                assert_eq!(a["size"].to_string(), bytes.len().to_string());
                assert_eq!(a["hash"].as_str(), Some(b64(&sha1(&bytes)).as_str()));
                seen += 1;
            }
        }
        assert!(seen >= 5, "{seen} inline attachments");
    }

    /// Everything the sandbox is meant to serve shows up among the first 60 patients (the
    /// size of the Arrow round-trip test's sandbox).
    #[test]
    fn the_first_patients_carry_every_feature() {
        let text: String = all(60).into_iter().map(|(_, _, l)| l + "\n").collect();
        for needle in [
            "us-core-race\",\"extension\":[{\"url\":\"ombCategory\",\"valueCoding\"",
            "us-core-ethnicity",
            "us-core-birthsex\",\"valueCode\"",
            "\"url\":\"detailed\"",
            "\"address\":[{\"extension\":[{\"url\":\"http://hl7.org/fhir/StructureDefinition/geolocation\"",
            "\"valueDecimal\":54.8880",
            "\"modifierExtension\":[{\"url\":\"http://hl7.org/fhir/StructureDefinition/allergyintolerance-substanceExposureRisk\"",
            "\"_birthDate\":{\"extension\"",
            "\"_given\":[null,{\"extension\"",
            "\"contained\":[{\"resourceType\":\"Medication\",\"id\":\"med1\"",
            "\"medicationReference\":{\"reference\":\"#med1\"",
            "\"medicationCodeableConcept\"",
            "\"valueCodeableConcept\"",
            "\"valueString\"",
            "\"valueBoolean\"",
            "\"valueInteger\"",
            "\"valueQuantity\"",
            "\"effectivePeriod\"",
            "\"effectiveDateTime\"",
            "\"onsetAge\"",
            "\"onsetDateTime\"",
            "\"onsetPeriod\"",
            "\"onsetString\"",
            "\"abatementDateTime\"",
            "\"deceasedBoolean\":false",
            "\"deceasedDateTime\"",
            "\"multipleBirthInteger\"",
            "\"multipleBirthBoolean\"",
            "\"performedDateTime\"",
            "\"performedPeriod\"",
            "\"performedString\"",
            "\"occurrenceDateTime\"",
            "\"occurrenceString\"",
            "\"doseNumberPositiveInt\"",
            "\"doseNumberString\"",
            "\"asNeededBoolean\"",
            "\"asNeededCodeableConcept\"",
            "\"authorString\"",
            "\"authorReference\"",
            "\"value\":1.50,",
            "\"value\":0.0,",
            "\"value\":98.60,",
            "\"value\":3.14159265358979,",
            "\"value\":24.691358024691358,",
            "\"value\":0.30,",
            "\"component\":[{\"code\"",
            "\"referenceRange\":[{\"low\":{\"value\"",
            "\"profile\":[\"http://hl7.org/fhir/StructureDefinition/vitalsigns\"",
            "\"security\":[{",
            "\"tag\":[{\"system\":\"http://terminology.hl7.org/CodeSystem/v3-ActReason\",\"code\":\"HTEST\"",
            "\"assigner\":{\"display\"",
            "\"type\":{\"coding\":[{\"system\":\"http://terminology.hl7.org/CodeSystem/v2-0203\"",
            "\"div\":\"<div xmlns=\\\"http://www.w3.org/1999/xhtml\\\"><p><b>",
            "\"data\":\"",
            "\"hash\":\"",
            "\"url\":\"Binary/docref-",
            "\"url\":\"Binary/diagrep-",
            "\"url\":\"https://docs.example.org/binary/",
            "\"maxDosePerPeriod\"",
            "\"reasonReference\"",
            "\"result\":[{\"reference\":\"Observation/obs-",
            "\"resourceType\":\"DiagnosticReport\"",
            "\"resourceType\":\"DocumentReference\"",
            "\"resourceType\":\"Procedure\"",
            "\"resourceType\":\"Immunization\"",
            "\"resourceType\":\"AllergyIntolerance\"",
        ] {
            assert!(text.contains(needle), "no record has {needle}");
        }
        // ... and on some resources only.
        let patients = text
            .lines()
            .filter(|l| l.starts_with("{\"resourceType\":\"Patient\""));
        let (with, without) = patients.fold((0, 0), |(w, wo), l| {
            if l.contains("us-core-race") {
                (w + 1, wo)
            } else {
                (w, wo + 1)
            }
        });
        assert!(with > 0 && without > 0, "{with} / {without}");
    }

    #[test]
    fn elements_keep_primitive_extensions_and_tags() {
        let i = (0..200)
            .find(|&i| {
                let r = build(PATIENT, i, 0);
                r.fields.iter().any(|(k, _)| *k == "_birthDate") && !r.meta.tag.is_empty()
            })
            .expect("a patient with _birthDate and a tag");
        let mut out = String::new();
        render(
            &build(PATIENT, i, 0),
            Some(&["birthDate".to_string()]),
            &mut out,
        );
        let v: Value = serde_json::from_str(&out).expect("json");
        let mut keys: Vec<&String> = v.as_object().expect("object").keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            ["_birthDate", "birthDate", "id", "meta", "resourceType"]
        );
        assert_eq!(v["meta"]["tag"][0]["code"], "SUBSETTED");
        assert_eq!(v["meta"]["tag"][1]["code"], "HTEST");
    }

    /// Every URL attachment of the records of `patients` patients: (docid, attachment JSON).
    fn url_attachments(patients: usize) -> Vec<(String, Value)> {
        let mut v = Vec::new();
        for t in [DOCUMENT_REFERENCE, DIAGNOSTIC_REPORT] {
            for i in 0..patients {
                for j in 0..count_for(t, i) {
                    let rec: Value = serde_json::from_str(&rendered(t, i, j)).expect("json");
                    let atts: Vec<Value> = match t {
                        DOCUMENT_REFERENCE => rec["content"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|c| c["attachment"].clone())
                            .collect(),
                        _ => rec["presentedForm"].as_array().cloned().unwrap_or_default(),
                    };
                    for (k, a) in atts.into_iter().enumerate() {
                        if a.get("url").is_some() {
                            v.push((doc_id(t, i, j, k), a));
                        }
                    }
                }
            }
        }
        v
    }

    #[test]
    fn twenty_patients_have_every_document_class() {
        let docs = url_attachments(20);
        let mut per = [0usize; DOC_CLASSES as usize];
        for (id, _) in &docs {
            per[usize::from(doc_class(id))] += 1;
        }
        assert!(per.iter().all(|&n| n > 0), "documents per class: {per:?}");
        assert_eq!(docs.len(), per.iter().sum::<usize>());
    }

    #[test]
    fn documents_match_their_attachments() {
        for (id, a) in url_attachments(20) {
            let d = document(&id).expect("a document");
            assert_eq!(d.class, doc_class(&id));
            assert!(
                id.len() <= 64
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            );
            assert_eq!(a["contentType"], d.content_type, "{id}");
            let url = a["url"].as_str().unwrap_or_default();
            let size = a["size"].as_u64();
            let hash = a["hash"].as_str();
            let true_hash = b64(&sha1(&d.bytes));
            let n = d.bytes.len() as u64;
            match d.class {
                10 | 11 => {
                    assert_eq!(d.content_type, "text/plain");
                    assert_eq!((size, hash), (None, None), "{id}");
                }
                14 => {
                    assert!((1_200_000..=1_400_000).contains(&n), "{id}: {n}");
                    assert_eq!((size, hash), (Some(n), None), "{id}");
                }
                19 => {
                    assert_eq!(size, Some(n), "{id}");
                    assert!(hash.is_some_and(|h| h != true_hash), "{id}");
                }
                _ => assert_eq!((size, hash), (Some(n), Some(true_hash.as_str())), "{id}"),
            }
            if d.class != 14 {
                assert!((200..8000).contains(&n), "{id}: {n}");
            }
            if d.class == 12 {
                assert_eq!(url, format!("{FOREIGN_DOCS}{id}"));
            } else {
                assert_eq!(url, format!("Binary/{id}"));
            }
            let head = format!("fhirbulk sandbox document {id}");
            let text = String::from_utf8_lossy(&d.bytes[..200]);
            assert!(
                text.contains(&head) || text.contains(&format!("<title>{id}</title>")),
                "{text}"
            );
            if d.content_type != "application/pdf" {
                assert!(std::str::from_utf8(&d.bytes).is_ok(), "{id}");
            }
            // Deterministic.
            assert_eq!(document(&id).map(|x| x.bytes), Some(d.bytes));
        }
        let inline = (0..20)
            .flat_map(|i| (0..count_for(DIAGNOSTIC_REPORT, i)).map(move |j| (i, j)))
            .find(|&(i, j)| slots(DIAGNOSTIC_REPORT, i, j) == [Slot::Inline])
            .map(|(i, j)| doc_id(DIAGNOSTIC_REPORT, i, j, 0))
            .expect("an inline presentedForm");
        // Patient 0 has no DocumentReference; the DiagnosticReport's attachment is inline.
        for bad in [
            "docref-0-0-0",
            "docref-2-0-5",
            "docref-02-0-0",
            "docref-2-0-0-0",
            inline.as_str(),
            "obs-1-0-0",
            "",
        ] {
            assert!(document(bad).is_none(), "{bad}");
        }
    }
}
