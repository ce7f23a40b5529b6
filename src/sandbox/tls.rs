//! HTTPS for the sandbox: a test certificate authority and certificates generated at start
//! (rcgen), and a TLS listener in front of each plain listener (rustls through tokio-rustls).
//!
//! The listener terminates TLS and relays the bytes to the plain listener on loopback, so every
//! endpoint and fault of the sandbox also exists over HTTPS. Each connection's handshake is
//! recorded ([`TlsSession`]): the protocol versions the client's ClientHello offered, the
//! version agreed, whether a client certificate was presented, or why the handshake failed.

use parking_lot::Mutex;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// How the sandbox serves HTTPS ([`super::SandboxOptions::tls`]).
#[derive(Clone, Debug, Default)]
pub struct SandboxTls {
    /// The certificate the listeners present.
    pub cert: ServerCert,
    /// Require a client certificate issued by the sandbox's CA (mutual TLS); see
    /// [`super::Sandbox::client_identity_pem`].
    pub client_auth: bool,
    /// The protocol versions the listeners speak.
    pub versions: TlsVersions,
}

/// The server certificate: all are issued by the sandbox's test CA ([`super::Sandbox::ca_pem`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServerCert {
    /// For 127.0.0.1, ::1 and localhost, valid from yesterday for 30 days.
    #[default]
    Valid,
    /// For `other-host.invalid` only: wrong for every address the sandbox listens on.
    OtherHost,
    /// For the right names, but expired yesterday.
    Expired,
}

/// The TLS protocol versions the listeners accept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsVersions {
    /// TLS 1.2 and 1.3.
    #[default]
    Modern,
    /// TLS 1.2 only.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
    /// A server stuck on TLS 1.1: it answers every ClientHello with a TLS 1.1 ServerHello
    /// (hand-written bytes: rustls, rightly, cannot speak TLS 1.1) and records the client's
    /// alert. No request is ever served.
    Tls11,
}

/// One TLS connection to the sandbox, as its listener saw the handshake.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TlsSession {
    /// "fhir" or "store".
    pub server: String,
    /// The versions the ClientHello offered (`supported_versions`, or its `legacy_version`
    /// when it has none), such as "TLSv1_3", "TLSv1_2"; empty when no ClientHello came.
    pub offered: Vec<String>,
    /// The version agreed, when the handshake succeeded.
    pub version: Option<String>,
    /// Whether the client presented a certificate (verified against the test CA).
    pub client_cert: bool,
    /// Why the handshake failed; for [`TlsVersions::Tls11`], the alert the client sent.
    pub error: Option<String>,
}

/// The test PKI of one sandbox.
pub(crate) struct Pki {
    pub ca_pem: String,
    /// A client certificate issued by the CA, then its PKCS#8 key (the form `client_cert`
    /// takes).
    pub client_pem: String,
    server_cert: CertificateDer<'static>,
    server_key: Vec<u8>,
    ca_der: CertificateDer<'static>,
}

fn rcgen_failed(e: rcgen::Error) -> io::Error {
    io::Error::other(format!("sandbox TLS: cannot generate certificates: {e}"))
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "fhirbulk sandbox");
    dn
}

impl Pki {
    pub fn generate(cert: ServerCert) -> io::Result<Pki> {
        let now = time::OffsetDateTime::now_utc();
        let day = time::Duration::days(1);

        let ca_key = KeyPair::generate().map_err(rcgen_failed)?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name = name("fhirbulk sandbox test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.not_before = now - day;
        ca.not_after = now + 30 * day;
        let ca_cert = ca.self_signed(&ca_key).map_err(rcgen_failed)?;

        let server_key = KeyPair::generate().map_err(rcgen_failed)?;
        let mut server = CertificateParams::default();
        server.distinguished_name = name("fhirbulk sandbox");
        server.subject_alt_names = match cert {
            ServerCert::OtherHost => vec![SanType::DnsName(
                "other-host.invalid".try_into().map_err(rcgen_failed)?,
            )],
            _ => vec![
                SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
                SanType::DnsName("localhost".try_into().map_err(rcgen_failed)?),
            ],
        };
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        (server.not_before, server.not_after) = match cert {
            ServerCert::Expired => (now - 30 * day, now - day),
            _ => (now - day, now + 30 * day),
        };
        let server_cert = server
            .signed_by(&server_key, &ca_cert, &ca_key)
            .map_err(rcgen_failed)?;

        let client_key = KeyPair::generate().map_err(rcgen_failed)?;
        let mut client = CertificateParams::default();
        client.distinguished_name = name("fhirbulk sandbox client");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        client.not_before = now - day;
        client.not_after = now + 30 * day;
        let client_cert = client
            .signed_by(&client_key, &ca_cert, &ca_key)
            .map_err(rcgen_failed)?;

        Ok(Pki {
            ca_pem: ca_cert.pem(),
            client_pem: format!("{}{}", client_cert.pem(), client_key.serialize_pem()),
            server_cert: server_cert.der().clone(),
            server_key: server_key.serialize_der(),
            ca_der: ca_cert.der().clone(),
        })
    }

    fn server_config(&self, opts: &SandboxTls) -> io::Result<rustls::ServerConfig> {
        let bad = |e: rustls::Error| io::Error::other(format!("sandbox TLS: {e}"));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&'static rustls::SupportedProtocolVersion] = match opts.versions {
            TlsVersions::Tls12 => &[&rustls::version::TLS12],
            TlsVersions::Tls13 => &[&rustls::version::TLS13],
            _ => &[&rustls::version::TLS12, &rustls::version::TLS13],
        };
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions)
            .map_err(bad)?;
        let builder = if opts.client_auth {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca_der.clone()).map_err(bad)?;
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| io::Error::other(format!("sandbox TLS: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        let mut config = builder
            .with_single_cert(vec![self.server_cert.clone()], key)
            .map_err(bad)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// Binds 127.0.0.1:`port` for TLS in front of the plain listener on `backend_port`, and starts
/// its thread (stops when `stop` is set) → (thread, bound port).
pub(crate) fn listen(
    server: &'static str,
    port: u16,
    backend_port: u16,
    pki: &Pki,
    opts: &SandboxTls,
    stop: Arc<AtomicBool>,
    sessions: Arc<Mutex<Vec<TlsSession>>>,
) -> io::Result<(JoinHandle<()>, u16)> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(pki.server_config(opts)?));
    let legacy = opts.versions == TlsVersions::Tls11;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let handle = std::thread::Builder::new()
        .name(format!("fhirbulk-{server}-tls"))
        .spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                while !stop.load(Ordering::SeqCst) {
                    let accepted =
                        tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
                    if let Ok(Ok((tcp, _))) = accepted {
                        let conn = Conn {
                            server,
                            backend_port,
                            acceptor: acceptor.clone(),
                            legacy,
                            sessions: Arc::clone(&sessions),
                        };
                        tokio::spawn(conn.run(tcp));
                    }
                }
                // Dropping the runtime ends the connections still open.
            })
        })?;
    Ok((handle, port))
}

struct Conn {
    server: &'static str,
    backend_port: u16,
    acceptor: tokio_rustls::TlsAcceptor,
    legacy: bool,
    sessions: Arc<Mutex<Vec<TlsSession>>>,
}

/// A ClientHello is at most one record here (rustls writes one); wait this long for it.
const HELLO_WAIT: Duration = Duration::from_secs(5);
const RECORD_MAX: usize = 5 + (1 << 14);

impl Conn {
    async fn run(self, tcp: tokio::net::TcpStream) {
        let _ = tcp.set_nodelay(true);
        let hello = peek_record(&tcp).await;
        let session = TlsSession {
            server: self.server.to_owned(),
            offered: hello
                .as_deref()
                .and_then(offered_versions)
                .unwrap_or_default()
                .into_iter()
                .map(version_name)
                .collect(),
            version: None,
            client_cert: false,
            error: None,
        };
        // Recorded as soon as the ClientHello is in, before any answer: a client that gives up
        // on the answer has been counted already.
        let at = {
            let mut sessions = self.sessions.lock();
            sessions.push(session);
            sessions.len() - 1
        };
        let record = |f: &mut dyn FnMut(&mut TlsSession)| f(&mut self.sessions.lock()[at]);
        if self.legacy {
            let alert = answer_tls11(tcp).await;
            record(&mut |s| s.error = Some(alert.clone()));
            return;
        }
        let mut tls = match tokio::time::timeout(HELLO_WAIT, self.acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                record(&mut |s| s.error = Some(e.to_string()));
                return;
            }
            Err(_) => {
                record(&mut |s| s.error = Some("handshake timed out".into()));
                return;
            }
        };
        let (_, conn) = tls.get_ref();
        let version = conn.protocol_version().map(|v| format!("{v:?}"));
        let client_cert = conn.peer_certificates().is_some_and(|c| !c.is_empty());
        record(&mut |s| {
            s.version = version.clone();
            s.client_cert = client_cert;
        });
        let Ok(mut backend) =
            tokio::net::TcpStream::connect(("127.0.0.1", self.backend_port)).await
        else {
            return;
        };
        let _ = backend.set_nodelay(true);
        let _ = tokio::io::copy_bidirectional(&mut tls, &mut backend).await;
    }
}

/// The first TLS record the client sent, left unread (peeked), or None if none came whole.
async fn peek_record(tcp: &tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; RECORD_MAX];
    let deadline = tokio::time::Instant::now() + HELLO_WAIT;
    let mut last = 0;
    loop {
        let n = tokio::time::timeout_at(deadline, tcp.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n >= 5 {
            let want = 5 + u16::from_be_bytes([buf[3], buf[4]]) as usize;
            if n >= want || n == buf.len() {
                buf.truncate(n.min(want));
                return Some(buf);
            }
        }
        if n == 0 || tokio::time::Instant::now() >= deadline {
            return None;
        }
        if n == last {
            // Peek returns what is there at once: wait for more to arrive.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        last = n;
    }
}

/// The protocol versions a ClientHello record offers: its `supported_versions` extension (RFC
/// 8446 §4.2.1) without GREASE values, or its `legacy_version` when it has none. Parsed by hand
/// because rustls does not expose them (its `ClientHello` gives names, ALPN, suites only).
fn offered_versions(record: &[u8]) -> Option<Vec<u16>> {
    let u16_at = |b: &[u8], i: usize| Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]));
    // Record: type 22 (handshake), version, length; handshake: type 1 (ClientHello), length.
    if record.first() != Some(&22) || record.get(5) != Some(&1) {
        return None;
    }
    let body = record.get(9..)?;
    let legacy = u16_at(body, 0)?;
    let mut i = 2 + 32; // legacy_version, random
    i += 1 + *body.get(i)? as usize; // legacy_session_id
    i += 2 + u16_at(body, i)? as usize; // cipher_suites
    i += 1 + *body.get(i)? as usize; // legacy_compression_methods
    let Some(ext_len) = u16_at(body, i) else {
        return Some(vec![legacy]);
    };
    let exts = body.get(i + 2..i + 2 + ext_len as usize)?;
    let mut j = 0;
    while j + 4 <= exts.len() {
        let (kind, len) = (u16_at(exts, j)?, u16_at(exts, j + 2)? as usize);
        let data = exts.get(j + 4..j + 4 + len)?;
        if kind == 0x002b {
            let list = data.get(1..1 + *data.first()? as usize)?;
            return Some(
                list.chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .filter(|v| v & 0x0f0f != 0x0a0a)
                    .collect(),
            );
        }
        j += 4 + len;
    }
    Some(vec![legacy])
}

/// A version number as rustls names it ("TLSv1_2").
fn version_name(v: u16) -> String {
    match v {
        0x0300 => "SSLv3".into(),
        0x0301 => "TLSv1_0".into(),
        0x0302 => "TLSv1_1".into(),
        0x0303 => "TLSv1_2".into(),
        0x0304 => "TLSv1_3".into(),
        _ => format!("0x{v:04x}"),
    }
}

/// Plays a TLS 1.1 server: consumes the ClientHello, answers with a TLS 1.1 ServerHello
/// (TLS_RSA_WITH_AES_128_CBC_SHA, no extensions) and returns what the client answered.
async fn answer_tls11(mut tcp: tokio::net::TcpStream) -> String {
    let mut hello = vec![0u8; RECORD_MAX];
    let _ = tokio::time::timeout(HELLO_WAIT, tcp.read(&mut hello)).await;
    let mut server_hello = vec![
        0x02, 0x00, 0x00, 0x26, // ServerHello, 38 bytes
        0x03, 0x02, // server_version TLS 1.1
    ];
    server_hello.extend_from_slice(&[0x42; 32]); // random
    server_hello.extend_from_slice(&[0x00, 0x00, 0x2f, 0x00]); // no session id, suite, null
    let mut record = vec![0x16, 0x03, 0x02, 0x00, server_hello.len() as u8];
    record.extend_from_slice(&server_hello);
    if tcp.write_all(&record).await.is_err() {
        return "connection closed before the ServerHello".into();
    }
    let mut answer = [0u8; 7];
    match tokio::time::timeout(HELLO_WAIT, tcp.read_exact(&mut answer)).await {
        // Alert record: level, description (RFC 5246 §7.2; 70 is protocol_version).
        Ok(Ok(_)) if answer[0] == 21 => format!("client alert {}", answer[6]),
        Ok(Ok(_)) => format!("client sent record type {}", answer[0]),
        Ok(Err(_)) => "client closed the connection without an alert".into(),
        Err(_) => "client sent nothing".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offered_versions_of_a_client_hello() {
        // A ClientHello with supported_versions [GREASE, TLS 1.3, TLS 1.2].
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[0u8; 32]);
        body.extend_from_slice(&[0x00, 0x00, 0x02, 0x13, 0x01, 0x01, 0x00]);
        let ext = [
            0x00, 0x2b, 0x00, 0x07, 0x06, 0x1a, 0x1a, 0x03, 0x04, 0x03, 0x03,
        ];
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![0x01, 0x00, 0x00, body.len() as u8];
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 0x03, 0x01, 0x00, hs.len() as u8];
        rec.extend_from_slice(&hs);
        assert_eq!(offered_versions(&rec), Some(vec![0x0304, 0x0303]));
        // Without extensions: the legacy version.
        let cut = rec.len() - ext.len() - 2;
        assert_eq!(offered_versions(&rec[..cut]), Some(vec![0x0303]));
        assert_eq!(offered_versions(b"GET / HTTP/1.1\r\n"), None);
    }
}
