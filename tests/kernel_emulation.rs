//! The CUDA kernels in kernels/ checked on the CPU: tests/kernel_emulation/run.sh compiles them as
//! host C++ through a small emulation of the CUDA execution model and compares every kernel with an
//! independent reference on fresh random inputs (the seed is in the output). Runs on machines
//! without a GPU, so kernel logic is covered by every `cargo test`; needs a C++20 g++ (or $CXX).

use std::path::Path;
use std::process::Command;

#[test]
fn cuda_kernels_match_references_under_cpu_emulation() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/kernel_emulation/run.sh");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".to_string());
    // A missing compiler is a broken test environment, not a reason to pass.
    match Command::new(&cxx).arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`{cxx} --version` failed ({}); the kernel emulation test needs a C++20 g++ \
             (install g++ or point $CXX at one)",
            out.status
        ),
        Err(e) => panic!(
            "cannot run `{cxx}` ({e}); the kernel emulation test needs a C++20 g++ \
             (install g++ or point $CXX at one)"
        ),
    }

    let out = Command::new("bash")
        .arg(&script)
        .env("CXX", &cxx)
        .env(
            "KERNEL_EMULATION_OUT",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("kernel_emulation"),
        )
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kernel emulation checks failed ({}); rerun with `{}` and the seed below\n\
         --- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status,
        script.display()
    );
    // Shown with --nocapture: the results table and the seed.
    println!("{stdout}");
}
