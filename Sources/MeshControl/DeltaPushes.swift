import MeshControlWire
import MeshCore
import MeshIO
import MeshPKI
import Synchronization

/// meshd's side of config pushes as deltas (DESIGN §12, ConfigDelta.swift): the last few texts
/// rendered for each scope, by text digest, so that a sidecar naming the text it holds
/// (`Request.base`) can be sent the change from it; the delta between two texts, made once
/// however many sidecars need it; and the choice per push: the delta when the base is known
/// and the delta's encoding is smaller than half the text, else the whole text. Counts pushes
/// and bytes by form for `/metrics`. Thread-safe; every table is bounded.
final class DeltaPushes: @unchecked Sendable {
    /// Texts kept per scope (the newest ones) and overall, and their bytes overall (texts
    /// shared by several scopes count once).
    static let perScope = 4
    static let maxTexts = 1024
    static let maxBytes = 64 << 20
    /// Deltas kept (base -> target pairs) and their bytes; the table starts over past either.
    static let maxDeltas = 1024
    static let maxDeltaBytes = 32 << 20

    private struct Kept {
        var text: String
        /// When it was last rendered (the oldest goes first past a bound).
        var touched: Int
        /// How many scopes list it.
        var scopes: Int
    }

    private let lock = PlainLock()
    private var texts: [String: Kept] = [:]
    private var byScope: [String: [String]] = [:]
    private var bytes = 0
    private var clock = 0
    /// "base target" -> the delta's body section (`delta ...` line and encoding), or nil when the
    /// whole text is cheaper.
    private var deltas: [String: String?] = [:]
    private var deltaTableBytes = 0

    let fullPushes = Atomic<Int>(0)
    let deltaPushes = Atomic<Int>(0)
    let fullBytes = Atomic<Int>(0)
    let deltaBytes = Atomic<Int>(0)

    /// Notes `text` (digest `digest`) as the newest rendered for `scope`.
    func remember(scope: String, digest: String, text: String) {
        lock.lock()
        defer { lock.unlock() }
        clock += 1
        var list = byScope[scope] ?? []
        if let i = list.firstIndex(of: digest) {
            list.remove(at: i)
        } else if texts[digest] != nil {
            texts[digest]!.scopes += 1
        } else {
            texts[digest] = Kept(text: text, touched: clock, scopes: 1)
            bytes += text.utf8.count
        }
        texts[digest]!.touched = clock
        list.append(digest)
        while list.count > DeltaPushes.perScope { release(list.removeFirst()) }
        byScope[scope] = list
        // Past the overall bounds the least recently rendered text goes (never the one just kept).
        while texts.count > DeltaPushes.maxTexts || (bytes > DeltaPushes.maxBytes && texts.count > 1) {
            guard let (old, _) = texts.filter({ $0.key != digest }).min(by: { $0.value.touched < $1.value.touched }) else { break }
            for (s, l) in byScope where l.contains(old) {
                let rest = l.filter { $0 != old }
                if rest.isEmpty { byScope.removeValue(forKey: s) } else { byScope[s] = rest }
            }
            forget(old)
        }
        if byScope.count > ScopedRenders.limit {
            // As many scopes as the render cache keeps: past that, start over from this one.
            let mine = byScope[scope] ?? []
            for (s, l) in byScope where s != scope { for d in l { release(d) } }
            byScope = [scope: mine]
        }
    }

    /// One scope no longer lists `digest`.
    private func release(_ digest: String) {
        guard var k = texts[digest] else { return }
        k.scopes -= 1
        if k.scopes <= 0 { forget(digest) } else { texts[digest] = k }
    }

    private func forget(_ digest: String) {
        if let k = texts.removeValue(forKey: digest) { bytes -= k.text.utf8.count }
    }

    /// Whether a text with this digest is kept (tests).
    func knows(_ digest: String) -> Bool { lock.lock(); defer { lock.unlock() }; return texts[digest] != nil }
    /// Texts and bytes kept now (tests).
    var kept: (texts: Int, bytes: Int) { lock.lock(); defer { lock.unlock() }; return (texts.count, bytes) }

    /// The delta section (`delta BASE TARGET` line and the encoded delta) that turns the kept
    /// text `base` into `text` (digest `target`), or nil: `base` is not kept, or the delta is
    /// not smaller than half the text.
    func deltaSection(base: String, target: String, text: String) -> String? {
        let key = base + " " + target
        lock.lock()
        defer { lock.unlock() }
        if let hit = deltas[key] { return hit }
        guard let b = texts[base]?.text else { return nil }
        let d = ConfigStream.Push.Delta(base: base, target: target, patch: ConfigDelta.make(from: b, to: text))
        let encoded = d.line + d.patch.encoded
        let worth: String? = encoded.utf8.count * 2 < text.utf8.count ? encoded : nil
        let size = worth?.utf8.count ?? 0
        if deltas.count >= DeltaPushes.maxDeltas || deltaTableBytes + size > DeltaPushes.maxDeltaBytes {
            deltas.removeAll(keepingCapacity: true)
            deltaTableBytes = 0
        }
        deltas[key] = worth
        deltaTableBytes += size
        return worth
    }

    /// The push for `snap` to a sidecar that holds the text with digest `base` (empty: none),
    /// as its body, counted by form.
    func body(_ snap: ProxyConfigSnapshot, nonce: String, base: String) -> String {
        let head = "version: \(snap.version) \(nonce) \(snap.digest)\n" + TLSSecrets.section(snap.secrets)
        var out: String
        let isDelta: Bool
        if !base.isEmpty, !snap.textDigest.isEmpty, let section = deltaSection(base: base, target: snap.textDigest, text: snap.text) {
            out = head + section
            if !snap.bundle.isEmpty { out += ConfigStream.Push.bundleMarker + snap.bundle }
            isDelta = true
        } else {
            var push = ConfigStream.Push(version: snap.version, nonce: nonce, digest: snap.digest, text: snap.text, bundle: snap.bundle)
            push.secrets = snap.secrets
            out = push.body
            isDelta = false
        }
        let n = out.utf8.count
        if isDelta {
            deltaPushes.add(1, ordering: .relaxed); deltaBytes.add(n, ordering: .relaxed)
        } else {
            fullPushes.add(1, ordering: .relaxed); fullBytes.add(n, ordering: .relaxed)
        }
        return out
    }

    /// The push counters as Prometheus text.
    func metrics() -> String {
        var out = "# HELP meshd_config_pushes_total Config pushes sent, by form: the whole text, or a delta against the text the sidecar holds.\n"
        out += "# TYPE meshd_config_pushes_total counter\n"
        out += "meshd_config_pushes_total{form=\"full\"} \(fullPushes.load(ordering: .relaxed))\n"
        out += "meshd_config_pushes_total{form=\"delta\"} \(deltaPushes.load(ordering: .relaxed))\n"
        out += "# HELP meshd_config_push_bytes_total Bytes of config push bodies sent, by form.\n# TYPE meshd_config_push_bytes_total counter\n"
        out += "meshd_config_push_bytes_total{form=\"full\"} \(fullBytes.load(ordering: .relaxed))\n"
        out += "meshd_config_push_bytes_total{form=\"delta\"} \(deltaBytes.load(ordering: .relaxed))\n"
        return out
    }
}
