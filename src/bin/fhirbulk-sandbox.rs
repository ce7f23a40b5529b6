//! `fhirbulk-sandbox`: runs the sandbox Bulk Data server until killed.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use fhirbulk::sandbox::{Sandbox, SandboxAuth, SandboxClient, SandboxOptions};

const USAGE: &str = "usage: fhirbulk-sandbox [--port N] [--patients N] [--records-per-file N] \
[--bearer-token T] [--port-file PATH] [--threads N] [--prerender]
       [--client-id ID (--jwks PATH | --client-secret SECRET)]... [--token-ttl S]

Serves a FHIR Bulk Data ($export) sandbox on 127.0.0.1 until killed.
  --port N              TCP port (default 0 = ephemeral)
  --patients N          synthetic patients (default 50)
  --records-per-file N  resources per output file (default 1000)
  --bearer-token T      require `Authorization: Bearer T` (also env FHIRBULK_SANDBOX_TOKEN)
  --port-file PATH      write the bound port number to PATH once listening
  --threads N           worker threads (default 8)
  --prerender           keep rendered output files in memory: repeated exports with the same
                        parameters are served from memory (benchmarks; memory grows with them)
SMART Backend Services (token endpoint {root}/auth/token, smart-configuration):
  --client-id ID        register a client (repeatable; the options below apply to it)
  --jwks PATH           the client's public JWKS (or a single public JWK) for private_key_jwt
  --client-secret S     the client's secret for client_secret_basic
  --token-ttl S         access token lifetime in seconds (default 300)";

struct Args {
    opts: SandboxOptions,
    has_auth: bool,
    port_file: Option<String>,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut opts = SandboxOptions::default();
    let mut port_file = None;
    let mut token = None;
    let mut clients: Vec<SandboxClient> = Vec::new();
    let mut token_ttl: Option<u64> = None;
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let num = |v: String| {
            v.parse::<usize>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--port" => {
                let v = value()?;
                opts.port = v.parse().map_err(|_| format!("--port: not a port: {v}"))?;
            }
            "--patients" => opts.patients = num(value()?)?,
            "--records-per-file" => opts.records_per_file = num(value()?)?.max(1),
            "--threads" => opts.threads = num(value()?)?.max(1),
            "--prerender" => opts.prerender = true,
            "--bearer-token" => token = Some(value()?),
            "--port-file" => port_file = Some(value()?),
            "--client-id" => clients.push(SandboxClient {
                client_id: value()?,
                jwks: None,
                secret: None,
            }),
            "--jwks" => {
                let path = value()?;
                let client = clients
                    .last_mut()
                    .ok_or_else(|| "--jwks must follow --client-id".to_string())?;
                client.jwks = Some(read_jwks(&path)?);
            }
            "--client-secret" => {
                let secret = value()?;
                let client = clients
                    .last_mut()
                    .ok_or_else(|| "--client-secret must follow --client-id".to_string())?;
                client.secret = Some(secret);
            }
            "--token-ttl" => {
                let v = value()?;
                token_ttl = Some(
                    v.parse()
                        .map_err(|_| format!("--token-ttl: not a number: {v}"))?,
                );
            }
            _ => return Err(format!("unknown argument: {arg}")),
        }
    }
    opts.bearer_token = token.or_else(|| {
        std::env::var("FHIRBULK_SANDBOX_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
    });
    if let Some(c) = clients
        .iter()
        .find(|c| c.jwks.is_none() && c.secret.is_none())
    {
        return Err(format!(
            "client '{}' needs --jwks or --client-secret",
            c.client_id
        ));
    }
    if !clients.is_empty() || token_ttl.is_some() {
        let mut auth = SandboxAuth {
            clients,
            ..SandboxAuth::default()
        };
        if let Some(ttl) = token_ttl {
            auth.token_ttl_secs = ttl;
        }
        opts.auth = Some(auth);
    }
    let has_auth = opts.auth.is_some();
    Ok(Some(Args {
        opts,
        has_auth,
        port_file,
    }))
}

/// Reads a public JWKS file; a single JWK is wrapped into `{"keys": [..]}`.
fn read_jwks(path: &str) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("--jwks {path}: {e}"))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("--jwks {path}: not JSON: {e}"))?;
    let jwks = if v.get("keys").is_some_and(|k| k.is_array()) {
        v
    } else if v.get("kty").is_some() {
        serde_json::json!({ "keys": [v] })
    } else {
        return Err(format!("--jwks {path}: not a JWKS or JWK"));
    };
    let private = jwks["keys"]
        .as_array()
        .is_some_and(|ks| ks.iter().any(|k| k.get("d").is_some()));
    if private {
        return Err(format!(
            "--jwks {path}: contains a private key; register the public JWKS"
        ));
    }
    Ok(jwks)
}

/// Writes the port atomically (temp file in the same directory, then rename).
fn write_port_file(path: &str, port: u16) -> std::io::Result<()> {
    let tmp = format!("{path}.tmp.{}", std::process::id());
    std::fs::write(&tmp, format!("{port}\n"))?;
    std::fs::rename(&tmp, Path::new(path))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("fhirbulk-sandbox: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let sandbox = match Sandbox::start(args.opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fhirbulk-sandbox: cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let root = sandbox.root_url();
    let port = root
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    if let Some(path) = &args.port_file {
        if let Err(e) = write_port_file(path, port) {
            eprintln!("fhirbulk-sandbox: cannot write port file {path}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "fhirbulk-sandbox listening on {}", sandbox.base_url());
    if args.has_auth {
        let _ = writeln!(out, "token endpoint {}", sandbox.token_url());
    }
    let _ = out.flush();
    drop(out);
    loop {
        std::thread::park();
    }
}
