//! Image names: the reference grammar of the OCI distribution spec
//! (`[registry[:port]/]path[:tag][@digest]`), and the directory name each
//! one is kept under in the images dir.
//!
//! A name is checked before it is used as a path component: every
//! character the grammar allows is one of `[A-Za-z0-9._:@/-]`, no component
//! can start with `.` (so no name is `.`, `..` or one of the dir's own
//! `.store`, `.layers`, `.staging` and `.idmapped`), and the one separator
//! that would make a path (`/`) becomes `+`, which the grammar never
//! allows, so two names never share a directory.
//!
//! A name without a tag or digest means `:latest`, as with every registry
//! client; `base` and other recipe images built by `scripts/build-image`
//! are the exception, found under their bare names.

use std::fmt;

/// Longest name accepted: the distribution spec caps the path at 255.
const MAX_LEN: usize = 512;
const MAX_TAG: usize = 128;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry host (with port) and repository path: `ghcr.io/org/app`,
    /// `localhost:5000/app`, `python`.
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses `text`, refusing what the grammar does not allow.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("image name {text:?}: {why}");
        if text.is_empty() || text.len() > MAX_LEN {
            return Err(bad("must be 1 to 512 characters"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest)),
            None => (text, None),
        };
        if let Some(digest) = digest {
            let hex = digest
                .strip_prefix("sha256:")
                .ok_or_else(|| bad("a digest must be sha256:<hex>"))?;
            if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(bad("a sha256 digest is 64 lowercase hex digits"));
            }
        }
        // A tag follows the last ':' that comes after the last '/': a ':'
        // before it is a registry port.
        let last_slash = rest.rfind('/').map_or(0, |at| at + 1);
        let (repository, tag) = match rest[last_slash..].rfind(':') {
            Some(at) => (&rest[..last_slash + at], Some(&rest[last_slash + at + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            let valid = !tag.is_empty()
                && tag.len() <= MAX_TAG
                && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !valid {
                return Err(bad("a tag is [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"));
            }
        }
        let mut components = repository.split('/').peekable();
        let first = components.peek().copied().unwrap_or_default();
        // The first component is a registry host when it looks like one.
        let has_registry = repository.contains('/')
            && (first.contains('.') || first.contains(':') || first == "localhost");
        if has_registry {
            let host = components.next().unwrap_or_default();
            if !is_registry_host(host) {
                return Err(bad("the registry must be host[:port]"));
            }
        }
        let mut any = false;
        for component in components {
            if !is_path_component(component) {
                return Err(bad(
                    "each path component is lowercase letters and digits, joined by '.', '_', '__' or dashes",
                ));
            }
            any = true;
        }
        if !any {
            return Err(bad("no repository"));
        }
        Ok(Self {
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            digest: digest.map(str::to_owned),
        })
    }

    /// The name with `:latest` added when it has neither tag nor digest.
    pub fn with_default_tag(mut self) -> Self {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some("latest".into());
        }
        self
    }

    /// The directory name it is kept under: `/` becomes `+`.
    pub fn dir_name(&self) -> String {
        self.to_string().replace('/', "+")
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// `[a-z0-9]+` joined by `.`, `_`, `__` or one or more `-`.
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut separator = String::new();
    for &b in bytes {
        if alnum(b) {
            let allowed = separator.is_empty()
                || separator == "."
                || separator == "_"
                || separator == "__"
                || separator.bytes().all(|s| s == b'-');
            if !allowed {
                return false;
            }
            separator.clear();
        } else if matches!(b, b'.' | b'_' | b'-') {
            separator.push(b as char);
        } else {
            return false;
        }
    }
    true
}

/// `host[:port]`: DNS labels of letters, digits and dashes joined by dots.
fn is_registry_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    let port_ok = port.is_none_or(|port| {
        !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
    });
    let label_ok = |label: &str| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    port_ok && !name.is_empty() && name.split('.').all(label_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_the_usual_forms_parse_and_print_back() {
        for name in [
            "base",
            "python:3.12",
            "library/python:3.12-slim",
            "ghcr.io/org/app:v1.2",
            "localhost:5000/team/app",
            "127.0.0.1:5000/app:latest",
            "my_app__x/a-b--c.d:TAG_1",
            &format!("app@sha256:{}", "a".repeat(64)),
            &format!("reg.io:443/app:1@sha256:{}", "0".repeat(64)),
        ] {
            let parsed = Reference::parse(name).unwrap_or_else(|err| panic!("{err}"));
            assert_eq!(parsed.to_string(), name);
        }
        let parsed = Reference::parse("localhost:5000/team/app:v1").expect("valid");
        assert_eq!(parsed.repository, "localhost:5000/team/app");
        assert_eq!(parsed.tag.as_deref(), Some("v1"));
        assert_eq!(parsed.dir_name(), "localhost:5000+team+app:v1");
    }

    #[test]
    fn a_bare_name_means_latest() {
        let parsed = Reference::parse("python")
            .expect("valid")
            .with_default_tag();
        assert_eq!(parsed.to_string(), "python:latest");
        let digest = format!("python@sha256:{}", "b".repeat(64));
        let parsed = Reference::parse(&digest).expect("valid").with_default_tag();
        assert_eq!(parsed.to_string(), digest, "a digest needs no tag");
    }

    #[test]
    fn names_that_could_escape_or_collide_are_refused() {
        for name in [
            "",
            ".",
            "..",
            ".store",
            "../etc",
            "a/../b",
            "a/./b",
            "/abs",
            "a//b",
            "a/",
            "UPPER",
            "a+b",
            "a b",
            "a\0b",
            "a:",
            "a:.tag",
            "a:-tag",
            "a@sha256:short",
            "a@md5:0123",
            "-a",
            "a-",
            "a..b",
            "a___b",
            "bad_host:x/app",
            "reg.io:99999999/app",
        ] {
            assert!(Reference::parse(name).is_err(), "{name:?} must be refused");
        }
        assert!(Reference::parse(&"a".repeat(513)).is_err());
    }
}
