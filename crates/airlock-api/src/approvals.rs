//! Approvals: list, read, approve, deny.

use airlock_core::approvals::{ApprovalStatus, DecideError};
use axum::Json;
use axum::extract::{Path, State};
use axum::response::Html;

use crate::auth::{Caller, Role};
use crate::error::{ApiBody, ApiQuery, ErrorBody};
use crate::views::{ApprovalQuery, ApprovalView, DecideBody};
use crate::{ApiError, ApiState, Result};

/// Lists approval requests, newest first.
#[utoipa::path(get, path = "/api/v1/approvals", operation_id = "listApprovals", params(ApprovalQuery), tag = "approvals",
    responses(
        (status = 200, description = "Approval requests, newest first", body = [ApprovalView]),
        (status = 400, description = "Unknown status", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Not an approver, auditor or admin", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ApprovalQuery>,
) -> Result<Json<Vec<ApprovalView>>> {
    caller.require(
        &[Role::Approver, Role::Auditor, Role::Admin],
        "list approvals",
    )?;
    let status = q
        .status
        .as_deref()
        .map(str::parse::<ApprovalStatus>)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let limit = q.limit.unwrap_or(1000).min(10_000);
    if limit == 0 {
        return Err(ApiError::bad_request(
            "`limit` must be at least 1 (at most 10000 approvals are listed)",
        ));
    }
    let list = state.gateway.approvals().list(status).await?;
    Ok(Json(
        list.iter().take(limit).map(ApprovalView::from).collect(),
    ))
}

/// One approval request.
#[utoipa::path(get, path = "/api/v1/approvals/{id}", operation_id = "getApproval", tag = "approvals",
    params(("id" = String, Path, description = "Approval id")),
    responses(
        (status = 200, description = "The approval request", body = ApprovalView),
        (status = 404, description = "No such approval", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Not an approver, auditor or admin", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn get(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ApprovalView>> {
    caller.require(
        &[Role::Approver, Role::Auditor, Role::Admin],
        "read approvals",
    )?;
    match state.gateway.approvals().get(&id).await? {
        Some(a) => Ok(Json(ApprovalView::from(&a))),
        None => Err(ApiError::not_found(format!("there is no approval {id}"))),
    }
}

async fn decide(
    state: &ApiState,
    caller: &Caller,
    id: &str,
    approve: bool,
    body: DecideBody,
) -> Result<Json<ApprovalView>> {
    caller.require(
        &[Role::Approver, Role::Admin],
        if approve {
            "approve requests"
        } else {
            "deny requests"
        },
    )?;
    let outcome = state
        .gateway
        .approvals()
        .decide(id, &caller.identity, approve, body.reason)
        .await?;
    match outcome {
        Ok(a) => Ok(Json(ApprovalView::from(&a))),
        Err(e @ DecideError::NotFound(_)) => Err(ApiError::not_found(e.to_string())),
        Err(e @ (DecideError::NotAnApprover { .. } | DecideError::SelfApproval { .. })) => {
            Err(ApiError::forbidden(e.to_string()))
        }
        Err(e @ (DecideError::NotPending { .. } | DecideError::AlreadyVoted { .. })) => {
            Err(ApiError::conflict(e.to_string()))
        }
        Err(e @ DecideError::ReasonRequired) => Err(ApiError::bad_request(e.to_string())),
    }
}

/// Approves a request. The caller must be in one of the rule's approver groups and not be the requester.
#[utoipa::path(post, path = "/api/v1/approvals/{id}/approve", operation_id = "approveApproval", tag = "approvals",
    params(("id" = String, Path, description = "Approval id")),
    request_body(content = DecideBody, description = "Optional reason", content_type = "application/json"),
    responses(
        (status = 200, description = "The vote was recorded; the approval as it stands now", body = ApprovalView),
        (status = 403, description = "Not allowed to approve this request", body = ErrorBody),
        (status = 404, description = "No such approval", body = ErrorBody),
        (status = 409, description = "Already decided, or already voted", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn approve(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiBody(body): ApiBody<DecideBody>,
) -> Result<Json<ApprovalView>> {
    decide(&state, &caller, &id, true, body).await
}

/// Denies a request with a reason, which the requester's client receives.
#[utoipa::path(post, path = "/api/v1/approvals/{id}/deny", operation_id = "denyApproval", tag = "approvals",
    params(("id" = String, Path, description = "Approval id")),
    request_body(content = DecideBody, description = "The reason (required)", content_type = "application/json"),
    responses(
        (status = 200, description = "The request is denied", body = ApprovalView),
        (status = 400, description = "No reason given", body = ErrorBody),
        (status = 403, description = "Not allowed to decide this request", body = ErrorBody),
        (status = 404, description = "No such approval", body = ErrorBody),
        (status = 409, description = "Already decided", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn deny(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiBody(body): ApiBody<DecideBody>,
) -> Result<Json<ApprovalView>> {
    decide(&state, &caller, &id, false, body).await
}

/// The page approval links point to: how to decide, for people without a UI client.
pub(crate) async fn page(Path(id): Path<String>) -> Html<String> {
    let id: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Airlock approval {id}</title></head>\
         <body style=\"font-family: sans-serif; max-width: 46em; margin: 2em auto\">\
         <h1>Approval {id}</h1>\
         <p>Look at it with the Airlock CLI (it asks the API with your token):</p>\
         <pre>airlock approvals show {id}</pre>\
         <h2 id=\"approve\">Approve</h2>\
         <pre>airlock approvals approve {id}</pre>\
         <p>or <code>POST /api/v1/approvals/{id}/approve</code> with \
         <code>Authorization: Bearer &lt;token&gt;</code>.</p>\
         <h2 id=\"deny\">Deny</h2>\
         <pre>airlock approvals deny {id} --reason \"...\"</pre>\
         <p>or <code>POST /api/v1/approvals/{id}/deny</code> with the token and \
         <code>{{\"reason\": \"...\"}}</code>. The API is described at \
         <a href=\"/api/v1/openapi.json\">/api/v1/openapi.json</a>.</p></body></html>"
    ))
}
