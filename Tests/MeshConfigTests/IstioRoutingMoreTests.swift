import XCTest
@testable import MeshConfig

/// VirtualService match extras, redirect/directResponse, corsPolicy and the LocalRateLimit kind:
/// refusals first (each names the file, line and field), then what is accepted.
final class IstioRoutingMoreTests: XCTestCase {
    private func bootstrap(_ docs: String) -> String {
        """
        apiVersion: sidecar.mesh/v1alpha1
        kind: Bootstrap
        metadata: {name: t}
        spec:
          workload: {service: t, labels: {app: front}}
          outbound: {port: 15001}
          clusters:
            - name: reviews
              tls: DISABLE
              endpoints: ["127.0.0.1:9081"]
        ---
        """ + "\n" + docs
    }

    /// A VirtualService for `reviews` with one http route whose body is `route` (indented 4).
    private func vs(_ route: String, name: String = "reviews") -> String {
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: \(name)}\nspec:\n  hosts: [reviews]\n  http:\n  - name: main\n" + route
    }

    private let dest = "    route: [{destination: {host: reviews}}]\n"

    /// The refusal names `t.yaml:LINE` and every part given.
    private func refused(_ docs: String, line: Int?, _ expected: [String], file: StaticString = #filePath, at: UInt = #line) {
        XCTAssertThrowsError(try Bootstrap.parse(bootstrap(docs), file: "t.yaml"), file: file, line: at) { e in
            let msg = "\(e)"
            if let line { XCTAssertTrue(msg.hasPrefix("t.yaml:\(line):"), "line \(line) not in: \(msg)", file: file, line: at) }
            for part in expected { XCTAssertTrue(msg.contains(part), "\"\(part)\" not in: \(msg)", file: file, line: at) }
        }
    }

    private func parsed(_ docs: String, file: StaticString = #filePath, line: UInt = #line) throws -> Bootstrap {
        try Bootstrap.parse(bootstrap(docs), file: "t.yaml")
    }

    // The VirtualService's `- name: main` is line 18 of the file; its fields follow.

    func testMatchFieldsLeftToOthersAreRefusedByName() {
        refused(vs("    match:\n    - statPrefix: x\n" + dest), line: 20, ["spec.http[0].match[0].statPrefix", "not supported yet"])
    }

    func testBadMatchValuesAreRefusedByField() {
        refused(vs("    match:\n    - queryParams: {v: {suffix: x}}\n" + dest), line: 20, ["spec.http[0].match[0].queryParams.v.suffix", "unknown field"])
        refused(vs("    match:\n    - queryParams: {v: {exact: a, prefix: b}}\n" + dest), line: 20, ["spec.http[0].match[0].queryParams.v", "exactly one"])
        refused(vs("    match:\n    - queryParams: {\"a&b\": {exact: x}}\n" + dest), line: 20, ["queryParams.a&b", "query parameter name"])
        refused(vs("    match:\n    - queryParams: {v: {regex: \"(\"}}\n" + dest), line: 20, ["queryParams.v.regex", "invalid regular expression"])
        refused(vs("    match:\n    - port: 0\n" + dest), line: 20, ["spec.http[0].match[0].port", "between 1 and 65535"])
        refused(vs("    match:\n    - port: 70000\n" + dest), line: 20, ["spec.http[0].match[0].port"])
        refused(vs("    match:\n    - authority: {}\n" + dest), line: 20, ["spec.http[0].match[0].authority", "expected one of exact, prefix or regex"])
        refused(vs("    match:\n    - withoutHeaders: {\"bad name\": {exact: x}}\n" + dest), line: 20, ["withoutHeaders.bad name", "header name"])
        refused(vs("    match:\n    - ignoreUriCase: yes\n" + dest), line: 20, ["spec.http[0].match[0].ignoreUriCase", "true or false"])
        refused(vs("    match:\n    - sourceNamespace: Bad_NS\n" + dest), line: 20, ["spec.http[0].match[0].sourceNamespace", "DNS label"])
        refused(vs("    match:\n    - sourceLabels: {app: \"a b\"}\n" + dest), line: 20, ["sourceLabels.app", "label"])
    }

    func testRedirectAndDirectResponseRefusals() {
        refused(vs("    redirect: {uri: /new}\n" + dest), line: 18, ["spec.http[0].route", "cannot also have route destinations"])
        refused(vs("    directResponse: {status: 503}\n" + dest), line: 18, ["spec.http[0].route", "directResponse"])
        refused(vs("    redirect: {uri: /new}\n    directResponse: {status: 200}\n"), line: 20, ["spec.http[0].directResponse", "not both"])
        refused(vs("    redirect: {uri: /new, redirectCode: 200}\n"), line: 19, ["spec.http[0].redirect.redirectCode", "301, 302, 303, 307 or 308"])
        refused(vs("    redirect: {uri: new}\n"), line: 19, ["spec.http[0].redirect.uri", "starting with /"])
        refused(vs("    redirect: {derivePort: SOMETIMES}\n"), line: 19, ["spec.http[0].redirect.derivePort", "FROM_PROTOCOL_DEFAULT"])
        refused(vs("    redirect: {port: 8080, derivePort: FROM_REQUEST_PORT}\n"), line: 19, ["spec.http[0].redirect.derivePort", "not both"])
        refused(vs("    redirect: {scheme: ftp}\n"), line: 19, ["spec.http[0].redirect.scheme", "http or https"])
        refused(vs("    directResponse: {status: 99}\n"), line: 19, ["spec.http[0].directResponse.status", "between 200 and 599"])
        refused(vs("    directResponse: {body: {string: x}}\n"), line: 19, ["spec.http[0].directResponse.status", "required"])
        refused(vs("    directResponse: {status: 200, body: {bytes: \"not base64!\"}}\n"), line: 19, ["spec.http[0].directResponse.body.bytes", "base64"])
        refused(vs("    directResponse: {status: 200, body: {string: a, bytes: YQ==}}\n"), line: 19, ["spec.http[0].directResponse.body", "exactly one"])
        // Fields that act only on an upstream are refused on a route answered here, by name.
        for (f, v) in [("retries", "{attempts: 2}"), ("timeout", "1s"), ("fault", "{abort: {httpStatus: 500}}"),
                       ("rewrite", "{uri: /x}"), ("mirror", "{host: reviews}"), ("headers", "{request: {set: {a: b}}}")] {
            refused(vs("    directResponse: {status: 204}\n    \(f): \(v)\n"), line: 20, ["spec.http[0].\(f)", "answered by the sidecar"])
        }
    }

    func testCORSRefusals() {
        refused(vs("    corsPolicy: {maxAge: 1500ms}\n" + dest), line: 19, ["spec.http[0].corsPolicy.maxAge", "whole seconds"])
        refused(vs("    corsPolicy: {unmatchedPreflights: DROP}\n" + dest), line: 19, ["spec.http[0].corsPolicy.unmatchedPreflights", "FORWARD or IGNORE"])
        refused(vs("    corsPolicy: {allowOrigin: [\"*\"]}\n" + dest), line: 19, ["spec.http[0].corsPolicy.allowOrigin", "not supported yet"])
        refused(vs("    corsPolicy: {allowOrigins: [{regex: \"[\"}]}\n" + dest), line: 19, ["corsPolicy.allowOrigins[0].regex", "invalid regular expression"])
        refused(vs("    corsPolicy: {allowMethods: [\"GET POST\"]}\n" + dest), line: 19, ["corsPolicy.allowMethods[0]", "HTTP method"])
        refused(vs("    corsPolicy: {allowCredentials: maybe}\n" + dest), line: 19, ["corsPolicy.allowCredentials", "true or false"])
    }

    private func limit(_ spec: String, api: String = "mesh.io/v1alpha1") -> String {
        vs(dest) + "---\napiVersion: \(api)\nkind: LocalRateLimit\nmetadata: {name: lim}\nspec:\n" + spec
    }

    func testLocalRateLimitRefusals() {
        // The LocalRateLimit document starts at line 21 (its spec fields: line 25 on).
        let bucket = "  tokenBucket: {maxTokens: 10, tokensPerFill: 10, fillInterval: 1s}\n"
        refused(limit("  virtualService: reviews\n" + bucket, api: "networking.istio.io/v1"), line: 21, ["apiVersion", "expected mesh.io/v1alpha1 for LocalRateLimit"])
        refused(limit(bucket), line: 25, ["virtualService", "required"])
        refused(limit("  virtualService: reviews\n"), line: 25, ["spec.tokenBucket", "required"])
        refused(limit("  virtualService: reviews\n  tokenBucket: {maxTokens: 0, fillInterval: 1s}\n"), line: 26, ["spec.tokenBucket.maxTokens", "between 1"])
        refused(limit("  virtualService: reviews\n  tokenBucket: {maxTokens: 5, fillInterval: 10ms}\n"), line: 26, ["spec.tokenBucket.fillInterval", "at least 50ms"])
        refused(limit("  virtualService: reviews\n  tokenBucket: {maxTokens: 5}\n"), line: 26, ["spec.tokenBucket.fillInterval", "required"])
        refused(limit("  virtualService: reviews\n  burst: 3\n" + bucket), line: 26, ["spec.burst", "unknown field"])
        refused(limit("  virtualService: reviews\n  routes: []\n" + bucket), line: 26, ["spec.routes", "limits nothing"])
        refused(limit("  virtualService: reviews\n  workloadSelector: {}\n" + bucket), line: 26, ["spec.workloadSelector.labels", "required"])
        // Whole-set checks: the VirtualService and its route must exist, one bucket per route.
        refused(limit("  virtualService: ratings\n" + bucket), line: nil, ["LocalRateLimit default/lim: spec.virtualService", "no VirtualService default/ratings"])
        refused(limit("  virtualService: reviews\n  routes: [main, other]\n" + bucket), line: nil, ["spec.routes[1]", "no http route named \"other\""])
        refused(limit("  virtualService: reviews\n" + bucket) + "---\napiVersion: mesh.io/v1alpha1\nkind: LocalRateLimit\nmetadata: {name: lim2}\nspec:\n  virtualService: reviews\n  routes: [main]\n" + bucket,
                line: nil, ["LocalRateLimit default/lim2", "already limits"])
    }

    func testAcceptedFields() throws {
        let b = try parsed(vs("""
            match:
            - name: by-query
              queryParams: {v: {exact: "2"}, debug: {exact: ""}, q: {prefix: "a%20"}, r: {regex: "[0-9]+"}}
              authority: {prefix: "reviews"}
              port: 9080
              scheme: {exact: http}
              withoutHeaders: {x-skip: {exact: "1"}, x-none: {prefix: ""}}
              ignoreUriCase: true
              uri: {prefix: /API}
              sourceLabels: {app: front}
              sourceNamespace: default
            corsPolicy:
              allowOrigins: [{exact: "https://a.example"}, {regex: "https://.*\\\\.b\\\\.example"}]
              allowMethods: [GET, POST]
              allowHeaders: [x-custom]
              exposeHeaders: [x-exposed]
              maxAge: 24h
              allowCredentials: true
              unmatchedPreflights: IGNORE

        """ + dest) + "---\n" + vs("    redirect: {uri: /v2, authority: new.example, scheme: https, derivePort: FROM_REQUEST_PORT, redirectCode: 308}\n  - directResponse: {status: 503, body: {bytes: \"aGk=\"}}\n", name: "other")
            .replacingOccurrences(of: "hosts: [reviews]", with: "hosts: [other.example]")
            + "---\napiVersion: mesh.io/v1alpha1\nkind: LocalRateLimit\nmetadata: {name: lim}\nspec:\n  virtualService: reviews\n  routes: [main]\n  workloadSelector: {labels: {app: front}}\n  tokenBucket: {maxTokens: 2, fillInterval: 100ms}\n")
        let r = b.traffic.virtualServices[0].http[0]
        let x = r.match[0].extras
        XCTAssertEqual(x.name, "by-query")
        XCTAssertEqual(x.queryParams.map(\.name), ["v", "debug", "q", "r"])
        XCTAssertEqual(x.queryParams[1].match, .init(kind: .exact, value: ""))
        XCTAssertEqual(x.authority, .init(kind: .prefix, value: "reviews"))
        XCTAssertEqual(x.port, 9080)
        XCTAssertEqual(x.withoutHeaders.map(\.name), ["x-skip", "x-none"])
        XCTAssertTrue(x.ignoreUriCase)
        XCTAssertTrue(x.selectsSource(namespace: "default", labels: [("app", "front"), ("version", "v1")]))
        XCTAssertFalse(x.selectsSource(namespace: "other", labels: [("app", "front")]))
        XCTAssertFalse(x.selectsSource(namespace: "default", labels: [("app", "back")]))
        let c = try XCTUnwrap(r.corsPolicy)
        XCTAssertEqual(c.allowOrigins.count, 2)
        XCTAssertEqual(c.allowMethods, ["GET", "POST"])
        XCTAssertEqual(c.maxAge, 86400)
        XCTAssertEqual(c.allowCredentials, true)
        XCTAssertEqual(c.unmatchedPreflights, .ignore)
        let o = b.traffic.virtualServices[1].http
        let rd = try XCTUnwrap(o[0].redirect)
        XCTAssertEqual(rd.uri, "/v2"); XCTAssertEqual(rd.authority, "new.example"); XCTAssertEqual(rd.scheme, "https")
        XCTAssertEqual(rd.derivePort, .fromRequestPort); XCTAssertEqual(rd.redirectCode, 308)
        XCTAssertTrue(o[0].route.isEmpty)
        XCTAssertEqual(o[1].directResponse?.status, 503)
        XCTAssertEqual(o[1].directResponse?.body, Array("hi".utf8))
        let l = try XCTUnwrap(b.traffic.localRateLimits.first)
        XCTAssertEqual(l.tokenBucket, .init(maxTokens: 2, tokensPerFill: 1, fillInterval: 100_000_000))
        XCTAssertEqual(l.routes, ["main"])
        XCTAssertTrue(l.selects(labels: [("app", "front")]))
        XCTAssertFalse(l.selects(labels: [("app", "other")]))
    }

    func testBase64IsStrict() {
        XCTAssertEqual(Base64Decoding.decode("aGVsbG8="), Array("hello".utf8))
        XCTAssertEqual(Base64Decoding.decode("aGk="), Array("hi".utf8))
        XCTAssertEqual(Base64Decoding.decode(""), [])
        for bad in ["aGk", "aG=k", "a===", "aGk*", "aGVsbG8=aGk="] { XCTAssertNil(Base64Decoding.decode(bad), bad) }
    }
}
