//! The adapter sits in every VM start and every libvirt capability probe.
//!
//! - `exec/direct_true` vs `exec/adapter_true`: spawning `/bin/true` directly vs spawning the
//!   adapter (`hbm-qemu` symlink to the built `hbm-hook`) that execs `/bin/true` with a libvirt-size
//!   argv and no instructions; the difference is the pass-through overhead (goal: < 2 ms).
//!   `exec/env_true` (`/usr/bin/env /bin/true ...`) is the floor for any exec wrapper.
//!   `exec/adapter_config_true`: the same with the emulator named by a config file (YAML parse),
//!   as on a libvirt host.
//! - `exec/adapter_dax_true`: the same with one dax instruction (a character device check, a
//!   cached probe lookup, the transform, then exec).
//! - `probe/cached_lookup`: [`probe::cached`] of the real QEMU after one real probe (goal: < 100 µs).
//! - `transform/libvirt_argv`: the pure transform of a libvirt 9.0 argv with sp-mem + dax.
//!
//! Run: `cargo bench -p hook --bench adapter -- --warm-up-time 1 --measurement-time 3`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;
use std::process::{Command, Stdio};

use criterion::{Criterion, criterion_group, criterion_main};
use hbm_hook::qemu::probe::{self, Capabilities};
use hbm_hook::qemu::transform::transform;
use hbm_rewrite::instructions::parse;

const REAL_QEMU: &str = "/usr/bin/qemu-system-x86_64";

/// The argv libvirt 9.0 writes for a q35 guest with a CPU-less 512 MiB cell (captured with
/// `virsh domxml-to-native qemu-argv`, paths shortened).
fn libvirt_argv() -> Vec<String> {
    let text = r#"-name guest=bench,debug-threads=on -S -object {"qom-type":"secret","id":"masterKey0","format":"raw","file":"/var/lib/libvirt/qemu/domain-1-bench/master-key.aes"} -machine pc-q35-10.0,usb=off,dump-guest-core=off -accel tcg -cpu qemu64 -m 1536 -overcommit mem-lock=off -smp 2,sockets=2,cores=1,threads=1 -object {"qom-type":"memory-backend-ram","id":"ram-node0","size":1073741824} -numa node,nodeid=0,cpus=0-1,memdev=ram-node0 -object {"qom-type":"memory-backend-ram","id":"ram-node1","size":536870912} -numa node,nodeid=1,memdev=ram-node1 -uuid 25a2691c-b838-4343-8f70-883d32d50058 -display none -no-user-config -nodefaults -chardev socket,id=charmonitor,fd=28,server=on,wait=off -mon chardev=charmonitor,id=monitor,mode=control -rtc base=utc -no-shutdown -boot strict=on -kernel /var/cache/hbm-passthrough/guest-kit/vmlinuz -initrd /var/cache/hbm-passthrough/guest-kit/initrd.img -append console=ttyS0 -device {"driver":"pcie-root-port","port":8,"chassis":1,"id":"pci.1","bus":"pcie.0","multifunction":true,"addr":"0x1"} -device {"driver":"pcie-root-port","port":9,"chassis":2,"id":"pci.2","bus":"pcie.0","addr":"0x1.0x1"} -device {"driver":"qemu-xhci","id":"usb","bus":"pci.1","addr":"0x0"} -add-fd set=0,fd=30,opaque=serial0-source -chardev file,id=charserial0,path=/dev/fdset/0,append=on -device {"driver":"isa-serial","chardev":"charserial0","id":"serial0","index":0} -audiodev {"id":"audio1","driver":"none"} -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny -msg timestamp=on"#;
    text.split(' ').map(String::from).collect()
}

fn run(cmd: &mut Command) {
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let adapter = dir.path().join("hbm-qemu");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_hbm-hook"), &adapter).unwrap();
    let cache = dir.path().join("cache");
    let argv = libvirt_argv();
    // /bin/true "speaks" nothing; the dax instruction needs no dialect, only a cached probe entry.
    let true_caps = Capabilities {
        binary: "/bin/true".into(),
        version: "0.0.0".into(),
        memmap_type: false,
        sp_mem: false,
        acpi_generic_initiator: false,
    };
    probe::store(Path::new("/bin/true"), &cache, &true_caps).unwrap();

    let mut g = c.benchmark_group("exec");
    g.bench_function("direct_true", |b| b.iter(|| run(Command::new("/bin/true").args(&argv))));
    // The floor for any exec wrapper: coreutils' env, a small C program, exec'ing /bin/true.
    g.bench_function("env_true", |b| {
        b.iter(|| run(Command::new("/usr/bin/env").arg("/bin/true").args(&argv)))
    });
    g.bench_function("adapter_true", |b| {
        b.iter(|| {
            run(Command::new(&adapter)
                .args(&argv)
                .env("HBM_QEMU_EMULATOR", "/bin/true")
                .env("HBM_PROBE_CACHE_DIR", &cache)
                .env_remove("HBM_QEMU_INSTRUCTIONS"))
        })
    });
    // As on a libvirt host: libvirt clears the environment, the config file names the emulator.
    let config = dir.path().join("hook.yaml");
    std::fs::write(
        &config,
        format!("qemu:\n  emulator: /bin/true\n  probe_cache_dir: {}\n", cache.display()),
    )
    .unwrap();
    g.bench_function("adapter_config_true", |b| {
        b.iter(|| {
            run(Command::new(&adapter)
                .args(&argv)
                .env("HBM_HOOK_CONFIG", &config)
                .env_remove("HBM_QEMU_EMULATOR")
                .env_remove("HBM_PROBE_CACHE_DIR")
                .env_remove("HBM_QEMU_INSTRUCTIONS"))
        })
    });
    g.bench_function("adapter_dax_true", |b| {
        b.iter(|| {
            run(Command::new(&adapter)
                .args(&argv)
                .env("HBM_QEMU_EMULATOR", "/bin/true")
                .env("HBM_PROBE_CACHE_DIR", &cache)
                .env(
                    "HBM_QEMU_INSTRUCTIONS",
                    "v1;dax:cell=1,size=536870912,path=/dev/null,align=2097152",
                ))
        })
    });
    g.finish();

    probe::capabilities(Path::new(REAL_QEMU), &cache, probe::PROBE_TIMEOUT).unwrap();
    c.bench_function("probe/cached_lookup", |b| {
        b.iter(|| probe::cached(black_box(Path::new(REAL_QEMU)), &cache).unwrap().unwrap())
    });

    let instructions =
        parse("v1;dax:cell=1,size=536870912,path=/dev/dax0.0,align=2097152;sp-mem:cell=1,size=536870912").unwrap();
    let caps = Capabilities {
        sp_mem: true,
        ..true_caps
    };
    c.bench_function("transform/libvirt_argv", |b| {
        b.iter(|| transform(black_box(&argv), black_box(&instructions), &caps).unwrap())
    });
}

criterion_group!(adapter, benches);
criterion_main!(adapter);
