import XCTest
import MeshCore
import MeshPKI
import MeshEtcd
@testable import MeshControl

/// How meshd reads its state back from etcd keys (pure: no etcd process): documents in create
/// order, the registry with its holder, the VIP table, the version from `rev`; a key that does
/// not hold what its name says is refused naming the key, never dropped.
final class EtcdStateTests: XCTestCase {
    func kv(_ key: String, _ value: String, create: Int64, mod: Int64? = nil) -> (String, EtcdKeyValue) {
        (key, EtcdKeyValue(key: key, value: Array(value.utf8), createRevision: create, modRevision: mod ?? create, version: 1, lease: 0))
    }

    let dr = { (name: String) in "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: \(name)}\nspec:\n  host: \(name)" }

    func testDocumentsComeBackInCreateOrderWithTheVersionOfRev() throws {
        let kvs = Dictionary(uniqueKeysWithValues: [
            kv(EtcdStateStore.docs + "DestinationRule/default/b", dr("b"), create: 5, mod: 9),
            kv(EtcdStateStore.docs + "DestinationRule/default/a", dr("a"), create: 7),
            kv(EtcdStateStore.registry + "spiffe://cluster.local/ns/default/sa/r|10.0.0.1:15006",
               "spiffe://cluster.local/ns/default/sa/r\tr\tdefault\tversion=v1\t10.0.0.1:15006\tHTTP\t-\treplica-2", create: 8),
            kv(EtcdStateStore.rev, "replica-2", create: 2, mod: 9),
        ])
        let st = try EtcdStateStore.state(from: kvs)
        XCTAssertEqual(st.version, 9)
        XCTAssertEqual(st.order, ["DestinationRule/default/b", "DestinationRule/default/a"])
        // Documents of one transaction share a create revision: the stored order decides, and
        // one it does not list comes after, by create revision.
        var same = kvs
        same.merge([kv(EtcdStateStore.docs + "DestinationRule/default/a", dr("a"), create: 5),
                    kv(EtcdStateStore.docs + "DestinationRule/default/c", dr("c"), create: 4),
                    kv(EtcdStateStore.order, "DestinationRule/default/a\nDestinationRule/default/b", create: 5)]) { _, b in b }
        XCTAssertEqual(try EtcdStateStore.state(from: same).order, ["DestinationRule/default/a", "DestinationRule/default/b", "DestinationRule/default/c"])
        let w = try XCTUnwrap(st.workloads["spiffe://cluster.local/ns/default/sa/r|10.0.0.1:15006"])
        XCTAssertEqual(w.holder, "replica-2")
        XCTAssertEqual(w.labels.map { "\($0.0)=\($0.1)" }, ["version=v1"])
        // What commit writes reads back the same.
        XCTAssertEqual(StateFiles.line(of: w) + "\t" + w.holder, kvs[EtcdStateStore.registry + "spiffe://cluster.local/ns/default/sa/r|10.0.0.1:15006"]!.valueText)
    }

    func testAKeyThatDoesNotHoldWhatItsNameSaysIsRefusedByName() {
        let cases: [(String, String)] = [
            // A document under another document's name.
            (EtcdStateStore.docs + "DestinationRule/default/a", dr("b")),
            // Two documents in one key.
            (EtcdStateStore.docs + "DestinationRule/default/a", dr("a") + "\n---\n" + dr("c")),
            // Not YAML an apply would take.
            (EtcdStateStore.docs + "DestinationRule/default/a", "kind: [unclosed"),
            // A registry line with a bad label, or under another workload's key.
            (EtcdStateStore.registry + "spiffe://cluster.local/ns/default/sa/r|10.0.0.1:1",
             "spiffe://cluster.local/ns/default/sa/r\tr\tdefault\tversion=v 1\t10.0.0.1:1\tHTTP\t-\tx"),
            (EtcdStateStore.registry + "spiffe://cluster.local/ns/default/sa/r|10.0.0.1:1",
             "spiffe://cluster.local/ns/default/sa/r\tr\tdefault\t\t10.0.0.9:1\tHTTP\t-\tx"),
            (EtcdStateStore.vips, "not a table"),
        ]
        for (key, value) in cases {
            XCTAssertThrowsError(try EtcdStateStore.state(from: Dictionary(uniqueKeysWithValues: [kv(key, value, create: 3)])), value) { e in
                XCTAssertTrue("\(e)".contains("etcd key \(key)"), "\(e)")
            }
        }
    }
}
