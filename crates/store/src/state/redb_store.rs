//! The embedded file backend: one redb file. Each `commit` is one redb write transaction,
//! committed with immediate durability (fsync) before it returns.

use std::path::{Path, PathBuf};

use duplex_engine::{Persist, State};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{
    DEFAULT_MAX_HISTORY, HistoryQuery, HistoryRecord, StateStore, StoreError, decode_state, delta,
    encode_record, full, select_history,
};

/// `meta`, `pair/<id>`, `host/<id>` → JSON.
pub(crate) const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("duplex_records");
/// seq → JSON history record.
const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("duplex_history");
/// Counters: `history_next_seq`.
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("duplex_counters");
const NEXT_SEQ: &str = "history_next_seq";

/// A state store in a redb file.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
    name: String,
    max_history: usize,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .field("max_history", &self.max_history)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the store file at `path`, creating it (and its parent directories) if missing. A
    /// file that is not a redb database is refused and left as it is.
    pub fn open(path: impl AsRef<Path>) -> Result<RedbStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let db = Database::create(&path).map_err(|source| match source {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::DbLocked { path: path.clone() },
            source => StoreError::OpenDb {
                path: path.clone(),
                source,
            },
        })?;
        let store = RedbStore {
            db,
            name: path.display().to_string(),
            path,
            max_history: DEFAULT_MAX_HISTORY,
        };
        // Create the tables, so reads never meet a missing one; a file of another program
        // with tables of the same names but other types fails here.
        store.write(|txn| {
            txn.open_table(RECORDS)?;
            txn.open_table(HISTORY)?;
            txn.open_table(COUNTERS)?;
            Ok(())
        })?;
        Ok(store)
    }

    /// Keeps at most `max` history records (the oldest are dropped at the next commit).
    #[must_use]
    pub fn with_max_history(mut self, max: usize) -> RedbStore {
        self.max_history = max;
        self
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database, for tests that damage it on purpose.
    #[cfg(test)]
    pub(crate) fn database(&self) -> &Database {
        &self.db
    }

    fn read_err(&self) -> impl Fn(redb::Error) -> StoreError + '_ {
        |source| StoreError::ReadDb {
            path: self.path.clone(),
            source,
        }
    }

    /// Runs `f` in one write transaction and commits it; on error nothing is committed.
    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        let wrap = |source: redb::Error| StoreError::WriteDb {
            path: self.path.clone(),
            source,
        };
        let txn = self.db.begin_write().map_err(|e| wrap(e.into()))?;
        let out = f(&txn).map_err(wrap)?;
        txn.commit().map_err(|e| wrap(e.into()))?;
        Ok(out)
    }
}

impl StateStore for RedbStore {
    fn load(&self) -> Result<Option<State>, StoreError> {
        let err = self.read_err();
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let table = txn.open_table(RECORDS).map_err(|e| err(e.into()))?;
        let mut records = Vec::new();
        for item in table.iter().map_err(|e| err(e.into()))? {
            let (k, v) = item.map_err(|e| err(e.into()))?;
            records.push((k.value().to_owned(), v.value().to_vec()));
        }
        decode_state(&self.name, records)
    }

    fn init(&mut self, state: &State) -> Result<(), StoreError> {
        let records = full(state);
        self.write(|txn| {
            let mut table = txn.open_table(RECORDS)?;
            table.retain(|_, _| false)?;
            for (key, value) in &records {
                table.insert(key.as_str(), value.as_slice())?;
            }
            Ok(())
        })
    }

    fn commit(
        &mut self,
        state: &State,
        persist: &Persist,
        history: &[HistoryRecord],
    ) -> Result<(), StoreError> {
        let writes = delta(state, persist);
        let max_history = self.max_history;
        self.write(|txn| {
            let mut table = txn.open_table(RECORDS)?;
            for (key, value) in &writes {
                match value {
                    Some(v) => {
                        table.insert(key.as_str(), v.as_slice())?;
                    }
                    None => {
                        table.remove(key.as_str())?;
                    }
                }
            }
            let mut counters = txn.open_table(COUNTERS)?;
            let mut seq = counters.get(NEXT_SEQ)?.map_or(1, |v| v.value());
            let mut log = txn.open_table(HISTORY)?;
            for r in history {
                let value = encode_record(&HistoryRecord { seq, ..r.clone() });
                log.insert(seq, value.as_slice())?;
                seq += 1;
            }
            counters.insert(NEXT_SEQ, seq)?;
            let mut len = log.len()?;
            while len > max_history as u64 {
                log.pop_first()?;
                len -= 1;
            }
            Ok(())
        })
    }

    fn history(&self, query: &HistoryQuery) -> Result<Vec<HistoryRecord>, StoreError> {
        let err = self.read_err();
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let table = txn.open_table(HISTORY).map_err(|e| err(e.into()))?;
        let start = query.after_seq.map_or(0, |s| s.saturating_add(1));
        let range = table.range(start..).map_err(|e| err(e.into()))?;
        let range = range.map(|item| {
            item.map(|(k, v)| (k.value(), v.value().to_vec()))
                .map_err(|e| err(e.into()))
        });
        if query.newest && query.limit.is_some() {
            select_history(&self.name, query, true, range.rev())
        } else {
            select_history(&self.name, query, false, range)
        }
    }
}
