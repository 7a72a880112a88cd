//! The usage ledger writer: settled requests are queued and written in batches by one
//! background task, so the request path never waits for the database and a burst of
//! requests costs one transaction per batch instead of one per request.
//!
//! Nothing is dropped on a busy or failing database: the queue is bounded (a full queue
//! makes the settling task wait, not the client), a batch the database could not take
//! is retried with backoff until it lands, and shutdown flushes what is queued.

use agentmesh_state::{Database, Hot, StateError, UsageRecord};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Settled requests waiting to be written; beyond this, settling waits for room.
const QUEUE: usize = 16_384;
/// Most records per transaction.
const BATCH: usize = 512;
/// After the first record of a batch, how long the writer waits for more: under load a
/// commit then carries many rows instead of one; when idle a row lands this much later.
const LINGER: Duration = Duration::from_millis(5);
/// Waits between attempts at a batch the database refused for being unavailable.
const BACKOFF: [Duration; 5] = [
    Duration::from_millis(50),
    Duration::from_millis(200),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

/// One finished request: its ledger row and the corrections of the hot counters.
#[derive(Debug)]
pub struct Settled {
    pub record: UsageRecord,
    /// Tokens used minus tokens charged up front (per-minute token limit).
    pub token_correction: Option<i64>,
    /// Cost minus the spend reserved up front (budget).
    pub spend_correction: Option<f64>,
}

enum Item {
    Settled(Box<Settled>),
    Flush(oneshot::Sender<()>),
}

/// Cheap to clone; every clone feeds the same writer task.
#[derive(Clone)]
pub struct LedgerWriter {
    queue: mpsc::Sender<Item>,
}

impl LedgerWriter {
    /// Starts the writer task on the current runtime.
    pub fn start(db: Arc<dyn Database>, hot: Arc<dyn Hot>) -> Self {
        let (queue, items) = mpsc::channel(QUEUE);
        tokio::spawn(run(items, db, hot));
        Self { queue }
    }

    /// Queues a settled request without waiting (callable from `Drop`).
    pub fn submit(&self, settled: Settled) {
        let item = Item::Settled(Box::new(settled));
        match self.queue.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(item)) => {
                let queue = self.queue.clone();
                tokio::spawn(async move {
                    if queue.send(item).await.is_err() {
                        tracing::error!("usage writer stopped; usage record lost");
                    }
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("usage writer stopped; usage record lost");
            }
        }
    }

    /// Waits until everything queued before this call is written (or `limit` passes).
    pub async fn flush(&self, limit: Duration) -> bool {
        let (done, written) = oneshot::channel();
        let flushed =
            async { self.queue.send(Item::Flush(done)).await.is_ok() && written.await.is_ok() };
        tokio::time::timeout(limit, flushed).await.unwrap_or(false)
    }
}

async fn run(mut items: mpsc::Receiver<Item>, db: Arc<dyn Database>, hot: Arc<dyn Hot>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut waiting = Vec::new();
    while let Some(first) = items.recv().await {
        let flushing = matches!(first, Item::Flush(_));
        take(first, &mut batch, &mut waiting);
        if !flushing {
            tokio::time::sleep(LINGER).await;
        }
        while batch.len() < BATCH {
            match items.try_recv() {
                Ok(item) => take(item, &mut batch, &mut waiting),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            correct_counters(hot.as_ref(), &batch).await;
            let records: Vec<UsageRecord> = batch.drain(..).map(|s| s.record).collect();
            write(db.as_ref(), &records).await;
        }
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
    }
}

fn take(item: Item, batch: &mut Vec<Settled>, waiting: &mut Vec<oneshot::Sender<()>>) {
    match item {
        Item::Settled(settled) => batch.push(*settled),
        Item::Flush(done) => waiting.push(done),
    }
}

/// Gives back (or charges) the difference between what admission took and what the
/// requests used: summed per key over the batch, so that a burst of one key's requests
/// costs one call per counter, and the keys' calls run concurrently (each is one short
/// Redis call with its own timeout).
async fn correct_counters(hot: &dyn Hot, batch: &[Settled]) {
    let mut per_key: HashMap<&str, (i64, f64)> = HashMap::new();
    for settled in batch {
        let entry = per_key.entry(settled.record.key_id.as_str()).or_default();
        entry.0 = entry
            .0
            .saturating_add(settled.token_correction.unwrap_or(0));
        entry.1 += settled.spend_correction.unwrap_or(0.0);
    }
    let calls = per_key
        .into_iter()
        .map(|(key_id, (tokens, usd))| async move {
            if tokens != 0 {
                if let Err(error) = hot.add_tokens(key_id, tokens).await {
                    tracing::debug!(%key_id, %error, "token correction failed");
                }
            }
            if usd.abs() > 1e-12 {
                if let Err(error) = hot.add_spend(key_id, usd).await {
                    tracing::warn!(%key_id, %error, "spend correction failed");
                }
            }
        });
    futures::future::join_all(calls).await;
}

/// Writes one batch. An unavailable database is waited out; a batch refused for any
/// other reason is written row by row so that one bad row cannot hold back the rest.
async fn write(db: &dyn Database, records: &[UsageRecord]) {
    let mut attempt = 0;
    loop {
        match db.record_usage_batch(records).await {
            Ok(()) => return,
            Err(StateError::Unavailable { message, .. }) => {
                crate::metrics::usage_write_failed();
                let wait = BACKOFF[attempt.min(BACKOFF.len() - 1)];
                if attempt == 0 {
                    tracing::warn!(rows = records.len(), error = %message,
                        "usage ledger unavailable, retrying");
                }
                attempt += 1;
                tokio::time::sleep(wait).await;
            }
            Err(error) => {
                tracing::debug!(rows = records.len(), %error, "usage batch refused");
                break;
            }
        }
    }
    for record in records {
        if let Err(error) = db.record_usage(record).await {
            crate::metrics::usage_write_failed();
            tracing::warn!(request_id = %record.request_id, %error, "usage not recorded");
        }
    }
}
