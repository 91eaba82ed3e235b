import MeshCore
import MeshIO
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The listening ports of a gateway proxy, opened and closed as Gateways come and go (DESIGN
/// §15): after each snapshot is handed to the workers, ports it serves that are not open are
/// bound (one SO_REUSEPORT socket per worker, no other process sharing them) and given to the
/// workers; ports it no longer serves are closed on every worker (connections on them finish).
/// A port that cannot be bound is logged, named with the reason, and tried again with the next
/// snapshot: it stops no other port and no config. Control path only (the config thread).
final class GatewayPorts: Sendable {
    private struct State {
        var open: Set<Int> = []
        /// Ports that failed to bind, with the reason (for the log and `failures`).
        var failed: [Int: String] = [:]
    }
    private let state = Mutex(State())

    /// Ports that could not be opened, with why.
    var failures: [Int: String] { state.withLock { $0.failed } }

    /// Brings the open ports in line with `snapshot` (its Gateway servers) on `workers`. Called
    /// after the snapshot was posted to them, so a connection accepted on a new port meets it.
    func update(_ snapshot: ProxySnapshot, workers: [Worker]) {
        guard !workers.isEmpty else { return }
        let wanted = Set(snapshot.gateway?.ports.map(\.port) ?? [])
        let host = snapshot.gateway?.listenHost ?? "127.0.0.1"
        state.withLock { st in
            for port in st.open.subtracting(wanted).sorted() {
                for w in workers { w.loop.post { [w] in w.closeGatewayListener(port: port) } }
                st.open.remove(port)
                Log.info("gateway", "port \(port) closed (no Gateway server uses it any more)")
            }
            st.failed = st.failed.filter { wanted.contains($0.key) }
            for port in wanted.subtracting(st.open).sorted() {
                guard let addr = SocketAddress(host: host, port: port) else { continue }
                switch Socket.listenExclusive(addr, count: workers.count) {
                case .success(let fds):
                    for (i, w) in workers.enumerated() {
                        let fd = fds[i]
                        w.loop.post { [w] in w.openGatewayListener(port: port, fd: fd) }
                    }
                    st.open.insert(port)
                    st.failed.removeValue(forKey: port)
                    Log.info("gateway", "listening on \(addr.text) for its Gateway servers")
                case .failure(let e):
                    let why = e.code == EADDRINUSE ? "port \(port) is already in use by another process" : "\(e)"
                    if st.failed[port] != why { Log.error("gateway", "cannot listen on \(addr.text): \(why) (the other ports serve on; tried again with the next config)") }
                    st.failed[port] = why
                }
            }
        }
    }
}
