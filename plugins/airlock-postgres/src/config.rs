//! The connector's own configuration: the keys of a `[[listeners]]` entry
//! with `protocol = "postgres"` and of a `[targets.NAME]` entry with
//! `protocol = "postgres"`. The field docs are the user's reference (see
//! also `docs/postgres.md`).

use std::path::PathBuf;

use airlock_core::config::Secret;
use serde::Deserialize;

/// Options of a PostgreSQL listener.
///
/// ```toml
/// [[listeners]]
/// name = "pg"
/// protocol = "postgres"
/// listen = "0.0.0.0:6432"
/// tls_cert = "/etc/airlock/pg.crt"
/// tls_key = "/etc/airlock/pg.key"
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresListener {
    /// PEM file with the certificate chain the gateway presents to clients
    /// (leaf first). With `tls_key`, clients can use `sslmode=require` (and
    /// PostgreSQL 17's `sslnegotiation=direct`); without it the gateway
    /// answers `SSLRequest` with "no" and clients that require TLS stop with
    /// libpq's own message.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM file with the private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Accept the client's access token (sent as the password) over a
    /// connection without TLS. Off by default: a token sent in clear text can
    /// be read by anyone on the path. Turn it on only for loopback listeners
    /// (demos, tests, a sidecar next to the client).
    #[serde(default)]
    pub allow_cleartext_without_tls: bool,
    /// Refuse a connection whose user name differs from the token's subject.
    /// Off by default: the user name is informational (it is recorded) and
    /// the gateway always logs in upstream as the target's own user.
    #[serde(default)]
    pub require_user_match: bool,
    /// How many result rows of each statement are recorded (masked) in the
    /// session's audit trail. 0 records none; the row count is always recorded.
    #[serde(default = "default_record_rows")]
    pub record_rows: usize,
    /// The largest protocol message a client may send, in bytes (a query, a
    /// `Bind` with its parameters, a `CopyData` chunk). Larger messages end
    /// the connection with SQLSTATE 54000.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Seconds a client has to finish TLS and log in before it is disconnected.
    #[serde(default = "default_startup_timeout")]
    pub startup_timeout_secs: u64,
    /// Seconds the gateway waits for a target to accept a connection.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// The most client connections this listener serves at once, counted
    /// from the first byte (so clients still logging in count too). One more
    /// is told "too many connections" (SQLSTATE 53300) after its startup
    /// message, before its token is checked; cancel requests always pass.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// The most connections one client address (an IPv6 /64) may have
    /// logging in at once (before its token is accepted). More are closed
    /// at once, unread: one host that opens connections and sends nothing
    /// cannot hold the listener's places until their startup deadline.
    #[serde(default = "default_max_logins_per_address")]
    pub max_logins_per_address: usize,
    /// How many distinct statement texts the SQL classifier caches per
    /// listener (prepared statements and repeated queries are classified once).
    #[serde(default = "default_classifier_cache")]
    pub classifier_cache: usize,
}

fn default_record_rows() -> usize {
    10
}
fn default_max_message_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_startup_timeout() -> u64 {
    60
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_max_connections() -> usize {
    1000
}
fn default_max_logins_per_address() -> usize {
    128
}
fn default_classifier_cache() -> usize {
    4096
}

/// A PostgreSQL database the gateway logs in to on behalf of its clients.
/// Clients name it as their database (`psql "host=gw dbname=NAME ..."`).
///
/// ```toml
/// [targets.orders]
/// protocol = "postgres"
/// host = "db.internal"
/// port = 5432
/// database = "orders"
/// user = "airlock_rw"
/// password = { env = "ORDERS_DB_PASSWORD" }
/// sslmode = "verify-full"
/// ssl_root_cert = "/etc/airlock/db-ca.pem"
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresTarget {
    /// Host name or IP address of the PostgreSQL server.
    pub host: String,
    /// Its port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The database to open on that server.
    pub database: String,
    /// The role the gateway logs in as. Clients never learn its password.
    pub user: String,
    /// That role's password, as `{ env = "VAR" }` or `{ file = "path" }`.
    /// Leave it out for `trust` authentication. Used for SCRAM-SHA-256, md5
    /// or password authentication, whichever the server asks for.
    #[serde(default)]
    pub password: Option<Secret>,
    /// TLS toward the server: `disable`, `prefer` (TLS when the server offers
    /// it, the default), `require` (TLS or nothing; like libpq, the server's
    /// certificate is not checked) or `verify-full` (TLS, and the certificate
    /// must chain to `ssl_root_cert` and name `host`).
    #[serde(default)]
    pub sslmode: SslMode,
    /// PEM file with the CA certificates that `verify-full` trusts.
    #[serde(default)]
    pub ssl_root_cert: Option<PathBuf>,
    /// How the server may have the gateway log in, as libpq's `require_auth`:
    /// any of `scram-sha-256`, `md5`, `password` (the password in clear
    /// text) and `none` (`trust`: no password asked). A server that asks in
    /// another way, or lets the gateway in without asking while `none` is
    /// not listed, is refused before the credential is sent. All four by
    /// default; `["scram-sha-256"]` makes the server prove it knows the
    /// password before any statement reaches it. Whatever this says, the
    /// password is never sent in clear text over a connection without TLS.
    #[serde(default = "default_require_auth")]
    pub require_auth: Vec<AuthMethod>,
}

fn default_require_auth() -> Vec<AuthMethod> {
    vec![
        AuthMethod::ScramSha256,
        AuthMethod::Md5,
        AuthMethod::Password,
        AuthMethod::None,
    ]
}

/// A way a PostgreSQL server has a client log in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum AuthMethod {
    /// SCRAM-SHA-256: the server proves it knows the password too.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// md5: a salted hash of the password.
    #[serde(rename = "md5")]
    Md5,
    /// The password in clear text (only ever sent over TLS).
    #[serde(rename = "password")]
    Password,
    /// No password (`trust`).
    #[serde(rename = "none")]
    None,
}

impl std::fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Md5 => "md5",
            AuthMethod::Password => "password",
            AuthMethod::None => "none",
        })
    }
}

fn default_port() -> u16 {
    5432
}

/// How the gateway uses TLS toward a target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Use TLS when the server supports it, plain TCP otherwise.
    #[default]
    Prefer,
    /// Always use TLS; do not check the server's certificate.
    Require,
    /// Always use TLS and check the certificate against `ssl_root_cert` and the host name.
    VerifyFull,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_defaults_and_unknown_keys() {
        let l: PostgresListener = toml::from_str("").unwrap();
        assert_eq!(l.record_rows, 10);
        assert_eq!(l.max_connections, 1000);
        assert!(!l.allow_cleartext_without_tls);
        assert!(l.tls_cert.is_none());
        let err = toml::from_str::<PostgresListener>("tls_certificate = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls_certificate"), "{err}");
    }

    #[test]
    fn target_parses_sslmode_and_refuses_inline_password() {
        let t: PostgresTarget = toml::from_str(
            "host = \"db\"\ndatabase = \"app\"\nuser = \"rw\"\nsslmode = \"verify-full\"",
        )
        .unwrap();
        assert_eq!(t.port, 5432);
        assert_eq!(t.sslmode, SslMode::VerifyFull);
        assert!(t.password.is_none());
        assert_eq!(t.require_auth.len(), 4);
        let t: PostgresTarget = toml::from_str(
            "host = \"db\"\ndatabase = \"app\"\nuser = \"rw\"\nrequire_auth = [\"scram-sha-256\"]",
        )
        .unwrap();
        assert_eq!(t.require_auth, vec![AuthMethod::ScramSha256]);
        let err = toml::from_str::<PostgresTarget>(
            "host = \"db\"\ndatabase = \"app\"\nuser = \"rw\"\nrequire_auth = [\"gss\"]",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("scram-sha-256"), "{err}");
        let err = toml::from_str::<PostgresTarget>(
            "host = \"db\"\ndatabase = \"app\"\nuser = \"rw\"\npassword = \"hunter2\"",
        )
        .unwrap_err()
        .message()
        .to_string();
        assert!(err.contains("never inline"), "{err}");
    }
}
