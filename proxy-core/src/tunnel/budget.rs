//! Agent connections counted apart from client connections.
//!
//! A listener caps its client connections (`limits.maxConnections`) and
//! puts each connection's place in that cap, a [`ConnectionSlot`], in the
//! extensions of every request it serves. A registration that becomes a
//! tunnel exchanges that place for one of the agent connections
//! ([`AgentConnections`], `limits.agentTunnels.total`): the client place is
//! given back at once, so tunnels never use up client connections. When
//! client connections are at their cap, the listener may still accept a
//! connection on an agent place ([`ConnectionSlot::agent_only`]): it serves
//! only a registration, so agents still connect while clients fill theirs.

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The agent connections of one endpoint, all clusters together.
pub type AgentConnections = Arc<Semaphore>;

/// A permit of the client connections, or of the agent connections.
#[derive(Debug)]
struct Place {
    permit: OwnedSemaphorePermit,
    agent: bool,
}

/// One connection's place in its listener's caps, shared by the socket
/// (which holds it while open) and its requests (a registration exchanges
/// it). Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnectionSlot {
    place: Arc<Mutex<Option<Place>>>,
    agent_only: bool,
}

impl ConnectionSlot {
    /// A place among the client connections.
    pub fn client(permit: OwnedSemaphorePermit) -> Self {
        ConnectionSlot {
            place: Arc::new(Mutex::new(Some(Place {
                permit,
                agent: false,
            }))),
            agent_only: false,
        }
    }

    /// A place among the agent connections, taken while the client
    /// connections were at their cap: the connection may only register.
    pub fn agent_only(permit: OwnedSemaphorePermit) -> Self {
        ConnectionSlot {
            place: Arc::new(Mutex::new(Some(Place {
                permit,
                agent: true,
            }))),
            agent_only: true,
        }
    }

    /// Whether the connection may only register an agent.
    pub fn is_agent_only(&self) -> bool {
        self.agent_only
    }

    /// An agent connection for a tunnel on this connection: the agent place
    /// it holds, or one taken from `agents` (the client place is then given
    /// back). `None` when `agents` has none free.
    pub fn take_for_tunnel(&self, agents: &AgentConnections) -> Option<OwnedSemaphorePermit> {
        let mut place = self.place.lock().ok()?;
        if place.as_ref().is_some_and(|p| p.agent) {
            return place.take().map(|p| p.permit);
        }
        let permit = agents.clone().try_acquire_owned().ok()?;
        *place = None;
        Some(permit)
    }
}

/// An agent connection for a tunnel whose request came with `slot` (or
/// none: an endpoint served outside a listener that counts connections).
pub(super) fn for_tunnel(
    slot: Option<&ConnectionSlot>,
    agents: &AgentConnections,
) -> Option<OwnedSemaphorePermit> {
    match slot {
        Some(slot) => slot.take_for_tunnel(agents),
        None => agents.clone().try_acquire_owned().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tunnel_gives_its_client_place_back_and_takes_an_agent_one() {
        let clients = Arc::new(Semaphore::new(1));
        let agents: AgentConnections = Arc::new(Semaphore::new(1));
        let slot = ConnectionSlot::client(clients.clone().try_acquire_owned().unwrap());
        assert_eq!(clients.available_permits(), 0);
        let tunnel = slot.take_for_tunnel(&agents).unwrap();
        assert_eq!(clients.available_permits(), 1, "client place given back");
        assert_eq!(agents.available_permits(), 0);
        // No agent place left: the next one is refused and keeps its client place.
        let other = ConnectionSlot::client(clients.clone().try_acquire_owned().unwrap());
        assert!(other.take_for_tunnel(&agents).is_none());
        assert_eq!(clients.available_permits(), 0);
        drop(tunnel);
        // An agent-only connection brings its own agent place.
        let lane = ConnectionSlot::agent_only(agents.clone().try_acquire_owned().unwrap());
        assert!(lane.is_agent_only());
        assert!(lane.take_for_tunnel(&agents).is_some());
    }
}
