//! TLS end to end (issue 17): every export here runs over HTTPS against the sandbox's TLS
//! listeners, with a test CA and certificates the sandbox generates. The default trust store
//! refuses the test CA, `ca_bundle` trusts it, a certificate for another host or an expired one
//! is refused, mutual TLS needs `client_cert`, and no handshake ever offers or accepts a version
//! below TLS 1.2. A refusal is tried once (no retry can change it) and its error says what the
//! certificate problem is.

mod common;

use common::{run, run_exact, truth};
use fhirbulk::sandbox::{
    Sandbox, SandboxAuth, SandboxClient, SandboxOptions, SandboxTls, ServerCert, TlsSession,
    TlsVersions,
};
use fhirbulk::{Auth, Config, ErrorCode, SecretSource};
use std::path::PathBuf;

/// A sandbox over HTTPS that is also the SMART authorization server (so that the first request
/// of an export is the discovery GET, which is retried on network errors).
fn https(tls: SandboxTls) -> Sandbox {
    let sb = Sandbox::start(SandboxOptions {
        patients: 30,
        records_per_file: 25,
        tls: Some(tls),
        auth: Some(SandboxAuth {
            clients: vec![SandboxClient {
                client_id: "tls-client".into(),
                jwks: None,
                secret: Some("tls-secret".into()),
            }],
            ..SandboxAuth::default()
        }),
        ..SandboxOptions::default()
    })
    .expect("sandbox starts");
    assert!(
        sb.base_url().starts_with("https://127.0.0.1:"),
        "{}",
        sb.base_url()
    );
    sb
}

/// The fault suites' config, authorized with the sandbox's client secret.
fn config(sb: &Sandbox, scenario: &str) -> Config {
    let mut c = common::config(sb, scenario);
    c.auth = Auth::ClientCredentials {
        client_id: "tls-client".into(),
        private_key: None,
        client_secret: Some(SecretSource::from("tls-secret")),
        kid: None,
        jku: None,
        alg: None,
        scope: None,
        token_url: None,
    };
    c
}

/// The sandbox's CA certificate and client identity as files (what the config takes).
struct Pem {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    client: PathBuf,
}

fn pem(sb: &Sandbox) -> Pem {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let client = dir.path().join("client.pem");
    std::fs::write(&ca, sb.ca_pem().expect("TLS sandbox has a CA")).unwrap();
    std::fs::write(&client, sb.client_identity_pem().expect("client identity")).unwrap();
    Pem {
        _dir: dir,
        ca,
        client,
    }
}

fn trusting(sb: &Sandbox, scenario: &str, pem: &Pem) -> Config {
    let mut c = config(sb, scenario);
    c.ca_bundle = Some(pem.ca.display().to_string());
    c
}

/// The export fails before any record with a network error naming `want` (lower-case match),
/// after one handshake attempt: a refusal is not retried.
fn refused(sb: &Sandbox, c: Config, want: &[&str]) -> fhirbulk::Error {
    let (d, err) = run(c);
    let e = err.expect("the handshake is refused");
    assert_eq!(e.code, ErrorCode::Network, "{e}");
    assert!(d.ids.is_empty(), "no record over a refused connection");
    let msg = e.message.to_lowercase();
    for w in want {
        assert!(msg.contains(w), "{w:?} in {:?}", e.message);
    }
    let sessions = settled(sb);
    assert_eq!(sessions.len(), 1, "a refusal is tried once: {sessions:?}");
    assert!(sb.requests().is_empty(), "nothing reached the server");
    e
}

/// The sessions once each has its outcome (the server learns of a refusal a moment after the
/// client).
fn settled(sb: &Sandbox) -> Vec<TlsSession> {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let s = sb.tls_sessions();
        if s.iter().all(|s| s.version.is_some() || s.error.is_some())
            || std::time::Instant::now() > until
        {
            return s;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Every handshake offered only TLS 1.2 or newer, and each that succeeded agreed on one.
fn assert_modern(sessions: &[TlsSession]) {
    assert!(!sessions.is_empty());
    for s in sessions {
        assert!(!s.offered.is_empty(), "a ClientHello was seen: {s:?}");
        for v in &s.offered {
            assert!(v == "TLSv1_2" || v == "TLSv1_3", "offered {v}: {s:?}");
        }
        if let Some(v) = &s.version {
            assert!(v == "TLSv1_2" || v == "TLSv1_3", "agreed {v}: {s:?}");
        }
    }
}

#[test]
fn the_default_trust_store_refuses_the_test_ca() {
    let sb = https(SandboxTls::default());
    let e = refused(
        &sb,
        config(&sb, ""),
        &[
            "tls handshake refused",
            "not issued by a ca",
            "ca_bundle",
            "unknownissuer",
        ],
    );
    assert!(
        e.url
            .as_deref()
            .unwrap_or("")
            .starts_with("https://127.0.0.1:"),
        "{e:?}"
    );
    let s = &settled(&sb)[0];
    assert!(s.version.is_none(), "{s:?}");
    assert!(
        s.error.as_deref().unwrap_or("").contains("UnknownCA"),
        "the client's alert: {s:?}"
    );
}

#[test]
fn ca_bundle_trusts_the_test_ca_for_the_server_the_store_and_the_token_endpoint() {
    let sb = https(SandboxTls::default());
    let p = pem(&sb);
    // Files redirected to the object store (the second TLS listener), the token from the token
    // endpoint.
    let c = trusting(&sb, "redirect_files", &p);
    let d = run_exact(&sb, c);
    assert_eq!(d.retries(), 0);
    assert_eq!(sb.tokens_issued(), 1);
    assert_eq!(d.warnings, Vec::<String>::new());
    let sessions = settled(&sb);
    assert_modern(&sessions);
    assert!(sessions.iter().all(|s| s.error.is_none()), "{sessions:?}");
    assert!(sessions.iter().any(|s| s.server == "fhir"));
    assert!(sessions.iter().any(|s| s.server == "store"));
    // Every request went through TLS: the logged ones all came through a handshake that worked.
    assert!(sb
        .requests()
        .iter()
        .any(|r| r.path.ends_with("/auth/token")));
    assert!(sb.requests().iter().any(|r| r.server == "store"));
}

#[test]
fn a_certificate_for_another_host_is_refused() {
    let sb = https(SandboxTls {
        cert: ServerCert::OtherHost,
        ..SandboxTls::default()
    });
    let p = pem(&sb);
    refused(
        &sb,
        trusting(&sb, "", &p),
        &["for another host name", "not valid for name", "127.0.0.1"],
    );
}

#[test]
fn an_expired_certificate_is_refused() {
    let sb = https(SandboxTls {
        cert: ServerCert::Expired,
        ..SandboxTls::default()
    });
    let p = pem(&sb);
    refused(&sb, trusting(&sb, "", &p), &["has expired", "expired"]);
}

#[test]
fn mutual_tls_fails_without_client_cert_and_succeeds_with_it() {
    for versions in [TlsVersions::Tls13, TlsVersions::Tls12] {
        let sb = https(SandboxTls {
            client_auth: true,
            versions,
            ..SandboxTls::default()
        });
        let p = pem(&sb);
        let (d, err) = run(trusting(&sb, "", &p));
        let e = err.unwrap_or_else(|| panic!("{versions:?}: a client certificate is required"));
        assert_eq!(e.code, ErrorCode::Network, "{e}");
        assert!(d.ids.is_empty());
        assert!(
            e.message.contains("client certificate (client_cert)"),
            "{versions:?}: {e}"
        );
        let sessions = settled(&sb);
        assert_eq!(sessions.len(), 1, "tried once: {sessions:?}");
        assert!(sb.requests().is_empty(), "no request was served");
        assert!(
            !sessions[0].client_cert && sessions[0].error.is_some(),
            "{sessions:?}"
        );

        let mut c = trusting(&sb, "", &p);
        c.client_cert = Some(p.client.display().to_string());
        let d = run_exact(&sb, c);
        assert_eq!(d.sorted(), truth(&sb));
        let sessions = settled(&sb);
        assert_modern(&sessions);
        let ok: Vec<_> = sessions.iter().skip(1).collect();
        assert!(!ok.is_empty());
        for s in ok {
            assert!(s.client_cert && s.error.is_none(), "{s:?}");
        }
    }
}

#[test]
fn tls_below_1_2_is_never_negotiated() {
    // A server that only speaks TLS 1.1: refused, with a protocol_version alert (70).
    let sb = https(SandboxTls {
        versions: TlsVersions::Tls11,
        ..SandboxTls::default()
    });
    let p = pem(&sb);
    refused(&sb, trusting(&sb, "", &p), &["tls 1.2 or 1.3"]);
    let s = &settled(&sb)[0];
    assert_eq!(s.error.as_deref(), Some("client alert 70"), "{s:?}");
    assert_modern(&settled(&sb));

    // TLS 1.2 only and TLS 1.3 only: both work, each agreeing on its version.
    for (versions, want) in [
        (TlsVersions::Tls12, "TLSv1_2"),
        (TlsVersions::Tls13, "TLSv1_3"),
    ] {
        let sb = https(SandboxTls {
            versions,
            ..SandboxTls::default()
        });
        let p = pem(&sb);
        run_exact(&sb, trusting(&sb, "", &p));
        let sessions = settled(&sb);
        assert_modern(&sessions);
        assert!(
            sessions.iter().all(|s| s.version.as_deref() == Some(want)),
            "{versions:?}: {sessions:?}"
        );
    }
}

#[test]
fn the_sandbox_binary_serves_https_and_writes_its_ca_and_client_identity() {
    use std::io::BufRead;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join("tls");
    let port_file = dir.path().join("port");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fhirbulk-sandbox"))
        .args([
            "--patients",
            "4",
            "--records-per-file",
            "3",
            "--mtls",
            "--tls-dir",
        ])
        .arg(&tls_dir)
        .arg("--port-file")
        .arg(&port_file)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // The sandbox is stopped whatever happens: when the test ends or panics (the guard), and
    // after 120 s in any case (the watchdog), so that a hang fails the test instead of holding
    // the suite (once, under heavy load, this test waited for an hour with the sandbox alive).
    struct Stop(
        std::process::Child,
        std::sync::Arc<std::sync::atomic::AtomicBool>,
    );
    impl Drop for Stop {
        fn drop(&mut self) {
            // `done` first: the watchdog never signals a child that was reaped.
            self.1.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = Stop(child, done.clone());
    std::thread::spawn(move || {
        let t0 = std::time::Instant::now();
        while t0.elapsed() < std::time::Duration::from_secs(120) {
            if done.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!("watchdog: the sandbox binary is stopped after 120 s");
        // SAFETY: kill(2) on the pid of the child this test started; it is reaped only after
        // `done` is set, so the pid is still that child's.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    });
    let mut lines = std::io::BufReader::new(stdout).lines();
    let first = lines.next().unwrap().unwrap();
    let second = lines.next().unwrap().unwrap();
    let port = std::fs::read_to_string(&port_file)
        .unwrap()
        .trim()
        .to_owned();
    let root = format!("https://127.0.0.1:{port}");
    assert_eq!(
        first,
        format!("fhirbulk-sandbox listening on {root}/fhir (loopback only)")
    );
    let (ca, client) = (tls_dir.join("ca.pem"), tls_dir.join("client.pem"));
    assert_eq!(
        second,
        format!(
            "test CA {} (ca_bundle), client certificate {} (client_cert)",
            ca.display(),
            client.display()
        )
    );
    let mode = |p: &PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&client), 0o600, "the client key is its owner's only");
    assert_eq!(mode(&ca), 0o644);

    // The truth over mutual TLS, then the export through the engine with the two files.
    let http = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap())
        .identity(reqwest::Identity::from_pem(&std::fs::read(&client).unwrap()).unwrap())
        .build()
        .unwrap();
    let truth: std::collections::BTreeMap<String, u64> = serde_json::from_str(
        &http
            .get(format!(
                "{root}/_sandbox/truth?level=system&_type=Patient,Observation"
            ))
            .send()
            .unwrap()
            .text()
            .unwrap(),
    )
    .unwrap();
    let mut c = Config::new(format!("{root}/fhir"));
    c.types = vec!["Patient".into(), "Observation".into()];
    c.poll_min_ms = 10;
    c.ca_bundle = Some(ca.display().to_string());
    c.client_cert = Some(client.display().to_string());
    // With the default 120 s read timeout, one download through the binary's TLS front
    // stalled (no byte, no retry) past this test's 30 s per record in about one run in three
    // when the suite ran after others (not diagnosed). With 5 s it did not happen in 7 runs, and
    // a stall would end within 5 s by the engine's timeout and resume the file.
    c.read_timeout_ms = 5_000;
    let (d, err) = run(c);
    drop(stop);
    assert!(err.is_none(), "{err:?}");
    assert!(d.ids.len() > 4);
    assert_eq!(d.ids.len() as u64, truth.values().sum::<u64>());
    // Each id once (the count matches the truth's).
    d.assert_subset_of(&d.sorted());
}

#[test]
fn faults_over_https_still_deliver_every_record_once() {
    // A connection cut inside a TLS stream (no close_notify), a resumed range, a short range,
    // expired links, retried statuses: the same guarantees as over plain HTTP.
    let sb = https(SandboxTls::default());
    let p = pem(&sb);
    for scenario in [
        "drop=3000",
        "corrupt_gzip",
        "stall=1500;length",
        "short_ranges=700;drop=2000",
        "expire_files=1;resign;drop=3000",
        "file_error=503:2;transient=2",
        "redirect_files;drop=3000",
    ] {
        let mut c = trusting(&sb, scenario, &p);
        c.read_timeout_ms = 500;
        let (d, err) = run(c);
        assert!(err.is_none(), "{scenario}: {err:?}");
        assert_eq!(d.sorted(), truth(&sb), "{scenario}: delivered ids differ");
        // The fault did happen: the engine had to try again.
        assert!(d.retries() > 0, "{scenario}: {:?}", d.progress);
    }
    assert_modern(&settled(&sb));
}
