//! API keys: inline, or from a file that is read again whenever it changes.
//!
//! A mounted Kubernetes Secret is rotated by swapping a symlink, so the file's size, mtime
//! or inode changes. Each request looks at the file's metadata (one `stat`) and reads it
//! again only when one of those changed; the next request after a rotation sends the new key.

use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::{LlmError, ProviderConfig, Secret};

/// What identifies one version of a key file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: inode(meta),
        }
    }
}

#[cfg(unix)]
fn inode(meta: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(meta)
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}

/// The key of one provider, with the last version read from its file.
#[derive(Debug, Default)]
pub(crate) struct KeySource {
    cached: Mutex<Option<(Stamp, Secret)>>,
}

impl KeySource {
    /// The key to send to `provider`, if it has one.
    pub async fn key(&self, provider: &ProviderConfig) -> Result<Option<Secret>, LlmError> {
        if let Some(key) = &provider.api_key {
            return Ok(Some(key.clone()));
        }
        let Some(path) = &provider.api_key_file else {
            return Ok(None);
        };
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(|e| unreadable(provider, path, &e))?;
        let stamp = Stamp::of(&meta);
        if let Some(key) = self.cached_for(&stamp) {
            return Ok(Some(key));
        }
        let key = read_key(provider, path).await?;
        tracing::debug!(provider = %provider.name, "llm key file read");
        if let Ok(mut cached) = self.cached.lock() {
            *cached = Some((stamp, key.clone()));
        }
        Ok(Some(key))
    }

    fn cached_for(&self, stamp: &Stamp) -> Option<Secret> {
        let cached = self.cached.lock().ok()?;
        cached
            .as_ref()
            .filter(|(seen, _)| seen == stamp)
            .map(|(_, key)| key.clone())
    }
}

async fn read_key(provider: &ProviderConfig, path: &Path) -> Result<Secret, LlmError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| unreadable(provider, path, &e))?;
    let key = text.trim();
    if key.is_empty() {
        let path = path.display();
        let msg = format!("provider {}: key file {path} is empty", provider.name);
        return Err(LlmError::Config(msg));
    }
    Ok(Secret::new(key))
}

fn unreadable(provider: &ProviderConfig, path: &Path, e: &std::io::Error) -> LlmError {
    let path = path.display();
    LlmError::Config(format!(
        "provider {}: cannot read key file {path}: {e}",
        provider.name
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LlmConfig;

    fn provider_with_file(path: &Path) -> ProviderConfig {
        let mut provider = LlmConfig::single("p", "http://x/v1", "m")
            .providers
            .remove(0);
        provider.api_key_file = Some(path.to_path_buf());
        provider
    }

    #[tokio::test]
    async fn key_file_is_reread_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "sk-old\n").unwrap();
        let provider = provider_with_file(&path);
        let source = KeySource::default();
        let key = |s: Option<Secret>| s.unwrap().expose().to_string();
        assert_eq!(key(source.key(&provider).await.unwrap()), "sk-old");
        std::fs::write(&path, "sk-newer").unwrap();
        assert_eq!(key(source.key(&provider).await.unwrap()), "sk-newer");
        std::fs::write(&path, "  \n").unwrap();
        let err = source.key(&provider).await.unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        std::fs::remove_file(&path).unwrap();
        let err = source.key(&provider).await.unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
    }

    #[tokio::test]
    async fn unchanged_file_is_not_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "sk-aaa").unwrap();
        let provider = provider_with_file(&path);
        let source = KeySource::default();
        let first = source.key(&provider).await.unwrap().unwrap();
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();

        // Same length, same inode, mtime put back: the file looks unchanged, so the
        // cached key is used (proving the file is not read on every request).
        std::fs::write(&path, "sk-bbb").unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(modified).unwrap();
        drop(file);
        assert_eq!(source.key(&provider).await.unwrap().unwrap(), first);

        let later = modified + std::time::Duration::from_secs(1);
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(later).unwrap();
        drop(file);
        let key = source.key(&provider).await.unwrap().unwrap();
        assert_eq!(key.expose(), "sk-bbb");
    }
}
