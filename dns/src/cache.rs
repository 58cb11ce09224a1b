//! The cache of forwarded answers (CoreDNS's `cache` plugin, for names outside the zone).
//!
//! An answer is kept for the smallest TTL of its records, at most [`MAX_TTL`]; a negative one
//! (NXDOMAIN, or the name without records of the type) for the negative TTL (5 s by default,
//! the zone's SOA minimum): short, so a name that appears upstream is not hidden for long. A hit
//! returns the records with their TTLs lowered by the time they have been kept, so clients do
//! not cache past the upstream's TTL. At most [`CAPACITY`] answers are kept; when full, expired
//! ones are dropped, and if none is, all are (one scan per [`CAPACITY`] new answers at most).
//!
//! Cluster names are never cached here: the index answers them, always current.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use hickory_server::proto::rr::{Name, Record, RecordType};

/// Longest a positive answer is kept, seconds (CoreDNS's default).
pub const MAX_TTL: u32 = 3600;

/// How many answers are kept at most.
pub const CAPACITY: usize = 10_000;

/// An upstream outcome: the records (empty: NODATA), or `None` for NXDOMAIN.
pub type Outcome = Option<Vec<Record>>;

struct Entry {
    outcome: Outcome,
    stored: Instant,
    ttl: u32,
}

/// The forwarded-answer cache. See the module docs.
pub struct ForwardCache {
    entries: Mutex<HashMap<(Name, RecordType), Entry>>,
    negative_ttl: u32,
    capacity: usize,
}

impl ForwardCache {
    /// An empty cache keeping negative answers for `negative_ttl` seconds.
    pub fn new(negative_ttl: u32) -> ForwardCache {
        ForwardCache::with_capacity(negative_ttl, CAPACITY)
    }

    fn with_capacity(negative_ttl: u32, capacity: usize) -> ForwardCache {
        ForwardCache {
            entries: Mutex::new(HashMap::new()),
            negative_ttl,
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Name, RecordType), Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The kept answer for `name` and `rtype` at `now`, its TTLs aged; `None` on a miss.
    pub fn get(&self, name: &Name, rtype: RecordType, now: Instant) -> Option<Outcome> {
        let key = (name.to_lowercase(), rtype);
        let mut entries = self.lock();
        let entry = entries.get(&key)?;
        let age = u32::try_from(now.saturating_duration_since(entry.stored).as_secs())
            .unwrap_or(u32::MAX);
        if age >= entry.ttl {
            entries.remove(&key);
            return None;
        }
        Some(entry.outcome.as_ref().map(|records| {
            records
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    r.ttl = r.ttl.saturating_sub(age).max(1);
                    r
                })
                .collect()
        }))
    }

    /// Keeps an upstream answer got at `now`.
    pub fn put(&self, name: &Name, rtype: RecordType, outcome: &Outcome, now: Instant) {
        let ttl = match outcome {
            Some(records) if !records.is_empty() => records
                .iter()
                .map(|r| r.ttl)
                .min()
                .unwrap_or(0)
                .min(MAX_TTL),
            _ => self.negative_ttl,
        };
        if ttl == 0 {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= self.capacity {
            entries.retain(|_, e| {
                now.saturating_duration_since(e.stored) < Duration::from_secs(u64::from(e.ttl))
            });
            // Still full of live answers: start over rather than scan again on every miss.
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(
            (name.to_lowercase(), rtype),
            Entry {
                outcome: outcome.clone(),
                stored: now,
                ttl,
            },
        );
    }

    /// Answers kept (expired ones included until they are looked up or crowded out).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_server::proto::rr::{RData, rdata::A};

    use super::*;

    fn a(name: &Name, ttl: u32) -> Record {
        Record::from_rdata(name.clone(), ttl, RData::A(A(Ipv4Addr::new(192, 0, 2, 1))))
    }

    #[test]
    fn answers_age_and_expire() {
        let cache = ForwardCache::new(5);
        let name = Name::from_ascii("www.example.com.").expect("name");
        let t0 = Instant::now();
        assert!(cache.get(&name, RecordType::A, t0).is_none());
        cache.put(
            &name,
            RecordType::A,
            &Some(vec![a(&name, 300), a(&name, 60)]),
            t0,
        );
        // Any case; TTLs lowered by the age.
        let upper = Name::from_ascii("WWW.Example.COM.").expect("name");
        let hit = cache
            .get(&upper, RecordType::A, t0 + Duration::from_secs(20))
            .expect("hit")
            .expect("records");
        assert_eq!(hit.iter().map(|r| r.ttl).collect::<Vec<_>>(), [280, 40]);
        // Kept for the smallest TTL.
        assert!(
            cache
                .get(&name, RecordType::A, t0 + Duration::from_secs(60))
                .is_none()
        );
        assert!(cache.is_empty());
        // Another type is another answer.
        assert!(cache.get(&name, RecordType::AAAA, t0).is_none());
    }

    #[test]
    fn negative_answers_are_kept_briefly_and_capacity_is_bounded() {
        let cache = ForwardCache::with_capacity(5, 2);
        let t0 = Instant::now();
        let names: Vec<Name> = ["a.test.", "b.test.", "c.test."]
            .iter()
            .map(|n| Name::from_ascii(n).expect("name"))
            .collect();
        cache.put(&names[0], RecordType::A, &None, t0);
        cache.put(&names[1], RecordType::A, &Some(Vec::new()), t0);
        assert_eq!(
            cache.get(&names[0], RecordType::A, t0 + Duration::from_secs(4)),
            Some(None)
        );
        assert_eq!(
            cache.get(&names[1], RecordType::A, t0 + Duration::from_secs(4)),
            Some(Some(Vec::new()))
        );
        // Full of live answers: they go, the new one is kept.
        cache.put(&names[2], RecordType::A, &None, t0 + Duration::from_secs(1));
        assert_eq!(cache.len(), 1);
        assert!(
            cache
                .get(&names[2], RecordType::A, t0 + Duration::from_secs(1))
                .is_some()
        );
        // Expired answers go first: c (stored at 1 s) is gone at 7 s, b stays.
        cache.put(&names[0], RecordType::A, &None, t0 + Duration::from_secs(3));
        cache.put(&names[1], RecordType::A, &None, t0 + Duration::from_secs(7));
        assert_eq!(cache.len(), 2);
        assert!(
            cache
                .get(&names[0], RecordType::A, t0 + Duration::from_secs(7))
                .is_some()
        );
        // A zero TTL is not cached.
        let zero = Name::from_ascii("z.test.").expect("name");
        cache.put(&zero, RecordType::A, &Some(vec![a(&zero, 0)]), t0);
        assert!(cache.get(&zero, RecordType::A, t0).is_none());
    }
}
