/// The nat table of one family as an iptables-save dump shows it: whether it exists, its chains
/// and rules; and from those, what of it the capture owns. Counters are left out.
public struct NatTableSnapshot: Equatable, Sendable {
    public var exists = false
    /// `:NAME POLICY` per chain, counters removed, in dump order.
    public var chainLines: [String] = []
    /// `-A CHAIN ...` lines in dump order.
    public var rules: [String] = []

    /// Reads the `*nat` section of a dump of every table (`iptables-save` with no `-t`).
    public init(save text: String) {
        var inNat = false
        for raw in text.split(separator: "\n") {
            let line = String(raw)
            if line.hasPrefix("#") { continue }
            if line.hasPrefix("*") { inNat = line == "*nat"; if inNat { exists = true }; continue }
            guard inNat else { continue }
            if line == "COMMIT" { inNat = false; continue }
            if line.hasPrefix(":") {
                let f = line.split(separator: " ")
                chainLines.append(f.prefix(2).joined(separator: " "))
            } else if line.hasPrefix("-A ") {
                rules.append(line)
            }
        }
    }

    public init() {}

    /// Chain names, in dump order.
    public var chainNames: [String] { chainLines.map { String($0.dropFirst().split(separator: " ").first ?? "") } }
    /// The owned chains present.
    public var ownChains: [String] { CaptureRuleset.chains.filter { chainNames.contains($0) } }
    /// The owned jumps present, one entry per occurrence.
    public var ownJumps: [String] { rules.filter { CaptureRuleset.jumps.contains($0) } }
    public var holdsCapture: Bool { !ownChains.isEmpty || !ownJumps.isEmpty }
    /// Rules in owned chains.
    public var ownRules: [String] {
        rules.filter { r in CaptureRuleset.chains.contains { r.hasPrefix("-A \($0) ") } }
    }
    /// Rules the capture did not write.
    public var foreignRules: [String] {
        rules.filter { r in !CaptureRuleset.jumps.contains(r) && !CaptureRuleset.chains.contains { r.hasPrefix("-A \($0) ") } }
    }
    /// True when the table holds nothing: no rules, no chains of its own, every policy ACCEPT.
    public var isEmpty: Bool {
        rules.isEmpty && chainLines.allSatisfy { l in
            let f = l.dropFirst().split(separator: " ")
            return ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"].contains(f.first ?? "") && f.dropFirst().first == "ACCEPT"
        }
    }

    /// The `--noflush` input that deletes exactly the owned jumps and chains (nil: nothing to do).
    /// A foreign rule jumping into an owned chain stops it, named, before anything changes.
    public func removalInput(_ family: IPFamily) throws(CaptureError) -> String? {
        guard holdsCapture else { return nil }
        for r in foreignRules {
            if let c = CaptureRuleset.chains.first(where: { r.hasSuffix(" -j \($0)") || r.contains(" -j \($0) ") || r.contains(" -g \($0)") }) {
                throw CaptureError("\(family.name): the rule \"\(r)\" was not written by meshctl capture and jumps to \(c); delete it first")
            }
        }
        var out = ["# meshctl capture: remove the \(family.name) rules", "*nat"]
        for j in ownJumps { out.append("-D" + j.dropFirst(2)) }
        for c in ownChains { out.append(":\(c) - [0:0]") }
        for c in ownChains { out.append("-X \(c)") }
        out.append("COMMIT")
        return out.joined(separator: "\n") + "\n"
    }

    /// The `--noflush` input that puts the owned chains back as they are in this snapshot (after a
    /// failed apply of the other family). Jumps are not touched: an apply only adds missing ones.
    public func restoreInput(current: NatTableSnapshot, _ family: IPFamily) throws(CaptureError) -> String? {
        if !holdsCapture { return try current.removalInput(family) }
        var out = ["# meshctl capture: put the \(family.name) rules back", "*nat"]
        for c in ownChains { out.append(":\(c) - [0:0]") }
        out.append(contentsOf: ownRules)
        out.append("COMMIT")
        return out.joined(separator: "\n") + "\n"
    }
}
