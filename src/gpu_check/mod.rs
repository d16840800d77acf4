//! Checks of the CUDA path that can only run on a GPU machine (which has no Rust toolchain): the
//! kernels against their CPU references, and the engine's outputs for a model that
//! scripts/gpu_check.py also runs through Hugging Face transformers. `rmr1 gpu-check` runs them;
//! scripts/gpu-check.sh runs the whole sequence and prints the final table.

#[cfg(feature = "cuda")]
mod fused;
#[cfg(feature = "cuda")]
pub mod kernels;
pub mod model;

use serde::Serialize;

/// One line of the final table.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub check: String,
    /// The largest error seen, in the unit `detail` names (absolute unless it says otherwise).
    pub max_error: f64,
    pub tolerance: f64,
    pub passed: bool,
    pub detail: String,
}

impl CheckResult {
    pub fn new(check: impl Into<String>, max_error: f64, tolerance: f64, detail: String) -> Self {
        Self {
            check: check.into(),
            passed: max_error <= tolerance && max_error.is_finite(),
            max_error,
            tolerance,
            detail,
        }
    }

    /// A check whose pass rule is more than `max_error <= tolerance` (a relative term, say).
    pub fn judged(
        check: impl Into<String>,
        max_error: f64,
        tolerance: f64,
        passed: bool,
        detail: String,
    ) -> Self {
        Self {
            check: check.into(),
            max_error,
            tolerance,
            passed: passed && max_error.is_finite(),
            detail,
        }
    }

    /// A check that could not run (a CUDA error, say): a failure with its reason.
    pub fn error(check: impl Into<String>, error: &dyn std::fmt::Display) -> Self {
        Self {
            check: check.into(),
            max_error: f64::NAN,
            tolerance: 0.0,
            passed: false,
            detail: format!("error: {error}"),
        }
    }
}

pub fn print_table(results: &[CheckResult]) {
    println!(
        "{:<44} {:>12} {:>10}  result  detail",
        "check", "max error", "tolerance"
    );
    for r in results {
        println!(
            "{:<44} {:>12.3e} {:>10.1e}  {:<6}  {}",
            r.check,
            r.max_error,
            r.tolerance,
            if r.passed { "pass" } else { "FAIL" },
            r.detail
        );
    }
}

/// Element-wise comparison: the largest `|got - want|`, and whether every element is within
/// `atol + rtol * |want|`. NaN anywhere in `got` (a poisoned element never written) fails.
pub fn compare(got: &[f32], want: &[f32], atol: f32, rtol: f32) -> (f64, bool, usize) {
    let mut max_err = 0.0f64;
    let mut bad = 0usize;
    if got.len() != want.len() {
        return (f64::INFINITY, false, got.len().max(want.len()));
    }
    for (&g, &w) in got.iter().zip(want) {
        let err = (g - w).abs();
        if !err.is_finite() || err > atol + rtol * w.abs() {
            bad += 1;
        }
        max_err = max_err.max(if err.is_finite() {
            err as f64
        } else {
            f64::INFINITY
        });
    }
    (max_err, bad == 0, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_flags_nan_and_out_of_tolerance() {
        assert!(compare(&[1.0, 2.0], &[1.0, 2.001], 1e-2, 0.0).1);
        assert!(!compare(&[1.0, f32::NAN], &[1.0, 2.0], 1e-2, 0.0).1);
        let (err, ok, bad) = compare(&[1.0, 3.0], &[1.0, 2.0], 0.1, 0.1);
        assert!(!ok && bad == 1 && (err - 1.0).abs() < 1e-9);
        assert!(!CheckResult::new("x", f64::NAN, 1.0, String::new()).passed);
    }
}
