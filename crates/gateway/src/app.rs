//! Shared gateway state, the route table and the per-request middleware.

use crate::agents::Agents;
use crate::config::GatewayConfig;
use crate::error::ApiError;
use crate::ledger::LedgerWriter;
use crate::metrics::Metrics;
use crate::routes::{admin, completions, conversations, datasets, documents, models, ops};
use agentmesh_state::State;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::Router;
use std::collections::HashMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tracing::Instrument;

/// Longest client-supplied `x-request-id` that is echoed; longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// What every handler shares.
pub struct Shared {
    pub config: GatewayConfig,
    pub state: State,
    pub agents: Agents,
    pub metrics: Metrics,
    draining: AtomicBool,
    /// Key id -> secret hash of keys this process has authenticated, so that rotate and
    /// revoke can drop the cached entry (stored keys do not expose their hash).
    key_hashes: Mutex<HashMap<String, String>>,
    /// Key id -> when this replica last wrote its `last_used_at`.
    touched: Mutex<HashMap<String, Instant>>,
    /// Key id -> cost of its recent requests (moving average), reserved from its budget
    /// when the next request is admitted.
    costs: Mutex<HashMap<String, f64>>,
    pub ledger: LedgerWriter,
    pub started_at: i64,
}

/// Cheap to clone; axum's handler state.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(config: GatewayConfig, state: State) -> anyhow::Result<Self> {
        config.validate()?;
        let agents = Agents::new(&config.agents, &config.pool)?;
        agentmesh_state::metrics::spawn_sampler(&state);
        let ledger = LedgerWriter::start(state.db.clone(), state.hot.clone());
        Ok(Self(Arc::new(Shared {
            config,
            state,
            agents,
            metrics: Metrics::default(),
            draining: AtomicBool::new(false),
            key_hashes: Mutex::new(HashMap::new()),
            touched: Mutex::new(HashMap::new()),
            costs: Mutex::new(HashMap::new()),
            ledger,
            started_at: chrono::Utc::now().timestamp(),
        })))
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn remember_key_hash(&self, key_id: &str, hash: &str) {
        if let Ok(mut hashes) = self.key_hashes.lock() {
            if hashes.get(key_id).map(String::as_str) != Some(hash) {
                hashes.insert(key_id.to_string(), hash.to_string());
            }
        }
    }

    /// True when the key's use should be written now: at most once per `interval` per
    /// replica, whatever the cached copy of the key says.
    pub fn should_touch(&self, key_id: &str, interval: std::time::Duration) -> bool {
        let Ok(mut touched) = self.touched.lock() else {
            return false;
        };
        let now = Instant::now();
        match touched.get(key_id) {
            Some(at) if now.duration_since(*at) < interval => false,
            _ => {
                touched.insert(key_id.to_string(), now);
                true
            }
        }
    }

    /// What a request of this key is expected to cost: the moving average of its recent
    /// requests on this replica, else the configured default.
    pub fn expected_cost(&self, key_id: &str) -> f64 {
        self.costs
            .lock()
            .ok()
            .and_then(|costs| costs.get(key_id).copied())
            .unwrap_or(self.config.budget_reserve_usd)
    }

    /// Folds a finished request's cost into the key's expected cost.
    pub fn observe_cost(&self, key_id: &str, cost: f64) {
        if let Ok(mut costs) = self.costs.lock() {
            let next = match costs.get(key_id) {
                Some(average) => 0.8 * average + 0.2 * cost,
                None => cost,
            };
            // Free requests converge to exactly zero, so that they skip corrections.
            let next = if next < 1e-9 { 0.0 } else { next };
            costs.insert(key_id.to_string(), next);
        }
    }

    pub fn forget_key_hash(&self, key_id: &str) -> Option<String> {
        self.key_hashes
            .lock()
            .ok()
            .and_then(|mut hashes| hashes.remove(key_id))
    }
}

/// The request id of the current request, set by the middleware before any handler runs.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The matched route template, passed from the inner to the outer middleware.
#[derive(Clone)]
struct RouteLabel(String);

pub fn build(app: AppState) -> Router {
    let limit = app.config.max_body_bytes;
    api_routes()
        .route_layer(middleware::from_fn(label_route))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(app.clone(), request_context))
        .with_state(app)
}

fn api_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(completions::openai))
        .route("/agent/{agent}/chat", post(completions::by_path))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::get_one))
        .route(
            "/v1/documents",
            post(documents::ingest).get(documents::list),
        )
        .route("/v1/documents/{id}", delete(documents::remove))
        .route("/v1/search", post(documents::search))
        .route("/v1/datasets", post(datasets::register).get(datasets::list))
        .route("/v1/datasets/{name}/query", post(datasets::query))
        .route(
            "/v1/conversations/{id}",
            get(conversations::get_one).delete(conversations::remove),
        )
        .route("/admin/keys", post(admin::create_key).get(admin::list_keys))
        .route("/admin/keys/{id}/rotate", post(admin::rotate_key))
        .route("/admin/keys/{id}", delete(admin::revoke_key))
        .route("/admin/usage", get(admin::usage))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
}

async fn label_route(request: Request, next: Next) -> Response {
    let label = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let mut response = next.run(request).await;
    if let Some(label) = label {
        response.extensions_mut().insert(RouteLabel(label));
    }
    response
}

/// Request id, span, metrics and the `x-request-id` response header for every request.
async fn request_context(
    axum::extract::State(app): axum::extract::State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|id| !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN)
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    request
        .extensions_mut()
        .insert(RequestId(request_id.clone()));
    let method = request.method().clone();
    let span = tracing::info_span!(
        "http",
        otel.name = %method,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        method = %method,
        path = %request.uri().path(),
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        request_id = %request_id,
        key_id = tracing::field::Empty,
        agent = tracing::field::Empty,
        model = tracing::field::Empty,
    );
    agentmesh_telemetry::propagation::set_parent_from_headers(&span, request.headers());

    app.metrics.started();
    let started = Instant::now();
    let run = next.run(request).instrument(span.clone());
    let (mut response, agent_time) = crate::metrics::with_agent_account(run).await;
    let elapsed = started.elapsed();

    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let route = response
        .extensions()
        .get::<RouteLabel>()
        .map(|r| r.0.clone())
        .unwrap_or_else(|| "unmatched".to_string());
    let status = response.status();
    app.metrics.finished(
        &route,
        method.as_str(),
        status.as_u16(),
        elapsed,
        agent_time,
    );
    record_outcome(&span, &method, &route, status);
    log_response(&span, status, elapsed);
    response
}

/// The route and status on the request's span (its exported name is `METHOD route`).
fn record_outcome(span: &tracing::Span, method: &Method, route: &str, status: StatusCode) {
    agentmesh_telemetry::rename_span(span, format!("{method} {route}"));
    span.record("http.route", route);
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

fn log_response(span: &tracing::Span, status: StatusCode, elapsed: std::time::Duration) {
    let _entered = span.enter();
    let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    if status.is_server_error() {
        tracing::warn!(status = status.as_u16(), elapsed_ms = ms, "request failed");
    } else {
        tracing::debug!(status = status.as_u16(), elapsed_ms = ms, "request done");
    }
}

async fn unknown_route(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path())).with_code("unknown_route")
}

async fn wrong_method(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed on {}", uri.path()),
    )
    .with_code("method_not_allowed")
}
