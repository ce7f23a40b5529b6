//! Security (issue 17, first part): plain HTTP to a host that is not loopback is refused unless
//! the config allows it, for the base URL, for a redirect the server sends, and for the token
//! endpoint (before the client's credentials go out); loopback stays allowed.

mod common;

use common::sig::{assert_no_sig, sandbox_saw_sig, sig_url, without_urls, SIG};
use fhirbulk::sandbox::{Sandbox, SandboxOptions};
use fhirbulk::{Auth, Config, ErrorCode, Export, Next, SecretSource};
use std::time::Duration;

fn sandbox() -> Sandbox {
    Sandbox::start(SandboxOptions {
        patients: 10,
        records_per_file: 5,
        ..SandboxOptions::default()
    })
    .unwrap()
}

/// Run to the end: the records and the error, if any.
fn run(c: Config) -> (u64, Option<fhirbulk::Error>) {
    let mut e = match Export::start(c) {
        Ok(e) => e,
        Err(err) => return (0, Some(err)),
    };
    let mut n = 0;
    loop {
        match e.next_record(Some(Duration::from_secs(60))) {
            Ok(Next::Item(_)) => n += 1,
            Ok(Next::End) => return (n, None),
            Ok(other) => panic!("{other:?}"),
            Err(err) => return (n, Some(err)),
        }
    }
}

#[test]
fn a_plain_http_base_url_off_loopback_is_refused_unless_allowed() {
    let mut c = Config::new("http://ehr.invalid/fhir");
    c.types = vec!["Patient".into()];
    let e = Export::start(c.clone()).err().expect("refused");
    assert_eq!(e.code, ErrorCode::Config, "{e}");
    for want in ["plain http://", "ehr.invalid", "TLS", "allow_insecure_http"] {
        assert!(e.message.contains(want), "{want:?} in {}", e.message);
    }
    // Allowed: the export starts, and fails only at the network (the name never resolves).
    c.allow_insecure_http = true;
    c.retry_max_attempts = 1;
    let (n, err) = run(c);
    let e = err.expect("cannot connect");
    assert_eq!((n, e.code), (0, ErrorCode::Network), "{e}");
    // Loopback stays allowed.
    for base in [
        "http://127.0.0.1:9/fhir",
        "http://127.8.9.10:9/fhir",
        "http://localhost:9/fhir",
        "http://[::1]:9/fhir",
        "https://ehr.invalid/fhir",
    ] {
        Config::new(base)
            .validate()
            .unwrap_or_else(|e| panic!("{base}: {e}"));
    }
}

#[test]
fn a_redirect_to_plain_http_off_loopback_is_refused_unless_allowed() {
    let sb = sandbox();
    let mut c = Config::new(sb.scenario_url("polls=0;redirect_insecure"));
    c.types = vec!["Patient".into()];
    c.retry_max_attempts = 1;
    let (n, err) = run(c.clone());
    let e = err.expect("refused");
    assert_eq!((n, e.code), (0, ErrorCode::Protocol), "{e}");
    for want in [
        "refused plain http://",
        "files.invalid",
        "allow_insecure_http",
    ] {
        assert!(e.message.contains(want), "{want:?} in {}", e.message);
    }
    assert!(!e.message.contains("sig="), "no signature in {}", e.message);
    // Allowed, the redirect is followed (and fails at the network: the name never resolves).
    c.allow_insecure_http = true;
    let (_, err) = run(c);
    assert_eq!(err.expect("cannot connect").code, ErrorCode::Network);
}

#[test]
fn a_plain_http_token_endpoint_off_loopback_gets_no_credentials() {
    let sb = sandbox();
    let mut c = Config::new(sb.base_url());
    c.types = vec!["Patient".into()];
    c.auth = Auth::ClientCredentials {
        client_id: "basic-client".into(),
        private_key: None,
        client_secret: Some(SecretSource::Inline("basic-secret".into())),
        kid: None,
        jku: None,
        alg: None,
        scope: None,
        token_url: Some("http://auth.invalid/token".into()),
    };
    let (_, err) = run(c);
    let e = err.expect("refused");
    assert_eq!(e.code, ErrorCode::Auth, "{e}");
    assert!(
        e.message
            .contains("refused to send the client's credentials"),
        "{e}"
    );
    assert!(!e.message.contains("basic-secret"));
}

#[test]
fn checkpoints_and_reports_never_hold_the_token() {
    const TOKEN: &str = "SENTINEL-TOKEN-7f3a9c";
    let sb = Sandbox::start(SandboxOptions {
        patients: 10,
        records_per_file: 5,
        bearer_token: Some(TOKEN.into()),
        ..SandboxOptions::default()
    })
    .unwrap();
    let mut c = Config::new(sb.scenario_url("polls=1;retry_after=0"));
    c.types = vec!["Patient".into()];
    c.auth = Auth::Bearer {
        token: SecretSource::Inline(TOKEN.into()),
    };
    let mut e = Export::start(c.clone()).unwrap();
    let ctl = e.controller();
    let mut texts = vec![format!("{c:?}")];
    let mut n = 0;
    while let Next::Item(_) = e.next_record(Some(Duration::from_secs(30))).unwrap() {
        n += 1;
        if n == 3 {
            texts.push(serde_json::to_string(&ctl.checkpoint().unwrap()).unwrap());
        }
    }
    assert!(n > 3, "{n} records");
    texts.push(serde_json::to_string(&ctl.checkpoint().unwrap()).unwrap());
    texts.push(format!("{:?}", ctl.manifest()));
    texts.push(format!(
        "{:?} {:?} {:?}",
        ctl.files(),
        ctl.warnings(),
        ctl.progress()
    ));
    for t in &texts {
        assert!(!t.contains(TOKEN), "the token in {t}");
    }
    // A wrong token: the error does not quote it either.
    c.auth = Auth::Bearer {
        token: SecretSource::Inline(format!("{TOKEN}-wrong")),
    };
    let (_, err) = run(c);
    let e = err.expect("rejected");
    assert!(!format!("{e} {e:?} {}", e.to_json()).contains(TOKEN));
}

/// Every text an error shows: Display, Debug, `message`, `url`, `to_json()`.
fn error_texts(e: &fhirbulk::Error) -> Vec<String> {
    vec![
        e.to_string(),
        format!("{e:?}"),
        e.message.clone(),
        e.url.clone().unwrap_or_default(),
        e.to_json(),
    ]
}

/// Run to the end, collecting every report the API gives along the way: error records, the
/// progress, the warnings, the error (also the controller's), and the checkpoint, manifest and
/// file list without their URLs. Returns (output records, the error, the texts).
fn run_reporting(c: Config) -> (u64, Option<fhirbulk::Error>, Vec<String>) {
    let mut e = match Export::start(c) {
        Ok(e) => e,
        Err(err) => return (0, Some(err.clone()), error_texts(&err)),
    };
    let ctl = e.controller();
    let mut texts = Vec::new();
    let mut n = 0;
    let err = loop {
        match e.next_record(Some(Duration::from_secs(60))) {
            Ok(Next::Item(r)) => {
                match r.kind {
                    fhirbulk::Kind::Error => {
                        texts.push(String::from_utf8_lossy(r.data).into_owned())
                    }
                    _ => n += 1,
                }
                texts.push(format!("{:?}", ctl.progress()));
            }
            Ok(Next::End) => break None,
            Ok(other) => panic!("{other:?}"),
            Err(err) => break Some(err),
        }
    };
    texts.push(format!("{:?}", ctl.progress()));
    texts.extend(ctl.warnings());
    for err in err.iter().chain(ctl.error().as_ref()) {
        texts.extend(error_texts(err));
    }
    let json = |t: &str| serde_json::from_str::<serde_json::Value>(t).expect("JSON");
    texts.push(without_urls(json(&ctl.files_json_from(0, false))).to_string());
    if let Some(m) = ctl.manifest() {
        texts.push(without_urls(m).to_string());
    }
    if let Some(cp) = ctl.checkpoint() {
        texts.push(without_urls(serde_json::to_value(cp).unwrap()).to_string());
    }
    (n, err, texts)
}

#[test]
fn the_sig_scenario_signs_every_pre_signed_url_with_its_value() {
    let sb = sandbox();
    let http = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |url: &str| http.get(url).send().unwrap();
    // Kick-off, then the output URLs of the (complete) manifest.
    let kickoff = |base: &str| {
        let r = http
            .get(format!("{base}/Patient/$export"))
            .header("Accept", "application/fhir+json")
            .header("Prefer", "respond-async")
            .send()
            .unwrap();
        assert_eq!(r.status(), 202);
        let status = r.headers()["content-location"].to_str().unwrap().to_owned();
        let m: serde_json::Value = serde_json::from_slice(&get(&status).bytes().unwrap()).unwrap();
        m["output"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["url"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    for (keys, query) in [
        ("polls=0;resign", format!("?sig={SIG}")),
        ("polls=0;resign;expire_files=2", format!("&sig={SIG}")),
    ] {
        let urls = kickoff(&sig_url(&sb, keys));
        assert!(urls.len() > 1, "{keys}: {urls:?}");
        for u in &urls {
            assert!(u.ends_with(&query), "{keys}: {u}");
            assert_eq!(get(u).status(), 200, "{u}");
        }
    }
    // Without `sig=`, `resign` signs at random.
    let urls = kickoff(&sb.scenario_url("polls=0;resign"));
    assert!(urls.iter().all(|u| u.contains("?sig=") && !u.contains(SIG)));
    // The redirects of `redirect_files` and `redirect_insecure`.
    for (keys, to) in [
        ("polls=0;redirect_files", sb.store_url()),
        ("polls=0;redirect_insecure", "http://files.invalid".into()),
    ] {
        let urls = kickoff(&sig_url(&sb, keys));
        let r = get(&urls[0]);
        assert_eq!(r.status(), 307, "{keys}");
        let loc = r.headers()["location"].to_str().unwrap().to_owned();
        assert!(
            loc.starts_with(&to) && loc.ends_with(&format!("?sig={SIG}")),
            "{loc}"
        );
        if keys.ends_with("redirect_files") {
            // The object store serves the signed URL.
            sb.clear_requests();
            assert_eq!(get(&loc).status(), 200, "{loc}");
            assert!(sandbox_saw_sig(&sb));
        }
    }
    // Not a value for a query string: 400.
    for bad in ["sig=", "sig=a%26b", "sig=a%20b"] {
        let r = get(&format!("{}/metadata", sb.scenario_url(bad)));
        assert_eq!(r.status(), 400, "{bad}");
    }
}

/// Pre-signed file URLs whose requests go wrong (issue 17): errors, warnings, progress, error
/// records and the non-URL parts of checkpoints, manifests and file lists never hold the
/// signature, while the sandbox saw it in every scenario's query strings.
#[test]
fn signatures_in_file_urls_never_reach_errors_warnings_progress_or_records() {
    let sb = sandbox();
    // (scenario, whether the export fails)
    let scenarios = [
        // Recovered: retried, resumed, refreshed, skipped.
        ("redirect_files;file_error=500:1", false),
        ("redirect_files;file_error=429:2", false),
        ("redirect_files;drop=300", false),
        ("redirect_files;stall=1500;length", false),
        ("redirect_files;bad_line=2;truncate_last", false),
        ("resign;expire_files=1;drop=300", false),
        ("resign;file_error=503:1;bad_line=1", false),
        ("resign;trickle=400", false),
        // Failed: a final error on a signed URL.
        ("redirect_files;file_error=404:99", true),
        ("redirect_files;file_error=503:9", true),
        ("redirect_files;corrupt_gzip=all", true),
        ("resign;file_error=404:99", true),
        ("resign;file_error=500:9", true),
        ("resign;gone_after=1", true),
        ("resign;long_line=8000", true),
        ("resign;bad_chunked", true),
    ];
    for (keys, fails) in scenarios {
        sb.clear_requests();
        let mut c = Config::new(sig_url(&sb, &format!("polls=0;retry_after=0;{keys}")));
        c.types = vec!["Patient".into()];
        c.retry_max_attempts = 3;
        c.retry_backoff_min_ms = 10;
        c.retry_backoff_max_ms = 50;
        c.read_timeout_ms = 500;
        c.min_bytes_per_s = 2000;
        c.stall_window_ms = 300;
        c.max_line_bytes = 4096;
        c.chunk_bytes = 2048;
        c.on_invalid_line = if keys.contains("bad_line") {
            fhirbulk::config::InvalidLinePolicy::Skip
        } else {
            fhirbulk::config::InvalidLinePolicy::Fail
        };
        let (n, err, texts) = run_reporting(c);
        match err {
            // The failure is a signed file link's.
            Some(e) => assert!(fails && e.to_string().contains("/files/"), "{keys}: {e}"),
            None => assert!(!fails && n == 10, "{keys}: {n} records"),
        }
        assert!(sandbox_saw_sig(&sb), "{keys}: the URLs carried no sentinel");
        for t in &texts {
            assert_no_sig(keys, t);
        }
    }
    // The refused redirect to plain http: its target is never requested.
    let mut c = Config::new(sig_url(&sb, "polls=0;redirect_insecure"));
    c.types = vec!["Patient".into()];
    let (_, err, texts) = run_reporting(c);
    assert_eq!(err.expect("refused").code, ErrorCode::Protocol);
    for t in &texts {
        assert_no_sig("redirect_insecure", t);
    }
}
