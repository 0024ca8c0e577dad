//! Checks of user input that must fail before anything is created.

/// Input that is out of bounds; the message names the field and the bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(String);

/// Limits on VM resources; far beyond them is a typo, not a wish.
pub const MAX_VCPUS: u32 = 64;
pub const MIN_MEMORY_MIB: u32 = 128;
pub const MAX_MEMORY_MIB: u32 = 1024 * 1024;
pub const MIN_DISK_BYTES: u64 = 256 * 1024 * 1024;
pub const MAX_DISK_BYTES: u64 = 16 * 1024 * 1024 * 1024 * 1024;

/// A VM, image or kernel name: 1 to 63 of `[a-z0-9-]`, starting with a
/// letter or digit (it becomes the guest's hostname and `NAME.vm`).
pub fn name(kind: &str, value: &str) -> Result<(), Invalid> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        let shown: String = value.chars().take(70).collect();
        Err(Invalid(format!(
            "invalid {kind} name {shown:?}: use 1-63 lowercase letters, digits and '-', not starting or ending with '-'"
        )))
    }
}

pub fn vcpus(v: u32) -> Result<(), Invalid> {
    if (1..=MAX_VCPUS).contains(&v) {
        Ok(())
    } else {
        Err(Invalid(format!(
            "invalid vcpus {v}: must be 1 to {MAX_VCPUS}"
        )))
    }
}

pub fn memory_mib(v: u32) -> Result<(), Invalid> {
    if (MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&v) {
        Ok(())
    } else {
        Err(Invalid(format!(
            "invalid memory {v} MiB: must be {MIN_MEMORY_MIB} MiB to {} GiB",
            MAX_MEMORY_MIB / 1024
        )))
    }
}

pub fn disk_size(v: u64) -> Result<(), Invalid> {
    if (MIN_DISK_BYTES..=MAX_DISK_BYTES).contains(&v) {
        Ok(())
    } else {
        Err(Invalid(format!(
            "invalid disk size {v} bytes: must be 256 MiB to 16 TiB"
        )))
    }
}

pub fn image_size(v: u64) -> Result<(), Invalid> {
    if (512 * 1024 * 1024..=MAX_DISK_BYTES).contains(&v) {
        Ok(())
    } else {
        Err(Invalid(format!(
            "invalid image size {v} bytes: must be 512 MiB to 16 TiB"
        )))
    }
}

/// An image reference as Docker reads it (`python:3.12-slim`).
pub fn image_reference(value: &str) -> Result<banger_oci::ImageReference, Invalid> {
    value
        .parse()
        .map_err(|e: banger_oci::ReferenceError| Invalid(e.to_string()))
}

/// A platform, `OS/ARCH[/VARIANT]`.
pub fn platform(value: &str) -> Result<banger_oci::Platform, Invalid> {
    value
        .parse()
        .map_err(|e: banger_oci::PlatformParseError| Invalid(e.to_string()))
}

/// Registry credentials: a user name and a password together, or neither.
pub fn credentials(
    username: Option<String>,
    password: Option<String>,
) -> Result<Option<banger_oci::Credentials>, Invalid> {
    match (username, password) {
        (Some(username), Some(password)) if !username.is_empty() => {
            Ok(Some(banger_oci::Credentials::Basic { username, password }))
        }
        (None, None) => Ok(None),
        _ => Err(Invalid(
            "a registry user name and password go together (--username U --password-stdin)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["dev", "a", "web-1", "0abc", &"a".repeat(63)] {
            assert!(name("vm", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a/b",
            "a b",
            "Dev",
            "-x",
            "x-",
            "x.y",
            &"a".repeat(64),
            "é",
        ] {
            let e = name("vm", bad).unwrap_err();
            assert!(e.to_string().starts_with("invalid vm name"), "{bad}");
        }
    }

    #[test]
    fn resources() {
        assert!(vcpus(0).is_err() && vcpus(65).is_err() && vcpus(1).is_ok());
        assert!(memory_mib(0).is_err() && memory_mib(512).is_ok());
        assert!(disk_size(0).is_err() && disk_size(1 << 30).is_ok());
        assert!(
            disk_size(u64::MAX)
                .unwrap_err()
                .to_string()
                .contains("disk size")
        );
    }
}
