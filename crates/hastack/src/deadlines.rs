//! How long a node may take to become ready and to stop, derived in one place from
//! the db node's own deadlines (`hastack_db`), so that no waiter gives up before what
//! it waits for does: the supervisor waits for a db node longer than the node's
//! install plus start, and a node process's stop deadline lies inside the
//! supervisor's, which kills it only after.

use std::time::Duration;

use hastack_config::{AppSettings, Role};

/// What a waiter adds over the deadline of what it waits for (its own polling, the
/// node's start-up before and bookkeeping after).
const MARGIN: Duration = Duration::from_secs(30);

/// How long the supervisor waits for a node to become ready; `app`: the team's app,
/// when the node is an app node that runs one.
pub(crate) fn ready(role: Role, app: Option<&AppSettings>) -> Duration {
    match (role, app) {
        // mariadb-install-db, then the first start.
        (Role::Db, _) => hastack_db::INSTALL_TIMEOUT + hastack_db::START_TIMEOUT + MARGIN,
        // The release (migrations), then the app's first answer to its health path.
        (Role::App, Some(app)) => hastack_apphost::RELEASE_TIMEOUT + app.start_timeout + MARGIN,
        _ => Duration::from_secs(90),
    }
}

/// How long a node process takes to stop after SIGTERM before it exits anyway.
pub(crate) fn node_stop(role: Role, app: Option<&AppSettings>) -> Duration {
    match (role, app) {
        // mariadbd's own stop, then the node's agent and admin port.
        (Role::Db, _) => hastack_db::STOP_TIMEOUT + Duration::from_secs(10),
        // The front's drain, then the app's own stop.
        (Role::App, Some(app)) => {
            hastack_runtime::DRAIN_TIMEOUT + app.stop_timeout + Duration::from_secs(5)
        }
        _ => Duration::from_secs(10),
    }
}

/// How long the supervisor waits for a node to exit after SIGTERM before it kills it.
pub(crate) fn supervisor_stop(role: Role, app: Option<&AppSettings>) -> Duration {
    node_stop(role, app) + Duration::from_secs(5)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLES: [Role; 4] = [Role::Lb, Role::Web, Role::App, Role::Db];

    #[test]
    fn the_supervisor_waits_for_a_db_node_longer_than_its_install_and_start() {
        assert!(ready(Role::Db, None) > hastack_db::INSTALL_TIMEOUT + hastack_db::START_TIMEOUT);
    }

    #[test]
    fn each_stop_deadline_lies_inside_the_one_of_its_waiter() {
        assert!(node_stop(Role::Db, None) > hastack_db::STOP_TIMEOUT);
        for role in ROLES {
            assert!(
                supervisor_stop(role, None) > node_stop(role, None),
                "{role:?}"
            );
        }
        let mut topo = hastack_config::Topology::default_topology();
        let text = format!(
            "{}\n[app]\ncommand = [\"sh\"]\ndir = \".\"\nstop_timeout_ms = 60000\n",
            hastack_config::DEFAULT_TOPOLOGY
        );
        topo.app = hastack_config::parse(&text, std::path::Path::new("t.toml"))
            .expect("valid")
            .app;
        let app = topo.app.as_ref();
        assert!(
            node_stop(Role::App, app) > hastack_runtime::DRAIN_TIMEOUT + Duration::from_secs(60)
        );
        assert!(supervisor_stop(Role::App, app) > node_stop(Role::App, app));
        assert!(ready(Role::App, app) > hastack_apphost::RELEASE_TIMEOUT);
    }
}
