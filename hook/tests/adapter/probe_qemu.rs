//! The capability probe against the real QEMU 10 from bookworm-backports and against the stand-in
//! QEMU (`tests/stand-in-qemu`) speaking each dialect; the per-binary cache.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hbm_hook::qemu::probe::{self, Capabilities, PROBE_TIMEOUT, ProbeError};

use crate::common::qemu::REAL_QEMU;

fn stand_in() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/stand-in-qemu")
}

/// A wrapper script that runs the stand-in with `dialect` (the probe clears nothing but
/// `HBM_QEMU_INSTRUCTIONS`, yet tests run in parallel: a per-binary script avoids shared env).
fn stand_in_speaking(dir: &Path, dialect: &str, extra_env: &str) -> PathBuf {
    let path = dir.join(format!("qemu-{dialect}"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nSTANDIN_DIALECT={dialect} {extra_env} exec {} \"$@\"\n",
            stand_in().display()
        ),
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(&path).status().unwrap();
    path
}

#[test]
fn real_qemu_10_speaks_neither_dialect_and_has_generic_initiator() {
    assert!(
        Path::new(REAL_QEMU).is_file(),
        "install qemu-system-x86 (>= 9.0) from bookworm-backports"
    );
    let caps = probe::probe(Path::new(REAL_QEMU), PROBE_TIMEOUT).unwrap();
    assert!(!caps.memmap_type, "{caps:?}");
    assert!(!caps.sp_mem, "{caps:?}");
    assert!(caps.acpi_generic_initiator, "{caps:?}");
    assert_eq!(caps.dialects(), "neither memmap-type nor sp-mem");
    let out = Command::new(REAL_QEMU).arg("--version").output().unwrap();
    let first_line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    // "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-...)" vs probe's "10.0.2 (Debian 1:10.0.2+ds-...)"
    assert_eq!(first_line, format!("QEMU emulator version {}", caps.version));
}

#[test]
fn stand_in_dialects_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let expect = |dialect: &str, memmap_type: bool, sp_mem: bool| {
        let bin = stand_in_speaking(dir.path(), dialect, "");
        let caps = probe::probe(&bin, PROBE_TIMEOUT).unwrap();
        assert_eq!(
            caps,
            Capabilities {
                binary: bin.display().to_string(),
                version: "99.0.0 (stand-in)".into(),
                memmap_type,
                sp_mem,
                acpi_generic_initiator: true,
            }
        );
    };
    expect("memmap-type", true, false);
    expect("sp-mem", false, true);
    expect("none", false, false);
}

#[test]
fn cache_is_per_binary_and_mtime() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let bin = stand_in_speaking(dir.path(), "sp-mem", "");
    assert_eq!(probe::cached(&bin, &cache).unwrap(), None);
    let first = probe::capabilities(&bin, &cache, PROBE_TIMEOUT).unwrap();
    assert!(first.sp_mem);
    assert!(probe::cache_file(&cache, &bin).is_file());
    assert_eq!(probe::cached(&bin, &cache).unwrap(), Some(first.clone()));

    // Same path, new content and mtime: the old entry no longer applies, the next lookup probes.
    std::fs::write(
        &bin,
        format!(
            "#!/bin/sh\nSTANDIN_DIALECT=memmap-type exec {} \"$@\"\n",
            stand_in().display()
        ),
    )
    .unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&bin)
        .unwrap()
        .set_modified(old)
        .unwrap();
    assert_eq!(probe::cached(&bin, &cache).unwrap(), None);
    let second = probe::capabilities(&bin, &cache, PROBE_TIMEOUT).unwrap();
    assert!(second.memmap_type && !second.sp_mem);
    assert_eq!(probe::cached(&bin, &cache).unwrap(), Some(second));
    // Nothing half-written left behind.
    let names: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn a_silent_qemu_is_killed_at_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let bin = stand_in_speaking(dir.path(), "none", "STANDIN_HANG=1");
    let err = probe::probe(&bin, Duration::from_secs(1)).unwrap_err();
    assert_eq!(
        err,
        ProbeError::Timeout {
            binary: bin.display().to_string(),
            seconds: 1
        }
    );
}

#[test]
fn bad_binaries_fail_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-qemu");
    let err = probe::capabilities(&missing, dir.path(), PROBE_TIMEOUT).unwrap_err();
    assert!(matches!(err, ProbeError::Binary { .. }), "{err}");
    assert!(err.to_string().contains("No such file"), "{err}");

    let not_qemu = dir.path().join("not-qemu");
    std::fs::write(&not_qemu, "#!/bin/sh\necho 'not a qemu' >&2\nexit 1\n").unwrap();
    Command::new("chmod").arg("+x").arg(&not_qemu).status().unwrap();
    let err = probe::probe(&not_qemu, PROBE_TIMEOUT).unwrap_err();
    assert_eq!(
        err,
        ProbeError::Exited {
            binary: not_qemu.display().to_string(),
            stderr: "not a qemu".into()
        }
    );
}

/// A "QEMU" that floods stdout (one endless line) or stderr: the probe stops reading at its caps,
/// kills it and says so, instead of buffering without bound.
#[test]
fn a_flooding_binary_is_cut_at_the_output_cap() {
    let dir = tempfile::tempdir().unwrap();
    let script = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        Command::new("chmod").arg("+x").arg(&path).status().unwrap();
        path
    };
    let flood = script("flooding-qemu", "exec cat /dev/zero");
    // The stderr flood's pipe closes after 64 KiB (it dies of SIGPIPE); the error quotes at most
    // 200 characters of it, control characters as `?`.
    let noisy = script("noisy-qemu", "cat /dev/zero >&2");
    let expected = [
        (
            &flood,
            ProbeError::Flood {
                binary: flood.display().to_string(),
                mib: probe::PROBE_OUTPUT_CAP >> 20,
            },
        ),
        (
            &noisy,
            ProbeError::Exited {
                binary: noisy.display().to_string(),
                stderr: "?".repeat(200),
            },
        ),
    ];
    for (binary, error) in expected {
        assert_eq!(probe::probe(binary, Duration::from_secs(30)).unwrap_err(), error);
    }
    assert_eq!(
        probe::probe(&flood, Duration::from_secs(30)).unwrap_err().to_string(),
        format!(
            "probe of {}: more than 32 MiB on stdout without the QMP answers (killed); check that the binary is a QEMU system emulator",
            flood.display()
        )
    );
}
