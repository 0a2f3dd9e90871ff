use std::fs;
use std::io;
use std::path::Path;

/// The largest agent folder copied into a workspace: 512 MiB.
const MAX_AGENT_BYTES: u64 = 512 * 1024 * 1024;

/// Copies an agent folder into a new workspace. Symlinks are copied as links (they resolve
/// inside the sandbox, never on the host); sockets, pipes and devices are skipped; the copy
/// fails past [`MAX_AGENT_BYTES`]. Blocking: call it from `spawn_blocking`.
pub(crate) fn copy_agent(from: &Path, to: &Path) -> io::Result<()> {
    let mut budget = MAX_AGENT_BYTES;
    let staging = to.with_extension("partial");
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;
    copy_dir(from, &staging, &mut budget)?;
    fs::rename(&staging, to)
}

fn copy_dir(from: &Path, to: &Path, budget: &mut u64) -> io::Result<()> {
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if kind.is_dir() {
            fs::create_dir(&dst)?;
            copy_dir(&src, &dst, budget)?;
        } else if kind.is_file() {
            let size = entry.metadata()?.len();
            *budget = budget.checked_sub(size).ok_or_else(|| {
                io::Error::other(format!(
                    "agent folder is larger than {MAX_AGENT_BYTES} bytes"
                ))
            })?;
            fs::copy(&src, &dst)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
        }
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
        copy_agent(src.path(), &to).unwrap();
        assert_eq!(fs::read_to_string(to.join("sub/a.txt")).unwrap(), "a");
        assert_eq!(
            fs::read_link(to.join("link")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert!(!to.join("s.sock").exists());
    }
}
