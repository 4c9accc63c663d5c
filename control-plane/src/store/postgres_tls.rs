//! TLS to PostgreSQL with rustls, configured the way libpq users know: `sslmode`,
//! `sslrootcert`, `sslcert` and `sslkey` in the connection URL (or `PGSSLMODE`,
//! `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`), with libpq's meanings:
//!
//! | sslmode | TLS | the server's certificate |
//! | --- | --- | --- |
//! | `disable` | never | - |
//! | `prefer` (default) | when the server offers it | not checked |
//! | `require` | always | not checked; with a root certificate, as `verify-ca` |
//! | `verify-ca` | always | signed by a CA in `sslrootcert` |
//! | `verify-full` | always | signed by a CA in `sslrootcert` and naming the host |
//!
//! `sslrootcert` is a PEM file of CA certificates, or `system` for Mozilla's root list
//! (built in: no system store needed in a container); default `~/.postgresql/root.crt` when
//! it exists. A client certificate (`sslcert` + `sslkey`, PEM; default
//! `~/.postgresql/postgresql.crt` and `.key` when both exist) is sent when the server asks.
//! tokio-postgres knows none of this but `sslmode=disable|prefer|require`, so the options are
//! taken out of the URL here, and the checks are the connector's.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`, less `allow` (plain first, TLS only if refused), which
/// tokio-postgres cannot do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, TlsError> {
        match value {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(TlsError::SslMode(other.to_string())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres is told: whether to ask for TLS, and whether to go on without.
    pub fn negotiation(self) -> postgres::config::SslMode {
        match self {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Prefer => postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                postgres::config::SslMode::Require
            }
        }
    }
}

/// Where the CA certificates that sign the server's certificate come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    File(PathBuf),
    /// `sslrootcert=system`: Mozilla's root list, as built in (webpki-roots).
    System,
}

impl fmt::Display for RootCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootCerts::File(path) => write!(f, "sslrootcert {}", path.display()),
            RootCerts::System => f.write_str("sslrootcert=system (Mozilla's root list)"),
        }
    }
}

/// The TLS settings of a connection URL, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root_certs: Option<RootCerts>,
    /// Client certificate chain and key files.
    pub client: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "invalid PostgreSQL URL: sslmode must be disable, prefer, require, verify-ca or \
         verify-full, not {0:?}"
    )]
    SslMode(String),
    #[error("invalid PostgreSQL URL: {0} needs {1} too")]
    Incomplete(&'static str, &'static str),
    #[error("invalid PostgreSQL URL: {0} is not valid UTF-8 once percent-decoded")]
    Encoding(&'static str),
    #[error(
        "sslmode={0} checks the server's certificate against CA certificates: give them with \
         sslrootcert=FILE (PEM), or sslrootcert=system for the public CAs"
    )]
    NoRootCerts(&'static str),
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{what} {path} holds no usable certificate")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("cannot set up TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot set up TLS: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
}

/// The URL's own TLS options and the environment's, for what the URL leaves out.
const OPTIONS: [(&str, &str); 4] = [
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
];

/// Splits the TLS options off a connection URL: the URL without them (for tokio-postgres's
/// parser) and the settings, with the environment's and libpq's default files filled in.
pub fn take_tls_options(url: &str) -> Result<(String, TlsSettings), TlsError> {
    take_tls_options_with(url, |name| std::env::var_os(name), home_dir())
}

fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
}

fn take_tls_options_with(
    url: &str,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
    home: Option<PathBuf>,
) -> Result<(String, TlsSettings), TlsError> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let mut kept = Vec::new();
    let mut given: [Option<String>; 4] = Default::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match OPTIONS.iter().position(|(option, _)| *option == name) {
            Some(i) => {
                let decoded = percent_encoding::percent_decode_str(value)
                    .decode_utf8()
                    .map_err(|_| TlsError::Encoding(OPTIONS[i].0))?;
                given[i] = Some(decoded.into_owned());
            }
            None => kept.push(pair),
        }
    }
    // The URL's value, else the environment's.
    let mut value = |i: usize| {
        given[i].take().or_else(|| {
            env(OPTIONS[i].1)
                .filter(|v| !v.is_empty())
                .map(|v| v.to_string_lossy().into_owned())
        })
    };
    let (mode, root, cert, key) = (value(0), value(1), value(2), value(3));
    let mode = mode
        .as_deref()
        .map(SslMode::parse)
        .transpose()?
        .unwrap_or(SslMode::Prefer);
    let default_file = |name: &str| {
        home.as_ref()
            .map(|home| home.join(".postgresql").join(name))
            .filter(|path| path.is_file())
    };
    let root_certs = match root.as_deref() {
        Some("system") => Some(RootCerts::System),
        Some(path) => Some(RootCerts::File(PathBuf::from(path))),
        None => default_file("root.crt").map(RootCerts::File),
    };
    let client = match (cert, key) {
        (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
        (Some(_), None) => return Err(TlsError::Incomplete("sslcert", "sslkey")),
        (None, Some(_)) => return Err(TlsError::Incomplete("sslkey", "sslcert")),
        (None, None) => default_file("postgresql.crt").zip(default_file("postgresql.key")),
    };
    if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_certs.is_none() {
        return Err(TlsError::NoRootCerts(mode.as_str()));
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((
        url,
        TlsSettings {
            mode,
            root_certs,
            client,
        },
    ))
}

/// How much of the server's certificate is checked.
enum Check {
    Nothing,
    Chain(RootCertStore),
    ChainAndName(RootCertStore),
}

/// The connector for `settings`: rustls with the checks its `sslmode` asks for.
pub fn connector(settings: &TlsSettings) -> Result<MakeRustlsConnect, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = settings.root_certs.as_ref().map(load_roots).transpose()?;
    let check = match (settings.mode, roots) {
        (SslMode::VerifyFull, Some(roots)) => Check::ChainAndName(roots),
        // libpq: `require` with a root certificate file checks the chain, as `verify-ca`.
        (SslMode::VerifyCa | SslMode::Require, Some(roots)) => Check::Chain(roots),
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(TlsError::NoRootCerts(settings.mode.as_str()))
        }
        (SslMode::Disable | SslMode::Prefer | SslMode::Require, _) => Check::Nothing,
    };
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = match check {
        Check::ChainAndName(roots) => builder.with_root_certificates(roots),
        Check::Chain(roots) => {
            let verifier =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(verifier)))
        }
        Check::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unchecked(provider))),
    };
    let mut config = match &settings.client {
        Some((cert, key)) => {
            let chain = load_certs("sslcert", cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Read {
                what: "sslkey",
                path: key.clone(),
                source,
            })?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    // Every connection makes a full handshake, as libpq's do: PostgreSQL may find no client
    // certificate in a resumed session and refuse the role that signs in with one.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(MakeRustlsConnect::new(config))
}

fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn load_roots(roots: &RootCerts) -> Result<RootCertStore, TlsError> {
    match roots {
        RootCerts::System => Ok(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        }),
        RootCerts::File(path) => {
            let mut store = RootCertStore::empty();
            let (added, _) = store.add_parsable_certificates(load_certs("sslrootcert", path)?);
            if added == 0 {
                return Err(TlsError::NoCertificate {
                    what: "sslrootcert",
                    path: path.clone(),
                });
            }
            Ok(store)
        }
    }
}

/// `verify-ca`: the chain must lead to a trusted CA; the name in the certificate is not
/// compared with the host's. rustls checks the chain before the name, so a name mismatch is
/// only ever reported for a certificate whose chain is good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a root certificate: encryption against eavesdroppers,
/// as libpq gives it, without proof of whom the server is. The handshake's signatures are
/// still checked, so the session is the certificate holder's.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why a TLS handshake failed, in the operator's terms, when the cause is the server's
/// certificate; `None` for anything else.
pub fn explain_handshake_failure(
    error: &(dyn std::error::Error + 'static),
    settings: &TlsSettings,
    host: &str,
) -> Option<String> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        // tokio-rustls hands rustls's error inside an io::Error, whose `source` skips it.
        let rustls_error = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::InvalidCertificate(why)) = rustls_error {
            let roots = settings
                .root_certs
                .as_ref()
                .map_or_else(|| "the CA certificates".to_string(), ToString::to_string);
            let mode = settings.mode.as_str();
            return Some(match why {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                    "the server's TLS certificate is not signed by a CA in {roots} \
                     (sslmode={mode}); give the CA that signed it"
                ),
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => format!(
                    "the server's TLS certificate is not valid for the host name {host:?} \
                     (sslmode=verify-full compares them): connect by a name the certificate \
                     lists, e.g. with hostaddr=IP beside it"
                ),
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "the server's TLS certificate has expired".to_string()
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "the server's TLS certificate is not valid yet (check the clocks)".to_string()
                }
                other => format!("the server's TLS certificate was refused: {other:?}"),
            });
        }
        cause = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::OsString;

    fn take(url: &str, env: &[(&str, &str)], home: Option<&Path>) -> (String, TlsSettings) {
        let env: HashMap<String, OsString> = env
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        take_tls_options_with(
            url,
            |name| env.get(name).cloned(),
            home.map(Path::to_path_buf),
        )
        .expect("valid")
    }

    fn fails(url: &str) -> String {
        take_tls_options_with(url, |_| None, None)
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn the_tls_options_leave_the_url_and_the_others_stay_in_order() {
        let (url, tls) = take(
            "postgres://u:p@db:5432/kg?connect_timeout=5&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=a",
            &[],
            None,
        );
        assert_eq!(
            url,
            "postgres://u:p@db:5432/kg?connect_timeout=5&application_name=a"
        );
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_certs, Some(RootCerts::File("/etc/ca.pem".into())));
        assert_eq!(tls.client, None);
        let (url, tls) = take("postgresql://db/kg?sslmode=require", &[], None);
        assert_eq!(
            (url.as_str(), tls.mode),
            ("postgresql://db/kg", SslMode::Require)
        );
        let (url, tls) = take("postgres://db/kg", &[], None);
        assert_eq!(
            (url.as_str(), tls.mode),
            ("postgres://db/kg", SslMode::Prefer)
        );
        assert_eq!(
            take(
                "postgres://db/kg?sslmode=verify-ca&sslrootcert=system",
                &[],
                None
            )
            .1
            .root_certs,
            Some(RootCerts::System)
        );
    }

    #[test]
    fn the_environment_fills_in_what_the_url_leaves_out() {
        let env = [
            ("PGSSLMODE", "verify-full"),
            ("PGSSLROOTCERT", "/env/ca.pem"),
            ("PGSSLCERT", "/env/c.crt"),
            ("PGSSLKEY", "/env/c.key"),
        ];
        let (_, tls) = take("postgres://db/kg?sslmode=require", &env, None);
        assert_eq!(tls.mode, SslMode::Require);
        assert_eq!(tls.root_certs, Some(RootCerts::File("/env/ca.pem".into())));
        assert_eq!(tls.client, Some(("/env/c.crt".into(), "/env/c.key".into())));
    }

    #[test]
    fn libpq_s_default_files_are_used_when_they_exist() {
        let home = tempfile::tempdir().expect("tempdir");
        let dir = home.path().join(".postgresql");
        std::fs::create_dir(&dir).expect("dir");
        let (_, tls) = take("postgres://db/kg", &[], Some(home.path()));
        assert_eq!((tls.root_certs, tls.client), (None, None));
        for name in ["root.crt", "postgresql.crt", "postgresql.key"] {
            std::fs::write(dir.join(name), "").expect("write");
        }
        let (_, tls) = take(
            "postgres://db/kg?sslmode=verify-full",
            &[],
            Some(home.path()),
        );
        assert_eq!(tls.root_certs, Some(RootCerts::File(dir.join("root.crt"))));
        assert_eq!(
            tls.client,
            Some((dir.join("postgresql.crt"), dir.join("postgresql.key")))
        );
    }

    #[test]
    fn bad_tls_options_are_refused_with_the_reason() {
        assert!(fails("postgres://db/kg?sslmode=allow").contains("not \"allow\""));
        assert!(fails("postgres://db/kg?sslmode=verify-full").contains("sslrootcert=FILE"));
        assert!(fails("postgres://db/kg?sslmode=verify-ca").contains("sslrootcert=FILE"));
        assert!(fails("postgres://db/kg?sslcert=/c.crt").contains("sslkey"));
        assert!(fails("postgres://db/kg?sslkey=/c.key").contains("sslcert"));
        assert!(fails("postgres://db/kg?sslrootcert=%FF").contains("UTF-8"));
    }

    #[test]
    fn missing_or_empty_certificate_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let settings = |path: PathBuf| TlsSettings {
            mode: SslMode::VerifyFull,
            root_certs: Some(RootCerts::File(path)),
            client: None,
        };
        let missing = dir.path().join("missing.pem");
        let e = connector(&settings(missing.clone()))
            .err()
            .expect("refused");
        assert!(
            e.to_string().contains(&missing.display().to_string()),
            "{e}"
        );
        let e = connector(&settings(empty.clone())).err().expect("refused");
        assert!(e.to_string().contains("holds no usable certificate"), "{e}");
        // The built-in roots and no check at all need no file.
        for (mode, roots) in [
            (SslMode::VerifyFull, Some(RootCerts::System)),
            (SslMode::Require, None),
            (SslMode::Prefer, None),
            (SslMode::Disable, None),
        ] {
            let settings = TlsSettings {
                mode,
                root_certs: roots,
                client: None,
            };
            assert!(connector(&settings).is_ok(), "{mode:?}");
        }
    }
}
