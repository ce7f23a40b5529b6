//! SMART Backend Services against the sandbox's token endpoint, over real HTTP.

use fhirbulk::sandbox::{Sandbox, SandboxAuth, SandboxClient, SandboxOptions};
use fhirbulk::{Auth, Config, ErrorCode, Export, Level, Next, SecretSource};
use std::time::Duration;

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
const CLIENT: &str = "bulk-client";
const SENTINEL: &str = "SENTINEL-s3cr3t-7f3a";

fn key_path(name: &str) -> String {
    format!("{KEYS}/{name}")
}

fn jwks() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(key_path("public.jwks.json")).unwrap()).unwrap()
}

fn sandbox_with(clients: Vec<SandboxClient>, patients: usize, per_file: usize) -> Sandbox {
    Sandbox::start(SandboxOptions {
        patients,
        records_per_file: per_file,
        auth: Some(SandboxAuth {
            clients,
            ..SandboxAuth::default()
        }),
        ..SandboxOptions::default()
    })
    .unwrap()
}

fn sandbox() -> Sandbox {
    sandbox_with(
        vec![
            SandboxClient {
                client_id: CLIENT.into(),
                jwks: Some(jwks()),
                secret: None,
            },
            SandboxClient {
                client_id: "basic-client".into(),
                jwks: None,
                secret: Some("basic-secret".into()),
            },
        ],
        6,
        4,
    )
}

fn jwt_auth(key: &str, kid: Option<&str>) -> Auth {
    Auth::ClientCredentials {
        client_id: CLIENT.into(),
        private_key: Some(SecretSource::File {
            file: key_path(key),
        }),
        client_secret: None,
        kid: kid.map(str::to_owned),
        jku: None,
        alg: None,
        scope: None,
        token_url: None,
    }
}

fn config(base: String, auth: Auth) -> Config {
    let mut c = Config::new(base);
    c.level = Level::Group;
    c.group_id = Some("g1".into());
    c.types = vec!["Patient".into(), "Observation".into()];
    c.poll_min_ms = 10;
    c.poll_max_ms = 100;
    c.retry_backoff_min_ms = 10;
    c.retry_backoff_max_ms = 100;
    c.auth = auth;
    c
}

/// Run to the end; the number of records.
fn run(c: Config) -> Result<u64, fhirbulk::Error> {
    let mut e = Export::start(c)?;
    let mut n = 0;
    loop {
        match e.next_record(Some(Duration::from_secs(30)))? {
            Next::Item(_) => n += 1,
            Next::End => return Ok(n),
            other => panic!("{other:?}"),
        }
    }
}

fn expected(sb: &Sandbox) -> u64 {
    sb.truth(&fhirbulk::sandbox::TruthQuery {
        level: "group".into(),
        group: Some("g1".into()),
        types: vec!["Patient".into(), "Observation".into()],
        ..Default::default()
    })
    .values()
    .sum()
}

#[test]
fn rs384_pem_key_exports_with_a_valid_assertion() {
    let sb = sandbox();
    let n = run(config(
        sb.base_url(),
        jwt_auth("rsa384-private.pem", Some("rsa-test-1")),
    ))
    .unwrap();
    assert_eq!(n, expected(&sb));
    let a = sb.assertions();
    assert_eq!(a.len(), 1, "one token for a short export");
    assert_eq!(a[0]["header"]["alg"], "RS384");
    assert_eq!(a[0]["header"]["kid"], "rsa-test-1");
    assert_eq!(a[0]["claims"]["iss"], CLIENT);
    assert_eq!(a[0]["claims"]["sub"], CLIENT);
    assert_eq!(a[0]["claims"]["aud"], sb.token_url());
    // Every FHIR request carried the issued token; discovery went through .well-known.
    let reqs = sb.requests();
    assert!(reqs
        .iter()
        .any(|r| r.path.ends_with("/.well-known/smart-configuration")));
    let token_req = reqs
        .iter()
        .find(|r| r.path.ends_with("/auth/token"))
        .unwrap();
    assert!(token_req.body.contains("grant_type=client_credentials"));
    assert!(
        token_req.body.contains("scope=system%2F*.read")
            || token_req.body.contains("scope=system%2F%2A.read"),
        "{}",
        token_req.body
    );
    assert!(token_req.body.contains(
        "client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"
    ));
    for r in reqs.iter().filter(|r| {
        r.path.contains("$export") || r.path.contains("/jobs/") || r.path.contains("/files/")
    }) {
        assert_eq!(r.auth_ok, Some(true), "{} {}", r.method, r.path);
    }
}

#[test]
fn es384_jwk_key_inline_exports() {
    let sb = sandbox();
    let jwk = std::fs::read_to_string(key_path("es384-private.jwk.json")).unwrap();
    let mut auth = jwt_auth("x", None);
    if let Auth::ClientCredentials { private_key, .. } = &mut auth {
        *private_key = Some(SecretSource::Inline(jwk));
    }
    assert_eq!(run(config(sb.base_url(), auth)).unwrap(), expected(&sb));
    let a = sb.assertions();
    assert_eq!(a[0]["header"]["alg"], "ES384");
    assert_eq!(a[0]["header"]["kid"], "ec-test-1");
}

#[test]
fn a_key_the_server_does_not_know_is_an_auth_error_with_its_description() {
    // Register only the RSA public key; sign with the EC key.
    let mut only_rsa = jwks();
    only_rsa["keys"]
        .as_array_mut()
        .unwrap()
        .retain(|k| k["kty"] == "RSA");
    let sb = sandbox_with(
        vec![SandboxClient {
            client_id: CLIENT.into(),
            jwks: Some(only_rsa),
            secret: None,
        }],
        2,
        10,
    );
    let e = run(config(
        sb.base_url(),
        jwt_auth("es384-private.jwk.json", None),
    ))
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::Auth, "{e}");
    assert!(e.message.contains("invalid_client"), "{}", e.message);
    assert!(
        e.message.len() > "token request failed: HTTP 401: invalid_client: ".len(),
        "carries the description: {}",
        e.message
    );
    assert_eq!(e.url.as_deref(), Some(sb.token_url().as_str()));
}

#[test]
fn short_lived_tokens_are_refreshed_during_a_slow_export() {
    let sb = sandbox_with(
        vec![SandboxClient {
            client_id: CLIENT.into(),
            jwks: Some(jwks()),
            secret: None,
        }],
        30,
        3,
    );
    let mut c = config(
        sb.scenario_url("token_ttl=2;slow=120"),
        jwt_auth("rsa384-private.pem", Some("rsa-test-1")),
    );
    c.concurrency = 2;
    let started = std::time::Instant::now();
    assert_eq!(run(c).unwrap(), expected(&sb));
    assert!(
        started.elapsed() > Duration::from_secs(3),
        "the export outlived the token"
    );
    assert!(
        sb.tokens_issued() >= 2,
        "refreshed: {} tokens",
        sb.tokens_issued()
    );
    assert!(
        sb.requests().iter().all(|r| r.auth_ok != Some(false)),
        "refreshed before expiry, never rejected"
    );
}

#[test]
fn a_revoked_token_gets_a_new_one_and_the_request_is_retried() {
    let sb = sandbox();
    let c = config(
        sb.scenario_url("revoke_after=0"),
        jwt_auth("rsa384-private.pem", Some("rsa-test-1")),
    );
    // Every token dies at once: each request gets 401 expired, a new token, and one retry,
    // which is rejected as well: the export fails with 401, after exactly one retry.
    let e = run(c).unwrap_err();
    assert_eq!(e.code, ErrorCode::Unauthorized);
    assert!(
        e.issues.iter().any(|i| i.code == "expired"),
        "{:?}",
        e.issues
    );
    assert_eq!(sb.tokens_issued(), 2);

    let sb = sandbox();
    let mut c = config(
        sb.scenario_url("revoke_after=1;slow=150"),
        jwt_auth("rsa384-private.pem", Some("rsa-test-1")),
    );
    c.concurrency = 1;
    assert_eq!(run(c).unwrap(), expected(&sb));
    let rejected = sb
        .requests()
        .iter()
        .filter(|r| r.auth_ok == Some(false))
        .count();
    assert!(rejected >= 1, "some request met a revoked token");
    assert!(sb.tokens_issued() >= 2);
}

#[test]
fn discovery_falls_back_to_metadata_and_token_url_overrides() {
    let sb = sandbox();
    let n = run(config(
        sb.scenario_url("no_smart_config"),
        jwt_auth("rsa384-private.pem", Some("rsa-test-1")),
    ))
    .unwrap();
    assert_eq!(n, expected(&sb));
    assert!(sb.requests().iter().any(|r| r.path.ends_with("/metadata")));

    let sb = sandbox();
    let mut auth = jwt_auth("rsa384-private.pem", Some("rsa-test-1"));
    if let Auth::ClientCredentials { token_url, .. } = &mut auth {
        *token_url = Some(sb.token_url());
    }
    assert_eq!(run(config(sb.base_url(), auth)).unwrap(), expected(&sb));
    assert!(!sb
        .requests()
        .iter()
        .any(|r| r.path.contains("well-known") || r.path.ends_with("/metadata")));
}

#[test]
fn client_secret_basic_works_and_errors_name_the_oauth_error() {
    let sb = sandbox();
    let basic = |secret: &str| Auth::ClientCredentials {
        client_id: "basic-client".into(),
        private_key: None,
        client_secret: Some(SecretSource::Inline(secret.into())),
        kid: None,
        jku: None,
        alg: None,
        scope: Some("system/*.rs".into()),
        token_url: None,
    };
    assert_eq!(
        run(config(sb.base_url(), basic("basic-secret"))).unwrap(),
        expected(&sb)
    );
    let e = run(config(sb.base_url(), basic(SENTINEL))).unwrap_err();
    assert_eq!(e.code, ErrorCode::Auth);
    assert!(e.message.contains("invalid_client"));

    let e = run(config(
        sb.scenario_url("token_error=invalid_scope"),
        basic("basic-secret"),
    ))
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::Auth);
    assert!(e.message.contains("invalid_scope"), "{}", e.message);
}

#[test]
fn the_token_never_leaves_the_fhir_servers_origin() {
    let sb = sandbox();
    let auth = || jwt_auth("rsa384-private.pem", Some("rsa-test-1"));
    // A manifest pointing at another host: refused before any request goes there.
    let e = run(config(sb.scenario_url("files_elsewhere"), auth())).unwrap_err();
    assert_eq!(e.code, ErrorCode::Auth);
    assert!(
        e.message.contains("127.0.0.1") && e.message.contains("token_origins"),
        "{}",
        e.message
    );
    assert!(
        sb.requests().iter().all(|r| r.server != "store"),
        "nothing went to the other host"
    );

    // 307 to a pre-signed object-store URL: followed, without the Authorization header (the
    // store answers 400 to any request that carries one, which would fail the export).
    sb.clear_requests();
    assert_eq!(
        run(config(sb.scenario_url("redirect_files"), auth())).unwrap(),
        expected(&sb)
    );
    let store: Vec<_> = sb
        .requests()
        .into_iter()
        .filter(|r| r.server == "store")
        .collect();
    assert!(!store.is_empty(), "files came from the store");
    assert!(store
        .iter()
        .all(|r| !r.headers.iter().any(|(k, _)| k == "authorization")));

    // requiresAccessToken false: capability URLs get no token.
    sb.clear_requests();
    assert_eq!(
        run(config(sb.scenario_url("capability_urls"), auth())).unwrap(),
        expected(&sb)
    );
    let files: Vec<_> = sb
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/files/"))
        .collect();
    assert!(!files.is_empty());
    assert!(files
        .iter()
        .all(|r| !r.headers.iter().any(|(k, _)| k == "authorization")));

    // Unless the caller trusts that origin.
    sb.clear_requests();
    let mut c = config(sb.scenario_url("files_elsewhere"), auth());
    c.token_origins = vec![sb.store_url()];
    let e = run(c).unwrap_err();
    // The store refuses tokens by design, so trusting it shows the token really went there.
    assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
}

#[test]
fn secrets_come_from_files_and_environment_and_never_show() {
    let sb = sandbox();
    std::env::set_var(
        "FHIRBULK_TEST_PRIVATE_KEY",
        std::fs::read_to_string(key_path("rsa384-private.pem")).unwrap(),
    );
    let mut auth = jwt_auth("x", Some("rsa-test-1"));
    if let Auth::ClientCredentials { private_key, .. } = &mut auth {
        *private_key = Some(SecretSource::Env {
            env: "FHIRBULK_TEST_PRIVATE_KEY".into(),
        });
    }
    assert_eq!(run(config(sb.base_url(), auth)).unwrap(), expected(&sb));

    let mut auth = jwt_auth("x", Some("rsa-test-1"));
    if let Auth::ClientCredentials { private_key, .. } = &mut auth {
        *private_key = Some(SecretSource::Env {
            env: "FHIRBULK_NO_SUCH_VARIABLE".into(),
        });
    }
    let e = Export::start(config(sb.base_url(), auth)).err().unwrap();
    assert_eq!(e.code, ErrorCode::Config);
    assert!(
        e.message.contains("FHIRBULK_NO_SUCH_VARIABLE"),
        "{}",
        e.message
    );

    // A sentinel secret in every place a secret can go: no error, Debug or log shows it.
    let mut texts = Vec::new();
    let bearer = config(
        sb.base_url(),
        Auth::Bearer {
            token: SENTINEL.into(),
        },
    );
    texts.push(format!("{bearer:?}"));
    let e = run(bearer).unwrap_err();
    texts.push(format!("{e} {e:?} {}", e.to_json()));
    let basic = config(
        sb.base_url(),
        Auth::ClientCredentials {
            client_id: "basic-client".into(),
            private_key: None,
            client_secret: Some(SENTINEL.into()),
            kid: None,
            jku: None,
            alg: None,
            scope: None,
            token_url: None,
        },
    );
    texts.push(format!("{basic:?}"));
    let e = run(basic).unwrap_err();
    texts.push(format!("{e} {e:?} {}", e.to_json()));
    let bad_key = config(
        sb.base_url(),
        Auth::ClientCredentials {
            client_id: CLIENT.into(),
            private_key: Some(SENTINEL.into()),
            client_secret: None,
            kid: Some("k".into()),
            jku: None,
            alg: None,
            scope: None,
            token_url: None,
        },
    );
    let e = Export::start(bad_key).err().unwrap();
    assert_eq!(e.code, ErrorCode::Config);
    texts.push(format!("{e} {e:?}"));
    texts.push(serde_json::to_string(&sb.requests()).unwrap());
    for t in &texts {
        assert!(!t.contains(SENTINEL), "secret leaked: {t}");
    }
}

#[test]
fn auth_config_from_json() {
    let json = format!(
        r#"{{"base_url":"http://127.0.0.1:1/fhir","auth":{{"type":"client_credentials","client_id":"c",
            "private_key":{{"file":"{}"}},"kid":"rsa-test-1","scope":"system/*.rs"}}}}"#,
        key_path("rsa384-private.pem")
    );
    let c = Config::from_json(&json).unwrap();
    assert!(matches!(c.auth, Auth::ClientCredentials { .. }));
    for (json, needle) in [
        (
            r#"{"base_url":"http://x/f","auth":{"type":"client_credentials","client_id":"c"}}"#,
            "exactly one of",
        ),
        (
            r#"{"base_url":"http://x/f","auth":{"type":"client_credentials","client_id":"c","client_secret":"s","private_key":"k"}}"#,
            "exactly one of",
        ),
        (
            r#"{"base_url":"http://x/f","auth":{"type":"client_credentials","client_id":"c","private_key":"k","alg":"HS256"}}"#,
            "HS256",
        ),
        (
            r#"{"base_url":"http://x/f","auth":{"type":"client_credentials","client_id":"c","private_key":{"path":"/k"}}}"#,
            "a secret",
        ),
        (
            r#"{"base_url":"http://x/f","ca_bundle":"/no/such/file.pem"}"#,
            "ca_bundle",
        ),
    ] {
        let e = Config::from_json(json)
            .err()
            .unwrap_or_else(|| panic!("{json}"));
        assert!(e.message.contains(needle), "{json}: {}", e.message);
    }
}

#[test]
fn a_private_key_file_others_can_read_gives_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let sb = sandbox();
    let dir = std::env::temp_dir().join(format!("fhirbulk-keymode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let warnings = |mode: u32| {
        let path = dir.join(format!("key-{mode:o}.pem"));
        std::fs::copy(key_path("rsa384-private.pem"), &path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let mut auth = jwt_auth("x", Some("rsa-test-1"));
        if let Auth::ClientCredentials { private_key, .. } = &mut auth {
            *private_key = Some(SecretSource::File {
                file: path.to_string_lossy().into_owned(),
            });
        }
        let mut e = Export::start(config(sb.base_url(), auth)).unwrap();
        let w = e.controller().warnings();
        let mut n = 0;
        while let Next::Item(_) = e.next_record(Some(Duration::from_secs(30))).unwrap() {
            n += 1;
        }
        assert_eq!(n, expected(&sb), "the export still runs");
        w
    };
    let w = warnings(0o644);
    assert!(
        w.iter()
            .any(|w| w.contains("has mode 644") && w.contains("chmod 600")),
        "{w:?}"
    );
    assert!(warnings(0o600).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn exports_of_one_process_share_the_token_of_the_same_credentials() {
    // A distributed reader starts an export per file (a Spark task): one token for them all
    // while it is good, not one token request per export.
    let sb = sandbox();
    let c = config(
        sb.base_url(),
        jwt_auth("rsa384-private.pem", Some("rsa-test-1")),
    );
    assert_eq!(run(c.clone()).unwrap(), expected(&sb));
    assert_eq!(run(c.clone()).unwrap(), expected(&sb));
    assert_eq!(
        sb.tokens_issued(),
        1,
        "the second export uses the first one's token"
    );
    // Other credentials for the same server (another scope) get their own token.
    let mut other = c.clone();
    if let Auth::ClientCredentials { scope, .. } = &mut other.auth {
        *scope = Some("system/*.rs".into());
    }
    assert_eq!(run(other).unwrap(), expected(&sb));
    assert_eq!(sb.tokens_issued(), 2, "another scope, another token");
    // A token the server rejects is dropped for every export: the next one asks again.
    let sb = sandbox();
    // (revoke_after=1: the server rejects a token 1 s after it issued it, long before its
    // expires_in.)
    let mut one = config(
        sb.scenario_url("revoke_after=1"),
        jwt_auth("rsa384-private.pem", Some("rsa-test-1")),
    );
    one.concurrency = 1;
    assert_eq!(run(one.clone()).unwrap(), expected(&sb));
    std::thread::sleep(Duration::from_millis(1200));
    let before = sb.tokens_issued();
    assert_eq!(run(one).unwrap(), expected(&sb));
    assert!(
        sb.tokens_issued() > before,
        "a rejected token is not handed to the next export"
    );
}

#[test]
fn a_token_shows_as_an_event_without_its_value() {
    let sb = sandbox();
    let auth = Auth::ClientCredentials {
        client_id: "basic-client".into(),
        private_key: None,
        client_secret: Some(SecretSource::Inline("basic-secret".into())),
        kid: None,
        jku: None,
        alg: None,
        scope: None,
        token_url: None,
    };
    let mut e = Export::start(config(sb.base_url(), auth)).unwrap();
    while let Next::Item(_) = e.next_record(Some(Duration::from_secs(30))).unwrap() {}
    let ctl = e.controller();
    let mut events = Vec::new();
    while let Next::Item(ev) = ctl.next_event(Some(Duration::ZERO)) {
        events.push(ev);
    }
    let tokens: Vec<_> = events.iter().filter(|ev| ev.kind == "token").collect();
    assert_eq!(tokens.len(), 1, "{events:?}");
    assert_eq!(tokens[0].fields()["refreshed"], false);
    assert_eq!(
        tokens[0].fields()["shared"],
        false,
        "a new sandbox: no token to share"
    );
    assert!(tokens[0].u64("refresh_in_s").is_some());
    let bearers: Vec<String> = sb
        .requests()
        .iter()
        .filter_map(|r| r.header("authorization"))
        .filter_map(|h| h.strip_prefix("Bearer ").map(str::to_owned))
        .collect();
    assert!(!bearers.is_empty());
    for ev in &events {
        let text = ev.to_json();
        assert!(!text.contains("basic-secret"), "{text}");
        for b in &bearers {
            assert!(!text.contains(b.as_str()), "an event carries the token");
        }
    }
}
