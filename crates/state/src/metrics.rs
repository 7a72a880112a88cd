//! State metrics: whether each store runs degraded (the hot store serving from process
//! memory while Redis is unreachable, the database not answering its ping).

use crate::State;
use std::sync::Arc;
use std::time::Duration;

pub const DEGRADED: &str = "agentmesh_state_degraded";
/// How often the stores are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// A database ping slower than this counts as degraded.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

pub fn describe() {
    metrics::describe_gauge!(
        DEGRADED,
        "1 while a store is degraded (hot: Redis unreachable, served from memory; \
         database: not answering), by store and backend."
    );
    metrics::describe_counter!(
        crate::CALL_TIMEOUTS,
        "Database calls abandoned after their client-side timeout (the server did not \
         answer), by backend."
    );
}

/// Samples both stores every few seconds until `state` is dropped everywhere else.
/// Does nothing outside a Tokio runtime.
pub fn spawn_sampler(state: &State) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    describe();
    let db = Arc::downgrade(&state.db);
    let hot = Arc::downgrade(&state.hot);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tick.tick().await;
            let (Some(db), Some(hot)) = (db.upgrade(), hot.upgrade()) else {
                return;
            };
            record("hot", hot.backend(), hot.degraded());
            let ping = tokio::time::timeout(PING_TIMEOUT, db.ping()).await;
            record("database", db.backend(), !matches!(ping, Ok(Ok(()))));
        }
    });
}

fn record(store: &'static str, backend: &'static str, degraded: bool) {
    let value = if degraded { 1.0 } else { 0.0 };
    metrics::gauge!(DEGRADED, "store" => store, "backend" => backend).set(value);
}
