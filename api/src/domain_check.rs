//! Ownership checks of custom domains: a domain serves (and, later, gets a certificate) only
//! once it resolves, through the configured resolver, to a CNAME under the platform domain or to
//! one of the edge's public addresses. [`verdict`] is the rule; [`DomainChecker`] asks DNS and
//! moves `pending_dns` (and DNS-`failed`) domains along, every [`CHECK_EVERY`] and when asked.
//!
//! DNS answers are hostile input too: only the names and addresses are looked at, every lookup
//! has a timeout, and a failing resolver leaves a domain where it was, with the reason.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;

use crate::domains::{CustomDomain, DomainStatus};
use crate::records::Records;
use crate::store::StoreError;

/// How often waiting domains are checked again.
pub const CHECK_EVERY: Duration = Duration::from_secs(30);
/// Longest wait for one DNS answer.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether what `domain` resolves to makes it the platform's: `Ok` with how, or why not.
pub fn verdict(
    domain: &str,
    cnames: &[String],
    addresses: &[IpAddr],
    platform_domain: &str,
    public_addresses: &[IpAddr],
) -> Result<String, String> {
    let platform = platform_domain.trim_end_matches('.').to_ascii_lowercase();
    let under = |name: &str| {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        name == platform || name.ends_with(&format!(".{platform}"))
    };
    if let Some(target) = cnames.iter().find(|c| under(c)) {
        return Ok(format!(
            "CNAME {} under {platform}",
            target.trim_end_matches('.')
        ));
    }
    if let Some(ip) = addresses.iter().find(|a| public_addresses.contains(a)) {
        return Ok(format!("resolves to the platform's address {ip}"));
    }
    let found = match (cnames.first(), addresses.is_empty()) {
        (Some(c), _) => format!("it is a CNAME to {}", c.trim_end_matches('.')),
        (None, false) => format!(
            "it resolves to {}",
            addresses
                .iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (None, true) => "it does not resolve".to_owned(),
    };
    let wanted = if public_addresses.is_empty() {
        format!("a CNAME record to a name under {platform}")
    } else {
        format!(
            "a CNAME record to a name under {platform}, or A/AAAA records to {}",
            public_addresses
                .iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Err(format!(
        "{domain} does not point at the platform ({found}): add {wanted}"
    ))
}

/// Asks DNS about custom domains and records what it found.
pub struct DomainChecker {
    resolver: TokioResolver,
    platform_domain: String,
    public_addresses: Vec<IpAddr>,
    /// With certificates ordered ([`crate::acme`]): verified domains become `issuing`, and
    /// this is notified; else they become `active` at once.
    orders: Option<std::sync::Arc<tokio::sync::Notify>>,
}

impl DomainChecker {
    /// A checker asking `resolver` (host:port), or the system's resolvers without one.
    pub fn new(
        resolver: Option<SocketAddr>,
        platform_domain: &str,
        public_addresses: Vec<IpAddr>,
    ) -> Result<Self, String> {
        let mut opts = ResolverOpts::default();
        opts.timeout = LOOKUP_TIMEOUT;
        opts.attempts = 2;
        // Ownership is a fact about DNS, not about this machine's hosts file; nothing cached
        // for long (a user who just fixed a record expects the next check to see it).
        opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
        opts.positive_max_ttl = Some(Duration::from_secs(30));
        opts.negative_max_ttl = Some(Duration::from_secs(5));
        let builder = match resolver {
            Some(addr) => {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut server.connections {
                    c.port = addr.port();
                }
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, Vec::new(), vec![server]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio()
                .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?,
        };
        let resolver = builder
            .with_options(opts)
            .build()
            .map_err(|e| format!("cannot start the DNS resolver: {e}"))?;
        Ok(DomainChecker {
            resolver,
            platform_domain: platform_domain.to_owned(),
            public_addresses,
            orders: None,
        })
    }

    /// Verified domains wait for a certificate (`issuing`); `orderer` is notified of them.
    pub fn ordering_certificates(mut self, orderer: std::sync::Arc<tokio::sync::Notify>) -> Self {
        self.orders = Some(orderer);
        self
    }

    /// What DNS says of `domain`: `Ok` with how it points at the platform, or why not.
    pub async fn check(&self, domain: &str) -> Result<String, String> {
        let fqdn = format!("{domain}.");
        let cnames: Vec<String> = match self.resolver.lookup(fqdn.as_str(), RecordType::CNAME).await
        {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::CNAME(c) => Some(c.0.to_ascii().to_ascii_lowercase()),
                    _ => None,
                })
                .collect(),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Vec::new(),
            Err(e) => return Err(format!("the DNS lookup of {domain} failed: {e}")),
        };
        let addresses: Vec<IpAddr> = if cnames.is_empty() {
            match self.resolver.lookup_ip(fqdn.as_str()).await {
                Ok(ips) => ips.iter().collect(),
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => Vec::new(),
                Err(e) => return Err(format!("the DNS lookup of {domain} failed: {e}")),
            }
        } else {
            Vec::new()
        };
        verdict(
            domain,
            &cnames,
            &addresses,
            &self.platform_domain,
            &self.public_addresses,
        )
    }

    /// Checks every domain waiting for its DNS and records the outcome: verified domains become
    /// `active` (or `issuing`, when certificates are ordered), the others keep waiting with the
    /// reason in `error`.
    pub async fn check_waiting(&self, records: &Records) -> Result<(), StoreError> {
        let waiting: Vec<CustomDomain> = records
            .store()
            .domains(None)
            .await
            .map_err(StoreError::from)?
            .into_iter()
            .filter(|d| d.status == DomainStatus::PendingDns)
            .collect();
        let verified = if self.orders.is_some() {
            DomainStatus::Issuing
        } else {
            DomainStatus::Active
        };
        let mut any = false;
        for d in waiting {
            let found = self.check(&d.domain).await;
            any |= found.is_ok();
            records
                .update_domain(&d.domain, |d| {
                    if d.status != DomainStatus::PendingDns {
                        return;
                    }
                    match &found {
                        Ok(how) => {
                            tracing::info!(domain = %d.domain, "custom domain verified: {how}");
                            d.status = verified;
                            d.error = None;
                        }
                        Err(why) => d.error = Some(why.clone()),
                    }
                })
                .await?;
        }
        if let (true, Some(orders)) = (any, &self.orders) {
            orders.notify_one();
        }
        Ok(())
    }

    /// Checks waiting domains every `every` ([`CHECK_EVERY`] in production), and at once
    /// whenever `nudge` is notified (a domain was added), for as long as the task runs.
    pub async fn run(
        self,
        records: Records,
        nudge: std::sync::Arc<tokio::sync::Notify>,
        every: Duration,
    ) {
        loop {
            if let Err(e) = self.check_waiting(&records).await {
                tracing::warn!("cannot check custom domains: {e}");
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = nudge.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_table() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let public = [ip("203.0.113.7"), ip("2001:db8::7")];
        let v = |cnames: &[&str], addrs: &[&str], public: &[IpAddr]| {
            let cnames: Vec<String> = cnames.iter().map(|s| s.to_string()).collect();
            let addrs: Vec<IpAddr> = addrs.iter().map(|s| ip(s)).collect();
            verdict("www.shop.org", &cnames, &addrs, "sites.test", public)
        };
        assert!(v(&["shop.sites.test."], &[], &public).is_ok());
        assert!(v(&["SITES.TEST"], &[], &public).is_ok());
        assert!(v(&[], &["203.0.113.7"], &public).is_ok());
        assert!(v(&[], &["10.0.0.1", "2001:db8::7"], &public).is_ok());
        // Look-alikes and strangers are refused, saying what was found and what is wanted.
        let e = v(&["shop.sites.test.evil.org."], &[], &public).unwrap_err();
        assert!(e.contains("CNAME to shop.sites.test.evil.org"), "{e}");
        let e = v(&["evilsites.test"], &[], &public).unwrap_err();
        assert!(e.contains("under sites.test"), "{e}");
        let e = v(&[], &["198.51.100.1"], &public).unwrap_err();
        assert!(
            e.contains("resolves to 198.51.100.1") && e.contains("203.0.113.7, 2001:db8::7"),
            "{e}"
        );
        let e = v(&[], &[], &[]).unwrap_err();
        assert!(
            e.contains("does not resolve")
                && e.contains("a CNAME record to a name under sites.test"),
            "{e}"
        );
        // Without public addresses only a CNAME verifies.
        assert!(v(&[], &["203.0.113.7"], &[]).is_err());
    }
}
