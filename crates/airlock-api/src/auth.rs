//! Bearer-token authentication and roles.

use airlock_core::Identity;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use crate::{ApiError, ApiState};

/// What a caller may do in the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// List and decide approvals.
    Approver,
    /// Read sessions, approvals and the audit trail.
    Auditor,
}

/// Which groups hold which role (from `[api]` in the configuration).
#[derive(Clone, Debug, Default)]
pub struct Roles {
    /// Groups with every role.
    pub admins: Vec<String>,
    /// Groups that may decide approvals.
    pub approvers: Vec<String>,
    /// Groups that may read sessions and verify the audit trail.
    pub auditors: Vec<String>,
}

impl Roles {
    /// Whether `identity` holds `role` (admins hold every role).
    pub fn has(&self, identity: &Identity, role: Role) -> bool {
        identity.in_any(&self.admins)
            || match role {
                Role::Admin => false,
                Role::Approver => identity.in_any(&self.approvers),
                Role::Auditor => identity.in_any(&self.auditors),
            }
    }
}

/// An authenticated API caller.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    pub(crate) identity: Identity,
    roles: Roles,
}

impl Caller {
    /// Refuses unless the caller holds one of `roles`.
    pub(crate) fn require(&self, roles: &[Role], action: &str) -> Result<(), ApiError> {
        if roles.iter().any(|r| self.roles.has(&self.identity, *r)) {
            return Ok(());
        }
        let names: Vec<&str> = roles
            .iter()
            .map(|r| match r {
                Role::Admin => "admin",
                Role::Approver => "approver",
                Role::Auditor => "auditor",
            })
            .collect();
        Err(ApiError::forbidden(format!(
            "{} may not {action}: it needs the {} role (groups listed in [api] of the gateway's configuration)",
            self.identity.subject,
            names.join(" or ")
        )))
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "no credentials: send `Authorization: Bearer <token>` (mint one with `airlock token`)",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
            })?;
        let identity = state.gateway.verify_token(token.trim()).await?;
        Ok(Caller {
            identity,
            roles: state.roles.clone(),
        })
    }
}
