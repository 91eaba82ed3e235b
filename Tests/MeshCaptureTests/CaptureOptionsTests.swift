import XCTest
import MeshCapture

/// Refusals first: every bad flag value exits 2 with one line naming the flag.
final class CaptureOptionsTests: XCTestCase {
    func refused(_ args: [String], _ flag: String, _ fragment: String, file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try CaptureOptions.parse(["capture", "apply"] + args)
            XCTFail("accepted \(args)", file: file, line: line)
        } catch {
            XCTAssertEqual(error.exitCode, 2, file: file, line: line)
            XCTAssertTrue(error.description.hasPrefix(flag), "\(error.description)", file: file, line: line)
            XCTAssertTrue(error.description.contains(fragment), "\(error.description)", file: file, line: line)
            XCTAssertFalse(error.description.contains("\n"), file: file, line: line)
        }
    }

    func testBadPorts() {
        for flag in ["outbound-port", "inbound-port", "admin-port", "dns-port"] {
            for bad in ["0", "70000", "x", "", "-1", "+80", "1e3", "000000080"] {
                refused(["--\(flag)", bad], "--\(flag):", "expected a port from 1 to 65535")
            }
        }
        refused(["--exclude-inbound-ports", "80,0"], "--exclude-inbound-ports:", "\"0\"")
        refused(["--exclude-outbound-ports", "22,,80"], "--exclude-outbound-ports:", "\"\"")
        refused(["--include-inbound-ports", "70000"], "--include-inbound-ports:", "\"70000\"")
    }

    func testPortsGivenTwiceInAList() {
        refused(["--exclude-inbound-ports", "80,443,80"], "--exclude-inbound-ports:", "port 80 is given twice")
        refused(["--exclude-outbound-ports", "22,22"], "--exclude-outbound-ports:", "port 22 is given twice")
        refused(["--include-inbound-ports", "9080,9080"], "--include-inbound-ports:", "port 9080 is given twice")
    }

    func testWildcardMixedWithPortsOrCIDRs() {
        refused(["--include-inbound-ports", "*,80"], "--include-inbound-ports:", "cannot be mixed")
        refused(["--include-inbound-ports", "80,*"], "--include-inbound-ports:", "cannot be mixed")
        refused(["--include-inbound-ports", ""], "--include-inbound-ports:", "empty")
        refused(["--include-outbound-cidrs", "*,10.0.0.0/8"], "--include-outbound-cidrs:", "cannot be mixed")
        refused(["--include-outbound-cidrs", ""], "--include-outbound-cidrs:", "empty")
    }

    func testBadCIDRs() {
        refused(["--exclude-outbound-cidrs", "10.0.0.0/33"], "--exclude-outbound-cidrs:", "0 to 32")
        refused(["--include-outbound-cidrs", "1.2.3"], "--include-outbound-cidrs:", "\"1.2.3\"")
        refused(["--exclude-outbound-cidrs", "::/129"], "--exclude-outbound-cidrs:", "0 to 128")
        refused(["--exclude-outbound-cidrs", "10.0.0.0/"], "--exclude-outbound-cidrs:", "prefix length")
        refused(["--exclude-outbound-cidrs", "10.0.0.0/-1"], "--exclude-outbound-cidrs:", "prefix length")
        refused(["--exclude-outbound-cidrs", "300.0.0.0/8"], "--exclude-outbound-cidrs:", "\"300.0.0.0/8\"")
        refused(["--exclude-outbound-cidrs", "10.1.2.3/8"], "--exclude-outbound-cidrs:", "the network is 10.0.0.0/8")
        refused(["--exclude-outbound-cidrs", "fd00::1/8"], "--exclude-outbound-cidrs:", "the network is fd00::/8")
        refused(["--exclude-outbound-cidrs", "10.0.0.0/8,10.0.0.0/8"], "--exclude-outbound-cidrs:", "given twice")
        refused(["--include-outbound-cidrs", "10.0.0.0/8", "--exclude-outbound-cidrs", "10.0.0.0/8"], "--exclude-outbound-cidrs:", "also in --include-outbound-cidrs")
    }

    func testOtherRefusals() {
        refused(["--backend", "nftables"], "--backend:", "expected auto, nft or legacy")
        refused(["--proxy-uid", "-5"], "--proxy-uid:", "numeric id")
        refused(["--proxy-gid", "4294967295"], "--proxy-gid:", "numeric id")
        refused(["--proxy-uid", "1", "--proxy-uid", "2"], "--proxy-uid:", "given 2 times")
        refused(["--no-dns", "--dns-port", "5353"], "--dns-port:", "--no-dns")
        refused(["--admin-port", "15006"], "--admin-port and --inbound-port", "both 15006")
        refused(["--include-inbound-ports", "80,15000"], "--include-inbound-ports:", "sidecar's own ports")
        refused(["--include-inbound-ports", "80", "--exclude-inbound-ports", "80"], "--exclude-inbound-ports:", "also in --include-inbound-ports")
        refused(["--bogus"], "unknown flag --bogus", "see --help")
        for args in [["capture"], ["capture", "frob"], ["capture", "apply", "extra"]] {
            XCTAssertThrowsError(try CaptureOptions.parse(args)) { XCTAssertEqual(($0 as! CaptureError).exitCode, 2) }
        }
    }

    func testAcceptedValues() throws {
        let o = try CaptureOptions.parse(["capture", "remove", "--proxy-uid", "0", "--include-inbound-ports", "65535,1",
                                          "--exclude-outbound-cidrs", "", "--include-outbound-cidrs", "2001:DB8:0:0::/64,192.0.2.7",
                                          "--backend", "legacy", "--exclude-outbound-ports", "53"])
        XCTAssertEqual(o.action, .remove)
        XCTAssertEqual(o.options.proxyUID, 0)
        XCTAssertEqual(o.options.includeInboundPorts, .ports([65535, 1]))
        XCTAssertEqual(o.options.excludeOutboundCIDRs, [])
        guard case .networks(let nets) = o.options.includeOutboundCIDRs else { return XCTFail("networks expected") }
        XCTAssertEqual(nets.map(\.text), ["2001:db8::/64", "192.0.2.7/32"])
        XCTAssertEqual(nets.map(\.family), [.ipv6, .ipv4])
        XCTAssertEqual(o.options.backend, .legacy)
        XCTAssertEqual(try CaptureOptions.parse(["capture", "print", "--no-dns"]).options.ownPorts, [15000, 15006, 15001])
    }
}
