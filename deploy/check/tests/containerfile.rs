#![allow(clippy::unwrap_used, clippy::expect_used)]
//! deploy/Containerfile: three images (plugin, sidecar, dra) `FROM scratch`, each holding one static
//! binary of this workspace, entrypoints in exec form, OCI labels, and the sidecar's default
//! command equal to what the chart's hookSidecars annotation runs. The images are really built
//! and run by `tests/images.rs`.

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
    assert_eq!(stage.image, "scratch", "{:?}: nothing but the binary", stage.name);
    let keywords: Vec<&str> = stage.instructions.iter().map(|i| i.keyword.as_str()).collect();
    assert!(!keywords.contains(&"RUN"), "{:?}: RUN needs a shell", stage.name);
    assert!(!keywords.contains(&"SHELL") && !keywords.contains(&"HEALTHCHECK"));
    let copies: Vec<&str> = stage.all("COPY").map(|i| i.args.as_str()).collect();
    let path = format!("/usr/local/bin/{binary}");
    assert_eq!(copies, [format!("{binary} {path}")], "{:?}", stage.name);
    assert_eq!(
        stage.exec_form("ENTRYPOINT").unwrap(),
        Some(vec![path]),
        "{:?}",
        stage.name
    );
    let labels: Vec<&str> = stage.all("LABEL").map(|i| i.args.as_str()).collect();
    assert_eq!(labels.len(), 1, "{:?}", stage.name);
    for key in [
        format!(
            "org.opencontainers.image.title=\"{}\"",
            stage.name.as_deref().map_or("", image_title)
        ),
        "org.opencontainers.image.version=\"${VERSION}\"".to_string(),
        "org.opencontainers.image.licenses=\"Apache-2.0\"".to_string(),
    ] {
        assert!(labels[0].contains(&key), "{:?} lacks {key}: {}", stage.name, labels[0]);
    }
}

fn image_title(stage: &str) -> &'static str {
    match stage {
        "plugin" => "hbm-device-plugin",
        "sidecar" => "hbm-hook-sidecar",
        "dra" => "hbm-dra-driver",
        other => panic!("unexpected stage {other}"),
    }
}

#[test]
fn images_are_from_scratch_and_hold_one_workspace_binary_each() {
    let f = file();
    let names: Vec<Option<&str>> = f.stages.iter().map(|s| s.name.as_deref()).collect();
    assert_eq!(names, [Some("plugin"), Some("sidecar"), Some("dra")]);
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
    let dra = f.stage("dra").unwrap();
    assert!(bins("dra").contains(&"hbm-dra-driver".to_string()));
    assert_runtime_stage(dra, "hbm-dra-driver");
    assert_eq!(dra.exec_form("CMD").unwrap(), Some(vec!["run".to_string()]));
    assert_eq!(dra.all("USER").last().unwrap().args, "0:0");
}

#[test]
fn the_version_argument_defaults_to_the_workspace_version() {
    let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
    let version = manifest
        .lines()
        .skip_while(|l| *l != "[workspace.package]")
        .find_map(|l| l.strip_prefix("version = "))
        .unwrap()
        .trim_matches('"');
    assert_eq!(file().global_args, [format!("VERSION={version}")]);
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
