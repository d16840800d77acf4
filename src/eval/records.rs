//! Reading dataset files into JSON records: a JSON array, JSON Lines, or parquet (the format the
//! Hugging Face hub serves datasets in). Records come back one by one so a bad one can be reported
//! with its file and index.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub struct DataFile {
    pub path: PathBuf,
    /// The path as shown in messages and reports.
    pub name: String,
}

impl DataFile {
    pub fn open(path: &Path) -> Result<Self> {
        if !path.is_file() {
            bail!("{} is not a file", path.display());
        }
        Ok(Self {
            path: path.into(),
            name: path.display().to_string(),
        })
    }

    /// `path` itself, or the files directly in the directory `path` with one of `extensions`,
    /// sorted by name.
    pub fn find(path: &Path, extensions: &[&str]) -> Result<Vec<Self>> {
        if path.is_file() {
            return Ok(vec![Self::open(path)?]);
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && has_extension(p, extensions))
            .collect();
        files.sort();
        if files.is_empty() {
            bail!("{} has no {} files", path.display(), extensions.join(" / "));
        }
        files.iter().map(|p| Self::open(p)).collect()
    }
}

pub fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| extensions.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// The records of `file`; a record that cannot even be parsed is an `Err` naming why.
pub fn read_records(file: &DataFile) -> Result<Vec<Result<serde_json::Value, String>>> {
    let path = &file.path;
    if has_extension(path, &["parquet"]) {
        return read_parquet(path);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if has_extension(path, &["jsonl"]) || !text.trim_start().starts_with('[') {
        return Ok(text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| format!("not JSON: {e}")))
            .collect());
    }
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    match value {
        serde_json::Value::Array(items) => Ok(items.into_iter().map(Ok).collect()),
        _ => bail!("{} is not a JSON array of records", path.display()),
    }
}

fn read_parquet(path: &Path) -> Result<Vec<Result<serde_json::Value, String>>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = SerializedFileReader::new(file)
        .with_context(|| format!("{} is not a parquet file", path.display()))?;
    let rows = reader
        .get_row_iter(None)
        .with_context(|| format!("reading rows of {}", path.display()))?;
    Ok(rows
        .map(|row| {
            row.map(|r| r.to_json_value())
                .map_err(|e| format!("unreadable parquet row: {e}"))
        })
        .collect())
}
