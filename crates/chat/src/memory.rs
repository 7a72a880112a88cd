//! Fits a conversation into the model's context: system prompt first, then as much
//! stored history as the budget allows, then the new turn.

use agentmesh_agent_runtime::llm_messages;
use agentmesh_llm::ChatMessage;
use agentmesh_proto::v1::Message;
use agentmesh_state::StoredMessage;

/// Context budget of a chat request, in approximate tokens.
pub const CONTEXT_BUDGET_TOKENS: usize = 6000;

/// Rough token count: four characters a token, plus a few for the message frame.
pub fn approx_tokens(message: &ChatMessage) -> usize {
    let chars = message.content.as_deref().map_or(0, |c| c.chars().count());
    let calls: usize = message
        .tool_calls
        .iter()
        .map(|c| c.arguments.len() + c.name.len())
        .sum();
    (chars + calls) / 4 + 4
}

/// The messages sent to the model: the request's system messages, the stored history
/// (oldest turns dropped first to fit `budget`), then the request's other messages.
pub fn assemble(request: &[Message], stored: &[StoredMessage], budget: usize) -> Vec<ChatMessage> {
    let (system, new): (Vec<Message>, Vec<Message>) =
        request.iter().cloned().partition(|m| m.role == "system");
    let system = llm_messages(&system);
    let mut new = llm_messages(&new);
    let mut history: Vec<ChatMessage> = stored
        .iter()
        .filter(|m| m.role == "user" || m.role == "assistant")
        .map(|m| ChatMessage::new(&m.role, m.content.clone()))
        .collect();

    let total = |h: &[ChatMessage], n: &[ChatMessage]| -> usize {
        system.iter().chain(h).chain(n).map(approx_tokens).sum()
    };
    while total(&history, &new) > budget && !history.is_empty() {
        history.remove(0);
        while history.first().is_some_and(|m| m.role != "user") {
            history.remove(0);
        }
    }
    while total(&history, &new) > budget && new.len() > 1 {
        new.remove(0);
    }
    system.into_iter().chain(history).chain(new).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
            ..Message::default()
        }
    }

    fn stored(role: &str, content: &str, position: i64) -> StoredMessage {
        StoredMessage {
            position,
            role: role.into(),
            content: content.into(),
            created_at: chrono::Utc::now(),
        }
    }

    fn contents(messages: &[ChatMessage]) -> Vec<&str> {
        messages
            .iter()
            .map(|m| m.content.as_deref().unwrap_or(""))
            .collect()
    }

    #[test]
    fn system_first_then_history_then_new_turn() {
        let request = [msg("user", "and now?"), msg("system", "be brief")];
        let history = [
            stored("user", "my name is Ada", 0),
            stored("assistant", "hi Ada", 1),
        ];
        let out = assemble(&request, &history, CONTEXT_BUDGET_TOKENS);
        assert_eq!(
            contents(&out),
            ["be brief", "my name is Ada", "hi Ada", "and now?"]
        );
        assert_eq!(out[0].role, "system");
    }

    #[test]
    fn oldest_turns_go_first_and_the_system_prompt_stays() {
        let long = "x".repeat(400);
        let mut history = Vec::new();
        for i in 0..10 {
            history.push(stored("user", &format!("q{i} {long}"), i * 2));
            history.push(stored("assistant", &format!("a{i} {long}"), i * 2 + 1));
        }
        let request = [msg("system", "sys"), msg("user", "latest")];
        let out = assemble(&request, &history, 700);
        let total: usize = out.iter().map(approx_tokens).sum();
        assert!(total <= 700, "{total} tokens");
        assert_eq!(out[0].content.as_deref(), Some("sys"));
        assert_eq!(out.last().unwrap().content.as_deref(), Some("latest"));
        assert!(
            out[1].content.as_deref().unwrap().starts_with('q'),
            "history starts on a user"
        );
        assert!(out
            .iter()
            .any(|m| m.content.as_deref().unwrap().starts_with("a9")));
        assert!(!out
            .iter()
            .any(|m| m.content.as_deref().unwrap().starts_with("q0")));
    }
}
