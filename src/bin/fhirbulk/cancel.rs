//! `fhirbulk cancel --out DIR`: DELETE the server job of the unfinished export in DIR (the
//! status URL from its checkpoint, with the same authorization) and remove the checkpoint.

use crate::cli::CancelArgs;
use crate::config;
use crate::export::{read_checkpoint, CHECKPOINT_FILE};
use crate::util::{self, CliError, EXIT_OK};
use fhirbulk::auth::Authorizer;
use fhirbulk::error::{from_reqwest, redact_url};
use fhirbulk::{Config, Error, ErrorCode};
use serde_json::{json, Value};
use std::time::Duration;

pub fn run(a: CancelArgs) -> u8 {
    match cancel(&a) {
        Ok(v) => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            }
            EXIT_OK
        }
        Err(e) => {
            e.report();
            if a.json {
                let v =
                    json!({"status": "failed", "error": e.to_json(), "exitCode": e.exit_code()});
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            }
            e.exit_code()
        }
    }
}

fn client(cfg: &Config) -> Result<reqwest::blocking::Client, CliError> {
    let mut b = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms))
        .timeout(Duration::from_millis(cfg.request_timeout_ms))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("fhirbulk/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &cfg.ca_bundle {
        let pem =
            std::fs::read(path).map_err(|e| CliError::usage(format!("ca_bundle {path:?}: {e}")))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            CliError::usage(format!("ca_bundle {path:?} is not PEM certificates: {e}"))
        })?;
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    if let Some(path) = &cfg.client_cert {
        let pem = std::fs::read(path)
            .map_err(|e| CliError::usage(format!("client_cert {path:?}: {e}")))?;
        let id = reqwest::Identity::from_pem(&pem).map_err(|_| {
            CliError::usage(format!(
                "client_cert {path:?} must hold a PEM certificate chain and its PKCS#8 private key"
            ))
        })?;
        b = b.identity(id);
    }
    b.build().map_err(|e| {
        CliError::Engine(Error::new(
            ErrorCode::Internal,
            format!("cannot build HTTP client: {e}"),
        ))
    })
}

fn cancel(a: &CancelArgs) -> Result<Value, CliError> {
    let cp_path = a.out.join(CHECKPOINT_FILE);
    let Some(cp) = read_checkpoint(&cp_path)? else {
        return Err(CliError::usage(format!(
            "no unfinished export in {} (no {CHECKPOINT_FILE}); nothing to cancel",
            a.out.display()
        )));
    };
    let status_url = cp
        .checkpoint
        .get("status_url")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| CliError::usage(format!("{} has no status URL", cp_path.display())))?;

    let mut map = match cp.config.clone() {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    let mut credentials = cp.config_has_credentials;
    if let Some(p) = &a.config {
        for (k, v) in config::read_config_file(p)? {
            map.insert(k, v);
        }
        credentials = true;
    }
    let before = map.get("auth").cloned();
    config::apply_auth(&mut map, &a.auth)?;
    if map.get("auth") != before.as_ref() {
        credentials = true;
    }
    if !credentials {
        return Err(CliError::usage(
            "the export's credentials were given inline in its --config and are not kept in the \
checkpoint: give the same --config (or the auth flags) to cancel",
        ));
    }
    map.remove("resume");
    map.remove("since");
    let cfg = Config::from_json(&Value::Object(map).to_string())?;
    let http = client(&cfg)?;
    let auth = Authorizer::new(
        &cfg.auth,
        &cfg.base_url,
        Duration::from_millis(cfg.request_timeout_ms),
    )?
    .allow_insecure_http(cfg.allow_insecure_http);
    // The token and extra headers go only to the FHIR server's own origin.
    let same_origin = match (url::Url::parse(&status_url), url::Url::parse(&cfg.base_url)) {
        (Ok(s), Ok(b)) => s.origin() == b.origin(),
        _ => false,
    };
    let mut req = http
        .delete(&status_url)
        .header(reqwest::header::ACCEPT, "application/fhir+json");
    if same_origin {
        for (k, v) in &cfg.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(t) = auth.bearer(&http)? {
            req = req.bearer_auth(t.expose());
        }
    }
    let resp = req
        .send()
        .map_err(|e| CliError::Engine(from_reqwest("export DELETE", &status_url, &e)))?;
    let status = resp.status().as_u16();
    let gone = matches!(status, 404 | 410);
    if !(200..300).contains(&status) && !gone {
        let body = resp.bytes().map(|b| b.to_vec()).unwrap_or_default();
        return Err(CliError::Engine(Error::from_response(
            "export DELETE",
            status,
            &status_url,
            &body,
        )));
    }
    std::fs::remove_file(&cp_path)
        .map_err(|e| CliError::io(format_args!("cannot remove {}", cp_path.display()), &e))?;
    crate::export::remove_lists(&a.out)?;
    util::sync_dir(&a.out);
    if !a.quiet {
        if gone {
            eprintln!(
                "fhirbulk: the server no longer had the job {} (HTTP {status}); removed the checkpoint",
                redact_url(&status_url)
            );
        } else {
            eprintln!(
                "fhirbulk: cancelled: the server accepted the DELETE of {} (HTTP {status}); removed \
the checkpoint; the partial files in {} are kept (start a new export there with --force)",
                redact_url(&status_url),
                a.out.display()
            );
        }
    }
    Ok(json!({
        "status": if gone { "already_gone" } else { "cancelled" },
        "statusUrl": redact_url(&status_url),
        "httpStatus": status,
        "out": a.out.display().to_string(),
    }))
}
