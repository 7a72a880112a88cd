//! Gateway settings: agent endpoints, the bootstrap admin key, limits and timeouts.

use agentmesh_agent_runtime::balance::PoolConfig;
use std::fmt;
use std::time::Duration;

/// gRPC endpoints of the three agents, as URLs like `http://127.0.0.1:50051`. The host
/// may be a DNS name with several addresses (a headless Service): calls are balanced
/// over all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentEndpoints {
    pub chat: String,
    pub search: String,
    pub data: String,
}

impl Default for AgentEndpoints {
    fn default() -> Self {
        Self {
            chat: "http://127.0.0.1:50051".into(),
            search: "http://127.0.0.1:50052".into(),
            data: "http://127.0.0.1:50053".into(),
        }
    }
}

/// Everything the gateway needs besides its state.
#[derive(Clone, PartialEq)]
pub struct GatewayConfig {
    pub agents: AgentEndpoints,
    /// Secret of the bootstrap admin key (`AGENTMESH_ADMIN_KEY`); never printed.
    pub admin_key: Option<String>,
    /// Longest a request may take; `x-agentmesh-timeout-ms` may only shorten it.
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    /// Period of the SSE `: keep-alive` comment.
    pub keepalive: Duration,
    /// Balancing over each agent's addresses, and its concurrency limit.
    pub pool: PoolConfig,
    /// After SIGTERM, how long in-flight requests may run before the gateway exits.
    pub drain: Duration,
    /// After SIGTERM, how long new connections are still accepted while `/ready` already
    /// says 503, for load balancers that only stop on a failed probe (0 when a preStop
    /// pause does this job).
    pub shutdown_delay: Duration,
    /// Spend reserved from a key's budget when it is admitted before this replica has
    /// seen what its requests cost (`AGENTMESH_BUDGET_RESERVE_USD`); afterwards the
    /// moving average of its recent costs is reserved, and the difference settled.
    pub budget_reserve_usd: f64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            agents: AgentEndpoints::default(),
            admin_key: None,
            request_timeout: Duration::from_secs(120),
            max_body_bytes: 10 * 1024 * 1024,
            keepalive: Duration::from_secs(15),
            pool: PoolConfig::default(),
            drain: Duration::from_secs(30),
            shutdown_delay: Duration::ZERO,
            budget_reserve_usd: 0.001,
        }
    }
}

impl fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("agents", &self.agents)
            .field("admin_key", &self.admin_key.as_ref().map(|_| "<redacted>"))
            .field("request_timeout", &self.request_timeout)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("keepalive", &self.keepalive)
            .field("pool", &self.pool)
            .field("drain", &self.drain)
            .field("shutdown_delay", &self.shutdown_delay)
            .field("budget_reserve_usd", &self.budget_reserve_usd)
            .finish()
    }
}

impl GatewayConfig {
    /// Reads `AGENTMESH_CHAT_URL`, `AGENTMESH_SEARCH_URL`, `AGENTMESH_DATA_URL`,
    /// `AGENTMESH_ADMIN_KEY`, `AGENTMESH_DRAIN_SECONDS`, `AGENTMESH_SHUTDOWN_DELAY_MS`
    /// and the balancing settings
    /// (`AGENTMESH_AGENT_MAX_CONCURRENCY`, `AGENTMESH_RESOLVE_SECONDS`,
    /// `AGENTMESH_EJECT_SECONDS`); everything else keeps its default.
    pub fn from_env() -> anyhow::Result<GatewayConfig> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<GatewayConfig> {
        let mut config = GatewayConfig::default();
        let value = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };

        if let Some(url) = value("AGENTMESH_CHAT_URL") {
            config.agents.chat = url;
        }
        if let Some(url) = value("AGENTMESH_SEARCH_URL") {
            config.agents.search = url;
        }
        if let Some(url) = value("AGENTMESH_DATA_URL") {
            config.agents.data = url;
        }
        config.admin_key = value("AGENTMESH_ADMIN_KEY");
        if let Some(raw) = value("AGENTMESH_DRAIN_SECONDS") {
            let seconds = raw.parse::<u64>().map_err(|_| {
                anyhow::anyhow!("AGENTMESH_DRAIN_SECONDS must be a whole number, got {raw:?}")
            })?;
            config.drain = Duration::from_secs(seconds);
        }
        if let Some(raw) = value("AGENTMESH_SHUTDOWN_DELAY_MS") {
            let millis = raw.parse::<u64>().map_err(|_| {
                anyhow::anyhow!("AGENTMESH_SHUTDOWN_DELAY_MS must be a whole number, got {raw:?}")
            })?;
            config.shutdown_delay = Duration::from_millis(millis);
        }
        if let Some(raw) = value("AGENTMESH_BUDGET_RESERVE_USD") {
            config.budget_reserve_usd = raw
                .parse::<f64>()
                .ok()
                .filter(|usd| usd.is_finite() && *usd >= 0.0)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "AGENTMESH_BUDGET_RESERVE_USD must be a non-negative amount, got {raw:?}"
                    )
                })?;
        }
        config.pool = PoolConfig::from_lookup(value).map_err(anyhow::Error::msg)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value, with a message naming the setting.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        for (name, url) in [
            ("AGENTMESH_CHAT_URL", &self.agents.chat),
            ("AGENTMESH_SEARCH_URL", &self.agents.search),
            ("AGENTMESH_DATA_URL", &self.agents.data),
        ] {
            let valid = url.starts_with("http://") || url.starts_with("https://");
            if !valid || url.parse::<http::Uri>().is_err() {
                anyhow::bail!("{name} must be an http:// or https:// URL, got {url:?}");
            }
        }
        if self.request_timeout.is_zero() {
            anyhow::bail!("request timeout must be greater than zero");
        }
        if self.keepalive.is_zero() {
            anyhow::bail!("SSE keep-alive period must be greater than zero");
        }
        if self.max_body_bytes == 0 {
            anyhow::bail!("maximum body size must be greater than zero");
        }
        if self.pool.max_concurrency == 0 {
            anyhow::bail!("AGENTMESH_AGENT_MAX_CONCURRENCY must be greater than zero");
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_agents_and_admin_key() {
        let config = GatewayConfig::from_lookup(|name| match name {
            "AGENTMESH_CHAT_URL" => Some("http://chat:50051".into()),
            "AGENTMESH_ADMIN_KEY" => Some("am-secret".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(config.agents.chat, "http://chat:50051");
        assert_eq!(config.agents.search, "http://127.0.0.1:50052");
        assert_eq!(config.admin_key.as_deref(), Some("am-secret"));
        assert!(!format!("{config:?}").contains("am-secret"));
        assert_eq!(config.drain, Duration::from_secs(30));
    }

    #[test]
    fn drain_and_balancing_come_from_env() {
        let config = GatewayConfig::from_lookup(|name| match name {
            "AGENTMESH_DRAIN_SECONDS" => Some("5".into()),
            "AGENTMESH_AGENT_MAX_CONCURRENCY" => Some("8".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(config.drain, Duration::from_secs(5));
        assert_eq!(config.pool.max_concurrency, 8);
        let error = GatewayConfig::from_lookup(|name| {
            (name == "AGENTMESH_DRAIN_SECONDS").then(|| "-1".to_string())
        })
        .unwrap_err();
        assert!(error.to_string().contains("AGENTMESH_DRAIN_SECONDS"));
    }

    #[test]
    fn bad_url_names_the_variable() {
        let error = GatewayConfig::from_lookup(|name| {
            (name == "AGENTMESH_DATA_URL").then(|| "data:50053".to_string())
        })
        .unwrap_err();
        assert!(error.to_string().contains("AGENTMESH_DATA_URL"));
    }
}
