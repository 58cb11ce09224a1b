//! The HorizontalPodAutoscaler's pure core: how many replicas a Resource metric asks for, and how
//! many to set once the HPA's `behavior` has had its say. Nothing here does I/O, waits or talks
//! to the apiserver; the HPA loop reads pods and metrics, calls these functions and writes the
//! scale and the status.
//!
//! [`replicas_for`] is kube-controller-manager's `GetResourceReplicas` (Utilization targets) and
//! `GetRawResourceReplicas` (AverageValue targets) from `replica_calculator.go`, including its
//! integer arithmetic: the usage ratio is taken from the utilisation rounded down to a whole
//! percent (or the average rounded down to a whole unit), as Kubernetes does.
//!
//! [`normalize`] is `normalizeDesiredReplicasWithBehaviors` from `horizontal.go`: the
//! recommendation is stabilised over the scale-up and scale-down windows
//! (`stabilizeRecommendationWithBehaviors`), limited by the scaling policies given the scale
//! changes made within each policy's period (`convertDesiredReplicasWithBehaviorRate`), then
//! kept within `[minReplicas, maxReplicas]`. Absent rules take the defaults the apiserver fills
//! in for `autoscaling/v2` (see [`normalize`]); Kubernetes, when `behavior` itself is absent,
//! takes an older path (`normalizeDesiredReplicas`, scale up to `max(2 × current, 4)`), which
//! here is replaced by those same defaults. What a controller remembers between passes lives in
//! a [`History`] the loop keeps per HPA, as Kubernetes keeps it in memory: a restarted
//! controller starts afresh.

use std::fmt;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::autoscaling::v2::{HPAScalingRules, HorizontalPodAutoscalerBehavior};

/// The tolerance Kubernetes applies by default (`--horizontal-pod-autoscaler-tolerance`): a usage
/// ratio within 10% of the target changes nothing.
pub const DEFAULT_TOLERANCE: f64 = 0.1;

/// The scale-down stabilisation window when none is given (kube-controller-manager's
/// `--horizontal-pod-autoscaler-downscale-stabilization`), in seconds.
pub const DEFAULT_SCALE_DOWN_WINDOW_SECONDS: i32 = 300;

// ------------------------------------------------------------------------------------------------
// The replica calculator
// ------------------------------------------------------------------------------------------------

/// One pod of the scale target, as the calculator sees it, for one resource (cpu or memory).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodSample {
    /// Its name as error messages should show it (`namespace/name` reads best).
    pub name: String,
    /// Sum of its containers' requests of the resource (millicores for cpu, bytes for memory);
    /// None if any container has no request for it.
    pub request: Option<i64>,
    /// Its usage from the metrics API in the same unit; None when there is no sample.
    pub usage: Option<i64>,
    /// Its Ready condition is True.
    pub ready: bool,
    /// Being deleted (deletionTimestamp set) or phase Failed: left out entirely.
    pub gone: bool,
}

/// What a Resource metric aims at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// `averageUtilization`: a percentage of the pods' requests.
    Utilization(i32),
    /// `averageValue`: a usage per pod, in the samples' unit.
    AverageValue(i64),
}

/// The calculator's answer for one metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recommendation {
    /// The replicas this metric asks for.
    pub replicas: i32,
    /// Current average utilisation in percent of request (Utilization targets only), computed
    /// over ready pods with metrics, rounded down as Kubernetes does.
    pub utilization: Option<i32>,
    /// Current average usage per pod (same unit as the samples), over ready pods with metrics,
    /// rounded down.
    pub average_value: i64,
}

/// Why no recommendation could be made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CalcError {
    /// No pod is left once deleted and failed pods are set aside.
    NoPods,
    /// No pod has a sample: the metrics API returned nothing for the target's pods.
    NoMetrics,
    /// Samples exist, but only for pods that are not ready.
    NoReadyMetrics,
    /// A pod has no request for the resource, so its utilisation means nothing (Utilization
    /// targets only).
    MissingRequest {
        /// The resource (`cpu`, `memory`).
        resource: String,
        /// The pod's [`PodSample::name`].
        pod: String,
    },
    /// The requests of the pods measured add up to zero (Utilization targets only).
    ZeroRequest {
        /// The resource (`cpu`, `memory`).
        resource: String,
    },
    /// The target is zero or negative (the apiserver's validation forbids it).
    InvalidTarget(i64),
}

impl fmt::Display for CalcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoPods => {
                f.write_str("no pods returned by selector while calculating replica count")
            }
            Self::NoMetrics => f.write_str("no metrics returned from resource metrics API"),
            Self::NoReadyMetrics => {
                f.write_str("did not receive metrics for targeted pods (pods might be unready)")
            }
            Self::MissingRequest { resource, pod } => {
                write!(f, "missing request for {resource} in pod {pod}")
            }
            Self::ZeroRequest { resource } => {
                write!(
                    f,
                    "the requests for {resource} of the pods with metrics add up to zero"
                )
            }
            Self::InvalidTarget(value) => write!(f, "invalid target {value}: must be positive"),
        }
    }
}

impl std::error::Error for CalcError {}

/// Kubernetes' `GetResourceReplicas` (Utilization) and `GetRawResourceReplicas` (AverageValue):
/// the replicas that bring `resource` to `target`, given `current` replicas, the target's pods
/// and the `tolerance` (a ratio, [`DEFAULT_TOLERANCE`] in Kubernetes).
///
/// Pods that are [`gone`](PodSample::gone) are left out. The others fall in three groups: ready
/// pods with a sample are measured; pods without a sample are *missing*; pods with a sample that
/// are not ready are *ignored* and their sample is not used. Kubernetes ignores unready pods for
/// cpu only (their early usage is not representative); here it is done for every resource. A
/// Pending pod, which Kubernetes always ignores, should be passed with `ready: false` and any
/// sample (`Some(0)`), or it counts as missing.
///
/// With Utilization targets every pod left (not only those with samples) needs a request, as in
/// Kubernetes. The usage ratio is the current utilisation (or average) over the target. When no
/// pod is missing, and no pod is ignored or the ratio is not above 1, the answer is `current`
/// within the tolerance and `ceil(ratio × measured pods)` otherwise. Else the missing pods count
/// as using their whole request (the target when it is above 100%; for AverageValue targets the
/// target value) when the ratio is below 1, and nothing when it is above 1; on a scale-up the
/// ignored pods count as using nothing too. The ratio over that larger set decides: `current` if
/// it is within the tolerance, points the other way than the first ratio, or would move the
/// replicas against its own direction; `ceil(new ratio × pods counted)` otherwise. The reported
/// utilisation and average are always those of the measured pods.
pub fn replicas_for(
    resource: &str,
    current: i32,
    pods: &[PodSample],
    target: &Target,
    tolerance: f64,
) -> Result<Recommendation, CalcError> {
    let pods: Vec<&PodSample> = pods.iter().filter(|p| !p.gone).collect();
    if pods.is_empty() {
        return Err(CalcError::NoPods);
    }
    let measure = match *target {
        Target::Utilization(percent) => Measure::Utilization(i64::from(percent)),
        Target::AverageValue(value) => Measure::Average(value),
    };
    let target_value = measure.target();
    if target_value <= 0 {
        return Err(CalcError::InvalidTarget(target_value));
    }
    if !pods.iter().any(|p| p.ready && p.usage.is_some()) {
        return Err(if pods.iter().all(|p| p.usage.is_none()) {
            CalcError::NoMetrics
        } else {
            CalcError::NoReadyMetrics
        });
    }

    // Each pod as (usage, request); requests only matter (and are only required) for
    // Utilization targets.
    let mut measured = Vec::new();
    let mut missing = Vec::new();
    let mut ignored = Vec::new();
    for pod in &pods {
        let request = match measure {
            Measure::Utilization(_) => pod.request.ok_or_else(|| CalcError::MissingRequest {
                resource: resource.to_owned(),
                pod: pod.name.clone(),
            })?,
            Measure::Average(_) => 0,
        };
        match pod.usage {
            None => missing.push(request),
            Some(usage) if pod.ready => measured.push((usage, request)),
            Some(_) => ignored.push(request),
        }
    }

    let first = measure.ratio(&measured, resource)?;
    let answer = |replicas| Recommendation {
        replicas,
        utilization: first.utilization,
        average_value: first.average,
    };
    let ratio = first.ratio;
    let within = |ratio: f64| (1.0 - ratio).abs() <= tolerance;

    let scale_up_with_ignored = !ignored.is_empty() && ratio > 1.0;
    if !scale_up_with_ignored && missing.is_empty() {
        if within(ratio) {
            return Ok(answer(current));
        }
        return Ok(answer(ceil_replicas(ratio * measured.len() as f64)));
    }

    let mut counted = measured;
    if ratio < 1.0 {
        counted.extend(
            missing
                .iter()
                .map(|&request| (measure.fill_down(request), request)),
        );
    } else if ratio > 1.0 {
        counted.extend(missing.iter().map(|&request| (0, request)));
    }
    if scale_up_with_ignored {
        counted.extend(ignored.iter().map(|&request| (0, request)));
    }
    let new_ratio = measure.ratio(&counted, resource)?.ratio;
    if within(new_ratio) || (ratio < 1.0 && new_ratio > 1.0) || (ratio > 1.0 && new_ratio < 1.0) {
        return Ok(answer(current));
    }
    let replicas = ceil_replicas(new_ratio * counted.len() as f64);
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(answer(current));
    }
    Ok(answer(replicas))
}

/// How a target is measured, with its value.
#[derive(Clone, Copy)]
enum Measure {
    /// Percent of the requests.
    Utilization(i64),
    /// Usage per pod.
    Average(i64),
}

/// A measure over a set of pods.
struct Ratio {
    ratio: f64,
    utilization: Option<i32>,
    average: i64,
}

impl Measure {
    fn target(self) -> i64 {
        match self {
            Self::Utilization(target) | Self::Average(target) => target,
        }
    }

    /// `GetResourceUtilizationRatio` / `GetMetricUsageRatio` over `(usage, request)` pairs (not
    /// empty): the ratio is taken from the utilisation or average rounded down, as in Kubernetes.
    fn ratio(self, pods: &[(i64, i64)], resource: &str) -> Result<Ratio, CalcError> {
        let usage: i128 = pods.iter().map(|&(usage, _)| i128::from(usage)).sum();
        let count = i128::try_from(pods.len()).unwrap_or(i128::MAX).max(1);
        let average = saturate_i64(usage / count);
        match self {
            Self::Utilization(target) => {
                let requests: i128 = pods.iter().map(|&(_, request)| i128::from(request)).sum();
                if requests == 0 {
                    return Err(CalcError::ZeroRequest {
                        resource: resource.to_owned(),
                    });
                }
                let utilization = saturate_i32(usage * 100 / requests);
                Ok(Ratio {
                    ratio: f64::from(utilization) / target as f64,
                    utilization: Some(utilization),
                    average,
                })
            }
            Self::Average(target) => Ok(Ratio {
                ratio: average as f64 / target as f64,
                utilization: None,
                average,
            }),
        }
    }

    /// What a missing pod is taken to use on a scale-down: its whole request (or the target
    /// when that is above 100%), or the target value per pod.
    fn fill_down(self, request: i64) -> i64 {
        match self {
            Self::Utilization(target) => {
                saturate_i64(i128::from(request) * i128::from(target.max(100)) / 100)
            }
            Self::Average(target) => target,
        }
    }
}

/// `int32(math.Ceil(x))`, saturating instead of wrapping.
fn ceil_replicas(x: f64) -> i32 {
    // `as` from a float saturates at the bounds and maps NaN to 0.
    x.ceil() as i32
}

fn saturate_i32(x: i128) -> i32 {
    i32::try_from(x).unwrap_or(if x < 0 { i32::MIN } else { i32::MAX })
}

fn saturate_i64(x: i128) -> i64 {
    i64::try_from(x).unwrap_or(if x < 0 { i64::MIN } else { i64::MAX })
}

fn narrow(x: i64) -> i32 {
    i32::try_from(x).unwrap_or(if x < 0 { i32::MIN } else { i32::MAX })
}

// ------------------------------------------------------------------------------------------------
// Behavior: stabilisation windows and scaling policies
// ------------------------------------------------------------------------------------------------

/// What an autoscaler remembers between passes (kept in memory by the loop, per HPA): the
/// recommendations it made and the scale changes it applied, with their times.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Whether [`normalize`] has run once (and remembered the replicas it found).
    seeded: bool,
    /// Unstabilised recommendations: (when, replicas).
    recommendations: Vec<(Timestamp, i32)>,
    /// Scale-ups applied: (when, replicas added).
    scale_ups: Vec<(Timestamp, i32)>,
    /// Scale-downs applied: (when, replicas removed).
    scale_downs: Vec<(Timestamp, i32)>,
}

impl History {
    /// Records that the loop changed the scale from `from` to `to` at `now`, for the scaling
    /// policies of later passes. Equal counts record nothing.
    pub fn record_scale(&mut self, now: Timestamp, from: i32, to: i32) {
        if to > from {
            self.scale_ups.push((now, to.saturating_sub(from)));
        } else if to < from {
            self.scale_downs.push((now, from.saturating_sub(to)));
        }
    }
}

/// Why the outcome differs from what the metrics asked for (the `ScalingLimited` condition).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limited {
    /// `TooFewReplicas`, `TooManyReplicas`, `ScaleUpLimit`, `ScaleDownLimit`, or
    /// `DesiredWithinRange` when not limited.
    pub reason: &'static str,
    /// The condition's message, as Kubernetes words it.
    pub message: String,
}

impl Limited {
    /// Whether the replicas were limited: the `ScalingLimited` condition's status is `True`.
    pub fn is_limited(&self) -> bool {
        self.reason != "DesiredWithinRange"
    }

    fn new(reason: &'static str, message: &str) -> Self {
        Self {
            reason,
            message: message.to_owned(),
        }
    }

    fn within_range() -> Self {
        Self::new(
            "DesiredWithinRange",
            "the desired count is within the acceptable range",
        )
    }

    fn too_many() -> Self {
        Self::new(
            "TooManyReplicas",
            "the desired replica count is more than the maximum replica count",
        )
    }

    fn too_few() -> Self {
        Self::new(
            "TooFewReplicas",
            "the desired replica count is less than the minimum replica count",
        )
    }

    fn scale_up_limit() -> Self {
        Self::new(
            "ScaleUpLimit",
            "the desired replica count is increasing faster than the maximum scale rate",
        )
    }

    fn scale_down_limit() -> Self {
        Self::new(
            "ScaleDownLimit",
            "the desired replica count is decreasing faster than the maximum scale rate",
        )
    }
}

/// The replicas to set: `desired` from the metrics, stabilised over the windows, limited by the
/// policies, then clamped to `[min, max]`. Records `desired` in the history and forgets entries
/// older than the longest window/period.
///
/// Rules absent from `behavior` (or all of it) take the apiserver's defaults: scale-up has no
/// stabilisation window, policies `Pods 4` and `Percent 100` per 15 s and selectPolicy `Max`;
/// scale-down has a window of [`DEFAULT_SCALE_DOWN_WINDOW_SECONDS`], policy `Percent 100` per 15 s
/// and selectPolicy `Max`. An empty policy list counts as absent; policies of an unknown type
/// are skipped; an unknown selectPolicy is `Max`, as in Kubernetes.
///
/// Stabilisation takes the lowest recommendation within the scale-up window and the highest
/// within the scale-down window (each including `desired`), and moves `current` only as far as
/// they agree. A policy allows, from the replicas at the start of its period (`current` minus
/// the replicas added within the period, plus those removed), `Pods n`: n more (fewer);
/// `Percent p`: `ceil(start × (1 + p/100))` up or `floor(start × (1 − p/100))` down. selectPolicy
/// `Max` takes the policy allowing the most change, `Min` the least, `Disabled` forbids that
/// direction. The result never crosses `max` when going up nor `min` when going down, and is
/// finally brought within `[min, max]` if `current` was outside.
///
/// The first call on a fresh [`History`] also remembers `current` as a recommendation made
/// `now`, as Kubernetes does when it first sees an HPA, so that a restarted controller does not
/// scale down before a whole scale-down window has passed.
pub fn normalize(
    now: Timestamp,
    current: i32,
    desired: i32,
    min: i32,
    max: i32,
    behavior: Option<&HorizontalPodAutoscalerBehavior>,
    history: &mut History,
) -> (i32, Limited) {
    let up = Rules::resolve(behavior.and_then(|b| b.scale_up.as_ref()), Direction::Up);
    let down = Rules::resolve(
        behavior.and_then(|b| b.scale_down.as_ref()),
        Direction::Down,
    );

    // Forget what no window or period can reach any more.
    let within = |when: Timestamp, seconds: i64| {
        now.duration_since(when) < SignedDuration::from_secs(seconds)
    };
    let longest_window = up.window.max(down.window);
    history
        .recommendations
        .retain(|&(when, _)| within(when, longest_window));
    let longest_up = up.longest_period();
    history
        .scale_ups
        .retain(|&(when, _)| within(when, longest_up));
    let longest_down = down.longest_period();
    history
        .scale_downs
        .retain(|&(when, _)| within(when, longest_down));
    if !history.seeded {
        history.seeded = true;
        history.recommendations.push((now, current));
    }

    // Stabilise (stabilizeRecommendationWithBehaviors).
    let mut up_recommendation = desired;
    let mut down_recommendation = desired;
    for &(when, replicas) in &history.recommendations {
        if within(when, up.window) {
            up_recommendation = up_recommendation.min(replicas);
        }
        if within(when, down.window) {
            down_recommendation = down_recommendation.max(replicas);
        }
    }
    let mut stabilized = current;
    if stabilized < up_recommendation {
        stabilized = up_recommendation;
    }
    if stabilized > down_recommendation {
        stabilized = down_recommendation;
    }
    history.recommendations.push((now, desired));

    // Limit the rate (convertDesiredReplicasWithBehaviorRate).
    let mut replicas = stabilized;
    let mut limited = Limited::within_range();
    if stabilized > current {
        let limit = up.limit(now, current, history).max(i64::from(current));
        let (allowed, reason) = if i64::from(max) > limit {
            (narrow(limit), Limited::scale_up_limit())
        } else {
            (max, Limited::too_many())
        };
        if stabilized > allowed {
            replicas = allowed;
            limited = reason;
        }
    } else if stabilized < current {
        let limit = down.limit(now, current, history).min(i64::from(current));
        let (allowed, reason) = if i64::from(min) < limit {
            (narrow(limit), Limited::scale_down_limit())
        } else {
            (min, Limited::too_few())
        };
        if stabilized < allowed {
            replicas = allowed;
            limited = reason;
        }
    }

    // Kubernetes' loop handles a current count outside the bounds before normalising; here the
    // bounds are enforced last whatever the path.
    if replicas > max {
        (max, Limited::too_many())
    } else if replicas < min {
        (min, Limited::too_few())
    } else {
        (replicas, limited)
    }
}

/// Which way a set of rules scales.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

/// `selectPolicy`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Select {
    Max,
    Min,
    Disabled,
}

/// One `HPAScalingPolicy` of a known type.
#[derive(Clone, Copy)]
struct Policy {
    /// `Pods` rather than `Percent`.
    pods: bool,
    value: i64,
    period_seconds: i64,
}

/// `HPAScalingRules` with the defaults filled in.
struct Rules {
    direction: Direction,
    window: i64,
    select: Select,
    policies: Vec<Policy>,
}

impl Rules {
    /// The rules for `direction`, Kubernetes' `GenerateHPAScale{Up,Down}Rules` defaults filling
    /// what `given` leaves out.
    fn resolve(given: Option<&HPAScalingRules>, direction: Direction) -> Self {
        let default_window = match direction {
            Direction::Up => 0,
            Direction::Down => i64::from(DEFAULT_SCALE_DOWN_WINDOW_SECONDS),
        };
        let window = given
            .and_then(|r| r.stabilization_window_seconds)
            .map_or(default_window, |w| i64::from(w).max(0));
        let select = match given.and_then(|r| r.select_policy.as_deref()) {
            Some("Min") => Select::Min,
            Some("Disabled") => Select::Disabled,
            _ => Select::Max,
        };
        let mut policies: Vec<Policy> = given
            .and_then(|r| r.policies.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let pods = match p.type_.as_str() {
                    "Pods" => true,
                    "Percent" => false,
                    _ => return None,
                };
                Some(Policy {
                    pods,
                    value: i64::from(p.value),
                    period_seconds: i64::from(p.period_seconds),
                })
            })
            .collect();
        if policies.is_empty() {
            let percent = Policy {
                pods: false,
                value: 100,
                period_seconds: 15,
            };
            policies = match direction {
                Direction::Up => vec![
                    Policy {
                        pods: true,
                        value: 4,
                        period_seconds: 15,
                    },
                    percent,
                ],
                Direction::Down => vec![percent],
            };
        }
        Self {
            direction,
            window,
            select,
            policies,
        }
    }

    fn longest_period(&self) -> i64 {
        self.policies
            .iter()
            .map(|p| p.period_seconds)
            .max()
            .unwrap_or(0)
    }

    /// The most (scale-up) or fewest (scale-down) replicas the policies allow from `current`
    /// (`calculateScaleUpLimitWithScalingRules`, `calculateScaleDownLimitWithBehaviors`).
    fn limit(&self, now: Timestamp, current: i32, history: &History) -> i64 {
        let current = i64::from(current);
        if self.select == Select::Disabled {
            return current;
        }
        let changed = |events: &[(Timestamp, i32)], period: i64| -> i64 {
            events
                .iter()
                .filter(|&&(when, _)| now.duration_since(when) < SignedDuration::from_secs(period))
                .map(|&(_, replicas)| i64::from(replicas))
                .sum()
        };
        let proposals = self.policies.iter().map(|policy| {
            let start = current - changed(&history.scale_ups, policy.period_seconds)
                + changed(&history.scale_downs, policy.period_seconds);
            let fraction = policy.value as f64 / 100.0;
            match (self.direction, policy.pods) {
                (Direction::Up, true) => start.saturating_add(policy.value),
                (Direction::Up, false) => (start as f64 * (1.0 + fraction)).ceil() as i64,
                (Direction::Down, true) => start.saturating_sub(policy.value),
                (Direction::Down, false) => (start as f64 * (1.0 - fraction)).floor() as i64,
            }
        });
        // Max means the most permissive policy: the highest limit up, the lowest down.
        let most = matches!(
            (self.select, self.direction),
            (Select::Max, Direction::Up) | (Select::Min, Direction::Down)
        );
        let chosen = if most {
            proposals.max()
        } else {
            proposals.min()
        };
        chosen.unwrap_or(current)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests assert on known values")]
mod tests {
    use k8s_openapi::api::autoscaling::v2::HPAScalingPolicy;

    use super::*;

    // --- the replica calculator ---------------------------------------------------------------

    /// A ready pod with a sample.
    fn ready(name: &str, request: i64, usage: i64) -> PodSample {
        PodSample {
            name: name.to_owned(),
            request: Some(request),
            usage: Some(usage),
            ready: true,
            gone: false,
        }
    }

    /// A pod with a sample whose Ready condition is not True.
    fn unready(name: &str, request: i64, usage: i64) -> PodSample {
        PodSample {
            ready: false,
            ..ready(name, request, usage)
        }
    }

    /// A ready pod without a sample.
    fn missing(name: &str, request: i64) -> PodSample {
        PodSample {
            usage: None,
            ..ready(name, request, 0)
        }
    }

    /// A deleted or failed pod.
    fn gone(name: &str, request: i64, usage: i64) -> PodSample {
        PodSample {
            gone: true,
            ready: false,
            ..ready(name, request, usage)
        }
    }

    /// Ready pods requesting one cpu each, with these usages in millicores.
    fn cpus(usages: &[i64]) -> Vec<PodSample> {
        usages
            .iter()
            .enumerate()
            .map(|(i, &usage)| ready(&format!("default/web-{i}"), 1000, usage))
            .collect()
    }

    fn ok(
        replicas: i32,
        utilization: Option<i32>,
        average_value: i64,
    ) -> Result<Recommendation, CalcError> {
        Ok(Recommendation {
            replicas,
            utilization,
            average_value,
        })
    }

    /// A name, the current replicas, the pods, the target and the answer expected.
    type CalcCase = (
        &'static str,
        i32,
        Vec<PodSample>,
        Target,
        Result<Recommendation, CalcError>,
    );

    /// Cases follow kube-controller-manager's replica_calculator_test.go (named after the
    /// `TestReplicaCalc…` function) with one container per pod.
    #[test]
    fn replicas_for_cases() {
        use Target::{AverageValue, Utilization};
        let cases: Vec<CalcCase> = vec![
            (
                "within tolerance keeps current (Tolerance)",
                3,
                vec![
                    ready("a", 900, 1010),
                    ready("b", 1000, 1030),
                    ready("c", 1100, 1020),
                ],
                Utilization(100),
                ok(3, Some(102), 1020),
            ),
            (
                "scale up rounds up (ScaleUp)",
                3,
                cpus(&[300, 500, 700]),
                Utilization(30),
                ok(5, Some(50), 500),
            ),
            (
                "scale down (ScaleDown)",
                5,
                cpus(&[100, 300, 500, 250, 250]),
                Utilization(50),
                ok(3, Some(28), 280),
            ),
            (
                "deleted and failed pods are left out (ScaleUpIgnoresFailedPods)",
                2,
                vec![
                    ready("a", 1000, 500),
                    ready("b", 1000, 700),
                    gone("c", 1000, 0),
                    PodSample {
                        usage: None,
                        ..gone("d", 1000, 0)
                    },
                ],
                Utilization(30),
                ok(4, Some(60), 600),
            ),
            (
                "unready pods count as using nothing on scale up (ScaleUpUnreadyLessScale)",
                3,
                vec![
                    unready("a", 1000, 300),
                    ready("b", 1000, 500),
                    ready("c", 1000, 700),
                ],
                Utilization(30),
                ok(4, Some(60), 600),
            ),
            (
                "unready pods turning the scale-up into a scale-down keep current (ScaleUpUnreadyNoScale)",
                3,
                vec![
                    ready("a", 1000, 400),
                    unready("b", 1000, 500),
                    unready("c", 1000, 700),
                ],
                Utilization(30),
                ok(3, Some(40), 400),
            ),
            (
                "unready pods are left out on scale down (ScaleDownExcludeUnreadyPods)",
                5,
                vec![
                    ready("a", 1000, 100),
                    ready("b", 1000, 300),
                    ready("c", 1000, 500),
                    unready("d", 1000, 250),
                    unready("e", 1000, 250),
                ],
                Utilization(50),
                ok(2, Some(30), 300),
            ),
            (
                "pending pods passed unready with a zero sample are left out (ScaleDownExcludeUnscheduledPods)",
                5,
                vec![
                    ready("a", 1000, 100),
                    unready("b", 1000, 0),
                    unready("c", 1000, 0),
                    unready("d", 1000, 0),
                    unready("e", 1000, 0),
                ],
                Utilization(50),
                ok(1, Some(10), 100),
            ),
            (
                "missing pods count as using their request on scale down (MissingMetrics)",
                4,
                vec![
                    ready("a", 1000, 400),
                    ready("b", 1000, 95),
                    missing("c", 1000),
                    missing("d", 1000),
                ],
                Utilization(100),
                ok(3, Some(24), 247),
            ),
            (
                "missing pods count as using nothing on scale up",
                3,
                vec![
                    ready("a", 1000, 2000),
                    ready("b", 1000, 2000),
                    missing("c", 1000),
                ],
                Utilization(50),
                // 4000 m of 3000 m is 133%: 133/50 × 3 = 7.98.
                ok(8, Some(200), 2000),
            ),
            (
                "missing pods bring a scale-up within tolerance (MissingMetricsNoChangeGt)",
                2,
                vec![ready("a", 1000, 1900), missing("b", 1000)],
                Utilization(100),
                ok(2, Some(190), 1900),
            ),
            (
                "missing and unready pods on scale up (MissingMetricsUnreadyScaleUp)",
                3,
                vec![
                    unready("a", 1000, 100),
                    ready("b", 1000, 2000),
                    missing("c", 1000),
                ],
                Utilization(50),
                ok(4, Some(200), 2000),
            ),
            (
                "missing pods on scale down beside unready ones (MissingMetricsUnreadyScaleDown)",
                4,
                vec![
                    unready("a", 1000, 100),
                    ready("b", 1000, 100),
                    ready("c", 1000, 100),
                    missing("d", 1000),
                ],
                Utilization(50),
                ok(3, Some(10), 100),
            ),
            (
                "missing pods flipping the direction keep current (MissingMetricsUnreadyChange)",
                3,
                vec![
                    unready("a", 1000, 100),
                    ready("b", 1000, 450),
                    missing("c", 1000),
                ],
                Utilization(50),
                ok(3, Some(45), 450),
            ),
            (
                "a scale-down that would add replicas keeps current (DuringRollingUpdateWithMaxSurge)",
                2,
                vec![
                    ready("a", 1000, 100),
                    ready("b", 1000, 100),
                    missing("c", 1000),
                ],
                Utilization(50),
                ok(2, Some(10), 100),
            ),
            (
                "missing pods use the target when it is above 100% (MissingMetricsScaleDownTargetOver100)",
                4,
                vec![
                    unready("a", 1000, 200),
                    ready("b", 1000, 100),
                    ready("c", 2000, 100),
                    missing("d", 2000),
                ],
                Utilization(300),
                ok(2, Some(6), 100),
            ),
            (
                "average value scale up (ScaleUpCM)",
                3,
                vec![
                    ready("a", 0, 20000),
                    ready("b", 0, 10000),
                    ready("c", 0, 30000),
                ],
                AverageValue(15000),
                ok(4, None, 20000),
            ),
            (
                "average value scale down (ScaleDownCM)",
                5,
                (0..5).map(|i| ready(&format!("p{i}"), 0, 12000)).collect(),
                AverageValue(20000),
                ok(3, None, 12000),
            ),
            (
                "average value within tolerance (ToleranceCM)",
                3,
                vec![
                    ready("a", 0, 20000),
                    ready("b", 0, 21000),
                    ready("c", 0, 21000),
                ],
                AverageValue(20000),
                ok(3, None, 20666),
            ),
            (
                "average value needs no request; missing pods use the target on scale down",
                3,
                vec![
                    PodSample {
                        request: None,
                        ..ready("a", 0, 5000)
                    },
                    PodSample {
                        request: None,
                        ..ready("b", 0, 5000)
                    },
                    PodSample {
                        request: None,
                        ..missing("c", 0)
                    },
                ],
                AverageValue(10000),
                // (5000 + 5000 + 10000) / 3 = 6666: 0.6666 × 3 = 1.9998.
                ok(2, None, 5000),
            ),
            (
                "no pods",
                1,
                vec![],
                Utilization(50),
                Err(CalcError::NoPods),
            ),
            (
                "only gone pods",
                1,
                vec![gone("a", 1000, 100)],
                Utilization(50),
                Err(CalcError::NoPods),
            ),
            (
                "no metrics (EmptyMetrics)",
                4,
                vec![missing("a", 1000), missing("b", 1000)],
                Utilization(100),
                Err(CalcError::NoMetrics),
            ),
            (
                "metrics only for unready pods",
                2,
                vec![unready("a", 1000, 100), missing("b", 1000)],
                Utilization(100),
                Err(CalcError::NoReadyMetrics),
            ),
            (
                "missing request names the pod (EmptyCPURequest)",
                2,
                vec![
                    ready("default/web-0", 1000, 200),
                    PodSample {
                        request: None,
                        ..missing("default/web-1", 0)
                    },
                ],
                Utilization(100),
                Err(CalcError::MissingRequest {
                    resource: "cpu".into(),
                    pod: "default/web-1".into(),
                }),
            ),
            (
                "requests adding up to zero",
                1,
                vec![ready("a", 0, 100)],
                Utilization(100),
                Err(CalcError::ZeroRequest {
                    resource: "cpu".into(),
                }),
            ),
            (
                "zero target",
                1,
                cpus(&[100]),
                AverageValue(0),
                Err(CalcError::InvalidTarget(0)),
            ),
        ];
        for (name, current, pods, target, want) in cases {
            let got = replicas_for("cpu", current, &pods, &target, DEFAULT_TOLERANCE);
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn calc_error_messages() {
        let cases = [
            (
                CalcError::MissingRequest {
                    resource: "cpu".into(),
                    pod: "default/web-1".into(),
                },
                "missing request for cpu in pod default/web-1",
            ),
            (
                CalcError::NoMetrics,
                "no metrics returned from resource metrics API",
            ),
            (
                CalcError::NoPods,
                "no pods returned by selector while calculating replica count",
            ),
            (
                CalcError::NoReadyMetrics,
                "did not receive metrics for targeted pods (pods might be unready)",
            ),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), message);
        }
    }

    // --- behavior -----------------------------------------------------------------------------

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).unwrap()
    }

    /// Scaling rules: a window, a selectPolicy and policies (type, value, periodSeconds).
    fn rules(
        window: Option<i32>,
        select: Option<&str>,
        policies: &[(&str, i32, i32)],
    ) -> HPAScalingRules {
        HPAScalingRules {
            stabilization_window_seconds: window,
            select_policy: select.map(str::to_owned),
            policies: (!policies.is_empty()).then(|| {
                policies
                    .iter()
                    .map(|&(type_, value, period_seconds)| HPAScalingPolicy {
                        type_: type_.to_owned(),
                        value,
                        period_seconds,
                    })
                    .collect()
            }),
            ..HPAScalingRules::default()
        }
    }

    fn behavior(
        up: Option<HPAScalingRules>,
        down: Option<HPAScalingRules>,
    ) -> Option<HorizontalPodAutoscalerBehavior> {
        Some(HorizontalPodAutoscalerBehavior {
            scale_up: up,
            scale_down: down,
        })
    }

    /// One thing happening to an HPA.
    enum Step {
        /// A pass: at this second, with current and desired replicas, expecting replicas and
        /// a ScalingLimited reason.
        Pass(i64, i32, i32, i32, &'static str),
        /// The loop scaled at this second from and to.
        Scaled(i64, i32, i32),
    }
    use Step::{Pass, Scaled};

    /// A name, the behavior, minReplicas, maxReplicas and what happens.
    type Scenario = (
        &'static str,
        Option<HorizontalPodAutoscalerBehavior>,
        i32,
        i32,
        Vec<Step>,
    );

    #[test]
    fn normalize_scenarios() {
        let cases: Vec<Scenario> = vec![
            (
                "default scale-up policy allows max(2 × 1, 1 + 4) = 5 per 15 s",
                None,
                1,
                10,
                vec![
                    Pass(0, 1, 10, 5, "ScaleUpLimit"),
                    Scaled(0, 1, 5),
                    // Still within the period that started at 1 replica.
                    Pass(10, 5, 10, 5, "ScaleUpLimit"),
                    // A new period: max(2 × 5, 5 + 4) = 10.
                    Pass(16, 5, 10, 10, "DesiredWithinRange"),
                ],
            ),
            (
                "scale-down window keeps the highest recent recommendation",
                None,
                1,
                10,
                vec![
                    // The first pass also remembers the current 5.
                    Pass(0, 5, 5, 5, "DesiredWithinRange"),
                    Pass(60, 5, 3, 5, "DesiredWithinRange"),
                    Pass(120, 5, 4, 5, "DesiredWithinRange"),
                    // The recommendations of second 0 are 301 s old; 4 is the highest left.
                    Pass(301, 5, 2, 4, "DesiredWithinRange"),
                    Pass(421, 5, 2, 2, "DesiredWithinRange"),
                ],
            ),
            (
                "scale-up window takes the lowest recent recommendation",
                behavior(Some(rules(Some(60), None, &[])), None),
                1,
                10,
                vec![
                    Pass(0, 2, 2, 2, "DesiredWithinRange"),
                    Pass(10, 2, 6, 2, "DesiredWithinRange"),
                    Pass(30, 2, 4, 2, "DesiredWithinRange"),
                    // Seconds 0 and 10 are out of the window: min(5, 4).
                    Pass(71, 2, 5, 4, "DesiredWithinRange"),
                ],
            ),
            (
                "Pods policy on scale down counts from the period's start",
                behavior(None, Some(rules(Some(0), None, &[("Pods", 1, 60)]))),
                1,
                10,
                vec![
                    Pass(0, 10, 2, 9, "ScaleDownLimit"),
                    Scaled(0, 10, 9),
                    Pass(30, 9, 2, 9, "ScaleDownLimit"),
                    Pass(61, 9, 2, 8, "ScaleDownLimit"),
                ],
            ),
            (
                "a scale-down within the period raises the scale-up limit's start",
                None,
                1,
                100,
                vec![
                    Pass(0, 8, 8, 8, "DesiredWithinRange"),
                    Scaled(0, 8, 4),
                    // Start 4 + 4 = 8: max(16, 12).
                    Pass(10, 4, 20, 16, "ScaleUpLimit"),
                ],
            ),
            (
                "Min select policy takes the least change",
                behavior(
                    Some(rules(
                        None,
                        Some("Min"),
                        &[("Pods", 4, 60), ("Percent", 100, 60)],
                    )),
                    None,
                ),
                1,
                100,
                vec![Pass(0, 10, 30, 14, "ScaleUpLimit")],
            ),
            (
                "Max select policy takes the most change",
                behavior(
                    Some(rules(
                        None,
                        Some("Max"),
                        &[("Pods", 4, 60), ("Percent", 100, 60)],
                    )),
                    None,
                ),
                1,
                100,
                vec![Pass(0, 10, 30, 20, "ScaleUpLimit")],
            ),
            (
                "Min select policy on scale down keeps the most replicas",
                behavior(
                    None,
                    Some(rules(
                        Some(0),
                        Some("Min"),
                        &[("Pods", 2, 60), ("Percent", 50, 60)],
                    )),
                ),
                1,
                100,
                vec![Pass(0, 10, 1, 8, "ScaleDownLimit")],
            ),
            (
                "Disabled forbids scaling down but not up",
                behavior(None, Some(rules(Some(0), Some("Disabled"), &[]))),
                1,
                10,
                vec![
                    Pass(0, 5, 2, 5, "ScaleDownLimit"),
                    Pass(1, 5, 7, 7, "DesiredWithinRange"),
                ],
            ),
            (
                "Disabled forbids scaling up",
                behavior(Some(rules(None, Some("Disabled"), &[])), None),
                1,
                10,
                vec![Pass(0, 3, 6, 3, "ScaleUpLimit")],
            ),
            (
                "clamped to max",
                None,
                1,
                6,
                vec![Pass(0, 4, 20, 6, "TooManyReplicas")],
            ),
            (
                "clamped to min",
                behavior(None, Some(rules(Some(0), None, &[]))),
                3,
                10,
                vec![Pass(0, 5, 1, 3, "TooFewReplicas")],
            ),
            (
                "current above max comes down to max",
                None,
                1,
                5,
                vec![Pass(0, 8, 8, 5, "TooManyReplicas")],
            ),
            (
                "current below min comes up to min",
                None,
                3,
                10,
                vec![Pass(0, 1, 1, 3, "TooFewReplicas")],
            ),
        ];
        for (name, behavior, min, max, steps) in cases {
            let mut history = History::default();
            for (i, step) in steps.into_iter().enumerate() {
                match step {
                    Pass(second, current, desired, want, reason) => {
                        let (got, limited) = normalize(
                            at(second),
                            current,
                            desired,
                            min,
                            max,
                            behavior.as_ref(),
                            &mut history,
                        );
                        assert_eq!((got, limited.reason), (want, reason), "{name}: step {i}");
                        assert_eq!(limited.is_limited(), reason != "DesiredWithinRange");
                    }
                    Scaled(second, from, to) => history.record_scale(at(second), from, to),
                }
            }
        }
    }

    #[test]
    fn history_forgets_what_no_window_or_period_reaches() {
        let mut history = History::default();
        for second in 0..10 {
            normalize(at(second * 100), 5, 5, 1, 10, None, &mut history);
            history.record_scale(at(second * 100), 5, 6);
            history.record_scale(at(second * 100), 6, 5);
        }
        // The default windows are 0 s and 300 s, the periods 15 s.
        assert_eq!(
            history
                .recommendations
                .iter()
                .map(|&(when, _)| when)
                .collect::<Vec<_>>(),
            vec![at(700), at(800), at(900)],
        );
        normalize(at(910), 5, 5, 1, 10, None, &mut history);
        assert_eq!(history.scale_ups, vec![(at(900), 1)]);
        assert_eq!(history.scale_downs, vec![(at(900), 1)]);
    }

    #[test]
    fn limited_messages() {
        let mut history = History::default();
        let (_, limited) = normalize(at(0), 1, 10, 1, 10, None, &mut history);
        assert_eq!(
            limited,
            Limited {
                reason: "ScaleUpLimit",
                message:
                    "the desired replica count is increasing faster than the maximum scale rate"
                        .into(),
            }
        );
    }
}
