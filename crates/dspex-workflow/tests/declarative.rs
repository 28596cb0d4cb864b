#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::Path;

use dspex_client::config::RawProvider;
use dspex_client::{Client, ClientConfig, ProviderConfig, ScriptedLm};
use dspex_mock::{MockConfig, MockServer};
use dspex_prompt::Module;
use dspex_workflow::declarative::{load_file, parse};
use dspex_workflow::{Context, FileProblem, RunOptions, WorkflowError};
use serde_json::json;

async fn scripted_client() -> Client {
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    client
        .add_scripted("lm", ScriptedLm::from_fn(|_| Ok("[[ ## reasoning ## ]]\nr\n\n[[ ## sub_question ## ]]\nsq\n\n[[ ## answer ## ]]\nA\n\n[[ ## summary ## ]]\nS\n\n[[ ## completed ## ]]".to_owned())))
        .await
        .unwrap();
    client
}

fn problems(error: WorkflowError) -> Vec<FileProblem> {
    let WorkflowError::File { problems, .. } = error else {
        unreachable!("expected a file error, got {error}")
    };
    problems
}

#[tokio::test]
async fn the_shipped_example_runs_end_to_end_against_the_mock() {
    let upstream = MockServer::start(MockConfig::default()).await.unwrap();
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    let raw = RawProvider {
        kind: Some("openai".into()),
        base_url: Some(upstream.base_url()),
        ..RawProvider::default()
    };
    client
        .add_provider(ProviderConfig::validate("mock", &raw, None, &|_| None).unwrap())
        .await
        .unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/multi_hop_qa.toml");
    let workflow = load_file(&path, &client, Some("mock")).unwrap();
    let mut initial = Context::new();
    initial.insert("question".into(), json!("Who painted the chapel ceiling?"));
    let run = workflow.run(initial, RunOptions::default()).await.unwrap();
    // The mock answers each field "mock <field> for: <first input>": the
    // sub-question flowed into the second step, its answer into the third.
    assert!(
        run.context["sub_question"]
            .as_str()
            .unwrap()
            .starts_with("mock sub_question for: Who painted")
    );
    assert!(
        run.context["sub_answer"]
            .as_str()
            .unwrap()
            .starts_with("mock answer for: mock sub_question")
    );
    assert!(
        run.context["answer"]
            .as_str()
            .unwrap()
            .starts_with("mock answer for:")
    );
    assert_eq!(run.report.lm_calls, 3);
    assert_eq!(upstream.stats().requests, 3);
    // As a module it returns the declared outputs only, and has 3 predictors.
    let mut inputs = dspex_prompt::Inputs::new();
    inputs.insert("question".into(), json!("Why?"));
    let prediction = workflow.forward(&inputs).await.unwrap();
    let keys: Vec<&str> = prediction.outputs.keys().map(String::as_str).collect();
    assert_eq!(keys, ["answer", "sub_answer", "sub_question"]);
    assert_eq!(prediction.trace.len(), 3);
    let names: Vec<String> = workflow.predictors().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["decompose", "answer_sub", "answer"]);
}

#[tokio::test]
async fn every_problem_is_reported_at_its_key_or_value() {
    let client = scripted_client().await;
    let text = r#"name = "bad"
inputs = ["question"]
outputs = ["nowhere"]

[[steps]]
name = "one"
module = "predict"
signature = "question -> answer"
provider = "nope"

[[steps]]
name = "two"
module = "predikt"
signature = "question ->"
provider = "lm"

[[steps]]
name = "three"
module = "predict"
signature = "context, question -> summary"
provider = "lm"
inputs = { ctx = "answer" }
outputs = { missing = "x" }
timeout = "soon"
retry = { attempts = 0 }

[[steps]]
name = "three"
module = "predict"
signature = "summary -> answer"
provider = "lm"
"#;
    let found = problems(parse(text, "bad.toml", Path::new("."), &client, None).unwrap_err());
    let find = |needle: &str| {
        found
            .iter()
            .find(|p| p.message.contains(needle) || p.location.contains(needle))
            .unwrap_or_else(|| panic!("no problem mentions {needle:?}: {found:#?}"))
    };
    // Each at the offending value itself, not at its step's `[[steps]]`
    // or `name` line.
    let provider = find("unknown provider `nope`");
    assert_eq!((provider.line, provider.column), (Some(9), Some(12)));
    assert!(provider.location.starts_with("steps[0] (one).provider"));
    assert!(provider.message.contains("configured: lm"));
    let module = find("unknown module `predikt`");
    assert_eq!((module.line, module.column), (Some(13), Some(10)));
    let signature = find("steps[1] (two).signature");
    assert_eq!((signature.line, signature.column), (Some(14), Some(13)));
    // A signature field with no `inputs` mapping: the signature names it.
    let context = find("inputs.context");
    assert!(context.message.contains("reads `context`"), "{context:?}");
    assert_eq!((context.line, context.column), (Some(20), Some(13)));
    let ctx = find("no input field `ctx`");
    assert_eq!((ctx.line, ctx.column), (Some(22), Some(18)));
    assert_eq!(find("steps[2] (three).timeout").line, Some(24));
    assert_eq!(find("retry.attempts").column, Some(22));
    assert!(
        find("no input field `ctx`")
            .location
            .ends_with("inputs.ctx")
    );
    assert!(
        find("no output field `missing`")
            .location
            .ends_with("outputs.missing")
    );
    assert!(find("steps[2] (three).timeout").message.contains("soon"));
    assert!(find("retry.attempts").message.contains("at least 1"));
    assert_eq!(find("already named `three`").line, Some(28));
    let outputs = find("`nowhere` is neither");
    assert!(outputs.location == "workflow.outputs");
    assert_eq!((outputs.line, outputs.column), (Some(3), Some(11)));
    let rendered = WorkflowError::File {
        path: "bad.toml".into(),
        problems: found.clone(),
    }
    .to_string();
    assert!(
        rendered.starts_with(&format!("bad.toml: {} problem(s)", found.len())),
        "{rendered}"
    );
    assert!(
        rendered.contains(
            "\nsteps[0] (one).provider: unknown provider `nope`; configured: lm\n  --> bad.toml:9:12\n   |\n 9 | provider = \"nope\"\n   |            ^^^^^^\n"
        ),
        "{rendered}"
    );
}

#[tokio::test]
async fn a_provider_from_defaults_is_pointed_at_there() {
    let client = scripted_client().await;
    let text = "name = \"d\"\ninputs = [\"q\"]\n[defaults]\nprovider = \"gone\"\n[[steps]]\nname = \"a\"\nmodule = \"predict\"\nsignature = \"q -> a\"\n";
    let found = problems(parse(text, "d.toml", Path::new("."), &client, None).unwrap_err());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].line, found[0].column), (Some(4), Some(12)));
    assert_eq!(found[0].location, "steps[0] (a).provider");
}

#[tokio::test]
async fn syntax_errors_and_unknown_keys_name_their_line() {
    let client = scripted_client().await;
    let broken = "name = \"x\"\n[[steps]]\nname = \"a\"\nmodule = predict\n";
    let found = problems(parse(broken, "x.toml", Path::new("."), &client, None).unwrap_err());
    assert_eq!(found[0].line, Some(4), "{found:?}");
    let unknown = "name = \"x\"\ninputs = [\"q\"]\n[[steps]]\nname = \"a\"\nmodule = \"predict\"\nsignature = \"q -> a\"\nprovider = \"lm\"\nretries = 3\n";
    let found = problems(parse(unknown, "x.toml", Path::new("."), &client, None).unwrap_err());
    assert!(
        found[0].message.contains("unknown key `retries`"),
        "{found:?}"
    );
    assert_eq!((found[0].line, found[0].column), (Some(8), Some(1)));
    assert_eq!(found[0].location, "steps.0.retries");
    // Every unknown key at once, each at its own line, nested ones too,
    // along with the other problems of the file.
    let several = "name = \"x\"\ninputs = [\"q\"]\ncolour = \"red\"\n[defaults]\ntemprature = 0.5\n[[steps]]\nname = \"a\"\nmodule = \"predict\"\nsignature = \"q -> a\"\nprovider = \"lm\"\nretry = { attempts = 2, backof = \"1s\" }\n[[steps]]\nname = \"b\"\nmodle = \"predict\"\nsignature = \"q -> b\"\nprovider = \"nowhere\"\n";
    let found = problems(parse(several, "x.toml", Path::new("."), &client, None).unwrap_err());
    let unknown: Vec<(Option<usize>, &str)> = found
        .iter()
        .filter(|p| p.message.starts_with("unknown key"))
        .map(|p| (p.line, p.location.as_str()))
        .collect();
    assert_eq!(
        unknown,
        [
            (Some(3), "colour"),
            (Some(5), "defaults.temprature"),
            (Some(11), "steps.0.retry.backof"),
            (Some(14), "steps.1.modle"),
        ],
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.message.contains("unknown provider `nowhere`")),
        "{found:?}"
    );
    let missing = load_file(Path::new("/nonexistent/flow.toml"), &client, None).unwrap_err();
    assert!(missing.to_string().contains("cannot read it"), "{missing}");
}

#[tokio::test]
async fn parallel_and_map_steps_from_a_file() {
    let client = scripted_client().await;
    let text = r#"name = "fan"
inputs = ["question", "documents"]

[defaults]
provider = "lm"

[[steps]]
name = "both"
merge = "collect"
parallel = [
  { name = "first", module = "predict", signature = "question -> answer" },
  { name = "second", module = "predict", signature = "question -> answer" },
]

[[steps]]
name = "summaries"
module = "predict"
signature = "doc -> summary"
inputs = { doc = "item" }
map = { over = "documents", output = "summaries", collect = "summary", concurrency = 2 }

[[steps]]
name = "use_them"
module = "predict"
signature = "summaries: list[str], answer: list[str] -> sub_question"
"#;
    let workflow = parse(text, "fan.toml", Path::new("."), &client, None).unwrap();
    let mut initial = Context::new();
    initial.insert("question".into(), json!("q"));
    initial.insert("documents".into(), json!(["d1", "d2", "d3"]));
    let run = workflow.run(initial, RunOptions::default()).await.unwrap();
    assert_eq!(run.context["answer"], json!(["A", "A"]));
    assert_eq!(run.context["summaries"], json!(["S", "S", "S"]));
    assert_eq!(run.context["sub_question"], json!("sq"));
    assert_eq!(run.report.lm_calls, 6);

    // Without a merge rule, two branches writing `answer` is refused at load.
    let conflicting = text.replace("merge = \"collect\"\n", "");
    let found =
        problems(parse(&conflicting, "fan.toml", Path::new("."), &client, None).unwrap_err());
    assert!(
        found
            .iter()
            .any(|p| p.message.contains("both write `answer`")),
        "{found:?}"
    );
    // A map over a key nothing provides is refused too.
    let unmapped = text.replace("over = \"documents\"", "over = \"docs\"");
    let found = problems(parse(&unmapped, "fan.toml", Path::new("."), &client, None).unwrap_err());
    assert!(
        found.iter().any(|p| p.location.ends_with("map.over")),
        "{found:?}"
    );
}
