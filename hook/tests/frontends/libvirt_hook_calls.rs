//! The libvirt hook called the way libvirt calls it (`<domain> <op> <sub-op> <extra>`, the domain
//! XML on stdin), without libvirtd: claims at `prepare`, release, rewrite at `migrate`/`restore`,
//! refusals and bad input. The real-libvirtd run is `libvirt_hook_real.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Output;

use crate::common::kubevirt::hbm_hook;
use crate::common::libvirt_hook::{
    GPU, REGION, claim_file, config_yaml, domain_xml, inventory, read_claim, run_hook, write_host,
};

struct Setup {
    host: tempfile::TempDir,
    run: tempfile::TempDir,
    config: std::path::PathBuf,
}

fn setup(grace: u64) -> Setup {
    let host = write_host();
    let run = tempfile::tempdir().unwrap();
    let config = run.path().join("hook.yaml");
    std::fs::write(&config, config_yaml(host.path(), &run.path().join("claims"), grace)).unwrap();
    Setup { host, run, config }
}

impl Setup {
    fn claims(&self) -> std::path::PathBuf {
        self.run.path().join("claims")
    }

    fn hook(&self, call: [&str; 4], stdin: &[u8]) -> Output {
        run_hook(
            &hbm_hook(),
            &["libvirt", "--config", self.config.to_str().unwrap()],
            call,
            stdin,
        )
    }
}

/// The names in the claims directory, sorted.
fn claims_dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn with_uuid(xml: &str, uuid: &str) -> String {
    xml.replacen("<name>", &format!("<uuid>{uuid}</uuid>\n  <name>"), 1)
}

const UUID_A: &str = "6f1c52d2-3a7c-4a57-9d0e-0a0000000001";
const UUID_B: &str = "6f1c52d2-3a7c-4a57-9d0e-0b0000000002";

#[test]
fn prepare_claims_release_drops_and_a_second_domain_waits_or_takes_over() {
    let s = setup(30);
    let inv = inventory(s.host.path());
    let a = with_uuid(&domain_xml("hook-a", Path::new("/dev/null"), &inv), UUID_A);
    let b = with_uuid(&domain_xml("hook-b", Path::new("/dev/null"), &inv), UUID_B);

    let out = s.hook(["hook-a", "prepare", "begin", "-"], a.as_bytes());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    let claim = read_claim(&s.claims()).expect("claim written");
    assert_eq!(
        (claim.region.as_str(), claim.domain.as_str(), claim.uuid.as_str()),
        (REGION, "hook-a", UUID_A)
    );
    // Only the claim file and the lock: no temporary left behind.
    assert_eq!(
        claims_dir_names(&s.claims()),
        [".lock".to_string(), "0000:e3:00.0_2fnode0.claim".to_string()]
    );

    // hook-a has no QEMU yet but claimed just now: hook-b must wait (exit 1, one line).
    let out = s.hook(["hook-b", "prepare", "begin", "-"], b.as_bytes());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "hbm-passthrough: domain hook-b: HBM region {REGION} was claimed "
        )),
        "{err}"
    );
    assert!(
        err.ends_with(&format!(
            " s ago by domain hook-a (uuid {UUID_A}), which is still starting; retry once it runs or fails\n"
        )),
        "{err}"
    );
    assert_eq!(
        read_claim(&s.claims()).unwrap().uuid,
        UUID_A,
        "refusal leaves the claim alone"
    );

    // The same domain preparing again (a retried start) keeps its claim.
    let out = s.hook(["hook-a", "prepare", "begin", "-"], a.as_bytes());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // release end drops it; hook-b then claims.
    let out = s.hook(["hook-a", "release", "end", "-"], a.as_bytes());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!claim_file(&s.claims()).exists());
    let out = s.hook(["hook-b", "prepare", "begin", "-"], b.as_bytes());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(read_claim(&s.claims()).unwrap().domain, "hook-b");

    // With no start-up grace, a claim whose holder has no QEMU (no pid file) is stale: taken over.
    let s0 = Setup {
        config: s.run.path().join("hook0.yaml"),
        ..s
    };
    std::fs::write(&s0.config, config_yaml(s0.host.path(), &s0.claims(), 0)).unwrap();
    let out = s0.hook(["hook-a", "prepare", "begin", "-"], a.as_bytes());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let claim = read_claim(&s0.claims()).unwrap();
    assert_eq!(claim.domain, "hook-a");
    assert_eq!(
        claim.took_over_from.as_deref(),
        Some(format!("hook-b ({UUID_B})").as_str())
    );
    assert!(stderr(&out).contains("took over stale HBM claim"), "{}", stderr(&out));
}

/// `kill -9` during `prepare` leaves temporary claim files; the next `prepare` sweeps those older
/// than a minute.
#[test]
fn prepare_sweeps_temporary_files_killed_writers_left() {
    let fixture = setup(30);
    let inv = inventory(fixture.host.path());
    let xml = with_uuid(&domain_xml("hook-sweep", Path::new("/dev/null"), &inv), UUID_A);
    std::fs::create_dir_all(fixture.claims()).unwrap();
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let leftovers: Vec<String> = (0..17)
        .map(|i| format!(".0000:e3:00.0_2fnode0.claim.kill{i:02}.tmp"))
        .collect();
    for name in &leftovers {
        let file = std::fs::File::create(fixture.claims().join(name)).unwrap();
        file.set_modified(an_hour_ago).unwrap();
    }
    let out = fixture.hook(["hook-sweep", "prepare", "begin", "-"], xml.as_bytes());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        claims_dir_names(&fixture.claims()),
        [".lock".to_string(), "0000:e3:00.0_2fnode0.claim".to_string()]
    );
}

#[test]
fn prepare_refuses_regions_this_host_cannot_give() {
    let s = setup(30);
    let inv = inventory(s.host.path());
    let a = with_uuid(&domain_xml("hook-missing", Path::new("/dev/null"), &inv), UUID_A);

    // Another host: same GPU, but its HBM sits on node 2.
    let other = host_with_hbm_on_node_2();
    std::fs::write(&s.config, config_yaml(other.path(), &s.claims(), 30)).unwrap();
    let out = s.hook(["hook-missing", "prepare", "begin", "-"], a.as_bytes());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "hbm-passthrough: domain hook-missing: HBM region {REGION} is not present on this host; rewrite the definition for this host (hbm-hook rewrite) or move the VM\n"
        )
    );
    assert!(!s.claims().exists(), "nothing claimed, no claims dir created");

    // A host without the GPU at all: same refusal.
    let bare = tempfile::tempdir().unwrap();
    topology::fixture::no_hbm().write_to(bare.path()).unwrap();
    std::fs::write(&s.config, config_yaml(bare.path(), &s.claims(), 30)).unwrap();
    let out = s.hook(["hook-missing", "prepare", "begin", "-"], a.as_bytes());
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is not present on this host"), "{}", stderr(&out));

    // An unusable sysfs root: exit 1, says so.
    std::fs::write(&s.config, config_yaml(Path::new("/nonexistent-sysfs"), &s.claims(), 30)).unwrap();
    let out = s.hook(["hook-missing", "prepare", "begin", "-"], a.as_bytes());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("host discovery failed: sysfs root /nonexistent-sysfs is unusable"),
        "{}",
        stderr(&out)
    );

    // Claims directory that cannot be created (a file in the way): exit 1, nothing written.
    let blocker = s.run.path().join("blocker");
    std::fs::write(&blocker, "").unwrap();
    std::fs::write(&s.config, config_yaml(s.host.path(), &blocker.join("claims"), 30)).unwrap();
    let out = s.hook(["hook-missing", "prepare", "begin", "-"], a.as_bytes());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("claims directory") && err.contains("blocker/claims"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn migrate_and_restore_rewrite_for_this_host_and_print_nothing_when_unchanged() {
    let s = setup(30);
    let inv = inventory(s.host.path());
    let a = with_uuid(&domain_xml("hook-migrate", Path::new("/dev/null"), &inv), UUID_A);
    for op in ["migrate", "restore"] {
        // Same host: nothing to change, empty stdout.
        let out = s.hook(["hook-migrate", op, "begin", "-"], a.as_bytes());
        assert_eq!(out.status.code(), Some(0), "{op}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{op}: unchanged must print nothing");
    }

    // The destination has the GPU's HBM on host node 2: the definition is rewritten for it.
    let dest = host_with_hbm_on_node_2();
    std::fs::write(&s.config, config_yaml(dest.path(), &s.claims(), 30)).unwrap();
    for op in ["migrate", "restore"] {
        let out = s.hook(["hook-migrate", op, "begin", "-"], a.as_bytes());
        assert_eq!(out.status.code(), Some(0), "{op}: {}", stderr(&out));
        let xml = String::from_utf8(out.stdout).unwrap();
        let chain = crate::common::hbm_chain::read(&xml, crate::common::domain_xml::PciAddr::parse_host(GPU).unwrap())
            .unwrap_or_else(|e| panic!("{op}: {e}\n{xml}"));
        assert_eq!(chain.memnode, Some(("strict".to_string(), "2".to_string())), "{op}");
        let meta = hbm_rewrite::read_metadata(&xml).unwrap().unwrap();
        let ids: Vec<&str> = meta.claimed.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["0000:e3:00.0/node2"], "{op}");
        // What the hook wrote is what the destination's prepare accepts.
        let out = s.hook(["hook-migrate", "prepare", "begin", "-"], xml.as_bytes());
        assert_eq!(out.status.code(), Some(0), "{op}: {}", stderr(&out));
        let out = s.hook(["hook-migrate", "release", "end", "-"], xml.as_bytes());
        assert_eq!(out.status.code(), Some(0), "{op}: {}", stderr(&out));
    }
    // A domain without the project's metadata: nothing printed, config not even needed.
    let plain = "<domain type='qemu'><name>p</name><uuid>u</uuid></domain>";
    let out = run_hook(
        &hbm_hook(),
        &["libvirt", "--config", "/nonexistent.yaml"],
        ["p", "migrate", "begin", "-"],
        plain.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_input_gets_one_clear_line_and_writes_nothing() {
    let s = setup(30);
    // Garbage on stdin at prepare: exit 2, no claims dir.
    let out = s.hook(["vm", "prepare", "begin", "-"], b"\x00\x01 not xml at all <<<");
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("hbm-passthrough: domain vm: domain XML line 1"),
        "{err}"
    );
    assert!(!s.claims().exists());
    // The malformed corpus definition at migrate: exit 2, nothing on stdout.
    let bad = crate::common::corpus::file("kubevirt/api-domain_numa_topology.xml");
    let out = s.hook(["vm", "migrate", "begin", "-"], bad.text.as_bytes());
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    // Metadata with an unknown policy: exit 2.
    let odd = "<domain><name>vm</name><uuid>u</uuid><metadata><hbm:passthrough xmlns:hbm='https://hbm-passthrough.dev/xmlns/domain/1' mode='sometimes'/></metadata></domain>";
    let out = s.hook(["vm", "prepare", "begin", "-"], odd.as_bytes());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("unknown policy"), "{}", stderr(&out));
    // An operation libvirt does not have: nothing to do, exit 0, a warning.
    let out = s.hook(["vm", "frobnicate", "begin", "-"], b"<domain/>");
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("unknown hook call, nothing to do"),
        "{}",
        stderr(&out)
    );
    // Too few arguments (under the hook's own name, as libvirt runs it): usage, exit 2.
    let link_dir = tempfile::tempdir().unwrap();
    let hook = link_dir.path().join("hbm-passthrough");
    std::os::unix::fs::symlink(hbm_hook(), &hook).unwrap();
    let out = std::process::Command::new(&hook)
        .args(["vm", "prepare"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "hbm-passthrough: usage: hbm-passthrough <domain> <operation> <sub-operation> <extra> (got 2 arguments); libvirt calls hooks this way\n"
    );
    // Under its qemu.d name, ignored calls exit 0 with nothing printed, whatever is on stdin.
    for op in [
        ["started", "begin"],
        ["start", "begin"],
        ["stopped", "end"],
        ["reconnect", "begin"],
        ["attach", "begin"],
    ] {
        let out = run_hook(&hook, &[], ["vm", op[0], op[1], "-"], b"\xff garbage");
        assert_eq!(out.status.code(), Some(0), "{op:?}: {}", stderr(&out));
        assert!(
            out.stdout.is_empty() && out.stderr.is_empty(),
            "{op:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn concurrent_prepares_for_one_region_leave_exactly_one_holder() {
    let s = setup(30);
    let inv = inventory(s.host.path());
    let domains: Vec<(String, String)> = (0..8)
        .map(|i| {
            let name = format!("race-{i}");
            let uuid = format!("6f1c52d2-3a7c-4a57-9d0e-{i:012}");
            let xml = with_uuid(&domain_xml(&name, Path::new("/dev/null"), &inv), &uuid);
            (name, xml)
        })
        .collect();
    let outputs: Vec<Output> = std::thread::scope(|scope| {
        let handles: Vec<_> = domains
            .iter()
            .map(|(name, xml)| scope.spawn(|| s.hook([name.as_str(), "prepare", "begin", "-"], xml.as_bytes())))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<&str> = outputs
        .iter()
        .zip(&domains)
        .filter(|(o, _)| o.status.code() == Some(0))
        .map(|(_, (name, _))| name.as_str())
        .collect();
    assert_eq!(winners.len(), 1, "exactly one prepare wins: {winners:?}");
    for (o, (name, _)) in outputs.iter().zip(&domains) {
        if o.status.code() != Some(0) {
            assert_eq!(o.status.code(), Some(1), "{name}: {}", stderr(o));
            assert!(
                stderr(o).contains(&format!("by domain {}", winners[0])),
                "{name}: {}",
                stderr(o)
            );
        }
    }
    assert_eq!(read_claim(&s.claims()).unwrap().domain, winners[0]);
    let files = std::fs::read_dir(s.claims()).unwrap().count();
    assert_eq!(files, 2, "one claim file and the lock, no temporaries");
}

/// Another host: the same GPU, its HBM on host node 2.
fn host_with_hbm_on_node_2() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    topology::fixture::FixtureHost::new()
        .cpu_node(0, "0-3", 8 << 30)
        .hbm_node(2, crate::common::libvirt_hook::HBM_BYTES, true, true)
        .generic_initiator(2)
        .distance(0, 2, 20)
        .gpu(GPU, 0x1002, 0x74a1, Some("vfio-pci"), Some(21), Some(2))
        .with_generated_srat()
        .write_to(root.path())
        .unwrap();
    root
}
