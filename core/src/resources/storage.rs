//! `StorageSubscription`: storage a customer rents, kept as two verified
//! copies on two hypervisors in two zones (R24–R27).

// kube-derive repeats `type_ = ...` once per printer column, which clippy reads as
// a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::HOSTNAME_PATTERN;
use crate::conditions::Condition;
use crate::ids::HypervisorName;

/// Finalizer the controller puts on every subscription whose replicas it
/// may have created, so the object outlives its volumes until they are
/// wiped.
pub const STORAGE_FINALIZER: &str = "stratus.dev/storage-teardown";

/// Copies a subscription keeps (R24): a primary and a secondary, each in
/// its own zone.
pub const REPLICAS: usize = 2;

/// The largest subscription one order may ask for, in GiB (64 TiB).
pub const MAX_STORAGE_GIB: u64 = 65_536;

/// Who holds the key to the data (R25); chosen at order time, never changed.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StorageEncryption {
    /// Backup space: the customer encrypts before uploading; stratus
    /// stores opaque bytes and never sees a key.
    #[default]
    Client,
    /// An attachable disk: the agent formats the primary copy as LUKS with
    /// the key the customer gives, which stratus never keeps; it is
    /// unlocked on the hypervisor only while a running guest uses it.
    Luks,
}

/// What a `luks` copy keeps back from its size for the LUKS header, so the
/// formatted file never outgrows the copy (the guest sees the rest).
pub const LUKS_RESERVED_BYTES: u64 = 4 << 20;

impl StorageEncryption {
    /// The name the REST API uses.
    pub fn api_name(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Luks => "luks",
        }
    }

    /// The kind a REST order names.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "client" => Some(Self::Client),
            "luks" => Some(Self::Luks),
            _ => None,
        }
    }

    /// The least capacity a copy of `size_gib` offers its content.
    pub fn usable_bytes(self, size_gib: u64) -> u64 {
        let size = size_gib.saturating_mul(1 << 30);
        match self {
            Self::Client => size,
            Self::Luks => size.saturating_sub(LUKS_RESERVED_BYTES),
        }
    }
}

fn is_zero(count: &u32) -> bool {
    *count == 0
}

/// Storage a customer rents.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "stratus.dev",
    version = "v1alpha1",
    kind = "StorageSubscription",
    namespaced,
    status = "StorageSubscriptionStatus",
    shortname = "st",
    category = "stratus",
    derive = "PartialEq",
    doc = "Storage a customer rents, kept by the stratus controller as two verified copies in two zones.",
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.phase",
        description = "Lifecycle phase"
    ),
    printcolumn(
        name = "Size",
        type_ = "integer",
        json_path = ".spec.sizeGib",
        description = "Size in GiB"
    ),
    printcolumn(
        name = "Zones",
        type_ = "string",
        json_path = ".status.zones",
        description = "Zones of the primary and the secondary copy"
    ),
    printcolumn(
        name = "Attached",
        type_ = "string",
        json_path = ".spec.attachedTo",
        description = "Server the primary copy is a disk of"
    ),
    printcolumn(
        name = "InSync",
        type_ = "boolean",
        json_path = ".status.replicasInSync",
        description = "Whether both copies hold the same verified bytes"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct StorageSubscriptionSpec {
    /// The customer's name for it (a DNS label).
    #[schemars(length(min = 1, max = 63), regex(pattern = HOSTNAME_PATTERN))]
    pub name: String,
    /// Size in GiB: the most the content may hold (R27).
    #[schemars(range(min = 1, max = 65536))]
    pub size_gib: u64,
    /// Zone of the primary copy; any zone when absent. The secondary is
    /// always in another zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Who holds the key (R25).
    #[serde(default)]
    pub encryption: StorageEncryption,
    /// The content last written whole (R27): set by the control plane when
    /// an upload completed on the primary copy, never by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<StorageContent>,
    /// Set with `content` by a restore: the verified version of the
    /// secondary the new content is rebuilt from on the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<u64>,
    /// Verifications operators have asked for; the controller reads both
    /// copies back once per increment, besides its schedule.
    #[serde(default)]
    pub verify_requests: u32,
    /// Times the customer gave the key of a `luks` subscription (the key
    /// itself goes to the hypervisor only): the controller looks at its
    /// primary copy again, whose key is now loaded.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub keys_given: u32,
    /// The server (of the same account, on the primary copy's hypervisor)
    /// the primary copy is a disk of; none: detached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached_to: Option<String>,
    /// Set when the primary copy was last a server's disk, until its
    /// content is settled into a new version: the guest may have written
    /// to it, so its recorded checksum no longer describes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_by_guest: Option<String>,
    /// How the account's standing holds it (R1, R5, R8), written by the
    /// controller: read-only, and detached from its server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspension: Option<crate::standing::Suspension>,
    /// Terminated (R3, R6), written by the controller: held like a
    /// suspension until `wipeAt`, when both copies are wiped and it goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination: Option<super::ServerTermination>,
    /// Set when it is a snapshot of a server's system disk (R3, R18): its
    /// content is a copy of that disk made by the server's hypervisor,
    /// never uploaded, never attached; its primary copy is on that
    /// hypervisor, so a restore never moves the disk over the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_of: Option<SnapshotOf>,
}

impl StorageSubscriptionSpec {
    /// A snapshot named `name` of a server's `size_gib` disk, copying what
    /// `of` says: placed, copied and kept as storage is; never uploaded to
    /// or attached.
    pub fn snapshot(name: String, size_gib: u64, of: SnapshotOf) -> Self {
        Self {
            name,
            size_gib,
            zone: None,
            encryption: StorageEncryption::Client,
            content: None,
            restore_from: None,
            verify_requests: 0,
            keys_given: 0,
            attached_to: None,
            written_by_guest: None,
            suspension: None,
            termination: None,
            snapshot_of: Some(of),
        }
    }

    /// Why the account's standing holds it (read-only, detached), if it does.
    pub fn held(&self) -> Option<String> {
        if let Some(t) = &self.termination {
            return Some(format!(
                "terminated ({}): read-only and detached until both copies are wiped at {}",
                t.cause.as_str(),
                t.wipe_at
            ));
        }
        self.suspension.as_ref().map(|s| {
            let reasons: Vec<&str> = s.reasons.iter().map(|r| r.as_str()).collect();
            format!(
                "suspended ({}): read-only and detached until the suspension is lifted",
                reasons.join(", ")
            )
        })
    }
}

/// What a snapshot copies.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotOf {
    /// The server (of the same account) whose system disk it copies.
    #[schemars(length(min = 1, max = 63))]
    pub server: String,
    /// The image the server's system was made from when it was taken.
    #[schemars(length(min = 1, max = 63))]
    pub image: String,
    /// The disk generation whose cloud-init instance the copy carries: a
    /// restore gives the guest that instance again, so cloud-init does not
    /// take the restored system for a new one.
    #[serde(default)]
    pub instance_generation: u32,
    /// The version its content gets: when it was asked for, in Unix
    /// milliseconds (the agent's copy job is named by it, so a retry joins
    /// the copy under way instead of starting another).
    #[schemars(range(min = 1))]
    pub version: u64,
    /// Taken by the daily schedule (a backup), not asked for by its
    /// customer: pruned beyond the server's `backups.keep`, and kept
    /// `backups.keepAfterDestruction` after an R3 destruction.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub backup: bool,
}

/// A content a subscription holds, as its upload measured it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageContent {
    /// Its version: the upload's start in Unix milliseconds, above every
    /// earlier version, so an interrupted upload never blocks the next.
    pub version: u64,
    /// Its length.
    pub bytes: u64,
    /// Its SHA-256, lower-case hex.
    #[schemars(length(equal = 64))]
    pub sha256: String,
    /// When it was written, RFC 3339.
    pub written_at: String,
}

/// Lifecycle phase of a subscription as the customer sees it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
pub enum StoragePhase {
    /// Waiting for two zones with room (the reason says why).
    #[default]
    Pending,
    /// The copies are being created.
    Provisioning,
    /// Both copies exist and agree.
    Ready,
    /// One copy is missing, unreachable or being repaired.
    Degraded,
    /// Held by the account's standing: read-only and detached; both copies
    /// are still kept, verified and repaired.
    Suspended,
    /// Being wiped and deleted.
    Terminating,
    Error,
}

impl StoragePhase {
    /// The lower-case name the REST API uses.
    pub fn api_name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Provisioning => "provisioning",
            Self::Ready => "ready",
            Self::Degraded => "degraded",
            Self::Suspended => "suspended",
            Self::Terminating => "terminating",
            Self::Error => "error",
        }
    }
}

/// One copy of a subscription's data.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageReplica {
    /// Hypervisor holding the copy; recorded before anything is created
    /// there and never changed.
    pub hypervisor: HypervisorName,
    /// The hypervisor's zone.
    pub zone: String,
    /// The volume of its current version in the hypervisor's pool.
    pub volume: String,
    /// The version of the content it holds (0: empty, as created).
    #[serde(default)]
    pub version: u64,
    /// The hypervisor's pool, as its agent reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The volume's file on the hypervisor, as its agent reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// True once the volume exists; a created copy is never silently
    /// created again empty.
    #[serde(default)]
    pub created: bool,
    /// Length of the content of its current version.
    #[serde(default)]
    pub bytes: u64,
    /// SHA-256 (hex) of the content at the last verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// When it was last verified, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<String>,
    /// Earlier verified versions this copy keeps beside its current one
    /// (the secondary keeps `storage.versions` in all), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<KeptVersion>,
    /// Kept versions whose loss was confirmed, the latest last (at most
    /// [`LOST_VERSIONS_REMEMBERED`]): one that shows up again (a storage
    /// file system mounted late) is checked against its SHA-256 and kept
    /// again, never deleted as unknown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost: Vec<KeptVersion>,
    /// Since when, and in how many observations in a row, the copy or its
    /// current version was not seen: a copy is rebuilt only once its loss
    /// is confirmed, never on one empty listing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<Missing>,
}

/// A verified version a copy keeps.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeptVersion {
    /// The version (its upload's start in Unix milliseconds).
    pub version: u64,
    /// Length of its content.
    pub bytes: u64,
    /// SHA-256, lower-case hex.
    pub sha256: String,
    /// RFC 3339.
    pub verified_at: String,
    /// Since when, and how often, the copy's listing did not show it: its
    /// record is dropped only once the loss is confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<Missing>,
    /// Of a lost one that showed up again and could not be read (its
    /// storage flapping): not read again before this time, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recover_after: Option<String>,
}

impl StorageReplica {
    /// Remembers kept versions this copy lost (the latest last, at most
    /// the policy's `versions` or [`LOST_VERSIONS_REMEMBERED`], whichever
    /// is more), so any that shows up again is read, not deleted unread.
    pub fn remember_lost(
        &mut self,
        lost: impl IntoIterator<Item = KeptVersion>,
        versions_kept: u32,
    ) {
        for version in lost {
            self.lost.retain(|l| l.version != version.version);
            self.lost.push(KeptVersion {
                recover_after: None,
                ..version
            });
        }
        let cap =
            LOST_VERSIONS_REMEMBERED.max(usize::try_from(versions_kept).unwrap_or(usize::MAX));
        let excess = self.lost.len().saturating_sub(cap);
        self.lost.drain(..excess);
    }
}

/// Work on a subscription's copies under way.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Busy {
    /// What, as customers read it ("verifying both copies").
    pub what: String,
    /// Since when, RFC 3339.
    pub since: String,
}

/// How many lost kept versions a copy remembers at least (more when the
/// policy keeps more), to take back any that shows up again.
pub const LOST_VERSIONS_REMEMBERED: usize = 16;

/// A scheduled copy of a server's disk that was not made.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SkippedSnapshot {
    /// When, RFC 3339.
    pub at: String,
    /// Why, as customers read it (the copy needed the guest paused longer
    /// than its hypervisor allows).
    pub reason: String,
}

/// Something stratus holds that its agent's listing did not show.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Missing {
    /// The first observation that did not show it, RFC 3339.
    pub since: String,
    /// Observations in a row that did not show it.
    pub seen: u32,
}

/// What the controller knows and did about a subscription.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSubscriptionStatus {
    #[serde(default)]
    pub phase: StoragePhase,
    /// Human-readable explanation of the phase (always set in `Pending`
    /// once scheduling failed, and in `Error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The copies, the primary first; empty until both are placed (a
    /// single copy is never placed alone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<StorageReplica>,
    /// The zones of the copies, `a,b` (for the printer column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zones: Option<String>,
    /// Whether both copies exist and hold the same verified bytes.
    #[serde(default)]
    pub replicas_in_sync: bool,
    /// A `luks` primary whose key is loaded on its hypervisor, as its agent
    /// reports: its server may plug it in.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub key_loaded: bool,
    /// Set when both copies of the current content stopped matching its
    /// checksum: nothing can repair it; a restore of a kept version or a
    /// new content clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unrecoverable: Option<String>,
    /// What the last repair found and did, until a new content is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_repair: Option<String>,
    /// Verification requests carried out.
    #[serde(default)]
    pub verifications_done: u32,
    /// Work on both copies under way (a verification, a repair, a rebuild,
    /// a restore): an attach waits for it to end, so no guest writes a copy
    /// while it is judged or rewritten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy: Option<Busy>,
    /// Copies found not to match their checksum and repaired from the
    /// other, over the subscription's life.
    #[serde(default)]
    pub repairs: u32,
    /// RFC 3339: when the primary, a disk of a server, was last copied to
    /// the secondary (crash-consistent: as of one moment, by a backup job
    /// while the guest ran, or with the guest paused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_snapshot_at: Option<String>,
    /// The last scheduled copy of the primary (a disk of a server) that was
    /// skipped, and why; the next one is due a replication interval later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_skipped: Option<SkippedSnapshot>,
    /// Of a snapshot of a server: why its disk could not be copied (the
    /// server went first, or the copy would have paused its guest longer
    /// than its hypervisor allows). Nothing more is tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_failed: Option<String>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Detailed conditions (Scheduled, Provisioned, ReplicasInSync).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl StorageSubscriptionStatus {
    /// The zones of `replicas` as the printer column shows them.
    pub fn zones_of(replicas: &[StorageReplica]) -> Option<String> {
        (!replicas.is_empty()).then(|| {
            replicas
                .iter()
                .map(|r| r.zone.as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
    }
}
