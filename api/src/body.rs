//! Reading a JSON request body, the same way on both hops.

use serde::de::DeserializeOwned;

/// Parses a request body that must be one JSON object; the message says
/// what is wrong, for an `invalid_request` error.
///
/// serde's derived `Deserialize` also builds a struct from a JSON array,
/// filling its fields in order (`[null, null]` was a valid create request).
/// Every body of the API is an object, and one that is not is refused
/// rather than read by position: found by schemathesis.
pub fn from_json_object<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let first = body.iter().find(|byte| !byte.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err("invalid json body: expected a JSON object".into());
    }
    serde_json::from_slice(body).map_err(|err| format!("invalid json body: {err}"))
}

/// `deserialize_with` for an optional field that must be a JSON object (or
/// null): the same refusal of arrays as [`from_json_object`], one level
/// down (`{"network": []}` read as an empty policy; found by schemathesis).
pub fn optional_object<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: DeserializeOwned,
{
    use serde::de::Error;
    use serde::Deserialize;
    match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Null => Ok(None),
        value @ serde_json::Value::Object(_) => serde_json::from_value(value)
            .map(Some)
            .map_err(D::Error::custom),
        other => Err(D::Error::custom(format!(
            "expected a JSON object, found {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CreateSandboxRequest;

    #[test]
    fn only_objects_are_bodies() {
        let parsed: CreateSandboxRequest = from_json_object(b" \n{}").expect("an object");
        assert_eq!(parsed, CreateSandboxRequest::default());
        for bad in [&b"[null, null]"[..], b"[]", b"null", b"\"{}\"", b"", b"  "] {
            let refused = from_json_object::<CreateSandboxRequest>(bad);
            assert!(refused.is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        for nested in [&br#"{"network":[]}"#[..], br#"{"lifecycle":[0]}"#] {
            let refused = from_json_object::<CreateSandboxRequest>(nested);
            assert!(refused.is_err(), "{:?}", String::from_utf8_lossy(nested));
        }
        let null = from_json_object::<CreateSandboxRequest>(br#"{"network":null}"#);
        assert_eq!(null.expect("null is absent").network, None);
        let shape = from_json_object::<CreateSandboxRequest>(br#"{"memory_mb":"x"}"#);
        assert!(shape
            .expect_err("a wrong type")
            .starts_with("invalid json body: "));
    }
}
