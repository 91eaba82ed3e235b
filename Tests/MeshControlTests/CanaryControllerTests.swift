import XCTest
@testable import MeshConfig
@testable import MeshControl
import MeshIO
import Foundation

/// A CanaryEnvironment in memory: an injected clock, documents, and counters the test moves.
class FakeCanaryEnvironment: CanaryEnvironment {
    var now: UInt64 = 1_000_000_000
    var docs: String
    var canaryText: String
    var vsText: String
    var stored: [CanaryStatus] = []
    var writes: [String] = []
    /// Cumulative counters per version: (requests, 5xx, requests under 100 ms).
    var counters: [String: (req: Double, err: Double, fast: Double)] = ["v1": (0, 0, 0), "v2": (0, 0, 0)]

    init(canary: String, vs: String, rules: String) {
        canaryText = canary
        vsText = vs
        docs = rules
    }

    func monotonicNanos() -> UInt64 { now }
    func wallSeconds() -> Int64 { Int64(now / 1_000_000_000) }
    func config() -> IstioTraffic.Config? { configCalls += 1; return try? IstioTraffic.parse(docs + "\n---\n" + vsText + "\n---\n" + canaryText, file: "(fake)") }
    var configCalls = 0
    /// Runs between the controller's read of the VirtualService and its commit (a person's apply).
    var beforeCommit: (() -> Void)? = nil
    var unreadable = false
    func canaries() -> [(canary: Canary, hash: String)]? {
        if unreadable { return nil }
        if !canaryText.contains("kind: Canary") { return [] }
        return (config()?.canaries ?? []).map { ($0, String(canaryText.hashValue)) }
    }
    func virtualServiceText(namespace: String, name: String) -> String? { vsText }
    func updateVirtualService(namespace: String, name: String, by canary: String,
                              _ change: (String?) throws(ConfigError) -> String?) throws(ConfigError) -> String? {
        while true {
            let seen = vsText
            guard let text = try change(seen) else { return seen }
            if let b = beforeCommit { beforeCommit = nil; b() }
            guard vsText == seen else { continue }   // compare-and-apply: read again
            _ = try IstioTraffic.parse(docs + "\n---\n" + text, file: "(write)")
            vsText = text
            writes.append(text)
            return text
        }
    }
    func sample(service: String, namespace: String, versions: Set<String>) -> CanarySample {
        var text = ""
        for (v, c) in counters {
            let l = "reporter=\"destination\",destination_service_name=\"\(service)\",destination_service_namespace=\"\(namespace)\",destination_version=\"\(v)\""
            text += "istio_requests_total{\(l),response_code=\"200\"} \(c.req - c.err)\nistio_requests_total{\(l),response_code=\"500\"} \(c.err)\n"
            text += "istio_request_duration_milliseconds_bucket{\(l),le=\"100\"} \(c.fast)\n"
            text += "istio_request_duration_milliseconds_bucket{\(l),le=\"1000\"} \(c.req)\nistio_request_duration_milliseconds_bucket{\(l),le=\"+Inf\"} \(c.req)\n"
        }
        return CanaryAnalysis.sample(time: now, scrapes: [("s:1", PrometheusSamples.parse(text))], service: service, namespace: namespace, versions: versions)
    }
    var loadFails = false
    func loadStatuses() -> [CanaryStatus]? { loadFails ? nil : stored.compactMap { CanaryStatus.parse($0.serialized) } }
    func saveStatuses(_ statuses: [CanaryStatus]) { stored = statuses }

    /// `n` requests to each version over the next second: `errPct` percent of the canary's 5xx,
    /// `slowPct` percent of them slower than 100 ms.
    func traffic(_ n: Double, errPct: Double = 0, slowPct: Double = 0) {
        let w = weight
        let c = n * Double(w) / 100, s = n - c
        counters["v1"] = (counters["v1"]!.req + s, counters["v1"]!.err, counters["v1"]!.fast + s)
        counters["v2"] = (counters["v2"]!.req + c, counters["v2"]!.err + c * errPct / 100, counters["v2"]!.fast + c * (100 - slowPct) / 100)
    }

    var weight: Int {
        let ws = vsText.components(separatedBy: "weight: ").dropFirst().compactMap { Int($0.prefix { $0.isNumber }) }
        return ws.count == 2 ? ws[1] : -1
    }
}

/// The canary state machine with an injected clock and fake figures: walk and promotion,
/// rollback after `threshold`, held steps, spec changes, pauses, abort and resume, and a new
/// controller (a restarted meshd, a new leader) resuming from the recorded state.
final class CanaryControllerTests: XCTestCase {
    static let rules = """
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: reviews}
    spec:
      host: reviews
      subsets:
      - {name: v1, labels: {version: v1}}
      - {name: v2, labels: {version: v2}}
    """
    static let vs = """
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: reviews}
    spec:
      hosts: [reviews]
      http:
      - name: main
        timeout: 2s
        route:
        - destination: {host: reviews, subset: v1}
          weight: 100
        - destination: {host: reviews, subset: "v2"}
          weight: 0
    """
    static func canary(_ extra: String = "", threshold: Int = 2, minRequests: Int = 10) -> String {
        """
        apiVersion: mesh.io/v1alpha1
        kind: Canary
        metadata: {name: reviews}
        spec:
          host: reviews
          stable: v1
          canary: v2
          analysis:
            interval: 1s
            threshold: \(threshold)
            stepWeight: 10
            maxWeight: 30
            minRequests: \(minRequests)\(extra)
            metrics:
            - {name: request-success-rate, interval: 1s, thresholdRange: {min: 99}}
            - {name: request-duration, interval: 1s, thresholdRange: {max: 100}}
        """
    }

    let sec: UInt64 = 1_000_000_000

    func make(_ canary: String = canary()) -> (FakeCanaryEnvironment, CanaryController) {
        let env = FakeCanaryEnvironment(canary: canary, vs: Self.vs, rules: Self.rules)
        return (env, CanaryController(env: env))
    }

    /// One interval: traffic, the clock moves, a tick.
    func interval(_ env: FakeCanaryEnvironment, _ c: CanaryController, n: Double = 200, errPct: Double = 0, slowPct: Double = 0) {
        env.traffic(n, errPct: errPct, slowPct: slowPct)
        env.now += sec
        c.tick()
    }

    func status(_ c: CanaryController) -> CanaryStatus { c.report()[0].status }

    func testHealthyCanaryWalksEachStepThenPromotes() throws {
        let (env, c) = make()
        c.tick()
        XCTAssertEqual(env.weight, 10)
        XCTAssertEqual(status(c).phase, .progressing)
        // The text written keeps the rest of the document, and the sidecar's parser accepts it.
        XCTAssertTrue(env.vsText.contains("timeout: 2s"), env.vsText)
        XCTAssertTrue(env.vsText.contains("subset: \"v2\""), env.vsText)
        XCTAssertEqual(try IstioTraffic.parse(Self.rules + "\n---\n" + env.vsText, file: "x").virtualServices[0].http[0].route.map(\.weight), [90, 10])
        var seen = [env.weight]
        for _ in 0..<3 {
            interval(env, c)
            seen.append(env.weight)
        }
        XCTAssertEqual(seen, [10, 20, 30, 100])
        let s = status(c)
        XCTAssertEqual(s.phase, .succeeded)
        XCTAssertEqual(s.weight, 100)
        XCTAssertEqual(s.passed, 3)
        XCTAssertTrue(s.message.contains("promoted"), s.message)
        XCTAssertTrue(s.checks.last!.contains("success 100% (min 99%; stable 100%)"), s.checks.last!)
        // Done: more intervals change nothing.
        interval(env, c)
        XCTAssertEqual(env.writes.count, 4)
    }

    func testIterationsHoldMaxWeightForThatManyPassingChecks() {
        let text = Self.canary().replacingOccurrences(of: "stepWeight: 10\n    maxWeight: 30", with: "iterations: 3\n    maxWeight: 25")
        XCTAssertNotEqual(text, Self.canary())
        let (env, c) = make(text)
        c.tick()
        XCTAssertEqual(env.weight, 25)
        interval(env, c)
        interval(env, c)
        XCTAssertEqual(env.weight, 25)
        XCTAssertEqual(status(c).iterations, 2)
        XCTAssertTrue(status(c).checks.last!.hasPrefix("check 2 of 3 at 25%"), status(c).checks.last!)
        interval(env, c)
        XCTAssertEqual(env.weight, 100)
        XCTAssertEqual(status(c).phase, .succeeded)
    }

    func testNotTheIntervalYetDoesNothing() {
        let (env, c) = make()
        c.tick()
        env.traffic(200)
        env.now += sec / 2
        c.tick()
        XCTAssertEqual(env.weight, 10)
        XCTAssertEqual(status(c).passed, 0)
        env.now += sec / 2
        c.tick()
        XCTAssertEqual(env.weight, 20)
    }

    func testErrorsRollBackAfterThresholdFailedChecks() {
        let (env, c) = make(Self.canary(threshold: 3))
        c.tick()
        interval(env, c, errPct: 30)
        XCTAssertEqual(status(c).failedChecks, 1)
        XCTAssertEqual(status(c).phase, .progressing)
        XCTAssertEqual(env.weight, 10, "a failed check holds the step")
        interval(env, c, errPct: 30)
        XCTAssertEqual(status(c).failedChecks, 2)
        interval(env, c, errPct: 30)
        let s = status(c)
        XCTAssertEqual(s.phase, .failed)
        XCTAssertEqual(s.weight, 0)
        XCTAssertEqual(env.weight, 0)
        XCTAssertTrue(s.message.contains("request-success-rate 70% is below 99%"), s.message)
        XCTAssertEqual(s.failed, 3)
    }

    func testSlowP99RollsBack() {
        let (env, c) = make(Self.canary(threshold: 1))
        c.tick()
        interval(env, c, slowPct: 5)
        let s = status(c)
        XCTAssertEqual(s.phase, .failed)
        XCTAssertEqual(env.weight, 0)
        XCTAssertTrue(s.message.contains("request-duration p99"), s.message)
    }

    func testTooFewRequestsHoldTheStepWithAReason() {
        let (env, c) = make(Self.canary(minRequests: 50))
        c.tick()
        // 10% of 200 = 20 canary requests: fewer than 50.
        interval(env, c, errPct: 50)
        interval(env, c, errPct: 50)
        let s = status(c)
        XCTAssertEqual(s.phase, .progressing)
        XCTAssertEqual(s.weight, 10)
        XCTAssertEqual(s.failedChecks, 0)
        XCTAssertEqual(s.held, 2)
        XCTAssertTrue(s.message.contains("held") && s.message.contains("fewer than minRequests 50"), s.message)
        // Enough traffic: the walk goes on.
        interval(env, c, n: 1000)
        XCTAssertEqual(env.weight, 20)
    }

    func testOnNoDataFailCountsAsAFailedCheck() {
        let (env, c) = make(Self.canary("\n    onNoData: fail", threshold: 1))
        c.tick()
        interval(env, c, n: 0)
        XCTAssertEqual(status(c).phase, .failed)
        XCTAssertTrue(status(c).message.contains("onNoData: fail"), status(c).message)
    }

    func testSomeoneElsesChangePausesUntilResume() {
        let (env, c) = make()
        c.tick()
        interval(env, c)
        XCTAssertEqual(env.weight, 20)
        env.vsText = Self.vs.replacingOccurrences(of: "weight: 100", with: "weight: 60").replacingOccurrences(of: "weight: 0", with: "weight: 40")
        c.tick()
        XCTAssertEqual(status(c).phase, .paused)
        XCTAssertTrue(status(c).message.contains("changed by someone else") && status(c).message.contains("now gives canary v2 40%"), status(c).message)
        let writes = env.writes.count
        for _ in 0..<3 { interval(env, c) }
        XCTAssertEqual(env.writes.count, writes, "a paused canary writes nothing")
        XCTAssertEqual(env.weight, 40)
        XCTAssertTrue(c.resume(namespace: "default", name: "reviews").ok)
        XCTAssertEqual(env.weight, 20, "resume writes the step's weight again")
        XCTAssertEqual(status(c).phase, .progressing)
        c.tick()   // the first sample after resume (scraped by the tick, outside the lock)
        interval(env, c)
        XCTAssertEqual(env.weight, 30)
        XCTAssertFalse(c.resume(namespace: "default", name: "reviews").ok)
    }

    func testAbortGoesToStableAtOnce() {
        let (env, c) = make()
        c.tick()
        interval(env, c)
        XCTAssertTrue(c.abort(namespace: "default", name: "reviews").ok)
        XCTAssertEqual(env.weight, 0)
        XCTAssertEqual(status(c).phase, .aborted)
        interval(env, c)
        XCTAssertEqual(env.weight, 0)
        XCTAssertFalse(c.abort(namespace: "nope", name: "reviews").ok)
    }

    func testChangedSpecRestartsTheAnalysis() {
        let (env, c) = make()
        c.tick()
        interval(env, c)
        interval(env, c, errPct: 50)
        XCTAssertEqual(status(c).failedChecks, 1)
        XCTAssertEqual(env.weight, 20)
        env.canaryText = Self.canary(threshold: 5)
        c.tick()
        let s = status(c)
        XCTAssertEqual(s.weight, 10)
        XCTAssertEqual(s.failedChecks, 0)
        XCTAssertEqual(env.weight, 10)
        XCTAssertTrue(s.events.last!.contains("analysis restarted"), s.events.last!)
    }

    func testANewControllerResumesAtTheRecordedStep() {
        let (env, c) = make()
        c.tick()
        interval(env, c)
        interval(env, c)
        XCTAssertEqual(env.weight, 30)
        // meshd restarts (or another replica leads): only the recorded state carries over.
        let next = CanaryController(env: env)
        next.tick()
        XCTAssertEqual(env.weight, 30)
        XCTAssertEqual(status(next).step, 2)
        interval(env, next)
        XCTAssertEqual(env.weight, 100)
        XCTAssertEqual(status(next).phase, .succeeded)
    }

    func testADestinationRuleThatChangedShapeFailsTheCanaryByName() {
        let (env, c) = make()
        c.tick()
        env.docs = Self.rules.replacingOccurrences(of: "version: v2", with: "track: v2")
        c.tick()
        XCTAssertEqual(status(c).phase, .failed)
        XCTAssertTrue(status(c).message.contains("has no version label"), status(c).message)
    }

    // MARK: review fixes (issue 21)

    static let twoRoutes = """
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: reviews}
    spec:
      hosts: [reviews]
      http:
      - name: beta
        match: [{headers: {x-beta: {exact: "1"}}}]
        route:
        - destination: {host: reviews, subset: v1}
          weight: 100
        - destination: {host: reviews, subset: v2}
          weight: 0
      - name: main
        route:
        - destination: {host: reviews, subset: v1}
          weight: 100
        - destination: {host: reviews, subset: v2}
          weight: 0
    """

    func named(_ name: String, route: String) -> String {
        Self.canary().replacingOccurrences(of: "metadata: {name: reviews}", with: "metadata: {name: \(name)}")
            .replacingOccurrences(of: "  canary: v2\n", with: "  canary: v2\n  virtualService: {name: reviews, route: \(route)}\n")
    }

    func canaryWeight(_ env: FakeCanaryEnvironment, route: Int) -> Int? {
        CanaryRoute.weights(env.vsText, route: route, stable: "v1", canary: "v2", namespace: "default")?.canary
    }

    /// Item 1: two Canaries on two routes of one VirtualService each write the document; only
    /// their own route's weights tell a person's change.
    func testTwoCanariesOnOneVirtualServiceDoNotPauseEachOther() {
        let env = FakeCanaryEnvironment(canary: named("beta", route: "beta") + "\n---\n" + named("main", route: "main"), vs: Self.twoRoutes, rules: Self.rules)
        let c = CanaryController(env: env)
        c.tick()
        for _ in 0..<2 { env.traffic(0); env.counters["v2"] = (env.counters["v2"]!.req + 50, 0, env.counters["v2"]!.fast + 50); env.now += sec; c.tick() }
        XCTAssertEqual(c.report().map(\.status.phase), [.progressing, .progressing], c.report().map(\.status.message).joined(separator: "\n"))
        XCTAssertEqual(canaryWeight(env, route: 0), 30)
        XCTAssertEqual(canaryWeight(env, route: 1), 30)
    }

    /// Item 2: a person's apply that lands between the controller's read and its commit wins:
    /// the canary pauses, the person's weights stay.
    func testAPersonsApplyDuringTheWriteIsNeverOverwritten() {
        let (env, c) = make()
        c.tick()
        let mine = Self.vs.replacingOccurrences(of: "weight: 100", with: "weight: 60").replacingOccurrences(of: "weight: 0", with: "weight: 40")
        env.beforeCommit = { env.vsText = mine }
        interval(env, c)
        XCTAssertEqual(env.vsText, mine)
        XCTAssertEqual(status(c).phase, .paused, status(c).message)
        XCTAssertTrue(status(c).message.contains("now gives canary v2 40%"), status(c).message)
    }

    /// Item 8: everything to stable with one destination (the route no longer resolves as a
    /// target) pauses the canary rather than failing it.
    func testEverythingToStableByAPersonPausesNotFails() {
        let (env, c) = make()
        c.tick()
        interval(env, c)
        env.vsText = Self.vs.replacingOccurrences(of: "          weight: 100\n", with: "").replacingOccurrences(of: "    - destination: {host: reviews, subset: \"v2\"}\n      weight: 0", with: "")
        XCTAssertEqual(CanaryRoute.weights(env.vsText, route: 0, stable: "v1", canary: "v2", namespace: "default")?.canary, nil)
        c.tick()
        XCTAssertEqual(status(c).phase, .paused, status(c).message)
        XCTAssertTrue(status(c).message.contains("no longer splits v1 and v2") && status(c).message.contains("apply a changed Canary"), status(c).message)
    }

    /// Item 9: a crash (or a new leader) between the VirtualService commit and the record: the
    /// next step's weight in force is the controller's own, not a person's.
    func testACrashBetweenTheWriteAndTheRecordDoesNotPause() {
        let (env, c) = make()
        c.tick()
        interval(env, c)
        XCTAssertEqual(env.weight, 20)
        let recorded = env.stored
        interval(env, c)
        XCTAssertEqual(env.weight, 30)
        env.stored = recorded   // the record of the 30% step was lost
        let next = CanaryController(env: env)
        next.tick()
        XCTAssertEqual(status(next).phase, .progressing, status(next).message)
        interval(env, next)
        XCTAssertEqual(env.weight, 30)
        interval(env, next)
        XCTAssertEqual(status(next).phase, .succeeded, status(next).message)
    }

    /// Item 4: statuses that cannot be read, or documents that cannot be parsed, restart nothing.
    func testAFailedStateReadRestartsNothing() {
        let (env, c) = make()
        c.tick()
        interval(env, c)
        interval(env, c)
        XCTAssertEqual(env.weight, 30)
        let writes = env.writes.count
        env.unreadable = true
        c.tick()
        env.unreadable = false
        XCTAssertEqual(status(c).step, 2, "the recorded status is kept")
        let next = CanaryController(env: env)
        env.loadFails = true
        next.tick()
        next.tick()
        XCTAssertEqual(env.writes.count, writes, "nothing written while the statuses cannot be read")
        XCTAssertFalse(next.abort(namespace: "default", name: "reviews").ok)
        env.loadFails = false
        next.tick()
        XCTAssertEqual(status(next).step, 2)
        XCTAssertEqual(env.weight, 30)
        XCTAssertEqual(env.writes.count, writes)
    }

    /// Item 10: without Canaries the documents are never parsed.
    func testNoCanaryParsesNothing() {
        let env = FakeCanaryEnvironment(canary: "", vs: Self.vs, rules: Self.rules)
        let c = CanaryController(env: env)
        for _ in 0..<5 { c.tick() }
        XCTAssertEqual(env.configCalls, 0)
    }

    /// Item 15: abort of a promoted canary is refused; its 100% stays.
    func testAbortRefusesAFinishedCanary() {
        let (env, c) = make()
        c.tick()
        for _ in 0..<3 { interval(env, c) }
        XCTAssertEqual(status(c).phase, .succeeded)
        let r = c.abort(namespace: "default", name: "reviews")
        XCTAssertFalse(r.ok)
        XCTAssertTrue(r.message.contains("not running (phase Succeeded)"), r.message)
        XCTAssertEqual(env.weight, 100)
    }

    /// Item 7: the scrape runs outside the controller's lock, and abort does not scrape.
    func testAbortDoesNotWaitForAScrape() {
        final class Slow: FakeCanaryEnvironment {
            var during: (() -> Void)? = nil
            var scrapes = 0
            override func sample(service: String, namespace: String, versions: Set<String>) -> CanarySample {
                scrapes += 1
                if let d = during { during = nil; d() }
                return super.sample(service: service, namespace: namespace, versions: versions)
            }
        }
        let env = Slow(canary: Self.canary(), vs: Self.vs, rules: Self.rules)
        let c = CanaryController(env: env)
        c.tick()
        env.traffic(200)
        env.now += sec
        let done = Locked(false)
        env.during = {
            let t = Thread { _ = c.abort(namespace: "default", name: "other"); done.withLock { $0 = true } }
            t.start()
            let until = Date().addingTimeInterval(2)
            while !done.withLock({ $0 }) && Date() < until { usleep(10_000) }
        }
        c.tick()
        XCTAssertTrue(done.withLock { $0 }, "abort waited for the scrape")
        env.now += sec   // a check is due: abort does not run it
        let n = env.scrapes
        XCTAssertTrue(c.abort(namespace: "default", name: "reviews").ok)
        XCTAssertEqual(env.scrapes, n)
    }

    /// Item 18: minRequests counts the latest analysis.interval, not the metric's window.
    func testMinRequestsCountsTheLatestInterval() {
        let (env, c) = make(Self.canary(minRequests: 10).replacingOccurrences(of: "interval: 1s, thresholdRange", with: "interval: 5s, thresholdRange"))
        c.tick()
        interval(env, c)
        XCTAssertEqual(env.weight, 20)
        interval(env, c, n: 0)   // old traffic in the window, none in the last interval
        XCTAssertEqual(env.weight, 20)
        XCTAssertTrue(status(c).message.contains("held") && status(c).message.contains("in the last analysis.interval"), status(c).message)
    }

    /// Item 17: a stored event that is empty is refused when read, and never traps the report.
    func testAnEmptyStoredEventIsRefusedAndNeverTraps() {
        var s = CanaryStatus(namespace: "default", name: "r")
        s.events = [""]
        XCTAssertNil(CanaryStatus.parse(s.serialized))
        XCTAssertTrue(CanaryReport.text([(s, nil)], namespace: nil, name: nil).contains("(an empty event)"))
    }

    func testStatusRoundTripsAndReports() {
        var s = CanaryStatus(namespace: "default", name: "r")
        s.phase = .paused
        s.weight = 20
        s.virtualService = "reviews"
        s.route = 1
        s.checks = ["step 1 (10%): success 99.5%, \"x\""]
        s.events = ["100 started"]
        s.lastTransition = 1796601234
        XCTAssertEqual(CanaryStatus.parse(s.serialized), s)
        let json = CanaryReport.json([(s, nil)])
        XCTAssertTrue(json.hasPrefix("[{\"namespace\":\"default\",\"name\":\"r\""), json)
        XCTAssertTrue(json.contains("\"phase\":\"Paused\"") && json.contains("\"canaryWeight\":20") && json.contains("\"lastTransition\":1796601234"), json)
        XCTAssertEqual(CanaryReport.json([]), "[]\n")
        let m = CanaryReport.metrics([(s, nil)])
        XCTAssertTrue(m.contains("mesh_canary_weight{namespace=\"default\",name=\"r\"} 20\n"), m)
        XCTAssertTrue(m.contains("mesh_canary_phase{namespace=\"default\",name=\"r\",phase=\"Paused\"} 1\n"), m)
        XCTAssertTrue(m.contains("mesh_canary_phase{namespace=\"default\",name=\"r\",phase=\"Progressing\"} 0\n"), m)
        XCTAssertTrue(m.contains("mesh_canary_checks_total{namespace=\"default\",name=\"r\",result=\"held\"} 0\n"), m)
    }

    /// Item 3: a Canary may not drive a VirtualService a --config-dir file owns (meshd would put
    /// the file's weights back at every start and directory change), refused both ways by name.
    func testACanaryOnAConfigDirVirtualServiceIsRefused() throws {
        var t = Array("/tmp/canary-cd-XXXXXX".utf8CString)
        let dir = String(cString: mkdtemp(&t)!)
        defer { _ = system("rm -rf '\(dir)'") }
        let store = try ConfigStore(stateDir: dir)
        _ = try store.apply([ConfigStore.Input(file: "cd/reviews.yaml", text: Self.rules + "\n---\n" + Self.vs, source: "cd/reviews.yaml")])
        XCTAssertThrowsError(try store.apply([ConfigStore.Input(file: "canary.yaml", text: Self.canary())])) { e in
            let e = e as! ConfigError
            XCTAssertEqual(e.path, "Canary default/reviews: spec.virtualService", e.description)
            XCTAssertEqual(e.file, "canary.yaml")
            XCTAssertTrue(e.message.contains("--config-dir file cd/reviews.yaml"), e.description)
        }
        // The other way: the Canary first, then a directory file bringing its VirtualService.
        _ = mkdir(dir + "/b", 0o700)
        let other = try ConfigStore(stateDir: dir + "/b")
        _ = try other.apply([ConfigStore.Input(file: "in.yaml", text: Self.rules + "\n---\n" + Self.vs + "\n---\n" + Self.canary())])
        XCTAssertThrowsError(try other.apply([ConfigStore.Input(file: "cd/vs.yaml", text: Self.vs.replacingOccurrences(of: "timeout: 2s", with: "timeout: 3s"), source: "cd/vs.yaml")])) { e in
            let e = e as! ConfigError
            XCTAssertEqual(e.file, "cd/vs.yaml", e.description)
            XCTAssertTrue(e.message.contains("driven by Canary default/reviews"), e.description)
        }
    }

    /// Item 6: two sidecars in two network namespaces with one admin address are two sidecars,
    /// and the count says one of them could not be reached.
    func testSidecarsSharingAnAdminAddressAreCountedApart() {
        func proxy(_ id: String, _ node: String, _ admin: String) -> ConfigStore.ProxyStatus {
            var p = ConfigStore.ProxyStatus(identity: id, connected: true)
            p.node = node
            p.admin = admin
            return p
        }
        let list = StoreCanaryEnvironment.sidecars([proxy("spiffe://cluster.local/ns/a/sa/r", "n1", "127.0.0.1:15000"),
                                                    proxy("spiffe://cluster.local/ns/b/sa/r", "n2", "127.0.0.1:15000"),
                                                    proxy("spiffe://cluster.local/ns/a/sa/s", "n3", "127.0.0.1:15001")])
        XCTAssertEqual(list.count, 3)
        let r = StoreCanaryEnvironment.reach(list, answered: ["127.0.0.1:15000"])
        XCTAssertEqual(r.scraped, 1)
        XCTAssertEqual(r.unreachable, 2)
    }

    /// Item 2, the store's side: `ConfigStore.update` commits only while the text in force is the
    /// one its change saw; a change that lands in between (here put in force directly, as the
    /// etcd watch does) makes it read again and decide on the new text.
    func testTheStoreUpdateCommitsOnlyOnTheTextItSaw() throws {
        var t = Array("/tmp/canary-up-XXXXXX".utf8CString)
        let dir = String(cString: mkdtemp(&t)!)
        defer { _ = system("rm -rf '\(dir)'") }
        let store = try ConfigStore(stateDir: dir)
        _ = try store.apply([ConfigStore.Input(file: "in.yaml", text: Self.rules + "\n---\n" + Self.vs)])
        let key = "VirtualService/default/reviews"
        let person = Self.vs.replacingOccurrences(of: "timeout: 2s", with: "timeout: 7s")
        var seen: [String] = []
        let out = try store.update(kind: "VirtualService", namespace: "default", name: "reviews", file: "(test)", fence: nil) { (cur: String?) throws(ConfigError) -> String? in
            seen.append(cur ?? "")
            if seen.count == 1 { store.state.withLock { $0.documents[key]!.text = person } }
            return cur!.replacingOccurrences(of: "weight: 100", with: "weight: 90").replacingOccurrences(of: "weight: 0", with: "weight: 10")
        }
        XCTAssertEqual(seen.count, 2, "the change ran again on the text in force")
        XCTAssertTrue(out?.contains("timeout: 7s") == true, out ?? "nil")
    }
}
