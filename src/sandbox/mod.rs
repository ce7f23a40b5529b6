//! A local FHIR Bulk Data Access (`$export`) server with deterministic synthetic
//! data, used by the test suites and demos. Binds 127.0.0.1 only.
//!
//! Paths: `/fhir/...` (normal behaviour) and `/x/<scenario>/fhir/...` where
//! `<scenario>` is a `;`-separated list of `key` / `key=value` switches:
//! `polls=N`, `retry_after=S|none|date|epoch`, `progress=TEXT|none`, `kickoff=CODE`,
//! `poll=CODE`, `transient=N`, `throttle=N`, `gzip`, `length`, `chunked`, `errors`,
//! `deleted=N`, `partial`, `page=N`, `slow=MS`, `status_ct=TYPE`, `bad_manifest`,
//! `file_ct=TYPE`, and for authorization `token_ttl=S`, `revoke_after=S`,
//! `no_smart_config`, `token_error=CODE`, `files_elsewhere`, `redirect_files`, `redirect_insecure`,
//! `capability_urls`, `sig=VALUE` (every signature the scenario puts into a query string, the
//! `?sig=` of those redirects and of `resign`, is VALUE instead of a random value: a sentinel to
//! search outputs for; percent-encode it in the path, `sig=%53ENTINEL`, so that only the query
//! strings carry it verbatim) (unknown keys answer 400). Fault injection keys (the README's fault
//! table says what each does; "first request" is per file path): files `drop=BYTES`,
//! `no_ranges`, `file_error=CODE[:N]`, `storm=N`, `stall=MS`, `corrupt_gzip[=all]`,
//! `gzip_members=N`, `encoding=NAME`, `stored_gzip`, `short_ranges=BYTES`, `bad_range`,
//! `etag`, `last_modified`, `change_file`, `close_delimited`, `short_length=BYTES`,
//! `bad_chunked`, `trickle=MS`, `endless`; file lines `bad_line=N`, `long_line=BYTES[:N]`,
//! `truncate_last[=inner]`, `bad_utf8=N`, `contained_first`, `bom`; manifests
//! `foreign_scheme`, `expire_files=N`, `gone_after=N`, `no_output`, `resign`, `reorder`,
//! `dup_entry`, `refresh_extra`, `refresh_drop`, `page_loop`, `partial_page_error`,
//! `transaction_time=VALUE`, `bad_count=JSON`; other endpoints `endless_body=WHERE[,WHERE...]`,
//! `error_retry_after=S|none|date|epoch`, `token_blip=[CODE:]N`, `discovery_blip=N`,
//! `token_error_200`, `ansi`. Status URLs are `{prefix}/jobs/{id}`, manifest pages
//! `{prefix}/jobs/{id}/manifest/{n}`, partial manifest pages (`partial` with `page=N`)
//! `{prefix}/jobs/{id}/partial/{ready}/{n}`, files `{prefix}/files/{id}/{n}.ndjson`, the
//! documents DocumentReference / DiagnosticReport attachments point at
//! `{prefix}/fhir/Binary/{docid}` (GET, HEAD; authorized like files; raw bytes, or a FHIR
//! Binary resource when `Accept` asks for JSON and not the document's own type) and, for the
//! documents "on another origin", `/binary/{docid}` on the object store (no scenario prefix in the
//! records, so a record's bytes are the same whatever the scenario). Each document
//! has a class `hash(docid) % 20` that decides what it declares and how it is served (ok,
//! text/plain without size/hash, other origin, Binary-only, large, 404, 403, 500, 503 once,
//! wrong hash; the README's document table). Admin endpoints (not logged):
//! `GET|DELETE /_sandbox/requests`, `GET /_sandbox/truth` (`ids=1`: the resource ids;
//! `attachments=1`: every attachment and its truth,
//! [`Sandbox::truth_attachments`]).
//!
//! With [`SandboxOptions::auth`] set, the server is also a SMART Backend Services
//! authorization server: `{base}/.well-known/smart-configuration`, the token
//! endpoint `{prefix}/auth/token`, and access tokens required on the Bulk Data
//! endpoints. A second listener, the "object store" ([`Sandbox::store_url`]),
//! serves `{prefix}/files/...` and `{prefix}/binary/{docid}` without authorization and
//! rejects any request carrying an `Authorization` header.

mod auth;
mod data;
mod faults;
mod params;
mod plan;
mod scenario;
mod server;
mod tls;

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use auth::{SandboxAuth, SandboxClient};
/// FHIR instants as the sandbox writes them (`YYYY-MM-DDThh:mm:ss.sssZ` from milliseconds since
/// the Unix epoch).
pub use data::instant;
/// The resource types the sandbox exports (its CapabilityStatement lists them).
pub use data::TYPES;
/// The lines some fault scenarios put into output files (README, "The sandbox server").
pub use faults::{BAD_LINE, BAD_UTF8_LINE, TRUNCATED_INNER_LINE, TRUNCATED_LINE};
use server::Shared;
pub use tls::{SandboxTls, ServerCert, TlsSession, TlsVersions};

/// Sandbox configuration.
#[derive(Clone, Debug)]
pub struct SandboxOptions {
    /// TCP port on 127.0.0.1; 0 picks an ephemeral port.
    pub port: u16,
    /// Number of synthetic patients (`p0..p{N-1}`).
    pub patients: usize,
    /// Maximum resources per output file.
    pub records_per_file: usize,
    /// When set, kick-off, status, manifest pages and files require
    /// `Authorization: Bearer <token>`.
    pub bearer_token: Option<String>,
    /// Worker threads answering requests (per listener).
    pub threads: usize,
    /// SMART Backend Services authorization; None: no token endpoint.
    pub auth: Option<SandboxAuth>,
    /// Keep each output file's bytes in memory once rendered, so that later downloads of the
    /// same export (same parameters) are served from memory at wire speed (benchmarks).
    /// Memory grows with the exports requested.
    pub prerender: bool,
    /// Serve HTTPS instead of HTTP, on both listeners, with a test CA and certificates
    /// generated at start ([`Sandbox::ca_pem`], [`Sandbox::client_identity_pem`]). The plain
    /// listeners behind the TLS ones stay on loopback and are not advertised.
    pub tls: Option<SandboxTls>,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            port: 0,
            patients: 50,
            records_per_file: 1000,
            bearer_token: None,
            threads: 8,
            auth: None,
            prerender: false,
            tls: None,
        }
    }
}

/// One request received by the sandbox (admin `/_sandbox/*` requests are not logged).
#[derive(Clone, Debug, serde::Serialize)]
pub struct LoggedRequest {
    /// "fhir" (the FHIR server) or "store" (the object store).
    pub server: String,
    pub method: String,
    /// Percent-decoded path without the query.
    pub path: String,
    /// Percent-decoded query pairs in order (repeated keys kept).
    pub query: Vec<(String, String)>,
    /// The query string exactly as received (without '?').
    pub raw_query: String,
    /// Lowercased names; Authorization values keep only the scheme
    /// ("Bearer ***", "Basic ***").
    pub headers: Vec<(String, String)>,
    /// Whether a valid access token was presented. None when no authorization
    /// is configured, on the token endpoint, capability URLs and the object
    /// store, and on endpoints that need no token when none was sent.
    pub auth_ok: Option<bool>,
    /// The body; `client_assertion` / `client_secret` form values become "***".
    pub body: String,
    /// Milliseconds since the sandbox started.
    pub at_ms: u64,
    /// When the request was received: microseconds since the Unix epoch (to compare with
    /// clients' clocks on the same machine).
    pub unix_us: u64,
}

impl LoggedRequest {
    /// The value of a header (`name` lower-case), if the request had it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Selects records for [`Sandbox::truth`]; same semantics as kick-off parameters.
#[derive(Default, Clone, Debug)]
pub struct TruthQuery {
    /// "system" (default when empty), "patient" or "group".
    pub level: String,
    pub group: Option<String>,
    pub types: Vec<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub type_filters: Vec<String>,
    /// References such as "Patient/p3".
    pub patients: Vec<String>,
}

/// One attachment of a DocumentReference or DiagnosticReport and what fetching it must give
/// ([`Sandbox::truth_attachments`], `GET /_sandbox/truth?...&attachments=1`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AttachmentTruth {
    /// `DocumentReference/docref-1-2`.
    pub resource: String,
    /// Index among all attachments of the resource (inline ones too), in document order.
    pub position: usize,
    /// `content[0].attachment`, `presentedForm[0]`.
    pub path: String,
    /// The URL as the exported record has it (relative `Binary/{docid}`, or the object store's
    /// `{store}/binary/{docid}`); None for inline data.
    pub url: Option<String>,
    #[serde(rename = "contentType")]
    pub content_type: String,
    /// The document class (`hash(docid) % 20`); None for inline data.
    pub class: Option<u8>,
    /// The true byte count.
    pub size: u64,
    /// Hex SHA-1 of the true bytes.
    pub sha1: String,
    /// `ok`, `inline`, `missing`, `forbidden`, `server_error`, `hash_mismatch` or `large`.
    pub outcome: String,
}

/// A running sandbox server; stops on [`Sandbox::stop`] or drop.
pub struct Sandbox {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    pki: Option<tls::Pki>,
    sessions: Arc<parking_lot::Mutex<Vec<TlsSession>>>,
}

type Handler = fn(&Shared, tiny_http::Request);

/// Binds 127.0.0.1:`port` → (server, bound port).
fn listen(port: u16) -> io::Result<(Arc<tiny_http::Server>, u16)> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
    set_nodelay(&listener);
    let server = tiny_http::Server::from_listener(listener, None).map_err(|e| {
        match e.downcast::<io::Error>() {
            Ok(ioe) => *ioe,
            Err(other) => io::Error::other(other.to_string()),
        }
    })?;
    let port = server
        .server_addr()
        .to_ip()
        .map(|a| a.port())
        .ok_or_else(|| io::Error::other("sandbox: no IP listen address"))?;
    Ok((Arc::new(server), port))
}

impl Sandbox {
    /// Binds 127.0.0.1:`opts.port` (and an ephemeral port for the object store)
    /// and starts the worker threads.
    pub fn start(opts: SandboxOptions) -> io::Result<Sandbox> {
        let stop = Arc::new(AtomicBool::new(false));
        let sessions = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let mut fronts = Vec::new();
        let (server, port, store, store_port, pki);
        let roots = match &opts.tls {
            None => {
                (server, port) = listen(opts.port)?;
                (store, store_port) = listen(0)?;
                pki = None;
                (
                    format!("http://127.0.0.1:{port}"),
                    format!("http://127.0.0.1:{store_port}"),
                )
            }
            Some(t) => {
                // The plain listeners on ephemeral ports; TLS on the port asked for.
                (server, port) = listen(0)?;
                (store, store_port) = listen(0)?;
                let p = tls::Pki::generate(t.cert)?;
                let mut public = [0u16; 2];
                for (i, (name, at, backend)) in
                    [("fhir", opts.port, port), ("store", 0, store_port)]
                        .into_iter()
                        .enumerate()
                {
                    let (h, bound) = tls::listen(
                        name,
                        at,
                        backend,
                        &p,
                        t,
                        Arc::clone(&stop),
                        Arc::clone(&sessions),
                    )
                    .map_err(|e| {
                        // Ends the listener started before this one.
                        stop.store(true, Ordering::SeqCst);
                        e
                    })?;
                    fronts.push(h);
                    public[i] = bound;
                }
                pki = Some(p);
                (
                    format!("https://127.0.0.1:{}", public[0]),
                    format!("https://127.0.0.1:{}", public[1]),
                )
            }
        };
        let shared = Arc::new(Shared::new(&opts, roots, (port, store_port), stop));
        let mut sandbox = Sandbox {
            shared,
            workers: fronts,
            pki,
            sessions,
        };
        let threads = opts.threads.max(1);
        let pools: [(&Arc<tiny_http::Server>, Handler, &str, usize); 2] = [
            (&server, server::handle, "fhirbulk-sandbox", threads),
            // The store only serves files; fewer threads suffice.
            (
                &store,
                server::handle_store,
                "fhirbulk-store",
                threads.min(4),
            ),
        ];
        for (srv, handler, name, count) in pools {
            for n in 0..count {
                let srv = Arc::clone(srv);
                let shared = Arc::clone(&sandbox.shared);
                // On error `sandbox` drops here, which stops the started workers.
                let handle = std::thread::Builder::new()
                    .name(format!("{name}-{n}"))
                    .spawn(move || worker(&srv, &shared, handler))?;
                sandbox.workers.push(handle);
            }
        }
        Ok(sandbox)
    }

    /// The test CA's certificate (PEM) when serving HTTPS: what a client's `ca_bundle` needs.
    pub fn ca_pem(&self) -> Option<&str> {
        self.pki.as_ref().map(|p| p.ca_pem.as_str())
    }

    /// A client certificate issued by the test CA and its PKCS#8 private key (PEM, the form of
    /// the `client_cert` config key) when serving HTTPS; what [`SandboxTls::client_auth`] asks.
    pub fn client_identity_pem(&self) -> Option<&str> {
        self.pki.as_ref().map(|p| p.client_pem.as_str())
    }

    /// Writes [`Sandbox::ca_pem`] to `dir/ca.pem` and [`Sandbox::client_identity_pem`] to
    /// `dir/client.pem` (its owner's only: it holds a private key), creating `dir`; what the
    /// command-line servers' `--tls-dir` does. Returns the two paths; an error when not serving
    /// HTTPS.
    pub fn write_tls_files(
        &self,
        dir: &std::path::Path,
    ) -> io::Result<(std::path::PathBuf, std::path::PathBuf)> {
        let pki = self
            .pki
            .as_ref()
            .ok_or_else(|| io::Error::other("the sandbox does not serve HTTPS"))?;
        std::fs::create_dir_all(dir)?;
        let write = |name: &str, text: &str, mode: u32| -> io::Result<std::path::PathBuf> {
            let path = dir.join(name);
            let mut o = std::fs::OpenOptions::new();
            o.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, mode);
            let mut f = o.open(&path)?;
            // The mode of an existing file too, whatever the umask.
            #[cfg(unix)]
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
            #[cfg(not(unix))]
            let _ = mode;
            io::Write::write_all(&mut f, text.as_bytes())?;
            Ok(path)
        };
        Ok((
            write("ca.pem", &pki.ca_pem, 0o644)?,
            write("client.pem", &pki.client_pem, 0o600)?,
        ))
    }

    /// Every TLS connection's handshake so far (both listeners), in the order accepted.
    pub fn tls_sessions(&self) -> Vec<TlsSession> {
        self.sessions.lock().clone()
    }

    /// `http://127.0.0.1:PORT` (`https://` when serving TLS)
    pub fn root_url(&self) -> String {
        self.shared.root.clone()
    }

    /// `http://127.0.0.1:PORT/fhir`
    pub fn base_url(&self) -> String {
        format!("{}/fhir", self.shared.root)
    }

    /// `http://127.0.0.1:PORT/x/<scenario>/fhir`
    pub fn scenario_url(&self, scenario: &str) -> String {
        format!("{}/x/{}/fhir", self.shared.root, scenario)
    }

    /// `http://127.0.0.1:PORT/auth/token` (the unprefixed token endpoint).
    pub fn token_url(&self) -> String {
        format!("{}/auth/token", self.shared.root)
    }

    /// `http://127.0.0.1:PORT2`: the object store (second listener).
    pub fn store_url(&self) -> String {
        self.shared.store_root.clone()
    }

    /// Every client assertion the token endpoint received, in order, decoded
    /// without verification as `{"header": {..}, "claims": {..}}` (no signature).
    pub fn assertions(&self) -> Vec<serde_json::Value> {
        self.shared
            .auth
            .as_ref()
            .map(|a| a.assertions.lock().clone())
            .unwrap_or_default()
    }

    /// Access tokens issued so far.
    pub fn tokens_issued(&self) -> usize {
        self.shared
            .auth
            .as_ref()
            .map_or(0, |a| a.issued.load(Ordering::SeqCst))
    }

    /// Every logged request (both listeners), in the order received.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared.log.lock().clone()
    }

    pub fn clear_requests(&self) {
        self.shared.log.lock().clear();
    }

    /// Expected record count per resource type (requested types, or all types
    /// exportable at the level; zero counts included). Empty on invalid queries.
    pub fn truth(&self, q: &TruthQuery) -> BTreeMap<String, u64> {
        server::truth(&self.shared, q).unwrap_or_default()
    }

    /// `Type/id` of every resource an export for the query must deliver, sorted (the
    /// ground truth as a multiset: each id once). Empty on invalid queries.
    pub fn truth_ids(&self, q: &TruthQuery) -> Vec<String> {
        server::truth_ids(&self.shared, q).unwrap_or_default()
    }

    /// Every attachment of the DocumentReference and DiagnosticReport resources an export for
    /// the query delivers, sorted by (resource, position). Empty on invalid
    /// queries.
    pub fn truth_attachments(&self, q: &TruthQuery) -> Vec<AttachmentTruth> {
        server::truth_attachments(&self.shared, q).unwrap_or_default()
    }

    /// Stops accepting requests and joins the worker threads.
    pub fn stop(self) {
        drop(self);
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Accepted sockets inherit TCP_NODELAY from the listener on Linux; without it,
/// keep-alive responses stall ~40 ms on Nagle + delayed ACK.
#[cfg(unix)]
fn set_nodelay(listener: &std::net::TcpListener) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: valid socket fd and a pointer to a c_int of the given size.
    unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(not(unix))]
fn set_nodelay(_listener: &std::net::TcpListener) {}

fn worker(server: &tiny_http::Server, shared: &Arc<Shared>, handler: Handler) {
    let stop: &AtomicBool = &shared.stop;
    while !stop.load(Ordering::SeqCst) {
        match server.recv_timeout(Duration::from_millis(50)) {
            Ok(Some(req)) => {
                // A panic drops the request, which answers 500; keep serving.
                let _ =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(shared, req)));
            }
            Ok(None) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}
