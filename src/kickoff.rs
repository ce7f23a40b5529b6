//! The kick-off request: the URL for the export's level, its parameters (a query for GET, a
//! `Parameters` resource for POST) and the `202 Accepted` that gives the status URL.

use crate::config::{Config, Level, Method};
use crate::error::{stopped, Error, Result};
use crate::http::retry::{self, Attempt, Budget};
use crate::http::{Http, HttpResponse, ERROR_BODY_LIMIT};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde_json::{json, Value};
use std::time::Duration;

/// Everything but RFC 3986 unreserved characters is percent-encoded.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn pct(s: &str) -> String {
    utf8_percent_encode(s, UNRESERVED).to_string()
}

/// The kick-off URL for the configured level.
pub fn kickoff_url(c: &Config) -> String {
    let base = c.base_url.trim_end_matches('/');
    match c.level {
        Level::System => format!("{base}/$export"),
        Level::Patient => format!("{base}/Patient/$export"),
        Level::Group => format!(
            "{base}/Group/{}/$export",
            pct(c.group_id.as_deref().unwrap_or(""))
        ),
    }
}

fn patient_reference(p: &str) -> String {
    if p.contains('/') {
        p.to_owned()
    } else {
        format!("Patient/{p}")
    }
}

/// The kick-off query string (GET). Lists go comma-joined, each value percent-encoded, so inner
/// commas of a `_typeFilter` query arrive as `%2C` and only the separators are literal.
pub fn kickoff_query(c: &Config) -> String {
    let mut q: Vec<String> = Vec::new();
    let mut one = |k: &str, v: &str| q.push(format!("{k}={}", pct(v)));
    if let Some(f) = &c.output_format {
        one("_outputFormat", f);
    }
    if let Some(s) = &c.since {
        one("_since", s);
    }
    if let Some(u) = &c.until {
        one("_until", u);
    }
    if let Some(o) = &c.organize_output_by {
        one("organizeOutputBy", o);
    }
    if c.allow_partial_manifests {
        one("allowPartialManifests", "true");
    }
    for (k, list) in [
        ("_type", &c.types),
        ("_elements", &c.elements),
        ("_typeFilter", &c.type_filters),
        ("includeAssociatedData", &c.include_associated_data),
    ] {
        if !list.is_empty() {
            let joined: Vec<String> = list.iter().map(|v| pct(v)).collect();
            q.push(format!("{k}={}", joined.join(",")));
        }
    }
    // Vendor parameters (config `params`), each value percent-encoded, a list repeated.
    for (name, values) in &c.params {
        for v in values.values() {
            q.push(format!("{}={}", pct(name), pct(v)));
        }
    }
    q.join("&")
}

/// The kick-off `Parameters` body (POST).
pub fn kickoff_parameters(c: &Config) -> Value {
    let mut p: Vec<Value> = Vec::new();
    if let Some(f) = &c.output_format {
        p.push(json!({"name": "_outputFormat", "valueString": f}));
    }
    if let Some(s) = &c.since {
        p.push(json!({"name": "_since", "valueInstant": s}));
    }
    if let Some(u) = &c.until {
        p.push(json!({"name": "_until", "valueInstant": u}));
    }
    if !c.types.is_empty() {
        p.push(json!({"name": "_type", "valueString": c.types.join(",")}));
    }
    if !c.elements.is_empty() {
        p.push(json!({"name": "_elements", "valueString": c.elements.join(",")}));
    }
    for f in &c.type_filters {
        p.push(json!({"name": "_typeFilter", "valueString": f}));
    }
    for v in &c.include_associated_data {
        p.push(json!({"name": "includeAssociatedData", "valueCode": v}));
    }
    if let Some(o) = &c.organize_output_by {
        p.push(json!({"name": "organizeOutputBy", "valueString": o}));
    }
    if c.allow_partial_manifests {
        p.push(json!({"name": "allowPartialManifests", "valueBoolean": true}));
    }
    for pt in &c.patients {
        p.push(json!({"name": "patient", "valueReference": {"reference": patient_reference(pt)}}));
    }
    for (name, values) in &c.params {
        for v in values.values() {
            p.push(json!({"name": name, "valueString": v}));
        }
    }
    json!({"resourceType": "Parameters", "parameter": p})
}

/// What one kick-off attempt found.
pub(crate) enum Kicked {
    /// The status URL.
    Status(String),
    /// The server refused the job for now (429, 5xx): try again after `wait`.
    Again { wait: Duration, reason: String },
}

/// Send the kick-off request once: the status URL, or how long to wait before asking again
/// (the wait is the caller's, so that it holds no thread). `budget`: the retry budget of the
/// kick-off, carried from one attempt to the next.
pub(crate) fn kickoff(http: &Http, budget: &mut Option<Box<Budget>>) -> Result<Kicked> {
    const WHAT: &str = "export kick-off";
    if http.stopping() {
        return Err(stopped());
    }
    let c = &*http.config;
    let post = c.method == Method::Post || (c.method == Method::Auto && !c.patients.is_empty());
    let mut url = kickoff_url(c);
    let mut prefer = String::from("respond-async");
    if c.separate_export_status {
        prefer.push_str(",separate-export-status");
    }
    if c.lenient {
        prefer.push_str(", handling=lenient");
    }
    let body = post.then(|| kickoff_parameters(c).to_string());
    if !post {
        let q = kickoff_query(c);
        if !q.is_empty() {
            url = format!("{url}?{q}");
        }
    }
    let build = |u: &str| {
        let rb = match &body {
            Some(b) => http
                .client
                .post(u)
                .header(CONTENT_TYPE, "application/fhir+json")
                .body(b.clone()),
            None => http.client.get(u),
        };
        rb.header(ACCEPT, "application/fhir+json")
            .header("Prefer", prefer.as_str())
            .timeout(Duration::from_millis(c.request_timeout_ms))
    };
    let hint = |mut e: Error| {
        if e.http_status == Some(429) {
            e.message.push_str(KICKOFF_429_HINT);
        }
        e
    };
    // A 429 or 5xx means the server refused the job: asking again is safe (with Retry-After and
    // the retry budget). A broken connection is not retried: the job may have started.
    let refused = |s: u16| s == 429 || s >= 500;
    let sent = http.send(WHAT, &url, true, &build);
    let resp = match retry::classify(WHAT, &url, sent, &|s| !refused(s), false) {
        Attempt::Done(r) => r,
        Attempt::Fail(e) => return Err(hint(e)),
        Attempt::Retry(e, after) => {
            let b = budget.get_or_insert_with(|| Box::new(http.policy.budget()));
            let (wait, reason) = b.delay(http.waiter(), e, after.as_ref()).map_err(hint)?;
            return Ok(Kicked::Again { wait, reason });
        }
    };
    let status = resp.status().as_u16();
    if status == 202 {
        let loc = resp
            .headers()
            .get("content-location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| {
                Error::protocol("export kick-off answered 202 without a Content-Location header")
                    .with_url(&url)
            })?;
        let abs = url::Url::parse(&url)
            .and_then(|u| u.join(&loc))
            .map_err(|e| {
                Error::protocol(format!(
                    "export kick-off gave an invalid Content-Location: {e}"
                ))
                .with_url(&url)
            })?;
        http.waiter().event(
            "kickoff",
            crate::events::fields! {
                "method" => if post { "POST" } else { "GET" },
                "url" => crate::error::redact_url(&url),
                "http_status" => status,
                "status_url" => crate::error::redact_url(abs.as_str()),
            },
        );
        return Ok(Kicked::Status(abs.to_string()));
    }
    if (200..300).contains(&status) {
        return Err(Error::protocol(format!(
            "export kick-off answered HTTP {status}; a bulk data server answers 202 Accepted"
        ))
        .with_url(&url));
    }
    let body = resp.error_body(ERROR_BODY_LIMIT);
    Err(Error::from_response("export kick-off", status, &url, &body))
}

const KICKOFF_429_HINT: &str = " (servers answer 429 to a kick-off when an export of this client \
     is already running: wait for it to finish or cancel it with DELETE on its status URL)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_queries_are_percent_encoded_value_by_value() {
        let mut c = Config::new("http://h/fhir/");
        c.level = Level::Group;
        c.group_id = Some("a b/ü".into());
        assert_eq!(
            kickoff_url(&c),
            "http://h/fhir/Group/a%20b%2F%C3%BC/$export"
        );
        c.types = vec!["Patient".into(), "Observation".into()];
        c.type_filters = vec!["Observation?code=a,b&status=final".into()];
        c.since = Some("2024-01-01T00:00:00+02:00".into());
        assert_eq!(
            kickoff_query(&c),
            "_since=2024-01-01T00%3A00%3A00%2B02%3A00&_type=Patient,Observation\
             &_typeFilter=Observation%3Fcode%3Da%2Cb%26status%3Dfinal"
        );
        c.level = Level::System;
        assert_eq!(kickoff_url(&c), "http://h/fhir/$export");
    }

    #[test]
    fn parameters_name_patients_as_references() {
        let mut c = Config::new("http://h/fhir");
        c.patients = vec!["p1".into(), "Patient/p2".into()];
        let p = kickoff_parameters(&c);
        let refs: Vec<&str> = p["parameter"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|x| x["valueReference"]["reference"].as_str())
            .collect();
        assert_eq!(refs, ["Patient/p1", "Patient/p2"]);
    }
}
