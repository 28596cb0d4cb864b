#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::sync::Arc;

use dspex_client::events::CallInfo;
use dspex_client::{
    CallGuard, Client, ClientConfig, ClientErrorKind, EventKind, Message, RequestOptions,
    ScriptedLm, Usage,
};
use dspex_core::CorrelationId;
use dspex_core::events::Delivery;
use parking_lot::Mutex;

/// Refuses calls whose estimate exceeds a token allowance; records settlements.
#[derive(Default)]
struct Allowance {
    limit: u64,
    settled: Mutex<Vec<(String, u64)>>,
}

impl CallGuard for Allowance {
    fn name(&self) -> &'static str {
        "budget"
    }

    fn admit(&self, _call: &CallInfo, _id: &CorrelationId, estimate: &Usage) -> Result<(), String> {
        if estimate.total_tokens() > self.limit {
            return Err(format!(
                "estimate {} tokens > allowance {}",
                estimate.total_tokens(),
                self.limit
            ));
        }
        Ok(())
    }

    fn settle(&self, _call: &CallInfo, id: &CorrelationId, usage: &Usage) {
        self.settled
            .lock()
            .push((id.to_string(), usage.total_tokens()));
    }
}

#[tokio::test]
async fn a_guard_refuses_before_sending_and_settles_every_admitted_call() {
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    let lm = ScriptedLm::replies(["fine"]);
    client.add_scripted("lm", lm.clone()).await.unwrap();
    let guard = Arc::new(Allowance {
        limit: 200,
        ..Allowance::default()
    });
    client.set_guard(guard.clone()).unwrap();
    let mut events = client.events().subscribe("t", Delivery::Lossless);

    let ok = client
        .request(
            "lm",
            vec![Message::user("hi")],
            RequestOptions::new()
                .max_tokens(50)
                .correlation_id("small".into()),
        )
        .await
        .unwrap();
    let refused = client
        .request(
            "lm",
            vec![Message::user("hi")],
            RequestOptions::new()
                .max_tokens(5_000)
                .correlation_id("big".into()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(refused.kind(), ClientErrorKind::Refused { guard: "budget" }),
        "{refused}"
    );
    assert_eq!(refused.kind().as_str(), "refused");
    assert!(!refused.is_retryable());
    assert!(refused.to_string().contains("allowance 200"), "{refused}");
    let crumbs = &refused.context().unwrap().breadcrumbs;
    assert_eq!(&*crumbs.last().unwrap().category, "budget");
    // The refused call never reached the LM, but it was recorded.
    assert_eq!(lm.calls(), 1);
    let settled = guard.settled.lock().clone();
    assert_eq!(settled, vec![("small".to_owned(), ok.usage.total_tokens())]);
    let mut outcomes = Vec::new();
    while let Some(event) = events.try_recv() {
        if let EventKind::RequestCompleted(c) = &event.kind {
            outcomes.push(c.outcome.as_str());
        }
    }
    assert_eq!(outcomes, ["success", "failed"]);
    // One guard per client.
    assert!(client.set_guard(guard).is_err());
}
