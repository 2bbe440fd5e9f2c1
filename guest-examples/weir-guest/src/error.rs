use std::fmt;

use arrow::error::ArrowError;

/// `Result` with [`TransformError`] as the error.
pub type Result<T, E = TransformError> = std::result::Result<T, E>;

/// Why a batch was rejected; becomes the WIT `transform-error`.
///
/// `row` is the 0-based row of the *input* batch at fault, when one is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransformError {
    pub row: Option<u32>,
    pub message: String,
}

impl TransformError {
    /// An error about the batch as a whole.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            row: None,
            message: message.into(),
        }
    }

    /// An error about one input row.
    pub fn at_row(row: usize, message: impl Into<String>) -> Self {
        Self::new(message).with_row(row)
    }

    /// Attaches the input row at fault (rows past `u32::MAX` saturate; batches are far smaller).
    pub fn with_row(mut self, row: usize) -> Self {
        self.row = Some(u32::try_from(row).unwrap_or(u32::MAX));
        self
    }

    /// Prefixes the message with what was being done, e.g. the column name.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for TransformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.row {
            Some(row) => write!(f, "row {row}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for TransformError {}

impl From<ArrowError> for TransformError {
    fn from(error: ArrowError) -> Self {
        Self::new(error.to_string())
    }
}
