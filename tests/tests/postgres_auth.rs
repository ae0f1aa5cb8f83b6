//! Logging in through the PostgreSQL connector: the token as password,
//! refusals with their SQLSTATE, TLS toward clients (negotiated and direct)
//! and toward targets, and the upstream login methods.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

use std::sync::Arc;

use airlock_tests::postgres::{
    MD5_USER, PgGateway, Raw, TRUST_USER, Tap, TestPostgres, conninfo, pg_config, psql,
};
use airlock_tests::{certificate, localhost_cert};
use tokio_postgres::NoTls;

async fn connect(
    addr: std::net::SocketAddr,
    db: &str,
    user: &str,
    token: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::Config::new()
        .host(addr.ip().to_string())
        .port(addr.port())
        .user(user)
        .dbname(db)
        .password(token)
        .connect(NoTls)
        .await?;
    tokio::spawn(conn);
    Ok(client)
}

/// A TCP connection to `addr` from the loopback address `ip` (the
/// per-address limits tell 127.0.0.1 from 127.0.0.2).
async fn tcp_from(addr: std::net::SocketAddr, ip: [u8; 4]) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::from((ip, 0))).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Logs in to target `app` as agent-1 with `token` over `stream`.
async fn login_over(
    stream: tokio::net::TcpStream,
    token: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::Config::new()
        .user("agent-1")
        .dbname("app")
        .password(token)
        .connect_raw(stream, NoTls)
        .await?;
    tokio::spawn(conn);
    Ok(client)
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_their_sqlstate_and_the_core_message() {
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await.unwrap();
    let pw = pg.password_file(dir.path()).unwrap();
    let extra = r#"
[targets.closed]
protocol = "postgres"
host = "127.0.0.1"
port = 1
database = "app"
user = "nobody"
sslmode = "disable"

[[grants]]
groups = ["agents"]
targets = ["closed"]
"#;
    let gw = PgGateway::start(&pg_config(&pg, &pw, "", extra), &dir.path().join("data"))
        .await
        .unwrap();
    let good = gw.token("agent-1", &["agents"]).unwrap();
    assert!(connect(gw.addr, "app", "agent-1", &good).await.is_ok());

    let e = connect(gw.addr, "app", "agent-1", "not-a-token")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "28P01", "{e}");
    assert!(message(&e).starts_with("authentication failed"), "{e}");

    let e = connect(gw.addr, "nosuchdb", "agent-1", &good)
        .await
        .unwrap_err();
    assert_eq!(code(&e), "3D000", "{e}");
    assert!(message(&e).contains("no target named \"nosuchdb\""), "{e}");
    // A name longer than any PostgreSQL name is refused before the token
    // is looked at, and nothing of it is recorded.
    let long = "d".repeat(4000);
    let e = connect(gw.addr, &long, "agent-1", "not-a-token")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "3D000", "{e}");
    assert!(
        message(&e).contains("longer than PostgreSQL's 63 bytes"),
        "{e}"
    );
    let events = serde_json::to_string(&gw.events().await.unwrap()).unwrap();
    assert!(!events.contains(&long[..64]), "recorded");
    assert!(
        events.contains("nosuchdb"),
        "a short name is recorded: {events}"
    );

    let outsider = gw.token("visitor", &["visitors"]).unwrap();
    let e = connect(gw.addr, "app", "visitor", &outsider)
        .await
        .unwrap_err();
    assert_eq!(code(&e), "28000", "{e}");

    let e = connect(gw.addr, "closed", "agent-1", &good)
        .await
        .unwrap_err();
    assert_eq!(code(&e), "08001", "{e}");
    assert!(message(&e).starts_with("target closed unreachable:"), "{e}");

    let e = connect(gw.addr, "app", "agent-1", "").await.unwrap_err();
    assert_eq!(code(&e), "28P01", "{e}");

    // This listener has no certificate: a client that requires TLS is told
    // so by its own library; one that only prefers it goes on without.
    let (ok, _, err) = psql(
        &conninfo(gw.addr, "agent-1", "sslmode=require"),
        &good,
        &["-c", "SELECT 1"],
    )
    .await
    .unwrap();
    assert!(
        !ok && err.contains("server does not support SSL, but SSL was required"),
        "{err}"
    );
    let (ok, out, err) = psql(
        &conninfo(gw.addr, "agent-1", "sslmode=prefer"),
        &good,
        &["-At", "-c", "SELECT 1"],
    )
    .await
    .unwrap();
    assert!(ok && out.trim() == "1", "{err}");

    // Each refusal is in the audit trail.
    let events = gw.events().await.unwrap();
    let denied = events
        .iter()
        .filter(|e| e["type"] == "access_denied")
        .count();
    assert!(denied >= 3, "{events:#?}");
}

/// A client needs no valid token to be refused, so one address cannot fill
/// the audit trail with refusals: past 20 a minute they are counted, not
/// recorded one by one (the count is recorded with the address's next
/// refusal after the minute), while another address's refusal is
/// recorded, and every refused client is still refused (28P01).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_from_one_address_are_recorded_up_to_a_limit() {
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await.unwrap();
    let pw = pg.password_file(dir.path()).unwrap();
    let gw = PgGateway::start(&pg_config(&pg, &pw, "", ""), &dir.path().join("data"))
        .await
        .unwrap();
    let from = async |ip: [u8; 4]| {
        login_over(tcp_from(gw.addr, ip).await, "not-a-token")
            .await
            .map(|_| ())
            .expect_err("a bad token is refused")
    };
    for _ in 0..25 {
        let e = from([127, 0, 0, 1]).await;
        assert_eq!(code(&e), "28P01", "{e}");
    }
    let e = from([127, 0, 0, 2]).await;
    assert_eq!(code(&e), "28P01", "{e}");
    let events = gw.events().await.unwrap();
    let denied = |ip: &str| {
        events
            .iter()
            .filter(|e| {
                e["type"] == "access_denied"
                    && e["client"]["addr"]
                        .as_str()
                        .is_some_and(|a| a.starts_with(&format!("{ip}:")))
            })
            .count()
    };
    assert_eq!(denied("127.0.0.1"), 20, "{events:#?}");
    assert_eq!(denied("127.0.0.2"), 1, "{events:#?}");
}

/// A startup setting is applied by the server at login, where no policy
/// sees it: one that changes what the session may do (here turning
/// triggers and foreign keys off) is refused with 42501, and a client
/// setting in the same place goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_settings_that_change_the_session_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await.unwrap();
    let pw = pg.password_file(dir.path()).unwrap();
    let gw = PgGateway::start(&pg_config(&pg, &pw, "", ""), &dir.path().join("data"))
        .await
        .unwrap();
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let (ok, _, err) = psql(
        &conninfo(
            gw.addr,
            "agent-1",
            "options='-c session_replication_role=replica'",
        ),
        &token,
        &["-c", "SELECT 1"],
    )
    .await
    .unwrap();
    assert!(
        !ok && err
            .contains("startup setting \"session_replication_role\" is not passed on by Airlock"),
        "{err}"
    );
    let (ok, out, err) = psql(
        &conninfo(gw.addr, "agent-1", "options='-c statement_timeout=4321'"),
        &token,
        &["-At", "-c", "SHOW statement_timeout"],
    )
    .await
    .unwrap();
    assert!(ok && out.trim() == "4321ms", "{out}{err}");

    // PostgreSQL also splits `options` at a vertical tab: a setting hidden
    // behind one is refused, not passed on inside an allowed one's value.
    let hidden = "-cstatement_timeout=4321\x0b-csession_replication_role=replica";
    let (_, seen) = Raw::login(gw.addr, &token, 0, &[("options", hidden)]).await;
    let (tag, body) = seen.last().unwrap();
    let text = String::from_utf8_lossy(body);
    assert!(
        *tag == b'E' && text.contains("C42501") && text.contains("only printable ASCII"),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_name_must_match_the_subject_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await.unwrap();
    let pw = pg.password_file(dir.path()).unwrap();
    let gw = PgGateway::start(
        &pg_config(&pg, &pw, "require_user_match = true", ""),
        &dir.path().join("data"),
    )
    .await
    .unwrap();
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let e = connect(gw.addr, "app", "someone-else", &token)
        .await
        .unwrap_err();
    assert_eq!(code(&e), "28000", "{e}");
    assert!(
        message(&e).contains("does not match your token's subject"),
        "{e}"
    );
    assert!(connect(gw.addr, "app", "agent-1", &token).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_negotiated_and_cleartext_tokens_are_refused_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await.unwrap();
    let pw = pg.password_file(dir.path()).unwrap();
    let (cert, key) = certificate(dir.path()).unwrap();
    let listener = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        cert.display(),
        key.display()
    );
    // Same config as the other tests, but cleartext is not allowed.
    let toml = pg_config(&pg, &pw, &listener, "").replace("allow_cleartext_without_tls = true", "");
    let gw = PgGateway::start(&toml, &dir.path().join("data"))
        .await
        .unwrap();
    let token = gw.token("agent-1", &["agents"]).unwrap();

    let (ok, out, err) = psql(
        &conninfo(gw.addr, "agent-1", "sslmode=require"),
        &token,
        &[
            "-At",
            "-c",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ],
    )
    .await
    .unwrap();
    assert!(ok, "{err}");
    // The gateway's TLS is toward the client; its own link to the server is plain.
    assert_eq!(out.trim(), "f");

    let verify = format!(
        "host=localhost port={} dbname=app user=agent-1 sslmode=verify-full sslrootcert={}",
        gw.addr.port(),
        cert.display()
    );
    let (ok, out, err) = psql(&verify, &token, &["-At", "-c", "SELECT 7"])
        .await
        .unwrap();
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "7");

    let (ok, _, err) = psql(
        &conninfo(gw.addr, "agent-1", "sslmode=disable"),
        &token,
        &["-c", "SELECT 1"],
    )
    .await
    .unwrap();
    assert!(!ok);
    assert!(
        err.contains("needs TLS") && err.contains("sslmode=require"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_needs_the_postgresql_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await.unwrap();
    let pw = pg.password_file(dir.path()).unwrap();
    let (cert, key) = certificate(dir.path()).unwrap();
    let listener = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        cert.display(),
        key.display()
    );
    let gw = PgGateway::start(
        &pg_config(&pg, &pw, &listener, ""),
        &dir.path().join("data"),
    )
    .await
    .unwrap();
    let token = gw.token("agent-1", &["agents"]).unwrap();

    let tls = |alpn: Vec<Vec<u8>>| {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(&cert).unwrap();
        for c in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn;
        tokio_rustls::TlsConnector::from(Arc::new(config))
    };
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();

    // Direct TLS (PostgreSQL 17's sslnegotiation=direct): TLS first, then startup.
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let stream = tls(vec![b"postgresql".to_vec()])
        .connect(name.clone(), tcp)
        .await
        .unwrap();
    let mut config = tokio_postgres::Config::new();
    config
        .user("agent-1")
        .dbname("app")
        .password(&token)
        .ssl_mode(tokio_postgres::config::SslMode::Disable);
    let (client, conn) = config.connect_raw(stream, NoTls).await.unwrap();
    tokio::spawn(conn);
    let v: i32 = client.query_one("SELECT 5", &[]).await.unwrap().get(0);
    assert_eq!(v, 5);

    // Without the ALPN name the gateway refuses.
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let refused = match tls(vec![]).connect(name, tcp).await {
        Err(_) => true,
        Ok(stream) => config.connect_raw(stream, NoTls).await.is_err(),
    };
    assert!(refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_md5_trust_and_tls_logins() {
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await.unwrap();
    let pw = pg.password_file(dir.path()).unwrap();
    let md5_pw = dir.path().join("md5-password");
    std::fs::write(&md5_pw, pg.md5_password()).unwrap();
    let (cert, key) = certificate(dir.path()).unwrap();

    // An inner gateway with TLS in front of the server; the outer gateway
    // reaches it with sslmode = "verify-full" and an inner token as password.
    let inner_listener = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        cert.display(),
        key.display()
    );
    let inner_data = dir.path().join("inner");
    let inner = PgGateway::start(&pg_config(&pg, &pw, &inner_listener, ""), &inner_data)
        .await
        .unwrap();
    let inner_token = dir.path().join("inner-token");
    std::fs::write(&inner_token, inner.token("outer-gw", &["agents"]).unwrap()).unwrap();

    let extra = format!(
        r#"
[targets.md5]
protocol = "postgres"
host = "127.0.0.1"
port = {port}
database = "app"
user = "{MD5_USER}"
password = {{ file = "{md5}" }}
sslmode = "prefer"

[targets.trusted]
protocol = "postgres"
host = "127.0.0.1"
port = {port}
database = "app"
user = "{TRUST_USER}"
sslmode = "disable"

[targets.chained]
protocol = "postgres"
host = "localhost"
port = {inner_port}
database = "app"
user = "outer-gw"
password = {{ file = "{inner_token}" }}
sslmode = "verify-full"
ssl_root_cert = "{cert}"

[[grants]]
groups = ["agents"]
targets = ["md5", "trusted", "chained"]
"#,
        port = pg.port(),
        md5 = md5_pw.display(),
        inner_port = inner.addr.port(),
        inner_token = inner_token.display(),
        cert = cert.display(),
    );
    let gw = PgGateway::start(&pg_config(&pg, &pw, "", &extra), &dir.path().join("outer"))
        .await
        .unwrap();
    let token = gw.token("agent-1", &["agents"]).unwrap();
    for (db, user) in [
        ("md5", MD5_USER),
        ("trusted", TRUST_USER),
        ("chained", "airlock_app"),
    ] {
        let client = connect(gw.addr, db, "agent-1", &token)
            .await
            .unwrap_or_else(|e| panic!("{db}: {e}"));
        let who: String = client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(who, user, "{db}");
    }
    // The inner gateway recorded the outer one's session.
    let events = inner.events().await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "session_start" && e["identity"]["subject"] == "outer-gw"),
        "{events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_reaches_postgresql_encrypted_and_never_downgrades() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = localhost_cert(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ca = dir.path().join("pg-ca.crt");
    std::fs::write(&ca, cert.pem()).unwrap();
    let tls_pg = TestPostgres::start_with_tls(&cert.pem(), &key.serialize_pem())
        .await
        .unwrap();
    let plain_pg = TestPostgres::start().await.unwrap();
    let (tls_dir, plain_dir) = (dir.path().join("tls"), dir.path().join("plain"));
    std::fs::create_dir_all(&tls_dir).unwrap();
    std::fs::create_dir_all(&plain_dir).unwrap();
    let tls_pw = tls_pg.password_file(&tls_dir).unwrap();
    let plain_pw = plain_pg.password_file(&plain_dir).unwrap();
    // Target "app" reaches the TLS server without TLS: the control.
    let extra = format!(
        r#"
[targets.encrypted]
protocol = "postgres"
host = "localhost"
port = {tls_port}
database = "app"
user = "airlock_app"
password = {{ file = "{tls_pw}" }}
sslmode = "verify-full"
ssl_root_cert = "{ca}"

[targets.plain]
protocol = "postgres"
host = "localhost"
port = {plain_port}
database = "app"
user = "airlock_app"
password = {{ file = "{plain_pw}" }}
sslmode = "require"

[[grants]]
groups = ["agents"]
targets = ["encrypted", "plain"]
"#,
        tls_port = tls_pg.port(),
        plain_port = plain_pg.port(),
        tls_pw = tls_pw.display(),
        plain_pw = plain_pw.display(),
        ca = ca.display(),
    );
    let gw = PgGateway::start(
        &pg_config(&tls_pg, &tls_pw, "", &extra),
        &dir.path().join("gw"),
    )
    .await
    .unwrap();
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let ssl = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    for (db, encrypted) in [("encrypted", true), ("app", false)] {
        let client = connect(gw.addr, db, "agent-1", &token)
            .await
            .unwrap_or_else(|e| panic!("{db}: {e}"));
        let on: bool = client.query_one(ssl, &[]).await.unwrap().get(0);
        assert_eq!(on, encrypted, "{db}: PostgreSQL's own view of the link");
    }
    // A server without TLS is refused, not used in the clear.
    let e = connect(gw.addr, "plain", "agent-1", &token)
        .await
        .expect_err("a target that requires TLS is not reached without it");
    assert_eq!(code(&e), "08001", "{e}");
    assert!(
        message(&e).contains("does not support TLS, which targets.plain.sslmode requires"),
        "{}",
        message(&e)
    );
}

/// `require_auth` and the clear-text rule, against a real server whose
/// `pg_hba.conf` asks for passwords in clear text: the gateway refuses to
/// send one over a link without TLS or to a server that asks in a way the
/// target does not allow, and logs in when the same server asks the allowed
/// way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_logins_are_refused_when_the_server_asks_the_wrong_way() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = localhost_cert(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let pg = TestPostgres::start_with_tls(&cert.pem(), &key.serialize_pem())
        .await
        .unwrap();
    pg.psql("ALTER SYSTEM SET log_connections = on")
        .await
        .unwrap();
    pg.set_hba(&format!(
        "local all all trust\nhost all {TRUST_USER} 127.0.0.1/32 trust\nhost all {MD5_USER} 127.0.0.1/32 password\nhost all all 127.0.0.1/32 scram-sha-256\n"
    ))
    .await
    .unwrap();
    let pw = pg.password_file(dir.path()).unwrap();
    let clear_pw = dir.path().join("clear-password");
    std::fs::write(&clear_pw, pg.md5_password()).unwrap();
    let target = |name: &str, user: &str, sslmode: &str, require_auth: &str| {
        let password = if user == TRUST_USER {
            String::new()
        } else if user == MD5_USER {
            format!("password = {{ file = \"{}\" }}", clear_pw.display())
        } else {
            format!("password = {{ file = \"{}\" }}", pw.display())
        };
        format!(
            "[targets.{name}]\nprotocol = \"postgres\"\nhost = \"localhost\"\nport = {}\ndatabase = \"app\"\nuser = \"{user}\"\n{password}\nsslmode = \"{sslmode}\"\n{require_auth}\n",
            pg.port()
        )
    };
    let scram_only = "require_auth = [\"scram-sha-256\"]";
    let extra = [
        target("clear", MD5_USER, "disable", ""),
        target("clear-tls", MD5_USER, "require", ""),
        target("clear-tls-scram-only", MD5_USER, "require", scram_only),
        target("scram-only", "airlock_app", "disable", scram_only),
        target("trusted", TRUST_USER, "disable", ""),
        target("trusted-scram-only", TRUST_USER, "disable", scram_only),
        "[[grants]]\ngroups = [\"agents\"]\ntargets = [\"clear\", \"clear-tls\", \"clear-tls-scram-only\", \"scram-only\", \"trusted\", \"trusted-scram-only\"]\n".to_string(),
    ]
    .join("\n");
    let gw = PgGateway::start(&pg_config(&pg, &pw, "", &extra), &dir.path().join("gw"))
        .await
        .unwrap();
    let token = gw.token("agent-1", &["agents"]).unwrap();

    for (db, says) in [
        ("clear", "clear text over a connection without TLS"),
        (
            "clear-tls-scram-only",
            "asks for the password by password, which targets.clear-tls-scram-only.require_auth does not allow",
        ),
        (
            "trusted-scram-only",
            "lets the gateway in without a password (trust), which targets.trusted-scram-only.require_auth does not allow",
        ),
    ] {
        let e = connect(gw.addr, db, "agent-1", &token).await.expect_err(db);
        assert_eq!(code(&e), "08001", "{db}: {e}");
        assert!(message(&e).contains(says), "{db}: {}", message(&e));
        assert!(!message(&e).contains(pg.md5_password()), "{db}");
    }
    for (db, user) in [
        ("clear-tls", MD5_USER),
        ("scram-only", "airlock_app"),
        ("trusted", TRUST_USER),
    ] {
        let client = connect(gw.addr, db, "agent-1", &token)
            .await
            .unwrap_or_else(|e| panic!("{db}: {e}"));
        let who: String = client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(who, user, "{db}");
    }
    // The clear-text password reached the server only over TLS: every
    // login of that role the server let in came over TLS.
    let log = pg.log();
    let logins: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("connection authorized: user={MD5_USER} ")))
        .collect();
    assert!(!logins.is_empty(), "{log}");
    assert!(logins.iter().all(|l| l.contains("SSL enabled")), "{log}");
}

/// A listener serves at most `max_connections` clients; one more is told
/// so in the protocol (53300) before its token is looked at, and gets in
/// once a place is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_listener_refuses_with_too_many_connections() {
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await.unwrap();
    let pw = pg.password_file(dir.path()).unwrap();
    let gw = PgGateway::start(&pg_config(&pg, &pw, "max_connections = 2", ""), dir.path())
        .await
        .unwrap();
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let first = connect(gw.addr, "app", "agent-1", &token).await.unwrap();
    let second = connect(gw.addr, "app", "agent-1", &token).await.unwrap();
    let refused_before = airlock_core::telemetry::METRICS
        .refused_full
        .load(std::sync::atomic::Ordering::Relaxed);
    // A third is refused even with a bad token: capacity is checked first.
    for password in [token.as_str(), "not-a-token"] {
        let e = connect(gw.addr, "app", "agent-1", password)
            .await
            .expect_err("the listener is full");
        assert_eq!(code(&e), "53300", "{e}");
        assert!(
            message(&e).contains("too many connections") && message(&e).contains("max_connections"),
            "{}",
            message(&e)
        );
    }
    // Counted for the operator's metrics (no other test fills a listener).
    let refused = airlock_core::telemetry::METRICS
        .refused_full
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(refused - refused_before, 2);
    // The two sessions were not disturbed.
    for c in [&first, &second] {
        let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
    }
    // Once one leaves, the next gets in (the gateway notices the close
    // asynchronously, so allow it a moment).
    drop(second);
    let third = connect_when_free(gw.addr, &token, "a place became free").await;
    let one: i32 = third.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

/// One address cannot hold the listener with connections that never log
/// in: past `max_logins_per_address` of them, its next connection is
/// closed unread, while another address logs in; a session that has
/// logged in no longer counts, and once the idle connections go the
/// address logs in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_the_listener_with_idle_logins() {
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await.unwrap();
    let pw = pg.password_file(dir.path()).unwrap();
    let gw = PgGateway::start(
        &pg_config(&pg, &pw, "max_logins_per_address = 2", ""),
        dir.path(),
    )
    .await
    .unwrap();
    let token = gw.token("agent-1", &["agents"]).unwrap();
    // Sessions that logged in do not count.
    let a = connect(gw.addr, "app", "agent-1", &token).await.unwrap();
    let b = connect(gw.addr, "app", "agent-1", &token).await.unwrap();
    let from = async |ip: [u8; 4]| tcp_from(gw.addr, ip).await;
    let login = async |stream| login_over(stream, &token).await;
    let idle = [from([127, 0, 0, 1]).await, from([127, 0, 0, 1]).await];
    // Wait until the gateway has taken both in.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let e = login(from([127, 0, 0, 1]).await)
        .await
        .expect_err("a third login from the address");
    assert!(
        e.as_db_error().is_none(),
        "closed unread, not answered: {e}"
    );
    let other = login(from([127, 0, 0, 2]).await).await.unwrap();
    for c in [&a, &b, &other] {
        let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
    }
    drop(idle);
    let mut again = None;
    for _ in 0..100 {
        if let Ok(c) = login(from([127, 0, 0, 1]).await).await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let again = again.expect("the address logs in again once its idle connections are gone");
    let one: i32 = again.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

/// Connects as soon as a refusal for "too many connections" (53300) stops:
/// the gateway and the server notice a closed session asynchronously.
async fn connect_when_free(
    addr: std::net::SocketAddr,
    token: &str,
    what: &str,
) -> tokio_postgres::Client {
    for _ in 0..100 {
        match connect(addr, "app", "agent-1", token).await {
            Ok(c) => return c,
            Err(e) => {
                assert_eq!(code(&e), "53300", "{e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    panic!("{what}: still refused after 5 s");
}

/// When the target is out of connections for the gateway's role, the
/// client sees PostgreSQL's own 53300 (which pools retry), not a generic
/// connection failure; with a connection free, the same login works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_targets_too_many_connections_reaches_the_client_as_53300() {
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await.unwrap();
    let pw = pg.password_file(dir.path()).unwrap();
    let gw = PgGateway::start(&pg_config(&pg, &pw, "", ""), dir.path())
        .await
        .unwrap();
    let token = gw.token("agent-1", &["agents"]).unwrap();
    pg.psql("ALTER ROLE airlock_app CONNECTION LIMIT 1")
        .await
        .unwrap();
    let first = connect(gw.addr, "app", "agent-1", &token).await.unwrap();
    let e = connect(gw.addr, "app", "agent-1", &token)
        .await
        .expect_err("the role's only connection is taken");
    assert_eq!(code(&e), "53300", "{e}");
    assert!(
        message(&e).contains("target app refused the gateway's login")
            && message(&e).contains("too many connections for role"),
        "{}",
        message(&e)
    );
    assert!(!message(&e).contains(pg.password()));
    drop(first);
    let again = connect_when_free(gw.addr, &token, "the role's connection became free").await;
    let one: i32 = again.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

/// A man in the middle for PostgreSQL's TLS: answers `SSLRequest`,
/// terminates TLS with a certificate of its own, and relays the bytes to the
/// real server over TLS. What a gateway with `sslmode = "require"` (no
/// certificate check) cannot tell from the real server by the certificate.
async fn tls_interceptor(
    server_port: u16,
    server_ca: &rcgen::Certificate,
    algorithm: &'static rcgen::SignatureAlgorithm,
) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let provider = || Arc::new(rustls::crypto::ring::default_provider());
    let (own, key) = localhost_cert(algorithm).unwrap();
    let server_side = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![own.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_side));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_ca.der().clone()).unwrap();
    let client_side = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_side));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut victim, _)) = listener.accept().await {
            let (acceptor, connector) = (acceptor.clone(), connector.clone());
            tokio::spawn(async move {
                let mut request = [0u8; 8];
                victim.read_exact(&mut request).await?;
                victim.write_all(b"S").await?;
                let mut victim = acceptor.accept(victim).await?;
                let mut server = tokio::net::TcpStream::connect(("127.0.0.1", server_port)).await?;
                server.write_all(&request).await?;
                let mut answer = [0u8; 1];
                server.read_exact(&mut answer).await?;
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let mut server = connector.connect(name, server).await?;
                tokio::io::copy_bidirectional(&mut victim, &mut server).await?;
                Ok::<_, std::io::Error>(())
            });
        }
    });
    addr
}

/// A cancel goes to the server the way its session went: over TLS when the
/// session's link was TLS, also for `sslmode = "prefer"` (a cancel request
/// in plain text would show the server's cancel key to anyone on the path,
/// who could then cancel the gateway's statements at the server directly).
/// The control: with `disable` the request is in plain text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_goes_to_the_server_over_tls_as_its_session_did() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = localhost_cert(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let pg = TestPostgres::start_with_tls(&cert.pem(), &key.serialize_pem())
        .await
        .unwrap();
    let pw = pg.password_file(dir.path()).unwrap();
    let server: std::net::SocketAddr = ([127, 0, 0, 1], pg.port()).into();
    let (prefer_tap, disable_tap) = (
        Tap::start(server).await.unwrap(),
        Tap::start(server).await.unwrap(),
    );
    let target = |name: &str, port: u16, mode: &str| {
        format!(
            "[targets.{name}]\nprotocol = \"postgres\"\nhost = \"localhost\"\nport = {port}\ndatabase = \"app\"\nuser = \"airlock_app\"\npassword = {{ file = \"{}\" }}\nsslmode = \"{mode}\"\n",
            pw.display()
        )
    };
    let extra = [
        target("prefer", prefer_tap.addr.port(), "prefer"),
        target("plain", disable_tap.addr.port(), "disable"),
        "[[grants]]\ngroups = [\"agents\"]\ntargets = [\"prefer\", \"plain\"]\n".to_string(),
    ]
    .join("\n");
    let gw = PgGateway::start(&pg_config(&pg, &pw, "", &extra), &dir.path().join("gw"))
        .await
        .unwrap();
    let token = gw.token("agent-1", &["agents"]).unwrap();
    const CANCEL: [u8; 8] = [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    for (db, tap, tls) in [
        ("prefer", &prefer_tap, true),
        ("plain", &disable_tap, false),
    ] {
        let client = connect(gw.addr, db, "agent-1", &token).await.unwrap();
        let marker = format!("cancel-over-{db}");
        let cancel = client.cancel_token();
        let sleeper = tokio::spawn(async move {
            client
                .simple_query(&format!("SELECT pg_sleep(30) -- {marker}"))
                .await
        });
        let active = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%cancel-over-{db}%' AND pid <> pg_backend_pid()"
        );
        for _ in 0..200 {
            if pg.psql(&active).await.unwrap() == "1" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        cancel.cancel_query(NoTls).await.unwrap();
        let e = tokio::time::timeout(std::time::Duration::from_secs(10), sleeper)
            .await
            .expect("the cancel ended the statement")
            .unwrap()
            .unwrap_err();
        assert_eq!(code(&e), "57014", "{db}: {e}");
        // The session's connection and the cancel's both went through the tap.
        let sent = tap.sent();
        assert!(sent.len() >= 2, "{db}: {} connections", sent.len());
        let plain_cancel = sent.iter().any(|bytes| bytes.starts_with(&CANCEL));
        assert_eq!(plain_cancel, !tls, "{db}: a cancel request in plain text");
    }
}

/// Over TLS the gateway binds SCRAM to the server's certificate
/// (SCRAM-SHA-256-PLUS), so a man in the middle that relays the login to the
/// real server fails it: PostgreSQL binds to its own certificate and refuses.
/// The same interceptor relays a login without SCRAM (the control), and the
/// gateway reaches the server itself with SCRAM over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_over_tls_is_bound_to_the_certificate_so_a_relaying_middleman_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = localhost_cert(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let pg = TestPostgres::start_with_tls(&cert.pem(), &key.serialize_pem())
        .await
        .unwrap();
    let middle = tls_interceptor(pg.port(), &cert, &rcgen::PKCS_ECDSA_P256_SHA256).await;
    // One whose certificate cannot be bound (Ed25519): an unbound login
    // would let it relay.
    let unbindable = tls_interceptor(pg.port(), &cert, &rcgen::PKCS_ED25519).await;
    let pw = pg.password_file(dir.path()).unwrap();
    let target = |name: &str, port: u16, user: &str, password: bool| {
        let password = if password {
            format!("password = {{ file = \"{}\" }}", pw.display())
        } else {
            String::new()
        };
        format!(
            "[targets.{name}]\nprotocol = \"postgres\"\nhost = \"localhost\"\nport = {port}\ndatabase = \"app\"\nuser = \"{user}\"\n{password}\nsslmode = \"require\"\n"
        )
    };
    let extra = [
        target("direct", pg.port(), "airlock_app", true),
        target("intercepted", middle.port(), "airlock_app", true),
        target("intercepted-trust", middle.port(), TRUST_USER, false),
        target("unbindable", unbindable.port(), "airlock_app", true),
        target("unbindable-trust", unbindable.port(), TRUST_USER, false),
        "[[grants]]\ngroups = [\"agents\"]\ntargets = [\"direct\", \"intercepted\", \"intercepted-trust\", \"unbindable\", \"unbindable-trust\"]\n".to_string(),
    ]
    .join("\n");
    let gw = PgGateway::start(&pg_config(&pg, &pw, "", &extra), &dir.path().join("gw"))
        .await
        .unwrap();
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let ssl = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    for (db, user) in [
        ("direct", "airlock_app"),
        ("intercepted-trust", TRUST_USER),
        ("unbindable-trust", TRUST_USER),
    ] {
        let client = connect(gw.addr, db, "agent-1", &token)
            .await
            .unwrap_or_else(|e| panic!("{db}: {e}"));
        let row = client
            .query_one(&format!("SELECT current_user::text, ({ssl})"), &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), user, "{db}");
        assert!(row.get::<_, bool>(1), "{db}: encrypted to the server");
    }
    let e = connect(gw.addr, "intercepted", "agent-1", &token)
        .await
        .expect_err("the relayed SCRAM login is bound to the middleman's certificate");
    assert_eq!(code(&e), "08001", "{e}");
    assert!(
        message(&e).contains("target intercepted refused the gateway's login")
            && message(&e).contains("channel binding")
            && message(&e).contains("may be relaying the connection"),
        "{}",
        message(&e)
    );
    assert!(pg.log().contains("channel binding"), "{}", pg.log());
    let e = connect(gw.addr, "unbindable", "agent-1", &token)
        .await
        .expect_err("a certificate that cannot be bound gets no unbound login");
    assert_eq!(code(&e), "08001", "{e}");
    assert!(
        message(&e).contains("names no hash to bind with"),
        "{}",
        message(&e)
    );
}

/// How a rogue server answers the gateway's startup.
#[derive(Clone, Copy)]
enum Rogue {
    /// A session (parameter status, cancel key, ReadyForQuery) without
    /// ever accepting the login.
    SkipsLogin,
    /// Only ReadyForQuery.
    ReadyAtOnce,
    /// A bare AuthenticationOk (trust), then the session.
    Trusts,
    /// A bare AuthenticationOk, then a notice said to be 512 MiB long.
    Floods,
}

/// A server that answers the gateway's startup as `how` says. Records the
/// first byte of every message the gateway sends it after the startup.
async fn rogue_server(how: Rogue) -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<u8>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut len = [0u8; 4];
                c.read_exact(&mut len).await?;
                let mut startup = vec![0u8; i32::from_be_bytes(len) as usize - 4];
                c.read_exact(&mut startup).await?;
                let mut answer = Vec::new();
                if let Rogue::Trusts | Rogue::Floods = how {
                    answer.extend_from_slice(b"R\0\0\0\x08\0\0\0\0");
                }
                if let Rogue::Floods = how {
                    answer.extend_from_slice(b"N\x20\0\0\0");
                    answer.extend_from_slice(&[b'x'; 4096]);
                }
                if let Rogue::SkipsLogin | Rogue::Trusts = how {
                    answer.extend_from_slice(b"S\0\0\0\x16server_version\x0015\0");
                    answer.extend_from_slice(b"K\0\0\0\x0c\0\0\0\x01\0\0\0\x02");
                }
                answer.extend_from_slice(b"Z\0\0\0\x05I");
                c.write_all(&answer).await?;
                // Whatever the gateway sends next (a Terminate, or a query
                // if it took the session).
                let mut tag = [0u8; 1];
                while c.read_exact(&mut tag).await.is_ok() {
                    log.lock().unwrap().push(tag[0]);
                    let mut len = [0u8; 4];
                    c.read_exact(&mut len).await?;
                    let mut body = vec![0u8; i32::from_be_bytes(len) as usize - 4];
                    c.read_exact(&mut body).await?;
                }
                Ok::<_, std::io::Error>(())
            });
        }
    });
    (addr, seen)
}

/// A server that skips authentication gets no session, whatever
/// `require_auth` allows; one that says a bare AuthenticationOk gets one
/// only where `none` (trust) is allowed, and then the client's statements
/// reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_accepts_the_login_gets_no_session() {
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await.unwrap();
    let pw = pg.password_file(dir.path()).unwrap();
    let (skipper, _) = rogue_server(Rogue::SkipsLogin).await;
    let (hasty, _) = rogue_server(Rogue::ReadyAtOnce).await;
    let (truster, truster_seen) = rogue_server(Rogue::Trusts).await;
    let (flooder, _) = rogue_server(Rogue::Floods).await;
    let target = |name: &str, addr: std::net::SocketAddr, require_auth: &str| {
        format!(
            "[targets.{name}]\nprotocol = \"postgres\"\nhost = \"127.0.0.1\"\nport = {}\ndatabase = \"app\"\nuser = \"airlock_app\"\npassword = {{ file = \"{}\" }}\nsslmode = \"disable\"\n{require_auth}\n",
            addr.port(),
            pw.display()
        )
    };
    let extra = [
        target("skips-login", skipper, ""),
        target("ready-at-once", hasty, ""),
        target("trusts-scram-only", truster, "require_auth = [\"scram-sha-256\"]"),
        target("trusts", truster, ""),
        target("floods", flooder, ""),
        "[[grants]]\ngroups = [\"agents\"]\ntargets = [\"skips-login\", \"ready-at-once\", \"trusts-scram-only\", \"trusts\", \"floods\"]\n".to_string(),
    ]
    .join("\n");
    let gw = PgGateway::start(&pg_config(&pg, &pw, "", &extra), &dir.path().join("gw"))
        .await
        .unwrap();
    let token = gw.token("agent-1", &["agents"]).unwrap();
    for (db, says) in [
        (
            "skips-login",
            "sent a parameter status before it accepted the login",
        ),
        (
            "ready-at-once",
            "sent ReadyForQuery before it accepted the login",
        ),
        ("trusts-scram-only", "without a password (trust)"),
        // Not held for: a login's messages are small.
        (
            "floods",
            "a 'N' message of 536870912 bytes is larger than the limit",
        ),
    ] {
        let e = connect(gw.addr, db, "agent-1", &token).await.expect_err(db);
        assert_eq!(code(&e), "08001", "{db}: {e}");
        assert!(message(&e).contains(says), "{db}: {}", message(&e));
    }
    // Where trust is allowed, the same bare Ok is a login: the session
    // opens and the client's statement reaches that server.
    let client = connect(gw.addr, "trusts", "agent-1", &token).await.unwrap();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        client.simple_query("SELECT 1"),
    )
    .await;
    assert!(truster_seen.lock().unwrap().contains(&b'Q'));
}
