//! [`Admin`]: topic administration and cluster inspection through the controller quorum, and
//! consumer group administration through the group coordinators.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tideline_proto::v1 as pb;
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::error::ClientError;
use crate::metadata::Metadata;

/// Pause between attempts of a group request while the group's shard moves between
/// coordinators or loads.
const GROUP_RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// Topic administration, cluster inspection and consumer group administration. Topic writes go
/// to the controller leader (found through `NOT_CONTROLLER` redirects, waiting out elections up
/// to `request_timeout`); reads are answered by any controller. Group requests go to the
/// group's coordinator, found in the metadata and followed when the group's shard moves.
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

    /// Starts moving each partition in `moves` (topic, partition, target replicas with the
    /// preferred leader first) to its target: the new replicas copy the log, at most
    /// `throttle_bytes_per_sec` per adding broker when not 0, and once all are in the ISR the
    /// replica set becomes the target and the old replicas leave. All or none: one invalid
    /// target refuses the request. Submitting a move already in progress again only updates
    /// its throttle. Progress is in the metadata (`target_replicas`, `adding_replicas`,
    /// `removing_replicas` of each partition).
    ///
    /// # Errors
    /// [`ClientError::Server`] with `INVALID_REPLICA_ASSIGNMENT` (wrong count, unknown or
    /// repeated broker), `REASSIGNMENT_IN_PROGRESS` (moving to another target),
    /// `UNKNOWN_TOPIC_OR_PARTITION`; [`ClientError::TimedOut`].
    pub async fn reassign_partitions(
        &self,
        moves: &[(String, i32, Vec<i32>)],
        throttle_bytes_per_sec: u64,
    ) -> Result<pb::AlterPartitionReassignmentsResponse, ClientError> {
        let request = pb::AlterPartitionReassignmentsRequest {
            reassignments: moves
                .iter()
                .map(|(topic, partition, replicas)| pb::PartitionReassignment {
                    topic: topic.clone(),
                    partition: *partition,
                    replicas: replicas.clone(),
                })
                .collect(),
            cancel: false,
            throttle_bytes_per_sec,
        };
        self.alter_reassignments(request).await
    }

    /// Cancels the moves of `partitions` (every move when empty): each goes back to its
    /// replicas from before. Partitions that do not move are left alone.
    ///
    /// # Errors
    /// [`ClientError::Server`] with `INVALID_REPLICA_ASSIGNMENT` when no original replica is in
    /// sync to take the partition back, `UNKNOWN_TOPIC_OR_PARTITION`; [`ClientError::TimedOut`].
    pub async fn cancel_reassignments(
        &self,
        partitions: &[(String, i32)],
    ) -> Result<pb::AlterPartitionReassignmentsResponse, ClientError> {
        let request = pb::AlterPartitionReassignmentsRequest {
            reassignments: partitions
                .iter()
                .map(|(topic, partition)| pb::PartitionReassignment {
                    topic: topic.clone(),
                    partition: *partition,
                    replicas: Vec::new(),
                })
                .collect(),
            cancel: true,
            throttle_bytes_per_sec: 0,
        };
        self.alter_reassignments(request).await
    }

    async fn alter_reassignments(
        &self,
        request: pb::AlterPartitionReassignmentsRequest,
    ) -> Result<pb::AlterPartitionReassignmentsResponse, ClientError> {
        let response = self
            .cluster
            .call_controller("reassign partitions", move |mut client| {
                let request = request.clone();
                async move { client.alter_partition_reassignments(request).await }
            })
            .await?;
        self.cluster.invalidate_metadata();
        Ok(response)
    }

    /// Adds controller `node_id`, running at `address` (HOST:PORT) and started to join, to the
    /// quorum: as a learner until it caught up with the Raft log, then as a voter. Returns the
    /// voters after the change. Adding a voter again at the same address changes nothing.
    ///
    /// # Errors
    /// [`ClientError::Server`] with `INVALID_REQUEST` (bad id or address, no controller of that
    /// id answering there, the id or the address in use by another member);
    /// [`ClientError::TimedOut`] when it is still catching up as a learner once the request
    /// timeout passes (it stays a learner: call again to go on waiting).
    pub async fn add_controller(
        &self,
        node_id: i32,
        address: &str,
    ) -> Result<Vec<pb::ControllerMember>, ClientError> {
        let request = pb::AddControllerRequest { node_id, address: address.to_string() };
        let response = self
            .cluster
            .call_controller(&format!("add controller {node_id}"), move |mut client| {
                let request = request.clone();
                async move { client.add_controller(request).await }
            })
            .await?;
        Ok(response.members)
    }

    /// Removes controller `node_id` from the quorum (a voter or a learner). Returns the voters
    /// after the change. Stop the removed node afterwards.
    ///
    /// # Errors
    /// [`ClientError::Server`] with `INVALID_REQUEST` when it is not a member or the only
    /// voter; [`ClientError::TimedOut`].
    pub async fn remove_controller(
        &self,
        node_id: i32,
    ) -> Result<Vec<pb::ControllerMember>, ClientError> {
        let request = pb::RemoveControllerRequest { node_id };
        let response = self
            .cluster
            .call_controller(
                &format!("remove controller {node_id}"),
                move |mut client| async move { client.remove_controller(request).await },
            )
            .await?;
        Ok(response.members)
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

impl Admin {
    /// Every consumer group: each live coordinator is asked for the groups of its shards, and
    /// the answers merged, sorted by group id (a group whose shard is moving between two
    /// coordinators is listed once).
    ///
    /// # Errors
    /// The first coordinator that fails to answer, or the metadata refresh's error.
    pub async fn list_groups(&self) -> Result<Vec<pb::GroupListing>, ClientError> {
        let metadata = self.cluster.refresh_metadata().await?;
        let mut coordinators: Vec<(String, String)> = metadata
            .coordinators()
            .filter_map(|c| {
                let id = c.endpoint.as_ref()?.coordinator_id.clone();
                let address = metadata.coordinator_address(&id)?;
                Some((id, address))
            })
            .collect();
        coordinators.sort();
        let mut groups = BTreeMap::new();
        let limit = self.cluster.request_timeout();
        for (id, address) in coordinators {
            let operation = format!("list groups of coordinator {id}");
            let mut client = self.cluster.coordinator_client(&address)?;
            let response =
                match tokio::time::timeout(limit, client.list_groups(pb::ListGroupsRequest {}))
                    .await
                {
                    Ok(Ok(response)) => response.into_inner(),
                    Ok(Err(status)) => {
                        return Err(ClientError::from_status(operation, &address, &status));
                    }
                    Err(_) => return Err(ClientError::no_answer(operation, &address, limit)),
                };
            for group in response.groups {
                groups.entry(group.group_id.clone()).or_insert(group);
            }
        }
        Ok(groups.into_values().collect())
    }

    /// A group's state, members with their assignments, and per partition the committed
    /// offset, the end offset, the lag and the owner.
    ///
    /// # Errors
    /// [`ClientError::Server`] with `GROUP_ID_NOT_FOUND`; [`ClientError::TimedOut`] when no
    /// coordinator of the group answers.
    pub async fn describe_group(
        &self,
        group: &str,
    ) -> Result<pb::DescribeGroupResponse, ClientError> {
        let request = pb::DescribeGroupRequest { group_id: group.to_string() };
        self.call_group(&format!("describe group {group}"), group, move |mut client| {
            let request = request.clone();
            async move { client.describe_group(request).await }
        })
        .await
    }

    /// Deletes a group without members, and its committed offsets.
    ///
    /// # Errors
    /// [`ClientError::Server`] with `NON_EMPTY_GROUP` while it has members,
    /// `GROUP_ID_NOT_FOUND`; [`ClientError::TimedOut`].
    pub async fn delete_group(&self, group: &str) -> Result<(), ClientError> {
        let request = pb::DeleteGroupRequest { group_id: group.to_string() };
        self.call_group(&format!("delete group {group}"), group, move |mut client| {
            let request = request.clone();
            async move { client.delete_group(request).await }
        })
        .await?;
        Ok(())
    }

    /// Every offset the group has committed, sorted by topic and partition.
    ///
    /// # Errors
    /// [`ClientError::TimedOut`] when no coordinator of the group answers.
    pub async fn fetch_offsets(
        &self,
        group: &str,
    ) -> Result<Vec<pb::CommittedOffset>, ClientError> {
        let request = pb::FetchOffsetsRequest { group_id: group.to_string(), partitions: vec![] };
        let response = self
            .call_group(&format!("fetch offsets of group {group}"), group, move |mut client| {
                let request = request.clone();
                async move { client.fetch_offsets(request).await }
            })
            .await?;
        let mut offsets = response.offsets;
        offsets.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(offsets)
    }

    /// Sets the group's committed offsets (the next offset to consume per topic and
    /// partition) as an admin, e.g. to reset them. Only a group without members takes it.
    ///
    /// # Errors
    /// [`ClientError::Server`] with `NON_EMPTY_GROUP` while the group has members;
    /// [`ClientError::TimedOut`].
    pub async fn commit_offsets_admin(
        &self,
        group: &str,
        offsets: &BTreeMap<(String, i32), i64>,
    ) -> Result<(), ClientError> {
        let request = commit_request(group, String::new(), -1, offsets);
        self.call_group(&format!("commit offsets of group {group}"), group, move |mut client| {
            let request = request.clone();
            async move { client.commit_offsets(request).await }
        })
        .await?;
        Ok(())
    }

    async fn call_group<T, F, Fut>(
        &self,
        operation: &str,
        group: &str,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(
            pb::coordinator_service_client::CoordinatorServiceClient<crate::grpc_call::Traced>,
        ) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = Instant::now() + self.cluster.request_timeout();
        self.cluster.call_coordinator(operation, group, deadline, GROUP_RETRY_BACKOFF, call).await
    }
}

/// A `CommitOffsets` request for `offsets` (next offset to read, by topic and partition), by a
/// member, or by an admin with an empty `member_id`.
pub(crate) fn commit_request(
    group: &str,
    member_id: String,
    member_epoch: i32,
    offsets: &BTreeMap<(String, i32), i64>,
) -> pb::CommitOffsetsRequest {
    pb::CommitOffsetsRequest {
        group_id: group.to_string(),
        member_id,
        member_epoch,
        offsets: offsets
            .iter()
            .map(|((topic, partition), &offset)| pb::OffsetCommit {
                topic: topic.clone(),
                partition: *partition,
                offset,
                leader_epoch: -1,
                metadata: String::new(),
            })
            .collect(),
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
