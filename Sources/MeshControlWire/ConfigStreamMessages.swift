import MeshConfig
import MeshCore
import MeshPKI
import MeshTLS

/// The messages of the config stream between a sidecar and meshd (DESIGN §5), typed and written
/// and read in one place for both ends: a registration, a request for config newer than a
/// version, the config pushed with its version and nonce, and the sidecar's ACK or NACK. They
/// travel as HTTP/1.1 requests over the sidecar's mTLS connection to meshd's API port.
public enum ConfigStream {
    public static let registerPath = "/v1/register"
    public static let configPath = "/v1/config"
    public static let ackPath = "/v1/ack"
    public static let nackPath = "/v1/nack"

    /// A workload registering its inbound endpoint (`POST /v1/register?...`), with what its
    /// service speaks (`protocol`: HTTP, HTTP2, GRPC or TCP) and the port callers use (`port`).
    public struct Registration: Sendable, Equatable {
        public static let protocols: Set<String> = ["HTTP", "HTTP2", "GRPC", "TCP"]
        public var service: String
        public var namespace: String
        public var address: String
        public var labels: [Label]
        /// What the service speaks to its callers (not the hop): HTTP (default), HTTP2, GRPC or TCP.
        public var serviceProtocol: String
        /// The service port (`--service-port`, default the app port); nil for an older sidecar.
        public var servicePort: Int?
        public init(service: String, namespace: String, address: String, labels: [Label], serviceProtocol: String = "HTTP",
                    servicePort: Int? = nil) {
            self.service = service; self.namespace = namespace; self.address = address; self.labels = labels
            self.serviceProtocol = serviceProtocol; self.servicePort = servicePort
        }

        public var query: String {
            "service=\(ControlClient.percentEncode(service))&namespace=\(ControlClient.percentEncode(namespace))"
                + "&address=\(ControlClient.percentEncode(address))"
                + "&labels=\(ControlClient.percentEncode(labels.map { "\($0.key)=\($0.value)" }.joined(separator: ",")))"
                + "&protocol=\(ControlClient.percentEncode(serviceProtocol))"
                + (servicePort.map { "&port=\($0)" } ?? "")
        }

        /// Reads and checks a registration (names are rendered into config: they must have the
        /// shapes Kubernetes allows); the error is the answer's text.
        public init(query q: [String: String]) throws(CAError) {
            guard let service = q["service"], Names.isDNSLabel(service), let ns = q["namespace"], Names.isDNSLabel(ns),
                  let address = q["address"], SocketAddress(address) != nil else {
                throw CAError("register: service and namespace (DNS labels) and address (IP:PORT) are required", refusal: 400)
            }
            var labels: [Label] = []
            for kv in (q["labels"] ?? "").split(separator: ",") {
                let p = kv.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
                guard p.count == 2, Names.isLabelKey(p[0]), Names.isLabelValue(p[1]) else {
                    throw CAError("register: a label must be key=value with letters, digits, '-', '_' or '.' (got \"\(kv)\")", refusal: 400)
                }
                labels.append(Label(key: p[0], value: p[1]))
            }
            let proto = q["protocol"] ?? "HTTP"
            guard Registration.protocols.contains(proto) else {
                throw CAError("register: protocol must be one of HTTP, HTTP2, GRPC, TCP (got \"\(proto)\")", refusal: 400)
            }
            var port: Int? = nil
            if let t = q["port"] {
                guard let n = Int(t), n >= 1, n <= 65535 else { throw CAError("register: port must be from 1 to 65535 (got \"\(t)\")", refusal: 400) }
                port = n
            }
            self.init(service: service, namespace: ns, address: address, labels: labels, serviceProtocol: proto, servicePort: port)
        }
    }

    /// A label of a registered workload.
    public struct Label: Sendable, Equatable {
        public var key: String
        public var value: String
        public init(key: String, value: String) { self.key = key; self.value = value }
    }

    /// A long poll for config other than what the sidecar has (`GET /v1/config?...`): the
    /// version and the digest of the last config it answered (ACK or NACK; empty: none yet). meshd answers when
    /// the config it would push to this sidecar has another digest, so a sidecar that moves to
    /// another replica keeps its version and gets nothing until its own config changes. `node`
    /// tells apart sidecars sharing an identity; `admin` is where `meshctl top` reads its metrics.
    public struct Request: Sendable, Equatable {
        public var version: Int
        public var node: String
        public var admin: String
        public var digest: String
        /// The text digest (`MeshCrypto.digestHex`) of the config text the sidecar holds, which
        /// meshd may send the next config as a delta against (empty: send it whole).
        public var base: String
        /// The config with `digest` was refused (NACK): meshd must not count it as in force.
        public var nacked: Bool
        /// A gateway proxy (`sidecar --gateway`) says so with its labels, `k=v,k=v` (meshd sends it
        /// the Gateways they select and what binds to them); nil for a sidecar.
        public var gatewayLabels: String? = nil
        public init(version: Int, node: String, admin: String, digest: String = "", base: String = "", nacked: Bool = false) {
            self.version = version; self.node = node; self.admin = admin; self.digest = digest; self.base = base; self.nacked = nacked
        }

        public var query: String {
            "version=\(version)&node=\(ControlClient.percentEncode(node))&admin=\(ControlClient.percentEncode(admin))"
                + (digest.isEmpty ? "" : "&digest=\(digest)") + (base.isEmpty ? "" : "&base=\(base)") + (nacked ? "&nacked=1" : "")
                + (gatewayLabels.map { "&gateway=\(ControlClient.percentEncode($0))" } ?? "")
        }

        /// A digest is lowercase hex, at most 64 digits; anything else counts as none.
        public init(query q: [String: String]) {
            let d = q["digest"] ?? "", b = q["base"] ?? ""
            self.init(version: Int(q["version"] ?? "0") ?? 0, node: q["node"] ?? "",
                      admin: (q["admin"]).flatMap { SocketAddress($0) != nil ? $0 : nil } ?? "",
                      digest: Request.isDigest(d) ? d : "", base: Request.isDigest(b) ? b : "", nacked: q["nacked"] == "1")
            gatewayLabels = q["gateway"]
        }

        /// Lowercase hex, 1 to 64 digits.
        public static func isDigest(_ d: String) -> Bool {
            !d.isEmpty && d.utf8.count <= 64 && d.utf8.allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }
        }
    }

    /// A config pushed to a sidecar: the first line `version: V NONCE DIGEST`, then the config
    /// text, then (when meshd gives one) `bundleMarker` and the trust bundle, PEM: the roots in
    /// force travel with the config, so a root rotation step reaches every sidecar at once.
    /// `DIGEST` covers the text and the bundle; the sidecar sends it back in its next request.
    ///
    /// Instead of the text, a push may carry a delta against a text the sidecar holds (the base it
    /// named in its request): after the first line, `delta BASE_TEXT_DIGEST NEW_TEXT_DIGEST`,
    /// then the encoded `ConfigDelta` (self-delimiting), then the bundle section as above. Then
    /// `text` is empty and `delta` is set; `Delta.apply` gives the text a full push would have.
    public struct Push: Sendable, Equatable {
        public var version: Int
        public var nonce: String
        public var digest: String
        public var text: String
        public var bundle: String
        /// Set when the push carries a delta instead of the text.
        public var delta: Delta?
        /// The TLS secrets a gateway serves (TLSSecrets.swift), in a section right after the
        /// first line; every push to a gateway carries all of them (none: it holds none).
        public var secrets: [TLSSecret] = []
        public init(version: Int, nonce: String, digest: String, text: String, bundle: String = "") {
            self.version = version; self.nonce = nonce; self.digest = digest; self.text = text; self.bundle = bundle
        }

        /// A push of the text as a delta against the text with digest `base`.
        public init(version: Int, nonce: String, digest: String, delta: Delta, bundle: String = "") {
            self.init(version: version, nonce: nonce, digest: digest, text: "", bundle: bundle)
            self.delta = delta
        }

        /// The config text as the change from a text the sidecar holds: `base` and `target` are
        /// the text digests (`MeshCrypto.digestHex`) of that text and of the new one.
        public struct Delta: Sendable, Equatable {
            public var base: String
            public var target: String
            public var patch: ConfigDelta
            public init(base: String, target: String, patch: ConfigDelta) { self.base = base; self.target = target; self.patch = patch }

            /// The new text from the text held (`held`, whose digest is `heldDigest`): refused
            /// when the delta is against another text, does not apply, or gives a text whose
            /// digest is not `target`.
            public func apply(to held: String, heldDigest: String) throws(ConfigDeltaError) -> String {
                guard !heldDigest.isEmpty, heldDigest == base else {
                    throw ConfigDeltaError("against the text \(base), the text held is \(heldDigest.isEmpty ? "none" : heldDigest)")
                }
                let text = try patch.apply(to: held)
                let got = MeshCrypto.digestHex(text)
                guard got == target else { throw ConfigDeltaError("the text made has digest \(got), not \(target)") }
                return text
            }

            /// The line that opens a delta in a push.
            public var line: String { "delta \(base) \(target)\n" }
        }

        /// Starts the bundle on a line of its own; the last one in a push is the marker (a
        /// document's comment could hold the same line, never the PEM after it).
        public static let bundleMarker = "# trust bundle (meshd)\n"

        public var body: String {
            if let d = delta {
                let head = "version: \(version) \(nonce) \(digest)\n" + TLSSecrets.section(secrets) + d.line + d.patch.encoded
                return bundle.isEmpty ? head : head + Push.bundleMarker + bundle
            }
            let head = "version: \(version) \(nonce) \(digest)\n" + TLSSecrets.section(secrets) + text
            guard !bundle.isEmpty else { return head }
            return head + (text.isEmpty || text.hasSuffix("\n") ? "" : "\n") + Push.bundleMarker + bundle
        }
        public static let contentType = "application/yaml"

        public init?(body: String) {
            guard let nl = body.firstIndex(of: "\n") else { return nil }
            let first = body[..<nl].split(separator: " ")
            guard first.count == 4, first[0] == "version:", let v = Int(first[1]) else { return nil }
            guard let (secrets, rest) = try? TLSSecrets.readSection(body[body.index(after: nl)...]) else { return nil }
            if rest.hasPrefix(Push.deltaPrefix) {
                guard var p = try? Push.withDelta(version: v, nonce: String(first[2]), digest: String(first[3]), rest) else { return nil }
                p.secrets = secrets
                self = p
                return
            }
            var text = String(rest)
            var bundle = ""
            if let m = text.ranges(of: Push.bundleMarker).last, m.lowerBound == text.startIndex || text[text.index(before: m.lowerBound)] == "\n" {
                bundle = String(text[m.upperBound...])
                text = String(text[..<m.lowerBound])
                guard !bundle.isEmpty else { return nil }
            }
            self.init(version: v, nonce: String(first[2]), digest: String(first[3]), text: text, bundle: bundle)
            self.secrets = secrets
        }

        /// What opens a delta after the first line (a config text starts with `apiVersion:`).
        static let deltaPrefix = "delta "

        /// Reads `delta BASE TARGET`, the encoded delta, then nothing or the bundle section.
        private static func withDelta(version: Int, nonce: String, digest: String, _ rest: Substring) throws(ConfigDeltaError) -> Push {
            let bytes = Array(rest.utf8)
            guard let nl = bytes.firstIndex(of: 10) else { throw ConfigDeltaError("the delta line is cut short") }
            let words = bytes[..<nl].split(separator: 32, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
            guard words.count == 3, words[0] == "delta", Request.isDigest(words[1]), Request.isDigest(words[2]) else {
                throw ConfigDeltaError("expected the line \"delta BASE_DIGEST NEW_DIGEST\"")
            }
            let (patch, used) = try ConfigDelta.decode(bytes[(nl + 1)...])
            let after = bytes[(nl + 1 + used)...]
            var bundle = ""
            if !after.isEmpty {
                let marker = Array(Push.bundleMarker.utf8)
                guard after.count > marker.count, after.prefix(marker.count).elementsEqual(marker) else {
                    throw ConfigDeltaError("\(after.count) bytes after the delta that are not a trust bundle section")
                }
                bundle = String(decoding: after.dropFirst(marker.count), as: UTF8.self)
            }
            return Push(version: version, nonce: nonce, digest: digest, delta: Delta(base: words[1], target: words[2], patch: patch), bundle: bundle)
        }

        /// Why `body`, a push whose text comes as a delta, cannot be read (nil: it can, or it
        /// is not a delta push): what the sidecar logs before asking for the whole config.
        public static func deltaRefusal(_ body: String) -> ConfigDeltaError? {
            guard let nl = body.firstIndex(of: "\n") else { return nil }
            let first = body[..<nl].split(separator: " ")
            guard let (_, rest) = try? TLSSecrets.readSection(body[body.index(after: nl)...]) else { return nil }
            guard first.count == 4, first[0] == "version:", let v = Int(first[1]), rest.hasPrefix(deltaPrefix) else { return nil }
            do { _ = try withDelta(version: v, nonce: String(first[2]), digest: String(first[3]), rest) } catch { return error }
            return nil
        }
    }

    /// A sidecar's answer to a push: ACK (`error` nil) or NACK with the reason.
    public struct Answer: Sendable, Equatable {
        public var version: Int
        public var node: String
        public var nonce: String
        public var error: String?
        public init(version: Int, node: String, nonce: String, error: String?) {
            self.version = version; self.node = node; self.nonce = nonce; self.error = error
        }

        public var path: String { error == nil ? ConfigStream.ackPath : ConfigStream.nackPath }
        public var query: String {
            "version=\(version)&node=\(ControlClient.percentEncode(node))&nonce=\(ControlClient.percentEncode(nonce))"
        }
        public var body: String { error ?? "" }

        /// `nack`: the request came to the NACK path; the reason is its body (at most 2,000 characters kept).
        public init?(query q: [String: String], nack: Bool, body: String) {
            guard let v = Int(q["version"] ?? "") else { return nil }
            self.init(version: v, node: q["node"] ?? "", nonce: q["nonce"] ?? "", error: nack ? String(body.prefix(2000)) : nil)
        }
    }
}
