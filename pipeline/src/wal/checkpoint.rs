//! Checkpoint store: the engine's serialized state with the WAL lsn it covers.
//!
//! A checkpoint file `checkpoint-{lsn:020}.ckpt` is
//! `"LWCKPT01" | lsn: u64 | len: u64 | crc32(lsn, len, state): u32 | state`. It is written
//! to a temporary file, fsynced, renamed into place and the directory fsynced, so a
//! crash leaves either the old or the new checkpoint, never a half one. The last two
//! are kept: a latest one that fails its checks is set aside and the previous loaded.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::segment::sync_dir;
use super::{Lsn, WalError};

const MAGIC: &[u8; 8] = b"LWCKPT01";
const PREFIX: &str = "checkpoint-";
const SUFFIX: &str = ".ckpt";
const KEEP: usize = 2;

/// Durable checkpoints in one directory.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
    fsync: bool,
}

fn parse_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn checksum(lsn: Lsn, state: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&lsn.to_le_bytes());
    h.update(&(state.len() as u64).to_le_bytes());
    h.update(state);
    h.finalize()
}

impl CheckpointStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, WalError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| WalError::io("create dir", &dir, e))?;
        // Temporary files are from saves a crash interrupted.
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().ends_with(".tmp") {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(Self { dir, fsync: true })
    }

    /// Turns fsync off (tests and benchmarks only).
    pub fn without_fsync(mut self) -> Self {
        self.fsync = false;
        self
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The checkpoint files, newest (highest lsn) first.
    fn list(&self) -> Result<Vec<(Lsn, PathBuf)>, WalError> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(|e| WalError::io("list", &self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| WalError::io("list", &self.dir, e))?;
            if let Some(lsn) = entry.file_name().to_str().and_then(parse_name) {
                out.push((lsn, entry.path()));
            }
        }
        out.sort_by_key(|e| std::cmp::Reverse(e.0));
        Ok(out)
    }

    /// Durably saves `state` as the checkpoint at `lsn`, then deletes all but the
    /// newest two.
    pub fn save(&self, lsn: Lsn, state: &[u8]) -> Result<(), WalError> {
        let name = format!("{PREFIX}{lsn:020}{SUFFIX}");
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(MAGIC)?;
            f.write_all(&lsn.to_le_bytes())?;
            f.write_all(&(state.len() as u64).to_le_bytes())?;
            f.write_all(&checksum(lsn, state).to_le_bytes())?;
            f.write_all(state)?;
            if self.fsync {
                f.sync_all()?;
            }
            Ok(())
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(WalError::io("write checkpoint", &tmp, e));
        }
        fs::rename(&tmp, &path).map_err(|e| WalError::io("rename checkpoint", &path, e))?;
        if self.fsync {
            sync_dir(&self.dir)?;
        }
        for (_, old) in self.list()?.into_iter().skip(KEEP) {
            fs::remove_file(&old).map_err(|e| WalError::io("delete checkpoint", &old, e))?;
        }
        Ok(())
    }

    /// The newest checkpoint that passes its checks, as `(lsn, state)`; None when
    /// there is none. A newer one that fails is renamed `*.corrupt` and skipped.
    pub fn load_latest(&self) -> Result<Option<(Lsn, Vec<u8>)>, WalError> {
        for (lsn, path) in self.list()? {
            match read_checkpoint(&path, lsn) {
                Ok(state) => return Ok(Some((lsn, state))),
                Err(Invalid::Io(e)) => return Err(WalError::io("read checkpoint", &path, e)),
                Err(Invalid::Bad(reason)) => {
                    tracing::warn!(path = %path.display(), reason, "corrupt checkpoint skipped");
                    let mut aside = path.clone().into_os_string();
                    aside.push(".corrupt");
                    let _ = fs::rename(&path, PathBuf::from(aside));
                }
            }
        }
        Ok(None)
    }
}

enum Invalid {
    Io(std::io::Error),
    Bad(String),
}

fn read_checkpoint(path: &Path, lsn: Lsn) -> Result<Vec<u8>, Invalid> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(Invalid::Io)?;
    if bytes.len() < 28 || &bytes[..8] != MAGIC {
        return Err(Invalid::Bad("bad header".to_string()));
    }
    let word = |at: usize| -> u64 {
        let mut x = [0u8; 8];
        x.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(x)
    };
    let (stored_lsn, len) = (word(8), word(16));
    let mut c = [0u8; 4];
    c.copy_from_slice(&bytes[24..28]);
    let crc = u32::from_le_bytes(c);
    if stored_lsn != lsn {
        return Err(Invalid::Bad(format!(
            "file name says lsn {lsn}, content {stored_lsn}"
        )));
    }
    if (bytes.len() - 28) as u64 != len {
        return Err(Invalid::Bad(format!(
            "state is {} bytes, header says {len}",
            bytes.len() - 28
        )));
    }
    let state = bytes.split_off(28);
    if checksum(lsn, &state) != crc {
        return Err(Invalid::Bad("checksum mismatch".to_string()));
    }
    Ok(state)
}
