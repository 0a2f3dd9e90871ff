//! The snapshot store: each session's last good workspace bundle (a tar.gz), kept where any
//! machine of a cluster can fetch it — a local folder by default, S3-compatible object storage
//! for a cluster — through the `object_store` crate.
//!
//! A snapshot is two objects under `<session>/`: the bundle, named by its SHA-256, and
//! `latest.json`, which names the bundle with its size and digest. The bundle is written and
//! read back whole before `latest.json` is replaced, so an upload that fails or is cut off
//! never replaces a good snapshot; a fetch checks size and digest, so a bundle changed or
//! truncated in the store is refused ([`SnapshotError::Corrupt`]), never restored.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as Key;
use object_store::{ObjectStore, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The name of the object that says which bundle is a session's snapshot.
const LATEST: &str = "latest.json";
/// The largest `latest.json` read.
const MAX_MANIFEST: u64 = 4096;

/// Why a snapshot could not be stored, found or used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("the snapshot store at {0} cannot be used: {1}")]
    Config(String, String),
    /// The store did not answer, or refused (down, no such bucket, no access).
    #[error("the snapshot store failed: {0}")]
    Store(#[from] object_store::Error),
    /// What the store holds is not what was written.
    #[error("the snapshot of session {session} in the store is damaged ({why}); it was not used")]
    Corrupt { session: String, why: String },
}

/// What `latest.json` says.
#[derive(Debug, Serialize, Deserialize)]
struct Latest {
    /// The bundle's key under the session's folder.
    bundle: String,
    size: u64,
    sha256: String,
}

/// Where snapshots go.
#[derive(Clone)]
pub struct SnapshotStore {
    store: Arc<dyn ObjectStore>,
    /// Shown in logs and errors (never with credentials).
    location: String,
}

impl SnapshotStore {
    /// The store a setting names: `s3://<bucket>[/<prefix>]`, or a folder (an absolute path,
    /// or `file://` and one); `None` is `default_dir`.
    pub fn open(setting: Option<&str>, default_dir: &Path) -> Result<Self, SnapshotError> {
        match setting {
            None => Self::local(default_dir),
            Some(url) if url.starts_with("s3://") => Self::s3(url),
            Some(path) => {
                let path = Path::new(path.strip_prefix("file://").unwrap_or(path));
                if !path.is_absolute() {
                    return Err(SnapshotError::Config(
                        path.display().to_string(),
                        "give an absolute folder, or s3://<bucket>[/<prefix>]".into(),
                    ));
                }
                Self::local(path)
            }
        }
    }

    /// A folder on this machine (created if missing).
    pub fn local(dir: &Path) -> Result<Self, SnapshotError> {
        let location = dir.display().to_string();
        std::fs::create_dir_all(dir)
            .map_err(|e| SnapshotError::Config(location.clone(), e.to_string()))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| SnapshotError::Config(location.clone(), e.to_string()))?;
        Ok(Self {
            store: Arc::new(store),
            location,
        })
    }

    /// `s3://<bucket>[/<prefix>]`, with the endpoint, region and credentials from the usual
    /// `AWS_*` variables (`AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP=true` for an S3-compatible
    /// server of your own).
    pub fn s3(url: &str) -> Result<Self, SnapshotError> {
        let bad = |why: String| SnapshotError::Config(url.to_owned(), why);
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("give it as s3://<bucket>[/<prefix>]".into()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("the bucket name is missing".into()));
        }
        let s3 = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        let store: Arc<dyn ObjectStore> = match prefix.trim_matches('/') {
            "" => Arc::new(s3),
            prefix => Arc::new(object_store::prefix::PrefixStore::new(s3, prefix)),
        };
        Ok(Self {
            store,
            location: url.to_owned(),
        })
    }

    /// Where the snapshots are, for logs.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Makes `bundle` the session's snapshot once it is in the store whole.
    pub async fn put(&self, session: &str, bundle: Bytes) -> Result<(), SnapshotError> {
        let sha256 = hex(&Sha256::digest(&bundle));
        let name = format!("{sha256}.tar.gz");
        let key = Key::from(session).child(name.as_str());
        let size = bundle.len() as u64;
        self.store.put(&key, PutPayload::from(bundle)).await?;
        // Read back before it becomes the snapshot: a store that kept less is caught here.
        let stored = self.store.head(&key).await?;
        if stored.size != size {
            return Err(SnapshotError::Corrupt {
                session: session.to_owned(),
                why: format!("{} of {size} bytes were stored", stored.size),
            });
        }
        let previous = self.latest(session).await.ok().flatten();
        let latest = Latest {
            bundle: name,
            size,
            sha256,
        };
        let manifest = serde_json::to_vec(&latest).expect("a manifest serialises");
        let at = Key::from(session).child(LATEST);
        self.store.put(&at, PutPayload::from(manifest)).await?;
        if let Some(old) = previous.filter(|old| old.bundle != latest.bundle) {
            let old = Key::from(session).child(old.bundle.as_str());
            if let Err(e) = self.store.delete(&old).await {
                tracing::debug!(session, "an old snapshot bundle stays in the store: {e}");
            }
        }
        Ok(())
    }

    /// The session's snapshot, checked against its size and digest; `None` when it has none.
    pub async fn get(&self, session: &str) -> Result<Option<Bytes>, SnapshotError> {
        let Some(latest) = self.latest(session).await? else {
            return Ok(None);
        };
        let corrupt = |why: String| SnapshotError::Corrupt {
            session: session.to_owned(),
            why,
        };
        let key = Key::from(session).child(latest.bundle.as_str());
        let bundle = self.store.get(&key).await?.bytes().await?;
        if bundle.len() as u64 != latest.size {
            return Err(corrupt(format!(
                "{} bytes where {} were written",
                bundle.len(),
                latest.size
            )));
        }
        if hex(&Sha256::digest(&bundle)) != latest.sha256 {
            return Err(corrupt("its SHA-256 is not the one written".into()));
        }
        Ok(Some(bundle))
    }

    /// Deletes the session's snapshot (its session ended).
    pub async fn delete(&self, session: &str) -> Result<(), SnapshotError> {
        if let Some(latest) = self.latest(session).await? {
            let key = Key::from(session).child(latest.bundle.as_str());
            ignore_missing(self.store.delete(&key).await)?;
        }
        ignore_missing(self.store.delete(&Key::from(session).child(LATEST)).await)
    }

    async fn latest(&self, session: &str) -> Result<Option<Latest>, SnapshotError> {
        let at = Key::from(session).child(LATEST);
        let found = match self.store.get(&at).await {
            Ok(found) => found,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let corrupt = |why: String| SnapshotError::Corrupt {
            session: session.to_owned(),
            why,
        };
        if found.meta.size > MAX_MANIFEST {
            return Err(corrupt(format!(
                "{LATEST} is larger than {MAX_MANIFEST} bytes"
            )));
        }
        let latest: Latest = serde_json::from_slice(&found.bytes().await?)
            .map_err(|e| corrupt(format!("{LATEST} is not what Ash writes: {e}")))?;
        let well_formed = latest.bundle == format!("{}.tar.gz", latest.sha256)
            && latest.sha256.len() == 64
            && latest.sha256.bytes().all(|b| b.is_ascii_hexdigit());
        if !well_formed {
            return Err(corrupt(format!("{LATEST} names no bundle Ash wrote")));
        }
        Ok(Some(latest))
    }
}

fn ignore_missing(result: object_store::Result<()>) -> Result<(), SnapshotError> {
    match result {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
