import MeshCore

/// Reads a parsed HTTP/1.1 head (`HTTPHead`, byte ranges into the read buffer) into a
/// protocol-neutral `MessageHead` through the header policy: the origin-form path (an
/// absolute-form target gives the authority and its path), names `Connection` lists dropped.
/// (`inout` only so that a head kept in a class is read in place, not copied.)
public enum H1HeadReader {
    public static func request(_ h: inout HTTPHead, _ b: UnsafePointer<UInt8>, into r: MessageHead) {
        r.reset()
        r.version = h.minorVersion == 0 ? .http10 : .http11
        r.method = r.keep(b + h.methodStart, h.methodEnd - h.methodStart)
        r.methodKind = h.method
        if h.isAbsoluteForm {
            r.authority = r.keep(b + h.authorityStart, h.authorityEnd - h.authorityStart)
            if h.pathEnd > h.pathStart {
                if b[h.pathStart] == UInt8(ascii: "?") {
                    // `http://host?q` has an empty path: `/?q` in origin form.
                    let slash: StaticString = "/"
                    let s = r.keep(slash.utf8Start, 1)
                    _ = r.keep(b + h.pathStart, h.pathEnd - h.pathStart)
                    r.path = ByteRange(start: Int(s.start), length: 1 + h.pathEnd - h.pathStart)
                } else {
                    r.path = r.keep(b + h.pathStart, h.pathEnd - h.pathStart)
                }
            }
        } else {
            r.path = r.keep(b + h.targetStart, h.targetEnd - h.targetStart)
        }
        r.originalPath = r.path
        fields(&h, b, into: r)
    }

    public static func response(_ h: inout HTTPHead, _ b: UnsafePointer<UInt8>, into r: MessageHead) {
        r.reset()
        r.status = h.status
        r.version = h.minorVersion == 0 ? .http10 : .http11
        if h.reasonEnd > h.reasonStart { r.reason = r.keep(b + h.reasonStart, h.reasonEnd - h.reasonStart) }
        fields(&h, b, into: r)
    }

    @inline(never) private static func fields(_ h: inout HTTPHead, _ b: UnsafePointer<UInt8>, into r: MessageHead) {
        let listed = !h.connectionListed.isEmpty
        for f in h.fields {
            if listed && f.kind.isOrdinary && h.isConnectionListed(f, in: b) { continue }   // never framing or mesh headers
            HeaderPolicy.ingest(r, b + Int(f.lineStart), Int(f.nameEnd - f.lineStart),
                                b + Int(f.valueStart), Int(f.valueEnd - f.valueStart), kind: f.kind)
        }
    }
}
