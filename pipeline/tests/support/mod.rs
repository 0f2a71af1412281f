//! Shared helpers of the integration tests.
#![allow(dead_code)]

pub mod ingest;
pub mod product;
pub mod redis;
pub mod run;
#[path = "../../../udfs/tests/support/splitmix.rs"]
pub mod splitmix;
