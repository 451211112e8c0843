//! Property tests of request parsing: whatever bytes or JSON a client sends,
//! parsing never panics, and a request that passes `validate` holds every
//! invariant the orchestrator and the agent rely on. Case counts are fixed,
//! so each run costs the same bounded time in CI.

use proptest::prelude::*;
use sbx_api::{
    validate_path, CreateSandboxRequest, ExecRequest, StartProcessRequest, MAX_CPUS, MAX_DISK_MB,
    MAX_MEMORY_MB, MAX_TIMEOUT_MS, MIN_DISK_MB,
};
use serde_json::{json, Map, Value};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Objects with the real field names and values of any type: the shapes
/// that get past the first parse.
fn object_of(
    fields: Vec<&'static str>,
    value: impl Strategy<Value = Value>,
) -> impl Strategy<Value = Value> {
    prop::collection::btree_map(prop::sample::select(fields), value, 0..5).prop_map(|map| {
        Value::Object(
            map.into_iter()
                .map(|(key, value)| (key.to_owned(), value))
                .collect::<Map<String, Value>>(),
        )
    })
}

fn exec_like() -> impl Strategy<Value = Value> {
    let value = prop_oneof![
        any_json(),
        prop::collection::vec("(/|[a-z]|=|\u{0}){0,6}", 0..3).prop_map(|v| json!(v)),
        prop::collection::btree_map("(/|[a-z]|=|\u{0}){0,4}", ".{0,4}", 0..3)
            .prop_map(|m| json!(m)),
        any::<u64>().prop_map(|n| json!(n)),
        "(/|[a-z]|\\.\\.|\u{0}){0,6}".prop_map(Value::from),
    ];
    object_of(
        vec![
            "cmd",
            "shell",
            "cwd",
            "env",
            "timeout_ms",
            "stdin",
            "user",
            "stream",
        ],
        value,
    )
}

fn create_like() -> impl Strategy<Value = Value> {
    let value = prop_oneof![
        any_json(),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "[a-z./\u{0}-]{0,10}".prop_map(Value::from),
    ];
    object_of(
        vec!["image", "memory_mb", "cpus", "disk_mb", "env", "labels"],
        value,
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = serde_json::from_slice::<ExecRequest>(&bytes);
        let _ = serde_json::from_slice::<CreateSandboxRequest>(&bytes);
        let _ = serde_json::from_slice::<StartProcessRequest>(&bytes);
    }

    #[test]
    fn valid_exec_requests_hold_their_invariants(value in exec_like()) {
        let Ok(request) = serde_json::from_value::<ExecRequest>(value) else {
            return Ok(());
        };
        if request.validate().is_err() {
            return Ok(());
        }
        // Exactly one of argv and shell; argv names a program.
        prop_assert!(request.cmd.is_some() != request.shell.is_some());
        if let Some(cmd) = &request.cmd {
            prop_assert!(!cmd.is_empty() && !cmd[0].is_empty());
            prop_assert!(cmd.iter().all(|arg| !arg.contains('\0')));
        }
        prop_assert!(request.timeout_ms.is_none_or(|ms| ms > 0 && ms <= MAX_TIMEOUT_MS));
        if let Some(cwd) = &request.cwd {
            prop_assert!(cwd.starts_with('/') && !cwd.contains('\0'));
        }
        for (key, value) in &request.env {
            prop_assert!(!key.is_empty() && !key.contains(['=', '\0']) && !value.contains('\0'));
        }
        // What passed validation survives the hop to the agent unchanged.
        let again: ExecRequest =
            serde_json::from_slice(&serde_json::to_vec(&request).expect("serializes"))
                .expect("re-parses");
        prop_assert_eq!(again, request);
    }

    #[test]
    fn valid_create_requests_hold_their_invariants(value in create_like()) {
        let Ok(request) = serde_json::from_value::<CreateSandboxRequest>(value) else {
            return Ok(());
        };
        if request.validate().is_err() {
            return Ok(());
        }
        prop_assert!(request.memory_mb.is_none_or(|mb| (16..=MAX_MEMORY_MB).contains(&mb)));
        prop_assert!(request.cpus.is_none_or(|c| c.is_finite() && c > 0.0 && c <= MAX_CPUS));
        prop_assert!(request.disk_mb.is_none_or(|mb| (MIN_DISK_MB..=MAX_DISK_MB).contains(&mb)));
        if let Some(image) = &request.image {
            // Names with slashes are references; no part of one can walk.
            prop_assert!(!image.is_empty() && !image.contains('\0'));
            prop_assert!(image.split('/').all(|part| !part.is_empty() && !part.starts_with('.')));
        }
    }

    #[test]
    fn valid_paths_are_absolute_and_free_of_nul(path in "(/|[a-z]|\\.\\.|\u{0}){0,12}") {
        if validate_path(&path).is_ok() {
            prop_assert!(path.starts_with('/'));
            prop_assert!(!path.contains('\0'));
        }
    }
}
