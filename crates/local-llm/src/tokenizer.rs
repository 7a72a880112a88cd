//! Byte-level BPE tokenizer rebuilt from a GGUF file's metadata.
//!
//! candle's own GGUF tokenizer helper does not know SmolLM's pre-tokenizer, so the
//! `tokenizers` crate is configured by hand: digits split one by one, then GPT-2 style
//! byte-level splitting without a prefix space. Control tokens (type 3) are special: they
//! are never produced from text (a user cannot type `<|im_start|>`) and print as nothing.

use std::collections::HashMap;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use crate::gguf::GgufModel;
use crate::LocalError;

/// GGUF token type of control tokens such as `<|im_start|>`.
const CONTROL: i64 = 3;

/// Pre-tokenizer names (`tokenizer.ggml.pre`) whose splitting rules are built here.
const KNOWN_PRE: [&str; 3] = ["smollm", "gpt2", "default"];

pub(crate) struct TextTokenizer {
    inner: Tokenizer,
    /// The bytes each id stands for; empty for control tokens.
    pieces: Vec<Vec<u8>>,
    by_name: HashMap<String, u32>,
    bos: Option<u32>,
}

impl TextTokenizer {
    pub fn from_gguf(model: &GgufModel) -> Result<TextTokenizer, LocalError> {
        let fail = |message: String| LocalError::Tokenizer {
            path: model.path.clone(),
            message,
        };
        let kind = model.string("tokenizer.ggml.model").unwrap_or("(none)");
        if kind != "gpt2" {
            return Err(fail(format!(
                "tokenizer model {kind:?} is not supported (only byte-level BPE, \"gpt2\")"
            )));
        }
        let pre = model.string("tokenizer.ggml.pre").unwrap_or("default");
        if !KNOWN_PRE.contains(&pre) {
            return Err(fail(format!(
                "pre-tokenizer {pre:?} is not supported (known: {})",
                KNOWN_PRE.join(", ")
            )));
        }
        let tokens = model
            .strings("tokenizer.ggml.tokens")
            .ok_or_else(|| fail("no tokenizer.ggml.tokens array".into()))?;
        let merges = model
            .strings("tokenizer.ggml.merges")
            .ok_or_else(|| fail("no tokenizer.ggml.merges array".into()))?;
        let types = model.ints("tokenizer.ggml.token_type").unwrap_or_default();

        let inner = build(&tokens, &merges, &types, pre == "smollm").map_err(fail)?;
        let add_bos = model.bool("tokenizer.ggml.add_bos_token").unwrap_or(false);
        Ok(TextTokenizer {
            inner,
            pieces: pieces(&tokens, &types),
            by_name: names(&tokens),
            bos: add_bos
                .then(|| model.u32("tokenizer.ggml.bos_token_id"))
                .flatten(),
        })
    }

    /// Ids of `text`, read as plain text (special-token names are not recognised).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|err| err.to_string())?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The bytes a token stands for (nothing for control tokens and unknown ids).
    pub fn piece(&self, id: u32) -> &[u8] {
        self.pieces
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The text of `ids`, control tokens left out, invalid UTF-8 replaced.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|id| self.piece(*id)).copied().collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The id of a token by its exact vocabulary entry (e.g. `<|im_end|>`).
    pub fn id(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// The beginning-of-sequence id, when the model wants one prepended.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }
}

fn build(
    tokens: &[&str],
    merges: &[&str],
    types: &[i64],
    split_digits: bool,
) -> Result<Tokenizer, String> {
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, token)| (token.to_string(), id as u32))
        .collect();
    let merges = merges
        .iter()
        .map(|merge| {
            merge
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| format!("merge {merge:?} is not two tokens"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|err| err.to_string())?;

    let mut tokenizer = Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    let pre = if split_digits {
        Sequence::new(vec![Digits::new(true).into(), byte_level.into()])
    } else {
        Sequence::new(vec![byte_level.into()])
    };
    tokenizer.with_pre_tokenizer(Some(pre));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    let specials = control_ids(types)
        .filter_map(|id| tokens.get(id))
        .map(|name| AddedToken::from(name.to_string(), true));
    tokenizer
        .add_special_tokens(specials)
        .map_err(|err| err.to_string())?;
    tokenizer.set_encode_special_tokens(true);
    Ok(tokenizer)
}

fn control_ids(types: &[i64]) -> impl Iterator<Item = usize> + '_ {
    types
        .iter()
        .enumerate()
        .filter(|(_, kind)| **kind == CONTROL)
        .map(|(id, _)| id)
}

fn pieces(tokens: &[&str], types: &[i64]) -> Vec<Vec<u8>> {
    let unicode_to_byte = unicode_to_byte();
    tokens
        .iter()
        .enumerate()
        .map(|(id, token)| {
            if types.get(id) == Some(&CONTROL) {
                return Vec::new();
            }
            let mut bytes = Vec::with_capacity(token.len());
            for c in token.chars() {
                match unicode_to_byte.get(&c) {
                    Some(b) => bytes.push(*b),
                    None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
            bytes
        })
        .collect()
}

fn names(tokens: &[&str]) -> HashMap<String, u32> {
    tokens
        .iter()
        .enumerate()
        .map(|(id, token)| (token.to_string(), id as u32))
        .collect()
}

/// The inverse of GPT-2's byte-to-character table: printable Latin-1 bytes stand for
/// themselves, every other byte for the character 256 + its rank among those others.
fn unicode_to_byte() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut map = HashMap::with_capacity(256);
    let mut next = 256u32;
    for b in 0..=255u8 {
        let code = if printable(b) {
            u32::from(b)
        } else {
            next += 1;
            next - 1
        };
        if let Some(c) = char::from_u32(code) {
            map.insert(c, b);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_matches_gpt2() {
        let map = unicode_to_byte();
        assert_eq!(map.len(), 256);
        assert_eq!(map[&'Ġ'], b' ');
        assert_eq!(map[&'Ċ'], b'\n');
        assert_eq!(map[&'a'], b'a');
        assert_eq!(map[&'é'], 0xE9);
    }
}
