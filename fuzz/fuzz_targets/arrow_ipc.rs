//! `decode_arrow_ipc` (the `application/vnd.apache.arrow.stream` decoder) on arbitrary
//! bytes, with the default ingest limits, followed by the columnar validation.
#![no_main]

use leasewatch::ingest::decode_arrow_ipc;
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(init: common::install_panic_filter(), |data: &[u8]| {
    let config = common::config();
    let decoded = common::in_ipc_decode(|| decode_arrow_ipc(data, config.max_rows_per_request));
    if let Ok(decoded) = decoded {
        common::check(&decoded, &config);
    }
});
