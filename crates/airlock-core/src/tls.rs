//! TLS toward clients, shared by every listener that terminates it (the
//! PostgreSQL connector, the API): one loader for the `tls_cert`/`tls_key`
//! PEM files, one crypto provider (ring), rustls's safe protocol versions.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::{Error, Result};

/// The crypto provider every TLS configuration of the gateway uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration from a PEM certificate chain (leaf first) and a
/// PEM private key (PKCS#8, PKCS#1 or SEC1), offering `alpn` in order.
/// Errors name the file and the setting (`tls_cert`, `tls_key`), since they
/// reach the operator at start-up.
pub fn server_config(cert: &Path, key: &Path, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>> {
    let cert_pem = std::fs::read(cert)
        .map_err(|e| Error::Config(format!("cannot read tls_cert {}: {e}", cert.display())))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| {
            Error::Config(format!(
                "tls_cert {} is not a PEM certificate chain: {e}",
                cert.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "tls_cert {} holds no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks)",
            cert.display()
        )));
    }
    let key_pem = std::fs::read(key)
        .map_err(|e| Error::Config(format!("cannot read tls_key {}: {e}", key.display())))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        Error::Config(format!(
            "tls_key {} is not a PEM private key: {e}",
            key.display()
        ))
    })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS setup failed: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Config(format!("tls_cert and tls_key do not fit together: {e}")))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The TLS configuration of a listener whose section has the optional keys
/// `tls_cert` and `tls_key`: both or neither (`what` names the section in
/// the error).
pub fn optional_server_config(
    what: &str,
    cert: Option<&Path>,
    key: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<Option<Arc<ServerConfig>>> {
    match (cert, key) {
        (Some(cert), Some(key)) => server_config(cert, key, alpn).map(Some),
        (None, None) => Ok(None),
        _ => Err(Error::Config(format!(
            "{what}: set both tls_cert and tls_key, or neither"
        ))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn half_a_tls_setting_and_unreadable_files_are_named() {
        let e = optional_server_config("[api]", Some(Path::new("a.crt")), None, &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("[api]: set both tls_cert and tls_key"),
            "{e}"
        );
        assert!(
            optional_server_config("[api]", None, None, &[])
                .unwrap()
                .is_none()
        );
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.crt");
        let e = server_config(&missing, &missing, &[]).unwrap_err();
        assert!(e.to_string().contains("cannot read tls_cert"), "{e}");
        let junk = dir.path().join("junk.crt");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = server_config(&junk, &missing, &[]).unwrap_err();
        assert!(e.to_string().contains("holds no certificate"), "{e}");
    }
}
