//! OCI/Docker images for banger: parse a reference the way Docker does,
//! find the registry's credentials, and pull the image's config and layers
//! into a content-addressed, verified blob cache.
//!
//! Turning the layers into a disk is `crates/image`'s job; this crate only
//! fetches them.

pub mod auth;
pub mod cache;
pub mod pull;
pub mod reference;

pub use auth::{AuthError, AuthSources, Credentials, resolve_credentials};
pub use cache::{BlobCache, BlobWriter, CacheError, PruneReport, VerifiedBlob};
pub use pull::{
    Compression, ExposedPort, ImageConfig, Layer, Platform, PlatformParseError, Progress,
    PullError, PullOptions, PullStats, PulledImage, pull,
};
pub use reference::{Digest, ImageReference, ReferenceError};
