//! What every decoder target checks after a decode: the bookkeeping the server relies
//! on holds, and the columnar validation the server runs next accepts the batch.
#![allow(dead_code)]

use leasewatch::ingest::{Decoded, IngestConfig, validate_batch};

/// A fixed reference time (2026-05-28), so that runs are reproducible.
pub const NOW_MS: i64 = 1_780_000_000_000;

/// The limits the server runs with by default.
pub fn config() -> IngestConfig {
    IngestConfig::default()
}

/// Checks a successful decode and validates it like `POST /v1/pings` does.
pub fn check(decoded: &Decoded, config: &IngestConfig) {
    let rows = decoded.batch.num_rows();
    assert_eq!(
        decoded.request_rows.len(),
        rows,
        "one request index per row"
    );
    assert_eq!(
        rows + decoded.rejected.len(),
        decoded.total_rows,
        "every row is either decoded or rejected"
    );
    assert!(decoded.total_rows <= config.max_rows_per_request);
    for r in &decoded.rejected {
        assert!(
            r.row < decoded.total_rows,
            "rejected row {} out of range",
            r.row
        );
        assert!(!r.problems.is_empty());
        assert!(
            !decoded.request_rows.contains(&r.row),
            "row {} both kept and rejected",
            r.row
        );
    }
    // The server maps validation errors to 500: on decoder output it must never fail.
    let (valid, invalid) = match validate_batch(&decoded.batch, NOW_MS, &config.limits()) {
        Ok(v) => v,
        Err(e) => panic!("decoder output is not a ping batch: {e}"),
    };
    assert_eq!(valid.num_rows() + invalid.len(), rows);
    assert_eq!(valid.schema(), leasewatch_schemas::ping_schema());
}

thread_local! {
    static IN_IPC_DECODE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `decode` (a call of `decode_arrow_ipc`) with the panics that it contains by
/// design tolerated: `decode_arrow_ipc` wraps arrow-ipc in `catch_unwind`, because
/// arrow-ipc panics on some malformed streams, and answers 400. libFuzzer's panic hook
/// would abort on those before the unwind is caught; see [`install_panic_filter`].
pub fn in_ipc_decode<T>(decode: impl FnOnce() -> T) -> T {
    IN_IPC_DECODE.with(|f| f.set(true));
    let out = decode();
    IN_IPC_DECODE.with(|f| f.set(false));
    out
}

/// Replaces libFuzzer's abort-on-panic hook with one that lets a panic unwind (to the
/// `catch_unwind` in `decode_arrow_ipc`) when it happens inside [`in_ipc_decode`] and
/// is raised outside LeaseWatch's own code (arrow-ipc, arrow-buffer, ...). Each such
/// place is printed once, as `contained panic: <location>: <message>`, so a run lists
/// the upstream panics it met. Every other panic aborts, as libFuzzer expects.
pub fn install_panic_filter() {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let abort_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let file = info.location().map(|l| l.file()).unwrap_or("");
        let ours = file.contains("pipeline/src") || file.contains("schemas/src");
        if IN_IPC_DECODE.with(|f| f.get()) && !ours {
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
            if seen.get_or_insert_with(HashSet::new).insert(at.clone()) {
                let message = info
                    .payload()
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| info.payload().downcast_ref::<&str>().copied())
                    .unwrap_or("");
                eprintln!("contained panic: {at}: {message}");
            }
            return;
        }
        abort_hook(info);
    }));
}
