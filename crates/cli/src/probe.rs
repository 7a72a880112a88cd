//! `agentmesh probe URL`: a health check for images without a shell or curl.
//!
//! `http://…` passes on a 2xx answer; `grpc://host:port` asks the standard
//! `grpc.health.v1.Health/Check` for the whole server.

use anyhow::{bail, Context};
use std::time::Duration;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn probe(url: &str) -> anyhow::Result<()> {
    if let Some(address) = url.strip_prefix("grpc://") {
        return grpc(address).await;
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return http(url).await;
    }
    bail!("probe takes an http://, https:// or grpc:// URL, not {url:?}")
}

async fn http(url: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().timeout(PROBE_TIMEOUT).build()?;
    let response = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if !response.status().is_success() {
        bail!("{url} answered {}", response.status());
    }
    Ok(())
}

async fn grpc(address: &str) -> anyhow::Result<()> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(PROBE_TIMEOUT)
        .timeout(PROBE_TIMEOUT);
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("connecting {address}"))?;
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let answer = HealthClient::new(channel)
        .check(request)
        .await?
        .into_inner();
    if answer.status != ServingStatus::Serving as i32 {
        bail!("{address} is not serving (status {})", answer.status);
    }
    Ok(())
}
