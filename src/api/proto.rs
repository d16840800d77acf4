//! Code generated from proto/rmr1/v1 by build.rs.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("rmr1.v1");

/// Encoded descriptors of our services, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("rmr1_descriptor");
