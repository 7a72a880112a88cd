//! Runs an RPC's work in its own task, inside the RPC's span, feeding a stream of events.

use crate::request::EventStream;
use agentmesh_proto::v1::ChatEvent;
use std::future::Future;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::Instrument;

/// Small: a slow client should slow the producer down, not grow a buffer.
const BUFFER: usize = 16;

/// Where a running RPC sends its events.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Result<ChatEvent, Status>>,
}

impl EventSink {
    /// Sends one event; fails with Cancelled once the client has gone away, so the
    /// producer stops (and stores nothing it would only store on success).
    pub async fn send(&self, event: ChatEvent) -> Result<(), Status> {
        self.tx
            .send(Ok(event))
            .await
            .map_err(|_| Status::cancelled("the client cancelled the request"))
    }
}

/// Spawns `work` in `span`; its events, then its error if it fails, form the stream.
pub fn spawn_events<F, Fut>(span: tracing::Span, work: F) -> EventStream
where
    F: FnOnce(EventSink) -> Fut,
    Fut: Future<Output = Result<(), Status>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(BUFFER);
    let fut = work(EventSink { tx: tx.clone() });
    tokio::spawn(
        async move {
            if let Err(status) = fut.await {
                if status.code() == tonic::Code::Cancelled {
                    tracing::debug!("client went away");
                } else {
                    tracing::info!(code = ?status.code(), error = %status.message(), "rpc failed");
                }
                let _ = tx.send(Err(status)).await;
            }
        }
        .instrument(span),
    );
    Box::pin(ReceiverStream::new(rx))
}
