//! `agentmesh eval search`: how well a running gateway's search finds the
//! documents known to answer each question, next to a plain BM25 baseline.

mod bm25;

use crate::client::Client;
use crate::ClientArgs;
use anyhow::{bail, Context};
use bm25::Bm25;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Passages asked of `/v1/search` per question; their distinct documents,
/// in order of their best passage, form the ranked list that is scored.
const PASSAGES_FETCHED: u64 = 50;
/// Questions in flight at once.
const CONCURRENCY: usize = 4;

#[derive(Debug, clap::Subcommand)]
pub enum EvalCommand {
    /// Recall@1, recall@5 and MRR of `/v1/search` over a JSONL question set.
    Search(SearchEvalArgs),
}

#[derive(Debug, clap::Args)]
pub struct SearchEvalArgs {
    /// One JSON object a line: {"id", "question", "relevant": [document ids]}.
    pub file: PathBuf,
    /// Documents kept per question; MRR counts a hit only within these.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=50))]
    pub top_k: u64,
    /// Directory of the ingested files: also score a plain BM25 over these whole files.
    #[arg(long)]
    pub docs: Option<PathBuf>,
    /// Score only the BM25 baseline (needs --docs, no gateway).
    #[arg(long, requires = "docs")]
    pub baseline: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// One line of the question file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Question {
    id: String,
    question: String,
    relevant: Vec<String>,
}

/// Where one system ranked one question's relevant documents.
#[derive(Debug, Clone, Serialize)]
struct Judged {
    id: String,
    /// 1-based rank of the first relevant document within top-k, if any.
    first_hit: Option<usize>,
    recall_at_1: f64,
    recall_at_5: f64,
    ranked: Vec<String>,
}

/// Means over all questions.
#[derive(Debug, Clone, Serialize, PartialEq)]
struct Summary {
    questions: usize,
    recall_at_1: f64,
    recall_at_5: f64,
    mrr: f64,
    /// Share of questions with at least one relevant document in the top 5.
    hit_at_5: f64,
}

pub async fn run(command: EvalCommand) -> anyhow::Result<()> {
    match command {
        EvalCommand::Search(args) => search(args).await,
    }
}

async fn search(args: SearchEvalArgs) -> anyhow::Result<()> {
    let questions = read_questions(&args.file)?;
    let top_k = usize::try_from(args.top_k)?;
    let mut systems: Vec<(String, Vec<Judged>)> = Vec::new();
    if !args.baseline {
        let client = Client::new(&args.client)?;
        let judged = judge_gateway(&client, &questions, top_k).await?;
        systems.push(("agentmesh".into(), judged));
    }
    if let Some(dir) = &args.docs {
        let index = Bm25::from_dir(dir)?;
        tracing::debug!(documents = index.len(), "baseline indexed");
        let judged = questions
            .iter()
            .map(|q| judge(q, index.rank(&q.question, top_k), top_k))
            .collect();
        systems.push(("bm25-baseline".into(), judged));
    }
    report(&systems, args.client.json)
}

fn read_questions(path: &Path) -> anyhow::Result<Vec<Question>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut questions = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let q: Question = serde_json::from_str(line).with_context(|| {
            format!(
                "{} line {}: expected {{\"id\", \"question\", \"relevant\": [..]}}",
                path.display(),
                n + 1
            )
        })?;
        if q.question.trim().is_empty() || q.relevant.is_empty() {
            bail!(
                "{} line {}: question and relevant must not be empty",
                path.display(),
                n + 1
            );
        }
        questions.push(q);
    }
    if questions.is_empty() {
        bail!("{} holds no questions", path.display());
    }
    Ok(questions)
}

async fn judge_gateway(
    client: &Client,
    questions: &[Question],
    top_k: usize,
) -> anyhow::Result<Vec<Judged>> {
    let results: Vec<anyhow::Result<Judged>> = futures::stream::iter(questions)
        .map(|q| async move {
            let ranked = ranked_documents(client, &q.question, top_k)
                .await
                .with_context(|| format!("question {}", q.id))?;
            Ok(judge(q, ranked, top_k))
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Distinct document ids of the passages `/v1/search` returns, best first.
async fn ranked_documents(
    client: &Client,
    query: &str,
    top_k: usize,
) -> anyhow::Result<Vec<String>> {
    let body = json!({"query": query, "top_k": PASSAGES_FETCHED});
    let found = client.post("/v1/search", &body).await?;
    let passages = found.get("results").and_then(Value::as_array);
    let Some(passages) = passages else {
        bail!("the gateway's search answer has no results array");
    };
    let ids = passages
        .iter()
        .filter_map(|p| p.get("document_id").and_then(Value::as_str));
    Ok(distinct(ids, top_k))
}

fn distinct<'a>(ids: impl Iterator<Item = &'a str>, n: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for id in ids {
        if !out.iter().any(|o| o == id) {
            out.push(id.to_string());
        }
        if out.len() == n {
            break;
        }
    }
    out
}

fn judge(q: &Question, ranked: Vec<String>, top_k: usize) -> Judged {
    let found_in = |n: usize| {
        let hits = q
            .relevant
            .iter()
            .filter(|r| ranked.iter().take(n).any(|d| d == *r));
        hits.count() as f64 / q.relevant.len() as f64
    };
    let first_hit = ranked
        .iter()
        .take(top_k)
        .position(|d| q.relevant.contains(d))
        .map(|i| i + 1);
    Judged {
        id: q.id.clone(),
        first_hit,
        recall_at_1: found_in(1),
        recall_at_5: found_in(5),
        ranked,
    }
}

fn summarize(judged: &[Judged]) -> Summary {
    let n = judged.len().max(1) as f64;
    let mean = |f: &dyn Fn(&Judged) -> f64| judged.iter().map(f).sum::<f64>() / n;
    Summary {
        questions: judged.len(),
        recall_at_1: mean(&|j| j.recall_at_1),
        recall_at_5: mean(&|j| j.recall_at_5),
        mrr: mean(&|j| j.first_hit.map_or(0.0, |r| 1.0 / r as f64)),
        hit_at_5: mean(&|j| f64::from(u8::from(j.first_hit.is_some_and(|r| r <= 5)))),
    }
}

fn report(systems: &[(String, Vec<Judged>)], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        let out: Vec<Value> = systems
            .iter()
            .map(|(name, judged)| {
                json!({"system": name, "summary": summarize(judged), "questions": judged})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:<16} {:>9} {:>9} {:>9} {:>7} {:>6}",
        "system", "recall@1", "recall@5", "hit@5", "MRR", "n"
    );
    for (name, judged) in systems {
        let s = summarize(judged);
        println!(
            "{:<16} {:>9.3} {:>9.3} {:>9.3} {:>7.3} {:>6}",
            name, s.recall_at_1, s.recall_at_5, s.hit_at_5, s.mrr, s.questions
        );
    }
    if let [(_, ours), (_, base)] = systems {
        let (a, b) = (summarize(ours), summarize(base));
        println!(
            "difference       {:>+9.3} {:>+9.3} {:>+9.3} {:>+7.3}",
            a.recall_at_1 - b.recall_at_1,
            a.recall_at_5 - b.recall_at_5,
            a.hit_at_5 - b.hit_at_5,
            a.mrr - b.mrr
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn question(relevant: &[&str]) -> Question {
        Question {
            id: "q".into(),
            question: "?".into(),
            relevant: relevant.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn recall_counts_relevant_documents_and_mrr_the_first_hit() {
        let q = question(&["a", "b"]);
        let j = judge(&q, ids(&["x", "a", "y", "z", "w", "b"]), 5);
        assert_eq!(j.first_hit, Some(2));
        assert_eq!(j.recall_at_1, 0.0);
        assert_eq!(j.recall_at_5, 0.5);
        let top = judge(&q, ids(&["b", "a"]), 5);
        let s = summarize(&[j, top]);
        assert_eq!(s.recall_at_1, 0.25);
        assert_eq!(s.recall_at_5, 0.75);
        assert_eq!(s.mrr, 0.75);
        assert_eq!(s.hit_at_5, 1.0);
    }

    #[test]
    fn a_hit_beyond_top_k_earns_nothing() {
        let j = judge(&question(&["b"]), ids(&["x", "y", "b"]), 2);
        assert_eq!(j.first_hit, None);
        assert_eq!(summarize(&[j]).mrr, 0.0);
    }

    #[test]
    fn passages_collapse_to_distinct_documents_in_order() {
        let list = ["a", "a", "b", "a", "c", "d"];
        assert_eq!(distinct(list.into_iter(), 3), ["a", "b", "c"]);
    }

    #[test]
    fn bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.jsonl");
        std::fs::write(
            &path,
            "{\"id\": \"1\", \"question\": \"x\", \"relevant\": [\"a\"]}\n{}\n",
        )
        .unwrap();
        let err = read_questions(&path).unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_questions(&path).is_err());
    }
}
