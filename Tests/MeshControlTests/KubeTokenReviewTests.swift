import XCTest
import MeshCore
import MeshCA
@testable import MeshPKI
import MeshEtcd
import MeshTLS
import MeshIO
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

    // MARK: what is never sent for review: tokens not shaped like a JWT, CSRs without a good identity

    func testTokensNotShapedLikeAJWTAreRefusedWithTheReason() {
        let cases: [(String, String)] = [
            ("", "part 1 is empty"), ("opaque-token", "1 part separated by '.', not 3"), ("a.b", "2 parts"), ("a.b.c.d", "4 parts"),
            (".b.c", "part 1 is empty"), ("a..c", "part 2 is empty"), ("a.b.", "part 3 is empty"), ("...", "part 1 is empty"),
            ("a.b=.c", "part 2 holds a byte that is not base64url (0x3d)"), ("a.b+c.d", "0x2b"), ("a/b.c.d", "part 1 holds"),
            ("a.b c.d", "0x20"), ("a.b.c\n", "part 3 holds a byte that is not base64url (0xa)"), ("a.\u{e9}.c", "part 2 holds"),
            ("a.b.c\u{0}", "0x0"),
            ("a." + String(repeating: "b", count: KubeTokenReview.maxTokenBytes - 3) + ".c", "8193 bytes, over 8192"),
        ]
        for (token, why) in cases {
            guard let got = KubeTokenReview.notAJWT(token) else { XCTFail("accepted \(token.prefix(40))"); continue }
            XCTAssertTrue(got.hasPrefix("not shaped like a JWT: ") && got.contains(why), "\(got) lacks \(why)")
        }
        // The reason never quotes the token.
        XCTAssertFalse(KubeTokenReview.notAJWT("secret-opaque-token")!.contains("secret"))
        // The shapes accepted: a real-looking JWT, the smallest, exactly 8 KiB.
        XCTAssertNil(KubeTokenReview.notAJWT(jwt("{\"exp\":1700000000,\"aud\":[\"mesh\"]}")))
        XCTAssertNil(KubeTokenReview.notAJWT("a.b.c"))
        XCTAssertNil(KubeTokenReview.notAJWT("A-z_09.b.c"))
        XCTAssertNil(KubeTokenReview.notAJWT("a." + String(repeating: "b", count: KubeTokenReview.maxTokenBytes - 4) + ".c"))
    }

    func testCSRIdentitiesThatAreNotOneMeshIdentity() {
        let td = "cluster.local"
        let bad: [([String], String)] = [
            ([], "asks for no identity"),
            (["spiffe://cluster.local/ns/default/sa/reviews", "spiffe://cluster.local/ns/default/sa/ratings"], "asks for 2 names"),
            (["spiffe://cluster.local/ns/default/sa/reviews", "(a SAN that is not a URI)"], "asks for 2 names"),
            (["(a SAN that is not a URI)"], "not an identity"),
            (["spiffe://other.local/ns/default/sa/reviews"], "not an identity spiffe://cluster.local/ns/NS/sa/SA"),
            (["spiffe://cluster.local.evil/ns/default/sa/reviews"], "not an identity"),
            (["spiffe://cluster.local/ns/default/sa/"], "not an identity"),
            (["spiffe://cluster.local/ns//sa/reviews"], "not an identity"),
            (["spiffe://cluster.local/ns/Default/sa/reviews"], "not an identity"),
            (["spiffe://cluster.local/ns/default/sa/re.views"], "not an identity"),
            (["spiffe://cluster.local/ns/default/sa/reviews/x"], "not an identity"),
            (["spiffe://cluster.local/ns/default/svc/reviews"], "not an identity"),
            (["spiffe://cluster.local/default/reviews"], "not an identity"),
            (["https://cluster.local/ns/default/sa/reviews"], "not an identity"),
            (["spiffe://cluster.local/ns/default/sa/rev\u{1b}iews"], "not an identity"),
        ]
        for (uris, why) in bad {
            guard let got = KubeTokenReview.csrIdentityRefusal(uris, trustDomain: td) else { XCTFail("accepted \(uris)"); continue }
            XCTAssertTrue(got.contains(why), "\(got) lacks \(why)")
            XCTAssertFalse(got.contains("\u{1b}"))
        }
        XCTAssertNil(KubeTokenReview.csrIdentityRefusal(["spiffe://cluster.local/ns/default/sa/reviews"], trustDomain: td))
        XCTAssertNil(KubeTokenReview.csrIdentityRefusal(["spiffe://mesh.example/ns/kube-system/sa/" + String(repeating: "a", count: 63)], trustDomain: "mesh.example"))
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
        /// While true, every review waits (an apiserver that is slow to answer); `waiting` counts
        /// the reviews held now, `mostWaiting` the most ever held at once.
        let hold = Atomic<Bool>(false)
        let waiting = Atomic<Int>(0), mostWaiting = Atomic<Int>(0)
        var count: Int { calls.withLock { $0.count } }
    }

    final class FakeClock: @unchecked Sendable {
        let t = Atomic<Int64>(1_000_000)
    }

    func reviewer(_ api: FakeAPI, _ clock: FakeClock, tokenFile: String) -> KubeTokenReviewer {
        let c = KubeAPIConfig(host: "127.0.0.1", port: 6443, hostIsIP: true, caFile: "/unused", tokenFile: tokenFile, audience: "mesh")
        return KubeTokenReviewer(config: c, transport: { (body, bearer) throws(KubeHTTPS.Failure) in
            api.calls.withLock { $0.append((body, bearer)) }
            if api.hold.load(ordering: .relaxed) {
                let now = api.waiting.add(1, ordering: .relaxed).newValue
                var most = api.mostWaiting.load(ordering: .relaxed)
                while now > most, !api.mostWaiting.compareExchange(expected: most, desired: now, ordering: .relaxed).exchanged {
                    most = api.mostWaiting.load(ordering: .relaxed)
                }
                while api.hold.load(ordering: .relaxed) { usleep(1_000) }
                api.waiting.subtract(1, ordering: .relaxed)
            }
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

    /// A token shaped like a JWT (three base64url parts), named `name` for the test.
    func k(_ name: String) -> String { "eyJhbGciOiJSUzI1NiJ9.\(name).c2ln" }

    func testPositiveReviewsAreCachedForAMinuteAtMost() {
        let api = FakeAPI(), clock = FakeClock()
        let r = reviewer(api, clock, tokenFile: tempTokenFile("own-1\n"))
        api.answers.withLock { $0[k("tok-a")] = (201, good) }
        XCTAssertEqual(r.review(k("tok-a")), .allowed(namespace: "default", serviceAccount: "reviews"))
        XCTAssertEqual(api.count, 1)
        clock.t.add(59, ordering: .relaxed)
        XCTAssertEqual(r.review(k("tok-a")), .allowed(namespace: "default", serviceAccount: "reviews"))
        XCTAssertEqual(api.count, 1, "served from the cache")
        XCTAssertEqual(r.cacheHits.load(ordering: .relaxed), 1)
        // After 60 s the apiserver is asked again, and its answer now counts (revoked: refused).
        clock.t.add(1, ordering: .relaxed)
        api.answers.withLock { $0[k("tok-a")] = (201, "{\"authenticated\":false,\"error\":\"token has been invalidated\"}") }
        assertDenied(r.review(k("tok-a")), "invalidated")
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
        for _ in 0..<3 { assertDenied(r.review(k("unknown")), "unauthenticated") }
        XCTAssertEqual(api.count, 7)
        api.down.store(true, ordering: .relaxed)
        api.answers.withLock { $0[k("later")] = (201, good) }
        assertError(r.review(k("later")), "https://127.0.0.1:6443", "Connection refused")
        api.down.store(false, ordering: .relaxed)
        XCTAssertEqual(r.review(k("later")), .allowed(namespace: "default", serviceAccount: "reviews"))
        XCTAssertEqual(r.failed.load(ordering: .relaxed), 1)
    }

    func testTheCacheIsBounded() {
        let api = FakeAPI(), clock = FakeClock()
        let r = reviewer(api, clock, tokenFile: tempTokenFile("own-1"))
        api.answers.withLock { for i in 0...KubeTokenReviewer.maxCached { $0[k("t\(i)")] = (201, good) } }
        for i in 0...KubeTokenReviewer.maxCached { _ = r.review(k("t\(i)")) }
        XCTAssertEqual(r.cachedCount, KubeTokenReviewer.maxCached)
        // Once they expire, the next insertion into the full cache clears them out.
        clock.t.add(61, ordering: .relaxed)
        api.answers.withLock { $0[k("fresh")] = (201, good) }
        _ = r.review(k("fresh"))
        XCTAssertEqual(r.cachedCount, 1)
    }

    func testMeshdsOwnTokenIsReadForEveryReview() {
        let api = FakeAPI(), clock = FakeClock()
        let file = tempTokenFile("own-1\n")
        let r = reviewer(api, clock, tokenFile: file)
        _ = r.review(k("x"))
        write(file, "  own-2\r\n")
        _ = r.review(k("y"))
        XCTAssertEqual(api.calls.withLock { $0.map(\.bearer) }, ["own-1", "own-2"])
        XCTAssertEqual(api.calls.withLock { $0[0].body }, KubeTokenReview.requestBody(token: k("x"), audience: "mesh"))
        // An empty or unreadable token file, or one that would inject a header: an error, nothing sent.
        for bad in ["", "\n", "own\r\nx-evil: 1", "own 3"] {
            write(file, bad)
            assertError(r.review(k("z")), "meshd's own token file")
        }
        unlink(file)
        assertError(r.review(k("z")), "meshd's own token", "cannot read")
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
            $0[k("k8s-reviews")] = (201, good)
            $0[k("k8s-ratings")] = (201, "{\"authenticated\":true,\"audiences\":[\"mesh\"],\"user\":{\"username\":\"system:serviceaccount:default:ratings\"}}")
            $0[k("k8s-broken")] = (200, "{")
        }
        // Refusals first: unknown token 401, another service account 403, an unusable answer 503.
        let unknown = server.handleAPI(try certificateRequest(k("k8s-unknown"), identity: reviews))
        XCTAssertEqual(unknown.status, 401)
        XCTAssertTrue(unknown.body.contains("unauthenticated"), unknown.body)
        let other = server.handleAPI(try certificateRequest(k("k8s-ratings"), identity: reviews))
        XCTAssertEqual(other.status, 403)
        XCTAssertTrue(other.body.contains("grants only spiffe://cluster.local/ns/default/sa/ratings"), other.body)
        let broken = server.handleAPI(try certificateRequest(k("k8s-broken"), identity: reviews))
        XCTAssertEqual(broken.status, 503)
        XCTAssertTrue(broken.body.contains("malformed JSON"), broken.body)
        // A join token, good or forged, never goes to the apiserver.
        let sent = api.count
        let join = ca.mintToken(namespace: "default", serviceAccount: "reviews", ttl: 60)
        XCTAssertEqual(server.handleAPI(try certificateRequest(join, identity: reviews)).status, 200)
        XCTAssertEqual(server.handleAPI(try certificateRequest("mesh1.forged.token", identity: reviews)).status, 401)
        XCTAssertEqual(api.count, sent)
        // The reviewed token gets its certificate, for exactly its identity.
        let ok = server.handleAPI(try certificateRequest(k("k8s-reviews"), identity: reviews))
        XCTAssertEqual(ok.status, 200, ok.body)
        let leaf = X509Info.load(pem: String(ok.body.split(separator: "# trust bundle")[0]))
        XCTAssertEqual(leaf.first?.identity, reviews)
        XCTAssertEqual(api.count, sent + 1)
        XCTAssertEqual(ca.refusedCount, 5)   // without --kube-api, unknown, another account, broken, forged
        XCTAssertTrue(server.metrics().contains("meshd_token_reviews_total{result=\"denied\"} 1\n"))
        XCTAssertTrue(server.metrics().contains("meshd_token_reviews_total{result=\"allowed\"} 2\n"))
        XCTAssertTrue(server.metrics().contains("meshd_token_reviews_total{result=\"error\"} 1\n"))
    }

    /// A CA in a temporary state directory, removed after the test.
    func temporaryCA() throws -> CertificateAuthority {
        var template = Array("/tmp/meshkube-XXXXXX".utf8CString)
        let dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
        addTeardownBlock {
            for f in ["ca-key.pem", "ca-cert.pem", "root-cert.pem", "token-key", "admin-token"] { unlink("\(dir)/\(f)") }
            rmdir(dir)
        }
        return try CertificateAuthority(stateDir: dir, caDir: nil, trustDomain: "cluster.local", certTTL: 3600)
    }

    func request(_ token: String, csr: String) -> ControlRequest {
        ControlRequest(method: "POST", path: CertificateExchange.path, query: [:], headers: ["authorization": "Bearer \(token)"],
                       body: Array(csr.utf8), peerIdentity: nil)
    }

    func testJunkTokensAndBadCSRsNeverReachTheAPIServer() throws {
        let ca = try temporaryCA()
        let server = try MeshdServer(ca: ca)
        let api = FakeAPI(), clock = FakeClock()
        server.kubeReviewer = reviewer(api, clock, tokenFile: tempTokenFile("own"))
        let reviews = "spiffe://cluster.local/ns/default/sa/reviews"
        let goodCSR = try MeshCrypto.csr(key: try MeshCrypto.PrivateKey.generate(), identity: reviews)
        // Tokens not shaped like a JWT: 401 at once, naming why; nothing sent.
        for (token, why) in [("opaque-token", "1 part"), ("a.b", "2 parts"), ("a..c", "part 2 is empty"), ("a.b.c.d", "4 parts"),
                             ("a.b=.c", "not base64url"), ("a." + String(repeating: "b", count: 9000) + ".c", "over 8192")] {
            api.answers.withLock { $0[token] = (201, good) }   // it would be allowed, were it asked
            let r = server.handleAPI(request(token, csr: goodCSR))
            XCTAssertEqual(r.status, 401, r.body)
            XCTAssertTrue(r.body.hasPrefix("Kubernetes token refused without a review: not shaped like a JWT: ") && r.body.contains(why), r.body)
        }
        // The reviewer itself never sends one either.
        assertDenied(server.kubeReviewer!.review("opaque-token"), "not shaped like a JWT")
        // A JWT-shaped token the apiserver would allow, with a CSR that is not one, does not verify,
        // or asks for no well-formed identity: 400 naming the CSR's fault; nothing sent.
        let token = k("would-be-allowed")
        api.answers.withLock { $0[token] = (201, good) }
        var tampered = Array(goodCSR.utf8)
        let end = tampered.count - "\n-----END CERTIFICATE REQUEST-----\n".utf8.count
        XCTAssertEqual(String(decoding: tampered[end...], as: UTF8.self), "\n-----END CERTIFICATE REQUEST-----\n")
        var i = end - 8   // inside the signature's last integer (a base64 letter or digit, not a line break)
        while !(tampered[i] >= UInt8(ascii: "A") && tampered[i] <= UInt8(ascii: "z") && tampered[i] != UInt8(ascii: "_")) { i -= 1 }
        tampered[i] = tampered[i] == UInt8(ascii: "A") ? UInt8(ascii: "B") : UInt8(ascii: "A")
        let key = try MeshCrypto.PrivateKey.generate()
        let badCSRs: [(String, Int, String)] = [
            ("not a csr", 400, "not a PEM certificate signing request"),
            (String(decoding: tampered, as: UTF8.self), 400, "the CSR's signature does not verify"),
            (try MeshCrypto.csr(key: key, identity: "spiffe://other.local/ns/default/sa/reviews"), 400, "not an identity spiffe://cluster.local/ns/NS/sa/SA"),
            (try MeshCrypto.csr(key: key, identity: "spiffe://cluster.local/ns/default/sa/re.views"), 400, "not an identity"),
            (try MeshCrypto.csr(key: key, identity: "spiffe://cluster.local/ns/default/sa/reviews/extra"), 400, "not an identity"),
        ]
        for (csr, status, why) in badCSRs {
            let r = server.handleAPI(request(token, csr: csr))
            XCTAssertEqual(r.status, status, r.body)
            XCTAssertTrue(r.body.contains(why) && r.body.contains("(the token was not reviewed)"), r.body)
        }
        XCTAssertEqual(api.count, 0, "nothing reached the apiserver")
        XCTAssertEqual(ca.refusedCount, 11)
        let m = server.metrics()
        XCTAssertTrue(m.contains("meshd_token_reviews_not_sent_total{reason=\"not_a_jwt\"} 6\n"), m)
        XCTAssertTrue(m.contains("meshd_token_reviews_total{result=\"denied\"} 0\n"), m)
        // The same token with a good CSR is reviewed once and issued.
        XCTAssertEqual(server.handleAPI(request(token, csr: goodCSR)).status, 200)
        XCTAssertEqual(api.count, 1)
    }

    func testAtMostTwoReviewsInFlightTheRestBusyAtOnce() throws {
        let ca = try temporaryCA()
        let server = try MeshdServer(ca: ca)
        let api = FakeAPI(), clock = FakeClock()
        let r = reviewer(api, clock, tokenFile: tempTokenFile("own"))
        server.kubeReviewer = r
        let reviews = "spiffe://cluster.local/ns/default/sa/reviews"
        let csr = try MeshCrypto.csr(key: try MeshCrypto.PrivateKey.generate(), identity: reviews)
        api.answers.withLock { for i in 0..<10 { $0[k("slow\(i)")] = (201, good) }; $0[k("cached")] = (201, good) }
        // One allowed before the apiserver turns slow: it stays in the cache.
        XCTAssertEqual(server.handleAPI(request(k("cached"), csr: csr)).status, 200)
        api.hold.store(true, ordering: .relaxed)
        let answers = Mutex<[(status: Int, body: String, nanos: UInt64)]>([])
        var threads: [pthread_t] = []
        for i in 0..<10 {
            let req = request(k("slow\(i)"), csr: csr)
            threads.append(Threads.spawn(name: "csr \(i)") {
                let t0 = Clock.monotonicNanos()
                let a = server.handleAPI(req)
                answers.withLock { $0.append((a.status, a.body, Clock.monotonicNanos() - t0)) }
            })
        }
        // 8 answered busy at once while 2 wait on the apiserver.
        let deadline = Clock.monotonicNanos() + 10_000_000_000
        while answers.withLock({ $0.count }) < 8 && Clock.monotonicNanos() < deadline { usleep(2_000) }
        usleep(200_000)   // a third review, were one let through, would be waiting by now
        let early = answers.withLock { $0 }
        XCTAssertEqual(early.count, 8)
        for a in early {
            XCTAssertEqual(a.status, 503, a.body)
            XCTAssertTrue(a.body.hasPrefix("token reviews busy: 2 Kubernetes TokenReviews already in flight"), a.body)
            XCTAssertLessThan(a.nanos, 2_000_000_000, "a busy answer comes at once")
        }
        XCTAssertEqual(api.waiting.load(ordering: .relaxed), 2)
        XCTAssertEqual(r.inFlight.load(ordering: .relaxed), 2)
        // Meanwhile a join token and a cached review still get their certificates.
        let join = ca.mintToken(namespace: "default", serviceAccount: "reviews", ttl: 60)
        XCTAssertEqual(server.handleAPI(request(join, csr: csr)).status, 200)
        XCTAssertEqual(server.handleAPI(request(k("cached"), csr: csr)).status, 200)
        XCTAssertEqual(api.count, 3, "the cached review and the 2 slow ones")
        // The apiserver answers: the two held get their certificates, and the slots are free again.
        api.hold.store(false, ordering: .relaxed)
        for t in threads { Threads.join(t) }
        let all = answers.withLock { $0 }
        XCTAssertEqual(all.filter { $0.status == 200 }.count, 2)
        XCTAssertEqual(all.filter { $0.status == 503 }.count, 8)
        XCTAssertEqual(api.mostWaiting.load(ordering: .relaxed), 2)
        XCTAssertEqual(r.inFlight.load(ordering: .relaxed), 0)
        XCTAssertTrue(server.metrics().contains("meshd_token_reviews_not_sent_total{reason=\"busy\"} 8\n"))
        XCTAssertTrue(server.metrics().contains("meshd_token_reviews_total{result=\"allowed\"} 3\n"))
        // A failed review frees its slot too.
        api.down.store(true, ordering: .relaxed)
        for i in 0..<3 { assertError(r.review(k("down\(i)")), "Connection refused") }
        XCTAssertEqual(r.inFlight.load(ordering: .relaxed), 0)
        api.down.store(false, ordering: .relaxed)
        api.answers.withLock { $0[k("after")] = (201, good) }
        XCTAssertEqual(server.handleAPI(request(k("after"), csr: csr)).status, 200)
    }
}
