//! Builds the cited-answer prompt and the "Sources:" list from what the model cited.

use agentmesh_llm::ChatMessage;
use agentmesh_state::ScoredChunk;

/// How many passages to list when the model cited none.
const UNCITED_SOURCES: usize = 3;

pub const SYSTEM_PROMPT: &str = "You answer questions using only the numbered passages \
given by the user. Cite every passage you use with its number in square brackets, like [1]. \
If the passages do not contain the answer, say that the documents do not cover it. \
Be concise.";

/// The answer when retrieval found nothing: no model call is needed.
pub const NOTHING_FOUND: &str = "No ingested document covers this question, so I cannot \
answer it from the documents. Try other words, or ingest a document about it.";

/// System prompt plus one user message holding the numbered passages and the question.
pub fn prompt(question: &str, passages: &[ScoredChunk]) -> Vec<ChatMessage> {
    let mut user = String::from("Passages:\n\n");
    for (i, p) in passages.iter().enumerate() {
        user.push_str(&format!(
            "[{}] {} — {}\n{}\n\n",
            i + 1,
            p.title,
            p.heading,
            p.text
        ));
    }
    user.push_str("Question: ");
    user.push_str(question);
    vec![
        ChatMessage::new("system", SYSTEM_PROMPT),
        ChatMessage::new("user", user),
    ]
}

/// Passage numbers (1-based) cited as `[n]` or `[n, m]` in `answer`, first use first,
/// limited to `1..=count`.
pub fn cited(answer: &str, count: usize) -> Vec<usize> {
    let mut found = Vec::new();
    let mut rest = answer;
    while let Some(open) = rest.find('[') {
        rest = &rest[open + 1..];
        let Some(close) = rest.find(']') else { break };
        for part in rest[..close].split(',') {
            let n = part
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=count).contains(n));
            if let Some(n) = n.filter(|n| !found.contains(n)) {
                found.push(n);
            }
        }
    }
    found
}

/// The passages to list: the cited ones, else the top few.
pub fn used(answer: &str, count: usize) -> Vec<usize> {
    let cited = cited(answer, count);
    if cited.is_empty() {
        (1..=count.min(UNCITED_SOURCES)).collect()
    } else {
        cited
    }
}

/// "\n\nSources:\n[1] title (id) — heading" for the passages numbered in `used`. Passages
/// from the same section of the same document share one line ("[1][3] title (id) — heading"),
/// so a section cut into several chunks is not listed several times.
pub fn sources_text(passages: &[ScoredChunk], used: &[usize]) -> String {
    let mut lines: Vec<(String, &ScoredChunk)> = Vec::new();
    for &n in used {
        let Some(p) = n.checked_sub(1).and_then(|i| passages.get(i)) else {
            continue;
        };
        let same = |(_, q): &&mut (String, &ScoredChunk)| {
            q.document_id == p.document_id && q.heading == p.heading
        };
        match lines.iter_mut().find(same) {
            Some((numbers, _)) => numbers.push_str(&format!("[{n}]")),
            None => lines.push((format!("[{n}]"), p)),
        }
    }
    let mut text = String::from("\n\nSources:");
    for (numbers, p) in lines {
        text.push_str(&format!(
            "\n{numbers} {} ({}) — {}",
            p.title, p.document_id, p.heading
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passage(id: &str) -> ScoredChunk {
        ScoredChunk {
            document_id: id.into(),
            title: format!("Title {id}"),
            source: String::new(),
            heading: "H".into(),
            text: "body".into(),
            score: 1.0,
        }
    }

    #[test]
    fn citations_are_read_in_order_and_bounded() {
        assert_eq!(
            cited("Limits [2]. Requests [1, 2]. Bogus [9] [x] [0].", 3),
            [2, 1]
        );
        assert!(cited("no citations", 3).is_empty());
        assert_eq!(used("no citations", 5), [1, 2, 3]);
        assert_eq!(used("see [4]", 5), [4]);
    }

    #[test]
    fn sources_list_names_title_id_and_heading() {
        let passages = [passage("a"), passage("b")];
        let text = sources_text(&passages, &[2]);
        assert_eq!(text, "\n\nSources:\n[2] Title b (b) — H");
        let text = sources_text(&[passage("a"), passage("b"), passage("a")], &[1, 2, 3, 9]);
        assert_eq!(
            text,
            "\n\nSources:\n[1][3] Title a (a) — H\n[2] Title b (b) — H"
        );
    }

    #[test]
    fn prompt_numbers_passages_and_ends_with_the_question() {
        let messages = prompt("why OOMKilled?", &[passage("a"), passage("b")]);
        let user = messages[1].content.as_deref().unwrap();
        assert!(user.contains("[1] Title a — H\nbody"));
        assert!(user.contains("[2] Title b"));
        assert!(user.ends_with("Question: why OOMKilled?"));
    }
}
