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
fn compile_kernels() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".to_string());
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".to_string());
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-changed=kernels/common.cuh");
    for name in ["paged_attention", "sampling"] {
        let source = format!("kernels/{name}.cu");
        println!("cargo:rerun-if-changed={source}");
        let status = std::process::Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17", "-lineinfo"])
            .arg(format!("-arch=sm_{cap}"))
            .arg("-o")
            .arg(out_dir.join(format!("{name}.ptx")))
            .arg(&source)
            .status()
            .map_err(|e| {
                format!("running {nvcc} for {source} (see ../shared/tools/cuda-toolchain.sh): {e}")
            })?;
        if !status.success() {
            return Err(format!("nvcc failed on {source}").into());
        }
    }
    Ok(())
}
