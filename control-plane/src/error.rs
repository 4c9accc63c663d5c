//! The CLI's errors: each says what went wrong and, where it can, what to do. Bad input
//! exits with 2 (as clap's own usage errors do), everything else with 1.

use crate::auth::TokenError;
use crate::client::ClientError;
use crate::export::ExportError;
use crate::random::RandomError;
use crate::serve::ServeError;
use crate::service::ServiceError;
use crate::store::StoreError;
use crate::sync_token::SyncTokenError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Input the command cannot use.
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    SyncToken(#[from] SyncTokenError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Random(#[from] RandomError),
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read standard input: {0}")]
    Stdin(#[source] std::io::Error),
    #[error("cannot write the output: {0}")]
    Stdout(#[source] std::io::Error),
    /// `probe`: the URL did not answer 2xx.
    #[error("not healthy: {0}")]
    Probe(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Input(_)
            | CliError::Service(ServiceError::Invalid(_))
            | CliError::Token(_)
            | CliError::SyncToken(
                SyncTokenError::NeedsFile | SyncTokenError::NoPlaceholder { .. },
            )
            | CliError::Client(ClientError::BadUrl(_))
            | CliError::Client(ClientError::Api { status: 400, .. })
            | CliError::Export(ExportError::Base(_) | ExportError::BaseNotObject) => 2,
            _ => 1,
        }
    }
}
