import MeshCore
import MeshIO
import Synchronization

/// Puts snapshots in force for a ProxyServer, one at a time, and builds a new one from the
/// config in force when the addresses of its DNS clusters change (EndpointResolver) or JWKS key
/// sets change (JWKSFetcher): the same
/// bootstrap and version, new endpoints. Every snapshot goes out under one lock, so a rebuild
/// for new addresses never overtakes a newer config, and a config built just before the
/// addresses changed is rebuilt at once.
final class SnapshotRefresher: Sendable {
    private struct State {
        var latest: ProxySnapshot?
        var listening = false
    }
    private let state = Mutex(State())

    /// `post` puts one snapshot on every worker (ProxyServer's body of `replace`); nil: `next`
    /// is the one the workers started with (ProxyServer.start), only followed from now on.
    func replace(_ next: ProxySnapshot, server: ProxyServer, post: ((ProxySnapshot) -> Void)?) {
        state.withLock { s in
            var snap = next
            if post != nil && snap.usesDNS && snap.dnsGeneration != EndpointResolver.shared.generation, let again = rebuilt(snap, .dns) { snap = again }
            s.latest = snap
            post?(snap)
            if s.listening || snap.usesDNS {
                EndpointResolver.shared.retain(Set(snap.bootstrap.clusters.flatMap { $0.dnsEndpoints.map(\.host) }))
            }
            if snap.usesDNS && !s.listening {
                s.listening = true
                // Not on the resolver's thread: a rebuild may wait for a new name's first answer.
                EndpointResolver.shared.addListener { [weak server] in
                    guard let server else { return }
                    Threads.spawnDetached { server.dnsChanged() }
                }
            }
        }
    }

    /// New addresses: the config in force again, with them.
    func refresh(server: ProxyServer, post: (ProxySnapshot) -> Void) {
        state.withLock { s in
            guard let cur = s.latest, cur.usesDNS, cur.dnsGeneration != EndpointResolver.shared.generation,
                  let next = rebuilt(cur, .dns) else { return }
            s.latest = next
            post(next)
        }
    }

    /// New key sets (JWKSFetcher): the config in force compiled again, whatever its DNS state.
    /// False when that failed (the fetcher backs off before it tries again); a failure here
    /// blocks nothing else: the next DNS change or config push compiles again on its own.
    @discardableResult
    func recompile(server: ProxyServer, post: (ProxySnapshot) -> Void) -> Bool {
        state.withLock { s in
            guard let cur = s.latest ?? Optional(server.snapshot), let next = rebuilt(cur, .jwks) else { return false }
            s.latest = next
            post(next)
            return true
        }
    }

    /// Why a snapshot is compiled again: names the log line of a failure.
    enum Cause { case dns, jwks }

    private func rebuilt(_ snap: ProxySnapshot, _ cause: Cause) -> ProxySnapshot? {
        do { return try ProxySnapshot(bootstrap: snap.bootstrap, version: snap.version) } catch {
            switch cause {
            case .dns: Log.error("dns", "new addresses not applied, the config in force stays: \(error)")
            case .jwks: Log.error("jwks", "new key sets not applied, the config in force stays: \(error)")
            }
            return nil
        }
    }
}
