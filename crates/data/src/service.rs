//! The data agent's gRPC services: `Data` (register, list, query) and `Agent`.

use crate::csv_load::parse_csv;
use crate::dump_load::parse_dump;
use crate::error::DataError;
use crate::sql_check::check_sql;
use agentmesh_agent_runtime::{
    invalid_argument, last_user_message, spawn_events, status_from_state, validate_messages,
    AgentContext, EventStream, RequestMeta,
};
use agentmesh_proto::v1::agent_server::Agent;
use agentmesh_proto::v1::data_server::Data;
use agentmesh_proto::v1::*;
use agentmesh_state::{DatasetInfo, QueryResult};
use std::collections::HashSet;
use std::time::Duration;
use tonic::{Request, Response, Status};
use tracing::Instrument;

pub const AGENT_NAME: &str = "data";
/// Most rows one query returns.
pub const MAX_ROWS: usize = 1000;
/// Statement timeout of every dataset query.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest CSV upload, in bytes.
pub const MAX_CSV_BYTES: usize = 32 * 1024 * 1024;

/// Serves both services over one shared context.
#[derive(Clone)]
pub struct DataAgent {
    pub(crate) ctx: AgentContext,
}

fn span<T>(req: &Request<T>, rpc: &'static str) -> tracing::Span {
    RequestMeta::from_metadata(req.metadata()).span(AGENT_NAME, rpc)
}

impl DataAgent {
    pub fn new(ctx: AgentContext) -> Self {
        Self { ctx }
    }

    pub(crate) async fn datasets(&self) -> Result<Vec<DatasetInfo>, Status> {
        self.ctx
            .state
            .db
            .list_datasets()
            .await
            .map_err(|e| status_from_state(&e))
    }

    /// Checks `sql` against the registered datasets; the refusal is the client's to fix.
    pub(crate) async fn check(&self, sql: &str) -> Result<Result<(), DataError>, Status> {
        let names: HashSet<String> = self.datasets().await?.into_iter().map(|d| d.name).collect();
        Ok(check_sql(sql, self.ctx.state.db.backend(), &names))
    }

    /// Runs already-checked SQL with the row cap and timeout.
    pub(crate) async fn run(&self, sql: &str, max_rows: usize) -> Result<QueryResult, Status> {
        let db = &self.ctx.state.db;
        let result = db.query_dataset(sql, max_rows, QUERY_TIMEOUT).await;
        result.map_err(|e| status_from_state(&e))
    }
}

#[tonic::async_trait]
impl Data for DataAgent {
    async fn register_dataset(
        &self,
        request: Request<RegisterDatasetRequest>,
    ) -> Result<Response<Dataset>, Status> {
        let span = span(&request, "RegisterDataset");
        async move {
            let req = request.into_inner();
            if req.csv.len() > MAX_CSV_BYTES {
                let msg = format!(
                    "csv is {} bytes, the limit is {MAX_CSV_BYTES}",
                    req.csv.len()
                );
                return Err(invalid_argument(msg, Some("csv")));
            }
            let table = parse_csv(&req.name, &req.csv).map_err(|e| e.to_status())?;
            let db = &self.ctx.state.db;
            let info = db
                .create_dataset(&table)
                .await
                .map_err(|e| status_from_state(&e))?;
            tracing::info!(dataset = %info.name, rows = info.row_count, "dataset registered");
            Ok(Response::new(dataset(info)))
        }
        .instrument(span)
        .await
    }

    async fn load_dump(
        &self,
        request: Request<LoadDumpRequest>,
    ) -> Result<Response<ListDatasetsResponse>, Status> {
        let span = span(&request, "LoadDump");
        async move {
            let req = request.into_inner();
            if req.sql.len() > MAX_CSV_BYTES {
                let msg = format!(
                    "the dump is {} bytes, the limit is {MAX_CSV_BYTES}",
                    req.sql.len()
                );
                return Err(invalid_argument(msg, Some("dump")));
            }
            // Every statement and value is checked here, before the first table is stored.
            let tables = parse_dump(&req.sql).map_err(|e| e.to_status())?;
            let db = &self.ctx.state.db;
            let mut datasets = Vec::with_capacity(tables.len());
            // TODO(gaps.md#data-types-and-dump): one transaction for all tables.
            for table in &tables {
                let info = db
                    .create_dataset(table)
                    .await
                    .map_err(|e| status_from_state(&e))?;
                datasets.push(dataset(info));
            }
            tracing::info!(tables = datasets.len(), "dump loaded");
            Ok(Response::new(ListDatasetsResponse { datasets }))
        }
        .instrument(span)
        .await
    }

    async fn list_datasets(
        &self,
        request: Request<ListDatasetsRequest>,
    ) -> Result<Response<ListDatasetsResponse>, Status> {
        let span = span(&request, "ListDatasets");
        async move {
            let datasets = self.datasets().await?.into_iter().map(dataset).collect();
            Ok(Response::new(ListDatasetsResponse { datasets }))
        }
        .instrument(span)
        .await
    }

    async fn query(
        &self,
        request: Request<DataQueryRequest>,
    ) -> Result<Response<DataQueryResponse>, Status> {
        let span = span(&request, "Query");
        async move {
            let req = request.into_inner();
            if req.sql.trim().is_empty() {
                return Err(invalid_argument("sql must not be empty", Some("sql")));
            }
            self.check(&req.sql).await?.map_err(|e| e.to_status())?;
            let max_rows = match req.max_rows as usize {
                0 => MAX_ROWS,
                n => n.min(MAX_ROWS),
            };
            let result = self.run(&req.sql, max_rows).await?;
            let rows_json = serde_json::to_string(&result.rows)
                .map_err(|e| Status::internal(format!("cannot encode rows: {e}")))?;
            Ok(Response::new(DataQueryResponse {
                columns: result.columns,
                row_count: result.rows.len() as u64,
                rows_json,
                truncated: result.truncated,
            }))
        }
        .instrument(span)
        .await
    }
}

fn dataset(info: DatasetInfo) -> Dataset {
    let columns = info
        .columns
        .into_iter()
        .map(|c| Column {
            name: c.name,
            r#type: c.kind.as_str().into(),
        })
        .collect();
    Dataset {
        name: info.name,
        columns,
        row_count: info.row_count,
        created_at: info.created_at.to_rfc3339(),
    }
}

#[tonic::async_trait]
impl Agent for DataAgent {
    type ChatStream = EventStream;

    async fn chat(&self, request: Request<ChatRequest>) -> Result<Response<EventStream>, Status> {
        let span = span(&request, "Chat");
        validate_messages(&request.get_ref().messages)?;
        let question = last_user_message(&request.get_ref().messages)?.to_string();
        let deadline = RequestMeta::from_metadata(request.metadata()).llm_deadline();
        let req = request.into_inner();
        let agent = self.clone();
        let stream = spawn_events(span, move |sink| async move {
            agent.answer(req, question, deadline, sink).await
        });
        Ok(Response::new(stream))
    }

    async fn describe(
        &self,
        request: Request<DescribeRequest>,
    ) -> Result<Response<DescribeResponse>, Status> {
        let _span = span(&request, "Describe").entered();
        Ok(Response::new(DescribeResponse {
            name: AGENT_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            model: self.ctx.llm.default_model().into(),
            tools: Vec::new(),
        }))
    }
}
