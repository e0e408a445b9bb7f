//! Test fixtures for every crate's tests: builders for the resources, so a
//! test says what matters about an object and nothing else.
//!
//! Enabled by the `testing` feature (and in this crate's own tests).
//!
//! ```
//! use stratus_core::testing;
//! let server = testing::server("vs-0000000000000001")
//!     .in_account("acc-0000000000000001")
//!     .zone("par1")
//!     .placed_on("hv1")
//!     .build();
//! assert_eq!(server.status.unwrap().hypervisor.unwrap().as_str(), "hv1");
//! ```

use kube::core::ObjectMeta;

use crate::clock::test_time;
use crate::ids::HypervisorName;
use crate::resources::{
    Account, AccountSpec, AccountState, AccountStatus, Hypervisor, HypervisorCapacity,
    HypervisorSpec, HypervisorStatus, PowerState, SERVER_FINALIZER, ServerPhase, ServerResources,
    VirtualServer, VirtualServerSpec, VirtualServerStatus,
};

/// The account tests use when the account does not matter.
pub const ACCOUNT: &str = "acc-0000000000000001";
/// The image every default hypervisor carries and every default server uses.
pub const IMAGE: &str = "debian-12";
pub const IMAGE_VOLUME: &str = "debian-12.qcow2";

/// The resources of the default configuration's `small` plan.
pub fn small() -> ServerResources {
    ServerResources {
        vcpus: 1,
        memory_mib: 1024,
        disk_gib: 25,
    }
}

/// A `small` server spec running `debian-12`, hostname `web1`, any zone.
pub fn server_spec() -> VirtualServerSpec {
    VirtualServerSpec {
        hostname: "web1".into(),
        plan: "small".into(),
        image: IMAGE.into(),
        zone: None,
        resources: small(),
        power: PowerState::Running,
        reboot_requests: 0,
        suspension: None,
        termination: None,
        ssh_keys: Vec::new(),
        user_data: None,
        rebuild: None,
        rescue: None,
        backups: None,
        from_snapshot: None,
    }
}

pub fn server(name: &str) -> ServerBuilder {
    ServerBuilder(VirtualServer {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ACCOUNT.into()),
            ..Default::default()
        },
        spec: server_spec(),
        status: None,
    })
}

/// Builds a [`VirtualServer`]; start with [`server`].
#[derive(Debug, Clone)]
pub struct ServerBuilder(VirtualServer);

impl ServerBuilder {
    pub fn in_account(mut self, account: &str) -> Self {
        self.0.metadata.namespace = Some(account.into());
        self
    }

    pub fn hostname(mut self, hostname: &str) -> Self {
        self.0.spec.hostname = hostname.into();
        self
    }

    pub fn zone(mut self, zone: &str) -> Self {
        self.0.spec.zone = Some(zone.into());
        self
    }

    pub fn resources(mut self, resources: ServerResources) -> Self {
        self.0.spec.resources = resources;
        self
    }

    pub fn power(mut self, power: PowerState) -> Self {
        self.0.spec.power = power;
        self
    }

    pub fn reboot_requests(mut self, count: u32) -> Self {
        self.0.spec.reboot_requests = count;
        self
    }

    pub fn generation(mut self, generation: i64) -> Self {
        self.0.metadata.generation = Some(generation);
        self
    }

    /// Carries the controller's teardown finalizer.
    pub fn finalized(mut self) -> Self {
        self.0.metadata.finalizers = Some(vec![SERVER_FINALIZER.into()]);
        self
    }

    /// Being deleted (deletion timestamp set).
    pub fn deleting(mut self) -> Self {
        self.0.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(test_time()),
        );
        self
    }

    pub fn status(mut self, status: VirtualServerStatus) -> Self {
        self.0.status = Some(status);
        self
    }

    /// Placed on `hypervisor`, provisioning.
    pub fn placed_on(mut self, hypervisor: &str) -> Self {
        let status = self.0.status.get_or_insert_with(Default::default);
        status.hypervisor =
            Some(HypervisorName::parse(hypervisor).expect("hypervisor names in tests are slugs"));
        status.phase = ServerPhase::Provisioning;
        self
    }

    pub fn build(self) -> VirtualServer {
        self.0
    }
}

pub fn hypervisor(name: &str) -> HypervisorBuilder {
    let name_of = HypervisorName::parse(name).expect("hypervisor names in tests are slugs");
    HypervisorBuilder(Hypervisor {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: HypervisorSpec {
            url: format!("http://{name}.invalid"),
            zone: "default".into(),
            credential: name_of.credential_name(),
            cordoned: false,
        },
        status: None,
    })
}

/// Builds a [`Hypervisor`]; start with [`hypervisor`].
#[derive(Debug, Clone)]
pub struct HypervisorBuilder(Hypervisor);

impl HypervisorBuilder {
    pub fn zone(mut self, zone: &str) -> Self {
        self.0.spec.zone = zone.into();
        self
    }

    pub fn url(mut self, url: &str) -> Self {
        self.0.spec.url = url.into();
        self
    }

    pub fn credential(mut self, credential: &str) -> Self {
        self.0.spec.credential = credential.into();
        self
    }

    pub fn cordoned(mut self) -> Self {
        self.0.spec.cordoned = true;
        self
    }

    /// Probed and reachable with this capacity and the default image.
    pub fn reachable(mut self, vcpus: u32, memory_mib: u64, disk_gib: u64) -> Self {
        self.0.status = Some(HypervisorStatus {
            reachable: true,
            last_contact: Some(test_time().to_string()),
            capacity: Some(HypervisorCapacity {
                vcpus,
                memory_mib,
                disk_gib,
                images: vec![IMAGE_VOLUME.into()],
            }),
            ..Default::default()
        });
        self
    }

    pub fn build(self) -> Hypervisor {
        self.0
    }
}

pub fn account(id: &str) -> AccountBuilder {
    AccountBuilder(Account {
        metadata: ObjectMeta {
            name: Some(id.into()),
            ..Default::default()
        },
        spec: AccountSpec {
            display_name: "ACME".into(),
            email: "ops@acme.example".into(),
            quota: None,
        },
        status: None,
    })
}

/// Builds an [`Account`]; start with [`account`].
#[derive(Debug, Clone)]
pub struct AccountBuilder(Account);

impl AccountBuilder {
    pub fn display_name(mut self, name: &str) -> Self {
        self.0.spec.display_name = name.into();
        self
    }

    pub fn state(mut self, state: AccountState) -> Self {
        self.0.status = Some(AccountStatus {
            state,
            ..Default::default()
        });
        self
    }

    pub fn build(self) -> Account {
        self.0
    }
}
