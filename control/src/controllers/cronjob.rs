//! The CronJob controller: creates a Job from each CronJob's template at the times its cron
//! schedule names, keeps `status.active`, `lastScheduleTime` and `lastSuccessfulTime`, and
//! deletes finished Jobs beyond the history limits. The decisions are [`plan_cronjob`]; the
//! schedules are [`Schedule`]s; the loop around them is [`run`].
//!
//! Like kube-controller-manager's `CronJobControllerV2`, the loop does not poll: each pass
//! returns when the next scheduled time comes, and the work queue looks at the CronJob again
//! then (plus 100 ms, so the clock has passed the minute). A Job is named
//! `<cronjob>-<scheduled time in minutes since the epoch>`, so creating the Job of one scheduled
//! time twice (a retry, a status write that lost a race) only meets AlreadyExists, which is
//! taken as done when the existing Job is this CronJob's.
//!
//! Schedules are standard five-field cron (`minute hour day-of-month month day-of-week`) with
//! `*`, `?` (day fields), lists, ranges, steps, month and weekday names, and the descriptors
//! `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight` and `@hourly`; when both
//! day fields are restricted a day matches either (cron's rule), otherwise both must match.
//! `@every` is not supported (Kubernetes accepts it through robfig/cron; it is rare in
//! CronJobs). Times are computed in `spec.timeZone`, or the zone of a `CRON_TZ=`/`TZ=` prefix,
//! from the host's time zone database through jiff; with neither, in UTC (Kubernetes uses the
//! controller-manager's local zone, which is UTC in nearly every deployment). An unknown zone or
//! an unparseable schedule is reported as a Warning event on the CronJob and nothing is
//! scheduled until the spec changes.

use std::{cmp::Ordering, collections::BTreeSet, sync::Arc, time::Duration};

use jiff::{SignedDuration, Timestamp, civil::DateTime, tz::TimeZone};
use k8s_openapi::{
    api::{
        batch::v1::{CronJob, CronJobStatus, Job},
        core::v1::ObjectReference,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams},
};

use super::{
    Note,
    informer::{Change, Informer, Key, WorkQueue, work},
    record_event, workload,
};

/// Annotation on a Job made by a CronJob: its scheduled time, RFC 3339 in the CronJob's zone.
pub const SCHEDULED_TIMESTAMP_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// Default `successfulJobsHistoryLimit`.
pub const DEFAULT_SUCCESSFUL_HISTORY: i32 = 3;
/// Default `failedJobsHistoryLimit`.
pub const DEFAULT_FAILED_HISTORY: i32 = 1;
/// How far past a scheduled time the CronJob is looked at again (kube-controller-manager's
/// `nextScheduleDelta`).
const NEXT_SCHEDULE_DELTA: Duration = Duration::from_millis(100);
/// How many years a schedule is searched for its next (or last) time before it is taken to
/// never fire (`0 0 30 2 *`). Eight years cover every leap day, 2100 included.
const SEARCH_YEARS: i32 = 8;
/// The component named in events.
const COMPONENT: &str = "cronjob-controller";

// ---------------------------------------------------------------------------------------------
// Schedules

/// Why a schedule (or its time zone) cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// Nothing but blanks.
    #[error("empty schedule")]
    Empty,
    /// Not five fields.
    #[error("expected 5 fields (minute hour day-of-month month day-of-week), found {0}")]
    FieldCount(usize),
    /// An `@` word that is not a known descriptor.
    #[error(
        "unknown descriptor {0:?}: use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly"
    )]
    Descriptor(String),
    /// A field that does not parse.
    #[error("{field} field {text:?}: {reason}")]
    Field {
        /// Which field.
        field: &'static str,
        /// Its text.
        text: String,
        /// What is wrong.
        reason: String,
    },
    /// The time zone is not in the host's database.
    #[error("unknown time zone {name:?}: {reason}")]
    TimeZone {
        /// The zone asked for.
        name: String,
        /// The database's answer.
        reason: String,
    },
    /// Both a `CRON_TZ=`/`TZ=` prefix and `spec.timeZone`.
    #[error("the schedule names time zone {0:?} and so does spec.timeZone: give it in one place")]
    TwoTimeZones(String),
}

/// A parsed cron schedule: the minutes, hours, days, months and weekdays it fires on, as bit
/// sets (bit `n` is value `n`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u32,
    /// Days of the month, bits 1–31.
    days: u32,
    /// Months, bits 1–12.
    months: u16,
    /// Days of the week, Sunday = bit 0.
    weekdays: u8,
    /// The day-of-month field began with `*` or `?`: only the weekdays restrict days.
    any_day: bool,
    /// The day-of-week field began with `*` or `?`: only the days of the month restrict days.
    any_weekday: bool,
    /// The zone of a `CRON_TZ=` or `TZ=` prefix.
    pub time_zone: Option<String>,
}

/// One of the five fields: its bounds and the names it accepts.
struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names for values `first_name`, `first_name + 1`, ... (case-insensitive).
    names: &'static [&'static str],
    first_name: u32,
    /// `?` may stand for `*` (the day fields).
    question: bool,
}

const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
    first_name: 0,
    question: false,
};
const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
    first_name: 0,
    question: false,
};
const DAY_OF_MONTH: FieldSpec = FieldSpec {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
    first_name: 0,
    question: true,
};
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
    first_name: 1,
    question: false,
};
/// 7 is Sunday too, as in Vixie cron.
const DAY_OF_WEEK: FieldSpec = FieldSpec {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
    first_name: 0,
    question: true,
};

impl FieldSpec {
    fn error(&self, text: &str, reason: impl Into<String>) -> ScheduleError {
        ScheduleError::Field {
            field: self.name,
            text: text.to_owned(),
            reason: reason.into(),
        }
    }

    /// One value: a number within the bounds or a name.
    fn value(&self, text: &str, whole: &str) -> Result<u32, ScheduleError> {
        if let Some(i) = self.names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
            return Ok(self.first_name + u32::try_from(i).unwrap_or(0));
        }
        let v: u32 = text
            .parse()
            .map_err(|_| self.error(whole, format!("{text:?} is not a number")))?;
        if !(self.min..=self.max).contains(&v) {
            return Err(self.error(
                whole,
                format!("{v} is out of range {}-{}", self.min, self.max),
            ));
        }
        Ok(v)
    }

    /// A whole field: comma-separated items, each `*`, a value or a range, with an optional
    /// `/step` (`5/15` means `5-max/15`).
    fn parse(&self, text: &str) -> Result<u64, ScheduleError> {
        let mut bits = 0u64;
        for item in text.split(',') {
            if item.is_empty() {
                return Err(self.error(text, "empty list item"));
            }
            let (range, step) = match item.split_once('/') {
                Some((range, step)) => {
                    let step: u32 = step
                        .parse()
                        .map_err(|_| self.error(text, format!("step {step:?} is not a number")))?;
                    if step == 0 {
                        return Err(self.error(text, "a step must be at least 1"));
                    }
                    (range, Some(step))
                }
                None => (item, None),
            };
            let (low, high) = if range == "*" || (self.question && range == "?") {
                (self.min, self.max)
            } else if let Some((a, b)) = range.split_once('-') {
                (self.value(a, text)?, self.value(b, text)?)
            } else {
                let v = self.value(range, text)?;
                (v, if step.is_some() { self.max } else { v })
            };
            if low > high {
                return Err(self.error(text, format!("range start {low} is after its end {high}")));
            }
            let step = step.unwrap_or(1);
            let mut v = low;
            while v <= high {
                bits |= 1u64 << v;
                v = v.saturating_add(step);
            }
        }
        Ok(bits)
    }
}

/// Splits a `CRON_TZ=zone ` or `TZ=zone ` prefix off a schedule.
fn split_zone(spec: &str) -> (Option<&str>, &str) {
    for prefix in ["CRON_TZ=", "TZ="] {
        if let Some(rest) = spec.strip_prefix(prefix) {
            let (zone, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            return (Some(zone), tail.trim_start());
        }
    }
    (None, spec)
}

impl Schedule {
    /// Parses a schedule (see the module docs for the syntax).
    pub fn parse(spec: &str) -> Result<Self, ScheduleError> {
        let (zone, rest) = split_zone(spec.trim());
        if rest.is_empty() {
            return Err(ScheduleError::Empty);
        }
        let expanded = if rest.starts_with('@') {
            match rest.to_ascii_lowercase().as_str() {
                "@yearly" | "@annually" => "0 0 1 1 *",
                "@monthly" => "0 0 1 * *",
                "@weekly" => "0 0 * * 0",
                "@daily" | "@midnight" => "0 0 * * *",
                "@hourly" => "0 * * * *",
                _ => return Err(ScheduleError::Descriptor(rest.to_owned())),
            }
        } else {
            rest
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, day, month, day_of_week] = fields[..] else {
            return Err(ScheduleError::FieldCount(fields.len()));
        };
        let mut weekdays = DAY_OF_WEEK.parse(day_of_week)?;
        // 7 is Sunday.
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & !(1 << 7);
        }
        let starred = |f: &str| f.starts_with('*') || f.starts_with('?');
        // The masks hold only bits within each field's bounds, so the narrowing keeps them all.
        Ok(Self {
            minutes: MINUTE.parse(minute)?,
            hours: u32::try_from(HOUR.parse(hour)?).unwrap_or(0),
            days: u32::try_from(DAY_OF_MONTH.parse(day)?).unwrap_or(0),
            months: u16::try_from(MONTH.parse(month)?).unwrap_or(0),
            weekdays: u8::try_from(weekdays).unwrap_or(0),
            any_day: starred(day),
            any_weekday: starred(day_of_week),
            time_zone: zone.map(str::to_owned),
        })
    }

    fn day_matches(&self, t: &Minute) -> bool {
        let day = self.days & (1 << t.day) != 0;
        let weekday = self.weekdays & (1 << weekday(t.year, t.month, t.day)) != 0;
        if self.any_day || self.any_weekday {
            day && weekday
        } else {
            day || weekday
        }
    }

    /// What is wrong with `t`, coarsest first: the step that skips past it.
    fn mismatch(&self, t: &Minute) -> Option<Unit> {
        if self.months & (1 << t.month) == 0 {
            Some(Unit::Month)
        } else if !self.day_matches(t) {
            Some(Unit::Day)
        } else if self.hours & (1 << t.hour) == 0 {
            Some(Unit::Hour)
        } else if self.minutes & (1 << t.minute) == 0 {
            Some(Unit::Minute)
        } else {
            None
        }
    }

    /// The first matching civil minute at or after `t`, searching up to `limit_year`.
    fn next_civil(&self, mut t: Minute, limit_year: i32) -> Option<Minute> {
        while t.year <= limit_year {
            match self.mismatch(&t) {
                None => return Some(t),
                Some(unit) => t = t.forward(unit),
            }
        }
        None
    }

    /// The last matching civil minute at or before `t`, searching down to `limit_year`.
    fn prev_civil(&self, mut t: Minute, limit_year: i32) -> Option<Minute> {
        while t.year >= limit_year {
            match self.mismatch(&t) {
                None => return Some(t),
                Some(unit) => t = t.backward(unit),
            }
        }
        None
    }

    /// The first time strictly after `after` that the schedule fires in `tz`, if any within
    /// [`SEARCH_YEARS`]. A civil time that a daylight-saving gap skips fires at the matching
    /// time after the gap; one that a fold repeats fires once, at its first occurrence.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let mut start = Minute::of(tz.to_datetime(after)).forward(Unit::Minute);
        let limit = start.year.saturating_add(SEARCH_YEARS);
        loop {
            let found = self.next_civil(start, limit)?;
            let at = tz.to_timestamp(found.civil()?).ok()?;
            if at > after {
                return Some(at);
            }
            // The first occurrence of a folded hour, already past.
            start = found.forward(Unit::Minute);
        }
    }

    /// The last time at or before `at` that the schedule fires in `tz`, if any within
    /// [`SEARCH_YEARS`].
    pub fn last_at_or_before(&self, at: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        // In a zone with folds, civil time can run behind a fire time already past (the second
        // pass through a repeated hour): start late enough to see it, and skip what is later.
        let probe = if *tz == TimeZone::UTC {
            at
        } else {
            at.checked_add(SignedDuration::from_hours(3)).unwrap_or(at)
        };
        let mut start = Minute::of(tz.to_datetime(probe));
        let limit = start.year.saturating_sub(SEARCH_YEARS);
        loop {
            let found = self.prev_civil(start, limit)?;
            let t = tz.to_timestamp(found.civil()?).ok()?;
            if t <= at {
                return Some(t);
            }
            start = found.backward(Unit::Minute);
        }
    }
}

/// The zone a CronJob's schedule runs in: `spec.timeZone`, else the schedule's prefix, else
/// UTC. Names other than UTC come from the host's time zone database.
pub fn time_zone(spec_zone: Option<&str>, schedule: &Schedule) -> Result<TimeZone, ScheduleError> {
    let name = match (spec_zone, schedule.time_zone.as_deref()) {
        (Some(_), Some(prefix)) => return Err(ScheduleError::TwoTimeZones(prefix.to_owned())),
        (Some(name), None) | (None, Some(name)) => name,
        (None, None) => return Ok(TimeZone::UTC),
    };
    match name {
        "" | "UTC" | "Etc/UTC" => Ok(TimeZone::UTC),
        _ => TimeZone::get(name).map_err(|e| ScheduleError::TimeZone {
            name: name.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// A step of the search.
#[derive(Clone, Copy, Debug)]
enum Unit {
    Month,
    Day,
    Hour,
    Minute,
}

/// A civil (wall clock) minute. The searches step through these and convert to instants only
/// at the end, so that daylight-saving changes cannot make them loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Minute {
    year: i32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
}

fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i32, month: u32, day: u32) -> i64 {
    let (m, d) = (i64::from(month), i64::from(day));
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Day of the week, Sunday = 0 (1970-01-01 was a Thursday).
fn weekday(year: i32, month: u32, day: u32) -> u32 {
    u32::try_from((days_from_civil(year, month, day) + 4).rem_euclid(7)).unwrap_or(0)
}

impl Minute {
    fn of(dt: DateTime) -> Self {
        Self {
            year: i32::from(dt.year()),
            month: u32::from(dt.month().unsigned_abs()),
            day: u32::from(dt.day().unsigned_abs()),
            hour: u32::from(dt.hour().unsigned_abs()),
            minute: u32::from(dt.minute().unsigned_abs()),
        }
    }

    fn civil(self) -> Option<DateTime> {
        DateTime::new(
            i16::try_from(self.year).ok()?,
            i8::try_from(self.month).ok()?,
            i8::try_from(self.day).ok()?,
            i8::try_from(self.hour).ok()?,
            i8::try_from(self.minute).ok()?,
            0,
            0,
        )
        .ok()
    }

    /// The start of the next `unit`.
    fn forward(self, unit: Unit) -> Self {
        let start_of_next_month = || {
            if self.month == 12 {
                Self {
                    year: self.year + 1,
                    month: 1,
                    day: 1,
                    hour: 0,
                    minute: 0,
                }
            } else {
                Self {
                    month: self.month + 1,
                    day: 1,
                    hour: 0,
                    minute: 0,
                    ..self
                }
            }
        };
        match unit {
            Unit::Month => start_of_next_month(),
            Unit::Day if self.day >= days_in_month(self.year, self.month) => start_of_next_month(),
            Unit::Day => Self {
                day: self.day + 1,
                hour: 0,
                minute: 0,
                ..self
            },
            Unit::Hour if self.hour == 23 => self.forward(Unit::Day),
            Unit::Hour => Self {
                hour: self.hour + 1,
                minute: 0,
                ..self
            },
            Unit::Minute if self.minute == 59 => self.forward(Unit::Hour),
            Unit::Minute => Self {
                minute: self.minute + 1,
                ..self
            },
        }
    }

    /// The last minute of the previous `unit`.
    fn backward(self, unit: Unit) -> Self {
        let end_of_previous_month = || {
            let (year, month) = if self.month == 1 {
                (self.year - 1, 12)
            } else {
                (self.year, self.month - 1)
            };
            Self {
                year,
                month,
                day: days_in_month(year, month),
                hour: 23,
                minute: 59,
            }
        };
        match unit {
            Unit::Month => end_of_previous_month(),
            Unit::Day if self.day <= 1 => end_of_previous_month(),
            Unit::Day => Self {
                day: self.day - 1,
                hour: 23,
                minute: 59,
                ..self
            },
            Unit::Hour if self.hour == 0 => self.backward(Unit::Day),
            Unit::Hour => Self {
                hour: self.hour - 1,
                minute: 59,
                ..self
            },
            Unit::Minute if self.minute == 0 => self.backward(Unit::Hour),
            Unit::Minute => Self {
                minute: self.minute - 1,
                ..self
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The plan

/// A Job to create for one scheduled time.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduledJob {
    /// The Job ([`job_from_template`]).
    pub job: Job,
    /// The time it is for; `status.lastScheduleTime` once it is created.
    pub scheduled: Timestamp,
}

/// What one CronJob pass does.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CronPlan {
    /// The status to write: `active` without finished or vanished Jobs and with any unfinished
    /// Job of the CronJob it lacked, `lastSuccessfulTime` from the latest completed Job. A Job
    /// created from [`CronPlan::create`] is the caller's to add, with `lastScheduleTime`.
    pub status: CronJobStatus,
    /// The Job to create now, if a scheduled time is due.
    pub create: Option<ScheduledJob>,
    /// Jobs to delete (propagation Background): running ones that `Replace` supersedes, then
    /// finished ones beyond the history limits, oldest first.
    pub delete: Vec<String>,
    /// Events to record on the CronJob.
    pub events: Vec<Note>,
    /// When to look again without an event: just after the next scheduled time.
    pub requeue_after: Option<Duration>,
}

/// A Job's finished condition (`Complete` or `Failed` with status True), if any.
fn finished_condition(job: &Job) -> Option<&str> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.type_.as_str())
}

/// A reference to `job` for `status.active` (kube's `GetReference`).
fn job_reference(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".to_owned()),
        kind: Some("Job".to_owned()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        field_path: None,
    }
}

/// The name of the Job for `scheduled`: `<cronjob>-<minutes since the epoch>`, as in
/// Kubernetes, so that one scheduled time can only ever make one Job.
pub fn job_name(cronjob: &str, scheduled: Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second().div_euclid(60))
}

/// RFC 3339 in `tz` (Go's `time.RFC3339`, `Z` for UTC).
fn rfc3339(t: Timestamp, tz: &TimeZone) -> String {
    if *tz == TimeZone::UTC {
        return format!("{t:.0}");
    }
    jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%S%:z", &t.to_zoned(tz.clone()))
        .unwrap_or_else(|_| format!("{t:.0}"))
}

/// The Job for `scheduled` (Kubernetes' `getJobFromTemplate2`): [`job_name`], the template's
/// labels, annotations and spec, [`SCHEDULED_TIMESTAMP_ANNOTATION`], and a controller owner
/// reference to the CronJob.
pub fn job_from_template(cj: &CronJob, scheduled: Timestamp, tz: &TimeZone) -> Job {
    let template = &cj.spec.job_template;
    let meta = template.metadata.clone().unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(
        SCHEDULED_TIMESTAMP_ANNOTATION.to_owned(),
        rfc3339(scheduled, tz),
    );
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(
                cj.metadata.name.as_deref().unwrap_or_default(),
                scheduled,
            )),
            namespace: cj.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![workload::owner_reference(
                "batch/v1",
                "CronJob",
                &cj.metadata,
            )]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Kubernetes' `byJobStartTime`: earlier starts first, Jobs that never started last, then by
/// name.
fn by_start_time(a: &&Job, b: &&Job) -> Ordering {
    let start = |j: &Job| j.status.as_ref().and_then(|s| s.start_time.clone());
    let by_start = match (start(a), start(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    };
    by_start.then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

/// Finished Jobs beyond the history limits, oldest first (Kubernetes' `cleanupFinishedJobs`).
fn beyond_history(cj: &CronJob, jobs: &[&Job]) -> Vec<String> {
    let mut doomed = Vec::new();
    for (kind, limit) in [
        (
            "Complete",
            cj.spec
                .successful_jobs_history_limit
                .unwrap_or(DEFAULT_SUCCESSFUL_HISTORY),
        ),
        (
            "Failed",
            cj.spec
                .failed_jobs_history_limit
                .unwrap_or(DEFAULT_FAILED_HISTORY),
        ),
    ] {
        let mut finished: Vec<&Job> = jobs
            .iter()
            .copied()
            .filter(|j| j.metadata.deletion_timestamp.is_none())
            .filter(|j| finished_condition(j) == Some(kind))
            .collect();
        finished.sort_by(by_start_time);
        let keep = usize::try_from(limit).unwrap_or(0);
        let excess = finished.len().saturating_sub(keep);
        doomed.extend(
            finished
                .into_iter()
                .take(excess)
                .filter_map(|j| j.metadata.name.clone()),
        );
    }
    doomed
}

/// The CronJob's schedule and zone, or the event saying why it has none.
fn schedule_of(cj: &CronJob) -> Result<(Schedule, TimeZone), Note> {
    let schedule = Schedule::parse(&cj.spec.schedule).map_err(|e| {
        Note::warning(
            "UnparseableSchedule",
            format!("unparseable schedule: {:?} : {e}", cj.spec.schedule),
        )
    })?;
    let tz = time_zone(cj.spec.time_zone.as_deref(), &schedule).map_err(|e| {
        Note::warning(
            "UnknownTimeZone",
            format!(
                "invalid timeZone: {:?}: {e}",
                cj.spec
                    .time_zone
                    .as_deref()
                    .or(schedule.time_zone.as_deref())
                    .unwrap_or_default()
            ),
        )
    })?;
    Ok((schedule, tz))
}

/// Plans one pass of the CronJob controller (Kubernetes' `syncCronJob` and
/// `cleanupFinishedJobs`). `jobs`: every Job the CronJob controls (controller owner reference
/// with its uid), including Jobs of `status.active` that the caller confirmed with the
/// apiserver when its cache lacked them. A CronJob being deleted only gets its status.
///
/// The scheduled time considered is the latest at or before `now` and after
/// `lastScheduleTime` (or the creation time), and no earlier than `startingDeadlineSeconds`
/// ago: older missed times are dropped, as in Kubernetes (whose `MissSchedule` branch cannot be
/// reached for the same reason). Several missed times start one Job, for the latest.
pub fn plan_cronjob(cj: &CronJob, jobs: &[&Job], now: Timestamp) -> CronPlan {
    let mut status = cj.status.clone().unwrap_or_default();
    let mut events = Vec::new();
    let mut active = status.active.take().unwrap_or_default();
    let listed = |active: &[ObjectReference], job: &Job| {
        job.metadata.uid.is_some() && active.iter().any(|r| r.uid == job.metadata.uid)
    };
    for job in jobs {
        let name = job.metadata.name.as_deref().unwrap_or_default();
        match finished_condition(job) {
            Some(condition) if listed(&active, job) => {
                active.retain(|r| r.uid != job.metadata.uid);
                events.push(Note::normal(
                    "SawCompletedJob",
                    format!("Saw completed job: {name}, condition: {condition}"),
                ));
            }
            // An unfinished Job of ours that the list lacks (created by a pass whose status
            // write was lost): it is active all the same, and Forbid must see it.
            None if !listed(&active, job) && job.metadata.deletion_timestamp.is_none() => {
                active.push(job_reference(job));
            }
            _ => {}
        }
        if finished_condition(job) == Some("Complete")
            && let Some(done) = job.status.as_ref().and_then(|s| s.completion_time.clone())
            && status
                .last_successful_time
                .as_ref()
                .is_none_or(|t| *t < done)
        {
            status.last_successful_time = Some(done);
        }
    }
    active.retain(|r| {
        let present = jobs
            .iter()
            .any(|j| r.uid.is_some() && j.metadata.uid == r.uid);
        if !present {
            events.push(Note::normal(
                "MissingJob",
                format!(
                    "Active job went missing: {}",
                    r.name.as_deref().unwrap_or_default()
                ),
            ));
        }
        present
    });
    let mut plan = CronPlan::default();
    if cj.metadata.deletion_timestamp.is_some() {
        status.active = (!active.is_empty()).then_some(active);
        plan.status = status;
        plan.events = events;
        return plan;
    }
    plan.delete = beyond_history(cj, jobs);
    let scheduling = schedule_of(cj).and_then(|(schedule, tz)| {
        if cj.spec.suspend == Some(true) {
            return Ok(None);
        }
        let created = cj.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
        let mut earliest = status.last_schedule_time.as_ref().map_or(created, |t| t.0);
        if let Some(deadline) = cj.spec.starting_deadline_seconds
            && let Ok(cutoff) = now.checked_sub(SignedDuration::from_secs(deadline))
            && cutoff > earliest
        {
            earliest = cutoff;
        }
        let due = schedule
            .last_at_or_before(now, &tz)
            .filter(|t| *t > earliest);
        let next = schedule.next_after(now.max(earliest), &tz);
        if due.is_none() && next.is_none() {
            return Err(Note::warning(
                "InvalidSchedule",
                format!("invalid schedule: {} : it never fires", cj.spec.schedule),
            ));
        }
        Ok(Some((tz, due, next)))
    });
    match scheduling {
        Err(note) => events.push(note),
        Ok(None) => {}
        Ok(Some((tz, due, next))) => {
            plan.requeue_after = next.and_then(|t| {
                Duration::try_from(t.duration_since(now))
                    .ok()
                    .map(|d| d + NEXT_SCHEDULE_DELTA)
            });
            if let Some(scheduled) = due {
                let name = job_name(cj.metadata.name.as_deref().unwrap_or_default(), scheduled);
                let processed = active
                    .iter()
                    .any(|r| r.name.as_deref() == Some(name.as_str()))
                    || status.last_schedule_time.as_ref().map(|t| t.0) == Some(scheduled);
                let policy = cj.spec.concurrency_policy.as_deref().unwrap_or("Allow");
                let forbidden = !processed && policy == "Forbid" && !active.is_empty();
                if forbidden {
                    tracing::debug!(
                        cronjob = cj.metadata.name.as_deref().unwrap_or_default(),
                        "not starting a job: the previous one still runs and the policy is Forbid"
                    );
                }
                // A processed time's Job exists already.
                if !processed && !forbidden {
                    if policy == "Replace" {
                        for r in active.drain(..) {
                            let old = r.name.unwrap_or_default();
                            events.push(Note::normal(
                                "SuccessfulDelete",
                                format!("Deleted job {old}"),
                            ));
                            plan.delete.push(old);
                        }
                    }
                    plan.create = Some(ScheduledJob {
                        job: job_from_template(cj, scheduled, &tz),
                        scheduled,
                    });
                }
            }
        }
    }
    let mut seen = BTreeSet::new();
    plan.delete.retain(|n| seen.insert(n.clone()));
    status.active = (!active.is_empty()).then_some(active);
    plan.status = status;
    plan.events = events;
    plan
}

// ---------------------------------------------------------------------------------------------
// The loop

/// The caches the controller reads.
#[derive(Clone)]
pub struct Caches {
    /// CronJobs.
    pub cronjobs: Arc<Informer<CronJob>>,
    /// Jobs.
    pub jobs: Arc<Informer<Job>>,
}

/// The CronJob that controls `job`, if any.
fn owner_key(job: &Job) -> Option<Key> {
    let owner = workload::controller_of(&job.metadata)?;
    (owner.kind == "CronJob" && owner.api_version == "batch/v1").then(|| Key {
        namespace: job.metadata.namespace.clone().unwrap_or_default(),
        name: owner.name.clone(),
    })
}

/// Runs the controller until the informers end.
pub async fn run(client: Client, caches: Caches) {
    let queue: Arc<WorkQueue<Key>> = WorkQueue::new();
    let mut cronjobs = caches.cronjobs.subscribe();
    let mut jobs = caches.jobs.subscribe();
    caches.cronjobs.synced().await;
    caches.jobs.synced().await;
    let enqueue_all = {
        let caches = caches.clone();
        let queue = queue.clone();
        move || {
            for cj in caches.cronjobs.store().state() {
                queue.add(Key::of(&*cj));
            }
        }
    };
    enqueue_all();
    let dispatch = {
        let queue = queue.clone();
        async move {
            loop {
                tokio::select! {
                    change = cronjobs.next() => match change {
                        Some(Change::Resync) => enqueue_all(),
                        Some(c) => c.objects().for_each(|cj| queue.add(Key::of(&**cj))),
                        None => break,
                    },
                    change = jobs.next() => match change {
                        Some(Change::Resync) => enqueue_all(),
                        Some(c) => c.objects().filter_map(|j| owner_key(j)).for_each(|k| queue.add(k)),
                        None => break,
                    },
                }
            }
        }
    };
    let work = work(queue, "syncing cron job", |key| {
        let (client, caches) = (&client, &caches);
        async move { reconcile(client, caches, &key).await }
    });
    tokio::select! {
        () = dispatch => {}
        () = work => {}
    }
}

/// One pass over one CronJob; returns when to look again.
async fn reconcile(
    client: &Client,
    caches: &Caches,
    key: &Key,
) -> Result<Option<Duration>, kube::Error> {
    let Some(cj) = caches.cronjobs.store().get(&key.object_ref()) else {
        return Ok(None);
    };
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(client.clone(), &key.namespace);
    let mut owned: Vec<Arc<Job>> = caches
        .jobs
        .store()
        .state()
        .into_iter()
        .filter(|j| {
            j.metadata.namespace.as_deref() == Some(key.namespace.as_str())
                && workload::is_controlled_by(&j.metadata, &uid)
        })
        .collect();
    // An active Job the cache lacks may only be late to arrive: only the apiserver can say it
    // is gone.
    let listed: Vec<ObjectReference> = cj
        .status
        .as_ref()
        .and_then(|s| s.active.clone())
        .unwrap_or_default();
    for r in &listed {
        if owned
            .iter()
            .any(|j| r.uid.is_some() && j.metadata.uid == r.uid)
        {
            continue;
        }
        let Some(name) = r.name.as_deref() else {
            continue;
        };
        if let Some(job) = jobs_api.get_opt(name).await?
            && job.metadata.uid == r.uid
        {
            owned.push(Arc::new(job));
        }
    }
    let jobs: Vec<&Job> = owned.iter().map(|j| &**j).collect();
    let now = Timestamp::now();
    let plan = plan_cronjob(&cj, &jobs, now);
    let mut status = plan.status.clone();
    let mut events = plan.events.clone();
    for name in &plan.delete {
        match jobs_api.delete(name, &DeleteParams::background()).await {
            Ok(_) => tracing::debug!(cronjob = %key, job = name, "deleted job"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let mut failure = None;
    if let Some(scheduled) = &plan.create {
        let pp = PostParams {
            field_manager: Some(COMPONENT.into()),
            ..PostParams::default()
        };
        let name = scheduled.job.metadata.name.clone().unwrap_or_default();
        let made = match jobs_api.create(&pp, &scheduled.job).await {
            Ok(made) => {
                tracing::info!(cronjob = %key, job = name, "created job");
                events.push(Note::normal(
                    "SuccessfulCreate",
                    format!("Created job {name}"),
                ));
                Some(made)
            }
            // Made by an earlier pass whose status write was lost: ours if we control it.
            Err(kube::Error::Api(s)) if s.code == 409 => jobs_api
                .get_opt(&name)
                .await?
                .filter(|j| workload::is_controlled_by(&j.metadata, &uid)),
            Err(e) => {
                events.push(Note::warning(
                    "FailedCreate",
                    format!("Error creating job: {e}"),
                ));
                failure = Some(e);
                None
            }
        };
        if let Some(made) = made {
            let active = status.active.get_or_insert_with(Vec::new);
            if !active.iter().any(|r| r.uid == made.metadata.uid) {
                active.push(job_reference(&made));
            }
            status.last_schedule_time = Some(Time(scheduled.scheduled));
        }
    }
    for note in &events {
        record_event(client, &*cj, COMPONENT, note).await;
    }
    if cj.status.clone().unwrap_or_default() != status {
        let api: Api<CronJob> = Api::namespaced(client.clone(), &key.namespace);
        let mut next = (*cj).clone();
        next.status = Some(status);
        super::replace_status(&api, &key.name, &next).await?;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(plan.requeue_after),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests assert on known values")]
mod tests {
    use k8s_openapi::api::batch::v1::{CronJobSpec, JobCondition, JobStatus, JobTemplateSpec};

    use super::*;

    /// `2024-03-04T05:06:07Z`-style instants.
    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next(spec: &str, after: &str) -> String {
        let s = Schedule::parse(spec).unwrap();
        s.next_after(at(after), &TimeZone::UTC).unwrap().to_string()
    }

    fn last(spec: &str, before: &str) -> String {
        let s = Schedule::parse(spec).unwrap();
        s.last_at_or_before(at(before), &TimeZone::UTC)
            .unwrap()
            .to_string()
    }

    #[test]
    fn weekdays_and_month_lengths() {
        assert_eq!(weekday(1970, 1, 1), 4);
        assert_eq!(weekday(2024, 2, 29), 4);
        assert_eq!(weekday(2000, 1, 1), 6);
        assert_eq!(weekday(2024, 3, 3), 0);
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(2100, 2), 28);
        assert_eq!(days_in_month(2000, 2), 29);
        assert_eq!(days_in_month(2023, 4), 30);
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let cases = [
            ("", "empty schedule"),
            (
                "* * * *",
                "expected 5 fields (minute hour day-of-month month day-of-week), found 4",
            ),
            ("60 * * * *", "minute field \"60\": 60 is out of range 0-59"),
            (
                "* 5-2 * * *",
                "hour field \"5-2\": range start 5 is after its end 2",
            ),
            (
                "*/0 * * * *",
                "minute field \"*/0\": a step must be at least 1",
            ),
            (
                "* * 0 * *",
                "day-of-month field \"0\": 0 is out of range 1-31",
            ),
            (
                "* * * FOO *",
                "month field \"FOO\": \"FOO\" is not a number",
            ),
            ("1,,2 * * * *", "minute field \"1,,2\": empty list item"),
            ("? * * * *", "minute field \"?\": \"?\" is not a number"),
            (
                "@every 5m",
                "unknown descriptor \"@every 5m\": use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly",
            ),
        ];
        for (spec, message) in cases {
            assert_eq!(
                Schedule::parse(spec).unwrap_err().to_string(),
                message,
                "{spec:?}"
            );
        }
    }

    #[test]
    fn next_times() {
        let cases = [
            ("* * * * *", "2024-03-04T05:06:07Z", "2024-03-04T05:07:00Z"),
            ("* * * * *", "2024-03-04T05:06:00Z", "2024-03-04T05:07:00Z"),
            (
                "*/5 * * * *",
                "2024-03-04T05:06:07Z",
                "2024-03-04T05:10:00Z",
            ),
            (
                "1-10/2 * * * *",
                "2024-03-04T05:06:07Z",
                "2024-03-04T05:07:00Z",
            ),
            (
                "1-10/2 * * * *",
                "2024-03-04T05:09:00Z",
                "2024-03-04T06:01:00Z",
            ),
            (
                "5/20 * * * *",
                "2024-03-04T05:26:00Z",
                "2024-03-04T05:45:00Z",
            ),
            (
                "0,30 9 * * *",
                "2024-03-04T09:30:00Z",
                "2024-03-05T09:00:00Z",
            ),
            (
                "0 0 1 JAN *",
                "2024-03-04T05:06:07Z",
                "2025-01-01T00:00:00Z",
            ),
            (
                "0 12 * * MON-FRI",
                "2024-03-08T12:00:00Z",
                "2024-03-11T12:00:00Z",
            ),
            (
                "0 12 * * sat,sun",
                "2024-03-04T00:00:00Z",
                "2024-03-09T12:00:00Z",
            ),
            ("0 0 * * 7", "2024-03-04T00:00:00Z", "2024-03-10T00:00:00Z"),
            ("0 0 29 2 *", "2024-03-01T00:00:00Z", "2028-02-29T00:00:00Z"),
            ("0 0 31 * *", "2024-04-01T00:00:00Z", "2024-05-31T00:00:00Z"),
            ("@hourly", "2024-03-04T05:06:07Z", "2024-03-04T06:00:00Z"),
            ("@daily", "2024-12-31T23:59:59Z", "2025-01-01T00:00:00Z"),
            ("@midnight", "2024-03-04T05:06:07Z", "2024-03-05T00:00:00Z"),
            ("@weekly", "2024-03-04T05:06:07Z", "2024-03-10T00:00:00Z"),
            ("@monthly", "2024-03-04T05:06:07Z", "2024-04-01T00:00:00Z"),
            ("@yearly", "2024-03-04T05:06:07Z", "2025-01-01T00:00:00Z"),
            ("@annually", "2024-03-04T05:06:07Z", "2025-01-01T00:00:00Z"),
            ("0 0 ? * 1", "2024-03-04T05:06:07Z", "2024-03-11T00:00:00Z"),
        ];
        for (spec, after, want) in cases {
            assert_eq!(next(spec, after), want, "{spec} after {after}");
        }
    }

    #[test]
    fn restricted_day_fields_match_either() {
        // Both restricted: the 13th or any Friday.
        assert_eq!(
            next("0 0 13 * 5", "2024-03-04T00:00:00Z"),
            "2024-03-08T00:00:00Z"
        );
        assert_eq!(
            next("0 0 13 * 5", "2024-03-08T00:00:00Z"),
            "2024-03-13T00:00:00Z"
        );
        // A starred day of month (even with a step) leaves only the weekday.
        assert_eq!(
            next("0 0 */2 * 5", "2024-03-04T00:00:00Z"),
            "2024-03-15T00:00:00Z"
        );
        // A starred weekday leaves only the day of the month.
        assert_eq!(
            next("0 0 13 * *", "2024-03-04T00:00:00Z"),
            "2024-03-13T00:00:00Z"
        );
    }

    #[test]
    fn never_firing_schedules_end_the_search() {
        let s = Schedule::parse("0 0 30 2 *").unwrap();
        assert_eq!(
            s.next_after(at("2024-01-01T00:00:00Z"), &TimeZone::UTC),
            None
        );
        assert_eq!(
            s.last_at_or_before(at("2024-01-01T00:00:00Z"), &TimeZone::UTC),
            None
        );
    }

    #[test]
    fn last_times() {
        let cases = [
            ("* * * * *", "2024-03-04T05:06:07Z", "2024-03-04T05:06:00Z"),
            ("* * * * *", "2024-03-04T05:06:00Z", "2024-03-04T05:06:00Z"),
            (
                "*/15 * * * *",
                "2024-03-04T05:06:07Z",
                "2024-03-04T05:00:00Z",
            ),
            ("0 0 1 1 *", "2024-03-04T05:06:07Z", "2024-01-01T00:00:00Z"),
            ("0 0 29 2 *", "2027-03-04T05:06:07Z", "2024-02-29T00:00:00Z"),
            (
                "30 23 * * 1-5",
                "2024-03-04T05:06:07Z",
                "2024-03-01T23:30:00Z",
            ),
            ("0 0 31 * *", "2024-05-01T00:00:00Z", "2024-03-31T00:00:00Z"),
        ];
        for (spec, before, want) in cases {
            assert_eq!(last(spec, before), want, "{spec} at or before {before}");
        }
    }

    #[test]
    fn time_zones() {
        let s = Schedule::parse("CRON_TZ=America/New_York 30 2 * * *").unwrap();
        assert_eq!(s.time_zone.as_deref(), Some("America/New_York"));
        assert_eq!(
            time_zone(Some("Europe/Paris"), &s).unwrap_err(),
            ScheduleError::TwoTimeZones("America/New_York".into())
        );
        let plain = Schedule::parse("TZ=UTC 0 * * * *").unwrap();
        assert_eq!(time_zone(None, &plain).unwrap(), TimeZone::UTC);
        assert!(matches!(
            time_zone(
                Some("Mars/Olympus_Mons"),
                &Schedule::parse("0 * * * *").unwrap()
            ),
            Err(ScheduleError::TimeZone { .. })
        ));
        // US Eastern by its POSIX rule (no database needed): 2024-03-10 springs forward at
        // 02:00, 2024-11-03 falls back at 02:00.
        let tz = TimeZone::posix("EST5EDT,M3.2.0,M11.1.0").unwrap();
        let s = Schedule::parse("30 2 * * *").unwrap();
        // 02:30 does not exist on the 10th: it fires after the gap, at 03:30 EDT.
        let t = s.next_after(at("2024-03-10T05:00:00Z"), &tz).unwrap();
        assert_eq!(t.to_string(), "2024-03-10T07:30:00Z");
        let s = Schedule::parse("30 1 * * *").unwrap();
        // 01:30 happens twice on 3 November: it fires once, at the first.
        let first = s.next_after(at("2024-11-03T04:00:00Z"), &tz).unwrap();
        assert_eq!(first.to_string(), "2024-11-03T05:30:00Z");
        let again = s.next_after(first, &tz).unwrap();
        assert_eq!(again.to_string(), "2024-11-04T06:30:00Z");
        // During the second 01:xx the last time is the first 01:30, not the day before's.
        let last = s
            .last_at_or_before(at("2024-11-03T06:10:00Z"), &tz)
            .unwrap();
        assert_eq!(last.to_string(), "2024-11-03T05:30:00Z");
        assert_eq!(rfc3339(first, &tz), "2024-11-03T01:30:00-04:00");
        assert_eq!(rfc3339(first, &TimeZone::UTC), "2024-11-03T05:30:00Z");
    }

    fn cronjob(schedule: &str) -> CronJob {
        CronJob {
            metadata: ObjectMeta {
                name: Some("tick".into()),
                namespace: Some("ops".into()),
                uid: Some("cj-uid".into()),
                creation_timestamp: Some(Time(at("2024-03-04T05:00:30Z"))),
                ..ObjectMeta::default()
            },
            spec: CronJobSpec {
                schedule: schedule.into(),
                job_template: JobTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some([("app".to_owned(), "tick".to_owned())].into()),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(k8s_openapi::api::batch::v1::JobSpec::default()),
                },
                ..CronJobSpec::default()
            },
            status: None,
        }
    }

    fn job(name: &str, condition: Option<&str>, started: &str) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ops".into()),
                uid: Some(format!("uid-{name}")),
                owner_references: Some(vec![workload::owner_reference(
                    "batch/v1",
                    "CronJob",
                    &cronjob("* * * * *").metadata,
                )]),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(JobStatus {
                start_time: Some(Time(at(started))),
                completion_time: (condition == Some("Complete")).then(|| Time(at(started))),
                conditions: condition.map(|c| {
                    vec![JobCondition {
                        type_: c.into(),
                        status: "True".into(),
                        ..JobCondition::default()
                    }]
                }),
                ..JobStatus::default()
            }),
        }
    }

    fn active(plan: &CronPlan) -> Vec<String> {
        plan.status
            .active
            .iter()
            .flatten()
            .filter_map(|r| r.name.clone())
            .collect()
    }

    #[test]
    fn creates_the_job_of_the_latest_due_time() {
        let cj = cronjob("*/5 * * * *");
        // Nothing due yet: look again just after 05:05.
        let plan = plan_cronjob(&cj, &[], at("2024-03-04T05:03:00Z"));
        assert_eq!(plan.create, None);
        assert_eq!(
            plan.requeue_after,
            Some(Duration::from_secs(120) + NEXT_SCHEDULE_DELTA)
        );
        // Three times missed: one Job, for the latest.
        let now = at("2024-03-04T05:17:10Z");
        let plan = plan_cronjob(&cj, &[], now);
        let made = plan.create.unwrap();
        assert_eq!(made.scheduled, at("2024-03-04T05:15:00Z"));
        let job = made.job;
        assert_eq!(job.metadata.name.as_deref(), Some("tick-28492155"));
        assert_eq!(job.metadata.namespace.as_deref(), Some("ops"));
        assert_eq!(
            job.metadata
                .labels
                .as_ref()
                .unwrap()
                .get("app")
                .map(String::as_str),
            Some("tick")
        );
        assert_eq!(
            job.metadata
                .annotations
                .as_ref()
                .unwrap()
                .get(SCHEDULED_TIMESTAMP_ANNOTATION)
                .map(String::as_str),
            Some("2024-03-04T05:15:00Z")
        );
        assert!(workload::is_controlled_by(&job.metadata, "cj-uid"));
        assert_eq!(
            plan.requeue_after,
            Some(Duration::from_secs(170) + NEXT_SCHEDULE_DELTA)
        );
    }

    #[test]
    fn a_time_already_scheduled_is_not_scheduled_again() {
        let mut cj = cronjob("*/5 * * * *");
        cj.status = Some(CronJobStatus {
            last_schedule_time: Some(Time(at("2024-03-04T05:15:00Z"))),
            ..CronJobStatus::default()
        });
        let plan = plan_cronjob(&cj, &[], at("2024-03-04T05:17:10Z"));
        assert_eq!(plan.create, None);
    }

    #[test]
    fn starting_deadline_drops_old_times() {
        let mut cj = cronjob("0 * * * *");
        cj.spec.starting_deadline_seconds = Some(60);
        let plan = plan_cronjob(&cj, &[], at("2024-03-04T06:00:50Z"));
        assert!(plan.create.is_some());
        let plan = plan_cronjob(&cj, &[], at("2024-03-04T06:01:10Z"));
        assert_eq!(plan.create, None);
        assert_eq!(
            plan.requeue_after,
            Some(Duration::from_secs(3530) + NEXT_SCHEDULE_DELTA)
        );
    }

    #[test]
    fn concurrency_policies() {
        let now = at("2024-03-04T05:10:05Z");
        let running = job("tick-28492145", None, "2024-03-04T05:05:00Z");
        let mut cj = cronjob("*/5 * * * *");
        cj.status = Some(CronJobStatus {
            last_schedule_time: Some(Time(at("2024-03-04T05:05:00Z"))),
            ..CronJobStatus::default()
        });
        // Allow: a second Job beside the running one, which joins the active list.
        let plan = plan_cronjob(&cj, &[&running], now);
        assert!(plan.create.is_some());
        assert_eq!(active(&plan), ["tick-28492145"]);
        // Forbid: wait.
        cj.spec.concurrency_policy = Some("Forbid".into());
        let plan = plan_cronjob(&cj, &[&running], now);
        assert_eq!(plan.create, None);
        assert_eq!(
            plan.requeue_after,
            Some(Duration::from_secs(295) + NEXT_SCHEDULE_DELTA)
        );
        // Replace: the running Job goes.
        cj.spec.concurrency_policy = Some("Replace".into());
        let plan = plan_cronjob(&cj, &[&running], now);
        assert!(plan.create.is_some());
        assert_eq!(plan.delete, ["tick-28492145"]);
        assert!(active(&plan).is_empty());
        assert_eq!(plan.events[0].reason, "SuccessfulDelete");
    }

    #[test]
    fn suspended_cronjobs_schedule_nothing() {
        let mut cj = cronjob("* * * * *");
        cj.spec.suspend = Some(true);
        let plan = plan_cronjob(&cj, &[], at("2024-03-04T05:10:05Z"));
        assert_eq!(plan.create, None);
        assert_eq!(plan.requeue_after, None);
    }

    #[test]
    fn finished_and_missing_jobs_leave_the_active_list() {
        let mut cj = cronjob("0 0 1 1 *");
        let reference = |name: &str| ObjectReference {
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            ..ObjectReference::default()
        };
        cj.status = Some(CronJobStatus {
            active: Some(vec![
                reference("done"),
                reference("gone"),
                reference("runs"),
            ]),
            last_schedule_time: Some(Time(at("2024-01-01T00:00:00Z"))),
            last_successful_time: None,
        });
        let done = job("done", Some("Complete"), "2024-01-01T00:00:05Z");
        let runs = job("runs", None, "2024-01-01T00:00:05Z");
        let plan = plan_cronjob(&cj, &[&done, &runs], at("2024-03-04T05:10:05Z"));
        assert_eq!(active(&plan), ["runs"]);
        assert_eq!(
            plan.status.last_successful_time,
            Some(Time(at("2024-01-01T00:00:05Z")))
        );
        let reasons: Vec<&str> = plan.events.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons, ["SawCompletedJob", "MissingJob"]);
    }

    #[test]
    fn history_limits_delete_the_oldest_finished_jobs() {
        let mut cj = cronjob("0 0 1 1 *");
        cj.spec.successful_jobs_history_limit = Some(2);
        cj.spec.failed_jobs_history_limit = None;
        let jobs = [
            job("ok-3", Some("Complete"), "2024-01-03T00:00:00Z"),
            job("ok-1", Some("Complete"), "2024-01-01T00:00:00Z"),
            job("ok-2", Some("Complete"), "2024-01-02T00:00:00Z"),
            job("ok-4", Some("Complete"), "2024-01-04T00:00:00Z"),
            job("bad-1", Some("Failed"), "2024-01-01T00:00:00Z"),
            job("bad-2", Some("Failed"), "2024-01-02T00:00:00Z"),
            job("runs", None, "2023-01-01T00:00:00Z"),
        ];
        let refs: Vec<&Job> = jobs.iter().collect();
        let plan = plan_cronjob(&cj, &refs, at("2024-03-04T05:10:05Z"));
        // Two successes kept, one failure (the default).
        assert_eq!(plan.delete, ["ok-1", "ok-2", "bad-1"]);
    }

    #[test]
    fn bad_schedules_and_zones_are_reported() {
        let cj = cronjob("61 * * * *");
        let plan = plan_cronjob(&cj, &[], at("2024-03-04T05:10:05Z"));
        assert_eq!(plan.create, None);
        assert_eq!(plan.requeue_after, None);
        assert_eq!(
            plan.events,
            [Note::warning(
                "UnparseableSchedule",
                "unparseable schedule: \"61 * * * *\" : minute field \"61\": 61 is out of range 0-59"
            )]
        );
        let mut cj = cronjob("* * * * *");
        cj.spec.time_zone = Some("Mars/Olympus_Mons".into());
        let plan = plan_cronjob(&cj, &[], at("2024-03-04T05:10:05Z"));
        assert_eq!(plan.create, None);
        assert_eq!(plan.events[0].reason, "UnknownTimeZone");
        let cj = cronjob("0 0 30 2 *");
        let plan = plan_cronjob(&cj, &[], at("2024-03-04T05:10:05Z"));
        assert_eq!(plan.events[0].reason, "InvalidSchedule");
    }
}
