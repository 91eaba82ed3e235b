import XCTest
import MeshCore
import MeshPKI
import MeshCA
import MeshControlWire
@testable import MeshControl
#if canImport(Glibc)
import Glibc
#endif

/// Config pushes as deltas (ConfigDelta.swift, DeltaPushes.swift): what is malformed or out of
/// bounds is refused with a reason and never crashes; the blocks of a text join back to it byte
/// for byte; a delta applied to its base gives exactly the new text, on real rendered configs and
/// after random edits; a push carrying a delta reads back as written; meshd keeps a bounded set of
/// recent texts and sends a delta only against a text it knows and only when it is small.
final class ConfigDeltaTests: XCTestCase {
    var dirs: [String] = []

    override func tearDown() { for d in dirs { _ = system("rm -rf '\(d)'") } }

    func tempDir() -> String {
        var t = Array("/tmp/delta-XXXXXX".utf8CString)
        let d = String(cString: mkdtemp(&t)!)
        dirs.append(d)
        return d
    }

    func refusal(_ encoded: String, file: StaticString = #filePath, line: UInt = #line) -> String {
        do {
            let d = try ConfigDelta(decoding: encoded)
            XCTFail("accepted \(Printable.escaped(encoded)) as \(d)", file: file, line: line)
            return ""
        } catch {
            return error.message
        }
    }

    // MARK: refusals first

    func testMalformedAndOutOfBoundsDeltasAreRefusedWithAReason() {
        let cases: [(String, String)] = [
            ("", "cut short"),
            ("op 1 0 0\n", "header"),
            ("ops  1 0 0\n", "expected a decimal number"),
            ("ops 1 0 0", "cut short"),
            ("ops -1 0 0\n", "expected a decimal number"),
            ("ops 01 0 0\n", "leading zero"),
            ("ops 1 0 5\n", "cut short: 0 of 1 operations"),
            ("ops 2 3 5\nc 0 1\n", "cut short: 1 of 2 operations"),
            ("ops 1 3 5\nc 2 2\n", "copies blocks 2..<4 of a base of 3"),
            ("ops 1 3 5\nc 4 1\n", "copies blocks 4..<5 of a base of 3"),
            ("ops 1 3 5\nc 0 0\n", "a copy of no blocks"),
            ("ops 1 3 5\nc 1 2", "cut short"),
            ("ops 1 3 5\nc 9999999999 9999999999\n", "copies blocks"),
            ("ops 1 3 5\nl 6\nabcdef", "longer than the declared size 5"),
            ("ops 1 3 5\nl 5\nabc", "cut short"),
            ("ops 1 3 5\nl 0\n", "an empty literal"),
            ("ops 2 0 5\nl 3\nabcl 3\nabc", "longer than the declared size 5"),
            ("ops 1 3 5\nx 1\n", "expected c or l"),
            ("ops 1 3 5\nc1 1\n", "after c"),
            ("ops 12345678901 0 0\n", "more than 10 digits"),
            ("ops 2000000 0 0\n", "2000000 operations (at most 1048576)"),
            ("ops 0 0 99999999\n", "a text of 99999999 bytes (at most 67108864)"),
            ("ops 0 99999999 0\n", "a base of 99999999 blocks"),
            ("ops 0 0 0\ntrailing", "8 bytes after the last operation"),
        ]
        for (encoded, expected) in cases {
            let why = refusal(encoded)
            XCTAssertTrue(why.contains(expected), "\(Printable.escaped(encoded)): \(why)")
        }
    }

    func testApplyingRefusesAnotherBaseAndAWrongSizeWithoutCrashing() {
        let base = "a: 1\nb: 2\nc: 3\n"   // three blocks
        XCTAssertEqual(ConfigDelta.blocks(Array(base.utf8)).count, 3)
        let cases: [(ConfigDelta, String)] = [
            (ConfigDelta(baseBlocks: 4, size: 5, ops: [.copy(start: 0, count: 1)]), "made against a base of 4 blocks, the text held has 3"),
            (ConfigDelta(baseBlocks: 3, size: 5, ops: [.copy(start: 0, count: 2)]), "past the declared size 5"),
            (ConfigDelta(baseBlocks: 3, size: 9, ops: [.copy(start: 0, count: 1)]), "makes 5 bytes, not the declared 9"),
            (ConfigDelta(baseBlocks: 3, size: 9, ops: [.copy(start: -1, count: 1)]), "copies blocks -1..<0"),
            (ConfigDelta(baseBlocks: 3, size: 9, ops: [.copy(start: 2, count: 2)]), "copies blocks 2..<4"),
            (ConfigDelta(baseBlocks: 3, size: 9, ops: [.copy(start: 1, count: 0)]), "copies blocks 1..<1"),
            (ConfigDelta(baseBlocks: 3, size: Int.max, ops: []), "at most"),
            (ConfigDelta(baseBlocks: 3, size: 2, ops: [.literal([])]), "past the declared size"),
            (ConfigDelta(baseBlocks: 3, size: 2, ops: [.literal(Array("abc".utf8))]), "past the declared size 2"),
            (ConfigDelta(baseBlocks: 3, size: 7, ops: [.copy(start: 0, count: 1), .literal([0xC3, 0x28])]), "not UTF-8"),
        ]
        for (d, expected) in cases {
            XCTAssertThrowsError(try d.apply(to: base), "\(d)") { e in
                XCTAssertTrue("\(e)".contains(expected), "\(d): \(e)")
            }
        }
    }

    func testAPushWithABadDeltaIsNotAPushAndTheSidecarIsToldWhy() {
        let base = "kind: ProxyConfig\nspec:\n  clusters: []\n", new = "kind: ProxyConfig\nspec:\n  clusters: [x]\n"
        let d = ConfigStream.Push.Delta(base: MeshCrypto.digestHex(base), target: MeshCrypto.digestHex(new), patch: ConfigDelta.make(from: base, to: new))
        let good = ConfigStream.Push(version: 3, nonce: "ab", digest: "0f", delta: d, bundle: "PEM\n").body
        XCTAssertNotNil(ConfigStream.Push(body: good))
        XCTAssertNil(ConfigStream.Push.deltaRefusal(good))
        let head = "version: 3 ab 0f\n"
        let bad: [(String, String)] = [
            (head + "delta \(d.base)\n" + d.patch.encoded, "delta BASE_DIGEST NEW_DIGEST"),
            (head + "delta \(d.base) \(d.target) x\n" + d.patch.encoded, "delta BASE_DIGEST NEW_DIGEST"),
            (head + "delta \(d.base) NOTHEX\n" + d.patch.encoded, "delta BASE_DIGEST NEW_DIGEST"),
            (head + "delta \(d.base) \(d.target)", "cut short"),
            (head + "delta \(d.base) \(d.target)\nops 1 3 5\nc 3 1\n", "copies blocks 3..<4 of a base of 3"),
            (head + "delta \(d.base) \(d.target)\n" + d.patch.encoded + "junk after", "10 bytes after the delta that are not a trust bundle section"),
            (head + "delta \(d.base) \(d.target)\n" + d.patch.encoded + ConfigStream.Push.bundleMarker, "not a trust bundle section"),
        ]
        for (body, expected) in bad {
            XCTAssertNil(ConfigStream.Push(body: body), Printable.escaped(body))
            let why = ConfigStream.Push.deltaRefusal(body)
            XCTAssertTrue(why?.message.contains(expected) == true, "\(Printable.escaped(body)): \(String(describing: why))")
        }
        // A full push is not a delta push: no refusal to report.
        XCTAssertNil(ConfigStream.Push.deltaRefusal(ConfigStream.Push(version: 1, nonce: "a", digest: "b", text: base).body))
    }

    func testADeltaForAnotherTextOrGivingAnotherDigestIsRefused() throws {
        let base = "kind: ProxyConfig\nspec:\n  clusters: []\n", new = "kind: ProxyConfig\nspec:\n  clusters: [x]\n"
        let patch = ConfigDelta.make(from: base, to: new)
        let d = ConfigStream.Push.Delta(base: MeshCrypto.digestHex(base), target: MeshCrypto.digestHex(new), patch: patch)
        XCTAssertEqual(try d.apply(to: base, heldDigest: MeshCrypto.digestHex(base)), new)
        XCTAssertThrowsError(try d.apply(to: base, heldDigest: "")) { XCTAssertTrue("\($0)".contains("the text held is none"), "\($0)") }
        XCTAssertThrowsError(try d.apply(to: base, heldDigest: MeshCrypto.digestHex("other"))) { XCTAssertTrue("\($0)".contains("the text held is"), "\($0)") }
        // Same block count, another text: the result's digest gives it away.
        let other = "kind: ProxyConfog\nspec:\n  clusters: []\n"   // same size, another first block
        var forged = d
        forged.base = MeshCrypto.digestHex(other)
        XCTAssertThrowsError(try forged.apply(to: other, heldDigest: MeshCrypto.digestHex(other))) {
            XCTAssertTrue("\($0)".contains("not \(d.target)"), "\($0)")
        }
        var wrongTarget = d
        wrongTarget.target = MeshCrypto.digestHex("something else")
        XCTAssertThrowsError(try wrongTarget.apply(to: base, heldDigest: d.base)) { XCTAssertTrue("\($0)".contains("has digest"), "\($0)") }
    }

    func testTheRequestNamesItsBaseAndABadOneCountsAsNone() {
        let base = MeshCrypto.digestHex("kind: ProxyConfig\n")
        let r = ConfigStream.Request(version: 3, node: "127.0.0.1:1", admin: "", digest: "00ff", base: base)
        XCTAssertTrue(r.query.hasSuffix("&base=\(base)"), r.query)
        XCTAssertEqual(ConfigStream.Request(query: ["version": "3", "node": "127.0.0.1:1", "digest": "00ff", "base": base]), r)
        XCTAssertFalse(ConfigStream.Request(version: 3, node: "n", admin: "").query.contains("base="))
        for bad in ["ABCD", "12 4", "xyz", String(repeating: "a", count: 65), "0f&x=1"] {
            XCTAssertEqual(ConfigStream.Request(query: ["version": "1", "base": bad]).base, "", bad)
        }
    }

    // MARK: blocks

    func testBlocksStartWhereTheRendererStartsItemsAndJoinBackExactly() {
        let text = "apiVersion: v1\nspec:\n  clusters:\n  - name: \"a.b\"\n    tls: ISTIO_MUTUAL\n    endpoints:\n      - {address: \"1\"}\n      - {address: \"2\"}\n\n  routes: []\n---\nkind: X\nspec:\n    deep: 1\n  - tail"
        let bytes = Array(text.utf8)
        let blocks = ConfigDelta.blocks(bytes).map { String(decoding: bytes[$0], as: UTF8.self) }
        XCTAssertEqual(blocks, ["apiVersion: v1\n", "spec:\n", "  clusters:\n", "  - name: \"a.b\"\n    tls: ISTIO_MUTUAL\n    endpoints:\n",
                                "      - {address: \"1\"}\n", "      - {address: \"2\"}\n\n", "  routes: []\n", "---\n", "kind: X\n",
                                "spec:\n    deep: 1\n", "  - tail"])
        XCTAssertEqual(blocks.joined(), text)
        XCTAssertEqual(ConfigDelta.blocks([]), [])
        XCTAssertEqual(ConfigDelta.blocks(Array("\n\n".utf8)), [0..<2])
    }

    // MARK: real rendered configs

    static func id(_ ns: String, _ sa: String) -> String { "spiffe://cluster.local/ns/\(ns)/sa/\(sa)" }

    /// A store with `services` hosts (DestinationRules, one apply) and two registered workloads.
    func store(services: Int) throws -> ConfigStore {
        let store = try ConfigStore(stateDir: tempDir())
        var docs: [String] = []
        for i in 0..<services {
            docs.append("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: svc\(i), namespace: default}\nspec:\n  host: svc\(i)\n  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n")
        }
        _ = try store.apply([ConfigStore.Input(file: "mesh.yaml", text: docs.joined(separator: "---\n"))])
        try store.register(identity: Self.id("default", "svc1"), service: "svc1", namespace: "default", labels: [("app", "svc1"), ("version", "v1")], address: "127.0.0.1:15006")
        try store.register(identity: Self.id("default", "svc2"), service: "svc2", namespace: "default", labels: [("app", "svc2")], address: "127.0.0.1:15016")
        return store
    }

    static func route(_ timeout: String) -> String {
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: svc7, namespace: default}\nspec:\n  hosts: [svc7]\n  http:\n  - name: main\n    timeout: \(timeout)\n    route:\n    - destination: {host: svc7}\n"
    }

    func testRealConfigsRoundTripAndOneRouteChangeIsASmallDelta() throws {
        let store = try store(services: 100)
        let caller = Self.id("default", "web")
        let t0 = store.proxyConfig(identity: caller, node: "n").text
        XCTAssertEqual(ConfigDelta.blocks(Array(t0.utf8)).map { String(decoding: Array(t0.utf8)[$0], as: UTF8.self) }.joined(), t0)
        _ = try store.apply([ConfigStore.Input(file: "vs.yaml", text: Self.route("3s"))])
        let t1 = store.proxyConfig(identity: caller, node: "n").text
        _ = try store.apply([ConfigStore.Input(file: "vs.yaml", text: Self.route("4s"))])
        try store.register(identity: Self.id("default", "svc1"), service: "svc1", namespace: "default", labels: [("app", "svc1"), ("version", "v2")], address: "127.0.0.1:15026")
        let t2 = store.proxyConfig(identity: caller, node: "n").text
        XCTAssertGreaterThan(t0.utf8.count, 20_000)
        for (a, b) in [(t0, t1), (t1, t2), (t0, t2), (t2, t0), (t1, t1), ("", t1), (t1, "")] {
            let d = ConfigDelta.make(from: a, to: b)
            XCTAssertEqual(try d.apply(to: a), b)
            let decoded = try ConfigDelta(decoding: d.encoded)
            XCTAssertEqual(decoded, d)
            XCTAssertEqual(try decoded.apply(to: a), b)
        }
        // A VirtualService added for one host, then its timeout changed: a few hundred bytes, not the whole text.
        for (a, b) in [(t0, t1), (t1, t2)] {
            let size = ConfigDelta.make(from: a, to: b).encoded.utf8.count
            XCTAssertLessThan(size, 1_200, "delta \(size) bytes for a text of \(b.utf8.count)")
        }
        // The same text: one copy of every block.
        let same = ConfigDelta.make(from: t1, to: t1)
        XCTAssertEqual(same.ops, [.copy(start: 0, count: ConfigDelta.blocks(Array(t1.utf8)).count)])
        // A push with the delta and the bundle reads back as written.
        let d = ConfigStream.Push.Delta(base: MeshCrypto.digestHex(t1), target: MeshCrypto.digestHex(t2), patch: ConfigDelta.make(from: t1, to: t2))
        for bundle in ["", "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n"] {
            let push = ConfigStream.Push(version: 12, nonce: "c0ffee", digest: "0011", delta: d, bundle: bundle)
            let back = try XCTUnwrap(ConfigStream.Push(body: push.body))
            XCTAssertEqual(back, push)
            XCTAssertEqual(back.text, "")
            XCTAssertEqual(try back.delta?.apply(to: t1, heldDigest: d.base), t2)
        }
    }

    /// A deterministic generator (SplitMix64).
    struct Rand {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E3779B97F4A7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58476D1CE4E5B9
            z = (z ^ (z >> 27)) &* 0x94D049BB133111EB
            return z ^ (z >> 31)
        }
        mutating func below(_ n: Int) -> Int { Int(next() % UInt64(max(1, n))) }
    }

    func testRandomEditsToA200ClusterConfigApplyToExactlyTheNewText() throws {
        let base = try store(services: 200).proxyConfig(identity: Self.id("default", "web"), node: "n").text
        let bytes = Array(base.utf8)
        let blocks = ConfigDelta.blocks(bytes).map { Array(bytes[$0]) }
        XCTAssertGreaterThan(blocks.count, 400)
        var rng = Rand(state: 17)
        let pieces: [[UInt8]] = ["\n", " ", "  - ", "      - ", "---\n", "x", "é", "\t"].map { Array($0.utf8) }
        for round in 0..<150 {
            var edited = blocks
            for _ in 0..<(1 + rng.below(6)) {
                switch rng.below(7) {
                case 0 where !edited.isEmpty: edited.remove(at: rng.below(edited.count))
                case 1 where !edited.isEmpty: edited.insert(edited[rng.below(edited.count)], at: rng.below(edited.count + 1))
                case 2:
                    let i = rng.below(1000)
                    edited.insert(Array("  - name: \"new\(i).default\"\n    tls: ISTIO_MUTUAL\n    endpoints:\n      []\n".utf8), at: rng.below(edited.count + 1))
                case 3 where !edited.isEmpty:
                    // Bytes inserted inside a block, possibly making new block boundaries.
                    let b = rng.below(edited.count)
                    edited[b].insert(contentsOf: pieces[rng.below(pieces.count)], at: rng.below(edited[b].count + 1))
                case 4 where edited.count > 1:
                    edited.swapAt(rng.below(edited.count), rng.below(edited.count))
                case 5 where !edited.isEmpty:
                    let b = rng.below(edited.count)
                    if !edited[b].isEmpty { edited[b].remove(at: rng.below(edited[b].count)) }
                default:
                    if rng.below(4) == 0 { edited = Array(edited.prefix(rng.below(edited.count + 1))) }
                }
            }
            let new = String(decoding: edited.flatMap { $0 }, as: UTF8.self)
            let d = ConfigDelta.make(from: base, to: new)
            let decoded = try ConfigDelta(decoding: d.encoded)
            XCTAssertEqual(decoded, d, "round \(round)")
            let got = try decoded.apply(to: base)
            XCTAssertEqual(got, new, "round \(round)")
            XCTAssertEqual(try ConfigDelta.make(from: new, to: base).apply(to: new), base, "round \(round), back")
            if got != new { break }
        }
    }

    func testDamagedEncodingsAreRefusedOrApplyWithinTheirBoundsNeverCrash() throws {
        let store = try store(services: 30)
        let caller = Self.id("default", "web")
        let base = store.proxyConfig(identity: caller, node: "n").text
        _ = try store.apply([ConfigStore.Input(file: "vs.yaml", text: Self.route("3s"))])
        let good = Array(ConfigDelta.make(from: base, to: store.proxyConfig(identity: caller, node: "n").text).encoded.utf8)
        var rng = Rand(state: 99)
        var refused = 0, applied = 0
        let interesting: [UInt8] = Array("0123456789 \ncl-".utf8) + [0, 255]
        for _ in 0..<3000 {
            var b = good
            for _ in 0..<(1 + rng.below(3)) {
                switch rng.below(4) {
                case 0: if !b.isEmpty { b[rng.below(b.count)] = interesting[rng.below(interesting.count)] }
                case 1: b.insert(interesting[rng.below(interesting.count)], at: rng.below(b.count + 1))
                case 2: if !b.isEmpty { b.remove(at: rng.below(b.count)) }
                default: b = Array(b.prefix(rng.below(b.count + 1)))
                }
            }
            guard let (d, _) = try? ConfigDelta.decode(b[...]) else { refused += 1; continue }
            if let text = try? d.apply(to: base) {
                XCTAssertEqual(text.utf8.count, d.size)
                applied += 1
            } else {
                refused += 1
            }
        }
        XCTAssertGreaterThan(refused, 1000)
        XCTAssertGreaterThan(applied, 0)
    }

    // MARK: meshd

    func testMeshdKeepsFewTextsPerScopeAndABoundOverall() {
        let p = DeltaPushes()
        for i in 0..<6 { p.remember(scope: "a|*", digest: "d\(i)", text: "text \(i)\n") }
        XCTAssertEqual((0..<6).map { p.knows("d\($0)") }, [false, false, true, true, true, true], "the newest 4 of a scope")
        // A text two scopes list stays while either lists it.
        p.remember(scope: "b|*", digest: "d5", text: "text 5\n")
        for i in 6..<10 { p.remember(scope: "a|*", digest: "d\(i)", text: "text \(i)\n") }
        XCTAssertTrue(p.knows("d5"))
        XCTAssertFalse(p.knows("d4"))
        XCTAssertEqual(p.kept.texts, 5)
        XCTAssertEqual(p.kept.bytes, 5 * 7)
        // Overall: past maxTexts the least recently rendered go.
        let q = DeltaPushes()
        for i in 0..<(DeltaPushes.maxTexts + 10) { q.remember(scope: "s\(i)|*", digest: "t\(i)", text: "x") }
        XCTAssertEqual(q.kept.texts, DeltaPushes.maxTexts)
        XCTAssertFalse(q.knows("t9"))
        XCTAssertTrue(q.knows("t10"))
        // Bytes: one big text over the bound evicts the older ones, never itself.
        let big = String(repeating: "y", count: DeltaPushes.maxBytes)
        q.remember(scope: "big|*", digest: "big", text: big)
        XCTAssertTrue(q.knows("big"))
        XCTAssertEqual(q.kept.texts, 1)
    }

    func testMeshdSendsADeltaOnlyAgainstAKnownBaseAndWhenItIsSmall() throws {
        var t = Array("/tmp/delta-ca-XXXXXX".utf8CString)
        let caDir = String(cString: mkdtemp(&t)!)
        dirs.append(caDir)
        let server = try MeshdServer(ca: try CertificateAuthority(stateDir: caDir, caDir: nil, trustDomain: "cluster.local", certTTL: 600))
        let store = try store(services: 100)
        server.store = store
        let caller = Self.id("default", "web")
        func ask(digest: String, base: String) throws -> (push: ConfigStream.Push, bytes: Int) {
            let a = try XCTUnwrap(server.configAnswer(MeshdServer.ConfigWait(identity: caller, node: "n", digest: digest, base: base)))
            XCTAssertEqual(a.status, 200)
            return (try XCTUnwrap(ConfigStream.Push(body: a.body)), a.body.utf8.count)
        }
        func counters() -> [String] { store.scoped.deltas.metrics().split(separator: "\n").filter { !$0.hasPrefix("#") }.map(String.init) }
        let first = try ask(digest: "", base: "")
        XCTAssertNil(first.push.delta)
        XCTAssertFalse(first.push.bundle.isEmpty, "the trust bundle travels with the config")
        let held = first.push.text
        _ = try store.apply([ConfigStore.Input(file: "vs.yaml", text: Self.route("3s"))])
        let full = store.proxyConfig(identity: caller, node: "n")
        // The sidecar names the text it holds: a delta, far smaller, giving exactly the full text.
        let second = try ask(digest: first.push.digest, base: MeshCrypto.digestHex(held))
        let d = try XCTUnwrap(second.push.delta)
        XCTAssertEqual(second.push.digest, full.digest)
        XCTAssertEqual(second.push.bundle, full.bundle)
        XCTAssertEqual(try d.apply(to: held, heldDigest: MeshCrypto.digestHex(held)), full.text)
        XCTAssertLessThan(second.bytes * 10, first.bytes)
        // No base, or one meshd does not know: the whole text.
        XCTAssertNil(try ask(digest: first.push.digest, base: "").push.delta)
        let unknown = try ask(digest: first.push.digest, base: MeshCrypto.digestHex("a text meshd never rendered"))
        XCTAssertNil(unknown.push.delta)
        XCTAssertEqual(unknown.push.text, full.text)
        XCTAssertEqual(counters(), ["meshd_config_pushes_total{form=\"full\"} 3", "meshd_config_pushes_total{form=\"delta\"} 1",
                                    "meshd_config_push_bytes_total{form=\"full\"} \(first.bytes + 2 * unknown.bytes)",
                                    "meshd_config_push_bytes_total{form=\"delta\"} \(second.bytes)"])
        XCTAssertTrue(server.metrics().contains("meshd_config_pushes_total{form=\"delta\"} 1\n"))
        // A change that rewrites most of the text: the delta would not be under half, so the whole text.
        let before = store.proxyConfig(identity: caller, node: "n")
        var docs: [String] = []
        for i in 0..<300 {
            docs.append("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: e\(i), namespace: default}\nspec:\n  hosts: [ext\(i).example.com]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  endpoints: [{address: 10.1.\(i / 200).\(i % 200 + 1)}]\n")
        }
        _ = try store.apply([ConfigStore.Input(file: "entries.yaml", text: docs.joined(separator: "---\n"))])
        let big = try ask(digest: before.digest, base: before.textDigest)
        XCTAssertNil(big.push.delta, "more than half the text is new")
        XCTAssertEqual(big.push.text, store.proxyConfig(identity: caller, node: "n").text)
    }
}
