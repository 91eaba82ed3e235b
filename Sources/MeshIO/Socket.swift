import CMeshShims
import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// Thin wrappers over the socket system calls the proxy uses; each returns the descriptor or a
/// negative errno, never throws, never blocks.
public enum Socket {
    /// A non-blocking listening socket; `reusePort` lets every worker bind its own on the same port.
    public static func listen(_ addr: SocketAddress, reusePort: Bool, backlog: Int32 = 1024) -> Int32 {
        listen(addr, reusePortBeforeBind: reusePort, reusePortAfterBind: false, backlog: backlog)
    }

    /// `count` non-blocking listening sockets on one address, shared through SO_REUSEPORT by
    /// this process alone (one per worker; the kernel spreads new connections across them).
    /// The first socket is bound before SO_REUSEPORT is set on it, so its bind fails with
    /// EADDRINUSE when any other socket holds the port, whatever its options or owner; once it
    /// is bound, another process claiming the port the same way fails too. The others join it
    /// with SO_REUSEPORT. Port 0: all of them share the port the first one got. Returns the
    /// descriptors, or the errno of the first failure (nothing stays open then).
    public static func listenExclusive(_ addr: SocketAddress, count: Int, backlog: Int32 = 1024) -> Result<[Int32], SocketError> {
        let first = listen(addr, reusePortBeforeBind: false, reusePortAfterBind: true, backlog: backlog)
        if first < 0 { return .failure(SocketError(code: -first)) }
        var fds = [first]
        var shared = addr
        if addr.port == 0, let colon = addr.text.lastIndex(of: ":"),
           let bound = SocketAddress(host: String(addr.text[..<colon]), port: localPort(first)) {
            shared = bound
        }
        while fds.count < count {
            let fd = listen(shared, reusePortBeforeBind: true, reusePortAfterBind: false, backlog: backlog)
            if fd < 0 {
                for f in fds { Glibc.close(f) }
                return .failure(SocketError(code: -fd))
            }
            fds.append(fd)
        }
        return .success(fds)
    }

    private static func listen(_ addr: SocketAddress, reusePortBeforeBind: Bool, reusePortAfterBind: Bool, backlog: Int32) -> Int32 {
        let fd = socket(addr.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { return -mesh_errno() }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        if reusePortBeforeBind { setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(MemoryLayout<Int32>.size)) }
        var a = addr
        let rc = withUnsafePointer(to: &a.storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, a.length) }
        }
        if rc != 0 { let e = mesh_errno(); Glibc.close(fd); return -e }
        // Set after bind, before listen: the listen joins (or starts) the SO_REUSEPORT group.
        if reusePortAfterBind && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(MemoryLayout<Int32>.size)) != 0 {
            let e = mesh_errno(); Glibc.close(fd); return -e
        }
        if Glibc.listen(fd, backlog) != 0 { let e = mesh_errno(); Glibc.close(fd); return -e }
        return fd
    }

    /// Starts a non-blocking connect; the result arrives as EPOLLOUT (check `pendingError`).
    /// `source`: the local address to connect from (its port 0: any), e.g. 127.0.0.6 for the
    /// sidecar's calls to its app under capture; a source of the other family is not used.
    public static func connect(_ addr: SocketAddress, source: SocketAddress? = nil) -> Int32 {
        let fd = socket(addr.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { return -mesh_errno() }
        setNoDelay(fd)
        if var src = source, src.family == addr.family {
            // The port is chosen at connect, by the whole 4-tuple (IP_BIND_ADDRESS_NO_PORT), so
            // a fixed source address does not use up the ephemeral ports of its own.
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_IP), 24 /* IP_BIND_ADDRESS_NO_PORT */, &one, socklen_t(MemoryLayout<Int32>.size))
            let rc = withUnsafePointer(to: &src.storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, src.length) }
            }
            if rc != 0 { let e = mesh_errno(); Glibc.close(fd); return -e }
        }
        var a = addr
        let rc = withUnsafePointer(to: &a.storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, a.length) }
        }
        if rc != 0 && mesh_errno() != EINPROGRESS { let e = mesh_errno(); Glibc.close(fd); return -e }
        return fd
    }

    /// The port a socket is bound to (for listeners on port 0).
    public static func localPort(_ fd: Int32) -> Int {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &ss) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        if rc != 0 { return -1 }
        return withUnsafeBytes(of: ss) { raw in
            if Int32(ss.ss_family) == AF_INET { return Int(UInt16(bigEndian: raw.load(as: sockaddr_in.self).sin_port)) }
            return Int(UInt16(bigEndian: raw.load(as: sockaddr_in6.self).sin6_port))
        }
    }

    public static func setNoDelay(_ fd: Int32) {
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    /// SO_ERROR of a socket (the outcome of a non-blocking connect).
    public static func pendingError(_ fd: Int32) -> Int32 {
        var err: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len)
        return err
    }

    public static func errorText(_ e: Int32) -> String {
        String(cString: strerror(e))
    }
}

/// A failed socket call: its errno.
public struct SocketError: Error, Equatable, CustomStringConvertible {
    public let code: Int32
    public init(code: Int32) { self.code = code }
    public var description: String { Socket.errorText(code) }
}

extension Socket {
    /// Where an accepted connection was going before an iptables REDIRECT sent it to this
    /// listener (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`, from conntrack). For a connection that
    /// was not redirected it is the socket's own local address; nil when the kernel has no
    /// conntrack entry (no netfilter on this path) or the socket is not IPv4/IPv6.
    public static func originalDestination(_ fd: Int32) -> IPEndpoint? {
        var local = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        if rc != 0 { return nil }
        var out = sockaddr_storage()
        var outLen: socklen_t = 0
        if mesh_original_dst(fd, Int32(local.ss_family), &out, &outLen) != 0 {
            // An IPv4 connection on an IPv6 socket (`::ffff:a.b.c.d`) keeps its conntrack entry
            // at the IPv4 level.
            guard Int32(local.ss_family) == AF_INET6, mesh_original_dst(fd, AF_INET, &out, &outLen) == 0 else { return nil }
        }
        return IPEndpoint(storage: out)
    }

    /// The local address an accepted socket is bound to.
    public static func localEndpoint(_ fd: Int32) -> IPEndpoint? {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &ss) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        return rc == 0 ? IPEndpoint(storage: ss) : nil
    }
}
