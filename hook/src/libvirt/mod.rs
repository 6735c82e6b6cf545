//! The plain-libvirt front end: [`hook`] (the qemu.d hook's calls: check and claim HBM at
//! `prepare`, release at `release`, rewrite at `migrate`/`restore`), [`claims`] (one claim file
//! per region, so two domains never hold the same HBM) and [`cli`] (the hook run by libvirt as
//! `/etc/libvirt/hooks/qemu.d/hbm-passthrough`, or `hbm-hook libvirt ...`: stdin, stdout, exit).

pub mod claims;
pub mod cli;
pub mod hook;
