//! Health, readiness and metrics.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::views::Health;
use crate::{ApiError, ApiState, Result};

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Alive", body = Health)))]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Readiness: the audit store answers and its last write succeeded (the
/// gateway refuses every action otherwise).
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "The audit store is not usable", body = crate::error::ErrorBody),
    ))]
pub(crate) async fn readyz(State(state): State<ApiState>) -> Result<Json<Health>> {
    if let Some(e) = state.gateway.recorder().write_failure() {
        return Err(ApiError::unavailable(format!(
            "not ready: the audit store's last write failed ({e}); every action is refused until a write succeeds"
        )));
    }
    match state.store.head().await {
        Ok(_) => Ok(Json(Health {
            status: "ok".into(),
        })),
        Err(e) => Err(ApiError::unavailable(format!("not ready: {e}"))),
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Counters in Prometheus text format", content_type = "text/plain")))]
pub(crate) async fn metrics() -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        airlock_core::telemetry::METRICS.render(),
    )
}
