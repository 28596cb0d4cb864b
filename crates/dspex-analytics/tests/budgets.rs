#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::sync::Arc;

use dspex_analytics::budget::{Budget, BudgetEvent, BudgetPeriod, BudgetScope, Budgets};
use dspex_analytics::{AnalyticsError, PriceTable, Store};
use dspex_core::CorrelationId;
use dspex_core::events::Delivery;

use common::{Spec, at, call, usage};

const DOLLAR: i64 = 1_000_000_000;

fn budgets(list: Vec<Budget>) -> Budgets {
    Budgets::new(list, Arc::new(PriceTable::bundled().unwrap()))
}

#[test]
fn a_call_that_would_pass_a_hard_limit_is_refused_before_it_is_sent() {
    let b = budgets(vec![Budget::new(
        "openai-daily",
        BudgetScope::provider("openai"),
        BudgetPeriod::Day,
        DOLLAR,
    )]);
    let mut events = b.events().subscribe("test", Delivery::Lossless);
    let openai = call("openai", "gpt-4o-mini", &[]);
    let run = CorrelationId::from("run-1");
    let now = at("2026-11-24T10:00:00Z");
    // $0.70 spent.
    b.check_at(&openai, &run, Some(700_000_000), now).unwrap();
    b.settle_at(&openai, &run, Some(700_000_000), now);
    // $0.30 more fits exactly; $0.31 does not.
    let error = b
        .check_at(&openai, &run, Some(310_000_000), now)
        .unwrap_err();
    match &error {
        AnalyticsError::BudgetExceeded {
            budget,
            limit_nanos,
            spent_nanos,
            estimated_nanos,
            period,
        } => {
            assert_eq!(budget, "openai-daily");
            assert_eq!(*limit_nanos, DOLLAR);
            assert_eq!(*spent_nanos, 700_000_000);
            assert_eq!(*estimated_nanos, 310_000_000);
            assert_eq!(period, "day 2026-11-24");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!error.is_retryable());
    let text = error.to_string();
    assert!(
        text.contains("openai-daily") && text.contains("$1.000000") && text.contains("$0.310000"),
        "{text}"
    );
    // Warning at 80% has not fired ($0.70 < $0.80), the refusal is an event.
    let mut kinds = Vec::new();
    while let Some(event) = events.try_recv() {
        kinds.push(event);
    }
    assert_eq!(kinds.len(), 1);
    assert!(
        matches!(&*kinds[0], BudgetEvent::Refused(n) if n.budget == "openai-daily" && n.estimated_nanos == Some(310_000_000))
    );
    b.check_at(&openai, &run, Some(300_000_000), now).unwrap();
    // Another provider is out of scope.
    let anthropic = call("anthropic", "claude-sonnet-4-20250514", &[]);
    let decision = b
        .check_at(&anthropic, &run, Some(50 * DOLLAR), now)
        .unwrap();
    assert!(decision.budgets.is_empty());
}

#[test]
fn reservations_of_calls_in_flight_count_until_settled() {
    let b = budgets(vec![Budget::new(
        "all",
        BudgetScope::all(),
        BudgetPeriod::Day,
        DOLLAR,
    )]);
    let c = call("openai", "gpt-4o-mini", &[]);
    let now = at("2026-11-24T10:00:00Z");
    let (r1, r2) = (CorrelationId::from("a"), CorrelationId::from("b"));
    let decision = b.check_at(&c, &r1, Some(600_000_000), now).unwrap();
    assert_eq!(decision.reserved_nanos, Some(600_000_000));
    assert_eq!(decision.budgets, vec!["all".to_owned()]);
    // The first call is in flight: a second $0.60 estimate does not fit.
    assert!(b.check_at(&c, &r2, Some(600_000_000), now).is_err());
    // It settles at a real cost well under its estimate.
    b.settle_at(&c, &r1, Some(100_000_000), now);
    assert_eq!(b.spent("all", None), Some(100_000_000));
    b.check_at(&c, &r2, Some(600_000_000), now).unwrap();
    assert_eq!(b.remaining_at(&c, &r2, now)["all"], 300_000_000);
}

#[test]
fn crossing_the_warning_threshold_emits_one_event() {
    let b = budgets(vec![
        Budget::new(
            "team",
            BudgetScope::tag("team", "search"),
            BudgetPeriod::Month,
            10 * DOLLAR,
        )
        .warn_at(Some(0.5)),
        Budget::new(
            "soft",
            BudgetScope::model("gpt-4o-mini"),
            BudgetPeriod::Day,
            DOLLAR,
        )
        .hard(false),
    ]);
    let mut events = b.events().subscribe("test", Delivery::Lossless);
    let tagged = call("openai", "gpt-4o-mini", &[("team", "search")]);
    let run = CorrelationId::from("r");
    let now = at("2026-11-24T10:00:00Z");
    for _ in 0..6 {
        b.check_at(&tagged, &run, Some(DOLLAR), now).unwrap();
        b.settle_at(&tagged, &run, Some(DOLLAR), now);
    }
    let events: Vec<_> = std::iter::from_fn(|| events.try_recv()).collect();
    // team: warning at $5 (once); soft: warning at $0.80 ($1), exceeded past $1 ($2).
    let summary: Vec<(String, &str, i64)> = events
        .iter()
        .map(|e| match &**e {
            BudgetEvent::Warning(n) => (n.budget.clone(), "warning", n.spent_nanos),
            BudgetEvent::Exceeded(n) => (n.budget.clone(), "exceeded", n.spent_nanos),
            BudgetEvent::Refused(n) => (n.budget.clone(), "refused", n.spent_nanos),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("soft".to_owned(), "warning", DOLLAR),
            ("soft".to_owned(), "exceeded", 2 * DOLLAR),
            ("team".to_owned(), "warning", 5 * DOLLAR),
        ]
    );
    if let BudgetEvent::Warning(n) = &*events[2] {
        assert_eq!(n.threshold, Some(0.5));
        assert_eq!(n.period_label, "2026-11");
    }
    // The soft budget never refuses.
    b.check_at(&tagged, &run, Some(100 * DOLLAR), now)
        .unwrap_err(); // the team budget does
    let untagged = call("openai", "gpt-4o-mini", &[]);
    b.check_at(&untagged, &run, Some(100 * DOLLAR), now)
        .unwrap();
}

#[test]
fn periods_roll_over_and_runs_are_separate() {
    let b = budgets(vec![
        Budget::new("daily", BudgetScope::all(), BudgetPeriod::Day, DOLLAR),
        Budget::new(
            "per-run",
            BudgetScope::all(),
            BudgetPeriod::Run,
            300_000_000,
        ),
    ]);
    let c = call("openai", "gpt-4o-mini", &[]);
    let (r1, r2) = (CorrelationId::from("run-1"), CorrelationId::from("run-2"));
    let day1 = at("2026-11-24T23:59:00Z");
    b.check_at(&c, &r1, Some(250_000_000), day1).unwrap();
    b.settle_at(&c, &r1, Some(250_000_000), day1);
    // run-1 has $0.05 left; run-2 has its own $0.30.
    let error = b.check_at(&c, &r1, Some(100_000_000), day1).unwrap_err();
    assert!(
        matches!(&error, AnalyticsError::BudgetExceeded { budget, period, .. } if budget == "per-run" && period == "run run-1")
    );
    b.check_at(&c, &r2, Some(250_000_000), day1).unwrap();
    b.settle_at(&c, &r2, Some(250_000_000), day1);
    b.check_at(&c, &CorrelationId::from("run-3"), Some(250_000_000), day1)
        .unwrap();
    b.settle_at(&c, &CorrelationId::from("run-3"), Some(250_000_000), day1);
    // The day is at $0.75; the next call of $0.30 is refused today...
    assert!(
        b.check_at(&c, &CorrelationId::from("run-4"), Some(300_000_000), day1)
            .is_err()
    );
    // ...and allowed a minute later, on a new day.
    let day2 = at("2026-11-25T00:01:00Z");
    b.check_at(&c, &CorrelationId::from("run-4"), Some(300_000_000), day2)
        .unwrap();
    assert_eq!(b.spent("per-run", Some(&r1)), Some(250_000_000));
    b.end_run(&r1);
    assert_eq!(b.spent("per-run", Some(&r1)), Some(0));
}

#[test]
fn unpriced_calls_pass_unless_a_budget_is_already_spent() {
    let b = budgets(vec![Budget::new(
        "all",
        BudgetScope::all(),
        BudgetPeriod::Day,
        DOLLAR,
    )]);
    let local = call("local", "my-finetune", &[]);
    let run = CorrelationId::from("r");
    let now = at("2026-11-24T10:00:00Z");
    assert_eq!(b.estimate("local", "my-finetune", 1000, 100), None);
    let decision = b.check_at(&local, &run, None, now).unwrap();
    assert!(decision.unpriced());
    b.settle_at(&local, &run, None, now);
    let priced = call("openai", "gpt-4o-mini", &[]);
    b.check_at(&priced, &run, Some(DOLLAR), now).unwrap();
    b.settle_at(&priced, &run, Some(DOLLAR + 1), now);
    assert!(b.check_at(&local, &run, None, now).is_err());
}

#[test]
fn estimates_price_input_and_max_output() {
    let b = budgets(Vec::new());
    // gpt-4o-mini: 10,000 × $0.15/M + 1,000 × $0.60/M = $0.0021
    assert_eq!(
        b.estimate("openai", "gpt-4o-mini", 10_000, 1_000),
        Some(2_100_000)
    );
}

#[tokio::test]
async fn budgets_are_primed_from_the_store() {
    let store = Store::open(":memory:", None).await.unwrap();
    let p = PriceTable::bundled().unwrap();
    let mini = Spec::new("openai", "gpt-4o-mini", usage(1_000_000, 0, 0, 0)); // $0.15 each
    store
        .insert(Arc::new(vec![
            mini.record("2026-11-24T01:00:00Z", &p),
            mini.record("2026-11-24T02:00:00Z", &p),
            mini.record("2026-11-23T23:00:00Z", &p), // yesterday: this month only
            mini.record("2026-10-31T23:00:00Z", &p), // last month
        ]))
        .await
        .unwrap();
    let b = budgets(vec![
        Budget::new(
            "daily",
            BudgetScope::provider("openai"),
            BudgetPeriod::Day,
            400_000_000,
        ),
        Budget::new(
            "monthly",
            BudgetScope::provider("openai"),
            BudgetPeriod::Month,
            DOLLAR,
        ),
    ]);
    let now = at("2026-11-24T12:00:00Z");
    b.prime_at(&store, now).await.unwrap();
    assert_eq!(b.spent("daily", None), Some(300_000_000));
    assert_eq!(b.spent("monthly", None), Some(450_000_000));
    let c = call("openai", "gpt-4o-mini", &[]);
    let error = b
        .check_at(&c, &CorrelationId::from("r"), Some(150_000_000), now)
        .unwrap_err();
    assert!(
        matches!(error, AnalyticsError::BudgetExceeded { ref budget, spent_nanos: 300_000_000, .. } if budget == "daily")
    );
}

#[tokio::test]
async fn the_client_refuses_a_call_its_budget_cannot_afford_before_sending_it() {
    use dspex_client::config::RawProvider;
    use dspex_client::{
        Client, ClientConfig, ClientErrorKind, Message, ProviderConfig, RequestOptions,
    };
    use dspex_mock::{MockConfig, MockServer};

    let upstream = MockServer::start(MockConfig::default()).await.unwrap();
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    let raw = RawProvider {
        kind: Some("openai".into()),
        base_url: Some(upstream.base_url()),
        model: Some("gpt-4o-mini".into()),
        ..RawProvider::default()
    };
    client
        .add_provider(ProviderConfig::validate("openai", &raw, None, &|_| None).unwrap())
        .await
        .unwrap();
    // 20 micro-dollars per run; gpt-4o-mini output is 0.60 $/M tokens.
    let guard = Arc::new(budgets(vec![Budget::new(
        "per-run",
        BudgetScope::all(),
        BudgetPeriod::Run,
        200_000,
    )]));
    client.set_guard(guard.clone()).unwrap();
    let run = CorrelationId::from("run-1");
    let options = |max_tokens| {
        RequestOptions::new()
            .max_tokens(max_tokens)
            .correlation_id(run.clone())
    };
    client
        .request("openai", vec![Message::user("hi")], options(100))
        .await
        .unwrap();
    let spent = guard.spent("per-run", Some(&run)).unwrap();
    assert!(
        spent > 0 && spent < 200_000,
        "settled with the real cost: {spent}"
    );
    let refused = client
        .request("openai", vec![Message::user("hi")], options(1_000))
        .await
        .unwrap_err();
    assert!(
        matches!(refused.kind(), ClientErrorKind::Refused { guard: "budget" }),
        "{refused}"
    );
    assert!(refused.to_string().contains("per-run"), "{refused}");
    assert_eq!(
        upstream.stats().requests,
        1,
        "the refused call was never sent"
    );
}
