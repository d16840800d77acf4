//! Benchmarks that print tables (`rmr1 bench engine|judge|throughput`); they assert nothing.

pub mod engine;
pub mod judge;
pub mod throughput;
pub mod train;
