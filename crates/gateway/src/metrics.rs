//! The gateway's metrics, recorded in the process registry (`agentmesh_telemetry::metrics`)
//! and rendered on `/metrics` with every other crate's. Labels are bounded: routes are
//! matched path templates (`unmatched` otherwise), never raw paths or ids.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const REQUESTS: &str = "agentmesh_gateway_requests_total";
const DURATION: &str = "agentmesh_gateway_request_duration_seconds";
const OVERHEAD: &str = "agentmesh_gateway_overhead_seconds";
const IN_FLIGHT: &str = "agentmesh_gateway_requests_in_flight";
const AGENT_ERRORS: &str = "agentmesh_gateway_agent_errors_total";
const USAGE_WRITE_FAILURES: &str = "agentmesh_gateway_usage_write_failures_total";
const RATE_LIMITED: &str = "agentmesh_gateway_rate_limited_total";
const BUDGET_USED: &str = "agentmesh_gateway_budget_used_ratio";

tokio::task_local! {
    /// Microseconds the current request spent waiting on agents.
    static AGENT_MICROS: Arc<AtomicU64>;
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        REQUESTS,
        "HTTP requests answered, by route, method and status."
    );
    describe_histogram!(
        DURATION,
        Unit::Seconds,
        "HTTP request duration to the response head, by route."
    );
    describe_histogram!(
        OVERHEAD,
        Unit::Seconds,
        "Time the gateway itself spent on a request (duration minus time waiting on agents)."
    );
    describe_gauge!(IN_FLIGHT, "HTTP requests being served.");
    describe_counter!(
        AGENT_ERRORS,
        "Agent calls that failed, by agent and HTTP status."
    );
    describe_counter!(USAGE_WRITE_FAILURES, "Usage rows not recorded.");
    describe_counter!(
        RATE_LIMITED,
        "Requests refused with 429, by reason (requests, tokens, budget)."
    );
    describe_gauge!(
        BUDGET_USED,
        "Highest share of its budget spent by any key this replica has checked (0 to 1+)."
    );
}

/// A usage row that could not be written yet (the ledger writer retries it).
pub fn usage_write_failed() {
    metrics::counter!(USAGE_WRITE_FAILURES).increment(1);
}

/// The gateway's recording side; the values live in the process registry.
pub struct Metrics {
    /// Budget share per key id, so that the gauge reports the highest one.
    budgets: Mutex<HashMap<String, f64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        agentmesh_telemetry::metrics::install();
        describe();
        metrics::gauge!(IN_FLIGHT).increment(0.0);
        Self {
            budgets: Mutex::new(HashMap::new()),
        }
    }
}

impl Metrics {
    pub fn started(&self) {
        metrics::gauge!(IN_FLIGHT).increment(1.0);
    }

    /// Records a finished request; `agent_time` is what it spent waiting on agents.
    pub fn finished(
        &self,
        route: &str,
        method: &str,
        status: u16,
        elapsed: Duration,
        agent_time: Duration,
    ) {
        metrics::gauge!(IN_FLIGHT).decrement(1.0);
        let labels = [
            ("route", route.to_string()),
            ("method", method.to_string()),
            ("status", status.to_string()),
        ];
        metrics::counter!(REQUESTS, &labels).increment(1);
        let route = route.to_string();
        metrics::histogram!(DURATION, "route" => route.clone()).record(elapsed.as_secs_f64());
        let overhead = elapsed.saturating_sub(agent_time);
        metrics::histogram!(OVERHEAD, "route" => route).record(overhead.as_secs_f64());
    }

    pub fn agent_error(&self, agent: &str, status: u16) {
        let labels = [("agent", agent.to_string()), ("status", status.to_string())];
        metrics::counter!(AGENT_ERRORS, &labels).increment(1);
    }

    /// A 429; `reason` is one of `requests`, `tokens`, `budget`.
    pub fn rate_limited(&self, reason: &'static str) {
        metrics::counter!(RATE_LIMITED, "reason" => reason).increment(1);
    }

    /// The share of its budget key `key_id` has spent, as last checked.
    pub fn budget_used(&self, key_id: &str, share: f64) {
        let Ok(mut budgets) = self.budgets.lock() else {
            return;
        };
        budgets.insert(key_id.to_string(), share);
        let highest = budgets.values().copied().fold(0.0, f64::max);
        metrics::gauge!(BUDGET_USED).set(highest);
    }

    pub fn render(&self) -> String {
        agentmesh_telemetry::metrics::render()
    }
}

/// Runs `request` with a fresh agent-time account; returns its output and the time
/// it spent in [`agent_time`].
pub async fn with_agent_account<F: Future>(request: F) -> (F::Output, Duration) {
    let account = Arc::new(AtomicU64::new(0));
    let output = AGENT_MICROS.scope(account.clone(), request).await;
    let micros = account.load(Ordering::Relaxed);
    (output, Duration::from_micros(micros))
}

/// Awaits `call` (a call to an agent), adding its duration to the request's agent time.
pub async fn agent_time<F: Future>(call: F) -> F::Output {
    let started = Instant::now();
    let output = call.await;
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let _ = AGENT_MICROS.try_with(|account| account.fetch_add(micros, Ordering::Relaxed));
    output
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn renders_counts_histograms_and_overhead() {
        let metrics = Metrics::default();
        metrics.started();
        let ((), agent) = with_agent_account(async {
            agent_time(tokio::time::sleep(Duration::from_millis(20))).await;
        })
        .await;
        assert!(agent >= Duration::from_millis(20), "{agent:?}");
        let route = "/test/metrics-unit";
        let elapsed = agent + Duration::from_millis(3);
        metrics.finished(route, "GET", 200, elapsed, agent);
        metrics.rate_limited("budget");
        metrics.budget_used("k1", 0.5);
        metrics.budget_used("k2", 0.95);
        let text = metrics.render();
        assert!(text.contains(
            "agentmesh_gateway_requests_total{route=\"/test/metrics-unit\",method=\"GET\",\
             status=\"200\"} 1"
        ));
        let bucket = "agentmesh_gateway_overhead_seconds_bucket{route=\"/test/metrics-unit\"";
        assert!(
            text.contains(&format!("{bucket},le=\"0.005\"}} 1")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{bucket},le=\"0.001\"}} 0")),
            "{text}"
        );
        assert!(text.contains("agentmesh_gateway_rate_limited_total{reason=\"budget\"}"));
        assert!(text.contains("agentmesh_gateway_budget_used_ratio 0.95"));
        assert!(text.contains("# TYPE agentmesh_gateway_requests_in_flight gauge"));
    }
}
