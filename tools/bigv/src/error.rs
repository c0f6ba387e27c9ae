//! What can go wrong, as one line for a person and an exit code for a
//! script (bigv-cli.md §6, the codes of bytemark-client 4.0).

use std::fmt;

/// The exit codes of bigv-cli.md §6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 1: a bug in this program.
    Bug = 1,
    /// 3: the config directory could not be read.
    ConfigRead = 3,
    /// 4: the config directory could not be written.
    ConfigWrite = 4,
    /// 5: the user answered no to a confirmation.
    Declined = 5,
    /// 6: a group still has servers.
    GroupNotEmpty = 6,
    /// 7: bad input or usage.
    Usage = 7,
    /// 8: a program we ran (ssh) failed.
    Subprocess = 8,
    /// 9: no account to act in.
    NoDefaultAccount = 9,
    /// 49: anything else.
    Unknown = 49,
    /// 50: the auth endpoint could not be reached.
    AuthUnreachable = 50,
    /// 51: the auth endpoint failed.
    AuthInternal = 51,
    /// 52: the auth endpoint answered something we cannot read.
    AuthBadResponse = 52,
    /// 53: credentials the auth endpoint calls badly formed.
    BadCredentialChars = 53,
    /// 54: bad, missing or expired credentials.
    BadCredentials = 54,
    /// 150: the API could not be reached, or is temporarily unavailable.
    ApiUnreachable = 150,
    /// 152: the API failed (500) or answered something we cannot read.
    ApiInternal = 152,
    /// 155: 403.
    Forbidden = 155,
    /// 156: 404.
    NotFound = 156,
    /// 157: 400.
    BadRequest = 157,
}

/// An error for the user: what went wrong, in one line, and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    pub exit: Exit,
    pub message: String,
}

pub type Result<T, E = CliError> = std::result::Result<T, E>;

impl CliError {
    pub fn new(exit: Exit, message: impl Into<String>) -> CliError {
        CliError {
            exit,
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> CliError {
        CliError::new(Exit::Usage, message)
    }

    pub fn not_found(message: impl Into<String>) -> CliError {
        CliError::new(Exit::NotFound, message)
    }

    pub fn config_read(message: impl Into<String>) -> CliError {
        CliError::new(Exit::ConfigRead, message)
    }

    pub fn config_write(message: impl Into<String>) -> CliError {
        CliError::new(Exit::ConfigWrite, message)
    }

    pub fn credentials(message: impl Into<String>) -> CliError {
        CliError::new(Exit::BadCredentials, message)
    }

    pub fn code(&self) -> i32 {
        self.exit as i32
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Always one line: a server's text may carry newlines.
        let one_line: Vec<&str> = self
            .message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        write!(f, "{}", one_line.join(" "))
    }
}

impl std::error::Error for CliError {}
