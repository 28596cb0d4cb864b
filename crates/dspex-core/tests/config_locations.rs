//! Config errors point at the offending key or value itself: its line and
//! column in the file, the line quoted as rustc quotes it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use dspex_core::CoreError;
use dspex_core::config::{ConfigLoader, Focus, SourceLocation, toml_span};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Provider {
    kind: String,
    pool_size: Option<u32>,
    model: Option<String>,
    #[serde(default)]
    limits: Vec<Limit>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Limit {
    kind: String,
    window: String,
}

type Providers = BTreeMap<String, Provider>;

fn write(name: &str, text: &str) -> (tempdir::Dir, PathBuf) {
    let dir = tempdir::Dir::new();
    let path = dir.0.join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// A directory removed when dropped (the core crate has no tempfile).
mod tempdir {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub(crate) struct Dir(pub(crate) PathBuf);

    impl Dir {
        pub(crate) fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "dspex-config-locations-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn loader(path: &std::path::Path) -> ConfigLoader {
    ConfigLoader::builder(&["providers"])
        .file(path)
        .without_env()
        .build()
        .unwrap()
}

const FILE: &str = "# providers\n[providers.openai]\nkind = \"openai\"\nmodel = \"gpt-4o-mini\"\n\n\npool_size = \"eight\"\n";

#[test]
fn a_value_of_the_wrong_type_is_pointed_at_and_quoted() {
    let (_dir, path) = write("dspex.toml", FILE);
    let err = loader(&path).section::<Providers>("providers").unwrap_err();
    let CoreError::Config { key, locations, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(key, "providers.openai.pool_size");
    assert_eq!(locations.len(), 1);
    assert_eq!((locations[0].line, locations[0].column), (7, 13));
    let file = path.display();
    assert_eq!(
        err.to_string(),
        format!(
            "providers.openai.pool_size: invalid type: found string \"eight\", expected u32\n  --> {file}:7:13\n   |\n 7 | pool_size = \"eight\"\n   |             ^^^^^^^"
        )
    );
}

#[test]
fn every_unknown_key_of_a_section_is_reported_at_once_each_at_its_place() {
    let text = "[providers.openai]\nkind = \"openai\"\npool_sise = 4\n  modle = \"x\"\n\n[providers.b]\nkind = \"anthropic\"\nlimits = [{ kind = \"requests\", window = \"1s\", burst = 3 }]\n";
    let (_dir, path) = write("dspex.toml", text);
    let err = loader(&path).section::<Providers>("providers").unwrap_err();
    let CoreError::Config {
        key,
        message,
        locations,
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(
        key,
        "providers.b.limits[0].burst, providers.openai.modle, providers.openai.pool_sise"
    );
    assert_eq!(message, "3 unknown keys");
    let places: Vec<(usize, usize, usize, Option<&str>)> = locations
        .iter()
        .map(|l| (l.line, l.column, l.width, l.label.as_deref()))
        .collect();
    assert_eq!(
        places,
        [
            (8, 47, 5, Some("unknown key `burst`")),
            (4, 3, 5, Some("unknown key `modle`")),
            (3, 1, 9, Some("unknown key `pool_sise`")),
        ]
    );
    let shown = err.to_string();
    assert!(
        shown.contains(" 4 |   modle = \"x\"\n   |   ^^^^^ unknown key `modle`"),
        "{shown}"
    );
}

#[test]
fn unknown_top_level_keys_and_syntax_errors_are_located() {
    let (_dir, path) = write("dspex.toml", "cahce = 1\n[provders.a]\nkind = \"x\"\n");
    let err = ConfigLoader::builder(&["providers"])
        .file(&path)
        .without_env()
        .build()
        .unwrap_err();
    let CoreError::Config { locations, .. } = &err else {
        panic!("{err:?}")
    };
    let places: Vec<(usize, usize)> = locations.iter().map(|l| (l.line, l.column)).collect();
    assert_eq!(places, [(1, 1), (2, 2)], "{err}");

    let (_dir, path) = write("dspex.toml", "[providers.a]\nkind = \"x\"\nmodel = gpt\n");
    let err = ConfigLoader::builder(&["providers"])
        .file(&path)
        .without_env()
        .build()
        .unwrap_err();
    let CoreError::Config { locations, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!((locations[0].line, locations[0].column), (3, 9), "{err}");
    assert!(err.to_string().contains(" 3 | model = gpt"), "{err}");
}

#[test]
fn phase_two_errors_are_located_by_their_key_path() {
    let text = "[providers.a]\nkind = \"openai\"\nlimits = [\n  { kind = \"requests\", window = \"1s\" },\n  { kind = \"tokens\", window = \"100000000000d\" },\n]\n";
    let (_dir, path) = write("dspex.toml", text);
    let loader = loader(&path);
    loader.section::<Providers>("providers").unwrap();
    // As a crate's validation reports it: the key path only.
    let err = loader.locate(CoreError::config(
        "providers.a.limits[1].window",
        "longer than a year",
    ));
    let CoreError::Config {
        locations, origin, ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(origin.as_deref(), Some(path.display().to_string().as_str()));
    assert_eq!(
        (locations[0].line, locations[0].column, locations[0].width),
        (5, 31, 15)
    );
    assert!(
        err.to_string().ends_with(&format!(
            " 5 |   {{ kind = \"tokens\", window = \"100000000000d\" }},\n   | {}{}",
            " ".repeat(30),
            "^".repeat(15)
        )),
        "{err}"
    );
    // A key the file does not set: its table, labelled so.
    let err = loader.locate(CoreError::config("providers.a.timeout_ms", "too short"));
    let CoreError::Config { locations, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!((locations[0].line, locations[0].column), (1, 12));
    assert_eq!(
        locations[0].label.as_deref(),
        Some("in this table (the key is not set here)")
    );
    // Other errors, and keys of no file, are left as they are.
    let plain = ConfigLoader::builder(&["providers"])
        .without_env()
        .build()
        .unwrap();
    let err = plain.locate(CoreError::config("providers.a.kind", "bad"));
    assert_eq!(err.to_string(), "config error at `providers.a.kind`: bad");
}

#[test]
fn text_given_directly_is_named_config() {
    let loader = ConfigLoader::builder(&["providers"])
        .toml_str("[providers.a]\nkind = 3\n")
        .without_env()
        .build()
        .unwrap();
    let err = loader.section::<Providers>("providers").unwrap_err();
    assert!(err.to_string().contains("  --> <config>:2:8\n"), "{err}");
}

#[test]
fn spans_follow_dotted_quoted_and_array_paths() {
    let text = "[a.\"b.c\"]\nd = [1, { e = \"x\" }]\n[[f]]\ng = 1\n[[f]]\ng = 2\n";
    let at =
        |path: &str, focus| toml_span(text, path, focus).map(|(span, exact)| (&text[span], exact));
    assert_eq!(at("a.b.c.d[1].e", Focus::Value), Some(("\"x\"", true)));
    assert_eq!(at("a.b.c.d.1.e", Focus::Key), Some(("e", true)));
    assert_eq!(at("f[1].g", Focus::Value), Some(("2", true)));
    assert_eq!(at("a.b.c.zz", Focus::Value), Some(("\"b.c\"", false)));
    assert_eq!(at("nowhere", Focus::Value), None);
    assert_eq!(toml_span("not = toml = at all", "not", Focus::Value), None);
}

#[test]
fn locations_count_characters_and_keep_tabs() {
    let source = "x = 1\n\tnamé = \"é\" # ok\n";
    let start = source.find("\"é\"").unwrap();
    let at = SourceLocation::from_span("f.toml", source, start..start + "\"é\"".len());
    assert_eq!((at.line, at.column, at.width), (2, 9, 3));
    assert_eq!(
        at.to_string(),
        "  --> f.toml:2:9\n   |\n 2 | \tnamé = \"é\" # ok\n   | \t       ^^^"
    );
    // Past the end, or inside a character: pulled back, never a panic.
    let end = SourceLocation::from_span("f", source, 500..900);
    assert_eq!((end.line, end.column), (3, 1));
    let inside = SourceLocation::from_span("f", "é", 1..2);
    assert_eq!((inside.line, inside.column, inside.width), (1, 1, 1));
    let far = SourceLocation::from_line_column("f", "ab\ncd", 9, 40, 3);
    assert_eq!((far.line, far.column, far.width), (2, 3, 1));
    // Line numbers of several places share one gutter width.
    let text = "a\n".repeat(12);
    let both = SourceLocation::render_all(&[
        SourceLocation::from_span("f", &text, 2..3),
        SourceLocation::from_span("f", &text, 22..23),
    ]);
    assert_eq!(
        both,
        "   --> f:2:1\n    |\n  2 | a\n    | ^\n   --> f:12:1\n    |\n 12 | a\n    | ^"
    );
}
