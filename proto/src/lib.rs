//! gRPC definitions generated at build time from the `.proto` files in `proto/proto/`
//! (pure Rust: protox compiles them, tonic-prost-build generates the code; no system protoc).
