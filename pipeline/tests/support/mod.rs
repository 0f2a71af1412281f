//! Shared helpers of the integration tests.
#![allow(dead_code)]

pub mod ingest;
pub mod product;
pub mod redis;
pub mod rng;
pub mod run;
