//! The scripted in-process LM goes through the same client path as a real
//! provider: events, usage, streaming, errors.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use dspex_client::events::Outcome;
use dspex_client::{
    ChatParams, Client, ClientConfig, ClientErrorKind, EventKind, Message, RequestOptions,
    ScriptedLm, StreamEvent,
};
use dspex_core::events::Delivery;
use futures::StreamExt;

async fn client(lm: ScriptedLm) -> Client {
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    client.add_scripted("dummy", lm).await.unwrap();
    client
}

#[tokio::test]
async fn replies_cycle_in_order_and_usage_is_counted() {
    let lm = ScriptedLm::replies(["one", "two"]);
    let client = client(lm.clone()).await;
    let mut events = client.events().subscribe("test", Delivery::Lossless);
    let mut texts = Vec::new();
    for _ in 0..3 {
        let r = client
            .request("dummy", vec![Message::user("next")], RequestOptions::new())
            .await
            .unwrap();
        assert!(r.usage.input_tokens > 0 && r.usage.output_tokens > 0);
        texts.push(r.text().to_owned());
    }
    assert_eq!(texts, ["one", "two", "one"]);
    assert_eq!(lm.calls(), 3);
    assert!(lm.usage().total_tokens() > 0);
    let mut completed = 0;
    while let Some(e) = events.try_recv() {
        if let EventKind::RequestCompleted(c) = &e.kind {
            assert_eq!(c.outcome, Outcome::Success);
            assert_eq!(c.call.system, "scripted");
            completed += 1;
        }
    }
    assert_eq!(completed, 3);
}

#[tokio::test]
async fn maps_match_the_last_user_message_then_substrings() {
    let lm = ScriptedLm::map([("What is 2+2?", "4"), ("capital", "Paris")]);
    let client = client(lm).await;
    let ask = |q: &str| {
        client.request(
            "dummy",
            vec![Message::system("be brief"), Message::user(q)],
            RequestOptions::new(),
        )
    };
    assert_eq!(ask("What is 2+2?").await.unwrap().text(), "4");
    assert_eq!(ask("The capital of France?").await.unwrap().text(), "Paris");
    let error = ask("Unknown question").await.unwrap_err();
    assert!(
        matches!(error.kind(), ClientErrorKind::InvalidRequest)
            && error.message().contains("Unknown question"),
        "{error}"
    );
}

#[tokio::test]
async fn functions_see_the_request_and_streams_work() {
    let lm = ScriptedLm::from_fn(|request| {
        Ok(format!(
            "{} messages, n={:?}",
            request.messages.len(),
            request.params.n
        ))
    });
    let client = client(lm).await;
    let two = client
        .request(
            "dummy",
            vec![Message::user("x")],
            RequestOptions::new().params(ChatParams {
                n: Some(2),
                ..ChatParams::default()
            }),
        )
        .await
        .unwrap();
    assert_eq!(two.choices.len(), 2);
    assert_eq!(two.text(), "1 messages, n=Some(2)");
    let mut stream = client
        .request_stream("dummy", vec![Message::user("x")], RequestOptions::new())
        .await
        .unwrap();
    let mut text = String::new();
    let mut done = None;
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            StreamEvent::Delta(d) => text.push_str(&d.content),
            StreamEvent::Done(r) => done = Some(r),
        }
    }
    assert_eq!(text, "1 messages, n=None");
    assert!(done.unwrap().usage.output_tokens > 0);
}

#[cfg(not(feature = "local-lm"))]
#[tokio::test]
async fn a_local_provider_without_the_feature_says_how_to_build_it() {
    let config = dspex_client::ProviderConfig::validate(
        "smol",
        &dspex_client::config::RawProvider {
            kind: Some("local".into()),
            model_path: Some("m.gguf".into()),
            ..Default::default()
        },
        None,
        &|_| None,
    )
    .unwrap();
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    let error = client.add_provider(config).await.unwrap_err();
    assert!(
        matches!(error.kind(), ClientErrorKind::Config(_)),
        "{error:?}"
    );
    assert!(error.to_string().contains("local-lm"), "{error}");
}
