//! Generates the gRPC code for proto/rmr1/v1 with a vendored protoc, plus the encoded file
//! descriptor set that server reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = ["proto/rmr1/v1/judge.proto", "proto/rmr1/v1/models.proto"];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("rmr1_descriptor.bin"))
        .compile_protos(&protos, &["proto"])?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
