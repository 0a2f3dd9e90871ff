//! What this host can do for sandboxes, in plain words: `ash doctor` prints it and the
//! server logs it at start. Each finding says what works, what is degraded, and how to fix it.

use std::process::{Command, Stdio};

use std::path::Path;

use crate::limits;
use crate::users::{SandboxUsers, DEFAULT_RANGE};

/// bwrap making the smallest sandbox: every namespace unshared, running `true`.
fn sandbox_probe(bwrap: &Path) -> Command {
    let mut command = Command::new(bwrap);
    command
        .args([
            "--unshare-all",
            "--unshare-user",
            "--ro-bind",
            "/",
            "/",
            "--",
            "true",
        ])
        .stdin(Stdio::null());
    command
}

/// Who the sandboxes run as, and for a root server whether bwrap works as such a uid.
fn uid_finding(bwrap: &Path, users: Result<&SandboxUsers, &str>) -> Finding {
    let what = "sandbox uids";
    let users = match users {
        Ok(users) => users,
        Err(e) => {
            return Finding {
                what,
                verdict: Verdict::Broken,
                detail: e.to_owned(),
                fix: format!("give sandboxes a range of their own: sandbox_uids = \"{DEFAULT_RANGE}\" in the settings file (or ASH_SANDBOX_UIDS), reserved in /etc/subuid as ash:{DEFAULT_RANGE}"),
            }
        }
    };
    let SandboxUsers::PerSandbox { range, source, .. } = users else {
        return Finding {
            what,
            verdict: Verdict::Ok,
            detail: users.describe(),
            fix: String::new(),
        };
    };
    use std::os::unix::process::CommandExt;
    let probe = sandbox_probe(bwrap)
        .uid(range.first)
        .gid(range.first)
        .stdin(Stdio::null())
        .output();
    match probe {
        Ok(out) if out.status.success() => Finding {
            what,
            verdict: Verdict::Ok,
            detail: users.describe(),
            fix: if *source == "the built-in default" {
                format!("reserve the range so no other tool hands it out: echo ash:{range} >> /etc/subuid")
            } else {
                String::new()
            },
        },
        Ok(out) => Finding {
            what,
            verdict: Verdict::Broken,
            detail: format!(
                "bwrap cannot make a sandbox as uid {}: {}",
                range.first,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            fix: "allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1; on Ubuntu kernel.apparmor_restrict_unprivileged_userns=0 or an AppArmor profile for bwrap)".into(),
        },
        Err(e) => Finding {
            what,
            verdict: Verdict::Broken,
            detail: format!("cannot start bwrap as uid {}: {e}", range.first),
            fix: String::new(),
        },
    }
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Works, with less protection or capacity than it should have.
    Degraded,
    /// Sandboxes cannot run.
    Broken,
}

/// One check of the host.
#[derive(Debug, Clone)]
pub struct Finding {
    pub what: &'static str,
    pub verdict: Verdict,
    pub detail: String,
    /// What to do about it; empty when nothing needs doing.
    pub fix: String,
}

/// Free and total bytes of a filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub free: u64,
    pub total: u64,
}

impl Space {
    /// The filesystem holding `path`.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let path = crate::disk::c_path(path)?;
        // SAFETY: statvfs writes only the struct we pass; the path is NUL-terminated.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let block = stat.f_frsize as u64;
        Ok(Self {
            free: stat.f_bavail as u64 * block,
            total: stat.f_blocks as u64 * block,
        })
    }

    /// Running out: less than a tenth left.
    pub fn low(&self) -> bool {
        self.free < self.total / 10
    }
}

/// How much room the data dir's filesystem has left.
fn space_finding(data_dir: &Path) -> Finding {
    const MIB: u64 = 1 << 20;
    let what = "disk space";
    // Before the first start the data dir may not exist yet: its nearest folder that does.
    let there = data_dir
        .ancestors()
        .find(|dir| dir.exists())
        .unwrap_or(data_dir);
    match Space::of(there) {
        Ok(space) => Finding {
            what,
            verdict: if space.low() {
                Verdict::Degraded
            } else {
                Verdict::Ok
            },
            detail: format!(
                "{} MiB free of {} MiB where the data dir is ({}){}",
                space.free / MIB,
                space.total / MIB,
                data_dir.display(),
                if space.low() {
                    ": less than a tenth left; once it is full, writes get 507 until space returns"
                } else {
                    ""
                }
            ),
            fix: match space.low() {
                true => {
                    "free space there, or move the data dir (ASH_DATA_DIR) to a larger filesystem"
                        .into()
                }
                false => String::new(),
            },
        },
        Err(e) => Finding {
            what,
            verdict: Verdict::Degraded,
            detail: format!(
                "cannot read the free space where the data dir is ({}): {e}",
                data_dir.display()
            ),
            fix: "check the data dir's path and its permissions".into(),
        },
    }
}

/// Checks bwrap, user namespaces, the sandboxes' host uids, the syscall filter, cgroups, the
/// bridge binary, the open-files limit and the data dir's free space. `users` is what the
/// server would use (an error says why it refuses to start sandboxes). Blocking (it starts
/// bwrap): call it from `spawn_blocking`.
pub fn check(
    bwrap: &Path,
    bridge: &Path,
    users: Result<&SandboxUsers, &str>,
    quotas: Result<crate::disk::Quota, String>,
    data_dir: &Path,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let version = Command::new(bwrap).arg("--version").output();
    let (verdict, detail, fix) = match version {
        Ok(out) if out.status.success() => (
            Verdict::Ok,
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::new(),
        ),
        _ => (
            Verdict::Broken,
            format!("cannot run {}", bwrap.display()),
            "install it: apt-get install bubblewrap".to_owned(),
        ),
    };
    let bwrap_runs = verdict == Verdict::Ok;
    findings.push(Finding {
        what: "bubblewrap",
        verdict,
        detail,
        fix,
    });

    if bwrap_runs {
        let probe = sandbox_probe(bwrap).output();
        findings.push(match probe {
            Ok(out) if out.status.success() => Finding {
                what: "user namespaces",
                verdict: Verdict::Ok,
                detail: "bwrap can unshare every namespace, the user namespace included".into(),
                fix: String::new(),
            },
            Ok(out) => Finding {
                what: "user namespaces",
                verdict: Verdict::Broken,
                detail: format!("bwrap cannot create a sandbox: {}", String::from_utf8_lossy(&out.stderr).trim()),
                fix: "allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1; on Ubuntu also kernel.apparmor_restrict_unprivileged_userns=0) or run the server as root".into(),
            },
            Err(e) => Finding { what: "user namespaces", verdict: Verdict::Broken, detail: e.to_string(), fix: String::new() },
        });
    }

    findings.push(uid_finding(bwrap, users));
    findings.push(Finding {
        what: "syscall filter",
        verdict: Verdict::Ok,
        detail: format!(
            "every sandbox runs under a seccomp filter refusing {} syscalls outright (keyrings, bpf, perf, io_uring, mounts and namespaces, modules, ptrace, …) and namespace clones, odd socket families and setuid modes",
            crate::seccomp::BLOCKED.len()
        ),
        fix: String::new(),
    });

    findings.push(match quotas {
        Ok(quota) => Finding {
            what: "workspace quotas",
            verdict: Verdict::Ok,
            detail: format!("each workspace is a filesystem of its own ({} MiB, {} files), so an agent is stopped at its quota and cannot fill the data dir's disk", quota.bytes >> 20, quota.inodes),
            fix: String::new(),
        },
        Err(why) => Finding {
            what: "workspace quotas",
            verdict: Verdict::Degraded,
            detail: format!("not enforced: {why}; a workspace is bounded only by the per-file size limit and the 512 MiB limit of fork, snapshot and restore, so an agent can fill the data dir's disk"),
            fix: "run the server as root on a host with loop devices and mkfs.ext4, or put the data dir on a filesystem of its own so a full workspace cannot fill the host's".into(),
        },
    });

    findings.push(match limits::Layout::detect() {
        Some(limits::Layout::V1) => Finding {
            what: "resource limits",
            verdict: Verdict::Ok,
            detail: "cgroup v1 memory, pids and cpu controllers are writable: memory, processes and CPU are enforced per sandbox, plus rlimits".into(),
            fix: String::new(),
        },
        Some(limits::Layout::V2(base)) => Finding {
            what: "resource limits",
            verdict: Verdict::Ok,
            detail: format!("cgroup v2 is delegated to the server at {}: memory, processes and CPU are enforced per sandbox, plus rlimits", base.display()),
            fix: String::new(),
        },
        None => Finding {
            what: "resource limits",
            verdict: Verdict::Degraded,
            detail: "no cgroups this process may manage (neither writable v1 memory/pids controllers nor a delegated v2 cgroup offering memory and pids and holding only the server): sandboxes get rlimits (file size, open files) only, so a fork bomb or memory bomb can hurt the host".into(),
            fix: "on a cgroup v2 host run the server with a delegated cgroup (systemd: Delegate=yes in its unit, or systemd-run -p Delegate=yes ash start), or as root in its own cgroup namespace; on a v1 host run it as root".into(),
        },
    });

    findings.push(if bridge.is_file() {
        Finding {
            what: "bridge binary",
            verdict: Verdict::Ok,
            detail: bridge.display().to_string(),
            fix: String::new(),
        }
    } else {
        Finding {
            what: "bridge binary",
            verdict: Verdict::Broken,
            detail: format!("{} is missing", bridge.display()),
            fix: "build it (cargo build --release -p ash-cli) or set ASH_BRIDGE_BIN".into(),
        }
    });

    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct we pass.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    findings.push(if limit.rlim_max >= 65_536 {
        Finding { what: "open files", verdict: Verdict::Ok, detail: format!("hard limit {}", limit.rlim_max), fix: String::new() }
    } else {
        Finding {
            what: "open files",
            verdict: Verdict::Degraded,
            detail: format!("hard limit {}: each sandbox and each stream holds descriptors, so this caps the node", limit.rlim_max),
            fix: "raise it (LimitNOFILE= in the systemd unit, or nofile in /etc/security/limits.conf)".into(),
        }
    });
    findings.push(space_finding(data_dir));
    findings
}
