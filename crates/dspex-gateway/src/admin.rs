//! The admin API (`/admin/keys`) and the dashboard (`/dashboard`), both
//! guarded by the admin key: the value of the environment variable
//! `gateway.admin_key_env` names (`DSPEX_ADMIN_KEY` by default). Without it
//! both answer 403 saying how to turn them on.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /admin/keys` | every key (never its text) with its state |
//! | `POST /admin/keys` | create: `{"name", "budget_usd", "period", "rpm", "tpm", "models", "expires"}`; the answer holds the key's text, once |
//! | `GET /admin/keys/{name}` | one key |
//! | `POST /admin/keys/{name}/rotate` | a new text for the key (the old one stops working at once here, within `key_refresh_ms` elsewhere) |
//! | `POST /admin/keys/{name}/revoke`, `DELETE /admin/keys/{name}` | revoke |
//! | `GET /dashboard?range=24h` | the dashboard (a session cookie from `/dashboard/login`, or the admin key as a bearer token) |
//!
//! The dashboard's session cookie is `expiry.HMAC-SHA256(admin key, expiry)`:
//! stateless, so every instance with the same admin key accepts it, and a
//! new admin key ends every session.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use dspex_analytics::keys::{ApiKey, ModelList, RawKeyLimits, hash_key};
use dspex_analytics::time::unix_ms;
use dspex_analytics::{AnalyticsError, GroupBy, TimeRange};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::chat::{circuit_name, read_body};
use crate::dashboard::{self, BucketRoom, DashboardData, ProviderState};
use crate::error::RequestError;
use crate::openai;
use crate::server::Shared;

const SESSION_COOKIE: &str = "dspex_dashboard";
/// How long a dashboard session lasts.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// The ranges the dashboard offers.
const RANGES: &[&str] = &["1h", "24h", "7d", "30d"];

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/admin/keys", get(list_keys).post(create_key))
        .route("/admin/keys/{name}", get(get_key).delete(revoke_key))
        .route("/admin/keys/{name}/rotate", post(rotate_key))
        .route("/admin/keys/{name}/revoke", post(revoke_key))
        .route("/dashboard", get(dashboard_page))
        .route("/dashboard/login", get(login_page).post(login))
        .route("/dashboard/logout", post(logout))
}

/// The admin key was presented, or the error to answer.
fn require_admin(shared: &Shared, headers: &HeaderMap) -> Result<(), RequestError> {
    let Some(expected) = shared.admin_key else {
        return Err(RequestError::forbidden(
            "admin_disabled",
            None,
            format!(
                "the admin API is off: start the gateway with the admin key in ${}",
                shared.config.admin_key_env
            ),
        ));
    };
    match crate::keys::presented_key(headers) {
        None => Err(RequestError::unauthorized(
            "missing_api_key",
            "the admin API needs the admin key: `Authorization: Bearer <admin key>`",
        )),
        // Hashes are compared, so the time taken says nothing about the key.
        Some(presented) if hash_key(presented) == expected => Ok(()),
        Some(_) => Err(RequestError::unauthorized(
            "invalid_api_key",
            "that is not the admin key",
        )),
    }
}

fn store_error(error: &AnalyticsError) -> RequestError {
    match error {
        AnalyticsError::KeyExists { name } => RequestError {
            status: 409,
            code: Some("key_exists".into()),
            param: Some("name".into()),
            ..RequestError::bad_request(
                None,
                format!("a key named `{name}` exists (names are never reused)"),
            )
        },
        AnalyticsError::KeyNotFound { name } => {
            RequestError::not_found(format!("no key is named `{name}`"))
        }
        AnalyticsError::Config(dspex_core::CoreError::Config { key, message, .. }) => {
            RequestError::bad_request(Some(key.clone()), format!("`{key}`: {message}"))
        }
        other => {
            tracing::warn!(error = %other, "the key store failed");
            RequestError::unavailable(format!("the key store failed: {other}"))
        }
    }
}

fn key_json(key: &ApiKey, now_ms: i64) -> Value {
    let mut value = serde_json::to_value(key).unwrap_or_else(|_| json!({}));
    if let Some(object) = value.as_object_mut() {
        object.insert("state".into(), json!(key.state(now_ms).as_str()));
        object.insert(
            "budget_usd".into(),
            json!(
                key.limits
                    .budget_nanos
                    .map(dspex_analytics::prices::nanos_to_usd)
            ),
        );
    }
    value
}

fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

fn store_of(shared: &Shared) -> Result<&dspex_analytics::Store, RequestError> {
    shared.store.as_ref().ok_or_else(|| {
        RequestError::unavailable("the gateway has no key store (start it with [analytics])")
    })
}

async fn list_keys(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let result = async {
        require_admin(&shared, &headers)?;
        let keys = store_of(&shared)?
            .list_keys()
            .await
            .map_err(|e| store_error(&e))?;
        let now = now_ms();
        let data: Vec<Value> = keys.iter().map(|k| key_json(k, now)).collect();
        Ok::<_, RequestError>(axum::Json(json!({"object": "list", "data": data})).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn get_key(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let result = async {
        require_admin(&shared, &headers)?;
        let key = store_of(&shared)?
            .key_by_name(&name)
            .await
            .map_err(|e| store_error(&e))?
            .ok_or_else(|| RequestError::not_found(format!("no key is named `{name}`")))?;
        Ok::<_, RequestError>(axum::Json(key_json(&key, now_ms())).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /admin/keys`: the same fields as `dspex keys create`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    #[serde(default)]
    budget_usd: Option<f64>,
    #[serde(default)]
    period: Option<String>,
    #[serde(default)]
    rpm: Option<u64>,
    #[serde(default)]
    tpm: Option<u64>,
    #[serde(default)]
    models: Option<ModelList>,
    #[serde(default)]
    expires: Option<String>,
}

async fn create_key(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        require_admin(&shared, &headers)?;
        let store = store_of(&shared)?;
        let bytes = read_body(&shared, body).await?;
        let request: CreateKey = openai::decode_json(&bytes)?;
        let raw = RawKeyLimits {
            budget_usd: request.budget_usd,
            period: request.period,
            rpm: request.rpm,
            tpm: request.tpm,
            models: request.models,
            expires: request.expires,
        };
        let limits = raw.validate(now_ms()).map_err(|e| store_error(&e))?;
        let (key, secret) = store
            .create_key(&request.name, &limits)
            .await
            .map_err(|e| store_error(&e))?;
        tracing::info!(key = %key.name, prefix = %key.prefix, "key created through the admin API");
        if let Some(ring) = &shared.keys {
            ring.update(key.clone(), None);
        }
        let mut body = key_json(&key, now_ms());
        if let Some(object) = body.as_object_mut() {
            object.insert("key".into(), json!(secret.expose()));
        }
        Ok::<_, RequestError>((StatusCode::CREATED, axum::Json(body)).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn rotate_key(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let result = async {
        require_admin(&shared, &headers)?;
        let store = store_of(&shared)?;
        let old = store
            .key_by_name(&name)
            .await
            .map_err(|e| store_error(&e))?
            .map(|k| k.hash);
        let (key, secret) = store.rotate_key(&name).await.map_err(|e| store_error(&e))?;
        tracing::info!(key = %key.name, prefix = %key.prefix, "key rotated through the admin API");
        if let Some(ring) = &shared.keys {
            ring.update(key.clone(), old);
        }
        let mut body = key_json(&key, now_ms());
        if let Some(object) = body.as_object_mut() {
            object.insert("key".into(), json!(secret.expose()));
        }
        Ok::<_, RequestError>(axum::Json(body).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn revoke_key(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let result = async {
        require_admin(&shared, &headers)?;
        let key = store_of(&shared)?
            .revoke_key(&name)
            .await
            .map_err(|e| store_error(&e))?;
        tracing::info!(key = %key.name, "key revoked through the admin API");
        if let Some(ring) = &shared.keys {
            ring.update(key.clone(), None);
        }
        Ok::<_, RequestError>(axum::Json(key_json(&key, now_ms())).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

type HmacSha256 = Hmac<Sha256>;

fn session_mac(shared: &Shared, expiry_ms: i64) -> Option<HmacSha256> {
    let admin = shared.admin_key?;
    let mut mac = HmacSha256::new_from_slice(admin.as_bytes()).ok()?;
    mac.update(b"dspex-dashboard-session:");
    mac.update(expiry_ms.to_string().as_bytes());
    Some(mac)
}

fn session_cookie(shared: &Shared) -> Option<String> {
    let lifetime = i64::try_from(SESSION_LIFETIME.as_millis()).unwrap_or(i64::MAX);
    let expiry = now_ms().saturating_add(lifetime);
    let mac = session_mac(shared, expiry)?;
    let tag: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(format!(
        "{SESSION_COOKIE}={expiry}.{tag}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_LIFETIME.as_secs()
    ))
}

fn has_session(shared: &Shared, headers: &HeaderMap) -> bool {
    let cookies = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim);
    for cookie in cookies {
        let Some(value) = cookie
            .strip_prefix(SESSION_COOKIE)
            .and_then(|rest| rest.strip_prefix('='))
        else {
            continue;
        };
        let Some((expiry, tag)) = value.split_once('.') else {
            continue;
        };
        let Ok(expiry) = expiry.parse::<i64>() else {
            continue;
        };
        if expiry <= now_ms() || tag.len() != 64 {
            continue;
        }
        let bytes: Option<Vec<u8>> = (0..32)
            .map(|i| {
                tag.get(2 * i..2 * i + 2)
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
            })
            .collect();
        if let (Some(bytes), Some(mac)) = (bytes, session_mac(shared, expiry))
            && mac.verify_slice(&bytes).is_ok()
        {
            return true;
        }
    }
    false
}

#[derive(Debug, Deserialize)]
struct RangeQuery {
    range: Option<String>,
}

async fn dashboard_page(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<RangeQuery>,
) -> Response {
    if shared.admin_key.is_none() {
        return require_admin(&shared, &headers).err().map_or_else(
            || StatusCode::FORBIDDEN.into_response(),
            IntoResponse::into_response,
        );
    }
    if !has_session(&shared, &headers) && require_admin(&shared, &headers).is_err() {
        return Redirect::to("/dashboard/login").into_response();
    }
    let label = query.range.unwrap_or_else(|| "24h".to_owned());
    match dashboard_data(&shared, &label).await {
        Ok(data) => {
            let mut response = Html(dashboard::render(&data)).into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(error) => error.into_response(),
    }
}

/// Queries everything the page shows, with the same analysis `dspex costs`
/// runs.
async fn dashboard_data(shared: &Shared, label: &str) -> Result<DashboardData, RequestError> {
    let store = store_of(shared)?;
    let range = TimeRange::parse(label)
        .map_err(|e| RequestError::bad_request(Some("range".into()), format!("`range`: {e}")))?;
    let (from_ms, until_ms) = range.resolve(SystemTime::now());
    let bucket = if until_ms.saturating_sub(from_ms) <= 2 * 86_400_000 {
        GroupBy::Hour
    } else {
        GroupBy::Day
    };
    let analyse = |group_by: Vec<GroupBy>| async move {
        store
            .cost_analysis_between(from_ms, until_ms, &group_by)
            .await
            .map_err(|e| store_error(&e))
    };
    let totals = analyse(Vec::new()).await?.into_iter().next();
    let over_time = analyse(vec![bucket.clone()]).await?;
    let by_key = analyse(vec![GroupBy::Tag(dspex_analytics::record::KEY_TAG.into())]).await?;
    let by_provider = analyse(vec![GroupBy::Provider]).await?;
    let by_model = analyse(vec![GroupBy::Model]).await?;
    let by_status = analyse(vec![GroupBy::Status]).await?;
    let recent_errors = store
        .recent_failures(from_ms, until_ms, 20)
        .await
        .map_err(|e| store_error(&e))?;
    let providers = shared
        .client
        .provider_ids()
        .into_iter()
        .filter_map(|id| {
            let provider = shared.client.provider(&id).ok()?;
            Some(ProviderState {
                circuit: circuit_name(provider.circuit_state()).to_owned(),
                free_slots: provider.available_slots(),
                buckets: provider
                    .rate_limit_usage()
                    .into_iter()
                    .map(|(name, used, limit)| BucketRoom { name, used, limit })
                    .collect(),
                id,
            })
        })
        .collect();
    Ok(DashboardData {
        range_label: label.to_owned(),
        from_ms,
        until_ms,
        ranges: RANGES.to_vec(),
        bucket: if bucket == GroupBy::Hour {
            "hour"
        } else {
            "day"
        },
        totals,
        over_time,
        by_key,
        by_provider,
        by_model,
        by_status,
        recent_errors,
        providers,
        generated_at_ms: now_ms(),
    })
}

async fn login_page() -> Response {
    Html(dashboard::render_login(None)).into_response()
}

async fn login(State(shared): State<Arc<Shared>>, body: Body) -> Response {
    let Ok(bytes) = read_body(&shared, body).await else {
        return (
            StatusCode::BAD_REQUEST,
            Html(dashboard::render_login(Some("the form could not be read"))),
        )
            .into_response();
    };
    let presented = url::form_urlencoded::parse(&bytes)
        .find(|(name, _)| name == "admin_key")
        .map(|(_, value)| value.trim().to_owned())
        .unwrap_or_default();
    let matches = shared
        .admin_key
        .is_some_and(|expected| !presented.is_empty() && hash_key(&presented) == expected);
    if !matches {
        let message = if shared.admin_key.is_none() {
            format!(
                "the dashboard is off: start the gateway with the admin key in ${}",
                shared.config.admin_key_env
            )
        } else {
            "that is not the admin key".to_owned()
        };
        return (
            StatusCode::UNAUTHORIZED,
            Html(dashboard::render_login(Some(&message))),
        )
            .into_response();
    }
    let mut response = Redirect::to("/dashboard").into_response();
    if let Some(cookie) = session_cookie(&shared).and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

async fn logout() -> Response {
    let mut response = Redirect::to("/dashboard/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "dspex_dashboard=; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}
