//! The API's one error type: a status, a stable code and a human message,
//! sent as `{"error": {"code": ..., "message": ...}}`.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An API error.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable, machine-readable code.
    pub code: &'static str,
    /// What happened and what to do.
    pub message: String,
}

/// The API's result type.
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The JSON body of every error.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// An error's code and message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable code: unauthorized, forbidden, not_found, bad_request, conflict, unavailable, internal.
    pub code: String,
    /// What happened and what to do.
    pub message: String,
}

impl ApiError {
    /// 401: no or bad credentials.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthorized",
            message: message.into(),
        }
    }
    /// 403: authenticated but not allowed.
    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
            message: message.into(),
        }
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
        }
    }
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
        }
    }
    /// 409: the resource is not in a state that allows this.
    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::CONFLICT,
            code: "conflict",
            message: message.into(),
        }
    }
    /// 429: one address holds as many API connections as it may.
    pub fn too_many_connections(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "too_many_connections",
            message: message.into(),
        }
    }
    /// 503.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            message: message.into(),
        }
    }
}

impl From<airlock_core::Error> for ApiError {
    fn from(e: airlock_core::Error) -> Self {
        use airlock_core::Error as E;
        match &e {
            E::Unauthenticated(_) => ApiError::unauthorized(e.to_string()),
            E::Forbidden(_) => ApiError::forbidden(e.to_string()),
            E::Store(_) => ApiError::unavailable(e.to_string()),
            _ => ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                code: "internal",
                message: e.to_string(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"airlock\""),
            );
        }
        response
    }
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; the API is described at /api/v1/openapi.json")
}
