import MeshCore
import MeshPKI
#if canImport(Glibc)
import Glibc
#endif

/// Where and how meshd reaches the Kubernetes API to review service-account tokens (`meshd
/// --kube-api in-cluster|https://HOST:PORT`, `--kube-ca`, `--kube-token-file`,
/// `--kube-audience`). Every error names the flag (or the environment variable) at fault.
public struct KubeAPIConfig: Sendable, Equatable {
    /// The host as dialed and checked against the apiserver's certificate: an IP address
    /// (without brackets) or a DNS name.
    public let host: String
    public let port: Int
    /// Whether `host` is an IP address (checked as an IP SAN; otherwise a DNS name SAN).
    public let hostIsIP: Bool
    /// The CA that must have issued the apiserver's certificate (PEM file).
    public let caFile: String
    /// meshd's own bearer token for the apiserver (re-read on every review: it rotates).
    public let tokenFile: String
    /// The audience a reviewed token must have been issued for.
    public let audience: String

    /// The files a pod's service account mounts (Kubernetes' in-cluster defaults).
    public static let inClusterCA = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    public static let inClusterToken = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    public static let defaultAudience = "mesh"

    /// `https://HOST:PORT` (IPv6 in brackets), for messages and the Host header's authority.
    public var authority: String { (host.contains(":") ? "[\(host)]" : host) + ":\(port)" }
    public var url: String { "https://\(authority)" }

    public init(host: String, port: Int, hostIsIP: Bool, caFile: String, tokenFile: String, audience: String) {
        self.host = host; self.port = port; self.hostIsIP = hostIsIP
        self.caFile = caFile; self.tokenFile = tokenFile; self.audience = audience
    }

    /// The settings from meshd's flags (nil: `--kube-api` not given, and none of the others
    /// either). `environment` supplies `KUBERNETES_SERVICE_HOST`/`_PORT` for `in-cluster`.
    public static func fromFlags(kubeAPI: String?, caFile: String?, tokenFile: String?, audience: String?,
                                 environment: [String: String]) throws(CAError) -> KubeAPIConfig? {
        guard let api = kubeAPI else {
            for (flag, v) in [("--kube-ca", caFile), ("--kube-token-file", tokenFile), ("--kube-audience", audience)] where v != nil {
                throw CAError("\(flag): only with --kube-api in-cluster|https://HOST:PORT")
            }
            return nil
        }
        let host: String, port: Int, isIP: Bool
        if api == "in-cluster" {
            guard let h = environment["KUBERNETES_SERVICE_HOST"], !h.isEmpty else {
                throw CAError("--kube-api in-cluster: KUBERNETES_SERVICE_HOST is not set (is meshd in a pod? else give https://HOST:PORT)")
            }
            guard let p = environment["KUBERNETES_SERVICE_PORT"], let n = parsePort(p) else {
                throw CAError("--kube-api in-cluster: KUBERNETES_SERVICE_PORT is \(environment["KUBERNETES_SERVICE_PORT"].map { "\"\(Printable.escaped($0))\"" } ?? "not set"), expected a port 1-65535")
            }
            // The variable holds a bare address (an IPv6 one without brackets) or a name.
            guard let h2 = checkHost(h) else {
                throw CAError("--kube-api in-cluster: KUBERNETES_SERVICE_HOST \"\(Printable.escaped(h))\" is neither an IP address nor a host name")
            }
            (host, port, isIP) = (h2.host, n, h2.isIP)
        } else {
            let u = try parseURL(api)
            (host, port, isIP) = (u.host, u.port, u.isIP)
        }
        let aud = audience ?? defaultAudience
        guard !aud.isEmpty, aud.utf8.count <= 253, aud.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F }) else {
            throw CAError("--kube-audience: expected a non-empty audience without spaces or control characters, got \"\(Printable.escaped(aud))\"")
        }
        return KubeAPIConfig(host: host, port: port, hostIsIP: isIP, caFile: caFile ?? inClusterCA,
                             tokenFile: tokenFile ?? inClusterToken, audience: aud)
    }

    /// `https://HOST[:PORT][/]` (port 443 by default); anything else is refused by name.
    static func parseURL(_ text: String) throws(CAError) -> (host: String, port: Int, isIP: Bool) {
        func bad(_ why: String) -> CAError { CAError("--kube-api: expected in-cluster or https://HOST:PORT, got \"\(Printable.escaped(text))\": \(why)") }
        guard let schemeEnd = text.firstRange(of: "://") else { throw bad("no scheme") }
        let scheme = text[..<schemeEnd.lowerBound].lowercased()
        guard scheme == "https" else {
            throw bad(scheme == "http" ? "plain http is refused (the token and meshd's credential would travel in clear)" : "the scheme must be https")
        }
        var rest = Substring(text[schemeEnd.upperBound...])
        if rest.hasSuffix("/") { rest = rest.dropLast() }
        if rest.contains("/") { throw bad("a path is not supported (give the apiserver's base URL)") }
        if rest.contains("?") || rest.contains("#") { throw bad("a query or fragment is not supported") }
        if rest.contains("@") { throw bad("user information in the URL is not supported (meshd uses --kube-token-file)") }
        if rest.unicodeScalars.contains(where: { $0.value <= 0x20 || $0.value >= 0x7F }) { throw bad("spaces, control or non-ASCII characters") }
        var hostPart = String(rest), port = 443
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw bad("unbalanced brackets") }
            hostPart = String(rest[rest.index(after: rest.startIndex)..<close])
            let after = rest[rest.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":"), let p = parsePort(String(after.dropFirst())) else { throw bad("the port must be 1-65535") }
                port = p
            }
            var a6 = in6_addr()
            guard inet_pton(AF_INET6, hostPart, &a6) == 1 else { throw bad("\(hostPart) is not an IPv6 address") }
            return (hostPart, port, true)
        }
        if let colon = rest.lastIndex(of: ":") {
            hostPart = String(rest[..<colon])
            guard let p = parsePort(String(rest[rest.index(after: colon)...])) else { throw bad("the port must be 1-65535") }
            port = p
            if hostPart.contains(":") { throw bad("an IPv6 address must be in brackets (https://[fd00::1]:6443)") }
        }
        guard let h = checkHost(hostPart), !(h.isIP && hostPart.contains(":")) else { throw bad("\"\(hostPart)\" is neither an IPv4 address nor a host name") }
        return (h.host, port, h.isIP)
    }

    /// An IPv4 or IPv6 address (no brackets) or a DNS name (letters, digits, '-' and '.',
    /// labels of 1-63, at most 253 in all).
    static func checkHost(_ h: String) -> (host: String, isIP: Bool)? {
        var a4 = in_addr(), a6 = in6_addr()
        if inet_pton(AF_INET, h, &a4) == 1 || inet_pton(AF_INET6, h, &a6) == 1 { return (h, true) }
        let labels = h.split(separator: ".", omittingEmptySubsequences: false)
        guard !h.isEmpty, h.utf8.count <= 253, labels.allSatisfy({ !$0.isEmpty && $0.utf8.count <= 63 && $0.first != "-" && $0.last != "-" }),
              h.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || $0 == 45 || $0 == 46 }),
              // All digits and dots is an IPv4 address inet_pton refused (999.1.1.1), not a name.
              !h.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || $0 == 46 }) else { return nil }
        return (h.lowercased(), false)
    }

    static func parsePort(_ s: String) -> Int? {
        guard !s.isEmpty, s.utf8.count <= 5, s.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }), let n = Int(s), n >= 1, n <= 65535 else { return nil }
        return n
    }
}
