//! Which host uid a sandbox runs as. bwrap maps the agent's uid 1000 onto the uid that
//! starts bwrap, so a server run as root would hand every agent host root (with `/proc/sys`
//! writable, that is a host-root escape through `kernel.core_pattern`). So:
//!
//! - a server run as **root** gives each sandbox a uid of its own from a dedicated range
//!   (`sandbox_uids`, else the `ash` line of `/etc/subuid`, else [`DEFAULT_RANGE`]) and starts
//!   bwrap as that uid; the workspace is owned by it. A range that holds uid 0 or any account of
//!   `/etc/passwd` is refused, so no sandbox can map onto a privileged or real user;
//! - a server run as an **unprivileged** user starts bwrap as itself: every sandbox maps onto
//!   that uid, which holds no privilege on the host.
//!
//! A uid is claimed by taking an exclusive `flock` on `/run/ash/uids/<uid>`: two servers on one
//! host never hand the same uid to two live sandboxes, and a crashed server's claims vanish
//! with its process.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

/// The uids a root server uses when nothing else is configured (reserve them in
/// `/etc/subuid` as `ash:1000000:65536` so no other tool hands them out).
pub const DEFAULT_RANGE: UidRange = UidRange {
    first: 1_000_000,
    count: 65_536,
};
/// Where a root server keeps its claims and the mount points it stages sandboxes through.
const RUN_DIR: &str = "/run/ash";

/// A block of host uids (and the gids of the same numbers), as in `/etc/subuid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    pub first: u32,
    pub count: u32,
}

impl std::fmt::Display for UidRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.first, self.count)
    }
}

impl std::str::FromStr for UidRange {
    type Err = String;

    /// `FIRST:COUNT`, the form of `/etc/subuid`.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a uid range: write FIRST:COUNT, e.g. 1000000:65536");
        let (first, count) = text.split_once(':').ok_or_else(bad)?;
        let range = UidRange {
            first: first.trim().parse().map_err(|_| bad())?,
            count: count.trim().parse().map_err(|_| bad())?,
        };
        if range.count == 0 || range.first.checked_add(range.count).is_none() {
            return Err(bad());
        }
        Ok(range)
    }
}

impl UidRange {
    fn contains(&self, uid: u32) -> bool {
        uid >= self.first && uid - self.first < self.count
    }

    /// Refuses a range that holds uid 0 or an account of `passwd` (the text of `/etc/passwd`).
    fn check(&self, passwd: &str) -> Result<(), String> {
        let fix = "set sandbox_uids (or ASH_SANDBOX_UIDS) to a block no account uses, e.g. 1000000:65536, and reserve it in /etc/subuid";
        if self.contains(0) {
            return Err(format!(
                "sandbox uid range {self} holds uid 0: sandboxes would run as host root; {fix}"
            ));
        }
        for line in passwd.lines() {
            let mut fields = line.split(':');
            let (Some(name), Some(uid)) = (fields.next(), fields.nth(1)) else {
                continue;
            };
            if uid.parse().is_ok_and(|uid| self.contains(uid)) {
                return Err(format!(
                    "sandbox uid range {self} holds the uid of account {name:?}: its sandboxes could touch that account's files; {fix}"
                ));
            }
        }
        Ok(())
    }
}

/// The `ash` line of `/etc/subuid`'s text, if there is one.
fn subuid_range(subuid: &str) -> Option<UidRange> {
    subuid.lines().find_map(|line| {
        let (user, range) = line.split_once(':')?;
        (user == "ash").then(|| range.parse().ok())?
    })
}

/// Who this server's sandboxes run as on the host.
#[derive(Debug)]
pub enum SandboxUsers {
    /// The server is root: one uid per sandbox from the range; bwrap is started through the
    /// staging mount points under `/run/ash/mnt` (the data dir may not be reachable by that uid).
    PerSandbox {
        range: UidRange,
        /// Where the range came from, for `ash doctor`.
        source: &'static str,
        next: AtomicU32,
    },
    /// The server is unprivileged: sandboxes run as its own uid.
    Server(u32),
}

impl SandboxUsers {
    /// The setting for this process: per-sandbox uids when it is root, else its own uid.
    /// Fails (naming the fix) when root has no range that is safe to use.
    pub fn for_this_process(configured: Option<UidRange>) -> Result<Self, String> {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            return Ok(Self::Server(euid));
        }
        let subuid = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
        let (range, source) = match (configured, subuid_range(&subuid)) {
            (Some(range), _) => (range, "sandbox_uids"),
            (None, Some(range)) => (range, "/etc/subuid (ash)"),
            (None, None) => (DEFAULT_RANGE, "the built-in default"),
        };
        range.check(&std::fs::read_to_string("/etc/passwd").unwrap_or_default())?;
        prepare_run_dir()
            .map_err(|e| format!("cannot prepare {RUN_DIR} for sandboxes of their own uid: {e}"))?;
        Ok(Self::PerSandbox {
            range,
            source,
            next: AtomicU32::new(std::process::id() % range.count),
        })
    }

    /// In plain words, for `ash doctor` and the start-up log.
    pub fn describe(&self) -> String {
        match self {
            Self::PerSandbox { range, source, .. } => format!(
                "each sandbox runs as a host uid of its own, from {}..={} ({source})",
                range.first,
                range.first + (range.count - 1)
            ),
            Self::Server(uid) => format!(
                "sandboxes run as the server's own unprivileged uid {uid}; run the server as root for a uid per sandbox"
            ),
        }
    }

    /// A uid for one sandbox: `preferred` (the owner of its workspace) when it is free and in
    /// the range, else the next free one. `None` for an unprivileged server.
    pub(crate) fn claim(&self, preferred: Option<u32>) -> io::Result<Option<UidClaim>> {
        let Self::PerSandbox { range, next, .. } = self else {
            return Ok(None);
        };
        if let Some(uid) = preferred.filter(|uid| range.contains(*uid)) {
            if let Some(claim) = UidClaim::try_take(uid)? {
                return Ok(Some(claim));
            }
        }
        for _ in 0..range.count {
            let offset = next.fetch_add(1, Ordering::Relaxed) % range.count;
            if let Some(claim) = UidClaim::try_take(range.first + offset)? {
                return Ok(Some(claim));
            }
        }
        Err(io::Error::other(format!(
            "every uid of the sandbox range {range} is in use"
        )))
    }
}

/// A uid held by one live sandbox; released when dropped.
#[derive(Debug)]
pub(crate) struct UidClaim {
    pub(crate) uid: u32,
    _lock: File,
}

impl UidClaim {
    fn try_take(uid: u32) -> io::Result<Option<Self>> {
        let path = Path::new(RUN_DIR).join("uids").join(uid.to_string());
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(Self { uid, _lock: lock }));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(e)
        }
    }
}

/// The staging mount points a root server binds a sandbox's workspace, model-proxy folder and
/// bridge onto, in the sandbox's own mount namespace, before it becomes the sandbox's uid
/// (which may not be able to reach the data dir).
pub(crate) const STAGE_WORKSPACE: &str = "/run/ash/mnt/workspace";
pub(crate) const STAGE_RUN: &str = "/run/ash/mnt/run";
pub(crate) const STAGE_BRIDGE: &str = "/run/ash/mnt/bridge";

impl SandboxUsers {
    /// The bridge binary as sandboxes get it: for a root server a copy of its own in
    /// `/run/ash/bin` (named by the server's pid; copies of servers no longer running are
    /// removed), so a sandbox's mount table names no build tree or install path of the host;
    /// the binary itself otherwise.
    pub fn bridge_for_sandboxes(&self, bridge: &Path) -> io::Result<std::path::PathBuf> {
        if matches!(self, Self::Server(_)) {
            return Ok(bridge.to_owned());
        }
        let dir = Path::new(RUN_DIR).join("bin");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)?;
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix("ash-bridge-")
                .and_then(|p| p.split('.').next());
            if pid.is_some_and(|pid| !Path::new("/proc").join(pid).exists()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let pid = std::process::id();
        let copy = dir.join(format!("ash-bridge-{pid}"));
        let partial = dir.join(format!("ash-bridge-{pid}.partial"));
        std::fs::copy(bridge, &partial)?;
        std::fs::rename(&partial, &copy)?;
        Ok(copy)
    }
}

/// Makes `/run/ash/uids` (root only, 0700) and the staging mount points, refusing a
/// `/run/ash` that is a link or not root's.
fn prepare_run_dir() -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true).mode(0o711);
    builder.create(RUN_DIR)?;
    let meta = std::fs::symlink_metadata(RUN_DIR)?;
    if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "{RUN_DIR} must be a folder owned by root and writable by root alone"
        )));
    }
    builder
        .mode(0o700)
        .create(Path::new(RUN_DIR).join("uids"))?;
    builder.mode(0o711).create(STAGE_WORKSPACE)?;
    builder.create(STAGE_RUN)?;
    if !Path::new(STAGE_BRIDGE).is_file() {
        std::fs::write(STAGE_BRIDGE, b"")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_is_first_and_count() {
        assert_eq!(
            "1000000:65536".parse::<UidRange>(),
            Ok(UidRange {
                first: 1_000_000,
                count: 65_536
            })
        );
        for bad in ["", "5", "1:0", "x:5", "4294967295:2"] {
            assert!(bad.parse::<UidRange>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_range_holding_root_or_an_account_is_refused() {
        let passwd = "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        let root = UidRange {
            first: 0,
            count: 10,
        };
        assert!(root.check(passwd).unwrap_err().contains("uid 0"));
        let alice = UidRange {
            first: 900,
            count: 200,
        };
        assert!(alice.check(passwd).unwrap_err().contains("alice"));
        assert_eq!(DEFAULT_RANGE.check(passwd), Ok(()));
    }

    #[test]
    fn the_ash_line_of_subuid_is_its_range() {
        let subuid = "alice:100000:65536\nash:2000000:1000\n";
        assert_eq!(
            subuid_range(subuid),
            Some(UidRange {
                first: 2_000_000,
                count: 1000
            })
        );
        assert_eq!(subuid_range("alice:100000:65536\n"), None);
    }
}
