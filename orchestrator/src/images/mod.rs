//! Images users bring (issue #15): OCI archives and registry pulls, applied
//! layer by layer into root filesystems that sandboxes start from.
//!
//! So far: [`layer`], applying one layer with the OCI layer semantics,
//! confined to the root it builds. The layer store, the import and pull
//! routes and the image records build on it.

pub mod layer;
