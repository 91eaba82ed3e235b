import CMeshShims
import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// A listening socket on one event loop. With SO_REUSEPORT each worker owns one listener on the
/// same port and the kernel spreads new connections across them (only this process's: see
/// `Socket.listenExclusive`); accepted sockets stay on this worker for their whole life.
public final class Listener: Pollable {
    public let loop: EventLoop
    public let name: String
    private let onAccept: (Int32) -> Void
    public private(set) var isOpen = true
    /// Accepted connections so far (for stats).
    public private(set) var accepted: UInt64 = 0

    public init(loop: EventLoop, fd: Int32, name: String, onAccept: @escaping (Int32) -> Void) {
        self.loop = loop
        self.name = name
        self.onAccept = onAccept
        super.init(fd: fd)
    }

    public func start() -> Bool {
        loop.register(self, events: EPOLLIN.rawValue)
    }

    public override func onEvents(_ events: UInt32) {
        // Level-triggered: accept a bounded batch, the loop comes back for the rest.
        var budget = 64
        while isOpen && budget > 0 {
            budget -= 1
            let cfd = mesh_accept4(fd)
            if cfd < 0 {
                let e = mesh_errno()
                if e == EAGAIN || e == EWOULDBLOCK || e == EINTR || e == ECONNABORTED { return }
                if e == EMFILE || e == ENFILE {
                    // Level-triggered: the waiting connection would wake us at once, forever.
                    // Stop watching for a second instead of spinning.
                    Log.warn("listener", "\(name): out of file descriptors (\(Socket.errorText(e))); pausing accepts for 1s")
                    loop.modify(self, events: 0)
                    loop.setDeadline(self, loop.now + 1_000_000_000)
                    return
                }
                Log.warn("listener", "\(name): accept failed: \(Socket.errorText(e))")
                return
            }
            accepted &+= 1
            Socket.setNoDelay(cfd)
            onAccept(cfd)
        }
    }

    public override func onTimer(now: UInt64) {
        if isOpen { loop.modify(self, events: EPOLLIN.rawValue) }
    }

    /// Stops accepting and closes the socket (drain).
    public func close() {
        guard isOpen else { return }
        isOpen = false
        loop.deregister(self)
        Glibc.close(fd)
    }
}
