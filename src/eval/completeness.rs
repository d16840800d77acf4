//! Whether a run covers the published benchmark. Each benchmark knows its published parts and
//! their sizes (RMB: every file of `RMB_dataset/` with its record count; RewardBench: the 23
//! subsets of the filtered split, 2,985 pairs; RM-Bench: prompts per domain file, 1,327); a loader
//! counts what it read per part; the comparison says what is missing. The result travels in the
//! log's header, so a replayed report is labelled the same way, and a report over less than the
//! whole set never prints an unqualified headline.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One published part (a file, a subset, a domain) that the run does not cover in full.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingPart {
    pub part: String,
    pub published: usize,
    pub found: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completeness {
    /// What the parts are ("files", "subsets", "domains") and counts ("records", "pairs", "prompts").
    pub parts: String,
    pub units: String,
    pub published: usize,
    /// Read from the data, bad records included.
    pub found: usize,
    /// Parts absent or with another count than published, in published order.
    pub missing: Vec<MissingPart>,
    /// Records the loader skipped as malformed (`--on-bad-record skip`): read, but not judged.
    #[serde(default)]
    pub skipped: usize,
    /// Parts in the data that the published set does not have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unexpected: Vec<String>,
}

impl Completeness {
    /// Compares `found` (part → count read) with `published`.
    pub fn compare(
        (parts, units): (&str, &str),
        published: &[(&str, usize)],
        found: &BTreeMap<String, usize>,
        skipped: usize,
    ) -> Self {
        let missing = published
            .iter()
            .filter_map(|&(part, n)| {
                let got = found.get(part).copied().unwrap_or(0);
                (got != n).then(|| MissingPart {
                    part: part.to_string(),
                    published: n,
                    found: got,
                })
            })
            .collect();
        let unexpected = found
            .keys()
            .filter(|k| !published.iter().any(|(p, _)| p == k))
            .cloned()
            .collect();
        Self {
            parts: parts.into(),
            units: units.into(),
            published: published.iter().map(|(_, n)| n).sum(),
            found: found.values().sum(),
            missing,
            skipped,
            unexpected,
        }
    }

    /// Every published part present with its published count, and nothing skipped.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.skipped == 0
    }

    /// One paragraph for the report: what is missing, naming parts (the first few).
    pub fn describe(&self) -> String {
        if self.is_complete() {
            return format!(
                "complete: all {} published {} in all published {}",
                self.published, self.units, self.parts
            );
        }
        let absent: Vec<&MissingPart> = self.missing.iter().filter(|m| m.found == 0).collect();
        let short: Vec<&MissingPart> = self.missing.iter().filter(|m| m.found > 0).collect();
        let list = |parts: &[&MissingPart], with_counts: bool| {
            let mut names: Vec<String> = parts
                .iter()
                .take(8)
                .map(|m| {
                    if with_counts {
                        format!("{} ({} of {})", m.part, m.found, m.published)
                    } else {
                        m.part.clone()
                    }
                })
                .collect();
            if parts.len() > 8 {
                names.push(format!("and {} more", parts.len() - 8));
            }
            names.join(", ")
        };
        let mut out = format!(
            "PARTIAL: {} of the {} published {}",
            self.found, self.published, self.units
        );
        if !absent.is_empty() {
            out += &format!(
                "; {} of the published {} missing: {}",
                absent.len(),
                self.parts,
                list(&absent, false)
            );
        }
        if !short.is_empty() {
            out += &format!(
                "; {} {} with another count than published: {}",
                short.len(),
                self.parts,
                list(&short, true)
            );
        }
        if self.skipped > 0 {
            out += &format!("; {} malformed records skipped", self.skipped);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_short_and_extra_parts_are_named() {
        let published = [("a.json", 3), ("b.json", 2), ("c.json", 1)];
        let found = BTreeMap::from([
            ("a.json".to_string(), 3),
            ("b.json".to_string(), 1),
            ("x.json".to_string(), 5),
        ]);
        let c = Completeness::compare(("files", "records"), &published, &found, 0);
        assert!(!c.is_complete());
        assert_eq!((c.published, c.found), (6, 9));
        assert_eq!(c.unexpected, vec!["x.json"]);
        let text = c.describe();
        assert!(
            text.starts_with("PARTIAL: 9 of the 6 published records"),
            "{text}"
        );
        assert!(
            text.contains("1 of the published files missing: c.json"),
            "{text}"
        );
        assert!(text.contains("b.json (1 of 2)"), "{text}");

        let all = BTreeMap::from([
            ("a.json".to_string(), 3),
            ("b.json".to_string(), 2),
            ("c.json".to_string(), 1),
        ]);
        let c = Completeness::compare(("files", "records"), &published, &all, 0);
        assert!(c.is_complete(), "{c:?}");
        let skipped = Completeness::compare(("files", "records"), &published, &all, 1);
        assert!(!skipped.is_complete());
        assert!(skipped.describe().contains("1 malformed records skipped"));
    }
}
