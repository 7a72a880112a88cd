//! API keys: inline, or read from a file on every request so a rotated secret needs no restart.

use crate::{LlmError, ProviderConfig, Secret};

/// The key to send to `provider`, if it has one.
///
/// A key file is small and a model call takes far longer than reading it, so the file
/// is simply read again each time: a rotation is seen by the very next request.
pub(crate) async fn api_key(provider: &ProviderConfig) -> Result<Option<Secret>, LlmError> {
    if let Some(key) = &provider.api_key {
        return Ok(Some(key.clone()));
    }
    let Some(path) = &provider.api_key_file else {
        return Ok(None);
    };
    let text = tokio::fs::read_to_string(path).await.map_err(|e| {
        let path = path.display();
        LlmError::Config(format!(
            "provider {}: cannot read key file {path}: {e}",
            provider.name
        ))
    })?;
    let key = text.trim();
    if key.is_empty() {
        let path = path.display();
        let msg = format!("provider {}: key file {path} is empty", provider.name);
        return Err(LlmError::Config(msg));
    }
    Ok(Some(Secret::new(key)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LlmConfig;

    #[tokio::test]
    async fn key_file_is_reread_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "sk-old\n").unwrap();
        let mut provider = LlmConfig::single("p", "http://x/v1", "m")
            .providers
            .remove(0);
        provider.api_key_file = Some(path.clone());
        assert_eq!(
            api_key(&provider).await.unwrap().unwrap().expose(),
            "sk-old"
        );
        std::fs::write(&path, "sk-new").unwrap();
        assert_eq!(
            api_key(&provider).await.unwrap().unwrap().expose(),
            "sk-new"
        );
        std::fs::write(&path, "  \n").unwrap();
        assert!(api_key(&provider)
            .await
            .unwrap_err()
            .to_string()
            .contains("empty"));
        std::fs::remove_file(&path).unwrap();
        assert!(api_key(&provider)
            .await
            .unwrap_err()
            .to_string()
            .contains("cannot read"));
    }
}
