#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::collections::BTreeMap;
use std::fs;

use dspex_prompt::PromptError;
use dspex_prompt::template::{
    Example, OptimizeOptions, PromptTemplate, TemplateSet, TemplateVariable, compose, optimize,
    optimize_with,
};
use serde_json::{Value, json};

fn var(name: &str, default: Option<Value>) -> TemplateVariable {
    TemplateVariable {
        name: name.to_owned(),
        default,
    }
}

fn names(template: &PromptTemplate) -> Vec<String> {
    template.variables().into_iter().map(|v| v.name).collect()
}

// ---------------------------------------------------------------- creation

#[test]
fn create_sets_identity_and_version() {
    let a = PromptTemplate::create("greet", "Hello {{ name }}").unwrap();
    let b = PromptTemplate::create("greet", "Hello {{ name }}").unwrap();
    assert_eq!(a.name(), "greet");
    assert_eq!(a.version(), 1);
    assert_eq!(a.source(), "Hello {{ name }}");
    assert!(a.metadata().is_empty());
    assert!(a.parent().is_none());
    assert_ne!(a.id(), b.id());
    assert_eq!(a.clone().id(), a.id());
}

#[test]
fn syntax_error_names_template_line_and_column() {
    let err = PromptTemplate::create("broken", "line one\nline two {{ name oops }}\n").unwrap_err();
    match err {
        PromptError::TemplateSyntax {
            template,
            line,
            column,
            message,
        } => {
            assert_eq!(template, "broken");
            assert_eq!(line, 2);
            // `oops` starts at character 18 of line 2.
            assert_eq!(column, Some(18));
            assert!(message.contains("syntax error"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn syntax_error_quotes_the_line_under_its_place() {
    let display = PromptTemplate::create("broken", "line one\nline two {{ name oops }}\n")
        .unwrap_err()
        .to_string();
    assert!(display.contains("--> broken:2:18"), "{display}");
    assert!(
        display.contains(" 2 | line two {{ name oops }}\n   |                  ^"),
        "{display}"
    );
}

#[test]
fn syntax_error_for_unclosed_block() {
    let err = PromptTemplate::create("loop", "a\nb\n{% for x in xs %}{{ x }}").unwrap_err();
    match err {
        PromptError::TemplateSyntax { template, line, .. } => {
            assert_eq!(template, "loop");
            assert_eq!(line, 3);
        }
        other => panic!("unexpected {other:?}"),
    }
    let display = PromptTemplate::create("t", "{{ }}")
        .unwrap_err()
        .to_string();
    assert!(
        display.starts_with("template `t` line 1, column "),
        "{display}"
    );
}

#[test]
fn create_rejects_references_to_unknown_templates() {
    let err = PromptTemplate::create("child", "{% include \"footer\" %}").unwrap_err();
    match err {
        PromptError::UnknownTemplate {
            name,
            referenced_by,
        } => {
            assert_eq!(name, "footer");
            assert_eq!(referenced_by, "child");
        }
        other => panic!("unexpected {other:?}"),
    }
    // `ignore missing` is not checked and renders nothing.
    let t = PromptTemplate::create("child", "a{% include \"footer\" ignore missing %}b").unwrap();
    assert_eq!(t.render(&json!({})).unwrap(), "ab");
}

// --------------------------------------------------------------- variables

#[test]
fn variables_with_defaults_and_without_set_or_loop_variables() {
    let source = "\
{% set greeting = \"Hi\" %}{{ greeting }} {{ name }}.
Tone: {{ tone | default(\"neutral\") }}; count: {{ n|default(3) }}; ratio {{ r | d(0.5) }}
{% for item in items %}- {{ item.title }} ({{ loop.index }})
{% endfor %}{% if flag | default(false) %}flagged{% endif %}
{{ suffix | default }}{% if note is defined %}{{ note }}{% endif %}
{{ who | default(name) }}{{ user.name }}{{ range(2) | list | length }}";
    let t = PromptTemplate::create("vars", source).unwrap();
    assert_eq!(
        t.variables(),
        vec![
            var("flag", Some(json!(false))),
            var("items", None),
            var("n", Some(json!(3))),
            var("name", None),
            var("note", Some(Value::Null)),
            var("r", Some(json!(0.5))),
            var("suffix", Some(json!(""))),
            var("tone", Some(json!("neutral"))),
            var("user", None),
            var("who", Some(Value::Null)),
        ]
    );
    assert_eq!(t.required_variables(), ["items", "name", "user"]);
    assert!(t.variables()[1].is_required());
    assert!(!t.variables()[0].is_required());
}

#[test]
fn variables_of_a_template_without_any() {
    let t = PromptTemplate::create("static", "No variables {# {{ hidden }} #} here.").unwrap();
    assert!(t.variables().is_empty());
    assert_eq!(t.render(&json!({})).unwrap(), "No variables  here.");
}

#[test]
fn defaults_apply_when_not_given() {
    let t = PromptTemplate::create(
        "d",
        "{{ tone | default(\"neutral\") }}/{{ n|default(3) }}/{{ items | default([1, 2]) | join(\",\") }}",
    )
    .unwrap();
    assert_eq!(t.render(&json!({})).unwrap(), "neutral/3/1,2");
    assert_eq!(
        t.render(&json!({"tone": "warm", "n": 7, "items": ["x"]}))
            .unwrap(),
        "warm/7/x"
    );
    assert_eq!(
        t.variables()[0],
        var("items", Some(json!([1, 2]))),
        "list defaults are evaluated"
    );
}

// ------------------------------------------------------------------ render

#[test]
fn missing_variables_lists_every_missing_name_sorted() {
    let t = PromptTemplate::create(
        "qa",
        "{{ zeta }} {{ question }} {{ alpha }} {{ context }} {{ tone | default('x') }}",
    )
    .unwrap();
    let err = t.render(&json!({ "question": "q" })).unwrap_err();
    match &err {
        PromptError::MissingVariables { template, missing } => {
            assert_eq!(template, "qa");
            assert_eq!(missing, &["alpha", "context", "zeta"]);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "template `qa` is missing variables: alpha, context, zeta"
    );
    // Not a map at all: everything is missing.
    match t.render(&json!(null)).unwrap_err() {
        PromptError::MissingVariables { missing, .. } => {
            assert_eq!(missing, ["alpha", "context", "question", "zeta"]);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn null_counts_as_given() {
    let t = PromptTemplate::create("n", "[{{ x }}]").unwrap();
    assert_eq!(t.render(&json!({ "x": null })).unwrap(), "[None]");
}

#[test]
fn nested_undefined_access_is_a_render_error_with_line() {
    let t = PromptTemplate::create("nested", "Hello\n{{ user.name }}\n{{ user.address.city }}")
        .unwrap();
    let err = t.render(&json!({ "user": { "name": "Ada" } })).unwrap_err();
    match err {
        PromptError::TemplateRender {
            template,
            line,
            message,
        } => {
            assert_eq!(template, "nested");
            assert_eq!(line, Some(3));
            assert!(message.contains("undefined"), "{message}");
            assert!(message.contains("address.city"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn other_render_errors_carry_the_line() {
    let t = PromptTemplate::create("math", "ok\n{{ a + b }}").unwrap();
    match t.render(&json!({ "a": "text", "b": 1 })).unwrap_err() {
        PromptError::TemplateRender { template, line, .. } => {
            assert_eq!(template, "math");
            assert_eq!(line, Some(2));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn renders_values_of_every_kind() {
    let source = "\
Name: {{ name }}
Count: {{ count }} (next {{ count + 1 }}), ratio {{ ratio }}
Verbose: {% if verbose %}yes{% else %}no{% endif %}, quiet: {{ quiet }}
{% for step in steps %}{{ loop.index }}. {{ step }}
{% endfor %}User: {{ user.name }} <{{ user.contact.email }}>, age {{ user['age'] }}
Tags: {{ tags | join(\", \") }}
";
    let t = PromptTemplate::create("kinds", source).unwrap();
    let vars = json!({
        "name": "Ada",
        "count": 41,
        "ratio": 0.25,
        "verbose": true,
        "quiet": false,
        "steps": ["read", "think", "answer"],
        "user": { "name": "Ada L.", "age": 36, "contact": { "email": "ada@example.com" } },
        "tags": ["a", "b"],
    });
    assert_eq!(
        t.render(&vars).unwrap(),
        "\
Name: Ada
Count: 41 (next 42), ratio 0.25
Verbose: yes, quiet: False
1. read
2. think
3. answer
User: Ada L. <ada@example.com>, age 36
Tags: a, b
"
    );
}

#[test]
fn render_accepts_maps_and_structs() {
    #[derive(serde::Serialize)]
    struct Vars<'a> {
        name: &'a str,
        n: u32,
    }
    let t = PromptTemplate::create("s", "{{ name }}:{{ n }}").unwrap();
    assert_eq!(t.render(&Vars { name: "x", n: 2 }).unwrap(), "x:2");
    let mut map = BTreeMap::new();
    map.insert("name".to_owned(), json!("y"));
    map.insert("n".to_owned(), json!(3));
    assert_eq!(t.render(&map).unwrap(), "y:3");
}

#[test]
fn no_html_escaping_and_trailing_newline_kept() {
    let t = PromptTemplate::create("plain", "<b>{{ text }}</b> & more\n").unwrap();
    assert_eq!(
        t.render(&json!({ "text": "a < b && \"c\" 'd'" })).unwrap(),
        "<b>a < b && \"c\" 'd'</b> & more\n"
    );
}

#[test]
fn values_are_not_interpreted_as_template_code() {
    let t = PromptTemplate::create("lit", "{{ text }}").unwrap();
    assert_eq!(
        t.render(&json!({ "text": "{{ secret }} {% if x %}" }))
            .unwrap(),
        "{{ secret }} {% if x %}"
    );
}

#[test]
fn templates_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PromptTemplate>();
    assert_send_sync::<TemplateSet>();
    let t = PromptTemplate::create("th", "{{ n }}").unwrap();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let t = t.clone();
            std::thread::spawn(move || t.render(&json!({ "n": i })).unwrap())
        })
        .collect();
    let out: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(out, ["0", "1", "2", "3"]);
}

// ------------------------------------------------------------- inheritance

const BASE: &str = "\
{% block system %}You are a {{ role | default(\"helpful assistant\") }}.{% endblock %}
{% block task %}Answer: {{ question }}{% endblock %}
{% block footer %}Be brief.{% endblock %}";

#[test]
fn extend_overrides_blocks_and_unions_variables() {
    let base = PromptTemplate::create("base", BASE).unwrap();
    assert_eq!(
        base.render(&json!({ "question": "Why?" })).unwrap(),
        "You are a helpful assistant.\nAnswer: Why?\nBe brief."
    );

    let child = PromptTemplate::extend(
        "summary",
        "{% extends \"base\" %}{% block task %}Summarise {{ text }} in {{ words }} words.{% endblock %}\
         {% block footer %}{{ super() }} {{ extra }}{% endblock %}",
        &base,
    )
    .unwrap();
    assert_eq!(child.parent().unwrap().id(), base.id());
    // `question` is only used in the overridden `task` block of the parent.
    assert_eq!(
        child.variables(),
        vec![
            var("extra", None),
            var("role", Some(json!("helpful assistant"))),
            var("text", None),
            var("words", None),
        ]
    );
    assert_eq!(
        child
            .render(&json!({ "text": "the report", "words": 50, "extra": "No lists.", "role": "analyst" }))
            .unwrap(),
        "You are a analyst.\nSummarise the report in 50 words.\nBe brief. No lists."
    );
    match child.render(&json!({ "text": "t" })).unwrap_err() {
        PromptError::MissingVariables { template, missing } => {
            assert_eq!(template, "summary");
            assert_eq!(missing, ["extra", "words"]);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn extend_injects_the_extends_tag() {
    let base = PromptTemplate::create("base", BASE).unwrap();
    let child = PromptTemplate::extend("terse", "{% block footer %}One line.{% endblock %}", &base)
        .unwrap();
    assert!(child.source().starts_with("{% extends \"base\" %}"));
    assert_eq!(names(&child), ["question", "role"]);
    assert_eq!(
        child.render(&json!({ "question": "Q" })).unwrap(),
        "You are a helpful assistant.\nAnswer: Q\nOne line."
    );
    // Multi-level.
    let grandchild = PromptTemplate::extend(
        "g",
        "{% block system %}System: {{ sys }}{% endblock %}",
        &child,
    )
    .unwrap();
    assert_eq!(names(&grandchild), ["question", "sys"]);
    assert_eq!(
        grandchild
            .render(&json!({ "question": "Q", "sys": "S" }))
            .unwrap(),
        "System: S\nAnswer: Q\nOne line."
    );
}

#[test]
fn extend_rejects_a_different_parent_name_and_reports_child_syntax() {
    let base = PromptTemplate::create("base", BASE).unwrap();
    match PromptTemplate::extend("c", "{% extends \"other\" %}", &base).unwrap_err() {
        PromptError::UnknownTemplate {
            name,
            referenced_by,
        } => {
            assert_eq!(name, "other");
            assert_eq!(referenced_by, "c");
        }
        other => panic!("unexpected {other:?}"),
    }
    match PromptTemplate::extend("c", "{% block task %}\n{{ x y }}{% endblock %}", &base)
        .unwrap_err()
    {
        PromptError::TemplateSyntax { template, line, .. } => {
            assert_eq!(template, "c");
            assert_eq!(line, 2);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn render_error_in_parent_names_the_parent() {
    let base = PromptTemplate::create("base", "a\n{% block b %}{% endblock %}\n{{ cfg.missing }}")
        .unwrap();
    let child = PromptTemplate::extend("child", "{% block b %}x{% endblock %}", &base).unwrap();
    match child.render(&json!({ "cfg": {} })).unwrap_err() {
        PromptError::TemplateRender { template, line, .. } => {
            assert_eq!(template, "base");
            assert_eq!(line, Some(3));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn inheritance_by_name_in_a_set() {
    let mut set = TemplateSet::new();
    set.add(
        "qa",
        "{% extends \"layout\" %}{% block body %}Q: {{ question }}{% include \"footer\" %}{% endblock %}",
    )
    .unwrap();
    set.add(
        "layout",
        "[{{ title }}]\n{% block body %}{{ unused_default_body }}{% endblock %}\n",
    )
    .unwrap();
    set.add("footer", " -- {{ signature | default(\"bot\") }}")
        .unwrap();
    set.validate().unwrap();
    assert_eq!(set.len(), 3);
    assert_eq!(set.names().collect::<Vec<_>>(), ["footer", "layout", "qa"]);

    let qa = set.get("qa").unwrap();
    assert_eq!(qa.name(), "qa");
    assert_eq!(
        qa.variables(),
        vec![
            var("question", None),
            var("signature", Some(json!("bot"))),
            var("title", None),
        ]
    );
    assert_eq!(
        qa.render(&json!({ "title": "Quiz", "question": "2+2?" }))
            .unwrap(),
        "[Quiz]\nQ: 2+2? -- bot\n"
    );
    // Cached: the same template each time.
    assert_eq!(set.get("qa").unwrap().id(), qa.id());
    // A template of the set can be extended programmatically too.
    let layout = set.get("layout").unwrap();
    let custom = PromptTemplate::extend(
        "custom",
        "{% block body %}{% include \"footer\" %}{% endblock %}",
        &layout,
    );
    // The child sees the templates its parent sees.
    let custom = custom.unwrap();
    assert_eq!(
        custom.render(&json!({ "title": "T" })).unwrap(),
        "[T]\n -- bot\n"
    );
}

#[test]
fn super_keeps_the_parent_block_variables() {
    let base = PromptTemplate::create("base", BASE).unwrap();
    let child = PromptTemplate::extend(
        "more",
        "{% block task %}{{ super() }} Explain {{ depth }}.{% endblock %}",
        &base,
    )
    .unwrap();
    assert_eq!(names(&child), ["depth", "question", "role"]);
    assert_eq!(
        child
            .render(&json!({ "question": "Q", "depth": "briefly" }))
            .unwrap(),
        "You are a helpful assistant.\nAnswer: Q Explain briefly.\nBe brief."
    );
}

#[test]
fn cyclic_references_do_not_hang() {
    let mut set = TemplateSet::new();
    set.add(
        "a",
        "{% extends \"b\" %}{% block x %}A{{ p }}{% endblock %}",
    )
    .unwrap();
    set.add(
        "b",
        "{% extends \"a\" %}{% block x %}B{{ q }}{% endblock %}",
    )
    .unwrap();
    match set.validate().unwrap_err() {
        PromptError::TemplateSyntax {
            template, message, ..
        } => {
            assert_eq!(template, "b");
            assert!(message.contains("a -> b -> a"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        set.get("a").unwrap_err(),
        PromptError::TemplateSyntax { .. }
    ));
    // Self-inclusion is bounded by minijinja's recursion limit.
    let mut set = TemplateSet::new();
    set.add("r", "{{ n }}{% if n > 0 %}{% include \"r\" %}{% endif %}")
        .unwrap();
    set.validate().unwrap();
    let r = set.get("r").unwrap();
    assert_eq!(names(&r), ["n"]);
    assert_eq!(r.render(&json!({ "n": 0 })).unwrap(), "0");
    assert!(matches!(
        r.render(&json!({ "n": 1 })).unwrap_err(),
        PromptError::TemplateRender { .. }
    ));
}

#[test]
fn computed_parent_names_are_rejected() {
    let base = PromptTemplate::create("base", BASE).unwrap();
    match PromptTemplate::extend("c", "x\n{% extends layout %}", &base).unwrap_err() {
        PromptError::TemplateSyntax {
            template,
            line,
            column,
            ..
        } => {
            assert_eq!(template, "c");
            assert_eq!(line, 2);
            assert_eq!(column, Some(1));
        }
        other => panic!("unexpected {other:?}"),
    }
    let mut set = TemplateSet::new();
    set.add("a", "{% extends name %}").unwrap();
    assert!(matches!(
        set.validate().unwrap_err(),
        PromptError::TemplateSyntax { .. }
    ));
}

#[test]
fn set_get_unknown_name() {
    let set = TemplateSet::new();
    assert!(set.is_empty());
    match set.get("nope").unwrap_err() {
        PromptError::UnknownTemplate {
            name,
            referenced_by,
        } => {
            assert_eq!(name, "nope");
            assert_eq!(referenced_by, "");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn set_validate_reports_missing_target() {
    let mut set = TemplateSet::new();
    set.add("a", "{% import \"macros\" as m %}{{ m.f() }}")
        .unwrap();
    match set.validate().unwrap_err() {
        PromptError::UnknownTemplate {
            name,
            referenced_by,
        } => {
            assert_eq!(name, "macros");
            assert_eq!(referenced_by, "a");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        set.get("a").unwrap_err(),
        PromptError::UnknownTemplate { .. }
    ));
    set.add("macros", "{% macro f() %}F{{ g }}{% endmacro %}")
        .unwrap();
    set.validate().unwrap();
    assert_eq!(
        set.get("a").unwrap().render(&json!({ "g": 1 })).unwrap(),
        "F1"
    );
}

#[test]
fn set_add_reports_syntax_errors() {
    let mut set = TemplateSet::new();
    match set.add("bad", "ok\n{% if %}").unwrap_err() {
        PromptError::TemplateSyntax { template, line, .. } => {
            assert_eq!(template, "bad");
            assert_eq!(line, 2);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!set.contains("bad"));
}

#[test]
fn included_templates_see_loop_variables() {
    let mut set = TemplateSet::new();
    set.add(
        "list",
        "{% for item in items %}{% include \"row\" %}\n{% endfor %}",
    )
    .unwrap();
    set.add("row", "* {{ item }} ({{ unit }})").unwrap();
    let list = set.get("list").unwrap();
    assert_eq!(names(&list), ["items", "unit"]);
    assert_eq!(
        list.render(&json!({ "items": ["a", "b"], "unit": "kg" }))
            .unwrap(),
        "* a (kg)\n* b (kg)\n"
    );
}

// --------------------------------------------------------------- from_dir

#[test]
fn from_dir_loads_files_and_subdirectories() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("base.jinja"),
        "System: {{ role }}\n{% block body %}{% endblock %}\n",
    )
    .unwrap();
    fs::write(
        dir.path().join("qa.j2"),
        "{% extends \"base\" %}{% block body %}{% include \"parts/footer.txt\" %}Q: {{ question }}{% endblock %}",
    )
    .unwrap();
    fs::create_dir(dir.path().join("parts")).unwrap();
    fs::write(dir.path().join("parts/footer.txt"), "(footer) ").unwrap();
    fs::write(dir.path().join("solo.prompt"), "Solo {{ x }}\n").unwrap();
    fs::write(dir.path().join("README.md"), "{{ not a template").unwrap();
    fs::write(dir.path().join(".hidden.jinja"), "{{ broken").unwrap();

    let set = TemplateSet::from_dir(dir.path()).unwrap();
    assert_eq!(
        set.names().collect::<Vec<_>>(),
        ["base", "parts/footer", "qa", "solo"]
    );
    assert!(set.contains("qa.j2"));
    let qa = set.get("qa").unwrap();
    assert_eq!(names(&qa), ["question", "role"]);
    assert_eq!(
        qa.render(&json!({ "role": "tutor", "question": "Why?" }))
            .unwrap(),
        "System: tutor\n(footer) Q: Why?\n"
    );
    assert!(qa.metadata()["file"].as_str().unwrap().ends_with("qa.j2"));
    assert_eq!(
        set.get("solo").unwrap().render(&json!({"x": 1})).unwrap(),
        "Solo 1\n"
    );
}

#[test]
fn from_dir_missing_extends_target() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("child.jinja"),
        "{% extends \"layout\" %}{% block b %}x{% endblock %}",
    )
    .unwrap();
    fs::write(dir.path().join("other.jinja"), "fine").unwrap();
    match TemplateSet::from_dir(dir.path()).unwrap_err() {
        PromptError::UnknownTemplate {
            name,
            referenced_by,
        } => {
            assert_eq!(name, "layout");
            assert_eq!(referenced_by, "child");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn from_dir_missing_include_target() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("tasks")).unwrap();
    fs::write(
        dir.path().join("tasks/summary.txt"),
        "Summarise.\n{% include \"shared/rules\" %}",
    )
    .unwrap();
    let err = TemplateSet::from_dir(dir.path()).unwrap_err();
    match &err {
        PromptError::UnknownTemplate {
            name,
            referenced_by,
        } => {
            assert_eq!(name, "shared/rules");
            assert_eq!(referenced_by, "tasks/summary");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "unknown template `shared/rules` (referenced by `tasks/summary`)"
    );
}

#[test]
fn from_dir_syntax_error_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("good.jinja"), "fine").unwrap();
    fs::write(dir.path().join("bad.jinja"), "one\ntwo\n{{ a b }}").unwrap();
    match TemplateSet::from_dir(dir.path()).unwrap_err() {
        PromptError::TemplateSyntax {
            template,
            line,
            column,
            message,
        } => {
            assert_eq!(template, "bad");
            assert_eq!(line, 3);
            assert_eq!(column, Some(6));
            assert!(message.contains("bad.jinja"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn from_dir_unreadable_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("does-not-exist");
    match TemplateSet::from_dir(&missing).unwrap_err() {
        PromptError::TemplateIo { path, .. } => {
            assert!(path.contains("does-not-exist"), "{path}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn from_dir_duplicate_names() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.jinja"), "1").unwrap();
    fs::write(dir.path().join("a.txt"), "2").unwrap();
    assert!(matches!(
        TemplateSet::from_dir(dir.path()).unwrap_err(),
        PromptError::TemplateIo { .. }
    ));
}

// ------------------------------------------------------------- composition

#[test]
fn compose_concatenates_with_one_newline() {
    let a = PromptTemplate::create("intro", "You are {{ role }}.").unwrap();
    let b = PromptTemplate::create("task", "Answer {{ question }} as {{ role }}.").unwrap();
    let ab = compose(&a, &b).unwrap();
    assert_eq!(ab.name(), "intro+task");
    assert_eq!(ab.version(), 1);
    assert_eq!(names(&ab), ["question", "role"]);
    let vars = json!({ "role": "a tutor", "question": "2+2" });
    assert_eq!(
        ab.render(&vars).unwrap(),
        format!("{}\n{}", a.render(&vars).unwrap(), b.render(&vars).unwrap())
    );
    assert_eq!(
        ab.render(&vars).unwrap(),
        "You are a tutor.\nAnswer 2+2 as a tutor."
    );
    // Order matters.
    let ba = compose(&b, &a).unwrap();
    assert_eq!(
        ba.render(&vars).unwrap(),
        "Answer 2+2 as a tutor.\nYou are a tutor."
    );
    assert_eq!(
        ab.metadata()["composed_of"],
        json!([
            { "name": "intro", "version": 1, "id": a.id().to_string() },
            { "name": "task", "version": 1, "id": b.id().to_string() },
        ])
    );
    assert_eq!(ab.metadata()["separator"], json!("\n"));
    match ab.render(&json!({})).unwrap_err() {
        PromptError::MissingVariables { template, missing } => {
            assert_eq!(template, "intro+task");
            assert_eq!(missing, ["question", "role"]);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn compose_keeps_a_trailing_newline_of_the_first_part() {
    let a = PromptTemplate::create("a", "A\n").unwrap();
    let b = PromptTemplate::create("b", "B").unwrap();
    assert_eq!(
        compose(&a, &b).unwrap().render(&json!({})).unwrap(),
        "A\n\nB"
    );
}

#[test]
fn compose_nests_and_unions_defaults() {
    let a = PromptTemplate::create("a", "A{{ x }}").unwrap();
    let b = PromptTemplate::create("b", "B{{ y | default(2) }}").unwrap();
    let c = PromptTemplate::create("c", "C{{ z }}").unwrap();
    let abc = compose(&compose(&a, &b).unwrap(), &c).unwrap();
    assert_eq!(abc.name(), "a+b+c");
    assert_eq!(
        abc.variables(),
        vec![var("x", None), var("y", Some(json!(2))), var("z", None)]
    );
    assert_eq!(
        abc.render(&json!({ "x": 1, "z": 3 })).unwrap(),
        "A1\nB2\nC3"
    );
    let a_bc = compose(&a, &compose(&b, &c).unwrap()).unwrap();
    assert_eq!(
        a_bc.render(&json!({ "x": 1, "z": 3 })).unwrap(),
        "A1\nB2\nC3"
    );
    assert_eq!(abc.metadata()["composed_of"][0]["name"], json!("a+b"));
}

#[test]
fn a_default_in_one_part_does_not_make_a_name_optional_in_another() {
    let bare = PromptTemplate::create("bare", "{{ x }}").unwrap();
    let with_default =
        PromptTemplate::create("dflt", "{{ x | default(1) }}{{ y | default(2) }}").unwrap();
    let both = compose(&with_default, &bare).unwrap();
    assert_eq!(
        both.variables(),
        vec![var("x", None), var("y", Some(json!(2)))]
    );
    match both.render(&json!({})).unwrap_err() {
        PromptError::MissingVariables { missing, .. } => assert_eq!(missing, ["x"]),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn compose_same_template_and_clashing_names() {
    let a = PromptTemplate::create("p", "one {{ x }}").unwrap();
    let aa = compose(&a, &a).unwrap();
    assert_eq!(aa.render(&json!({ "x": 1 })).unwrap(), "one 1\none 1");

    // Two parts whose parents are both called `base` but differ.
    let base1 = PromptTemplate::create("base", "[1 {% block b %}{% endblock %}]").unwrap();
    let base2 = PromptTemplate::create("base", "[2 {% block b %}{% endblock %}]").unwrap();
    let c1 = PromptTemplate::extend("c", "{% block b %}{{ x }}{% endblock %}", &base1).unwrap();
    let c2 = PromptTemplate::extend("c", "{% block b %}{{ y }}{% endblock %}", &base2).unwrap();
    let both = compose(&c1, &c2).unwrap();
    assert_eq!(names(&both), ["x", "y"]);
    assert_eq!(
        both.render(&json!({ "x": "X", "y": "Y" })).unwrap(),
        "[1 X]\n[2 Y]"
    );
}

#[test]
fn compose_set_members_and_render_errors_name_the_part() {
    let mut set = TemplateSet::new();
    set.add("head", "{% include \"sig\" %}:{{ h }}").unwrap();
    set.add("sig", "S").unwrap();
    let head = set.get("head").unwrap();
    let tail = PromptTemplate::create("tail", "x\n{{ t.missing }}").unwrap();
    let both = compose(&head, &tail).unwrap();
    assert_eq!(names(&both), ["h", "t"]);
    match both.render(&json!({ "h": 1, "t": {} })).unwrap_err() {
        PromptError::TemplateRender { template, line, .. } => {
            assert_eq!(template, "tail");
            assert_eq!(line, Some(2));
        }
        other => panic!("unexpected {other:?}"),
    }
}

// ------------------------------------------------------------ optimisation

fn qa_template() -> PromptTemplate {
    PromptTemplate::create("qa", "Question: {{ question }}\nAnswer:").unwrap()
}

fn example(question: &str, answer: &str, score: f64) -> Example {
    Example::new(answer, score).with_input("question", question)
}

#[test]
fn optimize_takes_top_k_above_threshold() {
    let t = qa_template().with_metadata("owner", "team-a");
    let data = vec![
        example("q0", "a0", 0.5),
        example("q1", "a1", 0.9),
        example("q2", "a2", 0.75),
        example("q3", "a3", 0.7),
        example("q4", "a4", 0.95),
        example("q5", "a5", 0.9),
        example("q6", "a6", 0.69),
        example("q7", "a7", 1.0),
    ];
    let o = optimize(&t, &data).unwrap();
    assert_ne!(o.id(), t.id());
    assert_eq!(o.name(), "qa");
    assert_eq!(o.version(), 2);
    assert_eq!(o.variables(), t.variables());
    // k = 4 by default; ties (q1, q5 at 0.9) keep input order.
    assert_eq!(
        o.render(&json!({ "question": "What is 2+2?" })).unwrap(),
        "Examples:\n\n\
         Input:\nquestion: q7\nOutput: a7\n\n\
         Input:\nquestion: q4\nOutput: a4\n\n\
         Input:\nquestion: q1\nOutput: a1\n\n\
         Input:\nquestion: q5\nOutput: a5\n\n\
         Question: What is 2+2?\nAnswer:"
    );
    let meta = o.metadata();
    assert_eq!(
        meta["optimized_from"],
        json!({ "id": t.id().to_string(), "version": 1 })
    );
    assert_eq!(meta["demo_count"], json!(4));
    assert_eq!(meta["demo_indices"], json!([7, 4, 1, 5]));
    assert_eq!(meta["k"], json!(4));
    assert_eq!(meta["threshold"], json!(0.7));
    assert_eq!(meta["owner"], json!("team-a"));
    assert!(!meta.contains_key("demo_note"));
    // The original is untouched.
    assert_eq!(
        t.render(&json!({ "question": "x" })).unwrap(),
        "Question: x\nAnswer:"
    );
}

#[test]
fn optimize_threshold_is_inclusive_and_filters() {
    let t = qa_template();
    let data = vec![
        example("low", "no", 0.2),
        example("edge", "yes", 0.7),
        example("nan", "no", f64::NAN),
    ];
    let o = optimize(&t, &data).unwrap();
    assert_eq!(o.metadata()["demo_indices"], json!([1]));
    assert_eq!(
        o.render(&json!({ "question": "Q" })).unwrap(),
        "Examples:\n\nInput:\nquestion: edge\nOutput: yes\n\nQuestion: Q\nAnswer:"
    );
}

#[test]
fn optimize_with_custom_options_and_structured_values() {
    let t = qa_template();
    let data = vec![
        Example::new(json!({ "answer": 4 }), 0.4)
            .with_input("question", "2+2")
            .with_input("context", json!(["math"])),
        example("b", "B", 0.3),
        example("c", "C", 0.35),
    ];
    let o = optimize_with(
        &t,
        &data,
        OptimizeOptions {
            k: 2,
            threshold: 0.3,
        },
    )
    .unwrap();
    assert_eq!(o.metadata()["demo_indices"], json!([0, 2]));
    assert_eq!(o.metadata()["k"], json!(2));
    assert_eq!(
        o.render(&json!({ "question": "Q" })).unwrap(),
        "Examples:\n\n\
         Input:\ncontext: [\"math\"]\nquestion: 2+2\nOutput: {\"answer\":4}\n\n\
         Input:\nquestion: c\nOutput: C\n\n\
         Question: Q\nAnswer:"
    );
    assert_eq!(OptimizeOptions::default().k, 4);
    assert!((OptimizeOptions::default().threshold - 0.7).abs() < f64::EPSILON);
}

#[test]
fn optimize_is_deterministic() {
    let t = qa_template();
    let data: Vec<Example> = (0..10)
        .map(|i| example(&format!("q{i}"), &format!("a{i}"), f64::from(i % 4) / 3.0))
        .collect();
    let one = optimize(&t, &data).unwrap();
    let two = optimize(&t, &data).unwrap();
    assert_ne!(one.id(), two.id());
    assert_eq!(one.source(), two.source());
    assert_eq!(one.metadata(), two.metadata());
    let vars = json!({ "question": "Q" });
    assert_eq!(one.render(&vars).unwrap(), two.render(&vars).unwrap());
    // Only scores 1.0 (i = 3, 7) reach 0.7; 2/3 does not.
    assert_eq!(one.metadata()["demo_indices"], json!([3, 7]));
}

#[test]
fn optimize_keeps_user_text_literal() {
    let t = qa_template();
    let data = vec![
        Example::new("{{ secret }} and {% include 'x' %}", 0.9)
            .with_input("question", "What does {{ question }} print? {# hidden #}"),
    ];
    let o = optimize(&t, &data).unwrap();
    assert!(!o.source().contains("secret"));
    assert_eq!(
        o.render(&json!({ "question": "Q" })).unwrap(),
        "Examples:\n\n\
         Input:\nquestion: What does {{ question }} print? {# hidden #}\n\
         Output: {{ secret }} and {% include 'x' %}\n\n\
         Question: Q\nAnswer:"
    );
}

#[test]
fn optimize_with_no_passing_example() {
    let t = qa_template();
    let o = optimize(&t, &[example("q", "a", 0.1)]).unwrap();
    assert_eq!(o.version(), 2);
    assert_ne!(o.id(), t.id());
    assert_eq!(o.metadata()["demo_count"], json!(0));
    assert_eq!(o.metadata()["demo_indices"], json!([]));
    assert!(o.metadata()["demo_note"].as_str().unwrap().contains("0.7"));
    assert_eq!(
        o.render(&json!({ "question": "Q" })).unwrap(),
        "Question: Q\nAnswer:"
    );
    let empty = optimize(&t, &[]).unwrap();
    assert_eq!(empty.metadata()["demo_count"], json!(0));
    let k0 = optimize_with(
        &t,
        &[example("q", "a", 1.0)],
        OptimizeOptions {
            k: 0,
            ..OptimizeOptions::default()
        },
    )
    .unwrap();
    assert_eq!(k0.metadata()["demo_count"], json!(0));
}

#[test]
fn reoptimizing_replaces_the_demos() {
    let t = qa_template();
    let v2 = optimize(&t, &[example("first", "1", 0.9)]).unwrap();
    let v3 = optimize(&v2, &[example("second", "2", 0.8)]).unwrap();
    assert_eq!(v3.version(), 3);
    assert_eq!(
        v3.metadata()["optimized_from"],
        json!({ "id": v2.id().to_string(), "version": 2 })
    );
    assert_eq!(
        v3.render(&json!({ "question": "Q" })).unwrap(),
        "Examples:\n\nInput:\nquestion: second\nOutput: 2\n\nQuestion: Q\nAnswer:"
    );
}

#[test]
fn optimize_an_extended_template_and_compose_optimized_ones() {
    let base = PromptTemplate::create("base", BASE).unwrap();
    let child =
        PromptTemplate::extend("c", "{% block footer %}Done.{% endblock %}", &base).unwrap();
    let o = optimize(&child, &[example("q", "a", 1.0)]).unwrap();
    assert_eq!(names(&o), ["question", "role"]);
    assert_eq!(
        o.render(&json!({ "question": "Q" })).unwrap(),
        "Examples:\n\nInput:\nquestion: q\nOutput: a\n\nYou are a helpful assistant.\nAnswer: Q\nDone."
    );
    let other = optimize(&qa_template(), &[example("x", "y", 1.0)]).unwrap();
    let both = compose(&o, &other).unwrap();
    let out = both.render(&json!({ "question": "Q" })).unwrap();
    assert!(out.contains("question: q\nOutput: a"), "{out}");
    assert!(out.contains("question: x\nOutput: y"), "{out}");
}

// ------------------------------------------------------------- persistence

#[test]
fn templates_round_trip_through_serde() {
    let base = PromptTemplate::create("base", BASE).unwrap();
    let child =
        PromptTemplate::extend("c", "{% block footer %}Bye {{ who }}.{% endblock %}", &base)
            .unwrap()
            .with_metadata("purpose", "test");
    let composed = compose(&child, &PromptTemplate::create("tail", "T{{ t }}").unwrap()).unwrap();
    let optimized = optimize(&composed, &[example("{{ q }}", "a", 1.0)]).unwrap();
    let text = serde_json::to_string(&optimized).unwrap();
    let back: PromptTemplate = serde_json::from_str(&text).unwrap();
    assert_eq!(back.id(), optimized.id());
    assert_eq!(back.name(), optimized.name());
    assert_eq!(back.version(), 2);
    assert_eq!(back.source(), optimized.source());
    assert_eq!(back.metadata(), optimized.metadata());
    assert_eq!(back.variables(), optimized.variables());
    let vars = json!({ "question": "Q", "who": "W", "t": 1 });
    assert_eq!(
        back.render(&vars).unwrap(),
        optimized.render(&vars).unwrap()
    );

    let value = serde_json::to_value(&child).unwrap();
    assert_eq!(value["name"], json!("c"));
    assert_eq!(value["version"], json!(1));
    assert_eq!(value["metadata"]["purpose"], json!("test"));
    assert_eq!(value["parent"]["name"], json!("base"));
    let back: PromptTemplate = serde_json::from_value(value).unwrap();
    assert_eq!(back.parent().unwrap().id(), base.id());

    let mut set = TemplateSet::new();
    set.add("a", "{% include \"b\" %}!").unwrap();
    set.add("b", "B{{ x }}").unwrap();
    let a = set.get("a").unwrap();
    let back: PromptTemplate = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
    assert_eq!(back.render(&json!({ "x": 1 })).unwrap(), "B1!");
}

#[test]
fn deserializing_a_broken_definition_fails() {
    let bad_source = json!({
        "id": uuid::Uuid::new_v4().to_string(), "name": "x", "version": 1, "source": "{{ a b }}"
    });
    assert!(serde_json::from_value::<PromptTemplate>(bad_source).is_err());
    let bad_id = json!({ "id": "nope", "name": "x", "version": 1, "source": "hi" });
    assert!(serde_json::from_value::<PromptTemplate>(bad_id).is_err());
}
