//! Text the data agent shows: Markdown tables, schema descriptions, SQL pulled from replies.

use agentmesh_state::{DatasetInfo, QueryResult};
use serde_json::Value;

/// Rows shown in an answer; the rest are counted, not shown.
pub const SHOWN_ROWS: usize = 20;

/// A Markdown table of at most `limit` rows, with a line saying how many were left out.
pub fn markdown_table(result: &QueryResult, limit: usize) -> String {
    if result.columns.is_empty() {
        return "(no columns)".into();
    }
    let mut out = row_line(result.columns.iter().map(|c| escape(c)));
    out.push_str(&row_line(result.columns.iter().map(|_| "---".to_string())));
    for row in result.rows.iter().take(limit) {
        out.push_str(&row_line(row.iter().map(cell)));
    }
    let hidden = result.rows.len().saturating_sub(limit);
    if hidden > 0 {
        out.push_str(&format!("\n({hidden} more rows not shown)\n"));
    }
    if result.truncated {
        out.push_str(&format!(
            "\n(stopped at the row cap of {} rows)\n",
            result.rows.len()
        ));
    }
    if result.rows.is_empty() {
        out.push_str("\n(no rows)\n");
    }
    out
}

fn row_line(cells: impl Iterator<Item = String>) -> String {
    let cells: Vec<String> = cells.collect();
    format!("| {} |\n", cells.join(" | "))
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "NULL".into(),
        Value::String(s) => escape(s),
        other => escape(&other.to_string()),
    }
}

fn escape(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// One dataset as the model sees it: name, size, typed columns and sample rows.
pub fn describe_dataset(info: &DatasetInfo, sample: Option<&QueryResult>) -> String {
    let columns: Vec<String> = info
        .columns
        .iter()
        .map(|c| format!("{} {}", c.name, c.kind.as_str()))
        .collect();
    let mut out = format!(
        "Table {} ({} rows)\nColumns: {}\n",
        info.name,
        info.row_count,
        columns.join(", ")
    );
    if let Some(sample) = sample.filter(|s| !s.rows.is_empty()) {
        out.push_str("Sample rows:\n");
        out.push_str(&markdown_table(sample, sample.rows.len()));
    }
    out
}

/// The SQL in a model's reply: a ```sql block, else any fenced block, else the whole reply.
pub fn extract_sql(reply: &str) -> String {
    let lower = reply.to_lowercase();
    let start = lower.find("```sql").map(|i| i + 6).or_else(|| {
        lower.find("```").map(|i| {
            let after = i + 3;
            after + reply[after..].find('\n').map_or(0, |n| n + 1)
        })
    });
    let Some(start) = start else {
        return reply.trim().to_string();
    };
    let body = &reply[start..];
    let end = body.find("```").unwrap_or(body.len());
    body[..end].trim().to_string()
}

/// True when the user typed SQL rather than a question.
pub fn looks_like_sql(text: &str) -> bool {
    let head: String = text
        .trim_start()
        .chars()
        .take(7)
        .collect::<String>()
        .to_lowercase();
    let word_end = |w: &str| head[w.len()..].starts_with(char::is_whitespace);
    (head.starts_with("select") && word_end("select"))
        || (head.starts_with("with") && word_end("with"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn result(rows: usize) -> QueryResult {
        QueryResult {
            columns: vec!["name".into(), "total".into()],
            rows: (0..rows)
                .map(|i| vec![json!(format!("a|{i}")), json!(i)])
                .collect(),
            truncated: false,
        }
    }

    #[test]
    fn table_caps_rows_and_escapes_pipes() {
        let table = markdown_table(&result(25), SHOWN_ROWS);
        assert!(table.starts_with("| name | total |\n| --- | --- |\n| a\\|0 | 0 |\n"));
        assert_eq!(table.lines().filter(|l| l.starts_with("| a")).count(), 20);
        assert!(table.contains("(5 more rows not shown)"));
    }

    #[test]
    fn sql_comes_out_of_fences_or_raw_replies() {
        let reply = "Here:\n```sql\nSELECT 1\nFROM t;\n```\nDone.";
        assert_eq!(extract_sql(reply), "SELECT 1\nFROM t;");
        assert_eq!(extract_sql("```\nSELECT 2\n```"), "SELECT 2");
        assert_eq!(extract_sql("  SELECT 3  "), "SELECT 3");
    }

    #[test]
    fn sql_detection_needs_a_whole_keyword() {
        assert!(looks_like_sql("select * from t"));
        assert!(looks_like_sql("  WITH x AS (SELECT 1) SELECT * FROM x"));
        assert!(!looks_like_sql("selection of products?"));
        assert!(!looks_like_sql("What is the revenue?"));
        assert!(!looks_like_sql("with"));
    }
}
