//! Applying new configs while serving (SIGHUP).

use super::*;

/// Applies each new config: the node takes the reloadable settings, the
/// TLS certificate is read again (rotated files, same paths); what cannot
/// be applied keeps the running config and is logged.
pub(super) async fn apply_reloads(state: AppState, mut reloads: mpsc::Receiver<Config>) {
    while let Some(new) = reloads.recv().await {
        // Only a node serving TLS swaps certificates (turning TLS on or off
        // is a restart).
        let tls = match new.tls() && state.node.config().tls() {
            true => match crate::tls::acceptor(Path::new(&new.tls_cert), Path::new(&new.tls_key)) {
                Ok(acceptor) => Some(acceptor),
                Err(e) => {
                    tracing::error!(error = %e, "reload refused: the TLS certificate or key cannot be used; still running with the old config");
                    continue;
                }
            },
            false => None,
        };
        let plan = match state.node.reload(&new).await {
            Ok(plan) => plan,
            Err(e) => {
                tracing::error!(error = %e, "reload refused; still running with the old config");
                continue;
            }
        };
        if let (Some(acceptor), true) = (tls, state.node.config().tls()) {
            state.tls.0.store(Some(Arc::new(acceptor)));
        }
        tracing::info!(
            applied = ?plan.applied,
            "config reloaded (the TLS certificate and token key files read again); open connections keep what they were admitted with"
        );
        if !plan.need_restart.is_empty() {
            tracing::warn!(
                settings = ?plan.need_restart,
                "changed settings that take effect only after a restart; still running with their old values"
            );
        }
    }
}
