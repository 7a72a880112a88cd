//! Records kept by the state layer.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// An API key as stored: never the secret itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    /// First characters of the secret, for display (`am-abc1…`).
    pub prefix: String,
    /// Agent names (`chat`, `search`, `data`) or `admin`. Empty: every agent.
    pub scopes: Vec<String>,
    pub rpm_limit: Option<u32>,
    pub tpm_limit: Option<u32>,
    pub budget_usd: Option<f64>,
    pub spent_usd: f64,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    pub fn is_admin(&self) -> bool {
        self.scopes.iter().any(|s| s == "admin")
    }

    /// Admin keys may call every agent; otherwise an empty scope list means all agents.
    pub fn allows_agent(&self, agent: &str) -> bool {
        self.scopes.is_empty() || self.is_admin() || self.scopes.iter().any(|s| s == agent)
    }
}

#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub secret_hash: String,
    pub scopes: Vec<String>,
    pub rpm_limit: Option<u32>,
    pub tpm_limit: Option<u32>,
    pub budget_usd: Option<f64>,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredMessage {
    pub position: i64,
    pub role: String,
    pub content: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Conversation {
    pub id: String,
    pub key_id: String,
    pub created_at: DateTime<Utc>,
    pub messages: Vec<StoredMessage>,
}

#[derive(Debug, Clone)]
pub struct NewMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone)]
pub struct NewDocument {
    pub id: String,
    pub title: String,
    pub source: String,
    /// A JSON object.
    pub metadata: serde_json::Value,
}

#[derive(Debug, Clone)]
pub struct NewChunk {
    /// Heading path of the section the chunk comes from ("Pods > Lifecycle").
    pub heading: String,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DocumentInfo {
    pub id: String,
    pub title: String,
    pub source: String,
    pub chunks: u32,
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScoredChunk {
    pub document_id: String,
    pub title: String,
    pub source: String,
    pub heading: String,
    pub text: String,
    /// Higher is better; scales differ between backends.
    pub score: f64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Integer,
    /// Exact decimal (money): NUMERIC on Postgres; see the SQLite backend for its storage.
    Decimal,
    /// Binary floating point, for values written with an exponent.
    Real,
    /// A calendar day, `YYYY-MM-DD`.
    Date,
    Text,
}

impl ColumnType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Integer => "integer",
            Self::Decimal => "decimal",
            Self::Real => "real",
            Self::Date => "date",
            Self::Text => "text",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ColumnInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ColumnType,
}

/// A parsed, validated CSV file ready to be stored as a table.
#[derive(Debug, Clone)]
pub struct TableData {
    /// Checked identifier: `[a-z][a-z0-9_]*`, at most 63 bytes.
    pub name: String,
    pub columns: Vec<ColumnInfo>,
    /// Each row has exactly `columns.len()` values; None is SQL NULL.
    pub rows: Vec<Vec<Option<String>>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatasetInfo {
    pub name: String,
    pub columns: Vec<ColumnInfo>,
    pub row_count: u64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<serde_json::Value>>,
    pub truncated: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UsageRecord {
    pub request_id: String,
    pub key_id: String,
    pub agent: String,
    pub model: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub cost_usd: f64,
    pub latency_ms: u32,
    /// HTTP status sent to the client.
    pub status: u16,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UsageSummary {
    pub key_id: String,
    /// YYYY-MM-DD (UTC).
    pub day: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredResponse {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum IdempotencyClaim {
    Claimed,
    InProgress,
    Done(StoredResponse),
}

/// Per-minute limits of a key; None means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateLimits {
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
}

/// The outcome of a rate check, with what the `x-ratelimit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateDecision {
    pub allowed: bool,
    pub remaining_requests: Option<u32>,
    pub remaining_tokens: Option<u64>,
    /// Seconds until the window frees capacity.
    pub reset_secs: u64,
    /// When denied: which limit (`requests` or `tokens`).
    pub limited_by: Option<&'static str>,
}

/// What the conversation cache holds for one id.
#[derive(Debug, Clone, PartialEq)]
pub enum CachedConversation {
    Hit(Conversation),
    /// Not cached. `version` is the conversation's invalidation count as read
    /// now: a copy loaded from the database after this read may be cached
    /// with it, and is refused when an append has bumped it meanwhile.
    Miss {
        version: u64,
    },
}

/// The outcome of reserving spend against a budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetDecision {
    /// True when the amount was added; false when it would pass the budget.
    pub allowed: bool,
    /// The spend counter after the call.
    pub spent_usd: f64,
}

/// Spend to reserve from a key's budget when a request is admitted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpendReservation {
    pub usd: f64,
    pub budget: f64,
    /// The spend recorded in the database, where the counter starts when missing.
    pub seed: f64,
}

/// The outcome of [`crate::Hot::admit`]. The request may run only when both allow it;
/// when either refuses, neither consumed anything.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Admitted {
    /// None for a request without a reservation.
    pub budget: Option<BudgetDecision>,
    /// When the budget refused, the limits were not checked (and this says allowed).
    pub rate: RateDecision,
}
