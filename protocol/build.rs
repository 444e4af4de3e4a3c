//! Compiles the gRPC contracts with protox (pure Rust, so no `protoc` is needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/berth/node/v1/node.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    // Blob chunks are handed on as they are, not copied into vectors.
    tonic_prost_build::configure()
        .bytes(".berth.node.v1.BlobChunk.data")
        .compile_fds(descriptors)?;
    Ok(())
}
