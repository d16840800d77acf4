# rmr1 judge server, CPU build. (CUDA images build with --features cuda on an nvidia/cuda base.)
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# protoc comes from the protoc-bin-vendored crate; nothing else to install.
RUN cargo build --release --bin rmr1

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/rmr1 /usr/local/bin/rmr1
# Models are mounted (or downloaded to HF_HOME) at run time, never baked in.
ENV HF_HOME=/models/hf
EXPOSE 50051 9090
ENTRYPOINT ["rmr1"]
CMD ["serve", "--model", "gaotang/RM-R1-Qwen2.5-Instruct-7B", "--listen", "0.0.0.0:50051", "--metrics-listen", "0.0.0.0:9090"]
