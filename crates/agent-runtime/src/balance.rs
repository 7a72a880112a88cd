//! Client-side balancing over every address behind an agent's name.
//!
//! An agent endpoint is a URL whose host is an IP or a DNS name (a Kubernetes headless
//! Service answers with one address per ready pod). [`AgentPool`] resolves the name,
//! keeps one lazily connected [`Channel`] per address, re-resolves periodically, picks
//! an address by power of two choices on outstanding calls, ejects an address that
//! failed to connect for a short time, and refuses a call at once when the agent
//! already has `max_concurrency` calls in flight (no queueing until a timeout).

use futures::Future;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;
use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Calls tried per request: the first address and up to two others.
pub const MAX_ATTEMPTS: usize = 3;
/// Longest inline name resolution when a pool has no address yet.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Seconds a client is told to wait after an overload answer.
const OVERLOAD_RETRY_AFTER: &str = "1";

/// Why a call could not be placed on any address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BalanceError {
    #[error("agent URL {url:?} is invalid: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("agent {agent} is overloaded: {limit} calls in flight; retry shortly")]
    Overloaded { agent: String, limit: usize },
    #[error("agent {agent} has no reachable address for {host}: {reason}")]
    NoAddress {
        agent: String,
        host: String,
        reason: String,
    },
}

impl BalanceError {
    /// The Status a caller sees, with the metadata the gateway turns into a 503 with
    /// `Retry-After` (`agent_overloaded` or `agent_unavailable`).
    pub fn to_status(&self) -> Status {
        let code = match self {
            Self::InvalidUrl { .. } => "agent_misconfigured",
            Self::Overloaded { .. } => "agent_overloaded",
            Self::NoAddress { .. } => "agent_unavailable",
        };
        let mut status = Status::unavailable(self.to_string());
        let metadata = status.metadata_mut();
        metadata.insert("x-agentmesh-http-status", MetadataValue::from_static("503"));
        metadata.insert(
            "x-agentmesh-error-type",
            MetadataValue::from_static("service_unavailable"),
        );
        if let Ok(value) = MetadataValue::try_from(code) {
            metadata.insert("x-agentmesh-error-code", value);
        }
        metadata.insert(
            "retry-after",
            MetadataValue::from_static(OVERLOAD_RETRY_AFTER),
        );
        status
    }
}

impl From<BalanceError> for Status {
    fn from(error: BalanceError) -> Status {
        error.to_status()
    }
}

type LookupFn = dyn Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Send + Sync;

/// Turns a host name into addresses: DNS by default, a function in tests.
#[derive(Clone, Default)]
pub struct Resolver(Option<Arc<LookupFn>>);

impl Resolver {
    /// The system resolver (`tokio::net::lookup_host`), which sees every A/AAAA record.
    pub fn dns() -> Self {
        Self(None)
    }

    /// Answers from `lookup` instead of DNS (tests, static lists). It receives the URL's
    /// host and port; the addresses it returns are used as they are.
    pub fn from_fn(
        lookup: impl Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Send + Sync + 'static,
    ) -> Self {
        Self(Some(Arc::new(lookup)))
    }

    pub async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        let mut addresses = match &self.0 {
            Some(lookup) => lookup(host, port)?,
            None => tokio::net::lookup_host((host, port)).await?.collect(),
        };
        addresses.sort();
        addresses.dedup();
        Ok(addresses)
    }
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Resolver(fn)"
        } else {
            "Resolver(dns)"
        })
    }
}

impl PartialEq for Resolver {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// How a pool balances; the same for every agent a process calls.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Calls in flight to one agent (all its addresses) before new ones are refused.
    pub max_concurrency: usize,
    /// Period of name re-resolution (new pods join, removed pods leave).
    pub resolve_every: Duration,
    /// How long an address that failed to connect is avoided.
    pub eject_for: Duration,
    pub connect_timeout: Duration,
    pub resolver: Resolver,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_concurrency: 1024,
            resolve_every: Duration::from_secs(5),
            eject_for: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(3),
            resolver: Resolver::dns(),
        }
    }
}

impl PoolConfig {
    /// Reads `AGENTMESH_AGENT_MAX_CONCURRENCY`, `AGENTMESH_RESOLVE_SECONDS` and
    /// `AGENTMESH_EJECT_SECONDS` through `lookup`; unset keeps the default.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut config = Self::default();
        let number = |name: &str| -> Result<Option<u64>, String> {
            let Some(raw) = lookup(name).map(|v| v.trim().to_string()) else {
                return Ok(None);
            };
            match raw.parse::<u64>() {
                Ok(value) if value > 0 => Ok(Some(value)),
                _ => Err(format!(
                    "{name} must be a whole number above 0, got {raw:?}"
                )),
            }
        };
        if let Some(limit) = number("AGENTMESH_AGENT_MAX_CONCURRENCY")? {
            config.max_concurrency = usize::try_from(limit).unwrap_or(usize::MAX);
        }
        if let Some(seconds) = number("AGENTMESH_RESOLVE_SECONDS")? {
            config.resolve_every = Duration::from_secs(seconds);
        }
        if let Some(seconds) = number("AGENTMESH_EJECT_SECONDS")? {
            config.eject_for = Duration::from_secs(seconds);
        }
        Ok(config)
    }
}

/// Status codes that mean "this address could not take the call", as opposed to an
/// answer from the agent. Agents always attach `x-agentmesh-http-status` to their own
/// errors, so a status without it comes from the transport: refused connection, GOAWAY,
/// reset stream, dead pod, or a request cancelled because its connection was closing
/// (a draining server). Cancelled at the deadline (tonic's `TimeoutExpired`) is not one.
pub fn is_transport_failure(status: &Status) -> bool {
    let from_agent = status.metadata().get("x-agentmesh-http-status").is_some();
    let code = match status.code() {
        Code::Unavailable | Code::Unknown | Code::Internal => true,
        Code::Cancelled => status.message() != tonic::TimeoutExpired(()).to_string(),
        _ => false,
    };
    code && !from_agent
}

/// Failures of a unary call that are safe to retry elsewhere: the call did not run.
fn unary_retryable(status: &Status) -> bool {
    let refused = matches!(status.code(), Code::Unavailable | Code::Cancelled);
    refused && is_transport_failure(status)
}

/// One address and its channel, shared by every call placed on it.
struct Backend {
    address: SocketAddr,
    channel: Channel,
    outstanding: AtomicUsize,
    ejected_until: Mutex<Option<Instant>>,
}

impl Backend {
    fn healthy(&self, now: Instant) -> bool {
        match self.ejected_until.lock() {
            Ok(until) => until.is_none_or(|until| until <= now),
            Err(_) => true,
        }
    }
}

/// The agent URL split into what resolution and channels need.
#[derive(Debug, Clone)]
struct Target {
    scheme: String,
    host: String,
    port: u16,
    literal: Option<IpAddr>,
}

impl Target {
    fn parse(url: &str) -> Result<Self, BalanceError> {
        let invalid = |reason: &str| BalanceError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: http::Uri = url.parse().map_err(|_| invalid("not a URL"))?;
        let scheme = uri.scheme_str().unwrap_or_default().to_string();
        let port = match scheme.as_str() {
            "http" => uri.port_u16().unwrap_or(80),
            "https" => uri.port_u16().unwrap_or(443),
            _ => return Err(invalid("the scheme must be http or https")),
        };
        let host = uri.host().ok_or_else(|| invalid("the host is missing"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(invalid("the host is missing"));
        }
        let literal = host.parse::<IpAddr>().ok();
        Ok(Self {
            scheme,
            host,
            port,
            literal,
        })
    }
}

struct Inner {
    agent: String,
    target: Target,
    config: PoolConfig,
    backends: RwLock<Arc<Vec<Arc<Backend>>>>,
    in_flight: AtomicUsize,
    refresher_started: AtomicBool,
    resolving: tokio::sync::Mutex<()>,
}

/// The addresses of one agent and the calls in flight to each. Cheap to clone.
#[derive(Clone)]
pub struct AgentPool {
    inner: Arc<Inner>,
}

impl fmt::Debug for AgentPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentPool")
            .field("agent", &self.inner.agent)
            .field("host", &self.inner.target.host)
            .field("addresses", &self.addresses())
            .finish()
    }
}

impl AgentPool {
    /// A pool for `url` (`http://name:port`). Needs no runtime: names are resolved on
    /// first use and then every `resolve_every` by a task that ends with the pool.
    pub fn new(agent: &str, url: &str, config: PoolConfig) -> Result<Self, BalanceError> {
        let target = Target::parse(url)?;
        let inner = Arc::new(Inner {
            agent: agent.to_string(),
            target,
            config,
            backends: RwLock::new(Arc::new(Vec::new())),
            in_flight: AtomicUsize::new(0),
            refresher_started: AtomicBool::new(false),
            resolving: tokio::sync::Mutex::new(()),
        });
        if let Some(ip) = inner.target.literal {
            inner.refresher_started.store(true, Ordering::SeqCst);
            // Channels need a runtime; without one the address is installed on first use.
            if tokio::runtime::Handle::try_current().is_ok() {
                inner.replace(vec![SocketAddr::new(ip, inner.target.port)])?;
            }
        }
        Ok(Self { inner })
    }

    pub fn agent(&self) -> &str {
        &self.inner.agent
    }

    /// The addresses currently known, sorted.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.inner.snapshot().iter().map(|b| b.address).collect()
    }

    /// Calls in flight across all addresses.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// Outstanding calls per address.
    pub fn outstanding(&self) -> Vec<(SocketAddr, usize)> {
        let backends = self.inner.snapshot();
        let count = |b: &Arc<Backend>| b.outstanding.load(Ordering::SeqCst);
        backends.iter().map(|b| (b.address, count(b))).collect()
    }

    /// Resolves the name now; keeps the previous addresses when it fails.
    pub async fn refresh(&self) -> Result<(), BalanceError> {
        self.inner.refresh().await
    }

    /// Takes a concurrency slot for one logical call, or refuses at once.
    pub fn call(&self) -> Result<Call, BalanceError> {
        let limit = self.inner.config.max_concurrency;
        let admitted = self
            .inner
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            });
        if admitted.is_err() {
            tracing::debug!(agent = %self.inner.agent, limit, "agent overloaded");
            return Err(BalanceError::Overloaded {
                agent: self.inner.agent.clone(),
                limit,
            });
        }
        Ok(Call {
            inner: self.inner.clone(),
            current: None,
            tried: Vec::new(),
        })
    }

    /// A channel to some address, outside the concurrency accounting (health probes).
    pub async fn any_channel(&self) -> Result<Channel, BalanceError> {
        self.inner.ensure_resolved().await?;
        let backends = self.inner.snapshot();
        pick(&backends, &[], Instant::now())
            .map(|b| b.channel.clone())
            .ok_or_else(|| self.inner.no_address("no address known"))
    }

    /// Runs a unary call, on another address when one refuses it (connection refused,
    /// GOAWAY), so that a restarting pod costs no request.
    pub async fn unary<T, F, Fut>(&self, mut f: F) -> Result<T, Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut call = self.call()?;
        let mut last = None;
        while let Some(channel) = call.next_channel(last.is_some()).await? {
            match f(channel).await {
                Err(status) if unary_retryable(&status) => {
                    call.failed();
                    last = Some(status);
                }
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| self.inner.no_address("no address left").to_status()))
    }
}

impl Inner {
    fn snapshot(&self) -> Arc<Vec<Arc<Backend>>> {
        match self.backends.read() {
            Ok(backends) => backends.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn no_address(&self, reason: &str) -> BalanceError {
        BalanceError::NoAddress {
            agent: self.agent.clone(),
            host: self.target.host.clone(),
            reason: reason.to_string(),
        }
    }

    /// Installs `addresses`, keeping the channel and counters of those already known.
    fn replace(&self, addresses: Vec<SocketAddr>) -> Result<(), BalanceError> {
        let old = self.snapshot();
        let mut next = Vec::with_capacity(addresses.len());
        for address in addresses {
            match old.iter().find(|b| b.address == address) {
                Some(known) => next.push(known.clone()),
                None => next.push(Arc::new(self.backend(address)?)),
            }
        }
        let changed = next.len() != old.len()
            || next
                .iter()
                .zip(old.iter())
                .any(|(a, b)| a.address != b.address);
        if changed {
            let list: Vec<String> = next.iter().map(|b| b.address.to_string()).collect();
            tracing::info!(agent = %self.agent, addresses = %list.join(","), "agent addresses");
        }
        match self.backends.write() {
            Ok(mut backends) => *backends = Arc::new(next),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(next),
        }
        Ok(())
    }

    fn backend(&self, address: SocketAddr) -> Result<Backend, BalanceError> {
        let url = format!("{}://{address}", self.target.scheme);
        let endpoint =
            Endpoint::from_shared(url.clone()).map_err(|e| BalanceError::InvalidUrl {
                url,
                reason: e.to_string(),
            })?;
        let channel = endpoint
            .connect_timeout(self.config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .connect_lazy();
        Ok(Backend {
            address,
            channel,
            outstanding: AtomicUsize::new(0),
            ejected_until: Mutex::new(None),
        })
    }

    async fn refresh(&self) -> Result<(), BalanceError> {
        if let Some(ip) = self.target.literal {
            return self.replace(vec![SocketAddr::new(ip, self.target.port)]);
        }
        let (host, port) = (&self.target.host, self.target.port);
        let resolved = self.config.resolver.resolve(host, port).await;
        match resolved {
            Ok(addresses) if !addresses.is_empty() => self.replace(addresses),
            Ok(_) => Err(self.no_address("the name resolved to no address")),
            Err(error) => {
                tracing::warn!(agent = %self.agent, host = %host, %error, "resolve failed");
                Err(self.no_address(&format!("resolving failed: {error}")))
            }
        }
    }

    /// Starts the periodic re-resolution once, and resolves inline while no address
    /// is known yet.
    async fn ensure_resolved(self: &Arc<Self>) -> Result<(), BalanceError> {
        if !self.refresher_started.swap(true, Ordering::SeqCst) {
            spawn_refresher(Arc::downgrade(self), self.config.resolve_every);
        }
        if !self.snapshot().is_empty() {
            return Ok(());
        }
        let _one_at_a_time = self.resolving.lock().await;
        if !self.snapshot().is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(RESOLVE_TIMEOUT, self.refresh()).await {
            Ok(result) => result,
            Err(_) => Err(self.no_address("resolving timed out")),
        }
    }
}

fn spawn_refresher(pool: Weak<Inner>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(inner) = pool.upgrade() else { break };
            let _ = inner.refresh().await;
        }
    });
}

/// Power of two choices among healthy, untried addresses; ejected ones only when no
/// healthy one is left (trying beats refusing).
fn pick(backends: &[Arc<Backend>], tried: &[SocketAddr], now: Instant) -> Option<Arc<Backend>> {
    let untried: Vec<&Arc<Backend>> = backends
        .iter()
        .filter(|b| !tried.contains(&b.address))
        .collect();
    let healthy: Vec<&Arc<Backend>> = untried.iter().copied().filter(|b| b.healthy(now)).collect();
    let candidates = if healthy.is_empty() { untried } else { healthy };
    let load = |b: &Arc<Backend>| b.outstanding.load(Ordering::SeqCst);
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0].clone()),
        n => {
            let first = rand::random_range(0..n);
            let second = (first + rand::random_range(1..n)) % n;
            let (a, b) = (candidates[first], candidates[second]);
            Some(if load(b) < load(a) {
                b.clone()
            } else {
                a.clone()
            })
        }
    }
}

/// One logical call: a concurrency slot, and the address it is on now. Dropping it
/// (after the stream ended or was abandoned) frees both.
pub struct Call {
    inner: Arc<Inner>,
    current: Option<Arc<Backend>>,
    tried: Vec<SocketAddr>,
}

impl Call {
    /// The channel of the next untried address, or None when no attempt is left.
    /// `retry` says a previous attempt failed (logged with the address it moves to).
    pub async fn next_channel(&mut self, retry: bool) -> Result<Option<Channel>, BalanceError> {
        self.release_current();
        if self.tried.len() >= MAX_ATTEMPTS {
            return Ok(None);
        }
        self.inner.ensure_resolved().await?;
        let backends = self.inner.snapshot();
        let Some(backend) = pick(&backends, &self.tried, Instant::now()) else {
            return if self.tried.is_empty() {
                Err(self.inner.no_address("no address known"))
            } else {
                Ok(None)
            };
        };
        if retry {
            tracing::info!(agent = %self.inner.agent, address = %backend.address, "retrying");
        }
        backend.outstanding.fetch_add(1, Ordering::SeqCst);
        self.tried.push(backend.address);
        let channel = backend.channel.clone();
        self.current = Some(backend);
        Ok(Some(channel))
    }

    /// The address of the current attempt.
    pub fn address(&self) -> Option<SocketAddr> {
        self.current.as_ref().map(|b| b.address)
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> usize {
        self.tried.len()
    }

    /// Whether another attempt is allowed and an untried address is known.
    pub fn can_retry(&self) -> bool {
        let backends = self.inner.snapshot();
        let untried = backends.iter().any(|b| !self.tried.contains(&b.address));
        self.tried.len() < MAX_ATTEMPTS && untried
    }

    /// The current address could not take the call: avoid it for `eject_for`.
    pub fn failed(&mut self) {
        if let Some(backend) = &self.current {
            let until = Instant::now() + self.inner.config.eject_for;
            if let Ok(mut ejected) = backend.ejected_until.lock() {
                *ejected = Some(until);
            }
            let (agent, address) = (&self.inner.agent, backend.address);
            tracing::warn!(agent = %agent, address = %address, "address ejected");
        }
    }

    fn release_current(&mut self) {
        if let Some(backend) = self.current.take() {
            backend.outstanding.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("agent", &self.inner.agent)
            .field("address", &self.address())
            .field("tried", &self.tried)
            .finish()
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.release_current();
        self.inner.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Addresses per host for [`Resolver::from_fn`] in tests and static set-ups.
pub fn static_resolver(table: HashMap<String, Vec<SocketAddr>>) -> Resolver {
    let table = Arc::new(RwLock::new(table));
    Resolver::from_fn(move |host, port| {
        let table = table
            .read()
            .map_err(|_| io::Error::other("resolver table poisoned"))?;
        let found = table.get(host).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("unknown host {host}"))
        })?;
        Ok(found
            .iter()
            .map(|a| SocketAddr::new(a.ip(), port))
            .collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn switchable(initial: Vec<SocketAddr>) -> (Resolver, Arc<Mutex<Vec<SocketAddr>>>) {
        let answer = Arc::new(Mutex::new(initial));
        let shared = answer.clone();
        let resolver = Resolver::from_fn(move |_, _| Ok(shared.lock().unwrap().clone()));
        (resolver, answer)
    }

    fn config(resolver: Resolver) -> PoolConfig {
        PoolConfig {
            resolver,
            resolve_every: Duration::from_millis(50),
            ..PoolConfig::default()
        }
    }

    #[tokio::test]
    async fn urls_are_checked() {
        let bad = ["chat:50051", "ftp://chat:1", "http://", "not a url"];
        for url in bad {
            assert!(
                AgentPool::new("chat", url, PoolConfig::default()).is_err(),
                "{url}"
            );
        }
        let pool = AgentPool::new("chat", "http://127.0.0.1:7", PoolConfig::default()).unwrap();
        assert_eq!(pool.addresses(), [addr("127.0.0.1:7")]);
        let v6 = AgentPool::new("chat", "http://[::1]:7", PoolConfig::default()).unwrap();
        assert_eq!(v6.addresses(), [addr("[::1]:7")]);
    }

    #[tokio::test]
    async fn a_name_gives_every_address_and_is_re_resolved() {
        let (resolver, answer) = switchable(vec![addr("10.0.0.1:1"), addr("10.0.0.2:1")]);
        let pool = AgentPool::new("chat", "http://chat.svc:50051", config(resolver)).unwrap();
        assert!(pool.addresses().is_empty(), "resolved on first use");
        let mut call = pool.call().unwrap();
        call.next_channel(false).await.unwrap().unwrap();
        assert_eq!(pool.addresses().len(), 2);
        drop(call);

        *answer.lock().unwrap() = vec![addr("10.0.0.3:1")];
        let mut seen = Vec::new();
        for _ in 0..100 {
            seen = pool.addresses();
            if seen == [addr("10.0.0.3:1")] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(seen, [addr("10.0.0.3:1")]);
    }

    #[tokio::test]
    async fn failed_resolution_keeps_the_known_addresses() {
        let (resolver, answer) = switchable(vec![addr("10.0.0.1:1")]);
        let pool = AgentPool::new("chat", "http://chat:9", config(resolver)).unwrap();
        pool.refresh().await.unwrap();
        answer.lock().unwrap().clear();
        assert!(pool.refresh().await.is_err());
        assert_eq!(pool.addresses(), [addr("10.0.0.1:1")]);
    }

    #[tokio::test]
    async fn unknown_names_are_no_address_errors() {
        let resolver = static_resolver(HashMap::new());
        let pool = AgentPool::new("data", "http://nowhere:1", config(resolver)).unwrap();
        let mut call = pool.call().unwrap();
        let error = call.next_channel(false).await.unwrap_err();
        assert!(matches!(error, BalanceError::NoAddress { .. }), "{error}");
        let status = error.to_status();
        assert_eq!(
            status.metadata().get("x-agentmesh-http-status").unwrap(),
            "503"
        );
        assert_eq!(
            status.metadata().get("x-agentmesh-error-code").unwrap(),
            "agent_unavailable"
        );
    }

    #[tokio::test]
    async fn localhost_resolves_through_dns() {
        let pool = AgentPool::new("chat", "http://localhost:50051", PoolConfig::default()).unwrap();
        pool.refresh().await.unwrap();
        let addresses = pool.addresses();
        assert!(!addresses.is_empty());
        assert!(addresses
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 50051));
    }

    #[tokio::test]
    async fn the_concurrency_limit_refuses_at_once_and_frees_on_drop() {
        let pool = AgentPool::new(
            "chat",
            "http://127.0.0.1:1",
            PoolConfig {
                max_concurrency: 2,
                ..PoolConfig::default()
            },
        )
        .unwrap();
        let first = pool.call().unwrap();
        let _second = pool.call().unwrap();
        let error = pool.call().unwrap_err();
        assert_eq!(
            error,
            BalanceError::Overloaded {
                agent: "chat".into(),
                limit: 2
            }
        );
        let status = error.to_status();
        assert_eq!(status.metadata().get("retry-after").unwrap(), "1");
        assert_eq!(
            status.metadata().get("x-agentmesh-error-code").unwrap(),
            "agent_overloaded"
        );
        drop(first);
        assert!(pool.call().is_ok());
        assert_eq!(pool.in_flight(), 1, "the refused call took no slot");
    }

    #[tokio::test]
    async fn power_of_two_choices_prefers_the_less_loaded_address() {
        let addresses = vec![addr("10.0.0.1:1"), addr("10.0.0.2:1")];
        let resolver = Resolver::from_fn(move |_, _| Ok(addresses.clone()));
        let pool = AgentPool::new("chat", "http://chat:1", config(resolver)).unwrap();
        let mut busy = pool.call().unwrap();
        busy.next_channel(false).await.unwrap();
        let loaded = busy.address().unwrap();
        for _ in 0..20 {
            let mut call = pool.call().unwrap();
            call.next_channel(false).await.unwrap();
            assert_ne!(
                call.address().unwrap(),
                loaded,
                "two candidates, one is idle"
            );
        }
        let counts: usize = pool.outstanding().iter().map(|(_, n)| n).sum();
        assert_eq!(counts, 1, "finished calls released their address");
    }

    #[tokio::test]
    async fn retries_go_to_untried_addresses_and_failures_eject() {
        let addresses = vec![addr("10.0.0.1:1"), addr("10.0.0.2:1"), addr("10.0.0.3:1")];
        let resolver = Resolver::from_fn(move |_, _| Ok(addresses.clone()));
        let pool = AgentPool::new("chat", "http://chat:1", config(resolver)).unwrap();
        let mut call = pool.call().unwrap();
        let mut tried = Vec::new();
        while call
            .next_channel(!tried.is_empty())
            .await
            .unwrap()
            .is_some()
        {
            tried.push(call.address().unwrap());
            if tried.len() == 1 {
                call.failed();
            }
        }
        tried.sort();
        tried.dedup();
        assert_eq!(tried.len(), 3, "each attempt on another address");
        drop(call);

        let ejected = {
            let mut call = pool.call().unwrap();
            call.next_channel(false).await.unwrap();
            call.failed();
            call.address().unwrap()
        };
        for _ in 0..30 {
            let mut call = pool.call().unwrap();
            call.next_channel(false).await.unwrap();
            assert_ne!(call.address().unwrap(), ejected);
        }
    }

    #[tokio::test]
    async fn unary_moves_to_another_address_when_one_refuses() {
        let addresses = vec![addr("10.0.0.1:1"), addr("10.0.0.2:1")];
        let resolver = Resolver::from_fn(move |_, _| Ok(addresses.clone()));
        let pool = AgentPool::new("data", "http://data:1", config(resolver)).unwrap();
        let mut attempts = 0;
        let result: Result<(), Status> = pool
            .unary(|_channel| {
                attempts += 1;
                let status = if attempts == 1 {
                    Status::unavailable("tcp connect error")
                } else {
                    Status::invalid_argument("bad sql")
                };
                async move { Err(status) }
            })
            .await;
        assert_eq!(result.unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(attempts, 2, "retried once, then the agent's answer stands");
    }

    #[test]
    fn agent_errors_are_not_transport_failures() {
        assert!(is_transport_failure(&Status::unavailable(
            "connection refused"
        )));
        assert!(is_transport_failure(&Status::unknown("h2 protocol error")));
        assert!(!is_transport_failure(&Status::deadline_exceeded("late")));
        assert!(is_transport_failure(&Status::cancelled(
            "operation was canceled"
        )));
        let deadline = Status::cancelled(tonic::TimeoutExpired(()).to_string());
        assert!(!is_transport_failure(&deadline));
        let agent_said = BalanceError::Overloaded {
            agent: "chat".into(),
            limit: 1,
        }
        .to_status();
        assert!(!is_transport_failure(&agent_said));
    }

    #[test]
    fn env_settings_are_validated() {
        let config = PoolConfig::from_lookup(|name| match name {
            "AGENTMESH_AGENT_MAX_CONCURRENCY" => Some("64".into()),
            "AGENTMESH_RESOLVE_SECONDS" => Some("10".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(config.max_concurrency, 64);
        assert_eq!(config.resolve_every, Duration::from_secs(10));
        let error = PoolConfig::from_lookup(|name| {
            (name == "AGENTMESH_EJECT_SECONDS").then(|| "soon".into())
        })
        .unwrap_err();
        assert!(error.contains("AGENTMESH_EJECT_SECONDS"));
    }
}
