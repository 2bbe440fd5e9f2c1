//! Object stores by URL: `file://` (default), `s3://`, `az://` / `abfss://`, through `object_store`.
//! Credentials come from the environment (`AWS_*`, `AZURE_*`), as `object_store` reads them.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage location `{location}`: {message}")]
    Location { location: String, message: String },
    #[error("storage {path}: {source}")]
    Io {
        path: String,
        source: object_store::Error,
    },
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Opens the store behind `location` and returns it with the path of `location` inside it.
pub fn open(location: &str) -> Result<(Arc<dyn ObjectStore>, StorePath)> {
    let bad = |message: String| StorageError::Location {
        location: location.to_owned(),
        message,
    };
    let url = Url::parse(location).map_err(|e| bad(e.to_string()))?;
    if url.scheme() == "file" {
        let dir = url
            .to_file_path()
            .map_err(|()| bad("not an absolute file path".into()))?;
        std::fs::create_dir_all(&dir).map_err(|e| bad(e.to_string()))?;
    }
    let options = std::env::vars().map(|(k, v)| (k.to_ascii_lowercase(), v));
    let (store, path) =
        object_store::parse_url_opts(&url, options).map_err(|e| bad(e.to_string()))?;
    Ok((Arc::from(store), path))
}

/// Stores `bytes` at `path` in one put, which `object_store` makes atomic on every backend.
pub async fn put(store: &dyn ObjectStore, path: &StorePath, bytes: Vec<u8>) -> Result<()> {
    store
        .put(path, PutPayload::from(bytes))
        .await
        .map(|_| ())
        .map_err(|source| StorageError::Io {
            path: path.to_string(),
            source,
        })
}

/// Stores what a stage could not take in the dead-letter `location`, under `folder`: `bytes` as
/// `<name>.<extension>`, and beside it `<name>.error.json`, the fields of `record` with the time.
/// A rerun over the same input overwrites rather than repeats.
pub async fn dead_letter(
    location: &str,
    folder: &[&str],
    name: &str,
    extension: &str,
    bytes: Vec<u8>,
    mut record: serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    let (store, root) = open(location)?;
    let folder = folder.iter().fold(root, |path, part| path.join(*part));
    put(
        &*store,
        &folder.clone().join(format!("{name}.{extension}")),
        bytes,
    )
    .await?;
    record.insert("at".into(), chrono::Utc::now().to_rfc3339().into());
    let error = serde_json::Value::Object(record).to_string().into_bytes();
    put(&*store, &folder.join(format!("{name}.error.json")), error).await
}

pub async fn get(store: &dyn ObjectStore, path: &StorePath) -> Result<Option<bytes::Bytes>> {
    match store.get(path).await {
        Ok(r) => r
            .bytes()
            .await
            .map(Some)
            .map_err(|source| StorageError::Io {
                path: path.to_string(),
                source,
            }),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(source) => Err(StorageError::Io {
            path: path.to_string(),
            source,
        }),
    }
}

/// Deletes the object at `path`; one already gone is not an error.
pub async fn delete(store: &dyn ObjectStore, path: &StorePath) -> Result<()> {
    match store.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(source) => Err(StorageError::Io {
            path: path.to_string(),
            source,
        }),
    }
}

/// Every object under `prefix`, recursively.
pub async fn list(store: &dyn ObjectStore, prefix: &StorePath) -> Result<Vec<StorePath>> {
    store
        .list(Some(prefix))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await
        .map_err(|source| StorageError::Io {
            path: prefix.to_string(),
            source,
        })
}
