//! Custom domains' certificates as this edge presents them (#15): every active domain, and the
//! certificate the shared [`CertStore`] holds for it, kept in memory for the TLS resolver
//! (which runs inside a handshake and cannot wait for a store). [`DomainCertificates::sync`]
//! loads them: at start, whenever a domain record changes (the store announces it on the alias
//! channel), and every [`RESYNC_EVERY`] in case an announcement was lost. A certificate is read
//! again only when its record's expiry changed, so a sync of unchanged domains reads no key.
//!
//! It also feeds the certificate metrics: domains by certificate state and the fewest days left
//! before a presented certificate expires (the alert rule watches it).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use gitdeploy_api::cert_store::CertStore;
use gitdeploy_api::domains::DomainStatus;
use gitdeploy_api::Records;
use pingora_core::tls::sign::CertifiedKey;
use prometheus::{GaugeVec, IntGaugeVec, Opts, Registry};

/// A full sync this often, whatever was announced.
pub const RESYNC_EVERY: Duration = Duration::from_secs(60);
/// Certificate states counted (`gitdeploy_tls_certificates{state}`).
const STATES: [&str; 4] = ["valid", "renewal_due", "expired", "missing"];

#[derive(Default)]
struct Held {
    /// Active custom domains.
    active: HashSet<String>,
    /// Their certificates: expiry (Unix ms) and the key to present.
    certs: HashMap<String, (u64, Arc<CertifiedKey>)>,
    /// The platform certificate's expiry, once loaded.
    platform_not_after: Option<u64>,
}

/// The custom domains' certificates this edge presents.
pub struct DomainCertificates {
    held: RwLock<Held>,
    /// The local CA issues for active domains (no ACME).
    local_ca: bool,
    /// Renewals are due this long before expiry.
    renew_before: Duration,
    states: IntGaugeVec,
    days_left: GaugeVec,
}

/// Which state a certificate expiring at `not_after` (Unix ms) is in at `now`.
pub fn certificate_state(not_after: Option<u64>, now: u64, renew_before: Duration) -> &'static str {
    match not_after {
        None => "missing",
        Some(t) if t <= now => "expired",
        Some(t) if t <= now.saturating_add(renew_before.as_millis() as u64) => "renewal_due",
        Some(_) => "valid",
    }
}

impl DomainCertificates {
    /// Nothing held yet; its metrics registered in `registry`.
    pub fn new(
        local_ca: bool,
        renew_before: Duration,
        registry: &Registry,
    ) -> prometheus::Result<Arc<Self>> {
        let states = IntGaugeVec::new(
            Opts::new(
                "gitdeploy_tls_certificates",
                "Custom domains (active or issuing) by the state of their certificate: valid, \
                 renewal_due, expired, missing.",
            ),
            &["state"],
        )?;
        let days_left = GaugeVec::new(
            Opts::new(
                "gitdeploy_tls_certificate_days_left",
                "Days until the soonest expiry among the certificates presented, by kind \
                 (platform, custom).",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(states.clone()))?;
        registry.register(Box::new(days_left.clone()))?;
        Ok(Arc::new(DomainCertificates {
            held: RwLock::new(Held::default()),
            local_ca,
            renew_before,
            states,
            days_left,
        }))
    }

    fn held(&self) -> std::sync::RwLockReadGuard<'_, Held> {
        self.held.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The certificate to present for `name`, if it is an active domain with one.
    pub fn certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.held().certs.get(name).map(|(_, k)| k.clone())
    }

    /// Whether `name` is an active custom domain.
    pub fn is_active(&self, name: &str) -> bool {
        self.held().active.contains(name)
    }

    /// Whether a handshake for `name` gets a certificate (so plain HTTP may redirect to HTTPS).
    pub fn serves_https(&self, name: &str) -> bool {
        let held = self.held();
        held.certs.contains_key(name) || (self.local_ca && held.active.contains(name))
    }

    /// Records the platform certificate's expiry (for the days-left gauge).
    pub fn set_platform_expiry(&self, not_after_ms: u64) {
        self.held
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .platform_not_after = Some(not_after_ms);
        self.update_days_left(gitdeploy_api::now_unix_ms());
    }

    fn update_days_left(&self, now: u64) {
        let held = self.held();
        let days = |t: u64| (t as f64 - now as f64) / 86_400_000.0;
        if let Some(t) = held.platform_not_after {
            self.days_left.with_label_values(&["platform"]).set(days(t));
        }
        match held.certs.values().map(|(t, _)| *t).min() {
            Some(t) => self.days_left.with_label_values(&["custom"]).set(days(t)),
            None => {
                let _ = self.days_left.remove_label_values(&["custom"]);
            }
        }
    }

    /// Loads the active domains and their certificates from `records` and `store` (none without
    /// ACME: the local CA or nothing serves them).
    pub async fn sync(
        &self,
        records: &Records,
        store: Option<&dyn CertStore>,
    ) -> Result<(), String> {
        let domains = records
            .store()
            .domains(None)
            .await
            .map_err(|e| format!("cannot list custom domains: {e}"))?;
        let now = gitdeploy_api::now_unix_ms();
        let mut counts = [0i64; STATES.len()];
        let mut active = HashSet::new();
        let mut wanted: Vec<(String, u64)> = Vec::new();
        for d in &domains {
            if matches!(d.status, DomainStatus::Active | DomainStatus::Issuing) && store.is_some() {
                let state = certificate_state(d.not_after_unix_ms, now, self.renew_before);
                if let Some(i) = STATES.iter().position(|s| *s == state) {
                    counts[i] += 1;
                }
            }
            if d.status != DomainStatus::Active {
                continue;
            }
            active.insert(d.domain.clone());
            if let Some(t) = d.not_after_unix_ms {
                wanted.push((d.domain.clone(), t));
            }
        }
        // Read only what changed.
        let stale: Vec<(String, u64)> = {
            let held = self.held();
            wanted
                .iter()
                .filter(|(d, t)| held.certs.get(d).is_none_or(|(have, _)| have != t))
                .cloned()
                .collect()
        };
        let mut loaded = Vec::new();
        if let Some(store) = store {
            for (domain, _) in stale {
                match store.certificate(&domain).await {
                    Ok(Some(cert)) => match crate::certified::from_stored(&cert) {
                        Ok(key) => loaded.push((domain, cert.not_after_unix_ms, key)),
                        Err(e) => tracing::warn!(%domain, "stored certificate unusable: {e}"),
                    },
                    Ok(None) => {
                        tracing::warn!(%domain, "active domain without a stored certificate")
                    }
                    Err(e) => tracing::warn!(%domain, "cannot read its certificate: {e}"),
                }
            }
        }
        {
            let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
            held.certs.retain(|d, _| active.contains(d));
            for (domain, t, key) in loaded {
                tracing::info!(%domain, not_after_unix_ms = t, "custom domain certificate loaded");
                held.certs.insert(domain, (t, key));
            }
            held.active = active;
        }
        for (state, n) in STATES.iter().zip(counts) {
            self.states.with_label_values(&[state]).set(n);
        }
        self.update_days_left(now);
        Ok(())
    }

    /// Syncs now and then whenever a domain changes and every [`RESYNC_EVERY`], on `rt`, for
    /// as long as the process runs.
    pub fn watch(
        self: &Arc<Self>,
        rt: &tokio::runtime::Runtime,
        records: Records,
        store: Option<Arc<dyn CertStore>>,
    ) {
        use gitdeploy_api::store::AliasChange;
        use tokio::sync::broadcast::error::RecvError;
        let mut changes = records.store().alias_changes();
        let me = Arc::downgrade(self);
        rt.spawn(async move {
            loop {
                let Some(certs) = me.upgrade() else { return };
                if let Err(e) = certs.sync(&records, store.as_deref()).await {
                    tracing::warn!("custom domain certificates not synced: {e}");
                }
                drop(certs);
                let deadline = tokio::time::sleep(RESYNC_EVERY);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        () = &mut deadline => break,
                        change = changes.recv() => match change {
                            Ok(AliasChange::Domain(_)) | Err(RecvError::Lagged(_)) => break,
                            Ok(_) => {}
                            Err(RecvError::Closed) => return,
                        },
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_table() {
        let day = 86_400_000u64;
        let now = 100 * day;
        let rb = Duration::from_secs(30 * 86_400);
        for (t, want) in [
            (None, "missing"),
            (Some(now - 1), "expired"),
            (Some(now), "expired"),
            (Some(now + day), "renewal_due"),
            (Some(now + 30 * day), "renewal_due"),
            (Some(now + 31 * day), "valid"),
        ] {
            assert_eq!(certificate_state(t, now, rb), want, "{t:?}");
        }
    }
}
