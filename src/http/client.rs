//! Building the export's HTTP clients: the trust roots and client certificate from the config's
//! PEM files, and the settings every client shares (timeouts, pool, no automatic redirects).
//!
//! Clients are shared by the exports whose client settings are the same (their [`Tls::key`]):
//! the blocking control client process-wide (each holds a runtime thread of reqwest's), the
//! download client per download thread. Exports to the same server then also share its kept-
//! alive connections.

use crate::config::Config;
use crate::error::{Error, ErrorCode, Result};
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

thread_local! {
    /// A download thread's clients, by key, the most recently used last.
    static FILE_CLIENTS: RefCell<Vec<(String, Rc<FileClient>)>> = const { RefCell::new(Vec::new()) };
}

/// A connection idle this long is not used again. A download client's connections are driven
/// by its thread's runtime only while a download runs on it, so a connection idle across a
/// pause goes unmaintained: reused after one (between two exports), a request on it was seen
/// to wait for its response until the read timeout. Files back to back still share one.
const POOL_IDLE: Duration = Duration::from_millis(100);
/// Idle connections kept per host (shared by the exports of a client).
const IDLE_PER_HOST: usize = 64;
/// Download clients a download thread keeps (the most recently used).
const FILE_CLIENTS_PER_THREAD: usize = 4;
/// Control clients kept after their exports ended (the most recently used; each holds its
/// runtime thread).
const BLOCKING_CLIENTS_KEPT: usize = 4;

/// Extra trust roots and the client certificate, read once from the config's PEM files; every
/// HTTP client of an export (the control client and each download thread's) uses them.
pub(crate) struct Tls {
    roots: Vec<reqwest::Certificate>,
    identity: Option<reqwest::Identity>,
    /// What tells clients apart: two configs with the same key get the same clients.
    key: String,
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
            .pool_max_idle_per_host(IDLE_PER_HOST)
            .pool_idle_timeout(POOL_IDLE)
            .redirect(reqwest::redirect::Policy::none())
            // rustls speaks nothing older; said here so that no build of it ever could.
            .min_tls_version(reqwest::tls::Version::TLS_1_2)
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
        // The PEM files by path and content (a change of the file makes another client).
        let digest = |p: &Option<String>| {
            p.as_ref().map(|p| {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::fs::read(p).unwrap_or_default().hash(&mut h);
                (p.clone(), h.finish())
            })
        };
        let key = format!(
            "{:?}|{:?}|{}|{}",
            digest(&config.ca_bundle),
            digest(&config.client_cert),
            config.connect_timeout_ms,
            config.read_timeout_ms
        );
        Ok(Tls {
            roots,
            identity,
            key,
        })
    }

    /// The blocking client of control requests (each read within `read_timeout_ms`), shared
    /// with every export of the same key. The last few are kept after their exports ended:
    /// building one loads and parses the system's root certificates (milliseconds, the most
    /// of an export's start), and a distributed reader starts an export per file.
    pub(crate) fn blocking_client(
        &self,
        config: &Config,
    ) -> Result<Arc<reqwest::blocking::Client>> {
        type Kept = Vec<(String, Arc<reqwest::blocking::Client>)>;
        static SHARED: Lazy<Mutex<Kept>> = Lazy::new(Mutex::default);
        let mut shared = SHARED.lock();
        if let Some(i) = shared.iter().position(|(k, _)| *k == self.key) {
            let hit = shared.remove(i);
            let c = hit.1.clone();
            shared.push(hit);
            return Ok(c);
        }
        let c = Arc::new(
            configure_client!(reqwest::blocking::Client::builder(), config, self)
                .timeout(Duration::from_millis(config.read_timeout_ms))
                .build()
                .map_err(client_failed)?,
        );
        if shared.len() >= BLOCKING_CLIENTS_KEPT {
            shared.remove(0);
        }
        shared.push((self.key.clone(), c.clone()));
        Ok(c)
    }

    /// Run `f` with this thread's download client for this key (made on first use; a thread
    /// keeps the few it used last).
    pub(crate) fn with_file_client<R>(
        &self,
        config: &Config,
        f: impl FnOnce(&FileClient) -> R,
    ) -> Result<R> {
        let c = FILE_CLIENTS.with(|cs| {
            let mut cs = cs.borrow_mut();
            if let Some(i) = cs.iter().position(|(k, _)| *k == self.key) {
                let hit = cs.remove(i);
                let c = hit.1.clone();
                cs.push(hit);
                return Ok(c);
            }
            let c = Rc::new(self.file_client(config)?);
            if cs.len() >= FILE_CLIENTS_PER_THREAD {
                cs.remove(0);
            }
            cs.push((self.key.clone(), c.clone()));
            Ok(c)
        })?;
        Ok(f(&c))
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
