//! Compiles the `.proto` files in `proto/` with protox (pure Rust, no system protoc) and generates
//! tonic clients and servers from the resulting descriptor set.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "deviceplugin_v1beta1.proto",
    "pluginregistration.proto",
    "podresources_v1.proto",
    "kubevirt_hooks_info.proto",
    "kubevirt_hooks_v1alpha1.proto",
    "kubevirt_hooks_v1alpha2.proto",
    "kubevirt_hooks_v1alpha3.proto",
    "dra_v1.proto",
    "dra_health_v1.proto",
    "dra_health_v1alpha1.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", dir.join(proto).display());
    }
    let fds = protox::compile(PROTOS, [&dir])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
