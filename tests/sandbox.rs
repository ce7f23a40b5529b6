//! The sandbox Bulk Data server, exercised over real HTTP with reqwest.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read};

use fhirbulk::sandbox::{Sandbox, SandboxAuth, SandboxClient, SandboxOptions, TruthQuery};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{json, Value};

const FHIR: &str = "application/fhir+json";

/// reqwest is built without its `json` feature.
trait JsonBody {
    fn json<T: serde::de::DeserializeOwned>(self) -> Result<T, String>;
}

impl JsonBody for Response {
    fn json<T: serde::de::DeserializeOwned>(self) -> Result<T, String> {
        let bytes = self.bytes().map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    }
}

fn sandbox(patients: usize, per_file: usize) -> Sandbox {
    Sandbox::start(SandboxOptions {
        patients,
        records_per_file: per_file,
        threads: 4,
        ..SandboxOptions::default()
    })
    .expect("sandbox starts")
}

fn client() -> Client {
    Client::builder().no_gzip().build().expect("client")
}

fn bulk(rb: RequestBuilder) -> RequestBuilder {
    rb.header("Accept", FHIR).header("Prefer", "respond-async")
}

fn kickoff(c: &Client, url: &str) -> Response {
    bulk(c.get(url)).send().expect("kick-off")
}

fn post_kickoff(c: &Client, url: &str, params: Value) -> Response {
    bulk(c.post(url))
        .header("Content-Type", FHIR)
        .body(json!({"resourceType": "Parameters", "parameter": params}).to_string())
        .send()
        .expect("kick-off")
}

fn location(r: &Response) -> String {
    assert_eq!(r.status().as_u16(), 202, "kick-off accepted");
    r.headers()["content-location"]
        .to_str()
        .expect("ascii")
        .to_string()
}

fn header(r: &Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

/// Polls until the final manifest (no waiting: tests use few polls).
fn manifest(c: &Client, status_url: &str) -> Value {
    for _ in 0..20 {
        let r = c.get(status_url).send().expect("poll");
        match r.status().as_u16() {
            202 => continue,
            200 => return r.json().expect("manifest json"),
            s => panic!("unexpected status {s}: {}", r.text().unwrap_or_default()),
        }
    }
    panic!("job never completed");
}

fn lines(c: &Client, url: &str) -> Vec<Value> {
    let r = c.get(url).send().expect("download");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("application/fhir+ndjson")
    );
    let body = r.text().expect("body");
    assert!(body.is_empty() || body.ends_with('\n'));
    body.lines()
        .map(|l| serde_json::from_str(l).expect("line is JSON"))
        .collect()
}

fn outcome(r: Response) -> (u16, String) {
    let status = r.status().as_u16();
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some(FHIR),
        "OperationOutcome content type"
    );
    let v: Value = r.json().expect("OperationOutcome json");
    assert_eq!(v["resourceType"], "OperationOutcome");
    (
        status,
        v["issue"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// Downloads every output file; checks per-file counts; returns counts per type.
fn download_all(c: &Client, m: &Value, per_file: u64) -> BTreeMap<String, u64> {
    let mut per_type = BTreeMap::new();
    for o in m["output"].as_array().expect("output") {
        let recs = lines(c, o["url"].as_str().expect("url"));
        assert_eq!(recs.len() as u64, o["count"].as_u64().expect("count"));
        assert!(recs.len() as u64 <= per_file);
        for r in recs {
            assert_eq!(r["resourceType"], o["type"]);
            *per_type
                .entry(o["type"].as_str().unwrap_or_default().to_string())
                .or_insert(0) += 1;
        }
    }
    per_type
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn group_export_matches_truth() {
    let sb = sandbox(23, 7);
    let c = client();
    let types = ["Patient", "Observation", "Condition"];
    let url = format!(
        "{}/Group/g1/$export?_type={}",
        sb.scenario_url("polls=0"),
        types.join(",")
    );
    let m = manifest(&c, &location(&kickoff(&c, &url)));
    assert_eq!(m["request"], url);
    assert_eq!(m["requiresAccessToken"], false);
    assert!(m["transactionTime"].as_str().is_some());
    let got = download_all(&c, &m, 7);
    let truth = sb.truth(&TruthQuery {
        level: "group".into(),
        group: Some("g1".into()),
        types: strs(&types),
        ..TruthQuery::default()
    });
    assert_eq!(got, truth);
    assert_eq!(truth["Patient"], 23);

    // Files are chunked by default.
    let first = m["output"][0]["url"].as_str().expect("url");
    let r = c.get(first).send().expect("download");
    assert!(r.content_length().is_none() || header(&r, "transfer-encoding").is_some());

    // POST with patient, _since and _typeFilter; g2 holds even patients only.
    let since = "2024-04-01T00:00:00+00:00";
    let r = post_kickoff(
        &c,
        &format!("{}/Group/g2/$export", sb.scenario_url("polls=0")),
        json!([
            {"name": "_type", "valueString": "Observation,Patient"},
            {"name": "_since", "valueInstant": since},
            {"name": "_typeFilter", "valueString": "Observation?status=final"},
            {"name": "patient", "valueReference": {"reference": "Patient/p1"}},
            {"name": "patient", "valueReference": {"reference": "Patient/p2"}},
            {"name": "patient", "valueReference": {"reference": "Patient/p4"}},
        ]),
    );
    let m = manifest(&c, &location(&r));
    let got = download_all(&c, &m, 7);
    let q = TruthQuery {
        level: "group".into(),
        group: Some("g2".into()),
        types: strs(&["Patient", "Observation"]),
        since: Some(since.into()),
        type_filters: strs(&["Observation?status=final"]),
        patients: strs(&["Patient/p1", "Patient/p2", "Patient/p4"]),
        ..TruthQuery::default()
    };
    let truth = sb.truth(&q);
    let nonzero: BTreeMap<_, _> = truth.clone().into_iter().filter(|(_, n)| *n > 0).collect();
    assert_eq!(got, nonzero);
    assert!(truth["Patient"] <= 2, "only p2 and p4 are in g2");
    for o in m["output"].as_array().expect("output") {
        for r in lines(&c, o["url"].as_str().expect("url")) {
            assert!(r["meta"]["lastUpdated"].as_str().expect("lastUpdated") > "2024-04-01");
            if r["resourceType"] == "Observation" {
                assert_eq!(r["status"], "final");
                assert!(["Patient/p2", "Patient/p4"]
                    .contains(&r["subject"]["reference"].as_str().unwrap_or("")));
            }
        }
    }

    // The HTTP truth endpoint agrees.
    let t: BTreeMap<String, u64> = c
        .get(format!(
            "{}/_sandbox/truth?level=group&group=g2&_type=Patient,Observation&_since={}&_typeFilter={}&patient=Patient/p1,Patient/p2,Patient/p4",
            sb.root_url(),
            "2024-04-01T00:00:00%2B00:00",
            "Observation%3Fstatus%3Dfinal"
        ))
        .send()
        .expect("truth")
        .json()
        .expect("json");
    assert_eq!(t, truth);

    // Comma-joined filters; an escaped inner comma means "any of" (FHIR search OR).
    let url = format!(
        "{}/Patient/$export?_type=Patient,Observation&_typeFilter={},{}",
        sb.scenario_url("polls=0"),
        "Observation%3Fstatus%3Dfinal%2Camended",
        "Patient%3Fgender%3Dfemale"
    );
    let m = manifest(&c, &location(&kickoff(&c, &url)));
    let got = download_all(&c, &m, 7);
    let truth = sb.truth(&TruthQuery {
        level: "patient".into(),
        types: strs(&["Patient", "Observation"]),
        type_filters: strs(&["Observation?status=final,amended", "Patient?gender=female"]),
        ..TruthQuery::default()
    });
    assert_eq!(got, truth);
    let all = sb.truth(&TruthQuery {
        level: "patient".into(),
        ..TruthQuery::default()
    });
    assert_eq!(truth["Observation"], all["Observation"]);
    assert!(truth["Patient"] < all["Patient"] && truth["Patient"] > 0);

    // System level includes the non-patient types.
    let sys = sb.truth(&TruthQuery::default());
    assert_eq!(sys["Organization"], 3);
    assert_eq!(sys["Practitioner"], 5);
    assert_eq!(sys.len(), 12);
}

/// The patient-compartment types added for issue 18 follow `_type`, `_since`, `_typeFilter`,
/// `_elements`, `patient`, groups and organized output like the first ones.
#[test]
fn every_type_follows_the_kick_off_parameters() {
    let sb = sandbox(30, 9);
    let c = client();
    let added = [
        "DiagnosticReport",
        "DocumentReference",
        "Procedure",
        "Immunization",
        "AllergyIntolerance",
    ];
    // Without _type: every type, at every level.
    let m = manifest(
        &c,
        &location(&kickoff(
            &c,
            &format!("{}/$export", sb.scenario_url("polls=0")),
        )),
    );
    let got = download_all(&c, &m, 9);
    assert_eq!(got, sb.truth(&TruthQuery::default()));
    assert_eq!(got.len(), 12);
    let m = manifest(
        &c,
        &location(&kickoff(
            &c,
            &format!("{}/Patient/$export", sb.scenario_url("polls=0")),
        )),
    );
    let got = download_all(&c, &m, 9);
    let truth = sb.truth(&TruthQuery {
        level: "patient".into(),
        ..TruthQuery::default()
    });
    assert_eq!(got, truth);
    assert_eq!(got.len(), 10);
    for t in added {
        assert!(got[t] > 0, "{t}");
    }

    // g2, three patients, _since and filters on scalar elements of the new types.
    let since = "2024-03-01T00:00:00+00:00";
    let r = post_kickoff(
        &c,
        &format!("{}/Group/g2/$export", sb.scenario_url("polls=0")),
        json!([
            {"name": "_type", "valueString": added.join(",")},
            {"name": "_since", "valueInstant": since},
            {"name": "_typeFilter", "valueString": "Immunization?status=completed"},
            {"name": "_typeFilter", "valueString": "AllergyIntolerance?criticality=high,low"},
            {"name": "_typeFilter", "valueString": "DiagnosticReport?status=final"},
            {"name": "patient", "valueReference": {"reference": "Patient/p2"}},
            {"name": "patient", "valueReference": {"reference": "Patient/p3"}},
            {"name": "patient", "valueReference": {"reference": "Patient/p7"}},
            {"name": "patient", "valueReference": {"reference": "Patient/p10"}},
        ]),
    );
    let m = manifest(&c, &location(&r));
    let got = download_all(&c, &m, 9);
    let truth = sb.truth(&TruthQuery {
        level: "group".into(),
        group: Some("g2".into()),
        types: strs(&added),
        since: Some(since.into()),
        type_filters: strs(&[
            "Immunization?status=completed",
            "AllergyIntolerance?criticality=high,low",
            "DiagnosticReport?status=final",
        ]),
        patients: strs(&["Patient/p2", "Patient/p3", "Patient/p7", "Patient/p10"]),
        ..TruthQuery::default()
    });
    let nonzero: BTreeMap<_, _> = truth.into_iter().filter(|(_, n)| *n > 0).collect();
    assert_eq!(got, nonzero);
    assert!(!got.is_empty());
    for o in m["output"].as_array().expect("output") {
        for r in lines(&c, o["url"].as_str().expect("url")) {
            assert!(r["meta"]["lastUpdated"].as_str().expect("lastUpdated") > "2024-03-01");
            let owner = r["subject"]["reference"]
                .as_str()
                .or(r["patient"]["reference"].as_str());
            assert!(
                ["Patient/p2", "Patient/p10"].contains(&owner.unwrap_or_default()),
                "only p2 and p10 are in g2: {r}"
            );
            match r["resourceType"].as_str() {
                Some("Immunization") => assert_eq!(r["status"], "completed"),
                Some("DiagnosticReport") => assert_eq!(r["status"], "final"),
                Some("AllergyIntolerance") => {
                    assert!(r["criticality"] == "high" || r["criticality"] == "low")
                }
                _ => {}
            }
        }
    }

    // _elements: the listed elements of each type, tagged SUBSETTED.
    let url = format!(
        "{}/Patient/$export?_type=Immunization,Procedure&_elements=Immunization.status,patient,Procedure.code",
        sb.scenario_url("polls=0")
    );
    let m = manifest(&c, &location(&kickoff(&c, &url)));
    for o in m["output"].as_array().expect("output") {
        for r in lines(&c, o["url"].as_str().expect("url")) {
            let mut keys: Vec<&String> = r.as_object().expect("object").keys().collect();
            keys.sort();
            match r["resourceType"].as_str() {
                Some("Immunization") => {
                    assert_eq!(keys, ["id", "meta", "patient", "resourceType", "status"])
                }
                _ => assert_eq!(keys, ["code", "id", "meta", "resourceType"]),
            }
            assert_eq!(r["meta"]["tag"][0]["code"], "SUBSETTED");
        }
    }

    // Organized by patient: each resource in its patient's block.
    let url = format!(
        "{}/Group/g1/$export?_type=Patient,{}&organizeOutputBy=Patient",
        sb.scenario_url("polls=0"),
        added.join(",")
    );
    let m = manifest(&c, &location(&kickoff(&c, &url)));
    let mut current = None;
    let mut resources = 0;
    for o in m["output"].as_array().expect("output") {
        for r in lines(&c, o["url"].as_str().expect("url")) {
            if r["resourceType"] == "Parameters" {
                current = r["parameter"][0]["valueReference"]["reference"]
                    .as_str()
                    .map(String::from);
                continue;
            }
            resources += 1;
            let owner = match r["resourceType"].as_str() {
                Some("Patient") => format!("Patient/{}", r["id"].as_str().unwrap_or_default()),
                _ => r["subject"]["reference"]
                    .as_str()
                    .or(r["patient"]["reference"].as_str())
                    .unwrap_or_default()
                    .to_string(),
            };
            assert_eq!(Some(owner), current);
        }
    }
    let mut types = vec!["Patient"];
    types.extend(added);
    let truth = sb.truth(&TruthQuery {
        level: "group".into(),
        group: Some("g1".into()),
        types: strs(&types),
        ..TruthQuery::default()
    });
    assert_eq!(resources, truth.values().sum::<u64>());
}

#[test]
fn kickoff_errors() {
    let sb = sandbox(5, 100);
    let c = client();
    let base = sb.base_url();
    let g1 = format!("{base}/Group/g1/$export");

    assert_eq!(
        outcome(kickoff(&c, &format!("{base}/Group/nope/$export"))),
        (404, "not-found".into())
    );
    let r = c
        .get(&g1)
        .header("Accept", "text/html")
        .header("Prefer", "respond-async")
        .send();
    assert_eq!(outcome(r.expect("send")), (406, "not-supported".into()));
    let r = c.get(&g1).header("Accept", FHIR).send();
    assert_eq!(outcome(r.expect("send")).0, 400);
    assert_eq!(
        outcome(kickoff(&c, &format!("{g1}?_type=Patient,Spaceship"))),
        (422, "not-supported".into())
    );
    assert_eq!(outcome(kickoff(&c, &format!("{g1}?_bogus=1"))).0, 400);
    assert_eq!(
        outcome(kickoff(&c, &format!("{g1}?_since=yesterday"))).0,
        400
    );
    assert_eq!(
        outcome(kickoff(&c, &format!("{g1}?_outputFormat=text/csv"))).0,
        400
    );
    assert_eq!(
        outcome(kickoff(&c, &format!("{g1}?patient=Patient/p1"))).0,
        400
    );
    assert_eq!(
        outcome(kickoff(
            &c,
            &format!("{g1}?_type=Patient&_typeFilter=Observation%3Fstatus%3Dfinal")
        ))
        .0,
        400
    );
    assert_eq!(
        outcome(kickoff(&c, &format!("{g1}?organizeOutputBy=Encounter"))).0,
        400
    );
    let r = bulk(c.post(&g1))
        .header("Content-Type", "text/plain")
        .body("x")
        .send();
    assert_eq!(outcome(r.expect("send")).0, 415);
    let r = bulk(c.post(&g1))
        .header("Content-Type", FHIR)
        .body("{not json")
        .send();
    assert_eq!(outcome(r.expect("send")).0, 400);
    let r = post_kickoff(
        &c,
        &g1,
        json!([{"name": "patient", "valueReference": {"reference": "Patient/p99"}}]),
    );
    assert_eq!(outcome(r), (400, "not-found".into()));
    let r = kickoff(
        &c,
        &format!("{}/Group/g1/$export", sb.scenario_url("nonsense=1")),
    );
    assert_eq!(outcome(r).0, 400);

    // Forced kick-off failures.
    let r = kickoff(
        &c,
        &format!("{}/Group/g1/$export", sb.scenario_url("kickoff=429")),
    );
    assert_eq!(header(&r, "retry-after").as_deref(), Some("1"));
    assert_eq!(outcome(r), (429, "throttled".into()));
    let r = kickoff(&c, &format!("{}/$export", sb.scenario_url("kickoff=503")));
    assert_eq!(outcome(r).0, 503);

    // Lenient handling: ignored things are reported in an error file.
    let r = bulk(c.get(format!(
        "{}/Group/g1/$export?_type=Patient,Spaceship&_bogus=1",
        sb.scenario_url("polls=0")
    )))
    .header("Prefer", "respond-async, handling=lenient")
    .send()
    .expect("send");
    let m = manifest(&c, &location(&r));
    assert_eq!(m["output"].as_array().map(Vec::len), Some(1));
    assert_eq!(m["output"][0]["type"], "Patient");
    assert_eq!(m["error"][0]["type"], "OperationOutcome");
    let infos = lines(&c, m["error"][0]["url"].as_str().expect("url"));
    assert_eq!(infos.len(), 2);
    assert!(infos
        .iter()
        .all(|i| i["issue"][0]["severity"] == "information"));

    // Metadata.
    let cs: Value = c
        .get(format!("{base}/metadata"))
        .send()
        .expect("metadata")
        .json()
        .expect("json");
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    // Every type the sandbox exports is listed, and the three export operations.
    let listed: Vec<&str> = cs["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    for t in fhirbulk::sandbox::TYPES {
        assert!(listed.contains(&t), "{t} is not in the CapabilityStatement");
    }
    let op_of = |t: &str| {
        cs["rest"][0]["resource"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["type"] == t)
            .and_then(|r| r["operation"][0]["definition"].as_str())
            .map(str::to_owned)
    };
    assert!(op_of("Patient").unwrap().ends_with("/patient-export"));
    assert!(op_of("Group").unwrap().ends_with("/group-export"));
    assert!(cs["rest"][0]["operation"][0]["definition"]
        .as_str()
        .unwrap()
        .ends_with("/export"));
}

#[test]
fn status_polling_failures_and_delete() {
    let sb = sandbox(4, 100);
    let c = client();
    let loc = location(&kickoff(&c, &format!("{}/Patient/$export", sb.base_url())));
    let r = c.get(&loc).send().expect("poll");
    assert_eq!(r.status().as_u16(), 202);
    assert_eq!(header(&r, "x-progress").as_deref(), Some("Processing: 50%"));
    assert_eq!(header(&r, "retry-after").as_deref(), Some("1"));
    let r = c.get(&loc).send().expect("poll");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("application/json")
    );
    let m: Value = r.json().expect("manifest");
    let file = m["output"][0]["url"].as_str().expect("url").to_string();
    assert_eq!(
        c.delete(&loc).send().expect("delete").status().as_u16(),
        202
    );
    assert_eq!(
        outcome(c.get(&loc).send().expect("poll")),
        (404, "not-found".into())
    );
    assert_eq!(c.get(&file).send().expect("file").status().as_u16(), 404);
    assert_eq!(
        c.delete(&loc).send().expect("delete").status().as_u16(),
        404
    );

    // transient, then throttled, then done.
    let loc = location(&kickoff(
        &c,
        &format!(
            "{}/$export",
            sb.scenario_url("polls=0;transient=1;throttle=1")
        ),
    ));
    assert_eq!(
        outcome(c.get(&loc).send().expect("poll")),
        (500, "transient".into())
    );
    let r = c.get(&loc).send().expect("poll");
    assert_eq!(header(&r, "retry-after").as_deref(), Some("1"));
    assert_eq!(outcome(r).0, 429);
    assert_eq!(c.get(&loc).send().expect("poll").status().as_u16(), 200);

    // A failing job, with separate-export-status.
    let r = c
        .get(format!(
            "{}/$export",
            sb.scenario_url("polls=1;poll=500;retry_after=none")
        ))
        .header("Accept", FHIR)
        .header("Prefer", "respond-async, separate-export-status")
        .send()
        .expect("kick-off");
    let loc = location(&r);
    let r = c.get(&loc).send().expect("poll");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(header(&r, "x-export-status").as_deref(), Some("202"));
    assert!(header(&r, "retry-after").is_none());
    let r = c.get(&loc).send().expect("poll");
    assert_eq!(header(&r, "x-export-status").as_deref(), Some("500"));
    assert_eq!(outcome(r), (200, "exception".into()));

    // Protocol-error scenarios.
    let loc = location(&kickoff(
        &c,
        &format!("{}/$export", sb.scenario_url("polls=0;bad_manifest")),
    ));
    assert_eq!(
        c.get(&loc).send().expect("poll").text().expect("body"),
        "{not json"
    );
    let loc = location(&kickoff(
        &c,
        &format!("{}/$export", sb.scenario_url("polls=0;status_ct=text/html")),
    ));
    let r = c.get(&loc).send().expect("poll");
    assert_eq!(header(&r, "content-type").as_deref(), Some("text/html"));
}

/// Follows `next` links from a manifest (at most `max` pages): the output URLs of every page
/// and the number of pages.
fn follow_pages(c: &Client, first: Value, size: usize, max: usize) -> (Vec<String>, usize) {
    let mut page = first;
    let mut urls = Vec::new();
    let mut pages = 1;
    loop {
        let out = page["output"].as_array().expect("output");
        assert!(
            out.len() <= size,
            "{} entries on a page of {size}",
            out.len()
        );
        urls.extend(
            out.iter()
                .map(|o| o["url"].as_str().unwrap_or_default().to_string()),
        );
        let Some(next) = page["link"][0]["url"].as_str().map(String::from) else {
            break;
        };
        assert_eq!(page["link"][0]["relation"], "next");
        if pages == max {
            break;
        }
        let r = c.get(&next).send().expect("page");
        assert_eq!(r.status().as_u16(), 200, "{next}");
        page = r.json().expect("page json");
        pages += 1;
    }
    (urls, pages)
}

#[test]
fn partial_and_paged_manifests() {
    let sb = sandbox(20, 4);
    let c = client();
    let url = format!(
        "{}/Group/g1/$export?_type=Patient,Observation&allowPartialManifests=true",
        sb.scenario_url("partial;page=3;polls=1")
    );
    let loc = location(&kickoff(&c, &url));
    let r = c.get(&loc).send().expect("poll");
    assert_eq!(r.status().as_u16(), 202);
    let partial: Value = r.json().expect("partial manifest");
    // The partial manifest pages too: 3 per page, the rest behind `next` links.
    assert_eq!(partial["output"].as_array().map(Vec::len), Some(3));
    let next = partial["link"][0]["url"]
        .as_str()
        .expect("next")
        .to_string();
    assert!(next.ends_with("/partial/12/2"), "{next}");
    let (early, early_pages) = follow_pages(&c, partial, 3, 100);
    assert_eq!(early_pages, 4);

    let r = c.get(&loc).send().expect("poll");
    assert_eq!(r.status().as_u16(), 200);
    let (urls, pages) = follow_pages(&c, r.json().expect("manifest"), 3, 100);
    let total = urls.len();
    assert_eq!(urls.iter().collect::<HashSet<_>>().len(), total);
    // 20 patients / 4 per file = 5 Patient files; 80 Observations = 20 files.
    assert_eq!(total, 25);
    assert_eq!(pages, 9);
    assert_eq!(early.len(), total / 2);
    assert_eq!(early[..], urls[..total / 2]);
    // Partial pages stay available after the job completed, and are protected like it.
    let r = c.get(&next).send().expect("partial page");
    assert_eq!(r.status().as_u16(), 200);
    let p2: Value = r.json().expect("json");
    assert_eq!(p2["output"][0]["url"].as_str(), Some(urls[3].as_str()));
    let bad = next.replace("/partial/12/2", "/partial/12/9");
    assert_eq!(c.get(&bad).send().expect("page").status().as_u16(), 404);
    let bad = next.replace("/partial/12/2", "/partial/99/1");
    assert_eq!(c.get(&bad).send().expect("page").status().as_u16(), 404);

    // Without page=N, partial manifests do not page.
    let url = format!(
        "{}/Group/g1/$export?_type=Patient,Observation&allowPartialManifests=true",
        sb.scenario_url("partial;polls=1")
    );
    let loc = location(&kickoff(&c, &url));
    let partial: Value = c.get(&loc).send().expect("poll").json().expect("json");
    assert_eq!(partial["output"].as_array().map(Vec::len), Some(12));
    assert!(partial.get("link").is_none());

    // page_loop: the last page links back to page 1, forever.
    let url = format!(
        "{}/Group/g1/$export?_type=Patient",
        sb.scenario_url("polls=0;page=2;page_loop")
    );
    let m = manifest(&c, &location(&kickoff(&c, &url)));
    let (urls, pages) = follow_pages(&c, m, 2, 7);
    assert_eq!(pages, 7, "never ends");
    // 5 files on 3 pages, then page 1 again.
    assert_eq!(urls.len(), 2 + 2 + 1 + 2 + 2 + 1 + 2);
    assert_eq!(urls[..5], urls[5..10]);
}

#[test]
fn partial_pages_need_the_token() {
    let sb = Sandbox::start(SandboxOptions {
        patients: 8,
        records_per_file: 2,
        bearer_token: Some("s3cret".into()),
        threads: 2,
        ..SandboxOptions::default()
    })
    .expect("sandbox");
    let c = client();
    let url = format!(
        "{}/$export?_type=Patient&allowPartialManifests=true",
        sb.scenario_url("partial;page=1;polls=1")
    );
    let r = bulk(c.get(&url))
        .bearer_auth("s3cret")
        .send()
        .expect("kick-off");
    let loc = location(&r);
    let partial: Value = c
        .get(&loc)
        .bearer_auth("s3cret")
        .send()
        .expect("poll")
        .json()
        .expect("json");
    let next = partial["link"][0]["url"].as_str().expect("next");
    assert_eq!(
        outcome(c.get(next).send().expect("page")),
        (401, "login".into())
    );
    let r = c.get(next).bearer_auth("s3cret").send().expect("page");
    assert_eq!(r.status().as_u16(), 200);
}

#[test]
fn organized_by_patient() {
    let sb = sandbox(6, 5);
    let c = client();
    let url = format!(
        "{}/Group/g1/$export?_type=Patient,Observation,Condition&organizeOutputBy=Patient",
        sb.scenario_url("polls=0")
    );
    let m = manifest(&c, &location(&kickoff(&c, &url)));
    assert_eq!(m["outputOrganizedBy"], "Patient");
    let outputs = m["output"].as_array().expect("output").clone();
    let mut per_type: BTreeMap<String, u64> = BTreeMap::new();
    let mut prev_last: Option<Value> = None;
    for (n, o) in outputs.iter().enumerate() {
        assert!(o.get("type").is_none());
        let recs = lines(&c, o["url"].as_str().expect("url"));
        assert_eq!(
            recs[0]["resourceType"], "Parameters",
            "file starts with a header"
        );
        if let Some(prev) = prev_last.take() {
            // A continued block repeats its header.
            assert_eq!(recs[0], prev);
        }
        let mut current = None;
        let mut resources = 0;
        for r in &recs {
            if r["resourceType"] == "Parameters" {
                assert_eq!(r["parameter"][0]["name"], "header");
                current = r["parameter"][0]["valueReference"]["reference"]
                    .as_str()
                    .map(String::from);
                continue;
            }
            resources += 1;
            *per_type
                .entry(r["resourceType"].as_str().unwrap_or_default().into())
                .or_insert(0) += 1;
            let owner = if r["resourceType"] == "Patient" {
                format!("Patient/{}", r["id"].as_str().unwrap_or_default())
            } else {
                r["subject"]["reference"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            };
            assert_eq!(Some(owner), current);
        }
        assert_eq!(resources, o["count"].as_u64().expect("count"));
        assert!(resources <= 5);
        if let Some(next) = o.get("continuesInFile") {
            assert_eq!(next, &outputs[n + 1]["url"]);
            prev_last = recs
                .iter()
                .rev()
                .find(|r| r["resourceType"] == "Parameters")
                .cloned();
        }
    }
    assert!(outputs.iter().any(|o| o.get("continuesInFile").is_some()));
    let truth = sb.truth(&TruthQuery {
        level: "group".into(),
        group: Some("g1".into()),
        types: strs(&["Patient", "Observation", "Condition"]),
        ..TruthQuery::default()
    });
    assert_eq!(per_type, truth);
}

#[test]
fn gzip_length_range_and_elements() {
    let sb = sandbox(10, 1000);
    let c = client();
    let loc = location(&kickoff(
        &c,
        &format!("{}/$export?_type=Patient", sb.scenario_url("polls=0;gzip")),
    ));
    let m = manifest(&c, &loc);
    let url = m["output"][0]["url"].as_str().expect("url").to_string();
    let r = c
        .get(&url)
        .header("Accept-Encoding", "gzip")
        .send()
        .expect("download");
    assert_eq!(header(&r, "content-encoding").as_deref(), Some("gzip"));
    let mut text = String::new();
    flate2::read::GzDecoder::new(r)
        .read_to_string(&mut text)
        .expect("gunzip");
    assert_eq!(text.lines().count(), 10);
    assert!(text.contains("Zoë Müller") && text.contains("王芳") && text.contains("Ærøskøbing"));
    // Without Accept-Encoding: identity, same bytes; ranges honoured.
    let r = c.get(&url).send().expect("download");
    assert!(header(&r, "content-encoding").is_none());
    assert_eq!(header(&r, "accept-ranges").as_deref(), Some("bytes"));
    let plain = r.text().expect("body");
    assert_eq!(plain, text);
    let r = c
        .get(&url)
        .header("Range", "bytes=100-")
        .send()
        .expect("range");
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(
        header(&r, "content-range"),
        Some(format!("bytes 100-{}/{}", plain.len() - 1, plain.len()))
    );
    assert_eq!(r.bytes().expect("body").as_ref(), &plain.as_bytes()[100..]);

    // length: Content-Length instead of chunked.
    let loc = location(&kickoff(
        &c,
        &format!(
            "{}/$export?_type=Observation",
            sb.scenario_url("polls=0;length")
        ),
    ));
    let m = manifest(&c, &loc);
    let r = c
        .get(m["output"][0]["url"].as_str().expect("url"))
        .send()
        .expect("download");
    let len = r.content_length().expect("content-length");
    assert_eq!(r.bytes().expect("body").len() as u64, len);

    // _elements keeps the listed elements plus id/resourceType/meta, tagged SUBSETTED.
    let loc = location(&kickoff(
        &c,
        &format!(
            "{}/$export?_type=Observation&_elements=status",
            sb.scenario_url("polls=0")
        ),
    ));
    let m = manifest(&c, &loc);
    for r in lines(&c, m["output"][0]["url"].as_str().expect("url")) {
        let mut keys: Vec<&String> = r.as_object().expect("object").keys().collect();
        keys.sort();
        assert_eq!(keys, ["id", "meta", "resourceType", "status"]);
        assert_eq!(r["meta"]["tag"][0]["code"], "SUBSETTED");
    }

    // Error and deleted files.
    let url = format!(
        "{}/$export?_type=Patient&_since=2024-01-01T00:00:00Z",
        sb.scenario_url("polls=0;errors;deleted=3")
    );
    let m = manifest(&c, &location(&kickoff(&c, &url)));
    assert_eq!(m["error"][0]["type"], "OperationOutcome");
    assert_eq!(m["deleted"][0]["type"], "Bundle");
    let del = lines(&c, m["deleted"][0]["url"].as_str().expect("url"));
    assert_eq!(del.len(), 3);
    assert_eq!(del[0]["entry"][0]["request"]["method"], "DELETE");
}

#[test]
fn bearer_token_and_request_log() {
    let sb = Sandbox::start(SandboxOptions {
        patients: 3,
        bearer_token: Some("s3cret".into()),
        threads: 2,
        ..SandboxOptions::default()
    })
    .expect("sandbox");
    let c = client();
    let url = format!("{}/$export?_type=Patient", sb.scenario_url("polls=0"));
    assert_eq!(outcome(kickoff(&c, &url)), (401, "login".into()));
    let r = bulk(c.get(&url))
        .bearer_auth("s3cret")
        .send()
        .expect("kick-off");
    let loc = location(&r);
    assert_eq!(c.get(&loc).send().expect("poll").status().as_u16(), 401);
    let m: Value = c
        .get(&loc)
        .bearer_auth("s3cret")
        .send()
        .expect("poll")
        .json()
        .expect("manifest");
    assert_eq!(m["requiresAccessToken"], true);
    let file = m["output"][0]["url"].as_str().expect("url");
    assert_eq!(c.get(file).send().expect("file").status().as_u16(), 401);
    assert_eq!(
        c.get(file)
            .bearer_auth("s3cret")
            .send()
            .expect("file")
            .status()
            .as_u16(),
        200
    );

    let log = sb.requests();
    assert_eq!(log.len(), 6);
    assert_eq!(log[0].method, "GET");
    assert_eq!(log[0].path, "/x/polls=0/fhir/$export");
    assert_eq!(
        log[0].query,
        vec![("_type".to_string(), "Patient".to_string())]
    );
    assert_eq!(log[0].auth_ok, Some(false));
    assert_eq!(log[1].auth_ok, Some(true));
    let auth = log[1]
        .headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .map(|(_, v)| v.as_str());
    assert_eq!(auth, Some("Bearer ***"));
    let all = serde_json::to_string(&log).expect("json");
    assert!(!all.contains("s3cret"), "no secrets in the log");

    // Over HTTP (admin requests are not logged themselves).
    let remote: Vec<Value> = c
        .get(format!("{}/_sandbox/requests", sb.root_url()))
        .send()
        .expect("log")
        .json()
        .expect("json");
    assert_eq!(remote.len(), 6);
    assert_eq!(remote[1]["auth_ok"], true);
    assert_eq!(
        c.delete(format!("{}/_sandbox/requests", sb.root_url()))
            .send()
            .expect("clear")
            .status()
            .as_u16(),
        204
    );
    assert!(sb.requests().is_empty());
    sb.clear_requests();
    sb.stop();
}

#[test]
fn binary_serves_and_writes_port_file() {
    let dir = std::env::temp_dir().join(format!("fhirbulk-sandbox-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let port_file = dir.join("port");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fhirbulk-sandbox"))
        .args(["--patients", "2", "--port-file"])
        .arg(&port_file)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read line");
    let port: u16 = std::fs::read_to_string(&port_file)
        .expect("port file")
        .trim()
        .parse()
        .expect("port");
    assert_eq!(
        line.trim(),
        format!("fhirbulk-sandbox listening on http://127.0.0.1:{port}/fhir (loopback only)")
    );
    let t: BTreeMap<String, u64> = client()
        .get(format!(
            "http://127.0.0.1:{port}/_sandbox/truth?level=patient"
        ))
        .send()
        .expect("truth")
        .json()
        .expect("json");
    assert_eq!(t["Patient"], 2);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- SMART Backend Services ----

const CLIENT: &str = "bulk-client";
const BASIC_CLIENT: &str = "basic-client";
const BASIC_SECRET: &str = "basic-s3cret";
const SCOPE: &str = "system/*.read";

fn key_file(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn auth_sandbox() -> Sandbox {
    let jwks: Value = serde_json::from_slice(&key_file("public.jwks.json")).expect("jwks");
    Sandbox::start(SandboxOptions {
        patients: 3,
        threads: 2,
        auth: Some(SandboxAuth {
            clients: vec![
                SandboxClient {
                    client_id: CLIENT.into(),
                    jwks: Some(jwks),
                    secret: None,
                },
                SandboxClient {
                    client_id: BASIC_CLIENT.into(),
                    jwks: None,
                    secret: Some(BASIC_SECRET.into()),
                },
            ],
            ..SandboxAuth::default()
        }),
        ..SandboxOptions::default()
    })
    .expect("sandbox")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Valid assertion claims for `aud`, with a fresh jti.
fn claims(aud: &str) -> Value {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    json!({"iss": CLIENT, "sub": CLIENT, "aud": aud, "exp": unix_now() + 240, "jti": format!("jti-{n}-{}", unix_now())})
}

/// Signs with the test RSA key (RS*) or the P-384 key (ES384).
fn sign(alg: Algorithm, kid: &str, claims: &Value) -> String {
    let key = match alg {
        Algorithm::ES384 => EncodingKey::from_ec_pem(&key_file("es384-private.pem")),
        _ => EncodingKey::from_rsa_pem(&key_file("rsa384-private.pem")),
    }
    .expect("key");
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, claims, &key).expect("sign")
}

fn rs(claims: &Value) -> String {
    sign(Algorithm::RS384, "rsa-test-1", claims)
}

fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn post_token(c: &Client, url: &str, body: String) -> Response {
    c.post(url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .expect("token request")
}

fn jwt_request(c: &Client, url: &str, jwt: &str, scope: &str) -> Response {
    post_token(
        c,
        url,
        form(&[
            ("grant_type", "client_credentials"),
            ("scope", scope),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", jwt),
        ]),
    )
}

/// (status, error, error_description) of a token endpoint answer.
fn oauth_err(r: Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let v: Value = r.json().expect("json");
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    (status, s("error"), s("error_description"))
}

/// A token from `token_url` via private_key_jwt (RS384).
fn token(c: &Client, token_url: &str) -> String {
    let r = jwt_request(c, token_url, &rs(&claims(token_url)), SCOPE);
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().expect("json");
    v["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

#[test]
fn smart_discovery_and_token_flow() {
    let sb = auth_sandbox();
    let c = client();

    // Discovery, unprefixed and with a scenario prefix.
    let conf: Value = c
        .get(format!("{}/.well-known/smart-configuration", sb.base_url()))
        .send()
        .expect("conf")
        .json()
        .expect("json");
    assert_eq!(conf["token_endpoint"], sb.token_url());
    assert_eq!(sb.token_url(), format!("{}/auth/token", sb.root_url()));
    assert_eq!(
        conf["token_endpoint_auth_methods_supported"],
        json!(["private_key_jwt", "client_secret_basic"])
    );
    assert_eq!(
        conf["token_endpoint_auth_signing_alg_values_supported"],
        json!(["RS384", "ES384"])
    );
    assert_eq!(conf["grant_types_supported"], json!(["client_credentials"]));
    assert_eq!(
        conf["scopes_supported"],
        json!(["system/*.read", "system/*.rs"])
    );
    assert_eq!(
        conf["capabilities"],
        json!(["client-confidential-asymmetric"])
    );
    let scen_base = sb.scenario_url("polls=0");
    let scen_token = format!("{}/x/polls=0/auth/token", sb.root_url());
    let conf: Value = c
        .get(format!("{scen_base}/.well-known/smart-configuration"))
        .send()
        .expect("conf")
        .json()
        .expect("json");
    assert_eq!(conf["token_endpoint"], scen_token);
    let r = c
        .get(format!(
            "{}/.well-known/smart-configuration",
            sb.scenario_url("no_smart_config")
        ))
        .send()
        .expect("conf");
    assert_eq!(r.status().as_u16(), 404);
    let cs: Value = c
        .get(format!("{scen_base}/metadata"))
        .send()
        .expect("metadata")
        .json()
        .expect("json");
    let ext = &cs["rest"][0]["security"]["extension"][0];
    assert_eq!(
        ext["url"],
        "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    );
    assert_eq!(ext["extension"][0]["url"], "token");
    assert_eq!(ext["extension"][0]["valueUri"], scen_token);

    // RS384 via the scenario's token endpoint, then an authorized export.
    let jwt = rs(&claims(&scen_token));
    let r = jwt_request(&c, &scen_token, &jwt, "system/*.read system/*.rs");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(header(&r, "cache-control").as_deref(), Some("no-store"));
    let v: Value = r.json().expect("json");
    assert_eq!(v["token_type"], "bearer");
    assert_eq!(v["expires_in"], 300);
    assert_eq!(v["scope"], "system/*.read system/*.rs");
    let tok = v["access_token"].as_str().expect("token").to_string();
    assert_eq!(tok.len(), 32);
    assert!(tok.bytes().all(|b| b.is_ascii_hexdigit()));

    let url = format!("{scen_base}/$export?_type=Patient");
    assert_eq!(outcome(kickoff(&c, &url)), (401, "login".into()));
    let r = bulk(c.get(&url))
        .bearer_auth("not-a-token")
        .send()
        .expect("kick");
    assert_eq!(header(&r, "www-authenticate").as_deref(), Some("Bearer"));
    assert_eq!(outcome(r), (401, "login".into()));
    let loc = location(&bulk(c.get(&url)).bearer_auth(&tok).send().expect("kick"));
    assert_eq!(c.get(&loc).send().expect("poll").status().as_u16(), 401);
    let m: Value = c
        .get(&loc)
        .bearer_auth(&tok)
        .send()
        .expect("poll")
        .json()
        .expect("manifest");
    assert_eq!(m["requiresAccessToken"], true);
    let file = m["output"][0]["url"].as_str().expect("url");
    assert!(file.starts_with(&sb.root_url()));
    assert_eq!(c.get(file).send().expect("file").status().as_u16(), 401);
    let r = c.get(file).bearer_auth(&tok).send().expect("file");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().expect("body").lines().count(), 3);

    // ES384 at the unprefixed endpoint; the token works on any path.
    let es = sign(Algorithm::ES384, "ec-test-1", &claims(&sb.token_url()));
    let r = jwt_request(&c, &sb.token_url(), &es, SCOPE);
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().expect("json");
    let tok2 = v["access_token"].as_str().expect("token");
    assert_ne!(tok2, tok);
    let r = c.get(&loc).bearer_auth(tok2).send().expect("poll");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(sb.tokens_issued(), 2);

    // Decoded assertions, no signature; nothing secret in the log.
    let a = sb.assertions();
    assert_eq!(a.len(), 2);
    assert_eq!(a[0]["header"]["alg"], "RS384");
    assert_eq!(a[0]["header"]["kid"], "rsa-test-1");
    assert_eq!(a[0]["claims"]["aud"], scen_token);
    assert_eq!(a[1]["header"]["alg"], "ES384");
    assert_eq!(a[1]["claims"]["iss"], CLIENT);
    assert_eq!(a[1].as_object().map(|o| o.len()), Some(2));
    let log = sb.requests();
    let tr = log
        .iter()
        .find(|r| r.path.ends_with("/auth/token"))
        .expect("token request logged");
    assert_eq!(tr.auth_ok, None);
    assert_eq!(tr.server, "fhir");
    assert!(tr.body.contains("client_assertion=***"), "{}", tr.body);
    let all = serde_json::to_string(&log).expect("json");
    for secret in [jwt.as_str(), es.as_str(), tok.as_str(), tok2] {
        assert!(!all.contains(secret), "secret in the log");
    }
    let kick = log
        .iter()
        .filter(|r| r.path.ends_with("$export"))
        .map(|r| r.auth_ok)
        .collect::<Vec<_>>();
    assert_eq!(kick, vec![Some(false), Some(false), Some(true)]);
}

#[test]
fn token_endpoint_rejections() {
    let sb = auth_sandbox();
    let c = client();
    let url = sb.token_url();
    let reject = |jwt: &str, needle: &str| {
        let (status, err, desc) = oauth_err(jwt_request(&c, &url, jwt, SCOPE));
        assert_eq!(
            (status, err.as_str()),
            (401, "invalid_client"),
            "{needle}: {desc}"
        );
        assert!(desc.contains(needle), "want '{needle}', got '{desc}'");
    };
    let with = |k: &str, v: Value| {
        let mut cl = claims(&url);
        cl[k] = v;
        cl
    };

    reject(&rs(&with("aud", json!(sb.base_url()))), "aud");
    reject(&rs(&with("aud", json!([url.clone(), "other"]))), "aud");
    reject(&rs(&with("exp", json!(unix_now() + 600))), "5 minutes");
    reject(&rs(&with("exp", json!(unix_now() - 10))), "expired");
    reject(&rs(&with("iss", json!("nobody"))), "sub");
    let mut unknown = with("iss", json!("nobody"));
    unknown["sub"] = json!("nobody");
    reject(&rs(&unknown), "unknown client");
    let mut no_jti = claims(&url);
    no_jti.as_object_mut().expect("object").remove("jti");
    reject(&rs(&no_jti), "jti");
    reject(&sign(Algorithm::RS384, "no-such-kid", &claims(&url)), "kid");
    reject(
        &sign(Algorithm::RS256, "rsa-test-1", &claims(&url)),
        "alg RS256",
    );
    reject(
        &sign(Algorithm::ES384, "rsa-test-1", &claims(&url)),
        "does not fit",
    );
    // A valid signature over other claims.
    let good = rs(&claims(&url));
    let other = rs(&claims(&url));
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        other.split('.').nth(1).expect("claims"),
        parts[2]
    );
    reject(&forged, "signature");
    reject("not-a-jwt", "JWS");
    // Replay: the first use succeeds, the second fails.
    let once = rs(&claims(&url));
    assert_eq!(jwt_request(&c, &url, &once, SCOPE).status().as_u16(), 200);
    reject(&once, "replay");

    // Scopes and grant type.
    let (s, e, _) = oauth_err(jwt_request(&c, &url, &rs(&claims(&url)), "user/*.read"));
    assert_eq!((s, e.as_str()), (400, "invalid_scope"));
    let (s, e, _) = oauth_err(jwt_request(&c, &url, &rs(&claims(&url)), ""));
    assert_eq!((s, e.as_str()), (400, "invalid_scope"));
    let (s, e, _) = oauth_err(post_token(
        &c,
        &url,
        form(&[("grant_type", "password"), ("scope", SCOPE)]),
    ));
    assert_eq!((s, e.as_str()), (400, "unsupported_grant_type"));
    let (s, e, _) = oauth_err(post_token(
        &c,
        &url,
        form(&[
            ("grant_type", "client_credentials"),
            ("scope", SCOPE),
            ("client_assertion_type", "urn:other"),
            ("client_assertion", &rs(&claims(&url))),
        ]),
    ));
    assert_eq!((s, e.as_str()), (401, "invalid_client"));
    let body = form(&[("grant_type", "client_credentials"), ("scope", SCOPE)]);
    let (s, e, _) = oauth_err(post_token(&c, &url, body.clone()));
    assert_eq!((s, e.as_str()), (401, "invalid_client"));

    // client_secret_basic.
    let r = c
        .post(&url)
        .basic_auth(BASIC_CLIENT, Some("wrong"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body.clone())
        .send()
        .expect("token");
    assert!(header(&r, "www-authenticate").is_some_and(|h| h.starts_with("Basic")));
    assert_eq!(oauth_err(r).1, "invalid_client");
    let r = c
        .post(&url)
        .basic_auth(CLIENT, Some(BASIC_SECRET))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body.clone())
        .send()
        .expect("token");
    assert_eq!(oauth_err(r).1, "invalid_client");
    let r = c
        .post(&url)
        .basic_auth(BASIC_CLIENT, Some(BASIC_SECRET))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body.clone())
        .send()
        .expect("token");
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().expect("json");
    assert_eq!(v["scope"], SCOPE);
    assert_eq!(sb.tokens_issued(), 2);

    // Forced errors.
    let forced = |scen: &str| {
        let u = format!("{}/x/{scen}/auth/token", sb.root_url());
        oauth_err(jwt_request(&c, &u, &rs(&claims(&u)), SCOPE))
    };
    let (s, e, d) = forced("token_error=invalid_grant");
    assert_eq!(
        (s, e.as_str(), d.as_str()),
        (400, "invalid_grant", "sandbox forced invalid_grant")
    );
    assert_eq!(forced("token_error=invalid_client").0, 401);

    // Secrets never logged; wrong methods and unconfigured servers.
    let all = serde_json::to_string(&sb.requests()).expect("json");
    assert!(!all.contains(BASIC_SECRET) && !all.contains(&good) && !all.contains("Basic YmFza"));
    assert!(all.contains("Basic ***"));
    assert_eq!(c.get(&url).send().expect("get").status().as_u16(), 405);
    let plain = sandbox(2, 10);
    assert_eq!(
        post_token(&c, &plain.token_url(), body).status().as_u16(),
        404
    );
    let r = c
        .get(format!(
            "{}/.well-known/smart-configuration",
            plain.base_url()
        ))
        .send()
        .expect("conf");
    assert_eq!(r.status().as_u16(), 404);
    assert!(plain.assertions().is_empty());
    assert_eq!(plain.tokens_issued(), 0);
}

#[test]
fn expired_tokens() {
    let sb = auth_sandbox();
    let c = client();
    let url = format!("{}/$export?_type=Patient", sb.scenario_url("polls=0"));
    for scen in ["token_ttl=0", "revoke_after=0"] {
        let turl = format!("{}/x/{scen}/auth/token", sb.root_url());
        let r = jwt_request(&c, &turl, &rs(&claims(&turl)), SCOPE);
        let v: Value = r.json().expect("json");
        let want_ttl = if scen == "token_ttl=0" { 0 } else { 300 };
        assert_eq!(v["expires_in"], want_ttl);
        let tok = v["access_token"].as_str().expect("token");
        let r = bulk(c.get(&url)).bearer_auth(tok).send().expect("kick");
        assert_eq!(header(&r, "www-authenticate").as_deref(), Some("Bearer"));
        assert_eq!(outcome(r), (401, "expired".into()), "{scen}");
    }
    // A fresh token works again (the client's 401 → new token → retry path).
    let tok = token(&c, &sb.token_url());
    let r = bulk(c.get(&url)).bearer_auth(&tok).send().expect("kick");
    assert_eq!(r.status().as_u16(), 202);
}

#[test]
fn object_store_and_file_scenarios() {
    let sb = auth_sandbox();
    let c = client();
    let no_redirects = Client::builder()
        .no_gzip()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let tok = token(&c, &sb.token_url());
    assert!(sb.store_url().starts_with("http://127.0.0.1:"));
    assert_ne!(sb.store_url(), sb.root_url());
    let export = |scen: &str| -> Value {
        let url = format!("{}/$export?_type=Patient", sb.scenario_url(scen));
        let loc = location(&bulk(c.get(&url)).bearer_auth(&tok).send().expect("kick"));
        c.get(&loc)
            .bearer_auth(&tok)
            .send()
            .expect("poll")
            .json()
            .expect("manifest")
    };

    // redirect_files: the FHIR server checks the token, then 307 to the store.
    let m = export("polls=0;redirect_files");
    assert_eq!(m["requiresAccessToken"], true);
    let file = m["output"][0]["url"].as_str().expect("url");
    assert!(file.starts_with(&sb.root_url()));
    assert_eq!(
        no_redirects
            .get(file)
            .send()
            .expect("file")
            .status()
            .as_u16(),
        401
    );
    let r = no_redirects
        .get(file)
        .bearer_auth(&tok)
        .send()
        .expect("file");
    assert_eq!(r.status().as_u16(), 307);
    let to = header(&r, "location").expect("Location");
    let path = file.strip_prefix(&sb.root_url()).expect("path");
    assert!(
        to.starts_with(&format!("{}{path}?sig=", sb.store_url())),
        "{to}"
    );
    assert_eq!(lines(&c, &to).len(), 3);
    let r = c.get(&to).bearer_auth(&tok).send().expect("leak");
    assert_eq!(outcome(r), (400, "security".into()));
    let store: Vec<_> = sb
        .requests()
        .into_iter()
        .filter(|r| r.server == "store")
        .collect();
    assert_eq!(store.len(), 2);
    assert_eq!(store[0].auth_ok, None);
    assert!(store[0].headers.iter().all(|(k, _)| k != "authorization"));
    assert!(store[1]
        .headers
        .contains(&("authorization".into(), "Bearer ***".into())));

    // files_elsewhere: manifest URLs on the store, still requiresAccessToken.
    let m = export("polls=0;files_elsewhere;gzip");
    assert_eq!(m["requiresAccessToken"], true);
    let file = m["output"][0]["url"].as_str().expect("url");
    assert!(file.starts_with(&format!(
        "{}/x/polls=0;files_elsewhere;gzip/files/",
        sb.store_url()
    )));
    assert_eq!(lines(&c, file).len(), 3);
    let r = c
        .get(file)
        .header("Accept-Encoding", "gzip")
        .send()
        .expect("gzip");
    assert_eq!(header(&r, "content-encoding").as_deref(), Some("gzip"));
    assert_eq!(
        outcome(c.get(file).bearer_auth(&tok).send().expect("leak")).0,
        400
    );

    // capability_urls: no token needed, and any Authorization is refused.
    let m = export("polls=0;capability_urls");
    assert_eq!(m["requiresAccessToken"], false);
    let file = m["output"][0]["url"].as_str().expect("url");
    assert!(file.starts_with(&sb.root_url()));
    sb.clear_requests();
    assert_eq!(lines(&c, file).len(), 3);
    let r = c.get(file).bearer_auth(&tok).send().expect("leak");
    let status = r.status().as_u16();
    let v: Value = r.json().expect("json");
    assert_eq!(status, 400);
    assert_eq!(
        v["issue"][0]["diagnostics"],
        "access token must not be sent to capability URLs"
    );
    let log = sb.requests();
    assert_eq!(log.len(), 2);
    assert!(log
        .iter()
        .all(|r| r.auth_ok.is_none() && r.server == "fhir"));

    // The store serves only files.
    let r = c
        .get(format!("{}/fhir/metadata", sb.store_url()))
        .send()
        .expect("store");
    assert_eq!(r.status().as_u16(), 404);
    let r = c
        .post(format!("{}{path}", sb.store_url()))
        .send()
        .expect("store");
    assert_eq!(r.status().as_u16(), 405);
    let r = c
        .get(format!("{}/x/bogus/files/1/1.ndjson", sb.store_url()))
        .send()
        .expect("store");
    assert_eq!(r.status().as_u16(), 400);
}

#[test]
fn binary_registers_clients() {
    let dir = std::env::temp_dir().join(format!("fhirbulk-sandbox-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let port_file = dir.join("port");
    let jwks = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys/public.jwks.json");
    let bin = env!("CARGO_BIN_EXE_fhirbulk-sandbox");
    let bad = std::process::Command::new(bin)
        .args(["--jwks", "x.json"])
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(2));
    let private =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys/rsa384-private.jwk.json");
    let bad = std::process::Command::new(bin)
        .args(["--client-id", "a", "--jwks"])
        .arg(&private)
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(2));

    let mut child = std::process::Command::new(bin)
        .args([
            "--patients",
            "2",
            "--token-ttl",
            "60",
            "--client-id",
            CLIENT,
            "--jwks",
        ])
        .arg(&jwks)
        .args([
            "--client-id",
            BASIC_CLIENT,
            "--client-secret",
            BASIC_SECRET,
            "--port-file",
        ])
        .arg(&port_file)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    out.read_line(&mut line).expect("read line");
    let port: u16 = std::fs::read_to_string(&port_file)
        .expect("port file")
        .trim()
        .parse()
        .expect("port");
    let token_url = format!("http://127.0.0.1:{port}/auth/token");
    line.clear();
    out.read_line(&mut line).expect("read line");
    assert_eq!(line.trim(), format!("token endpoint {token_url}"));
    let c = client();
    let r = jwt_request(&c, &token_url, &rs(&claims(&token_url)), SCOPE);
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().expect("json");
    assert_eq!(v["expires_in"], 60);
    let r = c
        .post(&token_url)
        .basic_auth(BASIC_CLIENT, Some(BASIC_SECRET))
        .form(&[("grant_type", "client_credentials"), ("scope", SCOPE)])
        .send()
        .expect("token");
    assert_eq!(r.status().as_u16(), 200);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn prerendered_files_have_a_length_and_the_same_bytes() {
    let plain = sandbox(20, 50);
    let pre = Sandbox::start(SandboxOptions {
        patients: 20,
        records_per_file: 50,
        threads: 4,
        prerender: true,
        ..SandboxOptions::default()
    })
    .expect("sandbox starts");
    let c = client();
    let files = |sb: &Sandbox, scenario: &str| -> Vec<(Option<String>, String)> {
        let status = location(&kickoff(
            &c,
            &format!("{}/$export", sb.scenario_url(scenario)),
        ));
        let m = manifest(&c, &status);
        m["output"]
            .as_array()
            .expect("output")
            .iter()
            .map(|o| {
                let r = c.get(o["url"].as_str().expect("url")).send().expect("file");
                assert_eq!(r.status().as_u16(), 200);
                let len = header(&r, "content-length");
                // Documents on the object store name its port, which differs per sandbox.
                let store = format!("{}/binary/", sb.store_url());
                let body = r.text().expect("body").replace(&store, "{store}");
                (len, body)
            })
            .collect()
    };
    let generated = files(&plain, "polls=0");
    assert!(generated.len() > 1);
    assert!(generated.iter().all(|(len, _)| len.is_none()), "streamed");
    // Twice from the pre-rendered sandbox (rendered, then from memory): same bytes, with a
    // Content-Length; with `chunked`, the same bytes without one.
    for _ in 0..2 {
        let served = files(&pre, "polls=0");
        assert_eq!(served.len(), generated.len());
        for ((len, body), (_, want)) in served.iter().zip(&generated) {
            assert_eq!(body, want);
            let store = format!("{}/binary/", pre.store_url());
            let n = body.len() + (store.len() - "{store}".len()) * body.matches("{store}").count();
            assert_eq!(len.as_deref(), Some(n.to_string().as_str()));
        }
    }
    let chunked = files(&pre, "polls=0;chunked");
    for ((len, body), (_, want)) in chunked.iter().zip(&generated) {
        assert_eq!(body, want);
        assert!(len.is_none(), "chunked: no Content-Length");
    }
}

// ---- Fault scenarios, checked over HTTP (raw TCP where framing matters) ----

/// A response read off a fresh TCP connection.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The server closed the connection (rather than leaving it open for 3 s).
    closed: bool,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET url` on a new connection, without `Connection: close`; reads until the server closes
/// the connection or 3 s pass without data.
fn raw_get(url: &str, extra: &[(&str, &str)]) -> Raw {
    use std::io::Write;
    let u = url::Url::parse(url).expect("url");
    let host = u.host_str().expect("host").to_string();
    let port = u.port().expect("port");
    let mut target = u.path().to_string();
    if let Some(q) = u.query() {
        target.push('?');
        target.push_str(q);
    }
    let mut s = std::net::TcpStream::connect((host.as_str(), port)).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .expect("timeout");
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send");
    let mut all = Vec::new();
    let mut buf = [0u8; 16384];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&all[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Raw {
        status,
        headers,
        body: all[end + 4..].to_vec(),
        closed,
    }
}

/// Decodes a chunked body: (the data, whether it ended with the last chunk, what followed a
/// chunk-size line that was not hex).
fn dechunk(mut b: &[u8]) -> (Vec<u8>, bool, Option<String>) {
    let mut data = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return (data, false, None);
        };
        let line = String::from_utf8_lossy(&b[..eol]).into_owned();
        let Ok(n) = usize::from_str_radix(line.trim(), 16) else {
            return (data, false, Some(line));
        };
        if n == 0 {
            return (data, true, None);
        }
        let start = eol + 2;
        if b.len() < start + n + 2 {
            data.extend_from_slice(&b[start.min(b.len())..]);
            return (data, false, None);
        }
        data.extend_from_slice(&b[start..start + n]);
        b = &b[start + n + 2..];
    }
}

/// Kick-off at `scen` with `query`, polled to the complete manifest (a leading byte order
/// mark, fault `bom`, is skipped).
fn export(c: &Client, sb: &Sandbox, scen: &str, query: &str) -> Value {
    let url = format!("{}/$export?{query}", sb.scenario_url(scen));
    let loc = location(&kickoff(c, &url));
    for _ in 0..20 {
        let r = c.get(&loc).send().expect("poll");
        if r.status().as_u16() == 202 {
            continue;
        }
        assert_eq!(r.status().as_u16(), 200);
        let b = r.bytes().expect("body");
        let b = b.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&b);
        return serde_json::from_slice(b).expect("manifest json");
    }
    panic!("job never completed");
}

fn output_urls(m: &Value) -> Vec<String> {
    m["output"]
        .as_array()
        .expect("output")
        .iter()
        .map(|o| o["url"].as_str().expect("url").to_string())
        .collect()
}

/// The first output file of an export at `scen`.
fn first_file(c: &Client, sb: &Sandbox, scen: &str, query: &str) -> String {
    output_urls(&export(c, sb, &format!("polls=0;{scen}"), query))
        .into_iter()
        .next()
        .expect("a file")
}

fn get_bytes(c: &Client, url: &str, headers: &[(&str, &str)]) -> (Response, Vec<u8>) {
    let mut rb = c.get(url);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let mut r = rb.send().expect("download");
    let mut body = Vec::new();
    r.read_to_end(&mut body).expect("body");
    (r, body)
}

fn decode(codec: &str, b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let r: Box<dyn Read + '_> = match codec {
        "multigzip" => Box::new(flate2::read::MultiGzDecoder::new(b)),
        "gzip" => Box::new(flate2::read::GzDecoder::new(b)),
        "zlib" => Box::new(flate2::read::ZlibDecoder::new(b)),
        _ => Box::new(flate2::read::DeflateDecoder::new(b)),
    };
    BufReader::new(r).read_to_end(&mut out).expect(codec);
    out
}

#[test]
fn content_codings_and_stored_gzip() {
    let sb = sandbox(12, 1000);
    let c = client();
    let q = "_type=Patient";
    let (_, plain) = get_bytes(&c, &first_file(&c, &sb, "", q), &[]);
    assert!(plain.len() > 3000);

    // gzip_members=3: three members; reading only the first loses two thirds.
    let url = first_file(&c, &sb, "gzip_members=3", q);
    let (r, gz) = get_bytes(&c, &url, &[("Accept-Encoding", "gzip")]);
    assert_eq!(header(&r, "content-encoding").as_deref(), Some("gzip"));
    assert_eq!(decode("multigzip", &gz), plain);
    assert_eq!(decode("gzip", &gz), &plain[..plain.len() / 3]);
    // Without Accept-Encoding: identity, as with `gzip`.
    let (r, body) = get_bytes(&c, &url, &[]);
    assert!(header(&r, "content-encoding").is_none());
    assert_eq!(body, plain);

    // encoding=NAME: whatever Accept-Encoding said.
    for (name, label, codec) in [
        ("gzip", "gzip", "gzip"),
        ("x-gzip", "x-gzip", "gzip"),
        ("deflate", "deflate", "zlib"),
        ("raw-deflate", "deflate", "raw"),
        ("br", "br", "gzip"),
    ] {
        let url = first_file(&c, &sb, &format!("encoding={name}"), q);
        let (r, body) = get_bytes(&c, &url, &[("Accept-Encoding", "identity")]);
        assert_eq!(
            header(&r, "content-encoding").as_deref(),
            Some(label),
            "{name}"
        );
        assert!(header(&r, "accept-ranges").is_none(), "{name}");
        assert_eq!(decode(codec, &body), plain, "{name}");
    }
    let url = first_file(&c, &sb, "encoding=gzip;gzip_members=2", q);
    let (_, body) = get_bytes(&c, &url, &[]);
    assert_eq!(decode("multigzip", &body), plain);
    assert_eq!(decode("gzip", &body), &plain[..plain.len() / 2]);
    let url = first_file(&c, &sb, "encoding=identity", q);
    let (r, body) = get_bytes(&c, &url, &[("Accept-Encoding", "gzip")]);
    assert_eq!(header(&r, "content-encoding").as_deref(), Some("identity"));
    assert_eq!(header(&r, "accept-ranges").as_deref(), Some("bytes"));
    assert_eq!(body, plain);

    // stored_gzip: the same compressed object every time, with a length and byte ranges.
    let url = first_file(&c, &sb, "stored_gzip", q);
    let (r, stored) = get_bytes(&c, &url, &[]);
    assert_eq!(header(&r, "content-encoding").as_deref(), Some("gzip"));
    assert_eq!(header(&r, "accept-ranges").as_deref(), Some("bytes"));
    assert_eq!(header(&r, "content-length"), Some(stored.len().to_string()));
    assert_eq!(decode("gzip", &stored), plain);
    let (_, again) = get_bytes(&c, &url, &[("Accept-Encoding", "gzip")]);
    assert_eq!(again, stored);
    let (r, tail) = get_bytes(&c, &url, &[("Range", "bytes=100-")]);
    assert_eq!(r.status().as_u16(), 206);
    let n = stored.len();
    assert_eq!(
        header(&r, "content-range"),
        Some(format!("bytes 100-{}/{n}", n - 1))
    );
    assert_eq!(tail, &stored[100..]);
    let url = first_file(&c, &sb, "stored_gzip;encoding=x-gzip;gzip_members=2", q);
    let (r, body) = get_bytes(&c, &url, &[]);
    assert_eq!(header(&r, "content-encoding").as_deref(), Some("x-gzip"));
    assert_eq!(decode("multigzip", &body), plain);
    // drop cuts the compressed body of the first request.
    let url = first_file(&c, &sb, "stored_gzip;drop=50", q);
    let raw = raw_get(&url, &[]);
    assert_eq!(raw.status, 200);
    assert_eq!(raw.header("content-length"), Some(n.to_string().as_str()));
    assert_eq!(raw.body, &stored[..50]);
    assert!(raw.closed);
    let (_, body) = get_bytes(&c, &url, &[]);
    assert_eq!(body, stored);
}

#[test]
fn ranges_validators_and_changing_files() {
    let sb = sandbox(12, 1000);
    let c = client();
    let q = "_type=Patient";
    let (_, plain) = get_bytes(&c, &first_file(&c, &sb, "", q), &[]);
    let n = plain.len();

    // short_ranges: at most 10 bytes per 206, named correctly.
    let url = first_file(&c, &sb, "short_ranges=10", q);
    let (r, body) = get_bytes(&c, &url, &[("Range", "bytes=5-")]);
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(header(&r, "content-range"), Some(format!("bytes 5-14/{n}")));
    assert_eq!(body, &plain[5..15]);
    let (r, body) = get_bytes(&c, &url, &[("Range", "bytes=5-8")]);
    assert_eq!(header(&r, "content-range"), Some(format!("bytes 5-8/{n}")));
    assert_eq!(body, &plain[5..9]);

    // bad_range: the whole file, whatever was asked.
    let url = first_file(&c, &sb, "bad_range", q);
    let (r, body) = get_bytes(&c, &url, &[("Range", "bytes=100-")]);
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(
        header(&r, "content-range"),
        Some(format!("bytes 0-{}/{n}", n - 1))
    );
    assert_eq!(body, plain);

    // etag: If-Range with the current tag → 206; another tag or a weak one → 200.
    let m = export(&c, &sb, "polls=0;etag", q);
    let url = output_urls(&m).remove(0);
    let job = url.rsplit('/').nth(1).expect("job id").to_string();
    let (r, body) = get_bytes(&c, &url, &[]);
    let tag = header(&r, "etag").expect("ETag");
    assert_eq!(tag, format!("\"f{job}-1-r1\""));
    assert!(header(&r, "last-modified").is_none());
    assert_eq!(body, plain);
    let (r, body) = get_bytes(&c, &url, &[("Range", "bytes=10-"), ("If-Range", &tag)]);
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(body, &plain[10..]);
    for other in ["\"other\"".to_string(), format!("W/{tag}")] {
        let (r, body) = get_bytes(&c, &url, &[("Range", "bytes=10-"), ("If-Range", &other)]);
        assert_eq!(r.status().as_u16(), 200, "{other}");
        assert!(header(&r, "content-range").is_none());
        assert_eq!(body, plain);
    }
    let (r, _) = get_bytes(&c, &url, &[("Range", "bytes=10-")]);
    assert_eq!(r.status().as_u16(), 206);

    // last_modified: If-Range with exactly that date → 206, another date → 200.
    let url = first_file(&c, &sb, "last_modified", q);
    let (r, _) = get_bytes(&c, &url, &[]);
    let lm = header(&r, "last-modified").expect("Last-Modified");
    assert!(header(&r, "etag").is_none());
    let t = httpdate::parse_http_date(&lm).expect("HTTP-date");
    let (r, body) = get_bytes(&c, &url, &[("Range", "bytes=10-"), ("If-Range", &lm)]);
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(body, &plain[10..]);
    let later = httpdate::fmt_http_date(t + std::time::Duration::from_secs(1));
    let (r, _) = get_bytes(&c, &url, &[("Range", "bytes=10-"), ("If-Range", &later)]);
    assert_eq!(r.status().as_u16(), 200);

    // change_file: after the first request, the same records in other bytes, a new ETag.
    let m = export(&c, &sb, "polls=0;change_file", q);
    let url = output_urls(&m).remove(0);
    let (r, first) = get_bytes(&c, &url, &[]);
    let tag1 = header(&r, "etag").expect("ETag");
    assert!(tag1.ends_with("-r1\""), "{tag1}");
    assert_eq!(first, plain);
    let (r, second) = get_bytes(&c, &url, &[]);
    let tag2 = header(&r, "etag").expect("ETag");
    assert!(tag2.ends_with("-r2\""), "{tag2}");
    assert_ne!(second, plain);
    let text = String::from_utf8(second.clone()).expect("utf8");
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let plain_text = String::from_utf8(plain.clone()).expect("utf8");
    let plain_lines: Vec<&str> = plain_text.lines().collect();
    assert_eq!(lines.len(), plain_lines.len());
    for (l, p) in lines.iter().zip(&plain_lines) {
        assert!(l.starts_with(' ') && l.ends_with("\r\n"), "{l:?}");
        assert_eq!(&l[1..l.len() - 2], *p);
    }
    // A resume with the old tag gets the whole new file; without If-Range, the new bytes.
    let (r, body) = get_bytes(&c, &url, &[("Range", "bytes=100-"), ("If-Range", &tag1)]);
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(body, second);
    let (r, body) = get_bytes(&c, &url, &[("Range", "bytes=100-"), ("If-Range", &tag2)]);
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(body, &second[100..]);
    let (r, body) = get_bytes(&c, &url, &[("Range", "bytes=100-")]);
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(body, &second[100..]);
    assert_ne!(body, &plain[100..]);

    // change_file with last_modified: the date changes, no ETag.
    let url = first_file(&c, &sb, "change_file;last_modified", q);
    let (r, _) = get_bytes(&c, &url, &[]);
    let lm1 = header(&r, "last-modified").expect("Last-Modified");
    assert!(header(&r, "etag").is_none());
    let (r, _) = get_bytes(&c, &url, &[]);
    let lm2 = header(&r, "last-modified").expect("Last-Modified");
    assert_ne!(lm1, lm2);
    let (r, _) = get_bytes(&c, &url, &[("Range", "bytes=1-"), ("If-Range", &lm1)]);
    assert_eq!(r.status().as_u16(), 200);

    // stored_gzip with etag: the coded object has its own tag, and ranges honour If-Range.
    let url = first_file(&c, &sb, "stored_gzip;etag", q);
    let (r, stored) = get_bytes(&c, &url, &[]);
    let tag = header(&r, "etag").expect("ETag");
    assert!(tag.ends_with("-r1-gzip\""), "{tag}");
    let (r, body) = get_bytes(&c, &url, &[("Range", "bytes=20-"), ("If-Range", &tag)]);
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(body, &stored[20..]);
}

#[test]
fn framing_faults() {
    let sb = sandbox(12, 1000);
    let c = client();
    let q = "_type=Patient";
    let (_, plain) = get_bytes(&c, &first_file(&c, &sb, "", q), &[]);
    let n = plain.len();

    // close_delimited: no length, not chunked; the body ends when the server closes.
    let url = first_file(&c, &sb, "close_delimited", q);
    for _ in 0..2 {
        let raw = raw_get(&url, &[]);
        assert_eq!(raw.status, 200);
        assert_eq!(raw.header("connection"), Some("close"));
        assert!(raw.header("content-length").is_none());
        assert!(raw.header("transfer-encoding").is_none());
        assert!(raw.closed, "the server closes the connection");
        assert_eq!(raw.body, plain);
    }
    let (_, body) = get_bytes(&c, &url, &[]);
    assert_eq!(body, plain, "reqwest reads close-delimited bodies");
    // ... with drop: the first request ends cleanly after BYTES.
    let url = first_file(&c, &sb, "close_delimited;drop=100", q);
    let raw = raw_get(&url, &[]);
    assert!(raw.closed && raw.header("content-length").is_none());
    assert_eq!(raw.body, &plain[..100]);
    assert_eq!(raw_get(&url, &[]).body, plain);
    // ... and ranges are close-delimited too.
    let raw = raw_get(&url, &[("Range", "bytes=10-19")]);
    assert_eq!(raw.status, 206);
    assert_eq!(raw.body, &plain[10..20]);
    // gzip bodies as well.
    let url = first_file(&c, &sb, "close_delimited;gzip", q);
    let raw = raw_get(&url, &[("Accept-Encoding", "gzip")]);
    assert_eq!(raw.header("content-encoding"), Some("gzip"));
    assert!(raw.closed);
    assert_eq!(decode("gzip", &raw.body), plain);

    // drop (unchanged): the full length announced, BYTES sent, the connection shut down.
    let url = first_file(&c, &sb, "drop=100", q);
    let raw = raw_get(&url, &[]);
    assert_eq!(raw.header("content-length"), Some(n.to_string().as_str()));
    assert_eq!(raw.body, &plain[..100]);
    assert!(raw.closed);
    let (r, body) = get_bytes(&c, &url, &[]);
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(body, plain);

    // short_length: a correctly framed first body that ends mid-file; later ones honest.
    let url = first_file(&c, &sb, "short_length=100", q);
    let (r, body) = get_bytes(&c, &url, &[]);
    assert_eq!(header(&r, "content-length").as_deref(), Some("100"));
    assert_eq!(body, &plain[..100]);
    let (_, body) = get_bytes(&c, &url, &[]);
    assert_eq!(body, plain);
    let url = first_file(&c, &sb, "short_length=999999", q);
    let (r, body) = get_bytes(&c, &url, &[]);
    assert_eq!(header(&r, "content-length"), Some(n.to_string()));
    assert_eq!(body, plain);

    // bad_chunked: chunked, then a chunk-size line that is not hex, then the end.
    let url = first_file(&c, &sb, "bad_chunked", q);
    for _ in 0..2 {
        let raw = raw_get(&url, &[]);
        assert_eq!(raw.header("transfer-encoding"), Some("chunked"));
        assert!(raw.closed);
        let (data, complete, bad) = dechunk(&raw.body);
        assert!(!complete);
        assert_eq!(bad.as_deref(), Some("zz"));
        assert_eq!(data, &plain[..n / 2]);
    }
    assert!(c.get(&url).send().expect("head").bytes().is_err());

    // trickle: half at once, then one byte per MS.
    let url = first_file(&c, &sb, "trickle=2", "_type=Organization");
    let t = std::time::Instant::now();
    let (_, slow) = get_bytes(&c, &url, &[]);
    let took = t.elapsed();
    let t = std::time::Instant::now();
    let (_, fast) = get_bytes(&c, &url, &[]);
    assert_eq!(slow, fast);
    let rest = (slow.len() - slow.len() / 2) as u32;
    assert!(rest > 300);
    assert!(
        took >= std::time::Duration::from_millis(2) * rest,
        "{took:?} for {rest} trickled bytes"
    );
    assert!(t.elapsed() < took / 2);
}

/// Polls `status_url` for a complete manifest again (the job is done).
fn refetch(c: &Client, status_url: &str) -> Value {
    let r = c.get(status_url).send().expect("poll");
    assert_eq!(r.status().as_u16(), 200);
    r.json().expect("manifest")
}

fn file_number(url: &str) -> usize {
    url.split('?')
        .next()
        .and_then(|p| p.rsplit('/').next())
        .and_then(|n| n.strip_suffix(".ndjson"))
        .and_then(|n| n.parse().ok())
        .expect("file number")
}

#[test]
fn manifest_faults() {
    let sb = sandbox(12, 3);
    let c = client();
    let q = "_type=Patient,Observation&_since=2024-01-01T00:00:00Z";
    let start = |scen: &str| {
        let url = format!(
            "{}/$export?{q}",
            sb.scenario_url(&format!("polls=0;errors;deleted=2;{scen}"))
        );
        location(&kickoff(&c, &url))
    };
    let nums = |urls: Vec<String>| -> Vec<usize> { urls.iter().map(|u| file_number(u)).collect() };
    let plain = refetch(&c, &start(""));
    let plain_urls = nums(output_urls(&plain));
    assert!(plain_urls.len() >= 4);

    // resign: fresh signatures in every manifest; the file endpoint ignores them.
    let loc = start("resign;expire_files=5");
    let a = refetch(&c, &loc);
    let b = refetch(&c, &loc);
    for (x, y) in output_urls(&a).iter().zip(output_urls(&b)) {
        let (_, qx) = x.split_once('?').expect("query");
        let (_, qy) = y.split_once('?').expect("query");
        let sig = |q: &str| {
            q.split('&')
                .find_map(|p| p.strip_prefix("sig="))
                .map(String::from)
        };
        assert!(
            qx.starts_with("g=1&sig=") && qy.starts_with("g=2&sig="),
            "{x} {y}"
        );
        let (sx, sy) = (sig(qx).expect("sig"), sig(qy).expect("sig"));
        assert_eq!(sx.len(), 32);
        assert!(sx.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(sx, sy);
        assert_eq!(file_number(x), file_number(&y));
    }
    assert!(a["error"][0]["url"].as_str().unwrap_or("").contains("sig="));
    assert!(a["deleted"][0]["url"]
        .as_str()
        .unwrap_or("")
        .contains("sig="));
    assert_eq!(lines(&c, &output_urls(&b)[0]).len(), 3);

    // reorder: later complete manifests list every array in another order.
    let loc = start("reorder");
    let first = refetch(&c, &loc);
    let again = refetch(&c, &loc);
    assert_eq!(nums(output_urls(&first)), plain_urls);
    let mut rev = nums(output_urls(&again));
    assert_ne!(rev, plain_urls);
    rev.reverse();
    assert_eq!(rev, plain_urls);
    assert_eq!(
        again["error"], first["error"],
        "one entry: nothing to reorder"
    );

    // dup_entry: the first output entry twice (same URL, also with resign).
    let loc = start("dup_entry;resign");
    for m in [refetch(&c, &loc), refetch(&c, &loc)] {
        let urls = output_urls(&m);
        assert_eq!(urls.len(), plain_urls.len() + 1);
        assert_eq!(urls[0], urls[1]);
        assert_eq!(m["output"][0], m["output"][1]);
    }

    // refresh_extra: later manifests start with a file the job does not have.
    let loc = start("refresh_extra");
    assert_eq!(nums(output_urls(&refetch(&c, &loc))), plain_urls);
    let m = refetch(&c, &loc);
    let urls = output_urls(&m);
    assert_eq!(nums(urls[1..].to_vec()), plain_urls);
    assert_eq!(m["output"][0]["type"], m["output"][1]["type"]);
    let files = plain_urls.len() + 2; // outputs, the error file, the deleted file
    assert_eq!(file_number(&urls[0]), files + 1);
    assert_eq!(
        outcome(c.get(&urls[0]).send().expect("missing file")),
        (404, "not-found".into())
    );

    // refresh_drop: later manifests omit the first output entry.
    let loc = start("refresh_drop");
    assert_eq!(nums(output_urls(&refetch(&c, &loc))), plain_urls);
    assert_eq!(nums(output_urls(&refetch(&c, &loc))), plain_urls[1..]);

    // Combined with paging, every page of a later manifest follows the new listing.
    let loc = start("refresh_drop;reorder;page=2");
    let (urls, _) = follow_pages(&c, refetch(&c, &loc), 2, 100);
    assert_eq!(nums(urls), plain_urls);
    let (urls, _) = follow_pages(&c, refetch(&c, &loc), 2, 100);
    let mut urls = nums(urls);
    urls.reverse();
    assert_eq!(urls, plain_urls[1..]);

    // transaction_time and bad_count are served verbatim.
    let m = refetch(
        &c,
        &start("transaction_time=yesterday-ish;bad_count=\"12\""),
    );
    assert_eq!(m["transactionTime"], "yesterday-ish");
    assert!(m["output"]
        .as_array()
        .expect("output")
        .iter()
        .all(|o| o["count"] == "12"));
    assert_eq!(m["error"][0]["count"], 2, "only output entries");
    for (v, want) in [
        ("-3", json!(-3)),
        ("1.5", json!(1.5)),
        ("null", Value::Null),
        ("lots", json!("lots")),
    ] {
        let m = refetch(&c, &start(&format!("bad_count={v}")));
        assert_eq!(m["output"][0]["count"], want, "{v}");
    }

    // A partial manifest shows dup_entry, resign and transaction_time as well.
    let url = format!(
        "{}/$export?_type=Patient&allowPartialManifests=true",
        sb.scenario_url("partial;polls=1;dup_entry;resign;transaction_time=t0")
    );
    let loc = location(&kickoff(&c, &url));
    let p: Value = c.get(&loc).send().expect("poll").json().expect("partial");
    let urls = output_urls(&p);
    assert_eq!(urls[0], urls[1]);
    assert!(urls[0].contains("?sig="));
    assert_eq!(p["transactionTime"], "t0");
}

#[test]
fn bom_and_line_faults_over_http() {
    let sb = auth_sandbox();
    let c = client();
    let tok = token(&c, &sb.token_url());
    let get = |url: &str| -> Vec<u8> {
        let r = c.get(url).bearer_auth(&tok).send().expect("get");
        assert!(r.status().is_success(), "{url}: {}", r.status());
        r.bytes().expect("body").to_vec()
    };
    let json_after_bom = |b: &[u8]| -> Value {
        assert_eq!(&b[..3], b"\xEF\xBB\xBF", "{}", String::from_utf8_lossy(b));
        serde_json::from_slice(&b[3..]).expect("JSON after the BOM")
    };
    let plain_url = format!("{}/$export?_type=Patient", sb.scenario_url("polls=0"));
    let loc = location(
        &bulk(c.get(&plain_url))
            .bearer_auth(&tok)
            .send()
            .expect("kick"),
    );
    let m: Value = serde_json::from_slice(&get(&loc)).expect("manifest");
    let plain = get(m["output"][0]["url"].as_str().expect("url"));

    // bom: files (the length counts it), manifests, partial manifests and pages, token and
    // smart-configuration answers.
    let scen = "bom;partial;polls=1;page=1;length";
    let url = format!(
        "{}/$export?_type=Patient,Encounter,Observation,Condition,MedicationRequest&allowPartialManifests=true",
        sb.scenario_url(scen)
    );
    let loc = location(&bulk(c.get(&url)).bearer_auth(&tok).send().expect("kick"));
    let p = json_after_bom(&get(&loc));
    let next = p["link"][0]["url"]
        .as_str()
        .expect("partial page")
        .to_string();
    json_after_bom(&get(&next));
    let m = json_after_bom(&get(&loc));
    let file = m["output"][0]["url"].as_str().expect("url").to_string();
    let r = c.get(&file).bearer_auth(&tok).send().expect("file");
    assert_eq!(
        header(&r, "content-length"),
        Some((plain.len() + 3).to_string())
    );
    let body = r.bytes().expect("body");
    assert_eq!(&body[..3], b"\xEF\xBB\xBF");
    assert_eq!(&body[3..], &plain[..]);
    let r = c
        .get(&file)
        .bearer_auth(&tok)
        .header("Range", "bytes=3-")
        .send()
        .expect("range");
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(&r.bytes().expect("body")[..], &plain[..]);
    if let Some(next) = m["link"][0]["url"].as_str() {
        json_after_bom(&get(next));
    }
    let base = sb.scenario_url("bom");
    let conf = c
        .get(format!("{base}/.well-known/smart-configuration"))
        .send()
        .expect("conf")
        .bytes()
        .expect("body");
    assert!(json_after_bom(&conf)["token_endpoint"].is_string());
    let turl = format!("{}/x/bom/auth/token", sb.root_url());
    let r = jwt_request(&c, &turl, &rs(&claims(&turl)), SCOPE);
    assert_eq!(r.status().as_u16(), 200);
    assert!(json_after_bom(&r.bytes().expect("body"))["access_token"].is_string());

    // Line faults.
    let file_of = |scen: &str| -> Vec<u8> {
        let url = format!(
            "{}/$export?_type=Patient",
            sb.scenario_url(&format!("polls=0;{scen}"))
        );
        let loc = location(&bulk(c.get(&url)).bearer_auth(&tok).send().expect("kick"));
        let m: Value = serde_json::from_slice(&get(&loc)).expect("manifest");
        get(m["output"][0]["url"].as_str().expect("url"))
    };
    let plain_lines: Vec<&[u8]> = plain.split_inclusive(|&b| b == b'\n').collect();
    let body = file_of("bad_utf8=1");
    assert!(std::str::from_utf8(&body).is_err());
    let got: Vec<&[u8]> = body.split_inclusive(|&b| b == b'\n').collect();
    assert_eq!(got.len(), plain_lines.len() + 1);
    assert_eq!(got[0], plain_lines[0]);
    assert_eq!(
        got[1],
        &b"{\"resourceType\":\"Basic\",\"id\":\"sandbox-bad-utf8\",\"note\":\"\xFF\xFE\"}\n"[..]
    );
    assert_eq!(got[2..], plain_lines[1..]);

    let body = String::from_utf8(file_of("contained_first")).expect("utf8");
    let plain_text = std::str::from_utf8(&plain).expect("utf8");
    for (l, p) in body.lines().zip(plain_text.lines()) {
        assert!(l.starts_with("{\"contained\":[{\"resourceType\":\"Basic\",\"id\":\"sandbox-contained\"}],\"resourceType\":\"Patient\","), "{l}");
        let (v, w): (Value, Value) = (
            serde_json::from_str(l).expect("json"),
            serde_json::from_str(p).expect("json"),
        );
        assert_eq!(
            (&v["resourceType"], &v["id"]),
            (&w["resourceType"], &w["id"])
        );
    }
    assert_eq!(body.lines().count(), plain_text.lines().count());

    let body = String::from_utf8(file_of("long_line=400:2")).expect("utf8");
    let got: Vec<&str> = body.lines().collect();
    assert_eq!(got.len(), plain_text.lines().count() + 2);
    for (i, k) in [(1, 1), (3, 2)] {
        let v: Value = serde_json::from_str(got[i]).expect("json");
        assert_eq!(v["id"], format!("sandbox-long-line-{k}"));
        assert_eq!(got[i].len(), 400);
    }
    let body = String::from_utf8(file_of("long_line=400")).expect("utf8");
    let v: Value = serde_json::from_str(body.lines().nth(1).expect("line 2")).expect("json");
    assert_eq!(v["id"], "sandbox-long-line");

    let body = String::from_utf8(file_of("truncate_last=inner")).expect("utf8");
    let last = body.rsplit('\n').next().expect("last");
    assert_eq!(
        last,
        "{\"resourceType\":\"Observation\",\"id\":\"sandbox-truncated\",\"code\":{\"text\":\"cut\"}"
    );
    assert_eq!(last, fhirbulk::sandbox::TRUNCATED_INNER_LINE);
    let body = String::from_utf8(file_of("truncate_last")).expect("utf8");
    assert!(body.ends_with(fhirbulk::sandbox::TRUNCATED_LINE));
}

#[test]
fn prerendered_files_with_byte_faults_bypass_the_cache() {
    let pre = Sandbox::start(SandboxOptions {
        patients: 6,
        records_per_file: 50,
        threads: 2,
        prerender: true,
        ..SandboxOptions::default()
    })
    .expect("sandbox starts");
    let c = client();
    let q = "_type=Patient";
    let file = |scen: &str| {
        let url = first_file(&c, &pre, scen, q);
        let (r, a) = get_bytes(&c, &url, &[]);
        let len = header(&r, "content-length");
        let (_, b) = get_bytes(&c, &url, &[]);
        (a, b, len)
    };
    let (plain, again, len) = file("");
    assert_eq!(plain, again);
    assert_eq!(len, Some(plain.len().to_string()));
    for scen in [
        "bom",
        "contained_first",
        "bad_utf8=1",
        "long_line=300:2",
        "truncate_last=inner",
    ] {
        let (a, _, len) = file(scen);
        assert_ne!(a, plain, "{scen}");
        assert_eq!(len, Some(a.len().to_string()), "{scen}");
    }
    let (a, b, _) = file("change_file");
    assert_eq!(a, plain);
    assert_ne!(b, plain);
    assert_eq!(
        b.len(),
        plain.len() + 2 * plain.iter().filter(|&&x| x == b'\n').count()
    );
    // The cache still holds the plain bytes.
    assert_eq!(file("").0, plain);
}

/// Reads up to `limit` bytes of a body and drops the connection: (bytes, whether it ended).
fn read_some(r: Response, limit: usize) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut r = r.take(limit as u64 + 1);
    let _ = r.read_to_end(&mut out);
    let ended = out.len() <= limit;
    out.truncate(limit);
    (out, ended)
}

#[test]
fn endless_bodies() {
    let sb = auth_sandbox();
    let c = client();
    let tok = token(&c, &sb.token_url());
    const LIMIT: usize = 256 * 1024;
    let check = |r: Response, status: u16, starts: &str, what: &str| {
        assert_eq!(r.status().as_u16(), status, "{what}");
        assert!(r.content_length().is_none(), "{what}: chunked");
        let (body, ended) = read_some(r, LIMIT);
        assert!(!ended, "{what}: the body never ends");
        let text = String::from_utf8(body).expect("utf8");
        assert!(text.starts_with(starts), "{what}: {}", &text[..200]);
        text
    };
    let scen = "endless_body=token,smart_config,metadata,status,manifest,error";
    let base = sb.scenario_url(&format!("polls=1;{scen}"));
    let turl = format!("{}/x/polls=1;{scen}/auth/token", sb.root_url());
    let r = jwt_request(&c, &turl, &rs(&claims(&turl)), SCOPE);
    check(r, 200, "{\"access_token\":\"xxxxxxxx", "token");
    let r = c
        .get(format!("{base}/.well-known/smart-configuration"))
        .send()
        .expect("conf");
    check(
        r,
        200,
        "{\"token_endpoint\":\"http://127.0.0.1:",
        "smart_config",
    );
    let r = c.get(format!("{base}/metadata")).send().expect("metadata");
    check(
        r,
        200,
        "{\"resourceType\":\"CapabilityStatement\"",
        "metadata",
    );
    // error: the 401 without a token, kickoff=CODE, storm, file_error...
    let r = kickoff(&c, &format!("{base}/$export"));
    let t = check(
        r,
        401,
        "{\"resourceType\":\"OperationOutcome\",\"issue\":[{",
        "401",
    );
    assert!(t.contains("\"code\":\"login\""));
    let loc = location(
        &bulk(c.get(format!("{base}/$export?_type=Patient")))
            .bearer_auth(&tok)
            .send()
            .expect("kick"),
    );
    let r = c.get(&loc).bearer_auth(&tok).send().expect("poll");
    check(r, 202, "{\"resourceType\":\"OperationOutcome\"", "status");
    let r = c.get(&loc).bearer_auth(&tok).send().expect("poll");
    let t = check(r, 200, "{\"transactionTime\":\"", "manifest");
    let file = t
        .split("\"url\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a file URL")
        .to_string();
    assert!(t.matches(&file).count() > 10, "entries forever");
    // Files are not affected.
    let r = c.get(&file).bearer_auth(&tok).send().expect("file");
    assert_eq!(r.text().expect("body").lines().count(), 3);
    for (scen, status) in [("kickoff=503", 503), ("storm=1", 429)] {
        let u = format!(
            "{}/$export",
            sb.scenario_url(&format!("endless_body=error;{scen}"))
        );
        let r = bulk(c.get(&u)).bearer_auth(&tok).send().expect("kick");
        check(r, status, "{\"resourceType\":\"OperationOutcome\"", scen);
    }
    // A partial manifest in a 202 streams its entries.
    let u = format!(
        "{}/$export?_type=Patient,Observation,Condition&allowPartialManifests=true",
        sb.scenario_url("endless_body=status;partial;polls=1")
    );
    let loc = location(&bulk(c.get(&u)).bearer_auth(&tok).send().expect("kick"));
    let r = c.get(&loc).bearer_auth(&tok).send().expect("poll");
    let t = check(r, 202, "{\"", "partial");
    assert!(t.contains("\"output\":[{"));
    // The workers were freed when the clients went away.
    std::thread::sleep(std::time::Duration::from_millis(200));
    for _ in 0..4 {
        let r = c
            .get(format!("{}/metadata", sb.base_url()))
            .send()
            .expect("metadata");
        assert_eq!(r.status().as_u16(), 200);
    }
}

#[test]
fn auth_discovery_and_error_faults() {
    let sb = auth_sandbox();
    let c = client();
    let turl = |scen: &str| format!("{}/x/{scen}/auth/token", sb.root_url());

    // token_blip: the first token works; then N failures (per sandbox), then success.
    let u = turl("token_blip=2");
    assert_eq!(
        jwt_request(&c, &u, &rs(&claims(&u)), SCOPE)
            .status()
            .as_u16(),
        200
    );
    for _ in 0..2 {
        let r = jwt_request(&c, &u, &rs(&claims(&u)), SCOPE);
        assert_eq!(header(&r, "retry-after").as_deref(), Some("0"));
        let (s, e, d) = oauth_err(r);
        assert_eq!(
            (s, e.as_str(), d.as_str()),
            (503, "temporarily_unavailable", "sandbox token_blip")
        );
    }
    assert_eq!(
        jwt_request(&c, &u, &rs(&claims(&u)), SCOPE)
            .status()
            .as_u16(),
        200
    );
    let u2 = turl("token_blip=429:1;error_retry_after=5");
    assert_eq!(
        jwt_request(&c, &u2, &rs(&claims(&u2)), SCOPE)
            .status()
            .as_u16(),
        200
    );
    assert_eq!(sb.tokens_issued(), 3);

    // token_error_200: the OAuth error with status 200.
    let u = turl("token_error=invalid_grant;token_error_200");
    let r = jwt_request(&c, &u, &rs(&claims(&u)), SCOPE);
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().expect("json");
    assert_eq!(v["error"], "invalid_grant");
    assert!(v.get("access_token").is_none());

    // discovery_blip: the first N of each discovery document answer 503.
    let base = sb.scenario_url("discovery_blip=2");
    for doc in [".well-known/smart-configuration", "metadata"] {
        for _ in 0..2 {
            let r = c.get(format!("{base}/{doc}")).send().expect("get");
            assert_eq!(header(&r, "retry-after").as_deref(), Some("0"), "{doc}");
            assert_eq!(outcome(r), (503, "transient".into()), "{doc}");
        }
        let r = c.get(format!("{base}/{doc}")).send().expect("get");
        assert_eq!(r.status().as_u16(), 200, "{doc}");
    }

    // error_retry_after: every 429 and 503, in seconds, dates, epoch or not at all.
    let plain = sandbox(3, 10);
    let retry = |scen: &str, status: u16| -> Option<String> {
        let u = format!(
            "{}/$export?_type=Patient",
            plain.scenario_url(&format!("polls=0;{scen}"))
        );
        let r = kickoff(&c, &u);
        if r.status().as_u16() == status {
            return header(&r, "retry-after");
        }
        let loc = location(&r);
        loop {
            let r = c.get(&loc).send().expect("poll");
            match r.status().as_u16() {
                s if s == status => return header(&r, "retry-after"),
                200 => {
                    let m: Value = r.json().expect("manifest");
                    let f = m["output"][0]["url"].as_str().expect("url").to_string();
                    let r = c.get(&f).send().expect("file");
                    assert_eq!(r.status().as_u16(), status, "{scen}");
                    return header(&r, "retry-after");
                }
                _ => {}
            }
        }
    };
    assert_eq!(
        retry("storm=1", 429).as_deref(),
        Some("0"),
        "unchanged default"
    );
    assert_eq!(
        retry("storm=1;error_retry_after=7", 429).as_deref(),
        Some("7")
    );
    assert_eq!(retry("kickoff=429;error_retry_after=none", 429), None);
    assert_eq!(
        retry("kickoff=503;error_retry_after=3", 503).as_deref(),
        Some("3")
    );
    assert_eq!(
        retry("throttle=1;error_retry_after=9", 429).as_deref(),
        Some("9")
    );
    assert_eq!(retry("file_error=503", 503), None, "unchanged default");
    let now = unix_now();
    let epoch: u64 = retry("file_error=503;error_retry_after=epoch", 503)
        .expect("Retry-After")
        .parse()
        .expect("an integer");
    assert!(epoch > now && epoch <= now + 4, "{epoch} vs {now}");
    let date = retry("file_error=429;error_retry_after=date", 429).expect("Retry-After");
    assert!(httpdate::parse_http_date(&date).is_ok(), "{date}");
    // retry_after=epoch on the 202 answers.
    let u = format!(
        "{}/$export",
        plain.scenario_url("polls=1;retry_after=epoch")
    );
    let r = c.get(location(&kickoff(&c, &u))).send().expect("poll");
    assert_eq!(r.status().as_u16(), 202);
    let v: u64 = header(&r, "retry-after")
        .expect("Retry-After")
        .parse()
        .expect("integer");
    assert!(v > now && v <= now + 4);
    // ... and on token_blip answers (a new sandbox: blips are counted per sandbox).
    let fresh = auth_sandbox();
    let u = format!(
        "{}/x/token_blip=429:1;error_retry_after=11/auth/token",
        fresh.root_url()
    );
    assert_eq!(
        jwt_request(&c, &u, &rs(&claims(&u)), SCOPE)
            .status()
            .as_u16(),
        200
    );
    let r = jwt_request(&c, &u, &rs(&claims(&u)), SCOPE);
    assert_eq!(header(&r, "retry-after").as_deref(), Some("11"));
    assert_eq!(r.status().as_u16(), 429);

    // ansi: escapes in front of diagnostics and OAuth error descriptions.
    const ESC: &str = "\u{1b}[31m\u{1b}]0;sandbox\u{7}";
    let u = format!("{}/$export", plain.scenario_url("ansi;kickoff=503"));
    let text = kickoff(&c, &u).text().expect("body");
    assert!(
        text.contains("\\u001b[31m\\u001b]0;sandbox\\u0007sandbox forced 503"),
        "{text}"
    );
    let v: Value = serde_json::from_str(&text).expect("json");
    assert!(v["issue"][0]["diagnostics"]
        .as_str()
        .expect("diag")
        .starts_with(ESC));
    let u = turl("ansi;token_error=invalid_scope");
    let (_, _, d) = oauth_err(jwt_request(&c, &u, &rs(&claims(&u)), SCOPE));
    assert_eq!(d, format!("{ESC}sandbox forced invalid_scope"));
    let u = format!(
        "{}/$export?_type=Patient",
        plain.scenario_url("ansi;polls=0;errors")
    );
    let m = manifest(&c, &location(&kickoff(&c, &u)));
    for issue in lines(&c, m["error"][0]["url"].as_str().expect("url")) {
        assert!(issue["issue"][0]["diagnostics"]
            .as_str()
            .expect("diag")
            .starts_with(ESC));
    }
}
