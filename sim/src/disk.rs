//! The simulated disk under the file log: a [`Storage`] whose files live in memory and whose
//! faults come from the run's seeded random source.
//!
//! Each file keeps its bytes as the process sees them and as they are on stable storage
//! (as of its last sync). At a crash ([`SimDisk::reboot`]) every file falls back to its
//! synced bytes plus what the crash lets survive of the writes made since, by one of four
//! fates drawn per file: all lost; all kept; a **torn** last write (the earlier unsynced
//! writes kept, a prefix of the last one); **reordered** sectors (each sector of the unsynced
//! writes survives or not on its own, so a later one may survive an earlier one; holes read
//! as zeros). Directory entries (create, rename, remove) are durable only after a directory
//! sync. Besides crashes: a bit flip in synced bytes of a segment, a full disk (a write past
//! the capacity writes a prefix and fails with `StorageFull`), and slow fsyncs (a sync
//! advances the simulated clock, sometimes by seconds). Nothing sleeps.
//!
//! A crash is armed at an operation count: the operation that reaches it fails (a write
//! first puts a random prefix of its bytes in the page cache), and every later operation
//! fails until the reboot, as if the machine had lost power there.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use gavel_wal::{AppendFile, DirLock, ReadFile, Storage};

use crate::rng::Rng;

/// Granularity of reordered survival at a crash (small, so records tear often).
const SECTOR_BYTES: u64 = 32;
/// Chance of a slow fsync, in percent.
const SLOW_SYNC_PERCENT: u64 = 3;

/// What became of a file's unsynced writes at a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Every unsynced write was lost.
    Lost,
    /// Every unsynced write survived.
    Kept,
    /// The earlier unsynced writes survived, the last one as a prefix.
    Torn,
    /// Sectors survived independently.
    Reordered,
}

#[derive(Debug, Default, Clone)]
struct File {
    /// What reads see.
    data: Vec<u8>,
    /// What survives a crash for sure.
    durable: Vec<u8>,
    /// Writes since the last sync: (offset, bytes).
    unsynced: Vec<(u64, Vec<u8>)>,
    /// Start offsets of every write (a segment's write batches), for locating a flip.
    writes: Vec<u64>,
}

#[derive(Debug)]
struct Disk {
    rng: Rng,
    files: BTreeMap<u64, File>,
    next_id: u64,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    capacity_bytes: u64,
    clock_us: u64,
    ops: u64,
    crash_at: Option<u64>,
    crashed: bool,
}

/// A bit flipped in synced bytes of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flip {
    /// The segment.
    pub path: PathBuf,
    /// The byte's offset.
    pub offset: u64,
    /// The bit flipped in it.
    pub mask: u8,
    /// Start of the write (batch) holding the byte.
    pub batch_start: u64,
    /// Whether that write is the file's last one.
    pub in_last_batch: bool,
}

/// The simulated disk; clones share it.
#[derive(Debug, Clone)]
pub struct SimDisk(Arc<Mutex<Disk>>);

fn power_loss() -> io::Error {
    io::Error::other("simulated power loss")
}

impl SimDisk {
    /// An empty disk of `capacity_bytes`, its faults drawn from `rng`, its clock at
    /// `clock_us`.
    pub fn new(rng: Rng, capacity_bytes: u64, clock_us: u64) -> SimDisk {
        SimDisk(Arc::new(Mutex::new(Disk {
            rng,
            files: BTreeMap::new(),
            next_id: 1,
            names: BTreeMap::new(),
            durable_names: BTreeMap::new(),
            dirs: BTreeSet::new(),
            capacity_bytes,
            clock_us,
            ops: 0,
            crash_at: None,
            crashed: false,
        })))
    }

    fn disk(&self) -> MutexGuard<'_, Disk> {
        // Invariant: nothing panics while holding the disk lock.
        self.0.lock().expect("sim disk lock poisoned")
    }

    /// The simulated clock, µs.
    pub fn now_us(&self) -> u64 {
        self.disk().clock_us
    }

    /// Moves the simulated clock forward.
    pub fn advance_us(&self, us: u64) {
        self.disk().clock_us += us;
    }

    /// Arms a power loss at the `ops`-th mutating operation from now (1 = the next).
    pub fn crash_after(&self, ops: u64) {
        let mut d = self.disk();
        d.crash_at = Some(d.ops + ops.max(1));
    }

    /// Disarms a pending crash.
    pub fn disarm(&self) {
        self.disk().crash_at = None;
    }

    /// Whether the power is lost (until [`SimDisk::reboot`]).
    pub fn crashed(&self) -> bool {
        self.disk().crashed
    }

    /// Loses power now (if not already lost).
    pub fn crash_now(&self) {
        self.disk().crashed = true;
    }

    /// Bytes stored.
    pub fn used_bytes(&self) -> u64 {
        self.disk().used()
    }

    /// Sets the capacity (a full disk when at most what is used).
    pub fn set_capacity(&self, bytes: u64) {
        self.disk().capacity_bytes = bytes;
    }

    /// Applies a power loss to every file and the directory, and powers on again. Returns
    /// the fate of each file that had unsynced writes.
    pub fn reboot(&self) -> Vec<(PathBuf, Fate)> {
        let mut d = self.disk();
        d.crashed = false;
        d.crash_at = None;
        d.names = d.durable_names.clone();
        let live: BTreeSet<u64> = d.names.values().copied().collect();
        d.files.retain(|id, _| live.contains(id));
        let mut fates = Vec::new();
        let ids: Vec<u64> = d.files.keys().copied().collect();
        for id in ids {
            let fate = match d.rng.below(4) {
                0 => Fate::Lost,
                1 => Fate::Kept,
                2 => Fate::Torn,
                _ => Fate::Reordered,
            };
            let mut file = d.files.remove(&id).unwrap_or_default();
            if !file.unsynced.is_empty() {
                if let Some((path, _)) = d.names.iter().find(|(_, v)| **v == id) {
                    fates.push((path.clone(), fate));
                }
                survive(&mut file, fate, &mut d.rng);
            }
            d.files.insert(id, file);
        }
        fates
    }

    /// Flips one random bit in the synced bytes of a random non-empty file whose name
    /// ends in `.{extension}` (segments: `wal`, snapshots: `snap`).
    pub fn flip_bit(&self, extension: &str) -> Option<Flip> {
        let mut d = self.disk();
        let segments: Vec<(PathBuf, u64)> = d
            .names
            .iter()
            .filter(|(p, id)| {
                p.extension().is_some_and(|e| e == extension)
                    && d.files.get(id).is_some_and(|f| !f.durable.is_empty())
            })
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        if segments.is_empty() {
            return None;
        }
        let (path, id) = segments[d.rng.below(segments.len() as u64) as usize].clone();
        let (offset, bit) = {
            let len = d.files[&id].durable.len() as u64;
            (d.rng.below(len), d.rng.below(8))
        };
        let file = d.files.get_mut(&id).expect("listed above");
        file.durable[offset as usize] ^= 1 << bit;
        file.data[offset as usize] ^= 1 << bit;
        let index = file.writes.partition_point(|&w| w <= offset) - 1;
        Some(Flip {
            path,
            offset,
            mask: 1 << bit,
            batch_start: file.writes[index],
            in_last_batch: index + 1 == file.writes.len(),
        })
    }

    /// The bytes of `path` as reads see them.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let d = self.disk();
        d.names.get(path).map(|id| d.files[id].data.clone())
    }

    /// Counts a mutating operation; fails it if the power is (now) lost.
    fn op(&self) -> Result<MutexGuard<'_, Disk>, io::Error> {
        let mut d = self.disk();
        if d.crashed {
            return Err(power_loss());
        }
        d.ops += 1;
        if d.crash_at == Some(d.ops) {
            d.crashed = true;
            d.crash_at = None;
            // A write at the crash puts a prefix of itself in the page cache first.
            return Ok(d);
        }
        Ok(d)
    }

    fn write(&self, id: u64, buf: &[u8]) -> io::Result<()> {
        let mut d = self.op()?;
        let room = d.capacity_bytes.saturating_sub(d.used());
        let (take, result) = if d.crashed {
            let n = d.rng.below(buf.len() as u64 + 1);
            (n, Err(power_loss()))
        } else if (buf.len() as u64) > room {
            (room, Err(io::Error::from(io::ErrorKind::StorageFull)))
        } else {
            (buf.len() as u64, Ok(()))
        };
        let file = d.files.get_mut(&id).ok_or_else(power_loss)?;
        let offset = file.data.len() as u64;
        if take > 0 {
            file.writes.push(offset);
        }
        let bytes = &buf[..take as usize];
        file.data.extend_from_slice(bytes);
        file.unsynced.push((offset, bytes.to_vec()));
        result
    }

    fn sync(&self, id: u64) -> io::Result<()> {
        let mut d = self.op()?;
        if d.crashed {
            return Err(power_loss());
        }
        let latency = if d.rng.chance(SLOW_SYNC_PERCENT) {
            d.rng.range(200_000, 3_000_000)
        } else {
            d.rng.range(50, 2_000)
        };
        d.clock_us += latency;
        let file = d.files.get_mut(&id).ok_or_else(power_loss)?;
        file.durable = file.data.clone();
        file.unsynced.clear();
        Ok(())
    }

    fn new_file(&self, path: &Path, exclusive: bool) -> io::Result<Box<dyn AppendFile>> {
        let mut d = self.op()?;
        if d.crashed {
            return Err(power_loss());
        }
        if exclusive && d.names.contains_key(path) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let id = d.next_id;
        d.next_id += 1;
        d.files.insert(id, File::default());
        d.names.insert(path.to_path_buf(), id);
        Ok(Box::new(SimFile {
            disk: self.clone(),
            id,
        }))
    }
}

impl Disk {
    fn used(&self) -> u64 {
        self.names
            .values()
            .map(|id| self.files[id].data.len() as u64)
            .sum()
    }
}

/// Rebuilds `file` from its synced bytes and what `fate` lets survive of its unsynced writes.
fn survive(file: &mut File, fate: Fate, rng: &mut Rng) {
    let mut data = file.durable.clone();
    let last = file.unsynced.len() - 1;
    for (index, (offset, bytes)) in file.unsynced.iter().enumerate() {
        let keep: Vec<(u64, u64)> = match fate {
            Fate::Lost => Vec::new(),
            Fate::Kept => vec![(0, bytes.len() as u64)],
            Fate::Torn if index < last => vec![(0, bytes.len() as u64)],
            Fate::Torn => vec![(0, rng.below(bytes.len() as u64 + 1))],
            Fate::Reordered => (0..bytes.len() as u64)
                .step_by(SECTOR_BYTES as usize)
                .filter(|_| rng.chance(50))
                .map(|at| (at, (at + SECTOR_BYTES).min(bytes.len() as u64)))
                .collect(),
        };
        for (from, to) in keep {
            let (start, end) = ((offset + from) as usize, (offset + to) as usize);
            if data.len() < end {
                data.resize(end, 0);
            }
            data[start..end].copy_from_slice(&bytes[from as usize..to as usize]);
        }
    }
    file.writes.retain(|&w| (w as usize) < data.len());
    file.durable = data.clone();
    file.data = data;
    file.unsynced.clear();
}

/// An open file of the simulated disk.
struct SimFile {
    disk: SimDisk,
    id: u64,
}

impl AppendFile for SimFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.disk.write(self.id, buf)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.disk.sync(self.id)
    }
    fn sync_all(&mut self) -> io::Result<()> {
        self.disk.sync(self.id)
    }
}

/// The simulation has one process: the directory lock always succeeds.
struct NoLock;

impl DirLock for NoLock {
    fn unlock(&self) -> io::Result<()> {
        Ok(())
    }
}

impl Storage for SimDisk {
    fn is_dir(&self, dir: &Path) -> bool {
        self.disk().dirs.contains(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.disk().dirs.insert(dir.to_path_buf());
        Ok(())
    }
    fn try_lock(&self, _path: &Path) -> io::Result<Option<Box<dyn DirLock>>> {
        Ok(Some(Box::new(NoLock)))
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let d = self.disk();
        if d.crashed {
            return Err(power_loss());
        }
        Ok(d.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect())
    }
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        self.new_file(path, true)
    }
    fn create_truncate(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        self.new_file(path, false)
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        let d = self.disk();
        let id = *d.names.get(path).ok_or(io::ErrorKind::NotFound)?;
        Ok(Box::new(SimFile {
            disk: self.clone(),
            id,
        }))
    }
    fn open_read(&self, path: &Path, offset: u64) -> io::Result<ReadFile> {
        let d = self.disk();
        if d.crashed {
            return Err(power_loss());
        }
        let id = d.names.get(path).ok_or(io::ErrorKind::NotFound)?;
        let data = &d.files[id].data;
        let from = (offset as usize).min(data.len());
        Ok(ReadFile {
            reader: Box::new(Cursor::new(data[from..].to_vec())),
            len: data.len() as u64,
        })
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut d = self.op()?;
        if d.crashed {
            return Err(power_loss());
        }
        let id = *d.names.get(path).ok_or(io::ErrorKind::NotFound)?;
        let file = d.files.get_mut(&id).ok_or(io::ErrorKind::NotFound)?;
        file.data.truncate(len as usize);
        file.writes.retain(|&w| w < len);
        file.durable = file.data.clone();
        file.unsynced.clear();
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut d = self.op()?;
        if d.crashed {
            return Err(power_loss());
        }
        let id = d.names.remove(from).ok_or(io::ErrorKind::NotFound)?;
        d.names.insert(to.to_path_buf(), id);
        Ok(())
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut d = self.op()?;
        if d.crashed {
            return Err(power_loss());
        }
        d.names.remove(path).ok_or(io::ErrorKind::NotFound)?;
        Ok(())
    }
    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        let mut d = self.op()?;
        if d.crashed {
            return Err(power_loss());
        }
        d.durable_names = d.names.clone();
        Ok(())
    }
}
