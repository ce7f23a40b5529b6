//! Servers, proxies and networks that misbehave at the byte level (issue "every record exactly
//! once against servers that misbehave"): for each class, the records delivered are exactly the
//! sandbox's ground truth (every id once, each under its own type), or the export fails with
//! the right error class after delivering a duplicate-free subset of it.

mod common;

use common::*;
use fhirbulk::config::InvalidLinePolicy;
use fhirbulk::sandbox::{LoggedRequest, Sandbox, SandboxAuth, SandboxClient, SandboxOptions};
use fhirbulk::{Auth, ErrorCode, Export, Next, SecretSource};
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

/// Requests per file path, in order.
fn by_path(sb: &Sandbox) -> BTreeMap<String, Vec<LoggedRequest>> {
    let mut m: BTreeMap<String, Vec<LoggedRequest>> = BTreeMap::new();
    for r in file_requests(sb) {
        m.entry(r.path.clone()).or_default().push(r);
    }
    m
}

fn range_start(r: &LoggedRequest) -> Option<u64> {
    header(r, "range")?
        .strip_prefix("bytes=")?
        .strip_suffix('-')?
        .parse()
        .ok()
}

// ---- 1. compression ---------------------------------------------------------------------------

#[test]
fn every_member_of_a_multi_member_gzip_body_is_decoded() {
    let sb = sandbox();
    for members in [2, 5] {
        run_exact(&sb, config(&sb, &format!("gzip;gzip_members={members}")));
    }
}

#[test]
fn x_gzip_deflate_and_identity_codings_are_decoded() {
    let sb = sandbox();
    for enc in ["x-gzip", "deflate", "raw-deflate", "identity", "gzip"] {
        sb.clear_requests();
        run_exact(&sb, config(&sb, &format!("encoding={enc};gzip_members=2")));
    }
}

#[test]
fn a_coding_the_engine_cannot_decode_is_named() {
    let sb = sandbox();
    let (d, err) = run(config(&sb, "encoding=br"));
    let e = err.expect("refused");
    assert_eq!(e.code, ErrorCode::Protocol, "{e}");
    assert!(e.message.contains("Content-Encoding \"br\""), "{e}");
    assert!(!e.message.contains("does not start with"), "{e}");
    assert!(d.ids.is_empty());
}

#[test]
fn a_stored_gzip_object_resumes_in_the_middle_of_its_compressed_stream() {
    let sb = sandbox();
    run_exact(&sb, config(&sb, "stored_gzip;gzip_members=3;drop=1500"));
    for (path, reqs) in by_path(&sb) {
        assert_eq!(reqs.len(), 2, "{path}: cut once, resumed once");
        let from = range_start(&reqs[1]).unwrap_or_else(|| panic!("{path}: resumed with Range"));
        assert!(from > 0 && from <= 1500, "{path}: from {from}");
    }
}

// ---- 2. ranges --------------------------------------------------------------------------------

#[test]
fn a_206_that_covers_less_than_asked_is_continued() {
    let sb = sandbox();
    run_exact(&sb, config(&sb, "drop=3000;short_ranges=1000"));
    for (path, reqs) in by_path(&sb) {
        assert!(reqs.len() >= 3, "{path}: the rest came in pieces");
        let starts: Vec<u64> = reqs[1..].iter().filter_map(range_start).collect();
        assert_eq!(
            starts.len(),
            reqs.len() - 1,
            "{path}: every later request a range"
        );
        assert!(
            starts.windows(2).all(|w| w[1] == w[0] + 1000),
            "{path}: each piece from where the last ended: {starts:?}"
        );
    }
}

#[test]
fn a_206_that_does_not_match_the_request_reads_the_file_again_from_its_start() {
    let sb = sandbox();
    run_exact(&sb, config(&sb, "drop=3000;bad_range"));
    for (path, reqs) in by_path(&sb) {
        assert_eq!(reqs.len(), 3, "{path}: cut, bad 206, then the whole file");
        assert!(range_start(&reqs[1]).is_some());
        assert!(header(&reqs[2], "range").is_none(), "{path}");
    }
}

#[test]
fn a_file_that_changed_between_attempts_is_never_spliced() {
    let sb = sandbox();
    for validator in ["etag", "last_modified"] {
        sb.clear_requests();
        run_exact(
            &sb,
            config(&sb, &format!("drop=3000;change_file;{validator}")),
        );
        for (path, reqs) in by_path(&sb) {
            assert_eq!(
                reqs.len(),
                2,
                "{path}: the changed file came whole at the resume"
            );
            assert!(range_start(&reqs[1]).is_some(), "{path}");
            assert!(
                header(&reqs[1], "if-range").is_some(),
                "{path}: the resume names the representation it continues ({validator})"
            );
        }
    }
}

// ---- 3. bodies that end early -----------------------------------------------------------------

#[test]
fn a_last_line_cut_after_an_inner_brace_is_not_a_record() {
    let sb = sandbox();
    let d = run_exact(&sb, config(&sb, "truncate_last=inner"));
    assert_eq!(d.errors.len(), by_path(&sb).len(), "{:?}", d.errors);
    assert!(
        d.errors.iter().all(|e| e.contains("cut short")),
        "{:?}",
        d.errors
    );
    let mut c = config(&sb, "truncate_last=inner");
    c.on_invalid_line = InvalidLinePolicy::Fail;
    let (d, err) = run(c);
    let e = err.expect("fails");
    assert_eq!(e.code, ErrorCode::Protocol);
    assert!(e.message.contains("cut short"), "{e}");
    d.assert_subset_of(&truth(&sb));
}

#[test]
fn a_close_delimited_body_that_ends_early_is_resumed() {
    let sb = sandbox();
    run_exact(&sb, config(&sb, "close_delimited;drop=3000"));
    for (path, reqs) in by_path(&sb) {
        assert!(
            reqs.len() >= 2 && range_start(&reqs[1]).is_some(),
            "{path}: the end of the connection was checked with a range request"
        );
    }
}

#[test]
fn a_body_shorter_than_the_file_ends_in_a_cut_line_that_follows_the_policy() {
    let sb = sandbox();
    // The first answer of each file is correctly framed but ends at byte 3000, mid-line.
    let (d, err) = run(config(&sb, "short_length=3000"));
    assert!(err.is_none(), "{err:?}");
    d.assert_subset_of(&truth(&sb));
    assert_eq!(d.errors.len(), by_path(&sb).len(), "{:?}", d.errors);
    let mut c = config(&sb, "short_length=3000");
    c.on_invalid_line = InvalidLinePolicy::Fail;
    let (d, err) = run(c);
    assert_eq!(err.expect("fails").code, ErrorCode::Protocol);
    d.assert_subset_of(&truth(&sb));
}

// ---- 4. files known by identity ---------------------------------------------------------------

#[test]
fn a_refreshed_manifest_in_another_order_matches_each_file_by_identity() {
    let sb = sandbox();
    run_exact(&sb, config(&sb, "drop=3000;expire_files=1;reorder"));
    for (path, reqs) in by_path(&sb) {
        assert_eq!(
            reqs.len(),
            3,
            "{path}: cut, expired, resumed on its own fresh URL"
        );
        assert!(range_start(&reqs[2]).is_some(), "{path}");
    }
    sb.clear_requests();
    run_exact(&sb, config(&sb, "drop=3000;expire_files=1;reorder;resign"));
}

#[test]
fn a_refreshed_manifest_with_an_extra_entry_ignores_it() {
    let sb = sandbox();
    let d = run_exact(&sb, config(&sb, "drop=3000;expire_files=1;refresh_extra"));
    assert!(d.warned("the first did not"), "{:?}", d.warnings);
}

#[test]
fn a_refreshed_manifest_without_a_file_fails_naming_it() {
    let sb = sandbox();
    let (d, err) = run(config(&sb, "drop=3000;expire_files=1;refresh_drop"));
    let e = err.expect("fails");
    assert!(e.message.contains("no longer lists this file"), "{e}");
    assert!(e.url.as_deref().unwrap_or("").contains("/files/"), "{e:?}");
    d.assert_subset_of(&truth(&sb));
}

#[test]
fn partial_manifests_with_fresh_signatures_download_each_file_once() {
    let sb = sandbox();
    let mut c = config(&sb, "partial;resign;polls=4");
    c.allow_partial_manifests = true;
    run_exact(&sb, c);
    for (path, reqs) in by_path(&sb) {
        assert_eq!(reqs.len(), 1, "{path} downloaded once");
    }
}

#[test]
fn pages_of_a_partial_manifest_start_downloads_while_the_job_runs() {
    let sb = sandbox();
    let mut c = config(&sb, "partial;page=1;polls=4;resign");
    c.allow_partial_manifests = true;
    c.poll_min_ms = 200;
    c.poll_max_ms = 200;
    run_exact(&sb, c);
    let reqs = sb.requests();
    let last_status = reqs
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/jobs/") && !r.path.contains("/partial/"))
        .map(|r| r.at_ms)
        .max()
        .expect("status requests");
    let pages = reqs.iter().filter(|r| r.path.contains("/partial/")).count();
    assert!(pages >= 1, "partial pages were fetched");
    let early = file_requests(&sb)
        .iter()
        .filter(|r| r.at_ms < last_status)
        .count();
    assert!(
        early >= 2,
        "files of page 1 and later pages started before the final manifest: {early}"
    );
    for (path, reqs) in by_path(&sb) {
        assert_eq!(reqs.len(), 1, "{path} downloaded once");
    }
}

#[test]
fn a_partial_manifest_page_that_cannot_be_fetched_is_a_warning() {
    let sb = sandbox();
    let mut c = config(&sb, "partial;page=1;polls=3;partial_page_error");
    c.allow_partial_manifests = true;
    let d = run_exact(&sb, c);
    assert!(d.warned("page of a partial manifest"), "{:?}", d.warnings);
    for (path, reqs) in by_path(&sb) {
        assert_eq!(reqs.len(), 1, "{path} downloaded once");
    }
}

#[test]
fn a_manifest_listing_a_url_twice_downloads_it_once_and_says_so() {
    let sb = sandbox();
    let d = run_exact(&sb, config(&sb, "dup_entry"));
    assert!(d.warned("more than once"), "{:?}", d.warnings);
    assert!(d.progress.as_ref().is_some_and(|p| p.warnings >= 1));
    for (path, reqs) in by_path(&sb) {
        assert_eq!(reqs.len(), 1, "{path} downloaded once");
    }
}

// ---- 5, 6. line content -----------------------------------------------------------------------

#[test]
fn validate_json_rejects_invalid_utf8() {
    let sb = sandbox();
    let mut c = config(&sb, "bad_utf8=3");
    c.validate_json = true;
    let d = run_exact(&sb, c);
    assert_eq!(d.errors.len(), by_path(&sb).len(), "{:?}", d.errors);
    assert!(
        d.errors.iter().all(|e| e.contains("not valid UTF-8")),
        "{:?}",
        d.errors
    );
}

#[test]
fn the_type_of_an_organized_line_is_its_top_level_resource_type() {
    let sb = sandbox();
    let mut c = config(&sb, "contained_first");
    c.organize_output_by = Some("Patient".into());
    // `run` checks every record's type against its own top-level resourceType.
    let d = run_exact(&sb, c);
    assert!(
        d.headers >= 30,
        "one header per patient block: {}",
        d.headers
    );
}

// ---- 7. a file that trickles ------------------------------------------------------------------

#[test]
fn a_file_that_trickles_is_resumed() {
    let sb = sandbox();
    let mut c = config(&sb, "trickle=300");
    c.min_bytes_per_s = 1000;
    c.stall_window_ms = 600;
    let t = Instant::now();
    let d = run_exact(&sb, c);
    assert!(d.retries() >= 1, "stalls count as retries");
    assert!(t.elapsed() < Duration::from_secs(25), "{:?}", t.elapsed());
    for (path, reqs) in by_path(&sb) {
        assert!(
            reqs.len() == 1 || range_start(&reqs[1]).is_some(),
            "{path}: resumed with Range"
        );
    }
}

// ---- 8, 9. bounded bodies and page loops ------------------------------------------------------

#[test]
fn endless_status_and_manifest_bodies_are_capped() {
    let sb = sandbox();
    for (where_, scenario) in [
        ("status", "polls=1;endless_body=status"),
        ("manifest", "endless_body=manifest"),
    ] {
        let t = Instant::now();
        let (d, err) = run(config(&sb, scenario));
        let e = err.unwrap_or_else(|| panic!("{where_}: fails"));
        assert_eq!(e.code, ErrorCode::Protocol, "{where_}: {e}");
        assert!(e.message.contains("larger than"), "{where_}: {e}");
        assert!(d.ids.is_empty());
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{where_}: {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn an_endless_error_body_is_read_within_its_cap() {
    let sb = sandbox();
    run_exact(&sb, config(&sb, "file_error=503:1;endless_body=error"));
}

#[test]
fn manifest_pages_that_go_round_in_a_circle_are_refused_at_once() {
    let sb = sandbox();
    let (d, err) = run(config(&sb, "page=2;page_loop"));
    let e = err.expect("fails");
    assert_eq!(e.code, ErrorCode::Protocol, "{e}");
    assert!(e.message.contains("pages repeat"), "{e}");
    assert!(
        e.url.as_deref().unwrap_or("").contains("/manifest/"),
        "{e:?}"
    );
    let pages = sb
        .requests()
        .iter()
        .filter(|r| r.path.contains("/manifest/"))
        .count();
    assert!(pages <= 5, "{pages} page requests");
    d.assert_subset_of(&truth(&sb));
}

// ---- 10. long lines ---------------------------------------------------------------------------

#[test]
fn long_lines_are_delivered_whole() {
    let sb = sandbox();
    let mut c = config(&sb, "long_line=300000:5");
    c.max_line_bytes = 1 << 20;
    let (d, err) = run(c);
    assert!(err.is_none(), "{err:?}");
    let (long, rest): (Vec<String>, Vec<String>) = d
        .sorted()
        .into_iter()
        .partition(|id| id.starts_with("Basic/sandbox-long-line"));
    assert_eq!(rest, truth(&sb));
    assert_eq!(long.len(), 5 * by_path(&sb).len());
}

// ---- 11. long waits ---------------------------------------------------------------------------

#[test]
fn a_retry_after_that_looks_like_a_unix_time_is_read_as_one_and_reported() {
    let sb = sandbox();
    let mut c = config(&sb, "file_error=429:1;error_retry_after=epoch");
    c.poll_max_ms = 5000;
    let d = run_exact(&sb, c);
    assert!(d.warned("looks like a Unix time"), "{:?}", d.warnings);
}

#[test]
fn a_retry_after_beyond_the_budget_is_clamped_and_reported() {
    let sb = sandbox();
    let d = run_exact(&sb, config(&sb, "storm=1;error_retry_after=86400"));
    assert!(d.warned("asked to wait 86400 s"), "{:?}", d.warnings);
}

#[test]
fn a_long_wait_shows_in_the_progress() {
    let sb = sandbox();
    // The first request of each file is throttled with Retry-After: 3 (all files at once).
    let mut c = config(&sb, "file_error=429:1;error_retry_after=3");
    c.concurrency = 8;
    c.poll_max_ms = 10_000;
    let mut export = Export::start(c).expect("starts");
    let ctl = export.controller();
    let t = Instant::now();
    let wait = loop {
        if let Some(w) = ctl.progress().wait {
            break w;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no wait shown");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(wait.reason.contains("429"), "{wait:?}");
    let left = wait
        .until
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    assert!(
        // Some of it is left however late this thread looked (a loaded machine), never more.
        !left.is_zero() && left <= Duration::from_secs(3),
        "{left:?}"
    );
    let mut n = 0;
    loop {
        match export.next_record(Some(Duration::from_secs(30))) {
            Ok(Next::Item(_)) => n += 1,
            Ok(Next::End) => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(n, truth(&sb).len());
    assert!(ctl.progress().wait.is_none(), "no wait after the end");
}

// ---- 12. token endpoint and discovery ---------------------------------------------------------

const CLIENT: &str = "bulk-client";

fn auth_sandbox() -> Sandbox {
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
    let jwks =
        serde_json::from_str(&std::fs::read_to_string(format!("{keys}/public.jwks.json")).unwrap())
            .unwrap();
    Sandbox::start(SandboxOptions {
        patients: 30,
        records_per_file: 25,
        auth: Some(SandboxAuth {
            clients: vec![SandboxClient {
                client_id: CLIENT.into(),
                jwks: Some(jwks),
                secret: None,
            }],
            ..SandboxAuth::default()
        }),
        ..SandboxOptions::default()
    })
    .unwrap()
}

fn with_auth(mut c: fhirbulk::Config) -> fhirbulk::Config {
    c.auth = Auth::ClientCredentials {
        client_id: CLIENT.into(),
        private_key: Some(SecretSource::File {
            file: concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/rsa384-private.pem").into(),
        }),
        client_secret: None,
        kid: Some("rsa-test-1".into()),
        jku: None,
        alg: None,
        scope: None,
        token_url: None,
    };
    c
}

#[test]
fn a_blip_at_the_token_endpoint_during_a_refresh_does_not_end_the_export() {
    let sb = auth_sandbox();
    // Tokens live 1 s and the polls take longer: the refresh meets two 503s.
    let mut c = with_auth(config(
        &sb,
        "token_ttl=1;token_blip=503:2;polls=4;retry_after=1",
    ));
    c.poll_min_ms = 400;
    c.poll_max_ms = 400;
    let d = run_exact(&sb, c);
    assert!(sb.tokens_issued() >= 2, "refreshed: {}", sb.tokens_issued());
    assert!(d.retries() >= 2, "the blips were retried");
}

#[test]
fn a_blip_at_discovery_is_retried() {
    let sb = auth_sandbox();
    run_exact(&sb, with_auth(config(&sb, "discovery_blip=2")));
}

#[test]
fn oauth_errors_keep_their_code_also_with_status_200() {
    let sb = auth_sandbox();
    for scenario in [
        "token_error=invalid_client",
        "token_error=invalid_client;token_error_200",
    ] {
        let (d, err) = run(with_auth(config(&sb, scenario)));
        let e = err.unwrap_or_else(|| panic!("{scenario}: fails"));
        assert_eq!(e.code, ErrorCode::Auth, "{scenario}: {e}");
        assert_eq!(
            e.oauth_error.as_deref(),
            Some("invalid_client"),
            "{scenario}"
        );
        assert!(e.message.contains("invalid_client"), "{scenario}: {e}");
        assert!(d.ids.is_empty());
    }
}

#[test]
fn endless_token_and_discovery_answers_are_capped() {
    let sb = auth_sandbox();
    for scenario in ["endless_body=token", "endless_body=smart_config,metadata"] {
        let t = Instant::now();
        let (d, err) = run(with_auth(config(&sb, scenario)));
        let e = err.unwrap_or_else(|| panic!("{scenario}: fails"));
        assert!(e.message.contains("larger than"), "{scenario}: {e}");
        assert!(d.ids.is_empty());
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{scenario}: {:?}",
            t.elapsed()
        );
    }
}

// ---- 13. error classes ------------------------------------------------------------------------

#[test]
fn a_broken_uncompressed_transfer_is_a_network_error() {
    let sb = sandbox();
    let mut c = config(&sb, "bad_chunked");
    c.retry_max_attempts = 2;
    let (d, err) = run(c);
    let e = err.expect("fails");
    assert_eq!(e.code, ErrorCode::Network, "{e}");
    assert!(!e.message.contains("decoded"), "{e}");
    d.assert_subset_of(&truth(&sb));
}

// ---- 14, 15. byte order marks and terminal escapes --------------------------------------------

#[test]
fn byte_order_marks_are_skipped() {
    let sb = sandbox();
    run_exact(&sb, config(&sb, "bom"));
    let sb = auth_sandbox();
    run_exact(&sb, with_auth(config(&sb, "bom")));
}

#[test]
fn server_text_never_reaches_a_message_raw() {
    let sb = sandbox();
    let (_, err) = run(config(&sb, "kickoff=400;ansi"));
    let e = err.expect("fails");
    assert!(
        !e.message.contains('\u{1b}') && !e.message.contains('\u{7}'),
        "{e:?}"
    );
    assert!(
        e.message.contains("\\u{1b}[31m"),
        "escaped, still readable: {e}"
    );
    assert!(
        e.issues
            .iter()
            .all(|i| !i.diagnostics.as_deref().unwrap_or("").contains('\u{1b}')),
        "{:?}",
        e.issues
    );
    let sb = auth_sandbox();
    let (_, err) = run(with_auth(config(&sb, "token_error=invalid_client;ansi")));
    let e = err.expect("fails");
    assert!(!e.message.contains('\u{1b}'), "{e:?}");
}

// ---- 16, 17. hints ----------------------------------------------------------------------------

#[test]
fn a_transaction_time_that_is_not_an_instant_is_reported_and_not_kept() {
    let sb = sandbox();
    for bad in ["yesterday", "2024-13-45T99:00:00Z"] {
        let mut export = Export::start(config(&sb, &format!("transaction_time={bad}"))).unwrap();
        while let Next::Item(_) = export.next_record(Some(Duration::from_secs(30))).unwrap() {}
        let ctl = export.controller();
        assert_eq!(ctl.transaction_time(), None, "{bad}");
        assert!(
            ctl.warnings()
                .iter()
                .any(|w| w.contains("not a FHIR instant")),
            "{bad}: {:?}",
            ctl.warnings()
        );
        let cp = ctl.checkpoint().unwrap();
        assert_eq!(cp.transaction_time, None, "{bad}");
    }
}

#[test]
fn a_count_that_is_not_a_whole_number_is_ignored() {
    let sb = sandbox();
    for bad in ["-3", "1.5", "%2212%22"] {
        let d = run_exact(&sb, config(&sb, &format!("bad_count={bad}")));
        assert!(d.warned("count"), "{bad}: {:?}", d.warnings);
    }
}
