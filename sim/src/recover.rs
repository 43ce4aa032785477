//! Recovery after a crash, as a node does it (open the log, restore the newest snapshot,
//! replay through `Replayer`, append a decision's missing derived events), and the checks
//! on what it recovered: nothing acknowledged durable lost, the state one the live engine
//! had (same hash, same model), and a bit flip refused or truncated exactly as
//! `wal/src/segment.rs` documents.

use gavel_engine::{Engine, Replayer};
use gavel_proto::convert::state::decode_snapshot;
use gavel_proto::convert::wal::decode_record;
use gavel_wal::frame::HEADER_BYTES;
use gavel_wal::{Lsn, Storage, WalError, latest_snapshot_in};

use crate::disk::Flip;
use crate::world::{Failure, LogSink, Node, World, dir, engine_config, open_wal};

/// Recovers a node into `world`. `Ok(false)`: the power failed again during recovery.
pub(crate) fn recover(world: &mut World) -> Result<bool, Failure> {
    let node = match rebuild(world) {
        Ok(node) => node,
        Err(_) if world.disk.crashed() => return Ok(false),
        Err(what) => {
            return Err(world.fail(
                "recovery refused a sound log",
                format!("recovery refused a sound log: {what}"),
            ));
        }
    };
    let lsn = node.wal.last_appended_lsn();
    let hash = node.engine.state_hash();
    world.node = Some(node);
    if lsn < world.acked_lsn {
        return Err(world.fail("durable-acked records lost", format!(
            "durable-acked records lost: the log recovered to lsn {lsn}, lsn {} was acknowledged durable",
            world.acked_lsn
        )));
    }
    let point = match world.pending.take() {
        Some(p) if p.lsn == lsn => p,
        _ if world.durable.lsn == lsn => world.durable.clone(),
        other => {
            return Err(world.fail("recovered off a decision boundary", format!(
                "the log recovered to lsn {lsn}, not a decision boundary (durable {}, in flight {:?})",
                world.durable.lsn,
                other.map(|p| p.lsn)
            )));
        }
    };
    if point.hash != hash {
        return Err(world.fail(
            "replayed state hash differs from the live one",
            format!("the replayed state hash differs from the live one at lsn {lsn}"),
        ));
    }
    world.note(|| format!("recovered to lsn {lsn}, hash matches the live engine"));
    world.model = point.model.clone();
    world.next_auction = world.model.auctions.keys().max().map_or(1, |id| id + 1);
    world.durable = point;
    world.acked_lsn = lsn;
    Ok(true)
}

/// Opens the log and rebuilds the engine; the error as text.
fn rebuild(world: &mut World) -> Result<Node, String> {
    let (wal, recovery) = open_wal(&world.disk, &world.config).map_err(|e| e.to_string())?;
    if let Some(torn) = recovery.torn_tail() {
        world.note(|| format!("torn tail truncated: {torn:?}"));
        world.stats.torn_tails += 1;
    }
    let engine = Engine::new(engine_config());
    let snapshot = latest_snapshot_in(&world.disk, dir()).map_err(|e| e.to_string())?;
    let from = match &snapshot {
        Some(s) => {
            world.note(|| format!("restore snapshot at lsn {}, skipped {:?}", s.lsn, s.skipped));
            let (_, _, states) = decode_snapshot(&s.payload).map_err(|e| e.to_string())?;
            for state in states {
                engine.restore(state).map_err(|e| e.to_string())?;
            }
            s.lsn + 1
        }
        None => 1,
    };
    let missing = {
        let mut replayer = match snapshot {
            Some(_) => Replayer::after_snapshot(&engine),
            None => Replayer::new(&engine),
        };
        for record in recovery.replay(from).map_err(|e| e.to_string())? {
            let record = record.map_err(|e| e.to_string())?;
            let event =
                decode_record(&record.payload).map_err(|e| format!("lsn {}: {e}", record.lsn))?;
            replayer.apply(&event).map_err(|e| e.to_string())?;
        }
        replayer.finish().missing_tail
    };
    // A decision is about one auction: its missing events are one batch.
    if !missing.is_empty() {
        use gavel_engine::EventSink;
        let receipt = LogSink(&wal)
            .publish(&missing)
            .map_err(|_| "appending the missing tail failed".to_string())?;
        wal.wait_durable(receipt.0, std::time::Duration::from_secs(30))
            .map_err(|e| e.to_string())?;
    }
    Ok(Node { wal, engine })
}

/// Where the record holding byte `offset` starts, in the intact bytes of a segment.
fn record_start(bytes: &[u8], offset: u64) -> u64 {
    let mut at = 0u64;
    while at + (HEADER_BYTES as u64) <= bytes.len() as u64 {
        let i = at as usize;
        let len = u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let next = at + HEADER_BYTES as u64 + u64::from(len);
        if offset < next {
            return at;
        }
        at = next;
    }
    at
}

/// After a bit flip: the last segment's last batch is a torn tail (truncated at the
/// flipped record, the documented loss); anywhere else recovery refuses, naming the file
/// and the record's offset.
pub(crate) fn check_flip(world: &mut World, flip: &Flip) -> Result<(), Failure> {
    let mut bytes = world.disk.contents(&flip.path).unwrap_or_default();
    bytes[flip.offset as usize] ^= flip.mask;
    let start = record_start(&bytes, flip.offset);
    let last = world
        .disk
        .list(dir())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .max();
    let in_last_segment = last.as_ref() == Some(&flip.path);
    let opened = open_wal(&world.disk, &world.config);
    let verdict: Result<(), String> = match (&opened, in_last_segment && flip.in_last_batch) {
        (Ok((_, recovery)), true) => match recovery.torn_tail() {
            Some(t) if t.path == flip.path && t.offset == start => Ok(()),
            other => Err(format!("expected a torn tail at {start}, got {other:?}")),
        },
        (Err(WalError::Corrupt { file, offset, .. }), false) if !in_last_segment => {
            expect_at(file, *offset, flip, start)
        }
        (Err(WalError::CorruptBeforeValid { file, offset, .. }), false) if in_last_segment => {
            expect_at(file, *offset, flip, start)
        }
        (Ok(_), _) => Err("recovery accepted a corrupt log".into()),
        (Err(e), _) => Err(format!("unexpected refusal: {e}")),
    };
    world.note(|| format!("flip at record {start}: {verdict:?}"));
    verdict.map_err(|what| {
        world.fail(
            "bit flip not refused or truncated as documented",
            format!(
                "bit flip {flip:?} (record at {start}, last segment: {in_last_segment}): {what}"
            ),
        )
    })
}

fn expect_at(file: &std::path::Path, offset: Lsn, flip: &Flip, start: u64) -> Result<(), String> {
    if file == flip.path && offset == start {
        Ok(())
    } else {
        Err(format!(
            "refused naming {} at {offset}, expected {} at {start}",
            file.display(),
            flip.path.display()
        ))
    }
}
