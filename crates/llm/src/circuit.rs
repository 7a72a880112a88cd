//! Circuit breaker per provider: skip a provider that keeps failing, probe it after a cooldown.
//!
//! Closed: every attempt goes through; `failures` consecutive failed attempts open it.
//! Open: attempts are refused (the client falls back) until `cooldown` has passed.
//! Half-open: exactly one attempt, the probe, goes through; success closes the circuit,
//! failure opens it for another cooldown. A probe that is dropped before it ends (the
//! caller went away) frees the slot for the next caller.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// What a provider's circuit is doing now (for metrics and health pages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    /// A stable label: `closed`, `open`, `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: CircuitState,
    failures: u32,
    opened_at: Instant,
    probing: bool,
}

/// One provider's breaker; cheap to clone (shared state).
#[derive(Debug, Clone)]
pub(crate) struct Circuit {
    inner: Arc<Mutex<Inner>>,
    threshold: u32,
    cooldown: Duration,
}

/// Leave to send one attempt. Report how it went with `success` / `failure`; dropping it
/// unreported counts as neither (a probe slot is freed).
#[derive(Debug)]
pub(crate) struct Permit {
    circuit: Circuit,
    probe: bool,
    settled: bool,
}

impl Circuit {
    pub fn new(threshold: u32, cooldown: Duration) -> Circuit {
        let inner = Inner {
            state: CircuitState::Closed,
            failures: 0,
            opened_at: Instant::now(),
            probing: false,
        };
        Circuit {
            inner: Arc::new(Mutex::new(inner)),
            threshold: threshold.max(1),
            cooldown,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves consistent plain data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> CircuitState {
        let inner = self.lock();
        match inner.state {
            CircuitState::Open if inner.opened_at.elapsed() >= self.cooldown => {
                CircuitState::HalfOpen
            }
            state => state,
        }
    }

    /// A permit, or how long until a probe may go when the circuit refuses.
    pub fn try_acquire(&self) -> Result<Permit, Duration> {
        let mut inner = self.lock();
        let probe = match inner.state {
            CircuitState::Closed => false,
            CircuitState::Open => {
                let waited = inner.opened_at.elapsed();
                if waited < self.cooldown {
                    return Err(self.cooldown - waited);
                }
                inner.state = CircuitState::HalfOpen;
                inner.probing = true;
                true
            }
            CircuitState::HalfOpen if inner.probing => return Err(Duration::ZERO),
            CircuitState::HalfOpen => {
                inner.probing = true;
                true
            }
        };
        drop(inner);
        Ok(Permit {
            circuit: self.clone(),
            probe,
            settled: false,
        })
    }

    fn record(&self, ok: bool, probe: bool) -> Option<CircuitState> {
        let mut inner = self.lock();
        if probe {
            inner.probing = false;
        }
        let before = inner.state;
        if ok {
            inner.failures = 0;
            inner.state = CircuitState::Closed;
        } else {
            inner.failures = inner.failures.saturating_add(1);
            let trips = inner.failures >= self.threshold || before == CircuitState::HalfOpen;
            if trips && (before != CircuitState::Open) {
                inner.state = CircuitState::Open;
                inner.opened_at = Instant::now();
            }
        }
        (inner.state != before).then_some(inner.state)
    }
}

impl Permit {
    /// The attempt worked: the circuit closes. Returns the new state if it changed.
    pub fn success(mut self) -> Option<CircuitState> {
        self.settled = true;
        self.circuit.record(true, self.probe)
    }

    /// The attempt failed through the provider. Returns the new state if it changed.
    pub fn failure(mut self) -> Option<CircuitState> {
        self.settled = true;
        self.circuit.record(false, self.probe)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled && self.probe {
            self.circuit.lock().probing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_probes_after_cooldown() {
        let circuit = Circuit::new(3, Duration::from_secs(10));
        for _ in 0..2 {
            assert_eq!(circuit.try_acquire().unwrap().failure(), None);
        }
        // A success in between resets the count: failures must be consecutive.
        assert_eq!(circuit.try_acquire().unwrap().success(), None);
        for _ in 0..2 {
            circuit.try_acquire().unwrap().failure();
        }
        assert_eq!(
            circuit.try_acquire().unwrap().failure(),
            Some(CircuitState::Open)
        );
        assert_eq!(circuit.state(), CircuitState::Open);
        let wait = circuit.try_acquire().unwrap_err();
        assert_eq!(wait, Duration::from_secs(10));

        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(circuit.state(), CircuitState::HalfOpen);
        let probe = circuit.try_acquire().unwrap();
        assert!(circuit.try_acquire().is_err(), "only one probe at a time");
        assert_eq!(probe.failure(), Some(CircuitState::Open));
        assert!(
            circuit.try_acquire().is_err(),
            "a failed probe opens it again"
        );

        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = circuit.try_acquire().unwrap();
        assert_eq!(probe.success(), Some(CircuitState::Closed));
        assert!(circuit.try_acquire().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_probe_frees_the_slot() {
        let circuit = Circuit::new(1, Duration::from_secs(1));
        circuit.try_acquire().unwrap().failure();
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(circuit.try_acquire().unwrap());
        assert_eq!(circuit.state(), CircuitState::HalfOpen);
        assert!(circuit.try_acquire().is_ok());
    }
}
