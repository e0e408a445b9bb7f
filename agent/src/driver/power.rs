//! A domain brought to the power state its spec asks for.

use super::*;

pub(crate) fn map_state(state: virt::domain::DomainStateEnum) -> DomainState {
    use virt::domain::DomainState as S;
    match state {
        virt::enumutil::Enum::Known(S::Running | S::Blocked) => DomainState::Running,
        virt::enumutil::Enum::Known(S::Paused) => DomainState::Paused,
        virt::enumutil::Enum::Known(S::Shutoff) => DomainState::Stopped,
        virt::enumutil::Enum::Known(S::Crashed) => DomainState::Crashed,
        _ => DomainState::Transitioning,
    }
}

impl Driver {
    /// Never waits for a guest: a shutdown is requested (ACPI) and the
    /// answer says the domain is still running; the controller looks again
    /// and asks for `power_off` once the guest had its grace period.
    pub(super) fn converge_power(
        &self,
        name: &str,
        domain: &Domain,
        target: Target,
        power_off: bool,
    ) -> Result<(), AgentError> {
        let state = map_state(domain.state()?.0);
        if target.reached(state) {
            return Ok(());
        }
        match (target, state) {
            (Target::Running, DomainState::Paused) => domain.resume()?,
            (Target::Running, DomainState::Stopped | DomainState::Crashed) => {
                self.check_filtered(name, domain)?;
                if domain.is_active()? {
                    domain.destroy()?;
                }
                domain.create()?;
                tracing::info!(domain = name, "started domain");
            }
            // Still shutting down: started (or paused) on a later call, once it is off.
            (Target::Running | Target::Paused, DomainState::Transitioning) => {}
            (Target::Paused, DomainState::Running) => {
                domain.suspend()?;
                tracing::info!(domain = name, "paused domain");
            }
            (Target::Paused | Target::Stopped, DomainState::Crashed)
            | (Target::Stopped, DomainState::Paused) => {
                if domain.is_active()? {
                    domain.destroy()?;
                }
            }
            (Target::Stopped, DomainState::Running | DomainState::Transitioning) => {
                if power_off {
                    domain.destroy()?;
                    tracing::warn!(domain = name, "powered off a guest that did not shut down");
                } else if let Err(e) = domain.shutdown() {
                    if domain.is_active()? {
                        tracing::warn!(domain = name, error = %e, "ACPI shutdown refused; powering off");
                        domain.destroy()?;
                    }
                } else {
                    tracing::info!(domain = name, "asked the guest to shut down");
                }
            }
            // Reached: returned above.
            (Target::Running, DomainState::Running)
            | (Target::Paused, DomainState::Paused | DomainState::Stopped)
            | (Target::Stopped, DomainState::Stopped) => {}
        }
        Ok(())
    }
}
