import Foundation
import XCTest
import MeshCA
import MeshCore
import MeshIO
import MeshControlWire
@testable import MeshControl

/// meshd's web page (WebUI.swift): the figures it derives from two scrapes, the JSON it serves
/// (values from the mesh escaped), and who may read what: the static files open, every
/// `/ui/api/` endpoint only with the admin token, each answer with the strict headers.
final class WebUITests: XCTestCase {
    // Two sidecars: `web` v1 calls `reviews` (v1 and v2); `reviews-v2` reports the inbound side.
    static func web(_ v1: Int, _ v2: Int, v2Errors: Int, _ fast: Int, _ slow: Int) -> String {
        let l = #"reporter="source",source_app="web",source_workload_namespace="default",source_version="v1",destination_service_name="reviews",destination_service_namespace="default",connection_security_policy="unknown",route="reviews-split""#
        return """
        # TYPE istio_requests_total counter
        istio_requests_total{\(l),destination_version="v1",response_code="200"} \(v1)
        istio_requests_total{\(l),destination_version="v2",response_code="200"} \(v2 - v2Errors)
        istio_requests_total{\(l),destination_version="v2",response_code="503"} \(v2Errors)
        istio_request_duration_milliseconds_bucket{\(l),destination_version="v1",response_code="200",le="10"} \(fast)
        istio_request_duration_milliseconds_bucket{\(l),destination_version="v1",response_code="200",le="100"} \(fast + slow)
        istio_request_duration_milliseconds_bucket{\(l),destination_version="v1",response_code="200",le="+Inf"} \(fast + slow)
        mesh_certificate_expiry_timestamp_seconds{identity="spiffe://cluster.local/ns/default/sa/web"} 1900000000
        """
    }

    static func reviews(_ n: Int, policy: String) -> String {
        """
        istio_requests_total{reporter="destination",source_app="web",source_workload_namespace="default",source_version="v1",destination_service_name="reviews",destination_service_namespace="default",destination_version="v2",connection_security_policy="\(policy)",response_code="200",route="inbound"} \(n)
        """
    }

    func scrape(_ seconds: Double, _ sidecars: [(String, String)]) -> MeshScrape {
        MeshScrape(at: UInt64(seconds * 1e9), sidecars: sidecars.map { ($0.0, PrometheusSamples.parse($0.1)) })
    }

    func testRatesSuccessAndLatencyComeFromTheDeltaOfTwoScrapes() throws {
        let before = scrape(10, [("a:1", Self.web(1000, 500, v2Errors: 10, 900, 100)), ("b:1", Self.reviews(400, policy: "mutual_tls"))])
        // 2 s later: 40 more to v1 (30 under 10 ms, 10 under 100 ms), 20 more to v2 of which 5 failed.
        let after = scrape(12, [("a:1", Self.web(1040, 520, v2Errors: 15, 930, 110)), ("b:1", Self.reviews(415, policy: "mutual_tls"))])
        let v = try XCTUnwrap(MeshTrafficView(before: before, after: after))
        XCTAssertEqual(v.seconds, 2, accuracy: 1e-9)
        XCTAssertEqual(v.edges.map { "\($0.source.id) -> \($0.destination.id)" },
                       ["web.default v1 -> reviews.default v1", "web.default v1 -> reviews.default v2"])
        let v1 = v.edges[0], v2 = v.edges[1]
        XCTAssertEqual(v1.figures.requests / v.seconds, 20, accuracy: 1e-9)
        XCTAssertEqual(v1.figures.successPercent!, 100, accuracy: 1e-9)
        // p50 = rank 20 of 40: inside the first bucket (30 of 40 under 10 ms).
        XCTAssertEqual(v1.figures.quantile(0.5)!, 10 * 20 / 30, accuracy: 1e-9)
        // p99 = rank 39.6: inside the 10-100 ms bucket (10 there).
        XCTAssertEqual(v1.figures.quantile(0.99)!, 10 + 90 * (39.6 - 30) / 10, accuracy: 1e-9)
        XCTAssertEqual(v2.figures.requests / v.seconds, 10, accuracy: 1e-9)
        XCTAssertEqual(v2.figures.successPercent!, 75, accuracy: 1e-9)
        // The receiving side reported mTLS for v2; nothing received v1 in the window.
        XCTAssertEqual(v2.mtls, true)
        XCTAssertNil(v1.mtls)
        XCTAssertEqual(v.routes.map { "\($0.route) \($0.service) \($0.version) \($0.figures.requests)" },
                       ["reviews-split reviews v1 40.0", "reviews-split reviews v2 20.0"])
        XCTAssertEqual(v.certificateExpiry, ["a:1": 1900000000])

        // Plaintext on the receiving side: the edge is not mTLS.
        let plain = try XCTUnwrap(MeshTrafficView(before: before, after: scrape(12, [("a:1", Self.web(1040, 520, v2Errors: 15, 930, 110)), ("b:1", Self.reviews(415, policy: "none"))])))
        XCTAssertEqual(plain.edges[1].mtls, false)
    }

    /// Sidecars scraped one after another answer at different times: each one's deltas are
    /// divided by its own interval, so a slow scrape of one does not skew the others' rates.
    func testEachSidecarsRatesUseItsOwnInterval() throws {
        func at(_ t: Double, _ admin: String, _ text: String) -> MeshScrape.Sidecar {
            MeshScrape.Sidecar(admin: admin, at: UInt64(t * 1e9), samples: PrometheusSamples.parse(text))
        }
        // a:1 answers at 10 s then 12 s (40 requests to v1: 20/s); b:1 at 10.5 s then 14.5 s
        // (15 received: 3.75/s). The scrape ends at 14.5 s; the window is 4 s.
        let before = MeshScrape(at: UInt64(10.5e9), scraped: [at(10, "a:1", Self.web(1000, 500, v2Errors: 10, 900, 100)),
                                                               at(10.5, "b:1", Self.reviews(400, policy: "mutual_tls"))])
        let after = MeshScrape(at: UInt64(14.5e9), scraped: [at(12, "a:1", Self.web(1040, 520, v2Errors: 15, 930, 110)),
                                                              at(14.5, "b:1", Self.reviews(415, policy: "mutual_tls"))])
        let v = try XCTUnwrap(MeshTrafficView(before: before, after: after))
        XCTAssertEqual(v.seconds, 4, accuracy: 1e-9)
        XCTAssertEqual(v.edges[0].figures.requests / v.seconds, 20, accuracy: 1e-9)
        XCTAssertEqual(v.edges[1].figures.requests / v.seconds, 10, accuracy: 1e-9)
        XCTAssertEqual(v.edges[1].figures.successPercent!, 75, accuracy: 1e-9)
        XCTAssertEqual(v.edges[0].figures.quantile(0.5)!, 10 * 20 / 30, accuracy: 1e-9)
        XCTAssertEqual(v.edges[1].mtls, true)
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(WebUI.meshJSON(view: v, sidecarsScraped: 2, store: nil, expiry: [:]).utf8)) as? [String: Any])
        XCTAssertEqual((json["edges"] as? [[String: Any]])?.first?["rps"] as? Double, 20)
    }

    /// A scrape keeps only what the page reads: the five families, reduced to the labels used
    /// (series that differ elsewhere are summed), and the certificate expiry.
    func testAScrapeIsReducedWhenTaken() throws {
        let extra = """
        envoy_cluster_upstream_cx_total{cluster_name="x"} 5
        istio_request_bytes_sum{reporter="source"} 99
        istio_requests_total{reporter="source",source_app="web",source_workload_namespace="default",source_version="v1",destination_service_name="reviews",destination_service_namespace="default",connection_security_policy="unknown",route="reviews-split",destination_version="v1",response_code="200",request_protocol="grpc"} 7
        istio_requests_total{reporter="destination",connection_security_policy="unknown",response_code="200"} 3
        """
        let sc = MeshScrape.Sidecar(admin: "a:1", at: 1, samples: PrometheusSamples.parse(Self.web(1000, 500, v2Errors: 10, 900, 100) + "\n" + extra))
        // v1 200 (the grpc series summed into it), v2 200, v2 503, three buckets.
        XCTAssertEqual(sc.series.count, 6)
        XCTAssertEqual(sc.series.values.reduce(0, +), 1007 + 490 + 10 + 900 + 1000 + 1000)
        XCTAssertEqual(sc.certificateExpiry, 1900000000)
    }

    func testARestartedOrNewSidecarDoesNotCountItsHistoryAsTraffic() throws {
        let before = scrape(0, [("a:1", Self.web(1000, 500, v2Errors: 0, 900, 100))])
        // a:1 restarted (counters from zero: 8 and 4 since), c:1 appeared with a long history.
        let after = scrape(4, [("a:1", Self.web(8, 4, v2Errors: 0, 8, 0)), ("c:1", Self.web(100000, 100000, v2Errors: 0, 100000, 0))])
        let v = try XCTUnwrap(MeshTrafficView(before: before, after: after))
        XCTAssertEqual(v.edges.map { $0.figures.requests }, [8, 4])
        XCTAssertEqual(v.edges[0].figures.requests / v.seconds, 2, accuracy: 1e-9)
        // No traffic between two scrapes: no edges, no rows; out of order: no view.
        let idle = try XCTUnwrap(MeshTrafficView(before: after, after: scrape(6, [("a:1", Self.web(8, 4, v2Errors: 0, 8, 0))])))
        XCTAssertTrue(idle.edges.isEmpty)
        XCTAssertTrue(idle.routes.isEmpty)
        XCTAssertNil(MeshTrafficView(before: after, after: before))
    }

    func testTCPTrafficIsAnEdgeOfItsOwnWithConnectionsAndBytes() throws {
        func tcp(_ opened: Int, _ sent: Int, _ received: Int, reporter: String, policy: String) -> String {
            let l = "reporter=\"\(reporter)\",source_app=\"web\",source_workload_namespace=\"default\",source_version=\"v1\",destination_service_name=\"cache\",destination_service_namespace=\"default\",destination_version=\"unknown\",connection_security_policy=\"\(policy)\",route=\"cache\""
            return """
            istio_tcp_connections_opened_total{\(l)} \(opened)
            istio_tcp_sent_bytes_total{\(l)} \(sent)
            istio_tcp_received_bytes_total{\(l)} \(received)
            """
        }
        let before = scrape(0, [("a:1", Self.web(10, 10, v2Errors: 0, 10, 0) + "\n" + tcp(5, 1000, 100, reporter: "source", policy: "unknown")),
                                ("c:1", tcp(5, 100, 1000, reporter: "destination", policy: "mutual_tls"))])
        let after = scrape(2, [("a:1", Self.web(10, 10, v2Errors: 0, 10, 0) + "\n" + tcp(9, 5000, 2100, reporter: "source", policy: "unknown")),
                               ("c:1", tcp(9, 2100, 5000, reporter: "destination", policy: "mutual_tls"))])
        let v = try XCTUnwrap(MeshTrafficView(before: before, after: after))
        // No HTTP in the window: only the TCP edge, and no route rows (those are HTTP's, like `meshctl top`).
        XCTAssertEqual(v.edges.count, 1)
        let e = v.edges[0]
        XCTAssertTrue(e.tcp)
        XCTAssertEqual("\(e.source.id) -> \(e.destination.id)", "web.default v1 -> cache.default unknown")
        XCTAssertEqual(e.figures.connections / v.seconds, 2, accuracy: 1e-9)
        XCTAssertEqual(e.figures.bytes / v.seconds, 3000, accuracy: 1e-9)   // 4000 sent + 2000 received over 2 s
        XCTAssertEqual(e.figures.requests, 0)
        XCTAssertEqual(e.mtls, true)
        XCTAssertTrue(v.routes.isEmpty)
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(WebUI.meshJSON(view: v, sidecarsScraped: 2, store: nil, expiry: [:]).utf8)) as? [String: Any])
        let edge = try XCTUnwrap((json["edges"] as? [[String: Any]])?.first)
        XCTAssertEqual(edge["protocol"] as? String, "tcp")
        XCTAssertEqual(edge["connectionsPerSecond"] as? Double, 2)
        XCTAssertEqual(edge["bytesPerSecond"] as? Double, 3000)
        XCTAssertTrue(edge["success"] is NSNull)
    }

    func tempDir() -> String {
        var t = Array("/tmp/webui-XXXXXX".utf8CString)
        let d = String(cString: mkdtemp(&t)!)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        return d
    }

    func testTheJSONEscapesEveryValueFromTheMesh() throws {
        let store = try ConfigStore(stateDir: tempDir())
        let id = "spiffe://cluster.local/ns/default/sa/x\"</script><img src=x onerror=alert(1)>"
        let nonce = store.sent(identity: id, node: "127.0.0.1:1", version: 3)
        let error = "line 4: \"spec\\\" <b>bad</b>\n\u{1}tab\there"
        XCTAssertTrue(store.answered(identity: id, node: "127.0.0.1:1", version: 3, nonce: nonce, error: error))
        let hostile = "rev\"iews</script>\u{7}"
        let l = "reporter=\"source\",source_app=\"web\",source_workload_namespace=\"default\",source_version=\"v1\",destination_service_name=\"\(hostile.replacingOccurrences(of: "\"", with: "\\\""))\",destination_service_namespace=\"default\",destination_version=\"v1\",response_code=\"200\",route=\"r\""
        let before = scrape(0, [("a:1", "istio_requests_total{\(l)} 1")])
        let after = scrape(1, [("a:1", "istio_requests_total{\(l)} 3")])
        let v = try XCTUnwrap(MeshTrafficView(before: before, after: after))
        let text = WebUI.meshJSON(view: v, sidecarsScraped: 1, store: store, expiry: [:])
        // Valid JSON whose strings are exactly the values, whatever they hold.
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        let proxies = try XCTUnwrap(json["proxies"] as? [[String: Any]])
        XCTAssertEqual(proxies.count, 1)
        XCTAssertEqual(proxies[0]["identity"] as? String, id)
        XCTAssertEqual(proxies[0]["state"] as? String, "NACK")
        XCTAssertEqual(proxies[0]["error"] as? String, "version 3: " + error)
        XCTAssertEqual(proxies[0]["sentVersion"] as? Int, 3)
        let edges = try XCTUnwrap(json["edges"] as? [[String: Any]])
        XCTAssertEqual(edges.count, 1)
        XCTAssertEqual(edges[0]["destination"] as? String, "\(hostile).default v1")
        XCTAssertEqual(edges[0]["rps"] as? Double, 2)
        XCTAssertEqual(edges[0]["success"] as? Double, 100)
        XCTAssertTrue(edges[0]["mtls"] is NSNull)
        let routes = try XCTUnwrap(json["routes"] as? [[String: Any]])
        XCTAssertEqual(routes[0]["service"] as? String, hostile)
        // Control characters are \u escapes, never raw bytes in the text.
        XCTAssertFalse(text.unicodeScalars.contains { $0.value < 0x20 })
        XCTAssertEqual((json["sampling"] as? [String: Any])?["state"] as? String, "ready")

        let collecting = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(WebUI.meshJSON(view: nil, sidecarsScraped: 0, store: nil, expiry: [:]).utf8)) as? [String: Any])
        XCTAssertEqual((collecting["sampling"] as? [String: Any])?["state"] as? String, "collecting")
        XCTAssertEqual((collecting["edges"] as? [Any])?.count, 0)
    }

    func testTheScriptNeverWritesMarkupFromData() {
        // Every value reaches the page through textContent / setAttribute (the CSP forbids inline
        // script; this keeps data from ever becoming markup).
        for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"] {
            XCTAssertFalse(WebUIAssets.script.contains(sink), sink)
        }
        XCTAssertFalse(WebUIAssets.html.contains("<script>"), "no inline script")
        XCTAssertFalse(WebUIAssets.html.contains("style="), "no inline style")
        XCTAssertFalse(WebUIAssets.html.contains("http://") || WebUIAssets.html.contains("https://"), "nothing from the network")
    }

    // MARK: auth and headers, on a real socket

    /// One HTTP/1.1 exchange over a plain TCP connection: the status, the header fields
    /// (lowercase names) and the body.
    func get(_ port: Int, _ path: String, token: String? = nil, method: String = "GET") throws -> (status: Int, headers: [String: String], body: String) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = in_port_t(UInt16(port).bigEndian)
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        XCTAssertEqual(rc, 0)
        let req = "\(method) \(path) HTTP/1.1\r\nhost: 127.0.0.1\r\n" + (token.map { "authorization: Bearer \($0)\r\n" } ?? "") + "connection: close\r\n\r\n"
        _ = req.withCString { send(fd, $0, strlen($0), 0) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buf, buf.count, 0)
            if n <= 0 { break }
            out += buf[0..<n]
        }
        let text = String(decoding: out, as: UTF8.self)
        let parts = text.components(separatedBy: "\r\n\r\n")
        let head = parts[0].components(separatedBy: "\r\n")
        var headers: [String: String] = [:]
        for l in head.dropFirst() {
            let kv = l.split(separator: ":", maxSplits: 1)
            headers[kv[0].lowercased()] = kv[1].trimmingCharacters(in: .whitespaces)
        }
        return (Int(head[0].split(separator: " ")[1])!, headers, parts.dropFirst().joined(separator: "\r\n\r\n"))
    }

    func testAssetsAreOpenAndEveryDataEndpointWantsTheAdminToken() throws {
        let dir = tempDir()
        let ca = try CertificateAuthority(stateDir: dir, caDir: nil, trustDomain: "cluster.local", certTTL: 3600)
        let meshd = try MeshdServer(ca: ca)
        meshd.store = try ConfigStore(stateDir: dir)
        let admin = try ControlServer(address: SocketAddress(host: "127.0.0.1", port: 0)!, name: "admin", context: { nil }) { meshd.handleAdmin($0) }
        Threads.spawnDetached { admin.run() }
        defer { admin.stop() }
        let token = ca.adminToken

        for (path, type) in [("/ui/", "text/html; charset=utf-8"), ("/ui/app.js", "text/javascript; charset=utf-8"),
                             ("/ui/app.css", "text/css; charset=utf-8"), ("/ui/icon.svg", "image/svg+xml")] {
            let r = try get(admin.port, path)
            XCTAssertEqual(r.status, 200, path)
            XCTAssertEqual(r.headers["content-type"], type, path)
            XCTAssertEqual(r.headers["x-content-type-options"], "nosniff", path)
            XCTAssertTrue(r.headers["content-security-policy"]?.hasPrefix("default-src 'self'; script-src 'self';") == true, path)
            XCTAssertFalse(r.headers["content-security-policy"]!.contains("unsafe"), path)
            XCTAssertEqual(r.headers["cache-control"], "no-cache", path)
        }
        XCTAssertEqual(try get(admin.port, "/ui/").body, WebUIAssets.html)
        let redirect = try get(admin.port, "/ui")
        XCTAssertEqual(redirect.status, 301)
        XCTAssertEqual(redirect.headers["location"], "/ui/")

        // Without the token, with a wrong one, with one a byte short: 401 and no data.
        for t in [nil, "wrong", String(token.dropLast())] {
            for path in ["/ui/api/mesh", "/ui/api/canaries", "/ui/api/nothing"] {
                let r = try get(admin.port, path, token: t)
                XCTAssertEqual(r.status, 401, "\(path) \(t ?? "no token")")
                XCTAssertTrue(r.body.contains("admin token required"), r.body)
                XCTAssertEqual(r.headers["cache-control"], "no-store")
                XCTAssertEqual(r.headers["x-content-type-options"], "nosniff")
            }
        }
        XCTAssertFalse(meshd.webUISampler.running, "a refused request starts no sampling")

        let mesh = try get(admin.port, "/ui/api/mesh", token: token)
        XCTAssertEqual(mesh.status, 200, mesh.body)
        XCTAssertEqual(mesh.headers["content-type"], "application/json")
        XCTAssertEqual(mesh.headers["cache-control"], "no-store")
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(mesh.body.utf8)) as? [String: Any])
        XCTAssertEqual((json["sampling"] as? [String: Any])?["state"] as? String, "collecting")
        XCTAssertTrue(meshd.webUISampler.running, "the first page request starts sampling")
        // This meshd has no canary endpoint: an empty list (the page hides the section).
        let canaries = try get(admin.port, "/ui/api/canaries", token: token)
        XCTAssertEqual(canaries.status, 200)
        XCTAssertEqual(canaries.body, "[]")
        XCTAssertEqual(try get(admin.port, "/ui/api/nothing", token: token).status, 404)
        XCTAssertEqual(try get(admin.port, "/ui/", method: "POST").status, 405)
        XCTAssertEqual(try get(admin.port, "/ui/secret.txt").status, 404)
        // The admin port's other endpoints are untouched: still the token.
        XCTAssertEqual(try get(admin.port, "/v1/proxies").status, 401)
    }

    func testTheSamplerStopsWhenThePageIsNotUsedAndForgetsItsScrapes() throws {
        let s = WebUISampler(interval: 0.05, idle: 0.3)
        let asked = Locked(0)
        s.touch { asked.withLock { $0 += 1 }; return [] }
        XCTAssertTrue(s.running)
        var deadline = Clock.monotonicNanos() + 5_000_000_000
        while s.window().previous == nil && Clock.monotonicNanos() < deadline { usleep(10_000) }
        XCTAssertNotNil(s.window().previous)
        XCTAssertNotNil(s.window().latest)
        deadline = Clock.monotonicNanos() + 5_000_000_000
        while s.running && Clock.monotonicNanos() < deadline { usleep(10_000) }
        XCTAssertFalse(s.running, "stopped after the idle time")
        XCTAssertNil(s.window().latest)
        let n = asked.withLock { $0 }
        usleep(200_000)
        XCTAssertEqual(asked.withLock { $0 }, n, "no scrape after it stopped")
        XCTAssertGreaterThanOrEqual(n, 2)
    }
}
