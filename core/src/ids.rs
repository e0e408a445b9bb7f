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
    /// A storage subscription; also its resource name.
    StorageId,
    "st"
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
    /// Accepts a name received from outside if it is a DNS label: it names
    /// the Hypervisor object and, inside `stratus-hypervisor-{name}`, the
    /// Secret of its credential, so it must be valid for both as it is
    /// (two names that mapped to one Secret would share a credential).
    pub fn parse(raw: &str) -> Option<Self> {
        crate::validate::is_dns_label(raw).then(|| Self(raw.to_owned()))
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

/// The libvirt domain of the server `namespace/name`. Two accounts may
/// both call a server `web1` (Kubernetes mode), so the namespace is part of
/// the name: a namespace is a DNS label (no dot), so the first dot separates
/// the two without ambiguity. The controller records the name in the
/// server's status when it places it and uses the recorded one from then on.
pub fn domain_name(namespace: &str, name: &str) -> String {
    let readable = format!("{}{namespace}.{name}", crate::agent_api::MANAGED_PREFIX);
    if readable.len() <= MAX_DOMAIN_NAME {
        return readable;
    }
    // Too long for a volume file name: the object name is digested instead
    // (the namespace stays verbatim, so a collision stays inside one account).
    format!(
        "{}{namespace}.h{:016x}{:016x}",
        crate::agent_api::MANAGED_PREFIX,
        fnv1a(0xcbf2_9ce4_8422_2325, name),
        fnv1a(0x6c62_272e_07bb_0142, name)
    )
}

/// The longest domain name the controller gives: its disk volume, a file
/// in a dir pool, must stay well inside a 255-byte file name.
pub const MAX_DOMAIN_NAME: usize = 200;

/// The domain name servers placed before domain names were recorded got:
/// the object name alone. Kept so those domains stay theirs.
pub fn legacy_domain_name(name: &str) -> String {
    format!("{}{name}", crate::agent_api::MANAGED_PREFIX)
}

fn fnv1a(basis: u64, text: &str) -> u64 {
    let mut hash = basis;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
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
    fn domain_names_tell_accounts_apart_and_stay_short() {
        assert_eq!(
            domain_name("acc-0000000000000001", "web1"),
            "stratus-acc-0000000000000001.web1"
        );
        assert_ne!(domain_name("acc-a", "web1"), domain_name("acc-b", "web1"));
        // A namespace has no dot, so "a" + "b.c" and "a.b" + "c" differ.
        assert_ne!(domain_name("a", "b.c"), domain_name("a-b", "c"));
        let long = "x".repeat(253);
        let digested = domain_name(&"n".repeat(63), &long);
        assert!(digested.len() <= MAX_DOMAIN_NAME, "{digested}");
        assert_ne!(digested, domain_name(&"n".repeat(63), &"y".repeat(253)));
        assert_eq!(legacy_domain_name("vs-1"), "stratus-vs-1");
    }

    #[test]
    fn hypervisor_names_are_slugs_and_name_their_credential() {
        let name = HypervisorName::parse("par1-hv1").unwrap();
        assert_eq!(name.credential_name(), "hypervisor/par1-hv1");
        assert_eq!(HypervisorName::parse("Par1"), None);
        assert_eq!(HypervisorName::parse("a/b"), None);
        for bad in ["a_b", "a.b", "-a", "a-", "", &"a".repeat(64)] {
            assert_eq!(HypervisorName::parse(bad), None, "{bad}");
        }
    }
}
