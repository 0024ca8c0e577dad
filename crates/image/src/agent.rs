//! The guest agent's binary, as baked into images (docs/agent.md, "Building").
//!
//! The agent runs inside guests whose libc banger does not control, so it
//! must be statically linked: [`AgentBinary::load`] refuses an ELF with a
//! program interpreter (`PT_INTERP`). Its sha256 is part of the image's
//! fingerprint, so a new agent makes managed images stale.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{ImageError, Result};

/// Where the agent lives in the guest.
pub const GUEST_AGENT_PATH: &str = "usr/local/sbin/banger-agent";

/// A statically linked `banger-agent` on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentBinary {
    pub path: PathBuf,
    pub sha256: String,
}

impl AgentBinary {
    /// Reads `path`, checks it is a static x86-64 ELF executable and
    /// hashes it.
    pub fn load(path: &Path) -> Result<Self> {
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| ImageError::io("read agent binary", path, e))?;
        // The caller says how to get a static one (scripts/build-agent.sh).
        check_static_elf(&bytes)
            .map_err(|why| ImageError::io("use agent binary", path, std::io::Error::other(why)))?;
        Ok(Self {
            path: path.to_owned(),
            sha256: format!("{:x}", Sha256::digest(&bytes)),
        })
    }
}

/// A 64-bit little-endian x86-64 ELF executable without `PT_INTERP`.
fn check_static_elf(b: &[u8]) -> std::result::Result<(), String> {
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map(u64::from_le_bytes)
    };
    if b.get(..4) != Some(b"\x7fELF".as_slice()) || b.get(4) != Some(&2) || b.get(5) != Some(&1) {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    if u16_at(18) != Some(62) {
        return Err("not an x86-64 binary".into());
    }
    let phoff = u64_at(32).ok_or("truncated ELF header")? as usize;
    let phentsize = usize::from(u16_at(54).ok_or("truncated ELF header")?);
    let phnum = usize::from(u16_at(56).ok_or("truncated ELF header")?);
    for i in 0..phnum {
        let at = phoff
            .checked_add(i.checked_mul(phentsize).ok_or("bad program headers")?)
            .ok_or("bad program headers")?;
        let kind = b
            .get(at..at + 4)
            .and_then(|s| <[u8; 4]>::try_from(s).ok())
            .map(u32::from_le_bytes)
            .ok_or("truncated program headers")?;
        // PT_INTERP: the binary needs a dynamic loader (and a libc).
        if kind == 3 {
            return Err("dynamically linked (it names a program interpreter)".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_binaries_and_non_elf_files_are_refused() {
        // /bin/sh is dynamically linked on Debian.
        let err = AgentBinary::load(Path::new("/bin/sh")).unwrap_err();
        assert!(
            err.to_string().contains("agent binary") || format!("{err:?}").contains("dynamically"),
            "{err:?}"
        );
        assert!(check_static_elf(b"#!/bin/sh\n").is_err());
        assert!(check_static_elf(b"").is_err());
        let mut truncated = b"\x7fELF\x02\x01".to_vec();
        truncated.resize(20, 0);
        truncated[18] = 62;
        assert!(check_static_elf(&truncated).is_err());
    }
}
