//! Custom domains (`www.example.com` serving a project's production deployment): the record of
//! each, and the state changes the control plane makes to them on a [`Store`].
//!
//! A domain is a record of its own, keyed by its name in the form
//! [`gitdeploy_core::domain::normalize`] gives it, so that one domain belongs to one project:
//! claiming it is a create-if-absent commit, which two projects cannot both win. Its life:
//! `pending_dns` until the name resolves to the platform, `issuing` while a certificate is
//! ordered, `active` once it serves, `failed` with the reason when a check or an order failed.

use gitdeploy_core::domain::DomainError;

pub use crate::domain_record::{CustomDomain, DomainStatus};
use crate::records::Records;
use crate::store::{StoreError, Write};

/// Most custom domains one project may have.
pub const MAX_PER_PROJECT: usize = 50;

/// Why a domain cannot be added or removed.
#[derive(Debug, thiserror::Error)]
pub enum DomainRefusal {
    /// Not an acceptable name.
    #[error(transparent)]
    Invalid(#[from] DomainError),
    /// No such project.
    #[error("no project {0:?}")]
    NoProject(String),
    /// Another project has it.
    #[error("{domain} already belongs to another project")]
    Taken {
        /// The domain.
        domain: String,
    },
    /// This project has it already.
    #[error("{0} is already a domain of this project")]
    Exists(String),
    /// The project has as many as it may.
    #[error("a project has at most {MAX_PER_PROJECT} custom domains")]
    TooMany,
    /// The project does not have it.
    #[error("{0} is not a domain of this project")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Records {
    /// Claims `input` (normalized for `platform_domain`) for project `name`: `pending_dns` until
    /// it is verified.
    pub async fn add_domain(
        &self,
        name: &str,
        input: &str,
        platform_domain: &str,
        now_ms: u64,
    ) -> Result<CustomDomain, DomainRefusal> {
        let domain = gitdeploy_core::domain::normalize(input, platform_domain)?;
        if self.project(name).await?.is_none() {
            return Err(DomainRefusal::NoProject(name.to_owned()));
        }
        if let Some(existing) = self.domain(&domain).await? {
            return Err(if existing.project == name {
                DomainRefusal::Exists(domain)
            } else {
                DomainRefusal::Taken { domain }
            });
        }
        if self.project_domains(name).await?.len() >= MAX_PER_PROJECT {
            return Err(DomainRefusal::TooMany);
        }
        let record = CustomDomain {
            domain: domain.clone(),
            project: name.to_owned(),
            status: DomainStatus::PendingDns,
            error: None,
            not_after_unix_ms: None,
            added_unix_ms: now_ms,
            order_failures: 0,
            retry_unix_ms: None,
        };
        let write = Write::Domain {
            expect: 0,
            value: record.clone(),
        };
        if self
            .store()
            .commit(vec![write])
            .await
            .map_err(StoreError::from)?
        {
            return Ok(record);
        }
        // Someone claimed it between the read and the commit.
        match self.domain(&domain).await? {
            Some(d) if d.project == name => Err(DomainRefusal::Exists(domain)),
            _ => Err(DomainRefusal::Taken { domain }),
        }
    }

    /// One custom domain, by its normalized name.
    pub async fn domain(&self, domain: &str) -> Result<Option<CustomDomain>, StoreError> {
        Ok(self
            .store()
            .domain(domain)
            .await
            .map_err(StoreError::from)?
            .map(|v| v.value))
    }

    /// The custom domains of project `name`, by name.
    pub async fn project_domains(&self, name: &str) -> Result<Vec<CustomDomain>, StoreError> {
        let mut all = self
            .store()
            .domains(Some(name))
            .await
            .map_err(StoreError::from)?;
        all.sort_by(|a, b| a.domain.cmp(&b.domain));
        Ok(all)
    }

    /// Removes `input` from project `name`.
    pub async fn remove_domain(
        &self,
        name: &str,
        input: &str,
        platform_domain: &str,
    ) -> Result<(), DomainRefusal> {
        // A name that could never have been added is simply not there.
        let domain = gitdeploy_core::domain::normalize(input, platform_domain)
            .map_err(|_| DomainRefusal::NotFound(input.to_owned()))?;
        for _ in 0..crate::store::MAX_ATTEMPTS {
            let Some(current) = self
                .store()
                .domain(&domain)
                .await
                .map_err(StoreError::from)?
                .filter(|d| d.value.project == name)
            else {
                return Err(DomainRefusal::NotFound(domain));
            };
            if self
                .store()
                .delete_domain(&domain, current.version)
                .await
                .map_err(StoreError::from)?
            {
                return Ok(());
            }
        }
        Err(DomainRefusal::Store(crate::store::contention()))
    }

    /// Changes the record of `domain` with `f` (called again after a conflict); `None` when
    /// there is no such domain.
    pub async fn update_domain(
        &self,
        domain: &str,
        f: impl Fn(&mut CustomDomain),
    ) -> Result<Option<CustomDomain>, StoreError> {
        for _ in 0..crate::store::MAX_ATTEMPTS {
            let Some(current) = self
                .store()
                .domain(domain)
                .await
                .map_err(StoreError::from)?
            else {
                return Ok(None);
            };
            let mut next = current.value.clone();
            f(&mut next);
            if next == current.value {
                return Ok(Some(next));
            }
            let write = Write::Domain {
                expect: current.version,
                value: next.clone(),
            };
            if self
                .store()
                .commit(vec![write])
                .await
                .map_err(StoreError::from)?
            {
                return Ok(Some(next));
            }
        }
        Err(crate::store::contention())
    }

    /// Removes every custom domain of project `name` (the project is being deleted).
    pub(crate) async fn remove_project_domains(&self, name: &str) -> Result<(), StoreError> {
        for d in self.project_domains(name).await? {
            if let Err(DomainRefusal::Store(e)) = self.remove_domain(name, &d.domain, "").await {
                return Err(e);
            }
        }
        Ok(())
    }
}
