//! Front matter of Markdown files: a `---` block of `key: value` lines at the very top.

use serde_json::{Map, Value};

/// Splits `text` into its front matter (top-level scalar keys only) and the body.
/// Text without a closed `---` block at the start has no front matter.
pub fn split_front_matter(text: &str) -> (Map<String, Value>, &str) {
    let trimmed = text.trim_start_matches('\u{feff}');
    let Some(rest) = strip_fence(trimmed) else {
        return (Map::new(), text);
    };
    let mut offset = 0;
    for line in rest.split_inclusive('\n') {
        if line.trim_end() == "---" {
            let block = &rest[..offset];
            let body = &rest[offset + line.len()..];
            return (parse_block(block), body);
        }
        offset += line.len();
    }
    (Map::new(), text)
}

fn strip_fence(text: &str) -> Option<&str> {
    let first_end = text.find('\n')?;
    (text[..first_end].trim_end() == "---").then(|| &text[first_end + 1..])
}

/// Top-level `key: value` pairs; indented lines, comments and block values are skipped.
fn parse_block(block: &str) -> Map<String, Value> {
    let mut map = Map::new();
    for line in block.lines() {
        if line.starts_with([' ', '\t', '#', '-']) {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let key = key.trim();
        let value = unquote(value.trim());
        let is_block_marker = value.is_empty() || value == ">" || value == "|";
        if key.is_empty() || is_block_marker {
            continue;
        }
        map.insert(key.to_string(), scalar(value));
    }
    map
}

fn unquote(value: &str) -> &str {
    let quoted = value.len() >= 2
        && ((value.starts_with('"') && value.ends_with('"'))
            || (value.starts_with('\'') && value.ends_with('\'')));
    if quoted {
        &value[1..value.len() - 1]
    } else {
        value
    }
}

fn scalar(value: &str) -> Value {
    if let Ok(n) = value.parse::<i64>() {
        return Value::from(n);
    }
    match value {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(value.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_top_level_keys_and_skips_nested_ones() {
        let text = "---\ntitle: Managing Resources\n# comment\nweight: 40\nfeature:\n  \
                    title: Nested\n  description: >\n    folded\n---\n\nBody here.\n";
        let (meta, body) = split_front_matter(text);
        assert_eq!(meta["title"], "Managing Resources");
        assert_eq!(meta["weight"], 40);
        assert!(!meta.contains_key("feature"));
        assert_eq!(body, "\nBody here.\n");
    }

    #[test]
    fn strips_quotes() {
        let (meta, _) = split_front_matter("---\ntitle: \"Pods: an intro\"\n---\nx");
        assert_eq!(meta["title"], "Pods: an intro");
    }

    #[test]
    fn text_without_front_matter_is_unchanged() {
        let (meta, body) = split_front_matter("# Title\n---\ntext");
        assert!(meta.is_empty());
        assert_eq!(body, "# Title\n---\ntext");
        let (meta, body) = split_front_matter("---\nunclosed: yes\n");
        assert!(meta.is_empty());
        assert_eq!(body, "---\nunclosed: yes\n");
    }
}
