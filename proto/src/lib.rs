//! `fedmesh.v1`: the wire protocol between edge nodes and the coordinator.
//!
//! This crate holds the protobuf definitions (compiled at build time with
//! `protox`, no system `protoc`), the generated tonic client and server, and
//! the helpers that turn packed tensors into `Vec<f32>` and back. It holds no
//! business logic: validation against a federation's state belongs to the
//! coordinator and the node.
#![deny(missing_docs)]

pub mod codec;
pub mod model;
pub mod secure;
pub mod tensor;

/// Generated code for package `fedmesh.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("fedmesh.v1");
}

pub use tensor::{ShapeSummary, TensorError, decode_f32, encode_f32};

/// Default bound on any single fedmesh message, in bytes (64 MiB: a 1e7
/// parameter update plus headroom). Servers and clients set their decoders to
/// this unless configured otherwise.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
