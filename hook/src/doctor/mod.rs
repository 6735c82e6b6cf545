//! `hbm-hook doctor`: is this host ready to give VMs a GPU with its HBM? One line per check,
//! `pass` / `warn` / `fail`, and what to do for the last two.
//!
//! Checks: IOMMU on; each GPU's driver (vfio-pci?) and IOMMU group; the HBM regions discovery
//! finds and their health; per region whether KubeVirt's virt-launcher can use it (online: yes,
//! bound by node; devdax only: no, with the `daxctl reconfigure-device --mode=system-ram` fix);
//! dax devices and their mode (devdax vs system-ram); QEMU version,
//! `acpi-generic-initiator`, and the SPM dialects it speaks (the capability probe, cached);
//! libvirt version and native `<acpi nodeset>` support (libvirt's own domain schema); the libvirt
//! hook and the QEMU adapter installed.
//!
//! [`facts::gather`] reads the host into [`facts::HostFacts`]; [`checks::evaluate`] (pure, one
//! function per check) turns facts into [`checks::Check`]s; [`report`] renders them; [`cli`]
//! holds the arguments and the exit codes. What the doctor runs and reads (`libvirtd --version`,
//! libvirt's schema) is [`bounded`] in time and size, like the QEMU probe.

pub mod bounded;
pub mod checks;
pub mod cli;
pub mod facts;
pub mod report;
