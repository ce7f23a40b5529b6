//! Security (issue 17, first part): plain HTTP to a host that is not loopback is refused unless
//! the config allows it, for the base URL, for a redirect the server sends, and for the token
//! endpoint (before the client's credentials go out); loopback stays allowed.

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
