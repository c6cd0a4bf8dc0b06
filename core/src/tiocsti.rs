//! Taking `TIOCSTI` away from a session: a seccomp filter that makes
//! `ioctl(fd, TIOCSTI, ...)` fail with `EPERM`, installed by the module in
//! sshd's privileged monitor at `open_session`, before the session's first
//! process is forked. Every process of the session inherits it, across
//! `fork`, `execve` and setuid programs (`sudo`), and none can remove it.
//!
//! Without it a process of the session can push bytes into its own
//! terminal's input (`TIOCSTI`), which the shell then reads as if typed:
//! on the tty that is indistinguishable from a key that came over the
//! connection (see [`crate::input`]). The kernel's own switch,
//! `dev.tty.legacy_tiocsti = 0` (Linux 6.2+), spares processes with
//! `CAP_SYS_ADMIN` (anything run with `sudo`) and does not exist on Debian
//! 12's 6.1; the filter spares nobody in the session and works on both.
//!
//! The filter denies the same thing on every system-call ABI the kernel can
//! run: on x86_64 the native one, i386 (`int $0x80`, a 32-bit program) and
//! x32 (numbers with bit 30 set); on aarch64 the native one and 32-bit ARM.
//! Only the low 32 bits of the request are compared: the kernel reads the
//! request as an `unsigned int`, so `0x1_0000_5412` is `TIOCSTI` too (the
//! flatpak filter's hole, CVE-2019-10063). Every other system call is allowed
//! without running the filter at all: its outcome depends on the number and
//! the architecture only, which the kernel's per-syscall cache of
//! always-allowed calls (Linux 5.11+) records when the filter is installed.
//!
//! `NO_NEW_PRIVS` is not set (it would stop `sudo`): sshd's monitor runs as
//! root with `CAP_SYS_ADMIN`, which lets it install a filter without it.
//! The error is `EPERM`, what a hardened kernel (`legacy_tiocsti = 0`)
//! answers: programs that use `TIOCSTI` already meet it there.

use std::io;

/// `TIOCSTI` (asm-generic/ioctls.h: x86, arm, arm64).
pub const TIOCSTI: u32 = 0x5412;

/// One system-call ABI: the `AUDIT_ARCH_*` value seccomp reports for it,
/// the mask applied to the call's number, and the numbers of `ioctl`.
struct Abi {
    arch: u32,
    nr_mask: u32,
    ioctl: &'static [u32],
}

// linux/audit.h.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_AARCH64: u32 = 0xC000_00B7;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_ARM: u32 = 0x4000_0028;
/// x32 calls are x86_64's with this bit set in the number.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// x86_64: native `ioctl` 16; x32's own `ioctl` is 514 (and 16 on kernels
/// before the x32 table was split); i386's is 54.
#[cfg(target_arch = "x86_64")]
const ABIS: &[Abi] = &[
    Abi { arch: AUDIT_ARCH_X86_64, nr_mask: !X32_SYSCALL_BIT, ioctl: &[16, 514] },
    Abi { arch: AUDIT_ARCH_I386, nr_mask: u32::MAX, ioctl: &[54] },
];
/// aarch64: native `ioctl` 29; 32-bit ARM (compat) 54.
#[cfg(target_arch = "aarch64")]
const ABIS: &[Abi] = &[
    Abi { arch: AUDIT_ARCH_AARCH64, nr_mask: u32::MAX, ioctl: &[29] },
    Abi { arch: AUDIT_ARCH_ARM, nr_mask: u32::MAX, ioctl: &[54] },
];
/// Elsewhere nothing is filtered (TIOCSTI's value and the ABIs differ).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ABIS: &[Abi] = &[];

// struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
/// The low 32 bits of `args[1]` (the request), whatever the byte order.
const REQUEST_LOW_OFFSET: u32 = 16 + 8 + if cfg!(target_endian = "big") { 4 } else { 0 };

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const AND_K: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const DENY: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;

fn insn(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Whether this build can filter `TIOCSTI` on this architecture.
pub fn supported() -> bool {
    // Not `!ABIS.is_empty()`: clippy 1.85 (Debian 13's) calls that always false.
    cfg!(any(target_arch = "x86_64", target_arch = "aarch64"))
}

/// The filter (classic BPF): for each ABI, `ioctl` with request `TIOCSTI`
/// returns `EPERM`; everything else is allowed. Pure, so it is built before
/// a `fork` in tests and checked by an interpreter.
pub fn filter() -> Vec<libc::sock_filter> {
    let block_len = |abi: &Abi| 2 + usize::from(abi.nr_mask != u32::MAX) + abi.ioctl.len();
    let check_request = 1 + ABIS.iter().map(block_len).sum::<usize>();
    let (allow, deny) = (check_request + 2, check_request + 3);
    // A jump from the instruction at `from` to the one at `to`.
    let jump = |from: usize, to: usize| u8::try_from(to - from - 1).unwrap_or(u8::MAX);
    let mut prog = vec![insn(LD_W_ABS, ARCH_OFFSET, 0, 0)];
    for (i, abi) in ABIS.iter().enumerate() {
        let next_abi = if i + 1 == ABIS.len() { allow } else { prog.len() + block_len(abi) };
        let at = prog.len();
        prog.push(insn(JEQ_K, abi.arch, 0, jump(at, next_abi)));
        prog.push(insn(LD_W_ABS, NR_OFFSET, 0, 0));
        if abi.nr_mask != u32::MAX {
            prog.push(insn(AND_K, abi.nr_mask, 0, 0));
        }
        for (j, nr) in abi.ioctl.iter().enumerate() {
            let at = prog.len();
            let miss = if j + 1 == abi.ioctl.len() { jump(at, allow) } else { 0 };
            prog.push(insn(JEQ_K, *nr, jump(at, check_request), miss));
        }
    }
    prog.push(insn(LD_W_ABS, REQUEST_LOW_OFFSET, 0, 0));
    prog.push(insn(JEQ_K, TIOCSTI, 1, 0));
    prog.push(insn(RET_K, ALLOW, 0, 0));
    prog.push(insn(RET_K, DENY, 0, 0));
    debug_assert_eq!(prog.len(), deny + 1);
    prog
}

/// Installs `prog` on the calling thread (and so on every process it forks
/// from now on). Makes no allocation: safe between `fork` and `exec`.
///
/// `SECCOMP_FILTER_FLAG_SPEC_ALLOW`: on kernels that tie speculation
/// mitigations to seccomp (`spec_store_bypass_disable=seccomp`, the default
/// before Linux 5.16) a filter would otherwise slow every process of the
/// session; this one is no sandbox, so the session runs as it would without
/// it. Kernels before 4.17 reject the flag: then without it.
pub fn install(prog: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        filter: prog.as_ptr().cast_mut(),
    };
    let set = |flags: libc::c_ulong| {
        // SAFETY: fprog points to `len` instructions that outlive the call
        // (the kernel copies them).
        let rc = unsafe {
            libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, flags, &fprog as *const libc::sock_fprog)
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    match set(libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW) {
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => set(0),
        done => done,
    }
}

/// Takes `TIOCSTI` away from the calling thread and what it forks.
/// `Unsupported` on an architecture this build does not know.
pub fn deny_tiocsti() -> io::Result<()> {
    if !supported() {
        return Err(io::Error::from(io::ErrorKind::Unsupported));
    }
    install(&filter())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic-BPF interpreter for the instructions the filter uses, as
    /// the kernel runs it on `struct seccomp_data`.
    fn run(prog: &[libc::sock_filter], arch: u32, nr: u32, request: u64) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        data[24..32].copy_from_slice(&request.to_ne_bytes());
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => {
                    let k = i.k as usize;
                    a = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap());
                }
                AND_K => a &= i.k,
                JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                RET_K => return i.k,
                code => panic!("unexpected instruction {code:#x}"),
            }
            assert!(pc < prog.len(), "ran off the end");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_x86_abi_is_denied_tiocsti_and_only_that() {
        let prog = filter();
        let x32 = X32_SYSCALL_BIT;
        for (arch, nr) in [(AUDIT_ARCH_X86_64, 16), (AUDIT_ARCH_X86_64, 514 | x32), (AUDIT_ARCH_X86_64, 16 | x32)] {
            assert_eq!(run(&prog, arch, nr, 0x5412), DENY, "{arch:#x} {nr:#x}");
            // The kernel reads the request as 32 bits.
            assert_eq!(run(&prog, arch, nr, 0xffff_ffff_0000_5412), DENY, "{arch:#x} {nr:#x}");
            assert_eq!(run(&prog, arch, nr, 0x5413), ALLOW, "TIOCGWINSZ {arch:#x} {nr:#x}");
        }
        assert_eq!(run(&prog, AUDIT_ARCH_I386, 54, 0x5412), DENY);
        assert_eq!(run(&prog, AUDIT_ARCH_I386, 54, 0x5401), ALLOW);
        // Other calls, the same request value in their second argument.
        assert_eq!(run(&prog, AUDIT_ARCH_X86_64, 54, 0x5412), ALLOW, "setsockopt");
        assert_eq!(run(&prog, AUDIT_ARCH_I386, 16, 0x5412), ALLOW, "i386 lchown");
        assert_eq!(run(&prog, AUDIT_ARCH_X86_64, 1, 0x5412), ALLOW);
        assert_eq!(run(&prog, 0x1234, 16, 0x5412), ALLOW, "an unknown architecture");
    }

    /// What the kernel's cache of always-allowed calls can prove: the path
    /// of a call that is not `ioctl` reads only the number and the
    /// architecture (seccomp_is_const_allow), so it never runs the filter.
    #[test]
    fn calls_other_than_ioctl_never_read_their_arguments() {
        let prog = filter();
        for abi in ABIS {
            for nr in (0..600).filter(|nr| !abi.ioctl.contains(nr)) {
                let mut pc = 0;
                let (mut a, arch) = (0u32, abi.arch);
                let verdict = loop {
                    let i = prog[pc];
                    pc += 1;
                    match i.code {
                        LD_W_ABS if i.k == ARCH_OFFSET => a = arch,
                        LD_W_ABS if i.k == NR_OFFSET => a = nr,
                        LD_W_ABS => panic!("nr {nr} of {arch:#x} reads an argument"),
                        AND_K => a &= i.k,
                        JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                        _ => break i.k,
                    }
                };
                assert_eq!(verdict, ALLOW);
            }
        }
    }

    /// The real kernel: in a child, after the filter, `TIOCSTI` on a file
    /// that is no tty fails with EPERM (the kernel's own answer would be
    /// ENOTTY), by every ABI this machine runs, while another ioctl still
    /// reaches the kernel. NO_NEW_PRIVS lets the child install it without
    /// root; the module itself never sets it.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_kernel_answers_eperm_on_every_abi() {
        let prog = filter();
        let null = std::fs::File::open("/dev/null").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&null) as i64;
        let byte = b"x".as_ptr() as i64;
        // `int $0x80` only where the kernel runs i386 calls (a child asks
        // getpid that way first: elsewhere it dies of a signal).
        let i386 = in_child(|| {
            // SAFETY: getpid has no preconditions.
            let me = i64::from(unsafe { libc::getpid() });
            i32::from(int80(20, 0, 0, 0) != me)
        }) == Some(0);
        let x32_ioctl = 514 | i64::from(X32_SYSCALL_BIT);
        for (name, i386_call, nr, request, want) in [
            ("native", false, 16, 0x5412, libc::EPERM),
            ("native, high bits", false, 16, 0x1_0000_5412, libc::EPERM),
            ("native TIOCGWINSZ", false, 16, 0x5413, libc::ENOTTY),
            ("x32", false, x32_ioctl, 0x5412, libc::EPERM),
            ("i386", true, 54, 0x5412, libc::EPERM),
            ("i386 TIOCGWINSZ", true, 54, 0x5413, libc::ENOTTY),
        ] {
            if i386_call && !i386 {
                eprintln!("{name}: this kernel runs no i386 calls (int $0x80); not checked");
                continue;
            }
            let errno = in_child(|| {
                // SAFETY: a flag of this child only.
                unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                if install(&prog).is_err() {
                    return 200;
                }
                match if i386_call { int80(nr, fd, request, byte) } else { native(nr, fd, request, byte) } {
                    r if (-4095..0).contains(&r) => -r as i32,
                    _ => 201,
                }
            });
            assert_eq!(errno, Some(want), "{name}: errno (200: no filter, 201: success, None: killed)");
        }
    }

    /// Runs `body` in a forked child (system calls only: no allocation
    /// after the fork) and returns its exit status, `None` if it was killed.
    fn in_child(body: impl FnOnce() -> i32) -> Option<i32> {
        // SAFETY: the child makes system calls only, then _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let code = body();
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status))
    }

    /// A native system call, returning -errno as the kernel does.
    #[cfg(target_arch = "x86_64")]
    fn native(nr: i64, a: i64, b: i64, c: i64) -> i64 {
        let ret: i64;
        // SAFETY: a raw system call; the arguments are plain numbers and a
        // valid pointer.
        unsafe {
            std::arch::asm!("syscall", inlateout("rax") nr => ret, in("rdi") a, in("rsi") b, in("rdx") c,
                out("rcx") _, out("r11") _, options(nostack));
        }
        ret
    }

    /// An i386 system call from this 64-bit process (`int $0x80`).
    #[cfg(target_arch = "x86_64")]
    fn int80(nr: i64, a: i64, b: i64, c: i64) -> i64 {
        let ret: i64;
        // SAFETY: as for `native`; a pointer above 4 GiB only makes the call
        // fail with EFAULT, after the filter has judged it.
        unsafe {
            std::arch::asm!("push rbx", "mov rbx, {a}", "int 0x80", "pop rbx", a = in(reg) a,
                inlateout("rax") nr => ret, in("rcx") b, in("rdx") c, options());
        }
        // The i386 ABI returns 32 bits.
        ret as i32 as i64
    }
}
