//! Usage reports: every answered attempt is reported once, so a caller can bill it, even a
//! stream the caller dropped halfway (then the tokens are estimated).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::{ChatMessage, Price, Usage};

/// How the answer an attempt got ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageOutcome {
    /// The answer arrived whole.
    Finished,
    /// The answer broke off (cut stream, timeout, provider error chunk).
    Failed,
    /// The caller dropped the stream before its end; the request was cancelled upstream.
    Dropped,
}

/// The tokens one provider answer used.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageReport {
    pub provider: String,
    /// The model the provider named in its answer, else the one asked for.
    pub model: String,
    /// Priced by `model` when the price table has it, else by the model asked for.
    pub usage: Usage,
    /// True when the client counted (about 4 characters a token) instead of the provider.
    pub estimated: bool,
    pub outcome: UsageOutcome,
}

/// Receives every [`UsageReport`]. Called on the task that ran the call or dropped the
/// stream (possibly inside a `Drop`), so it must be quick and must not block: push to a
/// channel or add to counters.
pub trait UsageSink: Send + Sync {
    fn record(&self, report: UsageReport);
}

impl<F: Fn(UsageReport) + Send + Sync> UsageSink for F {
    fn record(&self, report: UsageReport) {
        self(report)
    }
}

/// The sink as the client holds it (Debug without showing the closure).
#[derive(Clone, Default)]
pub(crate) struct SharedSink(Option<Arc<dyn UsageSink>>);

impl SharedSink {
    pub fn new(sink: Arc<dyn UsageSink>) -> SharedSink {
        SharedSink(Some(sink))
    }

    pub fn record(&self, report: UsageReport) {
        tracing::debug!(
            provider = %report.provider,
            model = %report.model,
            prompt_tokens = report.usage.prompt_tokens,
            completion_tokens = report.usage.completion_tokens,
            estimated = report.estimated,
            outcome = ?report.outcome,
            "llm usage"
        );
        crate::metrics::usage(&report);
        if let Some(sink) = &self.0 {
            sink.record(report);
        }
    }
}

impl fmt::Debug for SharedSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "UsageSink"
        } else {
            "None"
        })
    }
}

/// About one token per four characters, rounded up.
pub(crate) fn estimate_tokens(chars: usize) -> u32 {
    u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX)
}

/// Characters of everything sent as the prompt.
pub(crate) fn prompt_chars(messages: &[ChatMessage]) -> usize {
    messages
        .iter()
        .map(|m| {
            let calls: usize = m
                .tool_calls
                .iter()
                .map(|c| c.name.chars().count() + c.arguments.chars().count())
                .sum();
            m.content.as_deref().map_or(0, |c| c.chars().count()) + calls
        })
        .sum()
}

/// The price of the model that answered, else of the model asked for, else free.
pub(crate) fn price_for(prices: &HashMap<String, Price>, answered: &str, asked: &str) -> Price {
    prices
        .get(answered)
        .or_else(|| prices.get(asked))
        .copied()
        .unwrap_or_default()
}

/// Estimated usage, priced.
pub(crate) fn estimate(prompt_chars: usize, completion_chars: usize, price: &Price) -> Usage {
    let (prompt_tokens, completion_tokens) = (
        estimate_tokens(prompt_chars),
        estimate_tokens(completion_chars),
    );
    Usage {
        prompt_tokens,
        completion_tokens,
        cost_usd: price.cost(prompt_tokens, completion_tokens),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_round_up_and_prices_prefer_the_answering_model() {
        assert_eq!(estimate_tokens(0), 0);
        assert_eq!(estimate_tokens(9), 3);
        let messages = [ChatMessage::new("user", "héllo wörld")];
        assert_eq!(prompt_chars(&messages), 11);
        let cheap = Price {
            input_per_mtok: 1.0,
            output_per_mtok: 1.0,
        };
        let dear = Price {
            input_per_mtok: 9.0,
            output_per_mtok: 9.0,
        };
        let prices = HashMap::from([("asked".to_string(), cheap), ("served".to_string(), dear)]);
        assert_eq!(price_for(&prices, "served", "asked"), dear);
        assert_eq!(price_for(&prices, "served-2024-01-01", "asked"), cheap);
        assert_eq!(price_for(&prices, "x", "y"), Price::default());
    }
}
