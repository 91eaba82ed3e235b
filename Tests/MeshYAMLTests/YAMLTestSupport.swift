import XCTest
@testable import MeshYAML

/// Parses `text`, failing the test (and answering an empty stream) on an error.
func parseOK(_ text: String, file: StaticString = #filePath, line: UInt = #line) -> (documents: [YAMLDocument], trailer: String) {
    do {
        return try YAML.parse(text)
    } catch {
        XCTFail("refused: \(error)", file: file, line: line)
        return ([], "")
    }
}

/// Parses `text` expecting a refusal; nil (and a failure) when it was accepted.
func parseRefused(_ text: String, file: StaticString = #filePath, line: UInt = #line) -> YAMLError? {
    do {
        let r = try YAML.parse(text)
        XCTFail("accepted (\(r.documents.count) documents)", file: file, line: line)
        return nil
    } catch {
        return error
    }
}

/// A node's content without positions or styles: text (untagged nulls as `null`, untagged plain text
/// that resolves to a non-string marked `p`),
/// tags, anchors, aliases and structure.
func shape(_ n: YAMLNode) -> String {
    var s = ""
    // `!` is written `!!str` on a scalar and left out on a collection (libyaml cannot write it)
    var tag = n.tag
    if tag == "!" { if case .scalar = n.kind { tag = YAMLTags.str } else { tag = nil } }
    if let t = tag { s += "!<\(t)>" }
    if let a = n.anchor { s += "&\(a)" }
    switch n.kind {
    case .scalar(let v, let style):
        // untagged plain text that a reader resolves to a number, bool, ... must stay plain; null is null
        if n.isNull && tag == nil {
            s += "null"
        } else {
            s += (tag == nil && style == .plain && YAMLPlainScalar.resolvesToNonString(v) ? "p" : "") + v.debugDescription
        }
    case .alias(let a): s += "*\(a)"
    case .sequence(let items, _): s += "[" + items.map(shape).joined(separator: ",") + "]"
    case .mapping(let pairs, _): s += "{" + pairs.map { shape($0.key) + ":" + shape($0.value) }.joined(separator: ",") + "}"
    }
    return s
}

/// A deterministic generator (SplitMix64) for the mutation tests.
struct SplitMix64 {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}
