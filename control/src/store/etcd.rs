//! The etcd backend, through etcd-client, in kube-apiserver's key layout
//! (`/registry/<resource>/<namespace>/<name>`).
//!
//! Every conditional write is one etcd transaction comparing revisions, exactly as
//! kube-apiserver's storage does it: create compares `create_revision == 0`, update and delete
//! compare `mod_revision == expected`. The failure branch reads the key so a failed write says
//! whether the key was missing or changed.
//!
//! [`LocalEtcd`] starts Debian's `etcd` on loopback ports of its own, for tests and benchmarks.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use futures::StreamExt;

use super::{
    Error, Event, EventKind, KeyValue, ListOptions, ListPage, Result, Store, WatchStream,
    prefix_end,
};

/// A store backed by an etcd cluster.
pub struct EtcdStore {
    client: Client,
}

impl EtcdStore {
    /// Connects to the etcd endpoints (e.g. `http://127.0.0.1:2379`).
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let client = Client::connect(endpoints, Some(options)).await?;
        Ok(Self { client })
    }

    fn client(&self) -> Client {
        self.client.clone()
    }

    /// Reads `key` after a failed conditional write to report why it failed.
    async fn explain_failure(&self, key: &str, expected: Option<i64>) -> Error {
        match self.get(key).await {
            Ok(None) => Error::NotFound(key.to_owned()),
            Ok(Some(kv)) => match expected {
                Some(expected) => Error::Conflict {
                    key: key.to_owned(),
                    expected,
                    current: kv.mod_revision,
                },
                None => Error::AlreadyExists(key.to_owned()),
            },
            Err(e) => e,
        }
    }
}

fn to_kv(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map_or(0, etcd_client::ResponseHeader::revision)
}

/// Maps etcd's compaction error text to [`Error::Compacted`].
fn map_etcd_error(e: etcd_client::Error, requested: i64) -> Error {
    let text = e.to_string();
    if text.contains("required revision has been compacted") {
        Error::Compacted {
            requested,
            compacted: 0,
        }
    } else if text.contains("required revision is a future revision") {
        Error::FutureRevision {
            requested,
            current: 0,
        }
    } else {
        Error::Etcd(e)
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let resp = self.client().get(key, None).await?;
        Ok(resp.kvs().first().map(to_kv))
    }

    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListPage> {
        // Large lists are read in chunks pinned to the first chunk's revision, so no response
        // exceeds gRPC's message size and the whole list is one consistent snapshot.
        const CHUNK: usize = 1000;
        let mut start = match &options.start_after {
            // The next key after `after` in byte order is `after\0`.
            Some(after) if after.as_str() >= prefix => format!("{after}\0").into_bytes(),
            _ => prefix.as_bytes().to_vec(),
        };
        let end = prefix_end(prefix);
        let mut page = ListPage::default();
        let mut revision = 0;
        loop {
            let want = if options.limit == 0 {
                CHUNK
            } else {
                (options.limit - page.items.len()).min(CHUNK)
            };
            let mut get = GetOptions::new()
                .with_range(end.clone())
                .with_limit(want as i64);
            if revision > 0 {
                get = get.with_revision(revision);
            }
            let resp = self.client().get(start.clone(), Some(get)).await?;
            if revision == 0 {
                revision = header_revision(resp.header());
            }
            page.items.extend(resp.kvs().iter().map(to_kv));
            let done = options.limit > 0 && page.items.len() >= options.limit;
            if !resp.more() || done {
                page.more = resp.more();
                break;
            }
            match resp.kvs().last() {
                Some(last) => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                None => break,
            }
        }
        page.revision = revision;
        Ok(page)
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value.to_vec(), None)]);
        let resp = self.client().txn(txn).await?;
        if !resp.succeeded() {
            return Err(self.explain_failure(key, None).await);
        }
        let revision = header_revision(resp.header());
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision: revision,
            mod_revision: revision,
        })
    }

    async fn update(&self, key: &str, value: Bytes, expected_revision: i64) -> Result<KeyValue> {
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key,
                CompareOp::Equal,
                expected_revision,
            )])
            .and_then([TxnOp::put(key, value.to_vec(), None), TxnOp::get(key, None)]);
        let resp = self.client().txn(txn).await?;
        if !resp.succeeded() {
            return Err(self.explain_failure(key, Some(expected_revision)).await);
        }
        let written = resp.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().map(to_kv),
            _ => None,
        });
        written.ok_or_else(|| Error::NotFound(key.to_owned()))
    }

    async fn delete(&self, key: &str, expected_revision: Option<i64>) -> Result<KeyValue> {
        let compare = match expected_revision {
            Some(rev) => Compare::mod_revision(key, CompareOp::Equal, rev),
            // Any existing key has a create revision above 0.
            None => Compare::create_revision(key, CompareOp::Greater, 0),
        };
        let txn = Txn::new().when([compare]).and_then([TxnOp::delete(
            key,
            Some(DeleteOptions::new().with_prev_key()),
        )]);
        let resp = self.client().txn(txn).await?;
        if !resp.succeeded() {
            return Err(match self.explain_failure(key, expected_revision).await {
                Error::AlreadyExists(key) => Error::NotFound(key),
                other => other,
            });
        }
        let revision = header_revision(resp.header());
        let deleted = resp.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Delete(del) => del.prev_kvs().first().map(to_kv),
            _ => None,
        });
        deleted
            .map(|kv| KeyValue {
                mod_revision: revision,
                ..kv
            })
            .ok_or_else(|| Error::NotFound(key.to_owned()))
    }

    async fn watch(&self, prefix: &str, after_revision: i64) -> Result<WatchStream> {
        let current = self.revision().await?;
        if after_revision > current {
            return Err(Error::FutureRevision {
                requested: after_revision,
                current,
            });
        }
        if after_revision < current {
            // etcd reports a compacted start revision inside the watch stream; ask up front so
            // the caller gets the error from `watch` itself, as with the embedded store.
            self.client()
                .get(
                    "\0",
                    Some(
                        GetOptions::new()
                            .with_count_only()
                            .with_revision(after_revision + 1),
                    ),
                )
                .await
                .map_err(|e| map_etcd_error(e, after_revision))?;
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(after_revision + 1);
        let stream = self.client().watch(prefix, Some(options)).await?;
        let live = futures::stream::unfold(stream, move |mut stream| async move {
            match stream.message().await {
                Ok(Some(resp)) => {
                    let items: Vec<Result<Event>> = if resp.compact_revision() > 0 {
                        vec![Err(Error::Compacted {
                            requested: after_revision,
                            compacted: resp.compact_revision(),
                        })]
                    } else if resp.canceled() {
                        vec![Err(Error::Etcd(etcd_client::Error::WatchError(
                            resp.cancel_reason().to_owned(),
                        )))]
                    } else {
                        convert_events(&resp).into_iter().map(Ok).collect()
                    };
                    Some((futures::stream::iter(items), stream))
                }
                Ok(None) => None,
                Err(e) => Some((futures::stream::iter(vec![Err(Error::Etcd(e))]), stream)),
            }
        })
        .flatten();
        // Stop after the first error, like the embedded backend.
        let stream = live.scan(false, |failed, item| {
            let out = if *failed {
                None
            } else {
                *failed = item.is_err();
                Some(item)
            };
            futures::future::ready(out)
        });
        Ok(Box::pin(stream))
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        self.client()
            .compact(revision, None)
            .await
            .map(|_| ())
            .map_err(|e| map_etcd_error(e, revision))
    }

    async fn revision(&self) -> Result<i64> {
        // A count-only read of an empty range returns the current revision in its header.
        let resp = self
            .client()
            .get("\0", Some(GetOptions::new().with_count_only()))
            .await?;
        Ok(header_revision(resp.header()))
    }

    fn backend(&self) -> &'static str {
        "etcd"
    }
}

fn convert_events(resp: &etcd_client::WatchResponse) -> Vec<Event> {
    resp.events()
        .iter()
        .filter_map(|event| {
            let kv = event.kv()?;
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let prev = event.prev_kv().map(|p| Bytes::copy_from_slice(p.value()));
            Some(match event.event_type() {
                EventType::Put => Event {
                    kind: if kv.create_revision() == kv.mod_revision() {
                        EventKind::Created
                    } else {
                        EventKind::Updated
                    },
                    key,
                    value: Bytes::copy_from_slice(kv.value()),
                    revision: kv.mod_revision(),
                    prev_value: prev,
                },
                EventType::Delete => Event {
                    kind: EventKind::Deleted,
                    key,
                    value: prev.unwrap_or_default(),
                    revision: kv.mod_revision(),
                    prev_value: None,
                },
            })
        })
        .collect()
}

/// A private etcd server on loopback, started from Debian's `etcd` binary in a temporary data
/// directory and killed (and its directory removed) on drop. For tests and benchmarks.
pub struct LocalEtcd {
    child: Child,
    /// The client URL, `http://127.0.0.1:<port>`.
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl LocalEtcd {
    /// Starts etcd and waits (up to 20 s) until it answers.
    pub async fn start() -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("rudder-etcd-").tempdir()?;
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let endpoint = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let binary =
            std::env::var_os("RUDDER_ETCD").map_or_else(|| PathBuf::from("etcd"), PathBuf::from);
        let child = Command::new(&binary)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--name", "rudder-test"])
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("rudder-test={peer}")])
            .args(["--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("starting {}: {e}", binary.display()))
            })?;
        let mut etcd = Self {
            child,
            endpoint,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = etcd.child.try_wait() {
                return Err(std::io::Error::other(format!("etcd exited: {status}")));
            }
            if let Ok(store) = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint)).await
                && store.revision().await.is_ok()
            {
                return Ok(etcd);
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other("etcd did not become ready in 20 s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback TCP port that is free right now.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    #[ignore = "needs Debian's etcd-server; run by cargo xtask ci"]
    async fn conformance() {
        let etcd = LocalEtcd::start().await.expect("start etcd");
        let store = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint))
            .await
            .unwrap();
        super::super::conformance::run(&store).await;
    }
}
