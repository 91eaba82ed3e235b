import MeshCore
import MeshHTTP
import MeshTLS

/// The access-log line of one exchange (JSON, one line), written from the exchange's own state
/// on every protocol path and in both directions.
enum ExchangeLog {
    static func write(_ e: Exchange, _ sink: AccessLogSink, micros: UInt64, startWall: UInt64, authority: ByteRange,
                      reason: StaticString?, upstream: EndpointPool?) {
        let o = sink.buffer
        let r = e.request
        o.append("{\"start_time\":\"")
        o.append(string: X509Info.rfc3339(Int64(startWall / 1_000_000_000)))
        o.append("\",\"start_time_ms\":")
        o.appendDecimal(Int(startWall / 1_000_000))
        o.append(",\"duration_ms\":")
        o.appendDecimal(Int(micros / 1000))
        o.append(UInt8(ascii: "."))
        let frac = Int(micros % 1000)
        if frac < 100 { o.append(UInt8(ascii: "0")) }
        if frac < 10 { o.append(UInt8(ascii: "0")) }
        o.appendDecimal(frac)
        o.append(",\"direction\":")
        o.append(e.inbound ? "\"inbound\"" : "\"outbound\"")
        if !r.method.isEmpty {
            o.append(",\"method\":")
            json(o, r.pointer(r.method), Int(r.method.length))
            o.append(",\"authority\":")
            json(o, r.pointer(authority), Int(authority.length))
            var pn = Int(r.originalPath.length)
            let pp = r.pointer(r.originalPath)
            if !sink.includeQuery {
                var i = 0
                while i < pn && pp[i] != UInt8(ascii: "?") { i += 1 }
                pn = i
            }
            o.append(",\"path\":")
            json(o, pp, pn)
            o.append(",\"protocol\":")
            switch r.version {
            case .http10: o.append("\"HTTP/1.0\"")
            case .http11: o.append("\"HTTP/1.1\"")
            case .http2: o.append("\"HTTP/2\"")
            }
            o.append(",\"request_id\":")
            if r.requestIDIndex >= 0 {
                let f = r.fields[r.requestIDIndex]
                json(o, r.pointer(f.value), Int(f.value.length))
            } else {
                o.append("\"\"")
            }
        }
        o.append(",\"response_code\":")
        o.appendDecimal(e.status)
        o.append(",\"response_flags\":\"")
        o.append(e.flag.code)
        o.append("\",\"reason\":")
        if let m = reason { o.append(UInt8(ascii: "\"")); o.append(m); o.append(UInt8(ascii: "\"")) } else { o.append("null") }
        o.append(",\"upstream\":")
        if let p = upstream { o.append(UInt8(ascii: "\"")); o.append(string: p.address.text); o.append(UInt8(ascii: "\"")) } else { o.append("null") }
        o.append(",\"route\":\"")
        if e.metricsRoute == MetricKey.inboundRoute { o.append("inbound") }
        else if !e.routeID.isNone { o.append(string: e.snapshot.routes[e.routeID.index].label) }   // validated: [A-Za-z0-9._-]
        else { o.append("-") }
        let own = (e.snapshot.serverTLS ?? e.snapshot.clientTLS)?.localIdentity ?? ""
        let peer = e.worker.metrics.peers.name(e.inbound ? e.requestPeer : e.upstreamPeer)
        o.append("\",\"source_principal\":")
        jsonString(o, e.inbound ? peer : own)
        o.append(",\"destination_principal\":")
        jsonString(o, e.inbound ? own : peer)
        o.append(",\"bytes_received\":")
        o.appendDecimal(Int(e.requestBytes))
        o.append(",\"bytes_sent\":")
        o.appendDecimal(Int(e.responseBytes))
        if e.audited { o.append(",\"audit\":true") }
        o.append("}\n")
        sink.lineAdded()
    }

    private static func jsonString(_ o: ByteBuffer, _ s: String) {
        var s = s
        s.withUTF8 { u in json(o, u.baseAddress ?? UnsafePointer(bitPattern: 1)!, u.count) }
    }

    /// Appends bytes as a JSON string (quotes, backslashes and control bytes escaped).
    static func json(_ o: ByteBuffer, _ p: UnsafePointer<UInt8>, _ n: Int) {
        o.append(UInt8(ascii: "\""))
        let hex: StaticString = "0123456789abcdef"
        for i in 0..<n {
            let c = p[i]
            if c == 34 || c == 92 { o.append(92); o.append(c) }
            else if c < 0x20 || c == 0x7f {
                o.append("\\u00")
                o.append(hex.utf8Start[Int(c >> 4)])
                o.append(hex.utf8Start[Int(c & 15)])
            } else { o.append(c) }
        }
        o.append(UInt8(ascii: "\""))
    }
}
