import XCTest
@testable import MeshConfig

// MARK: - Helpers

/// Compact rendering of a tree: {k: v, ...}, [a, ...], plain scalars bare, quoted ones in "",
/// null as ~. Newlines and tabs inside scalars are shown as \n and \t.
private func render(_ node: YAMLNode) -> String {
    switch node {
    case .scalar(let s):
        if s.isNull { return "~" }
        var escaped = ""
        for ch in s.value.unicodeScalars {
            switch ch {
            case "\n": escaped += "\\n"
            case "\t": escaped += "\\t"
            default: escaped.unicodeScalars.append(ch)
            }
        }
        return s.quoted ? "\"" + escaped + "\"" : escaped
    case .mapping(let m):
        return "{" + m.entries.map { "\($0.key): \(render($0.value))" }.joined(separator: ", ") + "}"
    case .sequence(let s):
        return "[" + s.items.map(render).joined(separator: ", ") + "]"
    }
}

/// Parses text that must hold exactly one document.
private func parse(_ text: String, file: StaticString = #filePath, line: UInt = #line) throws -> YAMLNode {
    let docs = try YAML.parseDocuments(text)
    guard docs.count == 1, let doc = docs.first else {
        XCTFail("expected 1 document, got \(docs.count)", file: file, line: line)
        throw YAMLError(line: 0, column: 0, message: "wrong document count")
    }
    return doc.node
}

private func r(_ text: String, file: StaticString = #filePath, line: UInt = #line) throws -> String {
    render(try parse(text, file: file, line: line))
}

/// Asserts that parsing fails at (line, column) with a message containing `contains`.
private func expectError(_ text: String, line: Int, column: Int, _ contains: String,
                         file: StaticString = #filePath, testLine: UInt = #line) {
    do {
        let docs = try YAML.parseDocuments(text)
        XCTFail("expected an error, parsed \(docs.map { render($0.node) })", file: file, line: testLine)
    } catch {
        XCTAssertEqual(error.line, line, "line of: \(error)", file: file, line: testLine)
        XCTAssertEqual(error.column, column, "column of: \(error)", file: file, line: testLine)
        XCTAssertTrue(error.message.contains(contains), "message '\(error.message)' lacks '\(contains)'",
                      file: file, line: testLine)
    }
}

private func scalar(_ node: YAMLNode?) -> YAMLScalar? { node?.asScalar }

/// SplitMix64: a tiny deterministic generator for the fuzz test.
private struct SplitMix64 {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { n <= 0 ? 0 : Int(next() % UInt64(n)) }
}

private let istioFile = """
# Reviews traffic split
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts:
  - reviews.default.svc.cluster.local
  gateways: [mesh]
  http:
  - name: "v2-routes"
    match:
    - uri:
        prefix: /api/v2
      headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
      weight: 75
    - destination:
        host: reviews   # the short name
        subset: v3
      weight: 25
    timeout: 10s
  - route:
    - destination:
        host: reviews
        subset: v1
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
      track: "canary"
  - name: v3
    labels: {version: v3}
...
"""

private let sidecarFile = """
# Static-mode sidecar next to a caller ("productpage").
#
#   curl --> [this sidecar] outbound :15001 --mTLS--> [server sidecar] inbound :16006 --> app :9080
apiVersion: sidecar.mesh/v1alpha1
kind: Bootstrap
metadata:
  name: productpage-sidecar
  namespace: default
spec:
  workload:                    # who this sidecar speaks for
    service: productpage
    serviceAccount: productpage  # SPIFFE ID: spiffe://cluster.local/ns/default/sa/productpage
    labels:
      version: v1
  concurrency: 1               # worker threads
  admin:
    address: 127.0.0.1
    port: 15000
  tls:
    certChain: certs/out/productpage/cert-chain.pem   # leaf first, then intermediates
    trustDomain: cluster.local
  outbound:
    address: 127.0.0.1
    port: 15001
    headerTimeout: 10s
  clusters:
    - name: reviews
      tls: ISTIO_MUTUAL        # mTLS
      subjectAltNames:         # optional
        - spiffe://cluster.local/ns/default/sa/reviews
      endpoints:
        - 127.0.0.1:16006
      connectTimeout: 5s
  routes:
    - hosts: [reviews]         # also reviews.default
      cluster: reviews
"""

final class YAMLTests: XCTestCase {

    // MARK: Documents

    func testEmptyInputs() throws {
        XCTAssertEqual(try YAML.parseDocuments("").count, 0)
        XCTAssertEqual(try YAML.parseDocuments("\n\n   \n").count, 0)
        XCTAssertEqual(try YAML.parseDocuments("# just a comment\n  # another\n").count, 0)
        XCTAssertEqual(try YAML.parseDocuments("---\n---\n# c\n---\n...\n").count, 0)
    }

    func testMultipleDocuments() throws {
        let text = "# header\n---\na: 1\n---   # second\nb: 2\n...\n---\n# empty\n---\n- x\n"
        let docs = try YAML.parseDocuments(text)
        XCTAssertEqual(docs.map { render($0.node) }, ["{a: 1}", "{b: 2}", "[x]"])
        XCTAssertEqual(docs.map { $0.line }, [3, 5, 10])
        // A document without a leading marker, then one after `...` without `---`.
        let docs2 = try YAML.parseDocuments("a: 1\n...\nb: 2\n")
        XCTAssertEqual(docs2.map { render($0.node) }, ["{a: 1}", "{b: 2}"])
        // Content on the `---` line.
        let docs3 = try YAML.parseDocuments("--- [a, b]\n--- |\n  text\n--- \"q\" # c\n---\n- x\n")
        XCTAssertEqual(docs3.map { render($0.node) }, ["[a, b]", "\"text\\n\"", "\"q\"", "[x]"])
        XCTAssertEqual(docs3.map { $0.line }, [1, 2, 4, 6])
        // `----` and `---x` are not markers.
        XCTAssertEqual(try r("a: ----\nb: ---x\n"), "{a: ----, b: ---x}")
    }

    func testCRLFAndBOM() throws {
        let text = "\u{FEFF}a: 1\r\nb:\r\n  - x\r\n  - \"y\"\r\n"
        XCTAssertEqual(try r(text), "{a: 1, b: [x, \"y\"]}")
        XCTAssertEqual(try r("k: |\r\n  one\r\n  two\r\n"), "{k: \"one\\ntwo\\n\"}")
    }

    // MARK: Block collections

    func testBlockMappingKeepsOrderAndLines() throws {
        let node = try parse("zeta: 1\nalpha: two words\n\n# comment\nmid: x\n")
        guard let m = node.asMapping else { return XCTFail("not a mapping") }
        XCTAssertEqual(m.keys, ["zeta", "alpha", "mid"])
        XCTAssertEqual(m.entries.map { $0.keyLine }, [1, 2, 5])
        XCTAssertEqual(m.line, 1)
        XCTAssertEqual(scalar(m["alpha"])?.value, "two words")
        XCTAssertEqual(m["mid"]?.line, 5)
        XCTAssertNil(m["missing"])
        XCTAssertEqual(scalar(m["zeta"])?.quoted, false)
    }

    func testNestedMappings() throws {
        let text = """
        a:
          b:
            c: 1
            d:
              e: deep
          f: 2
        g: 3
        """
        XCTAssertEqual(try r(text), "{a: {b: {c: 1, d: {e: deep}}, f: 2}, g: 3}")
        let m = try parse(text).asMapping
        XCTAssertEqual(m?["a"]?.line, 2)
        XCTAssertEqual(m?["a"]?.asMapping?["b"]?.asMapping?["d"]?.asMapping?["e"]?.line, 5)
    }

    func testBlockSequences() throws {
        XCTAssertEqual(try r("- a\n- b c\n-   d\n"), "[a, b c, d]")
        // Sequence indented under its key, and Kubernetes style at the key's indentation.
        XCTAssertEqual(try r("k:\n  - a\n  - b\nn: 1\n"), "{k: [a, b], n: 1}")
        XCTAssertEqual(try r("k:\n- a\n- b\nn: 1\n"), "{k: [a, b], n: 1}")
        // Nested sequences, compact and indented.
        XCTAssertEqual(try r("- - a\n  - b\n- -\n    - c\n"), "[[a, b], [[c]]]")
        XCTAssertEqual(try r("-\n  - x\n  -\n    - y\n"), "[[x, [y]]]")
        // Sequence items on lines after the dash.
        XCTAssertEqual(try r("-\n  a: 1\n  b: 2\n- c\n"), "[{a: 1, b: 2}, c]")
        let s = try parse("\n\n- a\n-\n- c\n").asSequence
        XCTAssertEqual(s?.line, 3)
        XCTAssertEqual(s?.items.map { $0.line }, [3, 4, 5])
        XCTAssertEqual(s?.items[1].isNull, true)
    }

    func testSequenceOfMappings() throws {
        let text = """
        ports:
        - name: http
          port: 80
          targetPort: 8080
        - name: grpc
          port: 9090
          extra:
            nested: yes
          list:
          - p
          - q
        -   name: wide
            port: 1
        """
        XCTAssertEqual(try r(text),
            "{ports: [{name: http, port: 80, targetPort: 8080}, {name: grpc, port: 9090, extra: {nested: yes}, list: [p, q]}, {name: wide, port: 1}]}")
        let ports = try parse(text).asMapping?["ports"]?.asSequence
        XCTAssertEqual(ports?.line, 2)
        XCTAssertEqual(ports?.items.map { $0.line }, [2, 5, 12])
        XCTAssertEqual(ports?.items[1].asMapping?.entries.map { $0.keyLine }, [5, 6, 7, 9])
    }

    func testKubernetesStyleNestedDeep() throws {
        let text = """
        spec:
          containers:
          - name: app
            ports:
            - containerPort: 80
            env:
            - name: A
              value: "1"
          volumes:
          - name: v
        """
        XCTAssertEqual(try r(text),
            "{spec: {containers: [{name: app, ports: [{containerPort: 80}], env: [{name: A, value: \"1\"}]}], volumes: [{name: v}]}}")
    }

    func testTopLevelIndentedDocument() throws {
        XCTAssertEqual(try r("  a: 1\n  b:\n    - x\n"), "{a: 1, b: [x]}")
    }

    // MARK: Comments

    func testComments() throws {
        let text = """
        # leading
        a: 1 # trailing
        b: "x # not a comment" # but this is
        c: 'y # nor this'
        d: e#f
        e: http://h/#frag
            # oddly indented comment
        f:    # comment where the value would be
          g: h
        # between
        list:   # c
          # inside
          - i # c
        \t# tab-indented comment is fine
          - j
        """
        XCTAssertEqual(try r(text),
            "{a: 1, b: \"x # not a comment\", c: \"y # nor this\", d: e#f, e: http://h/#frag, f: {g: h}, list: [i, j]}")
    }

    // MARK: Scalars

    func testPlainScalars() throws {
        let text = """
        url: spiffe://cluster.local/ns/default/sa/reviews
        addr: 127.0.0.1:9080
        v6: ::1
        text: hello world,  with [brackets] and {braces}
        colon: a:b
        dash: -1
        dashes: --x
        trailing: spaces here   \("")
        q: it's "fine"
        key with spaces: v
        http://example.com/x: url key
        """
        let m = try parse(text).asMapping
        XCTAssertEqual(m?.keys, ["url", "addr", "v6", "text", "colon", "dash", "dashes", "trailing", "q",
                                 "key with spaces", "http://example.com/x"])
        XCTAssertEqual(scalar(m?["url"])?.value, "spiffe://cluster.local/ns/default/sa/reviews")
        XCTAssertEqual(scalar(m?["addr"])?.value, "127.0.0.1:9080")
        XCTAssertEqual(scalar(m?["v6"])?.value, "::1")
        XCTAssertEqual(scalar(m?["text"])?.value, "hello world,  with [brackets] and {braces}")
        XCTAssertEqual(scalar(m?["colon"])?.value, "a:b")
        XCTAssertEqual(scalar(m?["dash"])?.value, "-1")
        XCTAssertEqual(scalar(m?["trailing"])?.value, "spaces here")
        XCTAssertEqual(scalar(m?["q"])?.value, "it's \"fine\"")
        XCTAssertEqual(scalar(m?["http://example.com/x"])?.value, "url key")
        XCTAssertEqual(scalar(m?["url"])?.quoted, false)
        // Spaces before the colon of a key, tab as separator after it.
        XCTAssertEqual(try r("a : 1\nb:\t2\n"), "{a: 1, b: 2}")
        // A root scalar.
        XCTAssertEqual(try r("just text\n"), "just text")
    }

    func testMultiLinePlainScalar() throws {
        XCTAssertEqual(try r("k: one\n  two\n   three\n\n  four\nn: x\n"), "{k: one two three\\nfour, n: x}")
        XCTAssertEqual(try r("- a\n  b\n- c\n"), "[a b, c]")
        XCTAssertEqual(try r("k: one # c\nn: 2\n"), "{k: one, n: 2}")
    }

    func testSingleQuoted() throws {
        XCTAssertEqual(try r("a: 'it''s'\nb: ''\nc: 'x: y'\n"), "{a: \"it's\", b: \"\", c: \"x: y\"}")
        XCTAssertEqual(scalar(try parse("d: '\\n \\\" # stays'\n").asMapping?["d"])?.value, "\\n \\\" # stays")
        XCTAssertEqual(try r("a: 'one\n  two\n\n  three  '\n"), "{a: \"one two\\nthree  \"}")
        let s = scalar(try parse("a: ''\n").asMapping?["a"])
        XCTAssertEqual(s?.quoted, true)
        XCTAssertEqual(s?.isNull, false)
    }

    func testDoubleQuotedEscapes() throws {
        let m = try parse(#"""
        a: "quote \" backslash \\ nl \n tab \t slash \/ e \u00e9 smile \U0001F600 pair \ud83d\ude00 x \x41"
        b: "first
          second\tx"
        c: "joined\
           together"
        d: "keep \
          space"
        e: "empties

          between"
        f: "trailing   
          trimmed"
        """#).asMapping
        XCTAssertEqual(scalar(m?["a"])?.value,
                       "quote \" backslash \\ nl \n tab \t slash / e \u{e9} smile \u{1F600} pair \u{1F600} x A")
        XCTAssertEqual(scalar(m?["b"])?.value, "first second\tx")
        XCTAssertEqual(scalar(m?["c"])?.value, "joinedtogether")
        XCTAssertEqual(scalar(m?["d"])?.value, "keep space")
        XCTAssertEqual(scalar(m?["e"])?.value, "empties\nbetween")
        XCTAssertEqual(scalar(m?["f"])?.value, "trailing trimmed")
        XCTAssertEqual(scalar(m?["a"])?.quoted, true)
    }

    func testQuotedKeys() throws {
        let m = try parse(#"""
        "a b": 1
        'c: d': 2
        "": empty key
        "x" : 3
        "nested":
          'in': [1]
        """#).asMapping
        XCTAssertEqual(m?.keys, ["a b", "c: d", "", "x", "nested"])
        XCTAssertEqual(render(m?["nested"] ?? .scalar(YAMLScalar(value: "", line: 0))), "{in: [1]}")
        XCTAssertEqual(try r(#"- "k": v"# + "\n  j: w\n"), "[{k: v, j: w}]")
    }

    func testNulls() throws {
        let text = """
        a:
        b: ~
        c: null
        d: NULL
        e: ""
        f: 'null'
        g: nullable
        h:
          # only a comment
        i: x
        list:
        -
        - ~
        - # comment
        flow: [null, ~, "~", {k: , j}]
        last:
        """
        XCTAssertEqual(try r(text),
            "{a: ~, b: ~, c: ~, d: ~, e: \"\", f: \"null\", g: nullable, h: ~, i: x, list: [~, ~, ~], flow: [~, ~, \"~\", {k: ~, j: ~}], last: ~}")
        let m = try parse(text).asMapping
        XCTAssertEqual(m?["a"]?.line, 1)
        XCTAssertEqual(m?["h"]?.line, 8)
        XCTAssertEqual(m?["last"]?.line, 16)
        XCTAssertEqual(m?["last"]?.isNull, true)
        XCTAssertEqual(m?["e"]?.isNull, false)
        XCTAssertEqual(m?["list"]?.asSequence?.items.map { $0.line }, [12, 13, 14])
        // Null words as keys stay literal.
        XCTAssertEqual(try parse("null: 1\n~: 2\n").asMapping?.keys, ["null", "~"])
        XCTAssertEqual(try parse("{null: 1, ~: 2}\n").asMapping?.keys, ["null", "~"])
    }

    // MARK: Flow collections

    func testFlowCollections() throws {
        XCTAssertEqual(try r("a: [x, y, \"z\", 'w']\n"), "{a: [x, y, \"z\", \"w\"]}")
        XCTAssertEqual(try r("a: {b: 1, c: [x, y], d: {e: f}}\n"), "{a: {b: 1, c: [x, y], d: {e: f}}}")
        XCTAssertEqual(try r("a: []\nb: {}\nc: [[], [[]], {}]\n"), "{a: [], b: {}, c: [[], [[]], {}]}")
        XCTAssertEqual(try r("a: [x, y,]\nb: {k: v,}\n"), "{a: [x, y], b: {k: v}}")
        XCTAssertEqual(try r("[127.0.0.1:9080, spiffe://a/b, ::1, a b]\n"), "[127.0.0.1:9080, spiffe://a/b, ::1, a b]")
        XCTAssertEqual(try r(#"{"json": 1, "list":[1,2], "s":"x"}"#), "{json: 1, list: [1, 2], s: \"x\"}")
        XCTAssertEqual(try r("- [a, b]\n- {c: d}\n"), "[[a, b], {c: d}]")
        XCTAssertEqual(try r("k: {a:1}\n"), "{k: {a:1: ~}}")  // YAML: no space after ':' means no key
    }

    func testFlowSpanningLines() throws {
        let text = """
        hosts: [reviews.default.svc.cluster.local,   # first
                ratings,
          "details"
        ]
        labels: {
          app: reviews,   # c
          version: v1
        }
        multi: [one
          two, three]
        args: [
          "--port", "80",
          --verbose
        ]
        after: ok
        """
        XCTAssertEqual(try r(text),
            "{hosts: [reviews.default.svc.cluster.local, ratings, \"details\"], labels: {app: reviews, version: v1}, multi: [one two, three], args: [\"--port\", \"80\", --verbose], after: ok}")
        let m = try parse(text).asMapping
        XCTAssertEqual(m?["labels"]?.line, 5)
        XCTAssertEqual(m?["labels"]?.asMapping?.entries.map { $0.keyLine }, [6, 7])
        XCTAssertEqual(m?["after"]?.line, 15)
        // At the document root there is no parent indentation to respect; below it, like libyaml,
        // lines at the parent's indentation are accepted.
        XCTAssertEqual(try r("[a,\nb,\n c]\n"), "[a, b, c]")
        XCTAssertEqual(try r("- hosts: [a,\n  b]\n  x: {k: 1,\n  j: 2}\n"), "[{hosts: [a, b], x: {k: 1, j: 2}}]")
    }

    // MARK: Block scalars

    func testLiteralBlockScalars() throws {
        let text = """
        clip: |
          line one
            indented
          line three

        strip: |-
          no newline

        keep: |+
          kept

        folded: >
          one
          two

          three
            more
          four
        foldstrip: >-
          a
          b
        indicator: |2
            four spaces
          two
        next: x
        """
        let m = try parse(text).asMapping
        XCTAssertEqual(scalar(m?["clip"])?.value, "line one\n  indented\nline three\n")
        XCTAssertEqual(scalar(m?["strip"])?.value, "no newline")
        XCTAssertEqual(scalar(m?["keep"])?.value, "kept\n\n")
        XCTAssertEqual(scalar(m?["folded"])?.value, "one two\nthree\n  more\nfour\n")
        XCTAssertEqual(scalar(m?["foldstrip"])?.value, "a b")
        XCTAssertEqual(scalar(m?["indicator"])?.value, "  four spaces\ntwo\n")
        XCTAssertEqual(scalar(m?["next"])?.value, "x")
        XCTAssertEqual(scalar(m?["clip"])?.quoted, true)
        XCTAssertEqual(m?["folded"]?.line, 12)
        XCTAssertEqual(m?["next"]?.line, 25)
    }

    func testBlockScalarEdgeCases() throws {
        // Empty block scalar, block scalar as the last value, in a sequence, with comments.
        XCTAssertEqual(try r("a: |\nb: 1\n"), "{a: \"\", b: 1}")
        XCTAssertEqual(try r("a: >-\n"), "{a: \"\"}")
        XCTAssertEqual(try r("- |\n  x\n  # not a comment\n- >+ # header comment\n  y\n"),
                       "[\"x\\n# not a comment\\n\", \"y\\n\"]")
        XCTAssertEqual(try r("a: |\n\n  after blank\n"), "{a: \"\\nafter blank\\n\"}")
        XCTAssertEqual(try r("a: |\n  x\n# top comment\nb: 2\n"), "{a: \"x\\n\", b: 2}")
        XCTAssertEqual(try r("- name: n\n  data: |\n    d\n- name: m\n"), "[{name: n, data: \"d\\n\"}, {name: m}]")
        XCTAssertEqual(try r("a: |\n  tab\there\n"), "{a: \"tab\\there\\n\"}")
        XCTAssertEqual(try r("|\ntop level\n"), "\"top level\\n\"")
        // Like libyaml: a last line without a line break contributes no final newline.
        XCTAssertEqual(try r("a: |\n  x\nb: |+\n  y"), "{a: \"x\\n\", b: \"y\"}")
        XCTAssertEqual(try YAML.parseDocuments("a: |+\n  x\n\n---\nb").map { render($0.node) }, ["{a: \"x\\n\\n\"}", "b"])
    }

    func testPEMBlob() throws {
        let text = """
        tls:
          caCert: |
            -----BEGIN CERTIFICATE-----
            MIIBszCCAVmgAwIBAgIUfake+base64/data==
            -----END CERTIFICATE-----
          mode: SIMPLE
        """
        let tls = try parse(text).asMapping?["tls"]?.asMapping
        XCTAssertEqual(scalar(tls?["caCert"])?.value,
                       "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUfake+base64/data==\n-----END CERTIFICATE-----\n")
        XCTAssertEqual(scalar(tls?["mode"])?.value, "SIMPLE")
    }

    // MARK: Realistic files

    func testIstioMultiDocument() throws {
        let docs = try YAML.parseDocuments(istioFile)
        XCTAssertEqual(docs.count, 2)
        XCTAssertEqual(docs.map { $0.line }, [2, 34])

        let vs = try XCTUnwrap(docs[0].node.asMapping)
        XCTAssertEqual(scalar(vs["kind"])?.value, "VirtualService")
        XCTAssertEqual(scalar(vs["apiVersion"])?.value, "networking.istio.io/v1beta1")
        let spec = try XCTUnwrap(vs["spec"]?.asMapping)
        XCTAssertEqual(spec["hosts"]?.asSequence?.items.compactMap { $0.asScalar?.value },
                       ["reviews.default.svc.cluster.local"])
        XCTAssertEqual(render(try XCTUnwrap(spec["gateways"])), "[mesh]")
        let http = try XCTUnwrap(spec["http"]?.asSequence)
        XCTAssertEqual(http.items.count, 2)
        XCTAssertEqual(http.line, 12)

        let first = try XCTUnwrap(http.items[0].asMapping)
        XCTAssertEqual(scalar(first["name"])?.value, "v2-routes")
        XCTAssertEqual(scalar(first["name"])?.quoted, true)
        let match = try XCTUnwrap(first["match"]?.asSequence)
        let uri = try XCTUnwrap(match.items.first?.asMapping?["uri"]?.asMapping)
        XCTAssertEqual(scalar(uri["prefix"])?.value, "/api/v2")
        XCTAssertEqual(uri["prefix"]?.line, 15)
        XCTAssertEqual(render(try XCTUnwrap(match.items.first?.asMapping?["headers"])), "{end-user: {exact: jason}}")
        let route = try XCTUnwrap(first["route"]?.asSequence)
        XCTAssertEqual(route.items.count, 2)
        let dests = route.items.map { $0.asMapping?["destination"]?.asMapping }
        XCTAssertEqual(dests.map { scalar($0?["host"])?.value }, ["reviews", "reviews"])
        XCTAssertEqual(dests.map { scalar($0?["subset"])?.value }, ["v2", "v3"])
        XCTAssertEqual(route.items.map { scalar($0.asMapping?["weight"])?.value }, ["75", "25"])
        XCTAssertEqual(route.items.map { $0.line }, [20, 24])
        XCTAssertEqual(scalar(first["timeout"])?.value, "10s")

        XCTAssertEqual(render(http.items[1]), "{route: [{destination: {host: reviews, subset: v1}}]}")

        let dr = try XCTUnwrap(docs[1].node.asMapping)
        XCTAssertEqual(scalar(dr["kind"])?.value, "DestinationRule")
        let drSpec = try XCTUnwrap(dr["spec"]?.asMapping)
        XCTAssertEqual(scalar(drSpec["host"])?.value, "reviews")
        XCTAssertEqual(render(try XCTUnwrap(drSpec["trafficPolicy"])), "{tls: {mode: ISTIO_MUTUAL}}")
        let subsets = try XCTUnwrap(drSpec["subsets"]?.asSequence)
        XCTAssertEqual(subsets.items.map { scalar($0.asMapping?["name"])?.value }, ["v1", "v2", "v3"])
        XCTAssertEqual(subsets.items.map { render($0.asMapping?["labels"] ?? .scalar(YAMLScalar(value: "", line: 0))) },
                       ["{version: v1}", "{version: v2, track: \"canary\"}", "{version: v3}"])
        XCTAssertEqual(subsets.items.map { $0.line }, [44, 47, 51])
    }

    func testSidecarBootstrapFile() throws {
        let root = try XCTUnwrap(try parse(sidecarFile).asMapping)
        XCTAssertEqual(root.keys, ["apiVersion", "kind", "metadata", "spec"])
        let spec = try XCTUnwrap(root["spec"]?.asMapping)
        XCTAssertEqual(spec.keys, ["workload", "concurrency", "admin", "tls", "outbound", "clusters", "routes"])
        XCTAssertEqual(render(try XCTUnwrap(spec["workload"])),
                       "{service: productpage, serviceAccount: productpage, labels: {version: v1}}")
        XCTAssertEqual(render(try XCTUnwrap(spec["clusters"])),
                       "[{name: reviews, tls: ISTIO_MUTUAL, subjectAltNames: [spiffe://cluster.local/ns/default/sa/reviews], endpoints: [127.0.0.1:16006], connectTimeout: 5s}]")
        XCTAssertEqual(render(try XCTUnwrap(spec["routes"])), "[{hosts: [reviews], cluster: reviews}]")
        XCTAssertEqual(spec["concurrency"]?.line, 15)
    }

    // MARK: Errors

    func testErrorDescription() {
        let e = YAMLError(line: 3, column: 7, message: "boom")
        XCTAssertEqual(e.description, "line 3, column 7: boom")
    }

    func testTabErrors() {
        expectError("a:\n\tb: 1\n", line: 2, column: 1, "tab character in indentation")
        expectError("a:\n  \tb: 1\n", line: 2, column: 3, "tab")
        expectError("-\tx\n", line: 1, column: 2, "tab after '-'")
        expectError("k: v\n---\n\t- x\n", line: 3, column: 1, "spaces")
    }

    func testIndentationErrors() {
        expectError("a:\n  b: 1\n   c: 2\n", line: 3, column: 4, "bad indentation")
        expectError("a: \"x\"\n  b: 1\n", line: 2, column: 3, "bad indentation")
        expectError("  a: 1\nb: 2\n", line: 2, column: 1, "less indented")
        expectError("- a\n- b: 1\n   c: 2\n", line: 3, column: 4, "bad indentation")
        expectError("- a\n- b: 1\n c: 2\n", line: 3, column: 2, "bad indentation")
        expectError("- a\nb: 1\n", line: 2, column: 1, "expected a sequence entry")
        expectError("a:\n  - x\n  b: 1\n", line: 3, column: 3, "expected a sequence entry")
        expectError("a: 1\n- b\n", line: 2, column: 1, "sequence entry")
        expectError("a: b\n  c: d\n", line: 2, column: 3, "bad indentation: this line is indented deeper than line 1")
        expectError("[a]\nb\n", line: 2, column: 1, "unexpected content")
    }

    func testMissingColonErrors() {
        expectError("a: 1\nb\nc: 3\n", line: 2, column: 1, "missing ':' after 'b'")
        expectError("a: 1\nb:2\n", line: 2, column: 1, "missing space after ':'")
        expectError("a: 1\n\"b\" x\n", line: 2, column: 4, "missing ':' after the quoted key")
        expectError("metadata:\n  name foo\n  namespace: x\n", line: 2, column: 3, "missing ':' after 'name foo'")
        expectError("foo\nbar: 1\n", line: 1, column: 1, "missing ':' after 'foo'")
        expectError(": v\n", line: 1, column: 1, "missing key")
        expectError("a: 1\n[x]: 2\n", line: 2, column: 1, "complex keys")
        expectError("[x]: 2\n", line: 1, column: 4, "complex keys")
        expectError("a: b: c\n", line: 1, column: 4, "nested mapping cannot start on the same line")
        expectError("a: \"b\": c\n", line: 1, column: 4, "nested mapping")
        expectError("a: - b\n", line: 1, column: 4, "block sequence cannot start on the same line")
    }

    func testUnterminatedErrors() {
        expectError("a: \"abc\nb: 1\n", line: 1, column: 4, "unterminated double-quoted string")
        expectError("a: 'abc\n", line: 1, column: 4, "unterminated single-quoted string")
        expectError("a: \"abc\n---\n\"\n", line: 1, column: 4, "unterminated double-quoted")
        expectError("a: [x, y\nb: 1\nc: 2\n", line: 2, column: 2, "is a ']' or '}' missing for the '[' on line 1?")
        expectError("a: [x, y\n", line: 1, column: 4, "unterminated flow sequence: '[' is never closed")
        expectError("a:\n  b: {x: [1,\n  c: 2\n", line: 3, column: 4, "line 3 is not indented more than its parent")
        expectError("a:\n  b: {x: 1,\n  y: 2\n", line: 2, column: 6, "unterminated flow mapping: '{' is never closed")
        expectError("- [a,\n- b]\n", line: 2, column: 1, "is a ']' or '}' missing for the '[' on line 1?")
        expectError("x:\n  - {a: 1, b: [2]\n", line: 2, column: 5, "unterminated flow mapping")
        expectError("a: [x, {b: 1]\n", line: 1, column: 13, "expected ',' or '}'")
        expectError("\"key\n", line: 1, column: 1, "unterminated")
    }

    func testDuplicateKeys() {
        expectError("a: 1\nb: 2\na: 3\n", line: 3, column: 1, "duplicate key 'a' (first defined on line 1)")
        expectError("x:\n  - n: 1\n    n: 2\n", line: 3, column: 5, "duplicate key 'n'")
        expectError("a: {k: 1, k: 2}\n", line: 1, column: 11, "duplicate key 'k'")
        expectError("\"a\": 1\na: 2\n", line: 2, column: 1, "duplicate key 'a'")
    }

    func testUnsupportedFeatures() {
        expectError("a: &anchor 1\n", line: 1, column: 4, "anchors ('&name') are not supported")
        expectError("a: *ref\n", line: 1, column: 4, "aliases ('*name') are not supported")
        expectError("a: !!str 1\n", line: 1, column: 4, "tags ('!tag') are not supported")
        expectError("&a key: v\n", line: 1, column: 1, "anchors")
        expectError("- !custom x\n", line: 1, column: 3, "tags")
        expectError("a: [*x]\n", line: 1, column: 5, "aliases")
        expectError("k: {a: &x 1}\n", line: 1, column: 8, "anchors")
        expectError("? complex\n: value\n", line: 1, column: 1, "complex mapping keys")
        expectError("%YAML 1.2\n---\na: 1\n", line: 1, column: 1, "directives")
        expectError("a: @x\n", line: 1, column: 4, "put the value in quotes")
        expectError("a: `x`\n", line: 1, column: 4, "quotes")
        expectError("a: 1\n... x\n", line: 2, column: 5, "after the '...' document end marker")
        expectError("--- |x\n  a\n", line: 1, column: 6, "block scalar header")
        expectError("--- a: 1\n", line: 1, column: 5, "cannot start on the '---' line")
        expectError("--- - a\n", line: 1, column: 5, "cannot start on the '---' line")
        expectError("a:\n  |-k: v\n", line: 2, column: 5, "block scalar header")
        expectError("a: 1\n>k: v\n", line: 2, column: 1, "a key cannot start with '>'")
        expectError("a: [|]\n", line: 1, column: 5, "block scalars")
        expectError("a: [- x]\n", line: 1, column: 5, "block sequence entries")
    }

    func testFlowErrors() {
        expectError("a: [x,,y]\n", line: 1, column: 7, "empty entry")
        expectError("a: [,]\n", line: 1, column: 5, "empty entry")
        expectError("a: {,}\n", line: 1, column: 5, "empty entry")
        expectError("a: [x, \"y]\n", line: 1, column: 8, "unterminated double-quoted")
        expectError("a: [a: 1]\n", line: 1, column: 6, "wrap them in braces")
        expectError("a: {k: v x: y}\n", line: 1, column: 11, "expected ',' or '}'")
        expectError("a: {\"k\" v}\n", line: 1, column: 9, "expected ':' after key 'k'")
        expectError("a: {[x]: 1}\n", line: 1, column: 5, "complex keys")
        expectError("a: [x] y\n", line: 1, column: 8, "unexpected 'y' after ']'")
        expectError("a: [\"x\" \"y\"]\n", line: 1, column: 9, "expected ',' or ']'")
        expectError("a: ]\n", line: 1, column: 4, "cannot start a plain value")
    }

    func testScalarErrors() {
        expectError("a: \"bad \\q escape\"\n", line: 1, column: 9, "invalid escape '\\q'")
        expectError("a: \"\\u12\"\n", line: 1, column: 5, "4 hexadecimal digits")
        expectError("a: \"\\ud800\"\n", line: 1, column: 5, "not a Unicode scalar")
        expectError("a: \"\\ud800\\u0041\"\n", line: 1, column: 5, "low surrogate")
        expectError("a: \"x\" y\n", line: 1, column: 8, "unexpected 'y' after the quoted string")
        XCTAssertEqual(try r("a: \"x\"# c\nb: [y]#c\n"), "{a: \"x\", b: [y]}")  // lenient, like libyaml
        expectError("a: | x\n  b\n", line: 1, column: 6, "block scalar header")
        expectError("a: |0\n  b\n", line: 1, column: 5, "block scalar header")
        expectError("a: |--\n  b\n", line: 1, column: 6, "block scalar header")
        expectError("a: |\n  x\n b: 1\n", line: 3, column: 2, "bad indentation")
    }

    func testDeepNestingIsRefused() {
        // The document root counts as one level.
        expectError(String(repeating: "[", count: 100_000), line: 1, column: YAML.maxDepth, "nesting is deeper")
        expectError(String(repeating: "- ", count: 10_000) + "x\n", line: 1, column: 2 * YAML.maxDepth + 1, "nesting")
        var deep = ""
        for level in 0..<300 { deep += String(repeating: " ", count: level) + "k:\n" }
        expectError(deep, line: YAML.maxDepth + 1, column: YAML.maxDepth + 1, "nesting")
        // Just under the limit is fine.
        let ok = String(repeating: "[", count: YAML.maxDepth - 1) + String(repeating: "]", count: YAML.maxDepth - 1)
        XCTAssertNoThrow(try YAML.parseDocuments(ok))
    }

    // MARK: Robustness

    func testLargeDocument() throws {
        var text = "items:\n"
        for i in 0..<5000 { text += "- name: item\(i)\n  port: \(i)\n  tags: [a, b]\n" }
        let items = try XCTUnwrap(try parse(text).asMapping?["items"]?.asSequence)
        XCTAssertEqual(items.items.count, 5000)
        XCTAssertEqual(items.items.last?.line, 2 + 4999 * 3)
    }

    /// Feeds thousands of random and mutated inputs; the parser must only return or throw, with
    /// error positions inside the text and node lines inside the text.
    func testFuzzNeverCrashes() {
        let corpus: [String] = [
            istioFile, sidecarFile,
            "a: [x, {b: 'c', d: \"e\\u00e9\"}]\nk: |\n  line\n  two\n- x\n",
            "- - a\n  - b\n-\n  k: v\n  l:\n  - m\n",
            "s: >-\n  folded\n  text\n\n  more\nq: 'it''s'\n",
            "\"quoted key\": {a: [1, 2, [3, {x: y}]], b: }\n---\n...\n",
        ]
        let tokens: [String] = [
            ":", " ", "  ", "-", "- ", "#", " #", "\"", "'", "''", "[", "]", "{", "}", ",", "|", ">", "|-", ">+",
            "|2", "\n", "\n\n", "\t", "&a", "*a", "!t", "? ", "%", "@", "`", "\\", "\\u", "\\uD83D", "\\x4",
            "---", "...", "\n---\n", "\r\n", "\r", "é", "😀", "\u{FEFF}", "null", "~", "a: b", "\n  - ", "\n- ",
            "k:", "\n  ", "\n    x: ", "0", "\u{0}",
        ]
        var rng = SplitMix64(state: 0x5EED_1234_ABCD_0001)
        var returned = 0, threw = 0
        for iteration in 0..<12_000 {
            var scalars: [Unicode.Scalar]
            if iteration % 4 == 3 {
                var s = ""
                for _ in 0..<rng.below(40) { s += tokens[rng.below(tokens.count)] }
                scalars = Array(s.unicodeScalars)
            } else {
                scalars = Array(corpus[rng.below(corpus.count)].unicodeScalars)
                for _ in 0...rng.below(6) {
                    let at = rng.below(scalars.count + 1)
                    switch rng.below(5) {
                    case 0, 1:
                        scalars.insert(contentsOf: tokens[rng.below(tokens.count)].unicodeScalars, at: at)
                    case 2:
                        let end = min(scalars.count, at + 1 + rng.below(8))
                        scalars.removeSubrange(at..<end)
                    case 3:
                        let end = min(scalars.count, at + rng.below(30))
                        let chunk = Array(scalars[at..<end])
                        scalars.insert(contentsOf: chunk, at: rng.below(scalars.count + 1))
                    default:
                        if at < scalars.count { scalars[at] = tokens[rng.below(tokens.count)].unicodeScalars.first ?? " " }
                    }
                }
            }
            var view = String.UnicodeScalarView()
            view.append(contentsOf: scalars)
            let text = String(view)
            let lineCount = scalars.filter { $0 == "\n" }.count + 1
            do {
                let docs = try YAML.parseDocuments(text)
                returned += 1
                for doc in docs {
                    XCTAssertTrue((1...lineCount).contains(doc.line), "doc line \(doc.line) in \(text.debugDescription)")
                    checkLines(doc.node, lineCount, text)
                }
            } catch {
                threw += 1
                XCTAssertTrue((1...lineCount).contains(error.line), "\(error) for \(text.debugDescription)")
                XCTAssertGreaterThanOrEqual(error.column, 1, "\(error) for \(text.debugDescription)")
                XCTAssertFalse(error.message.isEmpty)
            }
        }
        XCTAssertGreaterThan(returned, 100)
        XCTAssertGreaterThan(threw, 100)
    }

    private func checkLines(_ node: YAMLNode, _ lineCount: Int, _ text: String) {
        XCTAssertTrue((1...lineCount).contains(node.line), "node line \(node.line) in \(text.debugDescription)")
        switch node {
        case .scalar: break
        case .mapping(let m):
            for e in m.entries {
                XCTAssertTrue((1...lineCount).contains(e.keyLine))
                checkLines(e.value, lineCount, text)
            }
        case .sequence(let s):
            for item in s.items { checkLines(item, lineCount, text) }
        }
    }
}
