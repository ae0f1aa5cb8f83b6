//! The gateway's side as a PostgreSQL client: connecting to a target, TLS by
//! its `sslmode`, logging in with the target's own credential (SCRAM-SHA-256,
//! md5, password or trust), and forwarding cancel requests.

use std::collections::BTreeMap;
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
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::config::{PostgresTarget, SslMode};
use crate::frame::{self, Frame, FrameReader, Peer};

/// The largest message accepted from a server (PostgreSQL's own limit for a
/// row is 1 GB).
pub(crate) const MAX_SERVER_MESSAGE: usize = 1 << 30;

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
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
}

impl Target {
    pub(crate) fn new(name: &str, t: PostgresTarget) -> Result<Target> {
        let in_target = |e: Error| Error::Config(format!("targets.{name}: {e}"));
        if t.sslmode == SslMode::VerifyFull && t.ssl_root_cert.is_none() {
            return Err(Error::Config(format!(
                "targets.{name}: sslmode = \"verify-full\" needs ssl_root_cert (the CA that signed the server's certificate)"
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
            tls,
        })
    }

    fn unreachable(&self, why: impl std::fmt::Display) -> Error {
        Error::Upstream(format!(
            "target {} unreachable: {why} (at {}:{})",
            self.name, self.host, self.port
        ))
    }

    /// Opens TCP (and TLS by `sslmode`) to the server.
    async fn open(&self, timeout: Duration) -> Result<UpstreamStream> {
        let addr = (self.host.as_str(), self.port);
        let mut tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(
                    self.unreachable(format!("no connection within {}s", timeout.as_secs()))
                );
            }
            Ok(Err(e)) => return Err(self.unreachable(e)),
            Ok(Ok(tcp)) => tcp,
        };
        let _ = tcp.set_nodelay(true);
        let Some((config, server_name)) = &self.tls else {
            return Ok(Box::new(tcp));
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
                Ok(Box::new(tls))
            }
            b'N' if self.sslmode == SslMode::Prefer => Ok(Box::new(tcp)),
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
    pub(crate) async fn connect(
        &self,
        client_params: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<Connected> {
        let stream = self.open(timeout).await?;
        let (read, mut write) = tokio::io::split(stream);
        let mut reader = FrameReader::new(read, MAX_SERVER_MESSAGE, Peer::Upstream);

        let mut startup = Startup::new();
        startup.parameters = client_params.clone();
        startup
            .parameters
            .insert("user".to_string(), self.user.clone());
        startup
            .parameters
            .insert("database".to_string(), self.database.clone());
        send(&mut write, &frame::encode(&startup), self).await?;

        let mut scram: Option<ScramSha256> = None;
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
                    let reply = self.authenticate(&frame, &mut scram)?;
                    if let Some(reply) = reply {
                        send(&mut write, &reply, self).await?;
                    }
                }
                b'S' => {
                    let p: ParameterStatus = frame.decode(Peer::Upstream)?;
                    params.push((p.name, p.value));
                }
                b'K' => {
                    let body = frame.body();
                    if body.len() < 8 {
                        return Err(self.unreachable("malformed BackendKeyData"));
                    }
                    let mut b = body;
                    let pid = b.get_i32();
                    key = Some((pid, Bytes::copy_from_slice(b)));
                    // pgwire's type is decoded only to check the structure.
                    let _ = frame.decode::<BackendKeyData>(Peer::Upstream);
                }
                b'N' => notices.push(frame),
                b'v' => {}
                b'E' => {
                    let e: ErrorResponse = frame.decode(Peer::Upstream)?;
                    return Err(self.refused(&e));
                }
                b'Z' => {
                    let status = frame.body().first().copied().unwrap_or(b'I');
                    let (pid, secret) = key.unwrap_or((0, Bytes::new()));
                    return Ok(Connected {
                        reader,
                        write,
                        params,
                        notices,
                        pid,
                        secret,
                        status,
                    });
                }
                other => {
                    return Err(self.unreachable(format!(
                        "unexpected message {:?} during login",
                        char::from(other)
                    )));
                }
            }
        }
    }

    /// Answers one authentication request of the server.
    fn authenticate(
        &self,
        frame: &Frame,
        scram: &mut Option<ScramSha256>,
    ) -> Result<Option<Bytes>> {
        let mut body = frame.body();
        let code = body.get_i32();
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
        if scram.is_some() && !matches!(code, 11 | 12) {
            return Err(self.unreachable(format!(
                "the server answered authentication step {code} in the middle of SCRAM, before proving it knows the password; it may not be the expected server"
            )));
        }
        match code {
            0 => Ok(None),
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
                if !mechanisms.contains(&SCRAM_SHA_256.as_bytes()) {
                    return Err(self.unreachable(format!(
                        "the server offers only SASL mechanisms {:?}; the gateway supports SCRAM-SHA-256",
                        mechanisms
                            .iter()
                            .map(|m| String::from_utf8_lossy(m))
                            .collect::<Vec<_>>()
                    )));
                }
                let s = ScramSha256::new(password()?.expose().as_bytes(), ChannelBinding::unsupported());
                let first = Bytes::copy_from_slice(s.message());
                *scram = Some(s);
                Ok(Some(frame::encode(&SASLInitialResponse::new(
                    SCRAM_SHA_256.to_string(),
                    Some(first),
                ))))
            }
            11 => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| self.unreachable("SCRAM continue without a start"))?;
                s.update(body).map_err(|e| self.unreachable(format!("SCRAM failed: {e}")))?;
                Ok(Some(frame::encode(&SASLResponse::new(Bytes::copy_from_slice(
                    s.message(),
                )))))
            }
            12 => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| self.unreachable("SCRAM final without a start"))?;
                s.finish(body).map_err(|e| {
                    self.unreachable(format!(
                        "the server's SCRAM signature is wrong, it may not be the expected server: {e}"
                    ))
                })?;
                // Verified: AuthenticationOk may follow.
                *scram = None;
                Ok(None)
            }
            other => Err(self.unreachable(format!(
                "the server asks for authentication method {other}, which the gateway does not support (use scram-sha-256, md5, password or trust for the gateway's role)"
            ))),
        }
    }

    /// The error for a server that refused the login. The server's own text
    /// never holds the password, and it is masked before it reaches anyone.
    fn refused(&self, e: &ErrorResponse) -> Error {
        let field = |c: u8| {
            e.fields
                .iter()
                .find(|(k, _)| *k == c)
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        };
        let code = field(b'C');
        let hint = if code.starts_with("28") {
            format!(
                " (check targets.{}.user and targets.{}.password)",
                self.name, self.name
            )
        } else if code == "3D000" {
            format!(" (check targets.{}.database)", self.name)
        } else {
            String::new()
        };
        Error::Upstream(format!(
            "target {} refused the gateway's login as {:?}: {} [{}]{hint}",
            self.name,
            self.user,
            field(b'M'),
            code
        ))
    }

    /// Forwards a cancel request for the server session `pid`/`secret`.
    pub(crate) async fn cancel(&self, pid: i32, secret: &[u8], timeout: Duration) -> Result<()> {
        let mut packet = BytesMut::with_capacity(12 + secret.len());
        packet.put_i32(12 + secret.len() as i32);
        packet.put_i32(frame::CANCEL_REQUEST);
        packet.put_i32(pid);
        packet.put_slice(secret);
        // A cancel request needs no login; TLS is used only when the target
        // demands it (PostgreSQL accepts plain cancel requests otherwise).
        let mut stream: UpstreamStream = match self.sslmode {
            SslMode::Require | SslMode::VerifyFull => self.open(timeout).await?,
            SslMode::Disable | SslMode::Prefer => {
                let tcp = tokio::time::timeout(
                    timeout,
                    TcpStream::connect((self.host.as_str(), self.port)),
                )
                .await
                .map_err(|_| self.unreachable("no connection in time"))?
                .map_err(|e| self.unreachable(e))?;
                Box::new(tcp)
            }
        };
        stream
            .write_all(&packet)
            .await
            .map_err(|e| self.unreachable(e))?;
        stream.flush().await.map_err(|e| self.unreachable(e))?;
        // The server closes the connection once it has read the request.
        let mut sink = [0u8; 64];
        let _ = tokio::time::timeout(timeout, stream.read(&mut sink)).await;
        Ok(())
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            name: "t".into(),
            host: "127.0.0.1".into(),
            port: 5432,
            database: "app".into(),
            user: "bot".into(),
            password: Some(Secret::from_value("pw", "test")),
            sslmode: SslMode::Disable,
            tls: None,
        }
    }

    fn request(code: i32, rest: &[u8]) -> Frame {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(rest);
        Frame::from_encoded(frame::raw(b'R', &body))
    }

    /// A server that began SCRAM must finish it, proving it knows the
    /// password, before the gateway believes its AuthenticationOk or
    /// answers another kind of request with the password.
    #[test]
    fn a_server_that_began_scram_must_finish_it() {
        let t = target();
        // Without SCRAM an Ok is an Ok (trust), and md5 gets its answer.
        assert!(matches!(
            t.authenticate(&request(0, b""), &mut None),
            Ok(None)
        ));
        assert!(matches!(
            t.authenticate(&request(5, b"salt"), &mut None),
            Ok(Some(_))
        ));
        for code in [0, 3, 5] {
            let mut scram = None;
            let first = t
                .authenticate(&request(10, b"SCRAM-SHA-256\0\0"), &mut scram)
                .unwrap();
            assert!(first.is_some() && scram.is_some());
            let e = t
                .authenticate(&request(code, b"salt"), &mut scram)
                .unwrap_err();
            assert!(
                e.to_string().contains("in the middle of SCRAM"),
                "{code}: {e}"
            );
        }
    }
}
