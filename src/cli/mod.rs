//! Subcommands of the `rmr1` binary.

pub mod debug;
pub mod eval;
pub mod export;
pub mod generate;
pub mod gpu_check;
pub mod judge;
pub mod serve;
pub mod train;
