//! Subcommands of the `rmr1` binary.

pub mod generate;
pub mod judge;
pub mod serve;
