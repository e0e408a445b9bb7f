//! The server lifecycle: given what is desired and what the agent observed,
//! decide what to do and what status to record. Pure: the controller acts.

use jiff::{SignedDuration, Timestamp};

use crate::agent_api::{DomainObservation, DomainState, Link, Target};
use crate::conditions::{self, ConditionType, Reason};
use crate::ids::HypervisorName;
use crate::ip::{Assignment, Family};
use crate::policy::SuspensionMode;
use crate::resources::{
    AppliedPlan, PowerState, RebuildProgress, RescueProgress, RescueRequest, ResizeProgress,
    ServerAddress, ServerPhase, ServerResources, SnapshotOf, VirtualServerSpec,
    VirtualServerStatus,
};
use crate::standing::Suspension;

/// The server as stored: desired state, last status and object metadata that matters.
#[derive(Debug, Clone, Copy)]
pub struct ServerFacts<'a> {
    pub spec: &'a VirtualServerSpec,
    pub status: &'a VirtualServerStatus,
    pub generation: Option<i64>,
    pub has_finalizer: bool,
    pub deleting: bool,
    /// How long a guest asked to shut down has before it is powered off
    /// (`policy.power.shutdownGrace`).
    pub shutdown_grace: crate::policy::PolicyDuration,
    /// Ids of the storage subscriptions that must be disks of the server,
    /// sorted.
    pub data_disks: &'a [String],
    /// Those of `data_disks` that wait for their key to be loaded on the
    /// hypervisor (LUKS), as their storage or the agent's last answer says:
    /// the server has converged without them.
    pub keyed_disks: &'a [String],
    /// What the provider's catalogue offers as the spec's plan; `None`
    /// when it offers no such plan (a server is never moved to one).
    pub offered: Option<ServerResources>,
}

/// What the controller learned from the hypervisor before deciding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// No hypervisor is recorded in the status, so there is nothing to ask.
    NotPlaced,
    /// The agent did not answer or failed; the message says why.
    AgentUnavailable(String),
    /// The agent answered.
    Domain(DomainObservation),
}

/// The one step the controller carries out next; it observes again before
/// the step after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Put the teardown finalizer on the object before anything exists outside it.
    AddFinalizer,
    /// Choose a hypervisor and record it in the status before acting there.
    Schedule,
    /// Hold the server's addresses (IP ledger, after a blacklist check)
    /// and record them before its domain is created.
    AssignAddresses,
    /// Make the domain match the spec; `create_disk` is false once a disk
    /// existed; `power_off` stops a guest that ignored its shutdown request.
    EnsureDomain { create_disk: bool, power_off: bool },
    /// Reboot the running domain once.
    Reboot,
    /// Destroy and undefine the domain and wipe its disk.
    Destroy,
    /// Let the object go: nothing of it is left on any hypervisor.
    RemoveFinalizer,
    /// A terminated server whose wipe was due: nothing of it is left on
    /// any hypervisor; give back its addresses and record the wipe, and
    /// keep the object listed as terminated.
    ReleaseTerminated,
    /// A resize was asked for (R23): hold room for the new plan on the
    /// server's hypervisor, under the lock placements are made under, or
    /// say what is missing.
    ReserveRoom,
    /// The server runs with its new plan: record the plan change for
    /// billing (`plan_changed`) and report the downtime.
    FinishResize,
    /// The server runs on its new system disk and the old one is wiped:
    /// record the rebuild as done and report the downtime.
    FinishRebuild,
    /// The server boots the rescue system, or its own again: record it.
    FinishRescue,
}

/// The decision: the status to record and, unless the server has converged
/// (or must wait), the one action to take next.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub next: Option<Action>,
    pub status: VirtualServerStatus,
    /// With no action: look again after this (a guest shutting down).
    pub recheck_in: Option<SignedDuration>,
}

/// How often a guest that is shutting down is looked at.
const SHUTDOWN_POLL: SignedDuration = SignedDuration::from_secs(5);

pub fn plan(server: ServerFacts<'_>, observed: &Observation, now: Timestamp) -> Decision {
    let mut status = server.status.clone();
    status.observed_generation = server.generation;
    let mut next = None;

    let wiping = !server.deleting && server.spec.termination.as_ref().is_some_and(|t| t.wipe);
    if server.deleting || wiping {
        // What is left to do once nothing of it is on a hypervisor.
        let finish = if server.deleting {
            status.phase = ServerPhase::Terminating;
            status.reason = None;
            conditions::set(
                &mut status.conditions,
                ConditionType::Ready,
                false,
                Reason::Terminating,
                "server is being deleted",
                now,
            );
            server.has_finalizer.then_some(Action::RemoveFinalizer)
        } else {
            status.phase = ServerPhase::Terminated;
            let cause = server
                .spec
                .termination
                .as_ref()
                .map_or("", |t| t.cause.as_str());
            status.reason = Some(match &status.wiped_at {
                Some(at) => format!("terminated ({cause}); its disk was wiped at {at}"),
                None => format!("terminated ({cause}); its disk is being wiped"),
            });
            conditions::set(
                &mut status.conditions,
                ConditionType::Ready,
                false,
                Reason::Terminating,
                status.reason.clone().unwrap_or_default(),
                now,
            );
            status
                .wiped_at
                .is_none()
                .then_some(Action::ReleaseTerminated)
        };
        match observed {
            Observation::NotPlaced => next = finish,
            Observation::AgentUnavailable(message) => {
                agent_unreachable(&mut status, message, now);
            }
            Observation::Domain(domain) => {
                agent_reachable(&mut status, now);
                next = if domain.state.is_some() || domain.disk_present {
                    Some(Action::Destroy)
                } else {
                    finish
                };
            }
        }
        return Decision {
            next,
            status,
            recheck_in: None,
        };
    }

    if !server.has_finalizer {
        next = Some(Action::AddFinalizer);
        return Decision {
            next,
            status,
            recheck_in: None,
        };
    }

    let domain = match observed {
        Observation::NotPlaced => {
            status.phase = ServerPhase::Pending;
            conditions::set(
                &mut status.conditions,
                ConditionType::Scheduled,
                false,
                Reason::Scheduling,
                "choosing a hypervisor",
                now,
            );
            conditions::set(
                &mut status.conditions,
                ConditionType::Ready,
                false,
                Reason::Pending,
                "waiting for a hypervisor",
                now,
            );
            next = Some(Action::Schedule);
            return Decision {
                next,
                status,
                recheck_in: None,
            };
        }
        Observation::AgentUnavailable(message) => {
            if !status.provisioned {
                status.phase = ServerPhase::Provisioning;
            }
            agent_unreachable(&mut status, message, now);
            return Decision {
                next,
                status,
                recheck_in: None,
            };
        }
        Observation::Domain(domain) => domain,
    };
    agent_reachable(&mut status, now);

    if status.provisioned && !domain.disk_present {
        status.phase = ServerPhase::Error;
        let hypervisor = status
            .hypervisor
            .as_ref()
            .map_or("its hypervisor", HypervisorName::as_str);
        status.reason = Some(format!(
            "the system disk of this server is missing on {hypervisor}; it was not recreated, an operator must restore it"
        ));
        conditions::set(
            &mut status.conditions,
            ConditionType::Ready,
            false,
            Reason::DiskMissing,
            status.reason.clone().unwrap_or_default(),
            now,
        );
        return Decision {
            next,
            status,
            recheck_in: None,
        };
    }
    if domain.disk_present && !status.provisioned {
        status.provisioned = true;
        conditions::set(
            &mut status.conditions,
            ConditionType::Provisioned,
            true,
            Reason::DiskCreated,
            "system disk created",
            now,
        );
    }

    // One of resize and rebuild at a time: the one under way first.
    let resize = if status.rebuild.is_some() || status.rescue_change.is_some() {
        ResizeStep::default()
    } else {
        resize_step(server.spec, server.offered, &mut status, domain, now)
    };
    let rebuild = rebuild_step(server.spec, &mut status, domain, now);
    let rescue = rescue_step(server.spec, &mut status, domain, now);

    if status.ipv4.is_none() && !status.provisioned {
        next = Some(Action::AssignAddresses);
        return Decision {
            next,
            status,
            recheck_in: None,
        };
    }

    let suspension = server.spec.suspension.as_ref();
    let hold = server.spec.hold();
    let holds = resize.hold || rebuild.hold || rescue.hold;
    let target = if holds {
        Target::Stopped
    } else {
        Target::of(server.spec.power, hold)
    };
    let link_up = hold != Some(SuspensionMode::NetworkIsolated);
    let mut attached = domain.data_disks.clone();
    attached.sort();
    let required = |disks: &[String]| -> Vec<String> {
        disks
            .iter()
            .filter(|d| !server.keyed_disks.contains(d))
            .cloned()
            .collect()
    };
    let disks_match = required(&attached) == required(server.data_disks)
        && attached.iter().all(|d| server.data_disks.contains(d));
    status.attached_storage = attached;
    let converged = domain
        .state
        .is_some_and(|state| target.reached(state) && domain.link.matches(link_up))
        && disks_match;
    let mut recheck_in = None;
    let shutting_down = target == Target::Stopped
        && matches!(
            domain.state,
            Some(DomainState::Running | DomainState::Transitioning)
        );
    if !shutting_down {
        status.stop_requested_at = None;
    }
    if shutting_down {
        // The stop is requested once; the guest gets the grace period to
        // act on it without holding a worker, then it is powered off.
        let requested = status
            .stop_requested_at
            .as_deref()
            .and_then(|at| at.parse::<Timestamp>().ok());
        match requested {
            None => {
                status.stop_requested_at = Some(now.to_string());
                next = Some(Action::EnsureDomain {
                    create_disk: !status.provisioned,
                    power_off: false,
                });
            }
            Some(at) => {
                let deadline = server.shutdown_grace.after(at);
                if now >= deadline {
                    next = Some(Action::EnsureDomain {
                        create_disk: !status.provisioned,
                        power_off: true,
                    });
                } else {
                    recheck_in = Some(SHUTDOWN_POLL.min(deadline.duration_since(now)));
                }
            }
        }
    } else if !converged || (holds && domain.state == Some(DomainState::Stopped)) || rebuild.replace
    {
        // Held off for a resize, the domain is made again with the new
        // plan and its disk grown; for a rebuild, with its new disk, and
        // the old disk is wiped.
        next = Some(Action::EnsureDomain {
            create_disk: !status.provisioned,
            power_off: false,
        });
    }
    if holds && shutting_down {
        let stop_requested_at = status.stop_requested_at.clone();
        if let Some(progress) = status.resize.as_mut().filter(|p| p.stopped_at.is_none()) {
            progress.stopped_at.clone_from(&stop_requested_at);
        }
        if let Some(progress) = status.rebuild.as_mut().filter(|p| p.stopped_at.is_none()) {
            progress.stopped_at = stop_requested_at;
        }
    }
    if resize.reserve && next.is_none() {
        next = Some(Action::ReserveRoom);
    }
    let resized = status.applied.as_ref() == Some(&AppliedPlan::of(server.spec));
    if status.resize.is_some() && resized && converged && next.is_none() {
        next = Some(Action::FinishResize);
    }
    let rebuilt = status
        .rebuild
        .as_ref()
        .is_some_and(|p| p.replaced && p.generation == status.disk_generation);
    if rebuilt && converged && next.is_none() {
        next = Some(Action::FinishRebuild);
    }
    if rescue.done && converged && next.is_none() {
        next = Some(Action::FinishRescue);
    }

    if server.spec.reboot_requests > status.reboots_done {
        if converged && target == Target::Running {
            next = Some(Action::Reboot);
        }
        // A reboot asked of a server that is not running has nothing left to do.
        status.reboots_done = server.spec.reboot_requests;
    }

    status.reason = None;
    status.phase = match domain.state {
        _ if !status.provisioned => ServerPhase::Provisioning,
        None => ServerPhase::Provisioning,
        Some(DomainState::Running) => ServerPhase::Running,
        Some(DomainState::Stopped | DomainState::Paused) => ServerPhase::Stopped,
        Some(DomainState::Crashed) => {
            status.reason = Some("the server crashed".to_owned());
            ServerPhase::Error
        }
        // Shutting down or suspended to memory: not running, and the next
        // observation will say where it landed.
        Some(DomainState::Transitioning) => match status.phase {
            ServerPhase::Pending => ServerPhase::Provisioning,
            ServerPhase::Running | ServerPhase::Suspended => ServerPhase::Stopped,
            phase => {
                status.reason.clone_from(&server.status.reason);
                phase
            }
        },
    };
    record_suspension(&mut status, suspension, domain, now);
    if let Some(termination) = &server.spec.termination
        && status.phase != ServerPhase::Error
    {
        status.phase = ServerPhase::Terminated;
        status.reason = Some(format!(
            "terminated ({}); its disk is wiped at {}",
            termination.cause.as_str(),
            termination.wipe_at
        ));
    }
    // A running domain whose guest stopped booting is not what a customer
    // calls running: said on the server, and it is not ready.
    let boot_failure = domain
        .guest_failure
        .as_ref()
        .filter(|_| status.phase == ServerPhase::Running);
    match boot_failure {
        Some(why) => {
            status.reason = Some(format!("the guest did not come up: {why}"));
            conditions::set(
                &mut status.conditions,
                ConditionType::GuestBooted,
                false,
                Reason::BootFailed,
                why.clone(),
                now,
            );
        }
        None if status.phase == ServerPhase::Running => {
            conditions::set(
                &mut status.conditions,
                ConditionType::GuestBooted,
                true,
                Reason::Booted,
                "",
                now,
            );
        }
        None => {}
    }
    let ready = status.phase == ServerPhase::Running && boot_failure.is_none();
    let ready_reason = match status.phase {
        ServerPhase::Running if boot_failure.is_some() => Reason::BootFailed,
        ServerPhase::Running => Reason::Running,
        ServerPhase::Stopped => Reason::Stopped,
        ServerPhase::Error => Reason::Crashed,
        ServerPhase::Suspended => suspension
            .and_then(Suspension::primary)
            .map_or(Reason::Stopped, Reason::suspended_for),
        _ => Reason::Provisioning,
    };
    conditions::set(
        &mut status.conditions,
        ConditionType::Ready,
        ready,
        ready_reason,
        "",
        now,
    );
    Decision {
        next,
        status,
        recheck_in,
    }
}

/// A suspended server whose domain exists is `Suspended`, whatever its
/// power: customers read why; the condition says how it is held.
/// Where a server stands in a move to another plan.
#[derive(Debug, Clone, Copy, Default)]
struct ResizeStep {
    /// Room for the new plan must be held first.
    reserve: bool,
    /// Room is held and the domain is not made with the new plan yet: it
    /// is stopped (if it runs) and made again.
    hold: bool,
}

/// Follows a resize (R23) from what the agent observed: records the
/// plan a provisioned server runs with, takes up a plan change the spec
/// asks for, and marks it applied once the domain has the new size. The
/// guest is only stopped once room is held, while no suspension holds it
/// and when its agent says sizes; a spec that goes back to the plan it
/// runs with before that withdraws the resize.
fn resize_step(
    spec: &VirtualServerSpec,
    offered: Option<ServerResources>,
    status: &mut VirtualServerStatus,
    domain: &DomainObservation,
    now: Timestamp,
) -> ResizeStep {
    if !status.provisioned {
        return ResizeStep::default();
    }
    let wanted = AppliedPlan::of(spec);
    let applied = status.applied.get_or_insert_with(|| wanted.clone()).clone();
    if applied == wanted {
        let withdrawn = status
            .resize
            .as_ref()
            .is_some_and(|p| p.to.as_ref().is_some_and(|to| *to != wanted));
        if withdrawn {
            let from = status.resize.take().map(|p| p.from).unwrap_or_default();
            conditions::set(
                &mut status.conditions,
                ConditionType::Resized,
                true,
                Reason::PlanApplied,
                format!(
                    "the move away from plan {from} was withdrawn; it runs on plan {}",
                    wanted.plan
                ),
                now,
            );
        }
        return ResizeStep::default();
    }
    if wanted.plan != applied.plan && offered.is_none() {
        // Only a spec edited by hand can ask this (the API refuses it).
        status.resize = None;
        conditions::set(
            &mut status.conditions,
            ConditionType::Resized,
            false,
            Reason::Invalid,
            format!(
                "plan {} is not offered; it runs on plan {}",
                wanted.plan, applied.plan
            ),
            now,
        );
        return ResizeStep::default();
    }
    if wanted.resources.disk_gib < applied.resources.disk_gib {
        // Only a spec edited by hand can ask this (the API refuses it).
        status.resize = None;
        conditions::set(
            &mut status.conditions,
            ConditionType::Resized,
            false,
            Reason::Invalid,
            format!(
                "plan {} has a {} GiB disk and the server's is {} GiB: a disk never shrinks; it runs on plan {}",
                wanted.plan, wanted.resources.disk_gib, applied.resources.disk_gib, applied.plan
            ),
            now,
        );
        return ResizeStep::default();
    }
    let progress = status.resize.get_or_insert_with(|| ResizeProgress {
        from: applied.plan.clone(),
        from_resources: Some(applied.resources),
        to: Some(wanted.clone()),
        started_at: now.to_string(),
        room_reserved: false,
        stopping: false,
        was_running: domain.state == Some(DomainState::Running),
        stopped_at: None,
    });
    if progress.to.as_ref() != Some(&wanted) {
        // Asked for another plan meanwhile: room is held for that one.
        progress.to = Some(wanted.clone());
        progress.room_reserved = false;
        progress.stopping = false;
    }
    if !progress.room_reserved {
        progress.stopping = false;
        if conditions::get(&status.conditions, ConditionType::Resized)
            .is_none_or(|c| c.reason != Reason::InsufficientCapacity.as_str())
        {
            conditions::set(
                &mut status.conditions,
                ConditionType::Resized,
                false,
                Reason::Resizing,
                format!(
                    "moving from plan {} to {}: holding room",
                    applied.plan, wanted.plan
                ),
                now,
            );
        }
        return ResizeStep {
            reserve: true,
            hold: false,
        };
    }
    // A running guest has the new vCPUs and memory only once started
    // after it was made again: either way it is made, even if the status
    // that said so was not written before it was started.
    let made = domain
        .resources
        .is_some_and(|resources| resources.are(&wanted.resources));
    let waits_for = if made {
        None
    } else if domain.resources.is_none() {
        Some("the agent of its hypervisor does not say domain sizes (upgrade it)")
    } else if spec.hold().is_some() {
        Some("the suspension or termination holding it to end")
    } else {
        None
    };
    if let Some(why) = waits_for {
        progress.stopping = false;
        conditions::set(
            &mut status.conditions,
            ConditionType::Resized,
            false,
            Reason::Resizing,
            format!(
                "moving from plan {} to {} waits for {why}; it runs on unchanged",
                applied.plan, wanted.plan
            ),
            now,
        );
        return ResizeStep::default();
    }
    if made {
        progress.stopping = false;
        status.applied = Some(wanted.clone());
        conditions::set(
            &mut status.conditions,
            ConditionType::Resized,
            false,
            Reason::Resizing,
            format!("made with plan {}; starting again", wanted.plan),
            now,
        );
        return ResizeStep::default();
    }
    progress.stopping = true;
    conditions::set(
        &mut status.conditions,
        ConditionType::Resized,
        false,
        Reason::Resizing,
        format!(
            "moving from plan {} to {}: stopping and making it again",
            applied.plan, wanted.plan
        ),
        now,
    );
    ResizeStep {
        reserve: false,
        hold: true,
    }
}

/// The resources to write into a spec whose plan was changed by hand
/// (Kubernetes mode: `kubectl edit` of `spec.plan` alone), from the
/// catalogue's `offered` for that plan; `None` when the spec asks for
/// nothing of the sort.
pub fn resources_for_edited_plan(
    spec: &VirtualServerSpec,
    status: &VirtualServerStatus,
    offered: Option<ServerResources>,
) -> Option<ServerResources> {
    let applied = status.applied.as_ref()?;
    let edited_alone = spec.plan != applied.plan && spec.resources == applied.resources;
    offered.filter(|resources| edited_alone && *resources != spec.resources)
}

/// What the domain is made with now: the plan it runs with until the
/// resize stops it (so nothing grows into room not held, and a guest is
/// never stopped while a resize waits), then the new one, powered off
/// while it is made again.
pub fn domain_shape(
    spec: &VirtualServerSpec,
    status: &VirtualServerStatus,
) -> (ServerResources, PowerState) {
    let stopping = status.resize.as_ref().is_some_and(|r| r.stopping);
    let rebuilding = status.rebuild.as_ref().is_some_and(|r| r.stopping)
        || status.rescue_change.as_ref().is_some_and(|r| r.stopping);
    match status.applied.as_ref() {
        Some(_) if stopping => (spec.resources, PowerState::Stopped),
        Some(applied) if rebuilding => (applied.resources, PowerState::Stopped),
        None if rebuilding => (spec.resources, PowerState::Stopped),
        Some(applied) if *applied != AppliedPlan::of(spec) => (applied.resources, spec.power),
        _ => (spec.resources, spec.power),
    }
}

/// Records that a resize is finished: the condition says so, with the
/// downtime of a guest that was running.
pub fn record_resized(status: &mut VirtualServerStatus, now: Timestamp) -> Option<SignedDuration> {
    let progress = status.resize.take()?;
    let downtime = progress
        .stopped_at
        .as_deref()
        .and_then(|at| at.parse::<Timestamp>().ok())
        .filter(|_| progress.was_running)
        .map(|stopped| now.duration_since(stopped));
    let plan = status
        .applied
        .as_ref()
        .map_or_else(String::new, |a| a.plan.clone());
    let message = match downtime {
        Some(downtime) => format!(
            "moved from plan {} to {plan}; the guest was down {} s",
            progress.from,
            downtime.as_secs()
        ),
        None => format!("moved from plan {} to {plan}", progress.from),
    };
    conditions::set(
        &mut status.conditions,
        ConditionType::Resized,
        true,
        Reason::PlanApplied,
        message,
        now,
    );
    downtime
}

/// Where a server stands in a rebuild.
#[derive(Debug, Clone, Copy, Default)]
struct RebuildStep {
    /// The guest is held off while its disk is made afresh.
    hold: bool,
    /// The domain has its new disk: the agent is asked again, with the
    /// old one to wipe, until it says it did.
    replace: bool,
}

/// Follows a rebuild from what the agent observed: takes up a rebuild the
/// spec asks for, stops the guest (while no suspension holds it and when
/// its agent says disk generations), and marks the new disk made once the
/// domain is defined with it. A resize under way goes first.
fn rebuild_step(
    spec: &VirtualServerSpec,
    status: &mut VirtualServerStatus,
    domain: &DomainObservation,
    now: Timestamp,
) -> RebuildStep {
    if !status.provisioned {
        return RebuildStep::default();
    }
    let current_image = status
        .image
        .get_or_insert_with(|| spec.image.clone())
        .clone();
    let asked = spec
        .rebuild
        .as_ref()
        .filter(|r| r.generation > status.disk_generation);
    let made = |generation: u32| domain.disk_generation == Some(generation);
    // One change of the domain at a time: a rebuild is taken up only
    // while no resize or move into or out of rescue mode is under way, and
    // once under way those wait for it (they never wait for each other).
    let busy = if status.resize.is_some() {
        Some("the resize under way to finish")
    } else if status.rescue_change.is_some() || status.rescue.is_some() || spec.rescue.is_some() {
        Some("rescue mode to be disabled")
    } else {
        None
    };
    match (asked, status.rebuild.as_mut()) {
        (None, Some(progress))
            if !made(progress.generation) && status.disk_generation < progress.generation =>
        {
            // Withdrawn (spec.rebuild removed or lowered by hand) before
            // the new disk went in: the server runs on as it is.
            let source = progress.source();
            status.rebuild = None;
            conditions::set(
                &mut status.conditions,
                ConditionType::Rebuilt,
                true,
                Reason::ImageApplied,
                format!("the reinstall {source} was withdrawn"),
                now,
            );
            return RebuildStep::default();
        }
        (Some(asked), None) => {
            if let Some(why) = busy {
                let message = format!(
                    "reinstalling {} waits for {why}; it runs on unchanged",
                    asked.source()
                );
                conditions::set(
                    &mut status.conditions,
                    ConditionType::Rebuilt,
                    false,
                    Reason::Rebuilding,
                    message,
                    now,
                );
                return RebuildStep::default();
            }
            status.rebuild = Some(RebuildProgress {
                image: asked.image.clone(),
                generation: asked.generation,
                snapshot: asked.snapshot.clone(),
                instance_generation: asked.instance_generation,
                from_image: current_image.clone(),
                from_generation: status.disk_generation,
                started_at: now.to_string(),
                stopping: false,
                swapping: false,
                replaced: false,
                was_running: domain.state == Some(DomainState::Running),
                stopped_at: None,
            });
        }
        (Some(asked), Some(progress))
            if !made(progress.generation)
                && (progress.generation, &progress.image, &progress.snapshot)
                    != (asked.generation, &asked.image, &asked.snapshot) =>
        {
            // Asked again before the disk was made: that one is made.
            progress.generation = asked.generation;
            progress.image.clone_from(&asked.image);
            progress.snapshot.clone_from(&asked.snapshot);
            progress.instance_generation = asked.instance_generation;
            progress.swapping = false;
        }
        _ => {}
    }
    let Some(progress) = status.rebuild.as_mut() else {
        return RebuildStep::default();
    };
    if domain.disk_generation == Some(progress.generation) {
        progress.stopping = false;
        progress.swapping = false;
        status.disk_generation = progress.generation;
        status.instance_generation = progress.instance_generation;
        status.image = Some(progress.image.clone());
        let message = if progress.replaced {
            format!("made afresh {}; starting", progress.source())
        } else {
            format!("made afresh {}; wiping the old disk", progress.source())
        };
        conditions::set(
            &mut status.conditions,
            ConditionType::Rebuilt,
            false,
            Reason::Rebuilding,
            message,
            now,
        );
        return RebuildStep {
            hold: false,
            replace: !progress.replaced,
        };
    }
    let waits_for = if domain.disk_generation.is_none() {
        Some("the agent of its hypervisor does not say disk generations (upgrade it)")
    } else if spec.hold().is_some() {
        Some("the suspension or termination holding it to end")
    } else {
        None
    };
    if let Some(why) = waits_for {
        progress.stopping = false;
        progress.swapping = false;
        let message = format!(
            "reinstalling {} waits for {why}; it runs on unchanged",
            progress.source()
        );
        conditions::set(
            &mut status.conditions,
            ConditionType::Rebuilt,
            false,
            Reason::Rebuilding,
            message,
            now,
        );
        return RebuildStep::default();
    }
    progress.stopping = true;
    // The new disk and seed go to the agent only once the guest is seen
    // off: a guest still shutting down keeps its disk and instance id.
    progress.swapping = domain.state == Some(DomainState::Stopped);
    let message = format!(
        "reinstalling {}: stopping and making its disk afresh",
        progress.source()
    );
    conditions::set(
        &mut status.conditions,
        ConditionType::Rebuilt,
        false,
        Reason::Rebuilding,
        message,
        now,
    );
    RebuildStep {
        hold: true,
        replace: false,
    }
}

/// Where a server stands in a move into or out of rescue mode.
#[derive(Debug, Clone, Copy, Default)]
struct RescueStep {
    /// The guest is held off while the domain is defined again.
    hold: bool,
    /// The domain boots what was asked: record it once converged.
    done: bool,
}

/// Follows rescue mode from what the agent observed: records the rescue
/// system the domain is defined with, and moves it into or out of rescue
/// mode as the spec asks (stopping the guest first, while no suspension
/// holds it, no resize or rebuild is under way and its agent says).
fn rescue_step(
    spec: &VirtualServerSpec,
    status: &mut VirtualServerStatus,
    domain: &DomainObservation,
    now: Timestamp,
) -> RescueStep {
    if !status.provisioned {
        return RescueStep::default();
    }
    let wanted = spec.rescue.is_some();
    let Some(rescued) = domain.rescued else {
        if wanted {
            conditions::set(
                &mut status.conditions,
                ConditionType::Rescue,
                false,
                Reason::RescueChanging,
                "rescue mode waits for the agent of its hypervisor to say rescue modes (upgrade it)",
                now,
            );
        }
        return RescueStep::default();
    };
    status.rescue = if rescued {
        // What it boots with: the one asked for, kept while it moves out.
        spec.rescue
            .clone()
            .or_else(|| status.rescue.take())
            .or_else(|| Some(RescueRequest::default()))
    } else {
        None
    };
    if wanted == rescued {
        let Some(progress) = status.rescue_change.as_mut() else {
            return RescueStep::default();
        };
        progress.stopping = false;
        progress.swapping = false;
        return RescueStep {
            hold: false,
            done: true,
        };
    }
    let busy = if status.resize.is_some() {
        Some("the resize under way to finish")
    } else if status.rebuild.is_some() {
        Some("the rebuild under way to finish")
    } else if spec.hold().is_some() {
        Some("the suspension or termination holding it to end")
    } else {
        None
    };
    let into = if wanted { "into" } else { "out of" };
    if status.rescue_change.is_none()
        && let Some(why) = busy.filter(|_| status.resize.is_some() || status.rebuild.is_some())
    {
        // Taken up once the other change is done; never both waiting.
        conditions::set(
            &mut status.conditions,
            ConditionType::Rescue,
            rescued,
            Reason::RescueChanging,
            format!("moving {into} rescue mode waits for {why}"),
            now,
        );
        return RescueStep::default();
    }
    let progress = status.rescue_change.get_or_insert_with(|| RescueProgress {
        enable: wanted,
        started_at: now.to_string(),
        stopping: false,
        swapping: false,
        was_running: domain.state == Some(DomainState::Running),
    });
    if progress.enable != wanted {
        // Asked back before the domain was defined again.
        progress.enable = wanted;
        progress.swapping = false;
    }
    if let Some(why) = busy {
        progress.stopping = false;
        progress.swapping = false;
        conditions::set(
            &mut status.conditions,
            ConditionType::Rescue,
            rescued,
            Reason::RescueChanging,
            format!("moving {into} rescue mode waits for {why}"),
            now,
        );
        return RescueStep::default();
    }
    progress.stopping = true;
    progress.swapping = domain.state == Some(DomainState::Stopped);
    conditions::set(
        &mut status.conditions,
        ConditionType::Rescue,
        rescued,
        Reason::RescueChanging,
        format!("moving {into} rescue mode: stopping and defining it again"),
        now,
    );
    RescueStep {
        hold: true,
        done: false,
    }
}

/// The rescue system the domain is defined with now: the one it has until
/// a move into or out of rescue mode has seen the guest off, then the one
/// asked for (none: its own system).
pub fn rescue_layout<'a>(
    spec: &'a VirtualServerSpec,
    status: &'a VirtualServerStatus,
) -> Option<&'a RescueRequest> {
    match &status.rescue_change {
        Some(progress) if progress.swapping => spec.rescue.as_ref(),
        _ => status.rescue.as_ref(),
    }
}

/// Records that a server boots what was asked, rescue system or its own.
pub fn record_rescue_changed(status: &mut VirtualServerStatus, now: Timestamp) -> Option<bool> {
    let progress = status.rescue_change.take()?;
    let (message, reason) = if progress.enable {
        (
            "booted the rescue system; its own disk is the second disk",
            Reason::RescueEnabled,
        )
    } else {
        ("booted from its own disk again", Reason::RescueDisabled)
    };
    conditions::set(
        &mut status.conditions,
        ConditionType::Rescue,
        progress.enable,
        reason,
        message,
        now,
    );
    Some(progress.enable)
}

/// The system disk the domain is made with now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskShape<'a> {
    /// The image it is (or is to be) made from.
    pub image: &'a str,
    pub generation: u32,
    /// The generation to wipe once the domain uses this one.
    pub retired: Option<u32>,
    /// Of a restore's disk: the snapshot it is a copy of (the image only
    /// names what the system is).
    pub snapshot: Option<&'a str>,
    /// The disk generation whose cloud-init instance it carries.
    pub instance_generation: u32,
}

/// The disk the domain is made with: the one it has, until a rebuild has
/// seen the guest off; then the new one, with the old one to wipe.
pub fn disk_shape<'a>(
    spec: &'a VirtualServerSpec,
    status: &'a VirtualServerStatus,
) -> DiskShape<'a> {
    let current = DiskShape {
        image: status.image.as_deref().unwrap_or(&spec.image),
        generation: status.disk_generation,
        retired: None,
        // A server ordered from a snapshot, or restored from a backup after
        // its data was destroyed (R18): its disk, until made.
        snapshot: spec
            .from_snapshot
            .as_deref()
            .filter(|_| !status.provisioned && status.rebuild.is_none()),
        instance_generation: status.instance_generation.unwrap_or(status.disk_generation),
    };
    match &status.rebuild {
        Some(progress) if progress.swapping || progress.generation == status.disk_generation => {
            DiskShape {
                image: &progress.image,
                generation: progress.generation,
                retired: (progress.from_generation != progress.generation)
                    .then_some(progress.from_generation),
                // Only until the new disk is made: a snapshot deleted
                // after the restore made it holds nothing back.
                snapshot: progress
                    .snapshot
                    .as_deref()
                    .filter(|_| status.disk_generation != progress.generation),
                instance_generation: progress.instance_generation.unwrap_or(progress.generation),
            }
        }
        _ => current,
    }
}

/// Whether server `name`, about to have its disk made from `of` (its
/// `fromSnapshot`, not a rebuild's restore), still has to take the image
/// and cloud-init instance of the system in that copy: true only for one
/// of its own backups or snapshots (R18), whose system is the server's as
/// it was then. A server ordered from another's snapshot is a new instance
/// of its own; a restore asked by a rebuild carries them in its request.
pub fn takes_backups_system(name: &str, status: &VirtualServerStatus, of: &SnapshotOf) -> bool {
    status.rebuild.is_none()
        && of.server == name
        && (status.image.as_deref() != Some(of.image.as_str())
            || status.instance_generation != Some(of.instance_generation))
}

/// The SSH keys and user data the seed of disk `generation` gives its
/// guest: a rebuild's, where it gave them, for the disk it made; the
/// server's own otherwise (so a rebuild that has not happened yet changes
/// nothing of the running system).
pub fn guest_inputs(spec: &VirtualServerSpec, generation: u32) -> (&[String], Option<&str>) {
    match spec.rebuild.as_ref().filter(|r| r.generation == generation) {
        Some(rebuild) => (
            rebuild.ssh_keys.as_deref().unwrap_or(&spec.ssh_keys),
            rebuild.user_data.as_deref().or(spec.user_data.as_deref()),
        ),
        None => (&spec.ssh_keys, spec.user_data.as_deref()),
    }
}

/// The cloud-init instance id of a server's guest: a new one with each
/// disk generation, so cloud-init runs its first-boot modules again on a
/// rebuilt disk.
pub fn instance_id(name: &str, disk_generation: u32) -> String {
    match disk_generation {
        0 => name.to_owned(),
        generation => format!("{name}-rebuild-{generation}"),
    }
}

/// Records that the agent has defined the domain with the rebuild's disk
/// and wiped the old one.
pub fn record_disk_replaced(status: &mut VirtualServerStatus, answered_generation: Option<u32>) {
    if let Some(progress) = status.rebuild.as_mut()
        && answered_generation == Some(progress.generation)
        && status.disk_generation == progress.generation
    {
        progress.replaced = true;
    }
}

/// Records that a rebuild is finished: the condition says so, with the
/// downtime of a guest that was running.
pub fn record_rebuilt(status: &mut VirtualServerStatus, now: Timestamp) -> Option<SignedDuration> {
    let progress = status.rebuild.take()?;
    let downtime = progress
        .stopped_at
        .as_deref()
        .and_then(|at| at.parse::<Timestamp>().ok())
        .filter(|_| progress.was_running)
        .map(|stopped| now.duration_since(stopped));
    let message = match downtime {
        Some(downtime) => format!(
            "reinstalled {} (was image {}); the guest was down {} s",
            progress.source(),
            progress.from_image,
            downtime.as_secs()
        ),
        None => format!(
            "reinstalled {} (was image {})",
            progress.source(),
            progress.from_image
        ),
    };
    conditions::set(
        &mut status.conditions,
        ConditionType::Rebuilt,
        true,
        Reason::ImageApplied,
        message,
        now,
    );
    downtime
}

fn record_suspension(
    status: &mut VirtualServerStatus,
    suspension: Option<&Suspension>,
    domain: &DomainObservation,
    now: Timestamp,
) {
    let Some(suspension) = suspension else {
        let message = if domain.link == Link::UpAtNextStart {
            "its link is up in its definition only: this hypervisor cannot put a running guest's link back up, it takes effect at the next start"
        } else {
            ""
        };
        conditions::set(
            &mut status.conditions,
            ConditionType::Suspended,
            false,
            Reason::NotSuspended,
            message,
            now,
        );
        return;
    };
    if status.provisioned && domain.state.is_some() && status.phase != ServerPhase::Error {
        status.phase = ServerPhase::Suspended;
        status.reason = Some(suspension.describe());
    }
    let mut message = format!("held {}", suspension_mode_name(suspension.mode));
    if domain.link == Link::DownAtNextStart {
        message.push_str(
            "; its link is down in its definition only: this hypervisor cannot cut a running guest's link, it takes effect at the next start",
        );
    }
    let reason = suspension
        .primary()
        .map_or(Reason::NotSuspended, Reason::suspended_for);
    conditions::set(
        &mut status.conditions,
        ConditionType::Suspended,
        true,
        reason,
        message,
        now,
    );
}

fn suspension_mode_name(mode: SuspensionMode) -> &'static str {
    match mode {
        SuspensionMode::Stopped => "stopped",
        SuspensionMode::Paused => "paused",
        SuspensionMode::NetworkIsolated => "running with its network cut",
    }
}

fn agent_reachable(status: &mut VirtualServerStatus, now: Timestamp) {
    conditions::set(
        &mut status.conditions,
        ConditionType::AgentReachable,
        true,
        Reason::Answered,
        "",
        now,
    );
}

fn agent_unreachable(status: &mut VirtualServerStatus, message: &str, now: Timestamp) {
    conditions::set(
        &mut status.conditions,
        ConditionType::AgentReachable,
        false,
        Reason::AgentUnavailable,
        message,
        now,
    );
}

/// Records the addresses a server holds.
pub fn record_addresses(status: &mut VirtualServerStatus, assigned: &[Assignment], now: Timestamp) {
    for assignment in assigned {
        let address = Some(ServerAddress::from(assignment));
        match assignment.family {
            Family::V4 => status.ipv4 = address,
            Family::V6 => status.ipv6 = address,
        }
    }
    if status
        .reason
        .as_deref()
        .is_some_and(|r| r.starts_with(NO_CLEAN_ADDRESS))
    {
        status.reason = None;
        status.phase = ServerPhase::Provisioning;
    }
    let held: Vec<&str> = assigned.iter().map(|a| a.holding.as_str()).collect();
    conditions::set(
        &mut status.conditions,
        ConditionType::AddressesAssigned,
        true,
        Reason::Allocated,
        format!("holds {}", held.join(" and ")),
        now,
    );
}

/// An address of a server that a blocking DNS blacklist lists now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedAddress {
    /// The address the blacklists were asked about.
    pub address: String,
    pub zone: String,
    pub reason: String,
}

/// Records whether the blacklists list the server's addresses (R20): a
/// server holding addresses has an `AddressesClean` condition.
pub fn record_listings(status: &mut VirtualServerStatus, listed: &[ListedAddress], now: Timestamp) {
    if status.ipv4.is_none() && status.ipv6.is_none() {
        return;
    }
    let (clean, reason, message) = if listed.is_empty() {
        (true, Reason::NotListed, String::new())
    } else {
        let each: Vec<String> = listed
            .iter()
            .map(|l| format!("{} is listed by {} ({})", l.address, l.zone, l.reason))
            .collect();
        (false, Reason::Blacklisted, each.join("; "))
    };
    conditions::set(
        &mut status.conditions,
        ConditionType::AddressesClean,
        clean,
        reason,
        message,
        now,
    );
}

/// The reason of a server waiting for an address, as customers see it.
pub const NO_CLEAN_ADDRESS: &str = "no_clean_address";

/// Records that no clean address is free for the server: it waits.
pub fn record_no_clean_address(status: &mut VirtualServerStatus, why: String, now: Timestamp) {
    status.phase = ServerPhase::Pending;
    status.reason = Some(format!("{NO_CLEAN_ADDRESS}: {why}"));
    conditions::set(
        &mut status.conditions,
        ConditionType::AddressesAssigned,
        false,
        Reason::NoCleanAddress,
        why,
        now,
    );
}

/// What the domain an earlier release named after a server alone
/// (`stratus-{name}`, shared by same-named servers of every account) is to
/// a server placed then, whose domain was never recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyDomain {
    /// It carries the server's own MAC (unique across servers): its domain.
    Adopt,
    /// Another server's (another account's same-named server): never
    /// adopted, or deleting one would wipe the other's disk.
    NotOurs,
    /// There is none: the server gets a domain named as today's are.
    Absent,
}

/// Whether the legacy domain `observed` is the server's, by its MAC.
pub fn legacy_domain(server_mac: Option<&str>, observed: &DomainObservation) -> LegacyDomain {
    if observed.state.is_none() {
        return LegacyDomain::Absent;
    }
    match (server_mac, observed.mac_address.as_deref()) {
        (Some(ours), Some(theirs)) if ours.eq_ignore_ascii_case(theirs) => LegacyDomain::Adopt,
        _ => LegacyDomain::NotOurs,
    }
}

/// Records the hypervisor chosen by the scheduler, and its zone (or why
/// there is none).
pub fn record_placement(
    status: &mut VirtualServerStatus,
    placement: Result<(&HypervisorName, &str), String>,
    domain: &str,
    mac: &str,
    now: Timestamp,
) {
    match placement {
        Ok((hypervisor, zone)) => {
            status.hypervisor = Some(hypervisor.clone());
            status.zone = Some(zone.to_owned());
            status.domain = Some(domain.to_owned());
            status.mac_address = Some(mac.to_owned());
            status.phase = ServerPhase::Provisioning;
            status.reason = None;
            conditions::set(
                &mut status.conditions,
                ConditionType::Scheduled,
                true,
                Reason::Placed,
                format!("placed on {hypervisor}"),
                now,
            );
        }
        Err(why) => {
            status.phase = ServerPhase::Pending;
            conditions::set(
                &mut status.conditions,
                ConditionType::Scheduled,
                false,
                Reason::Unschedulable,
                why.clone(),
                now,
            );
            status.reason = Some(why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::ConditionStatus;

    /// The default `policy.power.shutdownGrace`: 120 s.
    const GRACE: crate::policy::PolicyDuration = crate::policy::PolicyDuration::seconds(120);
    use crate::resources::PowerState;

    const ALL_PHASES: [ServerPhase; 8] = [
        ServerPhase::Pending,
        ServerPhase::Provisioning,
        ServerPhase::Running,
        ServerPhase::Stopped,
        ServerPhase::Suspended,
        ServerPhase::Terminated,
        ServerPhase::Terminating,
        ServerPhase::Error,
    ];
    const ALL_STATES: [Option<DomainState>; 6] = [
        None,
        Some(DomainState::Running),
        Some(DomainState::Stopped),
        Some(DomainState::Paused),
        Some(DomainState::Crashed),
        Some(DomainState::Transitioning),
    ];

    fn spec(power: PowerState, reboot_requests: u32) -> VirtualServerSpec {
        VirtualServerSpec {
            power,
            reboot_requests,
            ..crate::testing::server_spec()
        }
    }

    fn placed(phase: ServerPhase, provisioned: bool) -> VirtualServerStatus {
        VirtualServerStatus {
            phase,
            hypervisor: HypervisorName::parse("hv1"),
            provisioned,
            reason: (phase == ServerPhase::Error).then(|| "the server crashed".to_owned()),
            ipv4: Some(crate::resources::ServerAddress {
                address: "192.0.2.7".into(),
                prefix: None,
                prefix_length: 24,
                gateway: "192.0.2.1".into(),
            }),
            ..Default::default()
        }
    }

    fn observed(state: Option<DomainState>, disk_present: bool) -> Observation {
        Observation::Domain(DomainObservation {
            name: "stratus-vs-1".into(),
            state,
            disk_present,
            link: Link::Up,
            disk_disposal: None,
            data_disks: Vec::new(),
            waiting_for_key: Vec::new(),
            guest_failure: None,
            mac_address: None,
            resources: None,
            disk_generation: disk_present.then_some(0),
            rescued: Some(false),
        })
    }

    /// A hypervisor as the rebuild walk sees it: what the agent keeps of
    /// one domain (its definition's disk and seed, the disks in its pool)
    /// and how it was asked to power it.
    #[derive(Debug, Clone)]
    struct RebuildHost {
        state: DomainState,
        defined: u32,
        /// The disk generation the seed in the definition was made for.
        seed_for: u32,
        /// Disks in the pool: generation → image.
        disks: std::collections::BTreeMap<u32, String>,
    }

    impl RebuildHost {
        /// The agent's `ensure`, cut short after `steps` of its steps when
        /// given (the agent killed): new disk beside the old, definition
        /// with it, the retired one wiped, then power.
        fn ensure(&mut self, shape: &DiskShape<'_>, power: PowerState, steps: Option<usize>) {
            let limit = steps.unwrap_or(usize::MAX);
            let running = self.state == DomainState::Running;
            let generation = if running {
                self.defined
            } else {
                shape.generation
            };
            let replacing = generation != self.defined;
            if limit == 0 {
                return;
            }
            if replacing {
                self.disks.insert(generation, shape.image.to_owned());
            }
            if limit == 1 {
                return;
            }
            // The definition (with the spec's seed) is written.
            if replacing || !running {
                self.defined = generation;
            }
            // A running guest's definition takes the new seed for its next
            // boot too; its disk stays.
            self.seed_for = shape.generation;
            if limit == 2 {
                return;
            }
            if let Some(retired) = shape.retired
                && retired != generation
                && generation == shape.generation
            {
                self.disks.remove(&retired);
            }
            if limit == 3 {
                return;
            }
            self.state = match power {
                PowerState::Running => DomainState::Running,
                PowerState::Stopped => DomainState::Stopped,
            };
        }

        fn observation(&self) -> Observation {
            Observation::Domain(DomainObservation {
                disk_generation: Some(self.defined),
                ..match observed(Some(self.state), self.disks.contains_key(&self.defined)) {
                    Observation::Domain(domain) => domain,
                    _ => unreachable!(),
                }
            })
        }
    }

    fn rebuild_spec(power: PowerState) -> VirtualServerSpec {
        VirtualServerSpec {
            power,
            rebuild: Some(crate::resources::RebuildRequest {
                image: "tiny".into(),
                snapshot: None,
                instance_generation: None,
                generation: 1,
                ssh_keys: None,
                user_data: None,
            }),
            ..crate::testing::server_spec()
        }
    }

    /// Walks a rebuild through the plan, carrying out each action as the
    /// controller and the agent would, except where `lost` says the
    /// action is lost, `cut` that the agent is killed after that many of
    /// its steps, and `unwritten` that the controller is killed after the
    /// agent answered. Checks at every step that the domain always has a
    /// disk, changes disk only while off, and boots a disk with the seed
    /// made for it; answers the final status, the host and how often the
    /// guest was stopped.
    fn walk_rebuild(
        power: PowerState,
        lost: &[bool],
        cut: &[Option<usize>],
        unwritten: &[bool],
    ) -> (VirtualServerStatus, RebuildHost, usize) {
        let spec = rebuild_spec(power);
        let mut status = placed(ServerPhase::Running, true);
        let mut host = RebuildHost {
            state: if power == PowerState::Running {
                DomainState::Running
            } else {
                DomainState::Stopped
            },
            defined: 0,
            seed_for: 0,
            disks: [(0, spec.image.clone())].into(),
        };
        let mut at = now();
        let mut stops = 0;
        for step in 0..300 {
            at += SignedDuration::from_secs(1);
            let decision = plan(facts_for(&spec, &status), &host.observation(), at);
            let Some(action) = decision.next else {
                if decision.recheck_in.is_some() {
                    continue;
                }
                return (decision.status, host, stops);
            };
            if lost.get(step).copied().unwrap_or(false) {
                continue;
            }
            let previous = status.clone();
            status = decision.status;
            let before = host.clone();
            match action {
                Action::EnsureDomain { .. } => {
                    let shape = disk_shape(&spec, &status);
                    let (_, power) = domain_shape(&spec, &status);
                    let steps = cut.get(step).copied().flatten();
                    host.ensure(&shape, power, steps);
                    if steps.is_none() && shape.retired.is_some() {
                        record_disk_replaced(&mut status, Some(host.defined));
                    }
                }
                Action::FinishRebuild => {
                    record_rebuilt(&mut status, at);
                }
                other => panic!("unexpected {other:?} during a rebuild"),
            }
            assert!(
                host.disks.contains_key(&host.defined),
                "the domain was left without its disk: {host:?}"
            );
            assert!(
                before.defined == host.defined || before.state != DomainState::Running,
                "the disk was changed under a running guest"
            );
            if host.state == DomainState::Running {
                assert_eq!(
                    host.seed_for, host.defined,
                    "a guest booted a disk with another disk's seed"
                );
            }
            if before.state == DomainState::Running && host.state == DomainState::Stopped {
                stops += 1;
            }
            if unwritten.get(step).copied().unwrap_or(false) {
                status = previous;
            }
        }
        panic!("the rebuild did not finish in 300 steps: {status:?} {host:?}");
    }

    #[test]
    fn rebuild_a_running_server_gets_a_fresh_disk_of_the_new_image_and_runs_again() {
        let (status, host, stops) = walk_rebuild(PowerState::Running, &[], &[], &[]);
        assert_eq!(status.rebuild, None);
        assert_eq!(status.disk_generation, 1);
        assert_eq!(status.image.as_deref(), Some("tiny"));
        assert_eq!(host.state, DomainState::Running);
        assert_eq!(host.defined, 1);
        assert_eq!(
            host.disks,
            [(1, "tiny".to_owned())].into(),
            "the old disk is gone"
        );
        assert_eq!(stops, 1);
        let rebuilt = conditions::get(&status.conditions, ConditionType::Rebuilt).unwrap();
        assert_eq!(rebuilt.status, ConditionStatus::True);
        assert!(rebuilt.message.contains("was down"), "{}", rebuilt.message);
        assert!(rebuilt.message.contains("tiny"), "{}", rebuilt.message);
        // The seed of the new disk has a new instance id.
        let spec = rebuild_spec(PowerState::Running);
        assert_eq!(disk_shape(&spec, &status).generation, 1);
        assert_ne!(instance_id("vs-1", 1), instance_id("vs-1", 0));
        assert_eq!(
            instance_id("vs-1", 0),
            "vs-1",
            "servers as ordered keep theirs"
        );
    }

    #[test]
    fn r18_a_server_made_again_from_its_own_backup_takes_the_backups_image_and_instance() {
        let backup = SnapshotOf {
            server: "vs-1".into(),
            image: "debian-12".into(),
            instance_generation: 2,
            version: 1,
            backup: true,
        };
        // Rebuilt onto another image (instance 3) after the backup.
        let mut status = VirtualServerStatus {
            image: Some("alma-9".into()),
            instance_generation: Some(3),
            ..VirtualServerStatus::default()
        };
        assert!(takes_backups_system("vs-1", &status, &backup));
        status.image = Some("debian-12".into());
        assert!(takes_backups_system("vs-1", &status, &backup));
        status.instance_generation = Some(2);
        assert!(
            !takes_backups_system("vs-1", &status, &backup),
            "taken once"
        );
        // Another server ordered from it is an instance of its own.
        let fresh = VirtualServerStatus::default();
        assert!(!takes_backups_system("vs-2", &fresh, &backup));
        // A rebuild's restore carries both in its request.
        let rebuilding = VirtualServerStatus {
            rebuild: Some(RebuildProgress {
                image: "debian-12".into(),
                generation: 4,
                snapshot: Some("st-5".into()),
                instance_generation: Some(2),
                from_image: "alma-9".into(),
                from_generation: 3,
                started_at: "2026-12-07T12:00:00Z".into(),
                stopping: false,
                swapping: false,
                replaced: false,
                was_running: false,
                stopped_at: None,
            }),
            ..VirtualServerStatus::default()
        };
        assert!(!takes_backups_system("vs-1", &rebuilding, &backup));
    }

    #[test]
    fn rebuild_a_stopped_server_stays_stopped() {
        let (status, host, stops) = walk_rebuild(PowerState::Stopped, &[], &[], &[]);
        assert_eq!(status.rebuild, None);
        assert_eq!(host.state, DomainState::Stopped);
        assert_eq!(host.defined, 1);
        assert_eq!(stops, 0);
        let rebuilt = conditions::get(&status.conditions, ConditionType::Rebuilt).unwrap();
        assert!(!rebuilt.message.contains("was down"), "{}", rebuilt.message);
    }

    #[test]
    fn rebuild_waits_for_a_suspension_an_old_agent_and_a_resize() {
        let mut held = rebuild_spec(PowerState::Running);
        held.suspension = suspended(
            &[crate::standing::SuspensionReason::NonPayment],
            SuspensionMode::Paused,
        )
        .suspension;
        let status = placed(ServerPhase::Running, true);
        let decision = plan(
            facts_for(&held, &status),
            &RebuildHost {
                state: DomainState::Paused,
                defined: 0,
                seed_for: 0,
                disks: [(0, "debian-12".to_owned())].into(),
            }
            .observation(),
            now(),
        );
        let progress = decision.status.rebuild.as_ref().unwrap();
        assert!(!progress.stopping);
        assert_eq!(disk_shape(&held, &decision.status).generation, 0);
        // An agent that does not say disk generations.
        let spec = rebuild_spec(PowerState::Running);
        let decision = plan(
            facts_for(&spec, &status),
            &observed(Some(DomainState::Running), true),
            now(),
        );
        let decision = plan(
            facts_for(&spec, &decision.status),
            &Observation::Domain(DomainObservation {
                disk_generation: None,
                ..match observed(Some(DomainState::Running), true) {
                    Observation::Domain(domain) => domain,
                    _ => unreachable!(),
                }
            }),
            now(),
        );
        assert!(!decision.status.rebuild.as_ref().unwrap().stopping);
        assert_eq!(domain_shape(&spec, &decision.status).1, PowerState::Running);
        let message = &conditions::get(&decision.status.conditions, ConditionType::Rebuilt)
            .unwrap()
            .message;
        assert!(message.contains("waits for"), "{message}");
        // A resize under way goes first; the rebuild waits for it.
        let mut resizing = micro_status();
        resizing.resize = Some(ResizeProgress {
            from: "micro".into(),
            from_resources: Some(MICRO),
            to: Some(AppliedPlan::of(&spec)),
            started_at: now().to_string(),
            room_reserved: false,
            stopping: false,
            was_running: true,
            stopped_at: None,
        });
        let decision = plan(
            facts_for(&spec, &resizing),
            &RebuildHost {
                state: DomainState::Running,
                defined: 0,
                seed_for: 0,
                disks: [(0, "debian-12".to_owned())].into(),
            }
            .observation(),
            now(),
        );
        assert_eq!(decision.status.rebuild, None, "not taken up yet");
        let message = &conditions::get(&decision.status.conditions, ConditionType::Rebuilt)
            .unwrap()
            .message;
        assert!(message.contains("resize under way"), "{message}");
    }

    #[test]
    fn rebuild_resize_and_rescue_never_wait_for_each_other() {
        let host = RebuildHost {
            state: DomainState::Running,
            defined: 0,
            seed_for: 0,
            disks: [(0, "debian-12".to_owned())].into(),
        };
        // Asked during a resize: not taken up until it is done.
        let spec = VirtualServerSpec {
            rebuild: rebuild_spec(PowerState::Running).rebuild,
            ..resized_spec(PowerState::Running)
        };
        let mut resizing = micro_status();
        resizing.resize = Some(ResizeProgress {
            from: "micro".into(),
            from_resources: Some(MICRO),
            to: Some(AppliedPlan::of(&spec)),
            started_at: now().to_string(),
            room_reserved: true,
            stopping: true,
            was_running: true,
            stopped_at: None,
        });
        let decision = plan(facts_for(&spec, &resizing), &host.observation(), now());
        assert_eq!(
            decision.status.rebuild, None,
            "not taken up during a resize"
        );
        assert!(decision.status.resize.is_some(), "the resize goes on");
        // The resize done: taken up.
        let mut done = decision.status.clone();
        done.resize = None;
        done.applied = Some(AppliedPlan::of(&spec));
        let decision = plan(facts_for(&spec, &done), &host.observation(), now());
        assert!(decision.status.rebuild.as_ref().is_some_and(|r| r.stopping));

        // Rescue asked during a rebuild: the rebuild goes on, rescue waits.
        let with_rescue = VirtualServerSpec {
            rescue: Some(RescueRequest::default()),
            ..spec.clone()
        };
        let decision = plan(
            facts_for(&with_rescue, &decision.status),
            &host.observation(),
            now(),
        );
        assert!(decision.status.rebuild.as_ref().is_some_and(|r| r.stopping));
        assert_eq!(decision.status.rescue_change, None);
        // A rebuild asked in rescue mode waits for it to be disabled.
        let mut rescued = placed(ServerPhase::Running, true);
        rescued.rescue = Some(RescueRequest::default());
        let rescued_host = RescueHost {
            state: DomainState::Running,
            rescued: true,
            rescue_seed: true,
        };
        let both = VirtualServerSpec {
            rescue: Some(RescueRequest::default()),
            ..rebuild_spec(PowerState::Running)
        };
        let decision = plan(
            facts_for(&both, &rescued),
            &rescued_host.observation(),
            now(),
        );
        assert_eq!(decision.status.rebuild, None);
        let message = &conditions::get(&decision.status.conditions, ConditionType::Rebuilt)
            .unwrap()
            .message;
        assert!(message.contains("rescue mode"), "{message}");
    }

    #[test]
    fn rebuild_withdrawn_before_the_disk_went_in_leaves_the_server_as_it_was() {
        let spec = rebuild_spec(PowerState::Running);
        let host = RebuildHost {
            state: DomainState::Running,
            defined: 0,
            seed_for: 0,
            disks: [(0, "debian-12".to_owned())].into(),
        };
        let status = placed(ServerPhase::Running, true);
        let taken = plan(facts_for(&spec, &status), &host.observation(), now());
        assert!(taken.status.rebuild.is_some());
        let withdrawn = VirtualServerSpec {
            rebuild: None,
            ..spec.clone()
        };
        let decision = plan(
            facts_for(&withdrawn, &taken.status),
            &host.observation(),
            now(),
        );
        assert_eq!(decision.status.rebuild, None);
        assert_eq!(disk_shape(&withdrawn, &decision.status).generation, 0);
        assert_eq!(
            domain_shape(&withdrawn, &decision.status).1,
            PowerState::Running
        );
    }

    #[test]
    fn a_rebuilds_keys_and_user_data_reach_only_the_disk_it_makes() {
        let mut spec = rebuild_spec(PowerState::Running);
        spec.ssh_keys = vec!["ssh-ed25519 OLD".into()];
        spec.user_data = Some("old".into());
        if let Some(rebuild) = spec.rebuild.as_mut() {
            rebuild.ssh_keys = Some(vec!["ssh-ed25519 NEW".into()]);
        }
        let (keys, user_data) = guest_inputs(&spec, 0);
        assert_eq!(
            (keys, user_data),
            (&["ssh-ed25519 OLD".to_owned()][..], Some("old"))
        );
        let (keys, user_data) = guest_inputs(&spec, 1);
        assert_eq!(
            (keys, user_data),
            (&["ssh-ed25519 NEW".to_owned()][..], Some("old"))
        );
    }

    #[test]
    fn rebuild_asked_again_before_the_disk_was_made_makes_the_last_one() {
        let mut spec = rebuild_spec(PowerState::Stopped);
        let status = placed(ServerPhase::Stopped, true);
        let host = RebuildHost {
            state: DomainState::Running,
            defined: 0,
            seed_for: 0,
            disks: [(0, "debian-12".to_owned())].into(),
        };
        let first = plan(facts_for(&spec, &status), &host.observation(), now());
        spec.rebuild = Some(crate::resources::RebuildRequest {
            image: "alpine".into(),
            snapshot: None,
            instance_generation: None,
            generation: 2,
            ssh_keys: None,
            user_data: None,
        });
        let second = plan(facts_for(&spec, &first.status), &host.observation(), now());
        let progress = second.status.rebuild.unwrap();
        assert_eq!(
            (progress.image.as_str(), progress.generation),
            ("alpine", 2)
        );
        assert_eq!(progress.from_generation, 0);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// A rebuild with lost actions, an agent killed at any of its
        /// steps and statuses never written, anywhere: the domain always
        /// has the old disk or the new one, never none, never a disk
        /// changed under a running guest or booted with another disk's
        /// seed; it ends on the new disk alone, as the customer wants it.
        #[test]
        fn rebuild_survives_kills_and_lost_steps_anywhere(
            running in proptest::bool::ANY,
            lost in proptest::collection::vec(proptest::bool::weighted(0.25), 0..40),
            cut in proptest::collection::vec(proptest::option::weighted(0.25, 0usize..4), 0..40),
            unwritten in proptest::collection::vec(proptest::bool::weighted(0.25), 0..40),
        ) {
            let power = if running { PowerState::Running } else { PowerState::Stopped };
            let (status, host, stops) = walk_rebuild(power, &lost, &cut, &unwritten);
            proptest::prop_assert_eq!(status.rebuild, None);
            proptest::prop_assert_eq!(status.disk_generation, 1);
            proptest::prop_assert_eq!(host.defined, 1);
            proptest::prop_assert_eq!(host.disks, [(1, "tiny".to_owned())].into());
            let wanted = if running { DomainState::Running } else { DomainState::Stopped };
            proptest::prop_assert_eq!(host.state, wanted);
            proptest::prop_assert!(stops <= 1, "stopped {} times", stops);
        }
    }

    /// A hypervisor as the rescue walk sees it: whether the domain is
    /// defined in rescue mode and whether its seed is the rescue one.
    #[derive(Debug, Clone)]
    struct RescueHost {
        state: DomainState,
        rescued: bool,
        rescue_seed: bool,
    }

    impl RescueHost {
        fn ensure(&mut self, rescue: bool, power: PowerState) {
            let running = self.state == DomainState::Running;
            if !running {
                self.rescued = rescue;
            }
            // The seed is written into the definition either way.
            self.rescue_seed = rescue;
            self.state = match power {
                PowerState::Running => DomainState::Running,
                PowerState::Stopped => DomainState::Stopped,
            };
        }

        fn observation(&self) -> Observation {
            Observation::Domain(DomainObservation {
                rescued: Some(self.rescued),
                ..match observed(Some(self.state), true) {
                    Observation::Domain(domain) => domain,
                    _ => unreachable!(),
                }
            })
        }
    }

    /// Walks a server into rescue mode (`enable`) or out of it, with
    /// lost actions and unwritten statuses; checks the domain changes
    /// mode only while off and never boots one mode with the other's
    /// seed. Answers the final status, host and number of stops.
    fn walk_rescue(
        enable: bool,
        power: PowerState,
        lost: &[bool],
        unwritten: &[bool],
    ) -> (VirtualServerStatus, RescueHost, usize) {
        let spec = VirtualServerSpec {
            power,
            rescue: enable.then(RescueRequest::default),
            ..crate::testing::server_spec()
        };
        let mut status = placed(ServerPhase::Running, true);
        let running = power == PowerState::Running;
        let state = if running {
            DomainState::Running
        } else {
            DomainState::Stopped
        };
        if !enable {
            status.rescue = Some(RescueRequest::default());
        }
        let mut host = RescueHost {
            state,
            rescued: !enable,
            rescue_seed: !enable,
        };
        let mut at = now();
        let mut stops = 0;
        for step in 0..200 {
            at += SignedDuration::from_secs(1);
            let decision = plan(facts_for(&spec, &status), &host.observation(), at);
            let Some(action) = decision.next else {
                if decision.recheck_in.is_some() {
                    continue;
                }
                return (decision.status, host, stops);
            };
            if lost.get(step).copied().unwrap_or(false) {
                continue;
            }
            let previous = status.clone();
            status = decision.status;
            let before = host.clone();
            match action {
                Action::EnsureDomain { .. } => {
                    let layout = rescue_layout(&spec, &status).is_some();
                    let (_, power) = domain_shape(&spec, &status);
                    host.ensure(layout, power);
                }
                Action::FinishRescue => {
                    record_rescue_changed(&mut status, at);
                }
                other => panic!("unexpected {other:?} in a move to rescue mode"),
            }
            assert!(
                before.rescued == host.rescued || before.state != DomainState::Running,
                "the mode changed under a running guest"
            );
            if host.state == DomainState::Running {
                assert_eq!(
                    host.rescue_seed, host.rescued,
                    "booted with the other mode's seed"
                );
            }
            if before.state == DomainState::Running && host.state == DomainState::Stopped {
                stops += 1;
            }
            if unwritten.get(step).copied().unwrap_or(false) {
                status = previous;
            }
        }
        panic!("the move to rescue mode did not finish: {status:?} {host:?}");
    }

    #[test]
    fn rescue_a_running_server_boots_the_rescue_system_and_then_its_own_again() {
        for enable in [true, false] {
            let (status, host, stops) = walk_rescue(enable, PowerState::Running, &[], &[]);
            assert_eq!(host.rescued, enable);
            assert_eq!(host.state, DomainState::Running);
            assert_eq!(stops, 1);
            assert_eq!(status.rescue_change, None);
            assert_eq!(status.rescue.is_some(), enable);
            let condition = conditions::get(&status.conditions, ConditionType::Rescue).unwrap();
            assert_eq!(condition.status == ConditionStatus::True, enable);
        }
    }

    #[test]
    fn rescue_waits_for_a_suspension_and_an_old_agent() {
        let mut spec = VirtualServerSpec {
            rescue: Some(RescueRequest::default()),
            ..crate::testing::server_spec()
        };
        spec.suspension = suspended(
            &[crate::standing::SuspensionReason::Abuse],
            SuspensionMode::Paused,
        )
        .suspension;
        let status = placed(ServerPhase::Running, true);
        let host = RescueHost {
            state: DomainState::Paused,
            rescued: false,
            rescue_seed: false,
        };
        let decision = plan(facts_for(&spec, &status), &host.observation(), now());
        assert!(!decision.status.rescue_change.as_ref().unwrap().stopping);
        assert!(rescue_layout(&spec, &decision.status).is_none());
        spec.suspension = None;
        let old_agent = plan(
            facts_for(&spec, &status),
            &Observation::Domain(DomainObservation {
                rescued: None,
                ..match observed(Some(DomainState::Running), true) {
                    Observation::Domain(domain) => domain,
                    _ => unreachable!(),
                }
            }),
            now(),
        );
        assert_eq!(old_agent.status.rescue_change, None);
        assert_eq!(old_agent.next, None);
        let message = &conditions::get(&old_agent.status.conditions, ConditionType::Rescue)
            .unwrap()
            .message;
        assert!(message.contains("upgrade"), "{message}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Into and out of rescue mode with lost actions and unwritten
        /// statuses anywhere: it gets there, stops the guest at most once,
        /// never changes mode under a running guest or boots a mode with
        /// the other's seed.
        #[test]
        fn rescue_survives_lost_steps_anywhere(
            enable in proptest::bool::ANY,
            running in proptest::bool::ANY,
            lost in proptest::collection::vec(proptest::bool::weighted(0.3), 0..40),
            unwritten in proptest::collection::vec(proptest::bool::weighted(0.3), 0..40),
        ) {
            let power = if running { PowerState::Running } else { PowerState::Stopped };
            let (status, host, stops) = walk_rescue(enable, power, &lost, &unwritten);
            proptest::prop_assert_eq!(host.rescued, enable);
            proptest::prop_assert_eq!(status.rescue_change, None);
            let wanted = if running { DomainState::Running } else { DomainState::Stopped };
            proptest::prop_assert_eq!(host.state, wanted);
            proptest::prop_assert!(stops <= 1);
        }
    }

    /// A hypervisor as the resize walk sees it: one domain, its power and
    /// its size, and the room the controller held.
    #[derive(Debug, Clone)]
    struct SimulatedHost {
        state: DomainState,
        resources: crate::agent_api::DomainResources,
    }

    const MICRO: ServerResources = ServerResources {
        vcpus: 1,
        memory_mib: 512,
        disk_gib: 10,
    };

    fn resized_spec(power: PowerState) -> VirtualServerSpec {
        VirtualServerSpec {
            plan: "small".into(),
            resources: ServerResources {
                vcpus: 2,
                memory_mib: 2048,
                disk_gib: 20,
            },
            power,
            ..crate::testing::server_spec()
        }
    }

    fn micro_status() -> VirtualServerStatus {
        VirtualServerStatus {
            applied: Some(AppliedPlan {
                plan: "micro".into(),
                resources: MICRO,
            }),
            ..placed(ServerPhase::Running, true)
        }
    }

    fn domain_resources(r: ServerResources) -> crate::agent_api::DomainResources {
        crate::agent_api::DomainResources {
            vcpus: r.vcpus,
            memory_mib: r.memory_mib,
            disk_gib: r.disk_gib,
        }
    }

    /// Walks a resize from micro to small through the plan, carrying out
    /// each action as the controller and the agent would, except those
    /// `lost` says fail (the agent unreachable, or the controller killed
    /// before it wrote anything). Checks at each step that the domain is
    /// only ever changed while it is off and never grows before room is
    /// held; answers the final status, the host and the steps taken.
    fn walk_resize(
        power: PowerState,
        room: bool,
        lost: &[bool],
    ) -> (VirtualServerStatus, SimulatedHost, usize) {
        walk_resize_unwritten(power, room, lost, &[])
    }

    /// [`walk_resize`], where `unwritten` says which steps' status is not
    /// written after their action was carried out (the controller killed
    /// right after the agent answered).
    fn walk_resize_unwritten(
        power: PowerState,
        room: bool,
        lost: &[bool],
        unwritten: &[bool],
    ) -> (VirtualServerStatus, SimulatedHost, usize) {
        let spec = resized_spec(power);
        let mut status = micro_status();
        let mut host = SimulatedHost {
            state: if power == PowerState::Running {
                DomainState::Running
            } else {
                DomainState::Stopped
            },
            resources: domain_resources(MICRO),
        };
        let mut at = now();
        let mut stops = 0;
        for step in 0..200 {
            at += SignedDuration::from_secs(1);
            let observation = Observation::Domain(DomainObservation {
                resources: Some(host.resources),
                ..match observed(Some(host.state), true) {
                    Observation::Domain(domain) => domain,
                    _ => unreachable!(),
                }
            });
            let decision = plan(facts_for(&spec, &status), &observation, at);
            let Some(action) = decision.next else {
                if decision.recheck_in.is_some() {
                    continue;
                }
                return (decision.status, host, step);
            };
            if lost.get(step).copied().unwrap_or(false) {
                continue;
            }
            let previous = status.clone();
            status = decision.status;
            let stopped_before = host.state == DomainState::Stopped;
            match action {
                Action::ReserveRoom if room => {
                    status.resize.as_mut().unwrap().room_reserved = true;
                }
                Action::ReserveRoom => return (status, host, step),
                Action::EnsureDomain { .. } => {
                    let (resources, power) = domain_shape(&spec, &status);
                    let reserved = status.resize.as_ref().is_some_and(|r| r.room_reserved);
                    if resources != MICRO {
                        assert!(
                            reserved || status.resize.is_none(),
                            "grown before room was held"
                        );
                    }
                    if host.state == DomainState::Stopped {
                        // The agent defines a domain that is off again.
                        let disk_gib = host.resources.disk_gib.max(resources.disk_gib);
                        host.resources = crate::agent_api::DomainResources {
                            disk_gib,
                            ..domain_resources(resources)
                        };
                    }
                    let before = host.resources;
                    host.state = match power {
                        PowerState::Stopped => DomainState::Stopped,
                        PowerState::Running => DomainState::Running,
                    };
                    assert!(
                        host.state == DomainState::Stopped || before == host.resources,
                        "resized while running"
                    );
                }
                Action::FinishResize => {
                    record_resized(&mut status, at);
                }
                other => panic!("unexpected {other:?} during a resize"),
            }
            if !stopped_before && host.state == DomainState::Stopped {
                stops += 1;
                assert!(stops <= 1, "the guest was stopped twice for one resize");
            }
            if unwritten.get(step).copied().unwrap_or(false) {
                status = previous;
            }
        }
        panic!("the resize did not finish in 200 steps: {status:?}");
    }

    #[test]
    fn r23_a_running_server_is_stopped_made_again_with_its_new_plan_and_started() {
        let (status, host, _) = walk_resize(PowerState::Running, true, &[]);
        assert_eq!(
            status.applied,
            Some(AppliedPlan::of(&resized_spec(PowerState::Running)))
        );
        assert_eq!(status.resize, None);
        assert_eq!(host.state, DomainState::Running);
        assert_eq!(
            host.resources,
            domain_resources(resized_spec(PowerState::Running).resources)
        );
        let resized = conditions::get(&status.conditions, ConditionType::Resized).unwrap();
        assert_eq!(resized.status, ConditionStatus::True);
        assert!(resized.message.contains("was down"), "{}", resized.message);
    }

    #[test]
    fn r23_a_stopped_server_is_resized_and_left_stopped_without_downtime() {
        let (status, host, _) = walk_resize(PowerState::Stopped, true, &[]);
        assert_eq!(status.resize, None);
        assert_eq!(host.state, DomainState::Stopped);
        assert_eq!(host.resources.vcpus, 2);
        let resized = conditions::get(&status.conditions, ConditionType::Resized).unwrap();
        assert!(!resized.message.contains("was down"), "{}", resized.message);
    }

    #[test]
    fn r23_without_room_the_server_runs_on_unchanged() {
        let (status, host, _) = walk_resize(PowerState::Running, false, &[]);
        assert_eq!(host.state, DomainState::Running);
        assert_eq!(host.resources, domain_resources(MICRO));
        assert_eq!(status.applied.unwrap().plan, "micro");
        assert!(status.resize.is_some_and(|r| !r.room_reserved));
        // The shape an agent is given keeps the old plan and the power.
        let mut waiting = micro_status();
        waiting.resize = Some(ResizeProgress {
            from: "micro".into(),
            from_resources: Some(MICRO),
            to: Some(AppliedPlan::of(&resized_spec(PowerState::Running))),
            started_at: now().to_string(),
            room_reserved: false,
            stopping: false,
            was_running: true,
            stopped_at: None,
        });
        assert_eq!(
            domain_shape(&resized_spec(PowerState::Running), &waiting),
            (MICRO, PowerState::Running)
        );
    }

    /// One decision on a server resizing from micro to small whose room
    /// is held, as `observed` shows its domain.
    fn decide_reserved(
        spec: &VirtualServerSpec,
        observed_resources: Option<ServerResources>,
    ) -> Decision {
        let mut status = micro_status();
        status.resize = Some(ResizeProgress {
            from: "micro".into(),
            from_resources: Some(MICRO),
            to: Some(AppliedPlan::of(spec)),
            started_at: now().to_string(),
            room_reserved: true,
            stopping: false,
            was_running: true,
            stopped_at: None,
        });
        let observation = Observation::Domain(DomainObservation {
            resources: observed_resources.map(domain_resources),
            ..match observed(Some(DomainState::Running), true) {
                Observation::Domain(domain) => domain,
                _ => unreachable!(),
            }
        });
        plan(facts_for(spec, &status), &observation, now())
    }

    #[test]
    fn r23_a_guest_is_not_stopped_for_a_resize_while_suspended_or_by_an_old_agent() {
        let mut held = resized_spec(PowerState::Running);
        held.suspension = suspended(
            &[crate::standing::SuspensionReason::NonPayment],
            SuspensionMode::Paused,
        )
        .suspension;
        let old_agent = resized_spec(PowerState::Running);
        for (spec, resources) in [(&held, Some(MICRO)), (&old_agent, None)] {
            let decision = decide_reserved(spec, resources);
            let progress = decision.status.resize.as_ref().unwrap();
            assert!(!progress.stopping, "{decision:?}");
            assert_ne!(decision.next, Some(Action::FinishResize));
            let shape = domain_shape(spec, &decision.status);
            assert_eq!(shape.0, MICRO, "the domain keeps its plan");
            let message = &conditions::get(&decision.status.conditions, ConditionType::Resized)
                .unwrap()
                .message;
            assert!(message.contains("waits for"), "{message}");
        }
        // Not powered off by a pass that ensures the domain: the spec's
        // power stands (the suspension pauses it).
        let decision = decide_reserved(&old_agent, None);
        assert_eq!(
            domain_shape(&old_agent, &decision.status).1,
            PowerState::Running
        );
    }

    #[test]
    fn r23_going_back_to_the_plan_it_runs_with_withdraws_the_resize() {
        let spec = spec(PowerState::Running, 0);
        let mut status = placed(ServerPhase::Running, true);
        status.applied = Some(AppliedPlan::of(&spec));
        status.resize = Some(ResizeProgress {
            from: spec.plan.clone(),
            from_resources: Some(spec.resources),
            to: Some(AppliedPlan {
                plan: "large".into(),
                resources: ServerResources {
                    vcpus: 8,
                    memory_mib: 8192,
                    disk_gib: 100,
                },
            }),
            started_at: now().to_string(),
            room_reserved: false,
            stopping: false,
            was_running: true,
            stopped_at: None,
        });
        let decision = plan(
            facts_for(&spec, &status),
            &observed(Some(DomainState::Running), true),
            now(),
        );
        assert_eq!(decision.status.resize, None);
        assert_eq!(decision.next, None, "no plan change is billed");
        let resized = conditions::get(&decision.status.conditions, ConditionType::Resized).unwrap();
        assert!(resized.message.contains("withdrawn"), "{}", resized.message);
    }

    #[test]
    fn r23_a_spec_edited_to_a_smaller_disk_is_refused_and_the_server_runs_on() {
        let mut spec = resized_spec(PowerState::Running);
        spec.resources.disk_gib = 5;
        let decision = plan(
            facts_for(&spec, &micro_status()),
            &observed(Some(DomainState::Running), true),
            now(),
        );
        assert_eq!(decision.status.resize, None);
        assert_eq!(decision.next, None);
        assert_eq!(
            domain_shape(&spec, &decision.status),
            (MICRO, PowerState::Running)
        );
        let resized = conditions::get(&decision.status.conditions, ConditionType::Resized).unwrap();
        assert_eq!(resized.reason, Reason::Invalid.as_str());
    }

    #[test]
    fn r23_a_plan_edited_by_hand_takes_the_catalogues_resources_or_is_refused() {
        let status = micro_status();
        // kubectl edit of spec.plan alone: the resources come from the catalogue.
        let edited = VirtualServerSpec {
            plan: "small".into(),
            resources: MICRO,
            ..resized_spec(PowerState::Running)
        };
        let small = resized_spec(PowerState::Running).resources;
        assert_eq!(
            resources_for_edited_plan(&edited, &status, Some(small)),
            Some(small)
        );
        // Both edited (or asked through the API): nothing to fill in.
        let both = resized_spec(PowerState::Running);
        assert_eq!(resources_for_edited_plan(&both, &status, Some(small)), None);
        // A plan the catalogue does not offer: never moved to it.
        let decision = plan(
            ServerFacts {
                offered: None,
                ..facts_for(&both, &status)
            },
            &observed(Some(DomainState::Running), true),
            now(),
        );
        assert_eq!(decision.status.resize, None);
        assert_eq!(decision.next, None);
        let resized = conditions::get(&decision.status.conditions, ConditionType::Resized).unwrap();
        assert!(
            resized.message.contains("not offered"),
            "{}",
            resized.message
        );
    }

    #[test]
    fn r23_a_server_older_than_resizes_records_the_plan_it_runs_with() {
        let spec = spec(PowerState::Running, 0);
        let status = placed(ServerPhase::Running, true);
        let decision = plan(
            facts_for(&spec, &status),
            &observed(Some(DomainState::Running), true),
            now(),
        );
        assert_eq!(decision.status.applied, Some(AppliedPlan::of(&spec)));
        assert_eq!(decision.status.resize, None);
        assert_eq!(decision.next, None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Lost actions (an unreachable agent, a controller killed between
        /// deciding and acting) and statuses never written (killed after
        /// acting) anywhere in a resize: it still finishes, the domain only
        /// ever changes while off, the guest is stopped once, and it ends
        /// as the customer wants it, with the new plan.
        #[test]
        fn r23_a_resize_survives_lost_steps_anywhere(
            running in proptest::bool::ANY,
            lost in proptest::collection::vec(proptest::bool::weighted(0.3), 0..40),
            unwritten in proptest::collection::vec(proptest::bool::weighted(0.3), 0..40),
        ) {
            let power = if running { PowerState::Running } else { PowerState::Stopped };
            let (status, host, _) = walk_resize_unwritten(power, true, &lost, &unwritten);
            let spec = resized_spec(power);
            proptest::prop_assert_eq!(status.applied, Some(AppliedPlan::of(&spec)));
            proptest::prop_assert_eq!(status.resize, None);
            proptest::prop_assert_eq!(host.resources, domain_resources(spec.resources));
            let wanted = if running { DomainState::Running } else { DomainState::Stopped };
            proptest::prop_assert_eq!(host.state, wanted);
        }
    }

    #[test]
    fn attached_storage_is_made_a_disk_and_its_detachment_followed() {
        let spec = spec(PowerState::Running, 0);
        let status = placed(ServerPhase::Running, true);
        let wanted = vec!["st-00000000000000a1".to_owned()];
        let decide_with = |observed_disks: Vec<String>| {
            let observation = Observation::Domain(DomainObservation {
                data_disks: observed_disks,
                ..match observed(Some(DomainState::Running), true) {
                    Observation::Domain(domain) => domain,
                    _ => unreachable!(),
                }
            });
            plan(
                ServerFacts {
                    data_disks: &wanted,
                    keyed_disks: &[],
                    ..facts_for(&spec, &status)
                },
                &observation,
                now(),
            )
        };
        let missing = decide_with(Vec::new());
        assert!(
            matches!(
                missing.next,
                Some(Action::EnsureDomain {
                    power_off: false,
                    ..
                })
            ),
            "{missing:?}"
        );
        assert!(missing.status.attached_storage.is_empty());
        let attached = decide_with(wanted.clone());
        assert_eq!(attached.next, None);
        assert_eq!(attached.status.attached_storage, wanted);
        // Detached on the way (another's disk, or one no longer wanted).
        let extra = decide_with(vec![wanted[0].clone(), "st-00000000000000b2".into()]);
        assert!(matches!(extra.next, Some(Action::EnsureDomain { .. })));
    }

    #[test]
    fn r25_a_luks_disk_without_its_key_does_not_keep_the_server_from_converging() {
        let spec = spec(PowerState::Running, 0);
        let status = placed(ServerPhase::Running, true);
        let wanted = vec!["st-00000000000000a1".to_owned()];
        let decide = |keyed: &[String], attached: Vec<String>| {
            let observation = Observation::Domain(DomainObservation {
                data_disks: attached,
                ..match observed(Some(DomainState::Running), true) {
                    Observation::Domain(domain) => domain,
                    _ => unreachable!(),
                }
            });
            plan(
                ServerFacts {
                    data_disks: &wanted,
                    keyed_disks: keyed,
                    ..facts_for(&spec, &status)
                },
                &observation,
                now(),
            )
            .next
        };
        // Its key is not loaded: nothing to do without it.
        assert_eq!(decide(&wanted, Vec::new()), None);
        // The key is loaded: plugged in.
        assert!(matches!(
            decide(&[], Vec::new()),
            Some(Action::EnsureDomain { .. })
        ));
        assert_eq!(decide(&[], wanted.clone()), None);
        assert_eq!(decide(&wanted, wanted.clone()), None);
    }

    fn facts_for<'a>(
        spec: &'a VirtualServerSpec,
        status: &'a VirtualServerStatus,
    ) -> ServerFacts<'a> {
        ServerFacts {
            spec,
            status,
            generation: Some(1),
            has_finalizer: true,
            deleting: false,
            shutdown_grace: GRACE,
            data_disks: &[],
            keyed_disks: &[],
            offered: Some(spec.resources),
        }
    }

    fn observed_link(state: DomainState, link: Link) -> Observation {
        Observation::Domain(DomainObservation {
            link,
            ..match observed(Some(state), true) {
                Observation::Domain(domain) => domain,
                _ => unreachable!(),
            }
        })
    }

    fn suspended(
        reasons: &[crate::standing::SuspensionReason],
        mode: SuspensionMode,
    ) -> VirtualServerSpec {
        VirtualServerSpec {
            suspension: Some(Suspension {
                reasons: reasons.to_vec(),
                mode,
            }),
            ..spec(PowerState::Running, 0)
        }
    }

    fn decide_suspended(
        spec: &VirtualServerSpec,
        status: &VirtualServerStatus,
        observation: &Observation,
    ) -> Decision {
        decide(spec, status, true, false, observation)
    }

    fn suspended_condition(status: &VirtualServerStatus) -> (ConditionStatus, String, String) {
        let condition = status
            .conditions
            .iter()
            .find(|c| c.type_ == ConditionType::Suspended)
            .expect("a Suspended condition");
        (
            condition.status,
            condition.reason.clone(),
            condition.message.clone(),
        )
    }

    #[test]
    fn r5_an_abuse_suspension_cuts_the_link_and_never_powers_the_server_off() {
        use crate::standing::SuspensionReason::Abuse;
        let spec = suspended(&[Abuse], SuspensionMode::NetworkIsolated);
        let status = placed(ServerPhase::Running, true);
        let decision = decide_suspended(
            &spec,
            &status,
            &observed_link(DomainState::Running, Link::Up),
        );
        assert_eq!(
            decision.next,
            Some(Action::EnsureDomain {
                create_disk: false,
                power_off: false
            })
        );
        assert_eq!(
            decision.status.stop_requested_at, None,
            "no shutdown is asked"
        );

        for link in [Link::Down, Link::DownAtNextStart] {
            let decision =
                decide_suspended(&spec, &status, &observed_link(DomainState::Running, link));
            assert_eq!(decision.next, None, "{link:?}: held as asked");
            assert_eq!(decision.status.phase, ServerPhase::Suspended);
            assert_eq!(
                decision.status.reason.as_deref(),
                Some("suspended for abuse")
            );
            let (status, reason, message) = suspended_condition(&decision.status);
            assert_eq!((status, reason.as_str()), (ConditionStatus::True, "Abuse"));
            assert_eq!(
                message.contains("next start"),
                link == Link::DownAtNextStart,
                "{message}"
            );
        }
    }

    #[test]
    fn r1_a_non_payment_suspension_shuts_the_server_down_then_powers_it_off() {
        use crate::standing::SuspensionReason::NonPayment;
        let spec = suspended(&[NonPayment], SuspensionMode::Stopped);
        let running = observed(Some(DomainState::Running), true);
        let first = decide_suspended(&spec, &placed(ServerPhase::Running, true), &running);
        assert_eq!(
            first.next,
            Some(Action::EnsureDomain {
                create_disk: false,
                power_off: false
            })
        );
        let mut waited = first.status.clone();
        waited.stop_requested_at = Some((now() - SignedDuration::from_secs(120)).to_string());
        let forced = decide_suspended(&spec, &waited, &running);
        assert_eq!(
            forced.next,
            Some(Action::EnsureDomain {
                create_disk: false,
                power_off: true
            })
        );

        let held = decide_suspended(&spec, &waited, &observed(Some(DomainState::Stopped), true));
        assert_eq!(held.next, None);
        assert_eq!(held.status.phase, ServerPhase::Suspended);
        assert_eq!(
            held.status.reason.as_deref(),
            Some("suspended for non-payment")
        );
        assert_eq!(suspended_condition(&held.status).1, "NonPayment");
        let ready = held
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == ConditionType::Ready);
        assert_eq!(ready.map(|c| c.reason.as_str()), Some("NonPayment"));
    }

    #[test]
    fn a_paused_suspension_freezes_a_running_server_and_leaves_a_stopped_one_off() {
        use crate::standing::SuspensionReason::Legal;
        let spec = suspended(&[Legal], SuspensionMode::Paused);
        let status = placed(ServerPhase::Running, true);
        let running = decide_suspended(&spec, &status, &observed(Some(DomainState::Running), true));
        assert!(matches!(
            running.next,
            Some(Action::EnsureDomain {
                power_off: false,
                ..
            })
        ));
        assert_eq!(
            running.status.stop_requested_at, None,
            "pausing asks no shutdown"
        );
        for state in [DomainState::Paused, DomainState::Stopped] {
            let held = decide_suspended(&spec, &status, &observed(Some(state), true));
            assert_eq!(held.next, None, "{state:?}");
            assert_eq!(held.status.phase, ServerPhase::Suspended);
        }
    }

    #[test]
    fn several_reasons_show_the_first_and_every_one_in_the_reason() {
        use crate::standing::SuspensionReason::{Abuse, NonPayment};
        let spec = suspended(&[NonPayment, Abuse], SuspensionMode::Stopped);
        let held = decide_suspended(
            &spec,
            &placed(ServerPhase::Suspended, true),
            &observed(Some(DomainState::Stopped), true),
        );
        assert_eq!(
            held.status.reason.as_deref(),
            Some("suspended for non-payment; for abuse")
        );
        assert_eq!(suspended_condition(&held.status).1, "NonPayment");
    }

    #[test]
    fn r4_lifting_a_suspension_restores_the_customers_power_choice() {
        let status = placed(ServerPhase::Suspended, true);
        let lifted = decide_suspended(
            &spec(PowerState::Running, 0),
            &status,
            &observed_link(DomainState::Stopped, Link::Up),
        );
        assert_eq!(
            lifted.next,
            Some(Action::EnsureDomain {
                create_disk: false,
                power_off: false
            })
        );
        assert_eq!(lifted.status.phase, ServerPhase::Stopped);
        assert_eq!(
            suspended_condition(&lifted.status).0,
            ConditionStatus::False
        );

        let reconnect = decide_suspended(
            &spec(PowerState::Running, 0),
            &status,
            &observed_link(DomainState::Running, Link::Down),
        );
        assert!(reconnect.next.is_some(), "a cut link is put back up");

        let stayed_off = decide_suspended(
            &spec(PowerState::Stopped, 0),
            &status,
            &observed_link(DomainState::Stopped, Link::Up),
        );
        assert_eq!(
            stayed_off.next, None,
            "a server the customer stopped stays stopped"
        );
        assert_eq!(stayed_off.status.phase, ServerPhase::Stopped);
    }

    fn now() -> Timestamp {
        crate::clock::test_time()
    }

    fn decide(
        spec: &VirtualServerSpec,
        status: &VirtualServerStatus,
        finalizer: bool,
        deleting: bool,
        obs: &Observation,
    ) -> Decision {
        plan(
            ServerFacts {
                spec,
                status,
                generation: Some(3),
                has_finalizer: finalizer,
                deleting,
                shutdown_grace: GRACE,
                data_disks: &[],
                keyed_disks: &[],
                offered: Some(spec.resources),
            },
            obs,
            now(),
        )
    }

    /// R14: a terminated server whose wipe is due is torn down like a
    /// deleted one, then its holdings are given back once and it stays,
    /// listed as terminated, until the record is forgotten.
    #[test]
    fn r14_a_terminated_server_is_wiped_and_stays_listed_as_terminated() {
        let mut spec = spec(PowerState::Running, 0);
        spec.termination = Some(crate::resources::ServerTermination {
            cause: crate::standing::TerminationCause::Abuse,
            at: now().to_string(),
            wipe_at: now().to_string(),
            wipe: false,
        });
        let status = placed(ServerPhase::Terminated, true);
        let held = decide(
            &spec,
            &status,
            true,
            false,
            &observed(Some(DomainState::Stopped), true),
        );
        assert_eq!(held.next, None, "held off until the wipe is due");
        assert_eq!(held.status.phase, ServerPhase::Terminated);

        spec.termination.as_mut().unwrap().wipe = true;
        let with_disk = decide(
            &spec,
            &status,
            true,
            false,
            &observed(Some(DomainState::Stopped), true),
        );
        assert_eq!(with_disk.next, Some(Action::Destroy));
        assert_eq!(with_disk.status.phase, ServerPhase::Terminated);
        let unreachable = decide(
            &spec,
            &status,
            true,
            false,
            &Observation::AgentUnavailable("down".into()),
        );
        assert_eq!(
            unreachable.next, None,
            "nothing is released before the disk is gone"
        );
        let gone = decide(&spec, &status, true, false, &observed(None, false));
        assert_eq!(gone.next, Some(Action::ReleaseTerminated));
        assert_eq!(
            gone.status.reason.as_deref(),
            Some("terminated (abuse); its disk is being wiped")
        );

        let mut released = gone.status.clone();
        released.hypervisor = None;
        released.wiped_at = Some(now().to_string());
        let after = decide(&spec, &released, true, false, &Observation::NotPlaced);
        assert_eq!(after.next, None, "released once");
        assert_eq!(after.status.phase, ServerPhase::Terminated);
        assert!(
            after
                .status
                .reason
                .unwrap()
                .contains("its disk was wiped at")
        );

        let forgotten = decide(&spec, &released, true, true, &Observation::NotPlaced);
        assert_eq!(
            forgotten.next,
            Some(Action::RemoveFinalizer),
            "deleted when the record is forgotten"
        );
    }

    /// Every phase × every observation × power × provisioned × deleting, with
    /// the invariants that must hold in all of them.
    #[test]
    fn invariants_hold_for_every_phase_and_observation() {
        let mut observations = vec![
            Observation::NotPlaced,
            Observation::AgentUnavailable("timeout".into()),
        ];
        for state in ALL_STATES {
            for disk in [false, true] {
                observations.push(observed(state, disk));
            }
        }
        let mut cases = 0;
        for phase in ALL_PHASES {
            for obs in &observations {
                for power in [PowerState::Running, PowerState::Stopped] {
                    for provisioned in [false, true] {
                        for deleting in [false, true] {
                            for finalizer in [false, true] {
                                cases += 1;
                                let spec = spec(power, 0);
                                let mut status = placed(phase, provisioned);
                                if *obs == Observation::NotPlaced {
                                    status.hypervisor = None;
                                }
                                let d = decide(&spec, &status, finalizer, deleting, obs);
                                let ctx = format!(
                                    "{phase:?} {obs:?} {power:?} prov={provisioned} del={deleting} fin={finalizer}: {d:?}"
                                );
                                assert_eq!(d.status.observed_generation, Some(3), "{ctx}");
                                if deleting {
                                    assert_eq!(d.status.phase, ServerPhase::Terminating, "{ctx}");
                                    assert!(
                                        d.next.iter().all(|a| matches!(
                                            a,
                                            Action::Destroy | Action::RemoveFinalizer
                                        )),
                                        "{ctx}"
                                    );
                                    let leftovers = matches!(obs, Observation::Domain(o) if o.state.is_some() || o.disk_present);
                                    assert_eq!(d.next == Some(Action::Destroy), leftovers, "{ctx}");
                                    let gone = matches!(obs, Observation::NotPlaced)
                                        || matches!(obs, Observation::Domain(o) if o.state.is_none() && !o.disk_present);
                                    assert_eq!(
                                        d.next == Some(Action::RemoveFinalizer),
                                        gone && finalizer,
                                        "{ctx}"
                                    );
                                    continue;
                                }
                                if !finalizer {
                                    assert_eq!(d.next, Some(Action::AddFinalizer), "{ctx}");
                                    continue;
                                }
                                assert_ne!(d.next, Some(Action::Destroy), "{ctx}");
                                assert_ne!(d.next, Some(Action::RemoveFinalizer), "{ctx}");
                                match obs {
                                    Observation::NotPlaced => {
                                        assert_eq!(d.next, Some(Action::Schedule), "{ctx}");
                                        assert_eq!(d.status.phase, ServerPhase::Pending, "{ctx}");
                                    }
                                    Observation::AgentUnavailable(_) => {
                                        assert!(d.next.is_none(), "{ctx}");
                                        assert!(
                                            !conditions::is_true(
                                                &d.status.conditions,
                                                ConditionType::AgentReachable
                                            ),
                                            "{ctx}"
                                        );
                                        if !provisioned {
                                            assert_eq!(
                                                d.status.phase,
                                                ServerPhase::Provisioning,
                                                "{ctx}"
                                            );
                                        } else {
                                            assert_eq!(d.status.phase, phase, "{ctx}");
                                        }
                                    }
                                    Observation::Domain(o) => {
                                        assert!(
                                            conditions::is_true(
                                                &d.status.conditions,
                                                ConditionType::AgentReachable
                                            ),
                                            "{ctx}"
                                        );
                                        // Never create a disk for a server whose disk existed.
                                        if provisioned {
                                            assert!(
                                                !matches!(
                                                    d.next,
                                                    Some(Action::EnsureDomain {
                                                        create_disk: true,
                                                        ..
                                                    })
                                                ),
                                                "{ctx}"
                                            );
                                        }
                                        if provisioned && !o.disk_present {
                                            assert_eq!(d.status.phase, ServerPhase::Error, "{ctx}");
                                            assert!(
                                                d.status
                                                    .reason
                                                    .as_deref()
                                                    .unwrap_or("")
                                                    .contains("disk"),
                                                "{ctx}"
                                            );
                                            assert!(d.next.is_none(), "{ctx}");
                                            continue;
                                        }
                                        assert!(d.status.provisioned || !o.disk_present, "{ctx}");
                                        let wanted = match power {
                                            PowerState::Running => DomainState::Running,
                                            PowerState::Stopped => DomainState::Stopped,
                                        };
                                        let ensure = d
                                            .next
                                            .iter()
                                            .any(|a| matches!(a, Action::EnsureDomain { .. }));
                                        assert_eq!(ensure, o.state != Some(wanted), "{ctx}");
                                        assert_eq!(
                                            d.status.phase == ServerPhase::Running,
                                            o.disk_present && o.state == Some(DomainState::Running),
                                            "{ctx}"
                                        );
                                        assert_eq!(
                                            conditions::is_true(
                                                &d.status.conditions,
                                                ConditionType::Ready
                                            ),
                                            d.status.phase == ServerPhase::Running,
                                            "{ctx}"
                                        );
                                        if d.status.phase == ServerPhase::Error {
                                            assert!(d.status.reason.is_some(), "{ctx}");
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(cases, ALL_PHASES.len() * 14 * 2 * 2 * 2 * 2);
    }

    #[test]
    fn new_server_gets_finalizer_then_schedule_then_disk() {
        let spec = spec(PowerState::Running, 0);
        let fresh = VirtualServerStatus::default();
        assert_eq!(
            decide(&spec, &fresh, false, false, &Observation::NotPlaced).next,
            Some(Action::AddFinalizer)
        );
        assert_eq!(
            decide(&spec, &fresh, true, false, &Observation::NotPlaced).next,
            Some(Action::Schedule)
        );
        // Placed: the addresses are held before the domain is created.
        let unnumbered = VirtualServerStatus {
            ipv4: None,
            ..placed(ServerPhase::Provisioning, false)
        };
        assert_eq!(
            decide(&spec, &unnumbered, true, false, &observed(None, false)).next,
            Some(Action::AssignAddresses)
        );
        let d = decide(
            &spec,
            &placed(ServerPhase::Provisioning, false),
            true,
            false,
            &observed(None, false),
        );
        assert_eq!(
            d.next,
            Some(Action::EnsureDomain {
                create_disk: true,
                power_off: false
            })
        );
        assert_eq!(d.status.phase, ServerPhase::Provisioning);
        let d = decide(
            &spec,
            &d.status,
            true,
            false,
            &observed(Some(DomainState::Running), true),
        );
        assert!(d.next.is_none());
        assert_eq!(d.status.phase, ServerPhase::Running);
        assert!(d.status.provisioned);
        assert!(conditions::is_true(
            &d.status.conditions,
            ConditionType::Provisioned
        ));
    }

    #[test]
    fn crash_after_disk_creation_is_adopted_not_duplicated() {
        // The agent created the disk and domain, then the controller died
        // before recording it: the next pass adopts what exists.
        let spec = spec(PowerState::Running, 0);
        let d = decide(
            &spec,
            &placed(ServerPhase::Provisioning, false),
            true,
            false,
            &observed(Some(DomainState::Running), true),
        );
        assert!(d.next.is_none());
        assert!(d.status.provisioned);
        assert_eq!(d.status.phase, ServerPhase::Running);
    }

    #[test]
    fn vanished_domain_definition_is_redefined_without_new_disk() {
        let spec = spec(PowerState::Running, 0);
        let d = decide(
            &spec,
            &placed(ServerPhase::Running, true),
            true,
            false,
            &observed(None, true),
        );
        assert_eq!(
            d.next,
            Some(Action::EnsureDomain {
                create_disk: false,
                power_off: false
            })
        );
    }

    #[test]
    fn vanished_disk_is_an_error_with_reason() {
        let spec = spec(PowerState::Running, 0);
        let d = decide(
            &spec,
            &placed(ServerPhase::Running, true),
            true,
            false,
            &observed(Some(DomainState::Running), false),
        );
        assert_eq!(d.status.phase, ServerPhase::Error);
        assert!(d.status.reason.unwrap().contains("missing on hv1"));
        assert!(d.next.is_none());
    }

    #[test]
    fn stop_and_start_follow_the_spec() {
        let d = decide(
            &spec(PowerState::Stopped, 0),
            &placed(ServerPhase::Running, true),
            true,
            false,
            &observed(Some(DomainState::Running), true),
        );
        assert_eq!(
            d.next,
            Some(Action::EnsureDomain {
                create_disk: false,
                power_off: false
            })
        );
        let d = decide(
            &spec(PowerState::Stopped, 0),
            &placed(ServerPhase::Running, true),
            true,
            false,
            &observed(Some(DomainState::Stopped), true),
        );
        assert!(d.next.is_none());
        assert_eq!(d.status.phase, ServerPhase::Stopped);
        let d = decide(
            &spec(PowerState::Running, 0),
            &placed(ServerPhase::Stopped, true),
            true,
            false,
            &observed(Some(DomainState::Stopped), true),
        );
        assert_eq!(
            d.next,
            Some(Action::EnsureDomain {
                create_disk: false,
                power_off: false
            })
        );
    }

    #[test]
    fn each_reboot_request_reboots_once() {
        let spec = spec(PowerState::Running, 2);
        let mut status = placed(ServerPhase::Running, true);
        status.reboots_done = 1;
        let d = decide(
            &spec,
            &status,
            true,
            false,
            &observed(Some(DomainState::Running), true),
        );
        assert_eq!(d.next, Some(Action::Reboot));
        assert_eq!(d.status.reboots_done, 2);
        let d = decide(
            &spec,
            &d.status,
            true,
            false,
            &observed(Some(DomainState::Running), true),
        );
        assert!(d.next.is_none());
    }

    #[test]
    fn reboot_of_a_stopped_server_is_moot() {
        let spec = spec(PowerState::Stopped, 1);
        let d = decide(
            &spec,
            &placed(ServerPhase::Stopped, true),
            true,
            false,
            &observed(Some(DomainState::Stopped), true),
        );
        assert!(d.next.is_none());
        assert_eq!(d.status.reboots_done, 1);
    }

    #[test]
    fn unreachable_agent_keeps_provisioning_with_a_condition() {
        let spec = spec(PowerState::Running, 0);
        let d = decide(
            &spec,
            &placed(ServerPhase::Provisioning, false),
            true,
            false,
            &Observation::AgentUnavailable("connection refused".into()),
        );
        assert_eq!(d.status.phase, ServerPhase::Provisioning);
        let cond = d
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == ConditionType::AgentReachable)
            .unwrap();
        assert_eq!(cond.status, conditions::ConditionStatus::False);
        assert_eq!(cond.message, "connection refused");
    }

    #[test]
    fn deletion_destroys_then_releases() {
        let spec = spec(PowerState::Running, 0);
        let status = placed(ServerPhase::Running, true);
        let d = decide(
            &spec,
            &status,
            true,
            true,
            &observed(Some(DomainState::Running), true),
        );
        assert_eq!(d.next, Some(Action::Destroy));
        let d = decide(&spec, &status, true, true, &observed(None, false));
        assert_eq!(d.next, Some(Action::RemoveFinalizer));
        let d = decide(
            &spec,
            &status,
            true,
            true,
            &Observation::AgentUnavailable("down".into()),
        );
        assert!(d.next.is_none());
    }

    #[test]
    fn a_legacy_domain_is_adopted_only_with_the_servers_own_mac() {
        let mut domain = DomainObservation::absent("stratus-vs-1");
        assert_eq!(
            legacy_domain(Some("52:54:00:00:00:01"), &domain),
            LegacyDomain::Absent
        );
        domain.state = Some(DomainState::Running);
        domain.mac_address = Some("52:54:00:00:00:01".into());
        assert_eq!(
            legacy_domain(Some("52:54:00:00:00:01"), &domain),
            LegacyDomain::Adopt
        );
        assert_eq!(
            legacy_domain(Some("52:54:00:00:00:02"), &domain),
            LegacyDomain::NotOurs
        );
        assert_eq!(legacy_domain(None, &domain), LegacyDomain::NotOurs);
        domain.mac_address = None;
        assert_eq!(
            legacy_domain(Some("52:54:00:00:00:01"), &domain),
            LegacyDomain::NotOurs
        );
    }

    #[test]
    fn placement_is_recorded_with_reason_when_impossible() {
        let mut status = VirtualServerStatus::default();
        record_placement(
            &mut status,
            Err("no room".into()),
            "stratus-acc-1.vs-1",
            "52:54:00:00:00:01",
            now(),
        );
        assert_eq!(status.phase, ServerPhase::Pending);
        assert_eq!(status.reason.as_deref(), Some("no room"));
        assert!(status.hypervisor.is_none());
        assert!(status.domain.is_none());
        let hv1 = HypervisorName::parse("hv1").unwrap();
        record_placement(
            &mut status,
            Ok((&hv1, "par1")),
            "stratus-acc-1.vs-1",
            "52:54:00:00:00:01",
            now(),
        );
        assert_eq!(status.hypervisor, Some(hv1));
        assert_eq!(status.zone.as_deref(), Some("par1"), "where it runs");
        assert_eq!(status.domain.as_deref(), Some("stratus-acc-1.vs-1"));
        assert_eq!(status.phase, ServerPhase::Provisioning);
        assert!(status.reason.is_none());
        assert!(conditions::is_true(
            &status.conditions,
            ConditionType::Scheduled
        ));
    }

    #[test]
    fn a_stop_is_requested_once_then_forced_after_the_grace_period() {
        let t0 = now();
        let spec = spec(PowerState::Stopped, 0);
        let mut status = placed(ServerPhase::Running, true);
        let running = observed(Some(DomainState::Running), true);
        fn facts<'a>(
            spec: &'a VirtualServerSpec,
            status: &'a VirtualServerStatus,
        ) -> ServerFacts<'a> {
            ServerFacts {
                spec,
                status,
                generation: Some(2),
                has_finalizer: true,
                deleting: false,
                shutdown_grace: GRACE,
                data_disks: &[],
                keyed_disks: &[],
                offered: Some(spec.resources),
            }
        }
        let d = plan(facts(&spec, &status), &running, t0);
        assert_eq!(
            d.next,
            Some(Action::EnsureDomain {
                create_disk: false,
                power_off: false
            }),
            "ask the guest (ACPI), do not wait for it"
        );
        status = d.status;
        assert!(status.stop_requested_at.is_some());

        let later = t0 + SignedDuration::from_secs(30);
        let d = plan(facts(&spec, &status), &running, later);
        assert_eq!(d.next, None, "the request stands; no second ACPI press");
        assert_eq!(d.recheck_in, Some(SHUTDOWN_POLL));
        let almost = t0 + SignedDuration::from_secs(120) - SignedDuration::from_secs(2);
        assert_eq!(
            plan(facts(&spec, &status), &running, almost).recheck_in,
            Some(SignedDuration::from_secs(2))
        );

        let d = plan(
            facts(&spec, &status),
            &running,
            t0 + SignedDuration::from_secs(120),
        );
        assert_eq!(
            d.next,
            Some(Action::EnsureDomain {
                create_disk: false,
                power_off: true
            }),
            "the guest ignored the request: power it off"
        );
        let stopped = observed(Some(DomainState::Stopped), true);
        let d = plan(
            facts(&spec, &d.status),
            &stopped,
            t0 + SignedDuration::from_secs(120),
        );
        assert_eq!(d.next, None);
        assert_eq!(d.recheck_in, None);
        assert_eq!(d.status.stop_requested_at, None, "a later stop asks again");
        assert_eq!(d.status.phase, ServerPhase::Stopped);
    }
}
