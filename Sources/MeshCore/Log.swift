import CMeshShims
#if canImport(Glibc)
import Glibc
#endif

/// The process log: one line per event on stderr, `LEVEL component: message`. Used on the control
/// path and for errors; the data path logs only failures, never per successful request.
public enum Log {
    public enum Level: Int, Sendable { case debug = 0, info, warn, error }
    nonisolated(unsafe) public static var minimum: Level = .info

    public static func debug(_ component: StaticString, _ message: @autoclosure () -> String) {
        if minimum.rawValue <= Level.debug.rawValue { write("debug", component, message()) }
    }
    public static func info(_ component: StaticString, _ message: @autoclosure () -> String) {
        if minimum.rawValue <= Level.info.rawValue { write("info", component, message()) }
    }
    public static func warn(_ component: StaticString, _ message: @autoclosure () -> String) {
        if minimum.rawValue <= Level.warn.rawValue { write("warn", component, message()) }
    }
    public static func error(_ component: StaticString, _ message: @autoclosure () -> String) {
        write("error", component, message())
    }

    private static func write(_ level: String, _ component: StaticString, _ message: String) {
        // Input echoed in a message (names, values, peer bytes) cannot forge lines or move the cursor.
        let line = "\(level) \(component): \(Printable.escaped(message))\n"
        var l = line
        l.withUTF8 { u in
            var off = 0
            while off < u.count {
                let n = Glibc.write(2, u.baseAddress! + off, u.count - off)
                if n <= 0 { break }
                off += n
            }
        }
    }
}
