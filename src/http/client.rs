//! Building the export's HTTP clients: the trust roots and client certificate from the config's
//! PEM files, and the settings every client shares (timeouts, pool, no automatic redirects).

use crate::config::Config;
use crate::error::{Error, ErrorCode, Result};
use std::time::Duration;

/// Extra trust roots and the client certificate, read once from the config's PEM files; every
/// HTTP client of an export (the control client and each download thread's) uses them.
pub(crate) struct Tls {
    roots: Vec<reqwest::Certificate>,
    identity: Option<reqwest::Identity>,
}

/// The HTTP client of one download thread: reqwest's async API driven by a runtime of this
/// thread, so that a connection and the loop reading its body run on the same thread. With
/// `reqwest::blocking`, every chunk of a body crosses from reqwest's runtime thread to the
/// reading thread (two wake-ups per chunk): on chunked responses that halved throughput and
/// tripled CPU per GB (bench/run.py).
pub(crate) struct FileClient {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) client: reqwest::Client,
}

fn client_failed(e: reqwest::Error) -> Error {
    Error::new(
        ErrorCode::Internal,
        format!("cannot build HTTP client: {e}"),
    )
}

/// The settings every HTTP client of an export shares, on a blocking or an async
/// `ClientBuilder` (same method names, different types).
macro_rules! configure_client {
    ($builder:expr, $config:expr, $tls:expr) => {{
        let mut b = $builder
            .connect_timeout($config.connect_timeout())
            .pool_max_idle_per_host($config.concurrency + 1)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("fhirbulk/", env!("CARGO_PKG_VERSION")));
        for c in &$tls.roots {
            b = b.add_root_certificate(c.clone());
        }
        if let Some(id) = &$tls.identity {
            b = b.identity(id.clone());
        }
        b
    }};
}

impl Tls {
    pub(crate) fn load(config: &Config) -> Result<Tls> {
        let mut roots = Vec::new();
        if let Some(path) = &config.ca_bundle {
            let pem = std::fs::read(path)
                .map_err(|e| Error::config(format!("invalid config: ca_bundle {path:?}: {e}")))?;
            roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::config(format!(
                    "invalid config: ca_bundle {path:?} is not PEM certificates: {e}"
                ))
            })?;
        }
        let mut identity = None;
        if let Some(path) = &config.client_cert {
            let pem = std::fs::read(path)
                .map_err(|e| Error::config(format!("invalid config: client_cert {path:?}: {e}")))?;
            // The error text of a failed parse could quote the key: keep it out.
            identity = Some(reqwest::Identity::from_pem(&pem).map_err(|_| {
                Error::config(format!(
                    "invalid config: client_cert {path:?} must hold a PEM certificate chain and its PKCS#8 private key"
                ))
            })?);
        }
        Ok(Tls { roots, identity })
    }

    /// The blocking client of control requests (each read within `read_timeout_ms`).
    pub(crate) fn blocking_client(&self, config: &Config) -> Result<reqwest::blocking::Client> {
        configure_client!(reqwest::blocking::Client::builder(), config, self)
            .timeout(Duration::from_millis(config.read_timeout_ms))
            .build()
            .map_err(client_failed)
    }

    /// The client of one download thread, with its runtime.
    pub(crate) fn file_client(&self, config: &Config) -> Result<FileClient> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::new(ErrorCode::Internal, format!("cannot start a runtime: {e}")))?;
        let client = configure_client!(reqwest::Client::builder(), config, self)
            .build()
            .map_err(client_failed)?;
        Ok(FileClient { rt, client })
    }
}
