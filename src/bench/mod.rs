//! Benchmarks that print tables (`rmr1 bench engine|attention|judge|throughput|train|grpo|detokenize`); they assert nothing.

pub mod attention;
pub mod detokenize;
pub mod engine;
pub mod grpo;
pub mod judge;
pub mod throughput;
pub mod train;
