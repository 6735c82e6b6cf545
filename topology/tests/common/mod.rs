//! Shared helpers: unpack the corpus snapshots (read in place from `tests/corpus/sysfs`,
//! see its SOURCES.md) and write fixture hosts into temp dirs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;
use topology::fixture::FixtureHost;
use topology::{DiscoveryConfig, Inventory, PciAddress, Region, discover};

/// `tests/corpus/sysfs` in the repository.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus/sysfs")
}

/// Unpacks a corpus tarball into a temp dir; returns the dir and the sysfs root inside it.
pub fn unpack(tarball: &str, top: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new().unwrap();
    let src = corpus_dir().join(tarball);
    assert!(
        src.exists(),
        "corpus file {} missing (tests/corpus/sysfs ships in the repository)",
        src.display()
    );
    let out = Command::new("tar")
        .arg("xf")
        .arg(&src)
        .arg("-C")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar xf {} failed (bzip2 and gzip must be installed: Debian packages bzip2, gzip): {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let root = dir.path().join(top);
    (dir, root)
}

pub fn write(host: &FixtureHost) -> TempDir {
    let dir = TempDir::new().unwrap();
    host.write_to(dir.path()).unwrap();
    dir
}

pub fn run(root: &Path) -> Inventory {
    discover(root, &DiscoveryConfig::default()).unwrap()
}

pub fn pci(s: &str) -> PciAddress {
    PciAddress::parse(s).unwrap()
}

pub fn region<'a>(inv: &'a Inventory, id: &str) -> &'a Region {
    inv.regions
        .iter()
        .find(|r| r.id == id)
        .unwrap_or_else(|| panic!("no region {id} in {:#?}", inv.regions))
}

pub fn ids(inv: &Inventory) -> Vec<&str> {
    inv.regions.iter().map(|r| r.id.as_str()).collect()
}

pub const GIB: u64 = 1 << 30;

/// Replaces the file at `path` with a FIFO (nothing ever writes to it).
pub fn make_fifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let made = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(made.success(), "mkfifo {} failed", path.display());
}

/// Runs `work` on its own thread and fails the test when it takes longer than 10 s (a read that
/// hangs would otherwise hang the whole test binary).
pub fn within_10s<T: Send + 'static>(what: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(work());
    });
    result
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what} did not finish within 10 s (hung on a read?)"))
}
