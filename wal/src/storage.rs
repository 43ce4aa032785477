//! The file operations of the file log behind one seam: [`Storage`], which [`OsStorage`]
//! (the real filesystem, the default) implements and a simulated disk can implement
//! (`gavel-sim`), so the writer, recovery and snapshots run unchanged over either.
//!
//! Covered: everything the writer thread, [`Wal::open`](crate::Wal::open) (recovery scan,
//! torn-tail truncation, the directory lock), replay ([`Records`](crate::Records)),
//! compaction and snapshots do to files. The trait is object-safe and coarse (one call per
//! open, write, sync, truncate, rename, remove, list), so a fault injector sees every
//! operation whose failure or loss the log must survive.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A file opened for appending: a segment, or a snapshot's temporary file.
pub trait AppendFile: Send {
    /// Appends all of `buf` at the end of the file.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes the data written so far durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Makes the data and the file's metadata durable (`fsync`).
    fn sync_all(&mut self) -> io::Result<()>;
}

/// A file opened for reading from an offset, and its length when opened.
pub struct ReadFile {
    /// Reads from the requested offset.
    pub reader: Box<dyn Read + Send>,
    /// The file's length in bytes.
    pub len: u64,
}

impl std::fmt::Debug for ReadFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadFile").field("len", &self.len).finish()
    }
}

/// An exclusive lock on a log directory; the holder releases it with `unlock` or by dying.
pub trait DirLock: Send + Sync {
    /// Releases the lock.
    fn unlock(&self) -> io::Result<()>;
}

/// The filesystem operations of the file log.
pub trait Storage: Send + Sync + 'static {
    /// Whether `dir` exists as a directory.
    fn is_dir(&self, dir: &Path) -> bool;
    /// Creates `dir` and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Takes the exclusive lock file at `path` (created if missing); `None` if another
    /// holder has it.
    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn DirLock>>>;
    /// The paths of the entries of `dir`, in no particular order.
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// Creates `path`, which must not exist, for appending.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn AppendFile>>;
    /// Creates `path` empty (truncating it if it exists) for appending.
    fn create_truncate(&self, path: &Path) -> io::Result<Box<dyn AppendFile>>;
    /// Opens the existing `path` for appending at its end.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>>;
    /// Opens `path` for reading from `offset`.
    fn open_read(&self, path: &Path, offset: u64) -> io::Result<ReadFile>;
    /// Cuts `path` to `len` bytes and makes that durable (`fsync`).
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes the file `path`.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` (created, renamed, removed files) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real filesystem (`std::fs`): the log's default storage.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsStorage;

impl AppendFile for File {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        Write::write_all(self, buf)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }
    fn sync_all(&mut self) -> io::Result<()> {
        File::sync_all(self)
    }
}

impl DirLock for File {
    fn unlock(&self) -> io::Result<()> {
        File::unlock(self)
    }
}

impl Storage for OsStorage {
    fn is_dir(&self, dir: &Path) -> bool {
        dir.is_dir()
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }
    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn DirLock>>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Box::new(file))),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        fs::read_dir(dir)?
            .map(|entry| entry.map(|e| e.path()))
            .collect()
    }
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(path)?;
        Ok(Box::new(file))
    }
    fn create_truncate(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Box::new(file))
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        Ok(Box::new(OpenOptions::new().append(true).open(path)?))
    }
    fn open_read(&self, path: &Path, offset: u64) -> io::Result<ReadFile> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        if offset > 0 {
            file.seek(SeekFrom::Start(offset))?;
        }
        Ok(ReadFile {
            reader: Box::new(file),
            len,
        })
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(len)?;
        file.sync_all()
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir).and_then(|d| d.sync_all())
    }
}
