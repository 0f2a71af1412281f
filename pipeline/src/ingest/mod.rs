//! HTTP ingest: `POST /v1/pings` (JSON array, NDJSON or Arrow IPC stream, optionally
//! gzipped) decoded straight into Arrow batches of the ping schema, validated column
//! by column, appended to the WAL and acknowledged (202) only once durable.
//!
//! Replies (body `{"accepted": n, "rejected": [{"row": i, "problems": [{"field",
//! "kind", "value", "message"}]}], "lsn": ..}`):
//!
//! | status | when |
//! | --- | --- |
//! | 202 | at least one row is durable in the WAL (invalid rows of the same request are listed in `rejected`), or the request held no rows |
//! | 400 | every row was rejected (reasons per row), or the body is not the format it claims (`error`) |
//! | 401 | no or a wrong bearer token (`WWW-Authenticate: Bearer`) |
//! | 408 | the body did not arrive within `body_timeout_secs` (`Connection: close`) |
//! | 413 | body over `max_body_bytes` as sent or `max_decompressed_bytes` inflated, or more than `max_rows_per_request` rows |
//! | 415 | unknown Content-Type or Content-Encoding |
//! | 429 | the engine is behind the WAL head by more than the configured bound (`Retry-After`) |
//! | 503 | the WAL cannot take the rows: full, disk error, failed fsync (`Retry-After`) |
//!
//! The decoders and [`validate_batch`] are plain functions so that replay and fuzz
//! targets run exactly the code the server runs.

mod config;
mod decode;
mod ping_lines;
mod server;
mod validate;

pub use config::IngestConfig;
pub use decode::{
    DecodeError, Decoded, JsonDecoder, NdjsonDecoded, NdjsonDecoder, NdjsonRejection, RowProblem,
    RowRejection, contained_panics, decode_arrow_ipc, decode_json_array, decode_ndjson,
    decode_ndjson_with, gunzip_limited, quiet_contained_panics,
};
pub use server::{IngestError, IngestState, Lag, LagProbe, router, serve};
pub use validate::{NotAPingBatch, check_rows, validate_batch};
