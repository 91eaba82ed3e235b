import MeshConfig
import MeshCore

/// What meshd's canary controller records about one Canary (kept in the store, so a restarted
/// meshd or a new leader resumes at the same step): its phase and weight, failed checks, the last
/// checks with their figures, recent events, and the VirtualService text it wrote last.
public struct CanaryStatus: Sendable, Equatable {
    /// Flagger's phases plus `Paused` (someone else changed the VirtualService) and `Aborted`
    /// (`meshctl canary abort`).
    public enum Phase: String, Sendable, CaseIterable {
        case initializing = "Initializing", progressing = "Progressing", promoting = "Promoting", succeeded = "Succeeded"
        case failed = "Failed", paused = "Paused", aborted = "Aborted"
        /// Whether the controller still acts on it.
        public var active: Bool { self == .initializing || self == .progressing || self == .promoting }
    }

    public var namespace: String
    public var name: String
    public var phase: Phase = .initializing
    /// The canary's weight on its route now.
    public var weight = 0
    /// Index into `analysis.steps` of the weight in force.
    public var step = 0
    public var failedChecks = 0
    /// Passing checks at the fixed weight (`analysis.iterations`).
    public var iterations = 0
    /// Digest of the Canary document the run belongs to: a changed spec restarts the analysis.
    public var specHash = ""
    /// The VirtualService (in the Canary's namespace) and its `http[]` route the controller
    /// wrote last ("" and -1 before its first write): their two weights are compared with
    /// `weight` to tell a person's change.
    public var virtualService = ""
    public var route = -1
    public var message = ""
    /// Unix seconds of the last phase change.
    public var lastTransition: Int64 = 0
    /// The last checks, newest last, as lines with their figures.
    public var checks: [String] = []
    /// Recent events (`TIME text`), newest last.
    public var events: [String] = []
    /// Checks by result since the run started (meshd's `mesh_canary_checks_total`).
    public var passed = 0, failed = 0, held = 0

    public init(namespace: String, name: String) {
        self.namespace = namespace
        self.name = name
    }

    static let keep = 12

    mutating func event(_ text: String, now: Int64) {
        events.append("\(now) \(text)")
        if events.count > CanaryStatus.keep { events.removeFirst(events.count - CanaryStatus.keep) }
    }

    mutating func check(_ line: String) {
        checks.append(line)
        if checks.count > 5 { checks.removeFirst(checks.count - 5) }
    }

    mutating func move(to p: Phase, now: Int64) {
        if p != phase { lastTransition = now }
        phase = p
    }

    // MARK: the stored form

    /// The stored text: one YAML document of quoted scalars (read back with meshd's own parser).
    public var serialized: String {
        var out = "namespace: \(YAML.quoted(namespace))\nname: \(YAML.quoted(name))\nphase: \(phase.rawValue)\n"
        out += "weight: \(weight)\nstep: \(step)\nfailedChecks: \(failedChecks)\niterations: \(iterations)\n"
        out += "passed: \(passed)\nfailed: \(failed)\nheld: \(held)\nlastTransition: \(lastTransition)\n"
        out += "specHash: \(YAML.quoted(specHash))\nvirtualService: \(YAML.quoted(virtualService))\nroute: \(route)\nmessage: \(YAML.quoted(message))\n"
        out += "checks: [\(checks.map(YAML.quoted).joined(separator: ", "))]\n"
        out += "events: [\(events.map(YAML.quoted).joined(separator: ", "))]\n"
        return out
    }

    /// Reads `serialized` back (nil: not a status this meshd wrote).
    public static func parse(_ text: String) -> CanaryStatus? {
        guard let doc = try? YAML.parseDocuments(text).first?.node.asMapping else { return nil }
        func str(_ k: String) -> String? { doc[k]?.asScalar?.value }
        func int(_ k: String) -> Int? { str(k).flatMap { Int($0) } }
        func list(_ k: String) -> [String] { doc[k]?.asSequence?.items.compactMap { $0.asScalar?.value } ?? [] }
        guard let ns = str("namespace"), let n = str("name"), let p = str("phase").flatMap(Phase.init(rawValue:)) else { return nil }
        var s = CanaryStatus(namespace: ns, name: n)
        s.phase = p
        s.weight = int("weight") ?? 0
        s.step = int("step") ?? 0
        s.failedChecks = int("failedChecks") ?? 0
        s.iterations = int("iterations") ?? 0
        s.passed = int("passed") ?? 0
        s.failed = int("failed") ?? 0
        s.held = int("held") ?? 0
        s.lastTransition = Int64(int("lastTransition") ?? 0)
        s.specHash = str("specHash") ?? ""
        s.virtualService = str("virtualService") ?? ""
        s.route = int("route") ?? -1
        s.message = str("message") ?? ""
        s.checks = list("checks")
        s.events = list("events")
        // An event is `UNIXTIME text`: anything else is not a status this meshd wrote.
        if s.events.contains(where: { e in e.split(separator: " ", maxSplits: 1).first.flatMap { Int64($0) } == nil }) { return nil }
        return s
    }
}
