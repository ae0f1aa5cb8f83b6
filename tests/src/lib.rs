//! # airlock-tests
//!
//! End-to-end tests (in `tests/`) and the harness they share: a real gateway
//! started in-process from a TOML configuration, real TCP services as targets
//! and real clients.

pub mod postgres;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_examples::line::LineConnector;
use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A line service on loopback that answers each line with the same line and
/// remembers every line it received (to prove what reached the target).
#[derive(Debug)]
pub struct EchoTarget {
    /// Its address.
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<String>>>,
}

impl EchoTarget {
    /// Starts the service.
    pub async fn start() -> anyhow::Result<EchoTarget> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut lines = BufReader::new(r).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        if let Ok(mut l) = log.lock() {
                            l.push(line.clone());
                        }
                        if w.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Ok(EchoTarget { addr, received })
    }

    /// Every line the target received so far.
    pub fn received(&self) -> Vec<String> {
        self.received.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// A gateway running in this process with the example line connector.
#[derive(Debug)]
pub struct TestGateway {
    /// The runtime.
    pub runtime: airlock::Runtime,
    /// The line listener's address.
    pub lines: SocketAddr,
    /// The data directory.
    pub data_dir: std::path::PathBuf,
}

impl TestGateway {
    /// Starts a gateway from `toml` (which must define a listener named "lines").
    pub async fn start(toml: &str, data_dir: &Path) -> anyhow::Result<TestGateway> {
        let source = airlock_core::config::Source {
            path: "test.toml".into(),
            text: toml.to_string(),
        };
        let mut config = airlock_core::config::Config::parse(&source)?;
        config.gateway.data_dir = data_dir.to_path_buf();
        let mut registry = airlock::registry();
        registry.add::<LineConnector>();
        let runtime = airlock::Runtime::start(&config, &source, &registry).await?;
        let lines = runtime
            .address("lines")
            .context("no listener named lines")?;
        Ok(TestGateway {
            runtime,
            lines,
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// Connects a line client and logs in as `sub` to target `echo`.
    pub async fn login(&self, sub: &str, groups: &[&str]) -> anyhow::Result<LineClient> {
        let mut client = LineClient::connect(self.lines).await?;
        let answer = client
            .send(&format!("AUTH echo {}", self.token(sub, groups)?))
            .await?;
        anyhow::ensure!(answer.starts_with("OK "), "login refused: {answer}");
        Ok(client)
    }

    /// Mints a local-issuer token.
    pub fn token(&self, sub: &str, groups: &[&str]) -> anyhow::Result<String> {
        let issuer = airlock_core::identity::LocalIssuer::load_or_create(
            &self.data_dir,
            &airlock_core::identity::LocalIssuerConfig::default(),
        )?;
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        Ok(issuer.mint(sub, &groups, Duration::from_secs(600))?)
    }
}

/// A line-protocol client.
#[derive(Debug)]
pub struct LineClient {
    lines: tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    write: tokio::net::tcp::OwnedWriteHalf,
}

impl LineClient {
    /// Connects.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<LineClient> {
        let (r, write) = TcpStream::connect(addr).await?.into_split();
        Ok(LineClient {
            lines: BufReader::new(r).lines(),
            write,
        })
    }

    /// Sends one line and returns the one-line answer.
    pub async fn send(&mut self, line: &str) -> anyhow::Result<String> {
        self.write.write_all(format!("{line}\n").as_bytes()).await?;
        self.next().await
    }

    /// Reads the next line from the gateway (waits at most 20 s).
    pub async fn next(&mut self) -> anyhow::Result<String> {
        let answer = tokio::time::timeout(Duration::from_secs(20), self.lines.next_line())
            .await
            .context("no answer within 20s")??;
        answer.context("the gateway closed the connection")
    }
}

/// The approval id in a `WAIT <message>: approval <id> at <url>` line.
pub fn approval_id(wait: &str) -> Option<String> {
    let rest = wait.split(": approval ").nth(1)?;
    rest.split(' ').next().map(str::to_string)
}

/// A self-signed certificate for "localhost" signed by `algorithm`.
pub fn localhost_cert(
    algorithm: &'static rcgen::SignatureAlgorithm,
) -> anyhow::Result<(rcgen::Certificate, rcgen::KeyPair)> {
    let key = rcgen::KeyPair::generate_for(algorithm)?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])?.self_signed(&key)?;
    Ok((cert, key))
}

/// A self-signed ECDSA certificate for "localhost" and its key, written to
/// `dir` as the PEM files `gw.crt` and `gw.key`.
pub fn certificate(dir: &Path) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let (cert, key) = localhost_cert(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let (c, k) = (dir.join("gw.crt"), dir.join("gw.key"));
    std::fs::write(&c, cert.pem())?;
    std::fs::write(&k, key.serialize_pem())?;
    Ok((c, k))
}

/// A gateway configuration with one line target at `target`.
pub fn line_config(target: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[identity.local]
enabled = true

[[listeners]]
name = "lines"
protocol = "line"
listen = "127.0.0.1:0"

[targets.echo]
protocol = "line"
address = "{target}"

[[grants]]
groups = ["agents"]
targets = ["echo"]
{extra}
"#
    )
}
