//! `fhirbulk-sandbox`: runs the sandbox Bulk Data server until killed.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use fhirbulk::sandbox::{Sandbox, SandboxAuth, SandboxClient, SandboxOptions, SandboxTls};

const SMART: &str =
    "SMART Backend Services (token endpoint {root}/auth/token, smart-configuration)";

#[derive(Parser, Debug)]
#[command(
    name = "fhirbulk-sandbox",
    about = "Serves a FHIR Bulk Data ($export) sandbox on 127.0.0.1 until killed.",
    override_usage = "fhirbulk-sandbox [--port N] [--patients N] [--records-per-file N] \
[--bearer-token T] [--port-file PATH] [--threads N] [--prerender]
       [--tls-dir DIR [--mtls]] [--client-id ID (--jwks PATH | --client-secret SECRET)]... [--token-ttl S]",
    // A flag given twice: the last value counts.
    args_override_self = true
)]
struct Cli {
    /// TCP port (0 = ephemeral)
    #[arg(long, value_name = "N", default_value_t = SandboxOptions::default().port)]
    port: u16,
    /// synthetic patients
    #[arg(long, value_name = "N", default_value_t = SandboxOptions::default().patients)]
    patients: usize,
    /// resources per output file
    #[arg(long, value_name = "N", default_value_t = SandboxOptions::default().records_per_file)]
    records_per_file: usize,
    /// require `Authorization: Bearer T` (also env FHIRBULK_SANDBOX_TOKEN)
    #[arg(long, value_name = "T", allow_hyphen_values = true)]
    bearer_token: Option<String>,
    /// write the bound port number to PATH once listening
    #[arg(long, value_name = "PATH", allow_hyphen_values = true)]
    port_file: Option<String>,
    /// worker threads
    #[arg(long, value_name = "N", default_value_t = SandboxOptions::default().threads)]
    threads: usize,
    /// keep rendered output files in memory: repeated exports with the same parameters are
    /// served from memory (benchmarks; memory grows with them)
    #[arg(long)]
    prerender: bool,
    /// serve HTTPS with a test CA generated at start; writes DIR/ca.pem (for the client's
    /// ca_bundle) and DIR/client.pem (a client certificate and key, for client_cert)
    #[arg(long, value_name = "DIR", allow_hyphen_values = true)]
    tls_dir: Option<String>,
    /// with --tls-dir: require a client certificate issued by the test CA (mutual TLS)
    #[arg(long, requires = "tls_dir")]
    mtls: bool,
    /// register a client (repeatable; the --jwks and --client-secret after it apply to it)
    #[arg(long, value_name = "ID", allow_hyphen_values = true, help_heading = SMART)]
    client_id: Vec<String>,
    /// the client's public JWKS (or a single public JWK) for private_key_jwt
    #[arg(long, value_name = "PATH", allow_hyphen_values = true, help_heading = SMART)]
    jwks: Vec<String>,
    /// the client's secret for client_secret_basic
    #[arg(long, value_name = "S", allow_hyphen_values = true, help_heading = SMART)]
    client_secret: Vec<String>,
    /// access token lifetime in seconds (default 300)
    #[arg(long, value_name = "S", help_heading = SMART)]
    token_ttl: Option<u64>,
}

struct Args {
    opts: SandboxOptions,
    has_auth: bool,
    port_file: Option<String>,
    tls_dir: Option<String>,
}

/// Values of a repeatable option with their positions on the command line.
fn indexed<'a>(m: &ArgMatches, id: &str, values: &'a [String]) -> Vec<(usize, &'a String)> {
    m.indices_of(id)
        .map_or_else(Vec::new, |ix| ix.zip(values).collect())
}

/// Each --jwks / --client-secret belongs to the last --client-id before it.
fn clients(m: &ArgMatches, cli: &Cli) -> Result<Vec<SandboxClient>, String> {
    let starts: Vec<usize> = indexed(m, "client_id", &cli.client_id)
        .into_iter()
        .map(|(at, _)| at)
        .collect();
    let mut clients: Vec<SandboxClient> = cli
        .client_id
        .iter()
        .map(|id| SandboxClient {
            client_id: id.clone(),
            jwks: None,
            secret: None,
        })
        .collect();
    let mut settings: Vec<(usize, bool, &String)> = indexed(m, "jwks", &cli.jwks)
        .into_iter()
        .map(|(at, v)| (at, true, v))
        .chain(
            indexed(m, "client_secret", &cli.client_secret)
                .into_iter()
                .map(|(at, v)| (at, false, v)),
        )
        .collect();
    // In command-line order: errors come in that order and a later value replaces an earlier.
    settings.sort_by_key(|(at, ..)| *at);
    for (at, is_jwks, value) in settings {
        let flag = if is_jwks { "--jwks" } else { "--client-secret" };
        let client = starts
            .iter()
            .rposition(|start| *start < at)
            .and_then(|n| clients.get_mut(n))
            .ok_or_else(|| format!("{flag} must follow --client-id"))?;
        if is_jwks {
            client.jwks = Some(read_jwks(value)?);
        } else {
            client.secret = Some(value.clone());
        }
    }
    if let Some(c) = clients
        .iter()
        .find(|c| c.jwks.is_none() && c.secret.is_none())
    {
        return Err(format!(
            "client '{}' needs --jwks or --client-secret",
            c.client_id
        ));
    }
    Ok(clients)
}

fn parse_args(m: &ArgMatches) -> Result<Args, clap::Error> {
    let cli = Cli::from_arg_matches(m)?;
    let clients =
        clients(m, &cli).map_err(|e| Cli::command().error(ErrorKind::ValueValidation, e))?;
    let mut opts = SandboxOptions {
        port: cli.port,
        patients: cli.patients,
        records_per_file: cli.records_per_file.max(1),
        threads: cli.threads.max(1),
        prerender: cli.prerender,
        ..SandboxOptions::default()
    };
    opts.bearer_token = cli.bearer_token.or_else(|| {
        std::env::var("FHIRBULK_SANDBOX_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
    });
    if !clients.is_empty() || cli.token_ttl.is_some() {
        let mut auth = SandboxAuth {
            clients,
            ..SandboxAuth::default()
        };
        if let Some(ttl) = cli.token_ttl {
            auth.token_ttl_secs = ttl;
        }
        opts.auth = Some(auth);
    }
    if cli.tls_dir.is_some() {
        opts.tls = Some(SandboxTls {
            client_auth: cli.mtls,
            ..SandboxTls::default()
        });
    }
    let has_auth = opts.auth.is_some();
    Ok(Args {
        opts,
        has_auth,
        port_file: cli.port_file,
        tls_dir: cli.tls_dir,
    })
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

/// Writes the port atomically (a temporary file in the same directory, then renamed), so a
/// reader never sees a partial number.
fn write_port_file(path: &str, port: u16) -> std::io::Result<()> {
    let path = Path::new(path);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    writeln!(tmp, "{port}")?;
    tmp.persist(path).map(|_| ()).map_err(|e| e.error)
}

fn main() -> ExitCode {
    // Help exits 0, usage errors exit 2 (clap's codes).
    let args = parse_args(&Cli::command().get_matches()).unwrap_or_else(|e| e.exit());
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
    let mut tls_files = None;
    if let Some(dir) = &args.tls_dir {
        match sandbox.write_tls_files(Path::new(dir)) {
            Ok(paths) => tls_files = Some(paths),
            Err(e) => {
                eprintln!("fhirbulk-sandbox: cannot write the TLS files into {dir}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    // The port file last: once it exists, everything a client needs is in place.
    if let Some(path) = &args.port_file {
        if let Err(e) = write_port_file(path, port) {
            eprintln!("fhirbulk-sandbox: cannot write port file {path}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut out = std::io::stdout().lock();
    // It binds 127.0.0.1 only (src/sandbox): say so, so nobody takes it for a shared server.
    let _ = writeln!(
        out,
        "fhirbulk-sandbox listening on {} (loopback only)",
        sandbox.base_url()
    );
    if args.has_auth {
        let _ = writeln!(out, "token endpoint {}", sandbox.token_url());
    }
    if let Some((ca, client)) = &tls_files {
        let _ = writeln!(
            out,
            "test CA {} (ca_bundle), client certificate {} (client_cert)",
            ca.display(),
            client.display()
        );
    }
    let _ = out.flush();
    drop(out);
    loop {
        std::thread::park();
    }
}
