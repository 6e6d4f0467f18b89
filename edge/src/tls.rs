//! The TLS listener's certificates, chosen per SNI at handshake time (#15). The platform's
//! names (`<domain>` and `<label>.<domain>`, and a handshake without SNI) get the platform
//! certificate, read from `--tls-cert`/`--tls-key` and read again whenever either file changes;
//! an active custom domain gets its own certificate (from ACME, through
//! [`crate::domain_certs`], or from the local CA); any other name fails the handshake,
//! so a scanner learns nothing and nobody can make the edge present a certificate for a name it
//! does not serve. [`choose`] is the rule; [`Certificates`] is the rustls resolver around it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use pingora_core::tls::sign::CertifiedKey;
use pingora_core::tls::{ClientHello, ResolvesServerCert};

use crate::domain_certs::DomainCertificates;

/// How often the certificate files are looked at for a change.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Which certificate a handshake naming `sni` gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SniChoice {
    /// The platform certificate (`<domain>` and `*.<domain>`).
    Platform,
    /// The certificate of this custom domain, if it has one.
    Custom(String),
    /// None: the handshake fails.
    Refuse,
}

/// The rule: the platform's names (one label deep: what a wildcard certificate covers) and no
/// SNI at all get the platform certificate; a well-formed name outside it may be a custom
/// domain; anything else is refused.
pub fn choose(sni: Option<&str>, domain: &str) -> SniChoice {
    let Some(sni) = sni else {
        return SniChoice::Platform;
    };
    let name = sni.trim_end_matches('.').to_ascii_lowercase();
    match gitdeploy_core::host::route_host(&name, domain, &[]) {
        gitdeploy_core::host::HostRoute::ControlPlane => SniChoice::Platform,
        gitdeploy_core::host::HostRoute::Site(_) => SniChoice::Platform,
        gitdeploy_core::host::HostRoute::Custom(name) => SniChoice::Custom(name),
        gitdeploy_core::host::HostRoute::Unknown => SniChoice::Refuse,
    }
}

/// The certificates the TLS listener presents.
pub struct Certificates {
    domain: String,
    platform: RwLock<Option<Arc<CertifiedKey>>>,
    /// Handshakes refused for want of a certificate.
    refused: prometheus::IntCounter,
    /// The custom domains' certificates.
    custom: Arc<DomainCertificates>,
    /// Without a platform pair: the local CA, and what it issued (by name, for a day).
    local: Option<(
        crate::local_ca::LocalCa,
        moka::sync::Cache<String, Arc<CertifiedKey>>,
    )>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl Certificates {
    /// Certificates for the platform serving `domain`, none loaded yet; handshakes refused for
    /// want of one are counted in `refused`.
    pub fn new(
        domain: &str,
        refused: prometheus::IntCounter,
        custom: Arc<DomainCertificates>,
    ) -> Arc<Self> {
        Arc::new(Certificates {
            domain: domain.to_owned(),
            platform: RwLock::new(None),
            refused,
            custom,
            local: None,
        })
    }

    /// Certificates for the platform serving `domain` issued by `ca`, one per name as
    /// handshakes ask for them.
    pub fn from_local_ca(
        domain: &str,
        refused: prometheus::IntCounter,
        custom: Arc<DomainCertificates>,
        ca: crate::local_ca::LocalCa,
    ) -> Arc<Self> {
        let issued = moka::sync::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(crate::local_ca::REISSUE_AFTER)
            .build();
        Arc::new(Certificates {
            domain: domain.to_owned(),
            platform: RwLock::new(None),
            refused,
            custom,
            local: Some((ca, issued)),
        })
    }

    /// A certificate of the local CA for `name`, issued once a day per name.
    fn local(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let (ca, issued) = self.local.as_ref()?;
        if let Some(key) = issued.get(name) {
            return Some(key);
        }
        match ca.issue(name) {
            Ok(key) => {
                issued.insert(name.to_owned(), key.clone());
                Some(key)
            }
            Err(e) => {
                tracing::warn!("the local CA cannot issue for {name}: {e}");
                None
            }
        }
    }

    /// Presents `key` (read from the PEM chain `chain_file`) for the platform's names from now
    /// on.
    pub fn set_platform(&self, key: Arc<CertifiedKey>, chain_file: &Path) {
        *self.platform.write().unwrap_or_else(|p| p.into_inner()) = Some(key);
        match std::fs::read(chain_file)
            .map_err(|e| e.to_string())
            .and_then(|pem| gitdeploy_api::cert_store::not_after_unix_ms(&pem))
        {
            Ok(t) => self.custom.set_platform_expiry(t),
            Err(e) => tracing::warn!("cannot read the platform certificate's expiry: {e}"),
        }
    }

    /// Whether a handshake for the custom domain `name` gets a certificate.
    pub fn serves_custom(&self, name: &str) -> bool {
        self.custom.serves_https(name)
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello
            .server_name()
            .map(|s| s.trim_end_matches('.').to_ascii_lowercase());
        let found = match choose(sni.as_deref(), &self.domain) {
            SniChoice::Platform => {
                let pair = self
                    .platform
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                pair.or_else(|| self.local(sni.as_deref().unwrap_or(&self.domain)))
            }
            // Only an active domain: the local CA never issues for a name nobody verified.
            SniChoice::Custom(name) => self.custom.certificate(&name).or_else(|| {
                self.custom
                    .is_active(&name)
                    .then(|| self.local(&name))
                    .flatten()
            }),
            SniChoice::Refuse => None,
        };
        if found.is_none() {
            self.refused.inc();
        }
        found
    }
}

/// The platform certificate's files, watched for changes.
#[derive(Clone, Debug)]
pub struct PlatformFiles {
    /// The certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

impl PlatformFiles {
    fn stamp(&self) -> Option<(SystemTime, u64, SystemTime, u64)> {
        let c = std::fs::metadata(&self.cert).ok()?;
        let k = std::fs::metadata(&self.key).ok()?;
        Some((c.modified().ok()?, c.len(), k.modified().ok()?, k.len()))
    }

    /// Loads the pair into `certs` now (an error when it cannot), then again, from a thread of
    /// its own, whenever either file changes; a changed pair that does not load is logged and
    /// the previous one goes on being presented.
    pub fn load_and_watch(
        self,
        certs: Arc<Certificates>,
        loads: prometheus::IntCounterVec,
    ) -> Result<(), String> {
        certs.set_platform(
            crate::certified::load_pair(&self.cert, &self.key)?,
            &self.cert,
        );
        loads.with_label_values(&["loaded"]).inc();
        let mut seen = self.stamp();
        let weak = Arc::downgrade(&certs);
        drop(certs);
        std::thread::Builder::new()
            .name("gitdeploy-tls-reload".into())
            .spawn(move || loop {
                std::thread::sleep(RELOAD_EVERY);
                let Some(certs) = weak.upgrade() else { return };
                let now = self.stamp();
                if now.is_some() && now != seen {
                    seen = now;
                    match crate::certified::load_pair(&self.cert, &self.key) {
                        Ok(key) => {
                            certs.set_platform(key, &self.cert);
                            loads.with_label_values(&["loaded"]).inc();
                            tracing::info!(cert = %self.cert.display(), "platform certificate reloaded");
                        }
                        Err(e) => {
                            loads.with_label_values(&["failed"]).inc();
                            tracing::warn!("platform certificate not reloaded: {e}")
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start the certificate watcher: {e}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_table() {
        for (sni, want) in [
            (None, SniChoice::Platform),
            (Some("sites.test"), SniChoice::Platform),
            (Some("api.sites.test"), SniChoice::Platform),
            (Some("k3f9q2m8x1ab.sites.test"), SniChoice::Platform),
            (Some("My-Site.Sites.Test."), SniChoice::Platform),
            (Some("a.b.sites.test"), SniChoice::Refuse),
            (
                Some("www.shop.org"),
                SniChoice::Custom("www.shop.org".into()),
            ),
            (Some("localhost"), SniChoice::Refuse),
            (Some("bad_name.org"), SniChoice::Refuse),
        ] {
            assert_eq!(choose(sni, "sites.test"), want, "{sni:?}");
        }
    }
}
