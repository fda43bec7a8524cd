//! The rustls client configuration of `mqtts://` queues: the system's roots or the
//! `tls_ca_file` CA, and an optional client certificate, with the ring provider.

use std::path::Path;
use std::sync::Arc;

use courier_core::backend::TlsFiles;
use courier_core::{Error, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The client configuration for `files`.
///
/// # Errors
///
/// [`ErrorKind::Config`](courier_core::ErrorKind::Config) naming the key whose file cannot be
/// read or holds no usable certificate or key, or when the system has no root certificates.
pub(crate) fn client_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match &files.ca_file {
        Some(ca) => {
            for cert in certificates("options.tls_ca_file", ca)? {
                roots.add(cert).map_err(|e| {
                    Error::config(
                        "options.tls_ca_file",
                        format!("{} holds an unusable certificate: {e}", ca.display()),
                    )
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(Error::config(
                    "options.tls_ca_file",
                    "this system has no root certificates: give the broker's CA",
                ));
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::config("options.tls", format!("rustls refuses: {e}")))?
    .with_root_certificates(roots);
    let config = match &files.client {
        Some((cert, key)) => {
            let chain = certificates("options.tls_cert_file", cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                Error::config(
                    "options.tls_key_file",
                    format!("{} holds no PEM private key: {e}", key.display()),
                )
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                Error::config(
                    "options.tls_cert_file",
                    format!("the client certificate and key do not go together: {e}"),
                )
            })?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The PEM certificates in `path` (at least one).
fn certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let unreadable = |e: &dyn std::fmt::Display| {
        Error::config(key, format!("cannot read {}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| unreadable(&e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| unreadable(&e))?;
    if certs.is_empty() {
        return Err(Error::config(
            key,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}
