//! `tide controllers`: the controller quorum's members, and adding or removing controllers
//! while it keeps serving (a new controller joins as a learner, catches up, then votes).

use serde_json::json;
use tideline_client::Admin;
use tideline_proto::v1 as pb;

use crate::admin::connect;
use crate::output::{self, Output};

/// `tide controllers` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ControllersCommand {
    /// The voting members of the quorum and its leader.
    List,
    /// Add a running controller (started with --join, or with a node id not in its --peers)
    /// to the quorum: it catches up as a learner, then becomes a voter.
    Add {
        /// The new controller's node id.
        #[arg(long)]
        id: i32,
        /// Its gRPC address, HOST:PORT, as the other controllers reach it.
        #[arg(long)]
        address: String,
    },
    /// Remove a controller from the quorum (stop its process afterwards).
    Remove {
        /// The node id to remove.
        #[arg(long)]
        id: i32,
    },
}

/// Runs a `tide controllers` subcommand.
pub async fn controllers(
    bootstrap: &[String],
    out: Output,
    command: ControllersCommand,
) -> anyhow::Result<()> {
    let admin = Admin::new(&connect(bootstrap)?);
    let (members, leader) = match command {
        ControllersCommand::List => {
            let status = admin.controller_status().await?;
            (status.members, status.leader_id)
        }
        ControllersCommand::Add { id, address } => {
            let members = admin.add_controller(id, &address).await?;
            (members, admin.controller_status().await?.leader_id)
        }
        ControllersCommand::Remove { id } => {
            let members = admin.remove_controller(id).await?;
            (members, admin.controller_status().await?.leader_id)
        }
    };
    print_members(&members, leader, out);
    Ok(())
}

fn print_members(members: &[pb::ControllerMember], leader: i32, out: Output) {
    if out == Output::Json {
        return output::json(&json!({
            "leader_id": leader,
            "voters": members.iter().map(|m| json!({"node_id": m.node_id, "address": m.address}))
                .collect::<Vec<_>>(),
        }));
    }
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            let role = if m.node_id == leader { "leader" } else { "voter" };
            vec![m.node_id.to_string(), m.address.clone(), role.to_string()]
        })
        .collect();
    output::table(&["CONTROLLER", "ADDRESS", "ROLE"], &rows);
}
