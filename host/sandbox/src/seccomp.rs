//! The seccomp filter of every sandbox, loaded by bwrap (`--add-seccomp-fd`) just before it
//! starts the bridge, so the bridge, the agent and all they start run under it.
//!
//! It is at least as strict as Docker's default profile where that profile guards the
//! kernel: [`BLOCKED`] lists each refused syscall and why. Most get `EPERM`; the few that
//! libraries probe and fall back from (`clone3`, `io_uring_*`, `openat2`) get `ENOSYS`, so
//! glibc creates threads with `clone` and libuv polls with epoll. Beyond that, `clone` may not
//! make namespaces, `socket` may open only Unix, IPv4, IPv6 and route-netlink sockets,
//! `personality` may not leave the Linux defaults, and no call may create or mark a file
//! setuid or setgid (a file the agent makes is never a setuid program on the host).
//!
//! Every rule is tested per syscall against a host-side control (`tests` below, and the
//! escape suite through real sandboxes).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// What a refused syscall returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Eperm,
    /// "Not implemented": callers fall back to an older call.
    Enosys,
}

/// A syscall the filter refuses outright.
#[derive(Debug, Clone, Copy)]
pub struct Blocked {
    pub name: &'static str,
    pub nr: i64,
    pub refusal: Refusal,
    pub why: &'static str,
}

/// `SYS_name` → `name`.
const fn strip_sys(constant: &'static str) -> &'static str {
    match std::str::from_utf8(constant.as_bytes().split_at(4).1) {
        Ok(name) => name,
        Err(_) => panic!("a syscall constant is ASCII"),
    }
}

macro_rules! blocked {
    ($($refusal:ident $why:literal [$($nr:ident)*])*) => {
        &[$($(Blocked {
            name: strip_sys(stringify!($nr)),
            nr: libc::$nr,
            refusal: Refusal::$refusal,
            why: $why,
        },)*)*]
    };
}

/// Every syscall the filter refuses whatever its arguments.
pub const BLOCKED: &[Blocked] = blocked! {
    Eperm "kernel keyrings are shared across sandboxes and with the host"
        [SYS_add_key SYS_keyctl SYS_request_key]
    Eperm "in-kernel programs and tracing are large attack surfaces"
        [SYS_bpf SYS_perf_event_open SYS_userfaultfd]
    Eperm "mounts and namespaces would change the sandbox's walls"
        [SYS_mount SYS_umount2 SYS_pivot_root SYS_move_mount SYS_open_tree SYS_fsopen
         SYS_fsconfig SYS_fsmount SYS_fspick SYS_mount_setattr SYS_setns SYS_unshare]
    Eperm "kernel modules and kexec replace the kernel"
        [SYS_init_module SYS_finit_module SYS_delete_module SYS_kexec_load SYS_kexec_file_load]
    Eperm "file handles open files by inode, around every mount"
        [SYS_open_by_handle_at SYS_name_to_handle_at]
    Eperm "host-wide state: power, swap, accounting, clocks, kernel log, quotas, terminals"
        [SYS_reboot SYS_swapon SYS_swapoff SYS_acct SYS_settimeofday SYS_clock_settime
         SYS_clock_adjtime SYS_syslog SYS_quotactl SYS_quotactl_fd SYS_fanotify_init SYS_vhangup]
    Eperm "reading or steering other processes (the bridge among them)"
        [SYS_ptrace SYS_process_vm_readv SYS_process_vm_writev SYS_kcmp SYS_pidfd_getfd]
    Eperm "NUMA placement is the host's to decide"
        [SYS_get_mempolicy SYS_set_mempolicy SYS_mbind SYS_move_pages]
    Enosys "arguments out of the filter's sight (clone3's flags, openat2's mode); callers fall back"
        [SYS_clone3 SYS_openat2]
    Enosys "io_uring runs I/O out of the filter's sight; callers fall back to epoll"
        [SYS_io_uring_setup SYS_io_uring_enter SYS_io_uring_register]
    Eperm "obsolete calls and port I/O"
        [SYS_iopl SYS_ioperm SYS_uselib SYS_ustat SYS_sysfs SYS__sysctl SYS_lookup_dcookie]
};

const CLONE_NAMESPACES: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];
/// The `personality` values Docker allows: Linux, PER_LINUX32, UNAME26 (and both), a query.
const PERSONALITIES: [u64; 5] = [0, 0x8, 0x20000, 0x20008, 0xffff_ffff];
/// Calls that take a file mode, and its argument's index.
#[cfg(target_arch = "x86_64")]
const MODE_ARGS: &[(i64, u8)] = &[
    (libc::SYS_chmod, 1),
    (libc::SYS_fchmod, 1),
    (libc::SYS_fchmodat, 2),
    (libc::SYS_fchmodat2, 2),
    (libc::SYS_open, 2),
    (libc::SYS_openat, 3),
    (libc::SYS_creat, 1),
    (libc::SYS_mkdir, 1),
    (libc::SYS_mkdirat, 2),
    (libc::SYS_mknod, 1),
    (libc::SYS_mknodat, 2),
];
#[cfg(target_arch = "aarch64")]
const MODE_ARGS: &[(i64, u8)] = &[
    (libc::SYS_fchmod, 1),
    (libc::SYS_fchmodat, 2),
    (libc::SYS_fchmodat2, 2),
    (libc::SYS_openat, 3),
    (libc::SYS_mkdirat, 2),
    (libc::SYS_mknodat, 2),
];

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

fn condition(arg: u8, len: Len, op: Op, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, len, op, value).expect("argument index below 6")
}

fn rule(conditions: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conditions).expect("a rule has conditions")
}

/// The rules refused with `EPERM` that look at arguments.
fn argument_rules() -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut rules = BTreeMap::new();
    let clone = CLONE_NAMESPACES
        .iter()
        .map(|flag| rule(vec![condition(0, Len::Qword, Op::MaskedEq(*flag), *flag)]))
        .collect();
    rules.insert(libc::SYS_clone, clone);
    let domain = |op, value| condition(0, Len::Dword, op, value);
    let socket = vec![
        rule(vec![domain(Op::Eq, libc::AF_UNSPEC as u64)]),
        rule(vec![
            domain(Op::Gt, libc::AF_INET as u64),
            domain(Op::Lt, libc::AF_INET6 as u64),
        ]),
        rule(vec![
            domain(Op::Gt, libc::AF_INET6 as u64),
            domain(Op::Lt, libc::AF_NETLINK as u64),
        ]),
        rule(vec![
            domain(Op::Eq, libc::AF_NETLINK as u64),
            condition(2, Len::Dword, Op::Ne, libc::NETLINK_ROUTE as u64),
        ]),
        rule(vec![domain(Op::Gt, libc::AF_NETLINK as u64)]),
    ];
    rules.insert(libc::SYS_socket, socket);
    let odd_persona = PERSONALITIES
        .iter()
        .map(|p| condition(0, Len::Dword, Op::Ne, *p))
        .collect();
    rules.insert(libc::SYS_personality, vec![rule(odd_persona)]);
    for &(nr, arg) in MODE_ARGS {
        let bits = [libc::S_ISUID as u64, libc::S_ISGID as u64];
        let setid = bits
            .iter()
            .map(|bit| rule(vec![condition(arg, Len::Dword, Op::MaskedEq(*bit), *bit)]))
            .collect();
        rules.insert(nr, setid);
    }
    rules
}

/// The two BPF programs: the `EPERM` refusals, then the `ENOSYS` ones. `allowed` names
/// syscalls of [`BLOCKED`] the operator let an agent have.
pub(crate) fn programs(allowed: &[String]) -> [BpfProgram; 2] {
    let refused = |refusal| {
        BLOCKED
            .iter()
            .filter(move |b| b.refusal == refusal && !allowed.iter().any(|a| a == b.name))
            .map(|b| (b.nr, Vec::new()))
    };
    let mut eperm = argument_rules();
    eperm.extend(refused(Refusal::Eperm));
    let enosys: BTreeMap<_, _> = refused(Refusal::Enosys).collect();
    let compile = |rules, errno| -> BpfProgram {
        SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno),
            ARCH,
        )
        .and_then(TryInto::try_into)
        .expect("the sandbox filter compiles")
    };
    [
        compile(eperm, libc::EPERM as u32),
        compile(enosys, libc::ENOSYS as u32),
    ]
}

/// The filter as bwrap reads it (raw `sock_filter`s) for a sandbox granted `allowed`: the
/// `EPERM` program, then the `ENOSYS` one. Compiled once per set of grants.
pub(crate) fn program_bytes(allowed: &[String]) -> std::sync::Arc<[Vec<u8>; 2]> {
    type Cache = std::sync::Mutex<BTreeMap<Vec<String>, std::sync::Arc<[Vec<u8>; 2]>>>;
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    let mut key = allowed.to_vec();
    key.sort();
    key.dedup();
    let mut cache = CACHE.get_or_init(Cache::default).lock().expect("lock");
    cache
        .entry(key)
        .or_insert_with_key(|key| std::sync::Arc::new(programs(key).map(|p| as_bytes(&p))))
        .clone()
}

fn as_bytes(program: &BpfProgram) -> Vec<u8> {
    program
        .iter()
        .flat_map(|insn| {
            let mut raw = Vec::with_capacity(8);
            raw.extend_from_slice(&insn.code.to_ne_bytes());
            raw.push(insn.jt);
            raw.push(insn.jf);
            raw.extend_from_slice(&insn.k.to_ne_bytes());
            raw
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `probe` on a thread of its own under the sandbox filter (the control runs it on a
    /// thread without) and returns its errno, 0 for success.
    fn errno_under_filter(probe: fn() -> i64) -> i32 {
        std::thread::spawn(move || {
            // SAFETY: no_new_privs on this thread only, as seccomp requires.
            assert_eq!(
                unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
                0
            );
            for program in programs(&[]) {
                seccompiler::apply_filter(&program).unwrap();
            }
            errno_of(probe)
        })
        .join()
        .unwrap()
    }

    fn errno_on_host(probe: fn() -> i64) -> i32 {
        std::thread::spawn(move || errno_of(probe)).join().unwrap()
    }

    fn errno_of(probe: fn() -> i64) -> i32 {
        (-probe().min(0)) as i32
    }

    /// A probe's answer: 0 for success, else `-errno`, read before anything else runs.
    fn answer(result: i64) -> i64 {
        if result < 0 {
            -(std::io::Error::last_os_error().raw_os_error().unwrap() as i64)
        } else {
            0
        }
    }

    #[test]
    fn every_blocked_syscall_is_refused_under_the_filter_and_reaches_the_kernel_without_it() {
        for blocked in BLOCKED {
            let expected = match blocked.refusal {
                Refusal::Eperm => libc::EPERM,
                Refusal::Enosys => libc::ENOSYS,
            };
            let nr = blocked.nr;
            let under = std::thread::spawn(move || {
                // SAFETY: no_new_privs on this thread only, as seccomp requires.
                assert_eq!(
                    unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
                    0
                );
                for program in programs(&[]) {
                    seccompiler::apply_filter(&program).unwrap();
                }
                errno_of_nr(nr)
            })
            .join()
            .unwrap();
            assert_eq!(under, expected, "{} under the filter", blocked.name);
            // Control: without the filter the same call gets the kernel's own answer (vhangup
            // takes no argument to make it harmless, so it is not made on the host).
            if blocked.name != "vhangup" {
                let host = std::thread::spawn(move || errno_of_nr(nr)).join().unwrap();
                assert_ne!(
                    host, expected,
                    "{}: the control got the filter's answer",
                    blocked.name
                );
            }
        }
    }

    fn errno_of_nr(nr: i64) -> i32 {
        // SAFETY: every argument is an invalid fd (-1) or an unmapped address (8), which the
        // kernel rejects before it acts.
        let result = unsafe { libc::syscall(nr, -1i64, 8i64, 8i64, 8i64, 8i64, 8i64) };
        if result < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap()
        } else {
            0
        }
    }

    #[test]
    fn clone_may_not_make_namespaces_but_may_make_processes() {
        fn new_user_ns() -> i64 {
            // SAFETY: a clone with flags only and no stack; under the filter it never runs.
            let pid = unsafe {
                libc::syscall(
                    libc::SYS_clone,
                    libc::CLONE_NEWUSER as i64 | libc::SIGCHLD as i64,
                    0,
                    0,
                    0,
                    0,
                )
            };
            reap(answer(pid), pid)
        }
        fn plain_fork() -> i64 {
            // SAFETY: as fork(2); the child exits at once.
            let pid = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as i64, 0, 0, 0, 0) };
            reap(answer(pid), pid)
        }
        assert_eq!(errno_under_filter(new_user_ns), libc::EPERM);
        assert_eq!(errno_under_filter(plain_fork), 0);
        // Control: the host makes a user namespace with the same call.
        assert_eq!(errno_on_host(new_user_ns), 0);
    }

    fn reap(answer: i64, pid: i64) -> i64 {
        if pid == 0 {
            // SAFETY: the child leaves at once, running nothing of the parent's.
            unsafe { libc::_exit(0) };
        }
        if pid > 0 {
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), 0) };
        }
        answer
    }

    #[test]
    fn sockets_are_unix_inet_and_route_netlink_only() {
        fn open(domain: i32, protocol: i32) -> i64 {
            // SAFETY: socket(2) with plain values; the fd is closed at once.
            let fd =
                unsafe { libc::socket(domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, protocol) };
            let result = answer(fd as i64);
            if fd >= 0 {
                // SAFETY: our own fd.
                unsafe { libc::close(fd) };
            }
            result
        }
        fn vsock() -> i64 {
            open(libc::AF_VSOCK, 0)
        }
        fn audit_netlink() -> i64 {
            open(libc::AF_NETLINK, libc::NETLINK_AUDIT)
        }
        fn route_netlink() -> i64 {
            open(libc::AF_NETLINK, libc::NETLINK_ROUTE)
        }
        fn inet() -> i64 {
            open(libc::AF_INET, 0)
        }
        fn unix() -> i64 {
            open(libc::AF_UNIX, 0)
        }
        for probe in [vsock as fn() -> i64, audit_netlink] {
            assert_eq!(errno_under_filter(probe), libc::EPERM);
            assert_ne!(errno_on_host(probe), libc::EPERM, "control");
        }
        for probe in [route_netlink as fn() -> i64, inet, unix] {
            assert_eq!(errno_under_filter(probe), 0);
        }
    }

    #[test]
    fn no_file_becomes_setuid_or_setgid() {
        fn chmod_setuid() -> i64 {
            let dir = std::env::temp_dir().join(format!("ash-seccomp-{}", std::process::id()));
            let _ = std::fs::write(&dir, b"");
            let path = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
            // SAFETY: chmod of our own temp file.
            let r = answer(unsafe { libc::chmod(path.as_ptr(), 0o4755) } as i64);
            let _ = std::fs::remove_file(&dir);
            r
        }
        fn create_setgid_dir() -> i64 {
            let dir = std::env::temp_dir().join(format!("ash-seccomp-d-{}", std::process::id()));
            let path = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
            // SAFETY: mkdir of a temp path of our own.
            let r = answer(unsafe { libc::mkdir(path.as_ptr(), 0o2755) } as i64);
            let _ = std::fs::remove_dir(&dir);
            r
        }
        fn chmod_plain() -> i64 {
            let dir = std::env::temp_dir().join(format!("ash-seccomp-p-{}", std::process::id()));
            let _ = std::fs::write(&dir, b"");
            let path = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
            // SAFETY: chmod of our own temp file.
            let r = answer(unsafe { libc::chmod(path.as_ptr(), 0o755) } as i64);
            let _ = std::fs::remove_file(&dir);
            r
        }
        for probe in [chmod_setuid as fn() -> i64, create_setgid_dir] {
            assert_eq!(errno_under_filter(probe), libc::EPERM);
            assert_eq!(errno_on_host(probe), 0, "control");
        }
        assert_eq!(errno_under_filter(chmod_plain), 0);
    }

    #[test]
    fn personality_stays_linux() {
        fn no_randomize() -> i64 {
            // SAFETY: changes this thread's personality only; the thread ends right after.
            answer(unsafe { libc::personality(libc::ADDR_NO_RANDOMIZE as libc::c_ulong) as i64 })
        }
        fn query() -> i64 {
            // SAFETY: 0xffffffff only reads the personality.
            answer(unsafe { libc::personality(0xffff_ffff) as i64 })
        }
        assert_eq!(errno_under_filter(no_randomize), libc::EPERM);
        assert_eq!(errno_on_host(no_randomize), 0, "control");
        assert_eq!(errno_under_filter(query), 0);
    }

    #[test]
    fn an_operator_grant_lifts_exactly_its_block() {
        let under_grant = |nr: i64| {
            std::thread::spawn(move || {
                // SAFETY: no_new_privs on this thread only, as seccomp requires.
                assert_eq!(
                    unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
                    0
                );
                for program in programs(&["ptrace".to_owned()]) {
                    seccompiler::apply_filter(&program).unwrap();
                }
                errno_of_nr(nr)
            })
            .join()
            .unwrap()
        };
        assert_ne!(under_grant(libc::SYS_ptrace), libc::EPERM);
        assert_eq!(under_grant(libc::SYS_keyctl), libc::EPERM);
    }
}
