//! The bounds written into the OpenAPI schemas are literals (utoipa takes
//! no constants there); they must be the ones `validate` enforces, or a
//! client generated from the spec would send what the server refuses.

use sbx_api::{
    AuditQuery, CreateSandboxRequest, ExecRequest, MAX_AUDIT_LIMIT, MAX_CPUS, MAX_DISK_MB,
    MAX_MEMORY_MB, MAX_TIMEOUT_MS, MIN_DISK_MB,
};
use serde_json::Value;
use utoipa::{IntoParams, PartialSchema};

fn property(schema: &Value, name: &str) -> Value {
    schema["properties"][name].clone()
}

#[test]
fn create_bounds_are_the_validated_ones() {
    let schema = serde_json::to_value(CreateSandboxRequest::schema()).expect("serializes");
    let memory = property(&schema, "memory_mb");
    assert_eq!(memory["minimum"], 16);
    assert_eq!(memory["maximum"], MAX_MEMORY_MB);
    let disk = property(&schema, "disk_mb");
    assert_eq!(disk["minimum"], MIN_DISK_MB);
    assert_eq!(disk["maximum"], MAX_DISK_MB);
    let cpus = property(&schema, "cpus");
    assert_eq!(cpus["exclusiveMinimum"], 0);
    assert_eq!(cpus["maximum"].as_f64(), Some(MAX_CPUS));
    let request = |image: &str| CreateSandboxRequest {
        image: Some(image.into()),
        ..CreateSandboxRequest::default()
    };
    let pattern = property(&schema, "image")["pattern"].clone();
    assert_eq!(pattern, r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$");
    assert!(request(&"a".repeat(128)).validate().is_ok());
    assert!(request(&"a".repeat(129)).validate().is_err());
    assert!(request(".hidden").validate().is_err());
}

#[test]
fn exec_timeout_bounds_are_the_validated_ones() {
    let schema = serde_json::to_value(ExecRequest::schema()).expect("serializes");
    let timeout = property(&schema, "timeout_ms");
    assert_eq!(timeout["minimum"], 1);
    assert_eq!(timeout["maximum"], MAX_TIMEOUT_MS);
}

#[test]
fn audit_limit_bounds_are_the_validated_ones() {
    let params = AuditQuery::into_params(|| None);
    let limit = params
        .iter()
        .find(|param| param.name == "limit")
        .expect("a limit parameter");
    let schema = serde_json::to_value(&limit.schema).expect("serializes");
    assert_eq!(schema["minimum"], 1);
    assert_eq!(schema["maximum"], MAX_AUDIT_LIMIT);
}
