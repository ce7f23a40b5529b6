//! The export engine against the sandbox server, over real HTTP.

use fhirbulk::sandbox::{LoggedRequest, Sandbox, SandboxOptions, TruthQuery};
use fhirbulk::{Config, ErrorCode, Export, Kind, Level, Method, Next, State};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

fn sandbox(patients: usize, per_file: usize) -> Sandbox {
    Sandbox::start(SandboxOptions {
        patients,
        records_per_file: per_file,
        ..SandboxOptions::default()
    })
    .expect("sandbox starts")
}

/// A config with fast polling for tests.
fn config(base: String) -> Config {
    let mut c = Config::new(base);
    c.poll_min_ms = 10;
    c.poll_max_ms = 200;
    c.poll_backoff_max_ms = 100;
    c.retry_backoff_min_ms = 10;
    c.retry_backoff_max_ms = 100;
    c
}

fn group(base: String, id: &str, types: &[&str]) -> Config {
    let mut c = config(base);
    c.level = Level::Group;
    c.group_id = Some(id.into());
    c.types = types.iter().map(|t| t.to_string()).collect();
    c
}

#[derive(Default, Debug)]
struct Tally {
    /// output records per resource type
    per_type: BTreeMap<String, u64>,
    errors: u64,
    deleted: u64,
    total: u64,
}

/// Run an export to the end, checking every record: valid JSON whose resourceType matches, and
/// no (file, line) delivered twice.
fn run(cfg: Config) -> Result<(Tally, Export), fhirbulk::Error> {
    let mut export = Export::start(cfg)?;
    let mut tally = Tally::default();
    let mut seen = HashSet::new();
    loop {
        match export.next_record(Some(Duration::from_secs(30)))? {
            Next::Item(r) => {
                assert!(
                    seen.insert((r.file_index, r.line)),
                    "record delivered twice: {r:?}"
                );
                let v: serde_json::Value = serde_json::from_slice(r.data).expect("record is JSON");
                assert_eq!(v["resourceType"], r.resource_type, "type of {r:?}");
                tally.total += 1;
                match r.kind {
                    Kind::Output => {
                        *tally
                            .per_type
                            .entry(r.resource_type.to_owned())
                            .or_default() += 1
                    }
                    Kind::Error => tally.errors += 1,
                    Kind::Deleted => tally.deleted += 1,
                    Kind::Attachment => panic!("no attachments were asked for: {r:?}"),
                }
            }
            Next::End => break,
            Next::Timeout => panic!("no record within 30 s"),
            Next::Cancelled => panic!("cancelled"),
        }
    }
    Ok((tally, export))
}

fn truth(sb: &Sandbox, level: &str, group: Option<&str>, types: &[&str]) -> BTreeMap<String, u64> {
    let mut t = sb.truth(&TruthQuery {
        level: level.into(),
        group: group.map(str::to_owned),
        types: types.iter().map(|t| t.to_string()).collect(),
        ..TruthQuery::default()
    });
    t.retain(|_, n| *n > 0);
    t
}

fn kickoffs(sb: &Sandbox) -> Vec<LoggedRequest> {
    sb.requests()
        .into_iter()
        .filter(|r| r.path.ends_with("$export"))
        .collect()
}

fn header<'a>(r: &'a LoggedRequest, name: &str) -> Option<&'a str> {
    r.header(name)
}

fn query<'a>(r: &'a LoggedRequest, name: &str) -> Vec<&'a str> {
    r.query
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn group_export_delivers_every_record_exactly_once() {
    let sb = sandbox(40, 7);
    let types = [
        "Patient",
        "Observation",
        "Condition",
        "Encounter",
        "MedicationRequest",
    ];
    let (tally, export) = run(group(sb.base_url(), "g1", &types)).unwrap();
    let expected = truth(&sb, "group", Some("g1"), &types);
    assert_eq!(tally.per_type, expected);
    let p = export.progress();
    assert_eq!(p.state, State::Done);
    assert_eq!(p.records_delivered, tally.total);
    let files = export.controller().files();
    assert!(files.len() > 20, "small files make many: {}", files.len());
    assert_eq!(p.files_total as usize, files.len());
    assert_eq!(p.files_done, p.files_total);
    assert!(p.bytes_downloaded > 0);
    let manifest = export.controller().manifest().unwrap();
    assert_eq!(manifest["output"].as_array().unwrap().len(), files.len());
    assert!(manifest["transactionTime"].is_string());
    // The checkpoint of a finished export: every file complete (one range), none in progress.
    let cp = export.controller().checkpoint().unwrap();
    assert!(cp.manifest_complete);
    assert_eq!(cp.files_known, Some(files.len() as u32));
    assert_eq!(cp.complete, vec![[0, files.len() as u32]]);
    assert!(cp.in_progress.is_empty(), "{:?}", cp.in_progress);
    assert!(cp.files.is_empty(), "version 2 does not list the files");
}

#[test]
fn every_level_matches_the_ground_truth() {
    let sb = sandbox(25, 50);
    let mut system = config(sb.base_url());
    system.level = Level::System;
    let (t, _) = run(system).unwrap();
    assert_eq!(t.per_type, truth(&sb, "system", None, &[]));
    assert!(
        t.per_type.contains_key("Organization"),
        "system level has non-patient data"
    );

    let mut patient = config(sb.base_url());
    patient.level = Level::Patient;
    patient.types = vec!["Patient".into(), "Encounter".into()];
    let (t, _) = run(patient).unwrap();
    assert_eq!(
        t.per_type,
        truth(&sb, "patient", None, &["Patient", "Encounter"])
    );

    let (t, _) = run(group(sb.base_url(), "g2", &["Patient"])).unwrap();
    assert_eq!(t.per_type, truth(&sb, "group", Some("g2"), &["Patient"]));
    assert!(t.per_type["Patient"] < 25);
    let paths: Vec<String> = kickoffs(&sb).into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/fhir/$export",
            "/fhir/Patient/$export",
            "/fhir/Group/g2/$export"
        ]
    );
}

#[test]
fn batches_deliver_the_same_records() {
    let sb = sandbox(30, 20);
    let types = ["Patient", "Observation"];
    let mut export = Export::start(group(sb.base_url(), "g1", &types)).unwrap();
    let mut per_type: BTreeMap<String, u64> = BTreeMap::new();
    let mut seen = HashSet::new();
    loop {
        match export
            .next_batch(1000, Some(Duration::from_secs(30)))
            .unwrap()
        {
            Next::Item(b) => {
                assert!(!b.is_empty());
                let mut joined = Vec::new();
                for r in b.iter() {
                    assert!(seen.insert((r.file_index, r.line)));
                    *per_type.entry(r.resource_type.to_owned()).or_default() += 1;
                    joined.extend_from_slice(r.data);
                    joined.push(b'\n');
                }
                assert_eq!(
                    b.data(),
                    &joined[..],
                    "batch data holds the records, newline-ended"
                );
            }
            Next::End => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(per_type, truth(&sb, "group", Some("g1"), &types));
}

#[test]
fn get_parameters_reach_the_server_as_sent() {
    let sb = sandbox(10, 100);
    let mut c = group(sb.base_url(), "g1", &["Patient", "Observation"]);
    c.since = Some("2024-03-01T00:00:00+01:00".into());
    c.until = Some("2024-11-01T00:00:00Z".into());
    c.output_format = Some("application/fhir+ndjson".into());
    c.elements = vec!["id".into(), "status".into()];
    c.type_filters = vec![
        "Observation?status=final,amended".into(),
        "Patient?gender=female".into(),
    ];
    c.include_associated_data = vec!["LatestProvenanceResources".into()];
    c.headers
        .insert("X-Request-Source".into(), "fhirbulk-test".into());
    let (tally, _) = run(c).unwrap();
    assert!(tally.total > 0);
    let k = &kickoffs(&sb)[0];
    assert_eq!(k.method, "GET");
    assert_eq!(
        query(k, "_type"),
        ["Patient,Observation"],
        "one comma-joined _type"
    );
    assert_eq!(
        query(k, "_since"),
        ["2024-03-01T00:00:00+01:00"],
        "'+' survives encoding"
    );
    assert_eq!(query(k, "_until"), ["2024-11-01T00:00:00Z"]);
    assert_eq!(query(k, "_outputFormat"), ["application/fhir+ndjson"]);
    assert_eq!(query(k, "_elements"), ["id,status"]);
    assert_eq!(
        query(k, "includeAssociatedData"),
        ["LatestProvenanceResources"]
    );
    // The filters are comma-joined; the comma inside the first one arrives escaped (%2C).
    let raw = k.raw_query.as_str();
    assert!(
        raw.contains(
            "_typeFilter=Observation%3Fstatus%3Dfinal%2Camended,Patient%3Fgender%3Dfemale"
        ),
        "{raw}"
    );
    assert_eq!(header(k, "accept"), Some("application/fhir+json"));
    assert_eq!(header(k, "prefer"), Some("respond-async"));
    assert_eq!(header(k, "x-request-source"), Some("fhirbulk-test"));
    let status = sb
        .requests()
        .into_iter()
        .find(|r| r.path.contains("/jobs/"))
        .unwrap();
    assert_eq!(header(&status, "accept"), Some("application/json"));
    let file = sb
        .requests()
        .into_iter()
        .find(|r| r.path.contains("/files/"))
        .unwrap();
    assert_eq!(header(&file, "accept"), Some("application/fhir+ndjson"));
    assert!(header(&file, "accept-encoding")
        .unwrap_or("")
        .contains("gzip"));
}

#[test]
fn patients_force_post_with_a_parameters_body() {
    let sb = sandbox(12, 100);
    let mut c = group(sb.base_url(), "g1", &["Patient", "Observation"]);
    c.patients = vec!["Patient/p1".into(), "p3".into()];
    c.since = Some("2024-01-01T00:00:00Z".into());
    let (tally, _) = run(c).unwrap();
    let expected = sb.truth(&TruthQuery {
        level: "group".into(),
        group: Some("g1".into()),
        types: vec!["Patient".into(), "Observation".into()],
        since: Some("2024-01-01T00:00:00Z".into()),
        patients: vec!["Patient/p1".into(), "Patient/p3".into()],
        ..TruthQuery::default()
    });
    assert_eq!(tally.per_type["Patient"], 2);
    assert_eq!(
        tally.per_type.get("Observation"),
        expected.get("Observation")
    );
    let k = &kickoffs(&sb)[0];
    assert_eq!(k.method, "POST");
    assert!(k.query.is_empty());
    assert_eq!(header(k, "content-type"), Some("application/fhir+json"));
    let body: serde_json::Value = serde_json::from_str(&k.body).unwrap();
    assert_eq!(body["resourceType"], "Parameters");
    let params = body["parameter"].as_array().unwrap();
    let refs: Vec<&str> = params
        .iter()
        .filter(|p| p["name"] == "patient")
        .map(|p| p["valueReference"]["reference"].as_str().unwrap())
        .collect();
    assert_eq!(refs, ["Patient/p1", "Patient/p3"]);
    assert!(params
        .iter()
        .any(|p| p["name"] == "_since" && p["valueInstant"] == "2024-01-01T00:00:00Z"));
    assert!(params
        .iter()
        .any(|p| p["name"] == "_type" && p["valueString"] == "Patient,Observation"));

    // POST on request, without patients.
    sb.clear_requests();
    let mut c = group(sb.base_url(), "g1", &["Patient"]);
    c.method = Method::Post;
    let (tally, _) = run(c).unwrap();
    assert_eq!(tally.per_type["Patient"], 12);
    assert_eq!(kickoffs(&sb)[0].method, "POST");
}

#[test]
fn lenient_turns_unsupported_types_into_error_records() {
    let sb = sandbox(5, 100);
    let strict = group(sb.base_url(), "g1", &["Patient", "Claim"]);
    let e = run(strict).err().expect("422");
    assert_eq!(e.code, ErrorCode::Unprocessable);
    assert_eq!(e.http_status, Some(422));
    assert!(!e.issues.is_empty(), "{e:?}");

    let mut lenient = group(sb.base_url(), "g1", &["Patient", "Claim"]);
    lenient.lenient = true;
    let (tally, _) = run(lenient).unwrap();
    assert_eq!(tally.per_type["Patient"], 5);
    assert!(
        tally.errors >= 1,
        "the ignored type is reported in an error file"
    );
    let k = kickoffs(&sb).pop().unwrap();
    assert_eq!(
        header(&k, "prefer"),
        Some("respond-async, handling=lenient")
    );
}

#[test]
fn every_kickoff_error_status_has_its_code_and_operation_outcome() {
    let sb = sandbox(3, 100);
    for (status, code) in [
        (400, ErrorCode::BadRequest),
        (401, ErrorCode::Unauthorized),
        (403, ErrorCode::Forbidden),
        (404, ErrorCode::NotFound),
        (406, ErrorCode::NotAcceptable),
        (415, ErrorCode::UnsupportedMediaType),
        (422, ErrorCode::Unprocessable),
        (429, ErrorCode::Throttled),
        (500, ErrorCode::Server),
        (503, ErrorCode::Server),
    ] {
        let mut c = group(
            sb.scenario_url(&format!("kickoff={status}")),
            "g1",
            &["Patient"],
        );
        // 429 and 5xx are retried (twice here) unless the OperationOutcome names only
        // non-transient issues; the sandbox's 500 says `exception`, which may pass.
        c.retry_max_attempts = 2;
        sb.clear_requests();
        let e = run(c).err().unwrap_or_else(|| panic!("{status} must fail"));
        let kickoffs = sb.requests().len();
        let expected = if matches!(status, 429 | 500 | 503) {
            2
        } else {
            1
        };
        assert_eq!(kickoffs, expected, "{status}: kick-off requests");
        assert_eq!(e.code, code, "{status}: {e}");
        assert_eq!(e.http_status, Some(status));
        assert!(e.message.contains(&status.to_string()), "{}", e.message);
        assert!(!e.issues.is_empty(), "{status}: OperationOutcome issues");
        assert!(
            e.url.as_deref().unwrap().ends_with("/$export"),
            "{:?}",
            e.url
        );
        if status == 429 {
            assert!(e.message.contains("already running"), "{}", e.message);
        }
    }
    // A real 404 (unknown group) and a real 406 (wrong Accept is not something we send, so the
    // sandbox forces it above).
    let e = run(group(sb.base_url(), "no-such-group", &["Patient"]))
        .err()
        .unwrap();
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(
        e.issues.iter().any(|i| i.code == "not-found"),
        "{:?}",
        e.issues
    );
    assert!(e.to_json().contains("\"not_found\""));
}

#[test]
fn job_failures_and_transient_poll_errors() {
    let sb = sandbox(4, 100);
    let e = run(group(sb.scenario_url("poll=500"), "g1", &["Patient"]))
        .err()
        .unwrap();
    assert_eq!(e.code, ErrorCode::Server);
    assert!(e.url.unwrap().contains("/jobs/"));

    // Transient OperationOutcome and 429 on polls: retried, the export completes.
    for scenario in ["transient=2", "throttle=2"] {
        let (t, export) = run(group(sb.scenario_url(scenario), "g1", &["Patient"])).unwrap();
        assert_eq!(t.per_type["Patient"], 4, "{scenario}");
        assert!(export.progress().polls >= 3, "{scenario}");
        assert!(
            export.progress().retries >= 2,
            "{scenario}: retries are counted"
        );
    }
    // ... but only as often as configured.
    let mut c = group(sb.scenario_url("transient=10"), "g1", &["Patient"]);
    c.retry_max_attempts = 3;
    let e = run(c).err().unwrap();
    assert_eq!(e.code, ErrorCode::Server);
    assert!(e.issues.iter().any(|i| i.code == "transient"));
}

fn status_polls(sb: &Sandbox) -> Vec<u64> {
    sb.requests()
        .into_iter()
        .filter(|r| {
            r.method == "GET" && r.path.contains("/jobs/") && !r.path.contains("/manifest/")
        })
        .map(|r| r.at_ms)
        .collect()
}

#[test]
fn retry_after_is_honoured_and_clamped() {
    let sb = sandbox(2, 100);
    let mut c = group(sb.scenario_url("polls=2;retry_after=1"), "g1", &["Patient"]);
    c.poll_max_ms = 5_000;
    run(c).unwrap();
    let at = status_polls(&sb);
    assert_eq!(at.len(), 3);
    for w in at.windows(2) {
        assert!(w[1] - w[0] >= 950, "polled faster than Retry-After: {at:?}");
    }

    // An HTTP-date Retry-After is honoured too.
    sb.clear_requests();
    let mut c = group(
        sb.scenario_url("polls=1;retry_after=date"),
        "g1",
        &["Patient"],
    );
    c.poll_max_ms = 5_000;
    run(c).unwrap();
    let at = status_polls(&sb);
    assert!(at[1] - at[0] >= 900, "{at:?}");

    // A huge Retry-After is clamped to poll_max_ms.
    sb.clear_requests();
    let started = Instant::now();
    let mut c = group(
        sb.scenario_url("polls=2;retry_after=600"),
        "g1",
        &["Patient"],
    );
    c.poll_max_ms = 100;
    run(c).unwrap();
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn backs_off_exponentially_without_retry_after() {
    let sb = sandbox(2, 100);
    let mut c = group(
        sb.scenario_url("polls=4;retry_after=none"),
        "g1",
        &["Patient"],
    );
    c.poll_min_ms = 100;
    c.poll_backoff_max_ms = 10_000;
    c.poll_max_ms = 10_000;
    run(c).unwrap();
    let at = status_polls(&sb);
    assert_eq!(at.len(), 5);
    let gaps: Vec<u64> = at.windows(2).map(|w| w[1] - w[0]).collect();
    // 100, 200, 400, 800 ms: each wait at least the doubled minimum.
    for (i, g) in gaps.iter().enumerate() {
        assert!(*g >= (100u64 << i) - 10, "gaps {gaps:?}");
    }
}

#[test]
fn server_progress_is_surfaced_while_waiting() {
    let sb = sandbox(2, 100);
    let mut c = group(sb.scenario_url("polls=3;retry_after=1"), "g1", &["Patient"]);
    c.poll_max_ms = 300;
    let mut export = Export::start(c).unwrap();
    let ctl = export.controller();
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let p = ctl.progress();
        if let Some(text) = p.server_progress {
            assert_eq!(p.state, State::Waiting);
            break text;
        }
        assert!(Instant::now() < deadline, "no X-Progress surfaced");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(seen.contains('%'), "{seen}");
    while let Next::Item(_) = export.next_record(None).unwrap() {}
    assert_eq!(ctl.progress().state, State::Done);
}

#[test]
fn cancel_wakes_a_blocked_consumer_and_deletes_the_job() {
    let sb = sandbox(60, 5);
    let c = group(
        sb.scenario_url("slow=300"),
        "g1",
        &["Patient", "Observation"],
    );
    let mut export = Export::start(c).unwrap();
    let ctl = export.controller();
    // Take one record so the downloads are under way, then block.
    assert!(matches!(export.next_record(None).unwrap(), Next::Item(_)));
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        ctl.cancel();
        t
    });
    let outcome = loop {
        match export.next_record(None).unwrap() {
            Next::Item(_) => continue,
            other => break other,
        }
    };
    let cancelled_at = canceller.join().unwrap();
    assert!(matches!(outcome, Next::Cancelled), "{outcome:?}");
    assert!(cancelled_at.elapsed() < Duration::from_secs(2));
    drop(export); // joins the threads (DELETE is sent before the state turns Cancelled)
    let deletes: Vec<_> = sb
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .collect();
    assert_eq!(deletes.len(), 1, "the server job is deleted");
    assert!(deletes[0].path.contains("/jobs/"));
}

#[test]
fn delete_after_complete_when_asked() {
    let sb = sandbox(3, 100);
    let mut c = group(sb.base_url(), "g1", &["Patient"]);
    c.delete_on_complete = true;
    run(c).unwrap();
    assert_eq!(
        sb.requests()
            .iter()
            .filter(|r| r.method == "DELETE")
            .count(),
        1
    );
    // And not by default.
    sb.clear_requests();
    run(group(sb.base_url(), "g1", &["Patient"])).unwrap();
    assert_eq!(
        sb.requests()
            .iter()
            .filter(|r| r.method == "DELETE")
            .count(),
        0
    );
}

#[test]
fn gzip_and_content_length_bodies() {
    let sb = sandbox(20, 9);
    let types = ["Patient", "Observation"];
    for scenario in ["gzip", "length", "gzip;length"] {
        let (t, _) = run(group(sb.scenario_url(scenario), "g1", &types)).unwrap();
        assert_eq!(
            t.per_type,
            truth(&sb, "group", Some("g1"), &types),
            "{scenario}"
        );
    }
}

#[test]
fn v3_partial_manifests_paging_and_separate_status() {
    let sb = sandbox(30, 5);
    let types = ["Patient", "Observation", "Condition"];
    let expected = truth(&sb, "group", Some("g1"), &types);

    let mut c = group(sb.scenario_url("partial;page=3;polls=3"), "g1", &types);
    c.allow_partial_manifests = true;
    let (t, export) = run(c).unwrap();
    assert_eq!(
        t.per_type, expected,
        "partial manifests and pages: nothing lost or repeated"
    );
    let files = export.controller().files();
    let urls: HashSet<_> = files.iter().map(|f| f.url.clone()).collect();
    assert_eq!(urls.len(), files.len());
    assert!(
        sb.requests().iter().any(|r| r.path.contains("/manifest/")),
        "pages followed"
    );
    let k = kickoffs(&sb).pop().unwrap();
    assert_eq!(query(&k, "allowPartialManifests"), ["true"]);

    sb.clear_requests();
    let mut c = group(sb.scenario_url("polls=2"), "g1", &types);
    c.separate_export_status = true;
    let (t, _) = run(c).unwrap();
    assert_eq!(t.per_type, expected);
    let k = kickoffs(&sb).pop().unwrap();
    assert_eq!(
        header(&k, "prefer"),
        Some("respond-async,separate-export-status")
    );

    // A failed job under separate-export-status: the poll is 200, X-Export-Status says 500.
    let mut c = group(sb.scenario_url("poll=500"), "g1", &types);
    c.separate_export_status = true;
    let e = run(c).err().unwrap();
    assert_eq!(e.code, ErrorCode::Server);
}

#[test]
fn organize_output_by_patient_types_each_line() {
    let sb = sandbox(8, 6);
    let types = ["Patient", "Observation", "Condition"];
    let mut c = group(sb.base_url(), "g1", &types);
    c.organize_output_by = Some("Patient".into());
    let (mut t, export) = run(c).unwrap();
    let headers = t.per_type.remove("Parameters").unwrap_or(0);
    assert_eq!(t.per_type, truth(&sb, "group", Some("g1"), &types));
    assert!(
        headers >= 8,
        "one header per patient block at least: {headers}"
    );
    let m = export.controller().manifest().unwrap();
    assert_eq!(m["outputOrganizedBy"], "Patient");
}

#[test]
fn error_and_deleted_files_are_tagged() {
    let sb = sandbox(6, 100);
    let mut c = group(sb.scenario_url("errors;deleted=3"), "g1", &["Patient"]);
    c.since = Some("2024-01-01T00:00:00Z".into());
    let (t, _) = run(c).unwrap();
    assert!(t.errors >= 1);
    assert_eq!(t.deleted, 3);
}

#[test]
fn protocol_errors_are_typed() {
    let sb = sandbox(3, 100);
    for (scenario, needle) in [
        ("bad_manifest", "not valid JSON"),
        ("status_ct=text/html", "text/html"),
        ("file_ct=text/html", "text/html"),
    ] {
        let e = run(group(sb.scenario_url(scenario), "g1", &["Patient"]))
            .err()
            .unwrap();
        assert_eq!(e.code, ErrorCode::Protocol, "{scenario}: {e}");
        assert!(e.message.contains(needle), "{scenario}: {}", e.message);
    }
}

#[test]
fn bearer_token_is_sent_and_a_wrong_one_is_unauthorized() {
    let sb = Sandbox::start(SandboxOptions {
        patients: 3,
        bearer_token: Some("s3cret-token".into()),
        ..SandboxOptions::default()
    })
    .unwrap();
    let mut c = group(sb.base_url(), "g1", &["Patient"]);
    c.auth = fhirbulk::Auth::Bearer {
        token: "s3cret-token".into(),
    };
    let (t, _) = run(c).unwrap();
    assert_eq!(t.per_type["Patient"], 3);
    assert!(sb.requests().iter().all(|r| r.auth_ok == Some(true)));

    let mut c = group(sb.base_url(), "g1", &["Patient"]);
    c.auth = fhirbulk::Auth::Bearer {
        token: "wrong-token".into(),
    };
    let e = run(c).err().unwrap();
    assert_eq!(e.code, ErrorCode::Unauthorized);
    assert!(
        !e.to_string().contains("wrong-token"),
        "no secret in errors"
    );
    assert!(!format!("{e:?}").contains("wrong-token"));
}

#[test]
fn unreachable_server_is_a_network_error() {
    // A port nobody listens on: bind, learn the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = group(format!("http://127.0.0.1:{port}/fhir"), "g1", &["Patient"]);
    c.connect_timeout_ms = 2_000;
    let e = run(c).err().unwrap();
    assert_eq!(e.code, ErrorCode::Network, "{e}");
}

#[test]
fn bad_config_names_the_key() {
    for (json, needle) in [
        (r#"{"level":"group"}"#, "base_url"),
        (r#"{"base_url":"http://x/fhir","levle":"group"}"#, "levle"),
        (r#"{"base_url":"ftp://x/fhir"}"#, "scheme"),
        (r#"{"base_url":"http://x/fhir","level":"galaxy"}"#, "galaxy"),
        (
            r#"{"base_url":"http://x/fhir","level":"group"}"#,
            "group_id",
        ),
        (
            r#"{"base_url":"http://x/fhir","since":"last tuesday"}"#,
            "since",
        ),
        (
            r#"{"base_url":"http://x/fhir","concurrency":0}"#,
            "concurrency",
        ),
        (
            r#"{"base_url":"http://x/fhir","types":["patient"]}"#,
            "patient",
        ),
        (
            r#"{"base_url":"http://x/fhir","type_filters":["status=final"]}"#,
            "type_filters",
        ),
        (
            r#"{"base_url":"http://x/fhir","patients":["p1"]}"#,
            "patients",
        ),
        (
            r#"{"base_url":"http://x/fhir","auth":{"type":"bearer"}}"#,
            "token",
        ),
        (
            r#"{"base_url":"http://x/fhir","auth":{"type":"kerberos"}}"#,
            "kerberos",
        ),
        ("not json", "invalid config"),
    ] {
        let e = Config::from_json(json)
            .err()
            .unwrap_or_else(|| panic!("{json} must fail"));
        assert_eq!(e.code, ErrorCode::Config);
        assert!(e.message.contains(needle), "{json}: {}", e.message);
    }
}

#[test]
fn vendor_parameters_are_sent_as_given_in_get_and_post() {
    use fhirbulk::ParamValues;
    let sb = sandbox(6, 5);
    let kickoffs = |sb: &Sandbox| -> Vec<LoggedRequest> {
        sb.requests()
            .into_iter()
            .filter(|r| r.path.ends_with("$export"))
            .collect()
    };
    let mut c = group(sb.base_url(), "g1", &["Patient"]);
    c.params
        .insert("_mdm".into(), ParamValues::One("true".into()));
    c.params.insert(
        "vendor-x".into(),
        ParamValues::Many(vec!["a b&c".into(), "2".into()]),
    );
    // The sandbox, strict, refuses parameters it does not know: they reached it.
    let Err(e) = run(c.clone()) else {
        panic!("a strict sandbox accepted unknown parameters")
    };
    assert_eq!(e.http_status, Some(400), "{e}");
    assert!(
        e.to_string().contains("unsupported parameter '_mdm'"),
        "{e}"
    );
    // Lenient, it ignores them; the GET query carries each value, percent-encoded, in order.
    sb.clear_requests();
    c.lenient = true;
    let (t, _) = run(c.clone()).unwrap();
    assert_eq!(t.per_type, truth(&sb, "group", Some("g1"), &["Patient"]));
    let k = kickoffs(&sb);
    assert_eq!(k.len(), 1);
    let sent: Vec<(&str, &str)> = k[0]
        .query
        .iter()
        .filter(|(n, _)| n == "_mdm" || n == "vendor-x")
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        sent,
        [("_mdm", "true"), ("vendor-x", "a b&c"), ("vendor-x", "2")]
    );
    assert!(
        k[0].raw_query.contains("vendor-x=a%20b%26c"),
        "{}",
        k[0].raw_query
    );
    // POST: valueString parameters in the Parameters body.
    sb.clear_requests();
    c.method = Method::Post;
    run(c.clone()).unwrap();
    let body: serde_json::Value = serde_json::from_str(&kickoffs(&sb)[0].body).unwrap();
    let got: Vec<(String, String)> = body["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "_mdm" || p["name"] == "vendor-x")
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["valueString"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("_mdm".to_owned(), "true".to_owned()),
            ("vendor-x".to_owned(), "a b&c".to_owned()),
            ("vendor-x".to_owned(), "2".to_owned())
        ]
    );
    // A parameter the engine sends from its own key, or a malformed name, is a config error.
    for (name, want) in [
        (
            "_type",
            "params names _type, which the engine sends from its own key types",
        ),
        ("a=b", "params has a parameter name"),
    ] {
        let mut bad = group(sb.base_url(), "g1", &["Patient"]);
        bad.params.insert(name.into(), ParamValues::One("x".into()));
        let e = Export::start(bad).err().expect("refused").to_string();
        assert!(e.contains(want), "{name}: {e}");
    }
}
