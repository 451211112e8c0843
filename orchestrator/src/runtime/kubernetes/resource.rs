//! sbx's own resource on a cluster: `Sandbox` in the `sbx.dev` API group.
//!
//! A `Sandbox` is the cluster's record of one sandbox: what it was created
//! with (`spec`) and what the runtime last saw of it (`status.phase`). Its
//! pod and key Secret are owned by it. `kubectl get sandboxes` shows every
//! sandbox of the namespace, and an orchestrator that restarts, or a second
//! one against the same cluster and `--kube-instance`, finds them there.

use serde_json::{json, Value};

pub const GROUP: &str = "sbx.dev";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "sbx.dev/v1alpha1";
pub const KIND: &str = "Sandbox";
pub const PLURAL: &str = "sandboxes";

/// What `status.phase` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Its pod is being made and its agent waited for.
    Starting,
    /// Its agent answered.
    Running,
    /// Its pod is gone, or its sandbox container ended: it has died.
    Dead,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "Starting",
            Phase::Running => "Running",
            Phase::Dead => "Dead",
        }
    }
}

/// A merge patch of a record's status; an empty `message` leaves it out.
pub fn status_patch(phase: Phase, message: &str) -> Value {
    let mut status = json!({ "phase": phase.as_str() });
    if !message.is_empty() {
        status["message"] = json!(message);
    }
    json!({ "status": status })
}

/// The CustomResourceDefinition, applied at start when missing. Its schema
/// is structural (the API server insists) and names the fields sbx writes.
pub fn definition() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": format!("{PLURAL}.{GROUP}") },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "plural": PLURAL,
                "singular": "sandbox",
                "kind": KIND,
                "listKind": "SandboxList",
            },
            "versions": [{
                "name": VERSION,
                "served": true,
                "storage": true,
                "subresources": { "status": {} },
                "additionalPrinterColumns": [
                    { "name": "Image", "type": "string", "jsonPath": ".spec.image" },
                    { "name": "Phase", "type": "string", "jsonPath": ".status.phase" },
                    { "name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp" },
                ],
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "required": ["id", "image"],
                            "properties": {
                                "id": { "type": "string" },
                                "image": { "type": "string" },
                                "memoryBytes": { "type": "integer", "format": "int64" },
                                "cpus": { "type": "number" },
                                "diskBytes": { "type": "integer", "format": "int64", "nullable": true },
                            },
                        },
                        "status": {
                            "type": "object",
                            "properties": {
                                "phase": { "type": "string" },
                                "message": { "type": "string" },
                            },
                        },
                    },
                }},
            }],
        },
    })
}
