//! LeaseWatch: the streaming risk pipeline, one module per stage in data-flow order.
//!
//! `ingest` (HTTP, decode to Arrow) -> `wal` (durable log, checkpoints) -> `engine`
//! (event time, windows, SQL on DataFusion) -> `lookup` (Redis state join) -> `sink`
//! (queues, archive), with `metrics`, `config` and `cli` alongside; `run` wires them up.
pub mod cli;
pub mod config;
pub mod engine;
pub mod ingest;
pub mod lookup;
pub mod metrics;
pub mod redis_client;
pub mod replay;
pub mod report;
pub mod run;
pub mod sink;
pub mod state;
pub mod wal;
