//! Inputs the fuzz targets (fuzz/, `scripts/fuzz`) found, each pinned with
//! the behaviour it must have now.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use dspex_prompt::{FieldType, PromptError, Signature};

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
