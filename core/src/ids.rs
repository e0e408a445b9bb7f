//! Typed identifiers, so an account id can never be passed where a server id
//! is expected.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::resources::Hypervisor;

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// Builds an id from 64 random bits supplied by the caller (core
            /// has no source of randomness of its own).
            pub fn from_random(bits: u64) -> Self {
                Self(format!("{}-{:016x}", $prefix, bits))
            }

            /// Accepts an id received from outside if it has this kind's shape.
            pub fn parse(raw: &str) -> Option<Self> {
                let rest = raw.strip_prefix($prefix)?.strip_prefix('-')?;
                let well_formed = rest.len() == 16
                    && rest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                well_formed.then(|| Self(raw.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

typed_id!(
    /// A customer account; also the namespace its resources live in.
    AccountId,
    "acc"
);
typed_id!(
    /// A virtual server; also its resource name.
    ServerId,
    "vs"
);
typed_id!(
    /// An API token (the id, never the secret).
    TokenId,
    "tok"
);

/// The name of a hypervisor, which is also its resource name. Operators
/// choose it, so it is a slug rather than a random id.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct HypervisorName(String);

impl HypervisorName {
    /// Accepts a name received from outside if it is a slug (`validate::is_slug`).
    pub fn parse(raw: &str) -> Option<Self> {
        crate::validate::is_slug(raw).then(|| Self(raw.to_owned()))
    }

    /// The name of a stored hypervisor object.
    pub fn of(hypervisor: &Hypervisor) -> Self {
        Self(hypervisor.metadata.name.clone().unwrap_or_default())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Name of the credential holding this hypervisor's agent token.
    pub fn credential_name(&self) -> String {
        format!("hypervisor/{}", self.0)
    }
}

impl fmt::Display for HypervisorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for HypervisorName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl ServerId {
    /// The libvirt domain name of this server on its hypervisor.
    pub fn domain_name(&self) -> String {
        domain_name_for(&self.0)
    }

    /// A stable MAC address for this server (see [`mac_address_for`]).
    pub fn mac_address(&self) -> String {
        mac_address_for(&self.0)
    }
}

/// The libvirt domain name of the server resource called `name`.
pub fn domain_name_for(name: &str) -> String {
    format!("{}{name}", crate::agent_api::MANAGED_PREFIX)
}

/// A stable, locally administered MAC address derived from a server's name,
/// so that re-creating a domain definition never changes the guest's NIC.
pub fn mac_address_for(name: &str) -> String {
    // FNV-1a: tiny and stable across releases (unlike std's hasher).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = hash.to_be_bytes();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[5], b[6], b[7])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_other_kinds() {
        let id = ServerId::from_random(0xdead_beef);
        assert_eq!(id.as_str(), "vs-00000000deadbeef");
        assert_eq!(ServerId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(AccountId::parse(id.as_str()), None);
        assert_eq!(ServerId::parse("vs-XYZ"), None);
        assert_eq!(ServerId::parse("vs-00000000DEADBEEF"), None);
    }

    #[test]
    fn mac_is_stable_and_locally_administered() {
        let id = ServerId::from_random(42);
        assert_eq!(id.mac_address(), id.mac_address());
        assert!(id.mac_address().starts_with("52:54:00:"));
        assert_ne!(id.mac_address(), ServerId::from_random(43).mac_address());
        assert_eq!(id.domain_name(), "stratus-vs-000000000000002a");
    }

    #[test]
    fn hypervisor_names_are_slugs_and_name_their_credential() {
        let name = HypervisorName::parse("par1-hv1").unwrap();
        assert_eq!(name.credential_name(), "hypervisor/par1-hv1");
        assert_eq!(HypervisorName::parse("Par1"), None);
        assert_eq!(HypervisorName::parse("a/b"), None);
    }
}
