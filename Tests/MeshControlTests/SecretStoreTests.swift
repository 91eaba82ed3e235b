import Foundation
import XCTest
import MeshCore
import MeshEtcd
import MeshTLS
@testable import MeshConfig
@testable import MeshControl
@testable import MeshControlWire
@testable import MeshPKI

/// meshd's TLS secrets (DESIGN §15): refused input stores nothing; create/replace/unchanged and
/// delete answer like apply and move the version only on a change; the file is 0600 and comes
/// back after a restart; etcd keys are read back (and a damaged one refused by name); only a
/// gateway whose Gateway names a secret in its own namespace, and whose service account meshd
/// grants (`--gateway-service-account`), is sent it, in the push's section, which a push without
/// secrets does not have; malformed grants are refused by name. Certificates:
/// certs/make-tls-secret.py.
final class SecretStoreTests: XCTestCase {
    static let certs: String = {
        let dir = NSTemporaryDirectory() + "mesh-secret-store-tests-\(getpid())"
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

    var dir = ""
    override func setUp() {
        var t = Array("/tmp/secretstore-XXXXXX".utf8CString)
        dir = String(cString: mkdtemp(&t)!)
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func file(_ n: String) -> String { try! String(contentsOfFile: "\(Self.certs)/\(n)", encoding: .utf8) }
    func secret(_ name: String = "bookinfo-cert", ns: String = "default", cert: String = "server.pem", key: String = "server.key", ca: String? = nil) -> TLSSecret {
        TLSSecret(namespace: ns, name: name, certChain: file(cert), key: SecretBytes(Array(file(key).utf8)), caCert: ca.map(file) ?? "")
    }
    let src = PEMContext.Sources(cert: "cert.pem", key: "key.pem", ca: "-")

    func testRefusedSecretStoresNothingAndNamesTheFile() throws {
        let store = try ConfigStore(stateDir: dir)
        let v = store.version
        XCTAssertThrowsError(try store.putSecret(secret(key: "other.key"), from: src)) { e in
            XCTAssertTrue("\(e)".contains("--key key.pem: the private key does not match the certificate in cert.pem"), "\(e)")
        }
        XCTAssertThrowsError(try store.putSecret(secret(cert: "expired.pem", key: "expired.key"), from: src))
        XCTAssertEqual(store.version, v)
        XCTAssertTrue(store.secrets().isEmpty)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/secrets.dat"))
    }

    func testCreateReplaceUnchangedDeleteAndRestart() throws {
        let store = try ConfigStore(stateDir: dir)
        let v0 = store.version
        let (o1, v1, info1) = try store.putSecret(secret(), from: src)
        XCTAssertEqual(o1, .created)
        XCTAssertEqual(v1, v0 + 1)
        XCTAssertEqual(info1.sans, ["bookinfo.example"])
        let (o2, v2, _) = try store.putSecret(secret(), from: src)
        XCTAssertEqual(o2, .unchanged)
        XCTAssertEqual(v2, v1)
        let (o3, v3, info3) = try store.putSecret(secret(cert: "server2.pem", key: "server2.key"), from: src)
        XCTAssertEqual(o3, .configured)
        XCTAssertEqual(v3, v1 + 1)
        XCTAssertNotEqual(info3.serialHex, info1.serialHex)
        var st = stat()
        XCTAssertEqual(stat("\(dir)/secrets.dat", &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600)
        // The key is not in the listing.
        let listing = store.secrets().map(TLSSecrets.listLine).joined()
        XCTAssertFalse(listing.contains("PRIVATE KEY"))
        XCTAssertTrue(listing.hasPrefix("default\tbookinfo-cert\tCN=bookinfo.example\tbookinfo.example\t"), listing)

        // A restart reads the replaced secret back.
        let again = try ConfigStore(stateDir: dir)
        XCTAssertEqual(again.secrets().count, 1)
        XCTAssertTrue(again.secrets()[0].same(as: secret(cert: "server2.pem", key: "server2.key")))

        XCTAssertEqual(try again.deleteSecret(namespace: "default", name: "bookinfo-cert"), .deleted)
        XCTAssertEqual(try again.deleteSecret(namespace: "default", name: "bookinfo-cert"), .notFound)
        XCTAssertTrue(try ConfigStore(stateDir: dir).secrets().isEmpty)
    }

    func testDamagedSecretsFileStopsMeshdNamingIt() throws {
        let store = try ConfigStore(stateDir: dir)
        _ = try store.putSecret(secret(), from: src)
        var bytes = try FileStore.readBytes("\(dir)/secrets.dat")
        bytes.removeLast(10)
        try FileStore.writeAtomically("\(dir)/secrets.dat", String(decoding: bytes, as: UTF8.self), mode: 0o600)
        XCTAssertThrowsError(try ConfigStore(stateDir: dir)) { e in
            XCTAssertTrue("\(e)".contains("\(dir)/secrets.dat: TLS secret default/bookinfo-cert: cut short"), "\(e)")
        }
    }

    func testEtcdKeysReadBackAndADamagedKeyIsRefusedByName() throws {
        let s = secret()
        let key = EtcdStateStore.secretsPrefix + "default/bookinfo-cert"
        let kv = EtcdKeyValue(key: key, value: s.record, createRevision: 3, modRevision: 3, version: 1, lease: 0)
        let back = try EtcdStateStore.secrets(from: [key: kv])
        XCTAssertTrue(back["default/bookinfo-cert"]!.same(as: s))
        let wrong = EtcdKeyValue(key: EtcdStateStore.secretsPrefix + "default/other", value: s.record, createRevision: 3, modRevision: 3, version: 1, lease: 0)
        XCTAssertThrowsError(try EtcdStateStore.secrets(from: [wrong.key: wrong])) { e in
            XCTAssertEqual("\(e)", "etcd key /mesh/config/secrets/default/other: holds the secret default/bookinfo-cert")
        }
        // The operations a change makes: a put for the new or replaced one, a delete for the removed one.
        var a = ConfigStore.State(), b = ConfigStore.State()
        a.secrets["default/old"] = secret("old")
        b.secrets["default/bookinfo-cert"] = s
        var ops: [EtcdOp] = []
        EtcdStateStore(client: try EtcdClient(endpoints: ["127.0.0.1:1"]), replica: "r", endpoints: "").secretOps(from: a, to: b, into: &ops)
        XCTAssertEqual(ops.count, 2)
        XCTAssertTrue(ops.contains { if case .put(let k, _, _) = $0 { return k == key } else { return false } })
        XCTAssertTrue(ops.contains { if case .delete(let k) = $0 { return k == EtcdStateStore.secretsPrefix + "default/old" } else { return false } })
    }

    static func gateway(_ ns: String, _ name: String, selector: [(String, String)], servers: [(IstioGateway.TLSMode, String)]) -> IstioGateway {
        IstioGateway(name: name, namespace: ns, selector: selector, servers: servers.enumerated().map { i, m in
            var t = IstioGateway.ServerTLS()
            t.mode = m.0
            t.credentialName = m.1
            return IstioGateway.Server(port: 443 + i, portName: "https-\(i)", proto: .https, hosts: [IstioGateway.Host(namespace: .any, dnsName: "*")], tls: t)
        })
    }

    /// Gateways: `default/gw` serves bookinfo-cert (SIMPLE) to istio=ingressgateway proxies,
    /// `prod/gw` names bookinfo-cert for istio=prodgateway (prod has no such secret), and
    /// `default/pt` names other-cert on a PASSTHROUGH server (no certificate served there).
    static let gateways = [
        gateway("default", "gw", selector: [("istio", "ingressgateway")], servers: [(.simple, "bookinfo-cert")]),
        gateway("prod", "gw", selector: [("istio", "prodgateway")], servers: [(.mutual, "bookinfo-cert")]),
        gateway("default", "pt", selector: [("istio", "ingressgateway")], servers: [(.passthrough, "other-cert")]),
    ]

    func testSelectionFollowsSelectorsModesAndTheGatewaysNamespace() {
        let ids = { (l: [(String, String)]) in GatewaySecretSelection.ids(gateways: SecretStoreTests.gateways, labels: l) }
        XCTAssertEqual(ids([("istio", "ingressgateway"), ("app", "x")]), ["default/bookinfo-cert"])
        XCTAssertEqual(ids([("istio", "prodgateway")]), ["prod/bookinfo-cert"])
        XCTAssertEqual(ids([("istio", "egressgateway")]), [])
        // An empty selector selects every gateway proxy (Istio).
        let any = SecretStoreTests.gateway("default", "all", selector: [], servers: [(.mutual, "m")])
        XCTAssertEqual(GatewaySecretSelection.ids(gateways: [any], labels: []), ["default/m"])
    }

    /// One proxy's config stream as meshd sees it: its identity, node and, for a gateway, the
    /// labels it names on its config requests (`seen`, as MeshdServer calls it).
    struct Proxy { var identity: String; var address: String; var labels: [(String, String)]? }

    /// A store with two secrets and the proxies given, seen on their config streams; `grants`:
    /// meshd's `--gateway-service-account` values.
    func deliveryStore(_ proxies: [Proxy], grants: [String] = ["default/ingress", "prod/ingress3"]) throws -> ConfigStore {
        let store = try ConfigStore(stateDir: dir)
        store.grantGatewayServiceAccounts(try GatewayServiceAccounts.parse(grants))
        _ = try store.putSecret(secret(), from: src)
        _ = try store.putSecret(secret("other-cert"), from: src)
        for p in proxies { store.seen(identity: p.identity, node: p.address, gateway: p.labels) }
        return store
    }

    func snapshot(_ store: ConfigStore, _ w: Proxy) -> ProxyConfigSnapshot {
        var snap = store.scopedConfig(identity: w.identity, node: w.address)
        store.addSecrets(&snap, identity: w.identity, node: w.address, gateways: SecretStoreTests.gateways)
        return snap
    }

    /// A sidecar (`gateway` false: it names no labels) or a gateway proxy with `labels`.
    func workload(_ sa: String, ns: String = "default", labels: [(String, String)], gateway: Bool, address: String) -> Proxy {
        Proxy(identity: "spiffe://cluster.local/ns/\(ns)/sa/\(sa)", address: address, labels: gateway ? labels : nil)
    }

    func testOnlyAGatewaySelectedByAGatewayNamingTheSecretGetsIt() throws {
        let gw = workload("ingress", labels: [("istio", "ingressgateway")], gateway: true, address: "127.0.0.1:1001")
        // The same labels on a sidecar that is not a gateway: nothing.
        let app = workload("app", labels: [("istio", "ingressgateway")], gateway: false, address: "127.0.0.1:1002")
        let otherLabels = workload("ingress2", labels: [("istio", "egressgateway")], gateway: true, address: "127.0.0.1:1003")
        let prod = workload("ingress3", ns: "prod", labels: [("istio", "prodgateway")], gateway: true, address: "127.0.0.1:1004")
        let store = try deliveryStore([gw, app, otherLabels, prod])
        let snap = snapshot(store, gw)
        XCTAssertEqual(snap.secrets.map(\.id), ["default/bookinfo-cert"])
        // The digest covers the secrets: the same config without them has another digest.
        XCTAssertNotEqual(snap.digest, store.scopedConfig(identity: gw.identity, node: gw.address).digest)
        for w in [app, otherLabels, prod] {
            XCTAssertTrue(snapshot(store, w).secrets.isEmpty, w.identity)
        }
        // The push carries them in its section, read back whole; a push to the app has no section.
        var push = ConfigStream.Push(version: snap.version, nonce: "n", digest: snap.digest, text: snap.text)
        push.secrets = snap.secrets
        let body = push.body
        XCTAssertTrue(body.contains("\ntls-secrets 1 "))
        let back = try XCTUnwrap(ConfigStream.Push(body: body))
        XCTAssertEqual(back.secrets.count, 1)
        XCTAssertTrue(back.secrets[0].same(as: secret()))
        XCTAssertEqual(back.text, snap.text)
        let appSnap = snapshot(store, app)
        XCTAssertFalse(ConfigStream.Push(version: 1, nonce: "n", digest: appSnap.digest, text: appSnap.text).body.contains("PRIVATE KEY"))
        // The body meshd sends (whole text or delta) carries the same section.
        let sent = store.scoped.deltas.body(snap, nonce: "n2", base: "")
        XCTAssertEqual(ConfigStream.Push(body: sent)?.secrets.count, 1)
    }

    func testAGatewayOfAnotherNamespaceNeverGetsTheSecret() throws {
        // Labels are the proxy's word: a gateway in prod with default's labels is selected by
        // default/gw, and still gets nothing of namespace default, though prod/ingress is granted
        // (prod's secrets, not default's).
        let intruder = workload("ingress", ns: "prod", labels: [("istio", "ingressgateway")], gateway: true, address: "127.0.0.1:1005")
        let store = try deliveryStore([intruder], grants: ["prod/ingress"])
        XCTAssertTrue(snapshot(store, intruder).secrets.isEmpty)
    }

    // MARK: grants (meshd --gateway-service-account)

    func testAGatewayWithoutAGrantGetsNothingAndStatusSaysWhy() throws {
        // No grant at all (meshd's default): the gateway of the right namespace and labels gets nothing.
        let gw = workload("ingress", labels: [("istio", "ingressgateway")], gateway: true, address: "127.0.0.1:1001")
        let none = try deliveryStore([gw], grants: [])
        XCTAssertTrue(snapshot(none, gw).secrets.isEmpty)
        XCTAssertEqual(none.withheldSecrets(identity: gw.identity, node: gw.address),
                       "TLS secrets withheld: default/ingress is not granted (--gateway-service-account default/ingress)")
        try FileManager.default.removeItem(atPath: dir)
        setUp()
        // Another service account of the same namespace claiming the same labels, with
        // default/ingress granted: nothing; the granted one gets the secret, and has no reason kept.
        let other = workload("app", labels: [("istio", "ingressgateway")], gateway: true, address: "127.0.0.1:1006")
        let store = try deliveryStore([gw, other], grants: ["default/ingress"])
        XCTAssertTrue(snapshot(store, other).secrets.isEmpty)
        XCTAssertEqual(store.withheldSecrets(identity: other.identity, node: other.address),
                       "TLS secrets withheld: default/app is not granted (--gateway-service-account default/app)")
        XCTAssertFalse(snapshot(store, other).text.contains("PRIVATE KEY"))
        XCTAssertEqual(snapshot(store, gw).secrets.map(\.id), ["default/bookinfo-cert"])
        XCTAssertNil(store.withheldSecrets(identity: gw.identity, node: gw.address))
        // A gateway no Gateway selects is not reported (nothing is withheld from it).
        let idle = workload("app", labels: [("istio", "egressgateway")], gateway: true, address: "127.0.0.1:1007")
        store.seen(identity: idle.identity, node: idle.address, gateway: idle.labels)
        XCTAssertTrue(snapshot(store, idle).secrets.isEmpty)
        XCTAssertNil(store.withheldSecrets(identity: idle.identity, node: idle.address))
    }

    func testAGrantIsForOneNamespaceAndOneTrustDomain() throws {
        // default/ingress granted; the same service-account name in another trust domain (not
        // meshd's) and a grant of another namespace for the same name give nothing.
        let foreign = Proxy(identity: "spiffe://other.domain/ns/default/sa/ingress", address: "127.0.0.1:1008", labels: [("istio", "ingressgateway")])
        let store = try deliveryStore([foreign], grants: ["default/ingress"])
        XCTAssertTrue(snapshot(store, foreign).secrets.isEmpty)
        let a = try GatewayServiceAccounts.parse(["prod/ingress"])
        XCTAssertFalse(a.grants(identity: "spiffe://cluster.local/ns/default/sa/ingress", namespace: "default", trustDomain: "cluster.local"))
        XCTAssertTrue(a.grants(identity: "spiffe://cluster.local/ns/prod/sa/ingress", namespace: "prod", trustDomain: "cluster.local"))
        XCTAssertFalse(a.grants(identity: "spiffe://cluster.local/ns/prod/sa/ingress/x", namespace: "prod", trustDomain: "cluster.local"))
        XCTAssertFalse(a.grants(identity: "spiffe://cluster.local/ns/prod/sa/ingress", namespace: "prod", trustDomain: "cluster.loca"))
    }

    func testMalformedGrantsAreRefusedByName() throws {
        let cases: [(String, String)] = [
            ("ingressgateway", "--gateway-service-account \"ingressgateway\": expected NAMESPACE/SERVICE-ACCOUNT such as default/ingressgateway"),
            ("default/gw/x", "--gateway-service-account \"default/gw/x\": expected NAMESPACE/SERVICE-ACCOUNT"),
            ("", "--gateway-service-account \"\": expected NAMESPACE/SERVICE-ACCOUNT"),
            ("default/gw,", "--gateway-service-account \"default/gw,\": expected NAMESPACE/SERVICE-ACCOUNT"),
            ("Default/gw", "--gateway-service-account \"Default/gw\": \"Default\" is not a namespace name"),
            ("*/gw", "--gateway-service-account \"*/gw\": \"*\" is not a namespace name"),
            ("default/*", "--gateway-service-account \"default/*\": \"*\" is not a service-account name"),
            ("default/", "--gateway-service-account \"default/\": \"\" is not a service-account name"),
        ]
        for (value, want) in cases {
            XCTAssertThrowsError(try GatewayServiceAccounts.parse(["default/ok", value]), value) { e in
                XCTAssertTrue("\(e)".hasPrefix(want), "\(value): \(e)")
            }
        }
        let ok = try GatewayServiceAccounts.parse(["default/ingressgateway,prod/gw.v2", "prod/egress"])
        XCTAssertEqual(ok.granted, ["default/ingressgateway", "prod/gw.v2", "prod/egress"])
        XCTAssertEqual(try GatewayServiceAccounts.parse([]).granted, [])
    }

    func testReplacingTheSecretChangesTheGatewaysDigestOnly() throws {
        let gw = workload("ingress", labels: [("istio", "ingressgateway")], gateway: true, address: "127.0.0.1:1001")
        let app = workload("app", labels: [("app", "x")], gateway: false, address: "127.0.0.1:1002")
        let store = try deliveryStore([gw, app])
        let before = snapshot(store, gw)
        let appBefore = snapshot(store, app)
        _ = try store.putSecret(secret(cert: "server2.pem", key: "server2.key"), from: src)
        let after = snapshot(store, gw)
        XCTAssertNotEqual(after.digest, before.digest)
        XCTAssertEqual(after.text, before.text)
        XCTAssertTrue(after.secrets[0].same(as: secret(cert: "server2.pem", key: "server2.key")))
        XCTAssertEqual(snapshot(store, app).text, appBefore.text)
        XCTAssertTrue(snapshot(store, app).secrets.isEmpty)
    }

    func testADeltaPushCarriesTheSecretsToo() throws {
        let old = "apiVersion: sidecar.mesh/v1alpha1\nkind: ProxyConfig\nmetadata: {name: a}\n" + String(repeating: "# line\n", count: 50)
        let new = old + "# one more\n"
        let d = ConfigStream.Push.Delta(base: MeshCrypto.digestHex(old), target: MeshCrypto.digestHex(new), patch: ConfigDelta.make(from: old, to: new))
        var p = ConfigStream.Push(version: 3, nonce: "n", digest: "d", delta: d, bundle: "-----BEGIN CERTIFICATE-----\nx\n")
        p.secrets = [secret()]
        let back = try XCTUnwrap(ConfigStream.Push(body: p.body))
        XCTAssertNil(ConfigStream.Push.deltaRefusal(p.body))
        XCTAssertEqual(back.secrets.count, 1)
        XCTAssertTrue(back.secrets[0].same(as: secret()))
        XCTAssertEqual(try back.delta?.apply(to: old, heldDigest: MeshCrypto.digestHex(old)), new)
        XCTAssertEqual(back.bundle, p.bundle)
    }

    func testDamagedPushSectionIsRefused() {
        let good = ConfigStream.Push(version: 2, nonce: "n", digest: "d", text: "apiVersion: x\n")
        var p = good
        p.secrets = [secret()]
        var body = p.body
        // Cut inside the section: the push is not read at all (no partial secret, no text).
        let cut = body.range(of: "-----END CERTIFICATE-----")!.upperBound
        body = String(body[..<cut])
        XCTAssertNil(ConfigStream.Push(body: body))
        XCTAssertNil(ConfigStream.Push(body: "version: 2 n d\ntls-secrets 2 10\n0123456789apiVersion: x\n"))
    }
}
