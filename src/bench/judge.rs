//! placeholder
use anyhow::Result;
#[derive(clap::Args, Debug, Clone)]
pub struct JudgeBenchArgs {}
pub fn run(_args: JudgeBenchArgs) -> Result<()> {
    Ok(())
}
