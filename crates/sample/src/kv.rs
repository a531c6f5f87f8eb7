//! The key-value data: `DIR/kv.json`, rewritten atomically (temp file, fsync, rename, fsync of
//! the directory) on every write, so a crash leaves the old file or the new one, never a mix.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Name of the data file in the data directory.
pub const KV_FILE: &str = "kv.json";

/// A failed read or write of the data file.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The data directory could not be created.
    #[error("create data dir {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The data file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The data file is not a JSON object of strings.
    #[error("parse {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The data file could not be written.
    #[error("write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The data, in memory and on disk.
#[derive(Debug)]
pub struct Kv {
    dir: PathBuf,
    map: BTreeMap<String, String>,
}

impl Kv {
    /// Opens the data in `dir` (created if missing); no data file means no data yet.
    pub fn open(dir: &Path) -> Result<Self, KvError> {
        fs::create_dir_all(dir).map_err(|source| KvError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let mut kv = Self {
            dir: dir.to_owned(),
            map: BTreeMap::new(),
        };
        kv.reload()?;
        Ok(kv)
    }

    /// Reads the data file again (someone else may have replaced it: the host agent refreshes
    /// a standby's data from the init store). On error the data in memory stays as it was.
    pub fn reload(&mut self) -> Result<(), KvError> {
        let path = self.path();
        self.map = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| KvError::Parse {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(KvError::Read { path, source }),
        };
        Ok(())
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }

    /// Sets `key` on disk, then in memory (a failed write changes nothing).
    pub fn set(&mut self, key: &str, value: String) -> Result<(), KvError> {
        let mut next = self.map.clone();
        next.insert(key.to_owned(), value);
        self.persist(&next)?;
        self.map = next;
        Ok(())
    }

    /// Where the data file is.
    pub fn path(&self) -> PathBuf {
        self.dir.join(KV_FILE)
    }

    fn persist(&self, map: &BTreeMap<String, String>) -> Result<(), KvError> {
        let path = self.path();
        let tmp = self.dir.join(format!(".{KV_FILE}.tmp"));
        let write = || -> io::Result<()> {
            let body = serde_json::to_vec_pretty(map).map_err(io::Error::other)?;
            let mut file = File::create(&tmp)?;
            file.write_all(&body)?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|source| KvError::Write { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_land_on_disk_whole_and_reload_reads_a_replaced_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut kv = Kv::open(&data).unwrap();
        assert_eq!(kv.get("a"), None);
        kv.set("a", "one two".into()).unwrap();
        let on_disk: BTreeMap<String, String> =
            serde_json::from_slice(&fs::read(data.join(KV_FILE)).unwrap()).unwrap();
        assert_eq!(on_disk["a"], "one two");
        let names: Vec<_> = fs::read_dir(&data)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, [KV_FILE], "no temporary file left");

        fs::write(data.join(KV_FILE), r#"{"b":"from the init store"}"#).unwrap();
        assert_eq!(kv.get("b"), None, "no reload, no change");
        kv.reload().unwrap();
        assert_eq!(
            (kv.get("a"), kv.get("b")),
            (None, Some("from the init store"))
        );
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it_and_keeps_the_data_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut kv = Kv::open(dir.path()).unwrap();
        kv.set("a", "1".into()).unwrap();
        fs::write(dir.path().join(KV_FILE), "not json").unwrap();
        let err = kv.reload().unwrap_err().to_string();
        assert!(err.contains(KV_FILE), "{err}");
        assert_eq!(kv.get("a"), Some("1"));
        assert!(Kv::open(dir.path()).is_err());
    }
}
