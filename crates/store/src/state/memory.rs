//! The in-memory backend: for tests and the simulator. Values are kept as the same JSON the
//! file backend stores, so both behave alike.

use std::collections::BTreeMap;

use duplex_engine::{Persist, State};

use super::{
    DEFAULT_MAX_HISTORY, HistoryQuery, HistoryRecord, StateStore, StoreError, decode_state, delta,
    encode_record, full, select_history,
};

/// What [`StoreError::Corrupt`] names as the store.
const NAME: &str = "memory";

/// A state store in memory; lost when dropped.
#[derive(Debug)]
pub struct MemoryStore {
    records: BTreeMap<String, Vec<u8>>,
    history: BTreeMap<u64, Vec<u8>>,
    next_seq: u64,
    max_history: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store keeping [`DEFAULT_MAX_HISTORY`] history records.
    pub fn new() -> MemoryStore {
        MemoryStore {
            records: BTreeMap::new(),
            history: BTreeMap::new(),
            next_seq: 1,
            max_history: DEFAULT_MAX_HISTORY,
        }
    }

    /// Keeps at most `max` history records (the oldest are dropped at the next commit).
    #[must_use]
    pub fn with_max_history(mut self, max: usize) -> MemoryStore {
        self.max_history = max;
        self
    }

    /// Puts raw bytes under a key (tests of damaged stores).
    #[cfg(test)]
    pub(crate) fn put_raw(&mut self, key: &str, value: &[u8]) {
        self.records.insert(key.to_owned(), value.to_vec());
    }
}

impl StateStore for MemoryStore {
    fn load(&self) -> Result<Option<State>, StoreError> {
        decode_state(
            NAME,
            self.records.iter().map(|(k, v)| (k.clone(), v.clone())),
        )
    }

    fn init(&mut self, state: &State) -> Result<(), StoreError> {
        self.records = full(state).into_iter().collect();
        Ok(())
    }

    fn commit(
        &mut self,
        state: &State,
        persist: &Persist,
        history: &[HistoryRecord],
    ) -> Result<(), StoreError> {
        // Everything is encoded before anything changes: all or nothing.
        let writes = delta(state, persist);
        let mut seq = self.next_seq;
        let mut appended = Vec::with_capacity(history.len());
        for r in history {
            appended.push((seq, encode_record(&HistoryRecord { seq, ..r.clone() })));
            seq += 1;
        }
        for (key, value) in writes {
            match value {
                Some(v) => self.records.insert(key, v),
                None => self.records.remove(&key),
            };
        }
        self.history.extend(appended);
        self.next_seq = seq;
        while self.history.len() > self.max_history {
            self.history.pop_first();
        }
        Ok(())
    }

    fn history(&self, query: &HistoryQuery) -> Result<Vec<HistoryRecord>, StoreError> {
        let start = query.after_seq.map_or(0, |s| s.saturating_add(1));
        let range = self.history.range(start..).map(|(s, v)| Ok((*s, v)));
        if query.newest && query.limit.is_some() {
            select_history(NAME, query, true, range.rev())
        } else {
            select_history(NAME, query, false, range)
        }
    }
}
