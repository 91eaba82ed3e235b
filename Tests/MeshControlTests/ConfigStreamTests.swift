import XCTest
import MeshCore
import MeshControlWire
import MeshPKI
@testable import MeshControl

/// The config stream's messages, written by one end and read by the other through the same
/// types: each survives the trip (with values that need escaping), and what is malformed is
/// refused with the answer meshd gives.
final class ConfigStreamTests: XCTestCase {
    /// A query string as the server reads it (split on & and =, percent-decoded).
    func parse(_ q: String) -> [String: String] {
        var out: [String: String] = [:]
        for kv in q.split(separator: "&") {
            let p = kv.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            out[ControlServer.percentDecode(String(p[0]))] = p.count > 1 ? ControlServer.percentDecode(String(p[1])) : ""
        }
        return out
    }

    func testRegistrationSurvivesTheTripAndBadOnesAreRefused() throws {
        let reg = ConfigStream.Registration(service: "reviews", namespace: "shop", address: "10.0.0.7:15006",
                                            labels: [.init(key: "app", value: "reviews"), .init(key: "example.com/tier", value: "a.b_c-1")])
        XCTAssertEqual(try ConfigStream.Registration(query: parse(reg.query)), reg)
        for bad in ["service=Reviews&namespace=shop&address=10.0.0.7:1", "service=r&namespace=shop&address=nowhere",
                    "service=r&namespace=shop&address=10.0.0.7:1&labels=app%3Dx%2Cbad", "namespace=shop&address=10.0.0.7:1"] {
            XCTAssertThrowsError(try ConfigStream.Registration(query: parse(bad)), bad) { e in
                XCTAssertEqual((e as? CAError)?.refusal, 400)
            }
        }
    }

    func testRequestPushAndAnswerSurviveTheTrip() {
        let req = ConfigStream.Request(version: 7, node: "10.0.0.7:15006", admin: "127.0.0.1:15000")
        XCTAssertEqual(ConfigStream.Request(query: parse(req.query)), req)
        XCTAssertEqual(ConfigStream.Request(query: parse("version=x&admin=not-an-address")), ConfigStream.Request(version: 0, node: "", admin: ""))
        let withDigest = ConfigStream.Request(version: 7, node: "n", admin: "", digest: MeshCrypto.digestHex("kind: ProxyConfig\n"))
        XCTAssertEqual(withDigest.digest.count, 32)
        XCTAssertEqual(ConfigStream.Request(query: parse(withDigest.query)), withDigest)
        // A digest that is not lowercase hex counts as none (it is echoed into nothing, compared only).
        for bad in ["ABCD", "12 4", "xyz", String(repeating: "a", count: 65)] {
            XCTAssertEqual(ConfigStream.Request(query: ["version": "1", "digest": bad]).digest, "", bad)
        }
        XCTAssertNotEqual(MeshCrypto.digestHex("a"), MeshCrypto.digestHex("b"))
        XCTAssertEqual(MeshCrypto.digestHex(""), "e3b0c44298fc1c149afbf4c8996fb924")
        let push = ConfigStream.Push(version: 9, nonce: "a1b2", digest: "00ff", text: "kind: ProxyConfig\nspec: {}\n")
        XCTAssertEqual(ConfigStream.Push(body: push.body), push)
        XCTAssertNil(ConfigStream.Push(body: "version: nine x d\nkind: X\n"))
        XCTAssertNil(ConfigStream.Push(body: "version: 9 a1b2\nkind: X\n"))
        XCTAssertNil(ConfigStream.Push(body: "no newline"))
        let nack = ConfigStream.Answer(version: 9, node: "n&m", nonce: "a1b2", error: "refused: x")
        XCTAssertEqual(nack.path, ConfigStream.nackPath)
        XCTAssertEqual(ConfigStream.Answer(query: parse(nack.query), nack: true, body: nack.body), nack)
        let ack = ConfigStream.Answer(version: 9, node: "n", nonce: "a1b2", error: nil)
        XCTAssertEqual(ack.path, ConfigStream.ackPath)
        XCTAssertEqual(ConfigStream.Answer(query: parse(ack.query), nack: false, body: ""), ack)
        XCTAssertNil(ConfigStream.Answer(query: [:], nack: false, body: ""))
    }
}
