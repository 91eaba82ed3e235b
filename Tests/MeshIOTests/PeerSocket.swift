import XCTest
import CMeshShims
import MeshCore
@testable import MeshIO
#if canImport(Glibc)
import Glibc
#endif

/// A socket call failed in a test peer: what it was and its errno.
struct PeerError: Error, CustomStringConvertible, Equatable {
    let what: String
    let code: Int32
    var description: String { "\(what): \(code == 0 ? "timed out" : String(cString: strerror(code)))" }
}

/// The far end of a connection under test: a plain blocking TCP socket on 127.0.0.1 driven by the
/// test thread (no event loop), so what the `Connection` does is seen from outside. Every read
/// waits at most until a deadline. Closed on deinit.
final class PeerSocket {
    private(set) var fd: Int32

    /// Connects to 127.0.0.1:`port`; `receiveBuffer` sets SO_RCVBUF before connecting (a small
    /// window makes the sender's output back up quickly).
    init(connectTo port: Int, receiveBuffer: Int32? = nil) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw PeerError(what: "socket", code: errno) }
        if var size = receiveBuffer {
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        var a = SocketAddress(host: "127.0.0.1", port: port)!
        let rc = withUnsafePointer(to: &a.storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, a.length) }
        }
        if rc != 0 { let e = errno; Glibc.close(fd); fd = -1; throw PeerError(what: "connect to \(port)", code: e) }
    }

    deinit { close() }

    /// Writes every byte (blocking).
    func write(_ bytes: [UInt8]) throws {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + off, bytes.count - off) }
            if n < 0 {
                if errno == EINTR { continue }
                throw PeerError(what: "write", code: errno)
            }
            off += n
        }
    }

    /// Writes what the socket takes now without blocking; returns how many bytes went.
    func writeNonBlocking(_ bytes: [UInt8]) -> Int {
        let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress!, bytes.count, Int32(MSG_DONTWAIT)) }
        return max(0, n)
    }

    /// One read of at most `max` bytes within `timeoutMillis`: the bytes, or [] at end of stream.
    func read(max: Int = 65_536, timeoutMillis: Int32 = 5_000) throws -> [UInt8] {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while true {
            let rc = poll(&p, 1, timeoutMillis)
            if rc < 0 && errno == EINTR { continue }
            if rc < 0 { throw PeerError(what: "poll", code: errno) }
            if rc == 0 { throw PeerError(what: "read", code: 0) }
            break
        }
        var buf = [UInt8](repeating: 0, count: max)
        while true {
            let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, max) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw PeerError(what: "read", code: errno) }
            return Array(buf[0..<n])
        }
    }

    /// Reads exactly `count` bytes, each read within `timeoutMillis`; fewer only at end of stream.
    func read(exactly count: Int, timeoutMillis: Int32 = 5_000) throws -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        while out.count < count {
            let b = try read(max: min(65_536, count - out.count), timeoutMillis: timeoutMillis)
            if b.isEmpty { break }
            out += b
        }
        return out
    }

    /// Reads until end of stream, each read within `timeoutMillis`.
    func readToEnd(timeoutMillis: Int32 = 5_000) throws -> [UInt8] {
        var out: [UInt8] = []
        while true {
            let b = try read(timeoutMillis: timeoutMillis)
            if b.isEmpty { return out }
            out += b
        }
    }

    /// Sends FIN (our half closed; we can still read).
    func shutdownWrite() { _ = Glibc.shutdown(fd, Int32(SHUT_WR)) }

    /// Closes with a reset instead of FIN (SO_LINGER with zero time).
    func closeWithReset() {
        var l = linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
        close()
    }

    func close() {
        if fd >= 0 { Glibc.close(fd); fd = -1 }
    }
}

/// A listening socket on 127.0.0.1, port chosen by the kernel, whose accepted descriptors the
/// test hands to `Connection`s itself. Closed on deinit.
final class LocalListener {
    let fd: Int32
    let port: Int

    init() throws {
        fd = Socket.listen(SocketAddress(host: "127.0.0.1", port: 0)!, reusePort: false)
        guard fd >= 0 else { throw PeerError(what: "listen", code: -fd) }
        port = Socket.localPort(fd)
    }

    deinit { Glibc.close(fd) }

    /// The next connection (non-blocking descriptor), waiting at most `timeoutMillis`.
    func accept(timeoutMillis: Int32 = 5_000) throws -> Int32 {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, timeoutMillis) == 1 else { throw PeerError(what: "accept", code: 0) }
        let c = mesh_accept4(fd)
        guard c >= 0 else { throw PeerError(what: "accept", code: errno) }
        return c
    }
}

/// `n` bytes of a pattern with a prime period, so a lost, repeated or reordered block shows.
func pattern(_ n: Int, from start: Int = 0) -> [UInt8] {
    (start..<(start + n)).map { UInt8(truncatingIfNeeded: $0 % 251) }
}

/// A bound TCP port on 127.0.0.1 with nothing listening: connecting to it is refused, and no other
/// socket can take the port while this one holds it. Closed on deinit.
final class RefusingPort {
    let fd: Int32
    let port: Int

    init() throws {
        let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { throw PeerError(what: "socket", code: errno) }
        var a = SocketAddress(host: "127.0.0.1", port: 0)!
        let rc = withUnsafePointer(to: &a.storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, a.length) }
        }
        guard rc == 0 else { let e = errno; Glibc.close(s); throw PeerError(what: "bind", code: e) }
        fd = s
        port = Socket.localPort(s)
    }

    deinit { Glibc.close(fd) }
}
