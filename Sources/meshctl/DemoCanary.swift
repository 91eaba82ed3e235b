// meshctl demo: the canaries meshd walks by itself (docs/canary.md).
import MeshCore
#if canImport(Glibc)
import Glibc
#endif

extension DemoStory {
    /// The DestinationRule for reviews' three versions.
    static let reviewsRule = """
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: reviews}
    spec:
      host: reviews
      subsets:
      - {name: v1, labels: {version: v1}}
      - {name: v2, labels: {version: v2}}
      - {name: v3, labels: {version: v3}}
    """

    /// The route meshd's canary controller drives (all traffic on `stable` to begin with) and
    /// the Canary, checked every `interval` seconds.
    func canaryDocuments(stable: String, canary: String, interval: Int) -> String {
        """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: reviews}
        spec:
          hosts: [reviews]
          http:
          - name: canary
            route:
            - destination: {host: reviews, subset: \(stable)}
              weight: 100
            - destination: {host: reviews, subset: \(canary)}
              weight: 0
        ---
        apiVersion: mesh.io/v1alpha1
        kind: Canary
        metadata: {name: reviews}
        spec:
          host: reviews
          stable: \(stable)
          canary: \(canary)
          analysis:
            interval: \(interval)s
            threshold: 2
            stepWeights: [10, 20, 50]
            minRequests: 5
            metrics:
            - {name: request-success-rate, interval: \(2 * interval)s, thresholdRange: {min: 99}}
            - {name: request-duration, interval: \(2 * interval)s, thresholdRange: {max: 500}}
        ---
        \(DemoStory.reviewsRule)
        """
    }

    /// The Canary's JSON fields the demo prints (`/v1/canaries?o=json`, one Canary).
    func canaryState() -> (phase: String, weight: Int, message: String)? {
        let j = ctl("GET", "/v1/canaries?o=json&name=reviews", "")
        func field(_ k: String) -> String? {
            let parts = j.components(marker: "\"\(k)\":")
            guard parts.count >= 2 else { return nil }
            let rest = Substring(parts[1])
            if rest.hasPrefix("\"") {
                var out = "", esc = false
                for ch in rest.dropFirst() {
                    if esc { out.append(ch == "n" ? "\n" : ch); esc = false } else if ch == "\\" { esc = true } else if ch == "\"" { break } else { out.append(ch) }
                }
                return out
            }
            return String(rest.prefix { $0.isNumber })
        }
        guard let p = field("phase"), let w = field("canaryWeight").flatMap({ Int($0) }) else { return nil }
        return (p, w, field("message") ?? "")
    }

    /// Hands `canary` to meshd's controller and shows each check's figures and the split the
    /// caller's sidecar reports, until the Canary is done; returns its final phase.
    func autoCanary(stable: String, canary: String, expect: String) -> String {
        let interval = max(1, Int(phaseSeconds / 3))
        let applied = ctl("POST", "/v1/config/apply?file=demo-canary-\(canary)", canaryDocuments(stable: stable, canary: canary, interval: interval))
        say("canary \(canary): applied a Canary (stable \(stable), steps 10 -> 20 -> 50%, a check every \(interval)s, threshold 2; \(expect)) (\(applied.split(separator: "\n").first.map(String.init) ?? "refused"))")
        var last = ""
        let deadline = Clock.monotonicNanos() + UInt64(max(60, 20 * interval)) * 1_000_000_000
        while Clock.monotonicNanos() < deadline {
            check()
            pause(Double(interval) / 2)
            guard let s = canaryState() else { continue }
            let line = "\(s.phase) \(s.weight)%: \(s.message)"
            if line != last {
                say("canary \(canary): \(line)")
                last = line
            }
            if ["Succeeded", "Failed", "Aborted", "Paused"].contains(s.phase) {
                pause(Double(interval))
                let t = table(min(2, phaseSeconds))
                say("canary \(canary) \(s.phase == "Succeeded" ? "promoted" : s.phase == "Failed" ? "rolled back" : s.phase.lowercased()): what the caller sees now")
                for row in t.split(separator: "\n") where row.hasPrefix("ROUTE") || row.contains("reviews") { say("  " + row) }
                return s.phase
            }
        }
        say("canary \(canary): not done in time (meshctl canary status)")
        return "Timeout"
    }
}
