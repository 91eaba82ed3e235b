import XCTest
@testable import MeshConfig

/// The Canary parser (refusals first: each names the field and its line) and how a Canary
/// resolves against the DestinationRule and VirtualService in force.
final class CanaryTests: XCTestCase {
    static let routes = """
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: reviews}
    spec:
      host: reviews
      subsets:
      - {name: v1, labels: {version: v1}}
      - {name: v2, labels: {version: v2}}
      - {name: nolabel, labels: {track: x}}
    ---
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: reviews}
    spec:
      hosts: [reviews]
      http:
      - name: api
        match: [{uri: {prefix: /api}}]
        route:
        - destination: {host: reviews, subset: v1}
      - name: main
        route:
        - destination: {host: reviews, subset: v1}
          weight: 100
        - destination: {host: reviews, subset: v2}
          weight: 0
    """

    static func canary(_ analysis: String = "stepWeight: 10\n    maxWeight: 50", spec: String = "", metrics: String? = nil) -> String {
        """
        apiVersion: mesh.io/v1alpha1
        kind: Canary
        metadata: {name: reviews}
        spec:
          host: reviews
          stable: v1
          canary: v2
        \(spec.isEmpty ? "" : spec + "\n")  analysis:
            interval: 1s
            threshold: 3
            \(analysis)
            metrics:
        \(metrics ?? "    - {name: request-success-rate, interval: 2s, thresholdRange: {min: 99}}\n    - {name: request-duration, thresholdRange: {max: 500}}")
        """
    }

    func refused(_ text: String, _ path: String, _ words: String, line: Int? = nil, file: StaticString = #filePath, lineNo: UInt = #line) {
        do {
            _ = try IstioTraffic.parse(text, file: "c.yaml")
            XCTFail("accepted: \(text)", file: file, line: lineNo)
        } catch {
            XCTAssertEqual(error.path, path, error.description, file: file, line: lineNo)
            XCTAssertTrue(error.message.contains(words), error.description, file: file, line: lineNo)
            if let line { XCTAssertEqual(error.line, line, error.description, file: file, line: lineNo) }
            XCTAssertEqual(error.file, "c.yaml", file: file, line: lineNo)
        }
    }

    func testRefusesWeightsOutsideZeroToHundred() {
        refused(Self.canary("stepWeight: 10\n    maxWeight: 101"), "spec.analysis.maxWeight", "between 1 and 100", line: 12)
        refused(Self.canary("stepWeight: 0\n    maxWeight: 50"), "spec.analysis.stepWeight", "between 1 and 100")
        refused(Self.canary("stepWeights: [10, 120]"), "spec.analysis.stepWeights[1]", "between 1 and 100")
        refused(Self.canary("stepWeights: [-5, 10]"), "spec.analysis.stepWeights[0]", "between 1 and 100")
    }

    func testRefusesStepsThatDoNotIncreaseOrNeverReachMaxWeight() {
        refused(Self.canary("stepWeights: [10, 10, 50]"), "spec.analysis.stepWeights[1]", "steps must increase")
        refused(Self.canary("stepWeights: [10, 30]\n    maxWeight: 50"), "spec.analysis.stepWeights", "never reach maxWeight 50")
        refused(Self.canary("stepWeight: 15\n    maxWeight: 50"), "spec.analysis.maxWeight", "never reach maxWeight 50", line: 12)
        refused(Self.canary("stepWeight: 10"), "spec.analysis.maxWeight", "required with stepWeight")
        refused(Self.canary("stepWeight: 10\n    stepWeights: [10, 20]"), "spec.analysis.stepWeight", "cannot both be given")
        refused(Self.canary("maxWeight: 50"), "spec.analysis.stepWeight", "required field is missing")
        refused(Self.canary("stepWeights: []"), "spec.analysis.stepWeights", "non-empty list")
        refused(Self.canary("iterations: 5\n    stepWeight: 10\n    maxWeight: 50"), "spec.analysis.iterations", "not both")
        refused(Self.canary("iterations: 5"), "spec.analysis.maxWeight", "required with iterations")
    }

    func testRefusesUnknownMetricsAndBadThresholds() {
        refused(Self.canary(metrics: "    - {name: error-rate, thresholdRange: {max: 1}}"), "spec.analysis.metrics[0].name", "unknown metric \"error-rate\"")
        refused(Self.canary(metrics: "    - {name: request-success-rate, thresholdRange: {max: 1}}"), "spec.analysis.metrics[0].thresholdRange.max", "not supported yet")
        refused(Self.canary(metrics: "    - {name: request-success-rate, thresholdRange: {min: 101}}"), "spec.analysis.metrics[0].thresholdRange.min", "between 0 and 100")
        refused(Self.canary(metrics: "    - {name: request-duration, thresholdRange: {min: 1}}"), "spec.analysis.metrics[0].thresholdRange.min", "not supported yet")
        refused(Self.canary(metrics: "    - {name: request-duration}"), "spec.analysis.metrics[0].thresholdRange", "required field is missing")
        refused(Self.canary(metrics: "    - {name: request-duration, interval: 500ms, thresholdRange: {max: 9}}"), "spec.analysis.metrics[0].interval", "at least analysis.interval")
        // Review item 19: a window of more than Canary.maxSamples checks would keep that many scrapes.
        refused(Self.canary(metrics: "    - {name: request-duration, interval: 8760h, thresholdRange: {max: 9}}"), "spec.analysis.metrics[0].interval", "at most 720")
        refused(Self.canary(metrics: "    - {name: request-duration, templateRef: {name: x}, thresholdRange: {max: 9}}"), "spec.analysis.metrics[0].templateRef", "not supported yet")
        refused(Self.canary(metrics: "    - {name: request-duration, thresholdRange: {max: 9}}\n    - {name: request-duration, thresholdRange: {max: 9}}"), "spec.analysis.metrics[1].name", "given twice")
        refused(Self.canary(metrics: "      []"), "spec.analysis.metrics", "required field is missing")
    }

    func testRefusesFlaggerFieldsItDoesNotHonourByName() {
        refused(Self.canary("stepWeight: 10\n    maxWeight: 50\n    webhooks: []"), "spec.analysis.webhooks", "not supported yet")
        refused(Self.canary("stepWeight: 10\n    maxWeight: 50\n    stepWeightPromotion: 50"), "spec.analysis.stepWeightPromotion", "not supported yet")
        refused(Self.canary(spec: "  skipAnalysis: true"), "spec.skipAnalysis", "not supported yet")
        refused(Self.canary(spec: "  targetRef: {kind: Deployment, name: x}"), "spec.targetRef", "not supported yet")
        refused(Self.canary(spec: "  colour: blue"), "spec.colour", "unknown field")
        refused(Self.canary(spec: "  virtualService: {name: reviews, route: [1]}"), "spec.virtualService.route", "expected an http[].name or an index")
        refused(Self.canary("stepWeight: 10\n    maxWeight: 50\n    onNoData: maybe"), "spec.analysis.onNoData", "expected hold, fail or pass")
        refused(Self.canary().replacingOccurrences(of: "interval: 1s", with: "interval: 100ms"), "spec.analysis.interval", "at least 500ms")
        refused(Self.canary().replacingOccurrences(of: "canary: v2", with: "canary: v1"), "spec.canary", "another subset than stable")
        refused(Self.canary().replacingOccurrences(of: "apiVersion: mesh.io/v1alpha1", with: "apiVersion: flagger.app/v1beta1"), "apiVersion", "expected mesh.io/v1alpha1")
    }

    func testParsesTheLadderAndDefaults() throws {
        let c = try IstioTraffic.parse(Self.canary(), file: "c.yaml").canaries[0]
        XCTAssertEqual(c.analysis.steps, [10, 20, 30, 40, 50])
        XCTAssertEqual(c.analysis.maxWeight, 50)
        XCTAssertEqual(c.analysis.threshold, 3)
        XCTAssertEqual(c.analysis.interval, 1_000_000_000)
        XCTAssertEqual(c.analysis.metrics.map(\.name), [.requestSuccessRate, .requestDuration])
        XCTAssertEqual(c.analysis.metrics[0].interval, 2_000_000_000)
        XCTAssertEqual(c.analysis.metrics[1].interval, 60_000_000_000, "Flagger's default window")
        XCTAssertEqual(c.analysis.minRequests, 1)
        XCTAssertEqual(c.analysis.onNoData, .hold)
        let u = try IstioTraffic.parse(Self.canary("stepWeights: [1, 5, 25, 60]"), file: "c.yaml").canaries[0]
        XCTAssertEqual(u.analysis.steps, [1, 5, 25, 60])
        XCTAssertEqual(u.analysis.maxWeight, 60)
        let i = try IstioTraffic.parse(Self.canary("iterations: 4\n    maxWeight: 30"), file: "c.yaml").canaries[0]
        XCTAssertEqual(i.analysis.steps, [30])
        XCTAssertEqual(i.analysis.iterations, 4)
        let r = try IstioTraffic.parse(Self.canary(spec: "  virtualService: {name: reviews, route: main}"), file: "c.yaml").canaries[0]
        XCTAssertEqual(r.virtualService, Canary.VirtualServiceRef(name: "reviews", route: .name("main")))
        let n = try IstioTraffic.parse(Self.canary(spec: "  virtualService: {name: reviews, route: 1}"), file: "c.yaml").canaries[0]
        XCTAssertEqual(n.virtualService?.route, .index(1))
    }

    func target(_ canary: String) throws(ConfigError) -> CanaryTarget {
        let cfg = try IstioTraffic.parse(Self.routes + "\n---\n" + canary, file: "c.yaml")
        return try cfg.canaries[0].target(in: cfg, file: "c.yaml")
    }

    func targetRefused(_ canary: String, _ path: String, _ words: String, routes: String = CanaryTests.routes, line: UInt = #line) {
        do {
            let cfg = try IstioTraffic.parse(routes + "\n---\n" + canary, file: "c.yaml")
            _ = try cfg.canaries[0].target(in: cfg, file: "c.yaml")
            XCTFail("resolved", line: line)
        } catch {
            XCTAssertEqual(error.path, "Canary default/reviews: \(path)", error.description, line: line)
            XCTAssertTrue(error.message.contains(words), error.description, line: line)
        }
    }

    func testTargetRefusesMissingSubsetsRoutesAndVirtualServices() {
        targetRefused(Self.canary().replacingOccurrences(of: "canary: v2", with: "canary: v3"), "spec.canary", "no subset \"v3\"")
        targetRefused(Self.canary().replacingOccurrences(of: "canary: v2", with: "canary: nolabel"), "spec.canary", "no version label")
        targetRefused(Self.canary().replacingOccurrences(of: "host: reviews", with: "host: ratings"), "spec.host", "no DestinationRule for host ratings")
        targetRefused(Self.canary(spec: "  virtualService: {name: other}"), "spec.virtualService.name", "no VirtualService default/other")
        targetRefused(Self.canary(spec: "  virtualService: {name: reviews, route: nope}"), "spec.virtualService.route", "no http route named \"nope\"")
        targetRefused(Self.canary(spec: "  virtualService: {name: reviews, route: 0}"), "spec.virtualService.route", "http[0] cannot be driven")
        targetRefused(Self.canary(spec: "  virtualService: {name: reviews, route: 7}"), "spec.virtualService.route", "no index 7")
        let noVS = String(Self.routes[..<Self.routes.range(of: "---")!.lowerBound])
        targetRefused(Self.canary(), "spec.virtualService", "no VirtualService in namespace default for host reviews", routes: noVS)
        let twoRoutes = Self.routes.replacingOccurrences(of: "  - name: api\n    match: [{uri: {prefix: /api}}]\n    route:\n    - destination: {host: reviews, subset: v1}\n",
                                                         with: "  - name: api\n    match: [{uri: {prefix: /api}}]\n    route:\n    - destination: {host: reviews, subset: v1}\n      weight: 50\n    - destination: {host: reviews, subset: v2}\n      weight: 50\n")
        XCTAssertNotEqual(twoRoutes, Self.routes)
        targetRefused(Self.canary(), "spec.virtualService", "2 routes that split v1 and v2", routes: twoRoutes)
    }

    func testTargetFindsTheOneDrivableRoute() throws {
        let t = try target(Self.canary())
        XCTAssertEqual(t, CanaryTarget(destinationRule: "default/reviews", stableVersion: "v1", canaryVersion: "v2", serviceName: "reviews",
                                       serviceNamespace: "default", virtualService: "reviews", routeIndex: 1, stableIndex: 0, canaryIndex: 1, weight: 0))
        XCTAssertEqual(try target(Self.canary(spec: "  virtualService: {name: reviews, route: main}")).routeIndex, 1)
    }

    func testTwoCanariesCannotDriveOneRoute() throws {
        let second = Self.canary().replacingOccurrences(of: "metadata: {name: reviews}", with: "metadata: {name: reviews-b}")
        let cfg = try IstioTraffic.parse(Self.routes + "\n---\n" + Self.canary() + "\n---\n" + second, file: "c.yaml")
        XCTAssertThrowsError(try Canary.checkApplied(cfg, applied: [("default", "reviews-b", "b.yaml")])) { e in
            XCTAssertTrue((e as! ConfigError).message.contains("already driven by Canary default/reviews"), "\(e)")
            XCTAssertEqual((e as! ConfigError).file, "b.yaml")
        }
        XCTAssertNoThrow(try Canary.checkApplied(cfg, applied: []))
    }
}
