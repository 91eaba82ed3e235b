import MeshCore
import Synchronization

/// Where and how a sidecar exports its spans (OTLP/HTTP protobuf, `POST /v1/traces`): the
/// sidecar's `--otlp-endpoint`, `--trace-batch-size`, `--trace-flush-interval` and
/// `--trace-queue-size` (meshd takes `--otlp-endpoint` too and pushes it to sidecars that have
/// none). Checked here once for both executables; every error names its flag.
public struct TraceExportOptions: Sendable, Equatable {
    /// The collector (nil: no endpoint of its own; meshd's pushed one, if any, is used).
    public var endpoint: OTLPEndpoint? = nil
    /// Spans per export request.
    public var batchSize = 512
    /// A partial batch is sent after this long (nanoseconds).
    public var flushInterval: UInt64 = 1_000_000_000
    /// Spans each worker holds for the exporter (1.5 KiB a slot); more are dropped and counted.
    public var queueSize = 512

    public init() {}

    /// The flags' names, for `Flags.Spec` lists.
    public static let flagNames = ["otlp-endpoint", "trace-batch-size", "trace-flush-interval", "trace-queue-size"]

    /// Reads the four flags (all optional).
    public static func parse(_ flags: Flags) throws(FlagError) -> TraceExportOptions {
        var o = TraceExportOptions()
        if let e = flags.string("otlp-endpoint") {
            do { o.endpoint = try OTLPEndpoint.parse(e) } catch { throw FlagError("--otlp-endpoint: \(error.description)") }
        }
        if let b = try flags.int("trace-batch-size", min: 1, max: 8192) { o.batchSize = b }
        if let q = try flags.int("trace-queue-size", min: 16, max: 1 << 20) { o.queueSize = q }
        if let t = flags.string("trace-flush-interval") {
            guard let d = DurationParser.parseNanos(t), d >= 10_000_000, d <= 60_000_000_000 else {
                throw FlagError("--trace-flush-interval: expected a duration from 10ms to 60s (e.g. 1s, 200ms), got \"\(Printable.escaped(t))\"")
            }
            o.flushInterval = d
        }
        return o
    }
}

/// An OTLP/HTTP collector address: `http://HOST[:PORT][/PATH]` (port 4318 and path `/v1/traces`
/// by default). Only plain http for now: `https://` is refused by name.
public struct OTLPEndpoint: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var path: String
    public var description: String { "http://\(host.contains(":") ? "[\(host)]" : host):\(port)\(path)" }

    public init(host: String, port: Int, path: String) { self.host = host; self.port = port; self.path = path }

    /// The error says what was expected.
    public static func parse(_ text: String) throws(FlagError) -> OTLPEndpoint {
        let shown = "\"\(Printable.escaped(text))\""
        if text.hasPrefix("https://") {
            throw FlagError("https is not supported yet (only http://HOST:PORT[/PATH]), got \(shown)")
        }
        guard text.hasPrefix("http://") else { throw FlagError("expected http://HOST[:PORT][/PATH], got \(shown)") }
        let rest = text.dropFirst(7)
        for c in rest.utf8 where c <= 0x20 || c >= 0x7f || c == UInt8(ascii: "?") || c == UInt8(ascii: "#") || c == UInt8(ascii: "@") {
            throw FlagError("expected http://HOST[:PORT][/PATH] without spaces, query, fragment or user info, got \(shown)")
        }
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<slash]
        let path = slash == rest.endIndex || rest[slash...] == "/" ? "/v1/traces" : String(rest[slash...])
        var host = Substring(authority)
        var port = 4318
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { throw FlagError("unclosed [ in \(shown)") }
            let after = host[host.index(after: close)...]
            let inner = host[host.index(after: host.startIndex)..<close]
            if !after.isEmpty {
                guard after.hasPrefix(":"), let p = Int(after.dropFirst()), p >= 1, p <= 65535 else { throw FlagError("bad port in \(shown)") }
                port = p
            }
            host = inner
        } else if let colon = host.lastIndex(of: ":") {
            guard let p = Int(host[host.index(after: colon)...]), p >= 1, p <= 65535 else { throw FlagError("bad port in \(shown) (expected 1-65535)") }
            port = p
            host = host[..<colon]
        }
        guard !host.isEmpty else { throw FlagError("no host in \(shown)") }
        return OTLPEndpoint(host: String(host), port: port, path: path)
    }
}

extension OTLPEndpoint {
    /// meshd's `--otlp-endpoint`: written into every pushed `ProxyConfig` as `spec.otlpEndpoint`
    /// (sidecars without a collector of their own use it). Set once at meshd's start.
    public enum Pushed {
        static let value = Mutex<OTLPEndpoint?>(nil)
        public static func set(_ e: OTLPEndpoint?) { value.withLock { $0 = e } }
        public static var current: OTLPEndpoint? { value.withLock { $0 } }

        /// The `spec` line of a rendered ProxyConfig ("" when meshd has no endpoint).
        public static var specLine: String {
            guard let e = current else { return "" }
            return "  otlpEndpoint: \(YAML.quoted(e.description))\n"
        }
    }
}

extension Bootstrap {
    /// `spec.otlpEndpoint` of a pushed ProxyConfig (meshd's `--otlp-endpoint`), checked as the
    /// sidecar's flag is; nil when absent.
    static func parsePushedOTLPEndpoint(_ spec: inout ConfigReader, ctx: ConfigError) throws(ConfigError) -> OTLPEndpoint? {
        let line = spec.map["otlpEndpoint"]?.line ?? 0
        guard let text = try spec.string("otlpEndpoint") else { return nil }
        do { return try OTLPEndpoint.parse(text) } catch {
            throw ConfigReader.error(ctx, spec.sub("otlpEndpoint"), line, error.description)
        }
    }
}
