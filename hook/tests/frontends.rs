//! The front ends as their callers run them: `hbm-hook rewrite` and `discover` on the command
//! line, `doctor` on fixture hosts, the KubeVirt sidecar (gRPC on a unix socket) and shim
//! commands, the libvirt hook called the way libvirt calls it (without libvirtd). One binary;
//! each file of `tests/frontends/` is a module.

mod common;

mod frontends {
    mod config_validation;
    mod discover_cli;
    mod doctor_hosts;
    mod kubevirt_domain_spec;
    mod kubevirt_round_trip;
    mod kubevirt_shim_and_socket;
    mod kubevirt_sidecar;
    mod libvirt_hook_calls;
    mod rewrite_cli;
    mod usage_errors;
    mod verify_guest_snapshot;
}
