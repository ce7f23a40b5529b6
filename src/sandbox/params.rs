//! Kick-off parameter parsing and the record selection it produces.

use super::data::{self, Record, DAY_MS, TYPES};

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
}

impl Selection {
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
        },
        organize,
        allow_partial,
        ignored,
    })
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses a FHIR instant / dateTime (YYYY, YYYY-MM, YYYY-MM-DD, or full time with
/// zone) to epoch milliseconds. A space in place of '+' (from form decoding) is accepted.
pub fn parse_fhir_datetime(s: &str) -> Option<i64> {
    let b = s.trim().as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(part.iter().fold(0i64, |a, c| a * 10 + i64::from(c - b'0')))
    };
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    let y = num(0, 4)?;
    if b.len() == 4 {
        return Some(data::days_from_civil(y, 1, 1) * DAY_MS);
    }
    if !at(4, b'-') {
        return None;
    }
    let mo = num(5, 2)?;
    if !(1..=12).contains(&mo) {
        return None;
    }
    if b.len() == 7 {
        return Some(data::days_from_civil(y, mo as u32, 1) * DAY_MS);
    }
    if !at(7, b'-') {
        return None;
    }
    let d = num(8, 2)?;
    if d < 1 || d > days_in_month(y, mo) {
        return None;
    }
    let day_ms = data::days_from_civil(y, mo as u32, d as u32) * DAY_MS;
    if b.len() == 10 {
        return Some(day_ms);
    }
    if !at(10, b'T') || !at(13, b':') || !at(16, b':') {
        return None;
    }
    let (hh, mm, ss) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let mut idx = 19;
    let mut frac = 0i64;
    if at(idx, b'.') {
        idx += 1;
        let start = idx;
        while b.get(idx).is_some_and(u8::is_ascii_digit) {
            if idx - start < 3 {
                frac = frac * 10 + i64::from(b[idx] - b'0');
            }
            idx += 1;
        }
        let digits = idx - start;
        if digits == 0 {
            return None;
        }
        for _ in digits..3 {
            frac *= 10;
        }
    }
    let tz = b.get(idx..)?;
    let offset_min = if tz == b"Z" {
        0
    } else if tz.len() == 6 && tz[3] == b':' {
        let sign = match tz[0] {
            b'+' | b' ' => 1,
            b'-' => -1,
            _ => return None,
        };
        let oh = num(idx + 1, 2)?;
        let om = num(idx + 4, 2)?;
        if oh > 14 || om > 59 {
            return None;
        }
        sign * (oh * 60 + om)
    } else {
        return None;
    };
    Some(day_ms + hh * 3_600_000 + mm * 60_000 + ss * 1000 + frac - offset_min * 60_000)
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
