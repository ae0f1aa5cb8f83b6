//! The gateway's side as a PostgreSQL client: connecting to a target, TLS by
//! its `sslmode`, logging in with the target's own credential (SCRAM-SHA-256,
//! md5, password or trust), and forwarding cancel requests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use airlock_core::config::Secret;
use airlock_core::connector::ClientIo;
use airlock_core::{Error, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use pgwire::messages::response::ErrorResponse;
use pgwire::messages::startup::{
    BackendKeyData, ParameterStatus, Password, SASLInitialResponse, SASLResponse, Startup,
};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{
    ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256,
};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::config::{AuthMethod, PostgresTarget, SslMode};
use crate::frame::{self, Frame, FrameReader, Peer};

/// The largest message accepted from a server (PostgreSQL's own limit for a
/// row is 1 GB).
pub(crate) const MAX_SERVER_MESSAGE: usize = 1 << 30;

/// Notices of the server's login kept to pass on to the client.
const MAX_LOGIN_NOTICES: usize = 64;

/// The largest message accepted from a server while it logs the gateway
/// in: authentication requests, parameter statuses, notices and the key
/// are small, and a server not yet authenticated (a machine in the middle
/// under `sslmode = "prefer"`) must not make the gateway hold a gigabyte
/// per login. The limit is raised once the login is done.
const MAX_LOGIN_MESSAGE: usize = 64 * 1024;

/// A boxed upstream stream (TCP, or TLS over TCP).
pub(crate) type UpstreamStream = Box<dyn ClientIo>;

/// A target, ready to connect to.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) name: String,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) database: String,
    pub(crate) user: String,
    pub(crate) password: Option<Secret>,
    pub(crate) sslmode: SslMode,
    /// How the server may have the gateway log in.
    require_auth: Vec<AuthMethod>,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
}

/// What the link to the server is, as far as a login cares.
#[derive(Debug)]
enum Link {
    Plain,
    /// Encrypted. `end_point` is the server certificate's hash for SCRAM
    /// channel binding (RFC 5929 `tls-server-end-point`), when the
    /// certificate's signature algorithm names a hash to use.
    Tls {
        end_point: Option<Vec<u8>>,
    },
}

/// Where a login stands, for judging the server's next request.
struct Login {
    link: Link,
    /// The server has asked for the password in some form.
    asked: bool,
    /// SCRAM begun and not yet verified.
    scram: Option<ScramSha256>,
    /// How that SCRAM exchange treats channel binding over TLS.
    binding: Option<Binding>,
    /// The server said AuthenticationOk, after whatever `require_auth` allows.
    ok: bool,
}

impl Login {
    fn new(link: Link) -> Login {
        Login {
            link,
            asked: false,
            scram: None,
            binding: None,
            ok: false,
        }
    }
}

/// Channel binding in a SCRAM exchange over TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Binding {
    /// SCRAM-SHA-256-PLUS, bound to the certificate the gateway saw.
    Bound,
    /// The server offered no binding, so the gateway said "y" (it could
    /// have bound): a server that does offer it refuses the login.
    NotOffered,
}

impl Target {
    pub(crate) fn new(name: &str, t: PostgresTarget) -> Result<Target> {
        let in_target = |e: Error| Error::Config(format!("targets.{name}: {e}"));
        if t.sslmode == SslMode::VerifyFull && t.ssl_root_cert.is_none() {
            return Err(Error::Config(format!(
                "targets.{name}: sslmode = \"verify-full\" needs ssl_root_cert (the CA that signed the server's certificate)"
            )));
        }
        if t.require_auth.is_empty() {
            return Err(Error::Config(format!(
                "targets.{name}: require_auth is empty, so no login could succeed; list at least one of \"scram-sha-256\", \"md5\", \"password\", \"none\""
            )));
        }
        let tls = match t.sslmode {
            SslMode::Disable => None,
            SslMode::Prefer | SslMode::Require => Some((
                crate::tls::client_config(t.ssl_root_cert.as_deref()).map_err(in_target)?,
                crate::tls::server_name(&t.host).map_err(in_target)?,
            )),
            SslMode::VerifyFull => Some((
                crate::tls::client_config(t.ssl_root_cert.as_deref()).map_err(in_target)?,
                crate::tls::server_name(&t.host).map_err(in_target)?,
            )),
        };
        Ok(Target {
            name: name.to_string(),
            host: t.host,
            port: t.port,
            database: t.database,
            user: t.user,
            password: t.password,
            sslmode: t.sslmode,
            require_auth: t.require_auth,
            tls,
        })
    }

    fn unreachable(&self, why: impl std::fmt::Display) -> Error {
        Error::Upstream(format!(
            "target {} unreachable: {why} (at {}:{})",
            self.name, self.host, self.port
        ))
    }

    /// Opens TCP (and TLS by `sslmode`) to the server: to `at`, the address
    /// a session is connected to, when given, else to the target's host.
    /// The caller bounds the whole of it in time.
    async fn open(&self, at: Option<SocketAddr>) -> Result<(UpstreamStream, Link, SocketAddr)> {
        let connected = match at {
            Some(at) => TcpStream::connect(at).await,
            None => TcpStream::connect((self.host.as_str(), self.port)).await,
        };
        let mut tcp = connected.map_err(|e| self.unreachable(e))?;
        let _ = tcp.set_nodelay(true);
        let peer = tcp.peer_addr().map_err(|e| self.unreachable(e))?;
        let Some((config, server_name)) = &self.tls else {
            return Ok((Box::new(tcp), Link::Plain, peer));
        };
        let mut request = BytesMut::with_capacity(8);
        request.put_i32(8);
        request.put_i32(frame::SSL_REQUEST);
        tcp.write_all(&request)
            .await
            .map_err(|e| self.unreachable(e))?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer)
            .await
            .map_err(|e| self.unreachable(e))?;
        match answer[0] {
            b'S' => {
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let tls = connector
                    .connect(server_name.clone(), tcp)
                    .await
                    .map_err(|e| {
                        self.unreachable(format!(
                            "TLS handshake failed: {e} (check targets.{}.sslmode and ssl_root_cert)",
                            self.name
                        ))
                    })?;
                let end_point = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| tls_server_end_point(leaf.as_ref()));
                Ok((Box::new(tls), Link::Tls { end_point }, peer))
            }
            b'N' if self.sslmode == SslMode::Prefer => Ok((Box::new(tcp), Link::Plain, peer)),
            b'N' => Err(self.unreachable(format!(
                "the server does not support TLS, which targets.{}.sslmode requires",
                self.name
            ))),
            other => {
                Err(self.unreachable(format!("unexpected answer {other:#04x} to the TLS request")))
            }
        }
    }

    /// Connects and logs in. `client_params` are the client's startup
    /// parameters other than user and database (application_name,
    /// client_encoding, options, ...): they shape the session as the client
    /// asked.
    ///
    /// `timeout` bounds all of it, TCP, TLS and the login: a server that
    /// accepts and then stays silent, or drips notices, must not hold the
    /// session (and its place under the listener's cap) for ever.
    pub(crate) async fn connect(
        &self,
        client_params: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> std::result::Result<Connected, LoginError> {
        match tokio::time::timeout(timeout, self.connect_and_login(client_params, timeout)).await {
            Ok(connected) => connected,
            Err(_) => Err(self
                .unreachable(format!(
                    "the server did not accept the connection and finish the login within {}s",
                    timeout.as_secs()
                ))
                .into()),
        }
    }

    async fn connect_and_login(
        &self,
        client_params: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> std::result::Result<Connected, LoginError> {
        let (stream, link, addr) = self.open(None).await?;
        let (read, mut write) = tokio::io::split(stream);
        let mut reader = FrameReader::new(read, MAX_LOGIN_MESSAGE, Peer::Upstream);

        let mut startup = Startup::new();
        startup.parameters = client_params.clone();
        // UTF-8 always (the client may have asked for it by another
        // spelling, or for SQL_ASCII, or not at all, and then the server
        // would use the database's encoding): the gateway reads the session
        // as UTF-8 (`startup::check_encoding`).
        startup
            .parameters
            .retain(|name, _| !name.eq_ignore_ascii_case("client_encoding"));
        startup
            .parameters
            .insert("client_encoding".to_string(), "UTF8".to_string());
        startup
            .parameters
            .insert("user".to_string(), self.user.clone());
        startup
            .parameters
            .insert("database".to_string(), self.database.clone());
        send(&mut write, &frame::encode(&startup), self).await?;

        let mut login = Login::new(link);
        let mut params = Vec::new();
        let mut notices = Vec::new();
        let mut key = None;
        loop {
            let frame = tokio::time::timeout(timeout, reader.next())
                .await
                .map_err(|_| self.unreachable("the server did not finish the login in time"))?
                .map_err(|e| self.unreachable(e))?
                .ok_or_else(|| self.unreachable("the server closed the connection during login"))?;
            match frame.tag {
                b'R' => {
                    frame::check_structure(b'R', frame.body(), Peer::Upstream)?;
                    let reply = self.authenticate(&frame, &mut login)?;
                    if let Some(reply) = reply {
                        send(&mut write, &reply, self).await?;
                    }
                }
                b'S' => {
                    self.logged_in(&login, "a parameter status")?;
                    let p: ParameterStatus = frame.decode(Peer::Upstream)?;
                    params.push((p.name, p.value));
                }
                b'K' => {
                    self.logged_in(&login, "its cancel key")?;
                    let body = frame.body();
                    if body.len() < 8 {
                        return Err(self.unreachable("malformed BackendKeyData").into());
                    }
                    let mut b = body;
                    let pid = b.get_i32();
                    key = Some((pid, Bytes::copy_from_slice(b)));
                    // pgwire's type is decoded only to check the structure.
                    let _ = frame.decode::<BackendKeyData>(Peer::Upstream);
                }
                // Kept for the client up to a limit: a server must not
                // grow the gateway's memory before the session starts.
                b'N' if notices.len() < MAX_LOGIN_NOTICES => notices.push(frame),
                b'N' => {}
                b'v' => {}
                b'E' => {
                    let e: ErrorResponse = frame.decode(Peer::Upstream)?;
                    return Err(self.refused(&e, &login));
                }
                b'Z' => {
                    self.logged_in(&login, "ReadyForQuery")?;
                    let status = frame.body().first().copied().unwrap_or(b'I');
                    let (pid, secret) = key.unwrap_or((0, Bytes::new()));
                    reader.set_max(MAX_SERVER_MESSAGE);
                    return Ok(Connected {
                        reader,
                        write,
                        params,
                        notices,
                        pid,
                        secret,
                        status,
                        addr,
                    });
                }
                other => {
                    return Err(self
                        .unreachable(format!(
                            "unexpected message {:?} during login",
                            char::from(other)
                        ))
                        .into());
                }
            }
        }
    }

    /// Refuses a message of a logged-in session before the server accepted
    /// the login: a server that skips authentication (or SCRAM's proof)
    /// would otherwise get the session without `require_auth` ever judging
    /// how it let the gateway in. libpq refuses the same.
    fn logged_in(&self, login: &Login, what: &str) -> Result<()> {
        if login.ok {
            return Ok(());
        }
        Err(self.unreachable(format!(
            "the server sent {what} before it accepted the login (AuthenticationOk); it may not be the expected server"
        )))
    }

    /// Answers one authentication request of the server.
    fn authenticate(&self, frame: &Frame, login: &mut Login) -> Result<Option<Bytes>> {
        let mut body = frame.body();
        let code = body.get_i32();
        if login.ok {
            return Err(self.unreachable(format!(
                "the server asked for authentication step {code} after it had accepted the login"
            )));
        }
        let password = || {
            self.password.as_ref().ok_or_else(|| {
                Error::Upstream(format!(
                    "target {} asks for a password but none is configured (set targets.{}.password)",
                    self.name, self.name
                ))
            })
        };
        // Once SCRAM has begun, only its own next step is acceptable: a
        // server that says "Ok" (or asks for the password in another form)
        // before proving it knows the password is not the expected server,
        // or a man in the middle fishing for the credential.
        if login.scram.is_some() && !matches!(code, 11 | 12) {
            return Err(self.unreachable(format!(
                "the server answered authentication step {code} in the middle of SCRAM, before proving it knows the password; it may not be the expected server"
            )));
        }
        // Checked before anything derived from the password is sent: a
        // server (or whoever answers in its place) chooses how to ask, and
        // asking in clear text is how a credential is fished.
        let method = match code {
            0 if login.asked => None,
            0 => Some(AuthMethod::None),
            3 => Some(AuthMethod::Password),
            5 => Some(AuthMethod::Md5),
            10 => Some(AuthMethod::ScramSha256),
            _ => None,
        };
        if let Some(method) = method {
            if !self.require_auth.contains(&method) {
                let asked = if method == AuthMethod::None {
                    "lets the gateway in without a password (trust)".to_string()
                } else {
                    format!("asks for the password by {method}")
                };
                return Err(self.unreachable(format!(
                    "the server {asked}, which targets.{}.require_auth does not allow (it allows {}); the gateway did not log in",
                    self.name,
                    self.require_auth
                        .iter()
                        .map(|m| m.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            if method == AuthMethod::Password && matches!(login.link, Link::Plain) {
                return Err(self.unreachable(format!(
                    "the server asks for the password in clear text over a connection without TLS, and the gateway never sends it that way (use scram-sha-256 for the role, or TLS: targets.{}.sslmode = \"require\" or \"verify-full\")",
                    self.name
                )));
            }
            login.asked |= method != AuthMethod::None;
        }
        match code {
            0 => {
                login.ok = true;
                Ok(None)
            }
            3 => Ok(Some(frame::encode(&Password::new(
                password()?.expose().to_string(),
            )))),
            5 => {
                if body.len() < 4 {
                    return Err(self.unreachable("malformed md5 request"));
                }
                let salt = [body[0], body[1], body[2], body[3]];
                let hash = md5_hash(self.user.as_bytes(), password()?.expose().as_bytes(), salt);
                Ok(Some(frame::encode(&Password::new(hash))))
            }
            10 => {
                let mechanisms: Vec<&[u8]> = body
                    .split(|&b| b == 0)
                    .filter(|m| !m.is_empty())
                    .collect();
                let plus = mechanisms.contains(&SCRAM_SHA_256_PLUS.as_bytes());
                let unbound = mechanisms.contains(&SCRAM_SHA_256.as_bytes());
                if !plus && !unbound {
                    return Err(self.unreachable(format!(
                        "the server offers only SASL mechanisms {:?}; the gateway supports SCRAM-SHA-256",
                        mechanisms
                            .iter()
                            .map(|m| String::from_utf8_lossy(m))
                            .collect::<Vec<_>>()
                    )));
                }
                // Over TLS the SCRAM exchange is bound to the certificate
                // the gateway saw, as libpq binds it: a man in the middle
                // who terminates TLS (possible with sslmode = "require",
                // which checks no certificate) and relays the exchange to
                // the real server fails it, since that server binds to its
                // own certificate. A server that offers binding gets it or
                // no login (never an unbound one, or the man in the middle
                // would pick a certificate that cannot be bound); without
                // the offer, "y" tells the server that the gateway could
                // have bound, and a server whose offer was stripped on the
                // way refuses (RFC 5802's downgrade protection).
                let (mechanism, binding, used) = match &login.link {
                    Link::Tls {
                        end_point: Some(hash),
                    } if plus => (
                        SCRAM_SHA_256_PLUS,
                        ChannelBinding::tls_server_end_point(hash.clone()),
                        Some(Binding::Bound),
                    ),
                    Link::Tls { end_point: None } if plus => {
                        return Err(self.unreachable(
                            "the server offers channel binding (SCRAM-SHA-256-PLUS), but the certificate it presented names no hash to bind with (its signature is not RSA, RSA-PSS or ECDSA with SHA-1 or SHA-2), and the gateway does not log in unbound over TLS, where a man in the middle could relay the login (give the server an RSA or ECDSA certificate)",
                        ));
                    }
                    Link::Tls { .. } if unbound => (
                        SCRAM_SHA_256,
                        ChannelBinding::unrequested(),
                        Some(Binding::NotOffered),
                    ),
                    Link::Plain if unbound => {
                        (SCRAM_SHA_256, ChannelBinding::unsupported(), None)
                    }
                    _ => {
                        return Err(self.unreachable(
                            "the server offers only SCRAM-SHA-256-PLUS, which binds to TLS, over a connection without TLS (set sslmode = \"require\" or \"verify-full\")",
                        ));
                    }
                };
                let s = ScramSha256::new(password()?.expose().as_bytes(), binding);
                let first = Bytes::copy_from_slice(s.message());
                login.scram = Some(s);
                login.binding = used;
                Ok(Some(frame::encode(&SASLInitialResponse::new(
                    mechanism.to_string(),
                    Some(first),
                ))))
            }
            11 => {
                let s = login
                    .scram
                    .as_mut()
                    .ok_or_else(|| self.unreachable("SCRAM continue without a start"))?;
                s.update(body).map_err(|e| self.unreachable(format!("SCRAM failed: {e}")))?;
                Ok(Some(frame::encode(&SASLResponse::new(Bytes::copy_from_slice(
                    s.message(),
                )))))
            }
            12 => {
                let s = login
                    .scram
                    .as_mut()
                    .ok_or_else(|| self.unreachable("SCRAM final without a start"))?;
                s.finish(body).map_err(|e| {
                    self.unreachable(format!(
                        "the server's SCRAM signature is wrong, it may not be the expected server: {e}"
                    ))
                })?;
                // Verified: AuthenticationOk may follow.
                login.scram = None;
                Ok(None)
            }
            other => Err(self.unreachable(format!(
                "the server asks for authentication method {other}, which the gateway does not support (use scram-sha-256, md5, password or trust for the gateway's role)"
            ))),
        }
    }

    /// The error for a server that refused the login. The server's own text
    /// never holds the password, and it is masked before it reaches anyone.
    fn refused(&self, e: &ErrorResponse, login: &Login) -> LoginError {
        let field = |c: u8| {
            e.fields
                .iter()
                .find(|(k, _)| *k == c)
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        };
        let code = field(b'C');
        // In the middle of a SCRAM exchange over TLS, PostgreSQL refuses a
        // binding that does not match its own certificate with 28000
        // ("SCRAM channel binding check failed"; a wrong password is 28P01,
        // and every other 28000 comes before SCRAM begins), and a "y" from
        // a client it did offer binding to (the offer was stripped on the
        // way) with 08P01 ("SCRAM channel binding negotiation error"). The
        // SQLSTATE says so in every language; the text only in the
        // server's `lc_messages`.
        let binding_refused = login.scram.is_some()
            && matches!(
                (code, login.binding),
                (frame::sqlstate::INVALID_AUTHORIZATION, Some(Binding::Bound))
                    | (
                        frame::sqlstate::PROTOCOL_VIOLATION,
                        Some(Binding::NotOffered)
                    )
            );
        let hint = if binding_refused {
            format!(
                " (the certificate the gateway saw is not the server's own: something between them may be relaying the connection; check the network path and use targets.{}.sslmode = \"verify-full\")",
                self.name
            )
        } else if code.starts_with("28") {
            format!(
                " (check targets.{}.user and targets.{}.password)",
                self.name, self.name
            )
        } else if code == "3D000" {
            format!(" (check targets.{}.database)", self.name)
        } else {
            String::new()
        };
        LoginError {
            error: Error::Upstream(format!(
                "target {} refused the gateway's login as {:?}: {} [{}]{hint}",
                self.name,
                self.user,
                field(b'M'),
                code
            )),
            sqlstate: passed_on(code).unwrap_or(frame::sqlstate::CONNECTION_FAILURE),
        }
    }

    /// Forwards a cancel request for the server session `pid`/`secret`.
    /// Sends a cancel request for the server session `pid`/`secret` to
    /// `addr`, the address that session is connected to (a host name may
    /// stand for several servers).
    pub(crate) async fn cancel(
        &self,
        pid: i32,
        secret: &[u8],
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<()> {
        let mut stream = tokio::time::timeout(timeout, self.send_cancel(pid, secret, addr))
            .await
            .map_err(|_| self.unreachable("the cancel request could not be sent in time"))??;
        // The server closes the connection once it has read the request.
        let mut sink = [0u8; 64];
        let _ = tokio::time::timeout(timeout, stream.read(&mut sink)).await;
        Ok(())
    }

    async fn send_cancel(
        &self,
        pid: i32,
        secret: &[u8],
        addr: SocketAddr,
    ) -> Result<UpstreamStream> {
        let mut packet = BytesMut::with_capacity(12 + secret.len());
        packet.put_i32(12 + secret.len() as i32);
        packet.put_i32(frame::CANCEL_REQUEST);
        packet.put_i32(pid);
        packet.put_slice(secret);
        // A cancel request needs no login, but it carries the server's
        // cancel key: it goes as the sessions go, over TLS where the target
        // offers it (`prefer` too), so that nobody on the path learns the
        // key and cancels the gateway's statements at the server directly.
        let mut stream: UpstreamStream = match self.sslmode {
            SslMode::Disable => Box::new(
                TcpStream::connect(addr)
                    .await
                    .map_err(|e| self.unreachable(e))?,
            ),
            SslMode::Prefer | SslMode::Require | SslMode::VerifyFull => {
                self.open(Some(addr)).await?.0
            }
        };
        stream
            .write_all(&packet)
            .await
            .map_err(|e| self.unreachable(e))?;
        stream.flush().await.map_err(|e| self.unreachable(e))?;
        Ok(stream)
    }
}

/// Writes and flushes one message to the server.
pub(crate) async fn send(
    write: &mut WriteHalf<UpstreamStream>,
    bytes: &[u8],
    target: &Target,
) -> Result<()> {
    write
        .write_all(bytes)
        .await
        .map_err(|e| target.unreachable(e))?;
    write.flush().await.map_err(|e| target.unreachable(e))
}

/// The `tls-server-end-point` channel binding of a server certificate
/// (RFC 5929): its hash by the hash of its signature algorithm (for
/// RSA-PSS, the one its parameters name), SHA-256 for MD5 and SHA-1. None
/// for a signature without one hash (Ed25519), where PostgreSQL cannot bind
/// either.
fn tls_server_end_point(der: &[u8]) -> Option<Vec<u8>> {
    use ring::digest;
    use x509_parser::signature_algorithm::SignatureAlgorithm;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let pss;
    let oid = match SignatureAlgorithm::try_from(&cert.signature_algorithm) {
        Ok(SignatureAlgorithm::RSASSA_PSS(params)) => {
            pss = params.hash_algorithm_oid().to_id_string();
            pss.as_str()
        }
        _ => &cert.signature_algorithm.algorithm.to_id_string(),
    };
    let algorithm = match oid {
        // md5WithRSA, sha1WithRSA, sha256WithRSA, ecdsa-with-SHA1,
        // ecdsa-with-SHA256; the hashes MD5, SHA-1 and SHA-256 (RSA-PSS)
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.1"
        | "1.2.840.10045.4.3.2"
        | "1.2.840.113549.2.5"
        | "1.3.14.3.2.26"
        | "2.16.840.1.101.3.4.2.1" => &digest::SHA256,
        // sha384WithRSA, ecdsa-with-SHA384, SHA-384
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" | "2.16.840.1.101.3.4.2.2" => {
            &digest::SHA384
        }
        // sha512WithRSA, ecdsa-with-SHA512, SHA-512
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" | "2.16.840.1.101.3.4.2.3" => {
            &digest::SHA512
        }
        _ => return None,
    };
    Some(digest::digest(algorithm, der).as_ref().to_vec())
}

/// A login that did not succeed.
#[derive(Debug)]
pub(crate) struct LoginError {
    pub(crate) error: Error,
    /// The SQLSTATE the client is told.
    pub(crate) sqlstate: &'static str,
}

impl From<Error> for LoginError {
    fn from(error: Error) -> Self {
        LoginError {
            error,
            sqlstate: frame::sqlstate::CONNECTION_FAILURE,
        }
    }
}

/// The server's SQLSTATE when the client should see it as it is: the
/// server is out of something (class 53: too many connections, for the
/// role or the database, out of memory or disk) or not accepting
/// connections right now (class 57: starting up, shutting down, in
/// recovery). A client or pool retries those later; everything else about
/// the gateway's own login (its password, its database) is the operator's
/// to fix and reaches the client as 08001.
fn passed_on(code: &str) -> Option<&'static str> {
    const PASSED_ON: [&str; 9] = [
        "53000", "53100", "53200", "53300", "53400", "57000", "57P01", "57P02", "57P03",
    ];
    PASSED_ON.iter().find(|c| **c == code).copied()
}

/// A logged-in server connection.
pub(crate) struct Connected {
    pub(crate) reader: FrameReader<ReadHalf<UpstreamStream>>,
    pub(crate) write: WriteHalf<UpstreamStream>,
    /// ParameterStatus values the server reported at login.
    pub(crate) params: Vec<(String, String)>,
    /// Notices the server sent during login.
    pub(crate) notices: Vec<Frame>,
    /// The server session's cancel key.
    pub(crate) pid: i32,
    pub(crate) secret: Bytes,
    /// Transaction status of the first ReadyForQuery.
    pub(crate) status: u8,
    /// The server's address (where its cancel requests go).
    pub(crate) addr: SocketAddr,
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [AuthMethod; 4] = [
        AuthMethod::ScramSha256,
        AuthMethod::Md5,
        AuthMethod::Password,
        AuthMethod::None,
    ];

    fn target(require_auth: &[AuthMethod]) -> Target {
        Target {
            name: "t".into(),
            host: "127.0.0.1".into(),
            port: 5432,
            database: "app".into(),
            user: "bot".into(),
            password: Some(Secret::from_value("pw-held", "test")),
            sslmode: SslMode::Disable,
            require_auth: require_auth.to_vec(),
            tls: None,
        }
    }

    fn login(tls: bool) -> Login {
        Login::new(if tls {
            Link::Tls {
                end_point: Some(vec![7; 32]),
            }
        } else {
            Link::Plain
        })
    }

    fn request(code: i32, rest: &[u8]) -> Frame {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(rest);
        Frame::from_encoded(frame::raw(b'R', &body))
    }

    fn sends_password(reply: &Bytes) -> bool {
        reply.windows(7).any(|w| w == b"pw-held")
    }

    /// A server that began SCRAM must finish it, proving it knows the
    /// password, before the gateway believes its AuthenticationOk or
    /// answers another kind of request with the password.
    #[test]
    fn a_server_that_began_scram_must_finish_it() {
        let t = target(&ALL);
        // Without SCRAM an Ok is an Ok (trust), and md5 gets its answer.
        assert!(matches!(
            t.authenticate(&request(0, b""), &mut login(false)),
            Ok(None)
        ));
        assert!(matches!(
            t.authenticate(&request(5, b"salt"), &mut login(false)),
            Ok(Some(_))
        ));
        for code in [0, 3, 5] {
            let mut l = login(true);
            let first = t
                .authenticate(&request(10, b"SCRAM-SHA-256\0\0"), &mut l)
                .unwrap();
            assert!(first.is_some() && l.scram.is_some());
            let e = t.authenticate(&request(code, b"salt"), &mut l).unwrap_err();
            assert!(
                e.to_string().contains("in the middle of SCRAM"),
                "{code}: {e}"
            );
        }
    }

    /// `require_auth` is judged before anything derived from the password
    /// leaves: a server that asks another way (or trusts the gateway while
    /// `none` is not allowed) gets nothing, one that asks the allowed way
    /// gets its answer.
    #[test]
    fn require_auth_is_checked_before_the_password_is_sent() {
        let scram_only = target(&[AuthMethod::ScramSha256]);
        for (code, says) in [
            (5, "asks for the password by md5"),
            (3, "asks for the password by password"),
            (0, "without a password (trust)"),
        ] {
            let e = scram_only
                .authenticate(&request(code, b"salt"), &mut login(true))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(says)
                    && e.contains("targets.t.require_auth")
                    && e.contains("scram-sha-256"),
                "{code}: {e}"
            );
            assert!(!e.contains("pw-held"), "{e}");
        }
        let first = scram_only
            .authenticate(&request(10, b"SCRAM-SHA-256\0\0"), &mut login(true))
            .unwrap();
        assert!(first.is_some());
        // The same requests with the methods allowed are answered.
        let all = target(&ALL);
        let md5 = all
            .authenticate(&request(5, b"salt"), &mut login(true))
            .unwrap();
        assert!(md5.is_some());
        assert!(matches!(
            all.authenticate(&request(0, b""), &mut login(true)),
            Ok(None)
        ));
        // An Ok after the password was asked for is the end of that login,
        // not trust, even when `none` is not allowed.
        let md5_only = target(&[AuthMethod::Md5]);
        let mut l = login(false);
        assert!(
            md5_only
                .authenticate(&request(5, b"salt"), &mut l)
                .unwrap()
                .is_some()
        );
        assert!(matches!(
            md5_only.authenticate(&request(0, b""), &mut l),
            Ok(None)
        ));
    }

    /// The password goes in clear text only over TLS, whatever
    /// `require_auth` says.
    #[test]
    fn clear_text_passwords_only_over_tls() {
        let t = target(&ALL);
        let e = t
            .authenticate(&request(3, b""), &mut login(false))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("clear text over a connection without TLS")
                && e.contains("targets.t.sslmode"),
            "{e}"
        );
        let reply = t
            .authenticate(&request(3, b""), &mut login(true))
            .unwrap()
            .unwrap();
        assert!(sends_password(&reply));
    }

    /// The channel binding hash follows the certificate's signature
    /// algorithm, and SCRAM binds to it when the server offers binding.
    #[test]
    fn scram_binds_to_the_certificate_over_tls() {
        use ring::digest;
        let cert = |alg: &'static rcgen::SignatureAlgorithm| {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            rcgen::CertificateParams::new(vec!["db".into()])
                .unwrap()
                .self_signed(&key)
                .unwrap()
                .der()
                .to_vec()
        };
        let p256 = cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            tls_server_end_point(&p256).unwrap(),
            digest::digest(&digest::SHA256, &p256).as_ref()
        );
        let p384 = cert(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(
            tls_server_end_point(&p384).unwrap(),
            digest::digest(&digest::SHA384, &p384).as_ref()
        );
        assert_eq!(tls_server_end_point(&cert(&rcgen::PKCS_ED25519)), None);
        // RSA-PSS binds with the hash its parameters name (ring cannot make
        // RSA keys, so openssl makes this one).
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("pss.pem");
        let made = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa-pss"])
            .args(["-pkeyopt", "rsa_keygen_bits:2048"])
            .args(["-pkeyopt", "rsa_pss_keygen_md:sha384", "-sha384", "-nodes"])
            .args(["-subj", "/CN=db", "-days", "1", "-keyout"])
            .arg(dir.path().join("pss.key"))
            .arg("-out")
            .arg(&pem)
            .output()
            .expect("openssl (scripts/test installs it)");
        assert!(made.status.success(), "{made:?}");
        let pss = {
            use rustls::pki_types::pem::PemObject;
            rustls::pki_types::CertificateDer::from_pem_file(&pem)
                .unwrap()
                .to_vec()
        };
        assert_eq!(
            tls_server_end_point(&pss).unwrap(),
            digest::digest(&digest::SHA384, &pss).as_ref()
        );
        assert_eq!(tls_server_end_point(b"not a certificate"), None);

        let t = target(&ALL);
        let first = |link: Link, offer: &[u8]| {
            let mut l = Login::new(link);
            let reply = t.authenticate(&request(10, offer), &mut l)?;
            Ok::<_, Error>(String::from_utf8_lossy(&reply.unwrap_or_default()).into_owned())
        };
        let tls = || Link::Tls {
            end_point: Some(vec![7; 32]),
        };
        let both: &[u8] = b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0";
        let bound = first(tls(), both).unwrap();
        assert!(
            bound.contains("SCRAM-SHA-256-PLUS") && bound.contains("p=tls-server-end-point,,n="),
            "{bound:?}"
        );
        // Offered no binding over TLS: "y", so a server that did offer it
        // and had the offer stripped refuses.
        let unoffered = first(tls(), b"SCRAM-SHA-256\0\0").unwrap();
        assert!(
            !unoffered.contains("PLUS") && unoffered.contains("y,,n="),
            "{unoffered:?}"
        );
        // Without TLS there is nothing to bind to: "n".
        let plain = first(Link::Plain, both).unwrap();
        assert!(
            !plain.contains("PLUS") && plain.contains("n,,n="),
            "{plain:?}"
        );
        // Offered binding over TLS with a certificate that cannot be bound
        // (a man in the middle's choice): no login, not an unbound one.
        let e = first(Link::Tls { end_point: None }, both).unwrap_err();
        assert!(e.to_string().contains("names no hash to bind with"), "{e}");
        let e = first(Link::Plain, b"SCRAM-SHA-256-PLUS\0\0").unwrap_err();
        assert!(e.to_string().contains("without TLS"), "{e}");
    }

    /// Until the server accepts the login, the messages of a session
    /// (parameter status, cancel key, ReadyForQuery) are refused: a server
    /// that skips authentication, or SCRAM's proof, gets no session.
    #[test]
    fn a_session_begins_only_after_authentication_ok() {
        let t = target(&[AuthMethod::ScramSha256]);
        let fresh = login(true);
        let e = t
            .logged_in(&fresh, "ReadyForQuery")
            .unwrap_err()
            .to_string();
        assert!(e.contains("before it accepted the login"), "{e}");
        let mut l = login(true);
        t.authenticate(&request(10, b"SCRAM-SHA-256\0\0"), &mut l)
            .unwrap();
        assert!(t.logged_in(&l, "ReadyForQuery").is_err(), "mid-SCRAM");
        // An Ok in the middle of SCRAM is refused, and leaves no session.
        assert!(t.authenticate(&request(0, b""), &mut l).is_err());
        assert!(t.logged_in(&l, "ReadyForQuery").is_err());
        // Trust, where allowed, is a login.
        let mut trusted = login(false);
        target(&ALL)
            .authenticate(&request(0, b""), &mut trusted)
            .unwrap();
        assert!(t.logged_in(&trusted, "ReadyForQuery").is_ok());
        // And once accepted, no further authentication request is answered.
        let e = target(&ALL)
            .authenticate(&request(3, b""), &mut trusted)
            .unwrap_err()
            .to_string();
        assert!(e.contains("after it had accepted the login"), "{e}");
    }

    /// The relay hint comes from the SQLSTATE of a refusal in the middle of
    /// SCRAM over TLS, so it holds whatever language the server speaks.
    #[test]
    fn a_refused_binding_is_recognised_by_its_code_not_its_text() {
        let t = target(&ALL);
        let refusal = |code: &str, binding: Option<Binding>, scram: bool| {
            let mut login = Login::new(Link::Plain);
            if scram {
                login.scram = Some(ScramSha256::new(b"pw", ChannelBinding::unsupported()));
                login.binding = binding;
            }
            let e = ErrorResponse::new(vec![
                (b'S', "FATAL".into()),
                (b'C', code.into()),
                (
                    b'M',
                    "la vérification de la liaison de canal SCRAM a échoué".into(),
                ),
            ]);
            t.refused(&e, &login).error.to_string()
        };
        let relay = |code: &str, binding: Option<Binding>, scram: bool| {
            refusal(code, binding, scram).contains("may be relaying the connection")
        };
        // A failed check of a bound login, and a negotiation error after
        // an offer of binding was not seen.
        assert!(relay("28000", Some(Binding::Bound), true));
        assert!(relay("08P01", Some(Binding::NotOffered), true));
        // The same codes otherwise: not a relay.
        assert!(!relay("28000", Some(Binding::NotOffered), true));
        assert!(!relay("08P01", Some(Binding::Bound), true));
        assert!(!relay("28000", None, true), "no TLS");
        assert!(!relay("08P01", None, true), "no TLS");
        assert!(
            !relay("28000", None, false),
            "refused before SCRAM (pg_hba)"
        );
        // A wrong password over TLS is not a relay.
        let password = refusal("28P01", Some(Binding::Bound), true);
        assert!(
            !password.contains("relaying") && password.contains("check targets."),
            "{password}"
        );
    }
}
