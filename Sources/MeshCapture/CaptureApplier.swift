/// Applies and removes the capture rules in the current network namespace: one
/// `iptables-restore --noflush` per family (atomic within the family; a failure of the second
/// puts the first back), the ::6/128 passthrough address on lo, and the state `remove` needs.
public struct CaptureApplier {
    /// Where notes go (the chosen backend and why, what was added to lo): stderr in meshctl.
    let note: (String) -> Void

    public init(note: @escaping (String) -> Void) { self.note = note }

    /// The families with rules here: IPv4 always, IPv6 when the namespace has it.
    func families() -> [IPFamily] {
        if SystemProbe.ipv6Enabled() { return [.ipv4, .ipv6] }
        note("IPv6 is off in this network namespace: IPv4 rules only")
        return [.ipv4]
    }

    static func requireNetAdmin(_ action: CaptureAction) throws(CaptureError) {
        guard SystemProbe.hasNetAdmin() else {
            throw CaptureError("capture \(action.rawValue) needs the NET_ADMIN capability (run as root, or grant CAP_NET_ADMIN)")
        }
    }

    func snapshots(_ b: CaptureBackend, _ fams: [IPFamily]) throws(CaptureError) -> [NatTableSnapshot] {
        var out: [NatTableSnapshot] = []
        for f in fams { out.append(try b.snapshot(f)) }
        return out
    }

    func restore(_ b: CaptureBackend, _ f: IPFamily, _ input: String, test: Bool = false) throws(CaptureError) {
        let r = try ProcessRunner.run(try b.path(f, "restore"), (test ? ["--test"] : []) + ["--noflush"], input: input)
        guard r.status == 0 else {
            throw CaptureError("\(b.binary(f, "restore"))\(test ? " --test" : "") refused the \(f.name) rules (exit \(r.status)): \(r.firstErrorLine)")
        }
    }

    func ip(_ args: [String]) throws(CaptureError) -> ProcessRunner.Result {
        guard let p = ProcessRunner.find("ip") else { throw CaptureError("ip not found: install the Debian package iproute2 (apt-get install iproute2)") }
        return try ProcessRunner.run(p, args)
    }

    /// `apply`: returns the line for stdout (`applied` or `unchanged`, the backend, the counts).
    public func apply(_ o: CaptureOptions) throws(CaptureError) -> String {
        try CaptureApplier.requireNetAdmin(.apply)
        let fams = families()
        let nftBefore = try snapshots(.nft, fams)
        let legacyBefore = try snapshots(.legacy, fams)
        let (backend, why) = try BackendChooser.choose(o.backend, nft: nftBefore, legacy: legacyBefore)
        note("backend \(backend.rawValue) (\(why))")
        let before = backend == .nft ? nftBefore : legacyBefore

        let inputs = fams.enumerated().map { i, f in
            CaptureRuleset.render(o, f, omitJumps: Set(before[i].ownJumps))
        }
        for (i, f) in fams.enumerated() { try restore(backend, f, inputs[i], test: true) }

        // What remove must undo besides the chains: kept from an earlier apply, or new.
        let fresh = !before.contains { $0.holdsCapture }
        let earlier = CaptureState.load()
        var state = (fresh ? nil : earlier) ?? CaptureState(cookie: SystemProbe.netnsCookie(), backend: backend)
        state.backend = backend
        // What an apply whose rules were since deleted by hand added is still ours to take back
        // (a table only once it is empty again).
        if fresh, let e = earlier {
            if e.addedPassthrough6 && SystemProbe.loopbackHasPassthrough6() { state.addedPassthrough6 = true }
            if e.backend == backend { state.createdTables = e.createdTables }
        }
        if backend == .nft {
            for (i, f) in fams.enumerated() where !before[i].exists && !state.createdTables.contains(f) { state.createdTables.append(f) }
        }
        if fams.contains(.ipv6) && !SystemProbe.loopbackHasPassthrough6() {
            let r = try ip(["-6", "addr", "add", "::6/128", "dev", "lo"])
            if r.status == 0 {
                state.addedPassthrough6 = true
                note("added ::6/128 to lo (the IPv6 inbound passthrough source; remove deletes it)")
            } else {
                note("could not add ::6/128 to lo (\(r.firstErrorLine)): IPv6 inbound passthrough from ::6 will not work")
            }
        }
        try state.save()

        for (i, f) in fams.enumerated() {
            do {
                try restore(backend, f, inputs[i])
            } catch {
                // Put the families already done back as they were, so nothing is half applied;
                // when nothing of ours was here before, ::6 and the created tables go too.
                for j in 0..<i {
                    if let back = try? before[j].restoreInput(current: try backend.snapshot(fams[j]), fams[j]) {
                        try? restore(backend, fams[j], back)
                    }
                }
                if fresh {
                    _ = try? undoExtras()
                    CaptureState.delete()
                }
                throw error
            }
        }
        let after = try snapshots(backend, fams)
        let counts = fams.enumerated().map { i, f in "\(f.name) \(after[i].ownRules.count + after[i].ownJumps.count) rules" }.joined(separator: ", ")
        return "capture \(after == before ? "unchanged" : "applied"): \(counts) (backend \(backend.rawValue))"
    }

    /// `remove`: deletes the owned jumps and chains (of the backend given, or of each backend
    /// holding them), then what the state file says apply added. Nothing applied: nothing changes.
    public func remove(_ o: CaptureOptions) throws(CaptureError) -> String {
        try CaptureApplier.requireNetAdmin(.remove)
        let fams = families()
        var removed: [String] = []
        let backends: [CaptureBackend] = o.backend == .auto ? CaptureBackend.allCases : [o.backend == .nft ? .nft : .legacy]
        for b in backends {
            let snaps = try snapshots(b, fams)
            var inputs: [(IPFamily, String)] = []
            for (i, f) in fams.enumerated() {
                if let input = try snaps[i].removalInput(f) { inputs.append((f, input)) }
            }
            for (f, input) in inputs {
                try restore(b, f, input)
                removed.append("\(f.name) (\(b.rawValue))")
            }
        }
        let extra = try undoExtras()
        CaptureState.delete()
        if removed.isEmpty && extra.isEmpty { return "capture: nothing to remove (no MESH_ chains or jumps in the nat table)" }
        return "capture removed: " + (removed.isEmpty ? "no rules" : removed.joined(separator: ", ") + " rules") + (extra.isEmpty ? "" : "; " + extra.joined(separator: ", "))
    }

    /// Undoes what the state file says apply added besides the rules: the nft nat tables it
    /// created (when they are empty again) and ::6/128 on lo. Returns what it undid.
    func undoExtras() throws(CaptureError) -> [String] {
        var extra: [String] = []
        guard let state = CaptureState.load() else { return extra }
        for f in state.createdTables where state.backend == .nft {
            let table = f == .ipv4 ? "ip nat" : "ip6 nat"
            let now = try CaptureBackend.nft.snapshot(f)
            guard now.exists else { continue }
            guard now.isEmpty else {
                note("the \(table) table was created by apply but now holds other rules: left in place")
                continue
            }
            guard let nft = ProcessRunner.find("nft") else {
                note("the empty \(table) table apply created stays: nft not found (install the Debian package nftables)")
                continue
            }
            let r = try ProcessRunner.run(nft, ["delete", "table"] + table.split(separator: " ").map(String.init))
            if r.status == 0 { extra.append("the empty \(table) table apply created") } else { note("nft delete table \(table): \(r.firstErrorLine)") }
        }
        if state.addedPassthrough6 && SystemProbe.loopbackHasPassthrough6() {
            let r = try ip(["-6", "addr", "del", "::6/128", "dev", "lo"])
            if r.status == 0 { extra.append("::6/128 from lo") } else { note("ip -6 addr del ::6/128 dev lo: \(r.firstErrorLine)") }
        }
        return extra
    }
}
