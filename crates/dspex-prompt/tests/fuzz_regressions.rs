//! Inputs the fuzz targets (fuzz/, `scripts/fuzz`) found, each pinned with
//! the behaviour it must have now.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use dspex_prompt::template::PromptTemplate;
use dspex_prompt::{FieldType, PromptError, Signature};
use serde_json::json;

/// fuzz target `signature`: a choice with a quote inside the same quotes
/// was guessed at (`'yesl['x, y'` became `yesl['x, y`), and printed back as
/// a different list of choices. Such a choice is now refused with a typed
/// error naming it.
#[test]
fn a_choice_with_its_own_quote_inside_is_refused() {
    let input = "Q -> reasoning, answer: Literal['yesl['x, y', 'z']]', 'no', \"maybe\"]";
    match Signature::parse(input) {
        Err(PromptError::Signature { message, .. }) => {
            assert!(
                message.contains("is not a word or a quoted string"),
                "{message}"
            );
        }
        other => panic!("expected a signature error, got {other:?}"),
    }
}

/// The choices that are accepted print back to the same choices, whichever
/// quote they needed.
#[test]
fn choices_print_back_to_the_same_choices() {
    for (text, options) in [
        ("Literal['a', \"b\", c]", vec!["a", "b", "c"]),
        (
            "Literal[\"it's\", 'say \"hi\"']",
            vec!["it's", "say \"hi\""],
        ),
        ("Literal['a, b', 'x]']", vec!["a, b", "x]"]),
        ("Literal[' padded ', '']", vec![" padded "]),
    ] {
        let ty = FieldType::parse(text).unwrap();
        assert_eq!(
            ty,
            FieldType::Choice(options.iter().map(|o| (*o).to_owned()).collect()),
            "{text}"
        );
        let printed = ty.to_string();
        assert_eq!(
            FieldType::parse(&printed).unwrap(),
            ty,
            "{text} printed as {printed}"
        );
    }
    for bad in [
        "Literal[it's]",
        "Literal['a'b']",
        "Literal['open]",
        "Literal[\"a\"b\"]",
    ] {
        let error = FieldType::parse(bad).unwrap_err();
        assert!(
            error.contains("is not a word or a quoted string"),
            "{bad}: {error}"
        );
    }
}

/// fuzz target `template`: minijinja's `format` filter panicked on a
/// `%(key)` holding a character of more than one byte (its parser slices
/// the format string one byte at a time). Such a key is now an error naming
/// it; other format strings still format. (Widths: the next test.)
#[test]
fn a_format_key_with_a_multibyte_character_is_an_error_not_a_panic() {
    // The fuzzer's input, a smallest form of it, and a key left open.
    let found = "{fot #}{{ \"%(uns %preetingem|m in izit998ees %m|m in izWWW\u{792}{%{ '\u{6c2}\u{6cd}a \u{6c2}{\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}WWOWWr+etikn~gbrkd  ~e~afe  }}{ae }iqu0)\" | format(\"a\", 5) }}draw %} }{#} commn{{i-}}|{ent  \"#}{";
    for (source, key) in [
        (
            found,
            "uns %preetingem|m in izit998ees %m|m in izWWW\u{792}{%{ '\u{6c2}\u{6cd}a \u{6c2}{\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}\u{b}WWOWWr+etikn~gbrkd  ~e~afe  }}{ae }iqu0",
        ),
        ("{{ \"%(é)s\" | format({\"é\": 1}) }}", "é"),
        ("{{ \"100%% %(naïve\" | format(1) }}", "naïve"),
    ] {
        let template = PromptTemplate::create("t", source).unwrap();
        let error = template.render(&json!({})).unwrap_err().to_string();
        assert!(
            error.contains("only ASCII keys") && error.contains(&format!("`%({key})`")),
            "{source}: {error}"
        );
    }
    for (source, expected) in [
        ("{{ \"%s scored %d%%\" | format(\"é\", 3) }}", "é scored 3%"),
        ("{{ \"%%(é) %s\" | format(\"x\") }}", "%(é) x"),
    ] {
        let template = PromptTemplate::create("t", source).unwrap();
        assert_eq!(template.render(&json!({})).unwrap(), expected, "{source}");
    }
}

/// fuzz target `template`: minijinja's `format` filter pads to any width or
/// precision the format string gives, so a width past `usize` panicked
/// (capacity overflow) and `%99999999999d` would ask for 100 GB. Widths and
/// precisions over 1,000 are now an error naming the number.
#[test]
fn a_format_width_or_precision_over_a_thousand_is_an_error() {
    let found = "dema{{ \"#}555555greetno5555555555float{%       000000000000000010255826065618647266greetno5555555555float{%       00000000015841478oa%d\" | format( 0) }}";
    for (source, complaint) in [
        (found, "a width of at most 1000, not 10255826065618647266"),
        (
            "{{ \"%99999999999d\" | format(1) }}",
            "a width of at most 1000, not 99999999999",
        ),
        (
            "{{ \"%(n)-1001s\" | format({\"n\": 1}) }}",
            "a width of at most 1000, not 1001",
        ),
        (
            "{{ \"%.5000f\" | format(1.5) }}",
            "a precision of at most 1000, not 5000",
        ),
    ] {
        let template = PromptTemplate::create("t", source).unwrap();
        let error = template.render(&json!({})).unwrap_err().to_string();
        assert!(error.contains(complaint), "{source}: {error}");
    }
    for (source, expected) in [
        (
            "{{ \"%05d|%-4s|%.2f\" | format(42, \"ab\", 3.14159) }}",
            "00042|ab  |3.14",
        ),
        ("{{ \"%1000d\" | format(7) | length }}", "1000"),
    ] {
        let template = PromptTemplate::create("t", source).unwrap();
        assert_eq!(template.render(&json!({})).unwrap(), expected, "{source}");
    }
}
