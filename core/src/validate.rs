//! Validation of names and values that come from customers.

/// A valid hostname per RFC 1123: dot-separated labels of 1-63 letters,
/// digits and hyphens, not starting or ending with a hyphen, 253 characters
/// at most.
pub fn is_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A DNS-1123 subdomain: what Kubernetes accepts as an object name (a
/// hostname in lower case).
pub fn is_object_name(name: &str) -> bool {
    is_hostname(name) && !name.bytes().any(|b| b.is_ascii_uppercase())
}

/// A catalogue name (plan, image, zone): lower-case, 1-63 characters.
pub fn is_slug(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' || b == b'_'
        })
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
}

/// A DNS-1123 label: what Kubernetes accepts as the name of most objects
/// and inside the names of others (`stratus-hypervisor-{label}`), so a name
/// that passes can never be changed on its way into one.
pub fn is_dns_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A plausible e-mail address: one `@`, a non-empty local part, a domain
/// that is a hostname with at least one dot.
pub fn is_email(address: &str) -> bool {
    let Some((local, domain)) = address.split_once('@') else {
        return false;
    };
    address.len() <= 254
        && !local.is_empty()
        && local.len() <= 64
        && !local
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '@')
        && domain.contains('.')
        && is_hostname(domain)
}

/// A display name: 1-200 characters, no control characters, not only spaces.
pub fn is_display_name(name: &str) -> bool {
    !name.trim().is_empty() && name.chars().count() <= 200 && !name.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        for ok in ["web1", "web-1.example.com", "a", "A1", &"a".repeat(63)] {
            assert!(is_hostname(ok), "{ok}");
        }
        for bad in [
            "",
            "-web",
            "web-",
            "we_b",
            "web..com",
            "web 1",
            "wéb",
            &"a".repeat(64),
            &"a.".repeat(127),
        ] {
            assert!(!is_hostname(bad), "{bad}");
        }
    }

    /// The CRD's pattern (checked by the API server for kubectl users) and
    /// this function (checked by the REST API) agree.
    #[test]
    fn hostname_pattern_matches_the_validator() {
        let pattern = regex::Regex::new(crate::resources::HOSTNAME_PATTERN).unwrap();
        let samples = [
            "web1",
            "web-1.example.com",
            "a",
            "A1",
            "-web",
            "web-",
            "we_b",
            "web..com",
            "web 1",
            "wéb",
            ".web",
            "web.",
        ];
        let long_label = "a".repeat(64);
        for sample in samples
            .iter()
            .copied()
            .chain([long_label.as_str(), &"a".repeat(63)])
        {
            assert_eq!(pattern.is_match(sample), is_hostname(sample), "{sample}");
        }
    }

    #[test]
    fn slugs() {
        assert!(is_slug("debian-12"));
        assert!(is_slug("ubuntu-24.04"));
        assert!(!is_slug("Debian"));
        assert!(!is_slug("-x"));
        assert!(!is_slug(""));
    }

    #[test]
    fn emails() {
        assert!(is_email("ops@example.com"));
        assert!(!is_email("ops@localhost"));
        assert!(!is_email("opsexample.com"));
        assert!(!is_email("@example.com"));
        assert!(!is_email("o ps@example.com"));
    }

    #[test]
    fn display_names() {
        assert!(is_display_name("ACME SARL"));
        assert!(!is_display_name("   "));
        assert!(!is_display_name("a\nb"));
        assert!(!is_display_name(&"x".repeat(201)));
    }
}
