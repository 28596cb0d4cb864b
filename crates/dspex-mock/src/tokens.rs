//! The mock's token arithmetic: a cheap, deterministic stand-in for a tokenizer.

/// Approximate token count of a text: `max(1, ceil(chars / 4))` for non-empty text,
/// 0 for the empty string. Characters are Unicode scalar values, not bytes.
///
/// The mock reports usage with this rule: a chat prompt costs the sum over its
/// messages of `approx_tokens(content) + 4`, plus 3 (plus `approx_tokens(system)` for
/// the Anthropic `system` field); a reply costs `approx_tokens(reply)`.
///
/// ```
/// use dspex_mock::approx_tokens;
/// assert_eq!(approx_tokens(""), 0);
/// assert_eq!(approx_tokens("hi"), 1);
/// assert_eq!(approx_tokens("hello world"), 3);
/// ```
#[must_use]
pub fn approx_tokens(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    let chars = text.chars().count() as u64;
    chars.div_ceil(4).max(1)
}

/// Prompt tokens of a list of message texts plus an optional system field.
pub(crate) fn prompt_tokens<'a>(
    messages: impl IntoIterator<Item = &'a str>,
    system: Option<&str>,
) -> u64 {
    let per_message: u64 = messages
        .into_iter()
        .map(|text| approx_tokens(text) + 4)
        .sum();
    per_message + 3 + system.map_or(0, approx_tokens)
}

/// The longest prefix of `text` that fits in `max_tokens` tokens, by this module's rule.
pub(crate) fn cut_to_tokens(text: &str, max_tokens: u64) -> Option<&str> {
    let max_chars = usize::try_from(max_tokens.saturating_mul(4)).unwrap_or(usize::MAX);
    text.char_indices()
        .nth(max_chars)
        .map(|(byte, _)| text.get(..byte).unwrap_or(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        assert_eq!(approx_tokens("abcd"), 1);
        assert_eq!(approx_tokens("abcde"), 2);
        assert_eq!(approx_tokens("éééé"), 1);
        assert_eq!(prompt_tokens(["abcd", "abcde"], None), 1 + 4 + 2 + 4 + 3);
        assert_eq!(prompt_tokens(["abcd"], Some("sys")), 1 + 4 + 3 + 1);
    }

    #[test]
    fn cuts_on_char_boundaries() {
        assert_eq!(cut_to_tokens("ééééééé", 1), Some("éééé"));
        assert_eq!(cut_to_tokens("abc", 1), None);
        assert_eq!(cut_to_tokens("abc", 0), Some(""));
    }
}
