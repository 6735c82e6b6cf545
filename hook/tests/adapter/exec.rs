//! The adapter binary (`hbm-hook` invoked through an `hbm-qemu` symlink) exec'ing the stand-in QEMU
//! (`tests/stand-in-qemu`, which validates the argv against its dialect and records it) and the
//! real QEMU 10: pass-through, each dialect, and every refusal of the issue (QEMU never started).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::qemu::REAL_QEMU;

/// key=value argv in libvirt's older form: cell 0 with CPUs (1 GiB), CPU-less cell 1 (512 MiB).
const ARGV: &[&str] = &[
    "-name",
    "guest=t,debug-threads=on",
    "-S",
    "-machine",
    "pc-q35-10.0,usb=off",
    "-m",
    "1536",
    "-object",
    "memory-backend-ram,id=ram-node0,size=1073741824",
    "-numa",
    "node,nodeid=0,cpus=0-1,memdev=ram-node0",
    "-object",
    "memory-backend-ram,id=ram-node1,size=536870912",
    "-numa",
    "node,nodeid=1,memdev=ram-node1",
    "-nodefaults",
];

struct Run {
    dir: tempfile::TempDir,
    adapter: PathBuf,
}

impl Run {
    fn new() -> Run {
        let dir = tempfile::tempdir().unwrap();
        let adapter = dir.path().join("hbm-qemu");
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_hbm-hook"), &adapter).unwrap();
        Run { dir, adapter }
    }

    fn record(&self) -> PathBuf {
        self.dir.path().join("argv.record")
    }

    fn stand_in() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/stand-in-qemu")
    }

    /// Runs the adapter with `args`, the instructions `wire` (None = variable unset), the real
    /// emulator `emulator` speaking `dialect` (for the stand-in).
    fn adapter(&self, emulator: &Path, dialect: &str, wire: Option<&str>, args: &[&str]) -> (Output, u32) {
        let mut cmd = Command::new(&self.adapter);
        cmd.args(args)
            .env("HBM_QEMU_EMULATOR", emulator)
            .env("HBM_PROBE_CACHE_DIR", self.dir.path().join("cache"))
            .env("STANDIN_DIALECT", dialect)
            .env("STANDIN_RECORD", self.record())
            .env_remove("HBM_QEMU_INSTRUCTIONS");
        if let Some(w) = wire {
            cmd.env("HBM_QEMU_INSTRUCTIONS", w);
        }
        let child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        (child.wait_with_output().unwrap(), pid)
    }

    /// The argv the stand-in recorded: (pid, program, args).
    fn recorded(&self) -> Option<(u32, String, Vec<String>)> {
        let text = std::fs::read_to_string(self.record()).ok()?;
        let mut lines = text.lines().map(String::from);
        let pid = lines.next()?.strip_prefix("pid=")?.parse().ok()?;
        let program = lines.next()?;
        Some((pid, program, lines.collect()))
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn no_instructions_pass_argv_through_in_the_same_process() {
    let run = Run::new();
    let (out, pid) = run.adapter(&Run::stand_in(), "none", None, ARGV);
    assert!(out.status.success(), "{}", stderr(&out));
    let (recorded_pid, program, args) = run.recorded().expect("stand-in ran");
    assert_eq!(recorded_pid, pid, "exec keeps the pid");
    assert_eq!(program, Run::stand_in().display().to_string());
    assert_eq!(args, strings(ARGV));
    let log = stderr(&out);
    assert!(log.contains("hbm-qemu: argv seen"), "{log}");
    assert!(
        log.contains("hbm-qemu: no instructions, argv exec'd unchanged"),
        "{log}"
    );
    // Nothing probed on the fast path.
    assert!(!run.dir.path().join("cache").exists());
}

#[test]
fn memmap_type_is_applied_for_a_qemu_that_speaks_it() {
    let run = Run::new();
    let wire = "v1;memmap-type:cell=1,size=536870912,type=spm";
    let (out, pid) = run.adapter(&Run::stand_in(), "memmap-type", Some(wire), ARGV);
    assert!(out.status.success(), "{}", stderr(&out));
    let (recorded_pid, _, args) = run.recorded().unwrap();
    assert_eq!(recorded_pid, pid);
    let mut expected = strings(ARGV);
    expected[14] = "node,nodeid=1,memdev=ram-node1,memmap-type=spm".into();
    assert_eq!(args, expected);
    assert!(stderr(&out).contains("hbm-qemu: argv exec'd"), "{}", stderr(&out));
}

#[test]
fn sp_mem_moves_the_cell_into_a_device_for_a_qemu_that_speaks_it() {
    let run = Run::new();
    let wire = "v1;sp-mem:cell=1,size=536870912";
    let (out, _) = run.adapter(&Run::stand_in(), "sp-mem", Some(wire), ARGV);
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, _, args) = run.recorded().unwrap();
    let mut expected = strings(ARGV);
    expected[6] = "size=1048576k,slots=1,maxmem=1572864k".into();
    expected[14] = "node,nodeid=1".into();
    expected.insert(15, "-device".into());
    expected.insert(16, "sp-mem,id=hbm-sp-mem1,memdev=ram-node1,node=1".into());
    assert_eq!(args, expected);
}

#[test]
fn dax_backing_needs_a_character_device() {
    let run = Run::new();
    // /dev/null is a character device: the adapter accepts it, the stand-in checks mem-path exists.
    let wire = "v1;dax:cell=1,size=536870912,path=/dev/null,align=2097152";
    let (out, _) = run.adapter(&Run::stand_in(), "none", Some(wire), ARGV);
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, _, args) = run.recorded().unwrap();
    assert_eq!(
        args[12],
        "memory-backend-file,id=ram-node1,mem-path=/dev/null,share=on,align=2097152,size=536870912"
    );

    let regular = run.dir.path().join("dax0.0");
    std::fs::write(&regular, "").unwrap();
    for (path, why) in [
        (regular.display().to_string(), "not a character device"),
        ("/dev/dax9.9".into(), "No such file"),
    ] {
        let run = Run::new();
        let wire = format!("v1;dax:cell=1,size=536870912,path={path},align=2097152");
        let (out, _) = run.adapter(&Run::stand_in(), "none", Some(&wire), ARGV);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let line = stderr(&out).lines().last().unwrap().to_string();
        assert!(
            line.starts_with(&format!("hbm-qemu: dax device {path} for cell 1: ")),
            "{line}"
        );
        assert!(line.contains(why), "{line}");
        assert_eq!(run.recorded(), None, "QEMU must not start");
    }
}

#[test]
fn bad_instructions_and_mismatched_cells_exit_2_before_exec() {
    let cases = [
        (
            "v1;frob:cell=1,size=1",
            "hbm-qemu: HBM_QEMU_INSTRUCTIONS: unknown instruction \"frob\" (known: memmap-type, sp-mem, dax)",
        ),
        (
            "v1;memmap-type:cell=4,size=536870912,type=spm",
            "hbm-qemu: cell 4: the instructions name guest NUMA cell 4 but the QEMU arguments have no `-numa node,nodeid=4`; redefine the domain through the rewriter so that its cells and instructions agree",
        ),
        (
            "v1;memmap-type:cell=1,size=1073741824,type=spm",
            "hbm-qemu: cell 1: the rewriter recorded 1073741824 bytes but the cell's backend \"ram-node1\" has 536870912 bytes; the domain changed after it was rewritten: rewrite it again",
        ),
    ];
    for (wire, message) in cases {
        let run = Run::new();
        let (out, _) = run.adapter(&Run::stand_in(), "memmap-type", Some(wire), ARGV);
        assert_eq!(out.status.code(), Some(2), "{wire}: {}", stderr(&out));
        assert_eq!(stderr(&out).lines().last(), Some(message), "{wire}");
        assert_eq!(run.recorded(), None, "{wire}: QEMU must not start");
    }
}

/// Instructions that are not UTF-8 (a corrupted `<qemu:env>`) are refused, not ignored: exit 2
/// naming the variable, QEMU never started.
#[test]
fn non_utf8_instructions_exit_2_naming_the_variable() {
    use std::os::unix::ffi::OsStrExt;
    let run = Run::new();
    let out = Command::new(&run.adapter)
        .args(ARGV)
        .env("HBM_QEMU_EMULATOR", Run::stand_in())
        .env("HBM_PROBE_CACHE_DIR", run.dir.path().join("cache"))
        .env("STANDIN_DIALECT", "memmap-type")
        .env("STANDIN_RECORD", run.record())
        .env(
            "HBM_QEMU_INSTRUCTIONS",
            std::ffi::OsStr::from_bytes(b"v1;memmap-type:cell=1,size=\xff"),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).lines().last(),
        Some(
            "hbm-qemu: HBM_QEMU_INSTRUCTIONS is not UTF-8 text; the domain's <qemu:env> entry is corrupted: rewrite the domain again"
        )
    );
    assert_eq!(run.recorded(), None, "QEMU must not start");
}

#[test]
fn real_qemu_10_refuses_memmap_type_with_one_clear_line() {
    let run = Run::new();
    let (out, _) = run.adapter(
        Path::new(REAL_QEMU),
        "none",
        Some("v1;memmap-type:cell=1,size=536870912,type=spm"),
        ARGV,
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let line = stderr(&out).lines().last().unwrap().to_string();
    assert!(
        line.starts_with(
            "hbm-qemu: cell 1: the domain asks for the memmap-type SPM dialect but /usr/bin/qemu-system-x86_64 (QEMU 10."
        ),
        "{line}"
    );
    assert!(
        line.ends_with(
            "speaks neither memmap-type nor sp-mem; install a QEMU that has it, or rewrite the domain with a dialect this QEMU speaks (kernel-cmdline or none)"
        ),
        "{line}"
    );
    assert!(
        !stderr(&out).contains("Invalid parameter"),
        "QEMU itself must not have run"
    );
}

#[test]
fn a_probe_that_never_answers_stops_the_start_after_5_s() {
    let run = Run::new();
    let hang = run.dir.path().join("qemu-hang");
    std::fs::write(
        &hang,
        format!("#!/bin/sh\nSTANDIN_HANG=1 exec {} \"$@\"\n", Run::stand_in().display()),
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(&hang).status().unwrap();
    let (out, _) = run.adapter(&hang, "sp-mem", Some("v1;sp-mem:cell=1,size=536870912"), ARGV);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).lines().last().unwrap(),
        format!(
            "hbm-qemu: probe of {}: no answer within 5 s to `-machine none -qmp stdio` (killed); check that the binary is a QEMU system emulator",
            hang.display()
        )
    );
    assert_eq!(run.recorded(), None);
}

#[test]
fn an_emulator_that_is_the_adapter_is_refused() {
    let run = Run::new();
    let (out, _) = run.adapter(&run.adapter.clone(), "none", None, ARGV);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).lines().last().unwrap().contains("is this adapter itself"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn subcommand_form_takes_flags() {
    let run = Run::new();
    let out = Command::new(env!("CARGO_BIN_EXE_hbm-hook"))
        .args(["qemu", "--emulator"])
        .arg(Run::stand_in())
        .arg("--probe-cache-dir")
        .arg(run.dir.path().join("cache"))
        .arg("--")
        .args(ARGV)
        .env("STANDIN_RECORD", run.record())
        .env_remove("HBM_QEMU_INSTRUCTIONS")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(run.recorded().unwrap().2, strings(ARGV));
    // Logged as the hbm-qemu form logs, whatever main set up for the other subcommands.
    assert!(stderr(&out).contains("hbm-qemu: argv seen pid="), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("hbm-qemu: no instructions, argv exec'd unchanged argv="),
        "{}",
        stderr(&out)
    );
}

#[test]
fn settings_come_from_the_config_file_when_not_in_the_environment() {
    let run = Run::new();
    let cache = run.dir.path().join("configured-cache");
    let config = run.dir.path().join("hook.yaml");
    std::fs::write(
        &config,
        format!(
            "qemu:\n  emulator: {}\n  probe_cache_dir: {}\n",
            Run::stand_in().display(),
            cache.display()
        ),
    )
    .unwrap();
    let adapter = |config: &Path| {
        Command::new(&run.adapter)
            .args(ARGV)
            .env("HBM_HOOK_CONFIG", config)
            .env(
                "HBM_QEMU_INSTRUCTIONS",
                "v1;memmap-type:cell=0,size=1073741824,type=normal",
            )
            .env("STANDIN_DIALECT", "memmap-type")
            .env("STANDIN_RECORD", run.record())
            .env_remove("HBM_QEMU_EMULATOR")
            .env_remove("HBM_PROBE_CACHE_DIR")
            .output()
            .unwrap()
    };
    let out = adapter(&config);
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, program, args) = run.recorded().unwrap();
    assert_eq!(program, Run::stand_in().display().to_string());
    assert_eq!(args[10], "node,nodeid=0,cpus=0-1,memdev=ram-node0,memmap-type=normal");
    assert!(hbm_hook::qemu::probe::cache_file(&cache, &Run::stand_in()).is_file());

    std::fs::remove_file(run.record()).unwrap();
    let broken = run.dir.path().join("broken.yaml");
    std::fs::write(&broken, "qemu:\n  emulatr: /usr/bin/qemu\n").unwrap();
    let out = adapter(&broken);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let line = stderr(&out).lines().last().unwrap().to_string();
    assert!(
        line.starts_with(&format!("hbm-qemu: config {}: ", broken.display())),
        "{line}"
    );
    assert!(line.contains("emulatr"), "{line}");
    assert_eq!(run.recorded(), None);
}
