//! Manifests of known checkpoints (`models/*.json`): hub id, revision, prompt family, defaults.
//!
//! The prompt family decides which RM-R1 templates a model was trained on. Upstream guesses it from
//! substrings of the model name; a server must not, because local copies and fine-tunes are named
//! freely. The family comes from `--family`, else from the manifest matching the hub id exactly.

use super::templates::PromptFamily;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ModelManifest {
    pub hub_id: String,
    pub revision: String,
    pub family: String,
    pub architecture: String,
    pub base_model: String,
    /// Default generation budget for judgments (upstream RL and demo used 8,192).
    pub max_new_tokens: usize,
}

impl ModelManifest {
    pub fn family(&self) -> Result<PromptFamily> {
        self.family
            .parse()
            .map_err(|e| anyhow::anyhow!("manifest {}: {e}", self.hub_id))
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading manifest {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing manifest {}", path.display()))
    }
}

/// The manifests shipped in `models/`, compiled in so the binary needs no data files.
const BUILT_IN: &[&str] = &[
    include_str!("../../models/rm-r1-qwen2.5-instruct-7b.json"),
    include_str!("../../models/rm-r1-qwen2.5-instruct-14b.json"),
    include_str!("../../models/rm-r1-qwen2.5-instruct-32b.json"),
    include_str!("../../models/rm-r1-deepseek-distilled-qwen-7b.json"),
    include_str!("../../models/rm-r1-deepseek-distilled-qwen-14b.json"),
    include_str!("../../models/rm-r1-deepseek-distilled-qwen-32b.json"),
];

pub fn built_in_manifests() -> Vec<ModelManifest> {
    BUILT_IN
        .iter()
        .map(|text| serde_json::from_str(text).expect("built-in manifests are valid JSON"))
        .collect()
}

/// The built-in manifest for a hub id (`owner/name`, optionally `@revision`), matched exactly
/// (ASCII case-insensitive, as the hub treats ids).
pub fn manifest_for_hub_id(spec: &str) -> Option<ModelManifest> {
    let id = spec.split('@').next().unwrap_or(spec);
    built_in_manifests()
        .into_iter()
        .find(|m| m.hub_id.eq_ignore_ascii_case(id))
}

/// How a served model's family was decided, for the start-up log and `ListModels`.
#[derive(Debug, Clone)]
pub struct FamilyChoice {
    pub family: PromptFamily,
    pub manifest: Option<ModelManifest>,
}

/// `--family` wins; then an explicit `--manifest` file; then the built-in manifest of the hub id.
pub fn choose_family(
    model_spec: &str,
    family_flag: Option<PromptFamily>,
    manifest_file: Option<&Path>,
) -> Result<FamilyChoice> {
    let manifest = match manifest_file {
        Some(path) => Some(ModelManifest::from_file(path)?),
        None => manifest_for_hub_id(model_spec),
    };
    let family = match (family_flag, &manifest) {
        (Some(family), _) => family,
        (None, Some(m)) => m.family()?,
        (None, None) => bail!(
            "cannot tell which RM-R1 prompt family {model_spec} was trained on: pass --family \
             instruct|reasoning (or --manifest <file>); known checkpoints: {}",
            built_in_manifests()
                .iter()
                .map(|m| m.hub_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    Ok(FamilyChoice { family, manifest })
}
