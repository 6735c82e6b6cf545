//! The images under test: `deploy/images.sh` run once per test process.

use std::process::Command;
use std::sync::OnceLock;

/// The three references `deploy/images.sh` printed (its last three lines).
#[derive(Clone, Debug)]
pub struct ImageRefs {
    pub plugin: String,
    pub sidecar: String,
    pub dra: String,
}

/// Builds both images (once) and returns their references.
pub fn built_images() -> ImageRefs {
    static REFS: OnceLock<ImageRefs> = OnceLock::new();
    REFS.get_or_init(build).clone()
}

fn build() -> ImageRefs {
    let script = deploy_check::workspace_root().join("deploy/images.sh");
    let output = Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "deploy/images.sh failed ({}):\n{}\n{}",
        output.status,
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let [.., plugin, sidecar, dra] = lines.as_slice() else {
        panic!("deploy/images.sh printed fewer than three lines: {stdout}");
    };
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(*plugin, format!("hbm-passthrough/hbm-device-plugin:{version}"));
    assert_eq!(*sidecar, format!("hbm-passthrough/hbm-hook-sidecar:{version}"));
    assert_eq!(*dra, format!("hbm-passthrough/hbm-dra-driver:{version}"));
    ImageRefs {
        plugin: plugin.to_string(),
        sidecar: sidecar.to_string(),
        dra: dra.to_string(),
    }
}
