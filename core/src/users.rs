//! Account and group lookups through NSS (getpwnam_r, getgrouplist), so that
//! LDAP/SSSD users and supplementary groups count like local ones.

use std::ffi::{CStr, CString};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Calls a reentrant NSS lookup (`getpwnam_r` and friends) with a buffer that
/// grows while the call answers ERANGE. `call` returns the C return code and
/// whether a result was found.
fn with_nss_buffer<T>(mut call: impl FnMut(&mut [u8]) -> (libc::c_int, Option<T>)) -> Option<T> {
    let mut buf = vec![0u8; 4096];
    loop {
        match call(&mut buf) {
            (libc::ERANGE, _) if buf.len() < (1 << 22) => buf.resize(buf.len() * 4, 0),
            (0, found) => return found,
            _ => return None,
        }
    }
}

/// Looks up `name`; `None` when there is no such user (or NSS failed).
pub fn lookup_user(name: &str) -> Option<Account> {
    let cname = CString::new(name).ok()?;
    with_nss_buffer(|buf| {
        // SAFETY: all pointers point to live, correctly sized buffers.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe { libc::getpwnam_r(cname.as_ptr(), &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut result) };
        (rc, (!result.is_null()).then(|| Account { name: name.to_string(), uid: pwd.pw_uid, gid: pwd.pw_gid }))
    })
}

/// Looks up a uid's name.
pub fn user_name(uid: u32) -> Option<String> {
    with_nss_buffer(|buf| {
        // SAFETY: as above; pw_name points into buf.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut result) };
        (rc, (!result.is_null()).then(|| unsafe { CStr::from_ptr(pwd.pw_name) }.to_string_lossy().into_owned()))
    })
}

/// Names of the account's primary and supplementary groups.
pub fn group_names(account: &Account) -> Vec<String> {
    let Ok(cname) = CString::new(account.name.as_str()) else { return Vec::new() };
    let mut gids: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut count = gids.len() as libc::c_int;
        // SAFETY: gids has room for `count` entries.
        let rc = unsafe { libc::getgrouplist(cname.as_ptr(), account.gid, gids.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            gids.truncate(count.max(0) as usize);
            break;
        }
        if gids.len() >= 65_536 {
            gids.truncate(0);
            break;
        }
        let wanted = (count.max(0) as usize).max(gids.len() * 2);
        gids.resize(wanted, 0);
    }
    if !gids.contains(&account.gid) {
        gids.insert(0, account.gid);
    }
    gids.into_iter().filter_map(group_name).collect()
}

fn group_name(gid: u32) -> Option<String> {
    with_nss_buffer(|buf| {
        // SAFETY: as above; gr_name points into buf.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = unsafe { libc::getgrgid_r(gid, &mut grp, buf.as_mut_ptr().cast(), buf.len(), &mut result) };
        (rc, (!result.is_null()).then(|| unsafe { CStr::from_ptr(grp.gr_name) }.to_string_lossy().into_owned()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_exists_and_is_in_group_root() {
        let root = lookup_user("root").expect("root");
        assert_eq!(root.uid, 0);
        assert!(group_names(&root).contains(&"root".to_string()));
        assert_eq!(user_name(0).as_deref(), Some("root"));
    }

    #[test]
    fn unknown_user() {
        assert_eq!(lookup_user("no-such-user-sshidle"), None);
        assert_eq!(lookup_user("nul\0byte"), None);
    }
}
