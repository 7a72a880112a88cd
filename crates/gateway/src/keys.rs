//! API key secrets and the bootstrap admin key.

use crate::config::GatewayConfig;
use agentmesh_state::{hash_secret, NewApiKey, State};
use rand::RngCore;

/// Random bytes in a secret: 192 bits.
const SECRET_BYTES: usize = 24;
/// Characters of the secret kept for display (`am-` plus 8 hex digits).
const PREFIX_LEN: usize = 11;
const BOOTSTRAP_NAME: &str = "bootstrap-admin";

/// A new secret `am-<48 hex>` and its displayable prefix.
pub fn generate_key() -> (String, String) {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("am-{}", hex::encode(bytes));
    let prefix = display_prefix(&secret);
    (secret, prefix)
}

fn display_prefix(secret: &str) -> String {
    secret.chars().take(PREFIX_LEN).collect()
}

pub fn new_key_id() -> String {
    format!("key_{}", uuid::Uuid::now_v7().simple())
}

fn admin_key(secret: &str) -> NewApiKey {
    NewApiKey {
        id: new_key_id(),
        name: BOOTSTRAP_NAME.into(),
        prefix: display_prefix(secret),
        secret_hash: hash_secret(secret),
        scopes: vec!["admin".into()],
        rpm_limit: None,
        tpm_limit: None,
        budget_usd: None,
        expires_at: None,
    }
}

/// Ensures an admin key exists: stores AGENTMESH_ADMIN_KEY's hash if given (idempotent),
/// else if no admin key exists creates one and returns its secret (the caller prints it
/// once).
pub async fn bootstrap_admin_key(
    state: &State,
    config: &GatewayConfig,
) -> anyhow::Result<Option<String>> {
    if let Some(secret) = config.admin_key.as_deref() {
        let existing = state.db.find_key_by_hash(&hash_secret(secret)).await?;
        match existing {
            Some(key) if key.revoked_at.is_some() => {
                tracing::warn!(key_id = %key.id, "configured admin key is revoked");
            }
            Some(_) => {}
            None => {
                let key = state.db.create_key(admin_key(secret)).await?;
                tracing::info!(key_id = %key.id, "admin key stored from configuration");
            }
        }
        return Ok(None);
    }
    if state.db.has_admin_key().await? {
        return Ok(None);
    }
    let (secret, _) = generate_key();
    let key = state.db.create_key(admin_key(&secret)).await?;
    tracing::info!(key_id = %key.id, "admin key generated");
    Ok(Some(secret))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_with_a_prefix() {
        let (a, prefix) = generate_key();
        let (b, _) = generate_key();
        assert_ne!(a, b);
        assert!(a.starts_with("am-") && a.len() == 3 + 2 * SECRET_BYTES);
        assert!(a.starts_with(&prefix) && prefix.len() == PREFIX_LEN);
    }
}
