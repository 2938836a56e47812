//! Dropping root: after the listeners (perhaps on ports below 1024) and the admin
//! socket are bound, switch to the configured `user` and `group` for good.

use nix::unistd::{self, Gid, Group, Uid, User};

use crate::error::Error;

/// Find a user by name or numeric id.
pub fn lookup_user(name: &str) -> Result<User, String> {
    let found = match name.parse::<u32>() {
        Ok(id) => User::from_uid(Uid::from_raw(id)),
        Err(_) => User::from_name(name),
    };
    match found {
        Ok(Some(u)) => Ok(u),
        Ok(None) => Err(format!("no user {name:?} on this host")),
        Err(e) => Err(format!("cannot look up user {name:?}: {e}")),
    }
}

/// Find a group by name or numeric id.
pub fn lookup_group(name: &str) -> Result<Group, String> {
    let found = match name.parse::<u32>() {
        Ok(id) => Group::from_gid(Gid::from_raw(id)),
        Err(_) => Group::from_name(name),
    };
    match found {
        Ok(Some(g)) => Ok(g),
        Ok(None) => Err(format!("no group {name:?} on this host")),
        Err(e) => Err(format!("cannot look up group {name:?}: {e}")),
    }
}

/// Who the process runs as after [`drop_to`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub uid: u32,
    pub group: String,
    pub gid: u32,
}

fn fail(what: String) -> Error {
    Error::Privilege { what }
}

/// Switch every thread of the process to `user` and `group` (default: the user's
/// primary group), with no supplementary groups, and check that root cannot be
/// regained. Not root: succeeds only if the process already runs as exactly them.
pub fn drop_to(user: &str, group: Option<&str>) -> Result<Identity, Error> {
    let u = lookup_user(user).map_err(fail)?;
    let g = match group {
        Some(name) => lookup_group(name).map_err(fail)?,
        None => match Group::from_gid(u.gid) {
            Ok(Some(g)) => g,
            _ => Group {
                name: u.gid.to_string(),
                passwd: Default::default(),
                gid: u.gid,
                mem: Vec::new(),
            },
        },
    };
    let id = Identity {
        user: u.name.clone(),
        uid: u.uid.as_raw(),
        group: g.name.clone(),
        gid: g.gid.as_raw(),
    };
    if !unistd::geteuid().is_root() {
        if unistd::geteuid() == u.uid
            && unistd::getuid() == u.uid
            && unistd::getegid() == g.gid
            && unistd::getgid() == g.gid
        {
            return Ok(id);
        }
        return Err(fail(format!(
            "cannot switch to user {} (uid {}) and group {} (gid {}): not running as root (uid {}, gid {})",
            id.user,
            id.uid,
            id.group,
            id.gid,
            unistd::geteuid(),
            unistd::getegid()
        )));
    }
    // Order matters: groups while still root, the user id last.
    unistd::setgroups(&[g.gid])
        .map_err(|e| fail(format!("setgroups([{}]) failed: {e}", id.gid)))?;
    unistd::setgid(g.gid).map_err(|e| fail(format!("setgid({}) failed: {e}", id.gid)))?;
    unistd::setuid(u.uid).map_err(|e| fail(format!("setuid({}) failed: {e}", id.uid)))?;
    // Trust, but verify (a partial switch must never go on serving).
    if unistd::getuid() != u.uid
        || unistd::geteuid() != u.uid
        || unistd::getgid() != g.gid
        || unistd::getegid() != g.gid
    {
        return Err(fail(format!(
            "after switching, the process runs as uid {}/{} gid {}/{}, not {}/{}",
            unistd::getuid(),
            unistd::geteuid(),
            unistd::getgid(),
            unistd::getegid(),
            id.uid,
            id.gid
        )));
    }
    if !u.uid.is_root() && unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(fail(
            "root privileges could be regained after switching users".to_string(),
        ));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_its_group_exist_by_name_and_number() {
        assert_eq!(lookup_user("root").unwrap().uid.as_raw(), 0);
        assert_eq!(lookup_user("0").unwrap().name, "root");
        assert_eq!(lookup_group("0").unwrap().gid.as_raw(), 0);
    }

    #[test]
    fn unknown_names_are_explained() {
        let e = lookup_user("no-such-user-ringlb").unwrap_err();
        assert!(e.contains("no user \"no-such-user-ringlb\""), "{e}");
        let e = lookup_group("no-such-group-ringlb").unwrap_err();
        assert!(e.contains("no group"), "{e}");
    }
}
