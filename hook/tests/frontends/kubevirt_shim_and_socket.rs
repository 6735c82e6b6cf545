//! The sidecar-shim calling convention (`onDefineDomain --vmi JSON --domain XML`, also as the
//! binary's name, as KubeVirt's shim image runs it) and the sidecar's socket-directory handling:
//! stale socket from a previous run, missing / unwritable directory, a non-socket in the way.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use crate::common::domain_xml::PciAddr;
use crate::common::kubevirt::{
    GPU_81, HBM_BYTES, SidecarProcess, connect, corpus_node, find_socket, hbm_hook, info, vmi_json, write_node,
};
use crate::common::{corpus, hbm_chain};

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
}

/// `hbm-hook onDefineDomain --vmi VMI --domain DOMAIN FLAGS...`.
fn on_define_domain(vmi: &str, domain: &str, flags: &[&str]) -> Output {
    let mut args = vec!["onDefineDomain", "--vmi", vmi, "--domain", domain];
    args.extend_from_slice(flags);
    run(&hbm_hook(), &args)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn shim_convention_prints_the_new_domain_xml() {
    let node = write_node(&corpus_node());
    let root = node.path().to_str().unwrap();
    let gpu1 = corpus::file("kubevirt/gpu1.rendered.xml");
    let vmi = String::from_utf8(vmi_json("shim", &[("hbm-passthrough.dev/dialect", "none")])).unwrap();
    let exe = hbm_hook();

    let out = on_define_domain(&vmi, &gpu1.text, &["--sysfs-root", root]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let xml = String::from_utf8(out.stdout.clone()).unwrap();
    let chain = hbm_chain::read(&xml, PciAddr::parse_host(GPU_81).unwrap()).unwrap();
    assert_eq!(chain.cell_bytes, HBM_BYTES);
    assert_eq!(chain.memnode, Some(("strict".to_string(), "1".to_string())));

    // Run under the shim's name (a symlink called onDefineDomain): same output.
    let bin = tempfile::tempdir().unwrap();
    let on_define = bin.path().join("onDefineDomain");
    std::os::unix::fs::symlink(&exe, &on_define).unwrap();
    let again = run(
        &on_define,
        &["--vmi", &vmi, "--domain", &gpu1.text, "--sysfs-root", root],
    );
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(again.stdout, out.stdout);

    // Nothing to do: the input comes back as it was.
    let plain = corpus::file("kubevirt/hooks-domain.xml");
    let out = run(
        &on_define,
        &["--vmi", &vmi, "--domain", &plain.text, "--sysfs-root", root],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(out.stdout, plain.text.as_bytes());

    // preCloudInitIso echoes the cloud-init data.
    let pre = bin.path().join("preCloudInitIso");
    std::os::unix::fs::symlink(&exe, &pre).unwrap();
    let out = run(
        &pre,
        &["--vmi", &vmi, "--cloud-init", "{\"userData\":\"#cloud-config\\n\"}"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(out.stdout, b"{\"userData\":\"#cloud-config\\n\"}");
}

#[test]
fn shim_convention_bad_input_and_required_failures_exit_with_one_line() {
    let node = write_node(&corpus_node());
    let root = node.path().to_str().unwrap();
    let gpu1 = corpus::file("kubevirt/gpu1.rendered.xml");

    let out = on_define_domain("not json", &gpu1.text, &["--sysfs-root", root]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("hbm-hook onDefineDomain: VMI is not valid JSON"),
        "{err}"
    );

    let odd = String::from_utf8(vmi_json("odd", &[("hbm-passthrough.dev/dialect", "spm-please")])).unwrap();
    let out = on_define_domain(&odd, &gpu1.text, &["--sysfs-root", root]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("annotation hbm-passthrough.dev/dialect=\"spm-please\": unknown dialect"),
        "{}",
        stderr(&out)
    );

    // required on a node without that GPU's HBM: exit 3, the message says what is missing.
    let foreign = gpu1.text.replace("bus=\"0x81\"", "bus=\"0x99\"");
    let req = String::from_utf8(vmi_json(
        "req",
        &[
            ("hbm-passthrough.dev/policy", "required"),
            ("hbm-passthrough.dev/dialect", "none"),
        ],
    ))
    .unwrap();
    let out = on_define_domain(&req, &foreign, &["--sysfs-root", root]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("VMI hbm-test/req requires HBM") && err.contains("0000:99:00.0"),
        "{err}"
    );

    // required and the node's sysfs is not there: exit 3.
    let out = on_define_domain(&req, &gpu1.text, &["--sysfs-root", "/nonexistent-root"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("host discovery failed: sysfs root /nonexistent-root is unusable"),
        "{}",
        stderr(&out)
    );

    // A bad config file: exit 2.
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cfg.path(), "rewrite:\n  policy: sometimes\n").unwrap();
    let out = on_define_domain(&req, &gpu1.text, &["--config", cfg.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("unknown policy"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_from_a_previous_run_is_removed_and_served() {
    let node = write_node(&corpus_node());
    let hooks = tempfile::tempdir().unwrap();
    let stale = hooks.path().join("hbm-passthrough.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists(), "a dead socket file is left behind");

    let mut sidecar = SidecarProcess::start(hooks.path(), &["--sysfs-root", node.path().to_str().unwrap()]);
    let socket = find_socket(hooks.path(), &mut sidecar);
    assert_eq!(socket, stale);
    let channel = connect(&socket).await;
    assert_eq!(info(&channel).await.name, "hbm-passthrough");

    // A second sidecar with the same name refuses: the socket is live.
    let second = Command::new(hbm_hook())
        .args(["kubevirt-sidecar", "--socket-dir", hooks.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(2));
    assert!(
        stderr(&second).contains("another sidecar is serving on it"),
        "{}",
        stderr(&second)
    );

    proto::kubevirt::hooks::v1alpha3::callbacks_client::CallbacksClient::new(channel.clone())
        .shutdown(proto::kubevirt::hooks::v1alpha3::ShutdownParams {})
        .await
        .unwrap();
    drop(channel);
    let (code, err) = sidecar.wait();
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("removing stale socket"), "{err}");
    assert!(!stale.exists());
}

#[test]
fn unusable_socket_directories_are_clear_errors() {
    let exe = hbm_hook();
    let sidecar = |dir: &Path| {
        Command::new(&exe)
            .args([
                "kubevirt-sidecar",
                "--socket-dir",
                dir.to_str().unwrap(),
                "--sysfs-root",
                "/",
            ])
            .output()
            .unwrap()
    };
    let out = sidecar(Path::new("/nonexistent/kubevirt-hooks"));
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "hbm-hook kubevirt-sidecar: socket directory /nonexistent/kubevirt-hooks: does not exist; create it (virt-launcher shares /var/run/kubevirt-hooks) or pass --socket-dir\n"
    );

    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let out = sidecar(&file);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not a directory"), "{}", stderr(&out));

    // Something that is not a socket where the socket goes: left alone, refused.
    std::fs::write(t.path().join("hbm-passthrough.sock"), "precious").unwrap();
    let out = sidecar(t.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("exists and is not a socket"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(t.path().join("hbm-passthrough.sock")).unwrap(),
        "precious"
    );

    // Not writable for the sidecar's user (nobody): the tests run as root, so drop to nobody.
    let ro = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(ro.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_root = nix_is_root();
    let out = if as_root {
        // A copy nobody can run wherever the checkout lives (it may sit under a 0700 home).
        let bin = tempfile::tempdir().unwrap();
        std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let copy = bin.path().join("hbm-hook");
        std::fs::copy(&exe, &copy).unwrap();
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&copy)
            .args([
                "kubevirt-sidecar",
                "--socket-dir",
                ro.path().to_str().unwrap(),
                "--sysfs-root",
                "/",
            ])
            .output()
            .unwrap_or_else(|e| panic!("setpriv (util-linux): {e}"))
    } else {
        std::fs::set_permissions(ro.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
        sidecar(ro.path())
    };
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot create the socket: Permission denied"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("make it writable for this user"),
        "{}",
        stderr(&out)
    );
}

/// Whether this test runs as root (uid 0), from /proc/self/status.
fn nix_is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .is_some_and(|euid| euid == "0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_sidecar_and_removes_its_socket() {
    let node = write_node(&corpus_node());
    let hooks = tempfile::tempdir().unwrap();
    let mut sidecar = SidecarProcess::start(hooks.path(), &["--sysfs-root", node.path().to_str().unwrap()]);
    let socket = find_socket(hooks.path(), &mut sidecar);
    let channel = connect(&socket).await;
    assert_eq!(info(&channel).await.versions.len(), 3);
    drop(channel);
    let pid = rustix::process::Pid::from_raw(i32::try_from(sidecar.child.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let (code, err) = sidecar.wait();
    assert_eq!(code, Some(0), "{err}");
    assert!(!socket.exists(), "socket removed on SIGTERM");
}

#[test]
fn node_defaults_from_flags_apply_unless_the_vmi_annotations_choose() {
    let node = write_node(&corpus_node());
    let root = node.path().to_str().unwrap();
    let gpu1 = corpus::file("kubevirt/gpu1.rendered.xml");
    let bare = String::from_utf8(vmi_json("defaults", &[])).unwrap();
    let shim = |vmi: &str, extra: &[&str]| {
        let mut flags = vec!["--sysfs-root", root];
        flags.extend_from_slice(extra);
        on_define_domain(vmi, &gpu1.text, &flags)
    };

    // The node default dialect `none` makes a disk-booted VMI without annotations get its HBM.
    let out = shim(&bare, &["--dialect", "none"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let xml = String::from_utf8(out.stdout.clone()).unwrap();
    let chain = hbm_chain::read(&xml, PciAddr::parse_host(GPU_81).unwrap()).unwrap();
    assert_eq!(chain.cell_bytes, HBM_BYTES);
    assert!(!xml.contains("memmap="), "dialect none adds no kernel memmap=");

    // The node default policy `off` leaves it alone ...
    let off = shim(&bare, &["--dialect", "none", "--policy", "off"]);
    assert_eq!(off.status.code(), Some(0), "{}", stderr(&off));
    assert_eq!(off.stdout, gpu1.text.as_bytes());

    // ... unless the VMI asks: its annotation wins over the node default.
    let asks = String::from_utf8(vmi_json("defaults", &[("hbm-passthrough.dev/policy", "auto")])).unwrap();
    let on = shim(&asks, &["--dialect", "none", "--policy", "off"]);
    assert_eq!(on.status.code(), Some(0), "{}", stderr(&on));
    assert_eq!(on.stdout, out.stdout);

    // A bad default is a usage error (exit 2), nothing on stdout.
    let bad = shim(&bare, &["--dialect", "spm-please"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(bad.stdout.is_empty());
    assert!(stderr(&bad).contains("spm-please"), "{}", stderr(&bad));
}
