import Dispatch
import XCTest
@testable import MeshYAML

/// `lookup`/`resolve` cost: the anchor table built at most once per document (never without an
/// alias), each alias found by halving among its name's definitions, with the same answers as the
/// linear rule, also in edited trees.
final class YAMLAnchorTableTests: XCTestCase {
    /// The size of the large documents here (a 500-workload List is about this).
    static let size = 100_000

    /// A List-like document of exactly `size` nodes: `base: &base {k: v}`, then items
    /// `{<<: *base, name: wN, f1: x, ...}` (`{name: wN, ...}` without `merge`), then padding.
    static func largeDocument(merge: Bool) -> (text: String, items: Int) {
        let fields = (1...22).map { "f\($0): x" }.joined(separator: ", ")
        let perItem = 1 + (merge ? 2 : 0) + 2 + 22 * 2
        let head = 7  // root, base key, base mapping, k, v, items key, items sequence
        let items = (size - head - 2) / perItem
        var text = "base: &base {k: v}\nitems:\n"
        for i in 0..<items {
            text += "- {" + (merge ? "<<: *base, " : "") + "name: w\(i), \(fields)}\n"
        }
        let pad = size - head - items * perItem - 2  // pad key and its sequence
        text += "pad: [" + Array(repeating: "x", count: pad).joined(separator: ", ") + "]\n"
        return (text, items)
    }

    static func nodeCount(_ n: YAMLNode) -> Int {
        var count = 0
        YAMLDocument.walk(n) { _ in count += 1; return true }
        return count
    }

    func testTwoThousandLookupsInAHundredThousandNodesBuildTheTableOnce() throws {
        let (text, count) = YAMLAnchorTableTests.largeDocument(merge: true)
        let doc = parseOK(text).documents[0]
        let root = try XCTUnwrap(doc.root)
        XCTAssertEqual(YAMLAnchorTableTests.nodeCount(root), YAMLAnchorTableTests.size)
        let items = try XCTUnwrap(root["items"]?.items)
        XCTAssertEqual(items.count, count)
        XCTAssertGreaterThanOrEqual(count, 2000)
        XCTAssertEqual(doc.anchorTableBuilds, 0)  // parsing builds nothing

        let clock = ContinuousClock()
        let started = clock.now
        for i in 0..<2000 {
            // through the merge: each of these needs the alias's definition
            XCTAssertEqual(doc.lookup(items[i], "k")?.scalar, "v", "item \(i)")
            XCTAssertNil(doc.lookup(items[i], "missing"), "item \(i)")
            XCTAssertEqual(doc.resolve(try XCTUnwrap(items[i]["<<"])).anchor, "base", "item \(i)")
        }
        let elapsed = clock.now - started
        XCTAssertLessThan(elapsed, .seconds(3), "2,000 lookups took \(elapsed)")  // each once walked all 100,000 nodes
        XCTAssertEqual(doc.anchorTableBuilds, 1)

        // a copy shares the table; a changed root gets a new one, and the lookup sees the change
        let copy = doc
        XCTAssertEqual(copy.lookup(items[0], "k")?.scalar, "v")
        XCTAssertEqual(copy.anchorTableBuilds, 1)
        var edited = doc
        _ = edited.root?.withValue("base") { $0.set("k", .string("changed")) }
        XCTAssertEqual(edited.anchorTableBuilds, 0)
        XCTAssertEqual(edited.lookup(items[0], "k")?.scalar, "changed")
        XCTAssertEqual(edited.anchorTableBuilds, 1)
        XCTAssertEqual(doc.lookup(items[0], "k")?.scalar, "v")  // the original keeps its tree and table
        XCTAssertEqual(doc.anchorTableBuilds, 1)
        XCTAssertEqual(copy, doc)
        XCTAssertNotEqual(edited, doc)
        var replaced = doc
        replaced.root = YAMLNode.mapping([("base", YAMLNode(kind: .mapping([YAMLPair(key: .string("k"), value: .string("new"))],
                                                                             flow: false), anchor: "base"))])
        XCTAssertEqual(replaced.lookup(items[0], "k")?.scalar, "new")
        XCTAssertEqual(replaced.anchorTableBuilds, 1)

        // documents are Sendable: lookups from several threads at once still build one table
        let fresh = parseOK(text).documents[0]
        let freshItems = try XCTUnwrap(fresh.root?["items"]?.items)
        DispatchQueue.concurrentPerform(iterations: 8) { t in
            for i in stride(from: t, to: 2000, by: 8) {
                XCTAssertEqual(fresh.lookup(freshItems[i], "k")?.scalar, "v")
            }
        }
        XCTAssertEqual(fresh.anchorTableBuilds, 1)
    }

    func testADocumentWithoutAliasesNeverBuildsTheTable() throws {
        let (text, _) = YAMLAnchorTableTests.largeDocument(merge: false)
        let doc = parseOK(text).documents[0]
        let root = try XCTUnwrap(doc.root)
        let items = try XCTUnwrap(root["items"]?.items)
        let clock = ContinuousClock()
        let started = clock.now
        for i in 0..<2000 {
            XCTAssertEqual(doc.lookup(items[i], "name")?.scalar, "w\(i)")
            XCTAssertNil(doc.lookup(items[i], "k"))
            XCTAssertEqual(doc.resolve(items[i]), items[i])
        }
        XCTAssertLessThan(clock.now - started, .seconds(3))
        XCTAssertEqual(doc.anchorTableBuilds, 0)
        // a merge of an inline mapping needs no table either
        let inline = parseOK("m: {<<: {k: v}, own: 1}\n").documents[0]
        XCTAssertEqual(inline.lookup(try XCTUnwrap(inline.root?["m"]), "k")?.scalar, "v")
        XCTAssertEqual(inline.anchorTableBuilds, 0)
    }

    /// 50,000 `&a` and 50,000 `*a` alternating in one merge list: each alias's definition is the `&a`
    /// just before it (all different, so every one is searched). The linear scan per alias was
    /// 1.25e9 steps.
    func testFiftyThousandDefinitionsAndAliasesOfOneName() throws {
        let pairs = 49_995  // + 9 other nodes: 99,999
        var text = "m:\n  own: 1\n  <<: ["
        for i in 0..<pairs {
            text += i == pairs - 1 ? "&a {last: yes}, *a" : "&a {}, *a, "
        }
        text += "]\n"
        let doc = parseOK(text).documents[0]
        let m = try XCTUnwrap(doc.root?["m"])
        XCTAssertEqual(YAMLAnchorTableTests.nodeCount(try XCTUnwrap(doc.root)), 9 + 2 * pairs)
        let merged = try XCTUnwrap(m["<<"]?.items)

        let clock = ContinuousClock()
        let started = clock.now
        XCTAssertEqual(doc.lookup(m, "own")?.scalar, "1")
        XCTAssertEqual(doc.lookup(m, "last")?.scalar, "yes")  // every merged mapping searched once
        XCTAssertNil(doc.lookup(m, "missing"))
        for i in stride(from: 1, to: merged.count, by: 2) {
            let target = doc.resolve(merged[i])
            XCTAssertEqual(target.line, merged[i - 1].line, "alias \(i)")
            XCTAssertEqual(target.column, merged[i - 1].column, "alias \(i)")
        }
        let elapsed = clock.now - started
        XCTAssertLessThan(elapsed, .seconds(3), "took \(elapsed)")
        XCTAssertEqual(doc.anchorTableBuilds, 1)
    }

    /// The definition found by halving is the one the linear rule names (walk the definitions in
    /// document order, stop at the first parsed one at or after the alias, take the one before;
    /// for an alias built in code take the last), also where edits left parsed nodes out of their
    /// input order and built nodes (line 0) among them. Thousands of random trees, fixed seed.
    func testHalvingAgreesWithTheLinearRuleInEditedTrees() throws {
        var rng = SplitMix64(state: 0x616e_6368_6f72_7321)
        var checked = 0
        for round in 0..<2000 {
            var nodes: [YAMLNode] = []
            for _ in 0..<(1 + rng.below(40)) {
                let line = rng.below(4) == 0 ? 0 : 1 + rng.below(12)
                let column = line == 0 ? 0 : 1 + rng.below(5)
                let name = ["a", "b"][rng.below(2)]
                if rng.below(2) == 0 {
                    nodes.append(YAMLNode(kind: .scalar("\(nodes.count)", .plain), anchor: name, line: line, column: column))
                } else {
                    nodes.append(YAMLNode(kind: .alias(name), line: line, column: column))
                }
            }
            let doc = YAMLDocument(root: .sequence(nodes))
            for alias in nodes where alias.aliasName != nil {
                let expected = YAMLAnchorTableTests.linearRule(alias, in: nodes)
                XCTAssertEqual(doc.resolve(alias), expected ?? alias, "round \(round): \(nodes) alias \(alias)")
                checked += 1
            }
            XCTAssertLessThanOrEqual(doc.anchorTableBuilds, 1)
        }
        XCTAssertGreaterThan(checked, 10_000)
    }

    /// The rule as the linear scan had it.
    static func linearRule(_ alias: YAMLNode, in nodes: [YAMLNode]) -> YAMLNode? {
        var chosen: YAMLNode?
        for d in nodes where d.anchor == alias.aliasName {
            if alias.line > 0 && d.line > 0 && (d.line, d.column) >= (alias.line, alias.column) { break }
            chosen = d
        }
        return chosen
    }
}
