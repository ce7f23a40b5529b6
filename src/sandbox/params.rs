//! Kick-off parameter parsing and the record selection it produces.

use time::format_description::well_known::Rfc3339;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::{Date, OffsetDateTime};

use super::data::{self, Record, TYPES};

/// An error answered as an OperationOutcome.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub msg: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, msg: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            msg: msg.into(),
        }
    }
    fn invalid(msg: impl Into<String>) -> Self {
        Self::new(400, "invalid", msg)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Level {
    System,
    Patient,
    Group(String),
}

/// Members of a group (patient indices), or None when the group does not exist.
pub fn group_members(id: &str, n: usize) -> Option<Vec<usize>> {
    match id {
        "g1" => Some((0..n).collect()),
        "g2" => Some((0..n).step_by(2).collect()),
        _ => None,
    }
}

/// Which records an export (or a truth query) covers.
#[derive(Debug, Default)]
pub struct Selection {
    /// Selected patient indices, ascending.
    pub patients: Vec<usize>,
    /// Exported types, canonical order.
    pub types: Vec<usize>,
    /// Types reported by truth (requested, or all exportable at this level).
    pub requested: Vec<usize>,
    /// Exported patient-compartment / other types.
    pub ptypes: Vec<usize>,
    pub otypes: Vec<usize>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Per type: OR-list of AND-lists of (field, value).
    pub filters: Vec<Vec<Vec<(String, String)>>>,
    /// Per type: `_elements` to keep (None = whole resource).
    pub elements: Vec<Option<Vec<String>>>,
    /// What replaces [`data::FOREIGN_DOCS`] in DocumentReference / DiagnosticReport lines
    /// (JSON-escaped; empty: nothing does): `{store origin}{prefix}/binary/`.
    pub doc_store: String,
}

impl Selection {
    /// Points class-12 documents at the object store: `base` is its origin and the scenario
    /// prefix (`http://127.0.0.1:PORT2/x/polls=1`).
    pub fn set_doc_store(&mut self, base: &str) {
        self.doc_store = data::json_inner(&format!("{base}/binary/"));
    }

    pub fn time_ok(&self, t: usize, i: usize, j: usize) -> bool {
        if self.since.is_none() && self.until.is_none() {
            return true;
        }
        let lu = data::last_updated_ms(t, i, j);
        self.since.map_or(true, |s| lu > s) && self.until.map_or(true, |u| lu < u)
    }

    pub fn has_filter(&self, t: usize) -> bool {
        self.filters.get(t).is_some_and(|f| !f.is_empty())
    }

    pub fn filter_ok(&self, rec: &Record) -> bool {
        match self.filters.get(rec.t) {
            Some(fs) if !fs.is_empty() => fs.iter().any(|f| {
                f.iter().all(|(k, v)| {
                    // A comma-separated value matches any of its alternatives.
                    rec.scalar(k)
                        .is_some_and(|have| v.split(',').any(|alt| alt == have))
                })
            }),
            _ => true,
        }
    }
}

pub struct ExportRequest {
    pub sel: Selection,
    pub organize: bool,
    pub allow_partial: bool,
    /// Informational messages for things ignored under `handling=lenient`.
    pub ignored: Vec<String>,
}

const KNOWN: [&str; 10] = [
    "_outputFormat",
    "_since",
    "_until",
    "_type",
    "_elements",
    "patient",
    "includeAssociatedData",
    "_typeFilter",
    "organizeOutputBy",
    "allowPartialManifests",
];

fn split_list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Splits comma-joined `_typeFilter`s. A comma only starts a new filter when
/// followed by `Type?`, so `Observation?status=final,amended` stays whole
/// (FHIR search OR) whether or not the inner comma was escaped.
fn split_filters(v: &str) -> Vec<&str> {
    let starts_filter = |rest: &str| {
        rest.trim_start().split_once('?').is_some_and(|(t, _)| {
            t.starts_with(|c: char| c.is_ascii_uppercase())
                && t.chars().all(|c| c.is_ascii_alphanumeric())
        })
    };
    let mut out = Vec::new();
    let mut start = 0;
    for (i, _) in v.match_indices(',') {
        if starts_filter(&v[i + 1..]) {
            out.push(&v[start..i]);
            start = i + 1;
        }
    }
    out.push(&v[start..]);
    out.into_iter()
        .map(|s| s.trim().trim_matches(',').trim())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Parses a patient reference ("Patient/p3", absolute URL, or "p3") to an index.
pub fn patient_index(reference: &str, n: usize) -> Option<usize> {
    let r = reference.trim();
    let id = match r.rfind("Patient/") {
        Some(pos) => &r[pos + "Patient/".len()..],
        None if !r.contains('/') => r,
        None => return None,
    };
    let num = id.strip_prefix('p')?;
    if num.is_empty()
        || !num.bytes().all(|b| b.is_ascii_digit())
        || (num.len() > 1 && num.starts_with('0'))
    {
        return None;
    }
    num.parse::<usize>().ok().filter(|i| *i < n)
}

/// Parses kick-off parameters (query and/or Parameters body, already flattened
/// to pairs). Repeated parameters are comma-joined.
pub fn parse_export(
    level: &Level,
    pairs: &[(String, String)],
    is_post: bool,
    lenient: bool,
    n: usize,
) -> Result<ExportRequest, ApiError> {
    let members = match level {
        Level::Group(g) => group_members(g, n)
            .ok_or_else(|| ApiError::new(404, "not-found", format!("unknown Group/{g}")))?,
        _ => (0..n).collect(),
    };
    let mut vals: Vec<(&str, String)> = Vec::new();
    for (k, v) in pairs {
        match vals.iter_mut().find(|e| e.0 == k.as_str()) {
            Some(e) => {
                e.1.push(',');
                e.1.push_str(v);
            }
            None => vals.push((k.as_str(), v.clone())),
        }
    }
    let get = |name: &str| vals.iter().find(|e| e.0 == name).map(|e| e.1.as_str());
    let mut ignored = Vec::new();
    let mut reject = |err: ApiError, note: String| -> Result<(), ApiError> {
        if lenient {
            ignored.push(note);
            Ok(())
        } else {
            Err(err)
        }
    };

    for (k, _) in &vals {
        if !KNOWN.contains(k) {
            reject(
                ApiError::invalid(format!("unsupported parameter '{k}'")),
                format!("unsupported parameter '{k}' was ignored"),
            )?;
        }
    }
    if let Some(f) = get("_outputFormat") {
        if !matches!(
            f.trim(),
            "application/fhir+ndjson" | "application/ndjson" | "ndjson"
        ) {
            return Err(ApiError::invalid(format!(
                "unsupported _outputFormat '{f}'"
            )));
        }
    }
    let parse_time = |name: &str| -> Result<Option<i64>, ApiError> {
        match get(name) {
            None => Ok(None),
            Some(v) => parse_fhir_datetime(v).map(Some).ok_or_else(|| {
                ApiError::invalid(format!("{name} is not a valid FHIR instant: '{v}'"))
            }),
        }
    };
    let since = parse_time("_since")?;
    let until = parse_time("_until")?;

    let type_param = get("_type").filter(|v| !v.trim().is_empty());
    let mut types: Vec<usize> = Vec::new();
    match type_param {
        Some(v) => {
            for name in split_list(v) {
                match data::type_index(name) {
                    Some(t) => types.push(t),
                    None => reject(
                        ApiError::new(
                            422,
                            "not-supported",
                            format!("unsupported resource type '{name}' in _type"),
                        ),
                        format!("unsupported resource type '{name}' in _type was ignored"),
                    )?,
                }
            }
            types.sort_unstable();
            types.dedup();
        }
        None => {
            types = (0..TYPES.len()).collect();
            if *level != Level::System {
                types.truncate(data::N_PATIENT_TYPES);
            }
        }
    }

    let mut filters: Vec<Vec<Vec<(String, String)>>> = vec![Vec::new(); TYPES.len()];
    if let Some(v) = get("_typeFilter") {
        for entry in split_filters(v) {
            let Some((tname, query)) = entry.split_once('?') else {
                reject(
                    ApiError::invalid(format!(
                        "_typeFilter '{entry}' must look like Type?field=value"
                    )),
                    format!("malformed _typeFilter '{entry}' was ignored"),
                )?;
                continue;
            };
            let Some(t) = data::type_index(tname.trim()) else {
                reject(
                    ApiError::invalid(format!(
                        "unsupported resource type in _typeFilter '{entry}'"
                    )),
                    format!("_typeFilter '{entry}' for an unsupported type was ignored"),
                )?;
                continue;
            };
            if type_param.is_some() && !types.contains(&t) {
                reject(
                    ApiError::invalid(format!(
                        "_typeFilter '{entry}' names a type not listed in _type"
                    )),
                    format!("_typeFilter '{entry}' for a type not in _type was ignored"),
                )?;
                continue;
            }
            let conds: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
            let bad = conds.is_empty()
                || conds.iter().any(|(k, _)| {
                    k.is_empty() || k.starts_with('_') || k.contains(':') || k.contains('.')
                });
            if bad {
                reject(
                    ApiError::invalid(format!(
                        "_typeFilter '{entry}': only plain top-level field=value criteria are supported"
                    )),
                    format!("unsupported _typeFilter '{entry}' was ignored"),
                )?;
                continue;
            }
            filters[t].push(conds);
        }
    }

    let mut general: Vec<String> = Vec::new();
    let mut specific: Vec<Vec<String>> = vec![Vec::new(); TYPES.len()];
    if let Some(v) = get("_elements") {
        for e in split_list(v) {
            match e.split_once('.') {
                Some((tn, el)) => {
                    if let Some(t) = data::type_index(tn) {
                        specific[t].push(el.to_string());
                    }
                }
                None => general.push(e.to_string()),
            }
        }
    }
    let elements = (0..TYPES.len())
        .map(|t| {
            if general.is_empty() && specific[t].is_empty() {
                None
            } else {
                let mut all = general.clone();
                all.extend(specific[t].iter().cloned());
                Some(all)
            }
        })
        .collect();

    let mut patients = members;
    if let Some(v) = get("patient") {
        if !is_post {
            return Err(ApiError::invalid(
                "the patient parameter is only supported with POST",
            ));
        }
        if *level == Level::System {
            return Err(ApiError::invalid(
                "the patient parameter is only supported for Patient and Group level export",
            ));
        }
        let mut wanted = Vec::new();
        for r in split_list(v) {
            match patient_index(r, n) {
                Some(i) => wanted.push(i),
                None => {
                    return Err(ApiError::new(
                        400,
                        "not-found",
                        format!("unknown patient '{r}'"),
                    ))
                }
            }
        }
        wanted.sort_unstable();
        wanted.dedup();
        patients.retain(|i| wanted.binary_search(i).is_ok());
    }

    let organize = match get("organizeOutputBy").map(str::trim) {
        None | Some("") => false,
        Some("Patient") => true,
        Some(o) => {
            return Err(ApiError::new(
                400,
                "not-supported",
                format!("organizeOutputBy '{o}' is not supported (only Patient)"),
            ))
        }
    };
    let allow_partial = match get("allowPartialManifests").map(str::trim) {
        None | Some("false") => false,
        Some("true") => true,
        Some(o) => {
            return Err(ApiError::invalid(format!(
                "allowPartialManifests must be a boolean, got '{o}'"
            )))
        }
    };

    let requested = types.clone();
    if *level != Level::System {
        types.retain(|t| data::is_patient_type(*t));
    }
    let ptypes = types
        .iter()
        .copied()
        .filter(|t| data::is_patient_type(*t))
        .collect();
    let otypes = types
        .iter()
        .copied()
        .filter(|t| !data::is_patient_type(*t))
        .collect();
    Ok(ExportRequest {
        sel: Selection {
            patients,
            types,
            requested,
            ptypes,
            otypes,
            since,
            until,
            filters,
            elements,
            doc_store: String::new(),
        },
        organize,
        allow_partial,
        ignored,
    })
}

/// Parses a FHIR instant / dateTime (YYYY, YYYY-MM, YYYY-MM-DD, or full time with
/// zone) to epoch milliseconds. A space in place of '+' (from form decoding) is accepted.
pub fn parse_fhir_datetime(s: &str) -> Option<i64> {
    const DATE: &[BorrowedFormatItem<'_>] = format_description!("[year]-[month]-[day]");
    let s = s.trim();
    // Fixed widths leave no room for the sign `[year]` would take.
    let date = match s.len() {
        4 => Date::parse(&format!("{s}-01-01"), DATE),
        7 => Date::parse(&format!("{s}-01"), DATE),
        10 => Date::parse(s, DATE),
        _ => return parse_fhir_instant(s),
    };
    Some(date.ok()?.midnight().assume_utc().unix_timestamp() * 1000)
}

/// A full FHIR instant: RFC 3339 with FHIR's stricter rules checked first.
fn parse_fhir_instant(s: &str) -> Option<i64> {
    let mut b = s.as_bytes().to_vec();
    // RFC 3339 allows any date-time separator and a lowercase `z`; FHIR only `T` and `Z`.
    if b.get(10) != Some(&b'T') || b.last() == Some(&b'z') {
        return None;
    }
    if b.last() != Some(&b'Z') {
        // `±hh:mm`: FHIR offsets stay within 14 hours (RFC 3339: 23); form decoding turns
        // `+` into a space.
        let sign = b.len().checked_sub(6)?;
        let hours = b.get(sign + 1..sign + 3)?;
        if !hours.iter().all(u8::is_ascii_digit) || (hours[0] - b'0') * 10 + hours[1] - b'0' > 14 {
            return None;
        }
        if b[sign] == b' ' {
            b[sign] = b'+';
        }
    }
    // FHIR allows second 60 in any minute and counts it as the next minute's first second;
    // `time` takes it only at a real leap second.
    let leap = b.get(17..19) == Some(b"60");
    if leap {
        b[17..19].copy_from_slice(b"59");
    }
    let t = OffsetDateTime::parse(std::str::from_utf8(&b).ok()?, &Rfc3339).ok()?;
    let ms = i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).ok()?;
    Some(if leap { ms + 1000 } else { ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes() {
        let base = data::YEAR_START_MS;
        assert_eq!(parse_fhir_datetime("2024"), Some(base));
        assert_eq!(parse_fhir_datetime("2024-01"), Some(base));
        assert_eq!(parse_fhir_datetime("2024-01-01"), Some(base));
        assert_eq!(parse_fhir_datetime("2024-01-01T00:00:00Z"), Some(base));
        assert_eq!(
            parse_fhir_datetime("2024-01-01T01:00:00.5+01:00"),
            Some(base + 500)
        );
        assert_eq!(parse_fhir_datetime("2024-01-01T01:00:00 01:00"), Some(base));
        assert_eq!(parse_fhir_datetime("2023-12-31T23:00:00-01:00"), Some(base));
        for bad in [
            "",
            "yesterday",
            "2024-13",
            "2024-02-30",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00Z",
            "2024-01-01T00:00:00.Z",
            "２０２４",
        ] {
            assert_eq!(parse_fhir_datetime(bad), None, "{bad}");
        }
    }

    #[test]
    fn datetimes_keep_fhir_rules() {
        let base = data::YEAR_START_MS;
        assert_eq!(
            parse_fhir_datetime("2024-01-01T00:00:60Z"),
            Some(base + 60_000)
        );
        assert_eq!(parse_fhir_datetime("2024-01-01T14:59:00+14:59"), Some(base));
        assert_eq!(parse_fhir_datetime("1969-12-31T23:59:59.9999Z"), Some(-1));
        for bad in [
            "2024-01-01t00:00:00Z",
            "2024-01-01 00:00:00Z",
            "2024-01-01T00:00:00z",
            "2024-01-01T00:00:00+15:00",
            "+2024",
            "-2024-01",
            "2024-01-01T24:00:00Z",
        ] {
            assert_eq!(parse_fhir_datetime(bad), None, "{bad}");
        }
    }

    #[test]
    fn type_filter_split() {
        assert_eq!(
            split_filters("Observation?status=final,amended,Patient?gender=female, Condition?x=1"),
            [
                "Observation?status=final,amended",
                "Patient?gender=female",
                "Condition?x=1"
            ]
        );
        assert_eq!(
            split_filters(",Patient?gender=male"),
            ["Patient?gender=male"]
        );
        assert!(split_filters(" , ").is_empty());
    }

    #[test]
    fn patient_refs() {
        assert_eq!(patient_index("Patient/p3", 10), Some(3));
        assert_eq!(patient_index("http://x/fhir/Patient/p9", 10), Some(9));
        assert_eq!(patient_index("p0", 10), Some(0));
        assert_eq!(patient_index("Patient/p10", 10), None);
        assert_eq!(patient_index("Patient/p01", 10), None);
        assert_eq!(patient_index("Group/p1", 10), None);
    }
}
