//! # airlock-postgres
//!
//! The PostgreSQL wire-protocol connector: any unchanged Postgres client or
//! driver (`psql`, `pgbench`, libpq, `tokio-postgres`, `psycopg`, JDBC, ...)
//! connects to Airlock as if it were the database.
//!
//! * The client's **password is its access token**; the user name is only
//!   recorded. The **database name picks the target**; the gateway logs in
//!   upstream with the target's own user and credential (SCRAM-SHA-256, md5,
//!   password or trust), which the client never sees.
//! * Every statement (simple and extended protocol, multi-statement queries
//!   one by one, `EXECUTE` as the statement it runs, fast-path calls) is
//!   classified, judged by policy and **recorded durably before it is
//!   forwarded**. A refusal is an `ErrorResponse` with SQLSTATE 42501 and the
//!   session stays usable. Reviews wait for approval while the client gets a
//!   notice with the approval's URL.
//! * Result rows (text and binary text-like values), errors, notices,
//!   notifications, parameter statuses and COPY OUT rows are **masked** before
//!   they leave the gateway; the first rows of each statement are recorded.
//! * TLS toward clients (`SSLRequest` and PostgreSQL 17's direct TLS) and
//!   toward targets (`sslmode`), and cancel requests, work as with PostgreSQL.
//!
//! Configuration: [`PostgresListener`] and [`PostgresTarget`]; the user guide
//! is `docs/postgres.md` in the repository.

mod cancel;
mod catalog;
pub mod classify;
mod config;
mod frame;
mod relay;
mod rows;
mod startup;
mod tls;
mod upstream;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use airlock_core::config::Secret;
use airlock_core::{
    ClientInfo, ClientStream, Connector, Error, Event, Gateway, MaskCounts, Result, Side,
};
use async_trait::async_trait;
use pgwire::messages::startup::{
    Authentication, BackendKeyData, NegotiateProtocolVersion, ParameterStatus, Password, SecretKey,
};
use rustls::ServerConfig;
use tokio::io::{AsyncWriteExt, BufWriter, WriteHalf};

pub use config::{AuthMethod, PostgresListener, PostgresTarget, SslMode};

use crate::classify::Classifier;
use crate::frame::{FrameReader, Peer, Severity, sqlstate};
use crate::upstream::Target;

/// The largest password message a client may send: an access token is at
/// most 64 KiB, and PostgreSQL caps authentication messages at 65535 bytes.
const MAX_PASSWORD_MESSAGE: usize = 64 * 1024 + 5;

/// The PostgreSQL connector: one per `[[listeners]]` entry with
/// `protocol = "postgres"`.
#[derive(Debug)]
pub struct PostgresConnector {
    listener: PostgresListener,
    targets: BTreeMap<String, Arc<Target>>,
    /// Column names by table OID, per target (for masking rules).
    catalogs: BTreeMap<String, Arc<catalog::Catalog>>,
    tls: Option<Arc<ServerConfig>>,
    classifier: Classifier,
    cancels: Arc<cancel::Registry>,
    /// Client connections open on this listener (see `max_connections`).
    open: AtomicUsize,
    /// Connections still logging in, by client address ([`Login`]).
    logins: Mutex<HashMap<IpAddr, usize>>,
    /// When a refusal for a full listener was last logged (seconds since
    /// `started`): once a minute is enough to tell the operator, and a
    /// flood of connections does not become a flood of log lines.
    full_logged: AtomicU64,
    started: std::time::Instant,
}

/// One open client connection, counted in `PostgresConnector::open` while it lives.
struct Slot<'a> {
    open: &'a AtomicUsize,
    /// Its place in the count when it was accepted (itself included).
    ticket: usize,
}

impl<'a> Slot<'a> {
    fn take(open: &'a AtomicUsize) -> Slot<'a> {
        let ticket = open.fetch_add(1, Ordering::Relaxed) + 1;
        Slot { open, ticket }
    }

    /// Whether this connection is one too many. By its ticket, so that of a
    /// burst of clients the first `max` get in, not none; and by the count
    /// now, so that places freed while it negotiated TLS are free for it.
    fn over(&self, max: usize) -> bool {
        self.ticket.min(self.open.load(Ordering::Relaxed)) > max
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection still logging in (TLS, startup, token), counted per client
/// address while it lives, an IPv6 /64 as one address: one host that opens
/// connections and sends nothing holds at most `max_logins_per_address` of
/// the listener's places, not all of them for the startup deadline.
struct Login<'a> {
    counts: &'a Mutex<HashMap<IpAddr, usize>>,
    key: IpAddr,
}

impl<'a> Login<'a> {
    fn take(
        counts: &'a Mutex<HashMap<IpAddr, usize>>,
        addr: IpAddr,
        max: usize,
    ) -> Option<Login<'a>> {
        let key = airlock_core::address_holder(addr);
        let mut counts_now = counts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = counts_now.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Login { counts, key })
    }
}

impl Drop for Login<'_> {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[async_trait]
impl Connector for PostgresConnector {
    const PROTOCOL: &'static str = "postgres";
    type Listener = PostgresListener;
    type Target = PostgresTarget;

    fn new(listener: PostgresListener, targets: BTreeMap<String, PostgresTarget>) -> Result<Self> {
        if listener.max_connections == 0 {
            return Err(Error::Config(
                "max_connections = 0 would refuse every client; set it to at least 1".into(),
            ));
        }
        if listener.max_logins_per_address == 0 {
            return Err(Error::Config(
                "max_logins_per_address = 0 would refuse every client; set it to at least 1".into(),
            ));
        }
        let tls = match (&listener.tls_cert, &listener.tls_key) {
            (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
            (None, None) => None,
            _ => {
                return Err(Error::Config(
                    "tls_cert and tls_key go together: set both for TLS, or neither".into(),
                ));
            }
        };
        let targets = targets
            .into_iter()
            .map(|(name, t)| Ok((name.clone(), Arc::new(Target::new(&name, t)?))))
            .collect::<Result<BTreeMap<_, _>>>()?;
        let catalogs = targets
            .iter()
            .map(|(name, t)| (name.clone(), Arc::new(catalog::Catalog::new(t.clone()))))
            .collect();
        Ok(PostgresConnector {
            classifier: Classifier::new(listener.classifier_cache),
            listener,
            targets,
            catalogs,
            tls,
            cancels: Arc::default(),
            open: AtomicUsize::new(0),
            logins: Mutex::default(),
            full_logged: AtomicU64::new(0),
            started: std::time::Instant::now(),
        })
    }

    fn held_secrets(&self) -> Vec<Secret> {
        self.targets
            .values()
            .filter_map(|t| t.password.clone())
            .collect()
    }

    async fn serve(&self, client: ClientStream, info: ClientInfo, gateway: Gateway) -> Result<()> {
        let slot = Slot::take(&self.open);
        // Clients still logging in count too, and are told "too many" only
        // after their startup message. Past twice the cap (connections that
        // send nothing, say) they are closed at once, unread, as
        // PostgreSQL's postmaster does: otherwise silent connections hold a
        // task and a file descriptor each until their startup deadline.
        if slot.over(self.listener.max_connections.saturating_mul(2)) {
            self.note_full(&info);
            return Ok(());
        }
        let Some(login) = Login::take(
            &self.logins,
            info.addr.ip(),
            self.listener.max_logins_per_address,
        ) else {
            airlock_core::telemetry::METRICS
                .refused_full
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client = %info.addr, max = self.listener.max_logins_per_address, "too many connections logging in from one address: closed");
            return Ok(());
        };
        // One deadline for TLS, the startup message and the password.
        let login_by = tokio::time::Instant::now()
            + Duration::from_secs(self.listener.startup_timeout_secs.max(1));
        let opened = tokio::time::timeout_at(login_by, startup::open(client, self.tls.as_ref()))
            .await
            .map_err(|_| Error::Client("the client did not finish its startup in time".into()))??;
        match opened {
            startup::Opening::Done => Ok(()),
            startup::Opening::Cancel { pid, secret } => {
                self.cancel(pid, secret, info).await;
                Ok(())
            }
            startup::Opening::Startup(hello) => {
                let full = slot.over(self.listener.max_connections);
                self.session(hello, info, gateway, full, login_by, login)
                    .await
            }
        }
    }
}

/// The client connection after startup, before the relay.
struct Client {
    reader: FrameReader<tokio::io::ReadHalf<ClientStream>>,
    writer: BufWriter<WriteHalf<ClientStream>>,
}

impl Client {
    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        relay::send(&mut self.writer, bytes).await
    }

    async fn flush(&mut self) -> Result<()> {
        self.writer
            .flush()
            .await
            .map_err(|e| Error::Client(format!("writing to the client failed: {e}")))
    }

    /// Tells the client why its connection ends.
    async fn fatal(&mut self, code: &str, message: &str, hint: Option<&str>) -> Result<()> {
        self.send(&frame::error_response(Severity::Fatal, code, message, hint))
            .await?;
        self.flush().await
    }
}

/// The SQLSTATE for a core error refusing a connection.
fn refusal_code(e: &Error, target_exists: bool) -> &'static str {
    match e {
        Error::Unauthenticated(_) => sqlstate::INVALID_PASSWORD,
        Error::Forbidden(_) if !target_exists => sqlstate::INVALID_CATALOG_NAME,
        Error::Forbidden(_) => sqlstate::INVALID_AUTHORIZATION,
        Error::Store(_) => sqlstate::SYSTEM_ERROR,
        Error::Upstream(_) => sqlstate::CONNECTION_FAILURE,
        Error::Client(_) => sqlstate::PROTOCOL_VIOLATION,
        _ => sqlstate::INTERNAL_ERROR,
    }
}

impl PostgresConnector {
    /// Counts a refusal for a full listener and tells the operator, at most
    /// once a minute per listener (the metric counts every one).
    fn note_full(&self, info: &ClientInfo) {
        airlock_core::telemetry::METRICS
            .refused_full
            .fetch_add(1, Ordering::Relaxed);
        // Offset by a minute, so that the first refusal is logged.
        let now = self.started.elapsed().as_secs() + 60;
        let last = self.full_logged.load(Ordering::Relaxed);
        if now >= last + 60
            && self
                .full_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(listener = %info.listener, max_connections = self.listener.max_connections, "listener full: refusing connections (logged at most once a minute; airlock_connections_refused_full_total counts them)");
        }
    }

    async fn cancel(&self, pid: i32, secret: i32, info: ClientInfo) {
        // Like PostgreSQL, a cancel request gets no answer either way.
        let Some(entry) = self.cancels.find(pid, secret) else {
            tracing::debug!(pid, "cancel request with an unknown key");
            return;
        };
        // Stopping a statement acts on the target too, so it is recorded
        // first, and not acted on when it cannot be (fail closed).
        let recorded = entry
            .gateway
            .recorder()
            .record(Some(entry.session), Event::Cancel { client: info })
            .await;
        if let Err(e) = recorded {
            tracing::warn!(target = %entry.target.name, error = %e, "a cancel request was not recorded, so not acted on");
            return;
        }
        if entry.local.cancel() {
            // The statement waited in the gateway; the server runs nothing
            // of it.
            return;
        }
        let timeout = Duration::from_secs(self.listener.connect_timeout_secs.max(1));
        if let Err(e) = entry
            .target
            .cancel(entry.pid, &entry.secret, entry.addr, timeout)
            .await
        {
            tracing::info!(target = %entry.target.name, error = %e, "forwarding a cancel request failed");
            entry.gateway.recorder().record_later(
                Some(entry.session),
                Event::Error {
                    side: Side::Upstream,
                    message: format!("forwarding a cancel request failed: {e}"),
                },
            );
        }
    }

    async fn session(
        &self,
        hello: startup::Hello,
        mut info: ClientInfo,
        gateway: Gateway,
        full: bool,
        login_by: tokio::time::Instant,
        login: Login<'_>,
    ) -> Result<()> {
        let startup::Hello {
            stream,
            tls,
            mut params,
            unsupported_options,
            minor,
        } = hello;
        let (read, write) = tokio::io::split(stream);
        // Until the client has authenticated, a message is a password at
        // most: no unauthenticated client makes the gateway buffer
        // max_message_bytes.
        let mut client = Client {
            reader: FrameReader::new(read, MAX_PASSWORD_MESSAGE, Peer::Client),
            writer: BufWriter::new(write),
        };
        let user = params.remove("user").unwrap_or_default();
        let target_name = params.remove("database").unwrap_or_else(|| user.clone());
        info.login = login_name(&user);
        if minor > 0 || !unsupported_options.is_empty() {
            client
                .send(&frame::encode(&NegotiateProtocolVersion::new(
                    0,
                    unsupported_options,
                )))
                .await?;
        }
        if full {
            // Like PostgreSQL's own "too many clients": after the startup
            // message, so the client can read the answer, and before the
            // token, so a flood of connections costs no verification.
            self.note_full(&info);
            return client
                .fatal(
                    sqlstate::TOO_MANY_CONNECTIONS,
                    &format!(
                        "too many connections: listener {:?} already serves {} (max_connections); try again later",
                        info.listener, self.listener.max_connections
                    ),
                    Some("if this happens often, ask the operator to raise max_connections for this listener"),
                )
                .await;
        }
        if !tls && !self.listener.allow_cleartext_without_tls {
            return client
                .fatal(
                    sqlstate::INVALID_AUTHORIZATION,
                    "Airlock receives your access token as the password and needs TLS for that: connect with sslmode=require",
                    Some("if this listener has no TLS certificate, ask the operator to configure tls_cert and tls_key"),
                )
                .await;
        }

        // The password field carries the access token. SCRAM cannot be used:
        // it needs a verifier of a password the gateway knows in advance.
        client
            .send(&frame::encode(&Authentication::CleartextPassword))
            .await?;
        client.flush().await?;
        let token = match tokio::time::timeout_at(login_by, client.reader.next()).await {
            Err(_) => return Err(Error::Client("no password message in time".into())),
            Ok(Err(e)) if frame::is_too_large(&e) => {
                return client
                    .fatal(
                        sqlstate::PROGRAM_LIMIT_EXCEEDED,
                        &format!(
                            "the password message is larger than {MAX_PASSWORD_MESSAGE} bytes: send your Airlock access token as the password"
                        ),
                        None,
                    )
                    .await;
            }
            Ok(r) => match r? {
                None => return Ok(()),
                Some(f) if f.tag == b'p' => f.decode::<Password>(Peer::Client)?.password,
                Some(f) => {
                    return client
                        .fatal(
                            sqlstate::PROTOCOL_VIOLATION,
                            &format!("expected a password message, got {:?}", char::from(f.tag)),
                            None,
                        )
                        .await;
                }
            },
        };
        client.reader.set_max(self.listener.max_message_bytes);
        let target_exists = self.targets.contains_key(&target_name);
        if !target_exists && target_name.len() > 63 {
            // Not recorded: an unauthenticated client would otherwise write
            // up to the startup packet's size into the audit trail per
            // connection. No target can be asked for by such a name.
            return client
                .fatal(
                    sqlstate::INVALID_CATALOG_NAME,
                    "the database name is longer than PostgreSQL's 63 bytes and names no target of this listener; use the target's name as the database name",
                    None,
                )
                .await;
        }
        if token.is_empty() {
            return client
                .fatal(
                    sqlstate::INVALID_PASSWORD,
                    "no access token: send your Airlock access token as the password (PGPASSWORD)",
                    None,
                )
                .await;
        }
        let identity = match gateway
            .authenticate(&token, &target_name, Self::PROTOCOL, &info)
            .await
        {
            Ok(identity) => identity,
            Err(e) => {
                let code = refusal_code(&e, target_exists);
                return client.fatal(code, &e.to_string(), None).await;
            }
        };
        // Logged in: no longer counted against its address.
        drop(login);
        if self.listener.require_user_match && user != identity.subject {
            let message = format!(
                "user name {user:?} does not match your token's subject {:?}; connect with user={}",
                identity.subject, identity.subject
            );
            let recorded = gateway
                .recorder()
                .record(
                    None,
                    Event::AccessDenied {
                        subject: Some(identity.subject.clone()),
                        target: target_name.clone(),
                        protocol: Self::PROTOCOL.to_string(),
                        client: info.clone(),
                        reason: message.clone(),
                    },
                )
                .await;
            if let Err(e) = recorded {
                return client
                    .fatal(sqlstate::SYSTEM_ERROR, &e.to_string(), None)
                    .await;
            }
            return client
                .fatal(sqlstate::INVALID_AUTHORIZATION, &message, None)
                .await;
        }
        let mut session = match gateway
            .open_session(identity, &target_name, Self::PROTOCOL, info)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                let code = refusal_code(&e, target_exists);
                return client.fatal(code, &e.to_string(), None).await;
            }
        };
        // Statements are recorded, and shown to approvers, with their code
        // in sight, however masking falls.
        session.set_text_masker(classify::mask_text);
        let Some(target) = self.targets.get(&target_name).cloned() else {
            let message = format!("target {target_name:?} is not served by this listener");
            let _ = session.end(&message).await;
            return client
                .fatal(sqlstate::INVALID_CATALOG_NAME, &message, None)
                .await;
        };

        // The settings the client asked for at startup reach the server
        // with the gateway's login (`search_path` decides which table a
        // statement's name is): recorded first, as statements are.
        if !params.is_empty() {
            let mut counts = MaskCounts::new();
            let settings = params
                .iter()
                .map(|(name, value)| {
                    let value = session.masker().mask_str(None, value, &mut counts);
                    format!("{name} = '{}'", value.replace('\'', "''"))
                })
                .collect::<Vec<_>>()
                .join(", ");
            if !counts.is_empty() {
                session.record_later(Event::Masked { counts });
            }
            let recorded = session
                .record(Event::Input {
                    data: format!("startup settings: {settings}"),
                })
                .await;
            if let Err(e) = recorded {
                let _ = session.end("the audit record could not be written").await;
                return client
                    .fatal(sqlstate::SYSTEM_ERROR, &e.to_string(), None)
                    .await;
            }
        }
        let connect_time = Duration::from_secs(self.listener.connect_timeout_secs.max(1));
        let upstream = match target.connect(&params, connect_time).await {
            Ok(u) => u,
            Err(upstream::LoginError { error, sqlstate }) => {
                // The server's words never hold the password, and are masked
                // anyway: the dictionary always holds every target credential.
                let mut counts = MaskCounts::new();
                let message = session
                    .masker()
                    .mask_str(None, &error.to_string(), &mut counts)
                    .into_owned();
                session.record_later(Event::Error {
                    side: error.side(),
                    message: message.clone(),
                });
                let _ = session.end("the target could not be reached").await;
                return client.fatal(sqlstate, &message, None).await;
            }
        };

        let local = Arc::new(cancel::Local::default());
        let key = self.cancels.register(cancel::Entry {
            target: target.clone(),
            pid: upstream.pid,
            secret: upstream.secret.clone(),
            addr: upstream.addr,
            local: local.clone(),
            gateway: gateway.clone(),
            session: session.id(),
        });
        client.send(&frame::encode(&Authentication::Ok)).await?;
        let masker = session.masker();
        let mut counts = MaskCounts::new();
        for (name, value) in &upstream.params {
            let value = masker.mask_str(None, value, &mut counts).into_owned();
            client
                .send(&frame::encode(&ParameterStatus::new(name.clone(), value)))
                .await?;
        }
        for notice in &upstream.notices {
            let mut n: pgwire::messages::response::NoticeResponse =
                notice.decode(Peer::Upstream)?;
            for (_, v) in n.fields.iter_mut() {
                *v = masker.mask_str(None, v, &mut counts).into_owned();
            }
            client.send(&frame::encode(&n)).await?;
        }
        if !counts.is_empty() {
            session.record_later(Event::Masked { counts });
        }
        let (pid, secret) = key.key();
        client
            .send(&frame::encode(&BackendKeyData::new(
                pid,
                SecretKey::I32(secret),
            )))
            .await?;
        client
            .send(&frame::ready_for_query(upstream.status))
            .await?;
        client.flush().await?;

        let cx = relay::Context {
            session: &session,
            classifier: &self.classifier,
            record_rows: self.listener.record_rows,
            cancel: local,
            catalog: self.catalogs.get(&target_name).cloned(),
        };
        let wires = relay::Wires {
            client_read: client.reader,
            client_write: client.writer,
            server_read: upstream.reader,
            server_write: BufWriter::new(upstream.write),
            status: upstream.status,
        };
        let outcome = relay::run(&cx, wires).await;
        drop(key);
        match outcome {
            Ok(reason) => session.end(&reason).await,
            Err(e) => {
                let mut counts = MaskCounts::new();
                let message = session
                    .masker()
                    .mask_str(None, &e.to_string(), &mut counts)
                    .into_owned();
                session.record_later(Event::Error {
                    side: e.side(),
                    message: message.clone(),
                });
                session.end(&message).await
            }
        }
    }
}

/// The startup user name as recorded: informational and not yet
/// authenticated when it is read, so it is cut to PostgreSQL's own limit for
/// names (63 bytes) and an empty one is none.
fn login_name(user: &str) -> Option<String> {
    if user.is_empty() {
        return None;
    }
    let mut end = user.len().min(63);
    while !user.is_char_boundary(end) {
        end -= 1;
    }
    Some(user[..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::{Slot, login_name};
    use std::sync::atomic::AtomicUsize;

    /// Of a burst of clients the first `max` get in; one over gets in once
    /// an earlier one has left.
    #[test]
    fn slots_admit_the_first_max_of_a_burst() {
        let open = AtomicUsize::new(0);
        let burst: Vec<Slot<'_>> = (0..3).map(|_| Slot::take(&open)).collect();
        let over: Vec<bool> = burst.iter().map(|s| s.over(2)).collect();
        assert_eq!(over, [false, false, true]);
        let mut burst = burst;
        burst.remove(0);
        assert!(burst.iter().all(|s| !s.over(2)));
        drop(burst);
        assert_eq!(open.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[test]
    fn login_names_are_cut_to_postgresqls_limit_on_a_character_boundary() {
        assert_eq!(login_name(""), None);
        assert_eq!(login_name("agent-1").as_deref(), Some("agent-1"));
        assert_eq!(login_name(&"x".repeat(500)).map(|s| s.len()), Some(63));
        // 62 ASCII bytes and a two-byte character: the character goes whole.
        let name = format!("{}é", "x".repeat(62));
        assert_eq!(login_name(&name).as_deref(), Some(&name[..62]));
    }
}
