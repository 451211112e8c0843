//! `GET /v1/info`: what is serving, and on which container engine.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// The sbx version.
    pub version: String,
    pub runtime: RuntimeInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    /// `youki` or `docker`.
    pub name: String,
    /// The engine's own version.
    pub version: String,
}
