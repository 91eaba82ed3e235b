import Foundation
import XCTest
import MeshCore
import MeshTLS
@testable import MeshProxy

/// A gateway's table of TLS secrets from meshd (GatewaySecrets.swift): contexts built before
/// anything changes (a bad secret leaves the table in force), an unchanged secret keeps its
/// contexts, a replaced one gets new ones while a context already handed out keeps working,
/// a dropped one is gone, and the dump shows fingerprints, never a key.
final class GatewaySecretsTests: XCTestCase {
    static let certs: String = {
        let dir = NSTemporaryDirectory() + "mesh-gateway-secrets-tests-\(getpid())"
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("certs/make-tls-secret.py").path
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        p.arguments = [script, dir]
        p.standardOutput = FileHandle.nullDevice
        try! p.run()
        p.waitUntilExit()
        precondition(p.terminationStatus == 0, "make-tls-secret.py failed")
        return dir
    }()

    override class func tearDown() { try? FileManager.default.removeItem(atPath: certs) }

    func file(_ n: String) -> String { try! String(contentsOfFile: "\(Self.certs)/\(n)", encoding: .utf8) }
    func secret(_ name: String = "bookinfo-cert", cert: String = "server.pem", key: String = "server.key", ca: String? = nil) -> TLSSecret {
        TLSSecret(namespace: "default", name: name, certChain: file(cert), key: SecretBytes(Array(file(key).utf8)), caCert: ca.map(file) ?? "")
    }

    func testAdoptKeepsUnchangedContextsReplacesChangedOnesAndDropsTheRest() throws {
        let g = GatewaySecrets()
        try g.adopt([secret(), secret("mtls-cert", ca: "client-ca.pem")])
        let simple = try XCTUnwrap(g.context("default/bookinfo-cert", mutual: false))
        XCTAssertNil(g.context("default/bookinfo-cert", mutual: true))     // no CA: no MUTUAL context
        XCTAssertNotNil(g.context("default/mtls-cert", mutual: true))
        // The same secret again: the same context (connections and sessions unaffected).
        try g.adopt([secret(), secret("mtls-cert", ca: "client-ca.pem")])
        XCTAssertTrue(g.context("default/bookinfo-cert", mutual: false) === simple)
        // Replaced: a new context with the new certificate; the other one dropped.
        try g.adopt([secret(cert: "server2.pem", key: "server2.key")])
        let replaced = try XCTUnwrap(g.context("default/bookinfo-cert", mutual: false))
        XCTAssertFalse(replaced === simple)
        XCTAssertNil(g.context("default/mtls-cert", mutual: true))
        let serial2 = X509Info.load(pem: file("server2.pem"))[0].serialHex
        XCTAssertEqual(g.entries.map(\.info.serialHex), [serial2])
    }

    func testAbsenceSaysWhyAServerHasNoContext() throws {
        let g = GatewaySecrets()
        try g.adopt([secret()])
        XCTAssertEqual(g.absence("default/other", mutual: false), "secret default/other (tls.credentialName) was not delivered by meshd: no such secret (meshctl create secret tls), or this gateway's service account is not granted (meshd --gateway-service-account; meshctl status says which)")
        XCTAssertEqual(g.absence("default/bookinfo-cert", mutual: true), "secret default/bookinfo-cert (tls.credentialName) has no ca.crt for this MUTUAL server (meshctl create secret tls --ca)")
        XCTAssertEqual(g.absence("default/bookinfo-cert", mutual: false), "")
    }

    func testABadSecretLeavesTheTableInForce() throws {
        let g = GatewaySecrets()
        try g.adopt([secret()])
        let before = g.context("default/bookinfo-cert", mutual: false)
        XCTAssertThrowsError(try g.adopt([secret(), secret("broken", key: "other.key")])) { e in
            XCTAssertTrue("\(e)".hasPrefix("TLS secret default/broken from meshd cannot be served"), "\(e)")
        }
        XCTAssertTrue(g.context("default/bookinfo-cert", mutual: false) === before)
        XCTAssertNil(g.context("default/broken", mutual: false))
        // A refused config puts back what adopt replaced.
        let previous = try g.adopt([])
        XCTAssertNil(g.context("default/bookinfo-cert", mutual: false))
        g.restore(previous)
        XCTAssertTrue(g.context("default/bookinfo-cert", mutual: false) === before)
    }

    func testDumpShowsFingerprintsNeverKeys() throws {
        let g = GatewaySecrets()
        var empty = JSONWriter()
        empty.beginObject(); g.dump(into: &empty); empty.endObject()
        XCTAssertEqual(empty.text, "{}")
        try g.adopt([secret(ca: "client-ca.pem")])
        var j = JSONWriter()
        j.beginObject(); g.dump(into: &j); j.endObject()
        let obj = try JSONSerialization.jsonObject(with: Data(j.text.utf8)) as! [String: Any]
        let s = (obj["secrets"] as! [[String: Any]])[0]
        XCTAssertEqual(s["name"] as? String, "bookinfo-cert")
        XCTAssertEqual(s["namespace"] as? String, "default")
        XCTAssertEqual((s["sha256"] as? String)?.count, 64)
        XCTAssertEqual(s["sans"] as? [String], ["bookinfo.example"])
        XCTAssertEqual(s["ca"] as? Bool, true)
        XCTAssertFalse(j.text.contains("PRIVATE"))
        XCTAssertFalse(j.text.contains("BEGIN"))
        let keyBody = file("server.key").split(separator: "\n")[1]
        XCTAssertFalse(j.text.contains(String(keyBody.prefix(20))))
    }
}
