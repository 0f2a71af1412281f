//! `gunzip_limited` (`Content-Encoding: gzip`) on arbitrary bytes with the default
//! `max_decompressed_bytes`; what inflates is then decoded the way the first input byte
//! picks (JSON array, NDJSON, Arrow IPC), as the server would after gunzip.
#![no_main]

use leasewatch::ingest::{
    DecodeError, decode_arrow_ipc, decode_json_array, decode_ndjson, gunzip_limited,
};
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(init: common::install_panic_filter(), |data: &[u8]| {
    let Some((&format, body)) = data.split_first() else {
        return;
    };
    let config = common::config();
    let limit = config.max_decompressed_bytes;
    let inflated = match gunzip_limited(body, limit) {
        Ok(bytes) => bytes,
        Err(DecodeError::TooLarge { limit: l }) => {
            assert_eq!(l, limit);
            return;
        }
        Err(_) => return,
    };
    assert!(inflated.len() as u64 <= limit);
    let max_rows = config.max_rows_per_request;
    let decoded = match format % 3 {
        0 => decode_json_array(&inflated, max_rows),
        1 => decode_ndjson(&inflated, max_rows),
        _ => common::in_ipc_decode(|| decode_arrow_ipc(&inflated, max_rows)),
    };
    if let Ok(decoded) = decoded {
        common::check(&decoded, &config);
    }
});
