//! The "guest": what `InstanceStart` checks in the kernel file and what the
//! guest then writes on the serial console (the process's stdout).
//!
//! The checks are the first ones Firecracker's loader makes: an ELF
//! (`vmlinux`, 64-bit little-endian) or else a bzImage (`HdrS` at 0x202).
//! What an ELF guest "prints" is every run of at least
//! [`MIN_LINE`] printable bytes that ends in a newline, found anywhere in
//! the file: a stub guest that writes a banner shows that banner. This is a
//! byte scan, not an ELF parser, so no ELF library is needed.

use std::io::Write;
use std::path::Path;

/// Shorter runs are more likely to be bytes of code than text.
const MIN_LINE: usize = 8;
/// A real `vmlinux` holds thousands of message formats; the fake shows the
/// first ones only.
const MAX_LINES: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    Elf,
    BzImage,
}

/// Reads the kernel and says what it is, or why Firecracker would refuse
/// it (the message names "Invalid ELF" or "Invalid bzImage" as the real
/// loader does).
pub fn inspect(path: &Path) -> Result<(KernelKind, Vec<u8>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("Cannot read the kernel file: {e}"))?;
    let kind = kind_of(&bytes)?;
    Ok((kind, bytes))
}

fn kind_of(bytes: &[u8]) -> Result<KernelKind, String> {
    const ELF_MAGIC: &[u8] = b"\x7fELF";
    const EI_CLASS: usize = 4;
    const EI_DATA: usize = 5;
    const ELF64_HEADER_LEN: usize = 64;
    const BZIMAGE_MAGIC_AT: usize = 0x202;
    if bytes.starts_with(ELF_MAGIC) {
        let header_ok = bytes.len() >= ELF64_HEADER_LEN
            && bytes[EI_CLASS] == 2 // ELFCLASS64
            && bytes[EI_DATA] == 1; // ELFDATA2LSB
        return if header_ok {
            Ok(KernelKind::Elf)
        } else {
            Err("Kernel Loader: failed to load ELF kernel image: Invalid ELF header".to_owned())
        };
    }
    if bytes.get(BZIMAGE_MAGIC_AT..BZIMAGE_MAGIC_AT + 4) == Some(b"HdrS") {
        Ok(KernelKind::BzImage)
    } else {
        Err("Kernel Loader: failed to load bzImage kernel image: Invalid bzImage".to_owned())
    }
}

/// The lines an ELF guest writes: runs of printable ASCII (and tabs) of at
/// least [`MIN_LINE`] bytes ending in `\n` (or `\r\n`), newline included.
pub fn banner_lines(bytes: &[u8]) -> Vec<&[u8]> {
    let printable = |b: u8| b == b'\t' || (0x20..0x7f).contains(&b);
    let mut lines = Vec::new();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if printable(b) || (b == b'\r' && bytes.get(i + 1) == Some(&b'\n')) {
            continue;
        }
        let text_end = if b == b'\n' && i > start && bytes[i - 1] == b'\r' {
            i - 1
        } else {
            i
        };
        if b == b'\n' && text_end - start >= MIN_LINE {
            lines.push(&bytes[start..=i]);
            if lines.len() == MAX_LINES {
                break;
            }
        }
        start = i + 1;
    }
    lines
}

/// Writes what the guest prints at boot on stdout, Firecracker's serial
/// console.
pub fn boot(kind: KernelKind, kernel: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match kind {
        KernelKind::Elf => {
            for line in banner_lines(kernel) {
                out.write_all(line)?;
            }
        }
        KernelKind::BzImage => out.write_all(b"fake-firecracker: guest booted\n")?,
    }
    out.flush()
}

/// The line a guest restored from a snapshot prints when it runs again.
pub fn resumed() -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(b"fake-firecracker: guest resumed from snapshot\n")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let mut elf = b"\x7fELF\x02\x01".to_vec();
        elf.resize(64, 0);
        assert_eq!(kind_of(&elf), Ok(KernelKind::Elf));
        assert!(
            kind_of(b"\x7fELF\x01\x01")
                .unwrap_err()
                .contains("Invalid ELF")
        );
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(kind_of(&bz), Ok(KernelKind::BzImage));
        assert!(
            kind_of(b"not a kernel")
                .unwrap_err()
                .contains("Invalid bzImage")
        );
    }

    #[test]
    fn banner_lines_are_text_runs_ending_in_newline() {
        let bytes =
            b"\x00\x01hello from guest\r\n\x90short\n\xffno newline here at all\x00tab\there ok\n";
        let lines: Vec<&[u8]> = banner_lines(bytes);
        assert_eq!(
            lines,
            vec![&b"hello from guest\r\n"[..], &b"tab\there ok\n"[..]]
        );
    }
}
