//! Choosing a hypervisor for a server: pure arithmetic over what the agents
//! reported and what is already placed.

use std::collections::HashMap;

use crate::conditions::{ConditionType, Reason};
use crate::ids::HypervisorName;
use crate::resources::{
    Hypervisor, HypervisorCapacity, ServerResources, StorageSubscription, VirtualServer,
};

/// One hypervisor as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub name: &'a str,
    pub zone: &'a str,
    pub reachable: bool,
    pub cordoned: bool,
    /// False when the hypervisor must filter guest traffic and cannot, so
    /// it would start nothing placed there (R19).
    pub starts_guests: bool,
    pub capacity: Option<&'a HypervisorCapacity>,
    /// Sum of the resources of the servers already placed there.
    pub placed: Load,
}

impl<'a> Candidate<'a> {
    /// A registered hypervisor, as its last probe described it.
    pub fn of(hypervisor: &'a Hypervisor, placed: Load) -> Self {
        let status = hypervisor.status.as_ref();
        Self {
            name: hypervisor.metadata.name.as_deref().unwrap_or_default(),
            zone: &hypervisor.spec.zone,
            reachable: status.is_some_and(|s| s.reachable),
            cordoned: hypervisor.spec.cordoned,
            starts_guests: status.is_none_or(|s| {
                crate::conditions::get(&s.conditions, ConditionType::AntiSpoofing)
                    .is_none_or(|c| c.reason != Reason::FiltersUnavailable.as_str())
            }),
            capacity: status.and_then(|s| s.capacity.as_ref()),
            placed,
        }
    }
}

/// What is placed on one hypervisor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Placed {
    pub load: Load,
    pub servers: usize,
}

/// Sums what is placed on each hypervisor from (hypervisor, resources)
/// pairs: the one place placed load is counted, for the scheduler and for
/// what operators are shown.
pub fn placed_load<'a>(
    placements: impl IntoIterator<Item = (&'a HypervisorName, ServerResources)>,
) -> HashMap<HypervisorName, Placed> {
    let mut placed: HashMap<HypervisorName, Placed> = HashMap::new();
    for (hypervisor, resources) in placements {
        let entry = placed.entry(hypervisor.clone()).or_default();
        entry.load.add(&resources);
        entry.servers += 1;
    }
    placed
}

/// The placements recorded on servers, each with what it holds.
pub fn placements_of(
    servers: &[VirtualServer],
) -> impl Iterator<Item = (&HypervisorName, ServerResources)> {
    servers.iter().filter_map(|server| {
        let hypervisor = server.status.as_ref()?.hypervisor.as_ref()?;
        Some((hypervisor, server.held_resources()))
    })
}

/// What a hypervisor lacks for a server to move from `from` to `to` in
/// place (R23), `others` being what everything else there holds: only
/// what grows must fit, so a move down always fits, even on a hypervisor
/// that holds more than it has (its capacity shrank, copies grew).
pub fn growth_shortfall(
    capacity: &HypervisorCapacity,
    others: Load,
    from: &ServerResources,
    to: &ServerResources,
) -> Option<Load> {
    let lacking = |grows: bool, have: u64, held: u64, wanted: u64| {
        if grows {
            (held + wanted).saturating_sub(have)
        } else {
            0
        }
    };
    let missing = Load {
        vcpus: lacking(
            to.vcpus > from.vcpus,
            u64::from(capacity.vcpus),
            others.vcpus,
            u64::from(to.vcpus),
        ),
        memory_mib: lacking(
            to.memory_mib > from.memory_mib,
            capacity.memory_mib,
            others.memory_mib,
            to.memory_mib,
        ),
        disk_gib: lacking(
            to.disk_gib > from.disk_gib,
            capacity.disk_gib,
            others.disk_gib,
            to.disk_gib,
        ),
    };
    (missing != Load::default()).then_some(missing)
}

impl std::fmt::Display for Load {
    /// The non-zero amounts, e.g. `2 vCPU and 1024 MiB memory`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = [
            (self.vcpus, "vCPU"),
            (self.memory_mib, "MiB memory"),
            (self.disk_gib, "GiB disk"),
        ]
        .into_iter()
        .filter(|(amount, _)| *amount > 0)
        .map(|(amount, unit)| format!("{amount} {unit}"))
        .collect();
        match parts.as_slice() {
            [] => f.write_str("nothing"),
            [one] => f.write_str(one),
            [first @ .., last] => write!(f, "{} and {last}", first.join(", ")),
        }
    }
}

/// Adds the disk the copies of storage subscriptions take to what is
/// placed on each hypervisor, so servers and storage share one account of
/// each pool: a copy takes its size for its current version and again for
/// each verified version it keeps (a kept version may differ from the
/// current one in every byte).
pub fn add_storage_load(
    placed: &mut HashMap<HypervisorName, Placed>,
    subscriptions: &[StorageSubscription],
) {
    for subscription in subscriptions {
        let Some(status) = &subscription.status else {
            continue;
        };
        for replica in &status.replicas {
            let versions = 1 + u64::try_from(replica.kept.len()).unwrap_or(u64::MAX);
            let entry = placed.entry(replica.hypervisor.clone()).or_default();
            entry.load.disk_gib = entry
                .load
                .disk_gib
                .saturating_add(subscription.spec.size_gib.saturating_mul(versions));
        }
    }
}

/// Chooses among registered hypervisors (see [`choose`]).
pub fn choose_hypervisor(
    request: &ServerResources,
    image_volume: &str,
    zone: Option<&str>,
    hypervisors: &[Hypervisor],
    placed: &HashMap<HypervisorName, Placed>,
) -> Result<HypervisorName, Unschedulable> {
    let candidates: Vec<Candidate<'_>> = hypervisors
        .iter()
        .map(|hypervisor| {
            let load = placed
                .get(&HypervisorName::of(hypervisor))
                .map(|p| p.load)
                .unwrap_or_default();
            Candidate::of(hypervisor, load)
        })
        .collect();
    let chosen = choose(request, image_volume, zone, &candidates)?;
    // `choose` answers with one of the candidates' names.
    hypervisors
        .iter()
        .map(HypervisorName::of)
        .find(|name| name == chosen)
        .ok_or_else(|| Unschedulable::NoHypervisor {
            place: chosen.to_owned(),
        })
}

/// Resources consumed on a hypervisor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    pub vcpus: u64,
    pub memory_mib: u64,
    pub disk_gib: u64,
}

impl Load {
    pub fn add(&mut self, resources: &ServerResources) {
        self.vcpus += u64::from(resources.vcpus);
        self.memory_mib += resources.memory_mib;
        self.disk_gib += resources.disk_gib;
    }

    /// This load without what `resources` holds (never below nothing).
    pub fn without(self, resources: &ServerResources) -> Self {
        Self {
            vcpus: self.vcpus.saturating_sub(u64::from(resources.vcpus)),
            memory_mib: self.memory_mib.saturating_sub(resources.memory_mib),
            disk_gib: self.disk_gib.saturating_sub(resources.disk_gib),
        }
    }
}

/// Why no hypervisor could take a server; the message is shown to the customer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unschedulable {
    #[error("no reachable hypervisor {place}")]
    NoHypervisor {
        /// `in zone par1` or `in any zone`.
        place: String,
    },
    #[error(
        "no reachable hypervisor {place} can filter guest traffic against address spoofing, so none may start a server"
    )]
    NoAntiSpoofing { place: String },
    #[error("no reachable hypervisor {place} has image {image}")]
    NoImage { place: String, image: String },
    #[error(
        "no hypervisor {place} has room for {vcpus} vCPU, {memory_mib} MiB memory and {disk_gib} GiB disk"
    )]
    NoCapacity {
        place: String,
        vcpus: u32,
        memory_mib: u64,
        disk_gib: u64,
    },
    #[error("no reachable hypervisor {place} has {disk_gib} GiB of disk left")]
    NoStorageRoom { place: String, disk_gib: u64 },
    #[error(
        "no reachable hypervisor in a zone other than {zone} has {disk_gib} GiB of disk left for the second copy; the subscription waits for one (a single copy is never called ready)"
    )]
    NoSecondZone { zone: String, disk_gib: u64 },
}

/// Picks the hypervisor with the most memory left after placing the server
/// (spreading load), among those in the zone that are reachable, not
/// cordoned, have the image and have room. Ties go to the first name.
pub fn choose<'a>(
    request: &ServerResources,
    image_volume: &str,
    zone: Option<&str>,
    candidates: &[Candidate<'a>],
) -> Result<&'a str, Unschedulable> {
    let place = zone.map_or_else(|| "in any zone".to_owned(), |z| format!("in zone {z}"));
    let usable: Vec<(&Candidate<'a>, &HypervisorCapacity)> = candidates
        .iter()
        .filter(|c| zone.is_none_or(|z| c.zone == z) && c.reachable && !c.cordoned)
        .filter_map(|c| c.capacity.map(|cap| (c, cap)))
        .collect();
    if usable.is_empty() {
        return Err(Unschedulable::NoHypervisor { place });
    }
    let usable: Vec<_> = usable
        .into_iter()
        .filter(|(c, _)| c.starts_guests)
        .collect();
    if usable.is_empty() {
        return Err(Unschedulable::NoAntiSpoofing { place });
    }
    let with_image: Vec<_> = usable
        .into_iter()
        .filter(|(_, cap)| cap.images.iter().any(|i| i == image_volume))
        .collect();
    if with_image.is_empty() {
        return Err(Unschedulable::NoImage {
            place,
            image: image_volume.to_owned(),
        });
    }
    with_image
        .into_iter()
        .filter_map(|(c, cap)| {
            let fits = u64::from(cap.vcpus) >= c.placed.vcpus + u64::from(request.vcpus)
                && cap.disk_gib >= c.placed.disk_gib + request.disk_gib;
            let memory_left = cap
                .memory_mib
                .checked_sub(c.placed.memory_mib + request.memory_mib)?;
            fits.then_some((c.name, memory_left))
        })
        .min_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)))
        .map(|(name, _)| name)
        .ok_or(Unschedulable::NoCapacity {
            place,
            vcpus: request.vcpus,
            memory_mib: request.memory_mib,
            disk_gib: request.disk_gib,
        })
}

/// Chooses the two hypervisors of a storage subscription (R24): the
/// primary in `zone` (any zone when none is asked for), the secondary in
/// another zone. Each must be reachable, not cordoned and have `disk_gib`
/// left; among those, most disk left wins, ties to the first name. With
/// no zone asked for, the primary is the roomiest hypervisor that has a
/// partner in another zone.
pub fn choose_replicas<'a>(
    disk_gib: u64,
    zone: Option<&str>,
    candidates: &[Candidate<'a>],
) -> Result<[&'a str; 2], Unschedulable> {
    let place = zone.map_or_else(|| "in any zone".to_owned(), |z| format!("in zone {z}"));
    let reachable: Vec<&Candidate<'a>> = candidates
        .iter()
        .filter(|c| c.reachable && !c.cordoned && c.capacity.is_some())
        .collect();
    if !reachable.iter().any(|c| zone.is_none_or(|z| c.zone == z)) {
        return Err(Unschedulable::NoHypervisor { place });
    }
    let disk_left = |c: &Candidate<'a>| {
        c.capacity
            .and_then(|cap| cap.disk_gib.checked_sub(c.placed.disk_gib))
            .and_then(|left| left.checked_sub(disk_gib))
    };
    // Roomiest first, ties by name.
    let mut with_room: Vec<(&Candidate<'a>, u64)> = reachable
        .into_iter()
        .filter_map(|c| disk_left(c).map(|left| (c, left)))
        .collect();
    with_room.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.name.cmp(b.0.name)));
    let primaries: Vec<&Candidate<'a>> = with_room
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| zone.is_none_or(|z| c.zone == z))
        .collect();
    let Some(first) = primaries.first() else {
        return Err(Unschedulable::NoStorageRoom { place, disk_gib });
    };
    for primary in &primaries {
        if let Some((secondary, _)) = with_room.iter().find(|(c, _)| c.zone != primary.zone) {
            return Ok([primary.name, secondary.name]);
        }
    }
    Err(Unschedulable::NoSecondZone {
        zone: first.zone.to_owned(),
        disk_gib,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(vcpus: u32, memory_mib: u64, disk_gib: u64) -> HypervisorCapacity {
        HypervisorCapacity {
            vcpus,
            memory_mib,
            disk_gib,
            images: vec!["debian.qcow2".into()],
        }
    }

    const SMALL: ServerResources = ServerResources {
        vcpus: 1,
        memory_mib: 1024,
        disk_gib: 25,
    };

    fn candidate<'a>(
        name: &'a str,
        zone: &'a str,
        capacity: &'a HypervisorCapacity,
        placed: Load,
    ) -> Candidate<'a> {
        Candidate {
            name,
            zone,
            reachable: true,
            cordoned: false,
            starts_guests: true,
            capacity: Some(capacity),
            placed,
        }
    }

    #[test]
    fn spreads_to_the_hypervisor_with_most_memory_left() {
        let big = cap(16, 65536, 1000);
        let busy = Load {
            vcpus: 4,
            memory_mib: 60000,
            disk_gib: 100,
        };
        let candidates = [
            candidate("a", "par1", &big, busy),
            candidate("b", "par1", &big, Load::default()),
        ];
        assert_eq!(
            choose(&SMALL, "debian.qcow2", Some("par1"), &candidates),
            Ok("b")
        );
        assert_eq!(choose(&SMALL, "debian.qcow2", None, &candidates), Ok("b"));
    }

    #[test]
    fn r19_a_hypervisor_that_cannot_filter_is_never_chosen() {
        let big = cap(16, 65536, 1000);
        let mut unfiltered = candidate("a", "par1", &big, Load::default());
        unfiltered.starts_guests = false;
        let filtered = candidate("b", "par1", &big, Load::default());
        assert_eq!(
            choose(
                &SMALL,
                "debian.qcow2",
                Some("par1"),
                &[unfiltered.clone(), filtered]
            ),
            Ok("b")
        );
        assert_eq!(
            choose(&SMALL, "debian.qcow2", Some("par1"), &[unfiltered]),
            Err(Unschedulable::NoAntiSpoofing {
                place: "in zone par1".into()
            })
        );
    }

    #[test]
    fn ties_go_to_first_name() {
        let big = cap(16, 65536, 1000);
        let candidates = [
            candidate("b", "z", &big, Load::default()),
            candidate("a", "z", &big, Load::default()),
        ];
        assert_eq!(choose(&SMALL, "debian.qcow2", None, &candidates), Ok("a"));
    }

    #[test]
    fn respects_zone_image_reachability_cordon_and_every_resource() {
        let big = cap(16, 65536, 1000);
        let mut other_zone = candidate("a", "ams1", &big, Load::default());
        assert_eq!(
            choose(
                &SMALL,
                "debian.qcow2",
                Some("par1"),
                std::slice::from_ref(&other_zone)
            ),
            Err(Unschedulable::NoHypervisor {
                place: "in zone par1".into()
            })
        );
        other_zone.zone = "par1";
        other_zone.reachable = false;
        assert!(matches!(
            choose(
                &SMALL,
                "debian.qcow2",
                Some("par1"),
                std::slice::from_ref(&other_zone)
            ),
            Err(Unschedulable::NoHypervisor { .. })
        ));
        other_zone.reachable = true;
        other_zone.cordoned = true;
        assert!(
            choose(
                &SMALL,
                "debian.qcow2",
                Some("par1"),
                std::slice::from_ref(&other_zone)
            )
            .is_err()
        );
        other_zone.capacity = None;
        other_zone.cordoned = false;
        assert!(
            choose(
                &SMALL,
                "debian.qcow2",
                Some("par1"),
                std::slice::from_ref(&other_zone)
            )
            .is_err()
        );

        let ok = candidate("a", "par1", &big, Load::default());
        assert!(matches!(
            choose(&SMALL, "ubuntu.qcow2", None, std::slice::from_ref(&ok)),
            Err(Unschedulable::NoImage { .. })
        ));
        for placed in [
            Load {
                vcpus: 16,
                ..Load::default()
            },
            Load {
                memory_mib: 65000,
                ..Load::default()
            },
            Load {
                disk_gib: 990,
                ..Load::default()
            },
        ] {
            let full = candidate("a", "par1", &big, placed);
            let err =
                choose(&SMALL, "debian.qcow2", None, std::slice::from_ref(&full)).unwrap_err();
            assert!(
                matches!(err, Unschedulable::NoCapacity { .. }),
                "{placed:?}"
            );
            assert!(err.to_string().contains("1024 MiB"));
        }
        let exact = candidate(
            "a",
            "par1",
            &big,
            Load {
                vcpus: 15,
                memory_mib: 64512,
                disk_gib: 975,
            },
        );
        assert_eq!(
            choose(&SMALL, "debian.qcow2", None, std::slice::from_ref(&exact)),
            Ok("a")
        );
    }

    fn disk(disk_gib: u64) -> Load {
        Load {
            disk_gib,
            ..Load::default()
        }
    }

    #[test]
    fn r24_two_copies_go_to_two_zones_with_room() {
        let pool = cap(2, 4096, 1000);
        let candidates = [
            candidate("a1", "a", &pool, disk(100)),
            candidate("a2", "a", &pool, disk(0)),
            candidate("b1", "b", &pool, disk(500)),
        ];
        assert_eq!(choose_replicas(200, None, &candidates), Ok(["a2", "b1"]));
        assert_eq!(
            choose_replicas(200, Some("a"), &candidates),
            Ok(["a2", "b1"])
        );
        assert_eq!(
            choose_replicas(200, Some("b"), &candidates),
            Ok(["b1", "a2"])
        );
        // b1 has 500 GiB left: 600 fits only in zone a, so no second copy.
        assert_eq!(
            choose_replicas(600, None, &candidates),
            Err(Unschedulable::NoSecondZone {
                zone: "a".into(),
                disk_gib: 600
            })
        );
        assert_eq!(
            choose_replicas(600, Some("b"), &candidates),
            Err(Unschedulable::NoStorageRoom {
                place: "in zone b".into(),
                disk_gib: 600
            })
        );
        // Exactly full fits.
        assert_eq!(
            choose_replicas(500, Some("b"), &candidates),
            Ok(["b1", "a2"])
        );
    }

    #[test]
    fn r24_one_zone_alone_never_holds_both_copies() {
        let pool = cap(2, 4096, 1000);
        let mut candidates = vec![
            candidate("a1", "a", &pool, disk(0)),
            candidate("a2", "a", &pool, disk(0)),
        ];
        let error = choose_replicas(10, None, &candidates).unwrap_err();
        assert!(
            matches!(error, Unschedulable::NoSecondZone { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("single copy"), "{error}");
        // A second zone that is unreachable or cordoned does not count.
        let mut b = candidate("b1", "b", &pool, disk(0));
        b.reachable = false;
        candidates.push(b);
        assert!(matches!(
            choose_replicas(10, None, &candidates),
            Err(Unschedulable::NoSecondZone { .. })
        ));
        candidates[2].reachable = true;
        candidates[2].cordoned = true;
        assert!(matches!(
            choose_replicas(10, None, &candidates),
            Err(Unschedulable::NoSecondZone { .. })
        ));
        candidates[2].cordoned = false;
        assert_eq!(choose_replicas(10, None, &candidates), Ok(["a1", "b1"]));
        assert_eq!(
            choose_replicas(10, Some("c"), &candidates),
            Err(Unschedulable::NoHypervisor {
                place: "in zone c".into()
            })
        );
    }

    #[test]
    fn r24_storage_copies_count_against_the_pool_servers_use() {
        use crate::resources::{
            StorageReplica, StorageSubscriptionSpec, StorageSubscriptionStatus,
        };
        let replica = |hypervisor: &str, zone: &str| StorageReplica {
            hypervisor: HypervisorName::parse(hypervisor).unwrap(),
            zone: zone.into(),
            volume: "v".into(),
            version: 0,
            pool: None,
            path: None,
            created: false,
            bytes: 0,
            checksum: None,
            verified_at: None,
            kept: Vec::new(),
            lost: Vec::new(),
            missing: None,
        };
        let mut subscription = StorageSubscription::new(
            "st-1",
            StorageSubscriptionSpec {
                name: "backup".into(),
                size_gib: 300,
                zone: None,
                encryption: Default::default(),
                content: None,
                verify_requests: 0,
                keys_given: 0,
                restore_from: None,
                snapshot_of: None,
                attached_to: None,
                written_by_guest: None,
                suspension: None,
                termination: None,
            },
        );
        subscription.status = Some(StorageSubscriptionStatus {
            replicas: vec![replica("a1", "a"), replica("b1", "b")],
            ..Default::default()
        });
        let pending = StorageSubscription::new("st-2", subscription.spec.clone());
        let spec = subscription.spec.clone();
        let mut placed = placed_load([(&HypervisorName::parse("a1").unwrap(), SMALL)]);
        add_storage_load(&mut placed, &[subscription, pending]);
        assert_eq!(
            placed[&HypervisorName::parse("a1").unwrap()].load.disk_gib,
            325
        );
        assert_eq!(placed[&HypervisorName::parse("a1").unwrap()].servers, 1);
        assert_eq!(
            placed[&HypervisorName::parse("b1").unwrap()].load.disk_gib,
            300
        );
        assert_eq!(placed[&HypervisorName::parse("b1").unwrap()].servers, 0);

        // The versions the secondary keeps take room there too.
        let mut keeping = StorageSubscription::new("st-3", spec);
        let mut secondary = replica("b1", "b");
        secondary.kept = (1..=2)
            .map(|version| crate::resources::KeptVersion {
                version,
                bytes: 1,
                sha256: "ab".repeat(32),
                verified_at: "2026-12-06T00:00:00Z".into(),
                missing: None,
                recover_after: None,
            })
            .collect();
        keeping.status = Some(StorageSubscriptionStatus {
            replicas: vec![replica("a1", "a"), secondary],
            ..Default::default()
        });
        let mut placed = placed_load([(&HypervisorName::parse("a1").unwrap(), SMALL)]);
        add_storage_load(&mut placed, &[keeping]);
        assert_eq!(
            placed[&HypervisorName::parse("a1").unwrap()].load.disk_gib,
            325
        );
        assert_eq!(
            placed[&HypervisorName::parse("b1").unwrap()].load.disk_gib,
            900
        );
    }

    #[test]
    fn r23_a_shortfall_names_only_what_is_missing() {
        let capacity = cap(8, 16384, 200);
        let placed = Load {
            vcpus: 6,
            memory_mib: 8192,
            disk_gib: 150,
        };
        let fits = ServerResources {
            vcpus: 2,
            memory_mib: 8192,
            disk_gib: 50,
        };
        // Growing in every dimension: all of `to` must fit.
        let from = ServerResources {
            vcpus: 1,
            memory_mib: 1,
            disk_gib: 1,
        };
        let shortfall = |to: &ServerResources| growth_shortfall(&capacity, placed, &from, to);
        assert_eq!(shortfall(&fits), None);
        let too_big = ServerResources {
            vcpus: 4,
            memory_mib: 8192,
            disk_gib: 60,
        };
        let missing = shortfall(&too_big).expect("does not fit");
        assert_eq!(
            missing,
            Load {
                vcpus: 2,
                memory_mib: 0,
                disk_gib: 10,
            }
        );
        assert_eq!(missing.to_string(), "2 vCPU and 10 GiB disk");
    }

    #[test]
    fn r23_only_what_grows_must_fit() {
        // A hypervisor holding more than it has (its capacity shrank).
        let capacity = cap(4, 4096, 100);
        let others = Load {
            vcpus: 6,
            memory_mib: 2048,
            disk_gib: 50,
        };
        let from = ServerResources {
            vcpus: 2,
            memory_mib: 2048,
            disk_gib: 25,
        };
        let down = ServerResources {
            vcpus: 1,
            memory_mib: 1024,
            disk_gib: 25,
        };
        assert_eq!(growth_shortfall(&capacity, others, &from, &down), None);
        // Memory grows beyond the room, vCPUs go down: only memory lacks.
        let more_memory = ServerResources {
            vcpus: 1,
            memory_mib: 3072,
            disk_gib: 25,
        };
        assert_eq!(
            growth_shortfall(&capacity, others, &from, &more_memory),
            Some(Load {
                vcpus: 0,
                memory_mib: 1024,
                disk_gib: 0,
            })
        );
    }
}
