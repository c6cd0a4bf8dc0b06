//! Driving a real libpam stack from a test: `pam_start_confdir` reads the
//! service file from a directory of the test's own, so nothing under
//! /etc/pam.d is needed.

use crate::util::TempDir;
use std::ffi::{c_char, c_int, c_void, CString};
use std::path::Path;

pub const PAM_SUCCESS: c_int = 0;
pub const PAM_SESSION_ERR: c_int = 14;
pub const PAM_IGNORE: c_int = 25;
const PAM_RHOST: c_int = 4;
const PAM_CONV_ERR: c_int = 19;

#[repr(C)]
struct PamConv {
    conv: extern "C" fn(c_int, *const *const c_void, *mut *mut c_void, *mut c_void) -> c_int,
    appdata: *mut c_void,
}

#[link(name = "pam")]
extern "C" {
    fn pam_start_confdir(
        service: *const c_char,
        user: *const c_char,
        conv: *const PamConv,
        confdir: *const c_char,
        pamh: *mut *mut c_void,
    ) -> c_int;
    fn pam_set_item(pamh: *mut c_void, item: c_int, value: *const c_void) -> c_int;
    fn pam_open_session(pamh: *mut c_void, flags: c_int) -> c_int;
    fn pam_close_session(pamh: *mut c_void, flags: c_int) -> c_int;
    fn pam_end(pamh: *mut c_void, status: c_int) -> c_int;
}

extern "C" fn no_conversation(
    _n: c_int,
    _msg: *const *const c_void,
    _resp: *mut *mut c_void,
    _data: *mut c_void,
) -> c_int {
    PAM_CONV_ERR
}

static CONV: PamConv = PamConv { conv: no_conversation, appdata: std::ptr::null_mut() };
// SAFETY: CONV is immutable and holds no real pointers.
unsafe impl Sync for PamConv {}

/// A PAM configuration directory holding service files.
pub struct PamConfDir {
    pub dir: TempDir,
}

impl PamConfDir {
    pub fn new(tag: &str) -> PamConfDir {
        PamConfDir { dir: TempDir::new(tag) }
    }

    /// Writes the service file `service` with these lines.
    pub fn service(&self, service: &str, lines: &str) {
        std::fs::write(self.dir.join(service), lines).expect("service file");
    }

    pub fn path(&self) -> &Path {
        &self.dir.path
    }
}

/// One PAM transaction; `pam_end` on drop.
pub struct PamSession {
    handle: *mut c_void,
}

impl PamSession {
    /// `pam_start_confdir(service, user)`; the return code when it fails.
    pub fn start(confdir: &Path, service: &str, user: &str, rhost: Option<&str>) -> Result<PamSession, c_int> {
        let (service, user) = (CString::new(service).unwrap(), CString::new(user).unwrap());
        let confdir = CString::new(confdir.as_os_str().as_encoded_bytes()).unwrap();
        let mut handle = std::ptr::null_mut();
        // SAFETY: valid C strings and conversation; handle is an out pointer.
        let rc = unsafe { pam_start_confdir(service.as_ptr(), user.as_ptr(), &CONV, confdir.as_ptr(), &mut handle) };
        if rc != PAM_SUCCESS {
            return Err(rc);
        }
        let session = PamSession { handle };
        if let Some(rhost) = rhost {
            let rhost = CString::new(rhost).unwrap();
            // SAFETY: libpam copies the string.
            unsafe { pam_set_item(session.handle, PAM_RHOST, rhost.as_ptr().cast()) };
        }
        Ok(session)
    }

    /// Sets PAM_RHOST to arbitrary bytes (up to a NUL), as a hostile
    /// client's reverse DNS could make it.
    pub fn set_rhost_bytes(&mut self, rhost: &[u8]) -> c_int {
        let rhost = CString::new(rhost.iter().copied().take_while(|b| *b != 0).collect::<Vec<u8>>()).unwrap();
        // SAFETY: valid handle; libpam copies the string.
        unsafe { pam_set_item(self.handle, PAM_RHOST, rhost.as_ptr().cast()) }
    }

    pub fn open_session(&mut self) -> c_int {
        // SAFETY: valid handle.
        unsafe { pam_open_session(self.handle, 0) }
    }

    pub fn close_session(&mut self) -> c_int {
        // SAFETY: valid handle.
        unsafe { pam_close_session(self.handle, 0) }
    }

    /// Calls a hook of the module at `module` directly with this handle, to
    /// see the module's own return code (libpam folds PAM_IGNORE into the
    /// stack's result).
    pub fn call_hook(&mut self, module: &Path, hook: &str, args: &[&str]) -> c_int {
        type Hook = unsafe extern "C" fn(*mut c_void, c_int, c_int, *const *const c_char) -> c_int;
        let path = CString::new(module.as_os_str().as_encoded_bytes()).unwrap();
        let name = CString::new(hook).unwrap();
        let args: Vec<CString> = args.iter().map(|a| CString::new(*a).unwrap()).collect();
        let argv: Vec<*const c_char> = args.iter().map(|a| a.as_ptr()).collect();
        // SAFETY: the module exports hooks with the PAM signature; the library
        // stays loaded (no dlclose) because libpam may hold data it owns.
        unsafe {
            let lib = libc::dlopen(path.as_ptr(), libc::RTLD_NOW);
            assert!(!lib.is_null(), "dlopen {}", module.display());
            let sym = libc::dlsym(lib, name.as_ptr());
            assert!(!sym.is_null(), "no symbol {hook}");
            let hook: Hook = std::mem::transmute::<*mut c_void, Hook>(sym);
            hook(self.handle, 0, argv.len() as c_int, argv.as_ptr())
        }
    }
}

impl Drop for PamSession {
    fn drop(&mut self) {
        // SAFETY: valid handle, ended once.
        unsafe { pam_end(self.handle, PAM_SUCCESS) };
    }
}
