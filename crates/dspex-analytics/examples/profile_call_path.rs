//! Scripted calls through the client, with the recorder attached (`RECORDER=1`)
//! or not, in chunks of 500 with the recorder flushed between chunks: for
//! comparing what the calling thread does, e.g. with
//! `valgrind --tool=callgrind --separate-threads=yes`.
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]
use std::sync::Arc;

use dspex_analytics::{PriceTable, Recorder, RecorderOptions, Store};
use dspex_client::{Client, ClientConfig, Message, RequestOptions, ScriptedLm};

fn main() {
    let n: u64 = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let with_recorder = std::env::var("RECORDER").is_ok_and(|v| v == "1");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    runtime.block_on(async {
        let client = Client::from_config(&ClientConfig::default()).await.unwrap();
        client
            .add_scripted("openai", ScriptedLm::replies(["The answer is 42."]))
            .await
            .unwrap();
        let recorder = if with_recorder {
            let store = Store::open(dir.path().join("calls.sqlite").to_str().unwrap(), None)
                .await
                .unwrap();
            Some(Recorder::attach(
                client.events(),
                store,
                Arc::new(PriceTable::bundled().unwrap()),
                RecorderOptions::default(),
            ))
        } else {
            None
        };
        for i in 0..n {
            client
                .request(
                    "openai",
                    vec![Message::user("What is the answer?")],
                    RequestOptions::new()
                        .model("gpt-4o-mini")
                        .tag("workflow", "qa"),
                )
                .await
                .unwrap();
            if i % 500 == 499
                && let Some(recorder) = &recorder
            {
                recorder.flush().await.unwrap();
            }
        }
        if let Some(recorder) = recorder {
            let stats = recorder.shutdown().await.unwrap();
            println!("{stats:?}");
        }
    });
}
