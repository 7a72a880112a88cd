//! The gateway's Prometheus metrics, rendered as text exposition on `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the request duration histogram.
const BUCKETS: [f64; 10] = [0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Labels are bounded: routes are matched path templates, never raw paths.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    durations: Mutex<BTreeMap<String, Histogram>>,
    in_flight: AtomicI64,
    agent_errors: Mutex<BTreeMap<(String, u16), u64>>,
    usage_write_failures: AtomicU64,
}

impl Metrics {
    pub fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn finished(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut requests) = self.requests.lock() {
            *requests
                .entry((route.into(), method.into(), status))
                .or_default() += 1;
        }
        if let Ok(mut durations) = self.durations.lock() {
            let histogram = durations.entry(route.into()).or_default();
            let seconds = elapsed.as_secs_f64();
            for (count, bound) in histogram.counts.iter_mut().zip(BUCKETS) {
                if seconds <= bound {
                    *count += 1;
                }
            }
            histogram.count += 1;
            histogram.sum += seconds;
        }
    }

    pub fn agent_error(&self, agent: &str, status: u16) {
        if let Ok(mut errors) = self.agent_errors.lock() {
            *errors.entry((agent.into(), status)).or_default() += 1;
        }
    }

    pub fn usage_write_failed(&self) {
        self.usage_write_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_requests(&mut out);
        self.render_durations(&mut out);
        header(
            &mut out,
            "requests_in_flight",
            "gauge",
            "HTTP requests being served.",
        );
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let _ = writeln!(out, "agentmesh_gateway_requests_in_flight {in_flight}");
        self.render_agent_errors(&mut out);
        header(
            &mut out,
            "usage_write_failures_total",
            "counter",
            "Usage rows not recorded.",
        );
        let failures = self.usage_write_failures.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "agentmesh_gateway_usage_write_failures_total {failures}"
        );
        out
    }

    fn render_requests(&self, out: &mut String) {
        header(out, "requests_total", "counter", "HTTP requests answered.");
        if let Ok(requests) = self.requests.lock() {
            for ((route, method, status), count) in requests.iter() {
                let _ = writeln!(
                    out,
                    "agentmesh_gateway_requests_total{{route=\"{}\",method=\"{}\",status=\"{}\"}} \
                     {count}",
                    escape(route),
                    escape(method),
                    status
                );
            }
        }
    }

    fn render_durations(&self, out: &mut String) {
        let name = "agentmesh_gateway_request_duration_seconds";
        header(
            out,
            "request_duration_seconds",
            "histogram",
            "HTTP request duration.",
        );
        let Ok(durations) = self.durations.lock() else {
            return;
        };
        for (route, histogram) in durations.iter() {
            let route = escape(route);
            for (count, bound) in histogram.counts.iter().zip(BUCKETS) {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{route=\"{route}\",le=\"{bound}\"}} {count}"
                );
            }
            let total = histogram.count;
            let _ = writeln!(
                out,
                "{name}_bucket{{route=\"{route}\",le=\"+Inf\"}} {total}"
            );
            let _ = writeln!(out, "{name}_sum{{route=\"{route}\"}} {}", histogram.sum);
            let _ = writeln!(out, "{name}_count{{route=\"{route}\"}} {total}");
        }
    }

    fn render_agent_errors(&self, out: &mut String) {
        header(
            out,
            "agent_errors_total",
            "counter",
            "Agent calls that failed, by HTTP status.",
        );
        if let Ok(errors) = self.agent_errors.lock() {
            for ((agent, status), count) in errors.iter() {
                let _ = writeln!(
                    out,
                    "agentmesh_gateway_agent_errors_total{{agent=\"{}\",status=\"{status}\"}} \
                     {count}",
                    escape(agent)
                );
            }
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP agentmesh_gateway_{name} {help}");
    let _ = writeln!(out, "# TYPE agentmesh_gateway_{name} {kind}");
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_histogram() {
        let metrics = Metrics::default();
        metrics.started();
        metrics.finished("/v1/models", "GET", 200, Duration::from_millis(30));
        let text = metrics.render();
        assert!(text.contains(
            "agentmesh_gateway_requests_total{route=\"/v1/models\",method=\"GET\",status=\"200\"} 1"
        ));
        assert!(text.contains(
            "agentmesh_gateway_request_duration_seconds_bucket{route=\"/v1/models\",le=\"0.1\"} 1"
        ));
        assert!(text.contains(
            "agentmesh_gateway_request_duration_seconds_bucket{route=\"/v1/models\",le=\"0.025\"} 0"
        ));
        assert!(text.contains("agentmesh_gateway_requests_in_flight 0"));
    }
}
