//! `pam_sshidle.so`: a thin shim between libpam and `sshidle::login`.
//!
//! Every hook is wrapped in `catch_unwind` and always returns `PAM_SUCCESS`
//! or `PAM_IGNORE`, so neither a bug nor a broken state file can refuse a
//! login or crash sshd; what a panic said goes to syslog with the error.
//! Logging goes through `pam_syslog` (facility authpriv), which sets no
//! process-wide state: no `openlog` ident, no global logger.

use pam_sys::{PamHandle, PamItemType, PamReturnCode};
use sshidle::login::{self, LoginItems, ModuleArgs};
use sshidle::{Level, LogSink, SessionKey};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

// The constants of pam-sys, as the C ints the hooks return and take.
const PAM_SUCCESS: c_int = PamReturnCode::SUCCESS as c_int;
const PAM_IGNORE: c_int = PamReturnCode::IGNORE as c_int;
const PAM_SERVICE: c_int = PamItemType::SERVICE as c_int;
const PAM_USER: c_int = PamItemType::USER as c_int;
const PAM_RHOST: c_int = PamItemType::RHOST as c_int;
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
///
/// # Safety
/// `pamh` is a valid PAM handle.
unsafe fn get_item(pamh: *mut PamHandle, item: c_int) -> Option<String> {
    let mut value: *const c_void = std::ptr::null();
    // SAFETY: a valid handle (caller) and a writable out-pointer.
    if unsafe { pam_sys::raw::pam_get_item(pamh, item, &mut value) } != PAM_SUCCESS || value.is_null() {
        return None;
    }
    // SAFETY: string items are NUL-terminated and live as long as the handle.
    Some(unsafe { CStr::from_ptr(value.cast()) }.to_string_lossy().into_owned())
}

/// The module arguments; a NULL `argv` or NULL entries are read as absent.
///
/// # Safety
/// When not NULL, `argv` holds `argc` pointers, each NULL or a C string.
unsafe fn args_from(argc: c_int, argv: *const *const c_char) -> Vec<String> {
    if argv.is_null() || argc <= 0 {
        return Vec::new();
    }
    (0..argc as usize)
        .filter_map(|i| {
            // SAFETY: i < argc entries (caller).
            let arg = unsafe { *argv.add(i) };
            // SAFETY: a non-NULL entry is a C string (caller).
            (!arg.is_null()).then(|| unsafe { CStr::from_ptr(arg) }.to_string_lossy().into_owned())
        })
        .collect()
}

/// # Safety
/// `pamh` is a valid PAM handle.
unsafe fn login_items(pamh: *mut PamHandle) -> Option<LoginItems> {
    // SAFETY: a valid handle (caller).
    let item = |item| unsafe { get_item(pamh, item) };
    Some(LoginItems {
        user: item(PAM_USER).filter(|u| !u.is_empty())?,
        rhost: item(PAM_RHOST).unwrap_or_default(),
        service: item(PAM_SERVICE).unwrap_or_default(),
    })
}

/// Whether the login's PAM service is one `services=` names (default
/// `sshd`). Installed through pam-auth-update the module is in
/// common-session, so su, sudo, cron and console logins reach it too: they
/// get `PAM_IGNORE` before anything is read.
///
/// # Safety
/// `pamh` is a valid PAM handle.
unsafe fn watched(pamh: *mut PamHandle, args: &ModuleArgs) -> bool {
    // SAFETY: a valid handle (caller).
    unsafe { get_item(pamh, PAM_SERVICE) }.is_some_and(|service| args.watches(&service))
}

extern "C" fn free_key(_pamh: *mut PamHandle, data: *mut c_void, _status: c_int) {
    if !data.is_null() {
        // SAFETY: data was made by Box::into_raw in open_session.
        drop(unsafe { Box::from_raw(data.cast::<SessionKey>()) });
    }
}

/// Runs a hook: checks the handle, then [`guarded`].
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
    // SAFETY: argv as libpam passes it (caller).
    unsafe { guarded(&PamLog(pamh), argc, argv, hook, body) }
}

/// Parses the arguments and runs `body`, turning a panic into a logged
/// PAM_IGNORE so that it never unwinds into libpam or sshd.
///
/// # Safety
/// `argv` as for [`args_from`].
unsafe fn guarded<L: LogSink>(
    log: &L,
    argc: c_int,
    argv: *const *const c_char,
    hook: &str,
    body: impl FnOnce(&L, &ModuleArgs) -> c_int,
) -> c_int {
    quiet_panics();
    HOOKS_RUNNING.fetch_add(1, Ordering::SeqCst);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: argv as libpam passes it (caller).
        let raw_args = unsafe { args_from(argc, argv) };
        // Debug builds only: lets tests prove that a panic is caught by the
        // module's own (static) unwinder inside a real libpam.
        #[cfg(debug_assertions)]
        if raw_args.iter().any(|a| a == "debug_test_panic") {
            panic!("debug_test_panic");
        }
        let args = ModuleArgs::parse(raw_args.iter().map(String::as_str), log);
        body(log, &args)
    }));
    HOOKS_RUNNING.fetch_sub(1, Ordering::SeqCst);
    outcome.unwrap_or_else(|_| {
        // Logging itself must not unwind out of here either.
        let _ = catch_unwind(AssertUnwindSafe(|| {
            let note = PANIC_NOTE.lock().map(|mut note| note.take()).unwrap_or_default();
            let what = note.map(|n| format!(" ({n})")).unwrap_or_default();
            log.log(Level::Error, &format!("internal error in {hook}{what}; login continues"))
        }));
        PAM_IGNORE
    })
}

/// Hooks running now: a panic then is the module's, caught by [`guarded`].
/// Plain statics, not thread-locals: a thread-local's first use in a
/// dlopen'ed module allocates its block, on every login.
static HOOKS_RUNNING: AtomicUsize = AtomicUsize::new(0);
/// What the last caught panic said (`panicked at FILE:LINE:COL: ...`).
static PANIC_NOTE: Mutex<Option<String>> = Mutex::new(None);

/// Panics inside a hook go to syslog with the hook's error line instead of
/// std's message on sshd's stderr. The hook belongs to this module's own
/// copy of std (unloaded with it); a panic outside a hook (none in the
/// module; a test harness's own) is printed to stderr as std would. The
/// closure captures nothing: its box allocates nothing, so no connection
/// leaks a hook when the module is unloaded (valgrind.rs).
fn quiet_panics() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            if HOOKS_RUNNING.load(Ordering::SeqCst) > 0 {
                if let Ok(mut note) = PANIC_NOTE.lock() {
                    *note = Some(info.to_string().replace('\n', " "));
                }
            } else {
                eprintln!("{info}");
            }
        }));
    });
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
    // SAFETY: pamh and argv as libpam passes them (caller).
    unsafe { run_hook(pamh, argc, argv, "open_session", |log, args| open_session(pamh, log, args)) }
}

/// # Safety
/// `pamh` is a valid PAM handle.
unsafe fn open_session(pamh: *mut PamHandle, log: &PamLog, args: &ModuleArgs) -> c_int {
    // SAFETY: a valid handle (caller).
    if !unsafe { watched(pamh, args) } {
        return PAM_IGNORE;
    }
    // SAFETY: a valid handle (caller).
    let Some(items) = (unsafe { login_items(pamh) }) else {
        log.log(Level::Error, "no PAM_USER; session not recorded");
        return PAM_IGNORE;
    };
    match login::open_session(args, &items, log) {
        Some(key) => {
            // Handed to close_session, which runs in this same process.
            let data = Box::into_raw(Box::new(key)).cast::<c_void>();
            // SAFETY: a valid handle; data is ours until free_key runs.
            if unsafe { pam_sys::raw::pam_set_data(pamh, DATA_KEY.as_ptr(), data, Some(free_key)) } != PAM_SUCCESS {
                free_key(pamh, data, 0);
            }
            PAM_SUCCESS
        }
        None => PAM_IGNORE,
    }
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
    // SAFETY: pamh and argv as libpam passes them (caller).
    unsafe { run_hook(pamh, argc, argv, "close_session", |log, args| close_session(pamh, log, args)) }
}

/// # Safety
/// `pamh` is a valid PAM handle.
unsafe fn close_session(pamh: *mut PamHandle, log: &PamLog, args: &ModuleArgs) -> c_int {
    // SAFETY: a valid handle (caller).
    if !unsafe { watched(pamh, args) } {
        return PAM_IGNORE;
    }
    // SAFETY: a valid handle (caller).
    let items = unsafe { login_items(pamh) }.unwrap_or_default();
    let mut data: *const c_void = std::ptr::null();
    // SAFETY: a valid handle and a writable out-pointer.
    let got = unsafe { pam_sys::raw::pam_get_data(pamh, DATA_KEY.as_ptr(), &mut data) };
    let recorded = got == PAM_SUCCESS && !data.is_null();
    if !recorded {
        // open_session recorded nothing (or ran in another process).
        if args.debug {
            log.log(Level::Debug, "close_session: no session recorded by open_session");
        }
        return PAM_IGNORE;
    }
    // SAFETY: the data under DATA_KEY is the SessionKey open_session set.
    let key = unsafe { *data.cast::<SessionKey>() };
    login::close_session(args, &items, Some(key), log);
    PAM_SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[derive(Default)]
    struct Seen(RefCell<Vec<String>>);

    impl LogSink for Seen {
        fn log(&self, _: Level, message: &str) {
            self.0.borrow_mut().push(message.to_string());
        }
    }

    #[test]
    fn a_null_handle_runs_nothing() {
        let mut ran = false;
        // SAFETY: a NULL handle is what is tested; argv is NULL.
        let rc = unsafe {
            run_hook(std::ptr::null_mut(), 0, std::ptr::null(), "open_session", |_, _| {
                ran = true;
                PAM_SUCCESS
            })
        };
        assert_eq!((rc, ran), (PAM_IGNORE, false));
    }

    #[test]
    fn a_panic_is_logged_and_ignored() {
        let log = Seen::default();
        // SAFETY: argv is NULL.
        let rc = unsafe { guarded(&log, 0, std::ptr::null(), "open_session", |_, _| panic!("bug")) };
        assert_eq!(rc, PAM_IGNORE);
        let logged = log.0.borrow();
        assert_eq!(logged.len(), 1, "{logged:?}");
        // What panicked and where, from the hook, not on stderr.
        assert!(
            logged[0].starts_with("internal error in open_session (panicked at pam-module/src/lib.rs:"),
            "{logged:?}"
        );
        assert!(logged[0].ends_with(": bug); login continues"), "{logged:?}");
    }

    #[test]
    fn null_argv_and_null_entries_are_absent() {
        let log = Seen::default();
        // A NULL argv with a positive argc: no arguments.
        // SAFETY: argv is NULL.
        let rc = unsafe { guarded(&log, 3, std::ptr::null(), "x", |_, args| i32::from(args.debug)) };
        assert_eq!(rc, 0);
        let (debug, bogus) = (c"debug", c"frobnicate");
        let argv = [debug.as_ptr(), std::ptr::null(), bogus.as_ptr()];
        // SAFETY: three entries, each NULL or a C string.
        let rc = unsafe { guarded(&log, 3, argv.as_ptr(), "x", |_, args| i32::from(args.debug)) };
        assert_eq!(rc, 1);
        assert_eq!(*log.0.borrow(), ["unknown argument 'frobnicate' ignored"]);
        // SAFETY: argc <= 0 reads nothing.
        assert!(unsafe { args_from(-1, argv.as_ptr()) }.is_empty());
    }
}
