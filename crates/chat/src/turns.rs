//! Exactly-once storage of a conversation turn, keyed by the request that made it.
//!
//! A turn (the user's message and the answer) is stored only once the answer is
//! complete, so an agent that dies mid-answer stores nothing and the retry starts
//! clean. When the request carries an id (`idempotency-key`, else `x-request-id`),
//! the turn is also recorded under an idempotency record named after the
//! conversation, that id and the user's message (so a client that reuses one id
//! for different questions still gets answers to each): a retry of a stored turn
//! is answered from the record without calling the model, and a concurrent
//! duplicate answers but stores nothing.

use agentmesh_state::{Database, IdempotencyClaim, NewMessage, StateError, StoredResponse};
use serde::{Deserialize, Serialize};
use sha2::Digest;

/// Gateway-checked client keys are visible ASCII, so the space keeps these apart.
const KEY_PREFIX: &str = "chat-turn ";

/// The idempotency record of one request's turn.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnKey {
    key_id: String,
    key: String,
}

impl TurnKey {
    /// None when the turn is not stored (no conversation) or the request has no id.
    pub fn new(conversation: &str, key_id: &str, request_id: &str, user: &str) -> Option<Self> {
        if conversation.is_empty() || request_id.is_empty() {
            return None;
        }
        let digest = hex::encode(&sha2::Sha256::digest(user.as_bytes())[..12]);
        Some(Self {
            key_id: key_id.to_string(),
            key: format!("{KEY_PREFIX}{conversation} {request_id} {digest}"),
        })
    }
}

/// What a replayed retry answers with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredTurn {
    pub answer: String,
    pub model: String,
    pub finish_reason: String,
}

/// The turn this request already stored, if any.
pub async fn find(db: &dyn Database, key: &TurnKey) -> Result<Option<StoredTurn>, StateError> {
    match db.claim_idempotency(&key.key_id, &key.key).await? {
        IdempotencyClaim::Done(stored) => Ok(serde_json::from_str(&stored.body).ok()),
        IdempotencyClaim::Claimed => {
            // Only a look: the claim that counts is taken when the turn is stored.
            db.release_idempotency(&key.key_id, &key.key).await?;
            Ok(None)
        }
        IdempotencyClaim::InProgress => Ok(None),
    }
}

/// Appends `messages` to `conversation` unless a duplicate of this request did.
/// Returns whether this call stored them.
pub async fn store(
    db: &dyn Database,
    key: Option<&TurnKey>,
    conversation: &str,
    owner: &str,
    messages: &[NewMessage],
    turn: &StoredTurn,
) -> Result<bool, StateError> {
    let Some(key) = key else {
        db.append_messages(conversation, owner, messages).await?;
        return Ok(true);
    };
    match db.claim_idempotency(&key.key_id, &key.key).await? {
        IdempotencyClaim::Claimed => {}
        IdempotencyClaim::Done(_) | IdempotencyClaim::InProgress => return Ok(false),
    }
    if let Err(error) = db.append_messages(conversation, owner, messages).await {
        if let Err(release) = db.release_idempotency(&key.key_id, &key.key).await {
            tracing::warn!(error = %release, "turn claim not released");
        }
        return Err(error);
    }
    let body = serde_json::to_string(turn).map_err(|e| StateError::Internal(e.to_string()))?;
    let response = StoredResponse {
        status: 200,
        content_type: "application/json".into(),
        body,
    };
    db.complete_idempotency(&key.key_id, &key.key, &response)
        .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_key_without_a_conversation_or_request_id() {
        assert_eq!(TurnKey::new("", "k", "r1", "hi"), None);
        assert_eq!(TurnKey::new("c", "k", "", "hi"), None);
        let key = TurnKey::new("c", "k", "r1", "hi").unwrap();
        assert!(key.key.starts_with("chat-turn c r1 "), "{}", key.key);
        assert_eq!(Some(key.clone()), TurnKey::new("c", "k", "r1", "hi"));
        assert_ne!(Some(key.clone()), TurnKey::new("c", "k", "r2", "hi"));
        assert_ne!(Some(key), TurnKey::new("c", "k", "r1", "hello"));
    }
}
