//! How long a node may take to become ready and to stop, derived in one place from
//! the db node's own deadlines (`hastack_db`), so that no waiter gives up before what
//! it waits for does: the supervisor waits for a db node longer than the node's
//! install plus start, and a node process's stop deadline lies inside the
//! supervisor's, which kills it only after.

use std::time::Duration;

use hastack_config::Role;

/// What a waiter adds over the deadline of what it waits for (its own polling, the
/// node's start-up before and bookkeeping after).
const MARGIN: Duration = Duration::from_secs(30);

/// How long the supervisor waits for a node to become ready.
pub(crate) fn ready(role: Role) -> Duration {
    match role {
        // mariadb-install-db, then the first start.
        Role::Db => hastack_db::INSTALL_TIMEOUT + hastack_db::START_TIMEOUT + MARGIN,
        _ => Duration::from_secs(90),
    }
}

/// How long a node process takes to stop after SIGTERM before it exits anyway.
pub(crate) fn node_stop(role: Role) -> Duration {
    match role {
        // mariadbd's own stop, then the node's agent and admin port.
        Role::Db => hastack_db::STOP_TIMEOUT + Duration::from_secs(10),
        _ => Duration::from_secs(10),
    }
}

/// How long the supervisor waits for a node to exit after SIGTERM before it kills it.
pub(crate) fn supervisor_stop(role: Role) -> Duration {
    node_stop(role) + Duration::from_secs(5)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLES: [Role; 4] = [Role::Lb, Role::Web, Role::App, Role::Db];

    #[test]
    fn the_supervisor_waits_for_a_db_node_longer_than_its_install_and_start() {
        assert!(ready(Role::Db) > hastack_db::INSTALL_TIMEOUT + hastack_db::START_TIMEOUT);
    }

    #[test]
    fn each_stop_deadline_lies_inside_the_one_of_its_waiter() {
        assert!(node_stop(Role::Db) > hastack_db::STOP_TIMEOUT);
        for role in ROLES {
            assert!(supervisor_stop(role) > node_stop(role), "{role:?}");
        }
    }
}
