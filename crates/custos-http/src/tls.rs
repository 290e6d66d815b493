//! TLS for the API: the server certificate, optional client certificates pinned by fingerprint (mutual
//! TLS), and reloading both without a restart.
//!
//! Client certificates are accepted only if the SHA-256 fingerprint of their DER encoding is on the
//! allowlist file (one hex fingerprint per line, colons allowed, `#` comments). rustls still checks the
//! handshake signature, so a client must hold the certificate's private key. The fingerprint reaches every
//! request and every audit record. Certificate, key and allowlist files are polled for changes.

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum_server::accept::Accept;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

use crate::extract::ClientCertificate;
use custos_audit::{AuditEntry, Outcome};
use custos_core::AuditLog;

/// Makes `aws-lc-rs` the process's TLS crypto provider (Custos's only one), for every rustls user that
/// asks for the default (reqwest clients among them). Calling it again changes nothing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// TLS files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// When set, client certificates are required and must be on this allowlist of SHA-256 fingerprints.
    pub client_allowlist: Option<PathBuf>,
    /// How often the files are checked for changes.
    pub reload_interval: Duration,
    /// Where reloads (configuration changes) are recorded.
    pub audit: Option<Arc<AuditLog>>,
}

impl TlsFiles {
    /// Server TLS only, checked for changes every five seconds.
    pub fn new(cert: PathBuf, key: PathBuf) -> TlsFiles {
        TlsFiles {
            cert,
            key,
            client_allowlist: None,
            reload_interval: Duration::from_secs(5),
            audit: None,
        }
    }
}

/// The SHA-256 fingerprint of a DER certificate, lower-case hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

fn invalid(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {what}", path.display()),
    )
}

/// Reads an allowlist: one SHA-256 fingerprint per line (hex, colons and spaces ignored), `#` comments.
pub fn read_allowlist(path: &Path) -> io::Result<HashSet<[u8; 32]>> {
    let text = std::fs::read_to_string(path).map_err(|e| invalid(path, e))?;
    let mut allowed = HashSet::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let digits: String = line.chars().filter(|c| !matches!(c, ':' | ' ')).collect();
        let bytes: [u8; 32] = hex::decode(&digits)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                invalid(
                    path,
                    format!("line {}: not a SHA-256 fingerprint", number + 1),
                )
            })?;
        allowed.insert(bytes);
    }
    Ok(allowed)
}

/// Accepts client certificates whose fingerprint is on the allowlist.
#[derive(Debug)]
struct PinnedClients {
    allowed: RwLock<HashSet<[u8; 32]>>,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for PinnedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let digest: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        let allowed = self
            .allowed
            .read()
            .map(|a| a.contains(&digest))
            .unwrap_or(false);
        if allowed {
            Ok(ClientCertVerified::assertion())
        } else {
            tracing::warn!(fingerprint = %hex::encode(digest), "client certificate not on the allowlist");
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn server_config(
    files: &TlsFiles,
    clients: Option<&Arc<PinnedClients>>,
    provider: &Arc<CryptoProvider>,
) -> io::Result<ServerConfig> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| invalid(&files.cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(&files.cert, e))?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| invalid(&files.key, e))?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::other(e.to_string()))?;
    let builder = match clients {
        Some(clients) => {
            builder.with_client_cert_verifier(Arc::clone(clients) as Arc<dyn ClientCertVerifier>)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| invalid(&files.cert, e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The TLS acceptor that adds the client certificate's fingerprint to every request.
#[derive(Clone)]
pub struct ClientCertAcceptor(RustlsAcceptor);

impl std::fmt::Debug for ClientCertAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientCertAcceptor")
    }
}

type AcceptFuture<I, S> =
    Pin<Box<dyn Future<Output = io::Result<(TlsStream<I>, WithClientCertificate<S>)>> + Send>>;

impl<I, S> Accept<I, S> for ClientCertAcceptor
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Send + 'static,
{
    type Stream = TlsStream<I>;
    type Service = WithClientCertificate<S>;
    type Future = AcceptFuture<I, S>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let accepting = self.0.accept(stream, service);
        Box::pin(async move {
            let (stream, service) = accepting.await?;
            let fingerprint = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|cert| fingerprint(cert.as_ref()));
            Ok((
                stream,
                WithClientCertificate {
                    inner: service,
                    fingerprint,
                },
            ))
        })
    }
}

/// A connection's service that tags each request with the connection's client certificate.
#[derive(Debug, Clone)]
pub struct WithClientCertificate<S> {
    inner: S,
    fingerprint: Option<String>,
}

impl<S, B> tower_service::Service<axum::http::Request<B>> for WithClientCertificate<S>
where
    S: tower_service::Service<axum::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: axum::http::Request<B>) -> Self::Future {
        if let Some(fingerprint) = &self.fingerprint {
            request
                .extensions_mut()
                .insert(ClientCertificate(fingerprint.clone()));
        }
        self.inner.call(request)
    }
}

/// Records a configuration change in the audit log (`config_reload`), when there is one.
async fn record_reload(files: &TlsFiles, what: &str, detail: String, error: Option<&str>) {
    let Some(audit) = &files.audit else { return };
    let mut entry = AuditEntry::new("config_reload");
    entry.request_id = Some(format!("reload-{what}"));
    entry.subject = Some(format!("{what}: {detail}"));
    if let Some(code) = error {
        entry.outcome = Outcome::Error;
        entry.error_code = Some(code.to_owned());
    }
    if let Err(e) = audit.append(entry).await {
        tracing::error!(error = %e, "cannot audit the configuration change");
    }
}

/// Builds the acceptor and starts the task that reloads certificates and the allowlist when they change.
pub async fn acceptor(files: TlsFiles) -> io::Result<ClientCertAcceptor> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let clients = match &files.client_allowlist {
        Some(path) => Some(Arc::new(PinnedClients {
            allowed: RwLock::new(read_allowlist(path)?),
            provider: Arc::clone(&provider),
        })),
        None => None,
    };
    let config = RustlsConfig::from_config(Arc::new(server_config(
        &files,
        clients.as_ref(),
        &provider,
    )?));
    let reloading = config.clone();
    tokio::spawn(async move {
        let stamp = |files: &TlsFiles| (modified(&files.cert), modified(&files.key));
        let mut certs_seen = stamp(&files);
        let mut allowlist_seen = files.client_allowlist.as_deref().and_then(modified);
        loop {
            tokio::time::sleep(files.reload_interval).await;
            if let (Some(path), Some(clients)) = (&files.client_allowlist, &clients) {
                let now = modified(path);
                if now != allowlist_seen {
                    allowlist_seen = now;
                    match read_allowlist(path) {
                        Ok(allowed) => {
                            tracing::info!(path = %path.display(), clients = allowed.len(), "client allowlist reloaded");
                            let count = allowed.len();
                            if let Ok(mut current) = clients.allowed.write() {
                                *current = allowed;
                            }
                            let detail = format!("{} ({count} clients)", path.display());
                            record_reload(&files, "client_allowlist", detail, None).await;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "client allowlist not reloaded; keeping the previous one");
                            let detail = path.display().to_string();
                            record_reload(&files, "client_allowlist", detail, Some("invalid_file"))
                                .await;
                        }
                    }
                }
            }
            let now = stamp(&files);
            if now != certs_seen {
                certs_seen = now;
                match server_config(&files, clients.as_ref(), &provider) {
                    Ok(config) => {
                        reloading.reload_from_config(Arc::new(config));
                        tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
                        let detail = files.cert.display().to_string();
                        record_reload(&files, "tls_certificate", detail, None).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "TLS certificate not reloaded; keeping the previous one");
                        let detail = files.cert.display().to_string();
                        record_reload(&files, "tls_certificate", detail, Some("invalid_file"))
                            .await;
                    }
                }
            }
        }
    });
    Ok(ClientCertAcceptor(RustlsAcceptor::new(config)))
}
