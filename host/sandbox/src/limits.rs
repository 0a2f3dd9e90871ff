//! Resource limits for one sandbox: memory, processes and CPU through cgroup v1 controllers
//! where the host mounts them (pure cgroup v2 hosts are not handled yet: they get rlimits
//! only), and file size, open files and core dumps through rlimits, always.
//!
//! The bwrap process joins its cgroups between fork and exec (it writes `0` to each
//! `cgroup.procs`, opened beforehand), so nothing in the sandbox ever runs outside them. A hit
//! (an OOM kill, a refused fork) is read back from the cgroup's counters and reported by
//! [`Cgroups::new_hits`]. Without writable cgroups the sandbox still starts, with rlimits only.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

/// What one sandbox may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub max_processes: u64,
    /// 100 is one core.
    pub cpu_percent: u64,
    pub file_size_bytes: u64,
    pub open_files: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 2 << 30,
            max_processes: 256,
            cpu_percent: 100,
            file_size_bytes: 1 << 30,
            open_files: 1024,
        }
    }
}

/// A limit a sandbox ran into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitHit {
    /// `memory` (the kernel killed a process for memory) or `pids` (a fork was refused).
    pub kind: &'static str,
    /// The limit in force: bytes or processes.
    pub limit: u64,
    /// How many times, since the last report.
    pub count: u64,
}

const V1: &str = "/sys/fs/cgroup";
const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];
/// Every server's cgroups live under this folder of each controller.
const ROOT: &str = "ash";
/// Empty cgroups younger than this may belong to a sandbox another server is starting.
const SWEEP_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// The cgroups of one sandbox; removed on drop (once its processes are gone).
pub(crate) struct Cgroups {
    dirs: Vec<PathBuf>,
    procs: Vec<File>,
    limits: Limits,
    seen: std::sync::Mutex<(u64, u64)>,
}

impl Cgroups {
    /// Creates the sandbox's cgroups; `Ok(None)` when the host offers none this process may use.
    pub(crate) fn create(group: &str, id: &str, limits: Limits) -> io::Result<Option<Self>> {
        if !available() {
            return Ok(None);
        }
        let mut cgroups = Self {
            dirs: Vec::new(),
            procs: Vec::new(),
            limits,
            seen: Default::default(),
        };
        let quota = (limits.cpu_percent * 1000).to_string();
        let memory = limits.memory_bytes.to_string();
        let pids = limits.max_processes.to_string();
        let settings: [(&str, Vec<(&str, &str)>); 3] = [
            (
                "memory",
                vec![
                    ("memory.limit_in_bytes", &memory),
                    ("memory.memsw.limit_in_bytes", &memory),
                    ("memory.swappiness", "0"),
                ],
            ),
            ("pids", vec![("pids.max", &pids)]),
            (
                "cpu",
                vec![
                    ("cpu.cfs_period_us", "100000"),
                    ("cpu.cfs_quota_us", &quota),
                ],
            ),
        ];
        for (controller, files) in settings {
            let dir = Path::new(V1)
                .join(controller)
                .join(ROOT)
                .join(group)
                .join(id);
            match fs::create_dir_all(&dir) {
                Ok(()) => {}
                Err(e)
                    if e.kind() == io::ErrorKind::PermissionDenied
                        || e.raw_os_error() == Some(libc::EROFS) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
            cgroups.dirs.push(dir.clone());
            for (file, value) in files {
                let path = dir.join(file);
                // Optional knobs (swap accounting, cpu) may be absent; the core ones are not.
                if path.exists() {
                    fs::write(&path, value)?;
                } else if matches!(file, "memory.limit_in_bytes" | "pids.max") {
                    return Err(io::Error::other(format!("{} is missing", path.display())));
                }
            }
            cgroups.procs.push(
                OpenOptions::new()
                    .write(true)
                    .open(dir.join("cgroup.procs"))?,
            );
        }
        Ok(Some(cgroups))
    }

    /// The open `cgroup.procs` files a child writes `0` to, to join before it execs.
    pub(crate) fn join_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// Limits hit since the last call.
    pub(crate) fn new_hits(&self) -> Vec<LimitHit> {
        let counter = |controller: &str, file: &str, key: &str| -> u64 {
            let path = self
                .dirs
                .iter()
                .find(|d| d.starts_with(Path::new(V1).join(controller)));
            let text = path
                .and_then(|d| fs::read_to_string(d.join(file)).ok())
                .unwrap_or_default();
            text.lines()
                .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
                .unwrap_or(0)
        };
        let ooms = counter("memory", "memory.oom_control", "oom_kill ");
        let forks = counter("pids", "pids.events", "max ");
        let mut seen = self.seen.lock().expect("lock");
        let mut hits = Vec::new();
        if ooms > seen.0 {
            hits.push(LimitHit {
                kind: "memory",
                limit: self.limits.memory_bytes,
                count: ooms - seen.0,
            });
        }
        if forks > seen.1 {
            hits.push(LimitHit {
                kind: "pids",
                limit: self.limits.max_processes,
                count: forks - seen.1,
            });
        }
        *seen = (ooms, forks);
        hits
    }
}

impl Cgroups {
    /// Kills every process still in the sandbox's cgroups, escaped or not.
    pub(crate) fn kill_all(&self) {
        for dir in &self.dirs {
            for pid in pids(dir) {
                // SAFETY: sends a signal; touches no memory.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }

    /// True once no process is left in the sandbox's cgroups.
    pub(crate) fn is_empty(&self) -> bool {
        self.dirs.iter().all(|dir| pids(dir).is_empty())
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in &self.dirs {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Whether this process can create sandbox cgroups (v1 `memory` and `pids`, writable).
pub(crate) fn available() -> bool {
    ["memory", "pids"].iter().all(|controller| {
        let dir = Path::new(V1).join(controller);
        let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .expect("no NUL in a fixed path");
        // SAFETY: access(2) only reads the path string.
        dir.join("cgroup.procs").exists() && unsafe { libc::access(path.as_ptr(), libc::W_OK) } == 0
    })
}

/// Removes empty cgroups that servers left behind (a crash, a kill): every sandbox cgroup of
/// any server that has no process and is older than [`SWEEP_AGE`], then empty server folders.
pub(crate) fn sweep() {
    let old = |path: &Path| {
        fs::metadata(path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > SWEEP_AGE))
    };
    let dirs = |path: &Path| -> Vec<PathBuf> {
        let entries = fs::read_dir(path).map(|e| e.flatten().map(|e| e.path()).collect::<Vec<_>>());
        entries
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.is_dir())
            .collect()
    };
    for controller in CONTROLLERS {
        for group in dirs(&Path::new(V1).join(controller).join(ROOT)) {
            for sandbox in dirs(&group) {
                if old(&sandbox) && pids(&sandbox).is_empty() {
                    let _ = fs::remove_dir(&sandbox);
                }
            }
            if old(&group) {
                let _ = fs::remove_dir(&group);
            }
        }
    }
}

fn pids(dir: &Path) -> Vec<i32> {
    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    procs
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Sets the rlimits for the calling process; only async-signal-safe calls, for `pre_exec`.
pub(crate) fn apply_rlimits(limits: &Limits) -> io::Result<()> {
    let set = |resource, value: u64| {
        let limit = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: setrlimit reads the struct we pass and nothing else.
        if unsafe { libc::setrlimit(resource, &limit) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    set(libc::RLIMIT_FSIZE, limits.file_size_bytes)?;
    set(libc::RLIMIT_NOFILE, limits.open_files)?;
    set(libc::RLIMIT_CORE, 0)
}
