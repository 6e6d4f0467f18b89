//! Certificates made ready to present: a chain and key become a rustls [`CertifiedKey`], from
//! PEM files (the platform certificate, [`load_pair`]) or from a certificate the shared store
//! holds (a custom domain's, [`from_stored`]). The TLS resolver ([`crate::tls`]) and the custom
//! domains' cache ([`crate::domain_certs`]) both build on it, neither on the other.

use std::path::Path;
use std::sync::Arc;

use gitdeploy_api::cert_store::{pem_blocks, StoredCertificate};
use pingora_core::tls::sign::CertifiedKey;
use pingora_core::tls::{CertificateDer, CryptoProvider, PrivateKeyDer};

/// The certificate chain and key in PEM files `cert` and `key`, ready to present.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    pingora_core::tls::install_default_crypto_provider();
    let (certs, key_der) = pingora_core::tls::load_certs_and_key_files(
        &cert.display().to_string(),
        &key.display().to_string(),
    )
    .map_err(|e| format!("cannot read {} and {}: {e}", cert.display(), key.display()))?
    .ok_or_else(|| {
        format!(
            "{} holds no certificate or {} no private key (PEM)",
            cert.display(),
            key.display()
        )
    })?;
    let certs = certs.into_iter().map(|c| c.into_owned()).collect();
    certified_key(certs, key_der.clone_key()).map_err(|e| {
        format!(
            "{} and {} do not make a usable certificate: {e}",
            cert.display(),
            key.display()
        )
    })
}

/// A chain (leaf first) and its key, ready to present.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, String> {
    pingora_core::tls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default().ok_or("no TLS crypto provider is installed")?;
    CertifiedKey::from_der(chain, key, provider)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// The key `cert` presents, from its PEM chain and PKCS#8 key.
pub fn from_stored(cert: &StoredCertificate) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = pem_blocks(cert.chain_pem.as_bytes(), "CERTIFICATE")?
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    if chain.is_empty() {
        return Err("the stored chain holds no certificate".into());
    }
    let key = pem_blocks(cert.key_pem.as_bytes(), "PRIVATE KEY")?
        .into_iter()
        .next()
        .ok_or("the stored key is not a PKCS#8 private key")?;
    certified_key(chain, PrivateKeyDer::Pkcs8(key.into()))
}
