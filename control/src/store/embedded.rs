//! The embedded store: the zero-setup default, one redb file in the data dir.
//!
//! Layout (three redb tables):
//! - `kv`: key → `create_revision | mod_revision | value`, the current state;
//! - `log`: revision → event (kind, key, value, previous value), the history watches resume from;
//! - `meta`: `revision` (the global revision) and `compacted` (the last compaction revision).
//!
//! All writes go through one writer thread that **group-commits**: it takes every write queued
//! while the previous commit was being fsynced, applies them in one redb transaction (each write
//! still gets its own revision and its own success or failure) and commits with
//! `Durability::Immediate` before any of them is acknowledged. A crash therefore never loses an
//! acknowledged write, and throughput grows with the number of concurrent writers instead of
//! being bounded by one fsync per write.
//!
//! Reads use redb read transactions (snapshots), so a list page and its revision are consistent.
//! Live watch events are fanned out through a broadcast channel after each commit; a watcher that
//! falls behind (or starts from an old revision) reads the missing events from `log`.
//!
//! Difference from etcd: lists always read the latest state; there is no read at a past
//! revision, so a paginated list may observe changes made between its pages (Kubernetes allows
//! this when it answers the continue token without a consistent snapshot).

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
        mpsc,
    },
};

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, oneshot};

use super::{Error, Event, EventKind, KeyValue, ListOptions, ListPage, Result, Store, WatchStream};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<i64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");

/// redb page cache size. 8 MiB holds the hot pages (the meta table, the event log's tail, the
/// B-trees' branch pages and recently written objects); lists and relists read the rest from
/// the page cache of the OS. (32 → 16 → 8 MiB cost no measurable binding rate at 31k pods.)
const CACHE_BYTES: usize = 8 << 20;
/// Most writes applied in one transaction.
const MAX_BATCH: usize = 1024;
/// Live events buffered per watcher before it falls back to reading the log.
const BROADCAST_CAPACITY: usize = 8192;

fn db_err(e: impl Into<redb::Error>) -> Error {
    Error::Embedded(Box::new(e.into()))
}

fn corrupt(what: &str) -> Error {
    Error::Embedded(format!("corrupt {what} record").into())
}

/// Shared state between the store handle and the writer thread.
struct Shared {
    db: Database,
    revision: AtomicI64,
    compacted: AtomicI64,
    events: broadcast::Sender<Event>,
}

enum Op {
    Create {
        key: String,
        value: Bytes,
    },
    Update {
        key: String,
        value: Bytes,
        expected: i64,
    },
    Delete {
        key: String,
        expected: Option<i64>,
    },
    Compact {
        revision: i64,
    },
}

struct Write {
    op: Op,
    reply: oneshot::Sender<Result<KeyValue>>,
}

/// The embedded, file-backed store. See the module docs.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    writes: Option<mpsc::Sender<Write>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir/store.redb`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Embedded(Box::new(e)))?;
        // redb's page cache grows to 1 GiB by default; the hot set of a cluster is far smaller.
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(dir.join("store.redb"))
            .map_err(db_err)?;
        let (revision, compacted) = {
            let txn = db.begin_write().map_err(db_err)?;
            let read = {
                let mut meta = txn.open_table(META).map_err(db_err)?;
                txn.open_table(KV).map_err(db_err)?;
                txn.open_table(LOG).map_err(db_err)?;
                let revision = meta.get("revision").map_err(db_err)?.map(|v| v.value());
                let compacted = meta.get("compacted").map_err(db_err)?.map(|v| v.value());
                match (revision, compacted) {
                    (Some(r), Some(c)) => (r, c),
                    _ => {
                        // A new store starts at revision 1, like etcd.
                        meta.insert("revision", 1).map_err(db_err)?;
                        meta.insert("compacted", 0).map_err(db_err)?;
                        (1, 0)
                    }
                }
            };
            txn.commit().map_err(db_err)?;
            read
        };
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let shared = Arc::new(Shared {
            db,
            revision: AtomicI64::new(revision),
            compacted: AtomicI64::new(compacted),
            events,
        });
        let (writes, rx) = mpsc::channel();
        let writer = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(&writer, &rx))
            .map_err(|e| Error::Embedded(Box::new(e)))?;
        Ok(Self {
            shared,
            writes: Some(writes),
            writer: Some(writer),
        })
    }

    async fn write(&self, op: Op) -> Result<KeyValue> {
        let (reply, rx) = oneshot::channel();
        self.writes
            .as_ref()
            .ok_or(Error::Closed)?
            .send(Write { op, reply })
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }
}

impl Drop for EmbeddedStore {
    /// Finishes queued writes and closes the database file (watch tasks only hold weak
    /// references, so the file is free to be opened again once this returns).
    fn drop(&mut self) {
        self.writes = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn writer_loop(shared: &Shared, rx: &mpsc::Receiver<Write>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let revision = shared.revision.load(Ordering::Acquire);
        let compacted = shared.compacted.load(Ordering::Acquire);
        match apply_batch(&shared.db, revision, compacted, &batch) {
            Ok(applied) => {
                shared.revision.store(applied.revision, Ordering::Release);
                shared.compacted.store(applied.compacted, Ordering::Release);
                for event in applied.events {
                    // No receivers is fine: nobody is watching.
                    let _ = shared.events.send(event);
                }
                for (write, outcome) in batch.into_iter().zip(applied.outcomes) {
                    let _ = write.reply.send(outcome);
                }
            }
            Err(e) => {
                let message = e.to_string();
                tracing::error!(error = %message, "embedded store commit failed");
                for write in batch {
                    let _ = write
                        .reply
                        .send(Err(Error::Embedded(message.clone().into())));
                }
            }
        }
    }
}

struct Applied {
    revision: i64,
    compacted: i64,
    outcomes: Vec<Result<KeyValue>>,
    events: Vec<Event>,
}

fn apply_batch(
    db: &Database,
    mut revision: i64,
    mut compacted: i64,
    batch: &[Write],
) -> Result<Applied> {
    let txn = db.begin_write().map_err(db_err)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut events = Vec::with_capacity(batch.len());
    {
        let mut kv = txn.open_table(KV).map_err(db_err)?;
        let mut log = txn.open_table(LOG).map_err(db_err)?;
        for write in batch {
            let outcome = match &write.op {
                Op::Create { key, value } => {
                    if kv.get(key.as_str()).map_err(db_err)?.is_some() {
                        Err(Error::AlreadyExists(key.clone()))
                    } else {
                        revision += 1;
                        kv.insert(
                            key.as_str(),
                            encode_kv(revision, revision, value).as_slice(),
                        )
                        .map_err(db_err)?;
                        record(
                            &mut log,
                            &mut events,
                            Event {
                                kind: EventKind::Created,
                                key: key.clone(),
                                value: value.clone(),
                                revision,
                                prev_value: None,
                            },
                        )?;
                        Ok(KeyValue {
                            key: key.clone(),
                            value: value.clone(),
                            create_revision: revision,
                            mod_revision: revision,
                        })
                    }
                }
                Op::Update {
                    key,
                    value,
                    expected,
                } => {
                    let current = current(&kv, key)?;
                    match current {
                        None => Err(Error::NotFound(key.clone())),
                        Some(cur) if cur.mod_revision != *expected => Err(Error::Conflict {
                            key: key.clone(),
                            expected: *expected,
                            current: cur.mod_revision,
                        }),
                        Some(cur) => {
                            revision += 1;
                            kv.insert(
                                key.as_str(),
                                encode_kv(cur.create_revision, revision, value).as_slice(),
                            )
                            .map_err(db_err)?;
                            record(
                                &mut log,
                                &mut events,
                                Event {
                                    kind: EventKind::Updated,
                                    key: key.clone(),
                                    value: value.clone(),
                                    revision,
                                    prev_value: Some(cur.value),
                                },
                            )?;
                            Ok(KeyValue {
                                key: key.clone(),
                                value: value.clone(),
                                create_revision: cur.create_revision,
                                mod_revision: revision,
                            })
                        }
                    }
                }
                Op::Delete { key, expected } => {
                    let current = current(&kv, key)?;
                    match current {
                        None => Err(Error::NotFound(key.clone())),
                        Some(cur) if expected.is_some_and(|e| e != cur.mod_revision) => {
                            Err(Error::Conflict {
                                key: key.clone(),
                                expected: expected.unwrap_or_default(),
                                current: cur.mod_revision,
                            })
                        }
                        Some(cur) => {
                            revision += 1;
                            kv.remove(key.as_str()).map_err(db_err)?;
                            record(
                                &mut log,
                                &mut events,
                                Event {
                                    kind: EventKind::Deleted,
                                    key: key.clone(),
                                    value: cur.value.clone(),
                                    revision,
                                    prev_value: None,
                                },
                            )?;
                            Ok(KeyValue {
                                mod_revision: revision,
                                ..cur
                            })
                        }
                    }
                }
                Op::Compact { revision: target } => {
                    if *target > revision {
                        Err(Error::FutureRevision {
                            requested: *target,
                            current: revision,
                        })
                    } else if *target <= compacted {
                        Err(Error::Compacted {
                            requested: *target,
                            compacted,
                        })
                    } else {
                        // Like etcd: history strictly before the compaction revision goes.
                        log.retain_in(..*target, |_, _| false).map_err(db_err)?;
                        compacted = *target;
                        Ok(KeyValue {
                            key: String::new(),
                            value: Bytes::new(),
                            create_revision: 0,
                            mod_revision: *target,
                        })
                    }
                }
            };
            outcomes.push(outcome);
        }
        let mut meta = txn.open_table(META).map_err(db_err)?;
        meta.insert("revision", revision).map_err(db_err)?;
        meta.insert("compacted", compacted).map_err(db_err)?;
    }
    txn.commit().map_err(db_err)?;
    Ok(Applied {
        revision,
        compacted,
        outcomes,
        events,
    })
}

/// Appends `event` to the log table and to the batch's events for the live fan-out.
fn record(
    log: &mut redb::Table<'_, i64, &[u8]>,
    events: &mut Vec<Event>,
    event: Event,
) -> Result<()> {
    log.insert(event.revision, encode_event(&event).as_slice())
        .map_err(db_err)?;
    events.push(event);
    Ok(())
}

/// The current entry of `key`, decoded.
fn current(kv: &redb::Table<'_, &str, &[u8]>, key: &str) -> Result<Option<KeyValue>> {
    kv.get(key)
        .map_err(db_err)?
        .map(|v| decode_kv(key, v.value()))
        .transpose()
}

fn encode_kv(create: i64, modified: i64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + value.len());
    out.extend_from_slice(&create.to_le_bytes());
    out.extend_from_slice(&modified.to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn decode_kv(key: &str, raw: &[u8]) -> Result<KeyValue> {
    let (create, rest) = split_i64(raw).ok_or_else(|| corrupt("kv"))?;
    let (modified, value) = split_i64(rest).ok_or_else(|| corrupt("kv"))?;
    Ok(KeyValue {
        key: key.to_owned(),
        value: Bytes::copy_from_slice(value),
        create_revision: create,
        mod_revision: modified,
    })
}

fn split_i64(raw: &[u8]) -> Option<(i64, &[u8])> {
    let (head, rest) = raw.split_first_chunk::<8>()?;
    Some((i64::from_le_bytes(*head), rest))
}

fn split_bytes(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = raw.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    (rest.len() >= len).then(|| rest.split_at(len))
}

fn push_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Keys and objects are bounded far below 4 GiB by the apiserver's request size limit.
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn encode_event(event: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + event.key.len() + event.value.len());
    out.push(match event.kind {
        EventKind::Created => 0,
        EventKind::Updated => 1,
        EventKind::Deleted => 2,
    });
    push_bytes(&mut out, event.key.as_bytes());
    push_bytes(&mut out, &event.value);
    if let Some(prev) = &event.prev_value {
        push_bytes(&mut out, prev);
    }
    out
}

fn decode_event(revision: i64, raw: &[u8]) -> Result<Event> {
    let bad = || corrupt("log");
    let (kind, rest) = raw.split_first().ok_or_else(bad)?;
    let kind = match kind {
        0 => EventKind::Created,
        1 => EventKind::Updated,
        2 => EventKind::Deleted,
        _ => return Err(bad()),
    };
    let (key, rest) = split_bytes(rest).ok_or_else(bad)?;
    let key = std::str::from_utf8(key).map_err(|_| bad())?.to_owned();
    let (value, rest) = split_bytes(rest).ok_or_else(bad)?;
    let prev_value = if rest.is_empty() {
        None
    } else {
        Some(Bytes::copy_from_slice(split_bytes(rest).ok_or_else(bad)?.0))
    };
    Ok(Event {
        kind,
        key,
        value: Bytes::copy_from_slice(value),
        revision,
        prev_value,
    })
}

/// Log entries a watcher reads at a time when it catches up, so a watcher far behind holds a
/// bounded batch in memory rather than everything it missed.
const CATCH_UP_BATCH: usize = 4096;

/// A batch of logged events read by [`read_log`].
struct LogBatch {
    /// The events under the prefix.
    events: Vec<Event>,
    /// Every revision up to this one has been looked at.
    read_to: i64,
    /// Whether the log holds more after `read_to`.
    more: bool,
}

/// Reads logged events under `prefix` after revision `after`, looking at no more than
/// [`CATCH_UP_BATCH`] log entries.
fn read_log(db: &Database, prefix: &str, after: i64) -> Result<LogBatch> {
    let txn = db.begin_read().map_err(db_err)?;
    let meta = txn.open_table(META).map_err(db_err)?;
    let revision = meta
        .get("revision")
        .map_err(db_err)?
        .map_or(1, |v| v.value());
    let compacted = meta
        .get("compacted")
        .map_err(db_err)?
        .map_or(0, |v| v.value());
    if after < compacted - 1 {
        return Err(Error::Compacted {
            requested: after,
            compacted,
        });
    }
    if after > revision {
        return Err(Error::FutureRevision {
            requested: after,
            current: revision,
        });
    }
    let log = txn.open_table(LOG).map_err(db_err)?;
    let mut events = Vec::new();
    let mut last_read = after;
    for (seen, entry) in log.range(after + 1..).map_err(db_err)?.enumerate() {
        let (rev, raw) = entry.map_err(db_err)?;
        if seen == CATCH_UP_BATCH {
            return Ok(LogBatch {
                events,
                read_to: last_read,
                more: true,
            });
        }
        last_read = rev.value();
        let event = decode_event(rev.value(), raw.value())?;
        if event.key.starts_with(prefix) {
            events.push(event);
        }
    }
    Ok(LogBatch {
        events,
        read_to: revision,
        more: false,
    })
}

/// Sends the logged events under `prefix` after `after` to `tx`, batch by batch, starting with
/// `first` (already read); returns the revision it caught up to, or `None` when the watcher
/// went away or an error was sent.
async fn catch_up(
    shared: &std::sync::Weak<Shared>,
    prefix: &str,
    mut first: Option<LogBatch>,
    mut after: i64,
    tx: &tokio::sync::mpsc::Sender<Result<Event>>,
) -> Option<i64> {
    loop {
        let batch = match first.take() {
            Some(batch) => batch,
            None => {
                let Some(db_shared) = shared.upgrade() else {
                    let _ = tx.send(Err(Error::Closed)).await;
                    return None;
                };
                let log_prefix = prefix.to_owned();
                let read = tokio::task::spawn_blocking(move || {
                    read_log(&db_shared.db, &log_prefix, after)
                })
                .await
                .map_err(|e| Error::Embedded(Box::new(e)))
                .and_then(|r| r);
                match read {
                    Ok(batch) => batch,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return None;
                    }
                }
            }
        };
        for event in batch.events {
            if tx.send(Ok(event)).await.is_err() {
                return None;
            }
        }
        after = after.max(batch.read_to);
        if !batch.more {
            return Some(after);
        }
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let txn = self.shared.db.begin_read().map_err(db_err)?;
        let kv = txn.open_table(KV).map_err(db_err)?;
        kv.get(key)
            .map_err(db_err)?
            .map(|v| decode_kv(key, v.value()))
            .transpose()
    }

    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListPage> {
        let shared = Arc::clone(&self.shared);
        let prefix = prefix.to_owned();
        let run = move || -> Result<ListPage> {
            let txn = shared.db.begin_read().map_err(db_err)?;
            let revision = txn
                .open_table(META)
                .map_err(db_err)?
                .get("revision")
                .map_err(db_err)?
                .map_or(1, |v| v.value());
            let kv = txn.open_table(KV).map_err(db_err)?;
            let start = match &options.start_after {
                Some(after) if after.as_str() >= prefix.as_str() => after.as_str(),
                _ => prefix.as_str(),
            };
            let mut page = ListPage {
                revision,
                ..ListPage::default()
            };
            for entry in kv.range(start..).map_err(db_err)? {
                let (key, raw) = entry.map_err(db_err)?;
                let key = key.value();
                if !key.starts_with(prefix.as_str()) {
                    break;
                }
                if options.start_after.as_deref() == Some(key) {
                    continue;
                }
                if options.limit > 0 && page.items.len() == options.limit {
                    page.more = true;
                    break;
                }
                page.items.push(decode_kv(key, raw.value())?);
            }
            Ok(page)
        };
        tokio::task::spawn_blocking(run)
            .await
            .map_err(|e| Error::Embedded(Box::new(e)))?
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        self.write(Op::Create {
            key: key.to_owned(),
            value,
        })
        .await
    }

    async fn update(&self, key: &str, value: Bytes, expected_revision: i64) -> Result<KeyValue> {
        self.write(Op::Update {
            key: key.to_owned(),
            value,
            expected: expected_revision,
        })
        .await
    }

    async fn delete(&self, key: &str, expected_revision: Option<i64>) -> Result<KeyValue> {
        self.write(Op::Delete {
            key: key.to_owned(),
            expected: expected_revision,
        })
        .await
    }

    async fn watch(&self, prefix: &str, after_revision: i64) -> Result<WatchStream> {
        // Subscribe before reading the log so that no event falls between the two; duplicates
        // are dropped by revision below.
        let mut live = self.shared.events.subscribe();
        let shared = Arc::clone(&self.shared);
        let backlog_prefix = prefix.to_owned();
        // The first batch is read here, so that a compacted revision fails the call itself.
        let first = tokio::task::spawn_blocking(move || {
            read_log(&shared.db, &backlog_prefix, after_revision)
        })
        .await
        .map_err(|e| Error::Embedded(Box::new(e)))??;

        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event>>(1024);
        let shared = Arc::downgrade(&self.shared);
        let prefix = prefix.to_owned();
        tokio::spawn(async move {
            let Some(mut last) = catch_up(&shared, &prefix, Some(first), after_revision, &tx).await
            else {
                return;
            };
            loop {
                let received = tokio::select! {
                    () = tx.closed() => return,
                    received = live.recv() => received,
                };
                match received {
                    Ok(event) => {
                        if event.revision <= last {
                            continue;
                        }
                        last = event.revision;
                        if event.key.starts_with(prefix.as_str())
                            && tx.send(Ok(event)).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Too slow for the live channel: catch up from the log.
                        match catch_up(&shared, &prefix, None, last, &tx).await {
                            Some(caught_up) => last = caught_up,
                            None => return,
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        let _ = tx.send(Err(Error::Closed)).await;
                        return;
                    }
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        self.write(Op::Compact { revision }).await.map(|_| ())
    }

    async fn revision(&self) -> Result<i64> {
        Ok(self.shared.revision.load(Ordering::Acquire))
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        super::super::conformance::run(&store).await;
    }

    #[tokio::test]
    async fn acknowledged_writes_and_history_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (created, updated) = {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            let created = store
                .create("/registry/a/x", Bytes::from_static(b"one"))
                .await
                .unwrap();
            let updated = store
                .update(
                    "/registry/a/x",
                    Bytes::from_static(b"two"),
                    created.mod_revision,
                )
                .await
                .unwrap();
            (created, updated)
        };
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.revision().await.unwrap(), updated.mod_revision);
        let got = store.get("/registry/a/x").await.unwrap().unwrap();
        assert_eq!(got, updated);
        // A watch from before the restart resumes from the persisted log.
        let mut watch = store
            .watch("/registry/a/", created.mod_revision - 1)
            .await
            .unwrap();
        use futures::StreamExt;
        let first = watch.next().await.unwrap().unwrap();
        assert_eq!(
            (first.kind, first.revision),
            (EventKind::Created, created.mod_revision)
        );
        let second = watch.next().await.unwrap().unwrap();
        assert_eq!(second.kind, EventKind::Updated);
        assert_eq!(second.prev_value.as_deref(), Some(&b"one"[..]));
        // Revisions keep counting from where they stopped.
        let next = store
            .create("/registry/a/y", Bytes::from_static(b"three"))
            .await
            .unwrap();
        assert_eq!(next.mod_revision, updated.mod_revision + 1);
    }

    #[tokio::test]
    async fn a_watch_far_behind_catches_up_batch_by_batch() {
        use futures::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let start = store.revision().await.unwrap();
        let n = CATCH_UP_BATCH + CATCH_UP_BATCH / 2;
        let writes = (0..n).map(|i| {
            let (key, other) = (format!("/registry/t/{i}"), format!("/registry/u/{i}"));
            let store = &store;
            async move {
                store.create(&key, Bytes::from_static(b"x")).await.unwrap();
                if i % 2 == 0 {
                    store
                        .create(&other, Bytes::from_static(b"y"))
                        .await
                        .unwrap();
                }
            }
        });
        futures::future::join_all(writes).await;
        let mut watch = store.watch("/registry/t/", start).await.unwrap();
        let mut last = start;
        let mut next = async || {
            tokio::time::timeout(std::time::Duration::from_secs(10), watch.next())
                .await
                .expect("an event within 10 s")
                .unwrap()
                .unwrap()
        };
        for _ in 0..n {
            let event = next().await;
            assert!(event.key.starts_with("/registry/t/"), "{}", event.key);
            assert!(event.revision > last);
            last = event.revision;
        }
        // Then live events follow.
        let live = store
            .create("/registry/t/live", Bytes::from_static(b"z"))
            .await
            .unwrap();
        let event = next().await;
        assert_eq!(
            (event.key.as_str(), event.revision),
            ("/registry/t/live", live.mod_revision)
        );
    }

    #[test]
    fn event_encoding_round_trips() {
        let event = Event {
            kind: EventKind::Updated,
            key: "/registry/pods/ns/a".into(),
            value: Bytes::from_static(b"{}"),
            revision: 42,
            prev_value: Some(Bytes::from_static(b"{\"a\":1}")),
        };
        assert_eq!(decode_event(42, &encode_event(&event)).unwrap(), event);
        assert!(decode_event(1, &[7]).is_err());
        assert!(decode_event(1, &[0, 9, 0, 0, 0, b'a']).is_err());
    }
}
