//! A session's workspace as the host's file API sees it. The agent owns that folder and is
//! hostile, so every path is resolved beneath it by cap-std: neither `..`, nor an absolute
//! path, nor a symlink the agent planted can lead a read or a write onto the host. Files are
//! opened non-blocking and checked to be regular files after opening, so a FIFO or device the
//! agent swapped in cannot stall or trick the server. Everything here blocks: call it from
//! `spawn_blocking`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use ash_core::RelativePath;
use cap_std::ambient_authority;
use cap_std::fs::{Dir, MetadataExt, OpenOptions, OpenOptionsExt};

/// Folders never listed or packed: dependencies and VCS data, as in the reference API.
const SKIP_DIRS: [&str; 3] = ["node_modules", ".git", "__pycache__"];
/// Also left out of a listing when hidden files are not wanted.
const HIDDEN_DIRS: [&str; 9] = [
    ".cache",
    ".npm",
    ".pnpm-store",
    ".yarn",
    ".venv",
    "venv",
    ".tmp",
    "tmp",
    ".DS_Store",
];
/// Runtime litter never listed.
const SKIP_SUFFIXES: [&str; 3] = [".sock", ".lock", ".pid"];
/// Secrets never packed into a download.
const SECRET_FILES: [&str; 4] = [".env", ".env.local", ".env.production", ".env.development"];
/// How deep a walk goes; deeper folders are not visited.
const MAX_DEPTH: usize = 64;
/// The most entries a bundle may hold, packed or unpacked.
const MAX_BUNDLE_ENTRIES: usize = 100_000;

/// Why a workspace file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("File not found: {0}")]
    NotFound(String),
    #[error("Not a regular file: {0}")]
    NotAFile(String),
    #[error("Path leads outside the workspace: {0}")]
    Escapes(String),
    #[error("Something that is not a folder (or a link leading out) is in the way of {0}")]
    Blocked(String),
    #[error("{what} is larger than the limit of {limit} bytes")]
    TooLarge { what: String, limit: u64 },
    #[error("Invalid workspace bundle: {0}")]
    Bundle(String),
    #[error("workspace I/O failed: {0}")]
    Io(#[from] io::Error),
}

impl FileError {
    fn at(path: &Path, e: io::Error) -> Self {
        let shown = path.display().to_string();
        match e.kind() {
            io::ErrorKind::NotFound => Self::NotFound(shown),
            // cap-std's answer to `..`, absolute paths and symlinks that lead out.
            io::ErrorKind::PermissionDenied => Self::Escapes(shown),
            _ => Self::Io(e),
        }
    }
}

/// A regular file in the workspace.
#[derive(Debug, Clone)]
pub struct FileEntry {
    /// Relative to the workspace, `/`-separated.
    pub path: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// One session's workspace folder, opened as a capability.
pub struct Workspace {
    dir: Dir,
    /// The uid the workspace belongs to (its sandbox's), when that is not the server's own:
    /// what the host creates in it is given to that uid, so the agent can change it.
    owner: Option<u32>,
}

enum Kind {
    Dir,
    /// Size, modification time, and inode change time (which nothing in the sandbox can set
    /// back) as seconds and nanoseconds.
    File(u64, SystemTime, (i64, i64)),
    Link(PathBuf),
}

impl Workspace {
    pub fn open(path: &Path) -> io::Result<Self> {
        let dir = Dir::open_ambient_dir(path, ambient_authority())?;
        let uid = dir.dir_metadata()?.uid();
        // SAFETY: geteuid has no preconditions.
        let owner = (uid != unsafe { libc::geteuid() }).then_some(uid);
        Ok(Self { dir, owner })
    }

    /// Gives what the host just made (`fd`) to the workspace's owner.
    fn give(&self, fd: impl std::os::fd::AsFd) -> io::Result<()> {
        match self.owner {
            Some(uid) => Ok(crate::tree::give(fd, "", uid)?),
            None => Ok(()),
        }
    }

    /// Gives the link at `path` (not what it points to) to the workspace's owner.
    fn give_link(&self, path: &Path) -> io::Result<()> {
        let (Some(uid), Some(name)) = (self.owner, path.file_name()) else {
            return Ok(());
        };
        let parent = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) => self.dir.open_dir(parent)?,
            None => self.dir.try_clone()?,
        };
        Ok(crate::tree::give(&parent, name, uid)?)
    }

    /// Gives the folders on the way to `path` that the host made to the workspace's owner.
    fn give_folders(&self, path: &Path) -> io::Result<()> {
        let Some(uid) = self.owner else {
            return Ok(());
        };
        let mut folder = PathBuf::new();
        for part in path.components() {
            folder.push(part);
            let dir = self.dir.open_dir(&folder)?;
            if dir.dir_metadata()?.uid() != uid {
                self.give(&dir)?;
            }
        }
        Ok(())
    }

    /// The regular files, skipping dependency folders and runtime litter (and hidden tool
    /// folders unless `include_hidden`); at most `max` of them, and whether more were left out.
    pub fn list(&self, include_hidden: bool, max: usize) -> io::Result<(Vec<FileEntry>, bool)> {
        let skip = |name: &str, is_dir: bool| {
            (is_dir && SKIP_DIRS.contains(&name))
                || name == ".DS_Store"
                || (!include_hidden && HIDDEN_DIRS.contains(&name))
                || (!is_dir && SKIP_SUFFIXES.iter().any(|s| name.ends_with(s)))
        };
        let mut found = Vec::new();
        let complete = walk(&self.dir, Path::new(""), 0, &skip, &mut |path, kind| {
            if let Kind::File(size, modified, _) = kind {
                if found.len() == max {
                    return false;
                }
                found.push(FileEntry {
                    path: path.to_string_lossy().into_owned(),
                    size,
                    modified,
                });
            }
            true
        })?;
        Ok((found, !complete))
    }

    /// Opens a regular file for reading; refuses anything larger than `limit` bytes.
    pub fn open_file(
        &self,
        path: &RelativePath,
        limit: u64,
    ) -> Result<(std::fs::File, u64), FileError> {
        let path = path.as_path();
        let file = self
            .dir
            .open_with(
                path,
                OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK),
            )
            .map_err(|e| FileError::at(path, e))?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(FileError::NotAFile(path.display().to_string()));
        }
        if meta.len() > limit {
            return Err(FileError::TooLarge {
                what: path.display().to_string(),
                limit,
            });
        }
        Ok((file.into_std(), meta.len()))
    }

    /// Writes a file whole: the bytes go to a temporary sibling that is then renamed over the
    /// target, so a reader never sees half a file. Missing folders are created.
    pub fn write(
        &self,
        path: &RelativePath,
        bytes: &[u8],
        executable: bool,
    ) -> Result<(), FileError> {
        let path = path.as_path();
        self.write_from(path, &mut &bytes[..], executable)
    }

    fn write_from(
        &self,
        path: &Path,
        data: &mut dyn Read,
        executable: bool,
    ) -> Result<(), FileError> {
        let fail = |e| FileError::at(path, e);
        self.make_parent(path)?;
        let name = path
            .file_name()
            .unwrap_or(OsStr::new("file"))
            .to_string_lossy();
        let temp = path.with_file_name(format!(".{name}.ash-{}", uuid::Uuid::new_v4().simple()));
        let mode = if executable { 0o755 } else { 0o644 };
        let mut file = self
            .dir
            .open_with(
                &temp,
                OpenOptions::new().write(true).create_new(true).mode(mode),
            )
            .map_err(fail)?;
        let written = self
            .give(&file)
            .and_then(|()| io::copy(data, &mut file))
            .and_then(|_| file.flush());
        let renamed = written.and_then(|()| self.dir.rename(&temp, &self.dir, path));
        if let Err(e) = renamed {
            let _ = self.dir.remove_file(&temp);
            return Err(fail(e));
        }
        Ok(())
    }

    fn make_parent(&self, path: &Path) -> Result<(), FileError> {
        let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) else {
            return Ok(());
        };
        self.dir
            .create_dir_all(parent)
            .and_then(|()| self.give_folders(parent))
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => FileError::Blocked(path.display().to_string()),
                _ => FileError::at(path, e),
            })
    }

    /// Deletes a file or a symlink (never what the link points to); folders are refused.
    pub fn remove(&self, path: &RelativePath) -> Result<(), FileError> {
        let path = path.as_path();
        let meta = self
            .dir
            .symlink_metadata(path)
            .map_err(|e| FileError::at(path, e))?;
        if meta.is_dir() {
            return Err(FileError::NotAFile(path.display().to_string()));
        }
        self.dir
            .remove_file(path)
            .map_err(|e| FileError::at(path, e))
    }

    /// The workspace as a tar.gz for a download, dependency folders and `.env` files left
    /// out, symlinks kept as links (never followed). Fails past `limit` bytes of file content.
    pub fn pack(&self, limit: u64) -> Result<Vec<u8>, FileError> {
        let skip = |name: &str, is_dir: bool| {
            (is_dir && SKIP_DIRS.contains(&name))
                || name == ".DS_Store"
                || (!is_dir && SECRET_FILES.contains(&name))
        };
        self.pack_with(&skip, limit)
    }

    /// A digest of every name, size, modification and change time and link target in the
    /// workspace: an equal digest means nothing a snapshot holds has changed (a file rewritten
    /// to the same size with its modification time set back still has a new change time).
    pub fn fingerprint(&self) -> io::Result<u64> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        walk(
            &self.dir,
            Path::new(""),
            0,
            &|_, _| false,
            &mut |path, kind| {
                path.hash(&mut hasher);
                match kind {
                    Kind::Dir => 0u8.hash(&mut hasher),
                    Kind::File(size, modified, changed) => {
                        (1u8, size, modified, changed).hash(&mut hasher)
                    }
                    Kind::Link(target) => (2u8, target).hash(&mut hasher),
                }
                true
            },
        )?;
        Ok(hasher.finish())
    }

    /// The whole workspace as a tar.gz, for a snapshot: nothing left out.
    pub fn pack_all(&self, limit: u64) -> Result<Vec<u8>, FileError> {
        self.pack_with(&|_, _| false, limit)
    }

    fn pack_with(
        &self,
        skip: &dyn Fn(&str, bool) -> bool,
        limit: u64,
    ) -> Result<Vec<u8>, FileError> {
        let mut entries = Vec::new();
        let complete = walk(&self.dir, Path::new(""), 0, skip, &mut |path, kind| {
            entries.push((path.to_path_buf(), kind));
            entries.len() < MAX_BUNDLE_ENTRIES
        })?;
        if !complete {
            return Err(FileError::TooLarge {
                what: format!("A workspace of more than {MAX_BUNDLE_ENTRIES} entries"),
                limit: MAX_BUNDLE_ENTRIES as u64,
            });
        }
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        let mut budget = limit;
        for (path, kind) in entries {
            let mut header = tar::Header::new_gnu();
            match kind {
                Kind::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(0o755);
                    header.set_size(0);
                    tar.append_data(&mut header, &path, io::empty())?;
                }
                Kind::Link(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    tar.append_link(&mut header, &path, &target)?;
                }
                Kind::File(..) => {
                    // The agent may change the file meanwhile: read what is there now, capped.
                    let Ok((file, _)) = self.open_file_at(&path) else {
                        continue;
                    };
                    let mode = file.metadata()?.mode();
                    let mut bytes = Vec::new();
                    file.take(budget + 1).read_to_end(&mut bytes)?;
                    budget = budget.checked_sub(bytes.len() as u64).ok_or_else(|| {
                        FileError::TooLarge {
                            what: "The workspace".into(),
                            limit,
                        }
                    })?;
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(if mode & 0o111 != 0 { 0o755 } else { 0o644 });
                    header.set_size(bytes.len() as u64);
                    tar.append_data(&mut header, &path, &bytes[..])?;
                }
            }
        }
        Ok(tar.into_inner()?.finish()?)
    }

    fn open_file_at(&self, path: &Path) -> io::Result<(cap_std::fs::File, u64)> {
        let file = self.dir.open_with(
            path,
            OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK),
        )?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::other("not a regular file"));
        }
        Ok((file, meta.len()))
    }

    /// Extracts a tar.gz over the workspace. The whole bundle is checked before anything is
    /// written: every entry must be a file, folder or symlink whose path — and whose link
    /// target — stays inside the workspace, and the content must fit in `limit` bytes.
    /// Returns the number of files written.
    pub fn unpack(&self, bundle: &[u8], limit: u64) -> Result<usize, FileError> {
        if !bundle.starts_with(&[0x1f, 0x8b]) {
            return Err(FileError::Bundle("not a gzip stream".into()));
        }
        let bad = |e: io::Error| FileError::Bundle(e.to_string());
        let (mut total, mut count) = (0u64, 0usize);
        let mut planned = HashMap::new();
        for entry in archive(bundle).entries().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            if let Some(path) = checked_entry(&entry)? {
                count += 1;
                total += entry.size();
                if count > MAX_BUNDLE_ENTRIES || total > limit {
                    return Err(FileError::TooLarge {
                        what: format!("The bundle's content ({path:?} onwards)"),
                        limit,
                    });
                }
                let planned_kind = match entry.header().entry_type() {
                    tar::EntryType::Directory => Planned::Dir,
                    tar::EntryType::Symlink => Planned::Link(
                        entry
                            .link_name()
                            .map_err(bad)?
                            .unwrap_or_default()
                            .into_owned(),
                    ),
                    _ => Planned::File,
                };
                planned.insert(path, planned_kind);
            }
        }
        self.check_plan(&planned)?;
        let mut files = 0;
        for entry in archive(bundle).entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            let Some(path) = checked_entry(&entry)? else {
                continue;
            };
            let fail = |e| FileError::at(&path, e);
            match entry.header().entry_type() {
                tar::EntryType::Directory => self
                    .dir
                    .create_dir_all(&path)
                    .and_then(|()| self.give_folders(&path))
                    .map_err(fail)?,
                tar::EntryType::Symlink => {
                    let target = entry.link_name().map_err(bad)?.unwrap_or_default();
                    self.make_parent(&path)?;
                    let _ = self.dir.remove_file(&path);
                    self.dir.symlink(&target, &path).map_err(fail)?;
                    self.give_link(&path).map_err(fail)?;
                }
                _ => {
                    let executable = entry.header().mode().is_ok_and(|m| m & 0o111 != 0);
                    self.write_from(&path, &mut entry, executable)?;
                    files += 1;
                }
            }
        }
        Ok(files)
    }
}

/// What a bundle entry will make.
enum Planned {
    Dir,
    File,
    Link(PathBuf),
}

/// How many links a resolution may pass through, as the kernel's own limit.
const MAX_LINK_HOPS: usize = 40;

impl Workspace {
    /// Refuses a bundle before anything is written when an entry could not be written whole
    /// (something of another kind in its way, or a link on its path), or when one of its links,
    /// followed through the bundle's other links and those already in the workspace, leads out.
    fn check_plan(&self, planned: &HashMap<PathBuf, Planned>) -> Result<(), FileError> {
        for (path, kind) in planned {
            let shown = || path.display().to_string();
            let mut prefix = PathBuf::new();
            let parts: Vec<_> = path.components().collect();
            for (i, part) in parts.iter().enumerate() {
                prefix.push(part);
                let last = i + 1 == parts.len();
                let existing = self.dir.symlink_metadata(&prefix).ok();
                let in_bundle = planned.get(&prefix);
                let is_dir = match (in_bundle, &existing) {
                    (Some(Planned::Dir), _) => true,
                    (Some(_), _) => false,
                    (None, Some(meta)) => meta.is_dir(),
                    (None, None) => true, // made by the entry itself
                };
                let is_link = matches!(in_bundle, Some(Planned::Link(_)))
                    || existing
                        .as_ref()
                        .is_some_and(|m| m.file_type().is_symlink());
                if !last && (is_link || !is_dir) {
                    return Err(FileError::Blocked(shown()));
                }
                if last {
                    let existing_dir = existing.as_ref().is_some_and(|m| m.is_dir());
                    let clash = match kind {
                        Planned::Dir => existing.as_ref().is_some_and(|m| !m.is_dir()),
                        Planned::File | Planned::Link(_) => existing_dir,
                    };
                    if clash {
                        return Err(FileError::Blocked(shown()));
                    }
                }
            }
            if let Planned::Link(target) = kind {
                if !self.resolves_inside(planned, path, target) {
                    return Err(FileError::Escapes(format!(
                        "{} -> {}",
                        shown(),
                        target.display()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Whether the link at `link` pointing to `target` resolves inside the workspace, each link
    /// on the way (of the bundle, else of the workspace) followed.
    fn resolves_inside(
        &self,
        planned: &HashMap<PathBuf, Planned>,
        link: &Path,
        target: &Path,
    ) -> bool {
        let mut at: Vec<std::ffi::OsString> = link
            .parent()
            .map(|p| p.iter().map(ToOwned::to_owned).collect())
            .unwrap_or_default();
        // `None` is a step up (`..`).
        let mut todo = std::collections::VecDeque::new();
        if !push_steps(&mut todo, target) {
            return false;
        }
        let mut hops = 0;
        while let Some(step) = todo.pop_front() {
            let Some(name) = step else {
                if at.pop().is_none() {
                    return false;
                }
                continue;
            };
            at.push(name);
            let here: PathBuf = at.iter().collect();
            let next = match planned.get(&here) {
                Some(Planned::Link(t)) => Some(t.clone()),
                Some(_) => None,
                None => self
                    .dir
                    .symlink_metadata(&here)
                    .ok()
                    .filter(|m| m.file_type().is_symlink())
                    .and_then(|_| self.dir.read_link_contents(&here).ok()),
            };
            if let Some(next) = next {
                hops += 1;
                at.pop();
                let mut ahead = std::collections::VecDeque::new();
                if hops > MAX_LINK_HOPS || !push_steps(&mut ahead, &next) {
                    return false;
                }
                ahead.extend(todo);
                todo = ahead;
            }
        }
        true
    }
}

/// Appends `target`'s steps to `todo` (`None` for `..`); `false` for an absolute target.
fn push_steps(
    todo: &mut std::collections::VecDeque<Option<std::ffi::OsString>>,
    target: &Path,
) -> bool {
    for part in target.components() {
        match part {
            Component::Normal(name) => todo.push_back(Some(name.to_owned())),
            Component::ParentDir => todo.push_back(None),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

fn archive(bundle: &[u8]) -> tar::Archive<flate2::read::GzDecoder<&[u8]>> {
    tar::Archive::new(flate2::read::GzDecoder::new(bundle))
}

/// The entry's path if it is one to extract; `None` for the archive's own root and pax
/// headers; an error for anything that is not a file, folder or symlink inside the workspace.
fn checked_entry<R: Read>(entry: &tar::Entry<R>) -> Result<Option<PathBuf>, FileError> {
    let raw = entry
        .path()
        .map_err(|e| FileError::Bundle(e.to_string()))?
        .into_owned();
    let shown = raw.display().to_string();
    let kind = entry.header().entry_type();
    if matches!(kind, tar::EntryType::XGlobalHeader) {
        return Ok(None);
    }
    let mut path = PathBuf::new();
    for part in raw.components() {
        match part {
            Component::Normal(name) => path.push(name),
            Component::CurDir => {}
            _ => return Err(FileError::Escapes(shown)),
        }
    }
    if path.as_os_str().is_empty() {
        return if kind.is_dir() {
            Ok(None)
        } else {
            Err(FileError::Bundle(format!("entry {shown:?} has no name")))
        };
    }
    match kind {
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Directory => {}
        tar::EntryType::Symlink => {
            let target = entry
                .link_name()
                .map_err(|e| FileError::Bundle(e.to_string()))?
                .unwrap_or_default();
            if !stays_inside(&path, &target) {
                return Err(FileError::Escapes(format!(
                    "{shown} -> {}",
                    target.display()
                )));
            }
        }
        other => {
            return Err(FileError::Bundle(format!(
                "entry {shown:?} is a {other:?}: only files, folders and symlinks are accepted"
            )))
        }
    }
    Ok(Some(path))
}

/// Whether a symlink at `link` (relative to the workspace) pointing to `target` resolves
/// inside the workspace.
fn stays_inside(link: &Path, target: &Path) -> bool {
    let mut depth = link.components().count() as i64 - 1;
    for part in target.components() {
        match part {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    !target.as_os_str().is_empty()
}

/// Visits `dir` depth-first, calling `visit` for each entry `skip` lets through; symlinks are
/// reported, never followed. Returns `false` as soon as `visit` does.
fn walk(
    dir: &Dir,
    prefix: &Path,
    depth: usize,
    skip: &dyn Fn(&str, bool) -> bool,
    visit: &mut dyn FnMut(&Path, Kind) -> bool,
) -> io::Result<bool> {
    if depth == MAX_DEPTH {
        return Ok(true);
    }
    for entry in dir.entries()? {
        let entry = entry?;
        let name = entry.file_name();
        let kind = entry.file_type()?;
        if skip(&name.to_string_lossy(), kind.is_dir()) {
            continue;
        }
        let path = prefix.join(&name);
        let go_on = if kind.is_dir() {
            let Ok(sub) = entry.open_dir() else {
                continue;
            };
            visit(&path, Kind::Dir) && walk(&sub, &path, depth + 1, skip, visit)?
        } else if kind.is_file() {
            let meta = entry.metadata()?;
            let modified = meta
                .modified()
                .map_or(SystemTime::UNIX_EPOCH, |t| t.into_std());
            visit(
                &path,
                Kind::File(meta.len(), modified, (meta.ctime(), meta.ctime_nsec())),
            )
        } else if kind.is_symlink() {
            visit(&path, Kind::Link(dir.read_link_contents(&name)?))
        } else {
            true
        };
        if !go_on {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn rel(p: &str) -> RelativePath {
        RelativePath::parse(p).unwrap()
    }

    #[test]
    fn a_same_size_rewrite_with_its_modification_time_set_back_changes_the_fingerprint() {
        use std::os::unix::fs::MetadataExt as _;
        let ws = tempfile::tempdir().unwrap();
        let file = ws.path().join("f");
        std::fs::write(&file, "aaaa").unwrap();
        let before = std::fs::metadata(&file).unwrap();
        let w = Workspace::open(ws.path()).unwrap();
        let first = w.fingerprint().unwrap();
        // Control: nothing changed, the same fingerprint.
        assert_eq!(w.fingerprint().unwrap(), first);
        // Rewritten until the kernel's clock has moved on (its change time is coarse).
        for _ in 0..1_000_000 {
            std::fs::write(&file, "bbbb").unwrap();
            let handle = std::fs::File::options().write(true).open(&file).unwrap();
            handle.set_modified(before.modified().unwrap()).unwrap();
            let now = std::fs::metadata(&file).unwrap();
            if (now.ctime(), now.ctime_nsec()) != (before.ctime(), before.ctime_nsec()) {
                break;
            }
        }
        let after = std::fs::metadata(&file).unwrap();
        assert_eq!(
            (after.len(), after.modified().unwrap()),
            (4, before.modified().unwrap())
        );
        assert_ne!(w.fingerprint().unwrap(), first);
    }

    #[test]
    fn links_out_of_the_workspace_are_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "host secret").unwrap();
        let ws = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), ws.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../../../../../etc/passwd", ws.path().join("rel"))
            .unwrap();
        std::os::unix::fs::symlink(outside.path(), ws.path().join("dir")).unwrap();
        let w = Workspace::open(ws.path()).unwrap();
        for path in ["abs", "rel", "dir/secret"] {
            assert!(
                matches!(w.open_file(&rel(path), 1 << 20), Err(FileError::Escapes(_))),
                "{path} was read"
            );
        }
        let planted = w.write(&rel("dir/planted"), b"x", false);
        assert!(matches!(planted, Err(FileError::Blocked(_))), "{planted:?}");
        assert!(!outside.path().join("planted").exists());
        // Writing over a link replaces the link, never its target.
        w.write(&rel("abs"), b"mine", false).unwrap();
        assert_eq!(
            std::fs::read_to_string(outside.path().join("secret")).unwrap(),
            "host secret"
        );
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let ws = tempfile::tempdir().unwrap();
        let fifo = std::ffi::CString::new(ws.path().join("pipe").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let w = Workspace::open(ws.path()).unwrap();
        assert!(matches!(
            w.open_file(&rel("pipe"), 1 << 20),
            Err(FileError::NotAFile(_))
        ));
    }

    #[test]
    fn pack_and_unpack_round_trip_without_secrets() {
        let ws = tempfile::tempdir().unwrap();
        let w = Workspace::open(ws.path()).unwrap();
        w.write(&rel("src/main.py"), b"print(1)", true).unwrap();
        w.write(&rel(".env"), b"KEY=1", false).unwrap();
        w.write(&rel("node_modules/x.js"), b"x", false).unwrap();
        std::os::unix::fs::symlink("src/main.py", ws.path().join("link")).unwrap();
        let bundle = w.pack(1 << 20).unwrap();
        let other = tempfile::tempdir().unwrap();
        let w2 = Workspace::open(other.path()).unwrap();
        assert_eq!(w2.unpack(&bundle, 1 << 20).unwrap(), 1);
        let main = other.path().join("src/main.py");
        assert_eq!(std::fs::read_to_string(&main).unwrap(), "print(1)");
        assert_ne!(
            std::fs::metadata(&main).unwrap().permissions().mode() & 0o111,
            0
        );
        assert_eq!(
            std::fs::read_link(other.path().join("link")).unwrap(),
            Path::new("src/main.py")
        );
        assert!(!other.path().join(".env").exists());
        assert!(!other.path().join("node_modules").exists());
    }

    /// A tar.gz written header by header, so it can hold what `tar::Builder` would refuse.
    /// A tar entry: name, kind, link target, content.
    type Entry<'a> = (&'a str, tar::EntryType, &'a str, &'a [u8]);

    fn raw_bundle(entries: &[Entry<'_>]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, kind, link, data) in entries {
            let mut header = tar::Header::new_old();
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            header.set_entry_type(*kind);
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            header.set_cksum();
            tar.append(&header, *data).unwrap();
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar.into_inner().unwrap()).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn hostile_bundles_are_refused_before_anything_is_written() {
        use tar::EntryType::{Block, Char, Fifo, Link, Regular, Symlink};
        let fine: (&str, tar::EntryType, &str, &[u8]) = ("fine.txt", Regular, "", b"ok");
        let hostile: [(&str, tar::EntryType, &str, &[u8]); 8] = [
            ("../escape.txt", Regular, "", b"x"),
            ("a/../../escape.txt", Regular, "", b"x"),
            ("/tmp/escape.txt", Regular, "", b"x"),
            ("out", Symlink, "/etc", b""),
            ("out", Symlink, "../../etc", b""),
            ("hard", Link, "/etc/passwd", b""),
            ("dev", Char, "", b""),
            ("pipe", Fifo, "", b""),
        ];
        for entry in hostile.into_iter().chain([("blk", Block, "", &b""[..])]) {
            let ws = tempfile::tempdir().unwrap();
            let w = Workspace::open(ws.path()).unwrap();
            let bundle = raw_bundle(&[fine, entry]);
            assert!(
                w.unpack(&bundle, 1 << 20).is_err(),
                "{:?} accepted",
                entry.0
            );
            assert_eq!(
                std::fs::read_dir(ws.path()).unwrap().count(),
                0,
                "{:?} wrote",
                entry.0
            );
        }
        let ws = tempfile::tempdir().unwrap();
        let w = Workspace::open(ws.path()).unwrap();
        assert!(matches!(
            w.unpack(b"not gzip", 1 << 20),
            Err(FileError::Bundle(_))
        ));
        let big = raw_bundle(&[("big", Regular, "", &[0u8; 4096])]);
        assert!(matches!(
            w.unpack(&big, 1024),
            Err(FileError::TooLarge { .. })
        ));
        let truncated = &raw_bundle(&[fine])[..20];
        assert!(w.unpack(truncated, 1 << 20).is_err());
        assert_eq!(std::fs::read_dir(ws.path()).unwrap().count(), 0);
    }

    #[test]
    fn links_that_chain_out_are_refused_with_the_bundle_s_links_and_the_workspace_s() {
        use tar::EntryType::{Directory, Regular, Symlink};
        let chained: [&[Entry<'_>]; 3] = [
            // Each link stays inside on its own; `out` through `sub/up` leads out.
            &[
                ("sub", Directory, "", b""),
                ("sub/up", Symlink, "..", b""),
                ("out", Symlink, "sub/up/..", b""),
            ],
            // A loop of links never resolves.
            &[("a", Symlink, "b", b""), ("b", Symlink, "a", b"")],
            // A file written through a link of the bundle.
            &[
                ("l", Symlink, "sub", b""),
                ("sub", Directory, "", b""),
                ("l/f", Regular, "", b"x"),
            ],
        ];
        for bundle in chained {
            let ws = tempfile::tempdir().unwrap();
            let w = Workspace::open(ws.path()).unwrap();
            assert!(
                w.unpack(&raw_bundle(bundle), 1 << 20).is_err(),
                "{:?} accepted",
                bundle[bundle.len() - 1].0
            );
            assert_eq!(
                std::fs::read_dir(ws.path()).unwrap().count(),
                0,
                "{:?} wrote",
                bundle[0].0
            );
        }
        // A link the agent planted, chained with one of the bundle's.
        let ws = tempfile::tempdir().unwrap();
        std::fs::create_dir(ws.path().join("deep")).unwrap();
        std::os::unix::fs::symlink("..", ws.path().join("deep/up")).unwrap();
        let w = Workspace::open(ws.path()).unwrap();
        let bundle = raw_bundle(&[
            ("fine.txt", Regular, "", b"ok"),
            ("out", Symlink, "deep/up/..", b""),
        ]);
        assert!(matches!(
            w.unpack(&bundle, 1 << 20),
            Err(FileError::Escapes(_))
        ));
        assert!(
            !ws.path().join("fine.txt").exists(),
            "a refused bundle wrote"
        );
        // Control: the same links resolving inside are accepted.
        let bundle = raw_bundle(&[
            ("fine.txt", Regular, "", b"ok"),
            ("in", Symlink, "deep/up/deep", b""),
        ]);
        assert_eq!(w.unpack(&bundle, 1 << 20).unwrap(), 1);
        assert!(ws.path().join("in").is_symlink());
    }

    #[test]
    fn a_bundle_that_cannot_be_written_whole_writes_nothing() {
        use tar::EntryType::{Directory, Regular};
        let ws = tempfile::tempdir().unwrap();
        std::fs::write(ws.path().join("taken"), "a file").unwrap();
        std::fs::create_dir(ws.path().join("folder")).unwrap();
        let w = Workspace::open(ws.path()).unwrap();
        for clash in [
            ("taken/inner.txt", Regular),
            ("taken", Directory),
            ("folder", Regular),
        ] {
            let bundle = raw_bundle(&[
                ("first.txt", Regular, "", b"ok"),
                (clash.0, clash.1, "", b""),
            ]);
            assert!(
                matches!(w.unpack(&bundle, 1 << 20), Err(FileError::Blocked(_))),
                "{clash:?}"
            );
            assert!(
                !ws.path().join("first.txt").exists(),
                "{clash:?} wrote first.txt"
            );
        }
    }

    #[test]
    fn symlink_targets_are_checked_lexically() {
        assert!(stays_inside(Path::new("a/b"), Path::new("../c")));
        assert!(stays_inside(Path::new("a/b"), Path::new("./c/../d")));
        assert!(!stays_inside(Path::new("a/b"), Path::new("../../c")));
        assert!(!stays_inside(Path::new("b"), Path::new("/etc/passwd")));
        assert!(!stays_inside(Path::new("b"), Path::new("")));
    }
}
