//! Which tools a token sees: those whose every REST route the REST policy
//! table ([`crate::http::requirement`]) would let it call. The tool list is
//! derived from the policy, never written beside it, so the two cannot
//! drift: a route whose requirement changes changes the tools with it.
//!
//! A token bound to a sandbox is checked against its own sandbox, so it
//! sees the tools that work inside it and none that list, create or act on
//! sandboxes at large.

use super::tools::{ToolDef, TOOLS};
use crate::http::{check, requirement};
use crate::tokens::Principal;

/// Whether `principal` may call every route `tool` calls.
pub fn allows(principal: &Principal, tool: &ToolDef) -> bool {
    let sandbox = principal.sandbox.as_deref();
    tool.routes
        .iter()
        .all(|(method, route)| check(principal, requirement(method, route), sandbox).is_ok())
}

/// The tools `principal` is shown, in the order of [`TOOLS`].
pub fn visible(principal: &Principal) -> impl Iterator<Item = &'static ToolDef> + '_ {
    TOOLS.iter().filter(move |tool| allows(principal, tool))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sbx_api::Scope;

    fn names(principal: &Principal) -> Vec<&'static str> {
        visible(principal).map(|tool| tool.name).collect()
    }

    fn token(scopes: &[Scope], sandbox: Option<&str>) -> Principal {
        Principal {
            name: "t".into(),
            token_id: Some("0123456789abcdef".into()),
            scopes: scopes.iter().copied().collect(),
            sandbox: sandbox.map(str::to_owned),
            expires_at: None,
        }
    }

    const INSIDE: [&str; 8] = [
        "exec",
        "read_file",
        "write_file",
        "list_files",
        "edit_file",
        "start_process",
        "process_logs",
        "kill_process",
    ];
    /// The tools of a sandbox's shells, ports and previews, also all inside
    /// one sandbox; they come last in [`TOOLS`].
    const LIVE: [&str; 3] = ["session_exec", "fetch_port", "preview_port"];

    #[test]
    fn the_admin_sees_every_tool() {
        let all: Vec<&str> = TOOLS.iter().map(|tool| tool.name).collect();
        assert_eq!(names(&Principal::admin()), all);
        assert_eq!(all.len(), 29);
    }

    #[test]
    fn a_sandbox_token_sees_only_the_tools_inside_its_sandbox() {
        let sandbox = token(&[Scope::SandboxesRead, Scope::SandboxesExec], Some("aaaa"));
        let inside: Vec<&str> = INSIDE.iter().chain(&LIVE).copied().collect();
        assert_eq!(names(&sandbox), inside);
        let with_delete = token(
            &[
                Scope::SandboxesRead,
                Scope::SandboxesExec,
                Scope::SandboxesDelete,
            ],
            Some("aaaa"),
        );
        let mut expected = vec!["delete_sandbox"];
        expected.extend(&inside);
        assert_eq!(names(&with_delete), expected);
    }

    #[test]
    fn unbound_tokens_see_what_their_scopes_allow() {
        assert_eq!(
            names(&token(&[Scope::SandboxesRead], None)),
            ["list_sandboxes", "list_snapshots"]
        );
        let worker = token(
            &[
                Scope::SandboxesCreate,
                Scope::SandboxesRead,
                Scope::SandboxesExec,
            ],
            None,
        );
        let mut expected = vec!["create_sandbox", "list_sandboxes"];
        expected.extend(INSIDE);
        // Fork makes new sandboxes: create's scope, not lifecycle's.
        expected.extend(["list_snapshots", "fork_sandbox"]);
        expected.extend(LIVE);
        assert_eq!(names(&worker), expected);
        // PATCH has no line in the policy table: admin only, like the REST route.
        let everything_but_audit = token(
            &[
                Scope::SandboxesCreate,
                Scope::SandboxesRead,
                Scope::SandboxesDelete,
                Scope::SandboxesExec,
                Scope::TokensAdmin,
            ],
            None,
        );
        assert!(!names(&everything_but_audit).contains(&"set_egress"));
        assert!(!names(&everything_but_audit).contains(&"list_images"));
        assert!(names(&token(&[Scope::AuditRead], None)).is_empty());
    }

    #[test]
    fn image_tools_go_to_tokens_with_the_image_scopes() {
        assert_eq!(
            names(&token(&[Scope::ImagesRead], None)),
            ["list_images", "get_image"]
        );
        assert_eq!(
            names(&token(&[Scope::ImagesWrite], None)),
            ["build_image", "delete_image"]
        );
        assert_eq!(
            names(&token(&[Scope::ImagesRead, Scope::ImagesWrite], None)),
            ["list_images", "get_image", "build_image", "delete_image"]
        );
        // Images are the server's, not a sandbox's: a bound token sees none.
        let bound = token(
            &[Scope::ImagesRead, Scope::ImagesWrite, Scope::SandboxesExec],
            Some("aaaa"),
        );
        assert!(!names(&bound).iter().any(|name| name.contains("image")));
    }
}
