//! `fhirbulk-sandbox`: runs the sandbox Bulk Data server until killed.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use fhirbulk::sandbox::{Sandbox, SandboxOptions};

const USAGE: &str = "usage: fhirbulk-sandbox [--port N] [--patients N] [--records-per-file N] \
[--bearer-token T] [--port-file PATH] [--threads N]

Serves a FHIR Bulk Data ($export) sandbox on 127.0.0.1 until killed.
  --port N              TCP port (default 0 = ephemeral)
  --patients N          synthetic patients (default 50)
  --records-per-file N  resources per output file (default 1000)
  --bearer-token T      require `Authorization: Bearer T` (also env FHIRBULK_SANDBOX_TOKEN)
  --port-file PATH      write the bound port number to PATH once listening
  --threads N           worker threads (default 8)";

struct Args {
    opts: SandboxOptions,
    port_file: Option<String>,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut opts = SandboxOptions::default();
    let mut port_file = None;
    let mut token = None;
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
            "--bearer-token" => token = Some(value()?),
            "--port-file" => port_file = Some(value()?),
            _ => return Err(format!("unknown argument: {arg}")),
        }
    }
    opts.bearer_token = token.or_else(|| {
        std::env::var("FHIRBULK_SANDBOX_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
    });
    Ok(Some(Args { opts, port_file }))
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
    let _ = out.flush();
    drop(out);
    loop {
        std::thread::park();
    }
}
