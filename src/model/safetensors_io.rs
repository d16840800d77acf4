//! Writing safetensors that other tools load: header metadata `{"format":"pt"}` (candle's own save
//! writes none, and older transformers refuses such files), dtypes kept as they are, Hugging Face
//! sharding (`model-0000k-of-0000N.safetensors` + `model.safetensors.index.json`), and every file
//! written atomically (temp name in the same directory, fsync, rename, fsync the directory) so a
//! crash leaves either the old file or the new one, never half of one.

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Name of the index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Name of an unsharded checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";

/// The header metadata every file gets: what `save_pretrained` writes.
pub fn format_metadata() -> HashMap<String, String> {
    HashMap::from([("format".to_string(), "pt".to_string())])
}

/// A fresh name beside `path` for writing before the rename; unique within the process too, so two
/// threads writing the same target never share a temp file.
fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Flushes a directory's entries, so a rename inside it survives a crash.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// Writes `path` by calling `write` on a temp path beside it, then fsync and rename into place.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_path(path);
    let result = write(&tmp).and_then(|()| {
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("syncing {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Writes bytes to `path` atomically.
pub fn write_bytes_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically(path, |tmp| {
        std::fs::write(tmp, bytes).with_context(|| format!("writing {}", tmp.display()))
    })
}

/// Writes a JSON value, pretty-printed as Hugging Face tools write theirs.
pub fn write_json_atomically(path: &Path, value: &impl Serialize) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    write_bytes_atomically(path, text.as_bytes())
}

/// A tensor as the serializer needs it: on the CPU and contiguous, so candle's `View::data` (which
/// unwraps) cannot fail halfway through a file.
fn host_tensor(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_device(&Device::Cpu)?.contiguous()?)
}

/// Writes one safetensors file with `{"format":"pt"}` metadata, each tensor in its own dtype.
pub fn write_safetensors<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
) -> Result<()> {
    let prepared = tensors
        .into_iter()
        .map(|(name, t)| Ok((name, host_tensor(t)?)))
        .collect::<Result<Vec<_>>>()?;
    write_atomically(path, |tmp| {
        safetensors::serialize_to_file(
            prepared.iter().map(|(n, t)| (*n, t)),
            Some(format_metadata()),
            tmp,
        )
        .with_context(|| format!("writing {}", tmp.display()))
    })
}

/// `model.safetensors.index.json`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ShardIndex {
    pub metadata: IndexMetadata,
    /// Tensor name → shard file name.
    pub weight_map: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct IndexMetadata {
    /// Bytes of tensor data in all shards (headers excluded), as transformers counts it.
    pub total_size: u64,
}

fn tensor_bytes(t: &Tensor) -> u64 {
    (t.elem_count() * t.dtype().size_in_bytes()) as u64
}

/// Splits names (in order) into shards of at most `max_shard_bytes` each; a tensor larger than
/// that gets a shard of its own, as transformers does.
fn plan_shards(tensors: &BTreeMap<String, Tensor>, max_shard_bytes: u64) -> Vec<Vec<&str>> {
    let mut shards: Vec<Vec<&str>> = Vec::new();
    let mut current_bytes = 0u64;
    for (name, t) in tensors {
        let bytes = tensor_bytes(t);
        match shards.last_mut() {
            Some(shard) if current_bytes + bytes <= max_shard_bytes => {
                shard.push(name);
                current_bytes += bytes;
            }
            _ => {
                shards.push(vec![name]);
                current_bytes = bytes;
            }
        }
    }
    shards
}

/// Writes `tensors` into `dir` as Hugging Face does: `model.safetensors` when they fit in one shard
/// of `max_shard_bytes`, else `model-0000k-of-0000N.safetensors` plus `model.safetensors.index.json`
/// (written last). Returns the files written, in order.
pub fn write_sharded(
    dir: &Path,
    tensors: &BTreeMap<String, Tensor>,
    max_shard_bytes: u64,
) -> Result<Vec<PathBuf>> {
    if tensors.is_empty() {
        bail!("no tensors to write into {}", dir.display());
    }
    if max_shard_bytes == 0 {
        bail!("the maximum shard size must be positive");
    }
    let shards = plan_shards(tensors, max_shard_bytes);
    if shards.len() == 1 {
        let path = dir.join(SINGLE_FILE);
        write_safetensors(&path, tensors.iter().map(|(n, t)| (n.as_str(), t)))?;
        return Ok(vec![path]);
    }
    let n = shards.len();
    let mut files = Vec::with_capacity(n + 1);
    let mut weight_map = BTreeMap::new();
    for (k, names) in shards.iter().enumerate() {
        let file_name = format!("model-{:05}-of-{n:05}.safetensors", k + 1);
        let path = dir.join(&file_name);
        write_safetensors(&path, names.iter().map(|name| (*name, &tensors[*name])))?;
        for name in names {
            weight_map.insert(name.to_string(), file_name.clone());
        }
        files.push(path);
    }
    let index = ShardIndex {
        metadata: IndexMetadata {
            total_size: tensors.values().map(tensor_bytes).sum(),
        },
        weight_map,
    };
    let index_path = dir.join(INDEX_FILE);
    write_json_atomically(&index_path, &index)?;
    files.push(index_path);
    Ok(files)
}

/// Parses a maximum shard size such as `5GB`, `500MiB` or a plain byte count (decimal units are
/// powers of 1000, binary ones of 1024, as transformers' `max_shard_size`).
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("{text:?} is not a size like 5GB or 500MiB"))?;
    let multiplier: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => bail!("unknown size unit {other:?} in {text:?}"),
    };
    let bytes = (number * multiplier).round();
    if !(bytes >= 1.0 && bytes.is_finite()) {
        bail!("size {text:?} must be at least one byte");
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn sizes_parse_like_transformers() {
        assert_eq!(parse_size("5GB").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("2MiB").unwrap(), 2 << 20);
        assert_eq!(parse_size("1234").unwrap(), 1234);
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn shards_fill_in_order_and_oversized_tensors_stand_alone() {
        let t = |n: usize| Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap();
        let tensors = BTreeMap::from([
            ("a".to_string(), t(10)),
            ("b".to_string(), t(10)),
            ("c".to_string(), t(100)),
            ("d".to_string(), t(5)),
        ]);
        assert_eq!(
            plan_shards(&tensors, 80),
            vec![vec!["a", "b"], vec!["c"], vec!["d"]]
        );
        assert_eq!(
            plan_shards(&tensors, 10_000),
            vec![vec!["a", "b", "c", "d"]]
        );
    }
}
