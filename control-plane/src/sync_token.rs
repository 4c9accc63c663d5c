//! The sync token: what the filters send (`bearer_token`) to read the key map. Required by
//! default. Like the admin token it is created on a server's first start, but operators
//! must be able to put it into the filters' configs, so it is written to a file readable by
//! its owner only; the database holds its digest, so replicas over one PostgreSQL share it
//! and a rotation reaches every running server within a second.

use crate::auth::{read_token_file, TokenError};
use crate::clock::now_unix;
use crate::log::log_event;
use crate::random::{new_sync_token, RandomError};
use crate::secret_file::{create_private, replace_private};
use crate::store::{postgres::is_postgres_url, Actor, Store, StoreError};
use keygate_core::digest::Digest;
use std::path::{Path, PathBuf};

/// Where the token goes beside a SQLite database: `<database>.sync-token`.
pub const FILE_SUFFIX: &str = ".sync-token";

/// The text `keygatectl sync-token render` replaces with the token in a config template.
pub const PLACEHOLDER: &str = "KEYGATE_SYNC_TOKEN";

#[derive(Debug, thiserror::Error)]
pub enum SyncTokenError {
    #[error(
        "the sync token in {} does not match the one this database was set up with; put \
         that one back, or replace it with `keygatectl sync-token rotate`",
        path.display()
    )]
    Mismatch { path: PathBuf },
    #[error(
        "with PostgreSQL there is no default place for the sync token: give \
         --sync-token-file FILE (created with a new token if missing; replicas share the \
         token through the database), or --no-sync-token"
    )]
    NeedsFile,
    #[error("cannot write the sync token to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the sync token holds a character ('\"', '\\\\' or '\\'') that cannot go into a \
         config as it is; make a new one with `keygatectl sync-token rotate`"
    )]
    NotQuotable,
    #[error("{} has no {PLACEHOLDER} to replace with the sync token", path.display())]
    NoPlaceholder { path: PathBuf },
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// The token file beside a SQLite database; `None` for PostgreSQL.
pub fn default_file(database: &Path) -> Option<PathBuf> {
    if database.to_str().is_some_and(is_postgres_url) {
        return None;
    }
    let mut name = database.as_os_str().to_owned();
    name.push(FILE_SUFFIX);
    Some(PathBuf::from(name))
}

/// The token file to use: the one given, else the default beside a SQLite database.
pub fn file_for(given: Option<&Path>, database: &Path) -> Result<PathBuf, SyncTokenError> {
    given
        .map(Path::to_path_buf)
        .or_else(|| default_file(database))
        .ok_or(SyncTokenError::NeedsFile)
}

/// The sync token's digest for a server: from `file` when it exists (set up in the database
/// on first use, and checked against it after), else the database's; when neither has one,
/// a new token written to `file` (0600). Several processes starting at once agree on one.
pub fn ensure(
    store: &dyn Store,
    file: Option<&Path>,
    actor: &Actor,
) -> Result<Digest, SyncTokenError> {
    let stored = store.sync_token_digest()?;
    let Some(path) = file else {
        return stored.ok_or(SyncTokenError::NeedsFile);
    };
    let token = match read_existing(path)? {
        Some(token) => token,
        None => match stored {
            Some(stored) => {
                log_event(&format!(
                    "the sync token is set in the database, but {} is missing (another \
                     replica wrote it, or it was removed); `keygatectl sync-token rotate` \
                     writes a new one there",
                    path.display()
                ));
                return Ok(stored);
            }
            None => create(path)?,
        },
    };
    let digest = Digest::of_key(&token);
    match stored {
        Some(stored) if stored.ct_eq(&digest) => Ok(stored),
        Some(_) => Err(SyncTokenError::Mismatch {
            path: path.to_path_buf(),
        }),
        None => {
            store.set_sync_token_digest(&digest, now_unix(), actor)?;
            log_event(&format!(
                "sync token set up from {} (the database keeps its digest); give it to the \
                 filters as bearer_token",
                path.display()
            ));
            Ok(digest)
        }
    }
}

/// The token in `path`, or `None` when there is no such file.
fn read_existing(path: &Path) -> Result<Option<String>, SyncTokenError> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        _ => Ok(Some(read_token_file(path, "sync token")?)),
    }
}

/// A new token in a new file at `path`; if another process created the file first, its
/// token.
fn create(path: &Path) -> Result<String, SyncTokenError> {
    let token = new_sync_token()?;
    let created = create_private(path, format!("{token}\n").as_bytes()).map_err(|source| {
        SyncTokenError::Write {
            path: path.to_path_buf(),
            source,
        }
    })?;
    if !created {
        return Ok(read_token_file(path, "sync token")?);
    }
    log_event(&format!(
        "no sync token was set up, so one was generated and written to {} (readable by its \
         owner only); give it to the filters as bearer_token",
        path.display()
    ));
    Ok(token)
}

/// Replaces the sync token: a new one in `path` (0600), its digest in the database.
/// Running servers take it within a second; filters still sending the old one get 401.
pub fn rotate(store: &dyn Store, path: &Path, actor: &Actor) -> Result<(), SyncTokenError> {
    let token = new_sync_token()?;
    replace_private(path, format!("{token}\n").as_bytes()).map_err(|source| {
        SyncTokenError::Write {
            path: path.to_path_buf(),
            source,
        }
    })?;
    store.set_sync_token_digest(&Digest::of_key(&token), now_unix(), actor)?;
    Ok(())
}

/// `template` with every placeholder replaced by `token`.
pub fn render(template: &str, template_path: &Path, token: &str) -> Result<String, SyncTokenError> {
    if !template.contains(PLACEHOLDER) {
        return Err(SyncTokenError::NoPlaceholder {
            path: template_path.to_path_buf(),
        });
    }
    // It lands inside quoted strings (JSON in YAML): nothing that would end or escape them.
    if token.contains(['"', '\\', '\'']) {
        return Err(SyncTokenError::NotQuotable);
    }
    Ok(template.replace(PLACEHOLDER, token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    #[test]
    fn the_default_file_sits_beside_a_sqlite_database_only() {
        assert_eq!(
            default_file(Path::new("/var/lib/keygate/keygate.db")),
            Some(PathBuf::from("/var/lib/keygate/keygate.db.sync-token"))
        );
        assert_eq!(default_file(Path::new("postgres://u@h/db")), None);
        assert!(matches!(
            file_for(None, Path::new("postgresql://u@h/db")),
            Err(SyncTokenError::NeedsFile)
        ));
    }

    #[test]
    fn a_first_start_creates_the_token_later_starts_check_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("keygate.db")).expect("open");
        let file = dir.path().join("sync-token");
        let digest = ensure(&store, Some(&file), &Actor::server()).expect("created");
        let token = read_token_file(&file, "t").expect("written");
        assert!(token.starts_with("kgsync_"));
        assert_eq!(Digest::of_key(&token), digest);
        assert_eq!(store.sync_token_digest().expect("digest"), Some(digest));
        // Again: the same token.
        assert_eq!(
            ensure(&store, Some(&file), &Actor::server()).expect("again"),
            digest
        );
        // Without the file the database still knows it (another replica's file).
        std::fs::remove_file(&file).expect("rm");
        assert_eq!(
            ensure(&store, Some(&file), &Actor::server()).expect("stored"),
            digest
        );
        assert!(!file.exists());
        assert_eq!(
            ensure(&store, None, &Actor::server()).expect("stored"),
            digest
        );
        // Another token in the file is refused, not taken.
        std::fs::write(&file, "someone-elses-token-0123456789").expect("write");
        assert!(matches!(
            ensure(&store, Some(&file), &Actor::server()),
            Err(SyncTokenError::Mismatch { .. })
        ));
        // A rotation writes a new one and the database follows.
        rotate(&store, &file, &Actor::cli()).expect("rotate");
        let rotated = read_token_file(&file, "t").expect("rotated");
        assert_eq!(
            store.sync_token_digest().expect("digest"),
            Some(Digest::of_key(&rotated))
        );
        assert_eq!(
            ensure(&store, Some(&file), &Actor::server()).expect("matches"),
            Digest::of_key(&rotated)
        );
    }

    #[test]
    fn a_given_token_file_sets_up_a_new_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("keygate.db")).expect("open");
        let file = dir.path().join("given");
        std::fs::write(&file, "given-sync-token-0123456789\n").expect("write");
        let digest = ensure(&store, Some(&file), &Actor::server()).expect("set up");
        assert_eq!(digest, Digest::of_key("given-sync-token-0123456789"));
        assert!(matches!(
            ensure(
                &SqliteStore::open(&dir.path().join("other.db")).expect("open"),
                None,
                &Actor::server(),
            ),
            Err(SyncTokenError::NeedsFile)
        ));
    }

    #[test]
    fn templates_get_the_token_where_the_placeholder_is() {
        let path = Path::new("envoy.yaml");
        let rendered = render(
            r#"{"bearer_token": "KEYGATE_SYNC_TOKEN"}"#,
            path,
            "kgsync_abc",
        )
        .expect("render");
        assert_eq!(rendered, r#"{"bearer_token": "kgsync_abc"}"#);
        assert!(matches!(
            render("no placeholder", path, "kgsync_abc"),
            Err(SyncTokenError::NoPlaceholder { .. })
        ));
        assert!(matches!(
            render(PLACEHOLDER, path, "abc\"def"),
            Err(SyncTokenError::NotQuotable)
        ));
    }
}
