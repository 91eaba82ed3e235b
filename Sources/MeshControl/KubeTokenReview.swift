import COpenSSL
import MeshCA
import MeshConfig
import MeshControlWire
import MeshCore
import MeshEtcd
import MeshIO
import MeshPKI
import MeshTLS
import Synchronization

/// What a review of a Kubernetes service-account token decided.
public enum KubeReviewOutcome: Equatable, Sendable {
    /// The apiserver vouched for the token: it belongs to this service account.
    case allowed(namespace: String, serviceAccount: String)
    /// The token is refused (401): the reason names what failed.
    case denied(String)
    /// No decision could be had (the apiserver unreachable, an error answer, malformed JSON):
    /// refused too (fail closed), but the workload may try again (503).
    case error(String)
}

/// The TokenReview exchange with the Kubernetes API (`POST
/// /apis/authentication.k8s.io/v1/tokenreviews`), as pure functions: the request body, the
/// answer's decoding (untrusted input: size and nesting bounded, strict JSON) and the
/// service-account username. `KubeTokenReviewer` sends the requests.
public enum KubeTokenReview {
    public static let path = "/apis/authentication.k8s.io/v1/tokenreviews"
    /// The largest answer read (a real one is a few KiB).
    public static let maxBody = 64 << 10

    /// The request body for `token`, asking the apiserver to check `audience` too.
    public static func requestBody(token: String, audience: String) -> String {
        "{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"TokenReview\",\"spec\":{\"token\":\(JSONWriter.quote(token)),\"audiences\":[\(JSONWriter.quote(audience))]}}"
    }

    /// Text from the answer, safe for a log line and bounded.
    static func shown(_ s: String, max: Int = 200) -> String {
        let e = Printable.escaped(s)
        return e.count > max ? String(e.prefix(max)) + "..." : e
    }

    /// Decodes the apiserver's answer (`status`: its HTTP status) into a decision. Accepted
    /// only: `status.authenticated` true, `status.audiences` present and holding `audience`,
    /// `status.user.username` a service account's (`system:serviceaccount:NS:SA`).
    public static func decode(status: Int, body: [UInt8], audience: String) -> KubeReviewOutcome {
        if body.count > maxBody { return .error("the Kubernetes API's answer is over \(maxBody) bytes") }
        guard status >= 200 && status < 300 else {
            // A Status object's message says why (RBAC: meshd's own account may not create tokenreviews).
            var why = ""
            if let v = try? JSONReader.parse(body), let m = v["message"]?.stringValue { why = ": " + shown(m) }
            return .error("the Kubernetes API answered the TokenReview with HTTP \(status)\(why)")
        }
        let v: JSONValue
        do { v = try JSONReader.parse(body) } catch {
            return .error("malformed JSON from the Kubernetes API: \(error.description)")
        }
        guard v.isObject else { return .error("malformed TokenReview answer: not a JSON object") }
        guard v["kind"]?.stringValue == "TokenReview", v["apiVersion"]?.stringValue == "authentication.k8s.io/v1" else {
            return .error("malformed TokenReview answer: kind and apiVersion must be TokenReview and authentication.k8s.io/v1")
        }
        guard let st = v["status"], st.isObject else { return .error("malformed TokenReview answer: no status object") }
        var apiError = ""
        if let e = st["error"] {
            guard let s = e.stringValue else { return .error("malformed TokenReview answer: status.error is not a string") }
            apiError = s
        }
        // The apiserver leaves `authenticated` out when it is false.
        var authenticated = false
        if let a = st["authenticated"] {
            guard let b = a.boolValue else { return .error("malformed TokenReview answer: status.authenticated is not a boolean") }
            authenticated = b
        }
        guard authenticated else {
            return .denied("the Kubernetes API did not authenticate the token (unauthenticated)" + (apiError.isEmpty ? "" : ": " + shown(apiError)))
        }
        guard let auds = st["audiences"] else {
            return .denied("the Kubernetes API did not confirm the token's audience (status.audiences missing; expected \(audience))")
        }
        guard let list = auds.arrayValue, list.allSatisfy({ $0.stringValue != nil }) else {
            return .error("malformed TokenReview answer: status.audiences is not a list of strings")
        }
        guard list.contains(.string(audience)) else {
            let names = list.compactMap { $0.stringValue }.map { shown($0, max: 64) }.joined(separator: ", ")
            return .denied("the token's audience is not \(audience) (the Kubernetes API confirmed only [\(names)])")
        }
        guard let user = st["user"], user.isObject else { return .error("malformed TokenReview answer: authenticated without status.user") }
        guard let name = user["username"]?.stringValue else { return .error("malformed TokenReview answer: status.user.username is not a string") }
        switch serviceAccount(username: name) {
        case .success(let id): return .allowed(namespace: id.namespace, serviceAccount: id.serviceAccount)
        case .failure(let why): return .denied(why.reason)
        }
    }

    /// Why a username is not a service account meshd can grant an identity to.
    public struct NotAServiceAccount: Error, Equatable { public let reason: String }

    /// `system:serviceaccount:NS:SA` -> (NS, SA); both must be DNS labels (the mesh's identities
    /// and registrations need them; Kubernetes namespaces always are).
    public static func serviceAccount(username: String) -> Result<(namespace: String, serviceAccount: String), NotAServiceAccount> {
        let prefix = "system:serviceaccount:"
        guard username.hasPrefix(prefix) else {
            return .failure(NotAServiceAccount(reason: "not a service account: the token belongs to \"\(shown(username, max: 120))\""))
        }
        let parts = username.dropFirst(prefix.count).split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 2 else {
            return .failure(NotAServiceAccount(reason: "not a service account: \"\(shown(username, max: 120))\" is not system:serviceaccount:NAMESPACE:NAME"))
        }
        guard Names.isDNSLabel(parts[0]) else {
            return .failure(NotAServiceAccount(reason: "not a service account: namespace \"\(shown(parts[0], max: 120))\" is not a DNS label"))
        }
        guard Names.isDNSLabel(parts[1]) else {
            return .failure(NotAServiceAccount(reason: "service account name \"\(shown(parts[1], max: 120))\" is not a DNS label (a mesh identity needs one)"))
        }
        return .success((parts[0], parts[1]))
    }

    /// The `exp` claim of a JWT-shaped token, read WITHOUT verifying anything: used only to
    /// keep a positive review no longer than the token lives (nil: not a JWT, or no `exp`).
    public static func unverifiedExpiry(_ token: String) -> Int64? {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[1].utf8.count <= 8192, let payload = Base64URL.decode(String(parts[1])),
              let claims = try? JSONReader.parse(payload) else { return nil }
        return claims["exp"]?.int64Value
    }

    /// SHA-256 of the token: the cache's key (the token itself is never kept).
    static func digest(_ token: String) -> [UInt8] {
        var md = [UInt8](repeating: 0, count: 32)
        var n: UInt32 = 0
        let bytes = Array(token.utf8)
        let ok = bytes.withUnsafeBytes { b in md.withUnsafeMutableBufferPointer { EVP_Digest(b.baseAddress, b.count, $0.baseAddress, &n, EVP_sha256(), nil) } }
        precondition(ok == 1, "EVP_Digest(sha256) failed")
        return md
    }
}

/// Reviews Kubernetes service-account tokens with the apiserver for meshd's certificate
/// requests (`meshd --kube-api`), as istiod does: a TokenReview per token, meshd's own bearer
/// token re-read from its file every time (the kubelet rotates it), TLS to the apiserver
/// verified against `--kube-ca` with the host checked, a 5 s deadline. Positive reviews are
/// cached by SHA-256 of the token for 60 s (less when the token's `exp` is sooner), at most
/// `maxCached` of them; refusals are never cached. Thread-safe; it blocks (worker threads only).
public final class KubeTokenReviewer: @unchecked Sendable {
    public let config: KubeAPIConfig
    /// Sends one review: (request body, bearer token) -> (HTTP status, body), or a failure.
    typealias Transport = @Sendable (_ body: String, _ bearer: String) throws(KubeHTTPS.Failure) -> (status: Int, body: [UInt8])
    private let transport: Transport
    /// Unix seconds (a test's clock in unit tests).
    let now: @Sendable () -> Int64

    public static let cacheSeconds: Int64 = 60
    public static let maxCached = 10_000
    public static let deadlineNanos: UInt64 = 5_000_000_000

    private struct Cached { let namespace: String; let serviceAccount: String; let until: Int64 }
    private let cache = Locked<[[UInt8]: Cached]>([:])

    let allowed = Atomic<Int>(0), denied = Atomic<Int>(0), failed = Atomic<Int>(0), cacheHits = Atomic<Int>(0)

    /// Loads the CA (errors name `--kube-ca`) and checks that meshd's token file is readable now
    /// (`--kube-token-file`); both are given as the in-cluster defaults when not set.
    public convenience init(config: KubeAPIConfig) throws(CAError) {
        let caPEM: String
        do { caPEM = try FileStore.read(config.caFile) } catch { throw CAError("--kube-ca: \(error.description)") }
        guard caPEM.contains("BEGIN CERTIFICATE") else { throw CAError("--kube-ca: \(config.caFile) holds no PEM certificate") }
        var o = TLSContext.Options(certChainFile: "(none)", privateKeyFile: "(none)", trustBundleFile: config.caFile)
        o.withoutCertificate = true
        o.trustBundlePEM = caPEM
        o.alpn = ["http/1.1"]
        o.minVersion13 = false   // apiservers speak TLS 1.3, but 1.2 (ECDHE + AEAD only) is their floor
        let ctx: TLSContext
        do { ctx = try TLSContext(role: .client, options: o) } catch { throw CAError("--kube-ca: \(config.caFile): \(error)") }
        do { _ = try KubeTokenReviewer.bearer(config.tokenFile) } catch { throw CAError("--kube-token-file: \(error.reason)") }
        let c = config
        self.init(config: config, transport: { (body, bearer) throws(KubeHTTPS.Failure) in
            let deadline = Clock.monotonicNanos() + KubeTokenReviewer.deadlineNanos
            let conn = try KubeHTTPS.open(host: c.host, port: c.port, isIP: c.hostIsIP, context: ctx, deadline: deadline)
            defer { conn.close() }
            let request = "POST \(KubeTokenReview.path) HTTP/1.1\r\nhost: \(c.authority)\r\nauthorization: Bearer \(bearer)\r\n"
                + "content-type: application/json\r\naccept: application/json\r\nuser-agent: meshd\r\ncontent-length: \(body.utf8.count)\r\nconnection: close\r\n\r\n" + body
            return try conn.exchange(Array(request.utf8), maxBody: KubeTokenReview.maxBody)
        }, now: { MeshCrypto.now() })
    }

    init(config: KubeAPIConfig, transport: @escaping Transport, now: @escaping @Sendable () -> Int64) {
        self.config = config
        self.transport = transport
        self.now = now
    }

    /// meshd's own token, read now: one line, no control characters (it goes in a header).
    static func bearer(_ file: String) throws(KubeHTTPS.Failure) -> String {
        let text: String
        do { text = try FileStore.read(file) } catch { throw KubeHTTPS.Failure(reason: "meshd's own token: \(error.description)") }
        var t = Substring(text)
        // Characters: "\r\n" is one, and whitespace.
        while let l = t.last, l.isWhitespace { t = t.dropLast() }
        while let f = t.first, f.isWhitespace { t = t.dropFirst() }
        guard !t.isEmpty else { throw KubeHTTPS.Failure(reason: "meshd's own token file \(file) is empty") }
        guard t.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F }) else {
            throw KubeHTTPS.Failure(reason: "meshd's own token file \(file) holds spaces, control or non-ASCII characters")
        }
        return String(t)
    }

    /// Reviews `token` (cached when it was allowed less than 60 s ago). Never logs the token.
    public func review(_ token: String) -> KubeReviewOutcome {
        let key = KubeTokenReview.digest(token)
        let t = now()
        if let hit = cache.withLock({ c -> Cached? in
            guard let e = c[key] else { return nil }
            if e.until > t { return e }
            c.removeValue(forKey: key)
            return nil
        }) {
            cacheHits.add(1, ordering: .relaxed)
            return .allowed(namespace: hit.namespace, serviceAccount: hit.serviceAccount)
        }
        let outcome: KubeReviewOutcome
        do {
            let bearer = try KubeTokenReviewer.bearer(config.tokenFile)
            let answer = try transport(KubeTokenReview.requestBody(token: token, audience: config.audience), bearer)
            outcome = KubeTokenReview.decode(status: answer.status, body: answer.body, audience: config.audience)
        } catch {
            outcome = .error("the Kubernetes API at \(config.url) could not review the token: \(error.reason)")
        }
        switch outcome {
        case .allowed(let ns, let sa):
            allowed.add(1, ordering: .relaxed)
            var until = t + KubeTokenReviewer.cacheSeconds
            if let exp = KubeTokenReview.unverifiedExpiry(token) { until = min(until, exp) }
            if until > t {
                cache.withLock { c in
                    if c.count >= KubeTokenReviewer.maxCached {
                        c = c.filter { $0.value.until > t }
                        // Still full of live entries: make room (a lost entry costs one more review).
                        if c.count >= KubeTokenReviewer.maxCached, let k = c.keys.first { c.removeValue(forKey: k) }
                    }
                    c[key] = Cached(namespace: ns, serviceAccount: sa, until: until)
                }
            }
        case .denied: denied.add(1, ordering: .relaxed)
        case .error: failed.add(1, ordering: .relaxed)
        }
        return outcome
    }

    /// Positive reviews held now (expired ones may still count until they are met again).
    var cachedCount: Int { cache.withLock { $0.count } }

    /// The series for meshd's `/metrics`.
    public func metrics() -> String {
        var out = "# HELP meshd_token_reviews_total Kubernetes TokenReviews sent to the apiserver, by result (allowed, denied, error).\n# TYPE meshd_token_reviews_total counter\n"
        out += "meshd_token_reviews_total{result=\"allowed\"} \(allowed.load(ordering: .relaxed))\n"
        out += "meshd_token_reviews_total{result=\"denied\"} \(denied.load(ordering: .relaxed))\n"
        out += "meshd_token_reviews_total{result=\"error\"} \(failed.load(ordering: .relaxed))\n"
        out += "# HELP meshd_token_review_cache_hits_total Kubernetes tokens allowed from the cache of positive reviews (no TokenReview sent).\n# TYPE meshd_token_review_cache_hits_total counter\n"
        out += "meshd_token_review_cache_hits_total \(cacheHits.load(ordering: .relaxed))\n"
        return out
    }
}

extension MeshdServer {
    /// A certificate request whose bearer token is not a join token: a Kubernetes
    /// service-account token, reviewed by the apiserver when meshd has `--kube-api`. On a
    /// worker thread (the API port's pool), never on an event loop.
    func signWithKubeToken(csrPEM: String, token: String) -> ControlResponse {
        guard let reviewer = kubeReviewer else {
            ca.countRefusal()
            return refusedKube(401, "the token is not a join token (mesh1.…), and this meshd does not review Kubernetes service-account tokens (start it with --kube-api)")
        }
        switch reviewer.review(token) {
        case .denied(let why):
            ca.countRefusal()
            return refusedKube(401, "Kubernetes token refused: \(why)")
        case .error(let why):
            ca.countRefusal()
            return refusedKube(503, "Kubernetes token not reviewed (refused; try again): \(why)")
        case .allowed(let ns, let sa):
            do {
                let issued = try ca.sign(csrPEM: csrPEM, reviewedNamespace: ns, serviceAccount: sa)
                return ControlResponse(200, issued.chainPEM + CertificateExchange.bundleMarker + issued.bundlePEM, contentType: "application/x-pem-file")
            } catch {
                return refusedKube(error.status, error.message + " (from a Kubernetes service-account token)")
            }
        }
    }

    private func refusedKube(_ status: Int, _ message: String) -> ControlResponse {
        Log.warn("ca", "refused a certificate request (\(status)): \(message)")
        return ControlResponse(status, message + "\n")
    }
}
