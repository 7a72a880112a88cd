//! Stop strings and UTF-8 reassembly for streamed text.

/// Holds back text that could still grow into a stop string.
pub(crate) struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What a piece of text allows to be sent.
#[derive(Debug, PartialEq)]
pub(crate) enum Step {
    /// Safe to send (possibly empty); generation goes on.
    Emit(String),
    /// A stop string appeared: send this text before it, then end.
    Stop(String),
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> StopMatcher {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> Step {
        self.held.push_str(text);
        let first_stop = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first_stop {
            let before = self.held[..at].to_string();
            self.held.clear();
            return Step::Stop(before);
        }
        let keep = self.longest_open_prefix();
        let emit = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        Step::Emit(emit)
    }

    /// Text held back when generation ends without meeting a stop string.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest end of `held` that is a proper start of some stop string.
    fn longest_open_prefix(&self) -> usize {
        let mut longest = 0;
        for stop in &self.stops {
            for len in (1..stop.len()).rev() {
                if len <= longest {
                    break;
                }
                if stop.is_char_boundary(len) && self.held.ends_with(&stop[..len]) {
                    longest = len;
                    break;
                }
            }
        }
        longest
    }
}

/// Collects token bytes and releases them only as whole UTF-8 characters.
#[derive(Default)]
pub(crate) struct Utf8Buffer {
    pending: Vec<u8>,
}

impl Utf8Buffer {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(text) => {
                    out.push_str(text);
                    self.pending.clear();
                    return out;
                }
                Err(err) => {
                    let valid = err.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match err.error_len() {
                        // An unfinished character at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is left when generation ends (an unfinished character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn holds_back_a_possible_stop_then_releases_it() {
        let mut m = StopMatcher::new(&stops(&["END"]));
        assert_eq!(m.push("one E"), Step::Emit("one ".into()));
        assert_eq!(m.push("N"), Step::Emit("".into()));
        assert_eq!(m.push("d"), Step::Emit("ENd".into()));
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn stops_at_the_earliest_stop_string() {
        let mut m = StopMatcher::new(&stops(&["\n\n", "4"]));
        assert_eq!(m.push("2+2=4\n\nok"), Step::Stop("2+2=".into()));
    }

    #[test]
    fn a_stop_split_across_pieces_is_found() {
        let mut m = StopMatcher::new(&stops(&["</answer>"]));
        assert_eq!(m.push("yes</an"), Step::Emit("yes".into()));
        assert_eq!(m.push("swer> more"), Step::Stop("".into()));
    }

    #[test]
    fn without_stops_everything_passes() {
        let mut m = StopMatcher::new(&stops(&[""]));
        assert_eq!(m.push("abc"), Step::Emit("abc".into()));
    }

    #[test]
    fn non_ascii_stop_prefixes_respect_char_boundaries() {
        let mut m = StopMatcher::new(&stops(&["世界"]));
        assert_eq!(m.push("你好世"), Step::Emit("你好".into()));
        assert_eq!(m.finish(), "世");
    }

    #[test]
    fn utf8_waits_for_whole_characters() {
        let mut buf = Utf8Buffer::default();
        let bytes = "é世".as_bytes();
        assert_eq!(buf.push(&bytes[..1]), "");
        assert_eq!(buf.push(&bytes[1..3]), "é");
        assert_eq!(buf.push(&bytes[3..]), "世");
        assert_eq!(buf.finish(), "");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut buf = Utf8Buffer::default();
        assert_eq!(buf.push(&[b'a', 0xFF, b'b']), "a\u{FFFD}b");
        assert_eq!(buf.push(&[0xE4, 0xB8]), "");
        assert_eq!(buf.finish(), "\u{FFFD}");
    }
}
