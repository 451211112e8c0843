//! Turning an allowed host into addresses the proxy may connect to.
//!
//! Names are resolved here, on the host, never in the sandbox (which has no
//! resolver and no route). An allowlisted name is not trusted to point
//! outside: a name whose addresses are loopback (the sbx API itself listens
//! there), link-local (`169.254.0.0/16` with the cloud metadata service,
//! `fe80::/10`), unspecified, "this network" (`0.0.0.0/8`), broadcast or
//! multicast is refused, however it got into the allowlist and whether it
//! came from DNS, `/etc/hosts` or an IP literal. Of a name with both kinds
//! of addresses only the acceptable ones are used, so a rebinding answer
//! cannot slip loopback in.
//!
//! Private ranges (`10/8`, `172.16/12`, `192.168/16`) are not refused:
//! internal package mirrors live there, and only what the allowlist names
//! is reached at all.
//!
//! Test-only overrides ([`Resolver::with_overrides`], `sbx serve
//! --egress-resolve HOST=IP`) map a name to an address without DNS and are
//! trusted as they are, loopback included: the end-to-end tests need their
//! upstreams on loopback, and no production deployment should set them.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};

/// Why a host cannot be connected to.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot resolve {host}: {source}")]
    NotFound { host: String, source: io::Error },
    #[error(
        "{host} resolves to {addr}, a {kind} address, which the egress proxy never connects to"
    )]
    Forbidden {
        host: String,
        addr: IpAddr,
        kind: &'static str,
    },
}

/// Resolves names with the system resolver, refusing internal addresses
/// (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    overrides: HashMap<String, IpAddr>,
}

impl Resolver {
    /// A resolver whose `overrides` (normalised host → address) bypass DNS
    /// and the address checks. Test-only.
    pub fn with_overrides(overrides: impl IntoIterator<Item = (String, IpAddr)>) -> Self {
        Self {
            overrides: overrides.into_iter().collect(),
        }
    }

    pub fn has_overrides(&self) -> bool {
        !self.overrides.is_empty()
    }

    /// The addresses to try for `host:port`, in the resolver's order.
    /// `host` is normalised.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        if let Some(&addr) = self.overrides.get(host) {
            return Ok(vec![SocketAddr::new(addr, port)]);
        }
        let resolved: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(addr) => vec![SocketAddr::new(addr, port)],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|source| ResolveError::NotFound {
                    host: host.to_owned(),
                    source,
                })?
                .collect(),
        };
        let mut first_refused = None;
        let mut usable = Vec::with_capacity(resolved.len());
        for addr in resolved {
            match forbidden_kind(addr.ip()) {
                None => usable.push(addr),
                Some(kind) => {
                    first_refused.get_or_insert((addr.ip(), kind));
                }
            }
        }
        match (usable.is_empty(), first_refused) {
            (false, _) => Ok(usable),
            (true, Some((addr, kind))) => Err(ResolveError::Forbidden {
                host: host.to_owned(),
                addr,
                kind,
            }),
            (true, None) => Err(ResolveError::NotFound {
                host: host.to_owned(),
                source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
            }),
        }
    }
}

/// What kind of internal address `addr` is, if the proxy must not connect
/// to it.
pub fn forbidden_kind(addr: IpAddr) -> Option<&'static str> {
    // `::ffff:127.0.0.1` reaches 127.0.0.1: judge mapped addresses as IPv4.
    match addr.to_canonical() {
        IpAddr::V4(v4) => {
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.is_unspecified() || v4.octets()[0] == 0 {
                Some("unspecified")
            } else if v4.is_broadcast() {
                Some("broadcast")
            } else if v4.is_multicast() {
                Some("multicast")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unicast_link_local() {
                Some("link-local")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an ip")
    }

    #[test]
    fn internal_addresses_are_forbidden() {
        for (addr, kind) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("::", "unspecified"),
            ("255.255.255.255", "broadcast"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
        ] {
            assert_eq!(forbidden_kind(ip(addr)), Some(kind), "{addr}");
        }
        for addr in [
            "93.184.216.34",
            "10.0.0.1",
            "192.168.1.1",
            "2606:4700::1111",
        ] {
            assert_eq!(forbidden_kind(ip(addr)), None, "{addr}");
        }
    }

    #[tokio::test]
    async fn loopback_names_and_literals_are_refused() {
        let resolver = Resolver::default();
        for host in ["localhost", "127.0.0.1", "169.254.169.254"] {
            match resolver.resolve(host, 80).await {
                Err(ResolveError::Forbidden { host: named, .. }) => assert_eq!(named, host),
                other => panic!("{host}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn overrides_are_trusted_and_skip_dns() {
        let resolver = Resolver::with_overrides([("allowed.test".to_owned(), ip("127.0.0.1"))]);
        assert!(resolver.has_overrides());
        let addrs = resolver
            .resolve("allowed.test", 8080)
            .await
            .expect("resolves");
        assert_eq!(addrs, [SocketAddr::from(([127, 0, 0, 1], 8080))]);
        assert!(matches!(
            resolver.resolve("localhost", 8080).await,
            Err(ResolveError::Forbidden { .. })
        ));
    }
}
