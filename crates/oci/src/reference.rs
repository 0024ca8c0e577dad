//! Image references as Docker reads them: `python:3.12-slim` is
//! `docker.io/library/python:3.12-slim`, `user/repo` is
//! `docker.io/user/repo:latest`, `host:port/repo:tag`, `localhost/repo`,
//! and `NAME@sha256:HEX` with or without a tag.

use std::fmt;
use std::str::FromStr;

/// The registry of references that name none (`python`, `user/repo`).
pub const DOCKER_HUB: &str = "docker.io";

/// Docker Hub's legacy name, normalised to [`DOCKER_HUB`].
const DOCKER_HUB_LEGACY: &str = "index.docker.io";

/// Docker's limit on the length of a repository path with its registry.
const NAME_MAX: usize = 255;

/// Docker's limit on the length of a tag.
const TAG_MAX: usize = 128;

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageReference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// A `sha256:HEX` content digest (the only algorithm the blob cache keeps).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

/// What is wrong with an image reference or a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("empty image reference")]
    Empty,
    #[error("image reference {reference:?} has no repository name")]
    NoRepository { reference: String },
    #[error(
        "repository {repository:?} must be lowercase letters, digits and separators (`.`, `_`, `__`, `-`) between `/`"
    )]
    InvalidRepository { repository: String },
    #[error("registry {registry:?} is not a valid HOST[:PORT]")]
    InvalidRegistry { registry: String },
    #[error(
        "tag {tag:?} must be 1 to 128 letters, digits, `_`, `.` or `-`, not starting with `.` or `-`"
    )]
    InvalidTag { tag: String },
    #[error("image name {name:?} is longer than {NAME_MAX} characters")]
    NameTooLong { name: String },
    #[error("digest {digest:?} has an unsupported algorithm (only sha256 is supported)")]
    UnsupportedDigestAlgorithm { digest: String },
    #[error("digest {digest:?} is not sha256: followed by 64 lowercase hex digits")]
    InvalidDigest { digest: String },
}

impl Digest {
    /// The 64 lowercase hex digits, safe to use as a file name.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        use sha2::Digest as _;
        Self::from_sha256(sha2::Sha256::digest(data).as_slice())
    }

    /// The digest whose raw SHA-256 bytes are `bytes`.
    pub(crate) fn from_sha256(bytes: &[u8]) -> Self {
        use std::fmt::Write as _;
        let mut hex = String::with_capacity(64);
        for b in bytes {
            // Writing to a String cannot fail.
            let _ = write!(hex, "{b:02x}");
        }
        Self { hex }
    }
}

impl FromStr for Digest {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((algorithm, hex)) = s.split_once(':') else {
            return Err(ReferenceError::InvalidDigest {
                digest: s.to_owned(),
            });
        };
        if algorithm != "sha256" {
            let valid_algorithm = !algorithm.is_empty()
                && algorithm
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b));
            return Err(if valid_algorithm && !hex.is_empty() {
                ReferenceError::UnsupportedDigestAlgorithm {
                    digest: s.to_owned(),
                }
            } else {
                ReferenceError::InvalidDigest {
                    digest: s.to_owned(),
                }
            });
        }
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(ReferenceError::InvalidDigest {
                digest: s.to_owned(),
            });
        }
        Ok(Self {
            hex: hex.to_owned(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl ImageReference {
    /// The registry host (with its port, if any); `docker.io` for Docker Hub.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path inside the registry (`library/python`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag: `latest` when the reference named neither tag nor digest.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest the reference pins, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The host part of the registry, without its port or IPv6 brackets.
    pub fn registry_host(&self) -> &str {
        registry_host(&self.registry)
    }

    /// Whether Docker talks plain HTTP to this registry by default: `localhost`
    /// and loopback addresses (127.0.0.0/8, ::1).
    pub fn is_loopback_registry(&self) -> bool {
        let host = self.registry_host();
        if host == "localhost" {
            return true;
        }
        match host.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.is_loopback(),
            Err(_) => false,
        }
    }

    pub(crate) fn to_oci(&self) -> oci_client::Reference {
        let (registry, repository) = (self.registry.clone(), self.repository.clone());
        match (&self.tag, &self.digest) {
            (Some(tag), Some(digest)) => oci_client::Reference::with_tag_and_digest(
                registry,
                repository,
                tag.clone(),
                digest.to_string(),
            ),
            (None, Some(digest)) => {
                oci_client::Reference::with_digest(registry, repository, digest.to_string())
            }
            (Some(tag), None) => oci_client::Reference::with_tag(registry, repository, tag.clone()),
            (None, None) => {
                oci_client::Reference::with_tag(registry, repository, "latest".to_owned())
            }
        }
    }
}

fn registry_host(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    registry.split(':').next().unwrap_or(registry)
}

impl FromStr for ImageReference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (rest, digest) = match s.rsplit_once('@') {
            Some((rest, digest)) => (rest, Some(digest.parse::<Digest>()?)),
            None => (s, None),
        };
        // A `:` after the last `/` starts the tag; one before it is a port.
        let last_slash = rest.rfind('/');
        let (name, tag) = match rest.rfind(':') {
            Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
                (&rest[..colon], Some(&rest[colon + 1..]))
            }
            _ => (rest, None),
        };
        if let Some(tag) = tag {
            check_tag(tag)?;
        }
        if name.is_empty() {
            return Err(ReferenceError::NoRepository {
                reference: s.to_owned(),
            });
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                check_registry(first)?;
                (first, path)
            }
            _ => (DOCKER_HUB, name),
        };
        if repository.is_empty() {
            return Err(ReferenceError::NoRepository {
                reference: s.to_owned(),
            });
        }
        check_repository(repository)?;
        let registry = if registry == DOCKER_HUB_LEGACY {
            DOCKER_HUB
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_owned()
        };
        if registry.len() + 1 + repository.len() > NAME_MAX {
            return Err(ReferenceError::NameTooLong {
                name: name.to_owned(),
            });
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_owned()),
        };
        Ok(Self {
            registry: registry.to_owned(),
            repository,
            tag,
            digest,
        })
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

fn check_tag(tag: &str) -> Result<(), ReferenceError> {
    let bytes = tag.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= TAG_MAX
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(b));
    if ok {
        Ok(())
    } else {
        Err(ReferenceError::InvalidTag {
            tag: tag.to_owned(),
        })
    }
}

fn check_registry(registry: &str) -> Result<(), ReferenceError> {
    let invalid = || ReferenceError::InvalidRegistry {
        registry: registry.to_owned(),
    };
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or_else(invalid)?;
        ip.parse::<std::net::Ipv6Addr>().map_err(|_| invalid())?;
        match after {
            "" => ("", None),
            _ => ("", Some(after.strip_prefix(':').ok_or_else(invalid)?)),
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        }
    };
    if port.is_some_and(|port| port.is_empty() || port.parse::<u16>().is_err()) {
        return Err(invalid());
    }
    if !registry.starts_with('[') {
        let labels_ok = !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !labels_ok {
            return Err(invalid());
        }
    }
    Ok(())
}

/// Each `/`-separated component: `[a-z0-9]+` runs joined by one `.`, one
/// `_`, `__`, or any number of `-`.
fn check_repository(repository: &str) -> Result<(), ReferenceError> {
    let component_ok = |c: &str| {
        let bytes = c.as_bytes();
        if bytes.is_empty() {
            return false;
        }
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
            return false;
        }
        let mut i = 0;
        while i < bytes.len() {
            if alnum(bytes[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && !alnum(bytes[i]) {
                i += 1;
            }
            let sep = &c[start..i];
            let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
            if !ok {
                return false;
            }
        }
        true
    };
    if repository.split('/').all(component_ok) {
        Ok(())
    } else {
        Err(ReferenceError::InvalidRepository {
            repository: repository.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parse(s: &str) -> ImageReference {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> ReferenceError {
        match s.parse::<ImageReference>() {
            Ok(r) => panic!("{s} parsed as {r}"),
            Err(e) => e,
        }
    }

    #[test]
    fn docker_hub_short_names() {
        let r = parse("python:3.12-slim");
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.repository(), "library/python");
        assert_eq!(r.tag(), Some("3.12-slim"));
        assert_eq!(r.digest(), None);
        assert_eq!(r.to_string(), "docker.io/library/python:3.12-slim");

        assert_eq!(
            parse("python").to_string(),
            "docker.io/library/python:latest"
        );
        assert_eq!(parse("user/repo").to_string(), "docker.io/user/repo:latest");
        assert_eq!(
            parse("docker.io/python").to_string(),
            "docker.io/library/python:latest"
        );
        assert_eq!(
            parse("index.docker.io/user/repo:1").to_string(),
            "docker.io/user/repo:1"
        );
        assert_eq!(parse("a/b/c").repository(), "a/b/c");
    }

    #[test]
    fn registries_with_hosts_and_ports() {
        let r = parse("127.0.0.1:5000/team/app:v1.2");
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.registry_host(), "127.0.0.1");
        assert_eq!(r.repository(), "team/app");
        assert_eq!(r.tag(), Some("v1.2"));
        assert!(r.is_loopback_registry());

        let r = parse("localhost/repo");
        assert_eq!(r.registry(), "localhost");
        assert_eq!(r.repository(), "repo");
        assert_eq!(r.tag(), Some("latest"));
        assert!(r.is_loopback_registry());

        let r = parse("localhost:5000/repo");
        assert_eq!(r.registry(), "localhost:5000");
        assert!(r.is_loopback_registry());

        let r = parse("ghcr.io/owner/image");
        assert_eq!(r.registry(), "ghcr.io");
        assert!(!r.is_loopback_registry());

        let r = parse("[::1]:5000/x");
        assert_eq!(r.registry(), "[::1]:5000");
        assert_eq!(r.registry_host(), "::1");
        assert!(r.is_loopback_registry());

        assert!(parse("127.9.9.9:1/x").is_loopback_registry());
        assert!(!parse("10.0.0.1:5000/x").is_loopback_registry());
        // A first component without `.`, `:` or `localhost` is a user name.
        assert_eq!(parse("myhost/repo").registry(), "docker.io");
    }

    #[test]
    fn digests_with_and_without_tags() {
        let r = parse(&format!("alpine@sha256:{HEX}"));
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().map(Digest::hex), Some(HEX));
        assert_eq!(
            r.to_string(),
            format!("docker.io/library/alpine@sha256:{HEX}")
        );

        let r = parse(&format!("localhost:5000/a/b:1.0@sha256:{HEX}"));
        assert_eq!(r.registry(), "localhost:5000");
        assert_eq!(r.tag(), Some("1.0"));
        assert_eq!(
            r.digest().map(ToString::to_string),
            Some(format!("sha256:{HEX}"))
        );
    }

    #[test]
    fn bad_references_name_what_is_wrong() {
        assert_eq!(err(""), ReferenceError::Empty);
        assert!(matches!(
            err("Python"),
            ReferenceError::InvalidRepository { .. }
        ));
        assert!(matches!(
            err("a//b"),
            ReferenceError::InvalidRepository { .. }
        ));
        assert!(matches!(
            err("a/b-"),
            ReferenceError::InvalidRepository { .. }
        ));
        assert!(matches!(
            err("a..b"),
            ReferenceError::InvalidRepository { .. }
        ));
        assert!(matches!(err("python:"), ReferenceError::InvalidTag { .. }));
        assert!(matches!(
            err("python:.x"),
            ReferenceError::InvalidTag { .. }
        ));
        assert!(matches!(
            err("python:a/b:c"),
            ReferenceError::InvalidRegistry { .. }
        ));
        assert!(matches!(
            err("host:99999/x"),
            ReferenceError::InvalidRegistry { .. }
        ));
        assert!(matches!(
            err("ho_st.io/x"),
            ReferenceError::InvalidRegistry { .. }
        ));
        assert!(matches!(
            err("localhost/"),
            ReferenceError::NoRepository { .. }
        ));
        assert!(matches!(err(":tag"), ReferenceError::NoRepository { .. }));
        assert!(matches!(
            err("x@sha256:abc"),
            ReferenceError::InvalidDigest { .. }
        ));
        assert!(matches!(
            err(&format!("x@sha256:{}", HEX.to_uppercase())),
            ReferenceError::InvalidDigest { .. }
        ));
        assert!(matches!(
            err("x@sha512:abcd"),
            ReferenceError::UnsupportedDigestAlgorithm { .. }
        ));
        let long = format!("a/{}", "b".repeat(300));
        assert!(matches!(err(&long), ReferenceError::NameTooLong { .. }));
        let long_tag = format!("a:{}", "t".repeat(129));
        assert!(matches!(err(&long_tag), ReferenceError::InvalidTag { .. }));
        // The message names the offending part.
        assert!(err("python:.x").to_string().contains("\".x\""));
    }

    #[test]
    fn digest_of_bytes() {
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn oci_reference_keeps_parts() {
        let r = parse("127.0.0.1:5000/a/b:t").to_oci();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "a/b");
        assert_eq!(r.tag(), Some("t"));
    }
}
