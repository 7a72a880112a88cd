//! Client commands: keys, docs, data and chat against a running gateway.

use crate::client::{error_message, Client};
use crate::ClientArgs;
use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Requests sent at once by `docs ingest` and `data load`.
const UPLOAD_CONCURRENCY: usize = 4;

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Create a key; its secret is printed once.
    Create {
        #[arg(long)]
        name: String,
        /// Comma-separated agent names (chat,search,data) or admin; empty: every agent.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u32>,
        /// Tokens per minute.
        #[arg(long)]
        tpm: Option<u32>,
        /// Budget in US dollars.
        #[arg(long)]
        budget_usd: Option<f64>,
        /// Expiry, RFC 3339 (2027-01-31T00:00:00Z).
        #[arg(long)]
        expires_at: Option<String>,
    },
    List,
    /// Give a key a new secret; id, limits and spend stay.
    Rotate {
        id: String,
    },
    /// Revoke a key at once.
    Revoke {
        id: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum DocsCommand {
    /// Ingest Markdown and text files (a directory is walked recursively).
    Ingest {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    List,
    Delete {
        id: String,
    },
    /// Ranked passages for a query (no LLM).
    Search {
        query: String,
        #[arg(long, default_value_t = 5)]
        top_k: u32,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum DataCommand {
    /// Load CSV files as tables, each named after its file (`orders.csv` -> `orders`); a
    /// `.sql` file named here is read as a PostgreSQL dump whose tables keep their names.
    Load {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    List,
    /// Run one read-only SQL query.
    Query {
        dataset: String,
        sql: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct ChatArgs {
    /// The question; without one, questions are read from standard input, one a line.
    pub question: Option<String>,
    /// chat, search or data.
    #[arg(long, default_value = "chat")]
    pub agent: String,
    /// Keep memory across calls under this id.
    #[arg(long)]
    pub conversation: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn keys(command: KeysCommand, args: ClientArgs) -> anyhow::Result<()> {
    let client = Client::new(&args)?;
    let value = match command {
        KeysCommand::Create {
            name,
            scopes,
            rpm,
            tpm,
            budget_usd,
            expires_at,
        } => {
            let body = json!({
                "name": name, "scopes": scopes, "rpm_limit": rpm, "tpm_limit": tpm,
                "budget_usd": budget_usd, "expires_at": expires_at,
            });
            client.post("/admin/keys", &body).await?
        }
        KeysCommand::List => client.get("/admin/keys").await?,
        KeysCommand::Rotate { id } => {
            client
                .post(&format!("/admin/keys/{id}/rotate"), &json!({}))
                .await?
        }
        KeysCommand::Revoke { id } => client.delete(&format!("/admin/keys/{id}")).await?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_keys(&value);
    }
    Ok(())
}

fn print_keys(value: &Value) {
    let keys: Vec<&Value> = match value.get("data").and_then(Value::as_array) {
        Some(list) => list.iter().collect(),
        None => vec![value],
    };
    for key in keys {
        let text = |f: &str| key.get(f).map(plain).unwrap_or_default();
        println!(
            "{}  {}  prefix={}  scopes={}  rpm={}  tpm={}  budget={}  expires={}  revoked={}",
            text("id"),
            text("name"),
            text("prefix"),
            text("scopes"),
            text("rpm_limit"),
            text("tpm_limit"),
            text("budget_usd"),
            text("expires_at"),
            text("revoked_at"),
        );
        if let Some(secret) = key.get("key").and_then(Value::as_str) {
            println!("key: {secret}\n(shown once: store it now)");
        }
    }
}

fn plain(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(plain).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

pub async fn docs(command: DocsCommand, args: ClientArgs) -> anyhow::Result<()> {
    let client = Client::new(&args)?;
    match command {
        DocsCommand::Ingest { paths } => ingest(&client, &paths, args.json).await,
        DocsCommand::List => {
            let value = client.get("/v1/documents").await?;
            print_list(&value, args.json, &["id", "title", "chunks", "source"])
        }
        DocsCommand::Delete { id } => {
            let value = client.delete(&format!("/v1/documents/{id}")).await?;
            print_value(&value, args.json, &format!("deleted document {id}"))
        }
        DocsCommand::Search { query, top_k } => {
            let value = client
                .post("/v1/search", &json!({"query": query, "top_k": top_k}))
                .await?;
            print_search(&value, args.json)
        }
    }
}

async fn ingest(client: &Client, paths: &[PathBuf], as_json: bool) -> anyhow::Result<()> {
    let files = collect_files(paths, &["md", "markdown", "txt"])?;
    let results = upload_each(&files, "ingesting", |path| ingest_file(client, path)).await;
    summarize("documents", results, as_json)
}

/// Sends every file with `send`, a few at a time, behind one progress bar; a
/// failed file is reported and the others go on.
async fn upload_each<'a, F, Fut>(
    files: &'a [PathBuf],
    what: &str,
    send: F,
) -> Vec<anyhow::Result<Value>>
where
    F: Fn(&'a Path) -> Fut + Copy + 'a,
    Fut: std::future::Future<Output = anyhow::Result<Value>> + 'a,
{
    let bar = progress(files.len(), what);
    let results = futures::stream::iter(files)
        .map(|path| {
            let bar = bar.clone();
            async move {
                let result = send(path).await;
                if let Err(err) = &result {
                    bar.println(format!("failed: {}: {err:#}", path.display()));
                }
                bar.inc(1);
                result
            }
        })
        .buffer_unordered(UPLOAD_CONCURRENCY)
        .collect()
        .await;
    bar.finish_and_clear();
    results
}

async fn ingest_file(client: &Client, path: &Path) -> anyhow::Result<Value> {
    let bytes = tokio::fs::read(path).await?;
    let text = String::from_utf8(bytes).context("not UTF-8 text")?;
    let id = file_name(path);
    let body = json!({
        "id": id,
        "title": guess_title(&text).unwrap_or_else(|| file_stem(path)),
        "text": text,
        "source": path.display().to_string(),
    });
    client.post("/v1/documents", &body).await
}

/// The front matter's `title:` or the first `# ` heading.
fn guess_title(text: &str) -> Option<String> {
    let mut lines = text.lines();
    if text.starts_with("---") {
        lines.next();
        for line in lines.by_ref() {
            if line.trim() == "---" {
                break;
            }
            if let Some(title) = line.strip_prefix("title:") {
                let title = title.trim().trim_matches(|c| c == '"' || c == '\'');
                if !title.is_empty() {
                    return Some(title.to_string());
                }
            }
        }
    }
    lines
        .find_map(|l| l.strip_prefix("# "))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

pub async fn data(command: DataCommand, args: ClientArgs) -> anyhow::Result<()> {
    let client = Client::new(&args)?;
    match command {
        DataCommand::Load { paths } => load(&client, &paths, args.json).await,
        DataCommand::List => {
            let value = client.get("/v1/datasets").await?;
            print_list(&value, args.json, &["name", "row_count", "columns"])
        }
        DataCommand::Query { dataset, sql } => {
            let path = format!("/v1/datasets/{dataset}/query");
            let value = client.post(&path, &json!({"sql": sql})).await?;
            print_rows(&value, args.json)
        }
    }
}

async fn load(client: &Client, paths: &[PathBuf], as_json: bool) -> anyhow::Result<()> {
    let files = collect_files(paths, &["csv"])?;
    let results = upload_each(&files, "loading", |path| load_file(client, path)).await;
    // A dump answers with the list of tables it stored: one result per table.
    let results = results
        .into_iter()
        .flat_map(|result| match result {
            Ok(Value::Object(mut list)) if list.get("object") == Some(&json!("list")) => {
                let tables = match list.remove("data") {
                    Some(Value::Array(tables)) => tables,
                    _ => Vec::new(),
                };
                tables.into_iter().map(Ok).collect()
            }
            other => vec![other],
        })
        .collect();
    summarize("datasets", results, as_json)
}

async fn load_file(client: &Client, path: &Path) -> anyhow::Result<Value> {
    let text = tokio::fs::read_to_string(path)
        .await
        .context("not UTF-8 text")?;
    let is_dump = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("sql"));
    let body = match is_dump {
        true => json!({"dump": text}),
        false => json!({"name": file_stem(path), "csv": text}),
    };
    client.post("/v1/datasets", &body).await
}

pub async fn chat(args: ChatArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.client)?;
    if let Some(question) = &args.question {
        return ask(&client, &args, question).await;
    }
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        eprint!("> ");
        line.clear();
        if stdin.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let question = line.trim();
        if !question.is_empty() {
            ask(&client, &args, question).await?;
        }
    }
}

/// Streams one answer to standard output as it arrives.
async fn ask(client: &Client, args: &ChatArgs, question: &str) -> anyhow::Result<()> {
    let mut body = json!({
        "model": args.agent,
        "stream": true,
        "messages": [{"role": "user", "content": question}],
    });
    if let Some(id) = &args.conversation {
        body["conversation_id"] = json!(id);
    }
    let response = client
        .request(Method::POST, "/v1/chat/completions")
        .json(&body)
        .send()
        .await
        .context("cannot reach the gateway")?;
    let status = response.status();
    if !status.is_success() {
        bail!("{}", error_message(status, &response.text().await?));
    }

    let mut buffer = Vec::new();
    let mut stream = response.bytes_stream().map_err(anyhow::Error::from);
    let mut out = std::io::stdout();
    while let Some(bytes) = stream.try_next().await? {
        buffer.extend_from_slice(&bytes);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(done) = handle_sse_line(line.trim_end(), &mut out)? {
                writeln!(out)?;
                return done;
            }
        }
    }
    bail!("the stream ended before the answer was complete")
}

/// Prints a content delta; returns Some when the stream is over.
fn handle_sse_line(line: &str, out: &mut impl Write) -> anyhow::Result<Option<anyhow::Result<()>>> {
    let Some(data) = line.strip_prefix("data:") else {
        return Ok(None);
    };
    let data = data.trim();
    if data == "[DONE]" {
        return Ok(Some(Ok(())));
    }
    let event: Value = serde_json::from_str(data).context("bad event from the gateway")?;
    if let Some(message) = event.pointer("/error/message").and_then(Value::as_str) {
        return Ok(Some(Err(anyhow::anyhow!("{message}"))));
    }
    if let Some(text) = event
        .pointer("/choices/0/delta/content")
        .and_then(Value::as_str)
    {
        write!(out, "{text}")?;
        out.flush()?;
    }
    Ok(None)
}

fn collect_files(paths: &[PathBuf], extensions: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        if meta.is_dir() {
            walk(path, extensions, &mut files)?;
        } else {
            files.push(path.clone());
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("no files ending in .{} found", extensions.join(", ."));
    }
    Ok(files)
}

fn walk(dir: &Path, extensions: &[&str], files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, extensions, files)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| extensions.contains(&e.to_ascii_lowercase().as_str()))
        {
            files.push(path);
        }
    }
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    let template = "{msg} [{bar:30}] {pos}/{len} files, {per_sec}, eta {eta}";
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

fn summarize(what: &str, results: Vec<anyhow::Result<Value>>, as_json: bool) -> anyhow::Result<()> {
    let failed = results.iter().filter(|r| r.is_err()).count();
    let done: Vec<Value> = results.into_iter().filter_map(Result::ok).collect();
    if as_json {
        println!("{}", json!({"ok": done, "failed": failed}));
    } else {
        println!("{} {what} stored, {failed} failed", done.len());
    }
    if failed > 0 {
        bail!("{failed} file(s) failed");
    }
    Ok(())
}

fn print_value(value: &Value, as_json: bool, message: &str) -> anyhow::Result<()> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        println!("{message}");
    }
    Ok(())
}

fn print_list(value: &Value, as_json: bool, fields: &[&str]) -> anyhow::Result<()> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(value)?);
        return Ok(());
    }
    let items = value
        .get("data")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for item in items {
        let cells: Vec<String> = fields
            .iter()
            .map(|f| item.get(*f).map(short).unwrap_or_default())
            .collect();
        println!("{}", cells.join("  "));
    }
    Ok(())
}

fn short(value: &Value) -> String {
    match value {
        Value::Array(items) => {
            let names: Vec<String> = items
                .iter()
                .map(|i| i.get("name").map(plain).unwrap_or_else(|| plain(i)))
                .collect();
            names.join(",")
        }
        other => plain(other),
    }
}

fn print_search(value: &Value, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(value)?);
        return Ok(());
    }
    let results = value
        .get("results")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (n, r) in results.iter().enumerate() {
        let get = |f: &str| r.get(f).map(plain).unwrap_or_default();
        println!(
            "{}. {} ({}) > {}  score {}",
            n + 1,
            get("title"),
            get("document_id"),
            get("heading"),
            get("score")
        );
    }
    Ok(())
}

fn print_rows(value: &Value, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(value)?);
        return Ok(());
    }
    let columns = value.get("columns").map(plain).unwrap_or_default();
    println!("{}", columns.replace(',', " | "));
    for row in value
        .get("rows")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let cells: Vec<String> = row
            .as_array()
            .map(|r| r.iter().map(plain).collect())
            .unwrap_or_default();
        println!("{}", cells.join(" | "));
    }
    if value.get("truncated").and_then(Value::as_bool) == Some(true) {
        println!("(truncated)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn title_from_front_matter_then_heading() {
        assert_eq!(
            guess_title("---\ntitle: Secrets\n---\nbody").as_deref(),
            Some("Secrets")
        );
        assert_eq!(guess_title("intro\n# Pods\n").as_deref(), Some("Pods"));
        assert_eq!(guess_title("no title here"), None);
    }

    #[test]
    fn sse_lines_print_content_and_stop_on_done_or_error() {
        let mut out = Vec::new();
        let delta = r#"data: {"choices":[{"delta":{"content":"hé"}}]}"#;
        assert!(handle_sse_line(delta, &mut out).unwrap().is_none());
        assert_eq!(String::from_utf8(out.clone()).unwrap(), "hé");
        assert!(matches!(
            handle_sse_line("data: [DONE]", &mut out).unwrap(),
            Some(Ok(()))
        ));
        let error = r#"data: {"error":{"message":"provider down"}}"#;
        let end = handle_sse_line(error, &mut out).unwrap();
        assert!(matches!(end, Some(Err(e)) if e.to_string() == "provider down"));
        assert!(handle_sse_line(": keep-alive", &mut out).unwrap().is_none());
    }
}
