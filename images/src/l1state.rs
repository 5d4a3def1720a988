//! Saved L1 states: `l1state/<key>/` holds `state.mig` (a QEMU migration
//! stream written with `migrate "file:..."`) and `state.json` (what went
//! into it, the caller's metadata). An entry is filled in a locked work
//! directory and renamed into place, so a half-written state is never seen;
//! a state QEMU cannot load is discarded with [`discard_l1_state`].

use std::fs;
use std::path::{Path, PathBuf};

use crate::cache::{publish, Cache, FileLock, WorkDir};
use crate::{ImagesError, IoContext};

/// The migration stream inside an entry.
pub const L1_STATE_FILE: &str = "state.mig";
/// The metadata inside an entry, written last.
pub const L1_STATE_META: &str = "state.json";

/// A published saved state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L1State {
    pub dir: PathBuf,
}

impl L1State {
    pub fn state_file(&self) -> PathBuf {
        self.dir.join(L1_STATE_FILE)
    }

    pub fn meta_file(&self) -> PathBuf {
        self.dir.join(L1_STATE_META)
    }

    /// The metadata the saver wrote.
    pub fn meta(&self) -> Result<String, ImagesError> {
        fs::read_to_string(self.meta_file()).ctx("read", &self.meta_file())
    }
}

/// The entry being saved: a locked work directory. Dropping it without
/// [`L1StateWriter::publish`] removes everything written so far.
#[derive(Debug)]
pub struct L1StateWriter {
    work: WorkDir,
    dst: PathBuf,
    _lock: FileLock,
}

impl L1StateWriter {
    /// Where the migration stream goes.
    pub fn state_file(&self) -> PathBuf {
        self.work.path().join(L1_STATE_FILE)
    }

    /// Write the metadata and publish the entry by rename.
    pub fn publish(self, meta: &str) -> Result<L1State, ImagesError> {
        let state = self.state_file();
        let len = fs::metadata(&state).ctx("stat", &state)?.len();
        if len == 0 {
            return Err(ImagesError::BadCacheEntry {
                path: state,
                why: "empty state file".into(),
            });
        }
        let meta_path = self.work.path().join(L1_STATE_META);
        fs::write(&meta_path, meta).ctx("write", &meta_path)?;
        let entry = self.work.path().join("entry");
        fs::create_dir(&entry).ctx("create directory", &entry)?;
        for name in [L1_STATE_FILE, L1_STATE_META] {
            fs::rename(self.work.path().join(name), entry.join(name)).ctx("move", &entry)?;
        }
        publish(&entry, &self.dst)?;
        Ok(L1State {
            dir: self.dst.clone(),
        })
    }
}

/// Either the published entry, or the writer that must fill it (holding the
/// entry's lock, so two runs never save the same state at once).
#[derive(Debug)]
pub enum L1StateSlot {
    Found(L1State),
    Save(L1StateWriter),
}

fn entry_dir(cache: &Cache, key: &str) -> PathBuf {
    cache.root().join("l1state").join(key)
}

fn complete(dir: &Path) -> bool {
    dir.join(L1_STATE_FILE).is_file() && dir.join(L1_STATE_META).is_file()
}

/// The published state of `key`, without locking (entries appear by rename).
pub fn find_l1_state(cache: &Cache, key: &str) -> Option<L1State> {
    let dir = entry_dir(cache, key);
    complete(&dir).then_some(L1State { dir })
}

/// The state of `key`, or the writer to save it with. Blocks while another
/// process saves the same key.
pub fn l1_state_slot(cache: &Cache, key: &str) -> Result<L1StateSlot, ImagesError> {
    let lock = cache.lock(&format!("l1state-{key}"))?;
    let dst = entry_dir(cache, key);
    if complete(&dst) {
        return Ok(L1StateSlot::Found(L1State { dir: dst }));
    }
    if dst.exists() {
        // entries are published whole: this one was damaged by hand
        fs::remove_dir_all(&dst).ctx("remove damaged entry", &dst)?;
    }
    let work = cache.work_dir("l1state")?;
    Ok(L1StateSlot::Save(L1StateWriter {
        work,
        dst,
        _lock: lock,
    }))
}

/// Remove a state QEMU could not load, under its lock; a state that was
/// replaced meanwhile (another directory) is left alone.
pub fn discard_l1_state(cache: &Cache, state: &L1State) -> Result<(), ImagesError> {
    let key = state
        .dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let _lock = cache.lock(&format!("l1state-{key}"))?;
    if !state.dir.exists() {
        return Ok(());
    }
    // rename first: a reader never sees a half-removed entry
    let work = cache.work_dir("l1state-discard")?;
    let trash = work.path().join("old");
    fs::rename(&state.dir, &trash).ctx("move aside", &state.dir)?;
    drop(work);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_published_whole_or_not_at_all() {
        let t = tempfile::tempdir().unwrap();
        let cache = Cache::new(t.path());
        let L1StateSlot::Save(w) = l1_state_slot(&cache, "k1").unwrap() else {
            panic!("new key found")
        };
        fs::write(w.state_file(), b"half").unwrap();
        drop(w);
        assert!(
            find_l1_state(&cache, "k1").is_none(),
            "an abandoned save leaves nothing"
        );
        assert_eq!(fs::read_dir(t.path().join("tmp")).unwrap().count(), 0);

        let L1StateSlot::Save(w) = l1_state_slot(&cache, "k1").unwrap() else {
            panic!("found after abandon")
        };
        fs::write(w.state_file(), b"QEVM").unwrap();
        let state = w.publish("{\"x\":1}").unwrap();
        assert_eq!(find_l1_state(&cache, "k1"), Some(state.clone()));
        assert_eq!(state.meta().unwrap(), "{\"x\":1}");
        let L1StateSlot::Found(again) = l1_state_slot(&cache, "k1").unwrap() else {
            panic!("not found")
        };
        assert_eq!(again, state);

        discard_l1_state(&cache, &state).unwrap();
        assert!(find_l1_state(&cache, "k1").is_none());
        assert!(!state.dir.exists());
    }

    #[test]
    fn an_empty_state_is_not_published() {
        let t = tempfile::tempdir().unwrap();
        let cache = Cache::new(t.path());
        let L1StateSlot::Save(w) = l1_state_slot(&cache, "k2").unwrap() else {
            panic!()
        };
        fs::write(w.state_file(), b"").unwrap();
        assert!(w.publish("{}").is_err());
        assert!(find_l1_state(&cache, "k2").is_none());
    }
}
