use std::fmt;
use std::path::PathBuf;

/// Where in a profile file a problem is: file, line and column (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// A profile that cannot be used: the message names the file, line, column and field.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{file}: cannot read the profile: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{position}: {field}: {message}")]
    Invalid {
        position: Position,
        /// The key path, e.g. `filesystem.write[0]`.
        field: String,
        message: String,
    },
    #[error("{file}: {message}")]
    Syntax { file: PathBuf, message: String },
}

impl ProfileError {
    pub fn invalid(
        position: Position,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ProfileError::Invalid {
            position,
            field: field.into(),
            message: message.into(),
        }
    }
}
