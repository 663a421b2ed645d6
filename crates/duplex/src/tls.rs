//! TLS termination: the certificate and key from `tls_cert` / `tls_key`,
//! turned into the acceptor the accept loop runs each connection through.
//!
//! The files are read and checked once at startup, so a wrong path, a file
//! that holds no PEM certificate, or a key that does not match the
//! certificate stops `duplex serve` with a message naming the file instead
//! of failing every client handshake later.
//!
//! The crypto provider is rustls' `ring`, passed explicitly to the config
//! builder: nothing is installed process-wide, so an embedding program's own
//! provider choice is left alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// The only application protocol we speak over TLS: WebSocket upgrades are
/// HTTP/1.1 requests, and the API is served by the same HTTP/1.1 server.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Why the TLS files cannot be used; shown to the operator as is.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is missing, unreadable or holds no certificate.
    #[error("tls_cert {path}: cannot read a PEM certificate: {reason}")]
    Cert {
        /// File that failed.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key file is missing, unreadable or holds no private key.
    #[error("tls_key {path}: cannot read a PEM private key: {reason}")]
    Key {
        /// File that failed.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("tls_cert {cert} with tls_key {key}: {reason}")]
    Config {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// What rustls refused.
        reason: String,
    },
}

/// Reads the PEM files and builds the acceptor (ALPN `http/1.1`).
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert.to_owned(),
            reason: describe(e, "CERTIFICATE"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert.to_owned(),
            reason: "no CERTIFICATE section found".into(),
        });
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        reason: describe(e, "PRIVATE KEY"),
    })?;
    let refused = |e: rustls::Error| TlsError::Config {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason: match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                "the private key does not belong to the certificate".into()
            }
            e => e.to_string(),
        },
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(refused)?
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map_err(refused)?;
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The PEM parser's error in an operator's words.
fn describe(e: pem::Error, section: &str) -> String {
    match e {
        pem::Error::Io(e) => e.to_string(),
        pem::Error::NoItemsFound => format!("no {section} section found"),
        e => e.to_string(),
    }
}
