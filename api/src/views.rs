//! What the API accepts and answers, separate from the resources so the
//! public contract does not move when the stored shape does.

use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use stratus_core::agent_api::VolumeKey;
use stratus_core::config::{Image, Plan};
use stratus_core::quota::{Quota, Usage};
use stratus_core::resources::{
    Account, AccountState, Hypervisor, PowerState, ServerPhase, StoragePhase, StorageSubscription,
    VirtualServer,
};
use stratus_core::scheduling::{Load, Placed};
use stratus_core::standing::Suspension;
use stratus_store::ledger::TokenRecord;
use utoipa::ToSchema;

pub(crate) fn millis_to_rfc3339(millis: i64) -> String {
    jiff::Timestamp::from_millisecond(millis)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    /// Customer or company name.
    pub name: String,
    /// Contact e-mail address.
    pub email: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccountView {
    pub id: String,
    pub name: String,
    pub email: String,
    /// `active`, `suspended` or `closed`.
    pub state: String,
    /// Why the whole account is suspended (R1, R2, R8), with since when.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub suspensions: Vec<AccountSuspensionView>,
    pub created_at: Option<String>,
    /// The limits the account orders within (its own, else the provider's
    /// defaults); shown with one account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaBody>,
    /// What the account holds against them; shown with one account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccountSuspensionView {
    /// `non_payment`, `legal` or `kyc`.
    pub reason: String,
    /// RFC 3339.
    pub since: String,
}

/// Limits of an account, keyed as the configuration's `quotas:`; an absent
/// or `null` key is unlimited (or, for an account's own quota, the
/// provider's default).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaBody {
    pub servers: Option<u64>,
    pub vcpus: Option<u64>,
    pub memory_mib: Option<u64>,
    pub disk_gib: Option<u64>,
    pub storage_gib: Option<u64>,
    /// Snapshots of servers' disks, GiB (each counts its server's disk).
    pub snapshot_gib: Option<u64>,
}

impl From<Quota> for QuotaBody {
    fn from(quota: Quota) -> Self {
        Self {
            servers: quota.servers,
            vcpus: quota.vcpus,
            memory_mib: quota.memory_mib,
            disk_gib: quota.disk_gib,
            storage_gib: quota.storage_gib,
            snapshot_gib: quota.snapshot_gib,
        }
    }
}

impl From<QuotaBody> for Quota {
    fn from(body: QuotaBody) -> Self {
        Self {
            servers: body.servers,
            vcpus: body.vcpus,
            memory_mib: body.memory_mib,
            disk_gib: body.disk_gib,
            storage_gib: body.storage_gib,
            snapshot_gib: body.snapshot_gib,
        }
    }
}

/// What an account holds, in the units of its quota.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageView {
    pub servers: u64,
    pub vcpus: u64,
    pub memory_mib: u64,
    pub disk_gib: u64,
    pub storage_gib: u64,
    pub snapshot_gib: u64,
}

impl From<Usage> for UsageView {
    fn from(usage: Usage) -> Self {
        Self {
            servers: usage.servers,
            vcpus: usage.vcpus,
            memory_mib: usage.memory_mib,
            disk_gib: usage.disk_gib,
            storage_gib: usage.storage_gib,
            snapshot_gib: usage.snapshot_gib,
        }
    }
}

impl From<&Account> for AccountView {
    fn from(account: &Account) -> Self {
        let status = account.status.clone().unwrap_or_default();
        let state = match status.state {
            AccountState::Active if !status.suspensions.is_empty() => "suspended",
            AccountState::Active => "active",
            AccountState::Suspended => "suspended",
            AccountState::Closed => "closed",
        };
        Self {
            id: account.name_any(),
            name: account.spec.display_name.clone(),
            email: account.spec.email.clone(),
            state: state.to_owned(),
            suspensions: status
                .suspensions
                .iter()
                .map(|s| AccountSuspensionView {
                    reason: s.reason.as_str().to_owned(),
                    since: s.since.clone(),
                })
                .collect(),
            created_at: account
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string()),
            quota: None,
            usage: None,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// What the token is for, e.g. `ci` or `alice-laptop`.
    pub name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOperatorToken {
    /// What the token is for, e.g. `billing-system` or `alice`.
    pub name: String,
    /// `operator` (everything) or `billing` (posts invoices, reminders and
    /// payments, reads billing events; nothing else).
    pub role: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub account_id: Option<String>,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

impl From<&TokenRecord> for TokenView {
    fn from(record: &TokenRecord) -> Self {
        Self {
            id: record.id.to_string(),
            name: record.name.clone(),
            account_id: record.account_id.as_ref().map(ToString::to_string),
            created_at: millis_to_rfc3339(record.created_at),
            revoked_at: record.revoked_at.map(millis_to_rfc3339),
        }
    }
}

/// A new token: the secret is in this answer and nowhere else.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedToken {
    pub id: String,
    pub name: String,
    pub account_id: Option<String>,
    /// The bearer token. Shown once; only its hash is stored.
    pub token: String,
    /// `customer`, `operator` or `billing`.
    pub role: String,
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PlanView {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
}

impl From<&Plan> for PlanView {
    fn from(plan: &Plan) -> Self {
        Self {
            name: plan.name.clone(),
            vcpus: plan.vcpus,
            memory_mib: plan.memory_mib,
            disk_gib: plan.disk_gib,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImageView {
    pub name: String,
    pub description: String,
    /// The smallest disk a server started from it can have: a plan with a
    /// smaller one is refused for it.
    pub min_disk_gib: u64,
}

impl From<&Image> for ImageView {
    fn from(image: &Image) -> Self {
        Self {
            name: image.name.clone(),
            description: image.description.clone(),
            min_disk_gib: image.size_gib,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderServer {
    /// Hostname of the server (RFC 1123).
    pub name: String,
    /// Plan name, see `GET /v1/plans`.
    pub plan: String,
    /// Image name, see `GET /v1/images`; absent when `snapshot` is given.
    #[serde(default)]
    pub image: Option<String>,
    /// A snapshot of the account (`GET /v1/snapshots`, ready) whose disk
    /// the server starts with instead of an image: placed where its copy
    /// is kept, in that zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Zone (datacenter); any zone when absent.
    #[serde(default)]
    pub zone: Option<String>,
    /// OpenSSH public keys (`ssh-ed25519 AAAA… comment`), at most 16,
    /// installed by cloud-init.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_keys: Vec<String>,
    /// cloud-init user data (`#cloud-config` or a script), at most 16 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ServerView {
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub plan: String,
    pub image: String,
    /// The zone the server runs in once placed (order storage beside it
    /// there); before, the zone it was ordered in, if any.
    pub zone: Option<String>,
    /// `pending`, `provisioning`, `running`, `stopped`, `suspended`, `terminated`, `terminating` or `error`.
    pub status: String,
    /// Why the server is in this status (always set for `error`); for
    /// `suspended`, the first reason: `non_payment`, `abuse`, `legal`, `kyc`
    /// or `maintenance`.
    pub status_reason: Option<String>,
    /// Every reason a suspended server is held for, and how.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspension: Option<SuspensionView>,
    /// Power state the customer asked for: `running` or `stopped`.
    pub desired_power: String,
    pub hypervisor: Option<String>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    pub mac_address: Option<String>,
    /// The public IPv4 address and its routing.
    pub ipv4: Option<AddressView>,
    /// The IPv6 prefix held (`prefix`), the address of it on the NIC and the routing.
    pub ipv6: Option<AddressView>,
    pub created_at: Option<String>,
    /// Rescue mode asked for: the server boots the rescue system (see
    /// `action` while it moves into or out of it).
    pub rescue: bool,
    /// An action under way (a resize, a rebuild, rescue mode), or the last one's result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<ActionView>,
    /// Daily backups: whether they are taken and how many are kept.
    pub backups: BackupsView,
}

/// Daily backups of a server, in the provider's window (`GET /v1/plans`
/// does not change it; the operator's `policy.backups.window`, UTC).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct BackupsView {
    pub enabled: bool,
    /// How many are kept: the oldest beyond them is deleted.
    pub keep: Option<u32>,
}

/// `PUT /v1/servers/{id}/backups`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetBackups {
    pub enabled: bool,
    /// 1 to 30, required when `enabled`.
    #[serde(default)]
    pub keep: Option<u32>,
}

/// An action on a server: under way, or how the last one ended.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActionView {
    /// `resize`, `rebuild`, `restore`, `enable_rescue` or `disable_rescue`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `in_progress`, `waiting_for_capacity` or `done`.
    pub state: String,
    /// The plan it leaves (resize), the image it replaces (rebuild).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The plan it moves to (resize), the image it installs (rebuild), the
    /// snapshot it restores (restore).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// When the controller took it up (in progress), or when it ended.
    pub since: String,
    /// What it is doing or waiting for; how long the guest was down.
    pub message: String,
}

impl ActionView {
    /// The action under way on `server`, else the one that ended last.
    fn of(server: &VirtualServer) -> Option<Self> {
        let views = [
            Self::rescue_of(server),
            Self::rebuild_of(server),
            Self::resize_of(server),
        ];
        let mut views = views.into_iter().flatten();
        let (under_way, ended): (Vec<Self>, Vec<Self>) =
            views.by_ref().partition(|v| v.state != "done");
        under_way
            .into_iter()
            .next()
            .or_else(|| ended.into_iter().max_by(|a, b| a.since.cmp(&b.since)))
    }

    /// A move into or out of rescue mode under way, or the last one's result.
    fn rescue_of(server: &VirtualServer) -> Option<Self> {
        let status = server.status.as_ref();
        let condition = status.and_then(|s| {
            stratus_core::conditions::get(
                &s.conditions,
                stratus_core::conditions::ConditionType::Rescue,
            )
        });
        let wanted = server.spec.rescue.is_some();
        let kind = if wanted {
            "enable_rescue"
        } else {
            "disable_rescue"
        };
        let rescued = status.is_some_and(|s| s.rescue.is_some());
        let progress = status.and_then(|s| s.rescue_change.as_ref());
        let (state, since) = match (progress, condition) {
            (Some(progress), _) => ("in_progress", progress.started_at.clone()),
            // Asked for, not taken up by the controller yet.
            (None, _) if wanted != rescued && (wanted || condition.is_some()) => {
                ("in_progress", String::new())
            }
            (None, Some(c)) => ("done", c.last_transition_time.clone()),
            (None, None) => return None,
        };
        Some(Self {
            kind: kind.into(),
            state: state.into(),
            from: None,
            to: None,
            since,
            message: condition.map(|c| c.message.clone()).unwrap_or_default(),
        })
    }

    /// The rebuild of `server` under way, or the last one's result.
    fn rebuild_of(server: &VirtualServer) -> Option<Self> {
        let status = server.status.as_ref()?;
        let condition = stratus_core::conditions::get(
            &status.conditions,
            stratus_core::conditions::ConditionType::Rebuilt,
        );
        let asked = server.rebuilding();
        // A restore is a rebuild whose disk is a snapshot's copy: named so,
        // its target the snapshot.
        let (state, from, to, since, restore) =
            match (&status.rebuild, condition, &server.spec.rebuild) {
                (_, Some(c), request) if !asked => (
                    "done",
                    None,
                    None,
                    c.last_transition_time.clone(),
                    request.as_ref().is_some_and(|r| r.snapshot.is_some()),
                ),
                (Some(progress), _, _) => (
                    "in_progress",
                    Some(progress.from_image.clone()),
                    Some(progress.snapshot.clone().unwrap_or(progress.image.clone())),
                    progress.started_at.clone(),
                    progress.snapshot.is_some(),
                ),
                // Asked for, not taken up by the controller yet.
                (None, _, Some(request)) if asked => (
                    "in_progress",
                    Some(server.image().to_owned()),
                    Some(request.snapshot.clone().unwrap_or(request.image.clone())),
                    String::new(),
                    request.snapshot.is_some(),
                ),
                _ => return None,
            };
        Some(Self {
            kind: if restore { "restore" } else { "rebuild" }.into(),
            state: state.into(),
            from,
            to,
            since,
            message: condition.map(|c| c.message.clone()).unwrap_or_default(),
        })
    }

    /// The resize of `server` under way, or the last one's result.
    fn resize_of(server: &VirtualServer) -> Option<Self> {
        let status = server.status.as_ref()?;
        let condition = stratus_core::conditions::get(
            &status.conditions,
            stratus_core::conditions::ConditionType::Resized,
        );
        let asked = server.resizing();
        let (state, from, since) = match (&status.resize, condition) {
            (_, Some(c)) if !asked => ("done", None, c.last_transition_time.clone()),
            (Some(progress), Some(c))
                if c.reason == stratus_core::conditions::Reason::InsufficientCapacity.as_str() =>
            {
                (
                    "waiting_for_capacity",
                    Some(progress.from.clone()),
                    progress.started_at.clone(),
                )
            }
            (Some(progress), _) => (
                "in_progress",
                Some(progress.from.clone()),
                progress.started_at.clone(),
            ),
            // Asked for, not taken up by the controller yet.
            (None, _) if asked => (
                "in_progress",
                status.applied.as_ref().map(|a| a.plan.clone()),
                String::new(),
            ),
            _ => return None,
        };
        Some(Self {
            kind: "resize".into(),
            state: state.into(),
            from,
            to: asked.then(|| server.spec.plan.clone()),
            since,
            message: condition.map(|c| c.message.clone()).unwrap_or_default(),
        })
    }
}

/// How a suspended server is held.
#[derive(Debug, Serialize, ToSchema)]
pub struct SuspensionView {
    /// `non_payment`, `abuse`, `legal`, `kyc`, `maintenance`.
    pub reasons: Vec<String>,
    /// `stopped`, `paused` or `network_isolated`.
    pub mode: String,
    /// As customers read it, e.g. "suspended for non-payment".
    pub message: String,
}

impl From<&Suspension> for SuspensionView {
    fn from(suspension: &Suspension) -> Self {
        Self {
            reasons: suspension
                .reasons
                .iter()
                .map(|r| r.as_str().to_owned())
                .collect(),
            mode: suspension.mode.as_str().to_owned(),
            message: suspension.describe(),
        }
    }
}

/// An address of a server.
#[derive(Debug, Serialize, ToSchema)]
pub struct AddressView {
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    pub prefix_length: u8,
    pub gateway: String,
}

impl From<&stratus_core::resources::ServerAddress> for AddressView {
    fn from(a: &stratus_core::resources::ServerAddress) -> Self {
        Self {
            address: a.address.clone(),
            prefix: a.prefix.clone(),
            prefix_length: a.prefix_length,
            gateway: a.gateway.clone(),
        }
    }
}

impl From<&VirtualServer> for ServerView {
    fn from(server: &VirtualServer) -> Self {
        let status = server.status.clone().unwrap_or_default();
        let deleting = server.metadata.deletion_timestamp.is_some();
        let suspension = server.spec.suspension.as_ref().filter(|_| !deleting);
        let phase = match suspension {
            _ if deleting => ServerPhase::Terminating,
            _ if server.spec.termination.is_some() => ServerPhase::Terminated,
            Some(_) => ServerPhase::Suspended,
            None => status.phase,
        };
        let status_reason = match (
            &server.spec.termination,
            suspension.and_then(|s| s.primary()),
        ) {
            (Some(termination), _) if !deleting => Some(termination.cause.as_str().to_owned()),
            (_, Some(reason)) => Some(reason.as_str().to_owned()),
            _ => status.reason,
        };
        // The plan it runs with: the one asked for shows once a resize is done.
        let running_with = status
            .applied
            .clone()
            .unwrap_or_else(|| stratus_core::resources::AppliedPlan::of(&server.spec));
        Self {
            id: server.name_any(),
            account_id: server.namespace().unwrap_or_default(),
            name: server.spec.hostname.clone(),
            plan: running_with.plan.clone(),
            // The image its disk was made from: a rebuild's shows once done.
            image: server.image().to_owned(),
            zone: status.zone.clone().or_else(|| server.spec.zone.clone()),
            status: phase.api_name().to_owned(),
            status_reason,
            suspension: suspension.map(SuspensionView::from),
            desired_power: match server.spec.power {
                PowerState::Running => "running",
                PowerState::Stopped => "stopped",
            }
            .to_owned(),
            hypervisor: status.hypervisor.map(|h| h.to_string()),
            vcpus: running_with.resources.vcpus,
            memory_mib: running_with.resources.memory_mib,
            disk_gib: running_with.resources.disk_gib,
            ipv4: status.ipv4.as_ref().map(AddressView::from),
            ipv6: status.ipv6.as_ref().map(AddressView::from),
            mac_address: status.mac_address,
            created_at: server
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string()),
            rescue: server.spec.rescue.is_some(),
            action: ActionView::of(server),
            backups: BackupsView {
                enabled: server.spec.backups.is_some(),
                keep: server.spec.backups.map(|b| b.keep),
            },
        }
    }
}

/// What a customer can do to a server (`{"type": "stop"}`, `{"type":
/// "resize", "plan": "small"}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerAction {
    // Braces, so an unknown field beside `type` is refused as for the others.
    Stop {},
    Start {},
    Reboot {},
    /// Moves the server to another plan (R23): up or down in vCPUs and
    /// memory; the disk only grows.
    Resize {
        /// The plan to move to.
        plan: String,
    },
    /// Reinstalls the server from an image: its system disk is wiped and
    /// made afresh; it keeps its id, addresses and MAC, and cloud-init
    /// runs again (a new instance id).
    Rebuild {
        /// The image to install, see `GET /v1/images`.
        image: String,
        /// OpenSSH public keys for the new system; the server's own when
        /// absent.
        #[serde(default)]
        ssh_keys: Option<Vec<String>>,
        /// cloud-init user data for the new system; the server's own when
        /// absent.
        #[serde(default)]
        user_data: Option<String>,
    },
    /// Boots the provider's rescue system, the server's own disk attached
    /// as the second disk (`vdb`), untouched.
    EnableRescue {
        /// OpenSSH public keys the rescue system lets in.
        ssh_keys: Vec<String>,
        /// cloud-init user data the rescue system runs at boot.
        #[serde(default)]
        user_data: Option<String>,
    },
    /// Boots the server's own system again.
    DisableRescue {},
    /// Makes the server's disk a snapshot's content: the server is
    /// stopped, its disk replaced by a copy of the snapshot (what it held
    /// is wiped, not kept, unless snapshotted first), and started again.
    Restore {
        /// The snapshot's id (`GET /v1/servers/{id}/snapshots`), ready.
        snapshot: String,
    },
}

impl ServerAction {
    /// Its name, as the request's `type` says it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Stop {} => "stop",
            Self::Start {} => "start",
            Self::Reboot {} => "reboot",
            Self::Resize { .. } => "resize",
            Self::Rebuild { .. } => "rebuild",
            Self::EnableRescue { .. } => "enable_rescue",
            Self::DisableRescue {} => "disable_rescue",
            Self::Restore { .. } => "restore",
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterHypervisor {
    /// Name of the hypervisor (lower-case, 1-63).
    pub name: String,
    /// Base URL of its agent, e.g. `https://10.0.0.5:9090`.
    pub url: String,
    /// Zone (datacenter) it is in.
    pub zone: String,
    /// The agent's bearer token; stored encrypted, never shown again.
    pub token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ResourcesView {
    pub vcpus: u64,
    pub memory_mib: u64,
    pub disk_gib: u64,
}

impl From<Load> for ResourcesView {
    fn from(load: Load) -> Self {
        Self {
            vcpus: load.vcpus,
            memory_mib: load.memory_mib,
            disk_gib: load.disk_gib,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HypervisorView {
    pub name: String,
    pub url: String,
    pub zone: String,
    pub cordoned: bool,
    /// Whether the agent answered the last probe.
    pub reachable: bool,
    pub last_contact: Option<String>,
    /// Why the last probe failed, when it did.
    pub message: Option<String>,
    /// What the agent reports; null until it first answered.
    pub capacity: Option<ResourcesView>,
    pub images: Vec<String>,
    /// Resources of the servers placed here.
    pub placed: ResourcesView,
    pub servers: usize,
    pub created_at: Option<String>,
}

impl HypervisorView {
    pub fn new(hypervisor: &Hypervisor, placed: Placed) -> Self {
        let status = hypervisor.status.clone().unwrap_or_default();
        Self {
            name: hypervisor.name_any(),
            url: hypervisor.spec.url.clone(),
            zone: hypervisor.spec.zone.clone(),
            cordoned: hypervisor.spec.cordoned,
            reachable: status.reachable,
            last_contact: status.last_contact,
            message: status.message,
            capacity: status.capacity.as_ref().map(|c| ResourcesView {
                vcpus: u64::from(c.vcpus),
                memory_mib: c.memory_mib,
                disk_gib: c.disk_gib,
            }),
            images: status.capacity.map(|c| c.images).unwrap_or_default(),
            placed: placed.load.into(),
            servers: placed.servers,
            created_at: hypervisor
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string()),
        }
    }
}

/// An order of storage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderStorage {
    /// The customer's name for it (a DNS label).
    pub name: String,
    /// Size in GiB: the most its content may hold.
    pub size_gib: u64,
    /// Zone of the primary copy; any zone when absent. The second copy is
    /// always in another zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// `client` (the default): you encrypt before uploading; stratus
    /// stores opaque bytes and never sees a key. `luks`: a disk for your
    /// servers, formatted as LUKS with `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<String>,
    /// A server of your account the new storage becomes a disk of: its
    /// primary copy is placed on that server's hypervisor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach_to: Option<String>,
    /// The key a `luks` subscription is formatted with (12 to 512 bytes):
    /// stratus never stores it, so give it again at every attach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub key: Option<VolumeKey>,
}

impl OrderStorage {
    /// The order without its key: what an idempotent retry is compared
    /// by, so not even a hash of the key is kept.
    pub fn without_key(&self) -> Self {
        Self {
            key: None,
            ..self.clone()
        }
    }
}

/// A snapshot asked for.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TakeSnapshot {
    /// Your name for it (a DNS label, 1-63).
    pub name: String,
}

/// A snapshot of a server's disk: copied as of one moment, then kept as
/// two verified copies in two zones, apart from the server.
#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotView {
    /// `st-…`: the id a restore names.
    pub id: String,
    pub name: String,
    /// The server whose disk it copies.
    pub server: String,
    /// The image the server's system was made from when it was taken.
    pub image: String,
    /// `snapshot` (asked for) or `backup` (taken daily, pruned beyond the
    /// server's `keep`).
    pub kind: String,
    /// Its size: the server's disk when it was taken, GiB (what the
    /// `snapshotGib` quota counts).
    pub size_gib: u64,
    /// `pending`, `copying`, `ready` or `failed`.
    pub state: String,
    /// Why it is not ready (always set when `failed`).
    pub reason: Option<String>,
    /// Zones of its two copies, `a,b`, once placed.
    pub zones: Option<String>,
    /// Length and SHA-256 of the disk's bytes, once copied.
    pub content: Option<StoredVersionView>,
    /// Being deleted: both copies are wiped.
    pub deleting: bool,
    /// RFC 3339.
    pub created_at: Option<String>,
}

impl SnapshotView {
    /// The view of `subscription`, a snapshot (none otherwise).
    pub fn of(subscription: &StorageSubscription) -> Option<Self> {
        let of = subscription.spec.snapshot_of.as_ref()?;
        let (state, reason) =
            stratus_core::storage::snapshot_state(&subscription.spec, subscription.status.as_ref());
        Some(Self {
            id: subscription.name_any(),
            name: subscription.spec.name.clone(),
            server: of.server.clone(),
            image: of.image.clone(),
            kind: if of.backup { "backup" } else { "snapshot" }.into(),
            size_gib: subscription.spec.size_gib,
            state: state.api_name().to_owned(),
            reason,
            zones: subscription.status.as_ref().and_then(|s| s.zones.clone()),
            content: subscription
                .spec
                .content
                .as_ref()
                .map(|c| StoredVersionView {
                    version: c.version,
                    bytes: c.bytes,
                    sha256: c.sha256.clone(),
                    at: Some(c.written_at.clone()),
                }),
            deleting: subscription.metadata.deletion_timestamp.is_some(),
            created_at: subscription
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string()),
        })
    }
}

/// A server's snapshots, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotList {
    pub items: Vec<SnapshotView>,
}

/// A storage subscription.
#[derive(Debug, Serialize, ToSchema)]
pub struct StorageView {
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub size_gib: u64,
    pub zone: Option<String>,
    /// `client`: you encrypt before uploading.
    pub encryption: String,
    /// `pending`, `provisioning`, `ready`, `degraded`, `terminating` or
    /// `error`.
    pub status: String,
    /// Why it is in this status (always set for `error` and `degraded`,
    /// and for `pending` once no two zones had room).
    pub status_reason: Option<String>,
    /// The two copies, the primary first.
    pub replicas: Vec<ReplicaView>,
    /// Whether both copies exist and hold the same verified bytes.
    pub replicas_in_sync: bool,
    /// The current content (null until one is written).
    pub content: Option<StoredVersionView>,
    /// Verified versions the secondary copy keeps, newest first: what a
    /// restore can bring back.
    pub versions: Vec<StoredVersionView>,
    /// The server the primary copy is attached to (see the `Attached`
    /// condition for whether it is its disk yet).
    pub attached_to: Option<String>,
    /// Whether the primary copy is a disk of `attached_to` now.
    pub attached: bool,
    pub conditions: Vec<ConditionView>,
    pub created_at: Option<String>,
}

/// A status condition, as in Kubernetes.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConditionView {
    /// e.g. `ReplicasInSync`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Machine-readable CamelCase reason.
    pub reason: String,
    pub message: String,
    /// RFC 3339.
    pub last_transition_time: String,
}

impl From<&stratus_core::conditions::Condition> for ConditionView {
    fn from(condition: &stratus_core::conditions::Condition) -> Self {
        // Both are fieldless enums serialized by their variant names.
        Self {
            type_: format!("{:?}", condition.type_),
            status: format!("{:?}", condition.status),
            reason: condition.reason.clone(),
            message: condition.message.clone(),
            last_transition_time: condition.last_transition_time.clone(),
        }
    }
}

/// A version of a subscription's content.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoredVersionView {
    /// The upload's start in Unix milliseconds.
    pub version: u64,
    pub bytes: u64,
    /// SHA-256, lower-case hex.
    pub sha256: String,
    /// RFC 3339: when it was written, or last verified.
    pub at: Option<String>,
}

/// `{"type": "restore", "version": …}`: the version (one of `versions`,
/// the newest when absent) becomes the content again.
/// `{"type": "attach", "server": …}`: the primary copy becomes a disk of
/// that server (of your account, on the hypervisor holding the copy).
/// `{"type": "detach"}`: it stops being one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageActionBody {
    #[serde(rename = "type")]
    pub kind: StorageActionKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The key of a `luks` subscription, given to every attach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub key: Option<VolumeKey>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StorageActionKind {
    Restore,
    Attach,
    Detach,
}

/// One copy of a subscription's data.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplicaView {
    pub hypervisor: String,
    pub zone: String,
    /// SHA-256 (hex) of the content at the last verification.
    pub checksum: Option<String>,
    /// RFC 3339.
    pub verified_at: Option<String>,
    /// Operators only: the pool, volume and file on the hypervisor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl StorageView {
    /// The subscription as a customer (`operator: false`) or an operator
    /// sees it: only operators see where the copies live on the hosts.
    pub fn of(subscription: &StorageSubscription, operator: bool) -> Self {
        let status = subscription.status.clone().unwrap_or_default();
        let phase = if subscription.metadata.deletion_timestamp.is_some() {
            StoragePhase::Terminating
        } else {
            status.phase
        };
        Self {
            id: subscription.name_any(),
            account_id: subscription.namespace().unwrap_or_default(),
            name: subscription.spec.name.clone(),
            size_gib: subscription.spec.size_gib,
            zone: subscription.spec.zone.clone(),
            encryption: subscription.spec.encryption.api_name().to_owned(),
            status: phase.api_name().to_owned(),
            status_reason: status.reason.clone(),
            replicas: status
                .replicas
                .iter()
                .map(|replica| ReplicaView {
                    hypervisor: replica.hypervisor.to_string(),
                    zone: replica.zone.clone(),
                    checksum: replica.checksum.clone(),
                    verified_at: replica.verified_at.clone(),
                    pool: replica.pool.clone().filter(|_| operator),
                    volume: operator.then(|| replica.volume.clone()),
                    path: replica.path.clone().filter(|_| operator),
                })
                .collect(),
            replicas_in_sync: status.replicas_in_sync,
            attached_to: subscription.spec.attached_to.clone(),
            attached: status.conditions.iter().any(|c| {
                c.type_ == stratus_core::conditions::ConditionType::Attached
                    && c.status == stratus_core::conditions::ConditionStatus::True
            }),
            content: subscription
                .spec
                .content
                .as_ref()
                .map(|c| StoredVersionView {
                    version: c.version,
                    bytes: c.bytes,
                    sha256: c.sha256.clone(),
                    at: Some(c.written_at.clone()),
                }),
            versions: restorable(&status)
                .into_iter()
                .map(|k| StoredVersionView {
                    version: k.version,
                    bytes: k.bytes,
                    sha256: k.sha256,
                    at: Some(k.verified_at),
                })
                .collect(),
            conditions: status.conditions.iter().map(ConditionView::from).collect(),
            created_at: subscription
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string()),
        }
    }
}

/// The verified versions the secondary copy holds (its current one and
/// those it keeps), newest first.
pub fn restorable(
    status: &stratus_core::resources::StorageSubscriptionStatus,
) -> Vec<stratus_core::resources::KeptVersion> {
    let Some(secondary) = status.replicas.get(1) else {
        return Vec::new();
    };
    let mut versions = secondary.kept.clone();
    if secondary.version > 0
        && let Some(sha256) = &secondary.checksum
    {
        versions.push(stratus_core::resources::KeptVersion {
            version: secondary.version,
            bytes: secondary.bytes,
            sha256: sha256.clone(),
            verified_at: secondary.verified_at.clone().unwrap_or_default(),
            missing: None,
            recover_after: None,
        });
    }
    versions.sort_by_key(|k| std::cmp::Reverse(k.version));
    versions
}

/// Sets the PTR of an address a server holds (`hostname: null` removes it).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPtrBody {
    /// The server's IPv4 address, or any address of its IPv6 prefix.
    pub ip: String,
    /// The name the address is to resolve back to (`mail.example.com`);
    /// `null` goes back to the provider's default.
    pub hostname: Option<String>,
}

/// The reverse DNS of one address of a server.
#[derive(Debug, Serialize, ToSchema)]
pub struct PtrView {
    pub ip: String,
    /// What the address resolves back to; `null` when none is served.
    pub hostname: Option<String>,
    /// True when it is the provider's default, not one set for it.
    pub default: bool,
}

/// The reverse DNS of a server's addresses.
#[derive(Debug, Serialize, ToSchema)]
pub struct PtrList {
    pub items: Vec<PtrView>,
}
