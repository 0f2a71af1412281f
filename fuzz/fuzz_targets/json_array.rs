//! `decode_json_array` (the `application/json` decoder) on arbitrary bytes, with the
//! default ingest limits, followed by the columnar validation.
#![no_main]

use leasewatch::ingest::decode_json_array;
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let config = common::config();
    if let Ok(decoded) = decode_json_array(data, config.max_rows_per_request) {
        common::check(&decoded, &config);
    }
});
