//! Anti-spoofing (R19): the traffic filters the agent defines at start,
//! and each domain's NIC filtered and its link held as its spec says.

use super::*;

/// Defines stratus's traffic filters (again at every start, so an upgrade
/// brings its rules) and checks libvirt's own `clean-traffic` is there.
/// Failure is reported, not fatal: the agent still answers, and says why
/// its guests are not filtered.
pub(super) fn install_filters(conn: &Connect, mode: AntiSpoofingMode) -> AntiSpoofing {
    let required = mode == AntiSpoofingMode::Required;
    let defined_uuid = |name: &str| {
        conn.lookup_nwfilter_by_name(name)
            .and_then(|filter| filter.uuid_string())
            .ok()
    };
    let define_all = || {
        xml::network_filters(defined_uuid)
            .into_iter()
            .try_for_each(|(name, definition)| {
                conn.define_nwfilter_xml(&definition)
                    .map(drop)
                    .map_err(|e| format!("defining network filter {name}: {e}"))
            })
    };
    // Agents starting together on one daemon race: one defines a filter
    // between another's UUID lookup and its definition, which libvirt then
    // refuses for lacking the UUID. Looking the UUIDs up again settles it.
    let mut defined = define_all();
    for _ in 1..FILTER_DEFINE_ATTEMPTS {
        if defined.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        defined = define_all();
    }
    let installed = defined.and_then(|()| {
        conn.lookup_nwfilter_by_name(xml::CLEAN_TRAFFIC)
            .map(drop)
            .map_err(|e| format!("libvirt's {} filter: {e}", xml::CLEAN_TRAFFIC))
    });
    match installed {
        Ok(()) => {
            tracing::info!("traffic filters defined: guests send only from their own addresses");
            AntiSpoofing {
                enforced: true,
                required,
                detail: None,
            }
        }
        Err(detail) => {
            if required {
                tracing::error!(%detail, "anti-spoofing is required and unavailable: no guest will be started");
            } else {
                tracing::warn!(%detail, "anti-spoofing unavailable: guests run unfiltered");
            }
            AntiSpoofing {
                enforced: false,
                required,
                detail: Some(detail),
            }
        }
    }
}

/// Whether a domain's definition (not only its running instance) puts a
/// traffic filter on its NIC.
pub(super) fn defined_with_filter(domain: &Domain) -> Result<bool, AgentError> {
    Ok(read_definition(domain)?.filtered())
}

/// The NIC's link as the running guest has it, or as the definition says
/// when the guest is off.
pub(super) fn observe_link(xml: &DomainXml) -> Link {
    let defined_down = xml.inactive.link_down();
    let Some(live) = &xml.live else {
        return if defined_down { Link::Down } else { Link::Up };
    };
    match (live.link_down(), defined_down) {
        (true, true) => Link::Down,
        (true, false) => Link::UpAtNextStart,
        (false, true) => Link::DownAtNextStart,
        (false, false) => Link::Up,
    }
}

/// Definitions of the traffic filters tried at start before they count as
/// unavailable.
pub(super) const FILTER_DEFINE_ATTEMPTS: usize = 5;

impl Driver {
    /// Whether NICs are defined with their filter: where it is enforced,
    /// and on the test driver, which keeps the filter in the definition
    /// (there to be read) and has no traffic to filter.
    pub(super) fn filters_nics(&self) -> bool {
        self.anti_spoofing.enforced || self.on_test_driver()
    }

    /// Refuses to start a guest that would send unfiltered on a hypervisor
    /// that must filter: the node cannot enforce it, or the domain was
    /// defined without a filter.
    pub(super) fn check_filtered(&self, name: &str, domain: &Domain) -> Result<(), AgentError> {
        if self.config.anti_spoofing != AntiSpoofingMode::Required {
            return Ok(());
        }
        if let Some(detail) = self
            .anti_spoofing
            .blocks_guests()
            .then(|| self.anti_spoofing.detail.clone().unwrap_or_default())
        {
            return Err(AgentError::AntiSpoofingUnavailable(detail));
        }
        if !defined_with_filter(domain)? {
            return Err(AgentError::AntiSpoofingUnavailable(format!(
                "domain {name} is defined without a traffic filter on its NIC"
            )));
        }
        Ok(())
    }

    /// Whether a domain about to start (off, and wanted running) was
    /// defined without the traffic filter this hypervisor puts on NICs.
    pub(super) fn lacks_filter(&self, domain: &Domain, target: Target) -> Result<bool, AgentError> {
        if target != Target::Running || !self.filters_nics() || domain.is_active()? {
            return Ok(false);
        }
        Ok(!defined_with_filter(domain)?)
    }

    /// Puts the NIC's link up or down as the spec says (R5: an abusing
    /// guest keeps running with its network cut): in the definition, and in
    /// the running guest where the hypervisor can change it live.
    pub(super) fn converge_link(
        &self,
        name: &str,
        domain: Domain,
        spec: &DomainSpec,
        disk_volume: &str,
    ) -> Result<Domain, AgentError> {
        let up = spec.link_up();
        let defined_down = read_definition(&domain)?.link_down();
        let domain = if defined_down == up {
            let uuid = domain.uuid_string()?;
            let domain = self.define(name, spec, disk_volume, Some(uuid))?;
            tracing::info!(domain = name, link_up = up, "defined the NIC's link");
            domain
        } else {
            domain
        };
        if !domain.is_active()? || read_running(&domain)?.link_down() != up {
            return Ok(domain);
        }
        let nic = &self.definition(name, spec, disk_volume)?.interfaces[0];
        match domain.update_device_flags(&nic.render(), virt::sys::VIR_DOMAIN_AFFECT_LIVE) {
            Ok(()) => tracing::info!(domain = name, link_up = up, "set the running guest's link"),
            Err(error) if is_unsupported(&error) => tracing::warn!(
                domain = name,
                link_up = up,
                error = %error,
                "this hypervisor cannot change a running guest's link; the definition applies at the next start"
            ),
            Err(error) => return Err(error.into()),
        }
        Ok(domain)
    }
}
