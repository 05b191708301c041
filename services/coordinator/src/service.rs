//! [`CoordinatorApi`]: the `CoordinatorService` gRPC API over the shards this coordinator owns.
//! Each request finds its group's shard (`NOT_COORDINATOR` when another coordinator owns it,
//! `COORDINATOR_LOAD_IN_PROGRESS` while it replays), changes it under the shard's lock, writes
//! the resulting records with `acks=all`, and answers once they are acknowledged.

use std::collections::BTreeSet;
use std::sync::Arc;

use tideline_common::{ErrorCode, PartitionId, TopicName, status};
use tideline_proto::v1 as pb;
use tideline_proto::v1::coordinator_service_server::CoordinatorService;
use tonic::{Request, Response, Status};

use crate::assignor::{Assignor, TopicPartition};
use crate::config::MAX_ID_BYTES;
use crate::group::Heartbeat;
use crate::node::{Shared, end_offsets, now_ms};
use crate::offsets::CommittedOffset;
use crate::shard::{GroupState, ShardError};

/// The coordinator's gRPC service. Cheap to clone.
#[derive(Clone)]
pub struct CoordinatorApi {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for CoordinatorApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorApi")
            .field("coordinator_id", &self.shared.config.coordinator_id)
            .finish_non_exhaustive()
    }
}

impl CoordinatorApi {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        CoordinatorApi { shared }
    }
}

/// Most topics a member may subscribe to by name.
const MAX_TOPICS: usize = 10_000;
/// Most partitions a heartbeat may report owned, or a commit carry.
const MAX_PARTITIONS: usize = 100_000;

fn invalid(message: impl Into<String>) -> Status {
    status(ErrorCode::InvalidRequest, message)
}

fn shard_status(e: &ShardError) -> Status {
    status(e.code(), e.to_string())
}

fn check_id(what: &str, value: &str, required: bool) -> Result<(), Status> {
    if required && value.is_empty() {
        return Err(invalid(format!("{what} is empty")));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(invalid(format!("{what} is {} bytes, at most {MAX_ID_BYTES}", value.len())));
    }
    Ok(())
}

/// 32 hex digits, new at every call.
fn random_member_id() -> String {
    tideline_common::controllers::incarnation_id().iter().map(|b| format!("{b:02x}")).collect()
}

fn topic_name(name: &str) -> Result<TopicName, Status> {
    TopicName::new(name).map_err(|e| invalid(e.to_string()))
}

fn partitions(list: &[pb::TopicPartition]) -> Result<BTreeSet<TopicPartition>, Status> {
    list.iter()
        .map(|tp| {
            if tp.partition < 0 {
                return Err(invalid(format!(
                    "negative partition {} of {}",
                    tp.partition, tp.topic
                )));
            }
            Ok((topic_name(&tp.topic)?, PartitionId(tp.partition)))
        })
        .collect()
}

fn partitions_pb<'a>(set: impl IntoIterator<Item = &'a TopicPartition>) -> Vec<pb::TopicPartition> {
    set.into_iter()
        .map(|(t, p)| pb::TopicPartition { topic: t.to_string(), partition: p.0 })
        .collect()
}

fn state_name(s: GroupState) -> &'static str {
    match s {
        GroupState::Empty => "Empty",
        GroupState::Reconciling => "Reconciling",
        GroupState::Stable => "Stable",
    }
}

#[tonic::async_trait]
impl CoordinatorService for CoordinatorApi {
    async fn consumer_group_heartbeat(
        &self,
        request: Request<pb::ConsumerGroupHeartbeatRequest>,
    ) -> Result<Response<pb::ConsumerGroupHeartbeatResponse>, Status> {
        let req = request.into_inner();
        check_id("group id", &req.group_id, true)?;
        check_id("member id", &req.member_id, false)?;
        check_id("instance id", req.instance_id.as_deref().unwrap_or(""), false)?;
        check_id("rack", req.rack.as_deref().unwrap_or(""), false)?;
        let assignor = match req.server_assignor.as_str() {
            "" => None,
            name => {
                Some(Assignor::ALL.into_iter().find(|a| a.name() == name).ok_or_else(|| {
                    status(
                        ErrorCode::UnsupportedAssignor,
                        format!("unknown assignor {name:?}: expected \"uniform\" or \"range\""),
                    )
                })?)
            }
        };
        if req.subscribed_topics.as_ref().is_some_and(|l| l.topics.len() > MAX_TOPICS)
            || req.owned_partitions.as_ref().is_some_and(|l| l.partitions.len() > MAX_PARTITIONS)
        {
            return Err(invalid(format!(
                "a heartbeat carries at most {MAX_TOPICS} topics and {MAX_PARTITIONS} partitions"
            )));
        }
        let subscribed_topics = req
            .subscribed_topics
            .map(|l| l.topics.iter().map(|t| topic_name(t)).collect::<Result<BTreeSet<_>, _>>())
            .transpose()?;
        let owned = req.owned_partitions.map(|l| partitions(&l.partitions)).transpose()?;
        if let Some(p) = &req.subscribed_regex
            && p.len() > 4096
        {
            return Err(invalid(format!(
                "subscription pattern is {} bytes, at most 4096",
                p.len()
            )));
        }
        // A join without an id gets a random one (ids are never reused, even by a group
        // created again); members that bring their own keep it, so a retried join is the same
        // member, not a second one.
        let member_id = if req.member_epoch == crate::group::JOIN_EPOCH && req.member_id.is_empty()
        {
            random_member_id()
        } else {
            req.member_id
        };
        let hb = Heartbeat {
            member_id,
            member_epoch: req.member_epoch,
            instance_id: req.instance_id.filter(|s| !s.is_empty()),
            rack: req.rack.filter(|s| !s.is_empty()),
            subscribed_topics,
            subscribed_regex: req.subscribed_regex,
            owned,
        };
        let shard = self.shared.shard_of(&req.group_id)?;
        let (answer, barrier) = {
            let mut state = shard.state.lock().await;
            let (answer, record) = state.heartbeat(&req.group_id, hb, now_ms(), assignor);
            if let Some(g) = state.group(&req.group_id) {
                self.shared.rebalances.observe(g);
            }
            let barrier = match record {
                Some(r) => self.shared.send(&shard, vec![r]).await?,
                // Nothing new, but the answer may rest on writes still in flight.
                None => shard.barrier(),
            };
            (answer, barrier)
        };
        self.shared.settle(&shard, barrier).await?;
        let answer = answer.map_err(|e| shard_status(&e))?;
        Ok(Response::new(pb::ConsumerGroupHeartbeatResponse {
            member_id: answer.member_id,
            member_epoch: answer.member_epoch,
            heartbeat_interval_ms: answer.heartbeat_interval_ms.clamp(0, i64::from(i32::MAX))
                as i32,
            assignment: Some(pb::PartitionList { partitions: partitions_pb(&answer.assignment) }),
        }))
    }

    async fn commit_offsets(
        &self,
        request: Request<pb::CommitOffsetsRequest>,
    ) -> Result<Response<pb::CommitOffsetsResponse>, Status> {
        let req = request.into_inner();
        check_id("group id", &req.group_id, true)?;
        check_id("member id", &req.member_id, false)?;
        if req.offsets.len() > MAX_PARTITIONS {
            return Err(invalid(format!(
                "a commit carries at most {MAX_PARTITIONS} offsets, not {}",
                req.offsets.len()
            )));
        }
        let now = now_ms();
        let mut offsets = Vec::with_capacity(req.offsets.len());
        for o in req.offsets {
            if o.metadata.len() > 4096 {
                return Err(invalid(format!(
                    "commit metadata of {}-{} is {} bytes, at most 4096",
                    o.topic,
                    o.partition,
                    o.metadata.len()
                )));
            }
            offsets.push((
                o.topic,
                o.partition,
                CommittedOffset {
                    offset: o.offset,
                    leader_epoch: o.leader_epoch,
                    commit_time_ms: now,
                    metadata: o.metadata,
                },
            ));
        }
        let member =
            (!req.member_id.is_empty()).then_some((req.member_id.as_str(), req.member_epoch));
        let shard = self.shared.shard_of(&req.group_id)?;
        let barrier = {
            let mut state = shard.state.lock().await;
            if !state.topics_known() {
                return Err(status(
                    ErrorCode::CoordinatorLoadInProgress,
                    "the coordinator does not know the cluster's topics yet; retry shortly",
                ));
            }
            let records =
                state.commit(&req.group_id, member, &offsets).map_err(|e| shard_status(&e))?;
            for (k, v) in &records {
                state.replay(k, v.as_deref()).map_err(|e| invalid(e.to_string()))?;
            }
            self.shared.send(&shard, records).await?
        };
        self.shared.settle(&shard, barrier).await?;
        Ok(Response::new(pb::CommitOffsetsResponse {}))
    }

    async fn fetch_offsets(
        &self,
        request: Request<pb::FetchOffsetsRequest>,
    ) -> Result<Response<pb::FetchOffsetsResponse>, Status> {
        let req = request.into_inner();
        check_id("group id", &req.group_id, true)?;
        let wanted: BTreeSet<(String, i32)> =
            req.partitions.into_iter().map(|tp| (tp.topic, tp.partition)).collect();
        let shard = self.shared.shard_of(&req.group_id)?;
        let (offsets, barrier) = {
            let state = shard.state.lock().await;
            (state.fetch_offsets(&req.group_id), shard.barrier())
        };
        // Only offsets whose commits are durable.
        self.shared.settle(&shard, barrier).await?;
        Ok(Response::new(pb::FetchOffsetsResponse {
            offsets: offsets
                .into_iter()
                .filter(|(k, _)| {
                    wanted.is_empty() || wanted.contains(&(k.topic.clone(), k.partition))
                })
                .map(|(k, v)| pb::CommittedOffset {
                    topic: k.topic,
                    partition: k.partition,
                    offset: v.offset,
                    leader_epoch: v.leader_epoch,
                    metadata: v.metadata,
                    commit_time_ms: v.commit_time_ms,
                })
                .collect(),
        }))
    }

    async fn list_groups(
        &self,
        _request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let mut groups = Vec::new();
        for shard in self.shared.active_shards() {
            for (group_id, state) in shard.state.lock().await.list_groups() {
                groups.push(pb::GroupListing {
                    group_id,
                    state: state_name(state).into(),
                    shard: shard.index,
                });
            }
        }
        groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        Ok(Response::new(pb::ListGroupsResponse { groups }))
    }

    async fn describe_group(
        &self,
        request: Request<pb::DescribeGroupRequest>,
    ) -> Result<Response<pb::DescribeGroupResponse>, Status> {
        let req = request.into_inner();
        check_id("group id", &req.group_id, true)?;
        let shard = self.shared.shard_of(&req.group_id)?;
        let rows = {
            let state = shard.state.lock().await;
            state.describe(&req.group_id, |_, _| None).map_err(|e| shard_status(&e))?.partitions
        };
        let ends =
            end_offsets(&self.shared, rows.iter().map(|r| (r.topic.clone(), r.partition))).await;
        let d = {
            let state = shard.state.lock().await;
            state
                .describe(&req.group_id, |t, p| ends.get(&(t.to_string(), p)).copied())
                .map_err(|e| shard_status(&e))?
        };
        Ok(Response::new(pb::DescribeGroupResponse {
            group_id: d.group,
            state: state_name(d.state).into(),
            group_epoch: d.group_epoch,
            assignor: d.assignor.name().into(),
            members: d
                .members
                .into_iter()
                .map(|m| pb::GroupMember {
                    member_id: m.member_id,
                    instance_id: m.instance_id,
                    member_epoch: m.member_epoch,
                    rack: m.rack,
                    subscribed_topics: m.subscribed_topics,
                    subscribed_regex: m.subscribed_regex,
                    assignment: m
                        .assigned
                        .into_iter()
                        .map(|(topic, partition)| pb::TopicPartition { topic, partition })
                        .collect(),
                })
                .collect(),
            partitions: d
                .partitions
                .into_iter()
                .map(|p| pb::PartitionLag {
                    topic: p.topic,
                    partition: p.partition,
                    committed_offset: p.committed,
                    end_offset: p.end,
                    lag: p.lag,
                    owner: p.owner,
                })
                .collect(),
        }))
    }

    async fn delete_group(
        &self,
        request: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        let req = request.into_inner();
        check_id("group id", &req.group_id, true)?;
        let shard = self.shared.shard_of(&req.group_id)?;
        let barrier = {
            let mut state = shard.state.lock().await;
            let records = state.delete_group(&req.group_id).map_err(|e| shard_status(&e))?;
            self.shared.rebalances.forget(&req.group_id);
            for (k, v) in &records {
                state.replay(k, v.as_deref()).map_err(|e| invalid(e.to_string()))?;
            }
            self.shared.send(&shard, records).await?
        };
        self.shared.settle(&shard, barrier).await?;
        Ok(Response::new(pb::DeleteGroupResponse {}))
    }
}
