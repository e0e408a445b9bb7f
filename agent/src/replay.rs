//! Definitions kept on disk for hypervisors that forget them.
//!
//! libvirt's test driver keeps domains and volumes in memory only; a real
//! hypervisor keeps its definitions across a reboot. So that an all-in-one
//! `stratus up` survives a restart the way a real hypervisor would, the agent
//! records every domain and volume it creates here and replays them on start.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainRecord {
    pub xml: String,
    pub running: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub xml: String,
}

#[derive(Debug, Clone)]
pub struct Definitions {
    domains: PathBuf,
    volumes: PathBuf,
}

fn safe_file_name(name: &str) -> io::Result<String> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(format!("{name}.json"))
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unsafe definition name {name:?}"),
        ))
    }
}

fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, contents)?;
    fs::rename(&tmp, path)
}

fn read_all<T: for<'de> Deserialize<'de>>(dir: &Path) -> io::Result<Vec<(String, T)>> {
    let mut records = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        let record = serde_json::from_slice(&fs::read(&path)?).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })?;
        records.push((name.to_owned(), record));
    }
    records.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(records)
}

impl Definitions {
    pub fn open(dir: &Path) -> io::Result<Self> {
        let domains = dir.join("domains");
        let volumes = dir.join("volumes");
        fs::create_dir_all(&domains)?;
        fs::create_dir_all(&volumes)?;
        Ok(Self { domains, volumes })
    }

    pub fn save_domain(&self, name: &str, record: &DomainRecord) -> io::Result<()> {
        write_atomically(
            &self.domains.join(safe_file_name(name)?),
            &serde_json::to_vec(record)?,
        )
    }

    pub fn remove_domain(&self, name: &str) -> io::Result<()> {
        remove_if_present(&self.domains.join(safe_file_name(name)?))
    }

    pub fn save_volume(&self, name: &str, record: &VolumeRecord) -> io::Result<()> {
        write_atomically(
            &self.volumes.join(safe_file_name(name)?),
            &serde_json::to_vec(record)?,
        )
    }

    pub fn remove_volume(&self, name: &str) -> io::Result<()> {
        remove_if_present(&self.volumes.join(safe_file_name(name)?))
    }

    pub fn domains(&self) -> io::Result<Vec<(String, DomainRecord)>> {
        read_all(&self.domains)
    }

    pub fn volumes(&self) -> io::Result<Vec<(String, VolumeRecord)>> {
        read_all(&self.volumes)
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_names_are_confined() {
        let dir = tempfile::tempdir().unwrap();
        let defs = Definitions::open(dir.path()).unwrap();
        let record = DomainRecord {
            xml: "<domain/>".into(),
            running: true,
        };
        defs.save_domain("stratus-vs-1", &record).unwrap();
        defs.save_volume(
            "debian-12.qcow2",
            &VolumeRecord {
                xml: "<volume/>".into(),
            },
        )
        .unwrap();
        assert_eq!(
            defs.domains().unwrap(),
            vec![("stratus-vs-1".to_owned(), record)]
        );
        assert_eq!(defs.volumes().unwrap().len(), 1);
        defs.remove_domain("stratus-vs-1").unwrap();
        defs.remove_domain("stratus-vs-1").unwrap();
        assert!(defs.domains().unwrap().is_empty());
        assert!(
            defs.save_domain(
                "../escape",
                &DomainRecord {
                    xml: String::new(),
                    running: false
                }
            )
            .is_err()
        );
        assert!(
            defs.save_domain(
                ".hidden",
                &DomainRecord {
                    xml: String::new(),
                    running: false
                }
            )
            .is_err()
        );
    }
}
