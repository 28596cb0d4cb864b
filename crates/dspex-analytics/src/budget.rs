//! Budgets: spend limits per provider, model or tag, per day, month or run.
//!
//! [`Budgets`] is pure bookkeeping, independent of the client:
//!
//! 1. Before a call, [`Budgets::check`] takes the call's *estimated* cost (see
//!    [`Budgets::estimate`]). If a matching **hard** budget's spend in the
//!    current period, plus what calls in flight have reserved, plus this
//!    estimate, would pass its limit, the call is refused with
//!    [`AnalyticsError::BudgetExceeded`] (and a [`BudgetEvent::Refused`] is
//!    published). Otherwise the estimate is reserved.
//! 2. After the call, [`Budgets::settle`] releases the reservation and adds the
//!    *real* cost. When a budget's spend crosses its warning fraction, a
//!    [`BudgetEvent::Warning`] is published once per period; when a soft
//!    budget passes its limit, a [`BudgetEvent::Exceeded`].
//!
//! Periods are UTC days and months, or one run: the calls sharing a
//! correlation id (a workflow, evaluation or optimisation run). Call
//! [`Budgets::prime`] at start to load today's and this month's spend from the
//! store; [`Budgets::end_run`] forgets a finished run.
//!
//! A call whose model is unpriced has no estimate: it is let through (its
//! decision says so), and a hard budget already over its limit still refuses
//! it.
//!
//! Events go out on [`Budgets::events`], a bus this type owns.
//!
//! ```
//! use std::sync::Arc;
//! use dspex_analytics::budget::{Budget, BudgetPeriod, BudgetScope, Budgets};
//! use dspex_analytics::PriceTable;
//! let budgets = Budgets::new(
//!     vec![Budget::new("openai-daily", BudgetScope::provider("openai"), BudgetPeriod::Day, 1_000_000_000)],
//!     Arc::new(PriceTable::bundled()?),
//! );
//! assert_eq!(budgets.budgets().len(), 1);
//! # Ok::<(), dspex_analytics::AnalyticsError>(())
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use dspex_client::events::CallInfo;
use dspex_core::CorrelationId;
use dspex_core::events::EventBus;
use parking_lot::Mutex;
use serde::Serialize;

use crate::error::{AnalyticsError, Result};
use crate::prices::PriceTable;
use crate::store::{SpendFilter, Store};
use crate::time::{DAY_MS, format_date, month_start_ms, next_month_start_ms, unix_ms};

/// The period a budget's spend is counted over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    /// A UTC day.
    Day,
    /// A UTC month.
    Month,
    /// One run: the calls sharing a correlation id.
    Run,
}

impl BudgetPeriod {
    /// Parses `day`, `month` or `run` (also `daily`, `monthly`).
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "day" | "daily" => Some(Self::Day),
            "month" | "monthly" => Some(Self::Month),
            "run" => Some(Self::Run),
            _ => None,
        }
    }
}

impl fmt::Display for BudgetPeriod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Day => "day",
            Self::Month => "month",
            Self::Run => "run",
        })
    }
}

/// Which calls a budget counts: every field that is set must match (none set:
/// every call).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BudgetScope {
    /// The provider id.
    pub provider: Option<String>,
    /// The requested model.
    pub model: Option<String>,
    /// A tag `key = value` (`workflow` and `step` included).
    pub tag: Option<(String, String)>,
}

impl BudgetScope {
    /// Every call.
    pub fn all() -> Self {
        Self::default()
    }

    /// The calls to one provider.
    pub fn provider(provider: impl Into<String>) -> Self {
        Self {
            provider: Some(provider.into()),
            ..Self::default()
        }
    }

    /// The calls to one model (of any provider).
    pub fn model(model: impl Into<String>) -> Self {
        Self {
            model: Some(model.into()),
            ..Self::default()
        }
    }

    /// The calls tagged `key = value`.
    pub fn tag(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            tag: Some((key.into(), value.into())),
            ..Self::default()
        }
    }

    /// Whether `call` is in scope.
    pub fn matches(&self, call: &CallInfo) -> bool {
        self.provider
            .as_deref()
            .is_none_or(|p| p == &*call.provider)
            && self.model.as_deref().is_none_or(|m| m == &*call.model)
            && self
                .tag
                .as_ref()
                .is_none_or(|(k, v)| call.tags.get(k).is_some_and(|actual| actual == v))
    }

    /// The same scope as a store filter.
    pub fn filter(&self) -> SpendFilter {
        SpendFilter {
            provider: self.provider.clone(),
            model: self.model.clone(),
            tag: self.tag.clone(),
        }
    }
}

/// One budget.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Budget {
    /// Its name, used in errors and events.
    pub name: String,
    /// Which calls it counts.
    pub scope: BudgetScope,
    /// The period.
    pub period: BudgetPeriod,
    /// The limit, in nano-USD.
    pub limit_nanos: i64,
    /// The fraction of the limit (0..=1) at which a warning is published.
    pub warn_at: Option<f64>,
    /// Whether calls that would pass the limit are refused (otherwise only
    /// events are published).
    pub hard: bool,
}

impl Budget {
    /// A hard budget with a warning at 80%.
    pub fn new(
        name: impl Into<String>,
        scope: BudgetScope,
        period: BudgetPeriod,
        limit_nanos: i64,
    ) -> Self {
        Self {
            name: name.into(),
            scope,
            period,
            limit_nanos,
            warn_at: Some(0.8),
            hard: true,
        }
    }

    /// Sets the warning fraction (`None`: no warning).
    #[must_use]
    pub fn warn_at(mut self, fraction: Option<f64>) -> Self {
        self.warn_at = fraction;
        self
    }

    /// Makes it soft (events only) or hard (refusals).
    #[must_use]
    pub fn hard(mut self, hard: bool) -> Self {
        self.hard = hard;
        self
    }

    fn warn_threshold(&self) -> Option<i64> {
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
        self.warn_at
            .map(|f| (self.limit_nanos as f64 * f).ceil() as i64)
    }
}

/// What a budget event is about.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BudgetNotice {
    /// When.
    #[serde(with = "dspex_core::serde_time")]
    pub at: SystemTime,
    /// The budget's name.
    pub budget: String,
    /// Its period kind.
    pub period: BudgetPeriod,
    /// The period as text: `2026-11-24`, `2026-11`, or the run's id.
    pub period_label: String,
    /// The limit, in nano-USD.
    pub limit_nanos: i64,
    /// Spent in the period (reservations of calls in flight included for a
    /// refusal), in nano-USD.
    pub spent_nanos: i64,
    /// The call's estimated cost, for a refusal.
    pub estimated_nanos: Option<i64>,
    /// The warning fraction, for a warning.
    pub threshold: Option<f64>,
    /// The call's run.
    pub correlation_id: CorrelationId,
    /// The call's provider.
    pub provider: String,
    /// The call's model.
    pub model: String,
}

/// An event about a budget, published on [`Budgets::events`].
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum BudgetEvent {
    /// Spend crossed the warning fraction (once per period).
    Warning(BudgetNotice),
    /// A soft budget's spend passed its limit (once per period).
    Exceeded(BudgetNotice),
    /// A hard budget refused a call.
    Refused(BudgetNotice),
}

/// The outcome of an admitted [`Budgets::check`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BudgetDecision {
    /// The budgets the call counts against.
    pub budgets: Vec<String>,
    /// The estimate reserved, in nano-USD (`None`: unpriced, nothing reserved).
    pub reserved_nanos: Option<i64>,
}

impl BudgetDecision {
    /// Whether the call's model was unpriced, so no budget could weigh it.
    pub fn unpriced(&self) -> bool {
        self.reserved_nanos.is_none()
    }
}

#[derive(Default)]
struct Tally {
    spent: i64,
    reserved: i64,
    warned: bool,
    exceeded: bool,
}

struct BudgetState {
    // Day number or month start (ms) of the period `tally` counts.
    period_key: i64,
    tally: Tally,
    runs: HashMap<CorrelationId, Tally>,
}

struct Reservation {
    provider: Arc<str>,
    model: Arc<str>,
    // (budget index, period key, amount)
    parts: Vec<(usize, i64, i64)>,
}

struct State {
    budgets: Vec<BudgetState>,
    reservations: HashMap<CorrelationId, VecDeque<Reservation>>,
}

/// Spend limits, checked before calls and settled after them.
pub struct Budgets {
    budgets: Vec<Budget>,
    prices: Arc<PriceTable>,
    state: Mutex<State>,
    events: EventBus<BudgetEvent>,
}

impl fmt::Debug for Budgets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budgets")
            .field("budgets", &self.budgets)
            .finish_non_exhaustive()
    }
}

fn period_key(period: BudgetPeriod, now_ms: i64) -> i64 {
    match period {
        BudgetPeriod::Day => now_ms.div_euclid(DAY_MS),
        BudgetPeriod::Month => month_start_ms(now_ms),
        BudgetPeriod::Run => 0,
    }
}

fn period_label(period: BudgetPeriod, now_ms: i64, run: &CorrelationId) -> String {
    match period {
        BudgetPeriod::Day => format_date(now_ms),
        BudgetPeriod::Month => format_date(now_ms).get(..7).unwrap_or_default().to_owned(),
        BudgetPeriod::Run => run.to_string(),
    }
}

impl Budgets {
    /// Budgets with no spend yet, pricing estimates with `prices`.
    pub fn new(budgets: Vec<Budget>, prices: Arc<PriceTable>) -> Self {
        let now = unix_ms(SystemTime::now());
        let states = budgets
            .iter()
            .map(|b| BudgetState {
                period_key: period_key(b.period, now),
                tally: Tally::default(),
                runs: HashMap::new(),
            })
            .collect();
        Self {
            budgets,
            prices,
            state: Mutex::new(State {
                budgets: states,
                reservations: HashMap::new(),
            }),
            events: EventBus::new(),
        }
    }

    /// The budgets.
    pub fn budgets(&self) -> &[Budget] {
        &self.budgets
    }

    /// The bus warnings, soft overruns and refusals are published on.
    pub fn events(&self) -> &EventBus<BudgetEvent> {
        &self.events
    }

    /// The estimated cost of a call, in nano-USD: `estimated_input_tokens` at
    /// the input price plus `max_output_tokens` at the output price. `None`
    /// when the model is unpriced.
    pub fn estimate(
        &self,
        provider: &str,
        model: &str,
        estimated_input_tokens: u64,
        max_output_tokens: u64,
    ) -> Option<i64> {
        self.prices.estimate(
            provider,
            model,
            estimated_input_tokens,
            max_output_tokens,
            unix_ms(SystemTime::now()),
        )
    }

    /// Loads the current day's and month's spend of every day and month budget
    /// from `store` (run budgets start empty).
    pub async fn prime(&self, store: &Store) -> Result<()> {
        self.prime_at(store, SystemTime::now()).await
    }

    /// [`Budgets::prime`] as of `now`.
    pub async fn prime_at(&self, store: &Store, now: SystemTime) -> Result<()> {
        let now_ms = unix_ms(now);
        for (index, budget) in self.budgets.iter().enumerate() {
            let (from, until) = match budget.period {
                BudgetPeriod::Day => {
                    let start = now_ms.div_euclid(DAY_MS) * DAY_MS;
                    (start, start + DAY_MS)
                }
                BudgetPeriod::Month => (month_start_ms(now_ms), next_month_start_ms(now_ms)),
                BudgetPeriod::Run => continue,
            };
            let spent = store.spent(&budget.scope.filter(), from, until).await?;
            let mut state = self.state.lock();
            if let Some(s) = state.budgets.get_mut(index) {
                s.period_key = period_key(budget.period, now_ms);
                s.tally.spent = spent;
                s.tally.warned = budget.warn_threshold().is_some_and(|t| spent >= t);
                s.tally.exceeded = spent > budget.limit_nanos;
            }
        }
        Ok(())
    }

    /// Spent (settled) in the current period of budget `name` (for a run
    /// budget: in run `run`), in nano-USD.
    pub fn spent(&self, name: &str, run: Option<&CorrelationId>) -> Option<i64> {
        let index = self.budgets.iter().position(|b| b.name == name)?;
        let state = self.state.lock();
        let s = state.budgets.get(index)?;
        match run {
            Some(run) => Some(s.runs.get(run).map_or(0, |t| t.spent)),
            None => Some(s.tally.spent),
        }
    }

    /// Checks a call before it is sent; reserves its estimate if admitted.
    pub fn check(
        &self,
        call: &CallInfo,
        run: &CorrelationId,
        estimated_nanos: Option<i64>,
    ) -> Result<BudgetDecision> {
        self.check_at(call, run, estimated_nanos, SystemTime::now())
    }

    /// [`Budgets::check`] as of `now`.
    pub fn check_at(
        &self,
        call: &CallInfo,
        run: &CorrelationId,
        estimated_nanos: Option<i64>,
        now: SystemTime,
    ) -> Result<BudgetDecision> {
        let now_ms = unix_ms(now);
        let estimate = estimated_nanos.unwrap_or(0).max(0);
        let mut state = self.state.lock();
        let mut matched = Vec::new();
        for (index, budget) in self.budgets.iter().enumerate() {
            if !budget.scope.matches(call) {
                continue;
            }
            let Some(s) = state.budgets.get_mut(index) else {
                continue;
            };
            roll(s, budget.period, now_ms);
            let tally = tally_of(s, budget.period, run);
            let committed = tally.spent.saturating_add(tally.reserved);
            if budget.hard && committed.saturating_add(estimate) > budget.limit_nanos {
                let notice = BudgetNotice {
                    at: now,
                    budget: budget.name.clone(),
                    period: budget.period,
                    period_label: period_label(budget.period, now_ms, run),
                    limit_nanos: budget.limit_nanos,
                    spent_nanos: committed,
                    estimated_nanos,
                    threshold: None,
                    correlation_id: run.clone(),
                    provider: call.provider.to_string(),
                    model: call.model.to_string(),
                };
                drop(state);
                let error = AnalyticsError::BudgetExceeded {
                    budget: budget.name.clone(),
                    period: format!("{} {}", budget.period, notice.period_label),
                    limit_nanos: budget.limit_nanos,
                    spent_nanos: committed,
                    estimated_nanos: estimate,
                };
                self.events.publish(BudgetEvent::Refused(notice));
                return Err(error);
            }
            matched.push(index);
        }
        let mut parts = Vec::with_capacity(matched.len());
        if estimated_nanos.is_some() {
            for &index in &matched {
                let Some(budget) = self.budgets.get(index) else {
                    continue;
                };
                if let Some(s) = state.budgets.get_mut(index) {
                    let key = s.period_key;
                    let tally = tally_of(s, budget.period, run);
                    tally.reserved = tally.reserved.saturating_add(estimate);
                    parts.push((index, key, estimate));
                }
            }
            if !parts.is_empty() {
                state
                    .reservations
                    .entry(run.clone())
                    .or_default()
                    .push_back(Reservation {
                        provider: Arc::clone(&call.provider),
                        model: Arc::clone(&call.model),
                        parts,
                    });
            }
        }
        Ok(BudgetDecision {
            budgets: matched
                .iter()
                .filter_map(|&i| self.budgets.get(i).map(|b| b.name.clone()))
                .collect(),
            reserved_nanos: estimated_nanos.map(|_| estimate),
        })
    }

    /// Settles a call after it ended: releases its reservation (the oldest one
    /// of this run for the same provider and model) and adds `actual_nanos`
    /// (`None`: unpriced, nothing added).
    pub fn settle(&self, call: &CallInfo, run: &CorrelationId, actual_nanos: Option<i64>) {
        self.settle_at(call, run, actual_nanos, SystemTime::now());
    }

    /// [`Budgets::settle`] as of `now`.
    pub fn settle_at(
        &self,
        call: &CallInfo,
        run: &CorrelationId,
        actual_nanos: Option<i64>,
        now: SystemTime,
    ) {
        let now_ms = unix_ms(now);
        let mut notices = Vec::new();
        {
            let mut guard = self.state.lock();
            let state = &mut *guard;
            // Release the reservation.
            if let Some(queue) = state.reservations.get_mut(run) {
                if let Some(pos) = queue
                    .iter()
                    .position(|r| *r.provider == *call.provider && *r.model == *call.model)
                    && let Some(reservation) = queue.remove(pos)
                {
                    for (index, key, amount) in reservation.parts {
                        let (Some(budget), Some(s)) =
                            (self.budgets.get(index), state.budgets.get_mut(index))
                        else {
                            continue;
                        };
                        if s.period_key == key {
                            let tally = tally_of(s, budget.period, run);
                            tally.reserved = tally.reserved.saturating_sub(amount).max(0);
                        }
                    }
                }
                if queue.is_empty() {
                    state.reservations.remove(run);
                }
            }
            let actual = actual_nanos.unwrap_or(0).max(0);
            for (index, budget) in self.budgets.iter().enumerate() {
                if !budget.scope.matches(call) {
                    continue;
                }
                let Some(s) = state.budgets.get_mut(index) else {
                    continue;
                };
                roll(s, budget.period, now_ms);
                let tally = tally_of(s, budget.period, run);
                tally.spent = tally.spent.saturating_add(actual);
                let spent = tally.spent;
                let notice = |threshold: Option<f64>| BudgetNotice {
                    at: now,
                    budget: budget.name.clone(),
                    period: budget.period,
                    period_label: period_label(budget.period, now_ms, run),
                    limit_nanos: budget.limit_nanos,
                    spent_nanos: spent,
                    estimated_nanos: None,
                    threshold,
                    correlation_id: run.clone(),
                    provider: call.provider.to_string(),
                    model: call.model.to_string(),
                };
                if !tally.warned
                    && let Some(threshold) = budget.warn_threshold()
                    && spent >= threshold
                {
                    tally.warned = true;
                    notices.push(BudgetEvent::Warning(notice(budget.warn_at)));
                }
                if !budget.hard && !tally.exceeded && spent > budget.limit_nanos {
                    tally.exceeded = true;
                    notices.push(BudgetEvent::Exceeded(notice(None)));
                }
            }
        }
        for notice in notices {
            self.events.publish(notice);
        }
    }

    /// Forgets run `run`'s tallies and reservations (call when a run ends).
    pub fn end_run(&self, run: &CorrelationId) {
        let mut state = self.state.lock();
        state.reservations.remove(run);
        for s in &mut state.budgets {
            s.runs.remove(run);
        }
    }

    /// Remaining spend (limit − spent − reserved) of each budget matching
    /// `call`, by name, in nano-USD.
    pub fn remaining(&self, call: &CallInfo, run: &CorrelationId) -> BTreeMap<String, i64> {
        self.remaining_at(call, run, SystemTime::now())
    }

    /// [`Budgets::remaining`] as of `now`.
    pub fn remaining_at(
        &self,
        call: &CallInfo,
        run: &CorrelationId,
        now: SystemTime,
    ) -> BTreeMap<String, i64> {
        let now_ms = unix_ms(now);
        let mut state = self.state.lock();
        let mut out = BTreeMap::new();
        for (index, budget) in self.budgets.iter().enumerate() {
            if !budget.scope.matches(call) {
                continue;
            }
            if let Some(s) = state.budgets.get_mut(index) {
                roll(s, budget.period, now_ms);
                let tally = tally_of(s, budget.period, run);
                out.insert(
                    budget.name.clone(),
                    budget
                        .limit_nanos
                        .saturating_sub(tally.spent)
                        .saturating_sub(tally.reserved),
                );
            }
        }
        out
    }
}

/// Starts a new period when the day or month changed.
fn roll(state: &mut BudgetState, period: BudgetPeriod, now_ms: i64) {
    let key = period_key(period, now_ms);
    if period != BudgetPeriod::Run && key != state.period_key {
        state.period_key = key;
        state.tally = Tally::default();
    }
}

fn tally_of<'a>(
    state: &'a mut BudgetState,
    period: BudgetPeriod,
    run: &CorrelationId,
) -> &'a mut Tally {
    match period {
        BudgetPeriod::Run => state.runs.entry(run.clone()).or_default(),
        _ => &mut state.tally,
    }
}

/// A budget as written in `dspex.toml`:
///
/// ```toml
/// [[analytics.budgets]]
/// name = "openai-daily"
/// provider = "openai"        # optional; also model = "...", tag = "team=search"
/// period = "day"             # day | month | run
/// limit_usd = 25.0
/// warn_at = 0.8              # optional, default 0.8; 0 disables
/// hard = true                # optional, default true
/// ```
#[derive(Clone, Debug, serde::Deserialize)]
pub struct RawBudget {
    /// Its name (default: built from the scope and period).
    pub name: Option<String>,
    /// Provider scope.
    pub provider: Option<String>,
    /// Model scope.
    pub model: Option<String>,
    /// Tag scope, `key=value`.
    pub tag: Option<String>,
    /// `day`, `month` or `run`.
    pub period: String,
    /// The limit in dollars.
    pub limit_usd: f64,
    /// Warning fraction.
    pub warn_at: Option<f64>,
    /// Refuse calls past the limit.
    pub hard: Option<bool>,
}

impl RawBudget {
    /// Validates; `key` (such as `analytics.budgets[0]`) prefixes error keys.
    pub fn validate(&self, key: &str) -> Result<Budget> {
        let config = |field: &str, message: String| {
            AnalyticsError::Config(dspex_core::CoreError::config(
                format!("{key}.{field}"),
                message,
            ))
        };
        let period = BudgetPeriod::parse(&self.period).ok_or_else(|| {
            config(
                "period",
                format!("`{}` is not day, month or run", self.period),
            )
        })?;
        if !self.limit_usd.is_finite() || self.limit_usd < 0.0 || self.limit_usd > 1e9 {
            return Err(config(
                "limit_usd",
                format!(
                    "`{}` is not a limit in dollars between 0 and 1e9",
                    self.limit_usd
                ),
            ));
        }
        #[allow(clippy::cast_possible_truncation)]
        let limit_nanos = (self.limit_usd * 1e9).round() as i64;
        let warn_at = match self.warn_at {
            None => Some(0.8),
            Some(0.0) => None,
            Some(f) if f.is_finite() && f > 0.0 && f <= 1.0 => Some(f),
            Some(f) => {
                return Err(config(
                    "warn_at",
                    format!("`{f}` is not a fraction between 0 and 1"),
                ));
            }
        };
        let tag = match &self.tag {
            None => None,
            Some(text) => {
                let (k, v) = text
                    .split_once('=')
                    .map(|(k, v)| (k.trim(), v.trim()))
                    .filter(|(k, _)| !k.is_empty())
                    .ok_or_else(|| config("tag", format!("`{text}` is not `key=value`")))?;
                Some((k.to_owned(), v.to_owned()))
            }
        };
        let scope = BudgetScope {
            provider: self.provider.clone(),
            model: self.model.clone(),
            tag,
        };
        let name = self.name.clone().unwrap_or_else(|| {
            let mut parts: Vec<String> = Vec::new();
            if let Some(p) = &scope.provider {
                parts.push(p.clone());
            }
            if let Some(m) = &scope.model {
                parts.push(m.clone());
            }
            if let Some((k, v)) = &scope.tag {
                parts.push(format!("{k}={v}"));
            }
            if parts.is_empty() {
                parts.push("all".to_owned());
            }
            format!("{}/{period}", parts.join("/"))
        });
        Ok(Budget {
            name,
            scope,
            period,
            limit_nanos,
            warn_at,
            hard: self.hard.unwrap_or(true),
        })
    }
}

/// Budgets as the client's [`CallGuard`](dspex_client::CallGuard): each call
/// is priced from its estimate before it is sent (refused when a hard budget
/// would be exceeded) and settled with its real cost when it ends.
///
/// ```no_run
/// # async fn f(client: &dspex_client::Client, budgets: dspex_analytics::Budgets) -> Result<(), dspex_client::ClientError> {
/// client.set_guard(std::sync::Arc::new(budgets))?;
/// # Ok(()) }
/// ```
impl dspex_client::CallGuard for Budgets {
    fn name(&self) -> &'static str {
        "budget"
    }

    fn admit(
        &self,
        call: &CallInfo,
        correlation_id: &CorrelationId,
        estimate: &dspex_client::Usage,
    ) -> std::result::Result<(), String> {
        // A local model costs nothing: admitted at zero, never as unpriced.
        let estimated = if call.system == crate::prices::LOCAL_SYSTEM {
            Some(0)
        } else {
            self.estimate(
                &call.provider,
                &call.model,
                estimate.input_tokens,
                estimate.output_tokens,
            )
        };
        self.check(call, correlation_id, estimated)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn settle(&self, call: &CallInfo, correlation_id: &CorrelationId, usage: &dspex_client::Usage) {
        let actual = self
            .prices
            .cost_of_call(
                call.system,
                &call.provider,
                &call.model,
                None,
                unix_ms(SystemTime::now()),
                &crate::prices::TokenUsage::from(usage),
            )
            .map(|cost| cost.nanos);
        Budgets::settle(self, call, correlation_id, actual);
    }
}
