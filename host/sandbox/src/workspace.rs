use std::fs;
use std::io;
use std::path::Path;

use crate::tree;

/// A snapshot's pointer to its current generation.
const CURRENT: &str = "current";

/// Copies a folder (an agent, or a snapshot) into a new workspace, whole or not at all, by
/// the rules of [`tree`]: links copied as links, never followed; sockets, pipes and devices
/// skipped; no setuid bits. Blocking: call it from `spawn_blocking`.
pub(crate) fn copy_into_workspace(from: &Path, to: &Path) -> io::Result<()> {
    let staging = to.with_extension("partial");
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;
    tree::copy(&tree::open_dir(from)?, &tree::open_dir(&staging)?, false)?;
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
    let target = tree::open_dir(&generation)?;
    tree::copy(&tree::open_dir(workspace)?, &target, true)?;
    fs::File::from(target).sync_all()?;
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

/// The snapshot's current generation folder, if `dir` holds one (the host's own `current`
/// link, read here so the copy that follows opens a folder, not a link).
pub(crate) fn latest(dir: &Path) -> Option<std::path::PathBuf> {
    let generation = dir.join(fs::read_link(dir.join(CURRENT)).ok()?);
    generation.is_dir().then_some(generation)
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
