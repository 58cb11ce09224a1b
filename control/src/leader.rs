//! Leader election through a coordination.k8s.io Lease, as kube-scheduler and
//! kube-controller-manager do it, so several `rudder server`s can share one etcd and only one
//! of them schedules and runs the controllers.
//!
//! - Leases `kube-system/kube-scheduler` and `kube-system/kube-controller-manager`; the holder
//!   identity is `<host>_<uuid>`, kept in the data dir so a restarted server takes its lease
//!   back at once.
//! - Timing as upstream's defaults: a lease lasts 15 s, the leader renews every 2 s and gives up
//!   when it could not renew for 10 s; a candidate retries every 2 s.
//! - Expiry is judged by the candidate's own clock, not by the timestamps in the Lease (clocks of
//!   different machines differ): a lease is expired when its record (holder, renew time) has not
//!   changed for its duration since this candidate first saw it, as client-go does.
//! - Writes are conditional on the resourceVersion read, so two candidates cannot both take a
//!   lease.
//! - A leader that loses its lease stops the whole process, as kube-controller-manager and k3s
//!   do ("leaderelection lost"): its caches and loops can then never act on a stale view. Its
//!   supervisor (systemd, `rudder lab start-node`) starts it again as a candidate.
//!
//! The decision is a pure function, [`decide`], tested without an apiserver.

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};

/// Namespace of the leases.
pub const NAMESPACE: &str = "kube-system";
/// How long a lease lasts without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long a leader keeps trying to renew before it gives up.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// Between attempts.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// What a candidate does with the lease it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Write the lease as ours (create it, renew it, or take over an expired one).
    Take {
        /// The holder changes (not a renewal): set acquireTime, count a transition.
        new_holder: bool,
    },
    /// Someone else holds it and it has not expired.
    Wait,
}

/// The part of a lease record whose change shows its holder is alive.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Record {
    /// Holder identity.
    pub holder: Option<String>,
    /// Last renewal, as written.
    pub renew_time: Option<String>,
    /// Lease duration in seconds.
    pub duration: Option<i32>,
}

impl Record {
    fn of(spec: Option<&LeaseSpec>) -> Self {
        Self {
            holder: spec.and_then(|s| s.holder_identity.clone()),
            renew_time: spec
                .and_then(|s| s.renew_time.as_ref())
                .map(|t| t.0.to_string()),
            duration: spec.and_then(|s| s.lease_duration_seconds),
        }
    }
}

/// Decides for candidate `me`, given the lease's record, and when this candidate first saw that
/// record unchanged (`observed_for`: how long ago).
pub fn decide(record: Option<&Record>, me: &str, observed_for: Duration) -> Decision {
    let Some(record) = record else {
        return Decision::Take { new_holder: true };
    };
    match record.holder.as_deref() {
        Some(holder) if holder == me => Decision::Take { new_holder: false },
        None | Some("") => Decision::Take { new_holder: true },
        Some(_) => {
            let duration = record
                .duration
                .and_then(|d| u64::try_from(d).ok())
                .map_or(LEASE_DURATION, Duration::from_secs);
            if observed_for >= duration {
                Decision::Take { new_holder: true }
            } else {
                Decision::Wait
            }
        }
    }
}

/// The identity of the server whose data dir is `dir`: `<host>_<uuid>`, made once and kept in
/// `dir/leader-identity`. A restarted server thus renews the lease it held at once instead of
/// waiting for it to expire; two servers never share a data dir (its store is locked, and with
/// etcd each server has its own).
pub fn identity(dir: &std::path::Path) -> String {
    let path = dir.join("leader-identity");
    if let Ok(saved) = std::fs::read_to_string(&path)
        && !saved.trim().is_empty()
    {
        return saved.trim().to_owned();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "rudder".into());
    let identity = format!("{host}_{}", uuid::Uuid::new_v4());
    if let Err(e) = std::fs::write(&path, &identity) {
        tracing::warn!(path = %path.display(), error = %e, "cannot keep the leader identity; a restart waits for the lease to expire");
    }
    identity
}

/// A candidate for one lease.
pub struct Candidate {
    api: Api<Lease>,
    name: String,
    me: String,
    /// The record last read and when it was first seen.
    observed: Option<(Record, Instant)>,
}

impl Candidate {
    /// A candidate `me` for lease `kube-system/<name>`.
    pub fn new(client: Client, name: &str, me: &str) -> Self {
        Self {
            api: Api::namespaced(client, NAMESPACE),
            name: name.to_owned(),
            me: me.to_owned(),
            observed: None,
        }
    }

    /// One attempt: read the lease and take or renew it if [`decide`] says so. `Ok(true)` when
    /// this candidate holds the lease now.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.name).await?;
        let record = current.as_ref().map(|l| Record::of(l.spec.as_ref()));
        let now = Instant::now();
        let observed_for = match (&self.observed, &record) {
            (Some((seen, since)), Some(r)) if seen == r => now.duration_since(*since),
            _ => {
                self.observed = record.clone().map(|r| (r, now));
                Duration::ZERO
            }
        };
        let Decision::Take { new_holder } = decide(record.as_ref(), &self.me, observed_for) else {
            return Ok(false);
        };
        let stamp = MicroTime(Timestamp::now());
        let mut spec = current
            .as_ref()
            .and_then(|l| l.spec.clone())
            .unwrap_or_default();
        spec.holder_identity = Some(self.me.clone());
        spec.lease_duration_seconds = Some(LEASE_DURATION.as_secs() as i32);
        spec.renew_time = Some(stamp.clone());
        if new_holder {
            spec.acquire_time = Some(stamp);
            if current.is_some() {
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
        }
        let written = match current {
            Some(mut lease) => {
                // Conditional on the resourceVersion read: a racing candidate gets a conflict.
                lease.spec = Some(spec);
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
            None => {
                spec.lease_transitions = Some(0);
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(NAMESPACE.into()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
        };
        match written {
            Ok(lease) => {
                self.observed = Some((Record::of(lease.spec.as_ref()), Instant::now()));
                Ok(true)
            }
            // Someone else wrote first.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Waits until `me` holds lease `name`, then runs `start` and keeps renewing. Returns only if
/// leadership is lost (after [`RENEW_DEADLINE`] without a successful renewal); the caller should
/// then stop the process.
pub async fn lead<F>(client: Client, name: &str, me: &str, start: F)
where
    F: FnOnce() -> Vec<tokio::task::JoinHandle<()>>,
{
    let mut candidate = Candidate::new(client, name, me);
    let mut waiting_logged = false;
    loop {
        match candidate.try_acquire_or_renew().await {
            Ok(true) => break,
            Ok(false) => {
                if !waiting_logged {
                    tracing::info!(lease = name, "another server leads; standing by");
                    waiting_logged = true;
                }
            }
            Err(e) => tracing::warn!(lease = name, error = %e, "leader election"),
        }
        tokio::time::sleep(RETRY_PERIOD).await;
    }
    tracing::info!(lease = name, identity = me, "became leader");
    let parts = start();
    let mut last_renewal = Instant::now();
    loop {
        tokio::time::sleep(RETRY_PERIOD).await;
        match candidate.try_acquire_or_renew().await {
            Ok(true) => last_renewal = Instant::now(),
            Ok(false) => {
                tracing::error!(lease = name, "another server took the lease");
                break;
            }
            Err(e) => tracing::warn!(lease = name, error = %e, "renewing the lease"),
        }
        if last_renewal.elapsed() > RENEW_DEADLINE {
            tracing::error!(lease = name, "could not renew the lease in time");
            break;
        }
    }
    for part in parts {
        part.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: &str) -> Record {
        Record {
            holder: Some(holder.into()),
            renew_time: Some("2026-11-23T00:00:00Z".into()),
            duration: Some(15),
        }
    }

    #[test]
    fn a_missing_or_released_lease_is_taken() {
        assert_eq!(
            decide(None, "a", Duration::ZERO),
            Decision::Take { new_holder: true }
        );
        let released = Record {
            holder: Some(String::new()),
            ..held_by("x")
        };
        assert_eq!(
            decide(Some(&released), "a", Duration::ZERO),
            Decision::Take { new_holder: true }
        );
    }

    #[test]
    fn the_holder_renews() {
        assert_eq!(
            decide(Some(&held_by("a")), "a", Duration::from_secs(100)),
            Decision::Take { new_holder: false }
        );
    }

    #[test]
    fn another_holder_is_waited_for_until_its_record_is_stale_for_the_duration() {
        let other = held_by("b");
        assert_eq!(
            decide(Some(&other), "a", Duration::from_secs(14)),
            Decision::Wait
        );
        assert_eq!(
            decide(Some(&other), "a", Duration::from_secs(15)),
            Decision::Take { new_holder: true }
        );
        let short = Record {
            duration: Some(3),
            ..other
        };
        assert_eq!(
            decide(Some(&short), "a", Duration::from_secs(3)),
            Decision::Take { new_holder: true }
        );
    }
}
