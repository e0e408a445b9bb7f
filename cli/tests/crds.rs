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
    for kind in [
        "VirtualServer",
        "Hypervisor",
        "Account",
        "IpPool",
        "StorageSubscription",
    ] {
        assert!(
            generated.contains(&format!("kind: {kind}\n")),
            "{kind} missing"
        );
    }
    assert_eq!(
        generated.matches("subresources:\n      status: {}").count(),
        5,
        "status is a subresource of every kind"
    );
}

/// `kubectl explain` needs a description on every field, and the API server
/// needs structural schemas: every field typed.
#[test]
fn every_field_is_typed_and_described() {
    fn walk(node: &serde_json::Value, path: &str, problems: &mut Vec<String>) {
        let preserves = node.get("x-kubernetes-preserve-unknown-fields").is_some();
        if node.get("type").is_none() && !preserves {
            problems.push(format!("{path}: no type"));
        }
        // Scalar list items are described by their list.
        let scalar_item = path.ends_with("[]") && node.get("properties").is_none();
        if node.get("description").is_none() && !scalar_item {
            problems.push(format!("{path}: no description"));
        }
        if node.get("anyOf").is_some() || node.get("oneOf").is_some() {
            problems.push(format!("{path}: anyOf/oneOf is not structural"));
        }
        if let Some(properties) = node.get("properties").and_then(|p| p.as_object()) {
            for (name, child) in properties {
                walk(child, &format!("{path}.{name}"), problems);
            }
        }
        if let Some(items) = node.get("items") {
            walk(items, &format!("{path}[]"), problems);
        }
    }
    let output = Command::new(env!("CARGO_BIN_EXE_stratus"))
        .arg("crds")
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    let mut problems = Vec::new();
    for document in text.split("---\n").filter(|d| !d.trim().is_empty()) {
        let crd: serde_json::Value = serde_yaml::from_str(document).unwrap();
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_owned();
        for version in crd["spec"]["versions"].as_array().unwrap() {
            let schema = &version["schema"]["openAPIV3Schema"];
            for part in ["spec", "status"] {
                walk(
                    &schema["properties"][part],
                    &format!("{kind}.{part}"),
                    &mut problems,
                );
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
