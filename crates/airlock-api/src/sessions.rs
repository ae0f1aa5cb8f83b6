//! Sessions and the audit trail.

use airlock_core::store::SessionFilter;
use airlock_core::{Event, SessionId};
use axum::Json;
use axum::extract::{Path, State};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::auth::{Caller, Role};
use crate::error::{ApiQuery, ErrorBody};
use crate::views::{EventsQuery, RecordView, SessionDetail, SessionQuery, SessionView, VerifyView};
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
        if let Some(text) = &q.q
            && !mentions(&state, s.id, &text.to_lowercase()).await?
        {
            continue;
        }
        out.push(SessionView::from(&s));
        if out.len() >= limit {
            break;
        }
    }
    Ok(Json(out))
}

/// Whether an operation of the session mentions `needle` (lower case). Read
/// a page at a time, up to the first mention.
async fn mentions(state: &ApiState, id: SessionId, needle: &str) -> Result<bool> {
    let mut after = 0;
    loop {
        let page = state
            .store
            .session_records(id, after, EVENTS_PAGE_MAX)
            .await?;
        let hit = page.iter().any(|r| match &r.event {
            Event::Operation { operation, .. } => {
                operation.summary().to_lowercase().contains(needle)
            }
            _ => false,
        });
        match page.last() {
            _ if hit => return Ok(true),
            Some(last) if page.len() == EVENTS_PAGE_MAX => after = last.seq,
            _ => return Ok(false),
        }
    }
}

/// The most records of a session one request returns.
const EVENTS_PAGE_MAX: usize = 10_000;

/// One session with its events (a replayable timeline), a page at a time.
#[utoipa::path(get, path = "/api/v1/sessions/{id}", operation_id = "getSession", tag = "sessions",
    params(("id" = String, Path, description = "Session id"), EventsQuery),
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
    ApiQuery(page): ApiQuery<EventsQuery>,
) -> Result<Json<SessionDetail>> {
    caller.require(&[Role::Auditor, Role::Admin], "read sessions")?;
    let limit = page.limit.unwrap_or(EVENTS_PAGE_MAX).min(EVENTS_PAGE_MAX);
    if limit == 0 {
        return Err(ApiError::bad_request(format!(
            "`limit` must be at least 1 (at most {EVENTS_PAGE_MAX} records are returned at once)"
        )));
    }
    let sid: SessionId = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{id:?} is not a session id (a UUID)")))?;
    let Some(summary) = state.store.session(sid).await? else {
        return Err(ApiError::not_found(format!("there is no session {id}")));
    };
    let records = state
        .store
        .session_records(sid, page.after.unwrap_or(0), limit)
        .await?;
    let next_after = (records.len() == limit)
        .then(|| records.last().map(|r| r.seq))
        .flatten();
    Ok(Json(SessionDetail {
        session: SessionView::from(&summary),
        events: records.iter().map(RecordView::from).collect(),
        next_after,
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
