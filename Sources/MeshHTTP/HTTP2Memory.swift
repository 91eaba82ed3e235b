import CNghttp2
#if canImport(Glibc)
import Glibc
#endif

/// nghttp2's allocator for one session (`nghttp2_mem`): plain malloc/free that also counts the
/// session's live bytes and remembers its large blocks (at least `largeBlock` bytes), so that
/// an idle session can give those blocks' pages back to the kernel without freeing them.
///
/// Why this is safe (read in nghttp2 1.52's lib/nghttp2_session.c and lib/nghttp2_buf.c):
/// - The large block of an idle session is the outbound frame buffer (`aob.framebufs`, one
///   16394-byte chunk allocated by `session_new` and kept for the session's life; chunks beyond
///   the first are freed by `nghttp2_bufs_reset` when the active outbound item is reset). When
///   `nghttp2_session_want_write` is 0 (and the session did not terminate) `aob.item` is NULL,
///   and `active_outbound_item_reset` has reset the buffers: the next frame is serialized after
///   `nghttp2_bufs_rewind` from the start of the chunk, so nothing in it is read before being
///   written again. A page dropped with `MADV_DONTNEED` reads back as zeros, faulted in on
///   the next frame.
/// - glibc does not read the user bytes of an allocated chunk (read in glibc's malloc.c): its
///   metadata is the chunk header before the pointer (on the page before a page-aligned
///   block), and what it keeps inside the user bytes (free-list links in the first 32 bytes,
///   the next chunk's `prev_size` in the last 8) is written when the chunk is freed and read
///   only while it is free. A dropped page of a live block reads back as zeros and is written
///   again before use, by nghttp2 or by glibc's free. Only whole pages inside
///   `[ptr, ptr + usable size)` are dropped: a page shared with a neighbouring block is kept.
/// The release costs one `madvise` per large block per hibernation (not per request); the
/// counters cost an add per allocation.
public final class HTTP2Memory {
    /// Blocks at least this large are remembered (nghttp2's frame buffer chunk: 16394 bytes).
    public static let largeBlock = 8 * 1024
    /// At most this many large blocks are remembered (the frame buffer may hold up to four
    /// chunks while a 64 KiB header block is sent; an idle session holds one).
    static let slots = 8

    /// Bytes nghttp2 holds for this session now (`malloc_usable_size` of each live block).
    public private(set) var liveBytes = 0
    /// Allocations nghttp2 made for this session so far.
    public private(set) var allocations: UInt64 = 0
    /// Bytes of whole pages given back by `releaseIdlePages` so far (they fault back in on use).
    public private(set) var releasedBytes = 0
    /// Times `releaseIdlePages` gave at least one page back.
    public private(set) var releases: UInt64 = 0

    /// Large blocks: address and usable size; 0 = free slot.
    private var bigAddr: (UInt, UInt, UInt, UInt, UInt, UInt, UInt, UInt) = (0, 0, 0, 0, 0, 0, 0, 0)
    private var bigSize: (Int, Int, Int, Int, Int, Int, Int, Int) = (0, 0, 0, 0, 0, 0, 0, 0)

    /// The `nghttp2_mem` to hand to `nghttp2_session_*_new3` (nghttp2 copies it; this object
    /// must outlive the session).
    var table: nghttp2_mem {
        nghttp2_mem(mem_user_data: Unmanaged.passUnretained(self).toOpaque(),
                    malloc: { size, user in
                        let p = HTTP2Memory.allocate(size)
                        if let p { HTTP2Memory.of(user).noteAlloc(p) }
                        return p
                    },
                    free: { ptr, user in
                        guard let ptr else { return }
                        HTTP2Memory.of(user).noteFree(ptr)
                        free(ptr)
                    },
                    calloc: { n, size, user in
                        let (total, overflow) = n.multipliedReportingOverflow(by: size)
                        if overflow { return nil }
                        guard total >= HTTP2Memory.largeBlock else {
                            let p = calloc(n, size)
                            if let p { HTTP2Memory.of(user).noteAlloc(p) }
                            return p
                        }
                        let p = HTTP2Memory.allocate(total)
                        if let p {
                            memset(p, 0, total)
                            HTTP2Memory.of(user).noteAlloc(p)
                        }
                        return p
                    },
                    realloc: { ptr, size, user in
                        let m = HTTP2Memory.of(user)
                        guard let ptr else {
                            let p = HTTP2Memory.allocate(size)
                            if let p { m.noteAlloc(p) }
                            return p
                        }
                        m.noteFree(ptr)
                        let p = realloc(ptr, size)
                        if let p { m.noteAlloc(p) } else if size != 0 { m.noteAlloc(ptr) }   // failed: the old block lives on
                        return p
                    })
    }

    /// malloc, except that a large block starts on a page boundary: then every whole page of
    /// it can be given back while idle (a 16394-byte frame buffer: four pages, instead of three
    /// when it starts mid-page).
    @inline(__always) static func allocate(_ size: Int) -> UnsafeMutableRawPointer? {
        if size < largeBlock { return malloc(size) }
        var p: UnsafeMutableRawPointer? = nil
        return posix_memalign(&p, Int(pageSize), size) == 0 ? p : nil
    }

    public init() {}

    @inline(__always) private static func of(_ user: UnsafeMutableRawPointer?) -> HTTP2Memory {
        Unmanaged<HTTP2Memory>.fromOpaque(user!).takeUnretainedValue()
    }

    /// Large blocks remembered now (tests and the breakdown in docs/benchmarks.md).
    public var largeBlocks: Int {
        withUnsafeBytes(of: bigAddr) { $0.bindMemory(to: UInt.self).reduce(0) { $0 + ($1 != 0 ? 1 : 0) } }
    }

    /// The large blocks remembered now: (address, usable size).
    public var largeBlockList: [(UInt, Int)] {
        var out: [(UInt, Int)] = []
        withUnsafeBytes(of: bigAddr) { a in
            withUnsafeBytes(of: bigSize) { s in
                let aa = a.bindMemory(to: UInt.self), ss = s.bindMemory(to: Int.self)
                for i in 0..<HTTP2Memory.slots where aa[i] != 0 { out.append((aa[i], ss[i])) }
            }
        }
        return out
    }

    @inline(__always) private func noteAlloc(_ p: UnsafeMutableRawPointer) {
        let n = malloc_usable_size(p)
        liveBytes &+= n
        allocations &+= 1
        if n >= HTTP2Memory.largeBlock { remember(UInt(bitPattern: p), n) }
    }

    @inline(__always) private func noteFree(_ p: UnsafeMutableRawPointer) {
        let n = malloc_usable_size(p)
        liveBytes &-= n
        if n >= HTTP2Memory.largeBlock { forget(UInt(bitPattern: p)) }
    }

    private func remember(_ addr: UInt, _ size: Int) {
        withUnsafeMutableBytes(of: &bigAddr) { a in
            withUnsafeMutableBytes(of: &bigSize) { s in
                let aa = a.bindMemory(to: UInt.self), ss = s.bindMemory(to: Int.self)
                for i in 0..<HTTP2Memory.slots where aa[i] == 0 {
                    aa[i] = addr
                    ss[i] = size
                    return
                }
                // All slots taken: this block is simply not released while idle.
            }
        }
    }

    private func forget(_ addr: UInt) {
        withUnsafeMutableBytes(of: &bigAddr) { a in
            let aa = a.bindMemory(to: UInt.self)
            for i in 0..<HTTP2Memory.slots where aa[i] == addr {
                aa[i] = 0
                return
            }
        }
    }

    /// Drops the whole pages inside each remembered large block (`MADV_DONTNEED`); the blocks
    /// stay allocated. Only for a session with nothing pending (see the type's comment): the
    /// caller checks. Returns the bytes given back.
    @discardableResult
    func releaseIdlePages() -> Int {
        let page = HTTP2Memory.pageSize
        var total = 0
        withUnsafeBytes(of: bigAddr) { a in
            withUnsafeBytes(of: bigSize) { s in
                let aa = a.bindMemory(to: UInt.self), ss = s.bindMemory(to: Int.self)
                for i in 0..<HTTP2Memory.slots where aa[i] != 0 {
                    let lo = (aa[i] &+ page &- 1) & ~(page &- 1)
                    let hi = (aa[i] &+ UInt(ss[i])) & ~(page &- 1)
                    if hi > lo, madvise(UnsafeMutableRawPointer(bitPattern: lo), Int(hi &- lo), Int32(MADV_DONTNEED)) == 0 {
                        total &+= Int(hi &- lo)
                    }
                }
            }
        }
        if total > 0 {
            releasedBytes &+= total
            releases &+= 1
        }
        return total
    }

    static let pageSize = UInt(sysconf(Int32(_SC_PAGESIZE)))
}
