import MeshCore

/// Which backend programs the rules: `auto` decides at run time (see `BackendChooser`).
public enum BackendChoice: String, Sendable {
    case auto, nft, legacy
}

/// What `meshctl capture` does.
public enum CaptureAction: String, Sendable {
    case apply, remove, print
}

/// Inbound ports to capture: every TCP port (`*`) or only those listed.
public enum PortSelection: Equatable, Sendable {
    case all
    case ports([Int])
}

/// Outbound destinations to capture: every address (`*`) or only the networks listed.
public enum CIDRSelection: Equatable, Sendable {
    case all
    case networks([CIDR])
}

/// The options of `meshctl capture` (DESIGN §10), validated: every flag honoured or refused by name.
public struct CaptureOptions: Equatable, Sendable {
    public var proxyUID = 1337
    public var proxyGID = 1337
    public var outboundPort = 15001
    public var inboundPort = 15006
    public var adminPort = 15000
    public var dnsPort = 15053
    public var includeInboundPorts = PortSelection.all
    public var excludeInboundPorts: [Int] = []
    public var excludeOutboundPorts: [Int] = []
    public var includeOutboundCIDRs = CIDRSelection.all
    public var excludeOutboundCIDRs: [CIDR] = []
    public var dns = true
    public var backend = BackendChoice.auto

    public init() {}

    /// The flags `capture` takes (for the command line parser).
    public static let flagSpecs: [Flags.Spec] = [
        .init("proxy-uid"), .init("proxy-gid"), .init("outbound-port"), .init("inbound-port"), .init("admin-port"),
        .init("dns-port"), .init("include-inbound-ports"), .init("exclude-inbound-ports"), .init("exclude-outbound-ports"),
        .init("include-outbound-cidrs"), .init("exclude-outbound-cidrs"), .init("no-dns", value: false), .init("backend"),
        .init("help", value: false),
    ]

    /// The sidecar's own ports, never captured inbound: admin, inbound, outbound, and DNS when it is on.
    public var ownPorts: [Int] { [adminPort, inboundPort, outboundPort] + (dns ? [dnsPort] : []) }

    /// Parses `capture ACTION [flags]` (the words after `meshctl`). Exit code 2 for every refusal.
    public static func parse(_ args: [String]) throws(CaptureError) -> (action: CaptureAction?, options: CaptureOptions) {
        let flags: Flags
        do { flags = try Flags(args, specs: flagSpecs) } catch { throw CaptureError(error.description, exitCode: 2) }
        for (name, values) in flags.values where values.count > 1 {
            throw CaptureError.flag(name, "given \(values.count) times (give it once; lists are comma-separated)")
        }
        var words = flags.positional
        if words.first == "capture" { words.removeFirst() }
        if flags.has("help") { return (nil, CaptureOptions()) }
        guard let word = words.first else { throw CaptureError("capture: expected apply, remove or print (see meshctl capture --help)", exitCode: 2) }
        guard let action = CaptureAction(rawValue: word) else {
            throw CaptureError("capture: unknown action \"\(word)\" (expected apply, remove or print)", exitCode: 2)
        }
        if words.count > 1 { throw CaptureError("capture \(word): unexpected argument \"\(words[1])\"", exitCode: 2) }
        return (action, try CaptureOptions(flags: flags))
    }

    /// Validates the capture flags in `flags`.
    public init(flags: Flags) throws(CaptureError) {
        func id(_ name: String) throws(CaptureError) -> Int? {
            guard let s = flags.string(name) else { return nil }
            guard !s.isEmpty, s.utf8.count <= 10, s.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let v = Int(s), v <= 4_294_967_294 else {
                throw CaptureError.flag(name, "expected a numeric id from 0 to 4294967294, got \"\(s)\"")
            }
            return v
        }
        func port(_ name: String) throws(CaptureError) -> Int? {
            guard let s = flags.string(name) else { return nil }
            return try PortList.single(s, flag: name)
        }
        if let v = try id("proxy-uid") { proxyUID = v }
        if let v = try id("proxy-gid") { proxyGID = v }
        if let v = try port("outbound-port") { outboundPort = v }
        if let v = try port("inbound-port") { inboundPort = v }
        if let v = try port("admin-port") { adminPort = v }
        if flags.has("no-dns") {
            dns = false
            if flags.has("dns-port") { throw CaptureError.flag("dns-port", "has no effect with --no-dns (give one or the other)") }
        }
        if let v = try port("dns-port") { dnsPort = v }
        let named = [("admin-port", adminPort), ("inbound-port", inboundPort), ("outbound-port", outboundPort)] + (dns ? [("dns-port", dnsPort)] : [])
        for i in 0..<named.count {
            for j in (i + 1)..<named.count where named[i].1 == named[j].1 {
                throw CaptureError("--\(named[i].0) and --\(named[j].0) are both \(named[j].1) (each sidecar port must differ)", exitCode: 2)
            }
        }

        if let s = flags.string("include-inbound-ports") {
            if s == "*" {
                includeInboundPorts = .all
            } else if s.split(separator: ",").contains("*") {
                throw CaptureError.flag("include-inbound-ports", "'*' (every port) cannot be mixed with ports, got \"\(s)\"")
            } else if s.isEmpty {
                throw CaptureError.flag("include-inbound-ports", "expected '*' or ports separated by commas, got an empty value")
            } else {
                let list = try PortList.parse(s, flag: "include-inbound-ports")
                for p in list where ownPorts.contains(p) {
                    throw CaptureError.flag("include-inbound-ports", "\(p) is one of the sidecar's own ports, which are never captured")
                }
                includeInboundPorts = .ports(list)
            }
        }
        if let s = flags.string("exclude-inbound-ports") { excludeInboundPorts = try PortList.parse(s, flag: "exclude-inbound-ports") }
        if case .ports(let inc) = includeInboundPorts {
            for p in excludeInboundPorts where inc.contains(p) {
                throw CaptureError.flag("exclude-inbound-ports", "\(p) is also in --include-inbound-ports")
            }
        }
        if let s = flags.string("exclude-outbound-ports") { excludeOutboundPorts = try PortList.parse(s, flag: "exclude-outbound-ports") }

        if let s = flags.string("include-outbound-cidrs") {
            if s == "*" {
                includeOutboundCIDRs = .all
            } else if s.split(separator: ",").contains("*") {
                throw CaptureError.flag("include-outbound-cidrs", "'*' (every address) cannot be mixed with CIDRs, got \"\(s)\"")
            } else if s.isEmpty {
                throw CaptureError.flag("include-outbound-cidrs", "expected '*' or CIDRs separated by commas, got an empty value")
            } else {
                includeOutboundCIDRs = .networks(try CaptureOptions.cidrs(s, flag: "include-outbound-cidrs"))
            }
        }
        if let s = flags.string("exclude-outbound-cidrs") { excludeOutboundCIDRs = try CaptureOptions.cidrs(s, flag: "exclude-outbound-cidrs") }
        if case .networks(let inc) = includeOutboundCIDRs {
            for c in excludeOutboundCIDRs where inc.contains(c) {
                throw CaptureError.flag("exclude-outbound-cidrs", "\(c.text) is also in --include-outbound-cidrs")
            }
        }

        if let s = flags.string("backend") {
            guard let b = BackendChoice(rawValue: s) else { throw CaptureError.flag("backend", "expected auto, nft or legacy, got \"\(s)\"") }
            backend = b
        }
    }

    static func cidrs(_ s: String, flag: String) throws(CaptureError) -> [CIDR] {
        if s.isEmpty { return [] }
        var out: [CIDR] = []
        for part in s.split(separator: ",", omittingEmptySubsequences: false) {
            let c = try CIDR(parsing: String(part), flag: flag)
            if out.contains(c) { throw CaptureError.flag(flag, "\(c.text) is given twice") }
            out.append(c)
        }
        return out
    }
}
