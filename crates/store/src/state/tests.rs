//! One conformance suite for every state store backend (garage's `src/db/test.rs` pattern),
//! plus what only a file backend can show: reopening, damage, a second opener.

use std::cell::Cell;

use duplex_engine::model::{FaultKind, HostId, PairId, UnitId};
use duplex_engine::{EngineConfig, Event, HostSpec, Note, PairSpec, Persist, State, step};
use redb::ReadableDatabase;
use serde_json::json;

use super::redb_store::RECORDS;
use super::{HistoryQuery, HistoryRecord, MemoryStore, RedbStore, StateStore, StoreError};
use crate::testutil::within;

/// Seconds a test may take.
const LIMIT: u64 = 60;

/// The history retention the suite's stores are built with.
const MAX: usize = 6;

fn host(id: &str, spare: bool) -> HostSpec {
    HostSpec {
        id: HostId::new(id),
        spare,
        capacity: 2,
    }
}

fn pair(id: &str, act: &str, act_host: &str, sby: &str, sby_host: &str) -> PairSpec {
    PairSpec {
        id: PairId::new(id),
        act: UnitId::new(act),
        act_host: HostId::new(act_host),
        sby: UnitId::new(sby),
        sby_host: HostId::new(sby_host),
    }
}

/// Two pairs on two hosts, one spare.
fn small_state() -> State {
    State::new(
        EngineConfig::default(),
        vec![host("h1", false), host("h2", false), host("s1", true)],
        vec![
            pair("p1", "a", "h1", "b", "h2"),
            pair("p2", "c", "h2", "d", "h1"),
        ],
    )
    .unwrap()
}

/// A history record of an engine note, as a controller would write it.
fn record_of(note: &Note, at_unix_ms: u64) -> HistoryRecord {
    let body = serde_json::to_value(note).unwrap();
    let text = |field: &str| body.get(field).and_then(|v| v.as_str()).map(str::to_owned);
    HistoryRecord {
        seq: 0,
        at_unix_ms,
        kind: text("note").unwrap(),
        pair: text("pair").map(PairId::new),
        unit: text("unit").map(UnitId::new),
        message: format!("{note:?}"),
        body,
    }
}

fn record(kind: &str, pair: Option<&str>, at_unix_ms: u64) -> HistoryRecord {
    HistoryRecord {
        seq: 0,
        at_unix_ms,
        kind: kind.to_owned(),
        pair: pair.map(PairId::new),
        unit: None,
        message: format!("{kind} at {at_unix_ms}"),
        body: json!({ "at": at_unix_ms }),
    }
}

fn seqs(records: &[HistoryRecord]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

/// The conformance suite. `make(max_history)` gives a fresh, empty store.
fn test_suite(make: &dyn Fn(usize) -> Box<dyn StateStore>) {
    fresh_store_loads_nothing(make(MAX).as_mut());
    init_then_load_gives_the_same_state(make(MAX).as_mut());
    commit_of_a_step_then_load_gives_the_stepped_state(make(MAX).as_mut());
    commit_writes_only_the_named_records(make(MAX).as_mut());
    history_filters_limits_and_retention(make(MAX).as_mut());
    history_with_no_retention_keeps_counting(make(0).as_mut());
}

fn fresh_store_loads_nothing(store: &mut dyn StateStore) {
    assert_eq!(store.load().unwrap(), None);
    assert!(store.history(&HistoryQuery::default()).unwrap().is_empty());
}

fn init_then_load_gives_the_same_state(store: &mut dyn StateStore) {
    let state = small_state();
    store.init(&state).unwrap();
    assert_eq!(store.load().unwrap(), Some(state.clone()));
    // init replaces: a pair no longer in the state is gone.
    let mut fewer = state;
    fewer.pairs.remove(&PairId::new("p2"));
    fewer.reindex();
    store.init(&fewer).unwrap();
    assert_eq!(store.load().unwrap(), Some(fewer));
}

fn commit_of_a_step_then_load_gives_the_stepped_state(store: &mut dyn StateStore) {
    let mut state = small_state();
    store.init(&state).unwrap();
    // The seed's S5/S6: a watchdog of the ACT stops duplex and recreates it on the spare.
    let ready = step(
        &mut state,
        Event::FaultReported {
            unit: UnitId::new("a"),
            kind: FaultKind::Watchdog,
        },
        1_000,
    );
    assert!(ready.persist.pairs.contains(&PairId::new("p1")));
    let history: Vec<_> = ready.notes.iter().map(|n| record_of(n, 5_000)).collect();
    assert!(!history.is_empty());
    store.commit(&state, &ready.persist, &history).unwrap();
    // The engine keeps its placement index incrementally; a loaded state rebuilds it.
    let mut expected = state.clone();
    expected.reindex();
    assert_eq!(store.load().unwrap(), Some(expected));
    let stored = store.history(&HistoryQuery::default()).unwrap();
    assert_eq!(
        seqs(&stored),
        (1..=history.len() as u64).collect::<Vec<_>>()
    );
    assert_eq!(stored[0].kind, history[0].kind);
    assert_eq!(stored[0].body, history[0].body);
    assert_eq!(stored[0].pair, Some(PairId::new("p1")));
}

fn commit_writes_only_the_named_records(store: &mut dyn StateStore) {
    let mut state = small_state();
    store.init(&state).unwrap();
    let p1 = PairId::new("p1");
    let p2 = PairId::new("p2");
    let before_p2 = state.pairs[&p2].clone();
    state.pairs.get_mut(&p1).unwrap().duplex = false;
    state.pairs.get_mut(&p2).unwrap().duplex = false;
    state.hosts.get_mut(&HostId::new("s1")).unwrap().maintenance = true;
    state.now = 42;
    let persist = Persist {
        pairs: [p1.clone()].into(),
        hosts: [HostId::new("s1")].into(),
    };
    store.commit(&state, &persist, &[]).unwrap();
    let loaded = store.load().unwrap().unwrap();
    assert!(!loaded.pairs[&p1].duplex);
    assert_eq!(loaded.pairs[&p2], before_p2, "p2 was not named");
    assert!(loaded.hosts[&HostId::new("s1")].maintenance);
    assert_eq!(loaded.now, 42, "meta is written on every commit");
    assert!(store.history(&HistoryQuery::default()).unwrap().is_empty());
}

fn history_filters_limits_and_retention(store: &mut dyn StateStore) {
    let state = small_state();
    store.init(&state).unwrap();
    let none = Persist::default();
    store
        .commit(
            &state,
            &none,
            &[
                record("fault", Some("p1"), 100),
                record("step-started", Some("p1"), 110),
                record("host-lost", None, 120),
            ],
        )
        .unwrap();
    store
        .commit(
            &state,
            &none,
            &[
                record("fault", Some("p2"), 200),
                record("step-succeeded", Some("p1"), 210),
            ],
        )
        .unwrap();
    let all = store.history(&HistoryQuery::default()).unwrap();
    assert_eq!(seqs(&all), vec![1, 2, 3, 4, 5]);
    assert_eq!(all[2].kind, "host-lost");
    let q = |f: &dyn Fn(&mut HistoryQuery)| query(&*store, f);
    assert_eq!(q(&|q| q.pair = Some(PairId::new("p1"))), vec![1, 2, 5]);
    assert_eq!(q(&|q| q.kind = Some("fault".into())), vec![1, 4]);
    assert_eq!(
        q(&|q| {
            q.from_unix_ms = Some(110);
            q.until_unix_ms = Some(210);
        }),
        vec![2, 3, 4]
    );
    assert_eq!(q(&|q| q.after_seq = Some(3)), vec![4, 5]);
    assert_eq!(q(&|q| q.limit = Some(2)), vec![1, 2]);
    assert_eq!(
        q(&|q| {
            q.limit = Some(2);
            q.newest = true;
        }),
        vec![4, 5]
    );
    assert_eq!(
        q(&|q| {
            q.pair = Some(PairId::new("p1"));
            q.after_seq = Some(1);
            q.limit = Some(1);
        }),
        vec![2]
    );
    assert_eq!(q(&|q| q.limit = Some(0)), Vec::<u64>::new());
    // Retention: MAX records are kept, the oldest dropped; seq keeps growing.
    let more: Vec<_> = (0..4).map(|i| record("tick", None, 300 + i)).collect();
    store.commit(&state, &none, &more).unwrap();
    assert_eq!(MAX, 6);
    assert_eq!(query(&*store, &|_| {}), vec![4, 5, 6, 7, 8, 9]);
    assert_eq!(query(&*store, &|q| q.kind = Some("fault".into())), vec![4]);
}

/// The seqs `store` returns for a default query changed by `f`.
fn query(store: &dyn StateStore, f: &dyn Fn(&mut HistoryQuery)) -> Vec<u64> {
    let mut query = HistoryQuery::default();
    f(&mut query);
    seqs(&store.history(&query).unwrap())
}

fn history_with_no_retention_keeps_counting(store: &mut dyn StateStore) {
    let state = small_state();
    store.init(&state).unwrap();
    store
        .commit(&state, &Persist::default(), &[record("x", None, 1)])
        .unwrap();
    assert!(store.history(&HistoryQuery::default()).unwrap().is_empty());
}

#[test]
fn memory_store_passes_the_suite() {
    within(LIMIT, || {
        test_suite(&|max| Box::new(MemoryStore::new().with_max_history(max)));
    });
}

#[test]
fn redb_store_passes_the_suite() {
    within(LIMIT, || {
        let dir = tempfile::tempdir().unwrap();
        let n = Cell::new(0);
        test_suite(&|max| {
            n.set(n.get() + 1);
            let path = dir
                .path()
                .join(format!("nested/dir/state-{}.redb", n.get()));
            Box::new(RedbStore::open(path).unwrap().with_max_history(max))
        });
    });
}

#[test]
fn redb_store_reopens_with_the_same_state_and_continues_the_history() {
    within(LIMIT, || {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let mut state = small_state();
        {
            let mut store = RedbStore::open(&path).unwrap();
            store.init(&state).unwrap();
            let ready = step(
                &mut state,
                Event::FaultReported {
                    unit: UnitId::new("c"),
                    kind: FaultKind::Watchdog,
                },
                2_000,
            );
            let history: Vec<_> = ready.notes.iter().map(|n| record_of(n, 9)).collect();
            store.commit(&state, &ready.persist, &history).unwrap();
        }
        state.reindex();
        let mut store = RedbStore::open(&path).unwrap();
        assert_eq!(store.load().unwrap(), Some(state.clone()));
        let before = store.history(&HistoryQuery::default()).unwrap();
        let last = before.last().unwrap().seq;
        store
            .commit(
                &state,
                &Persist::default(),
                &[record("after-restart", None, 10)],
            )
            .unwrap();
        let after = store
            .history(&HistoryQuery {
                after_seq: Some(last),
                ..HistoryQuery::default()
            })
            .unwrap();
        assert_eq!(seqs(&after), vec![last + 1]);
        assert_eq!(after[0].kind, "after-restart");
    });
}

fn assert_corrupt_key(err: &StoreError, want: &str) {
    match err {
        StoreError::Corrupt { key, .. } => assert_eq!(key, want),
        other => panic!("expected Corrupt for {want}, got {other:?}"),
    }
    assert!(err.to_string().contains(want), "{err}");
}

#[test]
fn redb_store_reports_a_damaged_value_by_its_key_and_overwrites_nothing() {
    within(LIMIT, || {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let mut store = RedbStore::open(&path).unwrap();
        store.init(&small_state()).unwrap();
        let put = |store: &RedbStore, key: &str, value: &[u8]| {
            let txn = store.database().begin_write().unwrap();
            txn.open_table(RECORDS).unwrap().insert(key, value).unwrap();
            txn.commit().unwrap();
        };
        let get = |store: &RedbStore, key: &str| {
            let txn = store.database().begin_read().unwrap();
            let table = txn.open_table(RECORDS).unwrap();
            redb::ReadableTable::get(&table, key)
                .unwrap()
                .map(|v| v.value().to_vec())
        };
        put(&store, "pair/p1", b"\x00garbage{");
        let err = store.load().unwrap_err();
        assert_corrupt_key(&err, "pair/p1");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert_eq!(get(&store, "pair/p1").unwrap(), b"\x00garbage{");
        // A valid pair under another pair's key is foreign too.
        let p2 = serde_json::to_vec(&small_state().pairs[&PairId::new("p2")]).unwrap();
        put(&store, "pair/p1", &p2);
        assert_corrupt_key(&store.load().unwrap_err(), "pair/p1");
        put(&store, "meta", b"{\"format\":\"other/9\"}");
        put(
            &store,
            "pair/p1",
            &serde_json::to_vec(&small_state().pairs[&PairId::new("p1")]).unwrap(),
        );
        assert_corrupt_key(&store.load().unwrap_err(), "meta");
        assert_eq!(get(&store, "meta").unwrap(), b"{\"format\":\"other/9\"}");
    });
}

#[test]
fn memory_store_reports_damaged_values_by_key() {
    within(LIMIT, || {
        let mut store = MemoryStore::new();
        store.init(&small_state()).unwrap();
        store.put_raw("host/h1", b"[]");
        assert_corrupt_key(&store.load().unwrap_err(), "host/h1");
        store.init(&small_state()).unwrap();
        store.put_raw("surprise", b"{}");
        assert_corrupt_key(&store.load().unwrap_err(), "surprise");
        // A unit placed on a host without a record would break the engine's lookups.
        let mut only = MemoryStore::new();
        let mut st = small_state();
        st.hosts.remove(&HostId::new("h2"));
        only.init(&st).unwrap();
        assert_corrupt_key(&only.load().unwrap_err(), "pair/p1");
        // Records without meta are not a fresh store.
        let mut headless = MemoryStore::new();
        headless.put_raw("pair/p1", b"{}");
        assert_corrupt_key(&headless.load().unwrap_err(), "meta");
    });
}

#[test]
fn redb_store_refuses_a_foreign_file_and_a_second_opener() {
    within(LIMIT, || {
        let dir = tempfile::tempdir().unwrap();
        let foreign = dir.path().join("notes.txt");
        std::fs::write(&foreign, b"these are my notes, not a database".repeat(200)).unwrap();
        let err = RedbStore::open(&foreign).unwrap_err();
        assert!(matches!(err, StoreError::OpenDb { .. }), "{err}");
        assert!(err.to_string().contains("notes.txt"), "{err}");
        assert_eq!(
            std::fs::read(&foreign).unwrap(),
            b"these are my notes, not a database".repeat(200)
        );
        let path = dir.path().join("state.redb");
        let _first = RedbStore::open(&path).unwrap();
        let err = RedbStore::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::DbLocked { .. }), "{err}");
        assert!(err.to_string().contains("state.redb"), "{err}");
    });
}
