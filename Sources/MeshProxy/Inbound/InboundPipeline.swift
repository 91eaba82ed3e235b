import MeshCore
import MeshHTTP

/// The life of an inbound request (another sidecar, over mTLS, calling the local app), step by
/// step. The exchange runs it once the request head is in; what follows (admission, attempts to
/// the app, response, record) is the same for every direction and lives in `Exchange`.
extension Exchange {
    /// Authorises the request and rewrites its head for the app; false when it was answered
    /// here (denied, no app).
    func runInbound() -> Bool {
        let s = snapshot!
        let r = request
        let tls = down?.callerTLS
        startTrace()
        // 1. The caller: its identity (mTLS) and, when sent, its workload (metrics labels).
        if r.peerMetadataIndex >= 0, let tls {
            let f = r.fields[r.peerMetadataIndex]
            requestPeer = peerCache.index(worker.metrics.peers, principal: tls.peerIdentityBytes,
                                          r.pointer(f.value), Int(f.value.length), fallback: requestPeer)
        }
        // 2. RequestAuthentication: a token, when sent, must verify (401 otherwise).
        guard runRequestAuthentication() else { return false }
        // 3. AuthorizationPolicy: may this caller make this request?
        if let az = s.authz {
            let path = r.path.isEmpty ? ByteRange() : r.path
            var audited = false
            let verdict = az.check(principal: tls?.peerIdentityBytes ?? [], method: r.pointer(r.method), Int(r.method.length),
                                   rawPath: r.pointer(path), Int(path.length), scratch: worker.scratch,
                                   port: s.inboundServicePort,
                                   attrs: AuthzTable.RequestAttributes(jwt: worker.jwt, head: r,
                                                                       source: az.needsAddress ? down?.callerAddress : nil),
                                   audited: &audited)
            if audited { worker.stats.inc(.authzAudited); self.audited = true }
            if verdict != .allowed {
                worker.stats.inc(verdict.counter)
                localReply(verdict.status, verdict.reason, flag: verdict.flag, close: verdict == .refused)
                return false
            }
        }
        // 4. The local app.
        cluster = s.inboundCluster
        guard !cluster.isNone else {
            localReply(503, "no local app", flag: .noRoute)
            return false
        }
        // 5. The head as the app sees it: a request id, and who called (x-forwarded-client-cert).
        addRequestID()
        if let tls {
            r.beginField("x-forwarded-client-cert")
            r.bytes.append(s.xfccPrefix)
            r.bytes.append(tls.peerCertHash)
            r.bytes.append(";URI=")
            r.bytes.append(tls.peerIdentityBytes)
            r.endField()
        }
        return true
    }
}
