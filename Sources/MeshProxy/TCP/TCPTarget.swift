import MeshCore

/// Where a TCP connection goes, resolved by whoever accepted it (the CONNECT hand-over on the
/// outbound listener, a tcp route, or, later, transparent capture): a route of a TCP service
/// (its weighted choice of a target is made once, when the connection starts), one target
/// chosen already, or a passthrough address outside the mesh (plain TCP, no TLS: capture's
/// ALLOW_ANY). The inbound listener uses `.localApp`.
public enum TCPTarget: Sendable {
    /// `snapshot.tcpRoutes[route]`: its weighted split picks the target.
    case route(Int)
    /// `snapshot.targets[target]` (a cluster or one of its subsets), reported under `route`
    /// (an index into `snapshot.tcpRoutes`, or -1 for none).
    case target(Int, route: Int)
    /// A plain TCP connection to this address (a destination outside the mesh).
    case passthrough(SocketAddress)
    /// The local app of the inbound listener (its TCP cluster).
    case localApp
    /// Another port of the local host (127.0.0.1), reached like the local app (its source
    /// address, its timeouts): a captured inbound connection to a port that is not the app's
    /// (Istio's InboundPassthroughCluster).
    case localPort(Int)
}
