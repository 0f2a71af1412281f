//! LeaseWatch load tests: the synthetic fleet generator with ground truth (`gen`).
//!
//! The load driver (`drive`), benchmarks (`bench`) and detection-quality scoring
//! (`score`) are later subcommands of the same binary and live beside `gen`.

// `gen` is a reserved word in edition 2024, hence the raw identifier.
pub mod r#gen;
