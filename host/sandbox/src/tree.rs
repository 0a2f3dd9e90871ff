//! The host's one way of walking a tree the agent controls (a workspace, or a copy of one):
//! copying it (fork, snapshot, restore, a new workspace) and handing it to the sandbox's uid.
//!
//! The agent can swap any file or folder for a symlink, a FIFO or a device at any moment,
//! also while the host walks. So nothing here resolves a path of more than one name: each
//! step opens one entry relative to the folder fd it came from, with `O_NOFOLLOW`, and checks
//! what it opened with `fstat`. A link is copied as a link (it resolves inside the sandbox,
//! never on the host); sockets, FIFOs and devices are skipped; an entry swapped mid-walk is
//! skipped, never followed. Copies never carry setuid, setgid or sticky bits. Everything
//! here blocks: call it from `spawn_blocking`.

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

/// The most file bytes one copy carries: 512 MiB.
pub(crate) const MAX_COPY_BYTES: u64 = 512 * 1024 * 1024;
/// The most entries (files, folders, links) one copy or ownership change visits.
const MAX_ENTRIES: u64 = 200_000;
/// How deep a walk goes; deeper folders are left out.
const MAX_DEPTH: usize = 64;
/// The mode bits a copy keeps: permissions only.
const PERMISSION_BITS: u32 = 0o777;

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Opens a folder the host named (its last component must not be a link).
pub(crate) fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(path, DIR_FLAGS, Mode::empty())?)
}

/// Copies the tree under `from` into the empty folder `to`, every file and folder fsynced when
/// `durable` (snapshots); fails past [`MAX_COPY_BYTES`] of file content or [`MAX_ENTRIES`]
/// entries.
pub(crate) fn copy(from: &impl AsFd, to: &impl AsFd, durable: bool) -> io::Result<()> {
    let mut budget = Budget {
        bytes: MAX_COPY_BYTES,
        entries: MAX_ENTRIES,
    };
    copy_dir(from.as_fd(), to.as_fd(), 0, durable, &mut budget)
}

/// Gives every entry under `root` (and `root` itself) to `uid`:`uid`, links included (the
/// link itself, never its target).
pub(crate) fn chown(root: &impl AsFd, uid: u32) -> io::Result<()> {
    give(root, "", uid)?;
    let mut entries = MAX_ENTRIES;
    chown_dir(root.as_fd(), 0, uid, &mut entries)
}

/// Gives the entry `name` of the folder `dir` (a link itself, never its target) to
/// `uid`:`uid`; an empty `name` gives `dir` itself, whatever kind of descriptor it is
/// (`O_PATH` ones included).
pub(crate) fn give(
    dir: impl AsFd,
    name: impl rustix::path::Arg,
    uid: u32,
) -> rustix::io::Result<()> {
    let empty = name.as_str().is_ok_and(str::is_empty);
    let flags = if empty {
        AtFlags::EMPTY_PATH
    } else {
        AtFlags::SYMLINK_NOFOLLOW
    };
    rustix::fs::chownat(
        dir,
        name,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(uid)),
        flags,
    )
}

struct Budget {
    bytes: u64,
    entries: u64,
}

impl Budget {
    fn take_entry(&mut self) -> io::Result<()> {
        self.entries = self.entries.checked_sub(1).ok_or_else(|| {
            io::Error::other(format!("the folder has more than {MAX_ENTRIES} entries"))
        })?;
        Ok(())
    }
}

/// The names in a folder, `.` and `..` left out.
fn names(dir: impl AsFd) -> io::Result<Vec<std::ffi::CString>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let name = entry?.file_name().to_owned();
        if name.as_bytes() != b"." && name.as_bytes() != b".." {
            names.push(name);
        }
    }
    Ok(names)
}

/// What an entry is right now, without following it; `None` when it has gone.
fn kind_of(dir: impl AsFd, name: &CStr) -> io::Result<Option<(FileType, u32)>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some((
            FileType::from_raw_mode(stat.st_mode),
            stat.st_mode & PERMISSION_BITS,
        ))),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether an open failed because the entry was swapped for something else meanwhile.
fn swapped(e: rustix::io::Errno) -> bool {
    matches!(
        e,
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR | rustix::io::Errno::NOENT
    )
}

fn copy_dir(
    from: std::os::fd::BorrowedFd<'_>,
    to: std::os::fd::BorrowedFd<'_>,
    depth: usize,
    durable: bool,
    budget: &mut Budget,
) -> io::Result<()> {
    if depth == MAX_DEPTH {
        return Ok(());
    }
    for name in names(from)? {
        let Some((kind, mode)) = kind_of(from, &name)? else {
            continue;
        };
        match kind {
            FileType::Directory => {
                let source = match rustix::fs::openat(from, &name, DIR_FLAGS, Mode::empty()) {
                    Ok(fd) => fd,
                    Err(e) if swapped(e) => continue,
                    Err(e) => return Err(e.into()),
                };
                budget.take_entry()?;
                rustix::fs::mkdirat(to, &name, Mode::from_raw_mode(0o700))?;
                let target = rustix::fs::openat(to, &name, DIR_FLAGS, Mode::empty())?;
                copy_dir(source.as_fd(), target.as_fd(), depth + 1, durable, budget)?;
                rustix::fs::fchmod(&target, Mode::from_raw_mode(mode))?;
                if durable {
                    File::from(target).sync_all()?;
                }
            }
            FileType::RegularFile => {
                let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
                let source = match rustix::fs::openat(from, &name, flags, Mode::empty()) {
                    Ok(fd) => fd,
                    Err(e) if swapped(e) => continue,
                    Err(e) => return Err(e.into()),
                };
                // What was opened is what counts: a FIFO or device swapped in is skipped.
                if FileType::from_raw_mode(rustix::fs::fstat(&source)?.st_mode)
                    != FileType::RegularFile
                {
                    continue;
                }
                budget.take_entry()?;
                let target = rustix::fs::openat(
                    to,
                    &name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(mode),
                )?;
                let mut target = File::from(target);
                // The agent may grow the file meanwhile: read at most what the budget allows.
                let copied = io::copy(&mut File::from(source).take(budget.bytes + 1), &mut target)?;
                budget.bytes = budget.bytes.checked_sub(copied).ok_or_else(|| {
                    io::Error::other(format!("the folder holds more than {MAX_COPY_BYTES} bytes"))
                })?;
                rustix::fs::fchmod(&target, Mode::from_raw_mode(mode))?;
                if durable {
                    target.sync_all()?;
                }
            }
            FileType::Symlink => {
                let target = match rustix::fs::readlinkat(from, &name, Vec::new()) {
                    Ok(target) => target,
                    Err(e) if swapped(e) || e == rustix::io::Errno::INVAL => continue,
                    Err(e) => return Err(e.into()),
                };
                budget.take_entry()?;
                rustix::fs::symlinkat(&target, to, &name)?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn chown_dir(
    dir: std::os::fd::BorrowedFd<'_>,
    depth: usize,
    uid: u32,
    entries: &mut u64,
) -> io::Result<()> {
    if depth == MAX_DEPTH {
        return Ok(());
    }
    for name in names(dir)? {
        *entries = entries.checked_sub(1).ok_or_else(|| {
            io::Error::other(format!("the folder has more than {MAX_ENTRIES} entries"))
        })?;
        match give(dir, name.as_c_str(), uid) {
            Ok(()) => {}
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        }
        match rustix::fs::openat(dir, &name, DIR_FLAGS, Mode::empty()) {
            Ok(sub) => chown_dir(sub.as_fd(), depth + 1, uid, entries)?,
            // Not a folder (or no longer one): nothing beneath it.
            Err(e) if swapped(e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn copy_paths(from: &Path, to: &Path) -> io::Result<()> {
        fs::create_dir(to)?;
        copy(&open_dir(from)?, &open_dir(to)?, false)
    }

    #[test]
    fn copies_files_folders_and_links_as_links_but_no_sockets() {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir(src.path().join("sub")).unwrap();
        fs::write(src.path().join("sub/a.txt"), "a").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.path().join("link")).unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(src.path().join("s.sock")).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let to = dst.path().join("ws");
        copy_paths(src.path(), &to).unwrap();
        assert_eq!(fs::read_to_string(to.join("sub/a.txt")).unwrap(), "a");
        assert_eq!(
            fs::read_link(to.join("link")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert!(!to.join("s.sock").exists());
    }

    #[test]
    fn a_link_to_a_host_folder_is_never_entered() {
        let host = tempfile::tempdir().unwrap();
        fs::write(host.path().join("secret"), "host only").unwrap();
        let src = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(host.path(), src.path().join("escape")).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let to = dst.path().join("ws");
        copy_paths(src.path(), &to).unwrap();
        // Control: through the link, the host folder is readable on the host.
        assert!(src.path().join("escape/secret").exists());
        assert!(fs::symlink_metadata(to.join("escape"))
            .unwrap()
            .is_symlink());
        assert!(!fs::symlink_metadata(to.join("escape")).unwrap().is_dir());
    }

    #[test]
    fn copies_drop_setuid_setgid_and_sticky_bits() {
        let src = tempfile::tempdir().unwrap();
        let file = src.path().join("tool");
        fs::write(&file, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o6755)).unwrap();
        fs::create_dir(src.path().join("shared")).unwrap();
        fs::set_permissions(
            src.path().join("shared"),
            fs::Permissions::from_mode(0o3777),
        )
        .unwrap();
        // Control: the source really carries the bits.
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o7777, 0o6755);
        let dst = tempfile::tempdir().unwrap();
        let to = dst.path().join("ws");
        copy_paths(src.path(), &to).unwrap();
        assert_eq!(
            fs::metadata(to.join("tool")).unwrap().mode() & 0o7777,
            0o755
        );
        assert_eq!(
            fs::metadata(to.join("shared")).unwrap().mode() & 0o7777,
            0o777
        );
    }

    #[test]
    fn a_fifo_is_skipped_not_read() {
        let src = tempfile::tempdir().unwrap();
        let fifo = std::ffi::CString::new(src.path().join("pipe").to_str().unwrap()).unwrap();
        // SAFETY: a valid C string path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let dst = tempfile::tempdir().unwrap();
        copy_paths(src.path(), &dst.path().join("ws")).unwrap();
        assert!(!dst.path().join("ws/pipe").exists());
    }
}
