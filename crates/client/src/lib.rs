//! `tideline-client`: the Rust client of Tideline, a distributed commit log.
//!
//! One [`Cluster`] handle (cheap to clone) holds the gRPC channels and the metadata cache that
//! every client built on it shares:
//! - [`Admin`] creates, alters and describes topics through the controller quorum, following
//!   `NOT_CONTROLLER` redirects to the Raft leader;
//! - [`Producer`] batches records per partition (Kafka's murmur2 partitioner for keys, sticky
//!   partitioning without), sends them to partition leaders with bounded memory, one batch in
//!   flight per partition, and retries until `delivery_timeout`;
//! - [`Consumer`] reads manually assigned partitions from their leaders, one fetch in flight per
//!   partition running ahead of `poll` in the background, decoding Kafka v2 record batches on
//!   the client;
//! - [`GroupConsumer`] is a member of a consumer group (Kafka's `subscribe`, with the
//!   server-side rebalance protocol of KIP-848): a background task heartbeats to the group's
//!   coordinator, `poll` applies the assignment it answers (committing and revoking partitions
//!   taken away, starting new ones at their committed offsets) and reads through a
//!   [`Consumer`]; a [`RebalanceListener`] hears of each change in order;
//! - [`Admin`] also lists, describes and deletes groups, and reads and (for a group without
//!   members) sets their committed offsets, through the coordinator owning each group's shard
//!   of `__consumer_offsets`.
//!
//! ```no_run
//! use std::time::Duration;
//! use bytes::Bytes;
//! use tideline_client::{
//!     Admin, ClientConfig, Cluster, Consumer, ConsumerConfig, Producer, ProducerConfig,
//!     ProducerRecord,
//! };
//!
//! # async fn example() -> Result<(), tideline_client::ClientError> {
//! let cluster = Cluster::new(ClientConfig::new(["127.0.0.1:7001", "127.0.0.1:7002"]))?;
//! Admin::new(&cluster).create_topic("orders", 6, 3, Default::default()).await?;
//!
//! let producer = Producer::new(&cluster, ProducerConfig::default())?;
//! let record = ProducerRecord::new("orders").key("user-42").value("{\"total\": 12}");
//! let delivered = producer.send_and_wait(record).await?;
//! producer.close().await;
//!
//! let mut consumer = Consumer::new(&cluster, ConsumerConfig::default())?;
//! consumer.assign(vec![("orders".to_string(), delivered.partition)]);
//! consumer.seek("orders", delivered.partition, delivered.offset)?;
//! for record in consumer.poll(Duration::from_secs(1)).await? {
//!     println!("{}-{}@{}: {:?}", record.topic, record.partition, record.offset, record.value);
//! }
//! # let _ = Bytes::new();
//! # Ok(())
//! # }
//! ```
//!
//! A group member, printing its assignment changes:
//!
//! ```no_run
//! use std::time::Duration;
//! use tideline_client::{ClientConfig, Cluster, GroupConsumer, GroupConsumerConfig, RebalanceEvent};
//!
//! # async fn example() -> Result<(), tideline_client::ClientError> {
//! let cluster = Cluster::new(ClientConfig::new(["127.0.0.1:7001"]))?;
//! let mut consumer = GroupConsumer::new(&cluster, GroupConsumerConfig::new("billing"))?;
//! consumer.set_rebalance_listener(|event: RebalanceEvent| println!("{event:?}"));
//! consumer.subscribe(["orders"])?;
//! for _ in 0..10 {
//!     for record in consumer.poll(Duration::from_secs(1)).await? {
//!         println!("{}-{}@{}", record.topic, record.partition, record.offset);
//!     }
//! }
//! consumer.close().await?; // commits (auto-commit is on by default) and leaves
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod accumulator;
mod admin;
mod cluster;
mod config;
mod consumer;
mod consumer_config;
mod data;
mod error;
mod fetch;
mod group_consumer;
mod group_consumer_config;
mod grpc_call;
mod metadata;
pub mod partitioner;
mod producer;
mod producer_config;
pub mod reassign;
mod rebalance;
mod record;
mod sender;

pub use admin::Admin;
pub use cluster::Cluster;
pub use config::ClientConfig;
pub use consumer::Consumer;
pub use consumer_config::{AutoOffsetReset, ConsumerConfig};
pub use error::ClientError;
pub use group_consumer::GroupConsumer;
pub use group_consumer_config::GroupConsumerConfig;
pub use metadata::Metadata;
pub use producer::{DeliveryFuture, Producer};
pub use producer_config::{Acks, ProducerConfig};
pub use rebalance::{RebalanceEvent, RebalanceListener};
pub use record::{ConsumerRecord, ProducerRecord, RecordMetadata};

pub use tideline_common::ErrorCode;
pub use tideline_log::Compression;
pub use tideline_proto::v1::{
    BrokerEndpoint, BrokerMetadata, CommittedOffset, ControllerMember, CoordinatorEndpoint,
    CoordinatorMetadata, DescribeGroupResponse, GetControllerStatusResponse, GroupListing,
    GroupMember, PartitionLag, PartitionMetadata, ShardAssignment, TopicMetadata,
};
