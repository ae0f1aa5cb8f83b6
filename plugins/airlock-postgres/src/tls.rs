//! TLS on both sides, with rustls and the ring provider: the listener's
//! certificate toward clients (negotiated with `SSLRequest`, or direct TLS
//! with ALPN `postgresql` as PostgreSQL 17 clients do), and the target's
//! `sslmode` toward the server.

use std::path::Path;
use std::sync::Arc;

use airlock_core::{Error, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// The ALPN protocol name PostgreSQL registered (required for direct TLS).
pub(crate) const ALPN_POSTGRESQL: &[u8] = b"postgresql";

fn provider() -> Arc<CryptoProvider> {
    airlock_core::tls::provider()
}

/// The listener's TLS configuration from its PEM files, offering only
/// PostgreSQL's ALPN name.
pub(crate) fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    airlock_core::tls::server_config(cert, key, &[ALPN_POSTGRESQL])
}

/// The TLS configuration toward a target: verifying against `root_cert`
/// (`verify-full`), or encrypting without checking the certificate
/// (`require`/`prefer`, as libpq does without a root certificate).
pub(crate) fn client_config(root_cert: Option<&Path>) -> Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS setup failed: {e}")))?;
    let config = match root_cert {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                Error::Config(format!("cannot read ssl_root_cert {}: {e}", path.display()))
            })?;
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    Error::Config(format!(
                        "ssl_root_cert {} is not a PEM certificate file: {e}",
                        path.display()
                    ))
                })?;
                roots.add(cert).map_err(|e| {
                    Error::Config(format!(
                        "ssl_root_cert {} holds an unusable certificate: {e}",
                        path.display()
                    ))
                })?;
            }
            if roots.is_empty() {
                return Err(Error::Config(format!(
                    "ssl_root_cert {} holds no certificate",
                    path.display()
                )));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider())))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The server name to present and verify for a target host.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(host.to_string())
        .map_err(|e| Error::Config(format!("host {host:?} is not a valid TLS server name: {e}")))
}

/// Accepts any server certificate but still checks the handshake signatures:
/// the link is encrypted, the server is not authenticated (libpq's `require`).
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_config_loads_a_generated_pair_and_explains_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        let config = server_config(&c, &k).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"postgresql".to_vec()]);

        let err = server_config(&k, &k).unwrap_err().to_string();
        assert!(err.contains("holds no certificate"), "{err}");
        let err = server_config(&c, &dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read tls_key"), "{err}");
        assert!(client_config(Some(&c)).is_ok());
        assert!(client_config(None).is_ok());
    }
}
