import MeshControlWire
import MeshPKI

/// The text digest of a pushed config, computed as the push streams past (the simulated sidecar
/// keeps no text): the bytes after the push's first line up to the trust bundle's marker line
/// (`ConfigStream.Push.bundleMarker` at the start of a line), or to the end when there is none.
/// What meshd keys its recent texts by, so the next request can name it as its base and get
/// deltas. A text that itself holds the marker line gives another digest, and meshd, not knowing
/// it, sends the whole text: a slower run, never a wrong one.
final class PushTextDigester {
    private enum State { case firstLine, text, done }
    private var state = State.firstLine
    private var atLineStart = true
    /// How many bytes of the marker the current line has matched (held back from the hash).
    private var matched = 0
    private let digest = DigestStream()
    private static let marker = Array(ConfigStream.Push.bundleMarker.utf8)

    func feed(_ bytes: UnsafeRawBufferPointer) {
        let n = bytes.count
        var i = 0
        if state == .done { return }
        if state == .firstLine {
            while i < n && bytes[i] != 10 { i += 1 }
            if i == n { return }
            i += 1
            state = .text
        }
        let m = PushTextDigester.marker
        while i < n {
            if atLineStart || matched > 0 {
                while i < n && matched < m.count && bytes[i] == m[matched] { matched += 1; i += 1 }
                if matched == m.count { state = .done; return }
                if i == n { return }
                // Not the marker: the held-back bytes are text.
                if matched > 0 { m.withUnsafeBytes { digest.update(UnsafeRawBufferPointer(rebasing: $0[0..<matched])) } }
                matched = 0
                atLineStart = false
                continue
            }
            var j = i
            while j < n && bytes[j] != 10 { j += 1 }
            if j == n {
                digest.update(UnsafeRawBufferPointer(rebasing: bytes[i..<n]))
                return
            }
            digest.update(UnsafeRawBufferPointer(rebasing: bytes[i...j]))
            i = j + 1
            atLineStart = true
        }
    }

    /// The text's digest (once the whole body was fed).
    func finish() -> String {
        if state == .text && matched > 0 {
            PushTextDigester.marker.withUnsafeBytes { digest.update(UnsafeRawBufferPointer(rebasing: $0[0..<matched])) }
        }
        return digest.finishHex()
    }
}
