//! Generates the gRPC code for proto/rmr1/v1 with a vendored protoc, plus the encoded file
//! descriptor set that server reflection serves; with the `cuda` feature, also compiles kernels/*.cu
//! to PTX with nvcc (loaded at run time through candle's custom-kernel interface).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        compile_kernels()?;
    }
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "proto/rmr1/v1/judge.proto",
        "proto/rmr1/v1/models.proto",
        "proto/rmr1/v1/training.proto",
    ];
    tonic_prost_build::configure()
        // Undecodable requests are INVALID_ARGUMENT, not prost's INTERNAL (see src/api/codec.rs).
        .codec_path("crate::api::codec::ValidatingCodec")
        .file_descriptor_set_path(out_dir.join("rmr1_descriptor.bin"))
        .compile_protos(&protos, &["proto"])?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}

/// PTX for the compute capability in `CUDA_COMPUTE_CAP` (default 90: H100/H200). PTX rather than
/// a cubin so the driver can JIT it for the exact card; `-lineinfo` keeps profiler source mapping.
///
/// The driver rule: a driver JIT-compiles PTX only from toolkits no newer than the CUDA version it
/// supports (nvcc 13.0's PTX needs a CUDA 13.0 driver, 580+; on an older one every kernel load fails
/// with CUDA_ERROR_UNSUPPORTED_PTX_VERSION). `RMR1_MIN_DRIVER_CUDA` (e.g. `12.8`) names the oldest
/// driver a build must run on and fails the build when nvcc is newer; the binary also checks the
/// driver it meets before loading a kernel (`src/cuda/mod.rs`).
///
/// Each PTX is then assembled by `ptxas -v` for the same architecture, and the build fails when a
/// kernel has no `__launch_bounds__`, needs more registers than its launch size allows or more than
/// 48 KiB of static shared memory; registers, shared memory and spills are printed per kernel.
fn compile_kernels() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".to_string());
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".to_string());
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=PTXAS");
    println!("cargo:rerun-if-env-changed=RMR1_MIN_DRIVER_CUDA");
    println!("cargo:rerun-if-changed=kernels/common.cuh");
    let toolkit = nvcc_cuda_version(&nvcc)?;
    if let Ok(min) = std::env::var("RMR1_MIN_DRIVER_CUDA") {
        let driver = parse_version(&min)
            .ok_or_else(|| format!("RMR1_MIN_DRIVER_CUDA={min:?}: expected MAJOR.MINOR"))?;
        if toolkit > driver {
            return Err(format!(
                "{nvcc} is CUDA {}.{}, newer than the oldest driver this build targets (CUDA {min}, \
                 RMR1_MIN_DRIVER_CUDA): that driver cannot load its PTX. Build with nvcc <= {min} or \
                 raise RMR1_MIN_DRIVER_CUDA",
                toolkit.0, toolkit.1
            )
            .into());
        }
    }
    println!(
        "cargo:rustc-env=RMR1_NVCC_CUDA_VERSION={}.{}",
        toolkit.0, toolkit.1
    );
    let ptxas = std::env::var("PTXAS").unwrap_or_else(|_| {
        // The ptxas of the same toolkit as nvcc.
        let beside = std::path::Path::new(&nvcc).with_file_name("ptxas");
        if beside.is_file() {
            beside.display().to_string()
        } else {
            "ptxas".to_string()
        }
    });
    let mut report = String::new();
    for name in ["fused", "paged_attention", "sampling"] {
        let source = format!("kernels/{name}.cu");
        println!("cargo:rerun-if-changed={source}");
        let ptx = out_dir.join(format!("{name}.ptx"));
        let status = std::process::Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17", "-lineinfo"])
            .arg(format!("-arch=sm_{cap}"))
            .arg("-o")
            .arg(&ptx)
            .arg(&source)
            .status()
            .map_err(|e| {
                format!("running {nvcc} for {source} (see ../shared/tools/cuda-toolchain.sh): {e}")
            })?;
        if !status.success() {
            return Err(format!("nvcc failed on {source}").into());
        }
        report += &check_kernel_resources(&ptxas, &ptx, &cap, &out_dir)?;
    }
    let report_path = out_dir.join("ptxas-report.txt");
    std::fs::write(&report_path, &report)?;
    // The whole table goes to the build script's output (`cargo build -vv` shows it); warnings only
    // name kernels that spill or use over three quarters of their register limit.
    let mut flagged = 0;
    for line in report.lines() {
        println!("{line}");
        if line.contains("[near limit]") {
            println!("cargo:warning={line}");
            flagged += 1;
        }
    }
    println!(
        "cargo:warning=ptxas sm_{cap}: {} kernels within their launch bounds, {flagged} flagged; \
         registers / shared memory / spills per kernel in {}",
        report.lines().count(),
        report_path.display()
    );
    Ok(())
}

/// `nvcc --version`'s "release X.Y".
fn nvcc_cuda_version(nvcc: &str) -> Result<(u32, u32), Box<dyn std::error::Error>> {
    let out = std::process::Command::new(nvcc)
        .arg("--version")
        .output()
        .map_err(|e| {
            format!("running {nvcc} --version (see ../shared/tools/cuda-toolchain.sh): {e}")
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("release ")
        .nth(1)
        .and_then(|rest| parse_version(rest.split(',').next()?.trim()))
        .ok_or_else(|| format!("no 'release X.Y' in {nvcc} --version: {text}").into())
}

fn parse_version(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Registers per multiprocessor and per thread, and the static shared-memory limit per block, on
/// every architecture from sm_70 to sm_90.
const REGISTER_FILE: u64 = 65_536;
const MAX_REGISTERS_PER_THREAD: u64 = 255;
const MAX_STATIC_SHARED: u64 = 48 << 10;

/// Assembles `ptx` with `ptxas -v` and checks each kernel against its `__launch_bounds__`
/// (`.maxntid` in the PTX). Returns one report line per kernel.
fn check_kernel_resources(
    ptxas: &str,
    ptx: &std::path::Path,
    cap: &str,
    out_dir: &std::path::Path,
) -> Result<String, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(ptx)?;
    let mut bounds: Vec<(String, Option<u64>)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix(".visible .entry ") {
            bounds.push((rest.trim_end_matches('(').to_string(), None));
        } else if let Some(dims) = line.strip_prefix(".maxntid ") {
            let threads = dims
                .split(',')
                .map(|d| d.trim().parse::<u64>().unwrap_or(1))
                .product();
            if let Some(last) = bounds.last_mut() {
                last.1 = Some(threads);
            }
        }
    }
    let out = std::process::Command::new(ptxas)
        .arg(format!("-arch=sm_{cap}"))
        .arg("-v")
        .arg("-o")
        .arg(out_dir.join("ptxas-check.cubin"))
        .arg(ptx)
        .output()
        .map_err(|e| format!("running {ptxas} (set PTXAS to the toolkit's ptxas): {e}"))?;
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("ptxas failed on {}:\n{log}", ptx.display()).into());
    }
    let mut report = String::new();
    let mut errors = Vec::new();
    for (kernel, threads) in bounds {
        let Some(threads) = threads else {
            errors.push(format!(
                "{kernel} has no __launch_bounds__: ptxas may give it more registers than a launch can have"
            ));
            continue;
        };
        let usage = KernelUsage::parse(&log, &kernel)
            .ok_or_else(|| format!("ptxas -v printed no resource usage for {kernel}:\n{log}"))?;
        let per_thread_limit = (REGISTER_FILE / threads).min(MAX_REGISTERS_PER_THREAD);
        if usage.registers > per_thread_limit {
            errors.push(format!(
                "{kernel}: {} registers x {threads} threads exceeds the {REGISTER_FILE}-register file",
                usage.registers
            ));
        }
        if usage.shared > MAX_STATIC_SHARED {
            errors.push(format!(
                "{kernel}: {} bytes of static shared memory (limit {MAX_STATIC_SHARED})",
                usage.shared
            ));
        }
        let flag = if usage.spill_stores > 0 || usage.registers * 4 > per_thread_limit * 3 {
            " [near limit]"
        } else {
            ""
        };
        report += &format!(
            "ptxas sm_{cap} {kernel}: {} registers (limit {per_thread_limit} at {threads} threads), {} B shared, {} B spilled{flag}\n",
            usage.registers, usage.shared, usage.spill_stores
        );
    }
    if errors.is_empty() {
        Ok(report)
    } else {
        Err(format!("kernel resource check failed:\n  {}", errors.join("\n  ")).into())
    }
}

/// One kernel's lines of `ptxas -v` output.
struct KernelUsage {
    registers: u64,
    shared: u64,
    spill_stores: u64,
}

impl KernelUsage {
    fn parse(log: &str, kernel: &str) -> Option<Self> {
        let header = format!("Function properties for {kernel}");
        let mut lines = log.lines().skip_while(|l| !l.trim_end().ends_with(&header));
        lines.next()?;
        let spills = lines.next()?;
        let usage = lines.next()?;
        let number_before = |text: &str, unit: &str| -> Option<u64> {
            let before = &text[..text.find(unit)?];
            before.split_whitespace().last()?.parse().ok()
        };
        Some(Self {
            spill_stores: number_before(spills, "bytes spill stores")?,
            registers: number_before(usage, "registers")?,
            shared: number_before(usage, "bytes smem").unwrap_or(0),
        })
    }
}
