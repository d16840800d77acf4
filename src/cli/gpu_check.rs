//! `rmr1 gpu-check`: the checks of the CUDA path that need a GPU (see scripts/gpu-check.sh).

use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct GpuCheckArgs {
    #[command(subcommand)]
    pub command: GpuCheckCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum GpuCheckCommand {
    /// Every CUDA kernel against its CPU reference on fresh random inputs.
    Kernels {
        /// Seed for the inputs; default: from the clock (printed, so a failure can be replayed).
        #[arg(long)]
        seed: Option<u64>,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Logits and greedy generations of a Hugging Face model directory, for scripts/gpu_check.py.
    Model {
        #[arg(long)]
        model: PathBuf,
        /// JSON: {"prompts": [[ids]], "logit_positions": n, "new_tokens": n, "second_wave": [[ids]]}.
        #[arg(long)]
        input: PathBuf,
        /// Directory for ours_logits.npy and ours.json.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = rmr1::model::DeviceChoice::Cuda(0))]
        device: rmr1::model::DeviceChoice,
    },
}

pub fn run(args: GpuCheckArgs) -> Result<()> {
    match args.command {
        GpuCheckCommand::Kernels { seed, json } => kernels(seed, json),
        GpuCheckCommand::Model {
            model,
            input,
            out,
            device,
        } => rmr1::gpu_check::model::run(&model, &input, &out, &device.open()?),
    }
}

#[cfg(feature = "cuda")]
fn kernels(seed: Option<u64>, json: Option<PathBuf>) -> Result<()> {
    use rmr1::gpu_check;
    let device = candle_core::Device::new_cuda(0)?;
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    println!("kernel checks, seed {seed}");
    let results = gpu_check::kernels::run(&device, seed);
    gpu_check::print_table(&results);
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)?;
    }
    let failed = results.iter().filter(|r| !r.passed).count();
    anyhow::ensure!(failed == 0, "{failed} kernel checks failed (seed {seed})");
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn kernels(_seed: Option<u64>, _json: Option<PathBuf>) -> Result<()> {
    anyhow::bail!(
        "this rmr1 was built without CUDA: build with --features cuda (scripts/build-cuda.sh)"
    )
}
