//! The write-ahead log and checkpoint store against a real file system: round trips,
//! group commit, torn-tail recovery, retention, checkpoints, and a real process killed
//! with SIGKILL mid-stream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use arrow::array::{
    Array, ArrayRef, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array,
    new_null_array,
};
use leasewatch::wal::{CheckpointStore, Lsn, Wal, WalConfig, WalError};
use leasewatch_schemas::{col, ping_schema};
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A ping batch of `rows` rows whose `seq` column is `tag, tag+1, ...`.
fn batch(tag: u64, rows: usize) -> RecordBatch {
    let schema = ping_schema();
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| -> ArrayRef {
            match i {
                col::DEVICE_ID => Arc::new(StringArray::from(vec!["490154203237518"; rows])),
                col::EVENT_TIME | col::RECEIVE_TIME => Arc::new(
                    TimestampMillisecondArray::from(
                        (0..rows as i64)
                            .map(|r| 1_780_000_000_000 + r)
                            .collect::<Vec<_>>(),
                    )
                    .with_data_type(f.data_type().clone()),
                ),
                col::SEQ => Arc::new(UInt64Array::from(
                    (0..rows as u64).map(|r| tag + r).collect::<Vec<_>>(),
                )),
                col::EVENT_KIND => Arc::new(StringArray::from(vec!["heartbeat"; rows])),
                _ => new_null_array(f.data_type(), rows),
            }
        })
        .collect();
    RecordBatch::try_new(schema, columns).unwrap()
}

/// The `seq` values of a batch.
fn seqs(b: &RecordBatch) -> Vec<u64> {
    b.column(col::SEQ)
        .as_any()
        .downcast_ref::<UInt64Array>()
        .unwrap()
        .values()
        .to_vec()
}

fn config(dir: &Path) -> WalConfig {
    WalConfig {
        dir: dir.to_path_buf(),
        fsync: false,
        ..WalConfig::in_dir(dir)
    }
}

fn read_all(wal: &Wal, from: Lsn) -> Vec<(Lsn, RecordBatch)> {
    wal.reader(from)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "arrows"))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn append_and_read_back_from_memory_and_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = WalConfig {
        fsync: true,
        ..config(tmp.path())
    };
    let wal = Wal::open(&cfg).unwrap();
    assert_eq!(wal.head(), 0);
    assert!(wal.reader(0).unwrap().next().is_none());
    let mut heads = wal.subscribe();
    for i in 1..=10u64 {
        let lsn = wal.append(batch(i * 100, i as usize)).await.unwrap();
        assert_eq!(lsn, i);
    }
    assert_eq!(wal.head(), 10);
    assert!(heads.has_changed().unwrap());
    assert_eq!(*heads.borrow_and_update(), 10);

    let check = |entries: Vec<(Lsn, RecordBatch)>, from: u64| {
        let lsns: Vec<Lsn> = entries.iter().map(|e| e.0).collect();
        assert_eq!(lsns, (from + 1..=10).collect::<Vec<_>>());
        for (lsn, b) in entries {
            assert_eq!(b.num_rows(), lsn as usize);
            assert_eq!(seqs(&b)[0], lsn * 100);
            assert_eq!(b.schema(), ping_schema());
        }
    };
    check(read_all(&wal, 0), 0);
    check(read_all(&wal, 6), 6);
    assert!(read_all(&wal, 10).is_empty());
    assert!(read_all(&wal, 99).is_empty());
    let stats = wal.stats();
    assert_eq!(stats.appends, 10);
    drop(wal);

    // Reopened, the ring is empty: everything comes from the segment.
    let wal = Wal::open(&cfg).unwrap();
    assert_eq!(wal.head(), 10);
    assert_eq!(wal.recovery().truncated_bytes, 0);
    check(read_all(&wal, 0), 0);
    check(read_all(&wal, 3), 3);
    assert_eq!(wal.append(batch(1100, 11)).await.unwrap(), 11);
    // Mixed: 1..=10 from disk, 11 from the ring.
    let all = read_all(&wal, 0);
    assert_eq!(all.len(), 11);
    assert_eq!(seqs(&all[10].1)[0], 1100);
}

#[tokio::test]
async fn a_second_writer_is_locked_out() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = Wal::open(&config(tmp.path())).unwrap();
    assert!(matches!(
        Wal::open(&config(tmp.path())),
        Err(WalError::Locked(_))
    ));
    drop(wal);
    Wal::open(&config(tmp.path())).unwrap();
}

#[tokio::test]
async fn wrong_schema_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = Wal::open(&config(tmp.path())).unwrap();
    let other =
        RecordBatch::try_from_iter([("x", Arc::new(UInt64Array::from(vec![1u64])) as ArrayRef)])
            .unwrap();
    assert!(matches!(
        wal.append(other).await,
        Err(WalError::SchemaMismatch(_))
    ));
    assert_eq!(wal.head(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_fsyncs_and_all_land() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = WalConfig {
        fsync: true,
        group_commit_max_delay_us: 2_000,
        segment_bytes: 64 * 1024,
        ..config(tmp.path())
    };
    let wal = Wal::open(&cfg).unwrap();
    let mut tasks = Vec::new();
    for t in 0..200u64 {
        let wal = wal.clone();
        tasks.push(tokio::spawn(async move {
            let lsn = wal.append(batch(t * 1000, 3)).await.unwrap();
            (lsn, t * 1000)
        }));
    }
    let mut acked = BTreeMap::new();
    for t in tasks {
        let (lsn, tag) = t.await.unwrap();
        assert!(acked.insert(lsn, tag).is_none(), "lsn {lsn} given twice");
    }
    assert_eq!(
        acked.keys().copied().collect::<Vec<_>>(),
        (1..=200).collect::<Vec<_>>()
    );
    let stats = wal.stats();
    assert_eq!(stats.appends, 200);
    assert!(
        stats.commits < 200,
        "group commit should share fsyncs: {stats:?}"
    );
    assert!(segments(tmp.path()).len() > 1, "segments should roll");
    drop(wal);
    let wal = Wal::open(&cfg).unwrap();
    for (lsn, b) in read_all(&wal, 0) {
        assert_eq!(seqs(&b)[0], acked[&lsn]);
    }
}

/// The group-commit wait is for appends that overlap: one writer appending in turn is
/// acknowledged without it (here a wait would cost 10 x 500 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_writer_is_not_kept_waiting_for_company() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = WalConfig {
        group_commit_max_delay_us: 500_000,
        ..config(tmp.path())
    };
    let wal = Wal::open(&cfg).unwrap();
    let started = std::time::Instant::now();
    for t in 0..10u64 {
        wal.append(batch(t * 1000, 3)).await.unwrap();
    }
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_millis(2_500),
        "10 appends in turn took {took:?}"
    );
    assert_eq!(wal.stats().commits, 10);
}

/// Cuts or damages the end of the last segment in every way a crash can, then checks
/// that reopening keeps every complete record and nothing else.
#[tokio::test]
async fn torn_tail_is_cut_on_open() {
    // (bytes to cut from the end, bytes of garbage to append, flip a payload byte)
    let cases: &[(u64, &[u8], bool)] = &[
        (1, b"", false),
        (7, b"", false),
        (19, b"", false),
        (20, b"", false),
        (21, b"", false),
        (0, &[0u8; 4096], false),
        (0, b"LWR1\xff\xff\x00\x00", false),
        (0, b"", true),
    ];
    for (i, &(cut, garbage, flip)) in cases.iter().enumerate() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        let wal = Wal::open(&cfg).unwrap();
        let mut last_len = 0;
        for k in 1..=5u64 {
            let before = fs::metadata(&segments(tmp.path())[0]).unwrap().len();
            wal.append(batch(k * 10, 4)).await.unwrap();
            last_len = fs::metadata(&segments(tmp.path())[0]).unwrap().len() - before;
        }
        drop(wal);
        let seg = segments(tmp.path()).remove(0);
        let len = fs::metadata(&seg).unwrap().len();
        let mut bytes = fs::read(&seg).unwrap();
        let expect_head = if cut > 0 || flip { 4 } else { 5 };
        if cut > 0 {
            // Cut inside the last record (it is longer than any cut here).
            assert!(last_len > cut);
            bytes.truncate((len - cut) as usize);
        }
        if flip {
            let at = bytes.len() - 3;
            bytes[at] ^= 0x55;
        }
        bytes.extend_from_slice(garbage);
        fs::write(&seg, &bytes).unwrap();

        let wal = Wal::open(&cfg).unwrap();
        assert_eq!(wal.head(), expect_head, "case {i}");
        let r = wal.recovery();
        assert_eq!(
            r.truncated_bytes > 0,
            cut > 0 || flip || !garbage.is_empty(),
            "case {i}: {r:?}"
        );
        let entries = read_all(&wal, 0);
        assert_eq!(entries.len() as u64, expect_head, "case {i}");
        for (lsn, b) in &entries {
            assert_eq!(
                seqs(b),
                vec![lsn * 10, lsn * 10 + 1, lsn * 10 + 2, lsn * 10 + 3]
            );
        }
        // The log goes on after the cut, and the result survives another reopen.
        assert_eq!(wal.append(batch(999, 1)).await.unwrap(), expect_head + 1);
        drop(wal);
        let wal = Wal::open(&cfg).unwrap();
        assert_eq!(wal.recovery().truncated_bytes, 0, "case {i}");
        let entries = read_all(&wal, 0);
        assert_eq!(entries.len() as u64, expect_head + 1);
        assert_eq!(seqs(&entries.last().unwrap().1), vec![999]);
    }
}

#[tokio::test]
async fn torn_segment_header_is_recreated() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = WalConfig {
        segment_bytes: 1,
        ..config(tmp.path())
    };
    let wal = Wal::open(&cfg).unwrap();
    for k in 1..=3u64 {
        wal.append(batch(k, 1)).await.unwrap();
    }
    drop(wal);
    // A crash right after creating the next segment: a file with half a header.
    let next = tmp.path().join(format!("segment-{:020}.arrows", 4));
    fs::write(&next, b"LWWAL0").unwrap();
    let wal = Wal::open(&cfg).unwrap();
    assert!(wal.recovery().recreated_segment);
    assert_eq!(wal.head(), 3);
    assert_eq!(wal.append(batch(4, 1)).await.unwrap(), 4);
    assert_eq!(read_all(&wal, 0).len(), 4);
}

#[tokio::test]
async fn retention_deletes_whole_segments_and_bounds_the_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = WalConfig {
        segment_bytes: 8 * 1024,
        max_retained_bytes: 64 * 1024,
        ..config(tmp.path())
    };
    let wal = Wal::open(&cfg).unwrap();
    let mut full_at = None;
    for k in 1..=1000u64 {
        match wal.append(batch(k * 100, 20)).await {
            Ok(lsn) => assert_eq!(lsn, k),
            Err(WalError::Full { .. }) => {
                full_at = Some(k);
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let full_at = full_at.expect("the WAL must refuse appends beyond max_retained_bytes");
    assert!(wal.retained_bytes() <= cfg.max_retained_bytes);
    let head = wal.head();
    assert_eq!(head, full_at - 1);
    let before = segments(tmp.path()).len();
    assert!(before > 3);

    let checkpoint = head / 2;
    wal.truncate_before(checkpoint).unwrap();
    let after = segments(tmp.path());
    assert!(after.len() < before);
    assert!(wal.retained_bytes() < cfg.max_retained_bytes);
    // Everything from the checkpoint on is still readable...
    let entries = read_all(&wal, checkpoint - 1);
    assert_eq!(entries.first().unwrap().0, checkpoint);
    assert_eq!(entries.len() as u64, head - checkpoint + 1);
    // ...and asking for deleted entries is an error, not a silent gap.
    assert!(matches!(
        wal.reader(0).unwrap_err(),
        WalError::Truncated { requested: 1, .. }
    ));
    // Space is free again.
    assert_eq!(wal.append(batch(7, 1)).await.unwrap(), head + 1);
    // The active segment is never deleted.
    wal.truncate_before(u64::MAX).unwrap();
    assert_eq!(segments(tmp.path()).len(), 1);
    drop(wal);
    let wal = Wal::open(&cfg).unwrap();
    assert_eq!(wal.head(), head + 1);
}

/// Segments are deleted outside the log's lock; one that cannot be deleted stays, with
/// every segment after it, and a later truncation deletes it.
#[tokio::test]
async fn a_segment_that_cannot_be_deleted_stays_with_those_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = WalConfig {
        segment_bytes: 8 * 1024,
        ..config(tmp.path())
    };
    let wal = Wal::open(&cfg).unwrap();
    for k in 1..=60u64 {
        wal.append(batch(k * 100, 20)).await.unwrap();
    }
    let files = segments(tmp.path());
    assert!(files.len() > 4, "{}", files.len());
    let all = wal.retained_bytes();
    let first = fs::metadata(&files[0]).unwrap().len();
    // The second segment's file becomes a directory: deleting it fails.
    let stuck = files[1].clone();
    let bytes = fs::read(&stuck).unwrap();
    fs::remove_file(&stuck).unwrap();
    fs::create_dir(&stuck).unwrap();
    let err = wal.truncate_before(wal.head()).unwrap_err();
    assert!(err.to_string().contains("delete"), "{err}");
    assert!(!files[0].exists());
    assert!(files[2..].iter().all(|f| f.exists()));
    assert_eq!(wal.retained_bytes(), all - first);
    // Appends go on meanwhile, into the newest segment.
    let head = wal.append(batch(1, 1)).await.unwrap();
    // Once it can be deleted, it is, with the segments after it.
    fs::remove_dir(&stuck).unwrap();
    fs::write(&stuck, bytes).unwrap();
    wal.truncate_before(head).unwrap();
    assert_eq!(segments(tmp.path()).len(), 1);
    assert_eq!(read_all(&wal, head - 1).len(), 1);
}

#[tokio::test]
async fn backlog_counts_batches_and_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = Wal::open(&config(tmp.path())).unwrap();
    for k in 1..=5u64 {
        wal.append(batch(k, k as usize)).await.unwrap();
    }
    assert_eq!(wal.backlog(5), (0, 0));
    assert_eq!(wal.backlog(3), (2, 4 + 5));
    assert_eq!(wal.backlog(0), (5, 15));
}

#[test]
fn checkpoints_keep_two_and_fall_back_on_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(tmp.path()).unwrap();
    assert_eq!(store.load_latest().unwrap(), None);
    store.save(10, b"ten").unwrap();
    store.save(20, b"twenty").unwrap();
    store.save(30, b"thirty").unwrap();
    let files = || {
        let mut v: Vec<String> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(files().len(), 2, "{:?}", files());
    assert_eq!(store.load_latest().unwrap(), Some((30, b"thirty".to_vec())));

    // A crash mid-save leaves a temporary file: ignored and cleaned up on open.
    fs::write(
        tmp.path().join("checkpoint-00000000000000000040.ckpt.tmp"),
        b"half",
    )
    .unwrap();
    let store = CheckpointStore::open(tmp.path()).unwrap();
    assert_eq!(store.load_latest().unwrap(), Some((30, b"thirty".to_vec())));

    // Corrupt the newest: the previous one is loaded.
    let newest = tmp.path().join("checkpoint-00000000000000000030.ckpt");
    let mut bytes = fs::read(&newest).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&newest, &bytes).unwrap();
    assert_eq!(store.load_latest().unwrap(), Some((20, b"twenty".to_vec())));
    // A truncated one too.
    let older = tmp.path().join("checkpoint-00000000000000000020.ckpt");
    let bytes = fs::read(&older).unwrap();
    fs::write(&older, &bytes[..bytes.len() - 2]).unwrap();
    assert_eq!(store.load_latest().unwrap(), None);
    // Saving again works and is what loads.
    store.save(25, b"again").unwrap();
    assert_eq!(store.load_latest().unwrap(), Some((25, b"again".to_vec())));
}

/// Checkpoints written in the first layout (length and checksum before the state)
/// still load, and a newer one in the current layout is preferred.
#[test]
fn checkpoints_of_the_first_layout_still_load() {
    let tmp = tempfile::tempdir().unwrap();
    let (lsn, state) = (7u64, b"seven".as_slice());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&lsn.to_le_bytes());
    crc.update(&(state.len() as u64).to_le_bytes());
    crc.update(state);
    let mut file = b"LWCKPT01".to_vec();
    file.extend_from_slice(&lsn.to_le_bytes());
    file.extend_from_slice(&(state.len() as u64).to_le_bytes());
    file.extend_from_slice(&crc.finalize().to_le_bytes());
    file.extend_from_slice(state);
    let path = tmp.path().join("checkpoint-00000000000000000007.ckpt");
    fs::write(&path, &file).unwrap();
    let store = CheckpointStore::open(tmp.path()).unwrap();
    assert_eq!(store.load_latest().unwrap(), Some((7, state.to_vec())));
    // Its checksum is checked too.
    let last = file.len() - 1;
    file[last] ^= 1;
    fs::write(&path, &file).unwrap();
    assert_eq!(store.load_latest().unwrap(), None);
    // Streamed saves load as saved.
    let size = store
        .save_with(9, |w| {
            w.write_all(b"nine, ")?;
            w.write_all(b"in parts")
        })
        .unwrap();
    assert_eq!(size, 14);
    assert_eq!(
        store.load_latest().unwrap(),
        Some((9, b"nine, in parts".to_vec()))
    );
}

/// A checkpoint synced in slices as it is written (here every 1,000 bytes, through the
/// 1 MiB write buffer and around it) loads as saved.
#[test]
fn checkpoints_synced_in_slices_load_as_saved() {
    let tmp = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(tmp.path())
        .unwrap()
        .with_sync_slice(1_000);
    let state: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let size = store
        .save_with(11, |w| {
            w.write_all(&state[..10])?;
            w.write_all(&state[10..2_500_000])?;
            w.write_all(&state[2_500_000..])
        })
        .unwrap();
    assert_eq!(size, 3_000_000);
    assert_eq!(store.load_latest().unwrap(), Some((11, state)));
}

const CHILD_ENV: &str = "LEASEWATCH_WAL_CRASH_CHILD";

/// Not a test on its own: the child process of `kill_9_loses_no_acknowledged_batch`.
/// It appends from several tasks and prints `ack <lsn> <tag> <rows>` after each
/// append returned (that is, once the batch is durable).
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let cfg = WalConfig {
            dir: PathBuf::from(dir),
            fsync: true,
            segment_bytes: 32 * 1024,
            ..WalConfig::default()
        };
        let wal = Wal::open(&cfg).unwrap();
        let start = Instant::now();
        let run = std::process::id() as u64 * 1_000_000_000;
        let mut tasks = Vec::new();
        for t in 0..4u64 {
            let wal = wal.clone();
            tasks.push(tokio::spawn(async move {
                let mut k = 0u64;
                // Bounded in case the parent never kills us.
                while start.elapsed() < Duration::from_secs(30) {
                    let tag = run + t * 10_000_000 + k * 100;
                    let rows = 1 + (k % 7) as usize;
                    let lsn = wal.append(batch(tag, rows)).await.unwrap();
                    println!("ack {lsn} {tag} {rows}");
                    k += 1;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn kill_9_loses_no_acknowledged_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: BTreeMap<Lsn, (u64, usize)> = BTreeMap::new();
    for round in 0..3u32 {
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // A different moment each round: after 50..=1050 acknowledgements.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let kill_after = 50 + (nanos % 1000) as usize + round as usize;
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen < kill_after && Instant::now() < deadline {
            let Some(line) = lines.next() else { break };
            if parse_ack(&line.unwrap(), &mut acked) {
                seen += 1;
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Lines printed before the kill are acknowledgements too.
        for line in lines {
            parse_ack(&line.unwrap(), &mut acked);
        }
        assert!(seen > 0, "round {round}: the child acknowledged nothing");
        eprintln!(
            "round {round}: killed after {seen} acknowledgements, {} in all",
            acked.len()
        );

        let wal = Wal::open(&config(tmp.path())).unwrap();
        let entries: BTreeMap<Lsn, RecordBatch> = read_all(&wal, 0).into_iter().collect();
        for (lsn, (tag, rows)) in &acked {
            let b = entries
                .get(lsn)
                .unwrap_or_else(|| panic!("round {round}: acknowledged lsn {lsn} lost"));
            assert_eq!(b.num_rows(), *rows, "lsn {lsn}");
            assert_eq!(seqs(b)[0], *tag, "lsn {lsn}");
        }
        assert_eq!(
            entries.keys().copied().collect::<Vec<_>>(),
            (1..=wal.head()).collect::<Vec<_>>()
        );
    }
}

fn parse_ack(line: &str, acked: &mut BTreeMap<Lsn, (u64, usize)>) -> bool {
    let mut it = line.split_whitespace();
    if it.next() != Some("ack") {
        return false;
    }
    let lsn: Lsn = it.next().unwrap().parse().unwrap();
    let tag: u64 = it.next().unwrap().parse().unwrap();
    let rows: usize = it.next().unwrap().parse().unwrap();
    assert!(
        acked.insert(lsn, (tag, rows)).is_none(),
        "lsn {lsn} acknowledged twice"
    );
    true
}
