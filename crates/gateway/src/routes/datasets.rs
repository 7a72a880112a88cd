//! Datasets (CSV tables, or every table of a PostgreSQL dump) and read-only SQL, served by
//! the data agent.

use super::{path_param, unary};
use crate::agents::AgentName;
use crate::app::AppState;
use crate::auth::Caller;
use crate::body::{self, Fields, JsonObject};
use crate::error::ApiError;
use agentmesh_proto::v1::data_client::DataClient;
use agentmesh_proto::v1::{
    DataQueryRequest, Dataset, ListDatasetsRequest, LoadDumpRequest, RegisterDatasetRequest,
};
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::Json;
use serde_json::{json, Value};

const MAX_NAME_LEN: usize = 63;

/// What an upload holds: one CSV table, or a PostgreSQL dump whose tables keep their names.
enum Upload {
    Csv { name: String, csv: Vec<u8> },
    Dump(Vec<u8>),
}

pub async fn register(
    State(app): State<AppState>,
    caller: Caller,
    request: Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require_agent(AgentName::Data)?;
    let upload = if is_multipart(&request) {
        from_multipart(request, &app).await?
    } else {
        let JsonObject(body) = JsonObject::from_request(request, &app).await?;
        from_json(&body)?
    };
    let (name, csv) = match upload {
        Upload::Csv { name, csv } => (name, csv),
        Upload::Dump(sql) => return load_dump(&app, &caller, sql).await,
    };
    let message = RegisterDatasetRequest { name, csv };
    let dataset = unary(
        &app,
        AgentName::Data,
        caller.call(),
        message,
        |ch, req| async { DataClient::new(ch).register_dataset(req).await },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(dataset_json(&dataset))))
}

/// Answers with every dataset the dump created, like `GET /v1/datasets` does.
async fn load_dump(
    app: &AppState,
    caller: &Caller,
    sql: Vec<u8>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let message = LoadDumpRequest { sql };
    let loaded = unary(
        app,
        AgentName::Data,
        caller.call(),
        message,
        |ch, req| async { DataClient::new(ch).load_dump(req).await },
    )
    .await?;
    let data: Vec<Value> = loaded.datasets.iter().map(dataset_json).collect();
    Ok((
        StatusCode::CREATED,
        Json(json!({"object": "list", "data": data})),
    ))
}

fn is_multipart(request: &Request) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        })
}

/// `{"name", "csv"}` for a CSV table, or `{"dump"}` holding a PostgreSQL dump.
fn from_json(body: &serde_json::Map<String, Value>) -> Result<Upload, ApiError> {
    let fields = Fields::new(body);
    if let Some(dump) = fields.opt_str("dump")? {
        return Ok(Upload::Dump(checked_text(dump.as_bytes(), "dump")?));
    }
    let name = checked_name(fields.str("name")?)?;
    let csv = fields
        .opt_str("csv")?
        .ok_or_else(|| fields.missing("csv"))?;
    let csv = checked_text(csv.as_bytes(), "csv")?;
    Ok(Upload::Csv { name, csv })
}

/// Reads the `file` part and the optional `name` part; the file name without `.csv`
/// names the table when no `name` is given. A `.sql` file, or a part typed
/// `application/sql`, is a PostgreSQL dump.
async fn from_multipart(request: Request, app: &AppState) -> Result<Upload, ApiError> {
    let mut multipart = Multipart::from_request(request, app)
        .await
        .map_err(|r| body::from_rejection(r.status(), r.body_text(), app))?;
    let mut name = None;
    let mut file = None;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| body::from_rejection(e.status(), e.body_text(), app))?
    {
        match field.name() {
            Some("name") => {
                let text = field
                    .text()
                    .await
                    .map_err(|e| body::from_rejection(e.status(), e.body_text(), app))?;
                name = Some(text);
            }
            Some("file") => {
                let file_name = field.file_name().map(str::to_string);
                let dump = is_dump(file_name.as_deref(), field.content_type());
                let bytes = field
                    .bytes()
                    .await
                    .map_err(|e| body::from_rejection(e.status(), e.body_text(), app))?;
                file = Some((file_name, bytes, dump));
            }
            _ => {}
        }
    }
    let Some((file_name, bytes, dump)) = file else {
        return Err(ApiError::bad_request(
            "missing multipart part `file`",
            Some("file"),
        ));
    };
    if dump {
        return Ok(Upload::Dump(checked_text(&bytes, "file")?));
    }
    let name = match name.filter(|n| !n.trim().is_empty()) {
        Some(name) => checked_name(name.trim())?,
        None => name_from_file(file_name.as_deref())?,
    };
    let csv = checked_text(&bytes, "file")?;
    Ok(Upload::Csv { name, csv })
}

fn is_dump(file_name: Option<&str>, content_type: Option<&str>) -> bool {
    let sql_name = file_name.is_some_and(|n| {
        n.len() >= 4
            && n.is_char_boundary(n.len() - 4)
            && n[n.len() - 4..].eq_ignore_ascii_case(".sql")
    });
    let sql_type = content_type.is_some_and(|t| {
        let t = t
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        matches!(
            t.as_str(),
            "application/sql" | "application/x-sql" | "text/x-sql"
        )
    });
    sql_name || sql_type
}

fn name_from_file(file_name: Option<&str>) -> Result<String, ApiError> {
    let base = file_name
        .unwrap_or("")
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or("");
    let stem = match base.len().checked_sub(4) {
        Some(cut) if base.is_char_boundary(cut) && base[cut..].eq_ignore_ascii_case(".csv") => {
            &base[..cut]
        }
        _ => base,
    };
    if stem.is_empty() {
        return Err(ApiError::bad_request(
            "give the dataset a `name` part, or a file name to take it from",
            Some("name"),
        ));
    }
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    checked_name(&name)
}

fn checked_name(name: &str) -> Result<String, ApiError> {
    let mut chars = name.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !starts_with_letter || !rest_ok || name.len() > MAX_NAME_LEN {
        return Err(ApiError::bad_request(
            format!(
                "dataset name {name:?} must start with a lowercase letter and hold only \
                 lowercase letters, digits and '_' (at most {MAX_NAME_LEN})"
            ),
            Some("name"),
        ));
    }
    Ok(name.to_string())
}

/// Refuses empty uploads and binary files before they reach the data agent.
fn checked_text(bytes: &[u8], param: &str) -> Result<Vec<u8>, ApiError> {
    let what = if param == "dump" {
        "SQL dump"
    } else {
        "CSV file"
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            format!("the {what} is empty"),
            Some(param),
        ));
    }
    if bytes.contains(&0) || std::str::from_utf8(bytes).is_err() {
        return Err(ApiError::bad_request(
            format!("the upload is not a UTF-8 text {what} (binary content)"),
            Some(param),
        ));
    }
    Ok(bytes.to_vec())
}

pub async fn list(State(app): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_agent(AgentName::Data)?;
    let message = ListDatasetsRequest {};
    let listed = unary(
        &app,
        AgentName::Data,
        caller.call(),
        message,
        |ch, req| async { DataClient::new(ch).list_datasets(req).await },
    )
    .await?;
    let data: Vec<Value> = listed.datasets.iter().map(dataset_json).collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

fn dataset_json(dataset: &Dataset) -> Value {
    let columns: Vec<Value> = dataset
        .columns
        .iter()
        .map(|c| json!({"name": c.name, "type": c.r#type}))
        .collect();
    json!({
        "name": dataset.name,
        "columns": columns,
        "row_count": dataset.row_count,
        "created_at": dataset.created_at,
    })
}

pub async fn query(
    State(app): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    caller.require_agent(AgentName::Data)?;
    let name = path_param(path)?;
    let sql = Fields::new(&body).str("sql")?.to_string();
    if app.state.db.get_dataset(&name).await?.is_none() {
        return Err(ApiError::not_found(format!("dataset `{name}` not found"))
            .with_code("dataset_not_found"));
    }
    let message = DataQueryRequest { sql, max_rows: 0 };
    let answer = unary(
        &app,
        AgentName::Data,
        caller.call(),
        message,
        |ch, req| async { DataClient::new(ch).query(req).await },
    )
    .await?;
    let rows = serde_json::from_str::<Value>(&answer.rows_json).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("agent data sent unreadable rows: {e}"),
        )
    })?;
    Ok(Json(json!({
        "columns": answer.columns,
        "rows": rows,
        "row_count": answer.row_count,
        "truncated": answer.truncated,
    })))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_files() {
        assert_eq!(
            name_from_file(Some("order_details.csv")).unwrap(),
            "order_details"
        );
        assert_eq!(
            name_from_file(Some("/tmp/Order-Details.CSV")).unwrap(),
            "order_details"
        );
        assert!(name_from_file(Some(".csv")).is_err());
        assert!(name_from_file(Some("1st.csv")).is_err());
    }

    #[test]
    fn empty_and_binary_uploads_are_refused() {
        assert!(checked_text(b"  \n", "file").is_err());
        assert!(checked_text(b"a,b\n\x00\x01", "file").is_err());
        assert!(checked_text(&[0xff, 0xfe, 0x41], "file").is_err());
        assert!(checked_text(b"a,b\n1,2\n", "file").is_ok());
    }

    #[test]
    fn dumps_are_told_by_file_name_or_content_type() {
        assert!(is_dump(Some("northwind-postgres.sql"), None));
        assert!(is_dump(
            Some("/tmp/DUMP.SQL"),
            Some("application/octet-stream")
        ));
        assert!(is_dump(
            Some("data"),
            Some("application/sql; charset=utf-8")
        ));
        assert!(!is_dump(Some("orders.csv"), Some("text/csv")));
        assert!(!is_dump(None, None));
        let body = json!({"dump": "CREATE TABLE t (a int);"});
        let upload = from_json(body.as_object().unwrap()).unwrap();
        assert!(matches!(upload, Upload::Dump(_)));
        let body = json!({"name": "t", "csv": "a\n1\n"});
        let upload = from_json(body.as_object().unwrap()).unwrap();
        assert!(matches!(upload, Upload::Csv { name, .. } if name == "t"));
    }
}
