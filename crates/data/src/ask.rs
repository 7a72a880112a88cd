//! Answers a question over the datasets: the model writes SQL, the agent checks and
//! runs it, then the model summarises the rows.

use crate::render::{describe_dataset, extract_sql, looks_like_sql, markdown_table, SHOWN_ROWS};
use crate::service::{DataAgent, MAX_ROWS};
use agentmesh_agent_runtime::{
    add_usage, delta_event, final_event, forward_llm_stream, status_from_llm, usage_event,
    EventSink,
};
use agentmesh_llm::{ChatMessage, CompletionRequest, Usage};
use agentmesh_proto::v1::ChatRequest;
use agentmesh_state::{DatasetInfo, QueryResult};
use tonic::{Code, Status};

const SAMPLE_ROWS: usize = 3;

const SUMMARY_PROMPT: &str = "You summarise the result of a SQL query for the user's \
question in two or three sentences. Use only the rows given; do not invent numbers.";

const NO_DATASETS: &str = "No datasets are registered yet, so there is nothing to query. \
Load a CSV file first.";

/// A query that could not be made to run: the SQL tried last and why it failed.
struct Failed {
    sql: String,
    error: String,
}

impl DataAgent {
    pub(crate) async fn answer(
        &self,
        req: ChatRequest,
        question: String,
        deadline: Option<std::time::Instant>,
        sink: EventSink,
    ) -> Result<(), Status> {
        if looks_like_sql(&question) {
            return self
                .answer_sql(question.trim(), &req.conversation_id, &sink)
                .await;
        }
        let datasets = self.datasets().await?;
        if datasets.is_empty() {
            return self
                .finish(&sink, NO_DATASETS.into(), Usage::default(), "", &req)
                .await;
        }
        let schema = self.schema_text(&datasets).await;
        let mut usage = Usage::default();
        let (sql, rows) = match self
            .write_and_run(&question, &schema, deadline, &mut usage)
            .await?
        {
            Ok(done) => done,
            Err(failed) => {
                let text = format!(
                    "I could not answer this with SQL. The last query I tried:\n\n{}\
                     It failed: {}",
                    sql_block(&failed.sql),
                    failed.error
                );
                return self.finish(&sink, text, usage, "", &req).await;
            }
        };

        let shown = format!("{}{}\n", sql_block(&sql), markdown_table(&rows, SHOWN_ROWS));
        sink.send(delta_event(shown.clone())).await?;
        let summary = CompletionRequest {
            deadline,
            ..summary_request(&question, &shown)
        };
        let out = forward_llm_stream(&self.ctx.llm, summary, &sink, false).await?;
        add_usage(&mut usage, &out.usage);
        self.finish(&sink, String::new(), usage, &out.model, &req)
            .await
    }

    /// The user typed SQL: check it, run it, show it; no model call.
    async fn answer_sql(
        &self,
        sql: &str,
        conversation: &str,
        sink: &EventSink,
    ) -> Result<(), Status> {
        self.check(sql).await?.map_err(|e| e.to_status())?;
        let rows = self.run(sql, MAX_ROWS).await?;
        let text = format!("{}{}", sql_block(sql), markdown_table(&rows, SHOWN_ROWS));
        sink.send(delta_event(text)).await?;
        sink.send(usage_event(&Usage::default())).await?;
        sink.send(final_event(
            "stop",
            self.ctx.llm.default_model(),
            conversation,
        ))
        .await
    }

    async fn finish(
        &self,
        sink: &EventSink,
        text: String,
        usage: Usage,
        model: &str,
        req: &ChatRequest,
    ) -> Result<(), Status> {
        if !text.is_empty() {
            sink.send(delta_event(text)).await?;
        }
        sink.send(usage_event(&usage)).await?;
        let model = if model.is_empty() {
            self.ctx.llm.default_model()
        } else {
            model
        };
        sink.send(final_event("stop", model, &req.conversation_id))
            .await
    }

    /// Every dataset with its columns and a few sample rows.
    async fn schema_text(&self, datasets: &[DatasetInfo]) -> String {
        let mut text = String::new();
        for info in datasets {
            let sql = format!("SELECT * FROM \"{}\" LIMIT {SAMPLE_ROWS}", info.name);
            let sample = self.run(&sql, SAMPLE_ROWS).await.ok();
            text.push_str(&describe_dataset(info, sample.as_ref()));
            text.push('\n');
        }
        text
    }

    /// Asks the model for SQL and runs it; on a refusal or query error the model is
    /// told the error and gets one more try.
    async fn write_and_run(
        &self,
        question: &str,
        schema: &str,
        deadline: Option<std::time::Instant>,
        usage: &mut Usage,
    ) -> Result<Result<(String, QueryResult), Failed>, Status> {
        let mut messages = vec![
            ChatMessage::new("system", sql_prompt(self.ctx.state.db.backend(), schema)),
            ChatMessage::new("user", question),
        ];
        let mut failed = None;
        for attempt in 0..2 {
            let req = CompletionRequest {
                messages: messages.clone(),
                temperature: Some(0.0),
                deadline,
                ..CompletionRequest::default()
            };
            let reply = self
                .ctx
                .llm
                .complete(req)
                .await
                .map_err(|e| status_from_llm(&e))?;
            add_usage(usage, &reply.usage);
            let sql = extract_sql(&reply.content);
            match self.try_sql(&sql).await? {
                Ok(rows) => return Ok(Ok((sql, rows))),
                Err(error) => {
                    tracing::info!(attempt, error = %error, "model sql failed");
                    messages.push(ChatMessage::new("assistant", reply.content));
                    messages.push(ChatMessage::new("user", retry_prompt(&error)));
                    failed = Some(Failed { sql, error });
                }
            }
        }
        let failed = failed.unwrap_or(Failed {
            sql: String::new(),
            error: "no query".into(),
        });
        Ok(Err(failed))
    }

    /// Ok(Err(message)) for what the model can fix; Err for outages.
    async fn try_sql(&self, sql: &str) -> Result<Result<QueryResult, String>, Status> {
        if let Err(refusal) = self.check(sql).await? {
            return Ok(Err(refusal.to_string()));
        }
        match self.run(sql, MAX_ROWS).await {
            Ok(rows) => Ok(Ok(rows)),
            Err(s) if matches!(s.code(), Code::InvalidArgument | Code::DeadlineExceeded) => {
                Ok(Err(s.message().to_string()))
            }
            Err(s) => Err(s),
        }
    }
}

fn sql_block(sql: &str) -> String {
    format!("```sql\n{}\n```\n\n", sql.trim())
}

fn sql_prompt(backend: &str, schema: &str) -> String {
    let dialect = if backend == "postgres" {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    format!(
        "You write one read-only {dialect} SQL query (SELECT or WITH) that answers the \
         user's question over these tables. Use only these tables and columns; compare \
         date columns with 'YYYY-MM-DD' literals. Reply with the query in a ```sql block \
         and nothing else.\n\n{schema}"
    )
}

fn retry_prompt(error: &str) -> String {
    format!(
        "That query failed: {error}\nReply with one corrected read-only SQL query in a \
         ```sql block."
    )
}

fn summary_request(question: &str, shown: &str) -> CompletionRequest {
    let user = format!("Question: {question}\n\nQuery and result:\n\n{shown}");
    CompletionRequest {
        messages: vec![
            ChatMessage::new("system", SUMMARY_PROMPT),
            ChatMessage::new("user", user),
        ],
        ..CompletionRequest::default()
    }
}
