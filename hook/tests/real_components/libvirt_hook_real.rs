//! The libvirt hook under the real libvirtd: installed as `/etc/libvirt/hooks/qemu.d/hbm-passthrough`
//! (a symlink to the built `hbm-hook`), its config pointing discovery at a fixture host and claims
//! at a temp dir. Two TCG direct-kernel-boot domains (the guest kit's kernel) ask for the same HBM
//! region: the first starts, the second is refused with the hook's message in libvirt's error;
//! after the first is destroyed the second starts. Its QEMU is then SIGKILLed: libvirt's release
//! call frees the claim and the first starts again. Finally a claim left behind by a holder whose
//! QEMU is gone (as when libvirtd was down when it died) is taken over at the next start.
//!
//! libvirtd is shared with other tests on the machine: it is not restarted; a SIGHUP makes it
//! re-scan the hook directories (libvirt caches hook presence and resets the cache on SIGHUP).
//! Everything installed is removed again (and any file that was in the way put back), followed
//! by another SIGHUP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::guest::kit;
use crate::common::libvirt::{Domain, require_libvirt, text, unique_name, virsh};
use crate::common::libvirt_hook::{
    REGION, bootable, claim_file, config_yaml, domain_xml, inventory, read_claim, write_host,
};

const HOOK_PATH: &str = "/etc/libvirt/hooks/qemu.d/hbm-passthrough";
const CONFIG_PATH: &str = "/etc/hbm-passthrough/hook.yaml";
/// Bound for waits on libvirt (not a measurement; generous for a busy 2-core machine).
const BOUND: Duration = Duration::from_secs(120);

fn libvirtd_pid() -> u32 {
    let text = std::fs::read_to_string("/run/libvirtd.pid").expect("libvirtd pid file /run/libvirtd.pid");
    let pid: u32 = text.trim().parse().expect("pid");
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(
        comm.trim(),
        "libvirtd",
        "/run/libvirtd.pid names pid {pid}, which is not libvirtd"
    );
    pid
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    let p = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).expect("pid > 0");
    rustix::process::kill_process(p, sig).unwrap_or_else(|e| panic!("signal {sig:?} to {pid}: {e}"));
}

fn sighup_libvirtd() {
    let pid = libvirtd_pid();
    signal(pid, rustix::process::Signal::HUP);
    // The daemon answers again once the reload is through.
    let start = Instant::now();
    while !virsh(&["version"]).status.success() {
        assert!(start.elapsed() < BOUND, "libvirtd does not answer after SIGHUP");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Moves whatever sits at `path` into `save_dir` (same file system, outside any hook directory);
/// puts it back on drop.
struct Aside {
    path: PathBuf,
    saved: Option<PathBuf>,
}

impl Aside {
    fn new(path: &str, save_dir: &str) -> Self {
        let path = PathBuf::from(path);
        let saved = if std::fs::symlink_metadata(&path).is_ok() {
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            let to = Path::new(save_dir).join(format!("{file}.hbm-test-saved-{}", std::process::id()));
            std::fs::rename(&path, &to).unwrap();
            Some(to)
        } else {
            None
        };
        Self { path, saved }
    }
}

impl Drop for Aside {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(s) = &self.saved {
            let _ = std::fs::rename(s, &self.path);
        }
    }
}

/// The hook and its config installed; everything restored on drop (files put back, directories
/// this test created removed again); the caller then SIGHUPs libvirtd.
struct Installed {
    asides: Vec<Aside>,
    created_dirs: Vec<&'static str>,
}

impl Installed {
    fn new(config: &str) -> Self {
        let mut created_dirs = Vec::new();
        for dir in [
            "/etc/libvirt/hooks",
            "/etc/libvirt/hooks/qemu.d",
            "/etc/hbm-passthrough",
        ] {
            if !Path::new(dir).exists() {
                std::fs::create_dir(dir).unwrap();
                created_dirs.push(dir);
            }
        }
        let asides = vec![
            Aside::new(HOOK_PATH, "/etc/libvirt/hooks"),
            Aside::new(CONFIG_PATH, "/etc/hbm-passthrough"),
        ];
        std::fs::write(CONFIG_PATH, config).unwrap();
        install_link();
        sighup_libvirtd();
        Self { asides, created_dirs }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(HOOK_PATH);
        let _ = std::fs::remove_file(CONFIG_PATH);
        self.asides.clear();
        for dir in self.created_dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn install_link() {
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_hbm-hook"), HOOK_PATH).unwrap();
}

fn uuid_of(name: &str) -> String {
    let out = virsh(&["domuuid", name]);
    assert!(out.status.success(), "domuuid {name}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < BOUND, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn qemu_pid(name: &str) -> u32 {
    let text = std::fs::read_to_string(format!("/run/libvirt/qemu/{name}.pid")).unwrap();
    let pid: u32 = text.trim().parse().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("qemu-system"),
        "pid {pid} is not QEMU"
    );
    pid
}

/// Starts `d` once the hook is active: right after the SIGHUP libvirt may still run without it,
/// which shows as a start without a claim; such a start is undone and retried.
fn start_claiming(d: &Domain, claims: &Path) {
    let start = Instant::now();
    loop {
        d.start().unwrap();
        if read_claim(claims).is_some_and(|c| c.domain == d.name) {
            return;
        }
        d.destroy();
        assert!(start.elapsed() < BOUND, "the hook never ran at prepare (no claim file)");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn two_domains_one_region_under_real_libvirtd() {
    require_libvirt();
    kit();
    let _hook_installed = crate::common::libvirt::with_installed_hook();
    let host = write_host();
    let inv = inventory(host.path());
    let run = tempfile::tempdir().unwrap();
    let claims = run.path().join("claims");
    let logs = tempfile::tempdir().unwrap();

    let name_a = unique_name("claim-a");
    let name_b = unique_name("claim-b");
    let a = Domain::define(&bootable(&domain_xml(&name_a, &logs.path().join("a.log"), &inv))).unwrap();
    let b = Domain::define(&bootable(&domain_xml(&name_b, &logs.path().join("b.log"), &inv))).unwrap();
    let (uuid_a, uuid_b) = (uuid_of(&name_a), uuid_of(&name_b));

    {
        let _installed = Installed::new(&config_yaml(host.path(), &claims, 0));

        // The first starts and holds the region.
        start_claiming(&a, &claims);
        let claim = read_claim(&claims).unwrap();
        assert_eq!((claim.region.as_str(), claim.uuid.as_str()), (REGION, uuid_a.as_str()));
        assert_eq!(a.state().unwrap(), "running");

        // The second is refused with the hook's line in libvirt's error.
        let err = b.start().unwrap_err();
        assert!(
            err.contains(&format!(
                "hbm-passthrough: domain {name_b}: HBM region {REGION} is held by running domain {name_a} (uuid {uuid_a}); stop that domain or give this one another GPU"
            )),
            "{err}"
        );
        assert_eq!(b.state().unwrap(), "shut off");
        assert_eq!(
            read_claim(&claims).unwrap().uuid,
            uuid_a,
            "the refusal leaves the claim alone"
        );

        // Destroy the first (libvirt runs release): the second starts.
        a.destroy();
        wait_until("the first domain's claim to be released", || {
            read_claim(&claims).is_none()
        });
        b.start().unwrap();
        let claim = read_claim(&claims).unwrap();
        assert_eq!(
            (claim.domain.as_str(), claim.took_over_from.as_deref()),
            (name_b.as_str(), None)
        );

        // SIGKILL the second's QEMU: libvirt notices, runs release, the region is free again.
        let pid = qemu_pid(&name_b);
        signal(pid, rustix::process::Signal::KILL);
        wait_until("the killed domain to be shut off", || {
            b.state().is_ok_and(|s| s == "shut off")
        });
        wait_until("the killed domain's claim to be released", || {
            read_claim(&claims).is_none()
        });
        a.start().unwrap();
        assert_eq!(read_claim(&claims).unwrap().uuid, uuid_a);
        a.destroy();
        wait_until("release", || read_claim(&claims).is_none());

        // A claim left behind by a holder whose QEMU is gone (libvirt could not run release):
        // the next start takes it over and records whose it was.
        let stale = format!(
            "{{\"region\":\"{REGION}\",\"domain\":\"{name_b}\",\"uuid\":\"{uuid_b}\",\"claimed_at_unix\":1}}\n"
        );
        std::fs::write(claim_file(&claims), stale).unwrap();
        a.start().unwrap();
        let claim = read_claim(&claims).unwrap();
        assert_eq!(claim.domain, name_a);
        assert_eq!(claim.took_over_from, Some(format!("{name_b} ({uuid_b})")));
        a.destroy();
        wait_until("release", || read_claim(&claims).is_none());
    }
    // Hook removed (and whatever was in its place put back): libvirtd re-scans.
    sighup_libvirtd();
}
