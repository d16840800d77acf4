//! `rmr1 export`: a Hugging Face checkpoint from a base model, with a LoRA adapter merged in when
//! given (`W + (alpha/r)·B·A`), or the base alone (GGUF → safetensors, re-sharding).

use anyhow::{bail, Result};
use candle_core::{DType, Device};
use rmr1::model::base_weights::BaseWeights;
use rmr1::model::loader::{hf_dir_config, resolve_local};
use rmr1::model::safetensors_io::parse_size;
use rmr1::model::{LoraAdapter, ModelSource};
use rmr1::train::export::{default_export_dtype, export_base, export_merged_with};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// The base: a Hugging Face directory, a GGUF file (dequantized), or a hub id.
    #[arg(long)]
    model: String,
    /// A PEFT LoRA adapter directory to merge into the base.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The checkpoint directory to write (written beside it first, renamed into place when done).
    #[arg(long)]
    out: PathBuf,
    /// auto (the base directory's torch_dtype; bf16 for GGUF), f32, bf16 or f16.
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// Largest safetensors shard, as transformers' max_shard_size (5GB, 500MiB, bytes).
    #[arg(long, default_value = "5GB")]
    max_shard_size: String,
    /// Replace --out if it exists.
    #[arg(long)]
    overwrite: bool,
}

fn parse_dtype(text: &str) -> Result<Option<DType>> {
    Ok(match text {
        "auto" => None,
        "f32" | "float32" => Some(DType::F32),
        "bf16" | "bfloat16" => Some(DType::BF16),
        "f16" | "float16" => Some(DType::F16),
        other => bail!("--dtype {other:?}: expected auto, f32, bf16 or f16"),
    })
}

pub fn run(args: ExportArgs) -> Result<()> {
    if args.out.exists() && !args.overwrite {
        bail!(
            "{} exists (pass --overwrite to replace it)",
            args.out.display()
        );
    }
    let requested = parse_dtype(&args.dtype)?;
    let max_shard_bytes = parse_size(&args.max_shard_size)?;
    let load_dtype = load_dtype(&args.model, requested)?;
    let base = BaseWeights::load(&args.model, load_dtype, &Device::Cpu)?;
    let dtype = requested.unwrap_or_else(|| default_export_dtype(&base));
    match &args.adapter {
        Some(dir) => {
            let adapter = LoraAdapter::load_peft(dir, &Device::Cpu)?;
            export_merged_with(&base, &adapter, &args.out, dtype, max_shard_bytes)?;
        }
        None => export_base(&base, &args.out, dtype, max_shard_bytes)?,
    }
    eprintln!("wrote {} ({dtype:?})", args.out.display());
    Ok(())
}

/// f32 (4 bytes a parameter) unless the base directory already stores the output dtype: then that
/// dtype loses nothing (the merge itself runs in f32 per tensor) and halves the memory needed.
fn load_dtype(spec: &str, requested: Option<DType>) -> Result<DType> {
    let ModelSource::HfDir(dir) = resolve_local(spec)? else {
        return Ok(DType::F32);
    };
    let stored = match hf_dir_config(&dir)?.torch_dtype.as_deref() {
        Some("bfloat16") => DType::BF16,
        Some("float16") => DType::F16,
        _ => return Ok(DType::F32),
    };
    Ok(match requested {
        Some(d) if d != stored => DType::F32,
        _ => stored,
    })
}
