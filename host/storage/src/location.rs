//! Resolving manifest locations to object stores.
//!
//! A location is a plain path (relative to the manifest, or to the
//! deployment a pipeline was run from), a `file://` URL, `memory://NAME/…`
//! (an in-process store, for tests), or a cloud URL: `s3://bucket/prefix`
//! (AWS S3, MinIO, Garage and other S3-compatible servers), `gs://` or
//! `az://`. Cloud stores are configured the standard way, from the
//! environment (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, ...;
//! `GOOGLE_*`; `AZURE_*`), overridden by the manifest's `[storage.SCHEME]`
//! options, and every request is retried with backoff on transient errors
//! (5xx, timeouts, throttling) and bounded in concurrency per store.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use object_store::limit::LimitStore;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ObjectStore, ObjectStoreExt, PutMode, PutOptions, RetryConfig, UpdateVersion};

use crate::StorageError;

/// Most requests in flight to one cloud store from one process.
pub const MAX_REQUESTS_PER_STORE: usize = 32;

/// Options for cloud stores, by scheme (`s3`, `gs`, `az`): object_store's
/// configuration keys (`endpoint`, `region`, `allow_http`,
/// `virtual_hosted_style_request`, ...) and their values.
pub type StoreOptions = BTreeMap<String, BTreeMap<String, String>>;

/// What a store was found to honour: conditional creates (`If-None-Match`)
/// and conditional updates (`If-Match`). Some S3-compatible servers accept
/// the headers and ignore them, so this is probed, never assumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Conditional {
    /// A create fails when the object exists.
    pub create: bool,
    /// An update fails when the object changed since it was read.
    pub update: bool,
}

/// One object store, shared by every location on it.
#[derive(Debug)]
struct Backend {
    store: Arc<dyn ObjectStore>,
    /// The same store, when it is the local filesystem.
    local: Option<Arc<LocalFileSystem>>,
    conditional: tokio::sync::OnceCell<Conditional>,
}

impl Backend {
    fn new(store: Arc<dyn ObjectStore>) -> Arc<Backend> {
        Arc::new(Backend { store, local: None, conditional: tokio::sync::OnceCell::new() })
    }

    fn local(fs: LocalFileSystem) -> Arc<Backend> {
        let fs = Arc::new(fs);
        Arc::new(Backend { store: fs.clone(), local: Some(fs), conditional: tokio::sync::OnceCell::new() })
    }
}

/// A place in an object store: an object, or a prefix of objects.
#[derive(Clone, Debug)]
pub struct Location {
    backend: Arc<Backend>,
    path: ObjectPath,
    url: String,
}

impl Location {
    /// The store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.backend.store
    }

    /// The path within the store.
    pub fn path(&self) -> &ObjectPath {
        &self.path
    }

    /// The location as a URL, for messages and records.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The object or prefix `name` below this one (`name` may hold `/`).
    pub fn child(&self, name: &str) -> Location {
        let mut path = self.path.clone();
        for part in name.split('/').filter(|p| !p.is_empty()) {
            path = path.join(part);
        }
        Location { backend: self.backend.clone(), path, url: format!("{}/{name}", self.url.trim_end_matches('/')) }
    }

    /// The same store at another path (e.g. an object found by listing).
    pub fn at(&self, path: ObjectPath) -> Location {
        let url = match self.url.split_once("://") {
            Some((scheme, rest)) => {
                let authority = rest.split('/').next().unwrap_or("");
                format!("{scheme}://{authority}/{path}")
            }
            None => path.to_string(),
        };
        Location { backend: self.backend.clone(), path, url }
    }

    /// The file this location names, when it is on the local filesystem
    /// (where reads can follow the file page by page instead of fetching
    /// byte ranges whole).
    pub fn local_file(&self) -> Option<PathBuf> {
        self.backend.local.as_ref()?.path_to_filesystem(&self.path).ok()
    }

    /// The last segment of the path.
    pub fn name(&self) -> String {
        self.path.filename().unwrap_or("").to_string()
    }

    /// The error of a failed store call on this location.
    pub fn error(&self, source: object_store::Error) -> StorageError {
        match source {
            object_store::Error::NotFound { .. } => StorageError::NotFound { url: self.url.clone() },
            source => StorageError::Store { url: self.url.clone(), source },
        }
    }

    /// The object's bytes, or `None` when there is none.
    pub async fn get_opt(&self) -> Result<Option<(Bytes, Option<String>)>, StorageError> {
        match self.store().get(&self.path).await {
            Ok(r) => {
                let e_tag = r.meta.e_tag.clone();
                Ok(Some((r.bytes().await.map_err(|e| self.error(e))?, e_tag)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(e)),
        }
    }

    /// A content-addressed object: its bytes, checked against `sha256`
    /// (hex); an error naming it when it is missing or does not match.
    pub async fn get_verified(&self, sha256: &str) -> Result<Bytes, StorageError> {
        use sha2::{Digest, Sha256};
        let (bytes, _) = self.get_opt().await?.ok_or_else(|| StorageError::NotFound { url: self.url.clone() })?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != sha256 {
            return Err(StorageError::HashMismatch { url: self.url.clone(), expected: sha256.into(), actual });
        }
        Ok(bytes)
    }

    /// Check the object against `sha256` (hex) without holding it: its
    /// bytes are hashed as they stream in. An error naming it when it is
    /// missing or does not match.
    pub async fn verify_streaming(&self, sha256: &str) -> Result<(), StorageError> {
        use futures::StreamExt;
        use sha2::{Digest, Sha256};
        let got = self.store().get(&self.path).await.map_err(|e| self.error(e))?;
        let mut stream = got.into_stream();
        let mut hasher = Sha256::new();
        while let Some(chunk) = stream.next().await {
            hasher.update(chunk.map_err(|e| self.error(e))?);
        }
        let actual = hex::encode(hasher.finalize());
        if actual != sha256 {
            return Err(StorageError::HashMismatch { url: self.url.clone(), expected: sha256.into(), actual });
        }
        Ok(())
    }

    /// Write the object whole (one put: atomic on every store).
    pub async fn put(&self, bytes: impl Into<Bytes>) -> Result<(), StorageError> {
        self.store().put(&self.path, bytes.into().into()).await.map(drop).map_err(|e| self.error(e))
    }

    /// Write the object only if it is unchanged since it was read with
    /// `e_tag` (`None`: only if it does not exist), where the store honours
    /// conditional writes; elsewhere, a plain put. `Ok(false)` when the
    /// condition failed: someone else wrote it first.
    pub async fn put_if(&self, bytes: impl Into<Bytes>, e_tag: Option<String>) -> Result<bool, StorageError> {
        let conditional = self.conditional().await;
        let mode = match e_tag {
            None if conditional.create => PutMode::Create,
            Some(e_tag) if conditional.update => PutMode::Update(UpdateVersion { e_tag: Some(e_tag), version: None }),
            _ => PutMode::Overwrite,
        };
        let opts = PutOptions { mode, ..Default::default() };
        match self.store().put_opts(&self.path, bytes.into().into(), opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(self.error(e)),
        }
    }

    /// What this location's store honours, probed once per store with a
    /// scratch object beside this location.
    pub async fn conditional(&self) -> Conditional {
        *self.backend.conditional.get_or_init(|| probe(self)).await
    }
}

/// Names of the scratch objects of `probe` start with this.
pub(crate) const PROBE_PREFIX: &str = "_wasmpipe_probe-";

/// Probe conditional writes: create a scratch object, then try to create
/// it again and to update it against a version it does not have. A store
/// that lets either through does not honour that kind of condition.
async fn probe(at: &Location) -> Conditional {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let mut parts: Vec<_> = at.path().parts().collect();
    parts.pop();
    // In wasmpipe's working directory, where clean-up finds what a killed
    // probe left behind.
    parts.push(crate::commit::TASKS_DIR.into());
    parts.push(format!("{PROBE_PREFIX}{}-{nanos}", std::process::id()).into());
    let scratch = at.at(parts.into_iter().collect());
    let store = at.store();
    let put = |mode| {
        let opts = PutOptions { mode, ..Default::default() };
        store.put_opts(scratch.path(), Bytes::from_static(b"probe").into(), opts)
    };
    if put(PutMode::Overwrite).await.is_err() {
        return Conditional::default();
    }
    let create = matches!(put(PutMode::Create).await, Err(object_store::Error::AlreadyExists { .. }));
    let stale = UpdateVersion { e_tag: Some("\"wasmpipe-stale-version\"".into()), version: None };
    let update = matches!(put(PutMode::Update(stale)).await, Err(object_store::Error::Precondition { .. }));
    let _ = store.delete(scratch.path()).await;
    tracing::debug!(store = %store, create, update, "conditional writes");
    Conditional { create, update }
}

/// What relative locations are relative to.
#[derive(Debug, Clone)]
enum Base {
    /// A local directory (the manifest's).
    Dir(PathBuf),
    /// A URL prefix (the deployment's).
    Url(String),
}

/// In-process stores by name, shared by every `Storage` of the process
/// (so a test can read back what a run wrote).
static MEMORY: LazyLock<Mutex<HashMap<String, Arc<Backend>>>> = LazyLock::new(Default::default);

/// Resolves locations to stores; stores are shared per scheme and
/// authority (bucket).
pub struct Storage {
    base: Base,
    options: StoreOptions,
    local: Arc<Backend>,
    cloud: Mutex<HashMap<String, Arc<Backend>>>,
}

impl Storage {
    /// Resolve relative paths against the local directory `base_dir`.
    pub fn new(base_dir: impl Into<PathBuf>) -> Self {
        Storage::with_base(Base::Dir(base_dir.into()))
    }

    /// Resolve relative paths below the URL `base` (a deployment's root).
    pub fn at_url(base: impl Into<String>) -> Self {
        Storage::with_base(Base::Url(base.into().trim_end_matches('/').to_string()))
    }

    fn with_base(base: Base) -> Self {
        Storage {
            base,
            options: StoreOptions::new(),
            // Deleting the last object of a directory removes the directory, as
            // on an object store.
            local: Backend::local(LocalFileSystem::new().with_automatic_cleanup(true)),
            cloud: Mutex::new(HashMap::new()),
        }
    }

    /// The URL relative locations resolve below, for a storage made with
    /// [`Storage::at_url`] (a deployment's root).
    pub fn base_url(&self) -> Option<&str> {
        match &self.base {
            Base::Url(u) => Some(u),
            Base::Dir(_) => None,
        }
    }

    /// The options for cloud stores as the environment variables the
    /// stores' builders read (`AWS_ENDPOINT`, `GOOGLE_SERVICE_ACCOUNT`...),
    /// to hand them to another process without writing them anywhere.
    pub fn options_as_env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        for (family, options) in &self.options {
            let prefix = match family.as_str() {
                "s3" => "AWS_",
                "gs" => "GOOGLE_",
                _ => "AZURE_",
            };
            for (key, value) in options {
                let key = key.to_ascii_uppercase();
                let key = if key.starts_with(prefix) { key } else { format!("{prefix}{key}") };
                env.push((key, value.clone()));
            }
        }
        env
    }

    /// Use these options for cloud stores (the manifest's `[storage]`).
    pub fn with_options(mut self, options: StoreOptions) -> Self {
        self.options = options;
        self
    }

    /// Resolve a location: a URL (`file://`, `memory://`, `s3://`, `gs://`,
    /// `az://`) or a path, relative to this storage's base.
    pub fn resolve(&self, location: &str) -> Result<Location, StorageError> {
        let invalid = |reason: String| StorageError::InvalidLocation { url: location.to_string(), reason };
        if let Some((scheme, rest)) = location.split_once("://") {
            return match scheme {
                "file" => {
                    let url = url::Url::parse(location).map_err(|e| invalid(e.to_string()))?;
                    let path = url.to_file_path().map_err(|_| invalid("not an absolute file path".into()))?;
                    self.local_location(&path, location)
                }
                "memory" => {
                    let (name, path) = rest.split_once('/').unwrap_or((rest, ""));
                    let backend = MEMORY
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(name.to_string())
                        .or_insert_with(|| Backend::new(Arc::new(InMemory::new())))
                        .clone();
                    let path = ObjectPath::parse(path.trim_end_matches('/')).map_err(|e| invalid(e.to_string()))?;
                    Ok(Location { backend, url: format!("memory://{name}/{path}"), path })
                }
                "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" => {
                    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
                    if authority.is_empty() {
                        return Err(invalid(format!("no bucket: write {scheme}://BUCKET/PREFIX")));
                    }
                    let backend = self.cloud_backend(scheme, authority).map_err(&invalid)?;
                    let path = ObjectPath::parse(path.trim_end_matches('/')).map_err(|e| invalid(e.to_string()))?;
                    Ok(Location { backend, url: format!("{scheme}://{authority}/{path}"), path })
                }
                other => Err(invalid(format!(
                    "the {other}:// scheme is not supported; use a path, file://, s3://, gs://, az:// or memory://"
                ))),
            };
        }
        match &self.base {
            Base::Url(base) => self.resolve(&format!("{base}/{}", location.trim_start_matches("./"))),
            Base::Dir(dir) => {
                let path = Path::new(location);
                let absolute = if path.is_absolute() { path.to_path_buf() } else { dir.join(path) };
                self.local_location(&absolute, location)
            }
        }
    }

    fn local_location(&self, path: &Path, original: &str) -> Result<Location, StorageError> {
        let normalized = normalize(path);
        let object_path = ObjectPath::from_absolute_path(&normalized)
            .map_err(|e| StorageError::InvalidLocation { url: original.to_string(), reason: e.to_string() })?;
        Ok(Location { backend: self.local.clone(), url: format!("file:///{object_path}"), path: object_path })
    }

    /// The store for `scheme://authority`, built on first use from the
    /// environment and this storage's options.
    fn cloud_backend(&self, scheme: &str, authority: &str) -> Result<Arc<Backend>, String> {
        let key = format!("{scheme}://{authority}");
        let mut cloud = self.cloud.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = cloud.get(&key) {
            return Ok(b.clone());
        }
        let family = match scheme {
            "s3" | "s3a" => "s3",
            "gs" => "gs",
            _ => "az",
        };
        let options = self.options.get(family).cloned().unwrap_or_default();
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(10),
                base: 2.0,
            },
            max_retries: max_retries(),
            retry_timeout: Duration::from_secs(120),
        };
        let bad_key = |k: &str, e: object_store::Error| format!("[storage.{family}] option {k:?}: {e}");
        let store: Arc<dyn ObjectStore> = match family {
            "s3" => {
                // One `DELETE` per object, retried on 5xx like every other
                // request. A bulk `DeleteObjects` answers 200 with per-key
                // errors that object_store does not retry (Garage under load:
                // "database is locked", code ServiceUnavailable), and wasmpipe
                // deletes one object at a time anyway.
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_url(&key)
                    .with_retry(retry)
                    .with_disable_bulk_delete(true);
                for (k, v) in &options {
                    b = b.with_config(k.parse().map_err(|e| bad_key(k, e))?, v);
                }
                Arc::new(LimitStore::new(b.build().map_err(|e| e.to_string())?, MAX_REQUESTS_PER_STORE))
            }
            "gs" => {
                let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(&key).with_retry(retry);
                for (k, v) in &options {
                    b = b.with_config(k.parse().map_err(|e| bad_key(k, e))?, v);
                }
                Arc::new(LimitStore::new(b.build().map_err(|e| e.to_string())?, MAX_REQUESTS_PER_STORE))
            }
            _ => {
                let mut b = object_store::azure::MicrosoftAzureBuilder::from_env().with_url(&key).with_retry(retry);
                for (k, v) in &options {
                    b = b.with_config(k.parse().map_err(|e| bad_key(k, e))?, v);
                }
                Arc::new(LimitStore::new(b.build().map_err(|e| e.to_string())?, MAX_REQUESTS_PER_STORE))
            }
        };
        let backend = Backend::new(store);
        cloud.insert(key, backend.clone());
        Ok(backend)
    }
}

/// Remove `.` and `..` lexically: the object may not exist yet, so the
/// path cannot be canonicalized.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Retries of a failed request to an object store before it fails
/// (`WASMPIPE_STORE_RETRIES`, default 10). An engine that retries whole
/// tasks (exit code 75) may want fewer.
fn max_retries() -> usize {
    std::env::var("WASMPIPE_STORE_RETRIES").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(10)
}
