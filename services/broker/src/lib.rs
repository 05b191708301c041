//! `tideline-broker`: the storage broker. It hosts partition replicas on `tideline-log`, follows
//! the controller's metadata, and (in progress) serves produce and fetch.
//!
//! - [`log_config`]: topic configs to a partition log's `LogConfig`.
//! - [`replicas`]: the partitions this broker holds, kept in line with cluster metadata.
#![warn(missing_docs)]

pub mod log_config;
pub mod replicas;
