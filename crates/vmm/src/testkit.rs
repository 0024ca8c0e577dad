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
//!
//! [`stub_elf_guest`] is the same for Firecracker, which loads ELF kernels
//! (`vmlinux`) and enters them in 64-bit mode: a 64-bit ELF whose one
//! segment is linked at [`STUB_ELF_LOAD_ADDR`] (16 MiB, where Firecracker
//! loads `vmlinux`), writing [`STUB_ELF_BANNER`] to COM1 and halting.

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

/// What [`stub_elf_guest`] prints on its serial console.
pub const STUB_ELF_BANNER: &str = "banger stub elf guest: halted";

/// Where [`stub_elf_guest`]'s code is linked and entered.
pub const STUB_ELF_LOAD_ADDR: u64 = 0x100_0000;

/// A tiny 64-bit ELF executable (see the module docs): one `PT_LOAD`
/// segment at [`STUB_ELF_LOAD_ADDR`] holding the code and the banner.
pub fn stub_elf_guest() -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let code_offset = EHDR + PHDR; // 120: the segment starts after the headers
    let message = format!("{STUB_ELF_BANNER}\n\0");
    // 64-bit code; `rsi` points at the banner right after the code.
    let mut code: Vec<u8> = vec![
        0x66, 0xba, 0xf8, 0x03, //             mov dx, 0x3f8
        0x48, 0x8d, 0x35, 0x0b, 0x00, 0x00, 0x00, // lea rsi, [rip + 11]
        0xac, //                         next: lodsb
        0x84, 0xc0, //                         test al, al
        0x74, 0x03, //                         jz done
        0xee, //                               out dx, al
        0xeb, 0xf8, //                         jmp next
        0xfa, //                         done: cli
        0xf4, //                         halt: hlt
        0xeb, 0xfd, //                         jmp halt
    ];
    // `lea`'s displacement counts from the end of the lea (offset 11) to
    // the banner at the end of the code.
    let lea_end = 11;
    let disp = (code.len() - lea_end) as u32;
    code[7..11].copy_from_slice(&disp.to_le_bytes());
    code.extend_from_slice(message.as_bytes());
    let seg_size = code.len() as u64;
    let entry = STUB_ELF_LOAD_ADDR;

    let mut elf = Vec::with_capacity(code_offset + code.len());
    // e_ident: magic, ELFCLASS64, little-endian, version 1, System V ABI.
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    elf.extend_from_slice(&62u16.to_le_bytes()); // e_machine: EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&entry.to_le_bytes()); // e_entry
    elf.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&(EHDR as u16).to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&(PHDR as u16).to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    // The program header: PT_LOAD, read + execute.
    elf.extend_from_slice(&1u32.to_le_bytes()); // p_type
    elf.extend_from_slice(&5u32.to_le_bytes()); // p_flags: R + X
    elf.extend_from_slice(&(code_offset as u64).to_le_bytes()); // p_offset
    elf.extend_from_slice(&entry.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&entry.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&seg_size.to_le_bytes()); // p_filesz
    elf.extend_from_slice(&seg_size.to_le_bytes()); // p_memsz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    debug_assert_eq!(elf.len(), code_offset);
    elf.extend_from_slice(&code);
    elf
}

/// Writes [`stub_elf_guest`] to `path`.
pub fn write_stub_elf_guest(path: &Path) -> io::Result<()> {
    fs::write(path, stub_elf_guest())
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

    #[test]
    fn stub_elf_guest_is_a_64_bit_executable_with_its_banner() {
        let elf = stub_elf_guest();
        assert_eq!(&elf[..5], &[0x7f, b'E', b'L', b'F', 2]);
        assert_eq!(
            u64::from_le_bytes(elf[24..32].try_into().unwrap()),
            STUB_ELF_LOAD_ADDR
        );
        // The lea points at the banner: offset of the lea's end + disp.
        let code = &elf[120..];
        let disp = u32::from_le_bytes(code[7..11].try_into().unwrap()) as usize;
        assert!(code[11 + disp..].starts_with(STUB_ELF_BANNER.as_bytes()));
    }
}
