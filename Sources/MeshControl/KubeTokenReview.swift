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
    /// Not sent: `KubeTokenReviewer.maxInFlight` reviews are already waiting on the apiserver.
    /// Refused at once (503); the workload tries again with its back-off.
    case busy
}

/// The TokenReview exchange with the Kubernetes API (`POST
/// /apis/authentication.k8s.io/v1/tokenreviews`), as pure functions: the request body, the
/// answer's decoding (untrusted input: size and nesting bounded, strict JSON) and the
/// service-account username. `KubeTokenReviewer` sends the requests.
public enum KubeTokenReview {
    public static let path = "/apis/authentication.k8s.io/v1/tokenreviews"
    /// The largest answer read (a real one is a few KiB).
    public static let maxBody = 64 << 10

    /// The longest token sent for review (a projected service-account token is about 1 KiB).
    public static let maxTokenBytes = 8192

    /// Why `token` is not shaped like a JWT (nil: it is): three base64url parts (`A-Z a-z 0-9 - _`,
    /// no padding), each non-empty, at most `maxTokenBytes` in all. Only such tokens are sent to
    /// the apiserver; the reason never quotes the token.
    public static func notAJWT(_ token: String) -> String? {
        let bytes = token.utf8
        guard bytes.count <= maxTokenBytes else { return "not shaped like a JWT: \(bytes.count) bytes, over \(maxTokenBytes)" }
        var parts = 1, partLength = 0
        for c in bytes {
            switch c {
            case UInt8(ascii: "."):
                guard partLength > 0 else { return "not shaped like a JWT: part \(parts) is empty" }
                parts += 1
                partLength = 0
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "_"):
                partLength += 1
            default:
                return "not shaped like a JWT: part \(parts) holds a byte that is not base64url (0x\(String(c, radix: 16)))"
            }
        }
        guard partLength > 0 else { return "not shaped like a JWT: part \(parts) is empty" }
        guard parts == 3 else { return "not shaped like a JWT: \(parts) part\(parts == 1 ? "" : "s") separated by '.', not 3" }
        return nil
    }

    /// Why the identities a CSR asks for (`uris`, its SANs) are not one well-formed mesh identity
    /// `spiffe://TD/ns/NS/sa/SA` (NS and SA DNS labels), checked before a token is reviewed (nil: they are).
    public static func csrIdentityRefusal(_ uris: [String], trustDomain: String) -> String? {
        guard uris.count == 1 else {
            return uris.isEmpty ? "the CSR asks for no identity" : "the CSR asks for \(uris.count) names; exactly one identity spiffe://\(trustDomain)/ns/NS/sa/SA is issued"
        }
        let id = uris[0], prefix = "spiffe://\(trustDomain)/"
        let rest = id.hasPrefix(prefix) ? id.dropFirst(prefix.count).split(separator: "/", omittingEmptySubsequences: false).map(String.init) : []
        guard rest.count == 4, rest[0] == "ns", rest[2] == "sa", Names.isDNSLabel(rest[1]), Names.isDNSLabel(rest[3]) else {
            return "the CSR asks for \"\(shown(id, max: 120))\", not an identity spiffe://\(trustDomain)/ns/NS/sa/SA with NS and SA DNS labels"
        }
        return nil
    }

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
/// `maxCached` of them; refusals are never cached. Only JWT-shaped tokens are sent, and at most
/// `maxInFlight` reviews at once (a counter; past it `.busy` at once), so junk tokens cannot hold
/// the API port's workers or get meshd's account throttled. Thread-safe; it blocks (worker threads only).
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
    /// Reviews waiting on the apiserver at once, at most (of the API port's 4 workers, the
    /// others stay free to sign and register).
    public static let maxInFlight = 2

    private struct Cached { let namespace: String; let serviceAccount: String; let until: Int64 }
    private let cache = Locked<[[UInt8]: Cached]>([:])

    let allowed = Atomic<Int>(0), denied = Atomic<Int>(0), failed = Atomic<Int>(0), cacheHits = Atomic<Int>(0)
    /// Requests whose token was never sent: review slots all taken, or not shaped like a JWT.
    let busy = Atomic<Int>(0), notJWT = Atomic<Int>(0)
    /// Reviews waiting on the apiserver now (never over `maxInFlight`).
    let inFlight = Atomic<Int>(0)
    /// The second a busy or not-a-JWT refusal was last logged: a flood logs one line a second.
    let busyLogged = Atomic<Int64>(0), notJWTLogged = Atomic<Int64>(0)

    /// Whether a refusal of a flood-prone kind is logged now (one a second; `/metrics` counts all).
    func logNow(_ last: borrowing Atomic<Int64>) -> Bool {
        let t = Clock.monotonicNanos() / 1_000_000_000 + 1   // never 0, the initial value
        let seen = last.load(ordering: .relaxed)
        return seen != Int64(t) && last.compareExchange(expected: seen, desired: Int64(t), ordering: .relaxed).exchanged
    }

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
    /// A token not shaped like a JWT is denied unsent (meshd's endpoint refuses it earlier, and
    /// counts it); with `maxInFlight` reviews out, `.busy` at once.
    public func review(_ token: String) -> KubeReviewOutcome {
        if let why = KubeTokenReview.notAJWT(token) { return .denied(why) }
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
        // Take a review slot, or answer busy: a counter, no lock held across the exchange.
        var slots = inFlight.load(ordering: .relaxed)
        while true {
            guard slots < KubeTokenReviewer.maxInFlight else {
                busy.add(1, ordering: .relaxed)
                return .busy
            }
            let (taken, seen) = inFlight.compareExchange(expected: slots, desired: slots + 1, ordering: .relaxed)
            if taken { break }
            slots = seen
        }
        defer { inFlight.subtract(1, ordering: .relaxed) }
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
        case .busy: break
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
        out += "# HELP meshd_token_reviews_not_sent_total Kubernetes tokens refused without a TokenReview, by reason (busy: \(KubeTokenReviewer.maxInFlight) reviews already in flight, 503; not_a_jwt: 401).\n# TYPE meshd_token_reviews_not_sent_total counter\n"
        out += "meshd_token_reviews_not_sent_total{reason=\"busy\"} \(busy.load(ordering: .relaxed))\n"
        out += "meshd_token_reviews_not_sent_total{reason=\"not_a_jwt\"} \(notJWT.load(ordering: .relaxed))\n"
        return out
    }
}

extension MeshdServer {
    /// A certificate request whose bearer token is not a join token: a Kubernetes
    /// service-account token, reviewed by the apiserver when meshd has `--kube-api`. On a
    /// worker thread (the API port's pool), never on an event loop. Junk costs no review: a
    /// token not shaped like a JWT and a CSR that does not verify or asks for no well-formed
    /// identity are refused first; with `maxInFlight` reviews out, 503 at once.
    func signWithKubeToken(csrPEM: String, token: String) -> ControlResponse {
        guard let reviewer = kubeReviewer else {
            ca.countRefusal()
            return refusedKube(401, "the token is not a join token (mesh1.…), and this meshd does not review Kubernetes service-account tokens (start it with --kube-api)")
        }
        if let why = KubeTokenReview.notAJWT(token) {
            let n = reviewer.notJWT.add(1, ordering: .relaxed).newValue
            ca.countRefusal()
            return refusedKube(401, "Kubernetes token refused without a review: \(why)",
                               log: reviewer.logNow(reviewer.notJWTLogged) ? " (\(n) such refusals so far; logged once a second)" : nil)
        }
        do {
            let csr = try MeshCrypto.verifyCSR(csrPEM)
            if let why = KubeTokenReview.csrIdentityRefusal(csr.uris, trustDomain: ca.trustDomain) {
                ca.countRefusal()
                return refusedKube(400, why + " (the token was not reviewed)")
            }
        } catch {
            ca.countRefusal()
            return refusedKube(400, error.description + " (the token was not reviewed)")
        }
        switch reviewer.review(token) {
        case .busy:
            ca.countRefusal()
            let n = reviewer.busy.load(ordering: .relaxed)
            return refusedKube(503, "token reviews busy: \(KubeTokenReviewer.maxInFlight) Kubernetes TokenReviews already in flight (refused; try again)",
                               log: reviewer.logNow(reviewer.busyLogged) ? " (\(n) such refusals so far; logged once a second)" : nil)
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

    /// The refusal, logged (with `log` appended; nil: not logged, a flood's quiet refusal).
    private func refusedKube(_ status: Int, _ message: String, log: String? = "") -> ControlResponse {
        if let note = log { Log.warn("ca", "refused a certificate request (\(status)): \(message)\(note)") }
        return ControlResponse(status, message + "\n")
    }
}
