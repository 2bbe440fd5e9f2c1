//! The stage's `config` table, as the host passes it to `configure`.

use serde::de::DeserializeOwned;

use crate::{Result, TransformError};

/// Parses the configuration JSON; blank text counts as `{}`.
///
/// Derive `Deserialize` with `#[serde(deny_unknown_fields)]` so a misspelt key fails at start-up
/// instead of being ignored.
pub fn parse<T: DeserializeOwned>(config_json: &str) -> Result<T> {
    let text = if config_json.trim().is_empty() {
        "{}"
    } else {
        config_json
    };
    serde_json::from_str(text)
        .map_err(|e| TransformError::new(format!("invalid configuration: {e}")))
}
