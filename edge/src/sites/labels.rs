//! Which deployment a site label serves: a deployment id that build, `<slug>--<project>` the
//! build a preview alias follows, any other label a project's production, all through the
//! project's one cached [`gitdeploy_api::EdgeView`].

use std::sync::Arc;

use gitdeploy_core::id::looks_like_deployment_id;
use gitdeploy_core::DeploymentId;
use pingora_proxy::Session;

use super::SitesProxy;

/// What a site label resolved to.
pub(super) struct Site<'l> {
    /// The deployment served.
    pub(super) id: DeploymentId,
    /// The project named by the label (an id names none; its manifest does).
    pub(super) project: Option<&'l str>,
    /// A production host (the project's own or a custom domain).
    pub(super) production: bool,
    /// The project's alias view, when the label went through it.
    pub(super) view: Option<Arc<gitdeploy_api::EdgeView>>,
}

impl SitesProxy {
    /// The deployment a site label serves: a deployment id serves that build,
    /// `<slug>--<project>` the build a preview alias follows, any other label a project's
    /// production (whose HSTS is set on the request and whose replaced deployments go to
    /// `earlier`). `None`: nothing is served there.
    pub(super) async fn site_of<'l>(
        &self,
        session: &mut Session,
        label: &'l str,
        earlier: &mut Option<Arc<[(DeploymentId, u64)]>>,
    ) -> Option<Site<'l>> {
        if let Some(id) = DeploymentId::parse(label) {
            return Some(Site {
                id,
                project: None,
                production: false,
                view: None,
            });
        }
        if looks_like_deployment_id(label) {
            return None;
        }
        if let Some((slug, project)) = gitdeploy_core::preview::split_label(label) {
            if let Some(view) = self.aliases.project(project).await {
                return Some(Site {
                    id: view.previews.get(slug)?.clone(),
                    project: Some(project),
                    production: false,
                    view: Some(view),
                });
            }
            // No such project: a project named before `--` was kept for previews may own the
            // whole label.
        }
        let view = self.aliases.project(label).await?;
        let production = view.production.as_ref()?;
        if let Some(max_age) = production.hsts_max_age_secs {
            crate::hsts::set(session, max_age);
        }
        *earlier = Some(production.earlier.clone());
        Some(Site {
            id: production.id.clone(),
            project: Some(label),
            production: true,
            view: Some(view),
        })
    }
}
