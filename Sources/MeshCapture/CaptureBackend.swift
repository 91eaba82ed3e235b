/// An iptables backend: iptables-nft (rules in nf_tables) or iptables-legacy (x_tables). The two
/// are separate rule sets the kernel both consults; both families always use the same one.
public enum CaptureBackend: String, Sendable, CaseIterable {
    case nft, legacy

    /// `iptables-nft-restore`, `ip6tables-legacy-save`, ...
    public func binary(_ family: IPFamily, _ tool: String) -> String {
        "\(family == .ipv4 ? "iptables" : "ip6tables")-\(rawValue)-\(tool)"
    }

    /// The path of a tool, or an error naming the Debian package that ships it.
    public func path(_ family: IPFamily, _ tool: String) throws(CaptureError) -> String {
        let name = binary(family, tool)
        guard let p = ProcessRunner.find(name) else {
            throw CaptureError("\(name) not found: install the Debian package iptables (apt-get install iptables)")
        }
        return p
    }

    /// The nat table of `family` as this backend holds it. The legacy table is only read when the
    /// kernel lists it (reading it would create it).
    public func snapshot(_ family: IPFamily) throws(CaptureError) -> NatTableSnapshot {
        if self == .legacy && !SystemProbe.legacyNatLoaded(family) { return NatTableSnapshot() }
        let r = try ProcessRunner.run(try path(family, "save"), [])
        guard r.status == 0 else { throw CaptureError("\(binary(family, "save")) failed (exit \(r.status)): \(r.firstErrorLine)") }
        return NatTableSnapshot(save: r.stdout)
    }
}

/// How `--backend auto` decides, as a pure function of what each backend holds (so it is tested
/// without root): the backend already holding the capture's chains; else legacy when legacy holds
/// nat rules and nft none; else nft. Returns the choice and the reason said on stderr.
public enum BackendChooser {
    public static func choose(_ choice: BackendChoice, nft: [NatTableSnapshot], legacy: [NatTableSnapshot]) throws(CaptureError) -> (CaptureBackend, String) {
        let nftOwn = nft.contains { $0.holdsCapture }, legacyOwn = legacy.contains { $0.holdsCapture }
        let nftRules = nft.contains { !$0.rules.isEmpty }, legacyRules = legacy.contains { !$0.rules.isEmpty }
        switch choice {
        case .nft:
            if legacyOwn && !nftOwn {
                throw CaptureError("the capture rules are applied with the legacy backend; remove them first (meshctl capture remove --backend legacy)")
            }
            return (.nft, "--backend nft")
        case .legacy:
            if nftOwn && !legacyOwn {
                throw CaptureError("the capture rules are applied with the nft backend; remove them first (meshctl capture remove --backend nft)")
            }
            return (.legacy, "--backend legacy")
        case .auto:
            if nftOwn { return (.nft, "auto: the capture rules are already in the nft backend") }
            if legacyOwn { return (.legacy, "auto: the capture rules are already in the legacy backend") }
            if legacyRules && !nftRules { return (.legacy, "auto: the legacy backend holds nat rules and nft holds none") }
            if legacyRules { return (.nft, "auto: both backends hold nat rules; nft is the default (the kernel consults both)") }
            return (.nft, nftRules ? "auto: nft holds nat rules and legacy none" : "auto: neither backend holds nat rules; nft is the default")
        }
    }
}
