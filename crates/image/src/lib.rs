//! banger's guest boot stack: everything between "a Debian mirror the host
//! can reach" and "a kernel, an initramfs and a root disk QEMU can boot".
//! The contract these artifacts meet is docs/guest-contract.md.
//!
//! - [`kernel`]: pulls a Debian kernel package with the host's own apt
//!   (`apt-get download`, no mirror names in banger), lays out `vmlinuz`,
//!   the modules and a generated `initrd.img`.
//! - [`initramfs`]: a tiny initramfs of banger's own (busybox-static from
//!   the distribution, the virtio/ext4/button modules in dependency order,
//!   a `/init` shell script), because Debian's kernels build virtio as
//!   modules and their own initramfs-tools would need to run in a chroot.
//! - [`rootfs`]: Debian minbase via mmdebstrap, customised from the host
//!   (no chroot, no udev in the guest: banger's own unit configures the NIC
//!   and mounts the work disk), turned into ext4 with `mkfs.ext4 -d`.
//! - [`build_root_disk`]: any OCI image's layers flattened into an ext4
//!   root disk without root: layers applied onto a staging tree
//!   (`layers.rs`: whiteouts, hard links, untrusted names), `mkfs.ext4 -d`,
//!   then one debugfs script for owners, modes, device nodes and xattrs
//!   (`ext4.rs`).
//!
//! Design choices:
//!
//! - **Synchronous, shelling out.** The daemon calls these functions from
//!   `spawn_blocking`. Every external tool is run with `std::process`,
//!   stderr captured; a failure names the command and carries the tail of
//!   what it printed ([`ImageError::Command`]).
//! - **Progress** goes through a `&dyn Fn(&str)` callback with short stage
//!   names ("download kernel package", "extract", "build initramfs",
//!   "debootstrap", "customize", "mkfs", ...), so the daemon can show
//!   live stages with durations.
//! - **Nothing half-made looks complete.** Everything is written into a
//!   temp dir inside the destination dir and renamed into place at the
//!   end; temp dirs are removed on success and failure alike (drop).
//!   Downloads land in `cache_dir/debs/` the same way.
//! - **Pure parts are pure.** Module ordering, the `/init` script, the
//!   guest customisation and the recipe fingerprint are plain data and
//!   functions, unit tested without root or network; `tests/boot.rs`
//!   boots the real thing under QEMU.

pub mod agent;
mod apt;
mod cmd;
mod error;
mod ext4;
mod fsutil;
mod guest;
pub mod initramfs;
pub mod kernel;
mod layers;
mod modules;
pub mod rootfs;
pub mod services;
mod sources;
mod zstd;

pub use agent::AgentBinary;
pub use apt::BytesProgress;
pub use error::{ImageError, Result};
pub use ext4::{DiskSize, RootDiskOptions, RootDiskReport, RootDiskStage, build_root_disk};
pub use guest::CUSTOMIZE_VERSION;
pub use initramfs::build_initramfs;
pub use kernel::{CatalogEntry, KernelArtifacts, catalog, pull_debian_kernel};
pub use layers::{ExtraFile, ExtraSource, Layer, LayerCompression, MAX_META_BYTES, RootDiskError};
pub use rootfs::{ImageRecipe, RECIPE_PARTS, RootfsArtifacts, build_rootfs, stale_reasons};
