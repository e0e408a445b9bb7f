//! The CRDs checked into the chart are exactly what the Rust types generate.
//! Regenerate with: `cargo run -p stratus -- crds > charts/stratus/crds/stratus.dev.yaml`

use std::process::Command;

#[test]
fn checked_in_crds_match_the_generated_ones() {
    let output = Command::new(env!("CARGO_BIN_EXE_stratus"))
        .arg("crds")
        .output()
        .expect("run stratus crds");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let generated = String::from_utf8(output.stdout).expect("UTF-8 YAML");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/stratus/crds/stratus.dev.yaml");
    let checked_in = std::fs::read_to_string(&path).expect("checked-in CRDs");
    assert!(
        generated == checked_in,
        "{} is out of date: regenerate it with `cargo run -p stratus -- crds > charts/stratus/crds/stratus.dev.yaml`",
        path.display()
    );
    for kind in ["VirtualServer", "Hypervisor", "Account", "IpPool"] {
        assert!(
            generated.contains(&format!("kind: {kind}\n")),
            "{kind} missing"
        );
    }
    assert_eq!(
        generated.matches("subresources:\n      status: {}").count(),
        4,
        "status is a subresource of every kind"
    );
}
