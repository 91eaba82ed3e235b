import XCTest
import MeshTLS
@testable import MeshAgent

/// A push's TLS secrets on the sidecar's side of the config stream: a sidecar that is not a
/// gateway refuses a push carrying any (NACK, nothing kept); a gateway's taker gets them all.
final class ConfigStreamSecretsTests: XCTestCase {
    let s = TLSSecret(namespace: "default", name: "x", certChain: "c", key: SecretBytes(Array("k".utf8)), caCert: "")

    func testASidecarRefusesAPushCarryingSecrets() {
        XCTAssertThrowsError(try ConfigStreamClient.take([s], nil)) { e in
            XCTAssertEqual("\(e)", "the push carries 1 TLS secret(s), and this sidecar is not a gateway: none is taken")
        }
        XCTAssertNil(try ConfigStreamClient.take([], nil))
    }

    func testAGatewayTakesThemAndCanPutThemBack() throws {
        final class Box: @unchecked Sendable { var got: [String] = []; var undone = false }
        let box = Box()
        let undo = try ConfigStreamClient.take([s], { secrets in
            box.got = secrets.map(\.id)
            return { box.undone = true }
        })
        XCTAssertEqual(box.got, ["default/x"])
        undo?()
        XCTAssertTrue(box.undone)
    }
}
