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
mod serve;
mod sessions;
pub mod views;

use std::sync::Arc;

use airlock_core::Gateway;
use airlock_core::store::Store;
use axum::Router;
use axum::routing::{get, post};

pub use auth::{Role, Roles};
pub use error::{ApiError, ErrorBody, ErrorDetail, Result};
pub use openapi::openapi;
pub use serve::{Limits, serve_with};

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

/// Serves the API on `listener` until the task is dropped: HTTPS with `tls`
/// (HTTP/1.1 over rustls), else plain HTTP, within the default [`Limits`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    serve_with(listener, router(state), tls, Limits::default()).await
}
