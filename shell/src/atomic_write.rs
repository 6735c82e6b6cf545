//! The one way to replace a file's contents: a temporary file beside the target, renamed over it,
//! so readers see the old or the new contents and never half of either.
//!
//! A symlink is written through: its final target is replaced and the link stays. An existing
//! target that is not a regular file (a device node, a FIFO, a directory) is refused with
//! [`std::io::ErrorKind::InvalidInput`] and left alone. The replaced file keeps its permission
//! bits; a new file gets `0o644`.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// How far a write must have got before [`write_atomically`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Readers see the new contents; a power loss may bring the old ones back (no fsync). For
    /// outputs a caller can recompute, where an fsync would cost more than the work.
    Visible,
    /// The new contents and the rename are on stable storage (file and directory fsynced). For
    /// state that must survive a crash: claims, checkpoints.
    Durable,
}

/// Symlink hops followed before giving up (the kernel's own limit).
const MAX_SYMLINK_HOPS: usize = 40;
/// Permission bits of a file that did not exist before.
const NEW_FILE_MODE: u32 = 0o644;

/// Replaces the contents of `path` (or of the file its symlinks lead to) with `bytes`.
pub fn write_atomically(path: &Path, bytes: &[u8], durability: Durability) -> io::Result<()> {
    let target = resolve_symlinks(path)?;
    let mode = existing_regular_file_mode(&target)?.unwrap_or(NEW_FILE_MODE);
    let dir = parent_dir(&target);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    temp.write_all(bytes)?;
    fs::set_permissions(temp.path(), fs::Permissions::from_mode(mode))?;
    if durability == Durability::Durable {
        temp.as_file().sync_all()?;
    }
    temp.persist(&target).map_err(|e| e.error)?;
    if durability == Durability::Durable {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The path a write to `path` lands on: `path` itself, or the end of its chain of symlinks.
fn resolve_symlinks(path: &Path) -> io::Result<PathBuf> {
    let mut current = path.to_path_buf();
    for _ in 0..MAX_SYMLINK_HOPS {
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = fs::read_link(&current)?;
                current = parent_dir(&current).join(link);
            }
            Ok(_) => return Ok(current),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(current),
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "more than {MAX_SYMLINK_HOPS} symlinks to follow from {}",
        path.display()
    )))
}

/// The permission bits of an existing regular file, `None` when nothing is there, an error for
/// anything that is not a regular file.
fn existing_regular_file_mode(path: &Path) -> io::Result<Option<u32>> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(Some(meta.permissions().mode() & 0o7777)),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file; name a regular file to write", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn new_file_gets_the_contents_and_mode_644() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.xml");
        write_atomically(&path, b"<a/>", Durability::Visible).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"<a/>");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o644);
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn replaced_file_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("claim.json");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        write_atomically(&path, b"new", Durability::Durable).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o600);
    }

    #[test]
    fn symlink_is_written_through_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real.xml");
        fs::write(&target, "old").unwrap();
        let link = dir.path().join("link.xml");
        std::os::unix::fs::symlink("real.xml", &link).unwrap();
        write_atomically(&link, b"new", Durability::Visible).unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(fs::read(&target).unwrap(), b"new");
    }

    #[test]
    fn dangling_symlink_creates_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link.xml");
        std::os::unix::fs::symlink("made.xml", &link).unwrap();
        write_atomically(&link, b"x", Durability::Visible).unwrap();
        assert_eq!(fs::read(dir.path().join("made.xml")).unwrap(), b"x");
    }

    #[test]
    fn non_regular_target_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a-directory");
        fs::create_dir(&sub).unwrap();
        let err = write_atomically(&sub, b"x", Durability::Visible).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("is not a regular file"), "{err}");
        assert!(sub.is_dir());
        let null_err = write_atomically(Path::new("/dev/null"), b"x", Durability::Visible).unwrap_err();
        assert_eq!(null_err.kind(), io::ErrorKind::InvalidInput);
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn symlink_loop_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        let err = write_atomically(&a, b"x", Durability::Visible).unwrap_err();
        assert!(err.to_string().contains("symlinks"), "{err}");
    }
}
