//! The agent against libvirt's test driver: the real library, a simulated hypervisor.

use std::path::Path;
use std::sync::Arc;

use stratus_agent::{AgentError, AntiSpoofingMode, CapacityOverride, Driver, DriverConfig};
use stratus_core::agent_api::{
    AgentErrorCode, DataDisk, DiskDisposal, DomainSpec, DomainState, Link, VolumeKey, VolumeSpec,
    storage_volume_name,
};
use stratus_core::policy::SuspensionMode;
use stratus_core::resources::{PowerState, ServerAddress};

/// A driver on the process-wide `test:///default` hypervisor; tests use
/// their own domain and image names so they can run side by side.
fn default_driver() -> Driver {
    Driver::open(DriverConfig::for_uri("test:///default", "test-zone"))
        .expect("open test:///default")
}

/// A private simulated hypervisor described by a node file: its state is not
/// shared with any other connection.
fn private_node(dir: &Path) -> String {
    let path = dir.join("node.xml");
    std::fs::write(
        &path,
        "<node>\n\
         <cpu><mhz>2400</mhz><model>stratus-sim</model><active>8</active><nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>2</threads></cpu>\n\
         <memory>16777216</memory>\n\
         <pool type='dir'><name>default-pool</name><target><path>/stratus-sim-pool</path></target></pool>\n\
         </node>\n",
    )
    .unwrap();
    format!("test://{}", path.display())
}

fn spec(image: &str, power: PowerState, create_disk: bool) -> DomainSpec {
    DomainSpec {
        hostname: "web1".into(),
        vcpus: 2,
        memory_mib: 2048,
        disk_gib: 25,
        image_volume: image.into(),
        disk_generation: 0,
        retired_disk_generation: None,
        disk_source: None,
        mac_address: "52:54:00:12:34:56".into(),
        power,
        create_disk,
        power_off: false,
        ipv4: None,
        ipv6: None,
        suspension: None,
        boot: None,
        seed: None,
        rescue: None,
        data_disks: Vec::new(),
    }
}

fn numbered(image: &str, power: PowerState) -> DomainSpec {
    DomainSpec {
        ipv4: Some(ServerAddress {
            address: "192.0.2.77".into(),
            prefix: None,
            prefix_length: 24,
            gateway: "192.0.2.1".into(),
        }),
        ipv6: Some(ServerAddress {
            address: "2001:db8:0:4d::1".into(),
            prefix: Some("2001:db8:0:4d::/64".into()),
            prefix_length: 64,
            gateway: "2001:db8::1".into(),
        }),
        ..spec(image, power, true)
    }
}

/// The test driver has no nwfilter: the agent says so, writes each NIC's
/// filter into the definition all the same (where libvirt keeps it), and,
/// being a simulated hypervisor, starts its guests.
#[test]
fn r19_test_driver_reports_no_nwfilter_and_keeps_the_filter_in_the_definition() {
    let driver = default_driver();
    let report = driver.node_report().unwrap();
    assert!(!report.anti_spoofing.enforced);
    assert!(!report.anti_spoofing.required);
    let detail = report.anti_spoofing.detail.unwrap_or_default();
    assert!(detail.contains("not supported"), "{detail}");

    let (name, image) = ("stratus-itest-filter", "itest-filter.qcow2");
    driver.seed_image(image, 2).unwrap();
    let running = driver
        .ensure(name, &numbered(image, PowerState::Running))
        .unwrap();
    assert_eq!(running.state, Some(DomainState::Running));
    let conn = virt::connect::Connect::open(Some("test:///default")).unwrap();
    let defined = conn
        .lookup_domain_by_name(name)
        .unwrap()
        .xml_desc(0)
        .unwrap();
    for expected in [
        "<filterref filter='stratus-clean-traffic'>",
        "<parameter name='IP' value='192.0.2.77'/>",
        "<parameter name='IPV6_PREFIX' value='2001:db8:0:4d::'/>",
        "<parameter name='IPV6_PREFIX_LENGTH' value='64'/>",
        "<mac address='52:54:00:12:34:56'/>",
    ] {
        assert!(defined.contains(expected), "{expected} in\n{defined}");
    }
    driver.destroy(name).unwrap();
}

/// A domain an older release defined without a traffic filter gets it
/// when it next starts: it is defined again while off, keeping its UUID
/// and disk.
#[test]
fn r19_a_domain_defined_without_a_filter_is_defined_again_with_it_before_it_starts() {
    let driver = default_driver();
    let (name, image) = ("stratus-itest-legacy", "itest-legacy.qcow2");
    driver.seed_image(image, 2).unwrap();
    driver
        .ensure(name, &spec(image, PowerState::Stopped, true))
        .unwrap();
    let conn = virt::connect::Connect::open(Some("test:///default")).unwrap();
    let definition = |conn: &virt::connect::Connect| {
        conn.lookup_domain_by_name(name)
            .unwrap()
            .xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE)
            .unwrap()
    };
    let filtered = definition(&conn);
    let start = filtered
        .find("<filterref")
        .expect("defined with its filter");
    let end = filtered.find("</filterref>").map_or_else(
        || start + filtered[start..].find("/>").unwrap() + 2,
        |at| at + "</filterref>".len(),
    );
    let legacy = format!("{}{}", &filtered[..start], &filtered[end..]);
    conn.define_domain_xml(&legacy).unwrap();
    assert!(!definition(&conn).contains("<filterref"));
    let uuid = conn
        .lookup_domain_by_name(name)
        .unwrap()
        .uuid_string()
        .unwrap();

    let running = driver
        .ensure(name, &spec(image, PowerState::Running, false))
        .unwrap();
    assert_eq!(running.state, Some(DomainState::Running));
    assert!(running.disk_present);
    let domain = conn.lookup_domain_by_name(name).unwrap();
    assert_eq!(domain.uuid_string().unwrap(), uuid);
    assert!(
        definition(&conn).contains("<filterref filter='clean-traffic'"),
        "{}",
        definition(&conn)
    );
    driver.destroy(name).unwrap();
}

/// A hypervisor required to filter that cannot never starts a guest; it
/// still defines, stops and destroys them, and says why in its report.
#[test]
fn r19_a_hypervisor_that_must_filter_and_cannot_starts_no_guest() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = DriverConfig::for_uri(&private_node(dir.path()), "test-zone");
    config.anti_spoofing = AntiSpoofingMode::Required;
    let driver = Driver::open(config).unwrap();
    let report = driver.node_report().unwrap();
    assert!(report.anti_spoofing.required && !report.anti_spoofing.enforced);
    assert!(report.anti_spoofing.blocks_guests());

    let (name, image) = ("stratus-itest-unfiltered", "itest-unfiltered.qcow2");
    driver.seed_image(image, 2).unwrap();
    let refused = driver
        .ensure(name, &numbered(image, PowerState::Running))
        .unwrap_err();
    assert!(
        matches!(refused, AgentError::AntiSpoofingUnavailable(ref m) if m.contains("not supported")),
        "{refused}"
    );
    assert_eq!(
        refused.code(),
        stratus_core::agent_api::AgentErrorCode::AntiSpoofingUnavailable
    );
    let observed = driver.observe(name).unwrap();
    assert_eq!(
        observed.state,
        Some(DomainState::Stopped),
        "defined, never started"
    );
    let stopped = driver
        .ensure(name, &numbered(image, PowerState::Stopped))
        .unwrap();
    assert_eq!(stopped.state, Some(DomainState::Stopped));
    assert_eq!(driver.destroy(name).unwrap().state, None);
}

#[test]
fn r19_malformed_addresses_are_refused_before_anything_is_created() {
    let driver = default_driver();
    let (name, image) = ("stratus-itest-badaddr", "itest-badaddr.qcow2");
    driver.seed_image(image, 2).unwrap();
    let mut bad = numbered(image, PowerState::Running);
    if let Some(ipv6) = bad.ipv6.as_mut() {
        ipv6.address = "2001:db8:0:99::1".into();
    }
    let refused = driver.ensure(name, &bad).unwrap_err();
    assert!(matches!(refused, AgentError::BadRequest(ref m) if m.starts_with("ipv6.address")));
    let observed = driver.observe(name).unwrap();
    assert_eq!((observed.state, observed.disk_present), (None, false));
}

#[test]
fn ensure_is_idempotent_and_follows_power_state() {
    let driver = default_driver();
    let name = "stratus-itest-ensure";
    let image = "itest-ensure.qcow2";
    driver.seed_image(image, 2).unwrap();

    let first = driver
        .ensure(name, &spec(image, PowerState::Running, true))
        .unwrap();
    assert_eq!(first.state, Some(DomainState::Running));
    assert!(first.disk_present);
    let again = driver
        .ensure(name, &spec(image, PowerState::Running, true))
        .unwrap();
    assert_eq!(again, first);
    let report = driver.node_report().unwrap();
    assert_eq!(
        report.domains.iter().filter(|d| d.as_str() == name).count(),
        1
    );
    assert!(report.images.iter().any(|i| i == image));
    assert!(
        !report.domains.iter().any(|d| d == "test"),
        "the driver's own domain is not ours"
    );

    let stopped = driver
        .ensure(name, &spec(image, PowerState::Stopped, false))
        .unwrap();
    assert_eq!(stopped.state, Some(DomainState::Stopped));
    let started = driver
        .ensure(name, &spec(image, PowerState::Running, false))
        .unwrap();
    assert_eq!(started.state, Some(DomainState::Running));
    assert_eq!(
        driver.reboot(name).unwrap().state,
        Some(DomainState::Running)
    );

    let gone = driver.destroy(name).unwrap();
    assert_eq!(gone.state, None);
    assert!(!gone.disk_present);
    let again = driver.destroy(name).unwrap();
    assert_eq!(
        (again.state, again.disk_present),
        (None, false),
        "destroying twice is harmless"
    );
    assert!(matches!(
        driver.reboot(name),
        Err(AgentError::BadRequest(_))
    ));
}

/// The suspension modes through libvirt (R1, R5, R8). The test driver
/// cannot change a running guest's devices, so the observation says the
/// cut link applies at the next start; a real hypervisor cuts it live with
/// the same calls.
#[test]
fn suspension_modes_hold_the_domain_and_lifting_restores_it() {
    let driver = default_driver();
    let name = "stratus-itest-suspend";
    let image = "itest-suspend.qcow2";
    driver.seed_image(image, 2).unwrap();
    let held = |mode| DomainSpec {
        suspension: Some(mode),
        ..spec(image, PowerState::Running, false)
    };

    let running = driver
        .ensure(name, &spec(image, PowerState::Running, true))
        .unwrap();
    assert_eq!(
        (running.state, running.link),
        (Some(DomainState::Running), Link::Up)
    );

    let isolated = driver
        .ensure(name, &held(SuspensionMode::NetworkIsolated))
        .unwrap();
    assert_eq!(
        isolated.state,
        Some(DomainState::Running),
        "R5: the guest keeps running"
    );
    assert!(
        matches!(isolated.link, Link::Down | Link::DownAtNextStart),
        "{isolated:?}"
    );
    assert_eq!(
        driver
            .ensure(name, &held(SuspensionMode::NetworkIsolated))
            .unwrap(),
        isolated,
        "holding it again changes nothing"
    );

    let paused = driver.ensure(name, &held(SuspensionMode::Paused)).unwrap();
    assert_eq!(
        (paused.state, paused.link),
        (Some(DomainState::Paused), Link::Up)
    );

    let stopped = driver.ensure(name, &held(SuspensionMode::Stopped)).unwrap();
    assert_eq!(stopped.state, Some(DomainState::Stopped));

    let off_and_cut = driver
        .ensure(name, &held(SuspensionMode::NetworkIsolated))
        .unwrap();
    assert_eq!(
        off_and_cut.link,
        Link::Down,
        "an off guest's definition is its link"
    );
    let lifted = driver
        .ensure(name, &spec(image, PowerState::Running, false))
        .unwrap();
    assert_eq!(
        lifted.state,
        Some(DomainState::Running),
        "lifting restores the customer's power choice"
    );
    // The test driver starts a domain redefined while off from its previous
    // definition; the observation says so instead of claiming the link is up.
    assert!(
        matches!(lifted.link, Link::Up | Link::UpAtNextStart),
        "{lifted:?}"
    );

    driver
        .ensure(name, &spec(image, PowerState::Stopped, false))
        .unwrap();
    let still_off = driver.ensure(
        name,
        &DomainSpec {
            suspension: Some(SuspensionMode::Paused),
            ..spec(image, PowerState::Stopped, false)
        },
    );
    assert_eq!(
        still_off.unwrap().state,
        Some(DomainState::Stopped),
        "a stopped server is not started only to be paused"
    );
    driver.destroy(name).unwrap();
}

#[test]
fn a_missing_disk_is_never_silently_recreated() {
    let driver = default_driver();
    let name = "stratus-itest-nodisk";
    let image = "itest-nodisk.qcow2";
    driver.seed_image(image, 2).unwrap();
    let err = driver
        .ensure(name, &spec(image, PowerState::Running, false))
        .unwrap_err();
    assert!(matches!(err, AgentError::DiskMissing { .. }), "{err}");
    assert_eq!(
        driver.observe(name).unwrap().state,
        None,
        "nothing was defined"
    );
}

#[test]
fn a_missing_image_is_reported() {
    let driver = default_driver();
    let err = driver
        .ensure(
            "stratus-itest-noimage",
            &spec("no-such-image.qcow2", PowerState::Running, true),
        )
        .unwrap_err();
    assert!(
        matches!(err, AgentError::ImageMissing(ref i) if i == "no-such-image.qcow2"),
        "{err}"
    );
}

#[test]
fn foreign_domains_are_out_of_reach() {
    let driver = default_driver();
    assert!(matches!(
        driver.observe("test"),
        Err(AgentError::BadRequest(_))
    ));
    assert!(matches!(
        driver.destroy("test"),
        Err(AgentError::BadRequest(_))
    ));
}

#[test]
fn node_report_reads_libvirt_and_applies_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = DriverConfig::for_uri(&private_node(dir.path()), "par1");
    let plain = Driver::open(config.clone()).unwrap().node_report().unwrap();
    assert_eq!(plain.vcpus, 8);
    assert_eq!(plain.memory_mib, 16384);
    assert_eq!(plain.zone, "par1");
    config.capacity = "vcpus=64,disk_gib=1000"
        .parse::<CapacityOverride>()
        .unwrap();
    let overridden = Driver::open(config).unwrap().node_report().unwrap();
    assert_eq!(overridden.vcpus, 64);
    assert_eq!(overridden.memory_mib, 16384);
    assert_eq!(overridden.pool.capacity_bytes, 1000 * 1024 * 1024 * 1024);
}

#[test]
fn recorded_definitions_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = DriverConfig::for_uri(&private_node(dir.path()), "z");
    config.state_dir = Some(dir.path().join("state"));
    let image = "debian-12.qcow2";
    {
        let driver = Driver::open(config.clone()).unwrap();
        driver.seed_image(image, 2).unwrap();
        driver
            .ensure("stratus-vs-a", &spec(image, PowerState::Running, true))
            .unwrap();
        driver
            .ensure("stratus-vs-b", &spec(image, PowerState::Stopped, true))
            .unwrap();
        driver
            .ensure("stratus-vs-c", &spec(image, PowerState::Running, true))
            .unwrap();
        driver.destroy("stratus-vs-c").unwrap();
    }
    // A fresh connection to the node file starts empty...
    let mut forgetful = config.clone();
    forgetful.state_dir = None;
    assert!(
        Driver::open(forgetful)
            .unwrap()
            .node_report()
            .unwrap()
            .domains
            .is_empty()
    );
    // ...and the recorded definitions bring it back as it was.
    let driver = Arc::new(Driver::open(config).unwrap());
    let report = driver.node_report().unwrap();
    assert_eq!(report.domains, ["stratus-vs-a", "stratus-vs-b"]);
    assert_eq!(report.images, [image]);
    assert_eq!(
        driver.observe("stratus-vs-a").unwrap().state,
        Some(DomainState::Running)
    );
    assert_eq!(
        driver.observe("stratus-vs-b").unwrap().state,
        Some(DomainState::Stopped)
    );
    assert!(driver.observe("stratus-vs-b").unwrap().disk_present);
    assert!(!driver.observe("stratus-vs-c").unwrap().disk_present);
}

/// libvirt's fixed-size listing stops at 1 024 names; a pool holding
/// thousands of disks must still report its images and every domain.
#[test]
fn node_report_sees_thousands_of_volumes_and_domains() {
    const SERVERS: usize = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let driver = Driver::open(DriverConfig::for_uri(&private_node(dir.path()), "z")).unwrap();
    let image = "debian-12.qcow2";
    driver.seed_image(image, 1).unwrap();
    let mut small = spec(image, PowerState::Stopped, true);
    small.disk_gib = 1;
    for i in 0..SERVERS {
        driver
            .ensure(&format!("stratus-vs-{i:016x}"), &small)
            .unwrap();
    }
    let report = driver.node_report().unwrap();
    assert_eq!(
        report.images,
        [image],
        "the image is not lost among the disks"
    );
    assert_eq!(report.domains.len(), SERVERS);
}

/// The test driver cannot wipe: the destroy says so instead of claiming it.
#[test]
fn a_disk_the_storage_cannot_wipe_is_reported_deleted_without_wipe() {
    let dir = tempfile::tempdir().unwrap();
    let driver = Driver::open(DriverConfig::for_uri(&private_node(dir.path()), "z")).unwrap();
    let image = "debian-12.qcow2";
    driver.seed_image(image, 1).unwrap();
    driver
        .ensure("stratus-vs-wipe", &spec(image, PowerState::Stopped, true))
        .unwrap();
    let destroyed = driver.destroy("stratus-vs-wipe").unwrap();
    assert!(!destroyed.disk_present);
    assert!(
        matches!(
            destroyed.disk_disposal,
            Some(DiskDisposal::DeletedWithoutWipe { .. })
        ),
        "{destroyed:?}"
    );
    let again = driver.destroy("stratus-vs-wipe").unwrap();
    assert_eq!(again.disk_disposal, None, "nothing left to dispose of");
}

/// Two agents on one libvirt daemon (one per zone's pool): each touches
/// only the domains it defined.
#[test]
fn agents_sharing_a_daemon_never_touch_each_others_domains() {
    let agent = |name: &str| {
        let mut config = DriverConfig::for_uri("test:///default", "test-zone");
        config.agent_name = Some(name.to_owned());
        Driver::open(config).unwrap()
    };
    let (a, b) = (agent("hv-a"), agent("hv-b"));
    let (name, image) = ("stratus-itest-owned", "itest-owned.qcow2");
    a.seed_image(image, 2).unwrap();
    a.ensure(name, &spec(image, PowerState::Running, true))
        .unwrap();
    for refused in [
        b.observe(name).map(drop),
        b.ensure(name, &spec(image, PowerState::Stopped, true))
            .map(drop),
        b.destroy(name).map(drop),
        b.reboot(name).map(drop),
    ] {
        let error = refused.unwrap_err();
        assert!(
            matches!(error, AgentError::OtherAgents { ref agent, .. } if agent == "hv-a"),
            "{error}"
        );
    }
    assert_eq!(a.observe(name).unwrap().state, Some(DomainState::Running));
    assert!(a.node_report().unwrap().domains.contains(&name.to_owned()));
    assert!(!b.node_report().unwrap().domains.contains(&name.to_owned()));
    a.destroy(name).unwrap();
}

/// A storage copy attached to a server is a raw virtio disk with the
/// subscription's id as serial, in the definition and (hot-plugged) in the
/// running guest; leaving the list detaches it, and its volume stays.
#[test]
fn data_disks_are_attached_and_detached_and_never_another_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let driver = Driver::open(DriverConfig::for_uri(&private_node(dir.path()), "z")).unwrap();
    let name = "stratus-acc-0000000000000001.vs-00000000000000d1";
    let image = "itest-disks.qcow2";
    driver.seed_image(image, 2).unwrap();
    let serial = "st-00000000000000d2";
    let base = format!("stratus-acc-0000000000000001.{serial}");
    driver
        .ensure_volume(
            &base,
            &VolumeSpec {
                size_gib: 1,
                create: true,
            },
        )
        .unwrap();
    let disk = DataDisk {
        volume: storage_volume_name(&base, 0),
        serial: serial.into(),
        encrypted: false,
    };
    let mut wanted = spec(image, PowerState::Running, true);
    wanted.data_disks = vec![disk.clone()];
    let attached = driver.ensure(name, &wanted).unwrap();
    assert_eq!(attached.state, Some(DomainState::Running));
    assert_eq!(attached.data_disks, vec![serial.to_owned()]);
    assert_eq!(
        driver.ensure(name, &wanted).unwrap(),
        attached,
        "idempotent"
    );

    // Stopped, then started: the definition keeps it.
    let mut stopped = wanted.clone();
    stopped.power = PowerState::Stopped;
    stopped.power_off = true;
    stopped.create_disk = false;
    assert_eq!(
        driver.ensure(name, &stopped).unwrap().data_disks,
        vec![serial.to_owned()]
    );
    let mut restarted = wanted.clone();
    restarted.create_disk = false;
    assert_eq!(
        driver.ensure(name, &restarted).unwrap().data_disks,
        vec![serial.to_owned()]
    );

    // Another account's copy, or something that is no copy, is refused
    // and changes nothing.
    for (volume, serial) in [
        (
            storage_volume_name(&format!("stratus-acc-0000000000000002.{serial}"), 0),
            serial,
        ),
        (image.to_owned(), serial),
        (storage_volume_name(&base, 0), "vda"),
    ] {
        let mut foreign = restarted.clone();
        foreign.data_disks = vec![DataDisk {
            volume,
            serial: serial.into(),
            encrypted: false,
        }];
        assert!(
            matches!(
                driver.ensure(name, &foreign),
                Err(AgentError::BadRequest(_))
            ),
            "{foreign:?}"
        );
    }
    assert_eq!(
        driver.observe(name).unwrap().data_disks,
        vec![serial.to_owned()]
    );

    restarted.data_disks.clear();
    let detached = driver.ensure(name, &restarted).unwrap();
    assert!(detached.data_disks.is_empty(), "{detached:?}");
    assert_eq!(detached.state, Some(DomainState::Running));
    assert!(
        driver.observe_volume(&base).unwrap().present(),
        "the copy stays"
    );
    driver.destroy(name).unwrap();
    assert!(
        driver.observe_volume(&base).unwrap().present(),
        "the copy outlives the server"
    );
}

/// The test driver keeps no libvirt secrets: a LUKS copy is refused there
/// with a reason, never made without its key, and a plain copy is never
/// "unlocked". An encrypted data disk is never defined into a domain.
#[test]
fn r25_luks_needs_a_hypervisor_that_keeps_keys() {
    let dir = tempfile::tempdir().unwrap();
    let driver = Driver::open(DriverConfig::for_uri(&private_node(dir.path()), "z")).unwrap();
    let base = "stratus-acc-0000000000000001.st-00000000000000e1";
    let key = VolumeKey::new("correct horse battery staple".into());
    let refused = driver.format_version(base, 5, 1, &key).unwrap_err();
    assert!(
        matches!(refused, AgentError::KeysUnsupported(_)),
        "{refused:?}"
    );
    let observed = driver.observe_volume(base).unwrap();
    assert!(observed.versions.is_empty(), "nothing is left of it");
    let short = driver
        .format_version(base, 5, 1, &VolumeKey::new("short".into()))
        .unwrap_err();
    assert!(matches!(short, AgentError::BadRequest(_)), "{short:?}");

    driver
        .ensure_volume(
            base,
            &VolumeSpec {
                size_gib: 1,
                create: true,
            },
        )
        .unwrap();
    let plain = driver.unlock_version(base, 0, &key).unwrap_err();
    assert!(
        matches!(&plain, AgentError::BadRequest(m) if m.contains("not a LUKS volume")),
        "{plain:?}"
    );
    let observed = driver.observe_volume(base).unwrap();
    assert!(!observed.versions[0].encrypted && !observed.versions[0].unlocked);
    assert!(!format!("{refused:?}{short:?}{plain:?}").contains("correct horse"));

    let name = "stratus-acc-0000000000000001.vs-00000000000000e2";
    let image = "itest-luks.qcow2";
    driver.seed_image(image, 2).unwrap();
    let mut wanted = spec(image, PowerState::Running, true);
    wanted.data_disks = vec![DataDisk {
        volume: storage_volume_name(base, 0),
        serial: "st-00000000000000e1".into(),
        encrypted: true,
    }];
    let observed = driver.ensure(name, &wanted).unwrap();
    assert!(
        observed.data_disks.is_empty(),
        "a LUKS disk without its key is not plugged in: {observed:?}"
    );
}

/// R26 (defect 4 of issue 25): a storage version that is a disk of a
/// domain is never wiped or deleted under it, whoever asks (a repair that
/// judged it bad, a pruning, a deletion of the copy): refused as in use,
/// and the volume and the domain's disk are untouched. Once detached, it
/// can go.
#[test]
fn r26_a_repair_never_touches_a_volume_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let driver = Driver::open(DriverConfig::for_uri(&private_node(dir.path()), "z")).unwrap();
    let name = "stratus-acc-0000000000000001.vs-00000000000000e1";
    let image = "itest-in-use.qcow2";
    driver.seed_image(image, 2).unwrap();
    let serial = "st-00000000000000e2";
    let base = format!("stratus-acc-0000000000000001.{serial}");
    driver
        .ensure_volume(
            &base,
            &VolumeSpec {
                size_gib: 1,
                create: true,
            },
        )
        .unwrap();
    let volume = storage_volume_name(&base, 0);
    let mut wanted = spec(image, PowerState::Running, true);
    wanted.data_disks = vec![DataDisk {
        volume: volume.clone(),
        serial: serial.into(),
        encrypted: false,
    }];
    assert_eq!(
        driver.ensure(name, &wanted).unwrap().data_disks,
        vec![serial.to_owned()]
    );
    for attempt in ["delete_version", "destroy_volume"] {
        let refused = match attempt {
            "delete_version" => driver.delete_version(&base, 0),
            _ => driver.destroy_volume(&base),
        };
        match refused {
            Err(AgentError::VolumeInUse { volume: v, domain }) => {
                assert_eq!((v.as_str(), domain.as_str()), (volume.as_str(), name));
            }
            other => panic!("{attempt}: expected a refusal, got {other:?}"),
        }
        let seen = driver.observe_volume(&base).unwrap();
        assert!(seen.version(0).is_some(), "{attempt}: the version stays");
        assert_eq!(
            driver.observe(name).unwrap().data_disks,
            vec![serial.to_owned()],
            "{attempt}: still the domain's disk"
        );
    }
    // Stopped, it is still the domain's disk (its definition has it).
    let mut stopped = wanted.clone();
    stopped.power = PowerState::Stopped;
    stopped.power_off = true;
    stopped.create_disk = false;
    driver.ensure(name, &stopped).unwrap();
    assert!(matches!(
        driver.delete_version(&base, 0),
        Err(AgentError::VolumeInUse { .. })
    ));
    stopped.data_disks.clear();
    driver.ensure(name, &stopped).unwrap();
    let deleted = driver.delete_version(&base, 0).unwrap();
    assert!(deleted.version(0).is_none(), "{deleted:?}");
    driver.destroy(name).unwrap();
    driver.destroy_volume(&base).unwrap();
}

/// A server of `image` running on `driver` with a 1 GiB storage copy
/// `base` (version 0) as its data disk.
fn running_with_a_data_disk(driver: &Driver, name: &str, image: &str, base: &str, serial: &str) {
    driver.seed_image(image, 2).unwrap();
    driver
        .ensure_volume(
            base,
            &VolumeSpec {
                size_gib: 1,
                create: true,
            },
        )
        .unwrap();
    let mut wanted = spec(image, PowerState::Running, true);
    wanted.data_disks = vec![DataDisk {
        volume: storage_volume_name(base, 0),
        serial: serial.into(),
        encrypted: false,
    }];
    assert_eq!(
        driver.ensure(name, &wanted).unwrap().data_disks,
        vec![serial.to_owned()]
    );
}

/// R26 (defect 7 of issue 25): where libvirt has no backup job (the test
/// driver has none; `tests/real_guests.rs` proves a real hypervisor copies
/// while the guest runs), the guest is paused for a copy of its disk, and
/// the pause is bounded: a copy that keeps the guest paused past
/// `max_guest_pause` is dropped, nothing of it stays, the guest runs
/// again, and the failure says why.
#[test]
fn r26_a_copy_that_would_pause_the_guest_too_long_is_dropped_and_the_guest_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = DriverConfig::for_uri(&private_node(dir.path()), "z");
    config.max_guest_pause = std::time::Duration::ZERO;
    let driver = Driver::open(config).unwrap();
    let name = "stratus-acc-0000000000000001.vs-00000000000000f3";
    let base = "stratus-acc-0000000000000001.st-00000000000000f4";
    running_with_a_data_disk(
        &driver,
        name,
        "itest-pause-limit.qcow2",
        base,
        "st-00000000000000f4",
    );

    match driver.copy_version(base, 0, 1, true) {
        Err(error @ AgentError::PauseLimit { .. }) => {
            assert_eq!(error.code(), AgentErrorCode::PauseLimit);
            assert!(error.to_string().contains("0 ms"), "{error}");
        }
        other => panic!("expected the pause limit, got {other:?}"),
    }
    assert_eq!(
        driver.observe(name).unwrap().state,
        Some(DomainState::Running)
    );
    assert!(
        driver.observe_volume(base).unwrap().version(1).is_none(),
        "the copy made past the limit is gone"
    );
    // Without `pause_guest` a disk in use is refused outright.
    assert!(matches!(
        driver.copy_version(base, 0, 2, false),
        Err(AgentError::VersionConflict(_))
    ));
    driver.destroy(name).unwrap();
}

/// R23 on the test driver: a domain is made again with another plan only
/// while it is off, and its disk only grows (the test driver cannot resize
/// volumes, so the empty volume is made again at the new size).
#[test]
fn r23_another_plan_is_applied_only_while_the_domain_is_off_and_the_disk_only_grows() {
    let driver = default_driver();
    let name = "stratus-itest-resize";
    let image = "itest-resize.qcow2";
    driver.seed_image(image, 2).unwrap();
    let small = spec(image, PowerState::Running, true);
    let running = driver.ensure(name, &small).unwrap();
    let resources = running.resources.expect("the agent says the domain's size");
    assert_eq!(
        (resources.vcpus, resources.memory_mib, resources.disk_gib),
        (2, 2048, 25)
    );

    let bigger = DomainSpec {
        vcpus: 4,
        memory_mib: 4096,
        disk_gib: 40,
        create_disk: false,
        ..small.clone()
    };
    // Running: nothing changes under the guest.
    let unchanged = driver.ensure(name, &bigger).unwrap();
    assert_eq!(unchanged.resources, Some(resources));
    assert_eq!(unchanged.state, Some(DomainState::Running));

    // Off: made again and grown, and it stays off as asked.
    let off = DomainSpec {
        power: PowerState::Stopped,
        power_off: true,
        ..bigger.clone()
    };
    driver.ensure(name, &off).unwrap();
    let remade = driver.ensure(name, &off).unwrap();
    let grown = remade.resources.unwrap();
    assert_eq!(
        (grown.vcpus, grown.memory_mib, grown.disk_gib),
        (4, 4096, 40)
    );
    assert_eq!(remade.state, Some(DomainState::Stopped));
    assert!(remade.disk_present);
    // Down in vCPUs and memory; a smaller disk never shrinks it.
    let down = DomainSpec {
        vcpus: 1,
        memory_mib: 1024,
        disk_gib: 10,
        ..off.clone()
    };
    let shrunk = driver.ensure(name, &down).unwrap().resources.unwrap();
    assert_eq!(
        (shrunk.vcpus, shrunk.memory_mib, shrunk.disk_gib),
        (1, 1024, 40)
    );
    let started = driver
        .ensure(
            name,
            &DomainSpec {
                power: PowerState::Running,
                power_off: false,
                ..down
            },
        )
        .unwrap();
    assert_eq!(started.state, Some(DomainState::Running));
    assert_eq!(started.resources, Some(shrunk));
    driver.destroy(name).unwrap();
}

/// The system disks of `domain` in the shared test hypervisor's pool.
fn system_disks(domain: &str) -> Vec<String> {
    let conn = virt::connect::Connect::open(Some("test:///default")).unwrap();
    let pool = conn.lookup_storage_pool_by_name("default-pool").unwrap();
    let mut disks: Vec<String> = pool
        .list_volumes()
        .unwrap()
        .into_iter()
        .filter(|v| stratus_core::agent_api::system_disk_generation(domain, v).is_some())
        .collect();
    disks.sort();
    disks
}

#[test]
fn a_rebuild_puts_a_new_disk_in_only_while_off_and_wipes_the_old_one_after() {
    let driver = default_driver();
    let name = "stratus-itest-rebuild";
    let (old_image, new_image) = ("itest-rebuild-a.qcow2", "itest-rebuild-b.qcow2");
    driver.seed_image(old_image, 2).unwrap();
    driver.seed_image(new_image, 2).unwrap();
    let first = spec(old_image, PowerState::Running, true);
    let running = driver.ensure(name, &first).unwrap();
    assert_eq!(running.disk_generation, Some(0));
    assert_eq!(system_disks(name), [format!("{name}-disk.qcow2")]);

    let rebuilt = DomainSpec {
        image_volume: new_image.into(),
        disk_generation: 1,
        retired_disk_generation: Some(0),
        create_disk: false,
        ..first.clone()
    };
    // Running: the guest keeps its disk, and no new one is made yet.
    let unchanged = driver.ensure(name, &rebuilt).unwrap();
    assert_eq!(unchanged.disk_generation, Some(0));
    assert_eq!(unchanged.state, Some(DomainState::Running));
    assert_eq!(system_disks(name), [format!("{name}-disk.qcow2")]);

    // Off: the new disk goes in and the old one is wiped.
    let off = DomainSpec {
        power: PowerState::Stopped,
        power_off: true,
        ..rebuilt.clone()
    };
    driver.ensure(name, &off).unwrap();
    let swapped = driver.ensure(name, &off).unwrap();
    assert_eq!(swapped.disk_generation, Some(1));
    assert!(swapped.disk_present);
    assert_eq!(swapped.state, Some(DomainState::Stopped));
    assert_eq!(system_disks(name), [format!("{name}-disk-1.qcow2")]);
    let conn = virt::connect::Connect::open(Some("test:///default")).unwrap();
    let definition = conn
        .lookup_domain_by_name(name)
        .unwrap()
        .xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE)
        .unwrap();
    assert!(
        definition.contains(&format!("volume='{name}-disk-1.qcow2'")),
        "{definition}"
    );

    // A second rebuild cut short: its disk was made but never put in the
    // domain (the agent killed). It is made afresh, and a kill after the
    // definition leaves the old disk to the next call, which wipes it.
    let pool = conn.lookup_storage_pool_by_name("default-pool").unwrap();
    let image_path = pool
        .lookup_storage_vol_by_name(new_image)
        .unwrap()
        .path()
        .unwrap();
    virt::storage_vol::StorageVol::create_xml(
        &pool,
        &format!(
            "<volume><name>{name}-disk-2.qcow2</name><capacity unit='G'>25</capacity>\
             <target><format type='qcow2'/></target>\
             <backingStore><path>{image_path}</path><format type='qcow2'/></backingStore></volume>"
        ),
        0,
    )
    .unwrap();
    let second = DomainSpec {
        disk_generation: 2,
        retired_disk_generation: None,
        ..off.clone()
    };
    let defined = driver.ensure(name, &second).unwrap();
    assert_eq!(defined.disk_generation, Some(2));
    assert_eq!(
        system_disks(name),
        [
            format!("{name}-disk-1.qcow2"),
            format!("{name}-disk-2.qcow2")
        ],
        "without a retired generation nothing is wiped"
    );
    let started = driver
        .ensure(
            name,
            &DomainSpec {
                retired_disk_generation: Some(1),
                power: PowerState::Running,
                power_off: false,
                ..second.clone()
            },
        )
        .unwrap();
    assert_eq!(started.state, Some(DomainState::Running));
    assert_eq!(system_disks(name), [format!("{name}-disk-2.qcow2")]);

    // A request from before the last rebuild never takes the domain back
    // to an old disk.
    let stale = driver.ensure(
        name,
        &DomainSpec {
            disk_generation: 1,
            retired_disk_generation: Some(0),
            power: PowerState::Stopped,
            power_off: true,
            ..second.clone()
        },
    );
    assert!(
        matches!(stale, Err(AgentError::BadRequest(ref m)) if m.contains("disk_generation")),
        "{stale:?}"
    );
    assert_eq!(system_disks(name), [format!("{name}-disk-2.qcow2")]);

    // A leftover of any generation goes with the domain.
    virt::storage_vol::StorageVol::create_xml(
        &pool,
        &format!(
            "<volume><name>{name}-disk-7.qcow2</name><capacity unit='G'>1</capacity>\
             <target><format type='qcow2'/></target></volume>"
        ),
        0,
    )
    .unwrap();
    let destroyed = driver.destroy(name).unwrap();
    assert!(destroyed.disk_disposal.is_some());
    assert_eq!(destroyed.disk_generation, None);
    assert!(system_disks(name).is_empty());
}

/// The targets of a domain's disks as its definition has them: volume →
/// device, by volume.
fn disk_targets(uri: &str, name: &str) -> Vec<(String, String)> {
    let conn = virt::connect::Connect::open(Some(uri)).unwrap();
    let xml = conn
        .lookup_domain_by_name(name)
        .unwrap()
        .xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE)
        .unwrap();
    xml.split("<disk ")
        .skip(1)
        .filter_map(|rest| {
            let block = &rest[..rest.find("</disk>")?];
            let volume = block.split("volume='").nth(1)?.split('\'').next()?;
            let target = block.split("dev='").nth(1)?.split('\'').next()?;
            Some((volume.to_owned(), target.to_owned()))
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[test]
fn rescue_mode_boots_a_fresh_rescue_disk_with_the_system_disk_second_only_while_off() {
    // The shared test hypervisor: a second connection sees its domains.
    let uri = "test:///default".to_owned();
    let driver = default_driver();
    let name = "stratus-acc-0000000000000001.vs-00000000000000e1";
    let (image, rescue_image) = ("itest-rescue-os.qcow2", "itest-rescue.qcow2");
    driver.seed_image(image, 2).unwrap();
    driver.seed_image(rescue_image, 1).unwrap();
    let serial = "st-00000000000000e2";
    let base = format!("stratus-acc-0000000000000001.{serial}");
    driver
        .ensure_volume(
            &base,
            &VolumeSpec {
                size_gib: 1,
                create: true,
            },
        )
        .unwrap();
    let mut normal = spec(image, PowerState::Running, true);
    normal.data_disks = vec![DataDisk {
        volume: storage_volume_name(&base, 0),
        serial: serial.into(),
        encrypted: false,
    }];
    let running = driver.ensure(name, &normal).unwrap();
    assert_eq!(running.rescued, Some(false));
    let system = format!("{name}-disk.qcow2");
    let data = storage_volume_name(&base, 0);
    assert_eq!(
        disk_targets(&uri, name),
        [(data.clone(), "vdb".into()), (system.clone(), "vda".into())]
    );

    let rescue = DomainSpec {
        rescue: Some(stratus_core::agent_api::RescueBoot {
            image_volume: rescue_image.into(),
            boot: None,
        }),
        create_disk: false,
        ..normal.clone()
    };
    // Running: nothing changes under the guest.
    let unchanged = driver.ensure(name, &rescue).unwrap();
    assert_eq!(unchanged.rescued, Some(false));
    assert_eq!(unchanged.state, Some(DomainState::Running));

    // Off: the rescue disk is vda, the data disk keeps its name, the
    // system disk follows it.
    let off = DomainSpec {
        power: PowerState::Stopped,
        power_off: true,
        ..rescue.clone()
    };
    driver.ensure(name, &off).unwrap();
    let rescued = driver.ensure(name, &off).unwrap();
    assert_eq!(rescued.rescued, Some(true));
    assert_eq!(
        rescued.disk_generation,
        Some(0),
        "its own disk is still its disk"
    );
    assert_eq!(rescued.data_disks, vec![serial.to_owned()]);
    let rescue_disk = format!("{name}-rescue.qcow2");
    assert_eq!(
        disk_targets(&uri, name),
        [
            (data.clone(), "vdb".into()),
            (system.clone(), "vdc".into()),
            (rescue_disk.clone(), "vda".into()),
        ]
    );
    let started = driver
        .ensure(
            name,
            &DomainSpec {
                power: PowerState::Running,
                power_off: false,
                ..rescue.clone()
            },
        )
        .unwrap();
    assert_eq!(started.state, Some(DomainState::Running));
    assert_eq!(started.rescued, Some(true));

    // Out again, while off: its own disk boots as vda and the rescue disk goes.
    let normal_off = DomainSpec {
        power: PowerState::Stopped,
        power_off: true,
        create_disk: false,
        ..normal.clone()
    };
    let still = driver.ensure(name, &normal_off).unwrap();
    assert_eq!(still.rescued, Some(true), "it was running when asked");
    let back = driver.ensure(name, &normal_off).unwrap();
    assert_eq!(back.rescued, Some(false));
    assert_eq!(
        disk_targets(&uri, name),
        [(data.clone(), "vdb".into()), (system.clone(), "vda".into())],
        "every disk has its name from before the rescue"
    );
    let conn = virt::connect::Connect::open(Some(uri.as_str())).unwrap();
    let pool = conn.lookup_storage_pool_by_name("default-pool").unwrap();
    assert!(
        pool.lookup_storage_vol_by_name(&rescue_disk).is_err(),
        "rescue disk deleted"
    );

    // A rescue disk left by a crash goes with the domain.
    driver.ensure(name, &off).unwrap();
    assert!(pool.lookup_storage_vol_by_name(&rescue_disk).is_ok());
    driver.destroy(name).unwrap();
    assert!(pool.lookup_storage_vol_by_name(&rescue_disk).is_err());
    assert!(pool.lookup_storage_vol_by_name(&system).is_err());
}

/// A snapshot on the test driver (R18): the system disk of a running
/// guest is copied into a version of the snapshot's copy with the guest
/// paused for it (the test driver has no backup job) and resumed after; a
/// copy of another account's domain is refused.
#[test]
fn a_snapshot_copies_the_system_disk_of_its_own_accounts_domain_only() {
    let dir = tempfile::tempdir().unwrap();
    let driver = Driver::open(DriverConfig::for_uri(&private_node(dir.path()), "z")).unwrap();
    let name = "stratus-acc-0000000000000001.vs-00000000000000c1";
    let base = "stratus-acc-0000000000000001.st-00000000000000c2";
    driver.seed_image("itest-capture.qcow2", 2).unwrap();
    let running = spec("itest-capture.qcow2", PowerState::Running, true);
    driver.ensure(name, &running).unwrap();
    driver
        .ensure_volume(
            base,
            &VolumeSpec {
                size_gib: 25,
                create: true,
            },
        )
        .unwrap();
    let theirs = "stratus-acc-0000000000000002.st-00000000000000c3";
    assert!(matches!(
        driver.capture_disk(theirs, name, 7),
        Err(AgentError::BadRequest(_))
    ));
    // The test driver cannot read volumes back: the copy is made (with
    // the guest paused), then its measurement is refused as something this
    // hypervisor cannot do (no retry helps) and nothing of it is left;
    // `tests/real_guests.rs` measures real copies.
    let error = driver.capture_disk(base, name, 7).unwrap_err();
    assert!(
        matches!(error, AgentError::ContentUnsupported(_)),
        "{error}"
    );
    assert_eq!(error.code(), AgentErrorCode::ContentUnsupported);
    assert!(
        error.to_string().contains("virStorageVolDownload"),
        "{error}"
    );
    assert!(driver.observe_volume(base).unwrap().version(7).is_none());
    assert_eq!(
        driver.observe(name).unwrap().state,
        Some(DomainState::Running),
        "the guest runs on"
    );
    driver.destroy(name).unwrap();
    driver.destroy_volume(base).unwrap();
}

/// A restore on the test driver (R18): while the domain is off its new
/// disk generation is made a copy of the snapshot's version (of the same
/// account only), and the old disk is wiped after.
#[test]
fn a_restore_makes_the_new_disk_a_copy_of_a_snapshot_of_the_same_account_only() {
    let dir = tempfile::tempdir().unwrap();
    let driver = Driver::open(DriverConfig::for_uri(&private_node(dir.path()), "z")).unwrap();
    let name = "stratus-acc-0000000000000001.vs-00000000000000d1";
    let base = "stratus-acc-0000000000000001.st-00000000000000d2";
    let theirs = "stratus-acc-0000000000000002.st-00000000000000d3";
    driver.seed_image("itest-restore.qcow2", 2).unwrap();
    for copy in [base, theirs] {
        driver
            .ensure_volume(
                copy,
                &VolumeSpec {
                    size_gib: 25,
                    create: true,
                },
            )
            .unwrap();
    }
    let off = DomainSpec {
        power: PowerState::Stopped,
        ..spec("itest-restore.qcow2", PowerState::Stopped, true)
    };
    driver.ensure(name, &off).unwrap();
    let restore = |source: &str| DomainSpec {
        disk_generation: 1,
        retired_disk_generation: Some(0),
        disk_source: Some(source.to_owned()),
        create_disk: false,
        ..off.clone()
    };
    for (source, refusal) in [
        (storage_volume_name(theirs, 0), "not of the account"),
        (format!("{name}-disk.qcow2"), "not a version"),
        (storage_volume_name(base, 9), "does not exist"),
    ] {
        let error = driver.ensure(name, &restore(&source)).unwrap_err();
        assert!(error.to_string().contains(refusal), "{source}: {error}");
        assert_eq!(
            driver.observe(name).unwrap().disk_generation,
            Some(0),
            "{source}: the old disk stays"
        );
    }
    let restored = driver
        .ensure(name, &restore(&storage_volume_name(base, 0)))
        .unwrap();
    assert_eq!(restored.disk_generation, Some(1));
    assert!(
        driver.observe_volume(base).unwrap().version(0).is_some(),
        "the snapshot is never changed by a restore"
    );
    driver.destroy(name).unwrap();
    for copy in [base, theirs] {
        driver.destroy_volume(copy).unwrap();
    }
}
