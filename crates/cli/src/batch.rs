//! `agentmesh batch run`: many agent tasks from one JSONL file in the OpenAI batch
//! format, a bounded number in flight, resumable from its own output file.
//!
//! Output lines are appended (and flushed) as each task ends, so a run stopped
//! at any point keeps every finished result. A new run with the same output
//! keeps the successful results, drops the failed ones and sends only the
//! tasks without a successful result.

use crate::client::Client;
use crate::ClientArgs;
use anyhow::{bail, Context};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Longest wait between two attempts of one task.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Period of the plain progress lines printed when stderr is not a terminal.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, clap::Subcommand)]
pub enum BatchCommand {
    /// Send every task of INPUT and write one result line per task to --output.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// JSONL, one request a line: {"custom_id", "method", "url", "body"}.
    pub input: PathBuf,
    /// JSONL results; an existing file is resumed.
    #[arg(long)]
    pub output: PathBuf,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub concurrency: u16,
    /// Attempts per task for 429, 5xx and transport errors.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub max_attempts: u32,
    /// Time limit of one attempt, in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// One input line, checked.
#[derive(Debug, Clone)]
struct Task {
    line: usize,
    custom_id: String,
    url: String,
    body: Value,
}

/// What became of one task.
#[derive(Debug)]
struct Outcome {
    status: Option<u16>,
    tokens: u64,
    cost_usd: f64,
}

pub async fn batch(command: BatchCommand) -> anyhow::Result<()> {
    match command {
        BatchCommand::Run(args) => run(args).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let client = Arc::new(Client::new(&args.client)?);
    let tasks = read_tasks(&args.input)?;
    let agents = known_agents(&client).await?;
    check_agents(&tasks, &agents)?;

    let done = resume(&args.output)?;
    let pending: Vec<Task> = tasks
        .iter()
        .filter(|t| !done.contains(&t.custom_id))
        .cloned()
        .collect();
    if !args.client.json {
        eprintln!(
            "batch: {} tasks, {} already done, {} to send, {} at a time",
            tasks.len(),
            done.len(),
            pending.len(),
            args.concurrency
        );
    }

    let output = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.output)
        .with_context(|| format!("opening {}", args.output.display()))?;
    let writer = Arc::new(Mutex::new(output));
    let stop = CancellationToken::new();
    let abandon = CancellationToken::new();
    tokio::spawn(watch_ctrl_c(stop.clone(), abandon.clone()));
    let progress = Progress::new(pending.len() as u64, args.client.json);

    let outcomes: Vec<Outcome> = futures::stream::iter(pending)
        .take_while(|_| std::future::ready(!stop.is_cancelled()))
        .map(|task| {
            let (client, writer, abandon) = (client.clone(), writer.clone(), abandon.clone());
            let progress = progress.clone();
            let limits = (args.max_attempts, Duration::from_secs(args.timeout_secs));
            async move {
                let result = tokio::select! {
                    result = send_task(&client, &task, limits) => result,
                    () = abandon.cancelled() => return None,
                };
                let outcome = record(&writer, &task, result);
                progress.finished(&outcome);
                Some(outcome)
            }
        })
        .buffer_unordered(usize::from(args.concurrency))
        .filter_map(std::future::ready)
        .collect()
        .await;
    progress.close();

    let summary = summarize(&outcomes, done.len(), tasks.len(), started.elapsed());
    print_summary(&summary, args.client.json)?;
    if stop.is_cancelled() {
        bail!("stopped before the end: run the same command again to resume");
    }
    Ok(())
}

/// Parses every line and reports every problem, with line numbers, before anything is sent.
fn read_tasks(path: &Path) -> anyhow::Result<Vec<Task>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut tasks = Vec::new();
    let mut problems = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let number = index + 1;
        let line = line.with_context(|| format!("reading line {number}"))?;
        if line.trim().is_empty() {
            continue;
        }
        match parse_task(number, &line) {
            Ok(task) => {
                if let Some(first) = seen.insert(task.custom_id.clone(), number) {
                    problems.push(format!(
                        "line {number}: custom_id {:?} already used on line {first}",
                        task.custom_id
                    ));
                }
                tasks.push(task);
            }
            Err(problem) => problems.push(format!("line {number}: {problem}")),
        }
    }
    if !problems.is_empty() {
        bail!(
            "{} has {} problem(s), nothing was sent:\n{}",
            path.display(),
            problems.len(),
            problems.join("\n")
        );
    }
    if tasks.is_empty() {
        bail!("{} has no tasks", path.display());
    }
    Ok(tasks)
}

fn parse_task(line: usize, text: &str) -> Result<Task, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))?;
    let custom_id = match value.get("custom_id") {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        _ => return Err("custom_id must be a non-empty string".into()),
    };
    let method = value
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("POST");
    if !method.eq_ignore_ascii_case("POST") {
        return Err(format!("method must be POST, not {method}"));
    }
    let url = value.get("url").and_then(Value::as_str).unwrap_or("");
    if agent_of_url(url).is_none() && url != "/v1/chat/completions" {
        return Err(format!(
            "url must be /v1/chat/completions or /agent/{{agent}}/chat, not {url:?}"
        ));
    }
    let body = value
        .get("body")
        .filter(|b| b.is_object())
        .cloned()
        .ok_or("body must be a JSON object")?;
    Ok(Task {
        line,
        custom_id,
        url: url.to_string(),
        body,
    })
}

fn agent_of_url(url: &str) -> Option<&str> {
    url.strip_prefix("/agent/")?
        .strip_suffix("/chat")
        .filter(|a| !a.contains('/'))
}

fn task_agent(task: &Task) -> Option<String> {
    match agent_of_url(&task.url) {
        Some(agent) => Some(agent.to_string()),
        None => task
            .body
            .get("model")
            .and_then(Value::as_str)
            .map(str::to_string),
    }
}

async fn known_agents(client: &Client) -> anyhow::Result<HashSet<String>> {
    let models = client
        .get("/v1/models")
        .await
        .context("listing the agents")?;
    let ids = models
        .get("data")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    Ok(ids
        .iter()
        .filter_map(|m| m.get("id")?.as_str().map(str::to_string))
        .collect())
}

fn check_agents(tasks: &[Task], agents: &HashSet<String>) -> anyhow::Result<()> {
    let problems: Vec<String> = tasks
        .iter()
        .filter_map(|task| match task_agent(task) {
            Some(agent) if agents.contains(&agent) => None,
            Some(agent) => Some(format!("line {}: unknown agent {agent:?}", task.line)),
            None => Some(format!("line {}: body.model must name an agent", task.line)),
        })
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    let mut known: Vec<&String> = agents.iter().collect();
    known.sort();
    bail!(
        "{} problem(s), nothing was sent (agents: {known:?}):\n{}",
        problems.len(),
        problems.join("\n")
    )
}

/// Keeps the successful results of an earlier run (rewriting the file without
/// the failed ones and any torn last line) and returns their custom ids.
fn resume(path: &Path) -> anyhow::Result<HashSet<String>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(HashSet::new());
    };
    let mut kept = String::new();
    let mut done = HashSet::new();
    for line in text.lines() {
        let Ok(value) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let status = value
            .pointer("/response/status_code")
            .and_then(Value::as_u64);
        let id = value.get("custom_id").and_then(Value::as_str);
        if let (Some(200..=299), Some(id)) = (status, id) {
            if done.insert(id.to_string()) {
                kept.push_str(line);
                kept.push('\n');
            }
        }
    }
    let temporary = path.with_extension("jsonl.resume");
    std::fs::write(&temporary, kept)?;
    std::fs::rename(&temporary, path)?;
    Ok(done)
}

/// The final HTTP answer of a task, after retries, or a transport error.
type TaskResult = Result<(u16, Option<String>, Value), String>;

async fn send_task(client: &Client, task: &Task, limits: (u32, Duration)) -> TaskResult {
    let (max_attempts, timeout) = limits;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let request = client
            .request(reqwest::Method::POST, &task.url)
            .timeout(timeout)
            .json(&task.body);
        let (retry, answer) = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let wait = retry_after(response.headers());
                let request_id = response
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = response.text().await.unwrap_or_default();
                let body = serde_json::from_str(&body).unwrap_or(Value::String(body));
                let retry = (status == 429 || status == 408 || status >= 500).then_some(wait);
                (retry, Ok((status, request_id, body)))
            }
            Err(err) => (Some(None), Err(transport_error(&err))),
        };
        match retry {
            Some(wait) if attempt < max_attempts => {
                tokio::time::sleep(wait.unwrap_or_else(|| backoff(attempt)).min(MAX_BACKOFF)).await;
            }
            _ => return answer,
        }
    }
}

fn transport_error(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        format!("timed out: {err}")
    } else {
        format!("transport error: {err}")
    }
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get("retry-after")?.to_str().ok()?;
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// Exponential backoff with full jitter: uniform in [0, 500 ms * 2^attempt].
fn backoff(attempt: u32) -> Duration {
    let ceiling = Duration::from_millis(500)
        .saturating_mul(1 << attempt.min(10))
        .min(MAX_BACKOFF);
    ceiling.mul_f64(rand::random::<f64>())
}

/// Appends the task's result line and flushes it before the task counts as done.
fn record(writer: &Mutex<std::fs::File>, task: &Task, result: TaskResult) -> Outcome {
    let (line, outcome) = result_line(task, result);
    let written = writer.lock().map_err(|_| ()).and_then(|mut file| {
        writeln!(file, "{line}")
            .and_then(|()| file.flush())
            .map_err(|_| ())
    });
    if written.is_err() {
        eprintln!("batch: cannot write the result of {}", task.custom_id);
    }
    outcome
}

fn result_line(task: &Task, result: TaskResult) -> (Value, Outcome) {
    let id = format!("batch_req_{}", uuid_like(task));
    match result {
        Ok((status, request_id, body)) => {
            let usage = body.get("usage");
            let tokens = usage
                .and_then(|u| u.get("total_tokens"))
                .and_then(Value::as_u64);
            let cost = usage
                .and_then(|u| u.get("cost_usd"))
                .and_then(Value::as_f64);
            let error = (!(200..300).contains(&status)).then(|| {
                json!({
                    "code": body.pointer("/error/code").cloned().unwrap_or(Value::Null),
                    "message": body.pointer("/error/message").cloned()
                        .unwrap_or_else(|| json!(format!("HTTP {status}"))),
                })
            });
            let line = json!({
                "id": id, "custom_id": task.custom_id,
                "response": {"status_code": status, "request_id": request_id, "body": body},
                "error": error,
            });
            let outcome = Outcome {
                status: Some(status),
                tokens: tokens.unwrap_or(0),
                cost_usd: cost.unwrap_or(0.0),
            };
            (line, outcome)
        }
        Err(message) => {
            let line = json!({"id": id, "custom_id": task.custom_id, "response": null,
                "error": {"code": "request_failed", "message": message}});
            (
                line,
                Outcome {
                    status: None,
                    tokens: 0,
                    cost_usd: 0.0,
                },
            )
        }
    }
}

fn uuid_like(task: &Task) -> String {
    format!("{:016x}{:08x}", rand::random::<u64>(), task.line)
}

async fn watch_ctrl_c(stop: CancellationToken, abandon: CancellationToken) {
    if tokio::signal::ctrl_c().await.is_ok() {
        eprintln!(
            "\nbatch: stopping; waiting for requests in flight (Ctrl-C again to abandon them)"
        );
        stop.cancel();
    }
    if tokio::signal::ctrl_c().await.is_ok() {
        abandon.cancel();
    }
}

/// A bar on a terminal; plain periodic lines otherwise.
#[derive(Clone)]
struct Progress {
    bar: ProgressBar,
    failed: Arc<AtomicU64>,
    plain: Option<Arc<Mutex<(Instant, Instant)>>>,
}

impl Progress {
    fn new(total: u64, quiet: bool) -> Self {
        let terminal = std::io::stderr().is_terminal() && !quiet;
        let bar = ProgressBar::with_draw_target(
            Some(total),
            if terminal {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        let template = "[{elapsed_precise}] [{bar:30}] {pos}/{len} done, {msg} failed, \
                        {per_sec}, eta {eta}";
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message("0");
        let plain =
            (!terminal && !quiet).then(|| Arc::new(Mutex::new((Instant::now(), Instant::now()))));
        Self {
            bar,
            failed: Arc::new(AtomicU64::new(0)),
            plain,
        }
    }

    fn finished(&self, outcome: &Outcome) {
        if !matches!(outcome.status, Some(200..=299)) {
            let failed = self.failed.fetch_add(1, Ordering::Relaxed) + 1;
            self.bar.set_message(failed.to_string());
        }
        self.bar.inc(1);
        if let Some(plain) = &self.plain {
            if let Ok(mut times) = plain.lock() {
                if times.1.elapsed() >= PLAIN_PROGRESS_EVERY {
                    times.1 = Instant::now();
                    self.print_line(times.0.elapsed());
                }
            }
        }
    }

    fn print_line(&self, elapsed: Duration) {
        let done = self.bar.position();
        let total = self.bar.length().unwrap_or(done);
        let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
        let eta = if rate > 0.0 {
            (total - done) as f64 / rate
        } else {
            0.0
        };
        eprintln!(
            "batch: {done}/{total} done, {} failed, {rate:.1}/s, eta {eta:.0}s",
            self.failed.load(Ordering::Relaxed)
        );
    }

    fn close(&self) {
        self.bar.finish_and_clear();
    }
}

fn summarize(outcomes: &[Outcome], resumed: usize, total: usize, wall: Duration) -> Value {
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    for outcome in outcomes {
        let key = outcome
            .status
            .map_or("transport_error".to_string(), |s| s.to_string());
        *by_status.entry(key).or_default() += 1;
    }
    let succeeded = outcomes
        .iter()
        .filter(|o| matches!(o.status, Some(200..=299)))
        .count();
    json!({
        "tasks": total,
        "already_done": resumed,
        "sent": outcomes.len(),
        "succeeded": succeeded,
        "failed": outcomes.len() - succeeded,
        "not_sent": total - resumed - outcomes.len(),
        "by_status": by_status,
        "total_tokens": outcomes.iter().map(|o| o.tokens).sum::<u64>(),
        "cost_usd": outcomes.iter().map(|o| o.cost_usd).sum::<f64>(),
        "wall_seconds": (wall.as_secs_f64() * 1000.0).round() / 1000.0,
    })
}

fn print_summary(summary: &Value, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        println!("{summary}");
        return Ok(());
    }
    println!(
        "batch: {} tasks: {} already done, {} sent, {} succeeded, {} failed, {} not sent",
        summary["tasks"],
        summary["already_done"],
        summary["sent"],
        summary["succeeded"],
        summary["failed"],
        summary["not_sent"]
    );
    println!(
        "by status: {}; tokens {}; cost ${:.4}; wall time {}s",
        summary["by_status"],
        summary["total_tokens"],
        summary["cost_usd"].as_f64().unwrap_or(0.0),
        summary["wall_seconds"]
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(lines: &[&str]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        for line in lines {
            writeln!(file, "{line}").unwrap();
        }
        file
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number() {
        let good = concat!(
            r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","#,
            r#""body":{"model":"chat"}}"#
        );
        let file = write(&[
            good,
            "{not json",
            good,
            r#"{"custom_id":"b","method":"GET","url":"/v1/chat/completions","body":{}}"#,
        ]);
        let err = read_tasks(file.path()).unwrap_err().to_string();
        assert!(err.contains("line 2: not JSON"), "{err}");
        assert!(
            err.contains("line 3: custom_id \"a\" already used on line 1"),
            "{err}"
        );
        assert!(err.contains("line 4: method must be POST"), "{err}");
    }

    #[test]
    fn unknown_agents_are_reported_before_sending() {
        let file = write(&[
            r#"{"custom_id":"a","url":"/v1/chat/completions","body":{"model":"chat"}}"#,
            r#"{"custom_id":"b","url":"/agent/nope/chat","body":{}}"#,
        ]);
        let tasks = read_tasks(file.path()).unwrap();
        let agents: HashSet<String> = ["chat".to_string()].into();
        let err = check_agents(&tasks, &agents).unwrap_err().to_string();
        assert!(err.contains("line 2: unknown agent \"nope\""), "{err}");
    }

    #[test]
    fn resume_keeps_successes_and_drops_failures_and_torn_lines() {
        let file = write(&[
            r#"{"custom_id":"a","response":{"status_code":200,"body":{}},"error":null}"#,
            r#"{"custom_id":"b","response":{"status_code":500,"body":{}},"error":{}}"#,
            r#"{"custom_id":"c","response":{"status_"#,
        ]);
        let done = resume(file.path()).unwrap();
        assert_eq!(done, ["a".to_string()].into());
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert_eq!(text.lines().count(), 1);
    }

    #[test]
    fn backoff_stays_under_its_ceiling() {
        for attempt in 1..20 {
            assert!(backoff(attempt) <= MAX_BACKOFF);
        }
    }
}
