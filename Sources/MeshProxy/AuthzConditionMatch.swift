#if canImport(Glibc)
import Glibc
#endif
import MeshConfig
import MeshCore
import MeshHTTP

extension AuthzTable {
    /// Which rules `decide` walks: the ALLOW/DENY verdict, or the AUDIT policies.
    enum Which { case verdict, audit }

    /// What a request offers conditions beyond the caller's principal, method, path and port:
    /// the verified JWT of this request (its claims and `iss/sub`, in the worker's
    /// `JWTScratch`), and the request head (`request.headers[...]`: forwarded fields only). Empty for TCP.
    struct RequestAttributes {
        var jwt: JWTScratch? = nil
        var head: MessageHead? = nil
        /// The caller's address (`ipBlocks`, `source.ip`), nil when not asked for or unknown.
        var source: IPEndpoint? = nil
    }

    /// One `when` condition, compiled: the key as bytes, patterns for its values.
    struct Condition: Sendable {
        /// The attribute, with claim paths and header names as bytes.
        enum Key: Sendable {
            case claim([[UInt8]]), requestPrincipal, audiences, presenter, header([UInt8])
            case sourcePrincipal, sourceNamespace, destinationPort, sourceIP
        }
        let key: Key
        let values: [Pattern]
        let notValues: [Pattern]
        let ports: [Int]
        let notPorts: [Int]
        let blocks: [AuthzCIDR]
        let notBlocks: [AuthzCIDR]
        let needsHTTP: Bool

        init(_ c: AuthorizationPolicy.Condition) {
            switch c.key {
            case .claim(let path): key = .claim(path.map { Array($0.utf8) })
            case .requestPrincipal: key = .requestPrincipal
            case .audiences: key = .audiences
            case .presenter: key = .presenter
            case .header(let h): key = .header(Array(h.utf8))
            case .sourcePrincipal: key = .sourcePrincipal
            case .sourceNamespace: key = .sourceNamespace
            case .destinationPort: key = .destinationPort
            case .sourceIP: key = .sourceIP
            }
            blocks = c.blocks
            notBlocks = c.notBlocks
            values = c.values.map(Pattern.init)
            notValues = c.notValues.map(Pattern.init)
            ports = c.key == .destinationPort ? c.values.compactMap { Int($0) } : []
            notPorts = c.key == .destinationPort ? c.notValues.compactMap { Int($0) } : []
            needsHTTP = c.key.needsHTTP
        }

        /// Whether the condition holds. `principal` is the caller's SPIFFE ID without the
        /// scheme (empty: plaintext), `namespace` the namespace in it.
        func matches(_ a: RequestAttributes, principal pp: UnsafePointer<UInt8>, _ pl: Int,
                     namespace: (UnsafePointer<UInt8>, Int), port: Int) -> Bool {
            if case .destinationPort = key {
                return (ports.isEmpty || ports.contains(port)) && (notPorts.isEmpty || !notPorts.contains(port))
            }
            if case .sourceIP = key {
                guard let ip = a.source else { return blocks.isEmpty }
                return (blocks.isEmpty || blocks.contains { $0.contains(ip) }) && !notBlocks.contains { $0.contains(ip) }
            }
            var anyValue = false, anyNot = false
            func test(_ p: UnsafePointer<UInt8>, _ n: Int) {
                if !anyValue && values.contains(where: { $0.matches(p, n) }) { anyValue = true }
                if !anyNot && notValues.contains(where: { $0.matches(p, n) }) { anyNot = true }
            }
            var present = true
            switch key {
            case .sourcePrincipal: if pl > 0 { test(pp, pl) } else { present = false }
            case .sourceNamespace: if namespace.1 > 0 { test(namespace.0, namespace.1) } else { present = false }
            case .header(let name):
                // The first field of that name the app is sent: fields not forwarded (a caller's
                // copy of a RequestAuthentication output header, a token removed) are not read,
                // so a condition sees the mesh-set value or nothing, never a forged one.
                present = false
                if let h = a.head {
                    let b = UnsafePointer(h.bytes.base)
                    name.withUnsafeBufferPointer { nb in
                        for f in h.fields where f.forwarded && Int(f.name.length) == nb.count
                            && ASCII.equalsLowerBytes(b + Int(f.name.start), nb.count, nb.baseAddress!) {
                            test(b + Int(f.value.start), Int(f.value.length))
                            present = true
                            break
                        }
                    }
                }
            case .requestPrincipal:
                if let j = a.jwt, j.claims != nil { test(UnsafePointer(j.principal.readPointer), j.principal.readableBytes) } else { present = false }
            case .claim, .audiences, .presenter:
                guard let j = a.jwt, let root = j.claims else { present = false; break }
                let p = UnsafePointer(j.payload.readPointer)
                var v: JSONScan.Value? = root
                switch key {
                case .audiences: v = JSONScan.member(p, root, "aud")
                case .presenter: v = JSONScan.member(p, root, "azp")
                case .claim(let path): for seg in path { v = v.flatMap { JSONScan.member(p, $0, seg) } }
                default: break
                }
                guard let v else { present = false; break }
                present = false
                // A string, or each string of a list (Istio); escaped strings unescaped first.
                func one(_ s: JSONScan.Value) {
                    guard JSONScan.kind(p, s) == .string else { return }
                    present = true
                    if let r = JSONScan.plainString(p, s) { test(p + r.start, r.end - r.start); return }
                    j.text.clear()
                    _ = JSONScan.appendString(p, s, to: j.text)
                    test(UnsafePointer(j.text.readPointer), j.text.readableBytes)
                }
                if JSONScan.kind(p, v) == .array { JSONScan.forEachElement(p, v) { one($0); return true } } else { one(v) }
            case .destinationPort, .sourceIP: break
            }
            if !present { return values.isEmpty }
            return (values.isEmpty || anyValue) && !anyNot
        }
    }
}
