//! Fault injection over real HTTP: for each fault the sandbox can inject, the records delivered
//! are exactly the sandbox's ground truth (every id once), or the export fails with a clear
//! error after delivering a duplicate-free subset of it.

mod common;

use common::*;
use fhirbulk::config::InvalidLinePolicy;
use fhirbulk::sandbox::{LoggedRequest, Sandbox, SandboxOptions};
use fhirbulk::{ErrorCode, Export, Next};
use std::collections::BTreeSet;
use std::time::Duration;

fn retries(d: &Delivered) -> u32 {
    d.retries()
}

#[test]
fn dropped_connection_resumes_with_range() {
    let sb = sandbox();
    let d = run_exact(&sb, config(&sb, "drop=3000"));
    let files = file_requests(&sb);
    let paths: BTreeSet<&str> = files.iter().map(|r| r.path.as_str()).collect();
    assert!(paths.len() >= 6, "several files: {paths:?}");
    for p in &paths {
        let reqs: Vec<&LoggedRequest> = files.iter().filter(|r| &r.path == p).collect();
        assert_eq!(reqs.len(), 2, "{p}: one broken and one resumed request");
        assert_eq!(header(reqs[0], "range"), None);
        let range = header(reqs[1], "range").expect("the second request asks for a range");
        let from: u64 = range
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{p}: range {range}"));
        // Whole lines before the cut at byte 3000 were delivered; the resume starts at the end
        // of the last complete line.
        assert!(from > 0 && from <= 3000, "{p}: resumed from {from}");
    }
    assert!(retries(&d) >= paths.len() as u32, "retries counted");
}

#[test]
fn dropped_connection_without_ranges_downloads_again_and_skips() {
    let sb = sandbox();
    run_exact(&sb, config(&sb, "drop=3000;no_ranges"));
    let files = file_requests(&sb);
    assert!(files.iter().all(|r| header(r, "range").is_none()));
    let paths: BTreeSet<&str> = files.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(files.len(), 2 * paths.len(), "each file fetched twice");
}

#[test]
fn storm_of_429_on_every_endpoint() {
    let sb = sandbox();
    let d = run_exact(&sb, config(&sb, "storm=3"));
    let reqs = sb.requests();
    let kickoffs = reqs.iter().filter(|r| r.path.ends_with("$export")).count();
    assert_eq!(kickoffs, 4, "3 throttled kick-offs, then one accepted");
    assert!(retries(&d) >= 3 + 3 + 3 * 6, "retries: {}", retries(&d));
}

#[test]
fn bursts_of_server_errors_on_files() {
    let sb = sandbox();
    for scenario in ["file_error=500:2", "file_error=503:3", "file_error=429:2"] {
        sb.clear_requests();
        let d = run_exact(&sb, config(&sb, scenario));
        let n: usize = scenario[scenario.len() - 1..].parse().expect("count");
        let files = file_requests(&sb);
        let paths: BTreeSet<&str> = files.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(files.len(), (n + 1) * paths.len(), "{scenario}");
        assert!(retries(&d) as usize >= n * paths.len(), "{scenario}");
    }
}

#[test]
fn too_many_server_errors_fail_with_the_status() {
    let sb = sandbox();
    let mut c = config(&sb, "file_error=503:50");
    c.retry_max_attempts = 3;
    let (d, err) = run(c);
    let e = err.expect("the export fails");
    assert_eq!(e.http_status, Some(503), "{e}");
    assert!(e.url.as_deref().unwrap_or("").contains("/files/"), "{e:?}");
    assert!(d.ids.is_empty());
}

#[test]
fn stalled_transfer_hits_the_idle_timeout_and_resumes() {
    let sb = sandbox();
    let mut c = config(&sb, "stall=5000;length");
    c.read_timeout_ms = 300;
    let d = run_exact(&sb, c);
    let files = file_requests(&sb);
    let resumed = files
        .iter()
        .filter(|r| header(r, "range").is_some())
        .count();
    let paths: BTreeSet<&str> = files.iter().map(|r| r.path.as_str()).collect();
    // Every file stalled once and was fetched again; those that had delivered lines before the
    // stall (all of them, unless a loaded machine timed out before the first chunk) with Range.
    assert!(files.len() >= 2 * paths.len(), "{} requests", files.len());
    assert!(resumed >= 1, "stalled files resume with Range");
    assert!(retries(&d) >= paths.len() as u32);
}

#[test]
fn truncated_gzip_is_downloaded_again() {
    let sb = sandbox();
    run_exact(&sb, config(&sb, "corrupt_gzip"));
    let files = file_requests(&sb);
    assert!(files
        .iter()
        .all(|r| header(r, "accept-encoding").is_some_and(|a| a.contains("gzip"))));
    let paths: BTreeSet<&str> = files.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(files.len(), 2 * paths.len(), "each file fetched twice");
}

#[test]
fn always_truncated_gzip_fails_clearly() {
    let sb = sandbox();
    let mut c = config(&sb, "corrupt_gzip=all");
    c.retry_max_attempts = 2;
    let (d, err) = run(c);
    let e = err.expect("the export fails");
    assert_eq!(e.code, ErrorCode::Protocol, "{e}");
    assert!(e.message.contains("decoded"), "{e}");
    d.assert_subset_of(&truth(&sb));
}

#[test]
fn line_that_is_not_json_skip_or_fail() {
    let sb = sandbox();
    let d = run_exact(&sb, config(&sb, "bad_line=3"));
    let outputs = file_requests(&sb).len();
    assert_eq!(
        d.errors.len(),
        outputs,
        "one error record per file: {:?}",
        d.errors
    );
    for diag in &d.errors {
        assert!(
            diag.contains("skipped line 4 of http://") && diag.contains("/files/"),
            "names file and line: {diag}"
        );
        assert!(diag.contains("does not start with '{'"), "{diag}");
    }
    assert_eq!(
        d.progress.as_ref().map(|p| p.invalid_lines),
        Some(outputs as u64)
    );

    let mut c = config(&sb, "bad_line=3");
    c.on_invalid_line = InvalidLinePolicy::Fail;
    let (d, err) = run(c);
    let e = err.expect("policy fail fails the export");
    assert_eq!(e.code, ErrorCode::Protocol);
    assert!(e.message.contains("line 4"), "{e}");
    assert!(e.url.as_deref().unwrap_or("").contains("/files/"), "{e:?}");
    d.assert_subset_of(&truth(&sb));
}

#[test]
fn oversized_line_skip_or_fail() {
    let sb = sandbox();
    let mut c = config(&sb, "long_line=10000");
    c.max_line_bytes = 4096;
    let d = run_exact(&sb, c.clone());
    assert_eq!(d.errors.len(), file_requests(&sb).len());
    assert!(
        d.errors
            .iter()
            .all(|e| e.contains("line 2 ") && e.contains("longer than max_line_bytes (4096)")),
        "{:?}",
        d.errors
    );
    c.on_invalid_line = InvalidLinePolicy::Fail;
    let (d, err) = run(c);
    let e = err.expect("fails");
    assert!(
        e.message.contains("line 2 is longer than max_line_bytes"),
        "{e}"
    );
    d.assert_subset_of(&truth(&sb));
}

#[test]
fn truncated_last_line_is_never_a_record() {
    let sb = sandbox();
    let d = run_exact(&sb, config(&sb, "truncate_last"));
    assert_eq!(d.errors.len(), file_requests(&sb).len());
    assert!(
        d.errors.iter().all(|e| e.contains("cut short")),
        "{:?}",
        d.errors
    );

    let mut c = config(&sb, "truncate_last");
    c.on_invalid_line = InvalidLinePolicy::Fail;
    let (d, err) = run(c);
    assert!(err.expect("fails").message.contains("cut short"));
    d.assert_subset_of(&truth(&sb));
}

#[test]
fn endless_line_ends_in_an_error_under_either_policy() {
    let sb = sandbox();
    for policy in [InvalidLinePolicy::Fail, InvalidLinePolicy::Skip] {
        let mut c = config(&sb, "endless");
        c.max_line_bytes = 4096;
        c.on_invalid_line = policy;
        let (d, err) = run(c);
        let e = err.expect("an endless line fails the export");
        assert_eq!(e.code, ErrorCode::Protocol, "{e}");
        assert!(e.message.contains("line 1"), "{e}");
        assert!(d.ids.is_empty());
    }
}

#[test]
fn manifest_with_foreign_scheme_urls_is_refused() {
    let sb = sandbox();
    let (d, err) = run(config(&sb, "foreign_scheme"));
    let e = err.expect("refused");
    assert_eq!(e.code, ErrorCode::Protocol, "{e}");
    assert!(e.message.contains("ftp"), "{e}");
    assert!(d.ids.is_empty());
    assert!(file_requests(&sb).is_empty(), "nothing fetched");
}

#[test]
fn garbage_manifests_are_refused() {
    let sb = sandbox();
    for (scenario, words) in [("bad_manifest", "not valid JSON"), ("no_output", "output")] {
        let (d, err) = run(config(&sb, scenario));
        let e = err.unwrap_or_else(|| panic!("{scenario}: refused"));
        assert_eq!(e.code, ErrorCode::Protocol, "{scenario}: {e}");
        assert!(e.message.contains(words), "{scenario}: {e}");
        assert!(d.ids.is_empty());
    }
}

#[test]
fn expired_file_urls_are_refreshed_from_the_manifest() {
    let sb = sandbox();
    // Each URL works once: the first request breaks mid-file, the retry with the same URL
    // gets 410 Gone, and the manifest fetched again gives a URL that resumes the file.
    run_exact(&sb, config(&sb, "drop=3000;expire_files=1"));
    let files = file_requests(&sb);
    let generation = |r: &LoggedRequest| {
        r.query
            .iter()
            .find(|(k, _)| k == "g")
            .map(|(_, v)| v.clone())
    };
    assert!(files.iter().any(|r| generation(r).as_deref() == Some("1")));
    // A file that breaks resumes (with Range) from a fresh URL; a file that had not started
    // when the links were refetched starts with its fresh URL.
    let mut seen = BTreeSet::new();
    let mut resumed = 0;
    for r in &files {
        let first = seen.insert(r.path.as_str());
        if generation(r).is_some_and(|g| g != "1") && !first {
            assert!(header(r, "range").is_some(), "a fresh URL resumes the file");
            resumed += 1;
        }
    }
    assert!(resumed > 0, "files resumed with fresh URLs");
    let status_gets = sb
        .requests()
        .iter()
        .filter(|r| r.path.contains("/jobs/") && r.method == "GET")
        .count();
    assert!(status_gets >= 2, "the manifest was fetched again");
}

#[test]
fn job_gone_names_the_files_not_delivered() {
    let sb = sandbox();
    let mut c = config(&sb, "gone_after=2");
    c.concurrency = 1;
    let (d, err) = run(c);
    let e = err.expect("fails");
    assert_eq!(e.code, ErrorCode::NotFound, "{e}");
    assert!(e.message.contains("not delivered completely"), "{e}");
    let files = file_requests(&sb);
    // Files 1 and 2 were served; the third request found the job gone.
    let third = &files[2].path;
    assert!(e.message.contains(third.as_str()), "names {third}: {e}");
    assert!(!e.message.contains(files[0].path.as_str()), "{e}");
    d.assert_subset_of(&truth(&sb));
    assert_eq!(d.ids.len(), 30, "files 1 and 2: 25 + 5 Patients");
}

#[test]
fn cancel_ends_a_stalled_download_at_once() {
    let sb = sandbox();
    // The default read_timeout_ms (120 s) and a 60 s stall: only the cancel can end the reads.
    let c = config(&sb, "stall=60000;length");
    let mut export = Export::start(c).expect("the export starts");
    let mut got = 0;
    loop {
        match export.next_record(Some(Duration::from_millis(500))) {
            Ok(Next::Item(_)) => got += 1,
            Ok(Next::Timeout) => break, // every file is stalled now
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(got > 0, "records came before the stall");
    export.cancel();
    assert!(matches!(
        export.next_record(Some(Duration::from_secs(1))),
        Ok(Next::Cancelled)
    ));
    // Dropping joins the export's threads (waiting at most 5 s for them): the stalled reads
    // must notice the cancel rather than wait for the server or read_timeout_ms.
    let t = std::time::Instant::now();
    drop(export);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "the threads took {:?} to stop",
        t.elapsed()
    );
}

/// A caller that follows a large export takes only what is new: `files_from` returns the files
/// after those seen, `completed_files_from` each file once, after its last record was delivered.
#[test]
fn files_and_completions_followed_incrementally() {
    let sb = Sandbox::start(SandboxOptions {
        patients: 30,
        records_per_file: 3,
        ..SandboxOptions::default()
    })
    .expect("sandbox starts");
    let mut export = Export::start(common::config(&sb, "")).unwrap();
    let ctl = export.controller();
    let (mut files, mut completed) = (Vec::new(), Vec::<u32>::new());
    let mut per_file: std::collections::HashMap<u32, u64> = Default::default();
    let mut ids = Vec::new();
    let follow = |files: &mut Vec<fhirbulk::FileInfo>,
                  completed: &mut Vec<u32>,
                  per_file: &std::collections::HashMap<u32, u64>,
                  done_counts: &mut Vec<u64>| {
        files.extend(ctl.files_from(files.len()));
        for i in ctl.completed_files_from(completed.len()) {
            assert!(
                (i as usize) < files.len(),
                "a completed file is a known file"
            );
            completed.push(i);
            done_counts.push(per_file.get(&i).copied().unwrap_or(0));
        }
    };
    let mut done_counts = Vec::new();
    loop {
        match export.next_record(Some(Duration::from_secs(30))).unwrap() {
            Next::Item(r) => {
                *per_file.entry(r.file_index).or_default() += 1;
                if r.kind == fhirbulk::Kind::Output {
                    let v: serde_json::Value = serde_json::from_slice(r.data).unwrap();
                    ids.push(format!(
                        "{}/{}",
                        v["resourceType"].as_str().unwrap(),
                        v["id"].as_str().unwrap()
                    ));
                }
            }
            Next::End => break,
            other => panic!("{other:?}"),
        }
        follow(&mut files, &mut completed, &per_file, &mut done_counts);
    }
    follow(&mut files, &mut completed, &per_file, &mut done_counts);
    ids.sort();
    assert_eq!(ids, common::truth(&sb));
    assert_eq!(files, ctl.files(), "the pieces add up to the whole list");
    assert!(files.len() > 20, "many files: {}", files.len());
    let mut sorted = completed.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), completed.len(), "each file completes once");
    assert_eq!(sorted, (0..files.len() as u32).collect::<Vec<_>>());
    for (i, n) in completed.iter().zip(&done_counts) {
        assert_eq!(*n, per_file[i], "file {i} completed after its last record");
    }
}
