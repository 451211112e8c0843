//! Images users bring (issue #15): OCI archives and registry pulls, applied
//! layer by layer into root filesystems that sandboxes start from.
//!
//! - [`reference`]: image names, and the directory each is kept under;
//! - [`catalog`]: the images dir: names, builds, imports and collection;
//! - [`dockerfile`]: Dockerfiles read into steps, with variables expanded as
//!   Docker does, refusing what sbx's builder does not run;
//! - [`context`]: the files a COPY or ADD step copies from the build
//!   context, as a tar named for its destination;
//! - [`archive`]: `docker save` output and OCI layouts, unpacked and
//!   verified;
//! - [`pull`]: a registry's image fetched as an OCI layout;
//! - [`layer`]: one layer applied with the OCI semantics, confined to the
//!   root it builds;
//! - [`store`]: layers stored by chain, each a snapshot of the one below.

pub mod archive;
pub mod catalog;
pub mod context;
pub mod dockerfile;
pub mod layer;
pub mod pull;
pub mod reference;
pub mod store;
#[cfg(test)]
mod test_tar;

/// What goes wrong reading, checking or applying an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// A layer names a path no well-formed layer does.
    #[error("layer entry {path:?}: {reason}")]
    BadEntry { path: String, reason: String },
    /// The archive or a layer is not an image sbx reads: corrupt (a digest
    /// that does not match), malformed, or in a form not supported.
    #[error("{0}")]
    Invalid(String),
    /// The registry has no such repository, tag or digest.
    #[error("{0}")]
    NotInRegistry(String),
    /// The registry refused the pull (credentials, anything it answers
    /// that is not a missing image).
    #[error("{0}")]
    Registry(String),
    /// The registry could not be reached.
    #[error("{0}")]
    Unreachable(String),
}

impl ImageError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    pub(crate) fn errno(context: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> Self {
        let context = context.into();
        move |errno| Self::Io {
            context,
            source: errno.into(),
        }
    }
}
