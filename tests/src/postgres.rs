//! Support for the PostgreSQL end-to-end tests: the testkit's throwaway
//! PostgreSQL server, a gateway with a `postgres` listener in front of it, a
//! TCP tap that keeps every byte the gateway sends to the client, and helpers
//! to run `psql` and friends through the gateway.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub use airlock_testkit::postgres::{APP_USER, MD5_USER, TRUST_USER, TestPostgres};

/// A gateway configuration with a `postgres` listener named "pg" (cleartext
/// allowed on loopback) and target `app` on `pg`, granted to group `agents`.
pub fn pg_config(pg: &TestPostgres, password_file: &Path, listener: &str, extra: &str) -> String {
    format!(
        r#"
[identity.local]
enabled = true

[[listeners]]
name = "pg"
protocol = "postgres"
listen = "127.0.0.1:0"
allow_cleartext_without_tls = true
{listener}

[targets.app]
protocol = "postgres"
host = "127.0.0.1"
port = {port}
database = "app"
user = "{APP_USER}"
password = {{ file = "{pw}" }}
sslmode = "disable"

[[grants]]
groups = ["agents"]
targets = ["app"]
{extra}
"#,
        port = pg.port(),
        pw = password_file.display(),
    )
}

/// A gateway running in this process with a `postgres` listener "pg".
#[derive(Debug)]
pub struct PgGateway {
    /// The runtime.
    pub runtime: airlock::Runtime,
    /// The "pg" listener's address.
    pub addr: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
}

impl PgGateway {
    /// Starts a gateway from `toml` in `data_dir`.
    pub async fn start(toml: &str, data_dir: &Path) -> anyhow::Result<PgGateway> {
        let source = airlock_core::config::Source {
            path: "test.toml".into(),
            text: toml.to_string(),
        };
        let mut config = airlock_core::config::Config::parse(&source)?;
        config.gateway.data_dir = data_dir.to_path_buf();
        let runtime = airlock::Runtime::start(&config, &source, &airlock::registry()).await?;
        let addr = runtime.address("pg").context("no listener named pg")?;
        Ok(PgGateway {
            runtime,
            addr,
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// Mints a local-issuer token.
    pub fn token(&self, sub: &str, groups: &[&str]) -> anyhow::Result<String> {
        mint(&self.data_dir, sub, groups)
    }

    /// Every stored event of every session, as JSON (for assertions on the record).
    pub async fn events(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        events_in(self.runtime.store.as_ref()).await
    }
}

/// Mints a local-issuer token with the key in `data_dir`.
pub fn mint(data_dir: &Path, sub: &str, groups: &[&str]) -> anyhow::Result<String> {
    let issuer = airlock_core::identity::LocalIssuer::load_or_create(
        data_dir,
        &airlock_core::identity::LocalIssuerConfig::default(),
    )?;
    let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    Ok(issuer.mint(sub, &groups, Duration::from_secs(600))?)
}

/// Every stored record's event, as JSON, in chain order.
pub async fn events_in(
    store: &dyn airlock_core::store::Store,
) -> anyhow::Result<Vec<serde_json::Value>> {
    store.flush().await?;
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let batch = store.raw_records(after, 1000).await?;
        let Some(last) = batch.last() else { break };
        after = last.seq;
        for r in &batch {
            let mut v: serde_json::Value = serde_json::from_slice(&r.body)?;
            out.push(v.get_mut("event").map(serde_json::Value::take).unwrap_or(v));
        }
    }
    Ok(out)
}

/// A libpq connection string to `addr` for database `app`.
pub fn conninfo(addr: SocketAddr, user: &str, extra: &str) -> String {
    format!(
        "host={} port={} dbname=app user={user} {extra}",
        addr.ip(),
        addr.port()
    )
}

/// Runs `psql` through the gateway with `token` as the password; returns
/// (success, stdout, stderr).
pub async fn psql(
    conninfo: &str,
    token: &str,
    args: &[&str],
) -> anyhow::Result<(bool, String, String)> {
    psql_stdin(conninfo, token, args, None).await
}

/// Like [`psql`], with `input` on standard input.
pub async fn psql_stdin(
    conninfo: &str,
    token: &str,
    args: &[&str],
    input: Option<&str>,
) -> anyhow::Result<(bool, String, String)> {
    let mut child = tokio::process::Command::new("psql")
        .arg(conninfo)
        .args(["-X", "-v", "ON_ERROR_STOP=1"])
        .args(args)
        .env("PGPASSWORD", token)
        .env("PGCONNECT_TIMEOUT", "20")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run psql")?;
    let mut stdin = child.stdin.take().context("psql stdin")?;
    if let Some(input) = input {
        stdin.write_all(input.as_bytes()).await?;
    }
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .context("psql did not finish within 60s")??;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A TCP relay that keeps every byte the far side sends back (between
/// clients and the gateway: to prove what a client could ever have
/// received), and what each connection sent (between the gateway and
/// PostgreSQL: to see which messages the gateway sent the server).
#[derive(Debug)]
pub struct Tap {
    /// Where clients connect.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
    sent: Arc<Mutex<Vec<Log>>>,
}

/// The bytes one connection sent.
type Log = Arc<Mutex<Vec<u8>>>;

impl Tap {
    /// Starts relaying to `to`.
    pub async fn start(to: SocketAddr) -> anyhow::Result<Tap> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let (log, connections) = (seen.clone(), sent.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let log = log.clone();
                let up_log = Arc::new(Mutex::new(Vec::new()));
                if let Ok(mut c) = connections.lock() {
                    c.push(up_log.clone());
                }
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(to).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if let Ok(mut l) = up_log.lock() {
                                        l.extend_from_slice(&buf[..n]);
                                    }
                                    if sw.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = sw.shutdown().await;
                    };
                    let down = async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if let Ok(mut l) = log.lock() {
                                        l.extend_from_slice(&buf[..n]);
                                    }
                                    if cw.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Ok(Tap { addr, seen, sent })
    }

    /// Every byte the far side sent back so far, all connections together.
    pub fn received(&self) -> Vec<u8> {
        self.seen.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// What each connection sent so far, in the order they connected.
    pub fn sent(&self) -> Vec<Vec<u8>> {
        self.sent
            .lock()
            .map(|c| {
                c.iter()
                    .map(|l| l.lock().map(|l| l.clone()).unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The type of each message in a frontend byte stream (the startup
/// packet, which has none, left out): `(tag, body)`.
pub fn frontend_messages(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let Some(len) = bytes.get(..4) else {
        return out;
    };
    let mut at = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    while let Some(header) = bytes.get(at..at + 5) {
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let Some(body) = bytes.get(at + 5..at + 1 + len) else {
            break;
        };
        out.push((header[0], body.to_vec()));
        at += 1 + len;
    }
    out
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Extended-protocol messages for [`Raw`], as (tag, body).
pub mod msg {
    /// A C string.
    pub fn cstr(s: &str) -> Vec<u8> {
        [s.as_bytes(), &[0]].concat()
    }

    /// Parse of `sql` into statement `name`, no parameter types.
    pub fn parse(name: &str, sql: &str) -> (u8, Vec<u8>) {
        (b'P', [cstr(name), cstr(sql), vec![0, 0]].concat())
    }

    /// Bind of `portal` to `statement` (no parameters, text results).
    pub fn bind(portal: &str, statement: &str) -> (u8, Vec<u8>) {
        (
            b'B',
            [cstr(portal), cstr(statement), vec![0, 0, 0, 0, 0, 0]].concat(),
        )
    }

    /// Bind of `portal` to `statement` with text parameters, text results.
    pub fn bind_params(portal: &str, statement: &str, params: &[&str]) -> (u8, Vec<u8>) {
        let mut body = [cstr(portal), cstr(statement)].concat();
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for p in params {
            body.extend_from_slice(&(p.len() as i32).to_be_bytes());
            body.extend_from_slice(p.as_bytes());
        }
        body.extend_from_slice(&0i16.to_be_bytes());
        (b'B', body)
    }

    /// Execute of `portal`, at most `max_rows` rows (0: all).
    pub fn execute(portal: &str, max_rows: i32) -> (u8, Vec<u8>) {
        (
            b'E',
            [cstr(portal), max_rows.to_be_bytes().to_vec()].concat(),
        )
    }

    /// Bind of the unnamed portal to `statement` (no parameters, text
    /// results), then Execute of it.
    pub fn bind_execute(statement: &str) -> Vec<(u8, Vec<u8>)> {
        vec![bind("", statement), execute("", 0)]
    }
}

/// A raw protocol client, for malformed input and exact message sequences.
pub struct Raw {
    stream: tokio::net::TcpStream,
}

// Test support only: a login or write that fails is a failed test.
#[allow(clippy::unwrap_used, clippy::expect_used)]
impl Raw {
    /// Logs in with `token` (protocol 3.`minor`); returns every message up to
    /// the first ReadyForQuery or error.
    pub async fn login(
        addr: std::net::SocketAddr,
        token: &str,
        minor: u16,
        extra: &[(&str, &str)],
    ) -> (Raw, Vec<(u8, Vec<u8>)>) {
        let (mut raw, mut seen) = Raw::start(addr, minor, extra).await;
        if seen.last().is_some_and(|(tag, _)| *tag == b'R') {
            let mut pw = token.as_bytes().to_vec();
            pw.push(0);
            raw.send(b'p', &pw).await;
            loop {
                let (tag, body) = raw.read().await.unwrap();
                seen.push((tag, body));
                if tag == b'Z' || tag == b'E' {
                    break;
                }
            }
        }
        (raw, seen)
    }

    /// Sends the startup message; returns every message up to the request
    /// for the password (or an error).
    pub async fn start(
        addr: std::net::SocketAddr,
        minor: u16,
        extra: &[(&str, &str)],
    ) -> (Raw, Vec<(u8, Vec<u8>)>) {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut body = Vec::new();
        body.extend_from_slice(&3u16.to_be_bytes());
        body.extend_from_slice(&minor.to_be_bytes());
        for (k, v) in [("user", "raw"), ("database", "app")].iter().chain(extra) {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        packet.extend_from_slice(&body);
        stream.write_all(&packet).await.unwrap();
        let mut raw = Raw { stream };
        let mut seen = Vec::new();
        loop {
            let (tag, body) = raw.read().await.unwrap();
            let asks = tag == b'R' && body == [0, 0, 0, 3];
            seen.push((tag, body));
            if asks || tag == b'Z' || tag == b'E' {
                return (raw, seen);
            }
        }
    }

    /// Sends only a message's header, claiming a body of `len` bytes.
    pub async fn send_header(&mut self, tag: u8, len: i32) {
        use tokio::io::AsyncWriteExt;
        let mut m = vec![tag];
        m.extend_from_slice(&(len + 4).to_be_bytes());
        self.stream.write_all(&m).await.unwrap();
    }

    /// Sends one message; false when the connection is already gone (the
    /// gateway may end a session before it has read everything sent).
    pub async fn try_send(&mut self, tag: u8, body: &[u8]) -> bool {
        use tokio::io::AsyncWriteExt;
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(body);
        self.stream.write_all(&m).await.is_ok()
    }

    /// Sends one message.
    pub async fn send(&mut self, tag: u8, body: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(body);
        self.stream.write_all(&m).await.unwrap();
    }

    /// Reads one message (`None` on EOF or after 10 s).
    pub async fn read(&mut self) -> Option<(u8, Vec<u8>)> {
        use tokio::io::AsyncReadExt;
        let mut head = [0u8; 5];
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            self.stream.read_exact(&mut head),
        )
        .await
        .ok()?
        .ok()?;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        self.stream.read_exact(&mut body).await.ok()?;
        Some((head[0], body))
    }

    /// Sends `msgs` and reads up to ReadyForQuery: the tags answered (the
    /// last one followed by the transaction status) and the SQLSTATEs of
    /// the errors.
    pub async fn exchange(&mut self, msgs: Vec<(u8, Vec<u8>)>) -> (String, Vec<String>) {
        for (tag, body) in msgs {
            self.send(tag, &body).await;
        }
        let (mut tags, mut codes) = (String::new(), Vec::new());
        loop {
            let (tag, body) = self.read().await.expect("an answer");
            tags.push(char::from(tag));
            if tag == b'E' {
                let code = body.split(|b| *b == 0).find_map(|f| f.strip_prefix(b"C"));
                codes.push(String::from_utf8_lossy(code.unwrap_or_default()).into_owned());
            }
            if tag == b'Z' {
                tags.push(char::from(body[0]));
                return (tags, codes);
            }
        }
    }

    /// A simple Query, answered as by [`Raw::exchange`].
    pub async fn query(&mut self, sql: &str) -> (String, Vec<String>) {
        self.exchange(vec![(b'Q', msg::cstr(sql))]).await
    }
}
