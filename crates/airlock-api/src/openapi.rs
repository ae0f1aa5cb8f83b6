//! The OpenAPI document, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{approvals, error, health, sessions, views};

#[derive(OpenApi)]
#[openapi(
    info(title = "Airlock API", description = "Approvals, sessions and the audit trail of an Airlock gateway."),
    paths(
        health::healthz, health::readyz, health::metrics,
        sessions::list, sessions::get, sessions::verify,
        approvals::list, approvals::get, approvals::approve, approvals::deny,
    ),
    components(schemas(
        error::ErrorBody, error::ErrorDetail, views::SessionView, views::SessionDetail, views::RecordView,
        views::ApprovalView, views::VoteView, views::DecideBody, views::VerifyView, views::ProblemView, views::Health,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "sessions", description = "Recorded sessions"),
        (name = "approvals", description = "Just-in-time approvals"),
        (name = "audit", description = "The tamper-evident audit trail"),
        (name = "health", description = "Health, readiness, metrics"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The API's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

pub(crate) async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}
