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
    Ok(read_numbered_records(file)?
        .into_iter()
        .map(|(_, record)| record)
        .collect())
}

/// Like [`read_records`], each record with where it is, 1-based: its line in a JSON Lines file
/// (blank lines are skipped but counted, so the number is what an editor shows), else its
/// position in the JSON array or parquet file. A JSON Lines line that is not UTF-8 is a bad
/// record, not a bad file; a parquet row that cannot be decoded is a bad file (see below).
pub fn read_numbered_records(file: &DataFile) -> Result<Vec<NumberedRecord>> {
    let path = &file.path;
    if has_extension(path, &["parquet"]) {
        return read_parquet(path);
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if has_extension(path, &["jsonl"]) || first != Some(&b'[') {
        return Ok(bytes
            .split(|&b| b == b'\n')
            .enumerate()
            .filter(|(_, line)| !line.trim_ascii().is_empty())
            .map(|(index, line)| (index + 1, parse_line(line)))
            .collect());
    }
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    match value {
        serde_json::Value::Array(items) => Ok(items
            .into_iter()
            .enumerate()
            .map(|(index, item)| (index + 1, Ok(item)))
            .collect()),
        _ => bail!("{} is not a JSON array of records", path.display()),
    }
}

/// A record and its 1-based line (JSON Lines) or position (JSON array, parquet).
pub type NumberedRecord = (usize, Result<serde_json::Value, String>);

fn parse_line(line: &[u8]) -> Result<serde_json::Value, String> {
    let text = std::str::from_utf8(line).map_err(|e| format!("not UTF-8: {e}"))?;
    serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))
}

fn read_parquet(path: &Path) -> Result<Vec<NumberedRecord>> {
    // The parquet decoder is known to panic on some corrupt files; a dataset file is untrusted
    // input, so a crash in it becomes an error naming the file rather than taking down the caller
    // (the server runs loaders on its own threads).
    std::panic::catch_unwind(|| read_parquet_rows(path)).unwrap_or_else(|_| {
        bail!(
            "{} could not be decoded (the parquet reader crashed on it)",
            path.display()
        )
    })
}

fn read_parquet_rows(path: &Path) -> Result<Vec<NumberedRecord>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = SerializedFileReader::new(file)
        .with_context(|| format!("{} is not a parquet file", path.display()))?;
    let rows = reader
        .get_row_iter(None)
        .with_context(|| format!("reading rows of {}", path.display()))?;
    // Rows are assembled from column readers that advance together, so after one row fails to
    // decode the rest of the file cannot be trusted (and the crate's iterator may repeat the
    // error forever): the first failure ends the file, as an error of the file.
    let mut records = Vec::new();
    for row in rows {
        let number = records.len() + 1;
        match row {
            Ok(row) => records.push((number, Ok(row.to_json_value()))),
            Err(e) => bail!(
                "{} row {number}: unreadable parquet row: {}",
                path.display(),
                clip(&e.to_string())
            ),
        }
    }
    Ok(records)
}

/// The parquet crate quotes every byte of a value it cannot decode; a message stays readable.
fn clip(message: &str) -> String {
    const MAX: usize = 300;
    match message.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &message[..cut]),
        None => message.to_string(),
    }
}
