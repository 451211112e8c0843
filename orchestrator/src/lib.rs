//! The sbx orchestrator: `sbx serve` and the `sbx` command-line client.
//!
//! Layers, top to bottom (see `shared/DESIGN.md`):
//! - [`http`]: routes, authentication, the one error-to-status mapping;
//! - [`sandbox`]: the manager, owner of every lifecycle transition;
//! - [`lifecycle`]: the table of those transitions, which the store
//!   enforces;
//! - [`bridge`]: forwards sandbox calls to the agent's Unix socket;
//! - [`egress`]: the HTTP proxy that is a sandbox's only way out, per its
//!   allowlist;
//! - [`runtime`]: the container engine seam (youki embedded);
//! - [`store`]: the SQLite store.
//!
//! [`mcp`] serves the API as MCP tools for models, through the HTTP layer.
//!
//! Beside them, the policy: [`tokens`] (who is calling and what they may
//! do) and [`audit`] (the record of every call); and [`metrics`], what
//! `GET /metrics` reports.
//!
//! [`cli`] is the `sbx` binary's logic; `main.rs` only calls it.

pub mod audit;
pub mod bridge;
pub mod cli;
pub mod e2b;
pub mod egress;
pub mod http;
pub mod images;
pub mod lifecycle;
pub mod mcp;
pub mod metrics;
pub mod runtime;
pub mod sandbox;
pub mod sandbox_socket;
pub mod server;
pub mod store;
pub mod tokens;
