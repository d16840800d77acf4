//! Benchmarks that print tables (`rmr1 bench engine|judge`); they assert nothing.

pub mod engine;
pub mod judge;
