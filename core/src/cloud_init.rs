//! The cloud-init NoCloud seed of a server: what its guest learns at boot
//! (instance id, hostname, static addresses, resolvers, the customer's SSH
//! keys and user data), rendered as the three files of a `cidata` volume.
//! The agent writes them to an ISO; a guest with cloud-init (or the `tiny`
//! image's init) reads them.

use serde::{Deserialize, Serialize};

use crate::resources::ServerAddress;

/// Most SSH keys one server may be given.
pub const MAX_SSH_KEYS: usize = 16;
/// Longest SSH public key line accepted (an RSA-16384 key fits).
pub const MAX_SSH_KEY_BYTES: usize = 8 * 1024;
/// Largest user data accepted: what common clouds allow (16 KiB).
pub const MAX_USER_DATA_BYTES: usize = 16 * 1024;
/// Most resolvers a guest is given.
pub const MAX_DNS_SERVERS: usize = 4;

/// Key types cloud-init and OpenSSH accept in `authorized_keys`.
const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Checks one OpenSSH public key line (`TYPE BASE64 [COMMENT]`): a known
/// type, a key blob that decodes and names the same type, one line, no
/// `authorized_keys` options. Says what is wrong.
pub fn check_ssh_key(key: &str) -> Result<(), String> {
    use base64::Engine;
    if key.len() > MAX_SSH_KEY_BYTES {
        return Err(format!("longer than {MAX_SSH_KEY_BYTES} bytes"));
    }
    if key.chars().any(char::is_control) {
        return Err("must be one line without control characters".into());
    }
    let mut parts = key.split_whitespace();
    let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
        return Err("expected \"TYPE BASE64 [COMMENT]\", as in a .pub file".into());
    };
    if !SSH_KEY_TYPES.contains(&kind) {
        return Err(format!(
            "unknown key type {kind:?} (one of {})",
            SSH_KEY_TYPES.join(", ")
        ));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|_| "the key is not valid base64".to_owned())?;
    let named = decoded
        .get(..4)
        .map(|len| u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize)
        .and_then(|len| decoded.get(4..4 + len));
    if named != Some(kind.as_bytes()) {
        return Err(format!("the key data is not a {kind} key"));
    }
    Ok(())
}

/// Checks user data: at most [`MAX_USER_DATA_BYTES`], UTF-8 by its type.
pub fn check_user_data(user_data: &str) -> Result<(), String> {
    if user_data.len() > MAX_USER_DATA_BYTES {
        return Err(format!(
            "{} bytes; at most {MAX_USER_DATA_BYTES}",
            user_data.len()
        ));
    }
    if user_data.contains('\0') {
        return Err("must not contain NUL bytes".into());
    }
    Ok(())
}

/// The `cloudInit:` section of the configuration: what every guest is told
/// beside its own addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudInitConfig {
    /// Resolvers written into every guest's network configuration.
    #[serde(default)]
    pub dns_servers: Vec<String>,
}

impl CloudInitConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.dns_servers.len() > MAX_DNS_SERVERS {
            return Err((
                "cloudInit.dnsServers".into(),
                format!("at most {MAX_DNS_SERVERS} resolvers"),
            ));
        }
        for (i, server) in self.dns_servers.iter().enumerate() {
            if server.parse::<std::net::IpAddr>().is_err() {
                return Err((
                    format!("cloudInit.dnsServers[{i}]"),
                    format!("{server:?} is not an IP address"),
                ));
            }
        }
        Ok(())
    }
}

/// Everything a server's seed says. Built by the controller, sent to the
/// agent in the domain spec; the agent renders it with [`Seed::files`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    /// cloud-init runs its once-per-instance modules again when this changes.
    pub instance_id: String,
    pub hostname: String,
    pub mac_address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<ServerAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<ServerAddress>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_servers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
}

/// YAML double-quoted scalar: every value the customer or IPAM chose is
/// quoted, so none can add keys or documents to the seed.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Seed {
    /// `meta-data`: the instance id, the hostname and the SSH keys (NoCloud
    /// reads `public-keys` from here, so the user data stays the customer's
    /// own, byte for byte).
    pub fn meta_data(&self) -> String {
        let mut out = format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            quoted(&self.instance_id),
            quoted(&self.hostname)
        );
        if !self.ssh_keys.is_empty() {
            out.push_str("public-keys:\n");
            for key in &self.ssh_keys {
                out.push_str(&format!("  - {}\n", quoted(key.trim())));
            }
        }
        out
    }

    /// `network-config` (version 2): the NIC matched by its MAC, its static
    /// addresses, a default route per family, and the resolvers. The IPv6
    /// gateway may lie outside the server's own prefix, so its route is
    /// on-link.
    pub fn network_config(&self) -> String {
        let mut out = format!(
            "version: 2\nethernets:\n  eth0:\n    match:\n      macaddress: {}\n    set-name: eth0\n",
            quoted(&self.mac_address.to_ascii_lowercase())
        );
        let addresses: Vec<&ServerAddress> = self.ipv4.iter().chain(self.ipv6.iter()).collect();
        if !addresses.is_empty() {
            out.push_str("    addresses:\n");
            for address in &addresses {
                out.push_str(&format!(
                    "      - {}\n",
                    quoted(&format!("{}/{}", address.address, address.prefix_length))
                ));
            }
            out.push_str("    routes:\n");
            if let Some(v4) = &self.ipv4 {
                out.push_str(&format!(
                    "      - to: \"0.0.0.0/0\"\n        via: {}\n",
                    quoted(&v4.gateway)
                ));
            }
            if let Some(v6) = &self.ipv6 {
                out.push_str(&format!(
                    "      - to: \"::/0\"\n        via: {}\n        on-link: true\n",
                    quoted(&v6.gateway)
                ));
            }
        }
        if !self.dns_servers.is_empty() {
            let servers: Vec<String> = self.dns_servers.iter().map(|s| quoted(s)).collect();
            out.push_str(&format!(
                "    nameservers:\n      addresses: [{}]\n",
                servers.join(", ")
            ));
        }
        out
    }

    /// `user-data`: the customer's, unchanged, or an empty cloud-config.
    pub fn user_data(&self) -> String {
        self.user_data
            .clone()
            .unwrap_or_else(|| "#cloud-config\n{}\n".to_owned())
    }

    /// The seed's files, by name.
    pub fn files(&self) -> [(&'static str, String); 3] {
        [
            ("meta-data", self.meta_data()),
            ("network-config", self.network_config()),
            ("user-data", self.user_data()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Seed {
        Seed {
            instance_id: "stratus-vs-1".into(),
            hostname: "web1".into(),
            mac_address: "52:54:00:AA:BB:CC".into(),
            ipv4: Some(ServerAddress {
                address: "10.231.0.20".into(),
                prefix: None,
                prefix_length: 24,
                gateway: "10.231.0.1".into(),
            }),
            ipv6: Some(ServerAddress {
                address: "fd42:231:0:5::1".into(),
                prefix: Some("fd42:231:0:5::/64".into()),
                prefix_length: 64,
                gateway: "fd42:231::1".into(),
            }),
            dns_servers: vec!["10.231.0.1".into()],
            ssh_keys: vec!["ssh-ed25519 AAAAC3Nza key@host".into()],
            user_data: None,
        }
    }

    #[test]
    fn seed_files_are_yaml_with_every_value_in_place() {
        let seed = seed();
        let meta: serde_json::Value = serde_yaml::from_str(&seed.meta_data()).unwrap();
        assert_eq!(meta["instance-id"], "stratus-vs-1");
        assert_eq!(meta["local-hostname"], "web1");
        assert_eq!(meta["public-keys"][0], "ssh-ed25519 AAAAC3Nza key@host");
        let network: serde_json::Value = serde_yaml::from_str(&seed.network_config()).unwrap();
        let eth0 = &network["ethernets"]["eth0"];
        assert_eq!(network["version"], 2);
        assert_eq!(eth0["match"]["macaddress"], "52:54:00:aa:bb:cc");
        assert_eq!(eth0["addresses"][0], "10.231.0.20/24");
        assert_eq!(eth0["addresses"][1], "fd42:231:0:5::1/64");
        assert_eq!(eth0["routes"][0]["via"], "10.231.0.1");
        assert_eq!(eth0["routes"][1]["to"], "::/0");
        assert_eq!(eth0["routes"][1]["on-link"], true);
        assert_eq!(eth0["nameservers"]["addresses"][0], "10.231.0.1");
        assert!(seed.user_data().starts_with("#cloud-config"));
    }

    #[test]
    fn a_hostile_value_cannot_add_keys_to_the_seed() {
        let mut seed = seed();
        seed.hostname = "x\"\nruncmd: [reboot]".into();
        seed.ssh_keys = vec!["ssh-ed25519 AAAA\n- evil".into()];
        let meta: serde_json::Value = serde_yaml::from_str(&seed.meta_data()).unwrap();
        assert_eq!(meta["local-hostname"], "x\"\nruncmd: [reboot]");
        assert!(meta.get("runcmd").is_none());
        assert_eq!(meta["public-keys"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn user_data_is_passed_through_unchanged() {
        let mut seed = seed();
        seed.user_data = Some("#!/bin/sh\necho hi\n".into());
        assert_eq!(
            seed.files()[2],
            ("user-data", "#!/bin/sh\necho hi\n".into())
        );
    }

    /// A real ed25519 public key (from `ssh-keygen -t ed25519`).
    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDzg+mxjK55LTh28if62H9cXsAdVZ4XgsP9smAh/3m4D ops@acme";

    #[test]
    fn ssh_keys_are_checked_for_type_and_content() {
        check_ssh_key(ED25519).unwrap();
        check_ssh_key(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDzg+mxjK55LTh28if62H9cXsAdVZ4XgsP9smAh/3m4D",
        )
        .unwrap();
        for (bad, why) in [
            ("", "TYPE BASE64"),
            ("ssh-ed25519", "TYPE BASE64"),
            ("ssh-dss AAAAB3NzaC1kc3M= x", "unknown key type"),
            ("ssh-ed25519 !!!notbase64 x", "base64"),
            (
                "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIDzg+mxjK55LTh28if62H9cXsAdVZ4XgsP9smAh/3m4D x",
                "not a ssh-rsa key",
            ),
            ("command=\"rm -rf /\" ssh-ed25519 AAAA", "unknown key type"),
            ("ssh-ed25519 AAAA\nssh-ed25519 AAAA", "one line"),
        ] {
            let error = check_ssh_key(bad).unwrap_err();
            assert!(error.contains(why), "{bad:?}: {error}");
        }
        assert!(
            check_ssh_key(&format!("ssh-rsa {}", "A".repeat(9000)))
                .unwrap_err()
                .contains("longer")
        );
    }

    #[test]
    fn user_data_is_bounded() {
        check_user_data("#cloud-config\n{}\n").unwrap();
        check_user_data(&"x".repeat(MAX_USER_DATA_BYTES)).unwrap();
        assert!(check_user_data(&"x".repeat(MAX_USER_DATA_BYTES + 1)).is_err());
        assert!(check_user_data("a\0b").is_err());
    }

    #[test]
    fn resolvers_must_be_addresses_and_few() {
        let ok = CloudInitConfig {
            dns_servers: vec!["10.0.0.1".into(), "2001:db8::53".into()],
        };
        ok.validate().unwrap();
        let bad = CloudInitConfig {
            dns_servers: vec!["dns.example".into()],
        };
        assert_eq!(bad.validate().unwrap_err().0, "cloudInit.dnsServers[0]");
        let many = CloudInitConfig {
            dns_servers: vec!["10.0.0.1".into(); 5],
        };
        assert_eq!(many.validate().unwrap_err().0, "cloudInit.dnsServers");
    }
}
