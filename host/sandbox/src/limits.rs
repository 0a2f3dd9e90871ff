//! Resource limits for one sandbox: memory, processes and CPU through cgroups — v1
//! controllers where the host mounts them, or the v2 cgroup delegated to the server — and
//! file size, open files and core dumps through rlimits, always.
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
    /// `Memory` (the kernel killed a process for memory) or `Pids` (a fork was refused).
    pub kind: ash_core::LimitKind,
    /// The limit in force: bytes or processes.
    pub limit: u64,
    /// How many times, since the last report.
    pub count: u64,
}

const CGROUP_FS: &str = "/sys/fs/cgroup";
/// The controllers a v1 host mounts one tree each for.
const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];
/// Every server's cgroups live under this folder (of each v1 controller, or of the v2 cgroup
/// delegated to the server).
const ROOT: &str = "ash";
/// Empty cgroups younger than this may belong to a sandbox another server is starting.
const SWEEP_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// Holds a server's group of sandboxes to `budget` bytes (swap included where the host
/// accounts it), writing only when the limit differs.
fn cap_memory(group: &Path, budget: u64) -> io::Result<()> {
    let value = budget.to_string();
    for knob in [
        "memory.limit_in_bytes",
        "memory.memsw.limit_in_bytes",
        "memory.max",
    ] {
        let path = group.join(knob);
        match fs::read_to_string(&path) {
            Ok(now) if now.trim() != value => fs::write(&path, &value)?,
            _ => {}
        }
    }
    Ok(())
}

/// The memory all of a server's sandboxes may share by default: the host's memory less a tenth
/// (at least 1 GiB) for the server and the host.
pub fn default_memory_budget() -> u64 {
    let total_kib: u64 = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    let total = total_kib * 1024;
    total
        .saturating_sub((total / 10).max(1 << 30))
        .max(256 << 20)
}

/// Knobs a sandbox cgroup must have; the others (swap accounting, CPU) may be absent.
const REQUIRED: [&str; 3] = ["memory.limit_in_bytes", "memory.max", "pids.max"];

/// Which cgroup hierarchy this host gives the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Layout {
    /// cgroup v1: a tree per controller, `/sys/fs/cgroup/<controller>/ash/…`.
    V1,
    /// cgroup v2: one tree, under the cgroup delegated to this server (`<base>/ash/…`).
    V2(PathBuf),
}

impl Layout {
    /// The host's usable layout, found once: `None` when there are no cgroups this process may
    /// manage (then sandboxes get rlimits only).
    pub(crate) fn detect() -> Option<&'static Layout> {
        static LAYOUT: std::sync::OnceLock<Option<Layout>> = std::sync::OnceLock::new();
        LAYOUT
            .get_or_init(|| {
                if Path::new(CGROUP_FS).join("cgroup.controllers").exists() {
                    delegated_v2().map(Layout::V2)
                } else {
                    v1_writable().then_some(Layout::V1)
                }
            })
            .as_ref()
    }

    /// The folders under which every server keeps its sandboxes' cgroups.
    fn roots(&self) -> Vec<PathBuf> {
        match self {
            Self::V1 => CONTROLLERS
                .iter()
                .map(|c| Path::new(CGROUP_FS).join(c).join(ROOT))
                .collect(),
            Self::V2(base) => vec![base.join(ROOT)],
        }
    }

    /// Each cgroup folder of one sandbox with the knobs to set in it.
    fn settings(
        &self,
        group: &str,
        id: &str,
        limits: Limits,
    ) -> Vec<(PathBuf, Vec<(&'static str, String)>)> {
        let memory = limits.memory_bytes.to_string();
        let pids = limits.max_processes.to_string();
        let quota = limits.cpu_percent * 1000;
        match self {
            Self::V1 => {
                let dir = |c: &str| Path::new(CGROUP_FS).join(c).join(ROOT).join(group).join(id);
                vec![
                    (
                        dir("memory"),
                        vec![
                            ("memory.limit_in_bytes", memory.clone()),
                            ("memory.memsw.limit_in_bytes", memory),
                            ("memory.swappiness", "0".into()),
                        ],
                    ),
                    (dir("pids"), vec![("pids.max", pids)]),
                    (
                        dir("cpu"),
                        vec![
                            ("cpu.cfs_period_us", "100000".into()),
                            ("cpu.cfs_quota_us", quota.to_string()),
                        ],
                    ),
                ]
            }
            Self::V2(base) => vec![(
                base.join(ROOT).join(group).join(id),
                vec![
                    ("memory.max", memory),
                    ("pids.max", pids),
                    ("memory.swap.max", "0".into()),
                    ("cpu.max", format!("{quota} 100000")),
                ],
            )],
        }
    }

    /// Where the OOM-kill and refused-fork counters are: (file, key) per controller.
    fn counters(&self) -> [(&'static str, &'static str, &'static str); 2] {
        match self {
            Self::V1 => [
                ("memory", "memory.oom_control", "oom_kill "),
                ("pids", "pids.events", "max "),
            ],
            Self::V2(_) => [
                ("", "memory.events", "oom_kill "),
                ("", "pids.events", "max "),
            ],
        }
    }
}

/// The cgroups of one sandbox; removed on drop (once its processes are gone).
pub(crate) struct Cgroups {
    layout: &'static Layout,
    dirs: Vec<PathBuf>,
    procs: Vec<File>,
    limits: Limits,
    seen: std::sync::Mutex<(u64, u64)>,
}

impl Cgroups {
    /// Creates the sandbox's cgroups; `Ok(None)` when the host offers none this process may use.
    /// The server's own group (holding all its sandboxes) is held to `budget` bytes of memory:
    /// however the sandboxes' own limits add up, together they never take more.
    pub(crate) fn create(
        group: &str,
        id: &str,
        limits: Limits,
        budget: u64,
    ) -> io::Result<Option<Self>> {
        let Some(layout) = Layout::detect() else {
            return Ok(None);
        };
        let mut cgroups = Self {
            layout,
            dirs: Vec::new(),
            procs: Vec::new(),
            limits,
            seen: Default::default(),
        };
        if let Layout::V2(base) = layout {
            claim_v2(base)?;
            // v2 hands controllers down level by level: `ash/` and `ash/<group>/` pass them on.
            for dir in [base.join(ROOT), base.join(ROOT).join(group)] {
                fs::create_dir_all(&dir)?;
                delegate(&dir)?;
            }
        }
        for (dir, knobs) in layout.settings(group, id, limits) {
            if let Some(parent) = dir
                .parent()
                .filter(|_| knobs.iter().any(|(k, _)| k.starts_with("memory.")))
            {
                if fs::create_dir_all(parent).is_ok() {
                    cap_memory(parent, budget)?;
                }
            }
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
            for (file, value) in knobs {
                let path = dir.join(file);
                if path.exists() {
                    fs::write(&path, value)?;
                } else if REQUIRED.contains(&file) {
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
        let [ooms, forks] = self.layout.counters().map(|(controller, file, key)| {
            let dir = self.dirs.iter().find(|d| {
                controller.is_empty() || d.starts_with(Path::new(CGROUP_FS).join(controller))
            });
            let text = dir
                .and_then(|d| fs::read_to_string(d.join(file)).ok())
                .unwrap_or_default();
            counter(&text, key)
        });
        let mut seen = self.seen.lock().expect("lock");
        let mut hits = Vec::new();
        if ooms > seen.0 {
            hits.push(LimitHit {
                kind: ash_core::LimitKind::Memory,
                limit: self.limits.memory_bytes,
                count: ooms - seen.0,
            });
        }
        if forks > seen.1 {
            hits.push(LimitHit {
                kind: ash_core::LimitKind::Pids,
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

/// The value after `key` on its line of a cgroup counters file (`oom_kill 3`), or 0.
fn counter(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// Whether this process can create sandbox cgroups here (v1 memory and pids writable, or a
/// delegated v2 cgroup with both controllers).
pub(crate) fn available() -> bool {
    Layout::detect().is_some()
}

fn v1_writable() -> bool {
    ["memory", "pids"].iter().all(|controller| {
        let dir = Path::new(CGROUP_FS).join(controller);
        dir.join("cgroup.procs").exists() && writable(&dir)
    })
}

fn writable(path: &Path) -> bool {
    let Ok(path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: access(2) only reads the path string.
    unsafe { libc::access(path.as_ptr(), libc::W_OK) == 0 }
}

/// This process's v2 cgroup (the `0::` line of `/proc/self/cgroup`), relative to the mount.
fn own_v2_cgroup(proc_self_cgroup: &str) -> Option<&str> {
    proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().trim_start_matches('/'))
}

/// The v2 cgroup this server may manage: its own, when it is delegated to it (systemd
/// `Delegate=yes`, or the root of a container's cgroup namespace) — writable, offering memory
/// and pids, and holding no process but this one, since v2 lets a cgroup pass controllers down
/// only while no process sits in it ([`claim_v2`] then moves the server into a leaf). Only
/// looks: `ash doctor` calls it too.
fn delegated_v2() -> Option<PathBuf> {
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    let base = Path::new(CGROUP_FS).join(own_v2_cgroup(&own)?);
    let offered = fs::read_to_string(base.join("cgroup.controllers")).ok()?;
    if !["memory", "pids"]
        .iter()
        .all(|c| offered.split_whitespace().any(|o| o == *c))
    {
        return None;
    }
    let me = std::process::id().to_string();
    let procs = fs::read_to_string(base.join("cgroup.procs")).ok()?;
    let alone = base == Path::new(CGROUP_FS) || procs.lines().all(|pid| pid.trim() == me);
    (alone && writable(&base)).then_some(base)
}

/// Moves this server into the leaf `<base>/ash-server` and lets `<base>` pass memory and pids
/// down, as a delegated service is expected to; once per process.
fn claim_v2(base: &Path) -> io::Result<()> {
    static CLAIMED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let claimed = CLAIMED.get_or_init(|| {
        let claim = || -> io::Result<()> {
            if base != Path::new(CGROUP_FS) {
                let leaf = base.join("ash-server");
                fs::create_dir_all(&leaf)?;
                fs::write(leaf.join("cgroup.procs"), "0")?;
            }
            delegate(base)
        };
        claim().map_err(|e| format!("cannot take over cgroup {}: {e}", base.display()))
    });
    claimed.clone().map_err(io::Error::other)
}

/// Lets `dir`'s children use memory and pids (and cpu where `dir` has it).
fn delegate(dir: &Path) -> io::Result<()> {
    let control = dir.join("cgroup.subtree_control");
    fs::write(&control, "+memory +pids")?;
    let _ = fs::write(&control, "+cpu");
    Ok(())
}

/// Removes empty cgroups that servers left behind (a crash, a kill): every sandbox cgroup of
/// any server that has no process and is older than [`SWEEP_AGE`], then empty server folders.
pub(crate) fn sweep() {
    let Some(layout) = Layout::detect() else {
        return;
    };
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
    for root in layout.roots() {
        for group in dirs(&root) {
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
/// Sets the sandbox's rlimits, and `nproc` as its process limit (for a sandbox with a uid of
/// its own: the kernel counts processes per uid).
pub(crate) fn apply_rlimits(limits: &Limits, nproc: Option<u64>) -> io::Result<()> {
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
    if let Some(nproc) = nproc {
        set(libc::RLIMIT_NPROC, nproc)?;
    }
    set(libc::RLIMIT_CORE, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v2_cgroup_is_read_from_proc_self_cgroup() {
        let hybrid = "4:memory:/x\n0::/system.slice/ash.service\n";
        assert_eq!(own_v2_cgroup(hybrid), Some("system.slice/ash.service"));
        assert_eq!(own_v2_cgroup("0::/\n"), Some(""));
        assert_eq!(own_v2_cgroup("4:memory:/x\n"), None);
    }

    #[test]
    fn v2_sandboxes_get_one_cgroup_with_every_limit() {
        let layout = Layout::V2(PathBuf::from("/sys/fs/cgroup/ash.service"));
        let limits = Limits {
            memory_bytes: 1 << 20,
            max_processes: 64,
            cpu_percent: 50,
            ..Limits::default()
        };
        let settings = layout.settings("ash-1", "s1", limits);
        assert_eq!(settings.len(), 1);
        assert_eq!(
            settings[0].0,
            Path::new("/sys/fs/cgroup/ash.service/ash/ash-1/s1")
        );
        let knobs: Vec<(&str, &str)> = settings[0]
            .1
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        assert_eq!(
            knobs,
            [
                ("memory.max", "1048576"),
                ("pids.max", "64"),
                ("memory.swap.max", "0"),
                ("cpu.max", "50000 100000"),
            ]
        );
        assert_eq!(
            layout.roots(),
            [PathBuf::from("/sys/fs/cgroup/ash.service/ash")]
        );
    }

    #[test]
    fn counters_are_read_by_key() {
        let events = "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n";
        assert_eq!(counter(events, "oom_kill "), 1);
        assert_eq!(counter(events, "max "), 2);
        assert_eq!(counter("", "max "), 0);
    }
}
