//! Virtual keys over real HTTP: authentication, model lists, per-key rate
//! limits and budgets, cache namespaces, the admin API, and the key as an
//! analytics dimension. Keys live in a real SQLite file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::{ADMIN_KEY, Options, header, serve};
use dspex_analytics::{GroupBy, TimeRange};
use serde_json::{Value, json};

#[tokio::test]
async fn requests_need_a_live_key() {
    let gw = serve(Options::default()).await;
    let body = json!({"model": "fast", "messages": [{"role": "user", "content": "hi"}]});
    let none = gw.post("/v1/chat/completions", None, &body).await;
    assert_eq!(none.status(), 401);
    let error: Value = none.json().await.unwrap();
    assert_eq!(error["error"]["code"], "missing_api_key");
    let unknown = gw.chat("sk-dspex-0000", "fast", "hi").await;
    assert_eq!(unknown.status(), 401);
    let key = gw.create_key(json!({"name": "team-a"})).await;
    let ok = gw.chat(&key, "fast", "hi").await;
    assert_eq!(ok.status(), 200);
    // Anthropic's SDK sends x-api-key.
    let messages = gw
        .http
        .post(format!("{}/v1/messages", gw.base))
        .header("x-api-key", &key)
        .json(
            &json!({"model": "claude/claude-3-5-haiku-latest", "max_tokens": 32,
                      "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(messages.status(), 200);
    // Nothing refused reached the upstream.
    assert_eq!(gw.upstream.stats().requests, 2);
}

#[tokio::test]
async fn a_key_uses_only_its_models_refused_before_any_upstream_call() {
    let gw = serve(Options::default()).await;
    let key = gw
        .create_key(json!({"name": "team-a", "models": "fast,claude/*"}))
        .await;
    assert_eq!(gw.chat(&key, "fast", "hi").await.status(), 200);
    assert_eq!(
        gw.chat(&key, "claude/claude-3-5-haiku-latest", "hi")
            .await
            .status(),
        200
    );
    let refused = gw.chat(&key, "oa/gpt-4o", "hi").await;
    assert_eq!(refused.status(), 403);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "model_not_allowed");
    assert_eq!(error["error"]["param"], "model");
    assert_eq!(gw.upstream.stats().requests, 2);
    // The model list shows what the key may use.
    let models: Value = gw
        .http
        .get(format!("{}/v1/models", gw.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["fast", "claude/claude-3-5-haiku-latest"]);
}

#[tokio::test]
async fn a_keys_request_limit_answers_429_with_retry_after() {
    let gw = serve(Options::default()).await;
    let key = gw.create_key(json!({"name": "team-a", "rpm": 2})).await;
    let other = gw.create_key(json!({"name": "team-b"})).await;
    assert_eq!(gw.chat(&key, "fast", "one").await.status(), 200);
    assert_eq!(gw.chat(&key, "fast", "two").await.status(), 200);
    let third = gw.chat(&key, "fast", "three").await;
    assert_eq!(third.status(), 429);
    let retry_after: u64 = header(&third, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let error: Value = third.json().await.unwrap();
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("team-a")
    );
    // Another key is not limited by it.
    assert_eq!(gw.chat(&other, "fast", "four").await.status(), 200);
    assert_eq!(gw.upstream.stats().requests, 3);
    // A request bigger than a whole token limit can never fit: 400.
    let tiny = gw.create_key(json!({"name": "tiny", "tpm": 5})).await;
    let too_big = gw.chat(&tiny, "fast", "a long request").await;
    assert_eq!(too_big.status(), 400);
}

#[tokio::test]
async fn a_budget_refuses_the_call_that_could_pass_it_and_is_never_overspent() {
    let gw = serve(Options {
        record: true,
        ..Options::default()
    })
    .await;
    // gpt-4o-mini: $0.15 / $0.60 per million tokens, 150 / 600 nano-USD a
    // token. A call reserves its prompt plus 16 output tokens (about 11,000
    // nano-USD) and spends about 4,500 (the mock echoes a few tokens): the
    // 30,000 budget refuses a call after five or six.
    let key = gw
        .create_key(json!({"name": "team-a", "budget_usd": 0.00003, "period": "day"}))
        .await;
    let mut admitted = 0;
    let mut refused = None;
    for i in 0..50 {
        let response = gw
            .post(
                "/v1/chat/completions",
                Some(&key),
                &json!({"model": "fast", "max_tokens": 16,
                        "messages": [{"role": "user", "content": format!("question {i}")}]}),
            )
            .await;
        match response.status().as_u16() {
            200 => admitted += 1,
            429 => {
                assert!(header(&response, "retry-after").parse::<u64>().unwrap() >= 1);
                refused = Some(response.json::<Value>().await.unwrap());
                break;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    let refused = refused.expect("the budget refused a call");
    assert_eq!(refused["error"]["code"], "budget_exceeded");
    assert!(admitted >= 1, "{admitted}");
    assert_eq!(gw.upstream.stats().requests, admitted);
    let mut gw = gw;
    let store = gw.stop().await;
    // What was recorded for the key stays within its budget.
    let rows = store
        .get_cost_analysis(
            TimeRange::parse("1h").unwrap(),
            &[GroupBy::parse("key").unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].group, [Some("team-a".to_owned())]);
    assert_eq!(rows[0].requests, admitted);
    assert!(
        rows[0].cost_nanos > 0 && rows[0].cost_nanos <= 30_000,
        "{rows:?}"
    );
}

#[tokio::test]
async fn revoking_and_rotating_through_the_admin_api_take_effect_at_once() {
    let gw = serve(Options::default()).await;
    let key = gw.create_key(json!({"name": "team-a"})).await;
    assert_eq!(gw.chat(&key, "fast", "hi").await.status(), 200);
    let rotated = gw
        .post("/admin/keys/team-a/rotate", Some(ADMIN_KEY), &json!({}))
        .await;
    assert_eq!(rotated.status(), 200);
    let new_key = rotated.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_key, key);
    assert_eq!(gw.chat(&key, "fast", "hi").await.status(), 401);
    assert_eq!(gw.chat(&new_key, "fast", "hi").await.status(), 200);
    let revoked = gw
        .http
        .delete(format!("{}/admin/keys/team-a", gw.base))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let refused = gw.chat(&new_key, "fast", "hi").await;
    assert_eq!(refused.status(), 401);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "key_revoked");
    // A key revoked in the store by another process is refused after the
    // next refresh.
    let other = gw.create_key(json!({"name": "team-b"})).await;
    gw.store.revoke_key("team-b").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    assert_eq!(gw.chat(&other, "fast", "hi").await.status(), 401);
}

#[tokio::test]
async fn the_admin_api_needs_the_admin_key_and_names_bad_fields() {
    let gw = serve(Options::default()).await;
    let list = |key: Option<&'static str>| {
        let mut request = gw.http.get(format!("{}/admin/keys", gw.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    assert_eq!(list(None).await.unwrap().status(), 401);
    assert_eq!(list(Some("not-the-admin")).await.unwrap().status(), 401);
    let created = gw
        .post(
            "/admin/keys",
            Some(ADMIN_KEY),
            &json!({"name": "team-a", "budget_usd": 50, "period": "month", "rpm": 600,
                    "tpm": 200000, "models": ["openai/*", "fast"], "expires": "30d"}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let text = created["key"].as_str().unwrap();
    assert!(text.starts_with("sk-dspex-"));
    assert_eq!(created["state"], "active");
    assert_eq!(created["rpm"], 600);
    let listed = list(Some(ADMIN_KEY)).await.unwrap().text().await.unwrap();
    assert!(
        listed.contains("team-a") && !listed.contains(text),
        "{listed}"
    );
    for (body, status, param) in [
        (json!({"name": "bad", "rpm": 0}), 400, "rpm"),
        (json!({"name": "bad", "budget_usd": -1}), 400, "budget_usd"),
        (json!({"name": "bad", "expires": "soon"}), 400, "expires"),
        (json!({"name": "bad", "colour": "red"}), 400, "colour"),
        (json!({"name": "team-a"}), 409, "name"),
        (json!({"rpm": 1}), 400, "name"),
    ] {
        let response = gw.post("/admin/keys", Some(ADMIN_KEY), &body).await;
        assert_eq!(response.status(), status, "{body}");
        let error: Value = response.json().await.unwrap();
        assert!(
            error["error"]["param"]
                .as_str()
                .unwrap_or_default()
                .contains(param)
                || error["error"]["message"].as_str().unwrap().contains(param),
            "{body}: {error}"
        );
    }
    let missing = gw
        .post("/admin/keys/nobody/revoke", Some(ADMIN_KEY), &json!({}))
        .await;
    assert_eq!(missing.status(), 404);
}

/// The same question at temperature 0: a call the cache may answer.
async fn ask_cacheable(gw: &common::Served, key: &str) -> reqwest::Response {
    gw.post(
        "/v1/chat/completions",
        Some(key),
        &json!({"model": "fast", "temperature": 0,
                "messages": [{"role": "user", "content": "the same question"}]}),
    )
    .await
}

#[tokio::test]
async fn tenants_never_share_cache_entries_unless_configured() {
    for (namespace, b_hits) in [("key", false), ("shared", true)] {
        let gw = serve(Options {
            cache: true,
            gateway_toml: format!("cache_namespace = \"{namespace}\""),
            ..Options::default()
        })
        .await;
        let a = gw.create_key(json!({"name": "team-a"})).await;
        let b = gw.create_key(json!({"name": "team-b"})).await;
        let first = ask_cacheable(&gw, &a).await;
        assert_eq!(header(&first, "x-dspex-cache"), "miss");
        let again = ask_cacheable(&gw, &a).await;
        assert_eq!(header(&again, "x-dspex-cache"), "l1");
        let other = ask_cacheable(&gw, &b).await;
        assert_eq!(
            header(&other, "x-dspex-cache") == "l1",
            b_hits,
            "namespace {namespace}"
        );
    }
}

#[tokio::test]
async fn calls_are_recorded_with_the_keys_name() {
    let gw = serve(Options {
        record: true,
        ..Options::default()
    })
    .await;
    let a = gw.create_key(json!({"name": "team-a"})).await;
    let b = gw.create_key(json!({"name": "team-b"})).await;
    for _ in 0..3 {
        assert_eq!(gw.chat(&a, "fast", "hi").await.status(), 200);
    }
    assert_eq!(gw.chat(&b, "fast", "hi").await.status(), 200);
    let mut gw = gw;
    let store = gw.stop().await;
    let rows = store
        .get_cost_analysis(
            TimeRange::parse("1h").unwrap(),
            &[GroupBy::parse("key").unwrap()],
        )
        .await
        .unwrap();
    let counts: Vec<(Option<String>, u64)> = rows
        .iter()
        .map(|r| (r.group[0].clone(), r.requests))
        .collect();
    assert_eq!(
        counts,
        [(Some("team-a".into()), 3), (Some("team-b".into()), 1)]
    );
}

#[tokio::test]
async fn the_dashboard_needs_the_admin_key_and_shows_the_recorded_numbers() {
    let gw = serve(Options {
        record: true,
        ..Options::default()
    })
    .await;
    let key = gw.create_key(json!({"name": "team-a"})).await;
    for _ in 0..3 {
        assert_eq!(gw.chat(&key, "fast", "hi").await.status(), 200);
    }
    gw.recorder.as_ref().unwrap().flush().await.unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // Without a session: to the login page.
    let anonymous = http
        .get(format!("{}/dashboard", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 303);
    assert_eq!(header(&anonymous, "location"), "/dashboard/login");
    let wrong = http
        .post(format!("{}/dashboard/login", gw.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("admin_key=guess")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let login = http
        .post(format!("{}/dashboard/login", gw.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("admin_key={ADMIN_KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let cookie = header(&login, "set-cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("dspex_dashboard=") && !cookie.contains(ADMIN_KEY));
    let page = http
        .get(format!("{}/dashboard?range=1h", gw.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains(r#"data-metric="requests" data-value="3""#),
        "{html}"
    );
    assert!(html.contains(r#"data-group="team-a""#));
    assert!(!html.contains(&key) && !html.contains(ADMIN_KEY));
    // A forged or stale cookie is not a session.
    let forged = http
        .get(format!("{}/dashboard", gw.base))
        .header("cookie", "dspex_dashboard=99999999999999.00")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 303);
}
