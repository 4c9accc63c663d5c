//! TLS to PostgreSQL against the test server, which `scripts/postgres.sh` starts with TLS on:
//! its certificate is signed by the run's CA for the name `localhost` only, a second CA
//! signed nothing, and the role `keygate_cert` signs in with a client certificate only
//! (files in KEYGATE_TEST_POSTGRES_TLS). Each `sslmode` is tried as an operator would write
//! it in `--database`, and what the server saw is read from `pg_stat_ssl`.

use super::{skipped, PostgresDb, TestDb};
use crate::store::PostgresStore;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// The test server's TLS files, or `None` (skip) without a test server. A server without
/// them fails where PostgreSQL is required: these tests must not pass by skipping.
fn tls_files() -> Option<PathBuf> {
    let dir = std::env::var_os("KEYGATE_TEST_POSTGRES_TLS").filter(|d| !d.is_empty());
    if dir.is_none() && std::env::var("KEYGATE_REQUIRE_POSTGRES").as_deref() == Ok("1") {
        panic!(
            "KEYGATE_REQUIRE_POSTGRES=1 but KEYGATE_TEST_POSTGRES_TLS is unset: run the tests \
             under scripts/postgres.sh run, which starts PostgreSQL with TLS"
        );
    }
    dir.map(PathBuf::from)
}

struct TlsServer {
    db: PostgresDb,
    dir: PathBuf,
    port: u16,
    password: String,
}

impl TlsServer {
    fn new() -> Option<TlsServer> {
        let dir = tls_files()?;
        let db = PostgresDb::create()?;
        let port = db.server.get_ports().first().copied().unwrap_or(5432);
        let password = String::from_utf8(db.server.get_password().unwrap_or_default().to_vec())
            .expect("the test password is ASCII");
        Some(TlsServer {
            db,
            dir,
            port,
            password,
        })
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The test database's URL as `keygate` at `host`, with `options`.
    fn url(&self, host: &str, options: &str) -> String {
        format!(
            "postgres://keygate:{}@{host}:{}/{}?{options}",
            self.password, self.port, self.db.name
        )
    }

    /// Opens the store at `url` (which migrates the schema) and changes something.
    fn open(&self, url: &str) -> Result<PostgresStore, String> {
        let store = PostgresStore::connect(url).map_err(|e| e.to_string())?;
        static NEXT: AtomicU32 = AtomicU32::new(0);
        super::create(
            &store,
            &format!("tls{}", NEXT.fetch_add(1, Ordering::Relaxed)),
            1,
        );
        Ok(store)
    }

    /// (TLS?, user) of every keygatectl connection to the test database now.
    fn sessions(&self) -> Vec<(bool, String)> {
        self.db
            .client()
            .query(
                "SELECT s.ssl, a.usename::text FROM pg_stat_ssl s JOIN pg_stat_activity a \
                 USING (pid) WHERE a.datname = $1 AND a.application_name = 'keygatectl' \
                 AND a.pid <> pg_backend_pid()",
                &[&self.db.name],
            )
            .expect("pg_stat_ssl")
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    }
}

#[test]
fn verify_full_connects_by_a_name_the_certificate_lists_and_encrypts() {
    let Some(server) = TlsServer::new() else {
        return skipped();
    };
    // The certificate names `localhost`; hostaddr saves the lookup, as libpq's does.
    let url = server.url(
        "localhost",
        &format!(
            "hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}",
            server.file("ca.crt")
        ),
    );
    let store = server.open(&url).expect("verify-full");
    let sessions = server.sessions();
    assert!(!sessions.is_empty());
    assert!(sessions.iter().all(|(tls, _)| *tls), "{sessions:?}");
    drop(store);
}

#[test]
fn a_certificate_from_another_ca_is_refused_saying_so() {
    let Some(server) = TlsServer::new() else {
        return skipped();
    };
    let other = server.file("other-ca.crt");
    for mode in ["verify-full", "verify-ca", "require"] {
        let url = server.url(
            "localhost",
            &format!("hostaddr=127.0.0.1&sslmode={mode}&sslrootcert={other}"),
        );
        let e = server.open(&url).err().expect("refused");
        assert!(
            e.contains("the server's TLS certificate is not signed by a CA in sslrootcert")
                && e.contains(&other),
            "{mode}: {e}"
        );
        assert!(!e.contains(&server.password), "the password leaked: {e}");
    }
}

#[test]
fn a_host_name_the_certificate_does_not_list_is_refused_by_verify_full_only() {
    let Some(server) = TlsServer::new() else {
        return skipped();
    };
    let ca = server.file("ca.crt");
    let e = server
        .open(&server.url(
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ))
        .err()
        .expect("refused");
    assert!(
        e.contains("not valid for the host name \"127.0.0.1\""),
        "{e}"
    );
    // verify-ca checks the chain only.
    server
        .open(&server.url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}")))
        .expect("verify-ca");
    assert!(server.sessions().iter().all(|(tls, _)| *tls));
}

#[test]
fn require_encrypts_without_a_ca_and_disable_does_not() {
    let Some(server) = TlsServer::new() else {
        return skipped();
    };
    let store = server
        .open(&server.url("127.0.0.1", "sslmode=require"))
        .expect("require");
    assert_eq!(server.sessions().first().map(|s| s.0), Some(true));
    drop(store);
    let store = server
        .open(&server.url("127.0.0.1", "sslmode=disable"))
        .expect("disable");
    let sessions = server.sessions();
    assert!(
        !sessions.is_empty() && sessions.iter().all(|(tls, _)| !tls),
        "{sessions:?}"
    );
    drop(store);
}

#[test]
fn a_client_certificate_signs_in_where_the_server_asks_for_one() {
    let Some(server) = TlsServer::new() else {
        return skipped();
    };
    server.db.execute(&format!(
        "ALTER DATABASE {} OWNER TO keygate_cert",
        server.db.name
    ));
    let base = format!(
        "postgres://keygate_cert@localhost:{}/{}?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}",
        server.port,
        server.db.name,
        server.file("ca.crt")
    );
    // Without the certificate, the server refuses the role.
    let e = server.open(&base).err().expect("refused");
    assert!(e.contains("certificate"), "{e}");
    let with_cert = format!(
        "{base}&sslcert={}&sslkey={}",
        server.file("client.crt"),
        server.file("client.key")
    );
    let store = server.open(&with_cert).expect("client certificate");
    let sessions = server.sessions();
    assert!(
        sessions
            .iter()
            .all(|(tls, user)| *tls && user == "keygate_cert"),
        "{sessions:?}"
    );
    drop(store);
}
