//! The CLI against an HTTPS API: it trusts the certificate given with
//! `--api-ca`, says what to pass when it cannot verify the server, and
//! relays the API's answer to a plain-HTTP request on the HTTPS port.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

use std::path::Path;
use std::time::Duration;

use airlock_core::config::{Config, Source};
use airlock_core::identity::{LocalIssuer, LocalIssuerConfig};

/// Runs `airlock approvals list` against `api`; (success, stdout + stderr).
async fn list(dir: &Path, api: &str, token: &str, ca: Option<&Path>) -> (bool, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_airlock"));
    cmd.args(["approvals", "list", "--api", api, "--token", token])
        .env_remove("AIRLOCK_CONFIG")
        .env_remove("AIRLOCK_API_CA")
        .current_dir(dir);
    if let Some(ca) = ca {
        cmd.arg("--api-ca").arg(ca);
    }
    let out = cmd.output().await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reaches_an_https_api_with_its_ca_and_says_what_is_missing_without() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("api.crt"), dir.path().join("api.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let source = Source {
        path: "test.toml".into(),
        text: format!(
            "[identity.local]\nenabled = true\n\n[api]\nlisten = \"127.0.0.1:0\"\napprovers = [\"dba\"]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert_path.display(),
            key_path.display()
        ),
    };
    let mut config = Config::parse(&source).unwrap();
    let data = dir.path().join("data");
    config.gateway.data_dir = data.clone();
    let runtime = airlock::Runtime::start(&config, &source, &airlock::registry())
        .await
        .unwrap();
    let port = runtime.api.unwrap().port();
    let token = LocalIssuer::load_or_create(&data, &LocalIssuerConfig::default())
        .unwrap()
        .mint("dana", &["dba".to_string()], Duration::from_secs(600))
        .unwrap();
    let https = format!("https://localhost:{port}");

    let (ok, out) = list(dir.path(), &https, &token, Some(&cert_path)).await;
    assert!(ok, "{out}");
    assert!(!out.contains("rror"), "{out}");

    let (ok, out) = list(dir.path(), &https, &token, None).await;
    assert!(!ok);
    assert!(out.contains("pass that certificate with --api-ca"), "{out}");

    let (ok, out) = list(
        dir.path(),
        &format!("http://localhost:{port}"),
        &token,
        None,
    )
    .await;
    assert!(!ok);
    assert!(
        out.contains(&format!("this API speaks HTTPS only; the request was not processed: use https://localhost:{port}/api/v1/approvals")),
        "{out}"
    );
    runtime.shutdown().await.unwrap();
}
