//! Checkpoint store: the engine's serialized state with the WAL lsn it covers.
//!
//! A checkpoint file `checkpoint-{lsn:020}.ckpt` is
//! `"LWCKPT02" | lsn: u64 | state | len: u64 | crc32(lsn, state, len): u32`: the length
//! and checksum trail the state, so a state of any size is streamed to the file as it is
//! encoded, never held whole in memory. Files of the first layout,
//! `"LWCKPT01" | lsn | len | crc32(lsn, len, state) | state`, still load. A checkpoint is
//! written to a temporary file, fsynced, renamed into place and the directory fsynced,
//! so a crash leaves either the old or the new checkpoint, never a half one. The last
//! two are kept: a latest one that fails its checks is set aside and the previous loaded.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::segment::sync_dir;
use super::{Lsn, WalError};

/// The first layout: length and checksum before the state.
const MAGIC_V1: &[u8; 8] = b"LWCKPT01";
/// The current layout: length and checksum after the state.
const MAGIC: &[u8; 8] = b"LWCKPT02";
/// Bytes before the state, and after it, in the current layout.
const HEAD: usize = 16;
const TRAILER: usize = 12;
const PREFIX: &str = "checkpoint-";
const SUFFIX: &str = ".ckpt";
const KEEP: usize = 2;

/// With fsync on, a checkpoint file is made durable every this many bytes as it is written.
const SYNC_SLICE: u64 = 32 << 20;

/// Durable checkpoints in one directory.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
    fsync: bool,
    sync_slice: u64,
}

fn parse_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The checksum of the first layout.
fn checksum_v1(lsn: Lsn, state: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&lsn.to_le_bytes());
    h.update(&(state.len() as u64).to_le_bytes());
    h.update(state);
    h.finalize()
}

/// Writes the state through to the file, counting its bytes and checksumming them.
struct StateWriter<W> {
    inner: W,
    len: u64,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for StateWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A checkpoint file that, with `slice > 0`, is synced every `slice` bytes while it is
/// written. A checkpoint can be a gigabyte; left to one fsync at the end, all of it goes
/// to the disk at once and the WAL's group-commit fsyncs (every acknowledgement) queue
/// behind it. In slices they wait for one slice at most.
struct SlicedSync {
    file: File,
    slice: u64,
    unsynced: u64,
}

impl Write for SlicedSync {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.unsynced += n as u64;
        if self.slice > 0 && self.unsynced >= self.slice {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
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
        Ok(Self {
            dir,
            fsync: true,
            sync_slice: SYNC_SLICE,
        })
    }

    /// Syncs a checkpoint file every `bytes` while it is written (0: only at the end).
    /// The default is 32 MiB; without fsync nothing is synced.
    pub fn with_sync_slice(mut self, bytes: u64) -> Self {
        self.sync_slice = bytes;
        self
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
        self.save_with(lsn, |w| w.write_all(state)).map(|_| ())
    }

    /// As [`CheckpointStore::save`], with the state written by `state` straight to the
    /// file (buffered) rather than passed whole. Returns the state's size in bytes.
    pub fn save_with(
        &self,
        lsn: Lsn,
        state: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<u64, WalError> {
        let name = format!("{PREFIX}{lsn:020}{SUFFIX}");
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let write = || -> std::io::Result<u64> {
            let file = SlicedSync {
                file: File::create(&tmp)?,
                slice: if self.fsync { self.sync_slice } else { 0 },
                unsynced: 0,
            };
            let mut f = BufWriter::with_capacity(1 << 20, file);
            f.write_all(MAGIC)?;
            f.write_all(&lsn.to_le_bytes())?;
            let mut crc = crc32fast::Hasher::new();
            crc.update(&lsn.to_le_bytes());
            let mut w = StateWriter {
                inner: f,
                len: 0,
                crc,
            };
            state(&mut w)?;
            let StateWriter {
                inner: mut f,
                len,
                mut crc,
            } = w;
            crc.update(&len.to_le_bytes());
            f.write_all(&len.to_le_bytes())?;
            f.write_all(&crc.finalize().to_le_bytes())?;
            let f = f.into_inner().map_err(|e| e.into_error())?;
            if self.fsync {
                f.file.sync_all()?;
            }
            Ok(len)
        };
        let len = match write() {
            Ok(len) => len,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(WalError::io("write checkpoint", &tmp, e));
            }
        };
        fs::rename(&tmp, &path).map_err(|e| WalError::io("rename checkpoint", &path, e))?;
        if self.fsync {
            sync_dir(&self.dir)?;
        }
        for (_, old) in self.list()?.into_iter().skip(KEEP) {
            fs::remove_file(&old).map_err(|e| WalError::io("delete checkpoint", &old, e))?;
        }
        Ok(len)
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
    let word = |at: usize| -> u64 {
        let mut x = [0u8; 8];
        x.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(x)
    };
    let crc_at = |at: usize| -> u32 {
        let mut c = [0u8; 4];
        c.copy_from_slice(&bytes[at..at + 4]);
        u32::from_le_bytes(c)
    };
    let v1 = bytes.get(..8) == Some(MAGIC_V1.as_slice());
    if !(v1 || bytes.get(..8) == Some(MAGIC.as_slice())) || bytes.len() < HEAD + TRAILER {
        return Err(Invalid::Bad("bad header".to_string()));
    }
    let stored_lsn = word(8);
    if stored_lsn != lsn {
        return Err(Invalid::Bad(format!(
            "file name says lsn {lsn}, content {stored_lsn}"
        )));
    }
    // (state range, length the file states, stored checksum)
    let (range, len, crc) = if v1 {
        (28..bytes.len(), word(16), crc_at(24))
    } else {
        let end = bytes.len() - TRAILER;
        (HEAD..end, word(end), crc_at(end + 8))
    };
    if range.len() as u64 != len {
        return Err(Invalid::Bad(format!(
            "state is {} bytes, the file says {len}",
            range.len()
        )));
    }
    let state = &bytes[range.clone()];
    let expected = if v1 {
        checksum_v1(lsn, state)
    } else {
        let mut h = crc32fast::Hasher::new();
        h.update(&lsn.to_le_bytes());
        h.update(state);
        h.update(&len.to_le_bytes());
        h.finalize()
    };
    if expected != crc {
        return Err(Invalid::Bad("checksum mismatch".to_string()));
    }
    bytes.truncate(range.end);
    bytes.drain(..range.start);
    Ok(bytes)
}
