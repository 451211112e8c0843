//! The environment a sandboxed command starts with.
//!
//! Commands never inherit the agent's own environment: it holds the agent's
//! settings (`SBX_AGENT_*`, `RUST_LOG`) and whatever the runtime happened to
//! pass, none of which the tenant should see or depend on. Instead every
//! command gets, in increasing precedence: a small fixed default
//! ([`DEFAULT_ENV`]), the sandbox's base environment (the proxy variables
//! that point at the egress relay, see [`crate::egress::proxy_env`], then
//! what the orchestrator hands the agent as `SBX_ENV_NAME=value` variables,
//! so a sandbox created with its own `HTTP_PROXY` keeps it), what the request's
//! `user` implies (`HOME`, `USER`, `LOGNAME`: running as someone else must
//! not leave root's home in place), and the request's own `env`.

use std::collections::BTreeMap;
use std::ffi::OsString;

/// Prefix of the agent's environment variables that carry the sandbox's
/// base environment: `SBX_ENV_FOO=bar` gives every command `FOO=bar`.
pub const BASE_ENV_PREFIX: &str = "SBX_ENV_";

/// What every command gets unless the sandbox or the request says otherwise.
pub const DEFAULT_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("LANG", "C.UTF-8"),
];

/// Picks the sandbox's base environment out of the agent's own variables.
/// Variables that are not UTF-8, or whose name is empty after the prefix,
/// are skipped: they could not have come from the orchestrator's JSON.
pub fn base_env_from_vars(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> BTreeMap<String, String> {
    vars.into_iter()
        .filter_map(|(key, value)| {
            let key = key.into_string().ok()?;
            let name = key.strip_prefix(BASE_ENV_PREFIX)?;
            if name.is_empty() {
                return None;
            }
            Some((name.to_owned(), value.into_string().ok()?))
        })
        .collect()
}

/// The full environment of one command: defaults, then `base`, then
/// `user` (see [`crate::user::Identity::env`]), then `request` (later
/// entries win).
pub fn command_env(
    base: &BTreeMap<String, String>,
    user: &[(String, String)],
    request: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = DEFAULT_ENV
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect();
    env.extend(base.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(user.iter().cloned());
    env.extend(request.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn base_env_keeps_only_prefixed_variables() {
        let vars = [
            ("SBX_ENV_FOO", "bar"),
            ("SBX_ENV_", "nameless"),
            ("SBX_AGENT_SOCKET", "/x"),
            ("PATH", "/agent/bin"),
            ("SBX_ENV_PATH", "/sandbox/bin"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        assert_eq!(
            base_env_from_vars(vars),
            map(&[("FOO", "bar"), ("PATH", "/sandbox/bin")])
        );
    }

    #[test]
    fn request_beats_base_beats_defaults() {
        let base = map(&[("HOME", "/home/sbx"), ("A", "base"), ("B", "base")]);
        let request = map(&[("B", "request"), ("C", "request")]);
        let env = command_env(&base, &[], &request);
        assert_eq!(env["HOME"], "/home/sbx");
        assert_eq!(env["LANG"], "C.UTF-8");
        assert!(env["PATH"].contains("/usr/bin"));
        assert_eq!(env["A"], "base");
        assert_eq!(env["B"], "request");
        assert_eq!(env["C"], "request");
        assert_eq!(env.len(), 6);
    }

    #[test]
    fn user_beats_base_but_not_request() {
        let base = map(&[("HOME", "/home/sbx"), ("USER", "base")]);
        let user = [
            ("HOME".to_owned(), "/home/dev".to_owned()),
            ("USER".to_owned(), "dev".to_owned()),
        ];
        let request = map(&[("USER", "request")]);
        let env = command_env(&base, &user, &request);
        assert_eq!(env["HOME"], "/home/dev");
        assert_eq!(env["USER"], "request");
    }
}
