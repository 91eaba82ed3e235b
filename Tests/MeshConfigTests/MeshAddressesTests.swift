import XCTest
import MeshCore
@testable import MeshConfig

/// `--listen-address` and `--advertise-address` of a mesh-mode sidecar (DESIGN §10): refusals
/// first, each naming its flag, then what binds where.
final class MeshAddressesTests: XCTestCase {
    private func refused(_ listen: String?, _ advertise: String?, naming flag: String, saying words: String,
                         line: UInt = #line) {
        do {
            let a = try MeshAddresses.resolve(listen: listen, advertise: advertise)
            XCTFail("accepted listen \(listen ?? "-") advertise \(advertise ?? "-") as \(a)", line: line)
        } catch {
            XCTAssertEqual(error.path, flag, "\(error)", line: line)
            XCTAssertTrue(error.description.contains(words), "\(error)", line: line)
        }
    }

    func testRefusals() {
        refused("nonsense", nil, naming: "--listen-address", saying: "expected an IP address")
        refused("10.0.0.2:15006", nil, naming: "--listen-address", saying: "expected an IP address")
        refused("", "10.0.0.2", naming: "--listen-address", saying: "expected an IP address")
        refused(nil, "meshhost", naming: "--advertise-address", saying: "expected an IP address")
        refused("0.0.0.0", "bad", naming: "--advertise-address", saying: "expected an IP address")
        // A wildcard listen address needs a concrete advertise address, given explicitly.
        refused("0.0.0.0", nil, naming: "--listen-address", saying: "needs an explicit --advertise-address")
        refused("::", nil, naming: "--listen-address", saying: "needs an explicit --advertise-address")
        refused("0.0.0.0", "0.0.0.0", naming: "--advertise-address", saying: "wildcard")
        refused("::", "::", naming: "--advertise-address", saying: "wildcard")
        refused(nil, "0:0::0", naming: "--advertise-address", saying: "wildcard")
        // 0.0.0.0 accepts no IPv6 connection.
        refused("0.0.0.0", "fd00::2", naming: "--listen-address", saying: "IPv4 only")
        // A concrete listen address that is not the advertised one: registered != listening.
        refused("10.0.0.2", "10.0.0.3", naming: "--listen-address", saying: "differs from --advertise-address 10.0.0.3")
        refused("fd00::2", "10.0.0.2", naming: "--listen-address", saying: "differs")
        refused("127.0.0.1", "10.0.0.2", naming: "--listen-address", saying: "differs")
    }

    func testDefaultsAndAccepted() throws {
        XCTAssertEqual(try MeshAddresses.resolve(listen: nil, advertise: nil), MeshAddresses(listen: "127.0.0.1", advertise: "127.0.0.1"))
        XCTAssertEqual(try MeshAddresses.resolve(listen: nil, advertise: "10.0.0.2"), MeshAddresses(listen: "10.0.0.2", advertise: "10.0.0.2"))
        XCTAssertEqual(try MeshAddresses.resolve(listen: "10.0.0.2", advertise: nil), MeshAddresses(listen: "10.0.0.2", advertise: "10.0.0.2"))
        XCTAssertEqual(try MeshAddresses.resolve(listen: "0.0.0.0", advertise: "10.0.0.2"), MeshAddresses(listen: "0.0.0.0", advertise: "10.0.0.2"))
        XCTAssertEqual(try MeshAddresses.resolve(listen: "::", advertise: "10.0.0.2"), MeshAddresses(listen: "::", advertise: "10.0.0.2"))
        // IPv6 in canonical form, with or without brackets; the same address spelt two ways agrees.
        XCTAssertEqual(try MeshAddresses.resolve(listen: nil, advertise: "FD00:0::0002"), MeshAddresses(listen: "fd00::2", advertise: "fd00::2"))
        XCTAssertEqual(try MeshAddresses.resolve(listen: "[fd00::2]", advertise: "fd00:0:0::2"), MeshAddresses(listen: "fd00::2", advertise: "fd00::2"))
        XCTAssertEqual(try MeshAddresses.resolve(listen: "0::0", advertise: "fd00::2"), MeshAddresses(listen: "::", advertise: "fd00::2"))
    }

    /// The inbound listener binds the listen address; outbound and admin stay on loopback.
    func testWhatBindsWhere() throws {
        var o = MeshModeOptions(service: "reviews")
        o.appPort = 9080
        o.inboundPort = 15006
        o.outboundPort = 15001
        o.adminPort = 15000
        o.listenAddress = try MeshAddresses.resolve(listen: nil, advertise: "fd00::2").listen
        let tls = Bootstrap.TLSFiles(certChain: "c", privateKey: "k", trustBundle: "b", trustDomain: "cluster.local", minTLS13: false)
        let b = try Bootstrap.meshMode(o, tls: tls)
        XCTAssertEqual(b.inbound?.address.text, "[fd00::2]:15006")
        XCTAssertEqual(b.outbound?.address.text, "127.0.0.1:15001")
        XCTAssertEqual(b.admin.text, "127.0.0.1:15000")
        o.listenAddress = "0.0.0.0"
        XCTAssertEqual(try Bootstrap.meshMode(o, tls: tls).inbound?.address.text, "0.0.0.0:15006")
        o.listenAddress = "not-an-ip"
        XCTAssertThrowsError(try Bootstrap.meshMode(o, tls: tls)) { XCTAssertEqual(($0 as? ConfigError)?.path, "--listen-address") }
    }
}
