//! Helpers for tests that need QEMU to boot *something* without a real
//! kernel (this crate's tests, and the daemon's).
//!
//! [`stub_kernel`] is a 4 KiB image in the x86 Linux boot protocol (2.06,
//! `HdrS` header, one setup sector) whose real-mode setup code writes
//! [`STUB_KERNEL_BANNER`] and a newline to COM1 (`0x3f8`, the guest's
//! `ttyS0`, so it lands in the console log) and then halts forever with
//! interrupts off. QEMU's microvm firmware loads it like any bzImage, it
//! accepts an initrd and ignores the command line, and the halted vCPU costs
//! no host CPU under TCG. QMP works as with any guest; a `system_powerdown`
//! is accepted but nothing in the guest acts on it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// What the stub kernel prints on its serial console.
pub const STUB_KERNEL_BANNER: &str = "banger stub kernel: halted";

/// The stub kernel image (see the module docs).
pub fn stub_kernel() -> Vec<u8> {
    let mut image = vec![0u8; 4096];
    // Boot-protocol header (Documentation/arch/x86/boot.rst).
    image[0x1f1] = 1; // setup_sects: the setup code is 1 sector after the boot sector
    image[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]); // boot_flag
    image[0x200..0x202].copy_from_slice(&[0xeb, 0x7e]); // jmp short 0x280 (over the header)
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x0206u16.to_le_bytes()); // protocol 2.06
    image[0x211] = 0x01; // loadflags: LOADED_HIGH
    image[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes()); // initrd_addr_max
    // Real mode, ds = the setup segment, so ds:0x300 is file offset 0x300.
    let code: [u8; 18] = [
        0xbe, 0x00, 0x03, //       mov si, 0x300
        0xba, 0xf8, 0x03, //       mov dx, 0x3f8
        0xac, //             next: lodsb
        0x84, 0xc0, //             test al, al
        0x74, 0x03, //             jz done
        0xee, //                   out dx, al
        0xeb, 0xf8, //             jmp next
        0xfa, //             done: cli
        0xf4, //             halt: hlt
        0xeb, 0xfd, //             jmp halt
    ];
    image[0x280..0x280 + code.len()].copy_from_slice(&code);
    let message = format!("{STUB_KERNEL_BANNER}\n\0");
    image[0x300..0x300 + message.len()].copy_from_slice(message.as_bytes());
    image
}

/// Writes [`stub_kernel`] to `path`.
pub fn write_stub_kernel(path: &Path) -> io::Result<()> {
    fs::write(path, stub_kernel())
}

/// A real bootable kernel for optional tests: `BANGER_TEST_KERNEL` if set,
/// else the newest-named `/boot/vmlinuz-*` that can be read.
pub fn host_kernel() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("BANGER_TEST_KERNEL") {
        return Some(PathBuf::from(path));
    }
    let mut found: Vec<PathBuf> = fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
                && fs::File::open(p).is_ok()
        })
        .collect();
    found.sort();
    found.pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_kernel_has_a_boot_header_and_the_banner() {
        let image = stub_kernel();
        assert_eq!(image.len(), 4096);
        assert_eq!(&image[0x202..0x206], b"HdrS");
        let banner = &image[0x300..0x300 + STUB_KERNEL_BANNER.len()];
        assert_eq!(banner, STUB_KERNEL_BANNER.as_bytes());
    }
}
