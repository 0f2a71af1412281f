//! `decode_ndjson` (the `application/x-ndjson` decoder) on arbitrary bytes, with the
//! default ingest limits, followed by the columnar validation.
#![no_main]

use leasewatch::ingest::decode_ndjson;
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let config = common::config();
    if let Ok(decoded) = decode_ndjson(data, config.max_rows_per_request) {
        common::check(&decoded, &config);
    }
});
