import XCTest
import MeshCore
import MeshConfig
@testable import MeshControl
@testable import MeshCA
@testable import MeshPKI
@testable import MeshControlWire
import MeshAgent
#if canImport(Glibc)
import Glibc
#endif

/// meshd's config store in process, on a temporary state directory: one validation with the
/// sidecar's code, errors moved back to the operator's file and line, honest outcomes, and
/// state files that are never read as an empty config.
final class ConfigStoreTests: XCTestCase {
    var dir = ""

    override func setUp() {
        var t = Array("/tmp/configstore-XXXXXX".utf8CString)
        dir = String(cString: mkdtemp(&t)!)
    }

    override func tearDown() { _ = system("rm -rf '\(dir)'") }

    static let split = """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: reviews}
        spec:
          hosts: [reviews]
          http:
          - route:
            - destination: {host: reviews, subset: v1}
              weight: 90
            - destination: {host: reviews, subset: v2}
              weight: 10
        ---
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: reviews}
        spec:
          host: reviews
          subsets:
          - {name: v1, labels: {version: v1}}
          - {name: v2, labels: {version: v2}}
        """

    func input(_ text: String, _ file: String = "in.yaml") -> [ConfigStore.Input] { [ConfigStore.Input(file: file, text: text)] }

    func testASecondVirtualServiceForAHostIsRefusedAtApplyNamingItsFileAndLine() throws {
        let store = try ConfigStore(stateDir: dir)
        let v = try store.apply(input(Self.split)).version
        let second = "# another team's route\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews-too}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n"
        XCTAssertThrowsError(try store.apply(input(second, "team.yaml"))) { e in
            XCTAssertEqual("\(e)", "team.yaml:6: document 1: VirtualService default/reviews-too: spec.hosts[0]: host \"reviews\" is already routed by VirtualService default/reviews (as reviews)")
        }
        XCTAssertEqual(store.version, v)
        XCTAssertEqual(store.documents().map(\.name), ["reviews", "reviews"])
    }

    func testTheWildcardHostIsRefusedAtApplyNotByEverySidecar() throws {
        let store = try ConfigStore(stateDir: dir)
        let wild = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: wild}\nspec:\n  hosts: [\"*.example.com\"]\n  http:\n  - route:\n    - destination: {host: reviews}\n"
        XCTAssertThrowsError(try store.apply(input(wild, "w.yaml"))) { e in
            XCTAssertTrue("\(e)".hasPrefix("w.yaml:5: document 1: VirtualService default/wild: spec.hosts[0]: wildcard hosts are not supported"), "\(e)")
        }
        XCTAssertEqual(store.version, 1)
    }

    func testThePushedConfigQuotesEveryValueAndParsesBack() throws {
        // Label values and a ServiceEntry host that YAML would read as something else unquoted.
        let store = try ConfigStore(stateDir: dir)
        try store.register(identity: "spiffe://cluster.local/ns/default/sa/reviews", service: "reviews", namespace: "default",
                       labels: [("app", "reviews"), ("version", "yes"), ("note", "1e3")], address: "127.0.0.1:15006")
        let se = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext}\nspec:\n  hosts: [\"api.example.com\"]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  endpoints: [{address: 127.0.0.1, labels: {flag: \"no\"}}]\n"
        _ = try store.apply(input(se))
        let (_, text) = store.proxyConfig()
        XCTAssertTrue(text.contains("labels: {\"app\": \"reviews\", \"version\": \"yes\", \"note\": \"1e3\"}"), text)
        XCTAssertNoThrow(try Bootstrap.checkPushed(text, namespace: "default", source: "test"))
    }

    func testReapplyingTheSameDocumentsChangesNothing() throws {
        let store = try ConfigStore(stateDir: dir)
        let first = try store.apply(input(Self.split))
        XCTAssertTrue(first.changed)
        XCTAssertEqual(first.documents.map(\.outcome), [.created, .created])
        let again = try store.apply(input(Self.split))
        XCTAssertFalse(again.changed)
        XCTAssertEqual(again.version, first.version)
        XCTAssertEqual(again.documents.map(\.outcome), [.unchanged, .unchanged])
        let empty = try store.apply(input("# nothing\n"))
        XCTAssertFalse(empty.changed)
        XCTAssertEqual(store.version, first.version)
        let gone = try store.apply(input("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: other}\n"), delete: true)
        XCTAssertFalse(gone.changed)
        XCTAssertEqual(gone.documents.map(\.outcome), [.notFound])
        let changed = try store.apply(input(Self.split.replacingFirst("weight: 90", "weight: 80").replacingFirst("weight: 10", "weight: 20")))
        XCTAssertEqual(changed.documents.map(\.outcome), [.configured, .unchanged])
        XCTAssertEqual(changed.version, first.version + 1)
    }

    func testAnErrorInTheSetNamesTheFileAndLineOfItsDocument() throws {
        let store = try ConfigStore(stateDir: dir)
        let vs = Self.split.components(separatedBy: "---")[0]
        let dr = "# rules\n" + Self.split.components(separatedBy: "---")[1].replacingFirst("name: v2, labels", "name: v9, labels")
        XCTAssertThrowsError(try store.apply([ConfigStore.Input(file: "a.yaml", text: dr), ConfigStore.Input(file: "b.yaml", text: vs)])) { e in
            XCTAssertTrue("\(e)".hasPrefix("b.yaml:10: document 1: VirtualService default/reviews: spec.http[0].route[1].destination"), "\(e)")
            XCTAssertTrue("\(e)".contains("subset \"v2\""), "\(e)")
        }
    }

    func testTheSameTextFromMeshctlLeavesAConfigDirDocumentItsOwn() throws {
        let store = try ConfigStore(stateDir: dir)
        _ = try store.apply([ConfigStore.Input(file: "d/a.yaml", text: Self.split, source: "config-dir:d/a.yaml")], replacing: ["config-dir:d/a.yaml"])
        let v = store.version
        let again = try store.apply(input(Self.split))
        XCTAssertFalse(again.changed)
        XCTAssertEqual(store.version, v)
        // The file is removed: what it owned goes, the identical meshctl apply took nothing over.
        let gone = try store.apply([], replacing: ["config-dir:d/a.yaml"])
        XCTAssertTrue(gone.changed)
        XCTAssertEqual(store.documents().count, 0)
    }

    func testANackIsShownWithItsErrorAndAnAckClearsIt() throws {
        let store = try ConfigStore(stateDir: dir)
        let id = "spiffe://cluster.local/ns/default/sa/reviews"
        let nonce = store.sent(identity: id, node: "127.0.0.1:1", version: 3)
        XCTAssertFalse(store.answered(identity: id, node: "127.0.0.1:1", version: 3, nonce: "stale", error: "x"))
        XCTAssertTrue(store.answered(identity: id, node: "127.0.0.1:1", version: 3, nonce: nonce, error: "refused: no cluster"))
        XCTAssertEqual(store.proxies().first?.nack, "version 3: refused: no cluster")
        XCTAssertEqual(store.proxies().first?.ackedVersion, 0)
        let n2 = store.sent(identity: id, node: "127.0.0.1:1", version: 4)
        XCTAssertTrue(store.answered(identity: id, node: "127.0.0.1:1", version: 4, nonce: n2, error: nil))
        XCTAssertNil(store.proxies().first?.nack)
        XCTAssertEqual(store.proxies().first?.ackedVersion, 4)
    }

    func testAnEarlierMeshdsEmptyAppliedFileStillLoads() throws {
        // What a meshd without the header line wrote once every document was deleted.
        try FileStore.writeAtomically("\(dir)/applied.yaml", "\n", mode: 0o600)
        XCTAssertEqual(try ConfigStore(stateDir: dir).documents().count, 0)
        try FileStore.writeAtomically("\(dir)/applied.yaml", "", mode: 0o600)
        XCTAssertThrowsError(try ConfigStore(stateDir: dir)) { e in XCTAssertTrue("\(e)".contains("applied.yaml: the file is empty"), "\(e)") }
    }

    func testHostsAreLowercaseNames() {
        XCTAssertTrue(Names.isHost("reviews.default.svc.cluster.local", wildcard: false))
        XCTAssertTrue(Names.isHost("*.example.com", wildcard: true))
        XCTAssertFalse(Names.isHost("*.example.com", wildcard: false))
        XCTAssertFalse(Names.isHost("Reviews", wildcard: false))
        XCTAssertFalse(Names.isHost("a..b", wildcard: false))
        XCTAssertFalse(Names.isHost("r\u{1B}x", wildcard: false))
    }

    func testFieldLineFollowsAPath() {
        let text = "a: 1\nspec:\n  http:\n  - route:\n    - destination: {host: x}\n    - destination:\n        host: y\n"
        XCTAssertEqual(ConfigStore.fieldLine(text, "spec.http[0].route[1].destination.host"), 7)
        XCTAssertEqual(ConfigStore.fieldLine(text, "spec.http[0].route[0]"), 5)
        XCTAssertEqual(ConfigStore.fieldLine(text, "spec.nothing"), 2)
    }

    func testStateFilesThatCannotBeReadStopTheStoreNamingThem() throws {
        let store = try ConfigStore(stateDir: dir)
        _ = try store.apply(input(Self.split))
        let applied = "\(dir)/applied.yaml"
        let good = try FileStore.read(applied)
        XCTAssertTrue(good.hasPrefix("# meshd: the config in force, documents: 2\n"), good)
        XCTAssertEqual(try ConfigStore(stateDir: dir).documents().count, 2)
        for (text, want) in [("", "applied.yaml: the file is empty"),
                             (good.replacingFirst("documents: 2", "documents: 1"), "applied.yaml: the header counts 1 document(s) but 2 were read"),
                             (good.replacingFirst("hosts: [reviews]", "hosts: [reviews"), "applied.yaml:"),
                             (good.replacingFirst("subsets:", "subsetz:"), "spec.subsetz: unknown field")] {
            try FileStore.writeAtomically(applied, text, mode: 0o600)
            XCTAssertThrowsError(try ConfigStore(stateDir: dir)) { e in XCTAssertTrue("\(e)".contains(want) && "\(e)".contains(dir), "\(e)") }
        }
        try FileStore.writeAtomically(applied, good, mode: 0o600)
        try FileStore.writeAtomically("\(dir)/registry.txt", "spiffe://cluster.local/ns/default/sa/r\tr\tdefault\tapp=r\t127.0.0.1:1\nbroken\n", mode: 0o600)
        XCTAssertThrowsError(try ConfigStore(stateDir: dir)) { e in XCTAssertTrue("\(e)".contains("registry.txt:2: expected 5 tab-separated fields"), "\(e)") }
        FileStore.remove("\(dir)/registry.txt")
        XCTAssertEqual(mkdir("\(dir)/sources.txt.d", 0o700), 0)
        XCTAssertNoThrow(try ConfigStore(stateDir: dir))
    }
}

final class PrintableTests: XCTestCase {
    func testControlCharactersAreEscapedAndTextIsKept() {
        XCTAssertEqual(Printable.escaped("plain, ünïcode ✓"), "plain, ünïcode ✓")
        XCTAssertEqual(Printable.escaped("a\u{1B}[2Jb"), "a\\x1b[2Jb")
        XCTAssertEqual(Printable.escaped("x\u{9B}31m\u{7F}"), "x\\u{9b}31m\\x7f")
        XCTAssertEqual(Printable.escaped("one\ntwo\r\t"), "one\\ntwo\\r\\t")
        XCTAssertEqual(Printable.escaped("one\ntwo\tx", keepNewlines: true), "one\ntwo\tx")
        XCTAssertEqual(Printable.escaped("evil\u{202E}txt.exe"), "evil\\u{202e}txt.exe")
        XCTAssertEqual(Printable.escaped("\u{0}"), "\\x00")
    }

    func testConfigErrorsEscapeWhatTheyEcho() {
        let e = ConfigError(file: "f\u{1B}.yaml", path: "spec.x", line: 3, message: "got \"\u{1B}]0;t\u{7}\"")
        XCTAssertEqual(e.description, "f\\x1b.yaml:3: spec.x: got \"\\x1b]0;t\\x07\"")
    }
}

final class ConfigUploadTests: XCTestCase {
    func testFilesKeepTheirNamesAndBytes() throws {
        let files = [(name: "dir/a b.yaml", text: "kind: X\n"), (name: "ü+%.yaml", text: ""), (name: "c.yaml", text: "file 3 x\nzz")]
        let decoded = try ConfigUpload.decode(Array(ConfigUpload.encode(files).utf8))
        XCTAssertEqual(decoded.map(\.name), files.map(\.name))
        XCTAssertEqual(decoded.map(\.text), files.map(\.text))
    }

    func testMalformedUploadsAreRefused() {
        for bad in ["file 10 a\nshort\n", "file x a\n\n", "nofile\n", "file 1 a\nxy", "file -1 a\n\n"] {
            XCTAssertThrowsError(try ConfigUpload.decode(Array(bad.utf8)), bad)
        }
    }
}

extension String {
    func replacingFirst(_ a: String, _ b: String) -> String {
        guard let r = range(of: a) else { return self }
        return replacingCharacters(in: r, with: b)
    }
}

final class YAMLQuotedTests: XCTestCase {
    func testQuotedScalarsReadBackAsTheSameString() throws {
        for s in ["*.example.com", "yes", "1e3", "- x", "a: b", "#c", "", "\"q\" \\ back", "tab\tnl\ncr\r", "\u{1B}[31m", "\u{85}\u{2028}", "ünï ✓", "&anchor", "!tag", "~"] {
            let doc = try YAML.parseDocuments("k: \(YAML.quoted(s))\n")
            guard case .scalar(let v)? = doc.first?.node.asMapping?["k"] else { return XCTFail("no scalar for \(s.debugDescription)") }
            XCTAssertEqual(v.value, s)
            XCTAssertTrue(v.quoted)
        }
    }
}
