//! Why a build stopped, as the steps tell it: the repository's fault (a failed build, exit 1)
//! or the platform's (exit 2). Kept apart so that every step module can return it.

/// Why a build stopped.
pub(crate) enum Failure {
    /// The repository's fault: clone, install, build or output.
    Build {
        /// What went wrong, for the build log.
        error: String,
        /// The failing command's exit status, when a command failed.
        exit_code: Option<i32>,
    },
    /// Ours: storage, spawning tools.
    Internal(String),
}

/// A build failure with no command's exit status (a clone, the output).
pub(crate) fn build_failure(error: String) -> Failure {
    Failure::Build {
        error,
        exit_code: None,
    }
}
