//! JSON string escaping for request bodies, byte for byte what serde_json
//! writes.
//!
//! Hand-written because serde_json's serializer looks up every byte of every
//! string in its escape table, about ten instructions a byte, and a DSPy-style
//! prompt is kilobytes of mostly plain text on every call. Here eight bytes
//! are checked at once and plain runs are copied whole. The output is the
//! same as serde_json's (a test holds the two together), so callers may mix
//! the two in one body.

/// The byte `b` in every lane of a word.
const fn lanes(b: u8) -> u64 {
    u64::from_ne_bytes([b; 8])
}

/// Whether any byte of `word` is a quote, a backslash or below 0x20: the
/// bytes JSON must escape. (The classic zero-byte test: a borrow can flag a
/// lane above a real match, never a word without one.)
fn needs_escape(word: u64) -> bool {
    const HIGH: u64 = lanes(0x80);
    let zero_in = |x: u64| x.wrapping_sub(lanes(1)) & !x & HIGH;
    let control = word.wrapping_sub(lanes(0x20)) & !word & HIGH;
    (control | zero_in(word ^ lanes(b'"')) | zero_in(word ^ lanes(b'\\'))) != 0
}

/// How serde_json escapes a byte.
enum Escape {
    /// A two-byte escape such as `\n`.
    Short(&'static [u8]),
    /// `\u00XX`, lower-case hex: the other control characters.
    Unicode,
}

/// The escape serde_json writes for `byte`, if it needs one.
fn escape(byte: u8) -> Option<Escape> {
    Some(Escape::Short(match byte {
        b'"' => b"\\\"",
        b'\\' => b"\\\\",
        b'\n' => b"\\n",
        b'\r' => b"\\r",
        b'\t' => b"\\t",
        0x08 => b"\\b",
        0x0c => b"\\f",
        0x00..=0x1f => return Some(Escape::Unicode),
        _ => return None,
    }))
}

/// Appends `text` to `out` as a quoted JSON string.
pub(crate) fn write_str(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut plain_from = 0;
    let mut at = 0;
    while at < bytes.len() {
        // Whole words of plain text are skipped without a look at each byte.
        if let Some(word) = bytes.get(at..at + 8) {
            let mut lane = [0u8; 8];
            lane.copy_from_slice(word);
            if !needs_escape(u64::from_ne_bytes(lane)) {
                at += 8;
                continue;
            }
        }
        let Some(&byte) = bytes.get(at) else { break };
        if let Some(escaped) = escape(byte) {
            out.extend_from_slice(bytes.get(plain_from..at).unwrap_or_default());
            match escaped {
                Escape::Short(text) => out.extend_from_slice(text),
                Escape::Unicode => {
                    out.extend_from_slice(b"\\u00");
                    for nibble in [byte >> 4, byte & 0xf] {
                        out.push(HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'));
                    }
                }
            }
            plain_from = at + 1;
        }
        at += 1;
    }
    out.extend_from_slice(bytes.get(plain_from..).unwrap_or_default());
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ours(text: &str) -> String {
        let mut out = Vec::new();
        write_str(&mut out, text);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn matches_serde_json_on_every_byte_class() {
        let mut every_ascii = String::new();
        for byte in 0u8..=0x7f {
            every_ascii.push(char::from(byte));
        }
        let texts = [
            String::new(),
            "plain".to_owned(),
            "exactly8".to_owned(),
            "a longer plain text spanning several words".to_owned(),
            "Your input fields are:\n1. `question` (str)\n\n[[ ## answer ## ]]\n".to_owned(),
            "quote \" and backslash \\ at the end\\".to_owned(),
            "\"\"\"\"\"\"\"\"\"".to_owned(),
            "tab\there, cr\r, bell\u{7}, nul\u{0}, unit\u{1f}, del\u{7f}".to_owned(),
            "héllo wörld — ✓ 😀 \u{2028} \u{2029}".to_owned(),
            every_ascii,
        ];
        for text in &texts {
            assert_eq!(ours(text), serde_json::to_string(text).unwrap(), "{text:?}");
        }
        // Every position of an escape inside and across eight-byte words.
        for len in 0..20 {
            for at in 0..len {
                let mut text: Vec<char> = vec!['x'; len];
                text[at] = '\n';
                let text: String = text.into_iter().collect();
                assert_eq!(ours(&text), serde_json::to_string(&text).unwrap());
            }
        }
    }

    #[test]
    fn the_word_test_flags_exactly_the_words_with_an_escape() {
        for byte in 0u8..=0xff {
            for lane in 0..8 {
                let mut word = [b'a'; 8];
                word[lane] = byte;
                assert_eq!(
                    needs_escape(u64::from_ne_bytes(word)),
                    escape(byte).is_some(),
                    "byte {byte:#04x} in lane {lane}"
                );
            }
        }
    }
}
