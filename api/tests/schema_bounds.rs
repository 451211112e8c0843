//! The bounds written into the OpenAPI schemas are literals (utoipa takes
//! no constants there); they must be the ones `validate` enforces, or a
//! client generated from the spec would send what the server refuses.

use sbx_api::{
    AuditQuery, CreateSandboxRequest, CreateTokenRequest, ExecRequest, MAX_AUDIT_LIMIT, MAX_CPUS,
    MAX_DISK_MB, MAX_MEMORY_MB, MAX_TIMEOUT_MS, MAX_TOKEN_NAME_LEN, MAX_TOKEN_TTL_S, MIN_DISK_MB,
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
    assert_eq!(
        pattern,
        r"^[A-Za-z0-9_][A-Za-z0-9._:@-]*(/[A-Za-z0-9_:@-][A-Za-z0-9._:@-]*)*$"
    );
    assert_eq!(property(&schema, "image")["maxLength"], 512);
    assert!(request(&"a".repeat(512)).validate().is_ok());
    assert!(request(&"a".repeat(513)).validate().is_err());
    for refused in [".hidden", "a/.b", "a//b", "/a", "-a", "a b"] {
        assert!(request(refused).validate().is_err(), "{refused}");
    }
    assert!(request("localhost:5000/team/app:v1@sha256:00")
        .validate()
        .is_ok());
}

#[test]
fn exec_timeout_bounds_are_the_validated_ones() {
    let schema = serde_json::to_value(ExecRequest::schema()).expect("serializes");
    let timeout = property(&schema, "timeout_ms");
    assert_eq!(timeout["minimum"], 1);
    assert_eq!(timeout["maximum"], MAX_TIMEOUT_MS);
}

#[test]
fn token_bounds_are_the_validated_ones() {
    let schema = serde_json::to_value(CreateTokenRequest::schema()).expect("serializes");
    let ttl = property(&schema, "ttl_s");
    assert_eq!(ttl["minimum"], 1);
    assert_eq!(ttl["maximum"], MAX_TOKEN_TTL_S);
    let pattern = format!("^[A-Za-z0-9._-]{{1,{MAX_TOKEN_NAME_LEN}}}$");
    assert_eq!(property(&schema, "name")["pattern"], pattern.as_str());
}

/// The schema of query parameter `name` of `P`.
fn param<P: IntoParams>(name: &str) -> Value {
    let params = P::into_params(|| None);
    let param = params
        .iter()
        .find(|param| param.name == name)
        .unwrap_or_else(|| panic!("no parameter {name}"));
    serde_json::to_value(&param.schema).expect("serializes")
}

#[test]
fn query_bounds_are_the_validated_ones() {
    let limit = param::<AuditQuery>("limit");
    assert_eq!(limit["minimum"], 1);
    assert_eq!(limit["maximum"], MAX_AUDIT_LIMIT);
}
