//! A certificate authority of the server's own, for `up --tls-listen` without certificate files
//! (as Caddy's `tls internal`): its key and certificate are made once in the data directory
//! (`tls/ca.key`, 0600, and `tls/ca.pem`, the file a browser or `curl --cacert` is told to
//! trust), and it issues a short-lived certificate for exactly the name a handshake asks for,
//! so `<label>.localhost` works where a `*.localhost` wildcard would be refused by clients.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pingora_core::tls::sign::CertifiedKey;
use pingora_core::tls::{CertificateDer, CryptoProvider, PrivateKeyDer};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// How long an issued certificate is valid (it is issued again long before: see
/// [`REISSUE_AFTER`]).
const VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long an issued certificate is presented before a new one is made.
pub const REISSUE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The local CA.
pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    /// Where its certificate is, for people to trust.
    pub ca_pem: PathBuf,
}

/// The CA's parameters, the same every time: the issuer of a certificate is named by them.
fn ca_params() -> Result<CertificateParams, String> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "GitDeploy local CA");
    name.push(DnType::OrganizationName, "GitDeploy");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
    Ok(params)
}

impl LocalCa {
    /// The CA kept in `dir`, made there first if it is not (the directory is the server's
    /// alone: 0700, the key 0600).
    pub fn open(dir: &Path) -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot close {}: {e}", dir.display()))?;
        let (key_path, ca_pem) = (dir.join("ca.key"), dir.join("ca.pem"));
        let (key, cert_pem) = match std::fs::read_to_string(&key_path) {
            Ok(pem) => {
                let key = KeyPair::from_pem(&pem)
                    .map_err(|e| format!("{} is not a key: {e}", key_path.display()))?;
                let cert = std::fs::read_to_string(&ca_pem)
                    .map_err(|e| format!("cannot read {}: {e}", ca_pem.display()))?;
                (key, cert)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = KeyPair::generate().map_err(|e| e.to_string())?;
                let cert = ca_params()?
                    .self_signed(&key)
                    .map_err(|e| format!("cannot make the local CA: {e}"))?;
                write_private(&key_path, &key.serialize_pem())?;
                std::fs::write(&ca_pem, cert.pem())
                    .map_err(|e| format!("cannot write {}: {e}", ca_pem.display()))?;
                (key, cert.pem())
            }
            Err(e) => return Err(format!("cannot read {}: {e}", key_path.display())),
        };
        drop(cert_pem);
        let ca_der = pingora_core::tls::load_certs_and_key_files(
            &ca_pem.display().to_string(),
            &key_path.display().to_string(),
        )
        .ok()
        .flatten()
        .and_then(|(certs, _)| certs.into_iter().next())
        .map(|c| c.into_owned())
        .ok_or_else(|| format!("{} holds no certificate", ca_pem.display()))?;
        Ok(LocalCa {
            issuer: Issuer::new(ca_params()?, key),
            ca_der,
            ca_pem,
        })
    }

    /// A new certificate for exactly `name`, with the CA's certificate after it.
    pub fn issue(&self, name: &str) -> Result<Arc<CertifiedKey>, String> {
        let mut params =
            CertificateParams::new(vec![name.to_owned()]).map_err(|e| e.to_string())?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + VALIDITY;
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| format!("cannot issue a certificate for {name}: {e}"))?;
        let provider =
            CryptoProvider::get_default().ok_or("no TLS crypto provider is installed")?;
        CertifiedKey::from_der(
            vec![cert.der().clone(), self.ca_der.clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            provider,
        )
        .map(Arc::new)
        .map_err(|e| format!("the certificate for {name} is not usable: {e}"))
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_made_once_and_issues_for_exact_names() {
        pingora_core::tls::install_default_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::open(&dir.path().join("tls")).unwrap();
        let first = std::fs::read(&ca.ca_pem).unwrap();
        let key = ca.issue("shop.localhost").unwrap();
        assert_eq!(key.cert.len(), 2, "leaf, then the CA");
        assert_eq!(key.cert[1], ca.ca_der);
        // Opened again: the same CA, not a new one.
        let again = LocalCa::open(&dir.path().join("tls")).unwrap();
        assert_eq!(std::fs::read(&again.ca_pem).unwrap(), first);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("tls/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
