use std::fs;
use std::io;
use std::path::Path;

/// The largest folder copied into or out of a workspace: 512 MiB.
const MAX_COPY_BYTES: u64 = 512 * 1024 * 1024;
/// A snapshot's pointer to its current generation.
const CURRENT: &str = "current";

/// Copies a folder (an agent, or a snapshot) into a new workspace, whole or not at all.
/// Symlinks are copied as links (they resolve inside the sandbox, never on the host); sockets,
/// pipes and devices are skipped; the copy fails past [`MAX_COPY_BYTES`]. Blocking: call it
/// from `spawn_blocking`.
pub(crate) fn copy_into_workspace(from: &Path, to: &Path) -> io::Result<()> {
    let staging = to.with_extension("partial");
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;
    copy_dir(from, &staging, &mut MAX_COPY_BYTES.clone(), false)?;
    fs::rename(&staging, to)
}

/// Writes a durable copy of `workspace` as the snapshot in `dir`, replacing the previous one
/// atomically: the copy goes to a new generation folder, every file is synced, then the
/// `current` link is swapped by a rename. A crash at any point leaves the old or the new
/// snapshot, never a mix. Older generations are deleted afterwards.
pub(crate) fn snapshot(workspace: &Path, dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!("g-{nanos}");
    let generation = dir.join(&name);
    fs::create_dir(&generation)?;
    copy_dir(workspace, &generation, &mut MAX_COPY_BYTES.clone(), true)?;
    fs::File::open(&generation)?.sync_all()?;
    let link = dir.join("current.new");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&name, &link)?;
    fs::rename(&link, dir.join(CURRENT))?;
    fs::File::open(dir)?.sync_all()?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let old = entry.file_name();
        if old != name.as_str() && old.to_string_lossy().starts_with("g-") {
            fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(())
}

/// The snapshot's current copy, if `dir` holds one.
pub(crate) fn latest(dir: &Path) -> Option<std::path::PathBuf> {
    let current = dir.join(CURRENT);
    current.is_dir().then_some(current)
}

fn copy_dir(from: &Path, to: &Path, budget: &mut u64, durable: bool) -> io::Result<()> {
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if kind.is_dir() {
            fs::create_dir(&dst)?;
            copy_dir(&src, &dst, budget, durable)?;
        } else if kind.is_file() {
            let size = entry.metadata()?.len();
            *budget = budget.checked_sub(size).ok_or_else(|| {
                io::Error::other(format!("folder is larger than {MAX_COPY_BYTES} bytes"))
            })?;
            fs::copy(&src, &dst)?;
            if durable {
                fs::File::open(&dst)?.sync_all()?;
            }
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
        }
    }
    if durable {
        fs::File::open(to)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_files_and_links_but_not_sockets() {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir(src.path().join("sub")).unwrap();
        fs::write(src.path().join("sub/a.txt"), "a").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.path().join("link")).unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(src.path().join("s.sock")).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let to = dst.path().join("ws");
        copy_into_workspace(src.path(), &to).unwrap();
        assert_eq!(fs::read_to_string(to.join("sub/a.txt")).unwrap(), "a");
        assert_eq!(
            fs::read_link(to.join("link")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert!(!to.join("s.sock").exists());
    }
}

#[cfg(test)]
mod snapshot_tests {
    use super::*;

    #[test]
    fn a_new_snapshot_replaces_the_old_one_whole() {
        let ws = tempfile::tempdir().unwrap();
        let snaps = tempfile::tempdir().unwrap();
        let dir = snaps.path().join("s1");
        fs::write(ws.path().join("a.txt"), "one").unwrap();
        snapshot(ws.path(), &dir).unwrap();
        fs::write(ws.path().join("a.txt"), "two").unwrap();
        fs::write(ws.path().join("b.txt"), "new").unwrap();
        snapshot(ws.path(), &dir).unwrap();
        let current = latest(&dir).unwrap();
        assert_eq!(fs::read_to_string(current.join("a.txt")).unwrap(), "two");
        assert!(current.join("b.txt").exists());
        let generations = fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("g-")
            })
            .count();
        assert_eq!(generations, 1, "old generations are removed");
        let restored = tempfile::tempdir().unwrap();
        copy_into_workspace(&current, &restored.path().join("ws")).unwrap();
        assert_eq!(
            fs::read_to_string(restored.path().join("ws/a.txt")).unwrap(),
            "two"
        );
    }

    #[test]
    fn no_snapshot_means_none() {
        assert!(latest(Path::new("/nonexistent/ash")).is_none());
    }
}
