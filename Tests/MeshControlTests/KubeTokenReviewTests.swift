import XCTest
import MeshCore
import MeshCA
@testable import MeshPKI
import MeshEtcd
import MeshTLS
@testable import MeshControl
@testable import MeshControlWire
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Kubernetes TokenReviews in meshd, without a network: the answer's decoder (every refusal
/// first, then the one shape accepted), the service-account username, the unverified `exp`,
/// the request body, `--kube-api` and its companions, and the reviewer's cache and bearer token
/// with a fake transport and clock. The exchange over TLS is in tests/e2e/test_kube_token_review.py.
final class KubeTokenReviewTests: XCTestCase {
    func answer(_ status: String) -> [UInt8] { KubeTokenReviewTests.answer(status) }

    static func answer(_ status: String) -> [UInt8] {
        Array("{\"kind\":\"TokenReview\",\"apiVersion\":\"authentication.k8s.io/v1\",\"spec\":{},\"status\":\(status)}".utf8)
    }

    func decode(_ status: String, http: Int = 201) -> KubeReviewOutcome {
        KubeTokenReview.decode(status: http, body: answer(status), audience: "mesh")
    }

    let good = "{\"authenticated\":true,\"audiences\":[\"mesh\"],\"user\":{\"username\":\"system:serviceaccount:default:reviews\",\"groups\":[\"system:serviceaccounts\"]}}"

    func assertDenied(_ o: KubeReviewOutcome, _ words: String..., file: StaticString = #filePath, line: UInt = #line) {
        guard case .denied(let why) = o else { return XCTFail("expected denied, got \(o)", file: file, line: line) }
        for w in words { XCTAssertTrue(why.contains(w), "\(why) lacks \(w)", file: file, line: line) }
    }

    func assertError(_ o: KubeReviewOutcome, _ words: String..., file: StaticString = #filePath, line: UInt = #line) {
        guard case .error(let why) = o else { return XCTFail("expected error, got \(o)", file: file, line: line) }
        for w in words { XCTAssertTrue(why.contains(w), "\(why) lacks \(w)", file: file, line: line) }
    }

    // MARK: the decoder, refusals first

    func testUnauthenticatedIsDeniedWithTheAPIServersError() {
        assertDenied(decode("{\"authenticated\":false,\"error\":\"token has expired\"}"), "unauthenticated", "token has expired")
        // The apiserver leaves out `authenticated` when it is false.
        assertDenied(decode("{\"error\":\"invalid bearer token\"}"), "unauthenticated", "invalid bearer token")
        assertDenied(decode("{}"), "unauthenticated")
        // Even with a user and the audience: not authenticated is not authenticated.
        assertDenied(decode("{\"authenticated\":false,\"audiences\":[\"mesh\"],\"user\":{\"username\":\"system:serviceaccount:default:reviews\"}}"), "unauthenticated")
        // Control bytes from the apiserver are escaped in the reason.
        guard case .denied(let why) = decode("{\"error\":\"bad\\u001b[31m\"}") else { return XCTFail() }
        XCTAssertFalse(why.contains("\u{1b}"))
    }

    func testTheAudienceMustBeConfirmed() {
        assertDenied(decode("{\"authenticated\":true,\"user\":{\"username\":\"system:serviceaccount:default:reviews\"}}"), "status.audiences missing", "mesh")
        assertDenied(decode("{\"authenticated\":true,\"audiences\":[\"istio-ca\",\"api\"],\"user\":{\"username\":\"system:serviceaccount:default:reviews\"}}"),
                     "audience is not mesh", "[istio-ca, api]")
        assertDenied(decode("{\"authenticated\":true,\"audiences\":[],\"user\":{\"username\":\"system:serviceaccount:default:reviews\"}}"), "audience is not mesh")
        // A near miss is a miss.
        assertDenied(decode("{\"authenticated\":true,\"audiences\":[\"Mesh\",\"mesh \"],\"user\":{\"username\":\"system:serviceaccount:default:reviews\"}}"), "audience is not mesh")
        assertError(decode("{\"authenticated\":true,\"audiences\":\"mesh\",\"user\":{\"username\":\"system:serviceaccount:default:reviews\"}}"), "status.audiences is not a list")
        assertError(decode("{\"authenticated\":true,\"audiences\":[\"mesh\",1],\"user\":{\"username\":\"system:serviceaccount:default:reviews\"}}"), "status.audiences is not a list")
    }

    func testOnlyServiceAccountsAreAccepted() {
        for user in ["system:node:worker-1", "alice", "system:serviceaccounts:default", "system:anonymous"] {
            assertDenied(decode("{\"authenticated\":true,\"audiences\":[\"mesh\"],\"user\":{\"username\":\"\(user)\"}}"), "not a service account", user)
        }
        assertError(decode("{\"authenticated\":true,\"audiences\":[\"mesh\"]}"), "without status.user")
        assertError(decode("{\"authenticated\":true,\"audiences\":[\"mesh\"],\"user\":{}}"), "username is not a string")
        assertError(decode("{\"authenticated\":true,\"audiences\":[\"mesh\"],\"user\":{\"username\":7}}"), "username is not a string")
    }

    func testAnswersThatAreNotATokenReviewAreErrors() {
        assertError(KubeTokenReview.decode(status: 403, body: Array("{\"kind\":\"Status\",\"message\":\"tokenreviews is forbidden\"}".utf8), audience: "mesh"),
                    "HTTP 403", "tokenreviews is forbidden")
        assertError(KubeTokenReview.decode(status: 500, body: Array("oops".utf8), audience: "mesh"), "HTTP 500")
        // A good review under a redirect or an error status is not a review.
        assertError(decode(good, http: 302), "HTTP 302")
        assertError(KubeTokenReview.decode(status: 201, body: Array("{\"kind\":\"TokenReview\"".utf8), audience: "mesh"), "malformed JSON")
        assertError(KubeTokenReview.decode(status: 201, body: Array("[]".utf8), audience: "mesh"), "not a JSON object")
        assertError(KubeTokenReview.decode(status: 201, body: [], audience: "mesh"), "malformed JSON")
        // A duplicate key could say two things: refused.
        assertError(KubeTokenReview.decode(status: 201, body: Array("{\"kind\":\"TokenReview\",\"apiVersion\":\"authentication.k8s.io/v1\",\"status\":{\"authenticated\":false,\"authenticated\":true}}".utf8), audience: "mesh"),
                    "duplicate key")
        assertError(KubeTokenReview.decode(status: 201, body: Array("{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":\(good)}".utf8), audience: "mesh"), "kind and apiVersion")
        assertError(KubeTokenReview.decode(status: 201, body: Array("{\"kind\":\"TokenReview\",\"apiVersion\":\"authentication.k8s.io/v1beta1\",\"status\":\(good)}".utf8), audience: "mesh"), "kind and apiVersion")
        assertError(KubeTokenReview.decode(status: 201, body: Array("{\"kind\":\"TokenReview\",\"apiVersion\":\"authentication.k8s.io/v1\"}".utf8), audience: "mesh"), "no status")
        assertError(decode("[]"), "no status")
        assertError(decode("{\"authenticated\":\"true\",\"audiences\":[\"mesh\"],\"user\":{\"username\":\"system:serviceaccount:default:reviews\"}}"), "not a boolean")
        assertError(decode("{\"authenticated\":false,\"error\":5}"), "status.error is not a string")
    }

    func testAHugeOrDeeplyNestedBodyIsRefused() {
        let huge = answer("{\"authenticated\":true,\"audiences\":[\"mesh\"],\"user\":{\"username\":\"system:serviceaccount:default:reviews\",\"x\":\"" + String(repeating: "a", count: 70_000) + "\"}}")
        assertError(KubeTokenReview.decode(status: 201, body: huge, audience: "mesh"), "over 65536 bytes")
        let nested = answer("{\"authenticated\":true,\"audiences\":[\"mesh\"],\"user\":{\"username\":\"system:serviceaccount:default:reviews\",\"x\":"
                            + String(repeating: "[", count: 100) + String(repeating: "]", count: 100) + "}}")
        assertError(KubeTokenReview.decode(status: 201, body: nested, audience: "mesh"), "nesting deeper than 64")
    }

    func testTheOneShapeAccepted() {
        XCTAssertEqual(decode(good), .allowed(namespace: "default", serviceAccount: "reviews"))
        XCTAssertEqual(KubeTokenReview.decode(status: 200, body: answer(good), audience: "mesh"), .allowed(namespace: "default", serviceAccount: "reviews"))
        // Another audience configured: that one is needed.
        XCTAssertEqual(KubeTokenReview.decode(status: 201, body: answer(good), audience: "istio-ca"),
                       .denied("the token's audience is not istio-ca (the Kubernetes API confirmed only [mesh])"))
        XCTAssertEqual(decode("{\"authenticated\":true,\"audiences\":[\"api\",\"mesh\"],\"user\":{\"username\":\"system:serviceaccount:shop:cart-v2\",\"extra\":{\"authentication.kubernetes.io/pod-name\":[\"cart-1\"]}}}"),
                       .allowed(namespace: "shop", serviceAccount: "cart-v2"))
    }

    // MARK: the username

    func testUsernamesThatAreNotAServiceAccountsMeshIdentity() {
        let bad = ["", "system:serviceaccount:", "system:serviceaccount:default", "system:serviceaccount:default:", "system:serviceaccount::reviews",
                   "system:serviceaccount:default:reviews:extra", "system:serviceaccount:Default:reviews", "system:serviceaccount:default:Reviews",
                   "system:serviceaccount:default:re.views", "system:serviceaccount:default:-reviews", "system:serviceaccount:default:reviews-",
                   "system:serviceaccount:default:" + String(repeating: "a", count: 64), "system:serviceaccount:default:rev iews",
                   "system:serviceaccount:default:reviews\n", "system:serviceaccount:de/fault:reviews", " system:serviceaccount:default:reviews",
                   "System:ServiceAccount:default:reviews", "system:serviceaccounts:default", "system:serviceaccount:default:révïews"]
        for u in bad {
            guard case .failure(let why) = KubeTokenReview.serviceAccount(username: u) else { XCTFail("accepted \(u)"); continue }
            XCTAssertFalse(why.reason.isEmpty)
        }
        if case .failure(let why) = KubeTokenReview.serviceAccount(username: "system:serviceaccount:default:re.views") {
            XCTAssertTrue(why.reason.contains("\"re.views\" is not a DNS label"), why.reason)
        }
    }

    func testServiceAccountUsernames() throws {
        let a = try KubeTokenReview.serviceAccount(username: "system:serviceaccount:default:reviews").get()
        XCTAssertEqual(a.namespace, "default"); XCTAssertEqual(a.serviceAccount, "reviews")
        let b = try KubeTokenReview.serviceAccount(username: "system:serviceaccount:kube-system:" + String(repeating: "a", count: 63)).get()
        XCTAssertEqual(b.namespace, "kube-system"); XCTAssertEqual(b.serviceAccount.count, 63)
    }

    // MARK: the token's unverified expiry, the request

    func jwt(_ claims: String) -> String {
        Base64URL.encode(Array("{\"alg\":\"RS256\"}".utf8)) + "." + Base64URL.encode(Array(claims.utf8)) + "." + Base64URL.encode([1, 2, 3, 4])
    }

    func testUnverifiedExpiry() {
        XCTAssertEqual(KubeTokenReview.unverifiedExpiry(jwt("{\"exp\":1700000000,\"aud\":[\"mesh\"]}")), 1_700_000_000)
        XCTAssertNil(KubeTokenReview.unverifiedExpiry(jwt("{\"aud\":[\"mesh\"]}")))
        XCTAssertNil(KubeTokenReview.unverifiedExpiry(jwt("{\"exp\":\"soon\"}")))
        XCTAssertNil(KubeTokenReview.unverifiedExpiry(jwt("not json")))
        XCTAssertNil(KubeTokenReview.unverifiedExpiry("opaque-token"))
        XCTAssertNil(KubeTokenReview.unverifiedExpiry("a.b+c.d"))
        XCTAssertNil(KubeTokenReview.unverifiedExpiry("a.b.c.d"))
    }

    func testRequestBody() throws {
        let body = KubeTokenReview.requestBody(token: "a\"b\\c", audience: "mesh")
        XCTAssertEqual(body, "{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"TokenReview\",\"spec\":{\"token\":\"a\\\"b\\\\c\",\"audiences\":[\"mesh\"]}}")
        XCTAssertEqual(try JSONReader.parse(body)["spec"]?["token"]?.stringValue, "a\"b\\c")
    }

    // MARK: flags

    func config(_ api: String?, ca: String? = nil, token: String? = nil, audience: String? = nil, env: [String: String] = [:]) throws(CAError) -> KubeAPIConfig? {
        try KubeAPIConfig.fromFlags(kubeAPI: api, caFile: ca, tokenFile: token, audience: audience, environment: env)
    }

    func assertRefused(_ api: String?, ca: String? = nil, audience: String? = nil, env: [String: String] = [:], _ words: String..., line: UInt = #line) {
        do {
            let c = try config(api, ca: ca, audience: audience, env: env)
            XCTFail("accepted: \(String(describing: c))", line: line)
        } catch {
            for w in words { XCTAssertTrue(error.description.contains(w), "\(error.description) lacks \(w)", line: line) }
        }
    }

    func testKubeAPIFlagsRefused() {
        assertRefused("http://10.0.0.1:6443", "--kube-api", "plain http is refused")
        assertRefused("HTTP://10.0.0.1:6443", "plain http is refused")
        assertRefused("10.0.0.1:6443", "--kube-api", "no scheme")
        assertRefused("ftp://10.0.0.1", "must be https")
        assertRefused("https://", "neither an IPv4 address nor a host name")
        assertRefused("https://10.0.0.1:6443/api", "a path is not supported")
        assertRefused("https://10.0.0.1:6443?x=1", "query")
        assertRefused("https://user@10.0.0.1:6443", "user information")
        assertRefused("https://10.0.0.1:0", "1-65535")
        assertRefused("https://10.0.0.1:65536", "1-65535")
        assertRefused("https://10.0.0.1:", "1-65535")
        assertRefused("https://fd00::1:6443", "must be in brackets")
        assertRefused("https://[fd00::1:6443", "unbalanced brackets")
        assertRefused("https://[10.0.0.1]:6443", "not an IPv6 address")
        assertRefused("https://[fd00::1]x", "1-65535")
        assertRefused("https://999.1.1.1:6443", "neither")
        assertRefused("https://bad_name:6443", "neither")
        assertRefused("https://-bad.example:6443", "neither")
        assertRefused("https://k8s .example:6443", "spaces")
        assertRefused("in-cluster", "KUBERNETES_SERVICE_HOST is not set")
        assertRefused("in-cluster", env: ["KUBERNETES_SERVICE_HOST": "10.96.0.1"], "KUBERNETES_SERVICE_PORT is not set")
        assertRefused("in-cluster", env: ["KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443x"], "KUBERNETES_SERVICE_PORT is \"443x\"")
        assertRefused("in-cluster", env: ["KUBERNETES_SERVICE_HOST": "[fd00::1]", "KUBERNETES_SERVICE_PORT": "443"], "KUBERNETES_SERVICE_HOST")
        assertRefused("https://10.0.0.1", audience: "", "--kube-audience")
        assertRefused("https://10.0.0.1", audience: "a b", "--kube-audience")
        // The companions without --kube-api would be ignored: refused by name instead.
        assertRefused(nil, ca: "/ca.crt", "--kube-ca: only with --kube-api")
        assertRefused(nil, audience: "mesh", "--kube-audience: only with --kube-api")
        XCTAssertThrowsError(try config(nil, token: "/t")) { XCTAssertTrue(($0 as! CAError).description.contains("--kube-token-file: only with --kube-api")) }
    }

    func testKubeAPIFlags() throws {
        XCTAssertNil(try config(nil))
        let ipv6 = try XCTUnwrap(try config("in-cluster", env: ["KUBERNETES_SERVICE_HOST": "fd00:10:96::1", "KUBERNETES_SERVICE_PORT": "443"]))
        XCTAssertEqual(ipv6.url, "https://[fd00:10:96::1]:443")
        XCTAssertTrue(ipv6.hostIsIP)
        XCTAssertEqual(ipv6.caFile, KubeAPIConfig.inClusterCA)
        XCTAssertEqual(ipv6.tokenFile, KubeAPIConfig.inClusterToken)
        XCTAssertEqual(ipv6.audience, "mesh")
        let v4 = try XCTUnwrap(try config("in-cluster", env: ["KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "6443"]))
        XCTAssertEqual(v4.authority, "10.96.0.1:6443")
        let named = try XCTUnwrap(try config("https://Kubernetes.Default.svc/", ca: "/ca", token: "/t", audience: "istio-ca"))
        XCTAssertEqual(named, KubeAPIConfig(host: "kubernetes.default.svc", port: 443, hostIsIP: false, caFile: "/ca", tokenFile: "/t", audience: "istio-ca"))
        let bracketed = try XCTUnwrap(try config("https://[::1]:8443"))
        XCTAssertEqual(bracketed.host, "::1"); XCTAssertEqual(bracketed.port, 8443); XCTAssertTrue(bracketed.hostIsIP)
    }

    // MARK: the reviewer: cache, bearer, failures

    final class FakeAPI: @unchecked Sendable {
        let calls = Mutex<[(body: String, bearer: String)]>([])
        let answers = Mutex<[String: (Int, String)]>([:])   // token -> (status, review status JSON or raw body)
        let down = Atomic<Bool>(false)
        var count: Int { calls.withLock { $0.count } }
    }

    final class FakeClock: @unchecked Sendable {
        let t = Atomic<Int64>(1_000_000)
    }

    func reviewer(_ api: FakeAPI, _ clock: FakeClock, tokenFile: String) -> KubeTokenReviewer {
        let c = KubeAPIConfig(host: "127.0.0.1", port: 6443, hostIsIP: true, caFile: "/unused", tokenFile: tokenFile, audience: "mesh")
        return KubeTokenReviewer(config: c, transport: { (body, bearer) throws(KubeHTTPS.Failure) in
            api.calls.withLock { $0.append((body, bearer)) }
            if api.down.load(ordering: .relaxed) { throw KubeHTTPS.Failure(reason: "cannot connect to 127.0.0.1:6443: Connection refused") }
            let token = (try? JSONReader.parse(body))?["spec"]?["token"]?.stringValue ?? ""
            let (status, text) = api.answers.withLock { $0[token] } ?? (201, "{\"error\":\"invalid bearer token\"}")
            return (status, status == 201 ? KubeTokenReviewTests.answer(text) : Array(text.utf8))
        }, now: { clock.t.load(ordering: .relaxed) })
    }

    func tempTokenFile(_ text: String) -> String {
        let path = "/tmp/kube-review-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let f = fopen(path, "w")!
        fputs(text, f); fclose(f)
        addTeardownBlock { unlink(path) }
        return path
    }

    func write(_ path: String, _ text: String) {
        let f = fopen(path, "w")!
        fputs(text, f); fclose(f)
    }

    func testPositiveReviewsAreCachedForAMinuteAtMost() {
        let api = FakeAPI(), clock = FakeClock()
        let r = reviewer(api, clock, tokenFile: tempTokenFile("own-1\n"))
        api.answers.withLock { $0["tok-a"] = (201, good) }
        XCTAssertEqual(r.review("tok-a"), .allowed(namespace: "default", serviceAccount: "reviews"))
        XCTAssertEqual(api.count, 1)
        clock.t.add(59, ordering: .relaxed)
        XCTAssertEqual(r.review("tok-a"), .allowed(namespace: "default", serviceAccount: "reviews"))
        XCTAssertEqual(api.count, 1, "served from the cache")
        XCTAssertEqual(r.cacheHits.load(ordering: .relaxed), 1)
        // After 60 s the apiserver is asked again, and its answer now counts (revoked: refused).
        clock.t.add(1, ordering: .relaxed)
        api.answers.withLock { $0["tok-a"] = (201, "{\"authenticated\":false,\"error\":\"token has been invalidated\"}") }
        assertDenied(r.review("tok-a"), "invalidated")
        XCTAssertEqual(api.count, 2)
        XCTAssertEqual(r.allowed.load(ordering: .relaxed), 1)
        XCTAssertEqual(r.denied.load(ordering: .relaxed), 1)
    }

    func testTheTokensExpiryShortensTheCacheAndRefusalsAreNeverCached() {
        let api = FakeAPI(), clock = FakeClock()
        let r = reviewer(api, clock, tokenFile: tempTokenFile("own-1"))
        let now = clock.t.load(ordering: .relaxed)
        let shortLived = jwt("{\"exp\":\(now + 10)}")
        api.answers.withLock { $0[shortLived] = (201, good) }
        _ = r.review(shortLived)
        clock.t.add(9, ordering: .relaxed)
        _ = r.review(shortLived)
        XCTAssertEqual(api.count, 1)
        clock.t.add(1, ordering: .relaxed)
        _ = r.review(shortLived)
        XCTAssertEqual(api.count, 2, "cached no longer than the token's exp")
        // A token whose exp has passed by the token's own claim is not cached at all.
        let expired = jwt("{\"exp\":\(now - 5)}")
        api.answers.withLock { $0[expired] = (201, good) }
        _ = r.review(expired); _ = r.review(expired)
        XCTAssertEqual(api.count, 4)
        // No negative cache: a refused token is asked about every time, and an error (the
        // apiserver away) does not stick either.
        for _ in 0..<3 { assertDenied(r.review("unknown"), "unauthenticated") }
        XCTAssertEqual(api.count, 7)
        api.down.store(true, ordering: .relaxed)
        api.answers.withLock { $0["later"] = (201, good) }
        assertError(r.review("later"), "https://127.0.0.1:6443", "Connection refused")
        api.down.store(false, ordering: .relaxed)
        XCTAssertEqual(r.review("later"), .allowed(namespace: "default", serviceAccount: "reviews"))
        XCTAssertEqual(r.failed.load(ordering: .relaxed), 1)
    }

    func testTheCacheIsBounded() {
        let api = FakeAPI(), clock = FakeClock()
        let r = reviewer(api, clock, tokenFile: tempTokenFile("own-1"))
        api.answers.withLock { for i in 0...KubeTokenReviewer.maxCached { $0["t\(i)"] = (201, good) } }
        for i in 0...KubeTokenReviewer.maxCached { _ = r.review("t\(i)") }
        XCTAssertEqual(r.cachedCount, KubeTokenReviewer.maxCached)
        // Once they expire, the next insertion into the full cache clears them out.
        clock.t.add(61, ordering: .relaxed)
        api.answers.withLock { $0["fresh"] = (201, good) }
        _ = r.review("fresh")
        XCTAssertEqual(r.cachedCount, 1)
    }

    func testMeshdsOwnTokenIsReadForEveryReview() {
        let api = FakeAPI(), clock = FakeClock()
        let file = tempTokenFile("own-1\n")
        let r = reviewer(api, clock, tokenFile: file)
        _ = r.review("x")
        write(file, "  own-2\r\n")
        _ = r.review("y")
        XCTAssertEqual(api.calls.withLock { $0.map(\.bearer) }, ["own-1", "own-2"])
        XCTAssertEqual(api.calls.withLock { $0[0].body }, KubeTokenReview.requestBody(token: "x", audience: "mesh"))
        // An empty or unreadable token file, or one that would inject a header: an error, nothing sent.
        for bad in ["", "\n", "own\r\nx-evil: 1", "own 3"] {
            write(file, bad)
            assertError(r.review("z"), "meshd's own token file")
        }
        unlink(file)
        assertError(r.review("z"), "meshd's own token", "cannot read")
        XCTAssertEqual(api.count, 2)
    }

    // MARK: meshd's certificate endpoint: which credential goes where

    func certificateRequest(_ token: String, identity: String) throws -> ControlRequest {
        let csr = try MeshCrypto.csr(key: try MeshCrypto.PrivateKey.generate(), identity: identity)
        return ControlRequest(method: "POST", path: CertificateExchange.path, query: [:], headers: ["authorization": "Bearer \(token)"],
                              body: Array(csr.utf8), peerIdentity: nil)
    }

    func testMeshdSendsOnlyNonJoinTokensToTheAPIServer() throws {
        var template = Array("/tmp/meshkube-XXXXXX".utf8CString)
        let dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
        addTeardownBlock {
            for f in ["ca-key.pem", "ca-cert.pem", "root-cert.pem", "token-key", "admin-token"] { unlink("\(dir)/\(f)") }
            rmdir(dir)
        }
        let ca = try CertificateAuthority(stateDir: dir, caDir: nil, trustDomain: "cluster.local", certTTL: 3600)
        let server = try MeshdServer(ca: ca)
        let reviews = "spiffe://cluster.local/ns/default/sa/reviews"

        // Without --kube-api: refused, naming the flag; nothing reviewed.
        let off = server.handleAPI(try certificateRequest("eyJhbGciOi.x.y", identity: reviews))
        XCTAssertEqual(off.status, 401)
        XCTAssertTrue(off.body.contains("--kube-api"), off.body)

        let api = FakeAPI(), clock = FakeClock()
        server.kubeReviewer = reviewer(api, clock, tokenFile: tempTokenFile("own"))
        api.answers.withLock {
            $0["k8s-reviews"] = (201, good)
            $0["k8s-ratings"] = (201, "{\"authenticated\":true,\"audiences\":[\"mesh\"],\"user\":{\"username\":\"system:serviceaccount:default:ratings\"}}")
            $0["k8s-broken"] = (200, "{")
        }
        // Refusals first: unknown token 401, another service account 403, an unusable answer 503.
        let unknown = server.handleAPI(try certificateRequest("k8s-unknown", identity: reviews))
        XCTAssertEqual(unknown.status, 401)
        XCTAssertTrue(unknown.body.contains("unauthenticated"), unknown.body)
        let other = server.handleAPI(try certificateRequest("k8s-ratings", identity: reviews))
        XCTAssertEqual(other.status, 403)
        XCTAssertTrue(other.body.contains("grants only spiffe://cluster.local/ns/default/sa/ratings"), other.body)
        let broken = server.handleAPI(try certificateRequest("k8s-broken", identity: reviews))
        XCTAssertEqual(broken.status, 503)
        XCTAssertTrue(broken.body.contains("malformed JSON"), broken.body)
        // A join token, good or forged, never goes to the apiserver.
        let sent = api.count
        let join = ca.mintToken(namespace: "default", serviceAccount: "reviews", ttl: 60)
        XCTAssertEqual(server.handleAPI(try certificateRequest(join, identity: reviews)).status, 200)
        XCTAssertEqual(server.handleAPI(try certificateRequest("mesh1.forged.token", identity: reviews)).status, 401)
        XCTAssertEqual(api.count, sent)
        // The reviewed token gets its certificate, for exactly its identity.
        let ok = server.handleAPI(try certificateRequest("k8s-reviews", identity: reviews))
        XCTAssertEqual(ok.status, 200, ok.body)
        let leaf = X509Info.load(pem: String(ok.body.split(separator: "# trust bundle")[0]))
        XCTAssertEqual(leaf.first?.identity, reviews)
        XCTAssertEqual(api.count, sent + 1)
        XCTAssertEqual(ca.refusedCount, 5)   // without --kube-api, unknown, another account, broken, forged
        XCTAssertTrue(server.metrics().contains("meshd_token_reviews_total{result=\"denied\"} 1\n"))
        XCTAssertTrue(server.metrics().contains("meshd_token_reviews_total{result=\"allowed\"} 2\n"))
        XCTAssertTrue(server.metrics().contains("meshd_token_reviews_total{result=\"error\"} 1\n"))
    }
}
