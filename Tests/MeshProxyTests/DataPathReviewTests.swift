import XCTest
import Glibc
import MeshConfig
import MeshCore
import MeshIO
@testable import MeshProxy

/// Review fixes on the data path: rate-limit buckets across snapshot rebuilds, the JWKS
/// recompile backoff, the consistent-hash walk over many endpoints, the source-IP hash key.
final class DataPathReviewTests: XCTestCase {
    static func limitConfig(maxTokens: Int = 5, workload: String = "front") -> String {
        """
        apiVersion: sidecar.mesh/v1alpha1
        kind: Bootstrap
        metadata: {name: \(workload), namespace: shop}
        spec:
          workload: {service: productpage, labels: {app: productpage}}
          outbound: {port: 15001}
          clusters:
            - name: reviews
              tls: DISABLE
              endpoints: ["127.0.0.1:9081"]
        ---
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: reviews, namespace: shop}
        spec:
          hosts: [reviews]
          http:
          - name: main
            route: [{destination: {host: reviews}}]
        ---
        apiVersion: mesh.io/v1alpha1
        kind: LocalRateLimit
        metadata: {name: lim, namespace: shop}
        spec:
          virtualService: reviews
          tokenBucket: {maxTokens: \(maxTokens), tokensPerFill: 2, fillInterval: 1s}
        """
    }

    func limiter(_ s: ProxySnapshot) throws -> LocalRateLimiter {
        try XCTUnwrap(s.routes.first { $0.label == "reviews.main" }?.rateLimiters.first)
    }

    /// A rebuilt snapshot (DNS addresses, JWKS keys, certificates: the same config compiled
    /// again) takes over the bucket: ten rebuilds grant no more than the configured rate.
    func testRebuiltSnapshotsKeepTheBucket() throws {
        let b = try Bootstrap.parse(Self.limitConfig(), file: "t.yaml")
        var snap = try ProxySnapshot(bootstrap: b, version: "1")
        let t0 = try limiter(snap).start
        var granted = 0
        // Over 10 s (one fill of 2 tokens a second), a rebuild before every request.
        for step in 0..<100 {
            snap = try ProxySnapshot(bootstrap: b, version: "1")
            if try limiter(snap).tryTake(now: t0 + UInt64(step) * 100_000_000) { granted += 1 }
        }
        // 5 to start with, then 9 fills of 2 (at 1 s ... 9 s).
        XCTAssertEqual(granted, 5 + 9 * 2, "the rate holds across rebuilds")

        // Another sidecar's snapshot in the same process has its own bucket.
        let other = try ProxySnapshot(bootstrap: Bootstrap.parse(Self.limitConfig(workload: "other"), file: "t.yaml"), version: "1")
        XCTAssertFalse(try limiter(other) === limiter(snap))
        XCTAssertEqual(try limiter(other).available, 5)

        // A changed bucket config starts a new, full bucket (Envoy).
        let changed = try ProxySnapshot(bootstrap: Bootstrap.parse(Self.limitConfig(maxTokens: 7), file: "t.yaml"), version: "2")
        XCTAssertFalse(try limiter(changed) === limiter(snap))
        XCTAssertEqual(try limiter(changed).available, 7)
    }

    /// A bucket no snapshot uses any more is dropped: the limit added again later starts full.
    func testUnusedBucketsAreDropped() throws {
        let text = Self.limitConfig(maxTokens: 3, workload: "dropped")
        do {
            let snap = try ProxySnapshot(bootstrap: Bootstrap.parse(text, file: "t.yaml"), version: "1")
            let l = try limiter(snap)
            XCTAssertTrue(l.tryTake(now: l.start))
            XCTAssertEqual(l.available, 2)
        }
        let again = try ProxySnapshot(bootstrap: Bootstrap.parse(text, file: "t.yaml"), version: "2")
        XCTAssertEqual(try limiter(again).available, 3)
    }

    /// A failing JWKS recompile is tried again 1, 2, 4 ... at most 30 s apart; a success starts over.
    func testRecompileBacksOff() {
        var b = JWKSFetcher.RecompileBackoff()
        XCTAssertTrue(b.due(0))
        var now: UInt64 = 1_000
        var delays: [UInt64] = []
        for _ in 0..<8 {
            b.failed(now)
            XCTAssertFalse(b.due(now + b.delay - 1))
            XCTAssertTrue(b.due(now + b.delay))
            delays.append(b.delay / 1_000_000_000)
            now += b.delay
        }
        XCTAssertEqual(delays, [1, 2, 4, 8, 16, 30, 30, 30])
        b.succeeded()
        XCTAssertTrue(b.due(now))
        b.failed(now)
        XCTAssertEqual(b.delay, 1_000_000_000)
    }

    /// 200 endpoints, all ejected but the one a retry avoids: the walk ends once every endpoint
    /// was seen (a few slots each), not after the whole table (65,537 or 204,800 slots).
    func testConsistentHashWalkStopsWhenEveryEndpointWasSeen() throws {
        for lb in ["maglev: {tableSize: 65537}", "ringHash: {minimumRingSize: 1024}"] {
            let n = 200
            let eps = (0..<n).map { "\"127.0.\($0 / 200).\($0 % 200 + 1):9080\"" }.joined(separator: ", ")
            let text = """
            apiVersion: sidecar.mesh/v1alpha1
            kind: Bootstrap
            metadata: {name: t}
            spec:
              workload: {service: t}
              outbound: {port: 15001}
              clusters: [{name: reviews, tls: DISABLE, endpoints: [\(eps)]}]
              routes: [{hosts: [reviews], cluster: reviews}]
            ---
            apiVersion: networking.istio.io/v1
            kind: DestinationRule
            metadata: {name: reviews}
            spec:
              host: reviews
              trafficPolicy:
                loadBalancer:
                  consistentHash: {httpHeaderName: x-user, \(lb)}
            """
            let snap = try ProxySnapshot(bootstrap: Bootstrap.parse(text, file: "t.yaml"), version: "1")
            let worker = Worker(id: 0, snapshot: snap)
            let r = worker.routing!
            let t = try XCTUnwrap(snap.targets.firstIndex { $0.balancing?.table != nil }, lb)
            let table = try XCTUnwrap(snap.targets[t].balancing?.table)
            XCTAssertGreaterThan(table.count, 60_000, lb)
            let pools = r.pools[snap.targets[t].cluster]
            XCTAssertEqual(pools.count, n)
            let healthy = pools[137]
            for p in pools where p !== healthy { p.ejectedUntil = .max }
            var most = 0
            for k in 0..<50 {
                let h = LBHash.string("user-\(k)")
                XCTAssertTrue(r.pickEndpoint(target: t, avoid: nil, hash: h) === healthy, lb)
                XCTAssertTrue(r.pickEndpoint(target: t, avoid: healthy, hash: h) === healthy, "\(lb): the avoided one as the last resort")
                most = max(most, r.hashWalkSteps)
            }
            XCTAssertLessThan(most, 10_000, "\(lb): slots walked for one pick")
            // Every endpoint out: nil, after at most one pass.
            healthy.ejectedUntil = .max
            XCTAssertNil(r.pickEndpoint(target: t, avoid: nil, hash: 7))
            XCTAssertLessThan(r.hashWalkSteps, 10_000, lb)
        }
    }

    /// `useSourceIp` hashes the connection's cached caller address (no getpeername per request),
    /// as a TCP connection's socket address hashes.
    func testSourceIPHashUsesTheCachedCallerAddress() throws {
        let snap = try ProxySnapshot(bootstrap: Bootstrap.parse(Self.limitConfig(workload: "src"), file: "t.yaml"), version: "1")
        let worker = Worker(id: 0, snapshot: snap)
        var fds: [Int32] = [0, 0]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds), 0)
        defer { close(fds[1]) }
        let conn = DownstreamConnection(worker: worker, fd: fds[0], tls: nil, inbound: false, settings: snap.outbound!)
        // A Unix socket has no IP peer: the hash comes from the cached address, not the socket.
        conn.callerAddress = IPEndpoint(ipv4: 0x0A00_0001, port: 40_000)
        XCTAssertEqual(conn.sourceAddressHash, LBHash.bytes([10, 0, 0, 1], 4))
        conn.callerAddress = IPEndpoint(ipv4: 0x0A00_0001, port: 40_001)
        XCTAssertEqual(conn.sourceAddressHash, LBHash.bytes([10, 0, 0, 1], 4), "the port is left out")
        let v6 = IPEndpoint(high: 0x2001_0db8_0000_0000, low: 1, port: 1)
        conn.callerAddress = v6
        var bytes: [UInt8] = [0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 11) + [1]
        XCTAssertEqual(conn.sourceAddressHash, LBHash.bytes(&bytes, 16))
        conn.callerAddress = nil
        XCTAssertNil(conn.sourceAddressHash)

        // A TCP connection over loopback (its socket read once): the IPv4 address's 4 bytes.
        let (lfd, port) = try ProxyHarness.refusingPort()
        defer { close(lfd) }
        XCTAssertEqual(listen(lfd, 4), 0)
        let client = try WireSocket.connect(port: port)
        let accepted = accept(lfd, nil, nil)
        defer { close(accepted) }
        _ = client
        XCTAssertEqual(SourceAddressHash.of(fd: accepted), LBHash.bytes([127, 0, 0, 1], 4))
    }
}
