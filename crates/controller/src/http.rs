//! The controller's HTTP API: the agent endpoints (sync long-poll, reports) and the operator
//! endpoints (status, events, fault injection, switchover, demo hardware fault). Every route
//! requires the bearer token when one is configured.

use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use duplex_engine::Intent;
use duplex_model::wire::{ReportBatch, SyncRequest, SyncResponse};
use duplex_model::{FaultKind, HostId, Millis, PairId, UnitId};
use duplex_store::HistoryQuery;
use serde::Deserialize;

use crate::core::{ApiError, Handle, UnitSelector};

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

#[derive(Clone, Debug)]
struct Api {
    handle: Handle,
    lease_ms: Millis,
}

/// The API routes, served by `duplex controller` and `duplex up`.
pub fn router(handle: Handle, lease_ms: Millis) -> Router {
    let api = Api { handle, lease_ms };
    Router::new()
        .route("/v1/agents/{host}/sync", post(sync))
        .route("/v1/agents/{host}/reports", post(reports))
        .route("/v1/status", get(status))
        .route("/v1/events", get(events))
        .route("/v1/pairs/{pair}/fault", post(fault))
        .route("/v1/pairs/{pair}/switchover", post(switchover))
        .route("/v1/hosts/{host}/faulty", post(faulty))
        .layer(middleware::from_fn_with_state(api.clone(), auth))
        .with_state(api)
}

async fn auth(State(api): State<Api>, req: Request, next: Next) -> Response {
    if let Some(token) = &api.handle.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.as_ref()) {
            let body = Json(
                serde_json::json!({ "error": "missing or wrong bearer token: send `Authorization: Bearer <token>` (the controller's `token`)" }),
            );
            return (StatusCode::UNAUTHORIZED, body).into_response();
        }
    }
    next.run(req).await
}

async fn sync(
    State(api): State<Api>,
    Path(host): Path<String>,
    Json(req): Json<SyncRequest>,
) -> Result<Json<SyncResponse>, ApiError> {
    let host = HostId::new(host);
    let (mut commands, mut rx, acked) = api.handle.sync(host.clone(), req).await?;
    if commands.is_empty() {
        // Long-poll: hold the request until a command for this host is queued, or the poll
        // period passes; either way the agent's lease was renewed when the request came in.
        let _ = tokio::time::timeout(api.handle.poll, rx.wait_for(|seq| *seq > acked)).await;
        commands = api.handle.poll(host, acked).await?;
    }
    Ok(Json(SyncResponse {
        commands,
        lease_ms: api.lease_ms,
        controller: api.handle.boot.to_string(),
    }))
}

async fn reports(
    State(api): State<Api>,
    Path(host): Path<String>,
    Json(batch): Json<ReportBatch>,
) -> Result<Json<serde_json::Value>, ApiError> {
    api.handle.reports(HostId::new(host), batch).await?;
    Ok(Json(serde_json::json!({ "ok": true })))
}

async fn status(State(api): State<Api>) -> Result<Json<crate::view::StatusView>, ApiError> {
    Ok(Json(api.handle.status().await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsParams {
    pair: Option<String>,
    kind: Option<String>,
    after: Option<u64>,
    since_unix_ms: Option<u64>,
    limit: Option<usize>,
}

async fn events(
    State(api): State<Api>,
    Query(p): Query<EventsParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let query = HistoryQuery {
        pair: p.pair.map(PairId::new),
        kind: p.kind,
        after_seq: p.after,
        from_unix_ms: p.since_unix_ms,
        limit: Some(p.limit.unwrap_or(1000).min(10_000)),
        ..HistoryQuery::default()
    };
    let records = api.handle.events(query).await?;
    Ok(Json(
        serde_json::to_value(records).map_err(|e| ApiError::Internal(e.to_string()))?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultBody {
    /// `act`, `sby` or a unit name.
    unit: String,
    kind: FaultKind,
}

async fn fault(
    State(api): State<Api>,
    Path(pair): Path<String>,
    Json(body): Json<FaultBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let sel = match body.unit.as_str() {
        "act" => UnitSelector::Act,
        "sby" => UnitSelector::Sby,
        name => UnitSelector::Named(UnitId::new(name)),
    };
    let unit = api.handle.inject(PairId::new(pair), sel, body.kind).await?;
    Ok(Json(serde_json::json!({ "unit": unit, "kind": body.kind })))
}

async fn switchover(
    State(api): State<Api>,
    Path(pair): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    api.handle
        .intent(Intent::Switchover {
            pair: PairId::new(pair),
        })
        .await?;
    Ok(Json(serde_json::json!({ "ok": true })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultyBody {
    on: bool,
}

async fn faulty(
    State(api): State<Api>,
    Path(host): Path<String>,
    Json(body): Json<FaultyBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    api.handle.faulty(HostId::new(host), body.on).await?;
    Ok(Json(serde_json::json!({ "ok": true })))
}
