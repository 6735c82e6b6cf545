//! The real components: domains defined and started under libvirtd (qemu:///system), guests
//! booted through QEMU (TCG) reporting what they see, the libvirt hook installed into a live
//! libvirtd, and the corpus validated against libvirt's schema. Takes minutes; needs libvirtd.
//! One binary; each file of `tests/real_components/` is a module.

mod common;

mod real_components {
    mod adapter_libvirt_boot;
    mod guest_boot;
    mod libvirt_corpus;
    mod libvirt_hook_real;
    mod verify_guest;
    mod virt_launcher;
}
