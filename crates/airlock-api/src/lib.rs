//! # airlock-api
//!
//! The REST API through which people approve operations, search and replay
//! sessions and verify the audit trail; plus health, readiness and
//! Prometheus metrics. Versioned under `/api/v1`, described by an OpenAPI
//! document generated from this code (`/api/v1/openapi.json`).
//!
//! Callers authenticate with the same bearer tokens as clients; what they may
//! do comes from their groups ([`Roles`]). Errors are JSON with a stable
//! `code` and a human `message`.
//!
//! ```no_run
//! # async fn run(state: airlock_api::ApiState) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! // `Some(rustls config)` for HTTPS (`airlock_core::tls::server_config`).
//! airlock_api::serve(listener, state, None).await
//! # }
//! ```

mod approvals;
mod auth;
mod error;
mod health;
mod openapi;
mod sessions;
pub mod views;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use airlock_core::Gateway;
use airlock_core::store::Store;
use axum::Router;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

pub use auth::{Role, Roles};
pub use error::{ApiError, ErrorBody, ErrorDetail, Result};
pub use openapi::openapi;

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The running gateway (token verification, approvals).
    pub gateway: Gateway,
    /// The store sessions and the audit chain are read from.
    pub store: Arc<dyn Store>,
    /// Which groups hold which role.
    pub roles: Roles,
    /// The checkpoint public key audit verification trusts.
    pub audit_key: Vec<u8>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("roles", &self.roles)
            .finish()
    }
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/api/v1/sessions", get(sessions::list))
        .route("/api/v1/sessions/{id}", get(sessions::get))
        .route("/api/v1/approvals", get(approvals::list))
        .route("/api/v1/approvals/{id}", get(approvals::get))
        .route("/api/v1/approvals/{id}/approve", post(approvals::approve))
        .route("/api/v1/approvals/{id}/deny", post(approvals::deny))
        .route("/api/v1/audit/verify", get(sessions::verify))
        .route("/approvals/{id}", get(approvals::page))
        .fallback(error::not_found)
        .with_state(state)
}

/// How long a client has to send its first byte and finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The first byte of a TLS connection (a handshake record).
const TLS_HANDSHAKE: u8 = 0x16;

/// How long a client may take to send a request's headers; it also ends a
/// kept-alive connection that sends no next request.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// HTTPS connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 512;

/// Serves the API on `listener` until the task is dropped: HTTPS with `tls`
/// (HTTP/1.1 over rustls), else plain HTTP.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    match tls {
        None => axum::serve(listener, router(state)).await,
        Some(tls) => serve_tls(listener, router(state), TlsAcceptor::from(tls)).await,
    }
}

async fn serve_tls(
    listener: TcpListener,
    app: Router,
    acceptor: TlsAcceptor,
) -> std::io::Result<()> {
    // Connections are tasks of this set, so dropping the server (at
    // shutdown) ends them too.
    let mut connections = JoinSet::new();
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
        let (app, acceptor) = (app.clone(), acceptor.clone());
        connections.spawn(async move {
            connection(socket, peer, app, acceptor).await;
            drop(permit);
        });
    }
}

/// One HTTPS connection. A client that speaks plain HTTP to it gets a 400
/// that says why (as PostgreSQL's listener answers a client that needs TLS
/// without it), not a connection closed without a word.
async fn connection(socket: TcpStream, peer: SocketAddr, app: Router, acceptor: TlsAcceptor) {
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let mut first = [0u8; 1];
    let tls = match tokio::time::timeout_at(deadline, socket.peek(&mut first)).await {
        Ok(Ok(0)) => return,
        Ok(Ok(_)) => first[0] == TLS_HANDSHAKE,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "API connection failed before its first byte");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "API client sent nothing in time");
            return;
        }
    };
    let served = if tls {
        let stream = match tokio::time::timeout_at(deadline, acceptor.accept(socket)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "API TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "API client did not finish the TLS handshake in time");
                return;
            }
        };
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
            .with_upgrades()
            .await
    } else {
        let answer = hyper::server::conn::http1::Builder::new()
            .keep_alive(false)
            .serve_connection(TokioIo::new(socket), service_fn(https_only));
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(served) => served,
            Err(_) => {
                tracing::debug!(%peer, "plain-HTTP client did not finish its request in time");
                return;
            }
        }
    };
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "API connection ended with an error");
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
