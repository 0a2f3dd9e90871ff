//! Workspace quotas: each sandbox's workspace is a folder on a filesystem of its own, an ext4
//! image of `bytes` with `inodes` files (`<sandbox>/disk.img`, mounted at `<sandbox>/disk`,
//! `nosuid,nodev`), so the kernel stops an agent at its quota with `ENOSPC`, whatever it writes,
//! and a file it marks setuid is never one on the host. The images are copies of one template
//! made by `mkfs.ext4` once per size (sparse: a new workspace costs a few hundred KiB), attached
//! with `LOOP_CONFIGURE` (auto-clearing) and mounted with `mount(2)`: about 2 ms.
//!
//! The mounts live in the server's own mount namespace (the server unshares it at start, see
//! [`private_mounts`]): when the server ends, even by SIGKILL, they go with it and the loop
//! devices clear themselves; no host mount is left behind. The next server mounts an image again
//! when its workspace is first used. Needs root (loop devices, mounts) and `mkfs.ext4`.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The image's name in a sandbox's folder.
const IMAGE: &str = "disk.img";
/// Where the image is mounted in a sandbox's folder.
pub(crate) const MOUNT: &str = "disk";
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// The size of every workspace's filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub bytes: u64,
    pub inodes: u64,
}

/// Workspace filesystems of one size, with a few made and mounted ahead for new sandboxes.
#[derive(Debug)]
pub struct Disks {
    template: PathBuf,
    pub quota: Quota,
    /// Where sandboxes' folders are; stocked filesystems wait there as `.disk-stock-*`.
    root: PathBuf,
    stock: std::sync::Mutex<Vec<PathBuf>>,
    refilling: std::sync::atomic::AtomicBool,
}

/// Filesystems kept made and mounted ahead, so a new sandbox does not wait for one.
const STOCK: usize = 4;
const STOCK_PREFIX: &str = ".disk-stock-";

/// Takes this process into a mount namespace of its own whose mounts never reach the host's
/// (new host mounts still reach it). Must run before the process starts a second thread.
pub fn private_mounts() -> io::Result<()> {
    // SAFETY: unshare and mount with constant arguments, on this single-threaded process.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(io::Error::last_os_error());
        }
        let none = std::ptr::null();
        let flags = libc::MS_REC | libc::MS_SLAVE;
        if libc::mount(none, c"/".as_ptr(), none, flags, none.cast()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether this host can give workspaces filesystems of their own, and if not, why.
pub fn support() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs a root server (loop devices and mounts)".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Err("this host has no loop devices (/dev/loop-control)".into());
    }
    match std::process::Command::new("mkfs.ext4").arg("-V").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err("mkfs.ext4 is missing (apt-get install e2fsprogs)".into()),
    }
}

impl Disks {
    /// Makes (once) the template image for `quota` under `<data dir>/disk-templates`, for
    /// sandboxes' folders under `root`; removes what an earlier server left in stock there.
    pub fn prepare(data_dir: &Path, root: &Path, quota: Quota) -> io::Result<Self> {
        for entry in fs::read_dir(root).into_iter().flatten().flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(STOCK_PREFIX)
            {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        let dir = data_dir.join("disk-templates");
        fs::create_dir_all(&dir)?;
        let template = dir.join(format!("ext4-{}-{}.img", quota.bytes, quota.inodes));
        if !template.is_file() {
            let partial = template.with_extension("partial");
            File::create(&partial)?.set_len(quota.bytes)?;
            let out = std::process::Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0", "-N", &quota.inodes.to_string()])
                .args([
                    "-E",
                    "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0",
                ])
                .arg(&partial)
                .output()?;
            if !out.status.success() {
                return Err(io::Error::other(format!(
                    "mkfs.ext4 failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            fs::rename(&partial, &template)?;
        }
        Ok(Self {
            template,
            quota,
            root: root.to_owned(),
            stock: Default::default(),
            refilling: Default::default(),
        })
    }

    /// Gives the sandbox at `sandbox` its mounted filesystem: its own when it has one, else one
    /// from the stock (a rename: the mount moves with its folder), else a new one. Returns
    /// whether the sandbox is new (the stock wants refilling then). Blocking.
    pub(crate) fn provide(&self, sandbox: &Path) -> io::Result<bool> {
        if sandbox.exists() {
            self.mount(sandbox)?;
            return Ok(false);
        }
        let stocked = self.stock.lock().expect("lock").pop();
        if let Some(stocked) = stocked {
            if fs::rename(&stocked, sandbox).is_ok() {
                return Ok(true);
            }
        }
        self.mount(sandbox)?;
        Ok(true)
    }

    /// Makes and mounts filesystems until the stock is full (one refill at a time). Blocking.
    pub(crate) fn refill(&self) {
        use std::sync::atomic::Ordering;
        if self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        while self.stock.lock().expect("lock").len() < STOCK {
            let dir = self
                .root
                .join(format!("{STOCK_PREFIX}{}", uuid::Uuid::new_v4().simple()));
            match self.mount(&dir) {
                Ok(()) => self.stock.lock().expect("lock").push(dir),
                Err(e) => {
                    tracing::warn!("cannot stock a workspace filesystem: {e}");
                    Self::unmount(&dir);
                    let _ = fs::remove_dir_all(&dir);
                    break;
                }
            }
        }
        self.refilling.store(false, Ordering::Release);
    }

    /// Makes the sandbox's image if it has none and mounts it at `<sandbox>/disk`, unless it
    /// is mounted already. Blocking.
    pub(crate) fn mount(&self, sandbox: &Path) -> io::Result<()> {
        let mount = sandbox.join(MOUNT);
        fs::create_dir_all(&mount)?;
        if is_mount_point(&mount)? {
            return Ok(());
        }
        let image = sandbox.join(IMAGE);
        if !image.is_file() {
            let partial = image.with_extension("partial");
            sparse_copy(&self.template, &partial)?;
            fs::rename(&partial, &image)?;
        }
        // Held open until mounted: an auto-clearing device with no opener and no mount is
        // detached at once.
        let (device, _held) = attach(&image)?;
        let (source, target) = (c_path(Path::new(&device))?, c_path(&mount)?);
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOATIME;
        // `noinit_itable`: no background zeroing of the inode tables, which would write tens
        // of MiB into every image and make it no longer sparse.
        // SAFETY: mount(2) with C strings that outlive the call.
        let mounted = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                c"ext4".as_ptr(),
                flags,
                c"noinit_itable".as_ptr().cast(),
            )
        };
        if mounted != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Unmounts the sandbox's filesystem (its loop device clears itself). Blocking.
    pub(crate) fn unmount(sandbox: &Path) {
        let mount = sandbox.join(MOUNT);
        if is_mount_point(&mount).unwrap_or(false) {
            if let Ok(target) = c_path(&mount) {
                // SAFETY: umount2 of a path we mounted.
                unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

/// A path as a C string, for the raw calls (mount, umount) made here and in `bwrap`.
pub(crate) fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::other("a path holds a NUL byte"))
}

/// Whether `path` is the root of a mount (it lies on another device than its parent).
fn is_mount_point(path: &Path) -> io::Result<bool> {
    let parent = path.parent().unwrap_or(path);
    Ok(fs::symlink_metadata(path)?.dev() != fs::metadata(parent)?.dev())
}

/// Attaches `image` to a free loop device that detaches itself once unmounted; returns the
/// device's path and an open handle of it.
fn attach(image: &Path) -> io::Result<(String, File)> {
    let control = File::options()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    let image = File::options().read(true).write(true).open(image)?;
    loop {
        // SAFETY: an ioctl without arguments on our fd.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let device = format!("/dev/loop{n}");
        let Ok(lo) = File::options().read(true).write(true).open(&device) else {
            continue;
        };
        // struct loop_config { u32 fd; u32 block_size; struct loop_info64 info; u64 reserved[8] }
        let mut config = [0u8; 8 + 232 + 64];
        config[..4].copy_from_slice(&(image.as_raw_fd() as u32).to_ne_bytes());
        // loop_info64.lo_flags sits at offset 52 of the info.
        config[8 + 52..8 + 56].copy_from_slice(&LO_FLAGS_AUTOCLEAR.to_ne_bytes());
        // SAFETY: LOOP_CONFIGURE reads the struct we pass, which outlives the call.
        if unsafe { libc::ioctl(lo.as_raw_fd(), LOOP_CONFIGURE, config.as_ptr()) } == 0 {
            return Ok((device, lo));
        }
        let e = io::Error::last_os_error();
        // Another process took the device between the two calls: ask for the next.
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(e);
        }
    }
}

/// Copies `from` to a new file `to`, keeping its holes (an image is mostly holes).
fn sparse_copy(from: &Path, to: &Path) -> io::Result<()> {
    let mut source = File::open(from)?;
    let len = source.metadata()?.len();
    let mut target = File::create(to)?;
    target.set_len(len)?;
    let fd = source.as_raw_fd();
    let mut at: i64 = 0;
    let mut buffer = vec![0u8; 1 << 20];
    while (at as u64) < len {
        // SAFETY: lseek on our own fd.
        let data = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if data < 0 {
            break; // nothing but a hole to the end
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let end = if hole < 0 { len as i64 } else { hole };
        source.seek(SeekFrom::Start(data as u64))?;
        target.seek(SeekFrom::Start(data as u64))?;
        let mut left = (end - data) as usize;
        while left > 0 {
            let chunk = left.min(buffer.len());
            source.read_exact(&mut buffer[..chunk])?;
            target.write_all(&buffer[..chunk])?;
            left -= chunk;
        }
        at = end;
    }
    // Not synced: like the workspace's files, the image is as durable as the host makes it;
    // the snapshot (synced) is the copy that survives a crash.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparse_copy_keeps_the_data_and_the_holes() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        let mut file = File::create(&from).unwrap();
        file.set_len(64 << 20).unwrap();
        file.seek(SeekFrom::Start(10 << 20)).unwrap();
        file.write_all(b"data in the middle").unwrap();
        drop(file);
        let to = dir.path().join("to");
        sparse_copy(&from, &to).unwrap();
        assert_eq!(fs::read(&from).unwrap(), fs::read(&to).unwrap());
        let allocated = fs::metadata(&to).unwrap().blocks() * 512;
        assert!(
            allocated < 1 << 20,
            "{allocated} bytes allocated for 18 bytes of data"
        );
    }
}
