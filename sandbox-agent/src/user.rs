//! Running a command as another user: the `user` field of exec and
//! background processes.
//!
//! The agent is statically linked, so there is no NSS and no `getpwnam`;
//! and it must answer from the *sandbox's* user database anyway, not the
//! host's. So it reads `/etc/passwd` and `/etc/group` itself, at every
//! request (they are small, and a command may have just added a user).
//!
//! A name must exist in `/etc/passwd`. A numeric `uid[:gid]` need not (as
//! with `docker run -u`); when it does, the entry supplies the home
//! directory, the default gid and the supplementary groups.
//!
//! The identity is applied in the child between `fork` and `exec`, in the
//! one order that works: `setgroups`, `setgid`, then `setuid` (the first two
//! need the privilege the last gives up). std's `CommandExt::uid/gid` would
//! run before our `pre_exec` hook and wipe the supplementary groups (its
//! `groups` is unstable), so [`Identity::apply_in_child`] does all three,
//! from a group list computed before the fork.
//!
//! [`Owner`] resolves the `owner` of an archive upload (a Dockerfile's
//! `COPY --chown`) from the same files, with Docker's rules: a user name
//! alone brings its primary group from `/etc/passwd`, a numeric uid alone
//! means gid = uid.

use crate::error::AgentError;
use sbx_api::FileInfo;
use std::collections::HashMap;
use std::io;
use std::path::Path;

const PASSWD: &str = "/etc/passwd";
const GROUP: &str = "/etc/group";

/// Whom to run a command as, resolved from a request's `user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// Supplementary groups, the primary gid included (as `initgroups`
    /// does).
    pub groups: Vec<libc::gid_t>,
    /// The user's name, when `/etc/passwd` knows the uid.
    pub name: Option<String>,
    /// From `/etc/passwd`, else `/`.
    pub home: String,
}

impl Identity {
    /// Resolves `user` (a name or `uid[:gid]`, already syntax-checked by
    /// `ExecRequest::validate`) against the sandbox's user database.
    pub fn resolve(user: &str) -> Result<Self, AgentError> {
        resolve_in(user, &read_db(PASSWD), &read_db(GROUP))
    }

    /// The variables this identity sets: `HOME` always, `USER` and
    /// `LOGNAME` for a named non-root user.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![("HOME".to_owned(), self.home.clone())];
        if let (Some(name), true) = (&self.name, self.uid != 0) {
            env.push(("USER".to_owned(), name.clone()));
            env.push(("LOGNAME".to_owned(), name.clone()));
        }
        env
    }

    /// Switches the calling process to this identity. Meant for the forked
    /// child before `exec`: it only makes raw syscalls on data computed
    /// before the fork, so it is async-signal-safe (no allocation, no
    /// locks).
    pub fn apply_in_child(&self) -> io::Result<()> {
        // SAFETY: setgroups reads `len` gids from a pointer to a live Vec
        // of exactly that length; setgid/setuid take plain integers.
        let failed = unsafe {
            libc::setgroups(self.groups.len(), self.groups.as_ptr()) == -1
                || libc::setgid(self.gid) == -1
                || libc::setuid(self.uid) == -1
        };
        if failed {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A missing or unreadable database is an empty one: numeric ids still
/// work, names are then unknown.
/// The sandbox's account names by id, read once per listing, so that a
/// file's owner and group are reported by name as `ls -l` shows them. The
/// first entry of an id wins, as for `getpwuid`.
#[derive(Debug, Default)]
pub struct AccountNames {
    users: HashMap<libc::uid_t, String>,
    groups: HashMap<libc::gid_t, String>,
}

impl AccountNames {
    pub fn load() -> Self {
        Self::from_dbs(&read_db(PASSWD), &read_db(GROUP))
    }

    fn from_dbs(passwd: &str, group: &str) -> Self {
        let mut names = AccountNames::default();
        for entry in passwd_entries(passwd) {
            names
                .users
                .entry(entry.uid)
                .or_insert_with(|| entry.name.to_owned());
        }
        for line in group.lines().filter(|line| !line.starts_with('#')) {
            let fields: Vec<&str> = line.split(':').collect();
            if let (Some(name), Some(Ok(gid))) =
                (fields.first(), fields.get(2).map(|gid| gid.parse()))
            {
                if !name.is_empty() {
                    names
                        .groups
                        .entry(gid)
                        .or_insert_with(|| (*name).to_owned());
                }
            }
        }
        names
    }

    /// `info` with its owner's and group's names, where they have one.
    pub fn name(&self, mut info: FileInfo) -> FileInfo {
        info.owner = self.users.get(&info.uid).cloned();
        info.group = self.groups.get(&info.gid).cloned();
        info
    }
}

fn read_db(path: &str) -> String {
    std::fs::read_to_string(Path::new(path)).unwrap_or_else(|err| {
        tracing::debug!(path, %err, "cannot read user database");
        String::new()
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry<'a> {
    name: &'a str,
    uid: libc::uid_t,
    gid: libc::gid_t,
    home: &'a str,
}

/// `name:password:uid:gid:gecos:home:shell`; comments, blank lines and
/// malformed lines (e.g. NIS `+` entries) are skipped.
fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 6 || fields[0].is_empty() || line.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: fields[0],
            uid: fields[2].parse().ok()?,
            gid: fields[3].parse().ok()?,
            home: fields[5],
        })
    })
}

/// Gids of the groups in `group` (`name:password:gid:member,member`) that
/// list `user` as a member.
fn member_groups(group: &str, user: &str) -> Vec<libc::gid_t> {
    group
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 4 || line.starts_with('#') {
                return None;
            }
            let gid = fields[2].parse().ok()?;
            fields[3]
                .split(',')
                .any(|member| member.trim() == user)
                .then_some(gid)
        })
        .collect()
}

fn resolve_in(user: &str, passwd: &str, group: &str) -> Result<Identity, AgentError> {
    let (entry, uid, explicit_gid) = match parse_numeric(user) {
        Some((uid, gid)) => (passwd_entries(passwd).find(|e| e.uid == uid), uid, gid),
        None => {
            let entry = passwd_entries(passwd)
                .find(|e| e.name == user)
                .ok_or_else(|| AgentError::UnknownUser {
                    user: user.to_owned(),
                })?;
            (Some(entry.clone()), entry.uid, None)
        }
    };
    let gid = explicit_gid.unwrap_or_else(|| entry.as_ref().map_or(uid, |e| e.gid));
    let mut groups = vec![gid];
    if let Some(entry) = &entry {
        for extra in member_groups(group, entry.name) {
            if !groups.contains(&extra) {
                groups.push(extra);
            }
        }
    }
    let home = entry
        .as_ref()
        .map(|e| e.home)
        .filter(|home| !home.is_empty())
        .unwrap_or("/");
    Ok(Identity {
        uid,
        gid,
        groups,
        name: entry.as_ref().map(|e| e.name.to_owned()),
        home: home.to_owned(),
    })
}

/// Who owns the entries an archive upload creates: `user[:group]`
/// resolved to ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

impl Owner {
    /// Resolves `owner` (`user[:group]`, names or numeric ids) against the
    /// sandbox's user and group databases.
    pub fn resolve(owner: &str) -> Result<Self, AgentError> {
        owner_in(owner, &read_db(PASSWD), &read_db(GROUP))
    }
}

fn owner_in(owner: &str, passwd: &str, group: &str) -> Result<Owner, AgentError> {
    let unknown = |reason: String| AgentError::UnknownOwner {
        owner: owner.to_owned(),
        reason,
    };
    let (user, group_name) = match owner.split_once(':') {
        Some((user, group_name)) => (user, Some(group_name)),
        None => (owner, None),
    };
    if user.is_empty() || group_name.is_some_and(str::is_empty) {
        return Err(unknown("expected user[:group]".to_owned()));
    }
    let (uid, primary_gid) = match user.parse::<libc::uid_t>() {
        Ok(uid) => (uid, uid),
        Err(_) => {
            let entry = passwd_entries(passwd)
                .find(|e| e.name == user)
                .ok_or_else(|| unknown(format!("user {user:?} is not in /etc/passwd")))?;
            (entry.uid, entry.gid)
        }
    };
    let gid = match group_name {
        None => primary_gid,
        Some(name) => match name.parse::<libc::gid_t>() {
            Ok(gid) => gid,
            Err(_) => group_gid(group, name)
                .ok_or_else(|| unknown(format!("group {name:?} is not in /etc/group")))?,
        },
    };
    Ok(Owner { uid, gid })
}

/// The gid of the group `name` in `group` (`name:password:gid:members`).
fn group_gid(group: &str, name: &str) -> Option<libc::gid_t> {
    group.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 3 || line.starts_with('#') || fields[0] != name {
            return None;
        }
        fields[2].parse().ok()
    })
}

/// `uid` or `uid:gid`; `None` for a name.
fn parse_numeric(user: &str) -> Option<(libc::uid_t, Option<libc::gid_t>)> {
    let (uid, gid) = match user.split_once(':') {
        Some((uid, gid)) => (uid, Some(gid)),
        None => (user, None),
    };
    let uid = uid.parse().ok()?;
    match gid {
        Some(gid) => Some((uid, Some(gid.parse().ok()?))),
        None => Some((uid, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD_DB: &str = "\
root:x:0:0:root:/root:/bin/bash
# a comment
+nis::::::
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
dev:x:1000:1000:Dev,,,:/home/dev:/bin/bash
homeless:x:1001:1001:::/bin/sh
";
    const GROUP_DB: &str = "\
root:x:0:
sudo:x:27:dev
docker:x:999:other, dev
dev:x:1000:
nogroup:x:65534:
";

    fn resolve(user: &str) -> Result<Identity, AgentError> {
        resolve_in(user, PASSWD_DB, GROUP_DB)
    }

    #[test]
    fn names_get_their_ids_home_and_groups() {
        let dev = resolve("dev").expect("dev exists");
        assert_eq!((dev.uid, dev.gid), (1000, 1000));
        assert_eq!(dev.groups, vec![1000, 27, 999]);
        assert_eq!(dev.home, "/home/dev");
        assert_eq!(
            dev.env(),
            vec![
                ("HOME".to_owned(), "/home/dev".to_owned()),
                ("USER".to_owned(), "dev".to_owned()),
                ("LOGNAME".to_owned(), "dev".to_owned()),
            ]
        );
        let root = resolve("root").expect("root exists");
        assert_eq!((root.uid, root.gid, root.groups.clone()), (0, 0, vec![0]));
        assert_eq!(root.env(), vec![("HOME".to_owned(), "/root".to_owned())]);
    }

    #[test]
    fn files_are_named_by_their_owner_and_group() {
        let names = AccountNames::from_dbs(PASSWD_DB, GROUP_DB);
        let info = |uid, gid| FileInfo {
            path: "/f".into(),
            name: "f".into(),
            file_type: sbx_api::FileType::File,
            size: 0,
            mode: 0o644,
            mtime: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
            uid,
            gid,
            link_target: None,
            owner: None,
            group: None,
        };
        let dev = names.name(info(1000, 27));
        assert_eq!(
            (dev.owner.as_deref(), dev.group.as_deref()),
            (Some("dev"), Some("sudo"))
        );
        let unnamed = names.name(info(4242, 4242));
        assert_eq!((unnamed.owner, unnamed.group), (None, None));
    }

    #[test]
    fn unknown_names_are_rejected_by_name() {
        let err = resolve("ghost").expect_err("no such user");
        assert!(err.to_string().contains("\"ghost\""), "{err}");
        assert!(matches!(err, AgentError::UnknownUser { .. }));
    }

    #[test]
    fn numeric_ids_need_no_entry() {
        let known = resolve("1000").expect("numeric");
        assert_eq!((known.gid, known.name.as_deref()), (1000, Some("dev")));
        assert_eq!(known.groups, vec![1000, 27, 999]);
        let regrouped = resolve("1000:27").expect("numeric with gid");
        assert_eq!((regrouped.uid, regrouped.gid), (1000, 27));
        assert_eq!(regrouped.groups, vec![27, 999]);
        let stranger = resolve("4242").expect("unknown uid is fine");
        assert_eq!((stranger.uid, stranger.gid), (4242, 4242));
        assert_eq!(stranger.groups, vec![4242]);
        assert_eq!(stranger.home, "/");
        assert_eq!(stranger.env(), vec![("HOME".to_owned(), "/".to_owned())]);
        let stranger_gid = resolve("4242:7").expect("explicit gid");
        assert_eq!(stranger_gid.gid, 7);
    }

    #[test]
    fn empty_home_falls_back_to_root_dir() {
        assert_eq!(resolve("homeless").expect("exists").home, "/");
    }

    fn owner(owner: &str) -> Result<(libc::uid_t, libc::gid_t), AgentError> {
        owner_in(owner, PASSWD_DB, GROUP_DB).map(|o| (o.uid, o.gid))
    }

    #[test]
    fn owners_follow_docker_chown_rules() {
        // A name alone: its primary group; a number alone: gid = uid, even
        // when passwd knows the uid with another group.
        assert_eq!(owner("dev").expect("name"), (1000, 1000));
        assert_eq!(owner("nobody").expect("name"), (65534, 65534));
        assert_eq!(owner("4242").expect("numeric"), (4242, 4242));
        assert_eq!(
            owner_in("7", "x:x:7:9:::\n", "")
                .map(|o| (o.uid, o.gid))
                .expect("numeric"),
            (7, 7)
        );
        // user:group, each a name or a number.
        assert_eq!(owner("dev:docker").expect("names"), (1000, 999));
        assert_eq!(owner("dev:27").expect("name:gid"), (1000, 27));
        assert_eq!(owner("1000:sudo").expect("uid:name"), (1000, 27));
        assert_eq!(owner("5:6").expect("numbers"), (5, 6));
        assert_eq!(owner_in("0:0", "", "").map(|o| o.gid).expect("no db"), 0);
    }

    #[test]
    fn unresolvable_owners_are_named_in_the_error() {
        for (bad, named) in [
            ("ghost", "\"ghost\""),
            ("dev:ghosts", "\"ghosts\""),
            ("ghost:dev", "\"ghost\""),
            ("", "expected user[:group]"),
            ("dev:", "expected user[:group]"),
            (":dev", "expected user[:group]"),
        ] {
            let err = owner(bad).expect_err(bad);
            assert!(matches!(err, AgentError::UnknownOwner { .. }), "{err:?}");
            assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
            let text = err.to_string();
            assert!(text.contains(&format!("{bad:?}")), "{text}");
            assert!(text.contains(named), "{text}");
        }
    }

    #[test]
    fn missing_databases_still_allow_numeric_ids() {
        assert!(resolve_in("root", "", "").is_err());
        assert_eq!(resolve_in("0", "", "").expect("numeric").uid, 0);
    }
}
