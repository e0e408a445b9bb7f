//! The Helm chart's static files: values used by templates exist, example
//! manifests match the resource schemas, Chart.yaml is complete. (CRDs in
//! sync: see crds.rs.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use stratus_core::resources::{Account, Hypervisor, IpPool, VirtualServer};

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/stratus")
}

fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.split("\n---")
        .filter(|doc| {
            doc.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .map(|doc| serde_yaml::from_str(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

#[test]
fn every_value_a_template_reads_is_defined() {
    let values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("values.yaml")).unwrap())
            .unwrap();
    let mut used = BTreeSet::new();
    for entry in std::fs::read_dir(chart().join("templates")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find(".Values.") {
            rest = &rest[at + ".Values.".len()..];
            let path: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_')
                .collect();
            used.insert(path.trim_end_matches('.').to_owned());
        }
    }
    assert!(used.len() > 10, "templates read values: {used:?}");
    for path in &used {
        let found = path.split('.').try_fold(&values, |node, key| node.get(key));
        assert!(
            found.is_some(),
            ".Values.{path} is used by a template but not defined in values.yaml"
        );
    }
}

#[test]
fn chart_metadata_is_complete() {
    let chart_yaml: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap())
            .unwrap();
    for key in ["apiVersion", "name", "version", "appVersion", "description"] {
        assert!(chart_yaml.get(key).is_some(), "Chart.yaml lacks {key}");
    }
    assert_eq!(chart_yaml["name"], "stratus");
    assert_eq!(chart_yaml["appVersion"], env!("CARGO_PKG_VERSION"));
}

/// Deserializes into the Rust type and back: a field the type does not know
/// (a typo, a field of another version) would be lost, so it is caught.
fn matches_schema<K: DeserializeOwned + Serialize>(document: &Value) {
    let typed: K =
        serde_json::from_value(document.clone()).unwrap_or_else(|e| panic!("{e}: {document}"));
    let back = serde_json::to_value(&typed).unwrap();
    assert_known(&document["spec"], &back["spec"], "spec");
    assert_eq!(back["metadata"]["name"], document["metadata"]["name"]);
}

/// Every field written in `written` survived the round trip unchanged
/// (defaults the type adds are fine).
fn assert_known(written: &Value, round_trip: &Value, path: &str) {
    match (written, round_trip) {
        (Value::Object(fields), Value::Object(kept)) => {
            for (key, value) in fields {
                let kept_value = kept
                    .get(key)
                    .unwrap_or_else(|| panic!("{path}.{key} is not in the schema"));
                assert_known(value, kept_value, &format!("{path}.{key}"));
            }
        }
        (Value::Array(items), Value::Array(kept)) => {
            assert_eq!(items.len(), kept.len(), "{path}");
            for (i, (item, kept_item)) in items.iter().zip(kept).enumerate() {
                assert_known(item, kept_item, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(written, round_trip, "{path} changed in the round trip"),
    }
}

#[test]
fn example_manifests_match_the_schemas() {
    let mut kinds = BTreeSet::new();
    for entry in std::fs::read_dir(chart().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        for document in yaml_documents(&path) {
            let kind = document["kind"].as_str().unwrap_or_default().to_owned();
            match kind.as_str() {
                "VirtualServer" => matches_schema::<VirtualServer>(&document),
                "Hypervisor" => matches_schema::<Hypervisor>(&document),
                "Account" => matches_schema::<Account>(&document),
                "IpPool" => matches_schema::<IpPool>(&document),
                "Secret" | "Namespace" => {}
                other => panic!("{}: unexpected kind {other}", path.display()),
            }
            kinds.insert(kind);
        }
    }
    for kind in ["VirtualServer", "Hypervisor", "Account", "IpPool"] {
        assert!(kinds.contains(kind), "no example {kind}");
    }
}
