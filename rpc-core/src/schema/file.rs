//! The compatibility check for CI: the current schema against one recorded in a file.

use std::fmt;
use std::path::{Path, PathBuf};

use super::ServiceSchema;

/// The environment variable that makes [`ServiceSchema::check_file`] record the current
/// schema instead of checking it.
pub const UPDATE_VAR: &str = "RPC_SCHEMA_UPDATE";

/// Why [`ServiceSchema::check_file`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum SchemaError {
    /// The file could not be read or written.
    Io(PathBuf, std::io::Error),
    /// The file is not a schema.
    Parse(String),
    /// The current trait cannot talk to a peer built from the recorded schema: one line per
    /// breaking change.
    Breaking(PathBuf, Vec<String>),
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemaError::Io(path, err) => write!(f, "{}: {err}", path.display()),
            SchemaError::Parse(err) => write!(f, "not a service schema: {err}"),
            SchemaError::Breaking(path, changes) => {
                writeln!(
                    f,
                    "{} breaking change(s) against the schema recorded in {}:",
                    changes.len(),
                    path.display()
                )?;
                for change in changes {
                    writeln!(f, "  - {change}")?;
                }
                write!(
                    f,
                    "Keep the deployed methods as they are and add new ones instead; once no \
                     peer of the recorded schema runs any more, record the current one with \
                     {UPDATE_VAR}=1"
                )
            }
        }
    }
}

impl std::error::Error for SchemaError {}

impl ServiceSchema {
    /// The compatibility check to run in a test, as `buf breaking` is run for protobuf:
    /// fails, naming each breaking change, when a client or a server built from this schema
    /// could not talk to one built from the schema recorded at `path` (see
    /// [`breaking_changes`](Self::breaking_changes)).
    ///
    /// When the file does not exist yet, or when the environment variable
    /// `RPC_SCHEMA_UPDATE` is set to `1`, it writes this schema there instead (commit it).
    /// Record the schema of what is deployed, and update it when a release is out.
    ///
    /// ```no_run
    /// # use rpc_core::service;
    /// #[service]
    /// pub trait Calculator {
    ///     async fn add(&self, a: i64, b: i64) -> i64;
    /// }
    ///
    /// #[test]
    /// fn calculator_stays_compatible() {
    ///     if let Err(err) = CalculatorClient::schema().check_file("schema/calculator.json") {
    ///         panic!("{err}");
    ///     }
    /// }
    /// ```
    pub fn check_file(&self, path: impl AsRef<Path>) -> Result<(), SchemaError> {
        let path = path.as_ref();
        let update = std::env::var(UPDATE_VAR).is_ok_and(|v| v == "1");
        let recorded = match std::fs::read_to_string(path) {
            Ok(json) if !update => json,
            Err(err) if !update && err.kind() != std::io::ErrorKind::NotFound => {
                return Err(SchemaError::Io(path.to_owned(), err))
            }
            _ => return self.write_file(path),
        };
        let recorded = ServiceSchema::from_json(&recorded)?;
        let changes = recorded.breaking_changes(self);
        if changes.is_empty() {
            Ok(())
        } else {
            Err(SchemaError::Breaking(path.to_owned(), changes))
        }
    }

    fn write_file(&self, path: &Path) -> Result<(), SchemaError> {
        let io = |err| SchemaError::Io(path.to_owned(), err);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut json = self.to_json();
        json.push('\n');
        std::fs::write(path, json).map_err(io)
    }
}
