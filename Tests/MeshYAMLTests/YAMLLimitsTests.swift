import XCTest
@testable import MeshYAML

/// Hostile input: nesting and node limits named with document and line, aliases never expanded,
/// and no crash on thousands of damaged inputs.
final class YAMLLimitsTests: XCTestCase {
    func testDepth300Refused() throws {
        let text = "a: 1\n---\nb: " + String(repeating: "[", count: 300) + String(repeating: "]", count: 300) + "\n"
        let e = try XCTUnwrap(parseRefused(text))
        XCTAssertEqual(e.document, 2)
        XCTAssertEqual(e.line, 3)
        XCTAssertEqual(e.column, 4 + 255)  // the 257th collection: the mapping is the first level, then 256 brackets
        XCTAssertEqual(e.message, "nested deeper than 256 levels")
    }

    func testDepthAtTheLimitAccepted() throws {
        let text = String(repeating: "[", count: 256) + String(repeating: "]", count: 256) + "\n"
        let doc = parseOK(text).documents[0]
        XCTAssertEqual(try YAML.emit(doc), text)
        XCTAssertNotNil(parseRefused(String(repeating: "[", count: 257) + String(repeating: "]", count: 257)))
        // block nesting counts the same way
        var block = ""
        for i in 0..<257 { block += String(repeating: " ", count: i) + "k:\n" }
        let e = try XCTUnwrap(parseRefused(block))
        XCTAssertEqual(e.line, 257)
    }

    func testDeeplyNestedBuiltTreeNotWritten() throws {
        var node = YAMLNode.int(1)
        for _ in 0..<300 { node = .sequence([node]) }
        XCTAssertThrowsError(try YAML.emit(YAMLDocument(root: node))) { e in
            XCTAssertEqual((e as? YAMLError)?.message, "nested deeper than 256 levels")
        }
    }

    func testMillionBracketsFailFast() throws {
        let text = String(repeating: "[", count: 1_000_000)
        let e = try XCTUnwrap(parseRefused(text))
        XCTAssertEqual(e.message, "nested deeper than 256 levels")
    }

    func testNodeLimit() throws {
        let items = String(repeating: "- x\n", count: YAML.maxNodes - 1)  // + the sequence itself = the limit
        XCTAssertEqual(parseOK(items).documents[0].root?.items?.count, YAML.maxNodes - 1)
        let e = try XCTUnwrap(parseRefused("a: 1\n---\n" + items + "- one too many\n"))
        XCTAssertEqual(e.document, 2)
        // the limit is per stream: document 1 has 3 nodes, the sequence is the 4th, so item number
        // maxNodes + 1 - 4 (on line 2 + that number) is the one too many
        XCTAssertEqual(e.line, 2 + YAML.maxNodes + 1 - 4)
        XCTAssertEqual(e.message, "more than 1000000 nodes in the stream")
    }

    func testBillionLaughsKeptAsAliases() throws {
        var text = "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n"
        let names = ["b", "c", "d", "e", "f", "g", "h", "i"]
        var previous = "a"
        for n in names {
            text += "\(n): &\(n) [" + Array(repeating: "*\(previous)", count: 9).joined(separator: ", ") + "]\n"
            previous = n
        }
        let doc = parseOK(text).documents[0]
        let root = try XCTUnwrap(doc.root)
        XCTAssertEqual(root["i"]?.items?.count, 9)
        XCTAssertEqual(root["i"]?.items?[0].kind, .alias("h"))
        XCTAssertEqual(doc.resolve(try XCTUnwrap(root["i"]?.items?[0])).anchor, "h")
        let out = try YAML.emit(doc)
        XCTAssertLessThan(out.utf8.count, 2 * text.utf8.count)  // 9^9 "lol"s would be gigabytes
        XCTAssertEqual(shape(try XCTUnwrap(parseOK(out).documents[0].root)), shape(root))
        XCTAssertNil(doc.lookup(root, "zz"))
        // merge keys fanning out the same way are searched once per anchor
        var merges = "a: &a {k: v}\n"
        previous = "a"
        for n in names {
            merges += "\(n): &\(n)\n  <<: [" + Array(repeating: "*\(previous)", count: 9).joined(separator: ", ") + "]\n"
            previous = n
        }
        let mdoc = parseOK(merges).documents[0]
        let i = try XCTUnwrap(mdoc.root?["i"])
        let clock = ContinuousClock()
        let started = clock.now
        XCTAssertNil(mdoc.lookup(i, "missing"))  // 9^8 paths if each merged mapping were searched again
        XCTAssertEqual(mdoc.lookup(i, "k")?.scalar, "v")
        XCTAssertLessThan(clock.now - started, .seconds(1))
    }

    func testRecursiveAliasKeptNotExpanded() throws {
        let doc = parseOK("a: &a [1, *a]\n").documents[0]
        XCTAssertEqual(doc.root?["a"]?.items?[1].kind, .alias("a"))
        XCTAssertEqual(try YAML.emit(doc), "a: &a [1, *a]\n")
    }

    /// A few thousand damaged inputs (truncated, bytes flipped, bytes inserted or deleted, fixed
    /// seed): each is a result whose segments give back the input and whose documents are written
    /// and read back to the same content, or a YAMLError with a position.
    func testMutatedInputsNeverCrash() throws {
        let seeds = [YAMLRoundTripTests.deployment, YAMLEditingTests.pod,
                     "%YAML 1.1\n---\n? [a, {b: *x}]\n: &x !t 'v'\n...\n--- |+\n  keep\n\n--- >-\n  f\n---\n\"\\u00e9\\x41\"\n"]
        let alphabet = Array("-?:,[]{}#&*!|>'\"%@` \n\t\r.~0aé\u{0}".unicodeScalars).map { Array(String($0).utf8) }
        var rng = SplitMix64(state: 0x6d65_7368_7961_6d6c)
        var accepted = 0, refused = 0
        for round in 0..<3000 {
            var bytes = Array(seeds[round % seeds.count].utf8)
            for _ in 0..<(1 + rng.below(4)) {
                guard !bytes.isEmpty else { break }
                let at = rng.below(bytes.count)
                switch rng.below(4) {
                case 0: bytes.removeSubrange(at...)                                    // truncate
                case 1: bytes[at] ^= UInt8(1 << rng.below(8))                           // flip a bit
                case 2: bytes.insert(contentsOf: alphabet[rng.below(alphabet.count)], at: at) // insert an indicator
                default: bytes.remove(at: at)                                           // delete
                }
            }
            let text = String(decoding: bytes, as: UTF8.self)
            do {
                let r = try YAML.parse(text)
                XCTAssertEqual(r.documents.map(\.source).joined() + r.trailer, text, "round \(round)")
                for doc in r.documents {
                    guard let root = doc.root else { continue }
                    let out = try YAML.emit(doc)
                    let back = try YAML.parse(out)
                    XCTAssertEqual(back.documents.count, 1, "round \(round): \(out)")
                    if let again = back.documents.first?.root {
                        XCTAssertEqual(shape(again), shape(root), "round \(round): \(out)")
                    } else {
                        XCTAssertTrue(root.isNull && root.tag == nil, "round \(round): \(out)")
                    }
                }
                accepted += 1
            } catch {
                XCTAssertGreaterThanOrEqual(error.document, 1, "round \(round)")
                XCTAssertGreaterThanOrEqual(error.line, 1, "round \(round): \(error)")
                XCTAssertGreaterThanOrEqual(error.column, 1, "round \(round): \(error)")
                XCTAssertFalse(error.message.isEmpty)
                refused += 1
            }
        }
        XCTAssertGreaterThan(accepted, 300)
        XCTAssertGreaterThan(refused, 300)
    }
}
