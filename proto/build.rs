//! Compiles `proto/fedmesh/v1/*.proto` with protox (pure Rust): no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/fedmesh/v1/federation.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::CheckedCodec")
        .compile_fds(fds)?;
    Ok(())
}
