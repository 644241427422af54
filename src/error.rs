//! One error type for the whole server: a SQLSTATE plus a message that names the object.
//!
//! Every error a client can see carries a real SQLSTATE (see DESIGN.md §2). Constructor macros in
//! the style of DataFusion's `plan_err!` keep call sites short: `unsupported!("window frame {f}")`.
//! User mistakes are never `XX000`; `XX000` means a bug in Eddy.

use std::fmt;

/// SQLSTATE codes used by Eddy (names follow PostgreSQL's `errcodes.txt`).
pub mod sqlstate {
    pub const SUCCESSFUL_COMPLETION: &str = "00000";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const STRING_DATA_RIGHT_TRUNCATION: &str = "22001";
    pub const NUMERIC_VALUE_OUT_OF_RANGE: &str = "22003";
    pub const DATETIME_FIELD_OVERFLOW: &str = "22008";
    pub const INVALID_DATETIME_FORMAT: &str = "22007";
    pub const DIVISION_BY_ZERO: &str = "22012";
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    pub const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";
    pub const INVALID_TEXT_REPRESENTATION: &str = "22P02";
    pub const BAD_COPY_FILE_FORMAT: &str = "22P04";
    pub const DATA_EXCEPTION: &str = "22000";
    pub const NOT_NULL_VIOLATION: &str = "23502";
    pub const UNIQUE_VIOLATION: &str = "23505";
    pub const ACTIVE_SQL_TRANSACTION: &str = "25001";
    pub const READ_ONLY_SQL_TRANSACTION: &str = "25006";
    pub const NO_ACTIVE_SQL_TRANSACTION: &str = "25P01";
    pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
    pub const DEPENDENT_OBJECTS_STILL_EXIST: &str = "2BP01";
    pub const SERIALIZATION_FAILURE: &str = "40001";
    pub const SYNTAX_ERROR: &str = "42601";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const UNDEFINED_COLUMN: &str = "42703";
    pub const UNDEFINED_TABLE: &str = "42P01";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const UNDEFINED_FUNCTION: &str = "42883";
    pub const DUPLICATE_TABLE: &str = "42P07";
    pub const DUPLICATE_COLUMN: &str = "42701";
    pub const DUPLICATE_OBJECT: &str = "42710";
    pub const WRONG_OBJECT_TYPE: &str = "42809";
    pub const DATATYPE_MISMATCH: &str = "42804";
    pub const INVALID_TABLE_DEFINITION: &str = "42P16";
    pub const AMBIGUOUS_COLUMN: &str = "42702";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const INSUFFICIENT_RESOURCES: &str = "53000";
    pub const DISK_FULL: &str = "53100";
    pub const CONFIGURATION_LIMIT_EXCEEDED: &str = "53400";
    pub const INVALID_CURSOR_NAME: &str = "34000";
    pub const INVALID_SQL_STATEMENT_NAME: &str = "26000";
    pub const DUPLICATE_CURSOR: &str = "42P03";
    pub const OUT_OF_MEMORY: &str = "53200";
    pub const QUERY_CANCELED: &str = "57014";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const IO_ERROR: &str = "58030";
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
    pub const CANT_CHANGE_RUNTIME_PARAM: &str = "55P02";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const OBJECT_IN_USE: &str = "55006";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
    pub const IDLE_IN_TRANSACTION_SESSION_TIMEOUT: &str = "25P03";
    pub const INVALID_SCHEMA_NAME: &str = "3F000";
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const DATA_CORRUPTED: &str = "XX001";
}

/// An error with the SQLSTATE a client will see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Error {
    pub sqlstate: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.sqlstate)
    }
}

impl Error {
    pub fn new(sqlstate: &'static str, message: impl Into<String>) -> Self {
        Error {
            sqlstate,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// A bug in Eddy, not a user mistake.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(sqlstate::INTERNAL_ERROR, message)
    }

    /// An I/O failure of the data directory: writes fail with 53100 when the disk is full, 58030
    /// otherwise.
    /// SQLSTATE 0A000 for `what`, a construct that is not implemented. A bare name
    /// ("temporary tables") reads "not supported: temporary tables"; a message that already
    /// says what is (not) supported is kept as it is.
    pub fn unsupported(what: String) -> Self {
        let message = if what.contains("support") {
            what
        } else {
            format!("not supported: {what}")
        };
        Error::new(sqlstate::FEATURE_NOT_SUPPORTED, message)
    }

    pub fn io(context: impl fmt::Display, err: &std::io::Error) -> Self {
        let code = if err.raw_os_error() == Some(28) {
            sqlstate::DISK_FULL
        } else {
            sqlstate::IO_ERROR
        };
        Error::new(code, format!("{context}: {err}"))
    }
}

/// `err!(SQLSTATE, "fmt", args…)` builds an [`Error`].
#[macro_export]
macro_rules! err {
    ($code:expr, $($arg:tt)*) => {
        $crate::error::Error::new($code, format!($($arg)*))
    };
}

/// `unsupported!("what")`: SQLSTATE 0A000, naming the construct that is not implemented (see
/// [`Error::unsupported`]).
#[macro_export]
macro_rules! unsupported {
    ($($arg:tt)*) => {
        $crate::error::Error::unsupported(format!($($arg)*))
    };
}

/// `internal!("what")`: SQLSTATE XX000, a bug.
#[macro_export]
macro_rules! internal {
    ($($arg:tt)*) => {
        $crate::error::Error::new($crate::error::sqlstate::INTERNAL_ERROR, format!($($arg)*))
    };
}

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        crate::sql::errors::from_datafusion(e)
    }
}

impl From<datafusion::arrow::error::ArrowError> for Error {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        crate::sql::errors::from_arrow(e)
    }
}
