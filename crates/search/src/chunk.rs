//! Splits Markdown into retrievable chunks, one per section, long sections in
//! overlapping pieces.

/// Longest chunk text, in bytes (about 300 tokens).
pub const MAX_CHUNK_CHARS: usize = 1200;
/// Text repeated at the start of the next piece of a long section.
pub const OVERLAP_CHARS: usize = 200;

/// A piece of a document with the heading path of its section ("Pods > Pod lifecycle").
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub heading: String,
    pub text: String,
}

/// Chunks a Markdown body. Headings inside fenced code blocks are text. The heading
/// path starts with `title` unless the document has its own level-1 heading.
pub fn chunk_markdown(title: &str, body: &str) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    for section in sections(title, body) {
        for text in split_long(&section.text, MAX_CHUNK_CHARS, OVERLAP_CHARS) {
            chunks.push(Chunk {
                heading: section.heading.clone(),
                text,
            });
        }
    }
    chunks
}

struct Section {
    heading: String,
    text: String,
}

fn sections(title: &str, body: &str) -> Vec<Section> {
    let has_h1 = body
        .lines()
        .any(|l| heading(l).is_some_and(|(level, _)| level == 1));
    let mut path: Vec<(usize, String)> = Vec::new();
    if !has_h1 && !title.trim().is_empty() {
        path.push((1, title.trim().to_string()));
    }
    let mut out = Vec::new();
    let mut text = String::new();
    let mut fence: Option<&str> = None;
    for line in body.lines() {
        let marker = fence_marker(line);
        if let Some(m) = marker {
            fence = match fence {
                Some(open) if open == m => None,
                None => Some(m),
                keep => keep,
            };
        }
        let parsed = if fence.is_none() && marker.is_none() {
            heading(line)
        } else {
            None
        };
        if let Some((level, name)) = parsed {
            flush(&mut out, &path, &mut text);
            path.retain(|(l, _)| *l < level);
            path.push((level, name));
            continue;
        }
        if !is_comment_line(line) {
            text.push_str(line);
            text.push('\n');
        }
    }
    flush(&mut out, &path, &mut text);
    out
}

fn flush(out: &mut Vec<Section>, path: &[(usize, String)], text: &mut String) {
    let body = text.trim();
    if !body.is_empty() {
        let heading = path
            .iter()
            .map(|(_, h)| h.as_str())
            .collect::<Vec<_>>()
            .join(" > ");
        out.push(Section {
            heading,
            text: body.to_string(),
        });
    }
    text.clear();
}

/// `## Name` -> (2, "Name"); trailing `#`s and `{#anchor}` are dropped.
fn heading(line: &str) -> Option<(usize, String)> {
    let level = line.bytes().take_while(|b| *b == b'#').count();
    if level == 0 || level > 6 {
        return None;
    }
    let rest = &line[level..];
    if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
        return None;
    }
    let mut name = rest.trim().trim_end_matches('#').trim();
    if let Some(i) = name.find(" {#") {
        name = name[..i].trim();
    }
    (!name.is_empty()).then(|| (level, name.to_string()))
}

fn fence_marker(line: &str) -> Option<&'static str> {
    let t = line.trim_start();
    if t.starts_with("```") {
        Some("```")
    } else if t.starts_with("~~~") {
        Some("~~~")
    } else {
        None
    }
}

fn is_comment_line(line: &str) -> bool {
    let t = line.trim();
    t.starts_with("<!--") && t.ends_with("-->")
}

/// Splits text longer than `max` bytes at paragraph, line or word breaks; each piece
/// after the first starts `overlap` bytes before the previous one ended.
fn split_long(text: &str, max: usize, overlap: usize) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut start = 0;
    while start < text.len() {
        if text.len() - start <= max {
            push_trimmed(&mut pieces, &text[start..]);
            break;
        }
        let end = floor_boundary(text, start + max);
        let cut = start + best_break(&text[start..end]);
        push_trimmed(&mut pieces, &text[start..cut]);
        start = next_start(text, start, cut, overlap);
    }
    pieces
}

fn push_trimmed(pieces: &mut Vec<String>, piece: &str) {
    let piece = piece.trim();
    if !piece.is_empty() {
        pieces.push(piece.to_string());
    }
}

/// The offset to cut `window` at: the last paragraph, line or word break in its
/// second half, else the whole window.
fn best_break(window: &str) -> usize {
    let half = window.len() / 2;
    for sep in ["\n\n", "\n", " "] {
        if let Some(i) = window.rfind(sep).filter(|i| *i >= half) {
            return i + sep.len();
        }
    }
    window.len()
}

/// Where the next piece starts: `overlap` before `cut`, moved forward to a word start,
/// always past `start` so the loop advances.
fn next_start(text: &str, start: usize, cut: usize, overlap: usize) -> usize {
    let mut next = floor_boundary(text, cut.saturating_sub(overlap));
    if let Some(space) = text[next..cut].find(char::is_whitespace) {
        next += space;
        next += text[next..].len() - text[next..].trim_start().len();
    }
    if next <= start || next >= cut {
        cut
    } else {
        next
    }
}

fn floor_boundary(text: &str, mut i: usize) -> usize {
    if i >= text.len() {
        return text.len();
    }
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_carry_their_heading_path() {
        let body = "Intro text.\n\n## Pod lifecycle\n\nPhases.\n\n### Pending\n\nWaiting.\n\n\
                    ## Probes\n\nChecks.\n";
        let chunks = chunk_markdown("Pods", body);
        let headings: Vec<_> = chunks.iter().map(|c| c.heading.as_str()).collect();
        assert_eq!(
            headings,
            [
                "Pods",
                "Pods > Pod lifecycle",
                "Pods > Pod lifecycle > Pending",
                "Pods > Probes"
            ]
        );
        assert_eq!(chunks[2].text, "Waiting.");
    }

    #[test]
    fn own_h1_replaces_the_title_and_code_fences_hide_hashes() {
        let body = "# Real Title\n\n```shell\n# not a heading\nls\n```\n\n## Next\nmore\n";
        let chunks = chunk_markdown("ignored", body);
        assert_eq!(chunks[0].heading, "Real Title");
        assert!(chunks[0].text.contains("# not a heading"));
        assert_eq!(chunks[1].heading, "Real Title > Next");
    }

    #[test]
    fn empty_sections_and_comment_lines_are_dropped() {
        let chunks = chunk_markdown("T", "<!-- overview -->\n\n## A\n\n## B\ntext\n");
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].heading, "T > B");
    }

    #[test]
    fn long_sections_split_with_overlap_and_size_cap() {
        let sentence = "The kubelet restarts containers that exceed their memory limit. ";
        let body = format!("## Memory\n\n{}", sentence.repeat(80));
        let chunks = chunk_markdown("Docs", &body);
        assert!(chunks.len() >= 4, "got {} chunks", chunks.len());
        for pair in chunks.windows(2) {
            assert!(pair[0].text.len() <= MAX_CHUNK_CHARS);
            let tail: String = pair[0]
                .text
                .chars()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            assert!(
                pair[1].text.contains(tail.trim()),
                "no overlap between pieces"
            );
        }
        assert!(chunks.iter().all(|c| c.heading == "Docs > Memory"));
    }

    #[test]
    fn splitting_respects_multibyte_characters() {
        let text = "é".repeat(2000);
        let pieces = split_long(&text, 101, 11);
        assert!(pieces.len() > 1);
        assert_eq!(pieces.concat().chars().filter(|c| *c != 'é').count(), 0);
    }
}
