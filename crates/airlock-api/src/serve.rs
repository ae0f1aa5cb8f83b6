//! The API's connections: one loop for HTTP and HTTPS, with limits.
//!
//! The API is where people decide approvals, so a client must not be able
//! to take it away from them by holding connections open: the agents the
//! gateway guards can reach it too. Every connection gets a deadline for its
//! request headers (which also ends an idle kept-alive connection), a
//! deadline for a write that makes no progress (a client that stops reading
//! its answers), and a share of the connections: one address holds at most
//! `per_peer` of them, and its next one is answered 429 (outside the
//! connection budget, briefly) and closed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::response::IntoResponse;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_io_timeout::TimeoutStream;
use tokio_rustls::TlsAcceptor;

use crate::ApiError;

/// The first byte of a TLS connection (a handshake record).
const TLS_HANDSHAKE: u8 = 0x16;

/// Connections being told they are over their address's share, at most.
const REFUSALS: usize = 64;

/// How long a refused client has to send its request and read the answer.
const REFUSAL_TIME: Duration = Duration::from_secs(2);

/// What the API allows each connection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Connections one address (an IPv6 /64) may hold; its next one is
    /// answered 429.
    pub per_peer: usize,
    /// On the HTTPS port, how long a client has to send its first byte and
    /// finish the TLS handshake; also how long a plain-HTTP client there and
    /// a refused one have to send a request and read the answer.
    pub handshake: Duration,
    /// How long a client may take to send a request's headers; it also
    /// ends a kept-alive connection that sends no next request.
    pub headers: Duration,
    /// How long a read or a write may wait without any progress before the
    /// connection is dropped.
    pub stall: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 512,
            // Browsers open six per host; scripts and a reverse proxy in
            // front may need more. Still far from the whole budget.
            per_peer: 64,
            handshake: Duration::from_secs(10),
            headers: Duration::from_secs(30),
            stall: Duration::from_secs(30),
        }
    }
}

/// Serves `app` on `listener` until the task is dropped: HTTPS with `tls`
/// (HTTP/1.1 over rustls), else plain HTTP, within `limits`.
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
) -> std::io::Result<()> {
    let acceptor = tls.map(TlsAcceptor::from);
    // Connections are tasks of this set, so dropping the server (at
    // shutdown) ends them too.
    let mut connections = JoinSet::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // Refusals are answered outside the connection budget, so that an
    // address over its share cannot spend that budget on being refused.
    let refusals = Arc::new(Semaphore::new(REFUSALS));
    let peers = Arc::new(Peers::default());
    loop {
        while connections.try_join_next().is_some() {}
        // The semaphore is never closed.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return Ok(());
        };
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it
                // was taken: neither ends the server (as `axum::serve`).
                tracing::warn!(error = %e, "the API cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let conn = Connection {
            peer,
            limits,
            acceptor: acceptor.clone(),
        };
        if let Some(share) = peers.enter(airlock_core::address_holder(peer.ip()), limits.per_peer) {
            let app = app.clone();
            connections.spawn(async move {
                conn.serve(socket, app).await;
                drop((share, permit));
            });
            continue;
        }
        drop(permit);
        tracing::warn!(%peer, per_peer = limits.per_peer, "API connection refused: too many from this address");
        // With too many refusals under way, the rest are closed unanswered.
        if let Ok(refusal) = refusals.clone().try_acquire_owned() {
            connections.spawn(async move {
                conn.refuse(socket).await;
                drop(refusal);
            });
        }
    }
}

/// How many connections each address holds.
#[derive(Default)]
struct Peers(Mutex<HashMap<IpAddr, usize>>);

impl Peers {
    /// A share for one more connection from `ip`, if it has fewer than `max`.
    fn enter(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<Share> {
        let mut held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = held.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Share {
            peers: self.clone(),
            ip,
        })
    }
}

/// One connection's place in its address's count, given back on drop.
struct Share {
    peers: Arc<Peers>,
    ip: IpAddr,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut held = self.peers.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

/// A socket whose writes may not stall for longer than the limit.
///
/// Reads get no such deadline: hyper reads while it waits for a slow
/// handler (to notice a client that left), and an audit verification may
/// rightly take longer than any stall limit. Slow request headers meet the
/// header deadline; a trickled body holds one share of its address.
type Guarded = Pin<Box<TimeoutStream<TcpStream>>>;

enum Opened {
    Plain(TokioIo<Guarded>),
    /// Plain HTTP on the HTTPS port.
    PlainOnHttps(TokioIo<Guarded>),
    // Boxed: a TLS session is large, the other two are a pointer.
    Tls(TokioIo<Box<tokio_rustls::server::TlsStream<Guarded>>>),
}

struct Connection {
    peer: SocketAddr,
    limits: Limits,
    acceptor: Option<TlsAcceptor>,
}

impl Connection {
    /// Serves the API's routes. On the HTTPS port a client that speaks
    /// plain HTTP gets a 400 that says why (as PostgreSQL's listener answers
    /// a client that needs TLS without it), not a closed connection.
    async fn serve(self, socket: TcpStream, app: Router) {
        let app = TowerToHyperService::new(app);
        let peer = self.peer;
        let served = match self.open(socket).await {
            Some(Opened::Plain(io)) => self.http().serve_connection(io, app).with_upgrades().await,
            Some(Opened::Tls(io)) => self.http().serve_connection(io, app).with_upgrades().await,
            Some(Opened::PlainOnHttps(io)) => {
                let deadline = tokio::time::Instant::now() + self.limits.handshake;
                let answer = self.once().serve_connection(io, service_fn(https_only));
                match tokio::time::timeout_at(deadline, answer).await {
                    Ok(served) => served,
                    Err(_) => {
                        tracing::debug!(%peer, "plain-HTTP client did not finish its request in time");
                        return;
                    }
                }
            }
            None => return,
        };
        if let Err(e) = served {
            tracing::debug!(%peer, error = %e, "API connection ended with an error");
        }
    }

    /// Answers one request with 429 and closes, within a short deadline:
    /// the client learns why without taking a share.
    async fn refuse(self, socket: TcpStream) {
        let per_peer = self.limits.per_peer;
        let refusal = service_fn(move |_request| async move {
            Ok::<_, std::convert::Infallible>(
                ApiError::too_many_connections(format!(
                    "this address already holds {per_peer} connections to the API, the most one address may; close idle ones (or reuse them) and retry"
                ))
                .into_response(),
            )
        });
        let deadline = tokio::time::Instant::now() + self.limits.handshake.min(REFUSAL_TIME);
        let answer = async {
            match self.open(socket).await {
                Some(Opened::Plain(io) | Opened::PlainOnHttps(io)) => {
                    self.once().serve_connection(io, refusal).await
                }
                Some(Opened::Tls(io)) => self.once().serve_connection(io, refusal).await,
                None => Ok(()),
            }
        };
        let _ = tokio::time::timeout_at(deadline, answer).await;
    }

    /// The HTTP/1.1 server for the API's routes.
    fn http(&self) -> hyper::server::conn::http1::Builder {
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.limits.headers);
        http
    }

    /// The HTTP/1.1 server for a single answer.
    fn once(&self) -> hyper::server::conn::http1::Builder {
        let mut http = hyper::server::conn::http1::Builder::new();
        http.keep_alive(false);
        http
    }

    /// Waits for the first byte and, on the HTTPS port, the TLS handshake,
    /// within the handshake deadline.
    async fn open(&self, socket: TcpStream) -> Option<Opened> {
        let peer = self.peer;
        let deadline = tokio::time::Instant::now() + self.limits.handshake;
        let Some(acceptor) = &self.acceptor else {
            return Some(Opened::Plain(TokioIo::new(self.guard(socket))));
        };
        let mut first = [0u8; 1];
        match tokio::time::timeout_at(deadline, socket.peek(&mut first)).await {
            Ok(Ok(0)) => None,
            Ok(Ok(_)) if first[0] != TLS_HANDSHAKE => {
                Some(Opened::PlainOnHttps(TokioIo::new(self.guard(socket))))
            }
            Ok(Ok(_)) => {
                let handshake = acceptor.accept(self.guard(socket));
                match tokio::time::timeout_at(deadline, handshake).await {
                    Ok(Ok(stream)) => Some(Opened::Tls(TokioIo::new(Box::new(stream)))),
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "API TLS handshake failed");
                        None
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "API client did not finish the TLS handshake in time");
                        None
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "API connection failed before its first byte");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "API client sent nothing in time");
                None
            }
        }
    }

    fn guard(&self, socket: TcpStream) -> Guarded {
        let mut io = TimeoutStream::new(socket);
        io.set_write_timeout(Some(self.limits.stall));
        Box::pin(io)
    }
}

/// The answer to a plain HTTP request on the HTTPS port. It is not
/// processed; its token has crossed the network in clear text all the same.
async fn https_only(
    request: hyper::Request<hyper::body::Incoming>,
) -> std::result::Result<axum::response::Response, std::convert::Infallible> {
    let host = request
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("<host:port>");
    let mut message = format!(
        "this API speaks HTTPS only; the request was not processed: use https://{host}{}",
        request.uri().path()
    );
    if request.headers().contains_key(hyper::header::AUTHORIZATION) {
        message.push_str(
            " (the token in this request crossed the network in clear text: treat it as exposed)",
        );
    }
    Ok(ApiError::bad_request(message).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_site_shares_one_count_and_mapped_ipv4_counts_as_ipv4() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            airlock_core::address_holder(ip("192.0.2.7")),
            ip("192.0.2.7")
        );
        assert_eq!(
            airlock_core::address_holder(ip("::ffff:192.0.2.7")),
            ip("192.0.2.7")
        );
        assert_eq!(
            airlock_core::address_holder(ip("2001:db8:1:2:aaaa::1")),
            airlock_core::address_holder(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_eq!(
            airlock_core::address_holder(ip("2001:db8:1:2:aaaa::1")),
            ip("2001:db8:1:2::")
        );
        assert_ne!(
            airlock_core::address_holder(ip("2001:db8:1:2::1")),
            airlock_core::address_holder(ip("2001:db8:1:3::1"))
        );
    }
}
