//! Choosing a hypervisor for a server: pure arithmetic over what the agents
//! reported and what is already placed.

use std::collections::HashMap;

use crate::conditions::{ConditionType, Reason};
use crate::ids::HypervisorName;
use crate::resources::{Hypervisor, HypervisorCapacity, ServerResources, VirtualServer};

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
    placements: impl IntoIterator<Item = (&'a HypervisorName, &'a ServerResources)>,
) -> HashMap<HypervisorName, Placed> {
    let mut placed: HashMap<HypervisorName, Placed> = HashMap::new();
    for (hypervisor, resources) in placements {
        let entry = placed.entry(hypervisor.clone()).or_default();
        entry.load.add(resources);
        entry.servers += 1;
    }
    placed
}

/// The placements recorded on servers.
pub fn placements_of(
    servers: &[VirtualServer],
) -> impl Iterator<Item = (&HypervisorName, &ServerResources)> {
    servers.iter().filter_map(|server| {
        let hypervisor = server.status.as_ref()?.hypervisor.as_ref()?;
        Some((hypervisor, &server.spec.resources))
    })
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
}
