//! `fhirbulk sandbox`: the sandbox Bulk Data server until Ctrl-C.

use crate::cli::SandboxArgs;
use crate::util::{CliError, EXIT_OK};
use fhirbulk::sandbox::{Sandbox, SandboxAuth, SandboxClient, SandboxOptions, SandboxTls};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub fn run(a: SandboxArgs) -> u8 {
    match serve(&a) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            e.report();
            e.exit_code()
        }
    }
}

/// What stays as is in a scenario's path segment: letters, digits and `;=_.,~-+`.
const SCENARIO: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b';')
    .remove(b'=')
    .remove(b'_')
    .remove(b'.')
    .remove(b',')
    .remove(b'~')
    .remove(b'-')
    .remove(b'+');

/// Percent-encode a scenario for its path segment (`/` in values such as `status_ct=text/plain`).
fn encode_scenario(s: &str) -> String {
    utf8_percent_encode(s, SCENARIO).to_string()
}

fn read_jwks(path: &std::path::Path) -> Result<serde_json::Value, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("--jwks {}: {e}", path.display())))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| CliError::usage(format!("--jwks {}: not JSON: {e}", path.display())))?;
    let jwks = if v.get("keys").is_some_and(|k| k.is_array()) {
        v
    } else if v.get("kty").is_some() {
        serde_json::json!({ "keys": [v] })
    } else {
        return Err(CliError::usage(format!(
            "--jwks {}: not a JWKS or JWK",
            path.display()
        )));
    };
    if jwks["keys"]
        .as_array()
        .is_some_and(|ks| ks.iter().any(|k| k.get("d").is_some()))
    {
        return Err(CliError::usage(format!(
            "--jwks {}: holds a private key; give the public JWKS",
            path.display()
        )));
    }
    Ok(jwks)
}

fn env_secret(flag: &str, var: &str) -> Result<String, CliError> {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| CliError::usage(format!("{flag}: environment variable {var} is not set")))
}

fn serve(a: &SandboxArgs) -> Result<(), CliError> {
    let mut opts = SandboxOptions {
        port: a.port,
        patients: a.patients,
        records_per_file: a.records_per_file.max(1),
        threads: a.threads.max(1),
        prerender: a.prerender,
        ..SandboxOptions::default()
    };
    if let Some(var) = &a.bearer_token_env {
        opts.bearer_token = Some(env_secret("--bearer-token-env", var)?);
    }
    let secret = match (&a.client_secret_file, &a.client_secret_env) {
        (Some(_), Some(_)) => {
            return Err(CliError::usage(
                "give --client-secret-file or --client-secret-env, not both",
            ))
        }
        (Some(p), None) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| CliError::usage(format!("--client-secret-file {}: {e}", p.display())))?
                .trim()
                .to_owned(),
        ),
        (None, Some(v)) => Some(env_secret("--client-secret-env", v)?),
        (None, None) => None,
    };
    let jwks = a.jwks.as_deref().map(read_jwks).transpose()?;
    match &a.client_id {
        Some(id) => {
            if jwks.is_none() && secret.is_none() {
                return Err(CliError::usage(format!(
                    "client {id:?} needs --jwks or --client-secret-file/--client-secret-env"
                )));
            }
            let mut auth = SandboxAuth {
                clients: vec![SandboxClient {
                    client_id: id.clone(),
                    jwks,
                    secret,
                }],
                ..SandboxAuth::default()
            };
            if let Some(ttl) = a.token_ttl {
                auth.token_ttl_secs = ttl;
            }
            opts.auth = Some(auth);
        }
        None => {
            if jwks.is_some() || secret.is_some() || a.token_ttl.is_some() {
                return Err(CliError::usage(
                    "--jwks, --client-secret-* and --token-ttl need --client-id",
                ));
            }
        }
    }
    if a.tls_dir.is_some() {
        opts.tls = Some(SandboxTls {
            client_auth: a.mtls,
            ..SandboxTls::default()
        });
    }
    let has_auth = opts.auth.is_some();
    let sandbox = Sandbox::start(opts).map_err(|e| CliError::Local {
        exit: crate::util::EXIT_OTHER,
        message: format!("cannot listen on 127.0.0.1:{}: {e}", a.port),
    })?;
    let tls_files = match &a.tls_dir {
        Some(dir) => Some(sandbox.write_tls_files(dir).map_err(|e| CliError::Local {
            exit: crate::util::EXIT_OTHER,
            message: format!("cannot write the TLS files into {}: {e}", dir.display()),
        })?),
        None => None,
    };
    let scenario_url = a
        .scenario
        .as_deref()
        .map(|s| sandbox.scenario_url(&encode_scenario(s)));
    if let Some(url) = &scenario_url {
        // The sandbox answers 400 to unknown scenario keys: say so now rather than at kick-off.
        let mut client = reqwest::blocking::Client::builder();
        if let Some(ca) = sandbox
            .ca_pem()
            .and_then(|p| reqwest::Certificate::from_pem(p.as_bytes()).ok())
        {
            client = client.add_root_certificate(ca);
        }
        if let Some(id) = sandbox
            .client_identity_pem()
            .filter(|_| a.mtls)
            .and_then(|p| reqwest::Identity::from_pem(p.as_bytes()).ok())
        {
            client = client.identity(id);
        }
        let check = client
            .build()
            .unwrap_or_default()
            .get(format!("{url}/metadata"))
            .timeout(Duration::from_secs(5))
            .send();
        if let Ok(r) = check {
            if r.status().as_u16() == 400 {
                let body = r.text().unwrap_or_default();
                let issues = fhirbulk::error::parse_operation_outcome(body.as_bytes());
                let why = issues
                    .first()
                    .and_then(|i| i.diagnostics.clone())
                    .unwrap_or(body);
                return Err(CliError::usage(format!("--scenario: {why}")));
            }
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let _ = ctrlc::set_handler(move || stop2.store(true, Ordering::SeqCst));
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "fhirbulk sandbox listening on {} (loopback only)",
            sandbox.root_url()
        );
        let _ = writeln!(out, "base URL: {}", sandbox.base_url());
        if let Some(url) = &scenario_url {
            let _ = writeln!(out, "scenario URL: {url}");
        }
        if has_auth {
            let _ = writeln!(out, "token endpoint: {}", sandbox.token_url());
        }
        if let Some((ca, client)) = &tls_files {
            let _ = writeln!(out, "test CA: {} (--ca-bundle)", ca.display());
            let _ = writeln!(
                out,
                "client certificate: {} (--client-cert{})",
                client.display(),
                if a.mtls { ", required" } else { "" }
            );
        }
        let _ = writeln!(
            out,
            "groups: g1 (all patients), g2 (even-numbered patients); Ctrl-C stops"
        );
        let _ = out.flush();
    }
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    sandbox.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::encode_scenario;

    #[test]
    fn scenario_segments() {
        assert_eq!(
            encode_scenario("polls=3;gzip;slow=100"),
            "polls=3;gzip;slow=100"
        );
        assert_eq!(
            encode_scenario("status_ct=text/plain;a_b.c,d~e-f+g"),
            "status_ct=text%2Fplain;a_b.c,d~e-f+g"
        );
        assert_eq!(
            encode_scenario("file_error=429:1 %?#\u{e9}"),
            "file_error=429%3A1%20%25%3F%23%C3%A9"
        );
    }
}
