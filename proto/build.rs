//! Compiles `tideline/v1/*.proto` with protox (pure Rust: no system `protoc`), generates the
//! prost messages and tonic clients and servers, and writes the descriptor set that server
//! reflection serves and the list of every service's methods.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "tideline/v1/common.proto",
        "tideline/v1/controller.proto",
        "tideline/v1/broker.proto",
        "tideline/v1/coordinator.proto",
    ];
    let mut compiler = protox::Compiler::new(["."])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(files)?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("tideline_descriptor.bin"), compiler.encode_file_descriptor_set())?;
    // Every (service, method) pair, for servers that label metrics by method and must not let
    // a client grow the label set with made-up names.
    let mut methods = String::from("&[\n");
    for file in &compiler.file_descriptor_set().file {
        for service in &file.service {
            let name = format!("{}.{}", file.package(), service.name());
            for method in &service.method {
                methods.push_str(&format!("    ({name:?}, {:?}),\n", method.name()));
            }
        }
    }
    methods.push(']');
    std::fs::write(out.join("grpc_methods.rs"), methods)?;
    tonic_prost_build::configure().bytes(".").compile_fds(compiler.file_descriptor_set())?;
    println!("cargo:rerun-if-changed=tideline");
    Ok(())
}
