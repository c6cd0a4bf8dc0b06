//! `pam_sshidle.so`: a thin shim between libpam and `sshidle::login`.
//!
//! Every hook is wrapped in `catch_unwind` and always returns `PAM_SUCCESS`
//! or `PAM_IGNORE`, so neither a bug nor a broken state file can refuse a
//! login or crash sshd. Logging goes through `pam_syslog` (facility authpriv),
//! which sets no process-wide state: no `openlog` ident, no global logger.

use pam_sys::PamHandle;
use sshidle::login::{self, LoginItems, ModuleArgs};
use sshidle::{Level, LogSink, SessionKey};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

const PAM_SUCCESS: c_int = 0;
const PAM_IGNORE: c_int = 25;
const PAM_SERVICE: c_int = 1;
const PAM_USER: c_int = 2;
const PAM_RHOST: c_int = 4;
/// Name under which open_session hands its key to close_session.
const DATA_KEY: &CStr = c"pam_sshidle_session";

extern "C" {
    // pam_ext.h; not in pam-sys 0.5.
    fn pam_syslog(pamh: *const PamHandle, priority: c_int, fmt: *const c_char, ...);
}

struct PamLog(*mut PamHandle);

impl LogSink for PamLog {
    fn log(&self, level: Level, message: &str) {
        // Interior NULs cannot come from us; replace rather than drop the message.
        let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
        // SAFETY: "%s" keeps user-controlled text out of the format string.
        unsafe { pam_syslog(self.0, level.syslog_priority(), c"%s".as_ptr(), text.as_ptr()) };
    }
}

/// Reads a string item; NULL or non-UTF-8 bytes are read as absent / lossily.
unsafe fn get_item(pamh: *mut PamHandle, item: c_int) -> Option<String> {
    let mut value: *const c_void = std::ptr::null();
    if pam_sys::raw::pam_get_item(pamh, item, &mut value) != PAM_SUCCESS || value.is_null() {
        return None;
    }
    Some(CStr::from_ptr(value.cast()).to_string_lossy().into_owned())
}

unsafe fn args_from(argc: c_int, argv: *const *const c_char) -> Vec<String> {
    if argv.is_null() || argc <= 0 {
        return Vec::new();
    }
    (0..argc as usize)
        .filter_map(|i| {
            let arg = *argv.add(i);
            (!arg.is_null()).then(|| CStr::from_ptr(arg).to_string_lossy().into_owned())
        })
        .collect()
}

unsafe fn login_items(pamh: *mut PamHandle) -> Option<LoginItems> {
    Some(LoginItems {
        user: get_item(pamh, PAM_USER).filter(|u| !u.is_empty())?,
        rhost: get_item(pamh, PAM_RHOST).unwrap_or_default(),
        service: get_item(pamh, PAM_SERVICE).unwrap_or_default(),
    })
}

extern "C" fn free_key(_pamh: *mut PamHandle, data: *mut c_void, _status: c_int) {
    if !data.is_null() {
        // SAFETY: data was made by Box::into_raw in open_session.
        drop(unsafe { Box::from_raw(data.cast::<SessionKey>()) });
    }
}

/// Runs a hook: checks the handle, parses the arguments, and turns a panic
/// into a logged PAM_IGNORE so that it never unwinds into libpam or sshd.
///
/// # Safety
/// `pamh` and `argv` as libpam passes them to a hook.
unsafe fn run_hook(
    pamh: *mut PamHandle,
    argc: c_int,
    argv: *const *const c_char,
    hook: &str,
    body: impl FnOnce(&PamLog, &ModuleArgs) -> c_int,
) -> c_int {
    if pamh.is_null() {
        return PAM_IGNORE;
    }
    let log = PamLog(pamh);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let raw_args = args_from(argc, argv);
        let args = ModuleArgs::parse(raw_args.iter().map(String::as_str), &log);
        body(&log, &args)
    }));
    outcome.unwrap_or_else(|_| {
        // Logging itself must not unwind out of here either.
        let _ = catch_unwind(AssertUnwindSafe(|| {
            log.log(Level::Error, &format!("internal error in {hook}; login continues"))
        }));
        PAM_IGNORE
    })
}

/// # Safety
/// Called by libpam with a valid handle and argv.
#[no_mangle]
pub unsafe extern "C" fn pam_sm_open_session(
    pamh: *mut PamHandle,
    _flags: c_int,
    argc: c_int,
    argv: *const *const c_char,
) -> c_int {
    run_hook(pamh, argc, argv, "open_session", |log, args| {
        let Some(items) = login_items(pamh) else {
            log.log(Level::Error, "no PAM_USER; session not recorded");
            return PAM_IGNORE;
        };
        match login::open_session(args, &items, log) {
            Some(key) => {
                // Handed to close_session, which runs in this same process.
                let data = Box::into_raw(Box::new(key)).cast::<c_void>();
                if pam_sys::raw::pam_set_data(pamh, DATA_KEY.as_ptr(), data, Some(free_key)) != PAM_SUCCESS {
                    free_key(pamh, data, 0);
                }
                PAM_SUCCESS
            }
            None => PAM_IGNORE,
        }
    })
}

/// # Safety
/// Called by libpam with a valid handle and argv.
#[no_mangle]
pub unsafe extern "C" fn pam_sm_close_session(
    pamh: *mut PamHandle,
    _flags: c_int,
    argc: c_int,
    argv: *const *const c_char,
) -> c_int {
    run_hook(pamh, argc, argv, "close_session", |log, args| {
        let items = login_items(pamh).unwrap_or_default();
        let mut data: *const c_void = std::ptr::null();
        let recorded = pam_sys::raw::pam_get_data(pamh, DATA_KEY.as_ptr(), &mut data) == PAM_SUCCESS && !data.is_null();
        if !recorded {
            // open_session recorded nothing (or ran in another process).
            if args.debug {
                log.log(Level::Debug, "close_session: no session recorded by open_session");
            }
            return PAM_IGNORE;
        }
        let key = *data.cast::<SessionKey>();
        login::close_session(args, &items, Some(key), log);
        PAM_SUCCESS
    })
}
