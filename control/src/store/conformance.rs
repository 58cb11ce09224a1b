//! The conformance suite every [`Store`] backend must pass: the embedded store and etcd run the
//! same checks, so the apiserver can rely on one set of semantics.

use std::{collections::HashSet, time::Duration};

use bytes::Bytes;
use futures::StreamExt;

use super::{Error, EventKind, ListOptions, Store, WatchStream};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn next(watch: &mut WatchStream) -> super::Event {
    tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("watch event within 10 s")
        .expect("watch stream ended")
        .expect("watch event")
}

/// Runs every check against `store`, which must be empty.
pub async fn run(store: &dyn Store) {
    crud(store).await;
    list(store).await;
    watch(store).await;
    concurrency(store).await;
    compaction(store).await;
}

async fn crud(store: &dyn Store) {
    let start = store.revision().await.unwrap();
    let created = store
        .create("/registry/things/ns/a", b("v1"))
        .await
        .unwrap();
    assert!(created.mod_revision > start);
    assert_eq!(created.create_revision, created.mod_revision);
    assert_eq!(store.revision().await.unwrap(), created.mod_revision);

    let got = store.get("/registry/things/ns/a").await.unwrap().unwrap();
    assert_eq!(got, created);
    assert!(
        store
            .get("/registry/things/ns/missing")
            .await
            .unwrap()
            .is_none()
    );

    match store.create("/registry/things/ns/a", b("again")).await {
        Err(Error::AlreadyExists(key)) => assert_eq!(key, "/registry/things/ns/a"),
        other => panic!("second create: {other:?}"),
    }
    // A failed write changes nothing.
    assert_eq!(store.revision().await.unwrap(), created.mod_revision);

    let updated = store
        .update("/registry/things/ns/a", b("v2"), created.mod_revision)
        .await
        .unwrap();
    assert!(updated.mod_revision > created.mod_revision);
    assert_eq!(updated.create_revision, created.create_revision);
    assert_eq!(updated.value, b("v2"));

    match store
        .update("/registry/things/ns/a", b("stale"), created.mod_revision)
        .await
    {
        Err(Error::Conflict {
            expected, current, ..
        }) => {
            assert_eq!(expected, created.mod_revision);
            assert_eq!(current, updated.mod_revision);
        }
        other => panic!("stale update: {other:?}"),
    }
    assert!(matches!(
        store.update("/registry/things/ns/nope", b("x"), 1).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        store
            .delete("/registry/things/ns/a", Some(created.mod_revision))
            .await,
        Err(Error::Conflict { .. })
    ));

    let deleted = store
        .delete("/registry/things/ns/a", Some(updated.mod_revision))
        .await
        .unwrap();
    assert_eq!(deleted.value, b("v2"));
    assert!(deleted.mod_revision > updated.mod_revision);
    assert_eq!(store.revision().await.unwrap(), deleted.mod_revision);
    assert!(store.get("/registry/things/ns/a").await.unwrap().is_none());
    assert!(matches!(
        store.delete("/registry/things/ns/a", None).await,
        Err(Error::NotFound(_))
    ));

    // Unconditional delete.
    store.create("/registry/things/ns/b", b("x")).await.unwrap();
    store.delete("/registry/things/ns/b", None).await.unwrap();
}

async fn list(store: &dyn Store) {
    for name in ["c", "a", "e", "b", "d"] {
        store
            .create(&format!("/registry/items/ns1/{name}"), b(name))
            .await
            .unwrap();
    }
    // Keys that share a textual prefix but belong elsewhere.
    store
        .create("/registry/items/ns10/a", b("x"))
        .await
        .unwrap();
    store
        .create("/registry/itemsx/ns1/a", b("x"))
        .await
        .unwrap();

    let all = store
        .list("/registry/items/ns1/", ListOptions::default())
        .await
        .unwrap();
    let keys: Vec<_> = all.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "/registry/items/ns1/a",
            "/registry/items/ns1/b",
            "/registry/items/ns1/c",
            "/registry/items/ns1/d",
            "/registry/items/ns1/e"
        ]
    );
    assert!(!all.more);
    assert_eq!(all.revision, store.revision().await.unwrap());
    assert_eq!(all.items[0].value, b("a"));

    let everything = store
        .list("/registry/items/", ListOptions::default())
        .await
        .unwrap();
    assert_eq!(everything.items.len(), 6);

    // Pages of two visit every key once.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list(
                "/registry/items/",
                ListOptions {
                    start_after: after.clone(),
                    limit: 2,
                },
            )
            .await
            .unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(page.items.iter().map(|kv| kv.key.clone()));
        after = page.items.last().map(|kv| kv.key.clone());
        if !page.more {
            break;
        }
    }
    let expected: Vec<_> = everything.items.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(seen, expected);

    let empty = store
        .list("/registry/nothing-here/", ListOptions::default())
        .await
        .unwrap();
    assert!(empty.items.is_empty() && !empty.more);
}

async fn watch(store: &dyn Store) {
    let before = store.create("/registry/w/ns/early", b("0")).await.unwrap();
    let from = before.mod_revision;
    let one = store.create("/registry/w/ns/one", b("1")).await.unwrap();
    store
        .create("/registry/other/ns/one", b("x"))
        .await
        .unwrap();
    let two = store
        .update("/registry/w/ns/one", b("2"), one.mod_revision)
        .await
        .unwrap();

    // History after `from`, filtered by prefix.
    let mut watch = store.watch("/registry/w/", from).await.unwrap();
    let e = next(&mut watch).await;
    assert_eq!(
        (e.kind, e.key.as_str(), e.revision),
        (EventKind::Created, "/registry/w/ns/one", one.mod_revision)
    );
    let e = next(&mut watch).await;
    assert_eq!((e.kind, e.revision), (EventKind::Updated, two.mod_revision));
    assert_eq!(e.value, b("2"));
    assert_eq!(e.prev_value, Some(b("1")));

    // Then live changes, in order.
    let deleted = store.delete("/registry/w/ns/one", None).await.unwrap();
    store
        .create("/registry/other/ns/two", b("x"))
        .await
        .unwrap();
    let three = store.create("/registry/w/ns/three", b("3")).await.unwrap();
    let e = next(&mut watch).await;
    assert_eq!(
        (e.kind, e.revision),
        (EventKind::Deleted, deleted.mod_revision)
    );
    assert_eq!(e.value, b("2"), "a delete event carries the last value");
    let e = next(&mut watch).await;
    assert_eq!(
        (e.kind, e.revision),
        (EventKind::Created, three.mod_revision)
    );

    // A watch from "now" sees only what comes next.
    let now = store.revision().await.unwrap();
    let mut live = store.watch("/registry/w/", now).await.unwrap();
    let four = store.create("/registry/w/ns/four", b("4")).await.unwrap();
    let e = next(&mut live).await;
    assert_eq!(e.revision, four.mod_revision);

    // Many writes in a burst arrive complete and in order.
    let mut burst = store
        .watch("/registry/burst/", store.revision().await.unwrap())
        .await
        .unwrap();
    let mut revisions = Vec::new();
    for i in 0..300 {
        revisions.push(
            store
                .create(&format!("/registry/burst/ns/{i}"), b("x"))
                .await
                .unwrap()
                .mod_revision,
        );
    }
    for expected in revisions {
        assert_eq!(next(&mut burst).await.revision, expected);
    }

    let future = store.revision().await.unwrap() + 100;
    assert!(matches!(
        store.watch("/registry/w/", future).await,
        Err(Error::FutureRevision { .. })
    ));
}

async fn concurrency(store: &dyn Store) {
    // Concurrent creates all succeed with distinct revisions.
    let creates = (0..64).map(|i| async move {
        store
            .create(&format!("/registry/conc/ns/{i}"), b("x"))
            .await
            .unwrap()
            .mod_revision
    });
    let revisions: HashSet<i64> = futures::future::join_all(creates)
        .await
        .into_iter()
        .collect();
    assert_eq!(revisions.len(), 64);

    // Concurrent updates from the same revision: exactly one wins.
    let base = store
        .create("/registry/conc/ns/race", b("0"))
        .await
        .unwrap();
    let updates = (0..16).map(|i| {
        let value = b(&i.to_string());
        async move {
            store
                .update("/registry/conc/ns/race", value, base.mod_revision)
                .await
        }
    });
    let results = futures::future::join_all(updates).await;
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "{results:?}");
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, Error::Conflict { .. }))
    );
}

async fn compaction(store: &dyn Store) {
    let a = store
        .create("/registry/compact/ns/a", b("1"))
        .await
        .unwrap();
    let b2 = store
        .update("/registry/compact/ns/a", b("2"), a.mod_revision)
        .await
        .unwrap();
    let c = store
        .update("/registry/compact/ns/a", b("3"), b2.mod_revision)
        .await
        .unwrap();
    store.compact(c.mod_revision).await.unwrap();

    match store.watch("/registry/compact/", a.mod_revision).await {
        Err(Error::Compacted { .. }) => {}
        Ok(_) => panic!("watch from a compacted revision must fail"),
        Err(e) => panic!("unexpected error {e:?}"),
    }
    // The compaction revision itself is still watchable.
    let mut watch = store
        .watch("/registry/compact/", c.mod_revision - 1)
        .await
        .unwrap();
    let e = next(&mut watch).await;
    assert_eq!(e.revision, c.mod_revision);
    // Current state is untouched by compaction.
    assert_eq!(
        store
            .get("/registry/compact/ns/a")
            .await
            .unwrap()
            .unwrap()
            .value,
        b("3")
    );
    assert!(
        store.compact(a.mod_revision).await.is_err(),
        "compacting backwards"
    );
    let future = store.revision().await.unwrap() + 10;
    assert!(
        store.compact(future).await.is_err(),
        "compacting the future"
    );
}
