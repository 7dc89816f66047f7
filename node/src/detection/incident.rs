//! Incidents: per-container evidence over consecutive windows, so that an
//! operator gets one alert per episode instead of one per window.
//!
//! A calibrated per-window false-alarm rate of 1 % on 10 s windows is 86
//! alarms per container-day. The [`IncidentTracker`] turns window scores and
//! rule hits into incidents that open, update and close:
//!
//! - **Evidence** per scored window is `x = ln(score / threshold)` (the
//!   fleet's view: above 0 means above the calibrated threshold) and
//!   `x_own = ln(score / threshold) − b − ln(baseline_factor)` (the
//!   container's own view: `b` is an EWMA of the container's own recent
//!   `ln(score / threshold)`, capped at `ln(`[`BASELINE_CAP`]`)`). A window
//!   counts as evidence only by how far it is above **both** bars:
//!   `e = min(x, x_own) − slack`. A CUSUM `S = max(0, S + e)` accumulates
//!   it; an incident opens when `S ≥ open_bound`. One window just above the
//!   threshold (`x < slack`) never adds anything; one window at
//!   `exp(open_bound + slack)` times the threshold opens at once.
//! - **Own history** ([`crate::detection::rise`]): once warm, a window whose
//!   CPU, throttling, memory and processes rise beyond every one of the
//!   container's recent normal windows by `r` (summed own standard
//!   deviations) has `x_rise = min(ln(r / rise_bar), open_bound/2 + slack)`,
//!   and counts when `x_rise > slack`: then `e = max(min(x, x_own), x_rise)
//!   − slack`, so a rise alone opens an incident after two windows or more.
//!   The incident is `opened_by` [`OpenReason::OwnHistory`] when the rise
//!   gave most of `S`, and carries the risen features. The history learns
//!   every window but those whose rise counts, until a rise is recorded in
//!   an open incident; it is not part of the snapshot.
//! - **Restart**: a window marked `restarted` (the container made anew
//!   under the same id) starts the container up again: start-up, warm-up,
//!   own baseline and own history begin anew; `S` and an open incident
//!   stay, and the start-up windows do not escalate it.
//! - **Rule hits** ([`crate::detection::rules`]) open an incident at once,
//!   or join the open one (escalating its severity if theirs is higher),
//!   warm-up or not.
//! - **Warm-up**: the first `warmup_windows` scored windows of a container
//!   (after it appears, or after the node's first model) feed only its
//!   baseline; no model evidence counts. Its first `warmup_windows` windows,
//!   scored or not, are its start-up ([`IncidentTracker::starting_up`]):
//!   the agent trains on them but never calibrates the threshold on them.
//! - **Baseline**: learned from every window outside an open incident,
//!   each input clipped at `b + ln(baseline_factor)`, so slow growth is
//!   learned and a sudden jump is not absorbed before it is judged. Frozen
//!   while an incident is open.
//! - **Close**: after `close_after_windows` consecutive ticks in which the
//!   container had no rule hit and was either absent or gave no evidence
//!   (`e + slack ≤ 0`).
//! - **Records**: [`IncidentState::Open`] once, [`IncidentState::Update`] on
//!   a severity escalation or at most every `update_interval_s` while the
//!   incident has new windows, [`IncidentState::Close`] once.
//! - **Bounded**: at most `max_containers` containers are tracked (the least
//!   recently seen one is dropped, its open incident closed with
//!   [`CloseReason::Evicted`]); a container not seen for
//!   `forget_after_windows` ticks is forgotten; at most
//!   [`MAX_RULES_PER_INCIDENT`] distinct rules per incident. Non-finite or
//!   negative scores and non-positive thresholds are counted
//!   ([`IncidentStats::bad_scores`]) and treated as an unscored window.
//!
//! Pure and deterministic: time is a parameter, state lives in ordered maps,
//! no clock and no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::detection::features::NUM_FEATURES;
use crate::detection::rise::{MAX_HISTORY, MIN_HISTORY, OwnHistory, rise_features};
use crate::detection::rules::RuleHit;
use crate::detection::severity::Severity;

/// Highest own baseline, as a multiple of the threshold: a container whose
/// normal is noisier still opens an incident from
/// `BASELINE_CAP × baseline_factor × e^slack` times the threshold on.
pub const BASELINE_CAP: f32 = 4.0;
/// Own-history windows all tracked containers may hold together (256 MiB).
pub const MAX_HISTORY_WINDOWS_HELD: usize = 1 << 24;
/// Distinct rules remembered per incident (further hits still count).
pub const MAX_RULES_PER_INCIDENT: usize = 16;
/// Largest `|ln(score / threshold)|` one window contributes.
const MAX_LOG_RATIO: f32 = 8.0;
/// The CUSUM never exceeds this multiple of `open_bound` (bounded state).
const CUSUM_CAP_FACTOR: f32 = 4.0;

/// `[incidents]`: how window scores become incidents.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentConfig {
    /// Scored windows of a new container that only teach its baseline (no
    /// model-based incident; rules still open incidents). A container's
    /// first this many windows, scored or not, never calibrate the
    /// threshold either.
    #[serde(default = "d_warmup")]
    pub warmup_windows: u32,
    /// Evidence (CUSUM of `ln(score/threshold)` beyond `slack`) that opens an
    /// incident. Higher: fewer false incidents, slower detection.
    #[serde(default = "d_open_bound")]
    pub open_bound: f32,
    /// `ln` ratio above both bars one window must exceed to count as
    /// evidence (0.25: 1.28 × the threshold).
    #[serde(default = "d_slack")]
    pub slack: f32,
    /// A window counts only above this multiple of the container's own
    /// baseline too.
    #[serde(default = "d_baseline_factor")]
    pub baseline_factor: f32,
    /// EWMA weight of one window in the container's baseline (0.02: about
    /// the last 50 windows).
    #[serde(default = "d_baseline_alpha")]
    pub baseline_alpha: f32,
    /// Consecutive normal (or absent) windows that close an incident.
    #[serde(default = "d_close_after")]
    pub close_after_windows: u32,
    /// Least time between two `update` records of one incident, seconds
    /// (a severity escalation is reported at once).
    #[serde(default = "d_update_interval")]
    pub update_interval_s: u64,
    /// Containers tracked at most.
    #[serde(default = "d_max_containers")]
    pub max_containers: usize,
    /// A container not seen for this many windows is forgotten.
    #[serde(default = "d_forget_after")]
    pub forget_after_windows: u32,
    /// Recent normal windows each container's own history holds (see
    /// [`crate::detection::rise`]); 0 turns the own-history view off.
    #[serde(default = "d_history_windows")]
    pub history_windows: usize,
    /// A window's rise above its container's recent windows (the sum of
    /// per-feature excess in own standard deviations) counts as evidence
    /// above this.
    #[serde(default = "d_rise_bar")]
    pub rise_bar: f32,
}

fn d_warmup() -> u32 {
    6
}
fn d_open_bound() -> f32 {
    3.0
}
fn d_slack() -> f32 {
    0.25
}
fn d_baseline_factor() -> f32 {
    2.0
}
fn d_baseline_alpha() -> f32 {
    0.02
}
fn d_close_after() -> u32 {
    6
}
fn d_update_interval() -> u64 {
    300
}
fn d_max_containers() -> usize {
    4096
}
fn d_forget_after() -> u32 {
    360
}
fn d_history_windows() -> usize {
    32
}
fn d_rise_bar() -> f32 {
    3.0
}

impl Default for IncidentConfig {
    fn default() -> Self {
        Self {
            warmup_windows: d_warmup(),
            open_bound: d_open_bound(),
            slack: d_slack(),
            baseline_factor: d_baseline_factor(),
            baseline_alpha: d_baseline_alpha(),
            close_after_windows: d_close_after(),
            update_interval_s: d_update_interval(),
            max_containers: d_max_containers(),
            forget_after_windows: d_forget_after(),
            history_windows: d_history_windows(),
            rise_bar: d_rise_bar(),
        }
    }
}

impl IncidentConfig {
    /// Problems with this section, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if !(self.open_bound.is_finite() && self.open_bound > 0.0 && self.open_bound <= 50.0) {
            errs.push(format!(
                "incidents.open_bound = {} must be in (0, 50]",
                self.open_bound
            ));
        }
        if !(self.slack.is_finite() && (0.0..=5.0).contains(&self.slack)) {
            errs.push(format!(
                "incidents.slack = {} must be in [0, 5]",
                self.slack
            ));
        }
        if !(self.baseline_factor.is_finite() && (1.0..=100.0).contains(&self.baseline_factor)) {
            errs.push(format!(
                "incidents.baseline_factor = {} must be in [1, 100]",
                self.baseline_factor
            ));
        }
        if !(self.baseline_alpha.is_finite()
            && self.baseline_alpha > 0.0
            && self.baseline_alpha <= 1.0)
        {
            errs.push(format!(
                "incidents.baseline_alpha = {} must be in (0, 1]",
                self.baseline_alpha
            ));
        }
        if self.warmup_windows > 100_000 {
            errs.push("incidents.warmup_windows must be at most 100000".to_string());
        }
        if self.close_after_windows == 0 || self.close_after_windows > 100_000 {
            errs.push("incidents.close_after_windows must be in 1..=100000".to_string());
        }
        if self.update_interval_s == 0 {
            errs.push("incidents.update_interval_s must be positive".to_string());
        }
        if self.max_containers == 0 || self.max_containers > 1_000_000 {
            errs.push("incidents.max_containers must be in 1..=1000000".to_string());
        }
        if self.history_windows != 0 && !(MIN_HISTORY..=MAX_HISTORY).contains(&self.history_windows)
        {
            errs.push(format!(
                "incidents.history_windows = {} must be 0 (off) or in {MIN_HISTORY}..={MAX_HISTORY}",
                self.history_windows
            ));
        } else if self.history_windows.saturating_mul(self.max_containers)
            > MAX_HISTORY_WINDOWS_HELD
        {
            errs.push(format!(
                "incidents.history_windows × max_containers = {} must be at most {MAX_HISTORY_WINDOWS_HELD} \
                 (16 bytes a window)",
                self.history_windows.saturating_mul(self.max_containers)
            ));
        }
        if !(self.rise_bar.is_finite() && self.rise_bar > 0.0 && self.rise_bar <= 1000.0) {
            errs.push(format!(
                "incidents.rise_bar = {} must be in (0, 1000]",
                self.rise_bar
            ));
        }
        if self.forget_after_windows < self.close_after_windows {
            errs.push(
                "incidents.forget_after_windows must be at least close_after_windows".to_string(),
            );
        }
        errs
    }
}

/// One container's window as the detector saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowVerdict {
    /// Container id.
    pub container: String,
    /// Score and the threshold in force (`None`: no model yet).
    pub score: Option<(f32, f32)>,
    /// Top contributing features of this window.
    pub top_features: Vec<(String, f32)>,
    /// The window's features, for the container's own-history view
    /// (`None`: judged by its score only).
    pub features: Option<[f32; NUM_FEATURES]>,
    /// The container was started anew under the same id in this window
    /// ([`crate::detection::features::FeatureWindow::restarted`]): its
    /// start-up, warm-up, own baseline and own history begin again (an open
    /// incident stays open).
    pub restarted: bool,
}

/// What opened an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenReason {
    /// Model evidence crossed `open_bound`.
    Evidence,
    /// The container's CPU, throttling, memory or processes rose beyond its
    /// own recent windows (see [`crate::detection::rise`]) and that evidence
    /// crossed `open_bound`.
    OwnHistory,
    /// A rule hit.
    Rule,
}

/// Why an incident closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// `close_after_windows` normal (or absent) windows in a row.
    Quiet,
    /// Dropped to keep at most `max_containers` tracked.
    Evicted,
    /// The node was down for `close_after_windows` windows or more, or
    /// its clock went back across the restart: nothing is known of the
    /// time between, so the incident ends at the restart and new evidence
    /// opens a new one.
    Restart,
}

/// The record kinds of one incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentState {
    /// The first record.
    Open,
    /// While it lasts: escalation or periodic summary.
    Update,
    /// The last record.
    Close,
}

impl IncidentState {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentState::Open => "open",
            IncidentState::Update => "update",
            IncidentState::Close => "close",
        }
    }
}

/// A rule that fired inside an incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentRule {
    /// Rule id.
    pub id: String,
    /// Its severity.
    pub severity: Severity,
    /// What it detects.
    pub description: String,
    /// The first triggering event, in words.
    pub event: String,
    /// Time of the first hit.
    pub first_ms: u64,
    /// Matching events so far.
    pub count: u32,
}

/// One incident of one container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Container id.
    pub container: String,
    /// When it opened (window end, or the rule event's time).
    pub opened_ms: u64,
    /// Last window or hit that was part of it.
    pub last_seen_ms: u64,
    /// When it closed.
    pub closed_ms: Option<u64>,
    /// Highest severity so far.
    pub severity: Severity,
    /// What opened it.
    pub opened_by: OpenReason,
    /// Why it closed.
    pub close_reason: Option<CloseReason>,
    /// Windows of the container while it was open (the opening one included).
    pub windows: u32,
    /// Of those, windows above the threshold.
    pub anomalous_windows: u32,
    /// Highest score and the threshold it was judged against.
    pub peak: Option<(f32, f32)>,
    /// Top features of the peak window.
    pub top_features: Vec<(String, f32)>,
    /// Features that rose beyond the container's own recent windows when it
    /// opened, in own standard deviations (empty when none did).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rise: Vec<(String, f32)>,
    /// Rules that fired, first hit first (at most [`MAX_RULES_PER_INCIDENT`]).
    pub rules: Vec<IncidentRule>,
    /// Evidence (CUSUM) when it opened.
    pub evidence: f32,
    /// Records emitted before the current one.
    pub seq: u32,
}

impl Incident {
    fn model_severity(&self) -> Option<Severity> {
        self.peak.map(|(s, t)| Severity::of_score(s, t))
    }

    fn recompute_severity(&mut self) {
        let rules = self.rules.iter().map(|r| r.severity).max();
        self.severity = rules
            .into_iter()
            .chain(self.model_severity())
            .max()
            .unwrap_or(Severity::Medium);
    }
}

/// Why an update record was emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateReason {
    /// Severity rose.
    Escalated,
    /// `update_interval_s` passed with new windows.
    Periodic,
}

/// One record to emit.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentEvent {
    /// Open, update or close.
    pub state: IncidentState,
    /// Why an update (update records only).
    pub update: Option<UpdateReason>,
    /// The incident as of this record.
    pub incident: Incident,
}

impl IncidentEvent {
    /// Whether this record should reach the response layer: an incident
    /// opening, or its severity rising.
    pub fn triggers_response(&self) -> bool {
        self.state == IncidentState::Open || self.update == Some(UpdateReason::Escalated)
    }
}

/// Counters of the tracker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IncidentStats {
    /// Incidents opened, by severity at opening (`low..=critical`).
    pub opened: [u64; 4],
    /// Incidents closed, by final severity.
    pub closed: [u64; 4],
    /// Update records.
    pub updates: u64,
    /// Windows with a non-finite or negative score or a bad threshold.
    pub bad_scores: u64,
    /// Containers dropped to respect `max_containers`.
    pub evicted: u64,
    /// Containers forgotten after `forget_after_windows` unseen.
    pub forgotten: u64,
    /// Windows that started a container anew under the same id (its start-up
    /// began again).
    pub restarts: u64,
}

/// Index of a severity in [`IncidentStats`] arrays.
pub fn severity_index(s: Severity) -> usize {
    match s {
        Severity::Low => 0,
        Severity::Medium => 1,
        Severity::High => 2,
        Severity::Critical => 3,
    }
}

/// One container's state. Between ticks the `*_now` flags are false, so a
/// snapshot (taken between ticks) leaves them out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Track {
    last_tick: u64,
    cusum: f32,
    baseline: Option<f32>,
    baseline_n: u32,
    quiet: u32,
    open: Option<Incident>,
    last_record_ms: u64,
    windows_at_record: u32,
    /// Windows of the container seen so far, scored or not (saturating;
    /// 0 in snapshots of older nodes).
    #[serde(default)]
    seen: u32,
    /// The own-history view's recent windows; not kept across a restart (the
    /// view is silent until it has seen [`crate::detection::rise::MIN_HISTORY`]
    /// windows again).
    #[serde(skip)]
    history: OwnHistory,
    /// The part of `cusum` the own-history view added.
    #[serde(skip)]
    cusum_rise: f32,
    #[serde(skip)]
    opened_now: bool,
    #[serde(skip)]
    escalated_now: bool,
    /// A window above both bars or a rule hit this tick.
    #[serde(skip)]
    evidence_now: bool,
}

/// Version of [`TrackerSnapshot`]'s layout.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Longest container id, top-feature name and rule text a restored
/// snapshot keeps (longer ones are cut).
const MAX_RESTORED_TEXT: usize = 1024;

/// Top features a restored incident keeps.
const MAX_RESTORED_FEATURES: usize = 64;

/// What of a tracker survives a restart ([`IncidentTracker::snapshot`],
/// [`IncidentTracker::restore`]): per container its evidence, own
/// baseline (so a known container has no second warm-up) and open
/// incident (so a restart neither pages again for it nor forgets to close
/// it). The configuration is not part of it: the restarted node's applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackerSnapshot {
    /// [`SNAPSHOT_VERSION`].
    pub version: u32,
    /// Ticks so far.
    pub tick: u64,
    /// Time of the last tick (0: unknown, as in snapshots of older nodes).
    #[serde(default)]
    pub saved_ms: u64,
    /// Time between the last two ticks, the window length the node ran
    /// with (0: unknown).
    #[serde(default)]
    pub step_ms: u64,
    /// Per container id.
    pub tracks: BTreeMap<String, Track>,
}

/// Why a snapshot could not be restored at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// Written by another layout version.
    #[error("incident snapshot version {0}, this node reads version {SNAPSHOT_VERSION}")]
    Version(u32),
}

/// What restoring repaired or dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Containers restored.
    pub restored: usize,
    /// Containers dropped: a non-finite value, or beyond `max_containers`
    /// (the least recently seen go first).
    pub dropped: usize,
    /// Containers kept with a field cut or clamped into its bounds.
    pub repaired: usize,
    /// Open incidents among the dropped containers: their close will not
    /// be sent.
    pub open_dropped: usize,
}

fn cut(s: &mut String) -> bool {
    if s.len() <= MAX_RESTORED_TEXT {
        return false;
    }
    let mut end = MAX_RESTORED_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    true
}

impl Track {
    /// Whether every number is finite (a stored NaN must not reach the
    /// evidence).
    fn finite(&self) -> bool {
        let inc_ok = self.open.as_ref().is_none_or(|i| {
            i.evidence.is_finite()
                && i.peak
                    .is_none_or(|(s, t)| s.is_finite() && t.is_finite() && t > 0.0)
                && i.top_features.iter().all(|(_, v)| v.is_finite())
                && i.rise.iter().all(|(_, v)| v.is_finite())
        });
        self.cusum.is_finite() && self.baseline.is_none_or(f32::is_finite) && inc_ok
    }

    /// Brings the fields into the bounds live tracking keeps; true if
    /// anything changed.
    fn repair(&mut self, cfg: &IncidentConfig, tick: u64) -> bool {
        let mut changed = false;
        let cap = cfg.open_bound * CUSUM_CAP_FACTOR;
        let c = self.cusum.clamp(0.0, cap.max(0.0));
        changed |= c != self.cusum;
        self.cusum = c;
        if let Some(b) = self.baseline {
            let nb = b.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO);
            changed |= nb != b;
            self.baseline = Some(nb);
        }
        if self.last_tick > tick {
            self.last_tick = tick;
            changed = true;
        }
        if let Some(inc) = self.open.as_mut() {
            changed |= cut(&mut inc.container);
            if inc.rules.len() > MAX_RULES_PER_INCIDENT {
                inc.rules.truncate(MAX_RULES_PER_INCIDENT);
                changed = true;
            }
            for r in &mut inc.rules {
                changed |= cut(&mut r.id) | cut(&mut r.description) | cut(&mut r.event);
            }
            changed |= repair_features(&mut inc.top_features);
            changed |= repair_features(&mut inc.rise);
            if inc.closed_ms.is_some() || inc.close_reason.is_some() {
                inc.closed_ms = None;
                inc.close_reason = None;
                changed = true;
            }
        }
        changed
    }
}

/// Keeps at most [`MAX_RESTORED_FEATURES`] restored (feature, value) pairs,
/// names cut; true if anything changed.
fn repair_features(list: &mut Vec<(String, f32)>) -> bool {
    let mut changed = list.len() > MAX_RESTORED_FEATURES;
    list.truncate(MAX_RESTORED_FEATURES);
    for (name, _) in list.iter_mut() {
        changed |= cut(name);
    }
    changed
}

/// Per-container incident state (see the module documentation).
#[derive(Debug, Clone)]
pub struct IncidentTracker {
    cfg: IncidentConfig,
    tracks: BTreeMap<String, Track>,
    tick: u64,
    /// Time of the last tick and the interval before it.
    last_step_ms: u64,
    step_ms: u64,
    /// Set by [`IncidentTracker::restore`]: the first tick after it
    /// accounts for the downtime (see [`IncidentTracker::resume`]).
    resumed: bool,
    stats: IncidentStats,
}

impl IncidentTracker {
    /// A tracker with `cfg` (validated by [`IncidentConfig::problems`]).
    pub fn new(cfg: IncidentConfig) -> Self {
        Self {
            cfg,
            tracks: BTreeMap::new(),
            tick: 0,
            last_step_ms: 0,
            step_ms: 0,
            resumed: false,
            stats: IncidentStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &IncidentConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> IncidentStats {
        self.stats
    }

    /// Containers tracked.
    pub fn tracked(&self) -> usize {
        self.tracks.len()
    }

    /// Open incidents.
    pub fn open_count(&self) -> usize {
        self.tracks.values().filter(|t| t.open.is_some()).count()
    }

    /// Whether `container` is in its start-up: among its first
    /// `warmup_windows` windows (scored or not) since it appeared. Start-up
    /// windows (a container's first execs and connections) are learned
    /// from but do not calibrate the threshold, as they are never judged.
    pub fn starting_up(&self, container: &str) -> bool {
        self.tracks
            .get(container)
            .is_none_or(|t| t.seen <= self.cfg.warmup_windows)
    }

    /// Whether `container` has an open incident.
    pub fn is_open(&self, container: &str) -> bool {
        self.tracks.get(container).is_some_and(|t| t.open.is_some())
    }

    /// The open incident of `container`.
    pub fn open_incident(&self, container: &str) -> Option<&Incident> {
        self.tracks.get(container).and_then(|t| t.open.as_ref())
    }

    /// The state to store between ticks (see [`TrackerSnapshot`]).
    pub fn snapshot(&self) -> TrackerSnapshot {
        TrackerSnapshot {
            version: SNAPSHOT_VERSION,
            tick: self.tick,
            saved_ms: self.last_step_ms,
            step_ms: self.step_ms,
            tracks: self.tracks.clone(),
        }
    }

    /// A tracker with `cfg` that goes on from `snap`: containers with a
    /// non-finite value are dropped, fields beyond the live bounds cut or
    /// clamped, and at most `max_containers` kept (the most recently seen).
    /// The counters start at zero. The first tick after it accounts for
    /// the time the node was down.
    pub fn restore(
        cfg: IncidentConfig,
        snap: TrackerSnapshot,
    ) -> Result<(Self, RestoreStats), RestoreError> {
        if snap.version != SNAPSHOT_VERSION {
            return Err(RestoreError::Version(snap.version));
        }
        let mut stats = RestoreStats::default();
        let mut tracks: Vec<(String, Track)> = Vec::with_capacity(snap.tracks.len());
        for (mut id, mut t) in snap.tracks {
            if !t.finite() {
                stats.dropped += 1;
                stats.open_dropped += usize::from(t.open.is_some());
                continue;
            }
            // Snapshots of older nodes have no count: a container with a
            // baseline has been seen at least that often.
            t.seen = t.seen.max(t.baseline_n);
            let mut changed = t.repair(&cfg, snap.tick);
            if cut(&mut id) {
                changed = true;
            }
            if let Some(inc) = t.open.as_mut()
                && inc.container != id
            {
                inc.container.clone_from(&id);
                changed = true;
            }
            stats.repaired += usize::from(changed);
            tracks.push((id, t));
        }
        if tracks.len() > cfg.max_containers {
            // The most recently seen first; among equals the lowest id goes,
            // as in eviction.
            tracks.sort_by(|a, b| b.1.last_tick.cmp(&a.1.last_tick).then(b.0.cmp(&a.0)));
            for (_, t) in tracks.drain(cfg.max_containers..) {
                stats.dropped += 1;
                stats.open_dropped += usize::from(t.open.is_some());
            }
        }
        // Ids cut to the same prefix keep one track (the last in order).
        let mut kept: BTreeMap<String, Track> = BTreeMap::new();
        for (id, t) in tracks {
            if let Some(old) = kept.insert(id, t) {
                stats.dropped += 1;
                stats.open_dropped += usize::from(old.open.is_some());
            }
        }
        stats.restored = kept.len();
        let me = Self {
            cfg,
            tracks: kept,
            tick: snap.tick,
            last_step_ms: snap.saved_ms,
            step_ms: snap.step_ms,
            resumed: true,
            stats: IncidentStats::default(),
        };
        Ok((me, stats))
    }

    /// One tick at `now_ms`: this tick's windows and rule hits. Returns the
    /// records to emit, in container order (open before close).
    pub fn step(
        &mut self,
        now_ms: u64,
        windows: &[WindowVerdict],
        hits: &[RuleHit],
    ) -> Vec<IncidentEvent> {
        let mut out = Vec::new();
        if std::mem::take(&mut self.resumed) {
            self.resume(now_ms, &mut out);
        } else if self.last_step_ms > 0 && now_ms > self.last_step_ms {
            self.step_ms = now_ms - self.last_step_ms;
        }
        self.last_step_ms = now_ms;
        self.tick = self.tick.saturating_add(1);
        // Rule hits first: an incident they open starts at the event's
        // time and names the rule as its cause; the windows then join it.
        for h in hits {
            self.hit(now_ms, h, &mut out);
        }
        for w in windows {
            self.window(now_ms, w, &mut out);
        }
        self.finish_tick(now_ms, &mut out);
        out
    }

    /// The first tick after a restore, at `now_ms`: the windows the node
    /// missed while down count as windows in which no container was seen
    /// (quiet for open incidents, age for the others), except that an
    /// incident whose quiet period the downtime covers closes with
    /// [`CloseReason::Restart`], not as quiet: nobody watched. A clock
    /// behind the snapshot's closes every open incident the same way.
    /// Snapshots of older nodes (no times) go on as they were.
    fn resume(&mut self, now_ms: u64, out: &mut Vec<IncidentEvent>) {
        let (saved, step) = (self.last_step_ms, self.step_ms);
        if saved == 0 || step == 0 {
            return;
        }
        let missed = if now_ms < saved {
            None
        } else {
            // The window ending now is a regular one; rounded, so a
            // window's jitter does not add or take one.
            Some(((now_ms - saved).saturating_add(step / 2) / step).saturating_sub(1))
        };
        let gap = missed.unwrap_or(0);
        self.tick = self.tick.saturating_add(gap);
        let close_after = u64::from(self.cfg.close_after_windows);
        for t in self.tracks.values_mut().filter(|t| t.open.is_some()) {
            let quiet = u64::from(t.quiet).saturating_add(gap);
            if missed.is_some() && quiet < close_after {
                t.quiet = u32::try_from(quiet).unwrap_or(u32::MAX);
                continue;
            }
            close_track(t, now_ms, CloseReason::Restart, &mut self.stats, out);
        }
    }

    fn track_mut(&mut self, container: &str, out: &mut Vec<IncidentEvent>) -> &mut Track {
        if !self.tracks.contains_key(container) && self.tracks.len() >= self.cfg.max_containers {
            // Drop the least recently seen container (ties: lowest id).
            let victim = self
                .tracks
                .iter()
                .min_by_key(|(_, t)| t.last_tick)
                .map(|(k, _)| k.clone());
            if let Some(v) = victim
                && let Some(mut t) = self.tracks.remove(&v)
            {
                self.stats.evicted += 1;
                // Closed as of its last sighting.
                let last_seen = t.open.as_ref().map_or(0, |i| i.last_seen_ms);
                close_track(
                    &mut t,
                    last_seen,
                    CloseReason::Evicted,
                    &mut self.stats,
                    out,
                );
            }
        }
        let tick = self.tick;
        let t = self.tracks.entry(container.to_string()).or_default();
        t.last_tick = tick;
        t
    }

    fn window(&mut self, now_ms: u64, w: &WindowVerdict, out: &mut Vec<IncidentEvent>) {
        let cfg = self.cfg.clone();
        let mut bad = false;
        let ratio = match w.score {
            Some((s, t)) if s.is_finite() && s >= 0.0 && t.is_finite() && t > 0.0 => {
                let x = (s.max(t * 1e-6) / t).ln();
                Some((s, t, x.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)))
            }
            Some(_) => {
                bad = true;
                None
            }
            None => None,
        };
        if bad {
            self.stats.bad_scores += 1;
        }
        if w.restarted {
            self.stats.restarts += 1;
        }
        let track = self.track_mut(&w.container, out);
        if w.restarted {
            // A new run of the container: its start-up, warm-up and own
            // normal begin again; the evidence so far and an open incident
            // stay.
            track.seen = 0;
            track.baseline = None;
            track.baseline_n = 0;
            track.history = OwnHistory::default();
        }
        track.seen = track.seen.saturating_add(1);
        let starting = track.seen <= cfg.warmup_windows;
        let usage = w.features.as_ref().and_then(rise_features);
        let Some((score, threshold, x)) = ratio else {
            // Without a score nothing can count: the history learns.
            if let Some(u) = usage {
                track.history.learn(&u, true, cfg.history_windows);
            }
            return;
        };
        let own_bar = cfg.baseline_factor.ln();
        let own = track
            .baseline
            .map_or(x, |b| x - b.min(BASELINE_CAP.ln()) - own_bar);
        // Warm-up counts scored windows: a container seen before the node
        // had a model is new to the model's scores.
        let warm = track.baseline_n >= cfg.warmup_windows;
        // The own-history view counts once warm and beyond the slack, at
        // most half the bound (beyond the slack) a window, so a rise opens
        // an incident after two windows or more, never after one.
        let rise = usage
            .and_then(|u| track.history.judge(&u))
            .map(|r| {
                let rx = (r.total.max(1e-6) / cfg.rise_bar)
                    .ln()
                    .min(cfg.open_bound / 2.0 + cfg.slack);
                (r, rx)
            })
            .filter(|(_, rx)| warm && *rx > cfg.slack);
        let fleet = x.min(own);
        let excess = rise.map_or(fleet, |(_, rx)| fleet.max(rx));
        if warm {
            let cap = cfg.open_bound * CUSUM_CAP_FACTOR;
            let before = track.cusum;
            track.cusum = (track.cusum + excess - cfg.slack).clamp(0.0, cap);
            if excess > fleet {
                track.cusum_rise += (track.cusum - before).max(0.0);
            }
            track.cusum_rise = track.cusum_rise.min(track.cusum);
        }
        if excess > 0.0 {
            track.evidence_now = true;
        }
        match track.open.as_mut() {
            Some(inc) => {
                inc.windows = inc.windows.saturating_add(1);
                inc.last_seen_ms = now_ms.max(inc.last_seen_ms);
                // A container starting up again (a restart) is not judged
                // by the model: its windows count, nothing escalates.
                if !starting {
                    if x > 0.0 {
                        inc.anomalous_windows = inc.anomalous_windows.saturating_add(1);
                    }
                    note_peak(inc, score, threshold, &w.top_features);
                    let before = inc.severity;
                    inc.recompute_severity();
                    if inc.severity > before && !track.opened_now {
                        track.escalated_now = true;
                    }
                }
                // A rise inside an incident opened otherwise is recorded
                // (its next record carries it), then learned.
                if let Some((r, _)) = rise
                    && inc.rise.is_empty()
                {
                    inc.rise = r.features();
                }
            }
            None => {
                // The baseline learns windows outside incidents, each
                // clipped at its own bar so a jump is judged, not absorbed.
                let clipped = match track.baseline {
                    Some(b) => x.min(b + own_bar),
                    None => x,
                };
                track.baseline_n = track.baseline_n.saturating_add(1);
                let alpha = cfg.baseline_alpha.max(1.0 / track.baseline_n as f32);
                track.baseline = Some(match track.baseline {
                    Some(b) => b + alpha * (clipped - b),
                    None => clipped,
                });
                if warm && track.cusum >= cfg.open_bound {
                    // Named after the view that gave most of the evidence.
                    let opened_by = if 2.0 * track.cusum_rise > track.cusum {
                        OpenReason::OwnHistory
                    } else {
                        OpenReason::Evidence
                    };
                    let mut inc = Incident {
                        container: w.container.clone(),
                        opened_ms: now_ms,
                        last_seen_ms: now_ms,
                        closed_ms: None,
                        severity: Severity::Medium,
                        opened_by,
                        close_reason: None,
                        windows: 1,
                        anomalous_windows: u32::from(x > 0.0),
                        peak: None,
                        top_features: Vec::new(),
                        rise: rise.map(|(r, _)| r.features()).unwrap_or_default(),
                        rules: Vec::new(),
                        evidence: track.cusum,
                        seq: 0,
                    };
                    note_peak(&mut inc, score, threshold, &w.top_features);
                    inc.recompute_severity();
                    track.open = Some(inc);
                    track.opened_now = true;
                }
            }
        }
        // The history learns every window but those whose rise counts as
        // evidence, until that rise is recorded in an open incident: a
        // lasting change is reported once, then it is the container's own.
        if let Some(u) = usage {
            let reported = track.open.as_ref().is_some_and(|i| !i.rise.is_empty());
            let keep = rise.is_none() || reported;
            track.history.learn(&u, keep, cfg.history_windows);
        }
    }

    fn hit(&mut self, now_ms: u64, h: &RuleHit, out: &mut Vec<IncidentEvent>) {
        let track = self.track_mut(&h.container.0, out);
        track.evidence_now = true;
        let rule = IncidentRule {
            id: h.rule.id.to_string(),
            severity: h.rule.severity,
            description: h.rule.description.to_string(),
            event: h.event.clone(),
            first_ms: h.ts_ms,
            count: h.count,
        };
        match track.open.as_mut() {
            Some(inc) => {
                inc.last_seen_ms = inc.last_seen_ms.max(h.ts_ms).max(now_ms);
                let room = inc.rules.len() < MAX_RULES_PER_INCIDENT;
                match inc.rules.iter_mut().find(|r| r.id == rule.id) {
                    Some(r) => r.count = r.count.saturating_add(rule.count),
                    None if room => inc.rules.push(rule),
                    None => {}
                }
                let before = inc.severity;
                inc.recompute_severity();
                if inc.severity > before && !track.opened_now {
                    track.escalated_now = true;
                }
            }
            None => {
                let mut inc = Incident {
                    container: h.container.0.clone(),
                    opened_ms: h.ts_ms.min(now_ms),
                    last_seen_ms: now_ms,
                    closed_ms: None,
                    severity: rule.severity,
                    opened_by: OpenReason::Rule,
                    close_reason: None,
                    windows: 0,
                    anomalous_windows: 0,
                    peak: None,
                    top_features: Vec::new(),
                    rise: Vec::new(),
                    rules: vec![rule],
                    evidence: track.cusum,
                    seq: 0,
                };
                inc.recompute_severity();
                track.open = Some(inc);
                track.opened_now = true;
            }
        }
    }

    fn finish_tick(&mut self, now_ms: u64, out: &mut Vec<IncidentEvent>) {
        let cfg = &self.cfg;
        let interval_ms = cfg.update_interval_s.saturating_mul(1000);
        let tick = self.tick;
        let mut forget = Vec::new();
        for (id, t) in self.tracks.iter_mut() {
            let opened = std::mem::take(&mut t.opened_now);
            let escalated = std::mem::take(&mut t.escalated_now);
            let evidence = std::mem::take(&mut t.evidence_now);
            let Some(inc) = t.open.as_mut() else {
                if tick.saturating_sub(t.last_tick) > u64::from(cfg.forget_after_windows) {
                    forget.push(id.clone());
                }
                continue;
            };
            if opened {
                t.quiet = 0;
                self.stats.opened[severity_index(inc.severity)] += 1;
                t.last_record_ms = now_ms;
                t.windows_at_record = inc.windows;
                out.push(IncidentEvent {
                    state: IncidentState::Open,
                    update: None,
                    incident: inc.clone(),
                });
                inc.seq = inc.seq.saturating_add(1);
                continue;
            }
            // Absent this tick, or present and normal by one of the views.
            if evidence {
                t.quiet = 0;
            } else {
                t.quiet = t.quiet.saturating_add(1);
            }
            if t.quiet >= cfg.close_after_windows {
                close_track(t, now_ms, CloseReason::Quiet, &mut self.stats, out);
                continue;
            }
            let periodic = now_ms.saturating_sub(t.last_record_ms) >= interval_ms
                && inc.windows > t.windows_at_record;
            if escalated || periodic {
                self.stats.updates += 1;
                t.last_record_ms = now_ms;
                t.windows_at_record = inc.windows;
                out.push(IncidentEvent {
                    state: IncidentState::Update,
                    update: Some(if escalated {
                        UpdateReason::Escalated
                    } else {
                        UpdateReason::Periodic
                    }),
                    incident: inc.clone(),
                });
                inc.seq = inc.seq.saturating_add(1);
            }
        }
        for id in forget {
            self.tracks.remove(&id);
            self.stats.forgotten += 1;
        }
    }
}

/// Closes `t`'s open incident at `now_ms` for `reason` and resets its
/// evidence.
fn close_track(
    t: &mut Track,
    now_ms: u64,
    reason: CloseReason,
    stats: &mut IncidentStats,
    out: &mut Vec<IncidentEvent>,
) {
    let Some(mut inc) = t.open.take() else {
        return;
    };
    inc.closed_ms = Some(now_ms);
    inc.close_reason = Some(reason);
    stats.closed[severity_index(inc.severity)] += 1;
    out.push(IncidentEvent {
        state: IncidentState::Close,
        update: None,
        incident: inc,
    });
    t.cusum = 0.0;
    t.quiet = 0;
}

fn note_peak(inc: &mut Incident, score: f32, threshold: f32, top: &[(String, f32)]) {
    let ratio = score / threshold;
    let better = inc.peak.is_none_or(|(s, t)| ratio > s / t);
    if better {
        inc.peak = Some((score, threshold));
        inc.top_features = top.to_vec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::rules::RULES;
    use crate::telemetry::ContainerId;
    use proptest::prelude::*;

    const T: f32 = 1.0;

    fn verdict(c: &str, score: f32) -> WindowVerdict {
        WindowVerdict {
            container: c.into(),
            score: Some((score, T)),
            top_features: vec![("cpu_usage".into(), score)],
            features: None,
            restarted: false,
        }
    }

    fn rule_hit(c: &str, rule: &str, ts_ms: u64) -> RuleHit {
        RuleHit {
            rule: RULES.iter().find(|r| r.id == rule).unwrap(),
            container: ContainerId(c.into()),
            ts_ms,
            event: "e".into(),
            count: 1,
        }
    }

    /// The mechanics at a low bound (1.5), so the arithmetic in the tests
    /// stays short.
    fn cfg() -> IncidentConfig {
        IncidentConfig {
            warmup_windows: 3,
            open_bound: 1.5,
            ..IncidentConfig::default()
        }
    }

    /// Feeds `scores` of one container (one per 10 s tick) and returns
    /// (tick index, record) pairs.
    fn feed(tr: &mut IncidentTracker, c: &str, scores: &[f32]) -> Vec<(usize, IncidentEvent)> {
        feed_with(tr, scores.len(), |i| verdict(c, scores[i]))
    }

    /// Feeds `n` windows of one container, the `i`-th made by `window(i)`.
    fn feed_with(
        tr: &mut IncidentTracker,
        n: usize,
        window: impl Fn(usize) -> WindowVerdict,
    ) -> Vec<(usize, IncidentEvent)> {
        let mut out = Vec::new();
        for i in 0..n {
            let now = tr.tick * 10_000 + 10_000;
            for e in tr.step(now, &[window(i)], &[]) {
                out.push((i, e));
            }
        }
        out
    }

    fn states(evs: &[(usize, IncidentEvent)]) -> Vec<(usize, IncidentState)> {
        evs.iter().map(|(i, e)| (*i, e.state)).collect()
    }

    #[test]
    fn sustained_evidence_opens_once_and_closes_after_quiet() {
        let mut tr = IncidentTracker::new(cfg());
        let mut scores = vec![0.3; 20];
        scores.extend([3.0; 10]);
        scores.extend([0.3; 10]);
        let evs = feed(&mut tr, "web", &scores);
        // 3× the threshold: ln 3 − 0.25 = 0.85 per window, bound 1.5: the
        // second attack window opens; six normal windows close.
        assert_eq!(
            states(&evs),
            vec![(21, IncidentState::Open), (35, IncidentState::Close)]
        );
        let open = &evs[0].1.incident;
        assert_eq!(open.opened_by, OpenReason::Evidence);
        assert_eq!(open.severity, Severity::High);
        assert_eq!(open.top_features[0].0, "cpu_usage");
        let closed = &evs[1].1.incident;
        assert_eq!(closed.windows, 15, "9 attack windows + 6 quiet ones");
        assert_eq!(closed.anomalous_windows, 9);
        assert_eq!(closed.peak, Some((3.0, T)));
        assert_eq!(closed.close_reason, Some(CloseReason::Quiet));
        assert_eq!(closed.opened_ms, open.opened_ms);
        assert!(!tr.is_open("web"));
        assert_eq!(tr.stats().opened[severity_index(Severity::High)], 1);
        assert_eq!(tr.stats().closed[severity_index(Severity::High)], 1);
    }

    #[test]
    fn default_bound_needs_sustained_evidence() {
        // Default bound 3: four windows at 3× the threshold, one at 30×.
        let mut tr = IncidentTracker::new(IncidentConfig::default());
        let mut scores = vec![0.3; 20];
        scores.extend([3.0; 5]);
        assert_eq!(
            states(&feed(&mut tr, "a", &scores)),
            vec![(23, IncidentState::Open)]
        );
        let mut tr = IncidentTracker::new(IncidentConfig::default());
        let mut scores = vec![0.3; 20];
        scores.push(30.0);
        assert_eq!(
            states(&feed(&mut tr, "a", &scores)),
            vec![(20, IncidentState::Open)]
        );
    }

    #[test]
    fn marginal_windows_never_open() {
        let mut tr = IncidentTracker::new(cfg());
        // Scores just above the threshold (1.03–1.16×), as benign jobs draw
        // them, and single isolated spikes to 2×.
        let mut scores = Vec::new();
        for i in 0..2000 {
            scores.push(match i % 50 {
                7 => 2.0,
                k if k % 3 == 0 => 1.16,
                k if k % 3 == 1 => 1.03,
                _ => 0.5,
            });
        }
        assert!(feed(&mut tr, "job", &scores).is_empty());
        // A single marginal window after a quiet history does not either.
        let mut tr = IncidentTracker::new(cfg());
        let mut scores = vec![0.3; 20];
        scores.push(1.2);
        scores.extend([0.3; 5]);
        assert!(feed(&mut tr, "job", &scores).is_empty());
    }

    #[test]
    fn own_baseline_raises_the_bar_for_a_noisy_container() {
        // A container whose normal is 1.3× the threshold: the fleet's view
        // alone would accumulate 0.01 per window forever; its own bar is
        // 2.6× (and creeps up while 2.2× lasts), so 2.2× does not open, 8×
        // does within three windows.
        let mut tr = IncidentTracker::new(cfg());
        let mut scores = vec![1.3; 100];
        scores.extend([2.2; 30]);
        assert!(feed(&mut tr, "cache", &scores).is_empty());
        let evs = feed(&mut tr, "cache", &[8.0, 8.0, 8.0]);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].1.state, IncidentState::Open);
        // Without the own baseline (factor 1 and the cap reached it) the
        // same history opens: the test can tell the two apart.
        let mut fleet_only = IncidentTracker::new(IncidentConfig {
            baseline_factor: 1.0,
            slack: 0.0,
            ..cfg()
        });
        let mut scores = vec![0.3; 20];
        scores.extend([2.2; 5]);
        assert!(!feed(&mut fleet_only, "cache", &scores).is_empty());
    }

    #[test]
    fn a_slow_drift_is_learned_not_flagged() {
        let mut tr = IncidentTracker::new(cfg());
        // From 0.3× to 3× the threshold over 2000 windows (5.5 h).
        let scores: Vec<f32> = (0..2000)
            .map(|i| 0.3 * 10f32.powf(i as f32 / 2000.0))
            .collect();
        assert!(feed(&mut tr, "cache", &scores).is_empty());
    }

    #[test]
    fn rule_hit_opens_at_once_even_in_warm_up_and_escalates() {
        let mut tr = IncidentTracker::new(cfg());
        // First tick of a new container: a stratum connection (high).
        let evs = tr.step(
            10_000,
            &[verdict("miner", 0.2)],
            &[rule_hit("miner", "stratum_port", 9_500)],
        );
        assert_eq!(evs.len(), 1);
        let inc = &evs[0].incident;
        assert_eq!(
            (evs[0].state, inc.opened_by),
            (IncidentState::Open, OpenReason::Rule)
        );
        assert_eq!((inc.severity, inc.opened_ms), (Severity::High, 9_500));
        assert_eq!(inc.rules[0].id, "stratum_port");
        assert!(evs[0].triggers_response());
        // The same rule again: no record. A critical rule: escalation.
        assert!(
            tr.step(20_000, &[], &[rule_hit("miner", "stratum_port", 15_000)])
                .is_empty()
        );
        let evs = tr.step(30_000, &[], &[rule_hit("miner", "miner_binary", 25_000)]);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].state, IncidentState::Update);
        assert_eq!(evs[0].update, Some(UpdateReason::Escalated));
        assert!(evs[0].triggers_response());
        let inc = &evs[0].incident;
        assert_eq!(inc.severity, Severity::Critical);
        assert_eq!(
            inc.rules
                .iter()
                .map(|r| (r.id.as_str(), r.count))
                .collect::<Vec<_>>(),
            vec![("stratum_port", 2), ("miner_binary", 1)]
        );
        assert_eq!(inc.seq, 1, "second record of the incident");
        // Gone: closes after close_after_windows ticks without it.
        let mut closes = Vec::new();
        for k in 0..6 {
            closes.extend(tr.step(40_000 + k * 10_000, &[], &[]));
        }
        assert_eq!(closes.len(), 1);
        assert_eq!(closes[0].state, IncidentState::Close);
        assert!(!closes[0].triggers_response());
    }

    #[test]
    fn warm_up_suppresses_model_incidents_only() {
        let mut tr = IncidentTracker::new(IncidentConfig {
            warmup_windows: 5,
            ..cfg()
        });
        // Huge scores from the first window: nothing during warm-up; the
        // baseline learns them but is capped, so the sixth window opens.
        let evs = feed(&mut tr, "new", &[50.0; 8]);
        assert_eq!(states(&evs), vec![(5, IncidentState::Open)]);
        let mut no_warmup = IncidentTracker::new(IncidentConfig {
            warmup_windows: 0,
            ..cfg()
        });
        assert_eq!(
            states(&feed(&mut no_warmup, "new", &[50.0; 2])),
            vec![(0, IncidentState::Open)]
        );
    }

    #[test]
    fn periodic_updates_are_rate_limited() {
        let mut tr = IncidentTracker::new(IncidentConfig {
            update_interval_s: 60,
            ..cfg()
        });
        let mut scores = vec![0.3; 10];
        scores.extend([2.5; 40]); // 400 s of attack at a steady severity
        let evs = feed(&mut tr, "web", &scores);
        let updates = evs
            .iter()
            .filter(|(_, e)| e.state == IncidentState::Update)
            .count();
        assert_eq!(evs[0].1.state, IncidentState::Open);
        assert!((5..=7).contains(&updates), "about one a minute: {updates}");
        assert!(
            evs.iter()
                .all(|(_, e)| e.update != Some(UpdateReason::Escalated))
        );
    }

    #[test]
    fn memory_is_bounded_and_old_containers_are_forgotten() {
        let mut tr = IncidentTracker::new(IncidentConfig {
            max_containers: 8,
            forget_after_windows: 20,
            ..cfg()
        });
        // An incident in "a", then 20 new containers, one per tick.
        tr.step(1, &[], &[rule_hit("a", "setuid_root", 1)]);
        let mut closed = Vec::new();
        for i in 0..20u64 {
            let v = verdict(&format!("c{i}"), 0.2);
            closed.extend(tr.step(2 + i, &[v], &[]));
            assert!(tr.tracked() <= 8);
        }
        assert_eq!(tr.stats().evicted, 13);
        // "a" was closed before it was evicted? It was evicted first or
        // closed by quiet: either way exactly one close record.
        assert_eq!(
            closed
                .iter()
                .filter(|e| e.state == IncidentState::Close && e.incident.container == "a")
                .count(),
            1
        );
        // Unseen for more than forget_after_windows: forgotten.
        for k in 0..25 {
            tr.step(100 + k, &[], &[]);
        }
        assert_eq!(tr.tracked(), 0);
        assert!(tr.stats().forgotten >= 7);
    }

    #[test]
    fn eviction_closes_an_open_incident() {
        let mut tr = IncidentTracker::new(IncidentConfig {
            max_containers: 1,
            ..cfg()
        });
        tr.step(1, &[], &[rule_hit("a", "setuid_root", 1)]);
        let evs = tr.step(2, &[verdict("b", 0.1)], &[]);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].state, IncidentState::Close);
        assert_eq!(evs[0].incident.close_reason, Some(CloseReason::Evicted));
        assert_eq!(tr.tracked(), 1);
    }

    #[test]
    fn bad_scores_are_counted_and_ignored() {
        let mut tr = IncidentTracker::new(cfg());
        let mut evs: Vec<IncidentEvent> = feed(
            &mut tr,
            "x",
            &[f32::NAN, f32::INFINITY, -1.0, 0.3, 0.3, 0.3],
        )
        .into_iter()
        .map(|(_, e)| e)
        .collect();
        evs.extend(tr.step(
            70_000,
            &[WindowVerdict {
                container: "x".into(),
                score: Some((1.0, 0.0)),
                top_features: vec![],
                features: None,
                restarted: false,
            }],
            &[],
        ));
        assert!(evs.is_empty());
        assert_eq!(tr.stats().bad_scores, 4);
    }

    #[test]
    fn same_inputs_same_records() {
        let run = || {
            let mut tr = IncidentTracker::new(cfg());
            let mut all = Vec::new();
            for i in 0..300u64 {
                let s = if (100..130).contains(&i) {
                    4.0
                } else {
                    0.2 + (i % 7) as f32 * 0.1
                };
                let hits = if i == 200 {
                    vec![rule_hit("b", "shadow_read", i)]
                } else {
                    vec![]
                };
                all.extend(tr.step(i * 10_000, &[verdict("a", s), verdict("b", 0.3)], &hits));
            }
            all
        };
        let (a, b) = (run(), run());
        assert_eq!(a, b);
        // a: open, one periodic update (300 s), close; b: open (rule), close.
        assert_eq!(a.len(), 5, "{a:?}");
    }

    fn restart(tr: &IncidentTracker) -> (IncidentTracker, RestoreStats) {
        let bytes = serde_json::to_vec(&tr.snapshot()).unwrap();
        let snap: TrackerSnapshot = serde_json::from_slice(&bytes).unwrap();
        IncidentTracker::restore(tr.config().clone(), snap).unwrap()
    }

    #[test]
    fn a_restart_neither_pages_again_nor_loses_the_close() {
        let mut tr = IncidentTracker::new(cfg());
        let before = feed(&mut tr, "a", &[0.5, 0.5, 0.5, 0.5, 4.0, 4.0]);
        assert_eq!(states(&before), [(5, IncidentState::Open)]);
        let opened = before[0].1.incident.clone();
        let (mut tr, st) = restart(&tr);
        assert_eq!((st.restored, st.dropped, st.repaired), (1, 0, 0));
        assert!(tr.is_open("a"));
        // Still attacked, then quiet: no second open; one close of the
        // same incident (same opening time, so the same incident id).
        let after = feed(&mut tr, "a", &[4.0, 4.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]);
        assert_eq!(states(&after), [(7, IncidentState::Close)]);
        let closed = &after[0].1.incident;
        assert_eq!(closed.opened_ms, opened.opened_ms);
        assert_eq!(closed.windows, 9);
        assert!(closed.seq > opened.seq);
        // A known container has no second warm-up: a jump right after a
        // restart is judged at once (a new tracker would wait 3 windows).
        let mut tr = IncidentTracker::new(cfg());
        feed(&mut tr, "b", &[0.5; 5]);
        let (mut tr, _) = restart(&tr);
        assert_eq!(
            states(&feed(&mut tr, "b", &[9.0])),
            [(0, IncidentState::Open)]
        );
        let mut fresh = IncidentTracker::new(cfg());
        assert!(feed(&mut fresh, "b", &[9.0]).is_empty());
    }

    /// `tr` stopped, then restarted `gap` windows of 10 s later than its
    /// next window: the first tick after the restart.
    fn restart_after(
        tr: &IncidentTracker,
        gap: u64,
        c: &str,
        score: f32,
    ) -> (IncidentTracker, Vec<IncidentEvent>) {
        let (mut tr2, _) = restart(tr);
        let now = tr.last_step_ms + (gap + 1) * 10_000;
        let out = tr2.step(now, &[verdict(c, score)], &[]);
        (tr2, out)
    }

    #[test]
    fn a_downtime_counts_as_quiet_and_a_long_one_ends_the_incident() {
        let mut tr = IncidentTracker::new(cfg());
        let before = feed(&mut tr, "a", &[0.5, 0.5, 0.5, 0.5, 4.0, 4.0]);
        assert_eq!(states(&before), [(5, IncidentState::Open)]);
        let close_after = u64::from(cfg().close_after_windows);
        assert!(close_after >= 3);

        // Down for fewer windows than the quiet period: the incident goes
        // on and closes after the rest of it, as if the node had seen the
        // container absent.
        let (mut short, out) = restart_after(&tr, close_after - 2, "a", 0.5);
        assert!(out.is_empty(), "{out:?}");
        assert!(short.is_open("a"));
        let out = feed(&mut short, "a", &[0.5]);
        assert_eq!(states(&out), [(0, IncidentState::Close)]);
        assert_eq!(out[0].1.incident.close_reason, Some(CloseReason::Quiet));

        // Down for the whole quiet period while the container is attacked
        // again: the old incident ends at the restart and the new attack
        // opens a new one (a new page) instead of hiding inside it.
        let (mut long, out) = restart_after(&tr, close_after, "a", 4.0);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].state, IncidentState::Close);
        assert_eq!(out[0].incident.close_reason, Some(CloseReason::Restart));
        assert_eq!(out[0].incident.opened_ms, before[0].1.incident.opened_ms);
        let again = feed(&mut long, "a", &[4.0, 4.0]);
        let opened: Vec<_> = again
            .iter()
            .filter(|(_, e)| e.state == IncidentState::Open)
            .collect();
        assert_eq!(opened.len(), 1, "{again:?}");
        assert!(opened[0].1.incident.opened_ms > before[0].1.incident.last_seen_ms);
        assert_eq!(long.stats().closed.iter().sum::<u64>(), 1);

        // A clock behind the snapshot's (a synthetic source starts again
        // at its first window): the restored times mean nothing, so the
        // incident ends.
        let (mut back, _) = restart(&tr);
        let out = back.step(10_000, &[verdict("a", 0.5)], &[]);
        assert_eq!(
            states(&out.into_iter().map(|e| (0, e)).collect::<Vec<_>>()),
            [(0, IncidentState::Close)]
        );
        assert!(!back.is_open("a"));

        // A long downtime ages the containers not seen since: they are
        // forgotten as if the node had kept running.
        let mut tr = IncidentTracker::new(cfg());
        feed(&mut tr, "b", &[0.5; 3]);
        let forget = u64::from(cfg().forget_after_windows);
        let (tr2, _) = restart_after(&tr, forget + 1, "c", 0.5);
        assert!(tr2.tracks.contains_key("c"));
        assert!(!tr2.tracks.contains_key("b"));
    }

    #[test]
    fn restore_keeps_the_newest_and_names_each_incident_by_its_key() {
        let mut tr = IncidentTracker::new(cfg());
        feed(&mut tr, "a", &[0.5, 0.5, 0.5, 0.5, 4.0, 4.0]);
        let mut snap = tr.snapshot();
        // A stored incident whose name disagrees with its key takes the
        // key's; counters at their end saturate instead of wrapping.
        let t = snap.tracks.get_mut("a").unwrap();
        let inc = t.open.as_mut().unwrap();
        inc.container = "someone-else".into();
        inc.seq = u32::MAX;
        inc.windows = u32::MAX;
        snap.tick = u64::MAX;
        // Equally recent containers beyond the bound: the lowest ids go,
        // as eviction would drop them.
        for id in ["x1", "x2", "x3"] {
            snap.tracks.insert(
                id.into(),
                Track {
                    last_tick: 1,
                    ..Track::default()
                },
            );
        }
        let cfg3 = IncidentConfig {
            max_containers: 3,
            ..cfg()
        };
        let (mut tr2, st) = IncidentTracker::restore(cfg3, snap).unwrap();
        assert_eq!((st.restored, st.dropped, st.open_dropped), (3, 1, 0));
        let kept: Vec<&String> = tr2.tracks.keys().collect();
        assert_eq!(kept, ["a", "x2", "x3"]);
        assert_eq!(tr2.open_incident("a").unwrap().container, "a");
        let out = tr2.step(u64::MAX, &[verdict("a", 4.0)], &[]);
        assert!(out.iter().all(|e| e.incident.container == "a"));
        tr2.step(u64::MAX, &[verdict("a", 4.0)], &[]);
    }

    #[test]
    fn restore_drops_what_is_not_finite_and_keeps_the_bounds() {
        let mut tr = IncidentTracker::new(IncidentConfig {
            max_containers: 3,
            ..cfg()
        });
        for (i, s) in [0.5, 0.5, 0.5, 0.5, 4.0, 4.0].into_iter().enumerate() {
            let all = [verdict("a", s), verdict("b", s), verdict("c", s)];
            tr.step(i as u64 * 10_000, &all, &[]);
        }
        assert_eq!(tr.open_count(), 3);
        let mut snap = tr.snapshot();
        snap.tracks.get_mut("a").unwrap().cusum = f32::NAN;
        let b = snap.tracks.get_mut("b").unwrap();
        b.cusum = 1e9;
        b.last_tick = u64::MAX;
        let inc = b.open.as_mut().unwrap();
        inc.rules = (0..40)
            .map(|i| IncidentRule {
                id: format!("r{i}"),
                severity: Severity::High,
                description: "x".repeat(5000),
                event: "é".repeat(3000),
                first_ms: 0,
                count: 1,
            })
            .collect();
        inc.closed_ms = Some(1);
        snap.tracks.insert("d".into(), Track::default());
        snap.tracks.insert("e".into(), Track::default());
        let (tr2, st) = IncidentTracker::restore(
            IncidentConfig {
                max_containers: 2,
                ..cfg()
            },
            snap.clone(),
        )
        .unwrap();
        // a: NaN; of b, c, d, e the two most recently seen stay (b's tick
        // clamped to the tracker's). a's open incident is lost and said so.
        assert_eq!((st.restored, st.dropped, st.repaired), (2, 3, 1));
        assert_eq!(st.open_dropped, 1);
        assert_eq!(tr2.tracked(), 2);
        let b = &tr2.tracks["b"];
        assert_eq!(b.cusum, cfg().open_bound * CUSUM_CAP_FACTOR);
        assert_eq!(b.last_tick, snap.tick);
        let inc = b.open.as_ref().unwrap();
        assert_eq!(inc.rules.len(), MAX_RULES_PER_INCIDENT);
        assert!(
            inc.rules
                .iter()
                .all(|r| r.description.len() <= 1024 && r.event.len() <= 1024)
        );
        assert_eq!(inc.closed_ms, None);
        snap.version = 9;
        assert_eq!(
            IncidentTracker::restore(cfg(), snap).unwrap_err(),
            RestoreError::Version(9)
        );
    }

    /// One window of a busy container (CPU near its 4-core limit, 40
    /// processes, 8 GiB), the fleet model's score at 0.3 × the threshold;
    /// `miner` adds what a miner does to it.
    fn busy(i: usize, miner: bool) -> WindowVerdict {
        use crate::detection::features::idx;
        let wiggle = (i % 5) as f32 / 4.0 - 0.5;
        let mut f = [0.0f32; NUM_FEATURES];
        f[idx::CPU_CORES] = 3.3 + 0.1 * wiggle;
        f[idx::THROTTLE_RATIO] = 0.2 + 0.05 * wiggle;
        f[idx::MEMORY] = (8192.0f32 + 40.0 * wiggle).ln_1p();
        f[idx::PIDS] = (40.0f32 + 2.0 * wiggle).ln_1p();
        if miner {
            f[idx::CPU_CORES] = 3.95;
            f[idx::THROTTLE_RATIO] = 0.9;
            f[idx::MEMORY] = (8192.0f32 + 264.0).ln_1p();
            f[idx::PIDS] = 45.0f32.ln_1p();
        }
        WindowVerdict {
            container: "ml".into(),
            score: Some((0.3, T)),
            top_features: Vec::new(),
            features: Some(f),
            restarted: false,
        }
    }

    fn feed_busy(tr: &mut IncidentTracker, miner: &[bool]) -> Vec<(usize, IncidentEvent)> {
        feed_with(tr, miner.len(), |i| busy(i, miner[i]))
    }

    #[test]
    fn a_rise_beyond_the_containers_own_windows_opens_one_incident() {
        let mut tr = IncidentTracker::new(IncidentConfig::default());
        // 40 normal windows, one odd window, 10 normal, then a miner.
        let mut miner = vec![false; 40];
        miner.push(true);
        miner.extend([false; 10]);
        miner.extend([true; 20]);
        miner.extend([false; 20]);
        let evs = feed_busy(&mut tr, &miner);
        // The fleet model never sees it (0.3 × the threshold); one odd
        // window alone opens nothing; the miner (from window 51) opens one
        // incident in its second window, by the container's own history (a
        // rise counts at most half the bound a window, never all of it).
        let opened: Vec<&IncidentEvent> = evs
            .iter()
            .filter(|(_, e)| e.state == IncidentState::Open)
            .map(|(_, e)| e)
            .collect();
        assert_eq!(opened.len(), 1, "{evs:?}");
        assert_eq!(evs[0].0, 52, "{evs:?}");
        let inc = &opened[0].incident;
        assert_eq!(inc.opened_by, OpenReason::OwnHistory);
        let names: Vec<&str> = inc.rise.iter().map(|(n, _)| n.as_str()).collect();
        assert!(
            names.contains(&"cpu_cores") && names.contains(&"log1p_pids"),
            "{names:?}"
        );
        // Once reported, the new level is the container's own: the incident
        // closes after close_after_windows and is not opened again.
        assert!(
            evs.iter()
                .any(|(i, e)| e.state == IncidentState::Close && *i < 51 + 20),
            "{evs:?}"
        );
        let json = serde_json::to_string(inc).unwrap();
        assert!(json.contains("\"opened_by\":\"own_history\""), "{json}");
        assert!(json.contains("\"rise\":[[\""), "{json}");
    }

    #[test]
    fn without_features_or_with_no_history_the_rise_is_not_judged() {
        let mut miner = vec![false; 40];
        miner.extend([true; 20]);
        let mut off = IncidentTracker::new(IncidentConfig {
            history_windows: 0,
            ..IncidentConfig::default()
        });
        assert!(feed_busy(&mut off, &miner).is_empty());
        let mut blind = IncidentTracker::new(IncidentConfig::default());
        for (i, m) in miner.iter().enumerate() {
            let mut v = busy(i, *m);
            v.features = None;
            assert!(blind.step(i as u64 * 10_000 + 10_000, &[v], &[]).is_empty());
        }
        // A non-finite feature skips the window's rise, it does not poison
        // the history.
        let mut tr = IncidentTracker::new(IncidentConfig::default());
        for i in 0..40 {
            let mut v = busy(i, false);
            if i % 7 == 0 {
                v.features.as_mut().unwrap()[0] = f32::NAN;
            }
            assert!(tr.step(i as u64 * 10_000 + 10_000, &[v], &[]).is_empty());
        }
        let evs = feed_busy(&mut tr, &[true; 3]);
        assert_eq!(
            evs.first().map(|(i, e)| (*i, e.state)),
            Some((1, IncidentState::Open))
        );
    }

    #[test]
    fn a_rise_inside_an_incident_opened_otherwise_is_recorded() {
        let mut tr = IncidentTracker::new(IncidentConfig::default());
        let mut evs = Vec::new();
        for i in 0..45 {
            let now = tr.tick * 10_000 + 10_000;
            let hits = if i == 40 {
                vec![rule_hit("ml", "shadow_read", now - 1)]
            } else {
                Vec::new()
            };
            evs.extend(tr.step(now, &[busy(i, i >= 42)], &hits));
        }
        assert_eq!(evs.len(), 1, "{evs:?}");
        assert_eq!(evs[0].incident.opened_by, OpenReason::Rule);
        assert!(evs[0].incident.rise.is_empty());
        let open = tr.open_incident("ml").unwrap();
        assert!(open.rise.iter().any(|(n, _)| n == "cpu_cores"), "{open:?}");
    }

    #[test]
    fn a_restart_inside_an_incident_neither_escalates_nor_ends_it() {
        // A medium incident (windows under twice the threshold).
        let mut tr = IncidentTracker::new(IncidentConfig::default());
        feed(&mut tr, "a", &[0.2; 20]);
        let evs = feed(&mut tr, "a", &[1.9; 12]);
        assert_eq!(evs.len(), 1, "{evs:?}");
        assert_eq!(evs[0].1.incident.severity, Severity::Medium);
        // The restart's first windows score 40x: no escalation.
        let mut out = Vec::new();
        for i in 0..4 {
            let mut v = verdict("a", 40.0);
            v.restarted = i == 0;
            out.extend(tr.step(tr.tick * 10_000 + 10_000, &[v], &[]));
        }
        assert!(out.is_empty(), "{out:?}");
        assert!(tr.is_open("a"));
        assert_eq!(tr.open_incident("a").unwrap().severity, Severity::Medium);
    }

    #[test]
    fn a_restart_under_the_same_id_starts_the_container_up_again() {
        // 20 quiet windows, then the container restarts: its first windows
        // score 40x the threshold (its processes start, its connections
        // open), as a new container's do.
        let run = |flag: bool| {
            let mut tr = IncidentTracker::new(IncidentConfig::default());
            feed(&mut tr, "a", &[0.2; 20]);
            let mut evs = Vec::new();
            let mut starting = Vec::new();
            for i in 0..10 {
                let mut v = verdict("a", if i < 2 { 40.0 } else { 0.2 });
                v.restarted = flag && i == 0;
                evs.extend(tr.step(tr.tick * 10_000 + 10_000, &[v], &[]));
                starting.push(tr.starting_up("a"));
            }
            (evs, starting, tr.stats().restarts)
        };
        let (evs, starting, restarts) = run(true);
        assert!(evs.is_empty(), "{evs:?}");
        assert_eq!(restarts, 1);
        let warmup = IncidentConfig::default().warmup_windows as usize;
        assert!(starting[..warmup].iter().all(|s| *s), "{starting:?}");
        assert!(!starting[warmup..].iter().any(|s| *s), "{starting:?}");
        // Unmarked, the same windows open an incident.
        let (evs, starting, restarts) = run(false);
        assert_eq!(evs.first().map(|e| e.state), Some(IncidentState::Open));
        assert!(!starting.iter().any(|s| *s));
        assert_eq!(restarts, 0);
    }

    #[test]
    fn config_problems_name_the_key() {
        assert!(IncidentConfig::default().problems().is_empty());
        let bad = IncidentConfig {
            open_bound: f32::NAN,
            close_after_windows: 0,
            baseline_alpha: 0.0,
            forget_after_windows: 0,
            history_windows: MIN_HISTORY - 1,
            rise_bar: -1.0,
            ..IncidentConfig::default()
        };
        let p = bad.problems().join("\n");
        for key in [
            "incidents.open_bound",
            "incidents.close_after_windows",
            "incidents.baseline_alpha",
            "incidents.history_windows",
            "incidents.rise_bar",
        ] {
            assert!(p.contains(key), "{p}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn a_restored_tracker_goes_on_as_if_never_stopped(
            steps in proptest::collection::vec(
                (0u8..6, prop_oneof![Just(f32::NAN), 0.0f32..20.0], any::<bool>()),
                2..300),
            cut in any::<proptest::sample::Index>(),
        ) {
            let cfg = IncidentConfig {
                warmup_windows: 2,
                max_containers: 4,
                forget_after_windows: 20,
                close_after_windows: 3,
                update_interval_s: 30,
                ..IncidentConfig::default()
            };
            let at = cut.index(steps.len());
            let run = |tr: &mut IncidentTracker, range: std::ops::Range<usize>| {
                let mut out = Vec::new();
                for (i, (c, s, rule)) in steps[range.clone()].iter().enumerate() {
                    let now = (range.start + i) as u64 * 10_000;
                    let id = format!("c{c}");
                    let hits = if *rule && *c == 0 { vec![rule_hit(&id, "ptrace_attach", now)] } else { vec![] };
                    out.extend(tr.step(now, &[verdict(&id, *s)], &hits));
                }
                out
            };
            let mut whole = IncidentTracker::new(cfg.clone());
            run(&mut whole, 0..at);
            let expected = run(&mut whole, at..steps.len());
            let mut first = IncidentTracker::new(cfg.clone());
            run(&mut first, 0..at);
            let (mut second, st) = restart(&first);
            prop_assert_eq!(st.dropped + st.repaired, 0);
            prop_assert_eq!(run(&mut second, at..steps.len()), expected);
        }

        #[test]
        fn any_stored_bytes_restore_or_fail_cleanly(
            flips in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 0..8),
        ) {
            // A real snapshot with a few bytes changed: mostly still JSON.
            let mut tr = IncidentTracker::new(cfg());
            feed(&mut tr, "a", &[0.5, 0.5, 0.5, 0.5, 4.0, 4.0]);
            let mut bytes = serde_json::to_vec(&tr.snapshot()).unwrap();
            for (at, b) in flips {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            if let Ok(snap) = serde_json::from_slice::<TrackerSnapshot>(&bytes)
                && let Ok((mut tr2, _)) = IncidentTracker::restore(cfg(), snap)
            {
                tr2.step(tr.last_step_ms + 10_000, &[verdict("a", 4.0)], &[]);
            }
        }

        #[test]
        fn any_stored_state_restores_into_the_live_bounds(
            tick in any::<u64>(),
            saved_ms in any::<u64>(),
            step_ms in any::<u64>(),
            tracks in proptest::collection::vec((
                0u8..8,
                any::<u64>(),
                prop_oneof![Just(f32::NAN), Just(f32::INFINITY), any::<f32>(), -5.0f32..50.0],
                proptest::option::of(any::<f32>()),
                any::<u32>(),
                proptest::option::of((any::<u32>(), any::<u32>(), any::<f32>(), any::<u64>())),
            ), 0..12),
            nows in proptest::collection::vec((any::<u64>(), 0.0f32..20.0), 1..6),
        ) {
            let mut snap = TrackerSnapshot { version: SNAPSHOT_VERSION, tick, saved_ms, step_ms, tracks: BTreeMap::new() };
            for (c, last_tick, cusum, baseline, quiet, open) in tracks {
                let open = open.map(|(seq, windows, evidence, last_seen_ms)| Incident {
                    container: format!("other{c}"),
                    opened_ms: 0,
                    last_seen_ms,
                    closed_ms: Some(1),
                    severity: Severity::High,
                    opened_by: OpenReason::Evidence,
                    close_reason: None,
                    windows,
                    anomalous_windows: windows,
                    peak: None,
                    top_features: vec![],
                    rise: vec![],
                    rules: vec![],
                    evidence,
                    seq,
                });
                snap.tracks.insert(format!("c{c}"), Track { last_tick, cusum, baseline, quiet, open, ..Track::default() });
            }
            let cfg4 = IncidentConfig { max_containers: 4, ..cfg() };
            let (mut tr, _) = IncidentTracker::restore(cfg4, snap).unwrap();
            let mut open: std::collections::BTreeSet<String> = tr
                .tracks
                .iter()
                .filter(|(_, t)| t.open.is_some())
                .map(|(k, _)| k.clone())
                .collect();
            let cap = cfg().open_bound * CUSUM_CAP_FACTOR;
            for (now, score) in nows {
                for e in tr.step(now, &[verdict("c1", score)], &[]) {
                    match e.state {
                        IncidentState::Open => prop_assert!(open.insert(e.incident.container.clone())),
                        IncidentState::Update => prop_assert!(open.contains(&e.incident.container)),
                        IncidentState::Close => prop_assert!(open.remove(&e.incident.container)),
                    }
                }
                prop_assert!(tr.tracked() <= 4);
                prop_assert_eq!(tr.open_count(), open.len());
                for (k, t) in &tr.tracks {
                    prop_assert!(t.cusum.is_finite() && (0.0..=cap).contains(&t.cusum));
                    prop_assert!(t.baseline.is_none_or(f32::is_finite));
                    if let Some(inc) = &t.open {
                        prop_assert_eq!(&inc.container, k);
                        prop_assert!(inc.closed_ms.is_none() && inc.evidence.is_finite());
                    }
                }
            }
        }

        #[test]
        fn random_scores_never_panic_and_state_stays_bounded(
            steps in proptest::collection::vec(
                (0u8..12, prop_oneof![
                    Just(f32::NAN), Just(f32::INFINITY), Just(-1.0f32), Just(0.0f32),
                    0.0f32..100.0, Just(f32::MAX), Just(f32::MIN_POSITIVE)
                ], prop_oneof![Just(1.0f32), Just(0.0f32), Just(f32::NAN), 0.001f32..10.0],
                 any::<bool>(), any::<u64>()),
                1..400),
        ) {
            let mut tr = IncidentTracker::new(IncidentConfig {
                warmup_windows: 1,
                max_containers: 5,
                forget_after_windows: 30,
                close_after_windows: 3,
                ..IncidentConfig::default()
            });
            let mut open = std::collections::BTreeSet::new();
            for (c, s, t, rule, now) in steps {
                let id = format!("c{c}");
                let hits = if rule { vec![rule_hit(&id, "ptrace_attach", now)] } else { vec![] };
                let v = WindowVerdict { container: id, score: Some((s, t)), top_features: vec![], features: None, restarted: false };
                for e in tr.step(now, &[v], &hits) {
                    match e.state {
                        // Never two opens without a close in between.
                        IncidentState::Open => prop_assert!(open.insert(e.incident.container.clone())),
                        IncidentState::Update => prop_assert!(open.contains(&e.incident.container)),
                        IncidentState::Close => prop_assert!(open.remove(&e.incident.container)),
                    }
                    prop_assert!(e.incident.rules.len() <= MAX_RULES_PER_INCIDENT);
                    if let Some((p, _)) = e.incident.peak {
                        prop_assert!(p.is_finite());
                    }
                }
                prop_assert!(tr.tracked() <= 5);
                prop_assert_eq!(tr.open_count(), open.len());
                for t in tr.tracks.values() {
                    prop_assert!(t.cusum.is_finite() && t.cusum >= 0.0);
                    prop_assert!(t.baseline.is_none_or(f32::is_finite));
                }
            }
        }
    }

    #[test]
    fn a_container_starts_up_for_its_first_warmup_windows_scored_or_not() {
        let mut tr = IncidentTracker::new(cfg());
        let warmup = tr.config().warmup_windows;
        assert!(tr.starting_up("a"), "unknown");
        for i in 1..=warmup + 1 {
            let score = (i % 2 == 0).then_some((0.1, 1.0));
            let v = WindowVerdict {
                container: "a".into(),
                score,
                top_features: Vec::new(),
                features: None,
                restarted: false,
            };
            tr.step(u64::from(i) * 1000, &[v], &[]);
            assert_eq!(tr.starting_up("a"), i <= warmup, "window {i}");
        }
        // A snapshot keeps it.
        let back = IncidentTracker::restore(cfg(), tr.snapshot()).unwrap().0;
        assert!(!back.starting_up("a"));
    }
}
