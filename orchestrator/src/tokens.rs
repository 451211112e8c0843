//! Tokens: who is calling, and what they may do.
//!
//! Three kinds of bearer token resolve to a [`Principal`]:
//! - the admin token, `<data-dir>/admin.token` (mode 0600): identity
//!   `admin`, every scope. It lives outside the database and is compared
//!   in constant time; to rotate it, replace the file and restart;
//! - minted tokens (`POST /v1/tokens`): a name, a set of [`Scope`]s, an
//!   optional expiry, optionally bound to one sandbox;
//! - sandbox tokens, minted with every sandbox (`sandbox:<id>`, scopes
//!   `sandboxes:read` and `sandboxes:exec`, bound to it).
//!
//! A token bound to a sandbox may use its scopes on that sandbox only, and
//! no call that is not about one sandbox (create, list, tokens, audit). A
//! bound token is stored with a foreign key on its sandbox, so deleting the
//! sandbox revokes it whatever path the deletion takes.
//!
//! Minting follows one rule: a caller can grant (and revoke) only what it
//! holds. It needs `tokens:admin`, every scope it grants, and a token it
//! mints cannot outlive it. Creating a sandbox hands out that sandbox's
//! token, so `sandboxes:create` implies working inside the sandboxes one
//! creates, and only those.
//!
//! Secrets are `sbx_` and 32 random bytes in hex. Only their SHA-256 is
//! stored: with 256 bits of entropy there is nothing to brute-force, so a
//! fast hash is enough (a password hash would only slow every call), and
//! looking a hash up in an index tells a timing observer nothing about the
//! secret.

use crate::store::{Store, StoreError, TokenRecord};
use chrono::{DateTime, Utc};
use sbx_api::{CreateTokenRequest, CreatedToken, Scope, TokenInfo, TOKEN_PREFIX};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fmt::Write;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No token, or one that is unknown, revoked or expired.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid token that may not do this.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("token {0} not found")]
    NotFound(String),
    #[error("sandbox {0} not found")]
    SandboxNotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The identity of the admin token in the audit trail.
pub const ADMIN: &str = "admin";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The identity recorded in the audit trail.
    pub name: String,
    /// None for the admin token, which is not stored.
    pub token_id: Option<String>,
    pub scopes: BTreeSet<Scope>,
    /// The sandbox a bound token is limited to.
    pub sandbox: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl Principal {
    pub fn admin() -> Self {
        Self {
            name: ADMIN.to_owned(),
            token_id: None,
            scopes: Scope::ALL.into_iter().collect(),
            sandbox: None,
            expires_at: None,
        }
    }

    fn from_record(info: TokenInfo) -> Self {
        Self {
            name: info.name,
            token_id: Some(info.id),
            scopes: info.scopes.into_iter().collect(),
            sandbox: info.sandbox,
            expires_at: info.expires_at,
        }
    }

    /// Whether this caller may use `scope` on `sandbox` (None: a call that
    /// is not about one sandbox).
    pub fn check(&self, scope: Scope, sandbox: Option<&str>) -> Result<(), TokenError> {
        if !self.scopes.contains(&scope) {
            return Err(TokenError::Forbidden(format!(
                "token {} does not hold the {scope} scope",
                self.name
            )));
        }
        match (&self.sandbox, sandbox) {
            (None, _) => Ok(()),
            (Some(bound), Some(target)) if bound == target => Ok(()),
            (Some(bound), _) => Err(TokenError::Forbidden(format!(
                "token {} is limited to sandbox {bound}",
                self.name
            ))),
        }
    }

    /// Whether this caller holds every scope there is (the admin does).
    pub fn check_all(&self) -> Result<(), TokenError> {
        match Scope::ALL
            .into_iter()
            .find(|scope| !self.scopes.contains(scope))
        {
            None if self.sandbox.is_none() => Ok(()),
            _ => Err(TokenError::Forbidden(format!(
                "only a token holding every scope may call this route, not {}",
                self.name
            ))),
        }
    }

    /// A caller can grant or revoke only scopes it holds.
    fn check_grant(&self, scopes: &[Scope]) -> Result<(), TokenError> {
        self.check(Scope::TokensAdmin, None)?;
        match scopes.iter().find(|scope| !self.scopes.contains(scope)) {
            Some(scope) => Err(TokenError::Forbidden(format!(
                "token {} cannot grant {scope}, which it does not hold",
                self.name
            ))),
            None => Ok(()),
        }
    }
}

/// SHA-256 of a secret: what the store keeps instead of it.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    let mut secret = String::with_capacity(TOKEN_PREFIX.len() + 64);
    secret.push_str(TOKEN_PREFIX);
    for byte in bytes {
        write!(secret, "{byte:02x}").expect("writing to a String cannot fail");
    }
    secret
}

fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Token ids are 16 lowercase hex digits, like sandbox ids.
fn is_valid_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Compares in time independent of where the first difference is, so the
/// admin token cannot be guessed byte by byte from response times.
fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .zip(right)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Authenticates bearer tokens and mints, lists and revokes stored ones.
#[derive(Debug)]
pub struct Tokens {
    store: Arc<Store>,
    admin_secret: String,
}

impl Tokens {
    pub fn new(store: Arc<Store>, admin_secret: String) -> Self {
        Self {
            store,
            admin_secret,
        }
    }

    /// The caller a presented bearer token stands for.
    pub fn authenticate(&self, presented: &str) -> Result<Principal, TokenError> {
        self.authenticate_at(presented, Utc::now())
    }

    fn authenticate_at(
        &self,
        presented: &str,
        now: DateTime<Utc>,
    ) -> Result<Principal, TokenError> {
        if constant_time_eq(presented.as_bytes(), self.admin_secret.as_bytes()) {
            return Ok(Principal::admin());
        }
        let invalid = || TokenError::Unauthorized("invalid or revoked bearer token".into());
        if !presented.starts_with(TOKEN_PREFIX) {
            return Err(invalid());
        }
        let record = self
            .store
            .token_by_hash(&hash_secret(presented))?
            .ok_or_else(invalid)?;
        if let Some(expires_at) = record.info.expires_at {
            if expires_at <= now {
                return Err(TokenError::Unauthorized(format!(
                    "token {} expired at {}",
                    record.info.name,
                    expires_at.to_rfc3339()
                )));
            }
        }
        Ok(Principal::from_record(record.info))
    }

    /// Mints a token for `by`, which must hold `tokens:admin` and every
    /// scope it grants, and outlive what it mints.
    pub fn mint(
        &self,
        by: &Principal,
        request: CreateTokenRequest,
    ) -> Result<CreatedToken, TokenError> {
        self.mint_at(by, request, Utc::now())
    }

    fn mint_at(
        &self,
        by: &Principal,
        request: CreateTokenRequest,
        now: DateTime<Utc>,
    ) -> Result<CreatedToken, TokenError> {
        request.validate().map_err(TokenError::InvalidRequest)?;
        by.check_grant(&request.scopes)?;
        let expires_at = request.ttl_s.map(|ttl| {
            now + chrono::Duration::seconds(i64::try_from(ttl).expect("ttl_s is validated"))
        });
        if let Some(limit) = by.expires_at {
            if expires_at.is_none_or(|expires_at| expires_at > limit) {
                return Err(TokenError::Forbidden(format!(
                    "token {} expires at {} and cannot mint a token that outlives it",
                    by.name,
                    limit.to_rfc3339()
                )));
            }
        }
        let scopes: BTreeSet<Scope> = request.scopes.into_iter().collect();
        let info = TokenInfo {
            id: new_id(),
            name: request.name,
            scopes: scopes.into_iter().collect(),
            sandbox: request.sandbox,
            created_at: now,
            expires_at,
            created_by: by.name.clone(),
        };
        self.insert(info)
    }

    /// Mints the token of a sandbox that `by` has just created: it can
    /// read the sandbox and work inside it, and dies with it.
    pub fn mint_for_sandbox(&self, by: &Principal, sandbox: &str) -> Result<String, TokenError> {
        let info = TokenInfo {
            id: new_id(),
            name: format!("sandbox:{sandbox}"),
            scopes: vec![Scope::SandboxesRead, Scope::SandboxesExec],
            sandbox: Some(sandbox.to_owned()),
            created_at: Utc::now(),
            expires_at: None,
            created_by: by.name.clone(),
        };
        Ok(self.insert(info)?.secret)
    }

    fn insert(&self, info: TokenInfo) -> Result<CreatedToken, TokenError> {
        let secret = new_secret();
        let record = TokenRecord {
            info,
            secret_hash: hash_secret(&secret),
        };
        if !self.store.insert_token(&record)? {
            let sandbox = record.info.sandbox.unwrap_or_default();
            return Err(TokenError::SandboxNotFound(sandbox));
        }
        Ok(CreatedToken {
            token: record.info,
            secret,
        })
    }

    /// Every stored token, expired ones included; never a secret or hash.
    pub fn list(&self) -> Result<Vec<TokenInfo>, TokenError> {
        Ok(self
            .store
            .list_tokens()?
            .into_iter()
            .map(|record| record.info)
            .collect())
    }

    /// Revokes a token; `by` must hold every scope the token holds.
    pub fn revoke(&self, by: &Principal, id: &str) -> Result<(), TokenError> {
        let not_found = || TokenError::NotFound(id.to_owned());
        if !is_valid_id(id) {
            return Err(not_found());
        }
        let record = self.store.get_token(id)?.ok_or_else(not_found)?;
        by.check_grant(&record.info.scopes)?;
        if !self.store.remove_token(id)? {
            return Err(not_found());
        }
        tracing::info!(id, name = %record.info.name, by = %by.name, "token revoked");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SandboxRecord;
    use sbx_api::{Sandbox, SandboxState};

    const ADMIN_SECRET: &str = "0123456789abcdef";

    fn tokens() -> Tokens {
        Tokens::new(
            Arc::new(Store::in_memory().expect("store")),
            ADMIN_SECRET.into(),
        )
    }

    fn request(name: &str, scopes: &[Scope]) -> CreateTokenRequest {
        CreateTokenRequest {
            name: name.into(),
            scopes: scopes.to_vec(),
            ttl_s: None,
            sandbox: None,
        }
    }

    fn forbidden<T: std::fmt::Debug>(result: Result<T, TokenError>) -> bool {
        matches!(result, Err(TokenError::Forbidden(_)))
    }

    fn add_sandbox(tokens: &Tokens, id: &str) {
        tokens
            .store
            .insert(&SandboxRecord {
                sandbox: Sandbox {
                    disk_mb: None,
                    network: Default::default(),
                    id: id.into(),
                    state: SandboxState::Running,
                    image: "base".into(),
                    created_at: Utc::now(),
                    memory_mb: 512,
                    cpus: 1.0,
                    labels: Default::default(),
                    lifecycle: Default::default(),
                    expires_at: None,
                    idle_since: None,
                    ended_reason: None,
                },
                env: Default::default(),
                pooled: false,
                image_build: None,
                ended_at: None,
            })
            .expect("insert sandbox");
    }

    #[test]
    fn secrets_are_prefixed_random_and_hashed() {
        let (first, second) = (new_secret(), new_secret());
        assert!(first.starts_with("sbx_"), "{first}");
        assert_eq!(first.len(), 4 + 64);
        assert_ne!(first, second);
        assert_eq!(hash_secret(&first), hash_secret(&first));
        assert_ne!(hash_secret(&first), hash_secret(&second));
        // The well-known SHA-256 test vector: the hash is the standard one.
        let abc = hash_secret("abc");
        assert_eq!(abc[..4], [0xba, 0x78, 0x16, 0xbf]);
    }

    #[test]
    fn constant_time_comparison_needs_an_exact_match() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }

    #[test]
    fn admin_holds_every_scope_everywhere() {
        let tokens = tokens();
        let admin = tokens.authenticate(ADMIN_SECRET).expect("admin");
        assert_eq!(admin.name, "admin");
        for scope in Scope::ALL {
            assert!(admin.check(scope, None).is_ok());
            assert!(admin.check(scope, Some("abc")).is_ok());
        }
        assert!(admin.check_all().is_ok());
        for bad in ["", "0123456789abcdeF", "sbx_nope", "0123456789abcdef0"] {
            assert!(
                matches!(tokens.authenticate(bad), Err(TokenError::Unauthorized(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_minted_token_holds_exactly_its_scopes() {
        let tokens = tokens();
        let reader = tokens
            .mint(
                &Principal::admin(),
                request("reader", &[Scope::SandboxesRead]),
            )
            .expect("mint");
        let principal = tokens.authenticate(&reader.secret).expect("valid");
        assert_eq!(principal.name, "reader");
        assert_eq!(
            principal.token_id.as_deref(),
            Some(reader.token.id.as_str())
        );
        assert!(principal.check(Scope::SandboxesRead, None).is_ok());
        assert!(principal.check(Scope::SandboxesRead, Some("abc")).is_ok());
        assert!(forbidden(principal.check(Scope::SandboxesCreate, None)));
        assert!(forbidden(principal.check_all()));
        let listed = tokens.list().expect("list");
        assert_eq!(listed, vec![reader.token]);
    }

    #[test]
    fn nobody_grants_more_than_it_holds() {
        let tokens = tokens();
        let admin = Principal::admin();
        let minter = tokens
            .mint(
                &admin,
                request("minter", &[Scope::TokensAdmin, Scope::SandboxesRead]),
            )
            .expect("mint");
        let minter = tokens.authenticate(&minter.secret).expect("valid");
        assert!(tokens
            .mint(&minter, request("ok", &[Scope::SandboxesRead]))
            .is_ok());
        assert!(forbidden(
            tokens.mint(&minter, request("wider", &[Scope::SandboxesCreate]))
        ));
        let reader = tokens
            .mint(&admin, request("reader", &[Scope::SandboxesRead]))
            .expect("mint");
        let reader = tokens.authenticate(&reader.secret).expect("valid");
        assert!(
            forbidden(tokens.mint(&reader, request("x", &[Scope::SandboxesRead]))),
            "minting needs tokens:admin"
        );
        // Revoking follows the same rule.
        let creator = tokens
            .mint(&admin, request("creator", &[Scope::SandboxesCreate]))
            .expect("mint");
        assert!(forbidden(tokens.revoke(&minter, &creator.token.id)));
        assert!(forbidden(tokens.revoke(&reader, &creator.token.id)));
        tokens
            .revoke(&admin, &creator.token.id)
            .expect("admin revokes");
        assert!(matches!(
            tokens.revoke(&admin, &creator.token.id),
            Err(TokenError::NotFound(_))
        ));
        assert!(matches!(
            tokens.authenticate(&creator.secret),
            Err(TokenError::Unauthorized(_))
        ));
    }

    #[test]
    fn tokens_expire_and_cannot_outlive_their_minter() {
        let tokens = tokens();
        let now = Utc::now();
        let short = tokens
            .mint_at(
                &Principal::admin(),
                CreateTokenRequest {
                    ttl_s: Some(60),
                    ..request("short", &[Scope::TokensAdmin, Scope::SandboxesRead])
                },
                now,
            )
            .expect("mint");
        let minter = tokens
            .authenticate_at(&short.secret, now + chrono::Duration::seconds(59))
            .expect("valid before expiry");
        assert!(matches!(
            tokens.authenticate_at(&short.secret, now + chrono::Duration::seconds(60)),
            Err(TokenError::Unauthorized(_))
        ));
        let forever = request("forever", &[Scope::SandboxesRead]);
        assert!(forbidden(tokens.mint_at(&minter, forever.clone(), now)));
        let longer = CreateTokenRequest {
            ttl_s: Some(61),
            ..forever.clone()
        };
        assert!(forbidden(tokens.mint_at(&minter, longer, now)));
        let within = CreateTokenRequest {
            ttl_s: Some(30),
            ..forever
        };
        assert!(tokens.mint_at(&minter, within, now).is_ok());
    }

    #[test]
    fn a_sandbox_token_works_on_its_sandbox_only_and_dies_with_it() {
        let tokens = tokens();
        add_sandbox(&tokens, "aaaa");
        let secret = tokens
            .mint_for_sandbox(&Principal::admin(), "aaaa")
            .expect("mint");
        let principal = tokens.authenticate(&secret).expect("valid");
        assert_eq!(principal.name, "sandbox:aaaa");
        assert!(principal.check(Scope::SandboxesExec, Some("aaaa")).is_ok());
        assert!(principal.check(Scope::SandboxesRead, Some("aaaa")).is_ok());
        assert!(forbidden(
            principal.check(Scope::SandboxesExec, Some("bbbb"))
        ));
        assert!(forbidden(principal.check(Scope::SandboxesRead, None)));
        assert!(forbidden(
            principal.check(Scope::SandboxesDelete, Some("aaaa"))
        ));
        assert!(forbidden(principal.check(Scope::SandboxesCreate, None)));
        assert!(forbidden(principal.check_all()));

        assert!(matches!(
            tokens.mint_for_sandbox(&Principal::admin(), "nope"),
            Err(TokenError::SandboxNotFound(_))
        ));
        tokens.store.remove("aaaa").expect("remove sandbox");
        assert!(matches!(
            tokens.authenticate(&secret),
            Err(TokenError::Unauthorized(_))
        ));
        assert!(tokens.list().expect("list").is_empty());
    }
}
