//! Sessions and the audit trail.

use airlock_core::store::SessionFilter;
use airlock_core::{Event, SessionId};
use axum::Json;
use axum::extract::{Path, State};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::auth::{Caller, Role};
use crate::error::{ApiQuery, ErrorBody};
use crate::views::{RecordView, SessionDetail, SessionQuery, SessionView, VerifyView};
use crate::{ApiError, ApiState, Result};

fn time_param(name: &str, value: &Option<String>) -> Result<Option<OffsetDateTime>> {
    value
        .as_deref()
        .map(|v| {
            OffsetDateTime::parse(v, &Rfc3339).map_err(|_| {
                ApiError::bad_request(format!(
                    "`{name}` must be an RFC 3339 time like 2026-11-22T08:00:00Z, not {v:?}"
                ))
            })
        })
        .transpose()
}

/// Lists sessions, newest first.
#[utoipa::path(get, path = "/api/v1/sessions", operation_id = "listSessions", params(SessionQuery), tag = "sessions",
    responses(
        (status = 200, description = "Matching sessions, newest first", body = [SessionView]),
        (status = 400, description = "Bad filter", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Not an auditor or admin", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<SessionQuery>,
) -> Result<Json<Vec<SessionView>>> {
    caller.require(&[Role::Auditor, Role::Admin], "read sessions")?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    if limit == 0 {
        return Err(ApiError::bad_request(
            "`limit` must be at least 1 (at most 10000 sessions are listed)",
        ));
    }
    let filter = SessionFilter {
        user: q.user.clone(),
        target: q.target.clone(),
        protocol: q.protocol.clone(),
        since: time_param("since", &q.since)?,
        until: time_param("until", &q.until)?,
        // The text search filters after the index, so it cannot be limited there.
        limit: if q.q.is_some() { 0 } else { limit },
    };
    let mut out = Vec::new();
    for s in state.store.sessions(&filter).await? {
        if let Some(text) = &q.q {
            let needle = text.to_lowercase();
            let records = state.store.session_records(s.id).await?;
            let hit = records.iter().any(|r| match &r.event {
                Event::Operation { operation, .. } => {
                    operation.summary().to_lowercase().contains(&needle)
                }
                _ => false,
            });
            if !hit {
                continue;
            }
        }
        out.push(SessionView::from(&s));
        if out.len() >= limit {
            break;
        }
    }
    Ok(Json(out))
}

/// One session with its events (a replayable timeline).
#[utoipa::path(get, path = "/api/v1/sessions/{id}", operation_id = "getSession", tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "The session and its events", body = SessionDetail),
        (status = 404, description = "No such session", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Not an auditor or admin", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn get(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SessionDetail>> {
    caller.require(&[Role::Auditor, Role::Admin], "read sessions")?;
    let sid: SessionId = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{id:?} is not a session id (a UUID)")))?;
    let Some(summary) = state.store.session(sid).await? else {
        return Err(ApiError::not_found(format!("there is no session {id}")));
    };
    let records = state.store.session_records(sid).await?;
    Ok(Json(SessionDetail {
        session: SessionView::from(&summary),
        events: records.iter().map(RecordView::from).collect(),
    }))
}

/// Verifies the whole audit chain and its signed checkpoints.
#[utoipa::path(get, path = "/api/v1/audit/verify", operation_id = "verifyAudit", tag = "audit",
    responses(
        (status = 200, description = "The verification report (check `ok`)", body = VerifyView),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Not an auditor or admin", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn verify(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<VerifyView>> {
    caller.require(&[Role::Auditor, Role::Admin], "verify the audit trail")?;
    let report = airlock_core::audit::verify(state.store.as_ref(), &state.audit_key).await?;
    Ok(Json(VerifyView::from(&report)))
}
