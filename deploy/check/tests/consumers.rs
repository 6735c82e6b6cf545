#![allow(clippy::unwrap_used, clippy::expect_used)]
//! What the chart and deploy/libvirt ship, judged by the code that reads it: the rendered
//! DaemonSet's flags by the plugin's own clap definition, the rendered ConfigMap by the plugin's
//! config parser, the dialects the schema allows by the rewriter, and deploy/libvirt/hook.yaml by
//! hbm-hook's config parser.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use deploy_check::{chart_dir, helm, manifest, workspace_root};
use hbm_hook::config::GenericInitiatorStyle;
use hbm_rewrite::Dialect;
use k8s_openapi::api::apps::v1::DaemonSet;
use plugin::config::{RegistrationMode, RunArgs, Settings};
use serde_json::Value;

#[derive(Parser, Debug)]
struct RunCli {
    #[command(flatten)]
    run: RunArgs,
}

/// The plugin's resolved settings for a chart rendering: DaemonSet args through the plugin's
/// flags, ConfigMap `plugin.yaml` through its config parser, merged by its own `resolve`.
fn plugin_settings(values: Option<&str>) -> Settings {
    let mut extra = Vec::new();
    if let Some(v) = values {
        extra.extend(["-f", v]);
    }
    let text = helm::template("hbm", "gpu", &extra).unwrap();
    let objects = manifest::parse(&text).unwrap();
    let ds: DaemonSet = objects
        .iter()
        .find(|o| o.kind == "DaemonSet")
        .map(|o| serde_json::from_value(o.value.clone()).unwrap())
        .unwrap();
    let container = &ds.spec.unwrap().template.spec.unwrap().containers[0];
    let args = container.args.clone().unwrap();
    assert_eq!(args[0], "run", "the plugin's subcommand");
    let cli = RunCli::try_parse_from(std::iter::once("hbm-device-plugin".to_string()).chain(args[1..].iter().cloned()))
        .unwrap_or_else(|e| panic!("the plugin rejects the chart's flags {args:?}: {e}"));
    let config_path = cli.run.config.clone().unwrap();
    let cm = objects
        .iter()
        .find(|o| o.kind == "ConfigMap" && o.name.ends_with("-config"))
        .unwrap();
    let mounted = config_path.strip_prefix("/etc/hbm-passthrough").unwrap();
    let key = mounted.to_str().unwrap();
    let text = cm.value["data"][key].as_str().unwrap();
    let loaded = plugin::config::parse_file(&config_path, text)
        .unwrap_or_else(|e| panic!("the plugin rejects the chart's ConfigMap: {e}"));
    plugin::config::resolve(&cli.run, loaded).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn plugin_accepts_the_default_rendering_flags_and_config() {
    let s = plugin_settings(None);
    assert_eq!(s.device_plugin_dir, PathBuf::from("/var/lib/kubelet/device-plugins"));
    assert_eq!(
        s.plugins_registry_dir,
        PathBuf::from("/var/lib/kubelet/plugins_registry")
    );
    assert_eq!(s.registration, RegistrationMode::Auto);
    assert_eq!(s.sysfs_root, PathBuf::from("/host"));
    assert_eq!(s.dev_root, PathBuf::from("/host/dev"));
    assert_eq!(s.metrics_addr, Some("0.0.0.0:9472".parse().unwrap()));
    assert_eq!(s.poll_interval, Duration::from_secs(1));
    assert_eq!(s.label_domain, "hbm-passthrough.dev");
    let rules: Vec<(&str, &str, Vec<&str>)> = s
        .rules
        .iter()
        .map(|r| {
            (
                r.name.as_str(),
                r.vendor.as_str(),
                r.devices.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        rules,
        [
            ("hbm-passthrough.dev/mi300x", "1002", vec!["74a1"]),
            ("hbm-passthrough.dev/gh200", "10de", vec!["2342"]),
        ]
    );
}

#[test]
fn plugin_accepts_the_full_rendering_and_flags_win_over_the_file() {
    let s = plugin_settings(Some("charts/hbm-passthrough/ci/full-values.yaml"));
    assert_eq!(
        s.device_plugin_dir,
        PathBuf::from("/var/lib/k0s/kubelet/device-plugins")
    );
    assert_eq!(
        s.plugins_registry_dir,
        PathBuf::from("/var/lib/k0s/kubelet/plugins_registry")
    );
    assert_eq!(s.registration, RegistrationMode::PluginWatcher);
    assert_eq!(s.sysfs_root, PathBuf::from("/node"));
    assert_eq!(s.dev_root, PathBuf::from("/node/dev"));
    assert_eq!(s.metrics_addr, Some("0.0.0.0:19472".parse().unwrap()));
    // extraArgs --health-poll-interval=2s wins over config.healthPollInterval: 500ms.
    assert_eq!(s.poll_interval, Duration::from_secs(2));
    assert_eq!(s.label_domain, "gpu.example.invalid");
    let rules: Vec<(&str, &str, Vec<&str>, &str)> = s
        .rules
        .iter()
        .map(|r| {
            (
                r.name.as_str(),
                r.vendor.as_str(),
                r.devices.iter().map(String::as_str).collect(),
                r.id_prefix.as_str(),
            )
        })
        .collect();
    assert_eq!(
        rules,
        [
            ("example.invalid/mi300x-hbm", "1002", vec!["74a1"], ""),
            ("example.invalid/nvidia-hbm", "10de", vec![], ""),
            ("example.invalid/mi300a-mi250x", "1002", vec!["740c", "74a0"], "mi-"),
        ]
    );
}

#[test]
fn every_dialect_the_schema_allows_is_one_the_rewriter_knows() {
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(chart_dir().join("values.schema.json")).unwrap()).unwrap();
    let allowed = schema
        .pointer("/properties/config/properties/defaultDialect/enum")
        .unwrap()
        .as_array()
        .unwrap();
    assert!(allowed.len() >= 4);
    for dialect in allowed {
        let d = dialect.as_str().unwrap();
        d.parse::<hbm_rewrite::Dialect>()
            .unwrap_or_else(|e| panic!("schema allows {d:?}, the rewriter says: {e}"));
    }
}

#[test]
fn libvirt_default_config_is_hbm_hooks_built_in_defaults() {
    let path = workspace_root().join("deploy/libvirt/hook.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let parsed = hbm_hook::config::HookConfig::parse(&text)
        .unwrap_or_else(|e| panic!("hbm-hook rejects {}: {e}", Path::new(&path).display()));
    // The file says "Every value below is the built-in default": hold it to that.
    assert_eq!(parsed, hbm_hook::config::HookConfig::default());
    assert_eq!(
        parsed.rewrite.adapter_path, "/usr/local/bin/hbm-qemu",
        "the adapter link install.sh creates"
    );
}

#[derive(Parser, Debug)]
struct SidecarCli {
    #[command(flatten)]
    sidecar: hbm_hook::kubevirt::cli::SidecarArgs,
}

/// The `hooks.kubevirt.io/hookSidecars` value the chart renders, parsed by hbm-hook's own flags.
fn sidecar_args(values: Option<&str>) -> hbm_hook::kubevirt::cli::SidecarArgs {
    let mut extra = Vec::new();
    if let Some(v) = values {
        extra.extend(["-f", v]);
    }
    let text = helm::template("hbm", "gpu", &extra).unwrap();
    let objects = manifest::parse(&text).unwrap();
    let cm = objects
        .iter()
        .find(|o| o.kind == "ConfigMap" && o.name.ends_with("-kubevirt"))
        .unwrap();
    let sidecars: Value = serde_json::from_str(cm.value["data"]["hook-sidecars.json"].as_str().unwrap()).unwrap();
    let args: Vec<String> = serde_json::from_value(sidecars[0]["args"].clone()).unwrap();
    assert_eq!(
        args[0], "kubevirt-sidecar",
        "the image's entrypoint is hbm-hook: args start with the subcommand"
    );
    SidecarCli::try_parse_from(std::iter::once("hbm-hook".to_string()).chain(args[1..].iter().cloned()))
        .unwrap_or_else(|e| panic!("hbm-hook rejects the chart's sidecar args {args:?}: {e}"))
        .sidecar
}

#[test]
fn hbm_hook_accepts_the_rendered_sidecar_arguments() {
    let s = sidecar_args(None);
    assert_eq!(s.socket_dir, PathBuf::from("/var/run/kubevirt-hooks"));
    assert_eq!(s.name, "hbm-passthrough");
    assert_eq!(s.priority, 0);
    assert_eq!(s.defaults.dialect, Some(Dialect::Auto));
    assert_eq!(
        s.defaults.generic_initiator,
        Some(GenericInitiatorStyle::QemuCommandline)
    );
    let s = sidecar_args(Some("charts/hbm-passthrough/ci/full-values.yaml"));
    assert_eq!(s.name, "hbm-gpu");
    assert_eq!(s.priority, 10);
    // config.defaultDialect reaches the sidecar as its default for VMs without an annotation,
    // kubevirt.genericInitiator as its Generic Initiator style.
    assert_eq!(s.defaults.dialect, Some(Dialect::SpMem));
    assert_eq!(s.defaults.generic_initiator, Some(GenericInitiatorStyle::AcpiNodeset));
}
