//! Where training jobs may read and write: the server's `--train-roots`. A job names files a
//! remote client chose, and the server reads them and writes checkpoints with its own
//! permissions, so every dataset path and the output dir must resolve inside a root — after
//! `..` and symlinks are followed, not just by how the text looks.

use super::spec::{SpecError, TaskSpec, TrainSpec};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone)]
pub struct TrainRoots {
    /// Canonical (absolute, symlink-free) directories; relative paths resolve against the first.
    roots: Vec<PathBuf>,
}

impl TrainRoots {
    /// Canonicalizes `roots`, which must exist and be directories.
    pub fn new(roots: &[PathBuf]) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !roots.is_empty(),
            "training needs at least one --train-roots directory"
        );
        let mut canonical = Vec::new();
        for root in roots {
            let c = root.canonicalize().map_err(|e| {
                anyhow::anyhow!("train root {} cannot be used: {e}", root.display())
            })?;
            anyhow::ensure!(
                c.is_dir(),
                "train root {} is not a directory",
                root.display()
            );
            canonical.push(c);
        }
        Ok(Self { roots: canonical })
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// The absolute, symlink-free form of `path` if it lies inside a root. A path that does not
    /// exist yet (an output dir) is checked through its nearest existing ancestor, and the part
    /// below that may not contain `..`.
    pub fn resolve(&self, field: &str, path: &Path) -> Result<PathBuf, SpecError> {
        let bad = |message: String| SpecError {
            field: field.to_string(),
            message,
        };
        if path.as_os_str().is_empty() {
            return Err(bad("is empty".into()));
        }
        let joined = if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.roots[0].join(path)
        };
        let mut existing = joined.as_path();
        let mut missing = Vec::new();
        let resolved = loop {
            match existing.canonicalize() {
                Ok(c) => break c,
                Err(_) => {
                    let Some(parent) = existing.parent() else {
                        return Err(bad(format!("{} cannot be resolved", path.display())));
                    };
                    missing.push(existing.file_name().map(PathBuf::from).unwrap_or_default());
                    existing = parent;
                }
            }
        };
        let mut full = resolved;
        for part in missing.iter().rev() {
            // `file_name` is empty for a trailing `..`; any `..` here would step out of what
            // canonicalization checked.
            if part.as_os_str().is_empty()
                || part
                    .components()
                    .any(|c| !matches!(c, Component::Normal(_)))
            {
                return Err(bad(format!(
                    "{} climbs out of a directory that does not exist",
                    path.display()
                )));
            }
            full.push(part);
        }
        if self.roots.iter().any(|r| full.starts_with(r)) {
            Ok(full)
        } else {
            Err(bad(format!(
                "{} is outside the train roots",
                path.display()
            )))
        }
    }

    /// Resolves every path of `spec` in place (dataset files and the output dir).
    pub fn resolve_spec(&self, spec: &mut TrainSpec) -> Result<(), SpecError> {
        match &mut spec.task {
            TaskSpec::Sft(sft) => {
                for (i, f) in sft.train_files.iter_mut().enumerate() {
                    *f = self.resolve(&format!("sft.train_files[{i}]"), f)?;
                }
                for (i, f) in sft.eval_files.iter_mut().enumerate() {
                    *f = self.resolve(&format!("sft.eval_files[{i}]"), f)?;
                }
            }
            TaskSpec::Grpo(grpo) => {
                for (i, f) in grpo.train_files.iter_mut().enumerate() {
                    *f = self.resolve(&format!("grpo.train_files[{i}]"), f)?;
                }
            }
        }
        spec.output_dir = self.resolve("output_dir", &spec.output_dir)?;
        if self.roots.contains(&spec.output_dir) {
            return Err(SpecError {
                field: "output_dir".into(),
                message: "must be a directory below a train root, not the root itself".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, TrainRoots) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::write(root.join("data/a.jsonl"), "{}\n").unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/secret"), "x").unwrap();
        let roots = TrainRoots::new(&[root]).unwrap();
        (dir, roots)
    }

    #[test]
    fn relative_paths_resolve_against_the_first_root() {
        let (_dir, roots) = setup();
        let r = roots.resolve("f", Path::new("data/a.jsonl")).unwrap();
        assert_eq!(r, roots.roots()[0].join("data/a.jsonl"));
        // Inside after normalisation is fine.
        let r = roots
            .resolve("f", Path::new("data/../data/a.jsonl"))
            .unwrap();
        assert_eq!(r, roots.roots()[0].join("data/a.jsonl"));
        // Not existing yet: checked through its ancestor.
        let r = roots.resolve("o", Path::new("runs/new/deep")).unwrap();
        assert_eq!(r, roots.roots()[0].join("runs/new/deep"));
    }

    #[test]
    fn escapes_are_refused_with_the_field_named() {
        let (dir, roots) = setup();
        let e = roots
            .resolve("sft.train_files[1]", Path::new("../outside/secret"))
            .unwrap_err();
        assert_eq!(e.field, "sft.train_files[1]");
        assert!(e.message.contains("outside the train roots"), "{e}");
        let e = roots.resolve("f", Path::new("/etc/passwd")).unwrap_err();
        assert_eq!(e.to_string(), "f: /etc/passwd is outside the train roots");
        assert!(roots.resolve("o", Path::new("nope/../../outside")).is_err());
        assert!(roots.resolve("o", Path::new("nope/..")).is_err());
        std::os::unix::fs::symlink(dir.path().join("outside"), roots.roots()[0].join("link"))
            .unwrap();
        let e = roots.resolve("f", Path::new("link/secret")).unwrap_err();
        assert!(e.message.contains("outside"), "{e}");
        // A not-yet-existing dir below a symlink that leads out is outside too.
        assert!(roots.resolve("o", Path::new("link/new-run")).is_err());
    }
}
