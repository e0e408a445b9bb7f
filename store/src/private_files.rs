//! Files that hold secrets (tokens, keys, the SQLite database): created 0600
//! inside a 0700 directory, never through a symlink someone planted, and
//! refused when they already exist readable by others.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Why a private file or directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PrivateFileError {
    #[error(
        "{path} is accessible to other users (mode {mode:03o}): run `chmod {wanted:o} {path}` or remove it"
    )]
    TooOpen {
        path: String,
        mode: u32,
        wanted: u32,
    },
    #[error("{path} is a symbolic link or not a regular {what}; refusing to use it for secrets")]
    NotPlain { path: String, what: &'static str },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PrivateFileError + '_ {
    move |source| {
        if source.raw_os_error() == Some(libc::ELOOP) {
            PrivateFileError::NotPlain {
                path: path.display().to_string(),
                what: "file",
            }
        } else {
            PrivateFileError::Io {
                path: path.display().to_string(),
                source,
            }
        }
    }
}

fn check_mode(path: &Path, mode: u32, wanted: u32) -> Result<(), PrivateFileError> {
    let mode = mode & 0o777;
    if mode & 0o077 != 0 {
        return Err(PrivateFileError::TooOpen {
            path: path.display().to_string(),
            mode,
            wanted,
        });
    }
    Ok(())
}

/// Makes `dir` (and missing parents) exist as a directory only its owner
/// can enter: created 0700, and refused when it exists open to others or
/// is a symlink.
pub fn ensure_private_dir(dir: &Path) -> Result<(), PrivateFileError> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.file_type().is_dir() => check_mode(dir, meta.mode(), 0o700),
        Ok(_) => Err(PrivateFileError::NotPlain {
            path: dir.display().to_string(),
            what: "directory",
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir)),
        Err(e) => Err(io(dir)(e)),
    }
}

/// Opens an existing secret file for reading (symlinks are followed: a
/// Kubernetes Secret volume is made of them), refusing it when others may
/// read or write it. Read access for the file's group is allowed only when
/// that group is this process's own: a Secret volume mounted for a
/// non-root pod is readable through its `fsGroup` and nothing else.
pub fn read_private_file(path: &Path) -> Result<String, PrivateFileError> {
    let mut file = File::open(path).map_err(io(path))?;
    let meta = file.metadata().map_err(io(path))?;
    // SAFETY: getegid has no preconditions and cannot fail.
    let own_group = meta.gid() == unsafe { libc::getegid() };
    if own_group && meta.is_file() {
        check_mode(path, meta.mode() & !0o040, 0o600)?;
    } else {
        check_private(path, &file)?;
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io(path))?;
    Ok(text)
}

/// Writes a secret file: created 0600, never through a symlink, and an
/// existing one is only replaced when it is private already.
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), PrivateFileError> {
    let mut file = open_private(path)?;
    file.set_len(0).map_err(io(path))?;
    file.write_all(contents).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

/// Creates `path` empty and private unless it exists, then checks it: the
/// SQLite database is made this way before SQLite opens it (SQLite gives
/// its journal files the database file's mode).
pub fn ensure_private_file(path: &Path) -> Result<(), PrivateFileError> {
    open_private(path).map(drop)
}

/// Opens `path` for writing, creating it 0600 if missing, never through a
/// symlink.
fn open_private(path: &Path) -> Result<File, PrivateFileError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io(path))?;
    check_private(path, &file)?;
    Ok(file)
}

/// An opened secret file must be a regular file no one else can access.
fn check_private(path: &Path, file: &File) -> Result<(), PrivateFileError> {
    let meta = file.metadata().map_err(io(path))?;
    if !meta.is_file() {
        return Err(PrivateFileError::NotPlain {
            path: path.display().to_string(),
            what: "file",
        });
    }
    check_mode(path, meta.mode(), 0o600)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o777
    }

    #[test]
    fn secrets_are_created_private_and_loose_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        ensure_private_dir(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
        let key = data.join("master.key");
        write_private_file(&key, b"secret").unwrap();
        assert_eq!(mode(&key), 0o600);
        assert_eq!(read_private_file(&key).unwrap(), "secret");
        write_private_file(&key, b"new").unwrap();
        assert_eq!(read_private_file(&key).unwrap(), "new");

        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = read_private_file(&key).unwrap_err().to_string();
        assert!(refused.contains("chmod 600"), "{refused}");
        assert!(matches!(
            write_private_file(&key, b"x"),
            Err(PrivateFileError::TooOpen { .. })
        ));
        assert_eq!(
            std::fs::read_to_string(&key).unwrap(),
            "new",
            "a refused write changes nothing"
        );

        // Readable by its own group (a Secret volume's fsGroup): read, not written.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(read_private_file(&key).unwrap(), "new");
        for loose in [0o660, 0o604] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(loose)).unwrap();
            assert!(
                matches!(
                    read_private_file(&key),
                    Err(PrivateFileError::TooOpen { .. })
                ),
                "{loose:o}"
            );
        }

        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            ensure_private_dir(&data),
            Err(PrivateFileError::TooOpen { .. })
        ));
    }

    #[test]
    fn a_planted_symlink_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "keep").unwrap();
        let link = dir.path().join("admin.token");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(
            write_private_file(&link, b"token"),
            Err(PrivateFileError::NotPlain { .. })
        ));
        assert!(matches!(
            ensure_private_file(&link),
            Err(PrivateFileError::NotPlain { .. })
        ));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        let linked_dir = dir.path().join("data");
        std::os::unix::fs::symlink(dir.path(), &linked_dir).unwrap();
        assert!(matches!(
            ensure_private_dir(&linked_dir),
            Err(PrivateFileError::NotPlain { .. })
        ));
    }
}
