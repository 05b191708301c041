//! [`Admin`]: topic administration and cluster inspection through the controller quorum.

use std::collections::HashMap;

use tideline_proto::v1 as pb;

use crate::cluster::Cluster;
use crate::error::ClientError;
use crate::metadata::Metadata;

/// Topic administration and cluster inspection. Writes go to the controller leader (found
/// through `NOT_CONTROLLER` redirects, waiting out elections up to `request_timeout`); reads
/// are answered by any controller.
#[derive(Debug, Clone)]
pub struct Admin {
    cluster: Cluster,
}

impl Admin {
    /// An admin client on `cluster`.
    pub fn new(cluster: &Cluster) -> Self {
        Admin { cluster: cluster.clone() }
    }

    /// Creates a topic with `partitions` partitions of `replication_factor` replicas each and
    /// the given topic configs (`retention.ms`, ...; unset keys take the defaults).
    ///
    /// # Errors
    /// [`ClientError::Server`] with `TOPIC_ALREADY_EXISTS`, `INVALID_TOPIC`,
    /// `INVALID_PARTITIONS`, `INVALID_REPLICATION_FACTOR` or `INVALID_CONFIG`;
    /// [`ClientError::TimedOut`] when no controller leader answers.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i32,
        configs: HashMap<String, String>,
    ) -> Result<pb::TopicMetadata, ClientError> {
        let request = pb::CreateTopicRequest {
            name: name.to_string(),
            partitions,
            replication_factor,
            configs,
        };
        let response = self
            .cluster
            .call_controller(&format!("create topic {name}"), move |mut client| {
                let request = request.clone();
                async move { client.create_topic(request).await }
            })
            .await?;
        self.cluster.invalidate_metadata();
        topic_of(response.topic, name)
    }

    /// Deletes a topic.
    ///
    /// # Errors
    /// [`ClientError::Server`] with `UNKNOWN_TOPIC_OR_PARTITION`; [`ClientError::TimedOut`].
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let request = pb::DeleteTopicRequest { name: name.to_string() };
        self.cluster
            .call_controller(&format!("delete topic {name}"), move |mut client| {
                let request = request.clone();
                async move { client.delete_topic(request).await }
            })
            .await?;
        self.cluster.invalidate_metadata();
        Ok(())
    }

    /// The names of all topics, sorted.
    ///
    /// # Errors
    /// [`ClientError::TimedOut`] when no controller answers.
    pub async fn list_topics(&self) -> Result<Vec<String>, ClientError> {
        let response = self
            .cluster
            .call_controller("list topics", |mut client| async move {
                client.list_topics(pb::ListTopicsRequest {}).await
            })
            .await?;
        Ok(response.names)
    }

    /// One topic: configs, partitions, replicas, leaders, ISR.
    ///
    /// # Errors
    /// [`ClientError::Server`] with `UNKNOWN_TOPIC_OR_PARTITION`; [`ClientError::TimedOut`].
    pub async fn describe_topic(&self, name: &str) -> Result<pb::TopicMetadata, ClientError> {
        let request = pb::DescribeTopicRequest { name: name.to_string() };
        let response = self
            .cluster
            .call_controller(&format!("describe topic {name}"), move |mut client| {
                let request = request.clone();
                async move { client.describe_topic(request).await }
            })
            .await?;
        topic_of(response.topic, name)
    }

    /// Raises the topic's partition count to `total` (partitions are never removed).
    ///
    /// # Errors
    /// [`ClientError::Server`] with `INVALID_PARTITIONS` when `total` is not larger than the
    /// current count, `UNKNOWN_TOPIC_OR_PARTITION`; [`ClientError::TimedOut`].
    pub async fn create_partitions(
        &self,
        name: &str,
        total: i32,
    ) -> Result<pb::TopicMetadata, ClientError> {
        let request = pb::CreatePartitionsRequest { name: name.to_string(), total };
        let response = self
            .cluster
            .call_controller(&format!("create partitions of {name}"), move |mut client| {
                let request = request.clone();
                async move { client.create_partitions(request).await }
            })
            .await?;
        self.cluster.invalidate_metadata();
        topic_of(response.topic, name)
    }

    /// Sets the configs in `set` and removes (back to the default) those in `remove`.
    ///
    /// # Errors
    /// [`ClientError::Server`] with `INVALID_CONFIG` or `UNKNOWN_TOPIC_OR_PARTITION`;
    /// [`ClientError::TimedOut`].
    pub async fn alter_topic_config(
        &self,
        name: &str,
        set: HashMap<String, String>,
        remove: Vec<String>,
    ) -> Result<pb::TopicMetadata, ClientError> {
        let request = pb::AlterTopicConfigRequest { name: name.to_string(), set, remove };
        let response = self
            .cluster
            .call_controller(&format!("alter config of {name}"), move |mut client| {
                let request = request.clone();
                async move { client.alter_topic_config(request).await }
            })
            .await?;
        topic_of(response.topic, name)
    }

    /// Cluster metadata for `topics` (all topics when empty), fetched now. Does not touch the
    /// shared cache.
    ///
    /// # Errors
    /// [`ClientError::Server`] with `UNKNOWN_TOPIC_OR_PARTITION` when a named topic does not
    /// exist; [`ClientError::TimedOut`].
    pub async fn metadata(&self, topics: &[&str]) -> Result<Metadata, ClientError> {
        let request =
            pb::GetMetadataRequest { topics: topics.iter().map(|t| t.to_string()).collect() };
        let response = self
            .cluster
            .call_controller("get metadata", move |mut client| {
                let request = request.clone();
                async move { client.get_metadata(request).await }
            })
            .await?;
        Ok(Metadata::from_response(response))
    }

    /// The controller quorum as one controller sees it: members, Raft leader, term, commit
    /// index.
    ///
    /// # Errors
    /// [`ClientError::TimedOut`] when no controller answers.
    pub async fn controller_status(&self) -> Result<pb::GetControllerStatusResponse, ClientError> {
        self.cluster
            .call_controller("get controller status", |mut client| async move {
                client.get_controller_status(pb::GetControllerStatusRequest {}).await
            })
            .await
    }
}

/// The topic of a response, which the controller always sets.
fn topic_of(
    topic: Option<pb::TopicMetadata>,
    name: &str,
) -> Result<pb::TopicMetadata, ClientError> {
    topic.ok_or_else(|| ClientError::UnexpectedResponse {
        operation: format!("change of topic {name}"),
        reason: "the controller's answer lacks the topic".into(),
    })
}
