//! A sandbox's network policy: which hosts its egress proxy lets it reach.
//!
//! A sandbox has no route out. What it may reach, it reaches through the
//! orchestrator's HTTP proxy, which allows a connection only when the target
//! matches an entry of the sandbox's egress allowlist. The entry grammar
//! lives here, next to the wire type, because it is part of the API's
//! contract: the orchestrator validates requests with [`EgressRule::parse`]
//! and its proxy decides with [`EgressRule::matches`], so what a client was
//! told is valid and what the proxy enforces cannot drift apart.
//!
//! ```text
//! entry = host [ ":" port ]
//! host  = "*." name        ; every subdomain of name, at any depth, not name itself
//!       | name            ; exactly this host
//! name  = label *( "." label ) [ "." ]
//! label = 1*63 ( a-z / 0-9 / "-" / "_" ), not starting or ending with "-"
//! port  = 1..=65535       ; absent: any port
//! ```
//!
//! Names are case-insensitive and a trailing dot is dropped, so
//! `GitHub.com.` and `github.com` are the same entry; the canonical form
//! (lowercase, no trailing dot) is what the API stores and reports.
//!
//! Decisions worth knowing:
//! - `*.example.com` does not match `example.com`: a wildcard grants the
//!   subdomains someone asked for, not more. List the apex too when it is
//!   wanted.
//! - No port means any port: the allowlist names the parties a sandbox may
//!   talk to; `host:443` narrows an entry to one port.
//! - IPv4 literals are names like any other (`10.1.2.3:8080`); IPv6
//!   literals, URLs (`https://…`), paths and user info are rejected.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Most entries one sandbox's allowlist may hold.
pub const MAX_EGRESS_RULES: usize = 256;
/// Longest host name (RFC 1035, without the trailing dot).
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// `"network": {"egress": ["pypi.org", "*.githubusercontent.com", "github.com:443"]}`
///
/// In a create request it is optional (no network at all without it); in a
/// [`crate::Sandbox`] it is always present, `egress` empty when the sandbox
/// may reach nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicy {
    /// Hosts the sandbox may reach through the egress proxy (grammar in the
    /// module docs). Empty: every request is refused.
    #[serde(default)]
    pub egress: Vec<String>,
}

impl NetworkPolicy {
    /// The parsed rules; the message names the first bad entry.
    pub fn rules(&self) -> Result<Vec<EgressRule>, String> {
        if self.egress.len() > MAX_EGRESS_RULES {
            return Err(format!(
                "network.egress has {} entries; at most {MAX_EGRESS_RULES} are allowed",
                self.egress.len()
            ));
        }
        self.egress
            .iter()
            .map(|entry| EgressRule::parse(entry))
            .collect()
    }

    pub fn validate(&self) -> Result<(), String> {
        self.rules().map(drop)
    }

    /// The same policy in canonical form: entries lowercased, trailing dots
    /// dropped, duplicates removed (first occurrence kept).
    pub fn normalized(&self) -> Result<NetworkPolicy, String> {
        let mut egress: Vec<String> = Vec::with_capacity(self.egress.len());
        for rule in self.rules()? {
            let text = rule.to_string();
            if !egress.contains(&text) {
                egress.push(text);
            }
        }
        Ok(NetworkPolicy { egress })
    }
}

/// Which hosts an [`EgressRule`] covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Exactly this (normalised) host.
    Exact(String),
    /// Every host strictly below this domain: `*.example.com` is
    /// `Subdomains("example.com")`.
    Subdomains(String),
}

/// One parsed allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EgressRule {
    pub host: HostPattern,
    /// `None`: any port.
    pub port: Option<u16>,
}

impl EgressRule {
    /// Parses one entry; the message quotes it and says what is wrong.
    pub fn parse(entry: &str) -> Result<Self, String> {
        let invalid = |why: &str| format!("egress entry {entry:?} {why}");
        if entry.is_empty() {
            return Err(invalid("is empty"));
        }
        if entry.contains("://") {
            return Err(invalid(
                "is a url; give only the host, optionally with :port",
            ));
        }
        if entry.contains('/') {
            return Err(invalid(
                "has a path; give only the host, optionally with :port",
            ));
        }
        if entry.contains(['[', ']']) {
            return Err(invalid("is an ipv6 literal, which is not supported"));
        }
        let (host, port) = match entry.split_once(':') {
            None => (entry, None),
            Some((host, port)) => (host, Some(parse_port(port).map_err(|why| invalid(&why))?)),
        };
        let host = match host.strip_prefix("*.") {
            Some(domain) => HostPattern::Subdomains(
                normalize_host(domain).map_err(|why| invalid(&format!("has {why}")))?,
            ),
            None if host.contains('*') => {
                return Err(invalid(
                    "has a misplaced '*': a wildcard is a leading \"*.\" before a domain",
                ))
            }
            None => HostPattern::Exact(
                normalize_host(host).map_err(|why| invalid(&format!("has {why}")))?,
            ),
        };
        Ok(Self { host, port })
    }

    /// Whether a connection to `host:port` is allowed by this rule; `host`
    /// must be normalised (see [`normalize_host`]).
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|allowed| allowed != port) {
            return false;
        }
        match &self.host {
            HostPattern::Exact(name) => host == name,
            HostPattern::Subdomains(domain) => host
                .strip_suffix(domain.as_str())
                .and_then(|prefix| prefix.strip_suffix('.'))
                .is_some_and(|sub| !sub.is_empty()),
        }
    }
}

/// The canonical text: what the API stores and reports.
impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostPattern::Exact(name) => f.write_str(name)?,
            HostPattern::Subdomains(domain) => write!(f, "*.{domain}")?,
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    if text.is_empty() {
        return Err("has an empty port".into());
    }
    let valid = text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit());
    match text.parse::<u16>() {
        Ok(port) if valid && port != 0 => Ok(port),
        _ => Err(format!("has port {text:?}, which is not in 1..=65535")),
    }
}

/// A host name in canonical form (lowercase, no trailing dot), or what is
/// wrong with it ("an empty label", …). Used for allowlist entries and for
/// the hosts that requests to the proxy name, so both compare equal.
pub fn normalize_host(host: &str) -> Result<String, String> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() {
        return Err("an empty host name".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("a host name longer than {MAX_NAME_LEN} bytes"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("an empty label".into());
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!("a label longer than {MAX_LABEL_LEN} bytes"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!("an invalid character in label {label:?}"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starting or ending with '-'"));
        }
    }
    Ok(name.to_ascii_lowercase())
}

/// `PATCH /v1/sandboxes/{id}`: the fields present are changed, the others
/// kept. Only the network policy can change on a running sandbox.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSandboxRequest {
    /// Replaces the whole policy; takes effect for new connections at once.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::body::optional_object"
    )]
    pub network: Option<NetworkPolicy>,
}

impl UpdateSandboxRequest {
    pub fn validate(&self) -> Result<(), String> {
        match &self.network {
            Some(network) => network.validate(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(entry: &str) -> EgressRule {
        EgressRule::parse(entry).unwrap_or_else(|err| panic!("{entry}: {err}"))
    }

    #[test]
    fn parses_the_three_shapes() {
        assert_eq!(
            rule("packages.example.com"),
            EgressRule {
                host: HostPattern::Exact("packages.example.com".into()),
                port: None
            }
        );
        assert_eq!(
            rule("*.githubusercontent.com"),
            EgressRule {
                host: HostPattern::Subdomains("githubusercontent.com".into()),
                port: None
            }
        );
        assert_eq!(
            rule("github.com:443"),
            EgressRule {
                host: HostPattern::Exact("github.com".into()),
                port: Some(443)
            }
        );
        assert_eq!(rule("10.1.2.3:8080").to_string(), "10.1.2.3:8080");
        assert_eq!(rule("*.Example.COM.:80").to_string(), "*.example.com:80");
        assert_eq!(rule("_srv.example.com").to_string(), "_srv.example.com");
    }

    #[test]
    fn rejects_urls_paths_wildcards_and_bad_ports() {
        for (bad, why) in [
            ("", "is empty"),
            ("https://github.com", "is a url"),
            ("github.com/org/repo", "has a path"),
            ("user@github.com", "invalid character"),
            ("github.com?x=1", "invalid character"),
            ("git hub.com", "invalid character"),
            ("[::1]:443", "ipv6"),
            ("*", "misplaced '*'"),
            ("*.", "empty host name"),
            ("*example.com", "misplaced '*'"),
            ("a.*.example.com", "misplaced '*'"),
            ("*.*.example.com", "invalid character"),
            ("example..com", "empty label"),
            (".example.com", "empty label"),
            ("example.com..", "empty label"),
            ("-x.example.com", "starting or ending"),
            ("github.com:", "empty port"),
            ("github.com:0", "not in 1..=65535"),
            ("github.com:65536", "not in 1..=65535"),
            ("github.com:+443", "not in 1..=65535"),
            ("github.com:443:1", "not in 1..=65535"),
            ("github.com:https", "not in 1..=65535"),
            (":443", "empty host name"),
        ] {
            let err = EgressRule::parse(bad).expect_err(bad);
            assert!(err.contains(why), "{bad:?}: {err}");
            assert!(err.contains(&format!("{bad:?}")), "names the entry: {err}");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(EgressRule::parse(&long_label).is_err());
        let long_name = ["abcdefghi"; 26].join(".");
        assert!(long_name.len() > 253);
        assert!(EgressRule::parse(&long_name).is_err());
    }

    #[test]
    fn exact_hosts_match_only_themselves() {
        let exact = rule("github.com");
        assert!(exact.matches("github.com", 443));
        assert!(exact.matches("github.com", 22));
        assert!(!exact.matches("api.github.com", 443));
        assert!(!exact.matches("evilgithub.com", 443));
        assert!(!exact.matches("github.com.evil.net", 443));
    }

    #[test]
    fn wildcards_match_subdomains_at_any_depth_but_not_the_apex() {
        let wild = rule("*.githubusercontent.com");
        assert!(wild.matches("raw.githubusercontent.com", 443));
        assert!(wild.matches("a.b.githubusercontent.com", 80));
        assert!(!wild.matches("githubusercontent.com", 443));
        assert!(!wild.matches("evilgithubusercontent.com", 443));
        assert!(!wild.matches("githubusercontent.com.evil.net", 443));
    }

    #[test]
    fn ports_narrow_a_rule() {
        let ported = rule("github.com:443");
        assert!(ported.matches("github.com", 443));
        assert!(!ported.matches("github.com", 80));
        let wild = rule("*.example.com:8080");
        assert!(wild.matches("a.example.com", 8080));
        assert!(!wild.matches("a.example.com", 8081));
    }

    #[test]
    fn names_normalise_case_and_trailing_dot() {
        assert_eq!(normalize_host("GitHub.COM."), Ok("github.com".into()));
        assert!(normalize_host("a..b").is_err());
        assert!(normalize_host(".").is_err());
        let exact = rule("GITHUB.com.");
        assert!(exact.matches(&normalize_host("github.COM.").expect("valid"), 1));
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn label() -> impl Strategy<Value = String> {
            "[a-z0-9_]([a-z0-9_-]{0,8}[a-z0-9_])?"
        }

        fn name() -> impl Strategy<Value = String> {
            proptest::collection::vec(label(), 1..5).prop_map(|labels| labels.join("."))
        }

        /// Flips the case of some letters and maybe adds a trailing dot.
        fn spelled(name: &str, flips: &[bool], dot: bool) -> String {
            let mut text: String = name
                .chars()
                .zip(flips.iter().cycle())
                .map(|(c, &flip)| if flip { c.to_ascii_uppercase() } else { c })
                .collect();
            if dot {
                text.push('.');
            }
            text
        }

        proptest! {
            #[test]
            fn parsing_never_panics_and_canonical_text_round_trips(entry in "\\PC{0,40}") {
                if let Ok(rule) = EgressRule::parse(&entry) {
                    prop_assert_eq!(EgressRule::parse(&rule.to_string()), Ok(rule));
                }
            }

            #[test]
            fn exact_rules_match_their_host_on_any_port_whatever_the_spelling(
                host in name(),
                flips in proptest::collection::vec(any::<bool>(), 1..8),
                dot: bool,
                port in 1u16..,
            ) {
                let rule = EgressRule::parse(&spelled(&host, &flips, dot)).expect("valid");
                prop_assert_eq!(rule.to_string(), host.clone());
                let requested = normalize_host(&spelled(&host, &flips, !dot)).expect("valid");
                prop_assert!(rule.matches(&requested, port));
                let below = format!("x.{host}");
                prop_assert!(!rule.matches(&below, port));
            }

            #[test]
            fn ported_rules_match_only_their_port(host in name(), allowed in 1u16.., asked in 1u16..) {
                let rule = EgressRule::parse(&format!("{host}:{allowed}")).expect("valid");
                prop_assert_eq!(rule.matches(&host, asked), allowed == asked);
            }

            #[test]
            fn wildcards_match_strict_subdomains_only(
                domain in name(),
                sub in name(),
                other in name(),
                port in 1u16..,
            ) {
                let rule = EgressRule::parse(&format!("*.{domain}")).expect("valid");
                let below = format!("{sub}.{domain}");
                prop_assert!(rule.matches(&below, port));
                prop_assert!(!rule.matches(&domain, port));
                let glued = format!("{sub}{domain}");
                prop_assert!(!rule.matches(&glued, port));
                if !other.ends_with(&format!(".{domain}")) {
                    prop_assert!(!rule.matches(&other, port));
                }
            }
        }
    }

    #[test]
    fn policies_normalise_dedupe_and_cap() {
        let policy = NetworkPolicy {
            egress: vec!["A.com".into(), "a.com.".into(), "*.B.com:443".into()],
        };
        assert_eq!(
            policy.normalized().expect("valid").egress,
            ["a.com", "*.b.com:443"]
        );
        let too_many = NetworkPolicy {
            egress: (0..=MAX_EGRESS_RULES)
                .map(|i| format!("h{i}.com"))
                .collect(),
        };
        assert!(too_many.validate().is_err());
        let bad: Result<NetworkPolicy, _> = serde_json::from_str(r#"{"egress":[],"ingress":[]}"#);
        assert!(bad.is_err(), "unknown fields are refused");
    }
}
