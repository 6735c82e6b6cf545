#![allow(clippy::unwrap_used, clippy::expect_used)]
//! deploy/Containerfile: two final images (plugin, sidecar) on a shell-less static base, each
//! holding one statically linked binary of this workspace, entrypoints in exec form, and the
//! sidecar's default command equal to what the chart's hookSidecars annotation runs. (No container
//! engine runs on the test machines, so the build itself is not executed here.)

use deploy_check::containerfile::{self, Containerfile, Stage};
use deploy_check::workspace_root;

fn file() -> Containerfile {
    let text = std::fs::read_to_string(workspace_root().join("deploy/Containerfile")).unwrap();
    containerfile::parse(&text).unwrap()
}

/// `[[bin]]` names of a workspace crate.
fn bins(krate: &str) -> Vec<String> {
    let text = std::fs::read_to_string(workspace_root().join(krate).join("Cargo.toml")).unwrap();
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin && let Some(value) = line.strip_prefix("name") {
            let value = value.trim().trim_start_matches('=').trim().trim_matches('"');
            names.push(value.to_string());
        }
    }
    names
}

fn assert_runtime_stage(stage: &Stage, binary: &str) {
    assert!(
        stage.image == "scratch" || stage.image.starts_with("gcr.io/distroless/static"),
        "{:?}: final image must have no shell: {}",
        stage.name,
        stage.image
    );
    let keywords: Vec<&str> = stage.instructions.iter().map(|i| i.keyword.as_str()).collect();
    assert!(!keywords.contains(&"RUN"), "{:?}: RUN needs a shell", stage.name);
    assert!(!keywords.contains(&"SHELL") && !keywords.contains(&"HEALTHCHECK"));
    let copies: Vec<&str> = stage.all("COPY").map(|i| i.args.as_str()).collect();
    let path = format!("/usr/local/bin/{binary}");
    assert_eq!(
        copies,
        [format!("--from=build /out/{binary} {path}")],
        "{:?}",
        stage.name
    );
    assert_eq!(
        stage.exec_form("ENTRYPOINT").unwrap(),
        Some(vec![path]),
        "{:?}",
        stage.name
    );
}

#[test]
fn final_images_are_shell_less_and_hold_one_workspace_binary_each() {
    let f = file();
    let names: Vec<Option<&str>> = f.stages.iter().map(|s| s.name.as_deref()).collect();
    assert_eq!(names, [Some("build"), Some("plugin"), Some("sidecar")]);
    assert!(bins("plugin").contains(&"hbm-device-plugin".to_string()));
    assert!(bins("hook").contains(&"hbm-hook".to_string()));
    let plugin = f.stage("plugin").unwrap();
    assert_runtime_stage(plugin, "hbm-device-plugin");
    assert_eq!(plugin.exec_form("CMD").unwrap(), Some(vec!["run".to_string()]));
    assert_eq!(plugin.all("USER").last().unwrap().args, "0:0");
    let sidecar = f.stage("sidecar").unwrap();
    assert_runtime_stage(sidecar, "hbm-hook");
    assert_eq!(
        sidecar.exec_form("CMD").unwrap().unwrap(),
        [
            "kubevirt-sidecar",
            "--socket-dir",
            "/var/run/kubevirt-hooks",
            "--name",
            "hbm-passthrough"
        ]
    );
    assert_eq!(sidecar.all("USER").last().unwrap().args, "107:107");
}

#[test]
fn build_stage_links_statically_and_checks_it() {
    let f = file();
    let build = f.stage("build").unwrap();
    assert!(
        build.image.contains("rust:") && build.image.ends_with("-alpine"),
        "{}",
        build.image
    );
    let runs: Vec<&str> = build.all("RUN").map(|i| i.args.as_str()).collect();
    let cargo = runs.iter().find(|r| r.contains("cargo build")).expect("a cargo build");
    for needed in [
        "--release",
        "--locked",
        "--bin hbm-device-plugin",
        "--bin hbm-hook",
        "Requesting program interpreter",
        "exit 1",
    ] {
        assert!(cargo.contains(needed), "build step lacks {needed:?}: {cargo}");
    }
    // The global RUST_VERSION is the workspace's minimum.
    let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
    let msrv = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    assert_eq!(f.global_args, [format!("RUST_VERSION={msrv}")]);
}

#[test]
fn the_reader_rejects_shell_form_entrypoints_and_instructions_before_from() {
    let f = containerfile::parse("FROM scratch AS x\nENTRYPOINT /bin/app --flag\n").unwrap();
    let err = f.stage("x").unwrap().exec_form("ENTRYPOINT").unwrap_err();
    assert_eq!(
        err.to_string(),
        "line 2: ENTRYPOINT is not in exec form (a JSON array of strings): /bin/app --flag"
    );
    let err = containerfile::parse("COPY a b\nFROM scratch\n").unwrap_err();
    assert_eq!(err.to_string(), "line 1: COPY before the first FROM");
    let f = containerfile::parse("FROM a AS b\nRUN x \\\n  # comment\n  && y\n").unwrap();
    assert_eq!(f.stages[0].instructions[0].args, "x  && y");
}
