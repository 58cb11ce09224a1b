//! Object storage for the apiserver: one [`Store`] trait with etcd's semantics and two backends.
//!
//! - [`embedded`]: the zero-setup default, a redb file in the data dir with a global revision, an
//!   event log for watch resume and compaction. Writes are group-committed and fsynced before they
//!   are acknowledged.
//! - [`etcd`]: a real etcd cluster through etcd-client, in kube-apiserver's key layout.
//!
//! Semantics shared by both (and checked by one conformance suite, `conformance.rs`):
//! - every write gets the next global revision; a key's `mod_revision` is the Kubernetes
//!   `resourceVersion`, its `create_revision` the revision that created it;
//! - create fails if the key exists; update and delete can require the current `mod_revision`
//!   (optimistic concurrency, 409 Conflict in the apiserver);
//! - a watch delivers every event after a given revision, in revision order, then follows live
//!   changes; asking for a revision older than the last compaction fails with
//!   [`Error::Compacted`] (410 Gone in the apiserver).

pub mod embedded;
pub mod etcd;

#[cfg(test)]
mod conformance;

use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

/// Errors from a store backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key does not exist.
    #[error("key {0} not found")]
    NotFound(String),
    /// Create of a key that exists.
    #[error("key {0} already exists")]
    AlreadyExists(String),
    /// The key's current revision is not the one the caller expected.
    #[error("key {key} was modified: expected revision {expected}, current {current}")]
    Conflict {
        /// The key.
        key: String,
        /// The revision the caller expected.
        expected: i64,
        /// The revision the store holds.
        current: i64,
    },
    /// The requested revision is older than the last compaction.
    #[error("revision {requested} has been compacted (oldest available {compacted})")]
    Compacted {
        /// Revision asked for.
        requested: i64,
        /// The compaction revision.
        compacted: i64,
    },
    /// The requested revision is newer than the store's current revision.
    #[error("revision {requested} is newer than the current revision {current}")]
    FutureRevision {
        /// Revision asked for.
        requested: i64,
        /// Current revision.
        current: i64,
    },
    /// The embedded database failed.
    #[error("embedded store")]
    Embedded(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// etcd failed or is unreachable.
    #[error("etcd")]
    Etcd(#[from] etcd_client::Error),
    /// The backend shut down.
    #[error("the store is closed")]
    Closed,
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A stored key and value with its revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, e.g. `/registry/pods/default/web-0`.
    pub key: String,
    /// The serialised object.
    pub value: Bytes,
    /// Revision of the write that created the key.
    pub create_revision: i64,
    /// Revision of the last write to the key (the object's resourceVersion).
    pub mod_revision: i64,
}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created.
    Created,
    /// The key's value changed.
    Updated,
    /// The key was deleted.
    Deleted,
}

/// One change, as delivered by [`Store::watch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The key.
    pub key: String,
    /// The new value; for [`EventKind::Deleted`] the last value before the delete.
    pub value: Bytes,
    /// The revision of this change.
    pub revision: i64,
    /// The value before an update, when the backend has it.
    pub prev_value: Option<Bytes>,
}

/// Options for [`Store::list`].
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    /// Only keys strictly after this one (pagination).
    pub start_after: Option<String>,
    /// At most this many items; 0 means no limit.
    pub limit: usize,
}

/// One page of a list.
#[derive(Clone, Debug, Default)]
pub struct ListPage {
    /// Items in key order.
    pub items: Vec<KeyValue>,
    /// The store revision the page was read at.
    pub revision: i64,
    /// Whether keys remain after the last item.
    pub more: bool,
}

/// A stream of watch events; an `Err` ends it.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Event>> + Send>>;

/// Key/value storage with etcd's revision semantics. See the module docs.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Lists keys under `prefix` in key order.
    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListPage>;

    /// Creates `key`; fails with [`Error::AlreadyExists`] if it exists.
    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue>;

    /// Replaces the value of `key` if its `mod_revision` is `expected_revision`.
    async fn update(&self, key: &str, value: Bytes, expected_revision: i64) -> Result<KeyValue>;

    /// Deletes `key` (if `expected_revision` is given, only at that revision) and returns the
    /// deleted value with `mod_revision` set to the revision of the delete.
    async fn delete(&self, key: &str, expected_revision: Option<i64>) -> Result<KeyValue>;

    /// Streams every change under `prefix` with a revision greater than `after_revision`.
    async fn watch(&self, prefix: &str, after_revision: i64) -> Result<WatchStream>;

    /// Forgets history at and before `revision`: watches from older revisions fail afterwards.
    async fn compact(&self, revision: i64) -> Result<()>;

    /// The current (latest) revision.
    async fn revision(&self) -> Result<i64>;

    /// A short name for logs and benchmarks (`embedded` or `etcd`).
    fn backend(&self) -> &'static str;
}

/// The smallest key greater than every key starting with `prefix` (etcd's range end).
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // An empty prefix (or all 0xff) means "to the end of the key space": etcd's "\0".
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end("/registry/pods/"), b"/registry/pods0".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }
}
