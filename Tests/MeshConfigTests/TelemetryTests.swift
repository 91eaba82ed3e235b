import XCTest
@testable import MeshConfig

/// The Telemetry kind: refusals first (each naming its field and line), then the fields Istio
/// gives, then the resolution per workload (root < namespace < selector).
final class TelemetryTests: XCTestCase {
    func parse(_ spec: String, namespace: String = "default", api: String = "telemetry.istio.io/v1", name: String = "t") throws(ConfigError) -> IstioTraffic.Config {
        try IstioTraffic.parse("apiVersion: \(api)\nkind: Telemetry\nmetadata: {name: \(name), namespace: \(namespace)}\nspec:\n" + spec, file: "t.yaml")
    }

    func refused(_ spec: String, _ path: String, _ words: String, line: Int? = nil, namespace: String = "default",
                 file: StaticString = #filePath, sourceLine: UInt = #line) {
        do throws(ConfigError) {
            _ = try parse(spec, namespace: namespace)
            XCTFail("accepted", file: file, line: sourceLine)
        } catch {
            XCTAssertEqual(error.path, path, "\(error)", file: file, line: sourceLine)
            XCTAssertEqual(error.file, "t.yaml", file: file, line: sourceLine)
            XCTAssertTrue(error.message.contains(words), error.message, file: file, line: sourceLine)
            if let l = line { XCTAssertEqual(error.line, l, "\(error)", file: file, line: sourceLine) }
        }
    }

    func testRefusals() {
        refused("  targetRefs: [{kind: Gateway, name: g}]\n", "spec.targetRefs", "not supported yet", line: 5)
        refused("  targetRef: {kind: Gateway, name: g}\n", "spec.targetRef", "not supported yet")
        refused("  metrics:\n  - providers: [{name: prometheus}]\n", "spec.metrics", "not supported yet", line: 5)
        refused("  tracing:\n  - match: {mode: CLIENT}\n", "spec.tracing[0].match", "not supported yet", line: 6)
        refused("  tracing:\n  - useRequestIdForTraceSampling: true\n", "spec.tracing[0].useRequestIdForTraceSampling", "not supported yet")
        refused("  tracing:\n  - randomSamplingPercentage: 1\n  - randomSamplingPercentage: 2\n", "spec.tracing[1]", "at most one")
        refused("  tracing:\n  - randomSamplingPercentage: 101\n", "spec.tracing[0].randomSamplingPercentage", "between 0 and 100")
        refused("  tracing:\n  - randomSamplingPercentage: -1\n", "spec.tracing[0].randomSamplingPercentage", "between 0 and 100")
        refused("  tracing:\n  - randomSamplingPercentage: \"10\"\n", "spec.tracing[0].randomSamplingPercentage", "expected a number")
        refused("  tracing:\n  - randomSamplingPercentage: .nan\n", "spec.tracing[0].randomSamplingPercentage", "expected a number")
        refused("  tracing:\n  - disableSpanReporting: yes\n", "spec.tracing[0].disableSpanReporting", "true or false")
        refused("  tracing:\n  - customTags: {a: {}}\n", "spec.tracing[0].customTags.a", "exactly one")
        refused("  tracing:\n  - customTags: {a: {literal: {value: x}, header: {name: h}}}\n", "spec.tracing[0].customTags.a", "exactly one")
        refused("  tracing:\n  - customTags: {a: {header: {name: \"bad header\"}}}\n", "spec.tracing[0].customTags.a.header.name", "header name")
        refused("  tracing:\n  - customTags: {a: {environment: {}}}\n", "spec.tracing[0].customTags.a.environment.name", "required")
        refused("  tracing:\n  - customTags: {a: {literal: {value: x, other: y}}}\n", "spec.tracing[0].customTags.a.literal.other", "unknown field")
        refused("  tracing:\n  - customTags: [a]\n", "spec.tracing[0].customTags", "mapping of tag names")
        // A custom tag may not repeat a built-in span attribute (OTLP keys are unique).
        refused("  tracing:\n  - customTags: {http.url: {literal: {value: x}}}\n", "spec.tracing[0].customTags.http.url", "already has")
        refused("  tracing:\n  - customTags: {upstream_cluster: {literal: {value: x}}}\n", "spec.tracing[0].customTags.upstream_cluster", "already has")
        refused("  tracing:\n  - sampling: 3\n", "spec.tracing[0].sampling", "unknown field")
        refused("  accessLogging:\n  - providers: [{name: otel}]\n", "spec.accessLogging[0].providers[0].name", "unknown access log provider \"otel\"")
        refused("  accessLogging:\n  - providers: [{}]\n", "spec.accessLogging[0].providers[0].name", "required")
        refused("  accessLogging:\n  - match: {mode: BOTH}\n", "spec.accessLogging[0].match.mode", "CLIENT, SERVER or CLIENT_AND_SERVER")
        refused("  accessLogging:\n  - disabled: 1\n", "spec.accessLogging[0].disabled", "true or false")
        refused("  accessLogging:\n  - filter: {}\n", "spec.accessLogging[0].filter.expression", "required")
        refused("  accessLogging:\n  - filter: {expression: \"request.path == '/x'\"}\n", "spec.accessLogging[0].filter.expression",
                "\"request.path\" is not supported yet", line: 6)
        refused("  accessLogging:\n  - filter: {expression: \"response.code >= 400 &&\"}\n", "spec.accessLogging[0].filter.expression", "ends early")
        refused("  accessLogging:\n  - filter: {expression: \"response.flags == 'XX'\"}\n", "spec.accessLogging[0].filter.expression", "short response flags")
        refused("  selector: {matchLabels: {app: a}}\n", "spec.selector", "takes no selector", namespace: IstioSidecar.rootNamespace)
        refused("  selector: {labels: {app: a}}\n", "spec.selector.labels", "unknown field")
    }

    func testOneSelectorlessPerNamespace() {
        let text = """
        apiVersion: telemetry.istio.io/v1
        kind: Telemetry
        metadata: {name: a}
        spec: {accessLogging: [{}]}
        ---
        apiVersion: telemetry.istio.io/v1
        kind: Telemetry
        metadata: {name: b}
        spec: {accessLogging: [{disabled: true}]}
        """
        XCTAssertThrowsError(try IstioTraffic.parse(text, file: "t.yaml")) { e in
            XCTAssertTrue("\(e)".contains("Telemetry default/b: spec.selector"), "\(e)")
        }
        let wrongAPI = "apiVersion: networking.istio.io/v1\nkind: Telemetry\nmetadata: {name: a}\nspec: {}\n"
        XCTAssertThrowsError(try IstioTraffic.parse(wrongAPI, file: "t.yaml")) { e in
            XCTAssertTrue("\(e)".contains("apiVersion: expected telemetry.istio.io/v1"), "\(e)")
        }
    }

    func testFields() throws {
        let cfg = try parse("""
          selector: {matchLabels: {app: reviews}}
          tracing:
          - providers: [{name: otel}]
            randomSamplingPercentage: 12.5
            disableSpanReporting: true
            customTags:
              env: {literal: {value: prod}}
              user: {header: {name: X-User, defaultValue: none}}
              pod: {environment: {name: POD_NAME}}
          accessLogging:
          - providers: [{name: envoy}, {name: envoy-json}]
            filter: {expression: "response.code >= 400"}
            match: {mode: SERVER}
        """, api: "telemetry.istio.io/v1alpha1")
        let t = try XCTUnwrap(cfg.telemetries.first)
        XCTAssertEqual(t.selector?.map { "\($0.0)=\($0.1)" }, ["app=reviews"])
        XCTAssertEqual(t.tracing?.providers, ["otel"])
        XCTAssertEqual(t.tracing?.randomSamplingPercentage, 12.5)
        XCTAssertEqual(t.tracing?.disableSpanReporting, true)
        XCTAssertEqual(t.tracing?.customTags, [
            TracingTag(name: "env", source: .literal("prod")),
            TracingTag(name: "user", source: .header(name: "x-user", defaultValue: "none")),
            TracingTag(name: "pod", source: .environment(name: "POD_NAME", defaultValue: nil)),
        ])
        let al = try XCTUnwrap(t.accessLogging?.first)
        XCTAssertEqual(al.providers, ["envoy", "envoy-json"])
        XCTAssertEqual(al.mode, .server)
        XCTAssertEqual(al.filter?.expression, "response.code >= 400")
        let s = AccessLogSettings(t.accessLogging!)
        XCTAssertEqual(s.client, [])
        XCTAssertEqual(s.server.map(\.format), [.text, .json])
    }

    // MARK: resolution

    func docs(_ text: String) throws -> [Telemetry] { try IstioTraffic.parse(text, file: "t.yaml").telemetries }

    let root = IstioSidecar.rootNamespace

    func testPrecedence() throws {
        let all = try docs("""
        apiVersion: telemetry.istio.io/v1
        kind: Telemetry
        metadata: {name: mesh-default, namespace: \(root)}
        spec:
          tracing: [{randomSamplingPercentage: 10, customTags: {a: {literal: {value: root}}}}]
          accessLogging: [{providers: [{name: envoy}]}]
        ---
        apiVersion: telemetry.istio.io/v1
        kind: Telemetry
        metadata: {name: ns, namespace: shop}
        spec:
          tracing: [{disableSpanReporting: true}]
        ---
        apiVersion: telemetry.istio.io/v1
        kind: Telemetry
        metadata: {name: reviews, namespace: shop}
        spec:
          selector: {matchLabels: {app: reviews}}
          tracing: [{randomSamplingPercentage: 100}]
          accessLogging: [{disabled: true}]
        ---
        apiVersion: telemetry.istio.io/v1
        kind: Telemetry
        metadata: {name: other, namespace: other}
        spec:
          selector: {matchLabels: {app: reviews}}
          accessLogging: [{providers: [{name: envoy-json}], match: {mode: CLIENT}}]
        """)
        // Another namespace, no own resource: the mesh-wide one.
        let plain = TelemetrySettings.resolve(all, namespace: "bar", labels: [("app", "x")])
        XCTAssertEqual(plain.tracing.randomSamplingPercentage, 10)
        XCTAssertFalse(plain.tracing.disableSpanReporting)
        XCTAssertEqual(plain.tracing.customTags, [TracingTag(name: "a", source: .literal("root"))])
        XCTAssertEqual(plain.accessLogging?.client.map(\.format), [.text])
        XCTAssertEqual(plain.accessLogging?.server.map(\.format), [.text])
        // The namespace's resource sets disableSpanReporting only: the rest stays the mesh's.
        let ns = TelemetrySettings.resolve(all, namespace: "shop", labels: [("app", "ratings")])
        XCTAssertEqual(ns.tracing.randomSamplingPercentage, 10)
        XCTAssertTrue(ns.tracing.disableSpanReporting)
        XCTAssertEqual(ns.accessLogging?.isEmpty, false)
        // The workload's overrides both; accessLogging disabled replaces the mesh's list.
        let wl = TelemetrySettings.resolve(all, namespace: "shop", labels: [("app", "reviews")])
        XCTAssertEqual(wl.tracing.randomSamplingPercentage, 100)
        XCTAssertTrue(wl.tracing.disableSpanReporting)
        XCTAssertEqual(wl.tracing.customTags.count, 1)
        XCTAssertEqual(wl.accessLogging, AccessLogSettings())
        // A selector selects in its own namespace only.
        // Its CLIENT-only entry leaves the server side the mesh-wide `envoy` (Istio merges per side).
        let o = TelemetrySettings.resolve(all, namespace: "other", labels: [("app", "reviews")])
        XCTAssertEqual(o.accessLogging?.client.map(\.format), [.json])
        XCTAssertEqual(o.accessLogging?.server.map(\.format), [.text])
        let o2 = TelemetrySettings.resolve(all, namespace: "other", labels: [("app", "ratings")])
        XCTAssertEqual(o2.accessLogging?.server.map(\.format), [.text])
        // None at all: Istio's defaults, no access-log decision.
        let none = TelemetrySettings.resolve([], namespace: "shop", labels: [])
        XCTAssertEqual(none, TelemetrySettings())
        XCTAssertEqual(none.tracing.randomSamplingPercentage, 1)
        XCTAssertNil(none.accessLogging)
    }

    func testAccessLogEntriesPerSide() throws {
        let t = try docs("""
        apiVersion: telemetry.istio.io/v1
        kind: Telemetry
        metadata: {name: a}
        spec:
          accessLogging:
          - providers: [{name: envoy}]
          - providers: [{name: envoy}]
            match: {mode: CLIENT}
            disabled: true
          - providers: [{name: envoy-json}]
            match: {mode: CLIENT}
            filter: {expression: "response.code == 503"}
        """)
        let s = TelemetrySettings.resolve(t, namespace: "default", labels: []).accessLogging!
        XCTAssertEqual(s.server.map(\.format), [.text])
        XCTAssertEqual(s.client.map(\.format), [.json])
        XCTAssertEqual(s.client.first?.filter?.matches(code: 503, flags: "UH"), true)
        XCTAssertEqual(s.client.first?.filter?.matches(code: 200, flags: "-"), false)
    }

    /// Istio's merge of `accessLogging` across mesh-wide, namespace and workload resources
    /// (pilot's mergeLogs): per provider and side, filters and providers inherited.
    func merged(_ levels: [String], namespace: String = "shop", labels: [(String, String)] = [("app", "reviews")]) throws -> AccessLogSettings? {
        let scopes: [(String, String)] = [(root, ""), ("shop", ""), ("shop", "  selector: {matchLabels: {app: reviews}}\n")]
        var text: [String] = []
        for (i, l) in levels.enumerated() where !l.isEmpty {
            text.append("apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t\(i), namespace: \(scopes[i].0)}\nspec:\n" + scopes[i].1 + l)
        }
        return TelemetrySettings.resolve(try docs(text.joined(separator: "---\n")), namespace: namespace, labels: labels).accessLogging
    }

    func testAccessLogMergeAcrossLevels() throws {
        let errors = "  accessLogging:\n  - providers: [{name: envoy}]\n    filter: {expression: \"response.code >= 400\"}\n"
        // Mesh-wide errors-only + workload `disabled` on SERVER: the client side keeps the
        // mesh-wide provider and its filter; the server side logs nothing.
        var s = try XCTUnwrap(merged([errors, "", "  accessLogging: [{match: {mode: SERVER}, disabled: true}]\n"]))
        XCTAssertEqual(s.server, [])
        XCTAssertEqual(s.client.map(\.format), [.text])
        XCTAssertEqual(s.client.first?.filter?.expression, "response.code >= 400")
        // Mesh-wide filter + a namespace entry without providers (or with only a mode): the filter stays.
        s = try XCTUnwrap(merged([errors, "  accessLogging: [{match: {mode: CLIENT_AND_SERVER}}]\n"], labels: []))
        XCTAssertEqual(s.client.first?.filter?.expression, "response.code >= 400")
        XCTAssertEqual(s.server.first?.filter?.expression, "response.code >= 400")
        // A namespace entry naming the provider again replaces its filter (Istio: the last entry
        // naming a provider gives its filter; without one, every request).
        s = try XCTUnwrap(merged([errors, "  accessLogging: [{providers: [{name: envoy}]}]\n"], labels: []))
        XCTAssertEqual(s.client.map(\.format), [.text])
        XCTAssertNil(s.client.first?.filter)
        XCTAssertNil(s.server.first?.filter)
        // Istio's example: mesh-wide `envoy`, a workload turns its logs off: both sides off.
        s = try XCTUnwrap(merged(["  accessLogging: [{providers: [{name: envoy}]}]\n", "", "  accessLogging: [{disabled: true}]\n"]))
        XCTAssertTrue(s.isEmpty)
        // ... other workloads of the namespace keep logging.
        XCTAssertEqual(try merged(["  accessLogging: [{providers: [{name: envoy}]}]\n", "", "  accessLogging: [{disabled: true}]\n"],
                                  labels: [("app", "ratings")])?.server.map(\.format), [.text])
        // Istio's example: mesh-wide off, a namespace turns `envoy` on for its client side only.
        s = try XCTUnwrap(merged(["  accessLogging: [{disabled: true}]\n",
                                  "  accessLogging: [{providers: [{name: envoy}], match: {mode: CLIENT}}]\n"], labels: []))
        XCTAssertEqual(s.client.map(\.format), [.text])
        XCTAssertEqual(s.server, [])
        // A more specific resource naming another provider replaces the provider set.
        s = try XCTUnwrap(merged([errors, "  accessLogging: [{providers: [{name: envoy-json}]}]\n"], labels: []))
        XCTAssertEqual(s.client.map(\.format), [.json])
        XCTAssertEqual(s.server.map(\.format), [.json])
        // Two providers mesh-wide; the workload names one for its client side: on that side only
        // the named one is in scope (Istio), disabled; the server side keeps both with their filter.
        s = try XCTUnwrap(merged(["  accessLogging:\n  - providers: [{name: envoy}, {name: envoy-json}]\n    filter: {expression: \"response.code == 503\"}\n",
                                  "", "  accessLogging: [{providers: [{name: envoy-json}], match: {mode: CLIENT}, disabled: true}]\n"]))
        XCTAssertEqual(s.client, [])
        XCTAssertEqual(s.server.map(\.format), [.text, .json])
        XCTAssertEqual(s.server.map { $0.filter?.expression }, ["response.code == 503", "response.code == 503"])
        // Without naming it, the workload's client-side `disabled` turns off both inherited providers.
        s = try XCTUnwrap(merged(["  accessLogging:\n  - providers: [{name: envoy}, {name: envoy-json}]\n",
                                  "", "  accessLogging: [{match: {mode: CLIENT}, disabled: true}]\n"]))
        XCTAssertEqual(s.client, [])
        XCTAssertEqual(s.server.map(\.format), [.text, .json])
        // `accessLogging: []` sets nothing (Istio): the mesh-wide list applies.
        s = try XCTUnwrap(merged([errors, "  accessLogging: []\n"], labels: []))
        XCTAssertEqual(s.server.first?.filter?.expression, "response.code >= 400")
    }

    /// Istio: `selector: {}` (no labels) is no selector: the namespace's resource, not a workload
    /// one outranking it, and the one selectorless resource of its namespace.
    func testEmptySelectorIsNamespaceWide() throws {
        let text = """
        apiVersion: telemetry.istio.io/v1
        kind: Telemetry
        metadata: {name: a, namespace: shop}
        spec:
          selector: {}
          accessLogging: [{providers: [{name: envoy-json}]}]
        ---
        apiVersion: telemetry.istio.io/v1
        kind: Telemetry
        metadata: {name: b, namespace: shop}
        spec:
          selector: {matchLabels: {app: reviews}}
          accessLogging: [{providers: [{name: envoy}]}]
        """
        let all = try docs(text)
        XCTAssertNil(all.first { $0.name == "a" }?.selector)
        XCTAssertEqual(TelemetrySettings.resolve(all, namespace: "shop", labels: [("app", "reviews")]).accessLogging?.server.map(\.format), [.text])
        XCTAssertEqual(TelemetrySettings.resolve(all, namespace: "shop", labels: [("app", "x")]).accessLogging?.server.map(\.format), [.json])
        // A second selectorless one in the namespace is refused, `selector: {matchLabels: {}}` too.
        let second = text + "\n---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: c, namespace: shop}\nspec:\n  selector: {matchLabels: {}}\n  accessLogging: [{}]\n"
        XCTAssertThrowsError(try IstioTraffic.parse(second, file: "t.yaml")) { e in
            XCTAssertTrue("\(e)".contains("Telemetry shop/c: spec.selector"), "\(e)")
        }
        // In the root namespace an empty selector is the mesh-wide resource.
        let rootDoc = try docs("apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: m, namespace: \(root)}\nspec:\n  selector: {}\n  accessLogging: [{}]\n")
        XCTAssertEqual(TelemetrySettings.resolve(rootDoc, namespace: "x", labels: []).accessLogging?.client.map(\.format), [.text])
    }

    // MARK: filter

    func ok(_ e: String, _ cases: [(Int, String, Bool)], file: StaticString = #filePath, line: UInt = #line) {
        do throws(AccessLogFilterError) {
            let f = try AccessLogFilter(e)
            for (code, flags, want) in cases {
                XCTAssertEqual(f.matches(code: code, flags: flags), want, "\(e) on \(code) \(flags)", file: file, line: line)
            }
        } catch { XCTFail("\(e): \(error.message)", file: file, line: line) }
    }

    func bad(_ e: String, _ words: String, file: StaticString = #filePath, line: UInt = #line) {
        do throws(AccessLogFilterError) {
            _ = try AccessLogFilter(e)
            XCTFail("accepted \(e)", file: file, line: line)
        } catch { XCTAssertTrue(error.message.contains(words), "\(e): \(error.message)", file: file, line: line) }
    }

    func testFilterRefusals() {
        bad("", "empty")
        bad("response.code", "expected a comparison")
        bad("response.code >= ", "integer literal")
        bad("response.code >= '400'", "integer literal")
        bad("response.code >= 400 400", "unexpected")
        bad("response.code = 400", "expected a comparison")
        bad("response.flags > 'UH'", "== or != only")
        bad("response.flags == UH", "string literal")
        bad("response.flags == 'UH", "unterminated")
        bad("response.flags == 'uh'", "short response flags")
        bad("(response.code == 1", "expected \")\"")
        bad("request.headers['x'] == 'y'", "\"request.headers\" is not supported yet")
        bad("rand() < 0.1", "\"rand\" is not supported yet")
        bad("response.code >= 400 & response.code < 500", "unexpected")
        bad(String(repeating: "!", count: 40) + "true", "nested deeper")
        bad(String(repeating: "(", count: 40) + "true" + String(repeating: ")", count: 40), "nested deeper")
        bad("response.code == 99999999999", "too long")
    }

    func testFilterEval() {
        ok("response.code >= 400", [(400, "-", true), (503, "UH", true), (399, "-", false), (200, "-", false)])
        ok("response.code == 503", [(503, "UH", true), (504, "UT", false)])
        ok("response.code != 200 && response.code != 404", [(200, "-", false), (404, "NR", false), (500, "-", true)])
        ok("!(response.code < 500)", [(500, "-", true), (499, "-", false)])
        ok("response.code < 300 || response.code > 499", [(200, "-", true), (404, "-", false), (503, "-", true)])
        ok("response.code <= 204 && response.code > 199", [(204, "-", true), (205, "-", false), (199, "-", false)])
        ok("response.flags == 'UH'", [(503, "UH", true), (503, "UF", false), (503, "U", false), (503, "UHX", false)])
        ok("response.flags != \"-\"", [(200, "-", false), (503, "URX", true)])
        ok("  ( response.flags=='NR' || response.code==503 ) && true ", [(404, "NR", true), (503, "UF", true), (500, "UF", false)])
        ok("false || !false", [(200, "-", true)])
        ok("a" == "a" ? "response.code == 0" : "", [(0, "DC", true), (1, "DC", false)])
        // && binds tighter than ||.
        ok("response.code == 1 || response.code == 2 && response.code == 3", [(1, "-", true), (2, "-", false)])
    }
}
