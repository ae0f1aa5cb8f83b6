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

/// A query string, read into `T`; one that does not fit is a 400 with the
/// API's JSON error body (axum's own rejection is plain text).
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(q)| ApiQuery(q))
            .map_err(|e| {
                ApiError::bad_request(format!(
                    "the query string does not fit this endpoint: {}; see /api/v1/openapi.json",
                    e.body_text()
                ))
            })
    }
}

/// An optional JSON body, read into `T` whatever its content type says (a
/// client that left the header out must not lose, say, an approver's
/// reason); an empty body is `T::default()`, one that is not JSON a 400
/// with the API's JSON error body.
pub(crate) struct ApiBody<T>(pub(crate) T);

impl<T, S> axum::extract::FromRequest<S> for ApiBody<T>
where
    T: serde::de::DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                ApiError::bad_request(format!(
                    "the request body could not be read: {}",
                    e.body_text()
                ))
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(ApiBody(T::default()));
        }
        serde_json::from_slice(&bytes).map(ApiBody).map_err(|e| {
            ApiError::bad_request(format!(
                "the request body must be JSON such as {{\"reason\": \"...\"}}: {e}"
            ))
        })
    }
}
