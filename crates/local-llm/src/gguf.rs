//! Opens a GGUF file and checks that it is a model this crate can run.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};

use crate::LocalError;

/// The metadata of a checked GGUF file, with the reader positioned for its tensors.
pub(crate) struct GgufModel {
    pub path: PathBuf,
    pub content: Content,
    pub reader: BufReader<File>,
}

/// Opens `path`, reads its header and refuses what candle's llama model cannot run.
pub(crate) fn open(path: &Path) -> Result<GgufModel, LocalError> {
    let mut reader = open_file(path)?;
    check_magic(path, &mut reader)?;
    let content = Content::read(&mut reader).map_err(|err| header_error(path, err))?;
    let model = GgufModel {
        path: path.to_path_buf(),
        content,
        reader,
    };
    check_architecture(&model)?;
    Ok(model)
}

fn open_file(path: &Path) -> Result<BufReader<File>, LocalError> {
    match File::open(path) {
        Ok(file) => Ok(BufReader::new(file)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(LocalError::NotFound {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(LocalError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn check_magic(path: &Path, reader: &mut BufReader<File>) -> Result<(), LocalError> {
    let mut magic = [0u8; 4];
    let io_error = |source| LocalError::Io {
        path: path.to_path_buf(),
        source,
    };
    match reader.read_exact(&mut magic) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(LocalError::NotGguf {
                path: path.to_path_buf(),
            })
        }
        Err(err) => return Err(io_error(err)),
    }
    if &magic != b"GGUF" {
        return Err(LocalError::NotGguf {
            path: path.to_path_buf(),
        });
    }
    reader.seek(SeekFrom::Start(0)).map_err(io_error)?;
    Ok(())
}

/// candle rejects tensor types it does not know while reading the header.
fn header_error(path: &Path, err: candle_core::Error) -> LocalError {
    let message = err.to_string();
    if message.contains("unknown dtype") {
        LocalError::UnsupportedQuantization {
            path: path.to_path_buf(),
            message,
        }
    } else {
        LocalError::InvalidGguf {
            path: path.to_path_buf(),
            message,
        }
    }
}

fn check_architecture(model: &GgufModel) -> Result<(), LocalError> {
    let architecture =
        model
            .string("general.architecture")
            .ok_or_else(|| LocalError::InvalidGguf {
                path: model.path.clone(),
                message: "metadata has no general.architecture".into(),
            })?;
    if architecture != "llama" {
        return Err(LocalError::UnsupportedArchitecture {
            path: model.path.clone(),
            architecture: architecture.to_string(),
        });
    }
    Ok(())
}

impl GgufModel {
    pub fn value(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    pub fn string(&self, key: &str) -> Option<&str> {
        self.value(key)?.to_string().ok().map(String::as_str)
    }

    pub fn u32(&self, key: &str) -> Option<u32> {
        self.value(key)?.to_u32().ok()
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        self.value(key)?.to_bool().ok()
    }

    /// A metadata array of strings; None when absent or of another type.
    pub fn strings(&self, key: &str) -> Option<Vec<&str>> {
        let values = self.value(key)?.to_vec().ok()?;
        values
            .iter()
            .map(|v| v.to_string().ok().map(String::as_str))
            .collect()
    }

    /// A metadata array of integers (token types are stored as i32).
    pub fn ints(&self, key: &str) -> Option<Vec<i64>> {
        let values = self.value(key)?.to_vec().ok()?;
        values.iter().map(int_value).collect()
    }

    /// A name for logs and `Done` events: the file name without its quantization suffix.
    pub fn model_name(&self) -> String {
        let stem = self
            .path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let base = match stem.rsplit_once('.') {
            Some((base, tag)) if is_quant_tag(tag) => base,
            _ => stem,
        };
        if !base.is_empty() {
            return base.to_string();
        }
        self.string("general.name").unwrap_or("local").to_string()
    }
}

fn int_value(value: &Value) -> Option<i64> {
    match value {
        Value::I32(v) => Some(i64::from(*v)),
        Value::U32(v) => Some(i64::from(*v)),
        Value::I64(v) => Some(*v),
        Value::U8(v) => Some(i64::from(*v)),
        Value::I8(v) => Some(i64::from(*v)),
        Value::U16(v) => Some(i64::from(*v)),
        Value::I16(v) => Some(i64::from(*v)),
        _ => None,
    }
}

/// `Q4_1`, `Q8_0`, `F16`, `IQ4_XS`...: what llama.cpp-style file names end with.
fn is_quant_tag(tag: &str) -> bool {
    let upper = tag.to_ascii_uppercase();
    (upper.starts_with('Q')
        || upper.starts_with("IQ")
        || upper.starts_with('F')
        || upper.starts_with("BF"))
        && upper.chars().any(|c| c.is_ascii_digit())
        && upper.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quant_tags_are_recognised() {
        for tag in ["Q4_1", "q8_0", "F16", "BF16", "IQ4_XS", "Q4_K_M"] {
            assert!(is_quant_tag(tag), "{tag}");
        }
        for tag in ["Instruct", "v2", "gguf", "final"] {
            assert!(!is_quant_tag(tag), "{tag}");
        }
    }

    #[test]
    fn short_and_foreign_files_are_not_gguf() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short.gguf");
        std::fs::write(&short, b"GG").unwrap();
        assert!(matches!(open(&short), Err(LocalError::NotGguf { .. })));

        let text = dir.path().join("notes.gguf");
        std::fs::write(&text, b"hello, this is text").unwrap();
        let err = open(&text).err().unwrap();
        assert!(matches!(err, LocalError::NotGguf { .. }));
        assert!(err.to_string().contains("notes.gguf"), "{err}");
    }

    /// A GGUF v3 header: `general.architecture` and one 32-element tensor of `dtype`.
    fn header(architecture: &str, dtype: u32) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&1u64.to_le_bytes());
        out.extend_from_slice(&1u64.to_le_bytes());
        string(&mut out, "general.architecture");
        out.extend_from_slice(&8u32.to_le_bytes());
        string(&mut out, architecture);
        string(&mut out, "token_embd.weight");
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&32u64.to_le_bytes());
        out.extend_from_slice(&dtype.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        out.resize(out.len().next_multiple_of(32) + 128, 0);
        out
    }

    fn open_bytes(name: &str, bytes: &[u8]) -> LocalError {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = open(&path).err().unwrap();
        assert!(err.to_string().contains(name), "{err}");
        err
    }

    #[test]
    fn other_architectures_are_refused_by_name() {
        let err = open_bytes("gpt.gguf", &header("gpt2", 0));
        assert!(
            matches!(&err, LocalError::UnsupportedArchitecture { architecture, .. }
                if architecture == "gpt2"),
            "{err}"
        );
    }

    #[test]
    fn unknown_tensor_types_are_an_unsupported_quantization() {
        let err = open_bytes("odd.gguf", &header("llama", 99));
        assert!(
            matches!(err, LocalError::UnsupportedQuantization { .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("unsupported quantization"),
            "{err}"
        );
    }

    #[test]
    fn a_llama_header_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        std::fs::write(&path, header("llama", 0)).unwrap();
        let model = open(&path).unwrap();
        assert_eq!(model.string("general.architecture"), Some("llama"));
        assert_eq!(model.model_name(), "tiny");
    }

    #[test]
    fn truncated_header_is_invalid_gguf() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.gguf");
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&[1, 0]);
        std::fs::write(&path, bytes).unwrap();
        let err = open(&path).err().unwrap();
        assert!(matches!(err, LocalError::InvalidGguf { .. }), "{err}");
    }
}
