//! What is placed where, shared by the reconcilers that place things on
//! hypervisors (servers, storage copies): one lock, so no two placements
//! ever count the same free room, and one account of each pool.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use stratus_core::ids::HypervisorName;
use stratus_core::resources::{ServerResources, StorageSubscription, VirtualServer};
use stratus_core::scheduling::{self, Placed};
use stratus_store::Resources;

use crate::error::ControllerError;
use crate::runtime::{ObjectKey, Requeue};

/// How long the snapshot is trusted before it is listed again. Placements
/// and releases made here update it at once; anything else (an object
/// removed by hand) waits for the next listing.
const REFRESH: Duration = Duration::from_secs(5);

/// Listing every object for every placement is the cost that dominates a
/// burst of orders, so placements are kept here between listings.
#[derive(Default)]
pub struct Placements {
    listed_at: Option<Instant>,
    servers: HashMap<ObjectKey, (HypervisorName, ServerResources)>,
    /// Storage subscriptions: the hypervisors of their copies and their size.
    storage: HashMap<ObjectKey, (Vec<HypervisorName>, u64)>,
    /// Servers that could not be placed, woken when room is freed.
    pub waiting_servers: HashSet<ObjectKey>,
    /// Subscriptions that could not be placed, woken when room is freed.
    pub waiting_storage: HashSet<ObjectKey>,
}

/// What the placing reconcilers share: the placements, under the one lock
/// every placement decision is taken under, and the queues of the objects
/// that wait for room.
#[derive(Default)]
pub struct Scheduling {
    pub placements: tokio::sync::Mutex<Placements>,
    servers: OnceLock<Requeue<VirtualServer>>,
    storage: OnceLock<Requeue<StorageSubscription>>,
}

impl Scheduling {
    pub fn shared() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The queues (known only once the reconcilers are registered).
    pub fn wakes_through(
        &self,
        servers: Requeue<VirtualServer>,
        storage: Requeue<StorageSubscription>,
    ) {
        let _ = self.servers.set(servers);
        let _ = self.storage.set(storage);
    }

    /// Queues again what waits for room, now that some was freed.
    pub fn wake(&self, waiting: Waiting) {
        if let Some(requeue) = self.servers.get()
            && !waiting.servers.is_empty()
        {
            let woken = requeue.keys(waiting.servers);
            tracing::debug!(woken, "servers waiting for room queued again");
        }
        if let Some(requeue) = self.storage.get()
            && !waiting.storage.is_empty()
        {
            let woken = requeue.keys(waiting.storage);
            tracing::debug!(woken, "storage waiting for room queued again");
        }
    }
}

/// Which object a placement is computed for: its own room is not counted.
#[derive(Debug, Clone, Copy)]
pub enum Placing<'a> {
    Server(&'a ObjectKey),
    Storage(&'a ObjectKey),
}

impl Placements {
    /// Lists servers and subscriptions again when the snapshot is stale.
    pub async fn refresh(
        &mut self,
        servers: &Resources<VirtualServer>,
        storage: &Resources<StorageSubscription>,
    ) -> Result<(), ControllerError> {
        if self.listed_at.is_some_and(|at| at.elapsed() < REFRESH) {
            return Ok(());
        }
        self.servers = servers
            .list(None)
            .await?
            .items
            .into_iter()
            .filter_map(|s| {
                let hypervisor = s.status.as_ref()?.hypervisor.clone()?;
                Some((ObjectKey::of(&s), (hypervisor, s.held_resources())))
            })
            .collect();
        self.storage = storage
            .list(None)
            .await?
            .items
            .into_iter()
            .filter_map(|s| {
                let replicas = &s.status.as_ref()?.replicas;
                (!replicas.is_empty()).then(|| {
                    let hypervisors = replicas.iter().map(|r| r.hypervisor.clone()).collect();
                    (ObjectKey::of(&s), (hypervisors, s.spec.size_gib))
                })
            })
            .collect();
        self.listed_at = Some(Instant::now());
        Ok(())
    }

    /// What is placed on each hypervisor, leaving out what is being placed.
    pub fn load(&self, placing: Placing<'_>) -> HashMap<HypervisorName, Placed> {
        let mut placed = scheduling::placed_load(
            self.servers
                .iter()
                .filter(|(key, _)| !matches!(placing, Placing::Server(k) if k == *key))
                .map(|(_, (hypervisor, resources))| (hypervisor, *resources)),
        );
        for (key, (hypervisors, size_gib)) in &self.storage {
            if matches!(placing, Placing::Storage(k) if k == key) {
                continue;
            }
            for hypervisor in hypervisors {
                placed.entry(hypervisor.clone()).or_default().load.disk_gib += size_gib;
            }
        }
        placed
    }

    pub fn place_server(
        &mut self,
        key: ObjectKey,
        hypervisor: HypervisorName,
        resources: ServerResources,
    ) {
        self.waiting_servers.remove(&key);
        self.servers.insert(key, (hypervisor, resources));
    }

    pub fn place_storage(&mut self, key: ObjectKey, hypervisors: Vec<HypervisorName>, size: u64) {
        self.waiting_storage.remove(&key);
        self.storage.insert(key, (hypervisors, size));
    }

    /// Forgets a server that is gone; answers everything waiting for room.
    pub fn remove_server(&mut self, key: &ObjectKey) -> Waiting {
        self.servers.remove(key);
        self.waiting_servers.remove(key);
        self.waiting()
    }

    /// Forgets a subscription that is gone; answers everything waiting for room.
    pub fn remove_storage(&mut self, key: &ObjectKey) -> Waiting {
        self.storage.remove(key);
        self.waiting_storage.remove(key);
        self.waiting()
    }

    fn waiting(&self) -> Waiting {
        Waiting {
            servers: self.waiting_servers.iter().cloned().collect(),
            storage: self.waiting_storage.iter().cloned().collect(),
        }
    }
}

/// Objects waiting for room, to be queued again when some is freed.
#[derive(Debug, Default)]
pub struct Waiting {
    pub servers: Vec<ObjectKey>,
    pub storage: Vec<ObjectKey>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new(Some("acc-1"), name)
    }

    fn hv(name: &str) -> HypervisorName {
        HypervisorName::parse(name).unwrap()
    }

    #[test]
    fn servers_and_storage_share_one_account_of_each_pool() {
        let mut placements = Placements::default();
        let small = ServerResources {
            vcpus: 1,
            memory_mib: 1024,
            disk_gib: 25,
        };
        placements.place_server(key("web"), hv("a1"), small);
        placements.place_storage(key("backup"), vec![hv("a1"), hv("b1")], 100);
        let load = placements.load(Placing::Server(&key("other")));
        assert_eq!(load[&hv("a1")].load.disk_gib, 125);
        assert_eq!(load[&hv("a1")].servers, 1);
        assert_eq!(load[&hv("b1")].load.disk_gib, 100);
        // What is being placed does not count against itself, and a
        // server and a subscription of the same name are told apart.
        let load = placements.load(Placing::Storage(&key("backup")));
        assert_eq!(load[&hv("a1")].load.disk_gib, 25);
        assert!(!load.contains_key(&hv("b1")));
        placements.place_storage(key("web"), vec![hv("b1")], 7);
        let load = placements.load(Placing::Server(&key("web")));
        assert_eq!(load[&hv("b1")].load.disk_gib, 107);
        assert_eq!(load[&hv("a1")].load.disk_gib, 100);

        placements.waiting_servers.insert(key("big"));
        placements.waiting_storage.insert(key("huge"));
        let waiting = placements.remove_storage(&key("backup"));
        assert_eq!(waiting.servers, vec![key("big")]);
        assert_eq!(waiting.storage, vec![key("huge")]);
        assert_eq!(
            placements.load(Placing::Server(&key("x")))[&hv("a1")]
                .load
                .disk_gib,
            25
        );
    }
}
