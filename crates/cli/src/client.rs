//! HTTP client of a running gateway, shared by the CLI's client commands.

use crate::ClientArgs;
use anyhow::{bail, Context};
use serde_json::Value;

pub struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    /// The key comes from `--api-key` / `AGENTMESH_API_KEY`, else from the
    /// admin key a local `agentmesh up` saved in its data directory.
    pub fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        let key = match &args.api_key {
            Some(key) => key.clone(),
            None => saved_key(args)?,
        };
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()?;
        Ok(Self {
            http,
            base: args.url.trim_end_matches('/').to_string(),
            key,
        })
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.request(reqwest::Method::POST, path).json(body))
            .await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.request(reqwest::Method::DELETE, path)).await
    }

    /// Sends and returns the JSON body, turning an error body into a readable error.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the gateway at {}", self.base))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("{}", error_message(status, &text));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).context("the gateway answered with invalid JSON")
    }
}

/// "404 Not Found: document x not found" from an OpenAI-shaped error body.
pub fn error_message(status: reqwest::StatusCode, body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v.pointer("/error/message"))
        .and_then(Value::as_str)
        .unwrap_or(body);
    format!("{status}: {message}")
}

fn saved_key(args: &ClientArgs) -> anyhow::Result<String> {
    let path = args.data_dir.join("admin.key");
    match std::fs::read_to_string(&path) {
        Ok(key) if !key.trim().is_empty() => Ok(key.trim().to_string()),
        _ => bail!(
            "no API key: set AGENTMESH_API_KEY or pass --api-key \
             (a local `agentmesh up` saves its admin key in {})",
            path.display()
        ),
    }
}
