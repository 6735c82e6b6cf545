//! The QEMU argv adapter: the binary exec'ing a stand-in and the real QEMU, the capability probe
//! and its cache, and the transform on argv the real libvirt produces from rewritten domains
//! (`virsh domxml-to-native`; no domain is defined). One binary; each file of `tests/adapter/`
//! is a module.

mod common;

mod adapter {
    mod exec;
    mod libvirt_argv;
    mod probe_qemu;
    mod rewritten;
}
