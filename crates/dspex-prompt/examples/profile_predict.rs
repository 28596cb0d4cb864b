//! Runs `Predict` with the scripted LM in a loop, for profilers:
//! `N=2000 valgrind --tool=callgrind target/release/examples/profile_predict`.
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]
use dspex_client::{Client, ClientConfig, ScriptedLm};
use dspex_prompt::{Lm, Module, Predict, Signature};
use serde_json::json;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = Client::from_config(&ClientConfig::default()).await.unwrap();
        client
            .add_scripted(
                "dummy",
                ScriptedLm::replies(["[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]"]),
            )
            .await
            .unwrap();
        let p = Predict::new(
            Signature::parse("question -> answer").unwrap(),
            Lm::new(&client, "dummy"),
        );
        let inputs = json!({"question": "What is the capital of France?"})
            .as_object()
            .unwrap()
            .clone();
        let n: usize = std::env::var("N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        for _ in 0..n {
            p.forward(&inputs).await.unwrap();
        }
        let t = std::time::Instant::now();
        for _ in 0..n {
            p.forward(&inputs).await.unwrap();
        }
        println!("{:?}/call", t.elapsed() / n as u32);
    });
}
