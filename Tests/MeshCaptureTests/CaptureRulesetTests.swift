import XCTest
import MeshCapture

/// `meshctl capture print` for several option sets against golden files (Tests/MeshCaptureTests/golden):
/// the exact text apply feeds to iptables-restore, both families. No root needed.
final class CaptureRulesetTests: XCTestCase {
    func options(_ args: [String]) throws -> CaptureOptions {
        let parsed = try CaptureOptions.parse(["capture", "print"] + args)
        XCTAssertEqual(parsed.action, .print)
        return parsed.options
    }

    func golden(_ name: String) throws -> String {
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("golden")
        return try String(contentsOf: dir.appendingPathComponent(name + ".rules"), encoding: .utf8)
    }

    func check(_ name: String, _ args: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertEqual(CaptureRuleset.renderAll(try options(args)), try golden(name), "golden \(name)", file: file, line: line)
    }

    func testDefault() throws { try check("default", []) }
    func testExplicitInboundPorts() throws { try check("inbound-ports", ["--include-inbound-ports", "8080,9090"]) }
    func testExclusions() throws { try check("exclusions", ["--exclude-inbound-ports", "22,8443", "--exclude-outbound-ports", "22,3306"]) }
    func testCIDRsBothFamilies() throws {
        try check("cidrs", ["--include-outbound-cidrs", "10.96.0.0/12,240.240.0.0/16,fd00:10:96::/112",
                            "--exclude-outbound-cidrs", "10.96.0.10/32,2001:db8::/32"])
    }
    func testNoDNS() throws { try check("no-dns", ["--no-dns"]) }
    func testCustomIDsAndPorts() throws {
        try check("custom-ids-ports", ["--proxy-uid", "2102", "--proxy-gid", "2103", "--outbound-port", "4140",
                                       "--inbound-port", "4143", "--admin-port", "4191", "--dns-port", "5353"])
    }

    /// The order that makes the rules right, checked on the default set independently of the golden file.
    func testOutboundOrder() throws {
        for (family, passthrough, loopback) in [(IPFamily.ipv4, "127.0.0.6/32", "127.0.0.1/32"), (.ipv6, "::6/128", "::1/128")] {
            let rules = CaptureRuleset.render(try options(["--exclude-outbound-ports", "25"]), family)
                .split(separator: "\n").filter { $0.hasPrefix("-A MESH_OUTPUT ") }.map(String.init)
            func at(_ r: String) -> Int { rules.firstIndex(of: "-A MESH_OUTPUT " + r) ?? -1 }
            let excluded = at("-p tcp --dport 25 -j RETURN"), pass = at("-o lo -s \(passthrough) -j RETURN")
            let dnsUID = at("-p udp --dport 53 -m owner --uid-owner 1337 -j RETURN"), dns = at("-p udp --dport 53 -j REDIRECT --to-ports 15053")
            let vip = at("-o lo ! -d \(loopback) -p tcp ! --dport 15006 -m owner --uid-owner 1337 -j MESH_IN_REDIRECT")
            let appLo = at("-o lo -m owner ! --uid-owner 1337 -j RETURN"), proxy = at("-m owner --uid-owner 1337 -j RETURN")
            let proxyGID = at("-m owner --gid-owner 1337 -j RETURN"), local = at("-d \(loopback) -j RETURN"), all = at("-j MESH_REDIRECT")
            let order = [excluded, pass, dnsUID, dns, vip, appLo, proxy, proxyGID, local, all]
            XCTAssertFalse(order.contains(-1), "\(family): every rule present: \(rules)")
            XCTAssertEqual(order, order.sorted(), "\(family): Istio's order")
            XCTAssertEqual(all, rules.count - 1)
        }
    }

    /// The own ports always pass inbound, before any capture; multiport takes at most 15 ports.
    func testInboundOwnPortsFirstAndMultiportGroups() throws {
        let ports = (1...16).map { String(8000 + $0) }.joined(separator: ",")
        let rules = CaptureRuleset.render(try options(["--exclude-inbound-ports", ports]), .ipv4)
            .split(separator: "\n").filter { $0.hasPrefix("-A MESH_INBOUND ") }.map(String.init)
        XCTAssertEqual(rules, [
            "-A MESH_INBOUND -p tcp -m multiport --dports 15000,15006,15001,15053 -j RETURN",
            "-A MESH_INBOUND -p tcp -m multiport --dports " + (1...15).map { String(8000 + $0) }.joined(separator: ",") + " -j RETURN",
            "-A MESH_INBOUND -p tcp --dport 8016 -j RETURN",
            "-A MESH_INBOUND -p tcp -j MESH_IN_REDIRECT",
        ])
    }

    /// Apply leaves out the jumps already present, so a second apply adds no second jump.
    func testOmittedJumps() throws {
        let text = CaptureRuleset.render(CaptureOptions(), .ipv4, omitJumps: ["-A OUTPUT -j MESH_OUTPUT"])
        XCTAssertTrue(text.contains("-A PREROUTING -p tcp -j MESH_INBOUND\n"))
        XCTAssertFalse(text.contains("-A OUTPUT -j MESH_OUTPUT"))
    }

    /// An IPv4-only include list captures no IPv6 destination (and the reverse).
    func testIncludeListPerFamily() throws {
        let o = try options(["--include-outbound-cidrs", "10.0.0.0/8"])
        XCTAssertTrue(CaptureRuleset.render(o, .ipv4).contains("-A MESH_OUTPUT -d 10.0.0.0/8 -j MESH_REDIRECT\n"))
        XCTAssertFalse(CaptureRuleset.render(o, .ipv6).contains("-j MESH_REDIRECT\n-A PREROUTING"))
        XCTAssertFalse(CaptureRuleset.render(o, .ipv6).contains("-A MESH_OUTPUT -j MESH_REDIRECT"))
    }
}
