//! Certificates for custom domains from an ACME CA (#15). A verified domain (`issuing`) gets a
//! certificate ordered and becomes `active` once it is stored; an active one is renewed
//! [`RENEW_BEFORE`] its expiry. Only names a project verified are ever ordered: the orderer
//! reads the domain records, never the handshakes, so an unknown SNI causes no ACME traffic.
//!
//! Every edge runs an [`Orderer`]; a lease per name in the [`CertStore`] lets one of them order
//! it at a time, and the certificate goes into the store, where every edge reads it. HTTP-01 is
//! the challenge: its answer goes into the store too, so whichever edge the CA's request
//! reaches answers it (`GET /.well-known/acme-challenge/<token>` on the plain listener).
//!
//! A failed order (the CA down, a challenge refused) leaves the domain where it was (an active
//! one keeps serving its current certificate), shows the reason in its `error`, and is tried
//! again after a backoff that doubles from [`RETRY_FIRST`] to [`RETRY_MOST`] ([`retry_delay`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, Order, OrderStatus, RetryPolicy,
};

use crate::cert_store::{not_after_unix_ms, CertStore, StoredCertificate};
use crate::domains::{CustomDomain, DomainStatus};
use crate::metrics::ApiMetrics;
use crate::records::Records;
use crate::store::StoreError;

/// Renew this long before a certificate expires.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// The first wait after a failed order.
pub const RETRY_FIRST: Duration = Duration::from_secs(60);
/// The longest wait between failed orders.
pub const RETRY_MOST: Duration = Duration::from_secs(6 * 3600);
/// How often the records are looked at for a certificate due.
pub const CHECK_EVERY: Duration = Duration::from_secs(60);
/// How long one edge holds a name while it orders it (longer than an order may take).
const LEASE: Duration = Duration::from_secs(300);
/// How long a challenge answer is published.
const CHALLENGE_TTL: Duration = Duration::from_secs(600);
/// Longest wait for the CA to validate or issue.
const ORDER_TIMEOUT: Duration = Duration::from_secs(90);

/// Where and how certificates are ordered.
#[derive(Clone, Debug)]
pub struct AcmeSettings {
    /// The ACME directory URL.
    pub directory: String,
    /// Extra trust (PEM) for the ACME server's own HTTPS; the system's roots without it.
    pub ca_file: Option<PathBuf>,
    /// The account's contact address.
    pub email: Option<String>,
    /// Renew this long before expiry ([`RENEW_BEFORE`]).
    pub renew_before: Duration,
    /// The first wait after a failure ([`RETRY_FIRST`]); it doubles up to [`RETRY_MOST`].
    pub retry_first: Duration,
    /// How often the records are looked at ([`CHECK_EVERY`]).
    pub check_every: Duration,
}

/// What a domain needs from the orderer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Nothing now.
    Nothing,
    /// Its first certificate.
    First,
    /// A renewal of the one it has.
    Renewal,
}

/// The rule: `issuing` (and an `active` domain without a certificate, made active before ACME
/// was configured) needs a first certificate, an `active` one expiring within `renew_before`
/// a renewal; a domain still waiting for DNS or failed never gets one. A failed order waits
/// until its `retry_unix_ms`.
pub fn need(d: &CustomDomain, now_ms: u64, renew_before: Duration) -> Need {
    if d.retry_unix_ms.is_some_and(|t| t > now_ms) {
        return Need::Nothing;
    }
    match (d.status, d.not_after_unix_ms) {
        (DomainStatus::Issuing, _) | (DomainStatus::Active, None) => Need::First,
        (DomainStatus::Active, Some(t))
            if t <= now_ms.saturating_add(renew_before.as_millis() as u64) =>
        {
            Need::Renewal
        }
        _ => Need::Nothing,
    }
}

/// The wait after the `failures`-th failure in a row: `first`, doubling, at most [`RETRY_MOST`].
pub fn retry_delay(failures: u32, first: Duration) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(20);
    first.saturating_mul(factor).min(RETRY_MOST.max(first))
}

/// Orders and renews the certificates of verified custom domains.
pub struct Orderer {
    settings: AcmeSettings,
    records: Records,
    certs: Arc<dyn CertStore>,
    /// This edge's name on the leases.
    holder: String,
    metrics: ApiMetrics,
    account: Option<Account>,
}

impl Orderer {
    /// An orderer for `records`, storing into `certs`; `holder` names this edge on leases.
    pub fn new(
        settings: AcmeSettings,
        records: Records,
        certs: Arc<dyn CertStore>,
        holder: String,
        metrics: ApiMetrics,
    ) -> Self {
        Orderer {
            settings,
            records,
            certs,
            holder,
            metrics,
            account: None,
        }
    }

    /// Looks for certificates due every `check_every`, and at once when `nudge` is notified (a
    /// domain was verified), for as long as the task runs.
    pub async fn run(mut self, nudge: Arc<tokio::sync::Notify>) {
        loop {
            if let Err(e) = self.round().await {
                tracing::warn!("cannot look for certificates due: {e}");
            }
            tokio::select! {
                () = tokio::time::sleep(self.settings.check_every) => {}
                () = nudge.notified() => {}
            }
        }
    }

    /// Orders every certificate due now (one name at a time).
    pub async fn round(&mut self) -> Result<(), StoreError> {
        let now = crate::now_ms();
        let due: Vec<CustomDomain> = self
            .records
            .store()
            .domains(None)
            .await
            .map_err(StoreError::from)?
            .into_iter()
            .filter(|d| need(d, now, self.settings.renew_before) != Need::Nothing)
            .collect();
        for d in due {
            self.order_one(&d.domain).await?;
        }
        Ok(())
    }

    /// Orders `domain`'s certificate unless another edge holds its lease or it is no longer due.
    async fn order_one(&mut self, domain: &str) -> Result<(), StoreError> {
        let lease = format!("acme:{domain}");
        if !self
            .certs
            .lease(&lease, &self.holder, LEASE)
            .await
            .map_err(StoreError::from)?
        {
            return Ok(());
        }
        let result = self.order_leased(domain).await;
        if let Err(e) = self.certs.release(&lease, &self.holder).await {
            tracing::warn!(%domain, "cannot release the ACME lease (it expires by itself): {e}");
        }
        result
    }

    async fn order_leased(&mut self, domain: &str) -> Result<(), StoreError> {
        // Read again under the lease: another edge may have just stored one.
        let Some(current) = self.records.domain(domain).await? else {
            return Ok(());
        };
        let need = need(&current, crate::now_ms(), self.settings.renew_before);
        if need == Need::Nothing {
            return Ok(());
        }
        tracing::info!(%domain, ?need, directory = %self.settings.directory, "ordering a certificate");
        let outcome = match self.issue(domain).await {
            Ok(cert) => self
                .certs
                .put_certificate(&cert)
                .await
                .map(|()| cert)
                .map_err(|e| format!("cannot store the certificate: {e}")),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(cert) => {
                self.metrics
                    .acme_orders
                    .with_label_values(&["issued"])
                    .inc();
                tracing::info!(%domain, not_after_unix_ms = cert.not_after_unix_ms, "certificate issued");
                self.records
                    .update_domain(domain, |d| {
                        if matches!(d.status, DomainStatus::Issuing | DomainStatus::Active) {
                            d.status = DomainStatus::Active;
                        }
                        d.not_after_unix_ms = Some(cert.not_after_unix_ms);
                        d.error = None;
                        d.order_failures = 0;
                        d.retry_unix_ms = None;
                    })
                    .await?;
            }
            Err(why) => {
                self.metrics
                    .acme_orders
                    .with_label_values(&["failed"])
                    .inc();
                let failures = current.order_failures.saturating_add(1);
                let wait = retry_delay(failures, self.settings.retry_first);
                let retry = crate::now_ms().saturating_add(wait.as_millis() as u64);
                let serving = if current.not_after_unix_ms.is_some() {
                    "; the current certificate goes on serving"
                } else {
                    ""
                };
                let error = format!(
                    "certificate order failed ({failures} in a row; next try in {wait:?}{serving}): {why}"
                );
                tracing::warn!(%domain, "{error}");
                self.records
                    .update_domain(domain, |d| {
                        d.order_failures = failures;
                        d.retry_unix_ms = Some(retry);
                        d.error = Some(error.clone());
                    })
                    .await?;
            }
        }
        Ok(())
    }

    /// The ACME account: the one kept in the store for this directory, or a new one (kept).
    async fn account(&mut self) -> Result<Account, String> {
        if let Some(a) = &self.account {
            return Ok(a.clone());
        }
        let dir = &self.settings.directory;
        let builder = || match &self.settings.ca_file {
            Some(ca) => Account::builder_with_root(ca)
                .map_err(|e| format!("cannot use {} as the ACME CA's trust: {e}", ca.display())),
            None => Account::builder().map_err(|e| format!("cannot make an ACME client: {e}")),
        };
        let kept = self
            .certs
            .account(dir)
            .await
            .map_err(|e| format!("cannot read the ACME account: {e}"))?;
        let account = match kept {
            Some(json) => {
                let creds: AccountCredentials = serde_json::from_str(&json)
                    .map_err(|e| format!("the stored ACME account is unreadable: {e}"))?;
                builder()?
                    .from_credentials(creds)
                    .await
                    .map_err(|e| format!("the ACME directory {dir} cannot be used: {e}"))?
            }
            None => {
                let contact = self.settings.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, creds) = builder()?
                    .create(
                        &NewAccount {
                            contact: &contacts,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        dir.clone(),
                        None,
                    )
                    .await
                    .map_err(|e| format!("cannot create an account at {dir}: {e}"))?;
                let json = serde_json::to_string(&creds)
                    .map_err(|e| format!("cannot keep the ACME account: {e}"))?;
                self.certs
                    .put_account(dir, &json)
                    .await
                    .map_err(|e| format!("cannot keep the ACME account: {e}"))?;
                tracing::info!(directory = %dir, "ACME account created");
                account
            }
        };
        self.account = Some(account.clone());
        Ok(account)
    }

    /// Orders a certificate for `domain` through HTTP-01.
    async fn issue(&mut self, domain: &str) -> Result<StoredCertificate, String> {
        let account = self.account().await?;
        let ids = [Identifier::Dns(domain.to_owned())];
        let mut order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(|e| format!("the order could not be placed: {e}"))?;
        let mut tokens = Vec::new();
        let result = self.complete(&mut order, &mut tokens, domain).await;
        for token in tokens {
            if let Err(e) = self.certs.delete_challenge(&token).await {
                tracing::debug!("challenge left to expire: {e}");
            }
        }
        result
    }

    async fn complete(
        &self,
        order: &mut Order,
        tokens: &mut Vec<String>,
        domain: &str,
    ) -> Result<StoredCertificate, String> {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| format!("cannot read the authorization: {e}"))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("the authorization is {other:?}")),
            }
            let mut challenge = authz
                .challenge(ChallengeType::Http01)
                .ok_or("the ACME server offers no HTTP-01 challenge")?;
            let answer = challenge.key_authorization();
            self.certs
                .put_challenge(&challenge.token, answer.as_str(), CHALLENGE_TTL)
                .await
                .map_err(|e| format!("cannot publish the challenge answer: {e}"))?;
            tokens.push(challenge.token.clone());
            challenge
                .set_ready()
                .await
                .map_err(|e| format!("the ACME server did not take the challenge: {e}"))?;
        }
        let poll = RetryPolicy::new()
            .initial_delay(Duration::from_millis(200))
            .timeout(ORDER_TIMEOUT);
        let status = order
            .poll_ready(&poll)
            .await
            .map_err(|e| format!("the order did not become ready: {e}"))?;
        if status != OrderStatus::Ready {
            return Err(why_invalid(order).await);
        }
        let key_pem = order
            .finalize()
            .await
            .map_err(|e| format!("the ACME server refused to finalize: {e}"))?;
        let chain_pem = order
            .poll_certificate(&poll)
            .await
            .map_err(|e| format!("no certificate came: {e}"))?;
        let not_after = not_after_unix_ms(chain_pem.as_bytes())?;
        Ok(StoredCertificate {
            domain: domain.to_owned(),
            chain_pem,
            key_pem,
            not_after_unix_ms: not_after,
            issued_unix_ms: crate::now_ms(),
        })
    }
}

/// What the CA said about the challenges of an order that became invalid.
async fn why_invalid(order: &mut Order) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        if let Ok(state) = authz.refresh().await {
            reasons.extend(
                state
                    .challenges
                    .iter()
                    .filter_map(|c| c.error.as_ref().map(|p| p.to_string())),
            );
        }
    }
    if reasons.is_empty() {
        "the ACME server found the order invalid".to_owned()
    } else {
        format!(
            "the ACME server refused the challenge: {}",
            reasons.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(status: DomainStatus, not_after: Option<u64>, retry: Option<u64>) -> CustomDomain {
        CustomDomain {
            domain: "www.shop.org".into(),
            project: "shop".into(),
            status,
            error: None,
            not_after_unix_ms: not_after,
            added_unix_ms: 0,
            order_failures: 0,
            retry_unix_ms: retry,
        }
    }

    #[test]
    fn need_table() {
        let day = 24 * 3600 * 1000;
        let now = 1_000 * day;
        let rb = RENEW_BEFORE;
        use DomainStatus::*;
        for (d, want) in [
            (domain(PendingDns, None, None), Need::Nothing),
            (domain(Failed, None, None), Need::Nothing),
            (domain(Issuing, None, None), Need::First),
            (domain(Active, None, None), Need::First),
            (domain(Active, Some(now + 31 * day), None), Need::Nothing),
            (domain(Active, Some(now + 30 * day), None), Need::Renewal),
            (domain(Active, Some(now - day), None), Need::Renewal),
            // Backing off after a failure.
            (domain(Issuing, None, Some(now + 1)), Need::Nothing),
            (domain(Issuing, None, Some(now)), Need::First),
            (domain(Active, Some(now), Some(now + 1)), Need::Nothing),
        ] {
            assert_eq!(need(&d, now, rb), want, "{d:?}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let m = Duration::from_secs(60);
        assert_eq!(retry_delay(1, m), m);
        assert_eq!(retry_delay(2, m), 2 * m);
        assert_eq!(retry_delay(4, m), 8 * m);
        assert_eq!(retry_delay(9, m), 256 * m);
        assert_eq!(retry_delay(10, m), RETRY_MOST);
        assert_eq!(retry_delay(u32::MAX, m), RETRY_MOST);
        assert_eq!(retry_delay(0, m), m);
        let short = Duration::from_millis(100);
        assert_eq!(retry_delay(3, short), Duration::from_millis(400));
    }
}
