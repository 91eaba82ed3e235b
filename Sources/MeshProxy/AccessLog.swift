import CMeshShims
import MeshCore
import MeshIO
#if canImport(Glibc)
import Glibc
#endif

/// Access logs without blocking a worker: each worker formats its lines (ExchangeLog.swift) into its own buffer and,
/// once per loop iteration, hands them to a non-blocking pipe; one writer thread drains every pipe
/// into the log file (or stdout). When the writer falls behind and a pipe is full, lines are
/// dropped and counted, never waited for.
final class AccessLogWriter: @unchecked Sendable {
    let path: String
    private let fileFd: Int32
    private var pipes: [(read: Int32, write: Int32)] = []
    private var thread: pthread_t?
    private var stopPipe: (Int32, Int32) = (-1, -1)

    init(path: String, workers: Int) throws {
        self.path = path
        if path == "/dev/stdout" {
            fileFd = 1
        } else {
            fileFd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
            if fileFd < 0 { throw ProxyStartError(description: "cannot open access log \(path): \(Socket.errorText(mesh_errno()))") }
        }
        for _ in 0..<workers {
            var fds: [Int32] = [0, 0]
            guard mesh_pipe(&fds, 1) == 0 else { throw ProxyStartError(description: "pipe2 failed") }
            pipes.append((fds[0], fds[1]))
        }
        var s: [Int32] = [0, 0]
        guard mesh_pipe(&s, 0) == 0 else { throw ProxyStartError(description: "pipe2 failed") }
        stopPipe = (s[0], s[1])
    }

    func writeEnd(worker i: Int) -> Int32 { pipes[i].write }

    func start() {
        let pipes = self.pipes, fileFd = self.fileFd, stopRead = stopPipe.0
        thread = Threads.spawn(name: "access-log") {
            var pfds = pipes.map { pollfd(fd: $0.read, events: Int16(POLLIN), revents: 0) }
            pfds.append(pollfd(fd: stopRead, events: Int16(POLLIN), revents: 0))
            let buf = UnsafeMutablePointer<UInt8>.allocate(capacity: 1 << 16)
            defer { buf.deallocate() }
            // Per pipe: the start of a line whose end has not arrived yet, so that lines from
            // different workers never interleave in the file.
            var carry = [[UInt8]](repeating: [], count: pipes.count)
            func writeAll(_ p: UnsafePointer<UInt8>, _ n: Int) {
                var off = 0
                while off < n {
                    let w = write(fileFd, p + off, n - off)
                    if w <= 0 { if mesh_errno() == EINTR { continue }; return }
                    off += w
                }
            }
            var stopping = false
            while true {
                let rc = poll(&pfds, nfds_t(pfds.count), stopping ? 0 : -1)
                if rc < 0 && mesh_errno() == EINTR { continue }
                var any = false
                for i in 0..<pipes.count where pfds[i].revents != 0 || stopping {
                    while true {
                        let n = read(pipes[i].read, buf, 1 << 16)
                        if n <= 0 { break }
                        any = true
                        var last = n - 1
                        while last >= 0 && buf[last] != 10 { last -= 1 }
                        if last < 0 { carry[i].append(contentsOf: UnsafeBufferPointer(start: buf, count: n)); continue }
                        if !carry[i].isEmpty {
                            carry[i].append(contentsOf: UnsafeBufferPointer(start: buf, count: last + 1))
                            carry[i].withUnsafeBufferPointer { writeAll($0.baseAddress!, $0.count) }
                            carry[i].removeAll(keepingCapacity: true)
                        } else {
                            writeAll(buf, last + 1)
                        }
                        if last + 1 < n { carry[i].append(contentsOf: UnsafeBufferPointer(start: buf + last + 1, count: n - last - 1)) }
                    }
                }
                if pfds[pipes.count].revents != 0 { stopping = true }
                if stopping && !any { return }
            }
        }
    }

    /// Writes what is queued, then stops the thread (after the workers stopped).
    func stop() {
        var one: UInt8 = 1
        _ = write(stopPipe.1, &one, 1)
        if let t = thread { Threads.join(t) }
    }
}

/// A worker's side of the access log: lines gathered during one loop iteration and handed to the
/// pipe at its end.
final class AccessLogSink: Pollable {
    let buffer = ByteBuffer(capacity: 16 * 1024)
    unowned let loop: EventLoop
    let pipeFd: Int32
    let sampling: Double
    let includeQuery: Bool
    /// Mesh mode: lines only where a Telemetry `accessLogging` enables them (ExchangeLog.record).
    let telemetryOnly: Bool
    private var queued = false
    private(set) var dropped: UInt64 = 0

    init(loop: EventLoop, pipeFd: Int32, sampling: Double, includeQuery: Bool, telemetryOnly: Bool = false) {
        self.loop = loop
        self.telemetryOnly = telemetryOnly
        self.pipeFd = pipeFd
        self.sampling = sampling
        self.includeQuery = includeQuery
        super.init(fd: -1)
        loop.registerTimerOnly(self)
    }

    /// Whether requests on `snapshot` may be logged (their start time is read only then): always
    /// with a static `spec.accessLog`; in mesh mode only while a Telemetry enables lines.
    @inline(__always) func mayLog(_ snapshot: ProxySnapshot) -> Bool {
        !telemetryOnly || snapshot.accessLogOn
    }

    /// Call after appending a line.
    @inline(__always) func lineAdded() {
        if !queued { queued = true; loop.markDirty(self) }
    }

    override func onFlush() {
        queued = false
        while !buffer.isEmpty {
            let n = write(pipeFd, buffer.readPointer, buffer.readableBytes)
            if n > 0 {
                midLine = buffer[buffer.readIndex + n - 1] != 10
                buffer.consume(n)
                continue
            }
            if n < 0 && mesh_errno() == EINTR { continue }
            break
        }
        // Pipe full (the writer is behind): keep the rest for the next flush; past 1 MiB
        // waiting, drop whole lines and count them (the line already half in the pipe is
        // finished first, so no line is ever cut).
        if buffer.readableBytes > 1 << 20 {
            var keep = 0
            if midLine {
                var i = buffer.readIndex
                while i < buffer.writeIndex && buffer[i] != 10 { i += 1 }
                keep = min(i + 1, buffer.writeIndex) - buffer.readIndex
            }
            var lines: UInt64 = 0
            for i in (buffer.readIndex + keep)..<buffer.writeIndex where buffer[i] == 10 { lines += 1 }
            dropped &+= lines
            if keep == 0 { buffer.clear() } else { buffer.writeIndex = buffer.readIndex + keep }
        }
    }

    /// The last write ended inside a line (its rest must come next).
    private var midLine = false
}
