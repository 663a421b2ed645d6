//! Applying a new config to a running node (SIGHUP).

use super::*;

impl Node {
    /// Takes the reloadable settings of `new` (a valid config, SIGHUP):
    /// rebuilds the token verifier (fetching a JWKS first) and the namespace
    /// rules before anything is swapped, so a key file that cannot be read
    /// leaves the running config whole. Open connections keep what they
    /// were admitted with.
    pub async fn reload(&self, new: &Config) -> Result<ReloadPlan, NodeError> {
        let live = self.config();
        let mut plan = crate::config::reload::plan(&live, new);
        // Rebuilt even when no setting changed: key files may have been
        // rotated in place.
        let verifier = Verifier::from_config(&plan.config)?.map(Arc::new);
        if let Some(v) = verifier
            .as_ref()
            .filter(|_| !plan.config.token_jwks_url.is_empty())
        {
            v.refresh_jwks().await?;
            self.inner
                .tasks
                .spawn(Verifier::keep_jwks_fresh(Arc::downgrade(v)));
        }
        let mut permissions = Permissions::new(plan.config.namespaces.clone())?;
        if permissions.has_upstream_urls() && self.inner.http.is_none() {
            // The HTTP upstream client is started with the node.
            plan.config.namespaces = live.namespaces.clone();
            plan.applied.retain(|s| *s != "namespaces");
            plan.need_restart.push("namespaces (a first upstream_url)");
            permissions = Permissions::new(plan.config.namespaces.clone())?;
        }
        self.inner.verifier.store(verifier);
        self.inner.permissions.store(Arc::new(permissions));
        self.inner.config.store(Arc::new(plan.config.clone()));
        self.share_history_table();
        Ok(plan)
    }
}
