//! The scheduling queue: which pending pod to try next, and when to try an unschedulable one
//! again. It is kube-scheduler's three queues, keyed by pod UID:
//!
//! - **active**: pods to try now, highest `spec.priority` first, then first come first served;
//! - **unschedulable**: pods whose last attempt found no node. Nothing can change that until the
//!   cluster changes, so they wait for [`Queue::cluster_changed`] (a node added or changed, a
//!   pod deleted or bound, a namespace relabelled) or for their own spec or labels to change,
//!   and are tried again after [`MAX_UNSCHEDULABLE`] regardless;
//! - **backoff**: pods woken from unschedulable, waiting out their back-off (1 s after the
//!   first failed attempt, doubling up to 10 s, as kube-scheduler's defaults) before they
//!   become active. The back-off bounds the work a stream of cluster changes can cause when
//!   many pods cannot be placed.
//!
//! Every operation is O(log n) in the pods it touches, so a pass never walks every pending pod:
//! with 30,000 pods waiting, scanning them all per watch event was the scheduler's bottleneck.

use std::{
    cmp::Reverse,
    collections::{BTreeSet, HashMap, HashSet},
    time::{Duration, Instant},
};

/// Back-off after the first failed attempt.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Longest back-off.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// An unschedulable pod is tried again after this long even if nothing changed (upstream's
/// `podMaxInUnschedulablePodsDuration` is 5 minutes; a small cluster changes less often, and a
/// retry is cheap).
pub const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(60);

/// Order in the active queue: higher priority first, then arrival.
type ActiveKey = (Reverse<i32>, u64, String);

enum State {
    Active {
        key: ActiveKey,
        attempts: u32,
    },
    Unschedulable {
        priority: i32,
        attempts: u32,
        since: Instant,
    },
    Backoff {
        priority: i32,
        attempts: u32,
        until: Instant,
    },
}

/// The queue. See the module docs.
#[derive(Default)]
pub struct Queue {
    active: BTreeSet<ActiveKey>,
    backoff: BTreeSet<(Instant, String)>,
    pods: HashMap<String, State>,
    /// The UIDs in state `Unschedulable`.
    waiting: HashSet<String>,
    /// When [`Queue::flush`] last looked for stale unschedulable pods.
    stale_scan: Option<Instant>,
    seq: u64,
}

impl Queue {
    /// Queues a pending pod that is not queued yet (a new pod, or one whose binding failed).
    /// An unschedulable pod that is added again has changed: it goes to back-off.
    pub fn add(&mut self, uid: &str, priority: i32, now: Instant) {
        match self.pods.get(uid) {
            None => self.activate(uid.to_owned(), priority, 0),
            Some(State::Unschedulable { .. }) => self.wake(uid, now),
            Some(State::Active { .. } | State::Backoff { .. }) => {}
        }
    }

    /// Whether `uid` is queued in any of the three queues.
    pub fn contains(&self, uid: &str) -> bool {
        self.pods.contains_key(uid)
    }

    /// Forgets a pod (bound, being bound, or deleted).
    pub fn remove(&mut self, uid: &str) {
        match self.pods.remove(uid) {
            Some(State::Active { key, .. }) => {
                self.active.remove(&key);
            }
            Some(State::Backoff { until, .. }) => {
                self.backoff.remove(&(until, uid.to_owned()));
            }
            Some(State::Unschedulable { .. }) => {
                self.waiting.remove(uid);
            }
            None => {}
        }
    }

    /// Keeps only the pods for which `keep` holds (after a relist).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let gone: Vec<String> = self.pods.keys().filter(|u| !keep(u)).cloned().collect();
        for uid in gone {
            self.remove(&uid);
        }
    }

    /// Takes the next pod to try, if any is active, with the number of its failed attempts.
    pub fn pop(&mut self) -> Option<(String, u32)> {
        let key = self.active.pop_first()?;
        let attempts = match self.pods.remove(&key.2) {
            Some(State::Active { attempts, .. }) => attempts,
            _ => 0,
        };
        Some((key.2, attempts))
    }

    /// Records that `uid` (just popped) fits no node: it waits in unschedulable.
    /// `attempts` counts how often it failed, this time included, for its back-off.
    pub fn park(&mut self, uid: &str, priority: i32, attempts: u32, now: Instant) {
        self.remove(uid);
        self.pods.insert(
            uid.to_owned(),
            State::Unschedulable {
                priority,
                attempts,
                since: now,
            },
        );
        self.waiting.insert(uid.to_owned());
    }

    /// The cluster changed in a way that may let unschedulable pods fit: all of them go to
    /// back-off. Cheap when none is waiting.
    pub fn cluster_changed(&mut self, now: Instant) {
        for uid in std::mem::take(&mut self.waiting) {
            self.wake(&uid, now);
        }
    }

    /// Moves pods whose back-off is over to active, and (looking at most once a second) pods
    /// unschedulable for longer than [`MAX_UNSCHEDULABLE`] to back-off.
    pub fn flush(&mut self, now: Instant) {
        if self
            .stale_scan
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            self.stale_scan = Some(now);
            self.wake_stale(now);
        }
        while let Some((until, _)) = self.backoff.first()
            && *until <= now
        {
            let Some((_, uid)) = self.backoff.pop_first() else {
                break;
            };
            if let Some(State::Backoff {
                priority, attempts, ..
            }) = self.pods.remove(&uid)
            {
                self.activate(uid, priority, attempts);
            }
        }
    }

    fn wake_stale(&mut self, now: Instant) {
        let stale: Vec<String> = self
            .waiting
            .iter()
            .filter(|uid| {
                matches!(self.pods.get(*uid), Some(State::Unschedulable { since, .. })
                    if now.duration_since(*since) >= MAX_UNSCHEDULABLE)
            })
            .cloned()
            .collect();
        for uid in stale {
            self.wake(&uid, now);
        }
    }

    /// When the next back-off ends, if a pod is backing off.
    pub fn next_due(&self) -> Option<Instant> {
        self.backoff.first().map(|(until, _)| *until)
    }

    fn activate(&mut self, uid: String, priority: i32, attempts: u32) {
        self.seq += 1;
        let key = (Reverse(priority), self.seq, uid.clone());
        self.active.insert(key.clone());
        self.pods.insert(uid, State::Active { key, attempts });
    }

    /// Unschedulable → back-off, ending `backoff(attempts)` after `now`.
    fn wake(&mut self, uid: &str, now: Instant) {
        let Some(State::Unschedulable {
            priority, attempts, ..
        }) = self.pods.remove(uid)
        else {
            return;
        };
        self.waiting.remove(uid);
        let until = now + backoff(attempts);
        self.backoff.insert((until, uid.to_owned()));
        self.pods.insert(
            uid.to_owned(),
            State::Backoff {
                priority,
                attempts,
                until,
            },
        );
    }
}

/// The back-off after `attempts` failed attempts: 1 s, 2 s, 4 s, 8 s, then 10 s.
pub fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    INITIAL_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_then_arrival() {
        let now = Instant::now();
        let mut q = Queue::default();
        q.add("a", 0, now);
        q.add("b", 10, now);
        q.add("c", 0, now);
        q.add("a", 0, now); // already queued: keeps its place
        assert_eq!(q.pop(), Some(("b".into(), 0)));
        assert_eq!(q.pop().map(|p| p.0).as_deref(), Some("a"));
        assert_eq!(q.pop().map(|p| p.0).as_deref(), Some("c"));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn unschedulable_pods_wait_for_a_change_then_back_off() {
        let t0 = Instant::now();
        let mut q = Queue::default();
        q.add("a", 0, t0);
        assert_eq!(q.pop().map(|p| p.0).as_deref(), Some("a"));
        q.park("a", 0, 1, t0);
        assert!(q.contains("a"));
        // Nothing changed: nothing to do, however long the pass waits (up to the stale limit).
        q.flush(t0 + Duration::from_secs(5));
        assert_eq!(q.pop(), None);
        // A change wakes it; it becomes active once its 1 s back-off is over.
        let t1 = t0 + Duration::from_secs(5);
        q.cluster_changed(t1);
        assert_eq!(q.next_due(), Some(t1 + Duration::from_secs(1)));
        q.flush(t1 + Duration::from_millis(500));
        assert_eq!(q.pop(), None);
        q.flush(t1 + Duration::from_secs(1));
        assert_eq!(q.pop(), Some(("a".into(), 1)));
        // The third failure backs off 4 s.
        q.park("a", 0, 3, t1);
        q.cluster_changed(t1);
        assert_eq!(q.next_due(), Some(t1 + Duration::from_secs(4)));
        q.flush(t1 + Duration::from_secs(4));
        assert_eq!(q.pop(), Some(("a".into(), 3)));
    }

    #[test]
    fn stale_unschedulable_pods_are_retried_and_removal_forgets() {
        let t0 = Instant::now();
        let mut q = Queue::default();
        q.add("a", 0, t0);
        q.add("b", 0, t0);
        let (a, b) = (q.pop(), q.pop());
        assert_eq!((a, b), (Some(("a".into(), 0)), Some(("b".into(), 0))));
        q.park("a", 0, 1, t0);
        q.park("b", 0, 1, t0);
        q.remove("b");
        assert!(!q.contains("b"));
        let later = t0 + MAX_UNSCHEDULABLE;
        q.flush(later);
        q.flush(later + INITIAL_BACKOFF);
        assert_eq!(q.pop().map(|p| p.0).as_deref(), Some("a"));
        assert_eq!(q.pop(), None);
        // An updated unschedulable pod goes to back-off at once.
        q.park("a", 0, 1, later);
        q.add("a", 0, later);
        assert_eq!(q.next_due(), Some(later + INITIAL_BACKOFF));
        q.retain(|_| false);
        assert!(!q.contains("a"));
        assert_eq!(q.next_due(), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_limit() {
        let secs: Vec<u64> = (1..=6).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
