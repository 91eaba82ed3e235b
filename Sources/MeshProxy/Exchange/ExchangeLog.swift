import MeshCore
import MeshHTTP
import MeshTLS

/// The access-log lines of one exchange (JSON, or Envoy's default text format), written from
/// the exchange's own state on every protocol path and in both directions.
enum ExchangeLog {
    /// Decides whether and how the finished exchange is logged, then writes its lines. With a
    /// Telemetry `accessLogging` in force for this workload (`snapshot.telemetry`), its rules for
    /// this side (SERVER: inbound, CLIENT: outbound) decide: one line per rule whose filter
    /// matches, in the rule's format. Without one, a static bootstrap's `spec.accessLog` writes
    /// its JSON line; a mesh-mode sidecar writes nothing. Either way a request that is neither
    /// an error nor audited is kept with probability `sink.sampling`.
    static func record(_ e: Exchange, _ sink: AccessLogSink, micros: UInt64, startWall: UInt64, authority: ByteRange,
                       reason: StaticString?, upstream: EndpointPool?) {
        if !sink.mayLog(e.snapshot) { return }
        let sampled: Bool
        if e.status >= 400 || e.status == 0 || e.flag != .none || e.audited || sink.sampling >= 1 {
            sampled = true
        } else {
            sampled = Double(e.worker.rng.next() >> 11) / Double(1 << 53) < sink.sampling
        }
        guard sampled else { return }
        guard let settings = e.snapshot.telemetry.accessLogging else {
            if !sink.telemetryOnly { write(e, sink, micros: micros, startWall: startWall, authority: authority, reason: reason, upstream: upstream) }
            return
        }
        let rules = e.inbound ? settings.server : settings.client
        if rules.isEmpty { return }
        let code = e.flag.code
        for rule in rules {
            if let f = rule.filter, !f.matches(code: e.status, flags: code.utf8Start, count: code.utf8CodeUnitCount) { continue }
            switch rule.format {
            case .json: write(e, sink, micros: micros, startWall: startWall, authority: authority, reason: reason, upstream: upstream)
            case .text: writeText(e, sink, micros: micros, startWall: startWall, authority: authority, upstream: upstream)
            }
        }
    }

    /// One TCP connection (Envoy's tcp_proxy access log), when it ends: only where a Telemetry
    /// `accessLogging` enables lines for this side (a static `spec.accessLog` alone logs HTTP
    /// only, as before). The filter sees `response.code` 0 and the connection's flag; the text
    /// line has Envoy's `-` for the HTTP fields, the JSON line `"protocol":"TCP"`.
    static func recordTCP(worker: Worker, snapshot: ProxySnapshot, _ sink: AccessLogSink, inbound: Bool, flag: ResponseFlag,
                          micros: UInt64, startWall: UInt64, received: UInt64, sent: UInt64, upstream: SocketAddress?, peer: Int) {
        guard let settings = snapshot.telemetry.accessLogging else { return }
        let rules = inbound ? settings.server : settings.client
        if rules.isEmpty { return }
        if flag == .none && sink.sampling < 1 && !(Double(worker.rng.next() >> 11) / Double(1 << 53) < sink.sampling) { return }
        let code = flag.code
        for rule in rules {
            if let f = rule.filter, !f.matches(code: 0, flags: code.utf8Start, count: code.utf8CodeUnitCount) { continue }
            let o = sink.buffer
            switch rule.format {
            case .text:
                o.append(UInt8(ascii: "["))
                appendTime(o, startWall)
                o.append("] \"- - -\" 0 ")
                o.append(code)
                o.append(UInt8(ascii: " "))
                o.appendDecimal(Int(received))
                o.append(UInt8(ascii: " "))
                o.appendDecimal(Int(sent))
                o.append(UInt8(ascii: " "))
                o.appendDecimal(Int(micros / 1000))
                o.append(" - \"-\" \"-\" \"-\" \"-\" \"")
                if let a = upstream { o.append(string: a.text) } else { o.append(UInt8(ascii: "-")) }
                o.append("\"\n")
            case .json:
                o.append("{\"start_time\":\"")
                appendTime(o, startWall, millis: false)
                o.append("\",\"start_time_ms\":")
                o.appendDecimal(Int(startWall / 1_000_000))
                o.append(",\"duration_ms\":")
                o.appendDecimal(Int(micros / 1000))
                o.append(",\"direction\":")
                o.append(inbound ? "\"inbound\"" : "\"outbound\"")
                o.append(",\"protocol\":\"TCP\",\"response_code\":0,\"response_flags\":\"")
                o.append(code)
                o.append("\",\"upstream\":")
                if let a = upstream { o.append(UInt8(ascii: "\"")); o.append(string: a.text); o.append(UInt8(ascii: "\"")) } else { o.append("null") }
                let own = (snapshot.serverTLS ?? snapshot.clientTLS)?.localIdentity ?? ""
                let other = worker.metrics.peers.name(peer)
                o.append(",\"source_principal\":")
                jsonString(o, inbound ? other : own)
                o.append(",\"destination_principal\":")
                jsonString(o, inbound ? own : other)
                o.append(",\"bytes_received\":")
                o.appendDecimal(Int(received))
                o.append(",\"bytes_sent\":")
                o.appendDecimal(Int(sent))
                o.append("}\n")
            }
            sink.lineAdded()
        }
    }

    /// Envoy's default format, one line:
    /// `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE%
    /// %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%
    /// "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"`.
    /// A missing value is `-`; bytes below 0x20, 0x7f, `"` and `\` in values are written as `\xHH`,
    /// and spaces too in the unquoted method and path; the upstream service time is written only
    /// when it is digits (else `-`): a value cannot add or end a field.
    static func writeText(_ e: Exchange, _ sink: AccessLogSink, micros: UInt64, startWall: UInt64, authority: ByteRange,
                          upstream: EndpointPool?) {
        let o = sink.buffer
        let r = e.request
        let hasHead = !r.method.isEmpty
        o.append(UInt8(ascii: "["))
        appendTime(o, startWall)
        o.append("] \"")
        if hasHead {
            text(o, r.pointer(r.method), Int(r.method.length), space: true)
            o.append(UInt8(ascii: " "))
            var pn = Int(r.originalPath.length)
            let pp = r.pointer(r.originalPath)
            if !sink.includeQuery {
                var i = 0
                while i < pn && pp[i] != UInt8(ascii: "?") { i += 1 }
                pn = i
            }
            text(o, pp, pn, space: true)
            o.append(UInt8(ascii: " "))
            switch r.version {
            case .http10: o.append("HTTP/1.0")
            case .http11: o.append("HTTP/1.1")
            case .http2: o.append("HTTP/2")
            }
        } else {
            o.append("- - -")
        }
        o.append("\" ")
        o.appendDecimal(e.status)
        o.append(UInt8(ascii: " "))
        o.append(e.flag.code)
        o.append(UInt8(ascii: " "))
        o.appendDecimal(Int(e.requestBytes))
        o.append(UInt8(ascii: " "))
        o.appendDecimal(Int(e.responseBytes))
        o.append(UInt8(ascii: " "))
        o.appendDecimal(Int(micros / 1000))
        o.append(UInt8(ascii: " "))
        digits(o, e.response, "x-envoy-upstream-service-time")
        o.append(UInt8(ascii: " "))
        if hasHead {
            header(o, r, "x-forwarded-for", quoted: true)
            o.append(UInt8(ascii: " "))
            header(o, r, "user-agent", quoted: true)
            o.append(UInt8(ascii: " "))
            if r.requestIDIndex >= 0 {
                let f = r.fields[r.requestIDIndex]
                o.append(UInt8(ascii: "\""))
                text(o, r.pointer(f.value), Int(f.value.length))
                o.append(UInt8(ascii: "\""))
            } else {
                o.append("\"-\"")
            }
            o.append(" \"")
            if authority.length > 0 { text(o, r.pointer(authority), Int(authority.length)) } else { o.append(UInt8(ascii: "-")) }
            o.append("\" \"")
        } else {
            o.append("\"-\" \"-\" \"-\" \"-\" \"")
        }
        if let p = upstream { o.append(string: p.address.text) } else { o.append(UInt8(ascii: "-")) }
        o.append("\"\n")
        sink.lineAdded()
    }

    /// A header's value (`-` when absent or empty), quoted or not.
    private static func header(_ o: ByteBuffer, _ h: MessageHead, _ name: StaticString, quoted: Bool) {
        if quoted { o.append(UInt8(ascii: "\"")) }
        let found = h.withValue(name.utf8Start, name.utf8CodeUnitCount) { p, n -> Bool in
            if n == 0 { return false }
            text(o, p, n)
            return true
        } ?? false
        if !found { o.append(UInt8(ascii: "-")) }
        if quoted { o.append(UInt8(ascii: "\"")) }
    }

    /// A header the app sets, written unquoted (`%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%`): its
    /// value when it is only ASCII digits (1 to 20 of them), else `-`, so the app cannot add
    /// fields to the line.
    private static func digits(_ o: ByteBuffer, _ h: MessageHead, _ name: StaticString) {
        let found = h.withValue(name.utf8Start, name.utf8CodeUnitCount) { p, n -> Bool in
            if n == 0 || n > 20 { return false }
            for i in 0..<n where p[i] < 48 || p[i] > 57 { return false }
            o.append(UnsafeRawPointer(p), n)
            return true
        } ?? false
        if !found { o.append(UInt8(ascii: "-")) }
    }

    /// Appends bytes for the text format: control bytes, `"` and `\` as `\xHH`, so a value
    /// can neither end its field nor the line; `space: true` (the unquoted method and path,
    /// separated by spaces) also 0x20, so a value cannot add a field.
    static func text(_ o: ByteBuffer, _ p: UnsafePointer<UInt8>, _ n: Int, space: Bool = false) {
        let hex: StaticString = "0123456789abcdef"
        for i in 0..<n {
            let c = p[i]
            if c < 0x20 || c == 0x7f || c == 34 || c == 92 || (space && c == 0x20) {
                o.append("\\x")
                o.append(hex.utf8Start[Int(c >> 4)])
                o.append(hex.utf8Start[Int(c & 15)])
            } else { o.append(c) }
        }
    }

    /// `2026-12-07T01:02:03.456Z` (UTC, milliseconds), Envoy's `%START_TIME%`, from wall-clock
    /// nanoseconds without allocating (days to civil date: Howard Hinnant's algorithm).
    /// `millis: false`: `2026-12-07T01:02:03Z`, as the JSON line's `start_time`.
    static func appendTime(_ o: ByteBuffer, _ wallNanos: UInt64, millis: Bool = true) {
        let ms = Int(wallNanos / 1_000_000)
        let secs = ms / 1000
        let days = secs / 86_400
        let sod = secs % 86_400
        let z = days + 719_468
        let era = z / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yoe + era * 400 + (month <= 2 ? 1 : 0)
        func two(_ v: Int) { o.append(UInt8(48 + v / 10)); o.append(UInt8(48 + v % 10)) }
        o.appendDecimal(year)
        o.append(UInt8(ascii: "-")); two(month)
        o.append(UInt8(ascii: "-")); two(day)
        o.append(UInt8(ascii: "T")); two(sod / 3600)
        o.append(UInt8(ascii: ":")); two(sod / 60 % 60)
        o.append(UInt8(ascii: ":")); two(sod % 60)
        if millis {
            o.append(UInt8(ascii: "."))
            let f = ms % 1000
            o.append(UInt8(48 + f / 100)); two(f % 100)
        }
        o.append(UInt8(ascii: "Z"))
    }
    static func write(_ e: Exchange, _ sink: AccessLogSink, micros: UInt64, startWall: UInt64, authority: ByteRange,
                      reason: StaticString?, upstream: EndpointPool?) {
        let o = sink.buffer
        let r = e.request
        o.append("{\"start_time\":\"")
        appendTime(o, startWall, millis: false)
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
