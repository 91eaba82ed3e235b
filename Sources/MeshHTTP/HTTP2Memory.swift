import CNghttp2
#if canImport(Glibc)
import Glibc
#endif

/// nghttp2's allocator for one session (`nghttp2_mem`): malloc/free for small blocks, counting
/// the session's live bytes; each large block (at least `largeBlock` bytes, in practice the
/// outbound frame buffer) gets its own anonymous mapping, so that an idle session can give all
/// of its pages back to the kernel without freeing it, and so that a connection that never
/// sent a large frame never has more than the pages it wrote resident.
///
/// Why this is safe (read in nghttp2 1.52's lib/nghttp2_session.c and lib/nghttp2_buf.c):
/// - The large block of an idle session is the outbound frame buffer (`aob.framebufs`, one
///   16394-byte chunk allocated by `session_new` through `nghttp2_buf_reserve`, i.e. our
///   realloc(NULL, n), and kept for the session's life; chunks beyond the first are freed by
///   `nghttp2_bufs_reset` when the active outbound item is reset). When
///   `nghttp2_session_want_write` is 0 (and the session did not terminate) `aob.item` is NULL
///   and `active_outbound_item_reset` has reset the buffers: the next frame is serialized after
///   `nghttp2_bufs_rewind` from the start of the chunk, so nothing in it is read before being
///   written again. A page dropped with `MADV_DONTNEED` reads back as zeros, faulted in on the
///   next frame. The owner checks that state (`HTTP2Session.releaseIdleMemory`).
/// - The mapping is this allocator's alone (no malloc metadata in or around it: glibc is not
///   involved), so the whole of it may be dropped. A large block that could not be mapped (no
///   free slot, or mmap failed) comes from malloc and only the whole pages inside it are
///   dropped: glibc keeps its chunk header before the pointer and writes its free-list links
///   and the next chunk's `prev_size` into the user bytes only when the chunk is freed (read in
///   glibc's malloc.c), never reading them while the chunk is allocated.
/// Costs: an mmap and a munmap per large block (per session, not per request), one `madvise`
/// per large block per hibernation, and a scan of `slots` words per free.
public final class HTTP2Memory {
    /// Blocks at least this large get their own mapping: nghttp2's frame buffer chunk (16394
    /// bytes). Few other blocks are this large (the copy of a header list or a decoded field of
    /// more than 16 KiB), so requests keep malloc's speed.
    public static let largeBlock = 16 * 1024
    /// At most this many large blocks are tracked at once (the frame buffer may hold up to four
    /// chunks while a 64 KiB header block is sent; an idle session holds one). Beyond that they
    /// come from malloc and are not released while idle.
    static let slots = 8

    /// Bytes nghttp2 holds for this session now (usable size of each malloc block, length of
    /// each mapping).
    public private(set) var liveBytes = 0
    /// Allocations nghttp2 made for this session so far.
    public private(set) var allocations: UInt64 = 0
    /// Bytes of pages given back by `releaseIdlePages` so far (they fault back in on use).
    public private(set) var releasedBytes = 0
    /// Times `releaseIdlePages` gave at least one page back.
    public private(set) var releases: UInt64 = 0
    /// Large blocks that had their own mapping, so far.
    public private(set) var mappedBlocks: UInt64 = 0

    /// Large blocks: address (0 = free slot), length (the mapping's, or malloc's usable size),
    /// and whether it is a mapping.
    private var bigAddr: (UInt, UInt, UInt, UInt, UInt, UInt, UInt, UInt) = (0, 0, 0, 0, 0, 0, 0, 0)
    private var bigSize: (Int, Int, Int, Int, Int, Int, Int, Int) = (0, 0, 0, 0, 0, 0, 0, 0)
    private var bigMapped: (Bool, Bool, Bool, Bool, Bool, Bool, Bool, Bool) = (false, false, false, false, false, false, false, false)
    /// Slots in use (a free with none skips the scan).
    private var bigCount = 0
    /// Slots whose block existed when the session was created (`markSessionBlocks`): the
    /// outbound frame buffer's first chunk, the only large block whose contents are known dead
    /// while nothing is pending. Only these are released while idle; a block allocated later
    /// (e.g. a large header value being decoded) is left alone.
    private var sessionMask: UInt8 = 0

    /// Records the large blocks nghttp2 allocated while creating the session (call right after
    /// `nghttp2_session_*_new3`).
    func markSessionBlocks() {
        forEachSlot { i, _, _, _ in sessionMask |= UInt8(1) << UInt8(i); return false }
    }

    /// The `nghttp2_mem` to hand to `nghttp2_session_*_new3` (nghttp2 copies it; this object
    /// must outlive the session).
    var table: nghttp2_mem {
        nghttp2_mem(mem_user_data: Unmanaged.passUnretained(self).toOpaque(),
                    malloc: { size, user in HTTP2Memory.of(user).allocate(size, zeroed: false) },
                    free: { ptr, user in
                        guard let ptr else { return }
                        HTTP2Memory.of(user).release(ptr)
                    },
                    calloc: { n, size, user in
                        let (total, overflow) = n.multipliedReportingOverflow(by: size)
                        if overflow { return nil }
                        return HTTP2Memory.of(user).allocate(total, zeroed: true)
                    },
                    realloc: { ptr, size, user in HTTP2Memory.of(user).reallocate(ptr, size) })
    }

    public init() {}

    deinit {
        // nghttp2_session_del freed every block; a mapping left here would be a leak: unmap it.
        forEachSlot { _, addr, size, mapped in
            if mapped { munmap(UnsafeMutableRawPointer(bitPattern: addr), size) }
            return false
        }
    }

    @inline(__always) private static func of(_ user: UnsafeMutableRawPointer?) -> HTTP2Memory {
        Unmanaged<HTTP2Memory>.fromOpaque(user!).takeUnretainedValue()
    }

    // MARK: allocation

    private func allocate(_ size: Int, zeroed: Bool) -> UnsafeMutableRawPointer? {
        allocations &+= 1
        if size >= HTTP2Memory.largeBlock && bigCount < HTTP2Memory.slots {
            let len = (size + Int(HTTP2Memory.pageSize) - 1) & ~(Int(HTTP2Memory.pageSize) - 1)
            let m = mmap(nil, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
            if let m, m != UnsafeMutableRawPointer(bitPattern: -1) {   // MAP_FAILED; else zero-filled by the kernel
                remember(UInt(bitPattern: m), len, mapped: true)
                mappedBlocks &+= 1
                liveBytes &+= len
                return m
            }
        }
        guard let p = zeroed ? calloc(1, size) : malloc(size) else { return nil }
        let n = malloc_usable_size(p)
        liveBytes &+= n
        if n >= HTTP2Memory.largeBlock { remember(UInt(bitPattern: p), n, mapped: false) }
        return p
    }

    private func release(_ p: UnsafeMutableRawPointer) {
        if let (size, mapped) = forget(UInt(bitPattern: p)), mapped {
            liveBytes &-= size
            munmap(p, size)
            return
        }
        liveBytes &-= malloc_usable_size(p)
        free(p)
    }

    private func reallocate(_ ptr: UnsafeMutableRawPointer?, _ size: Int) -> UnsafeMutableRawPointer? {
        guard let ptr else { return allocate(size, zeroed: false) }
        if size == 0 { release(ptr); return nil }
        if let (old, mapped) = lookup(UInt(bitPattern: ptr)), mapped {
            if size <= old { return ptr }   // the mapping is long enough already
            guard let q = allocate(size, zeroed: false) else { return nil }
            q.copyMemory(from: ptr, byteCount: old)
            release(ptr)
            return q
        }
        let before = malloc_usable_size(ptr)
        _ = forget(UInt(bitPattern: ptr))
        guard let q = realloc(ptr, size) else {
            if before >= HTTP2Memory.largeBlock { remember(UInt(bitPattern: ptr), before, mapped: false) }
            return nil
        }
        allocations &+= 1
        let n = malloc_usable_size(q)
        liveBytes &+= n &- before
        if n >= HTTP2Memory.largeBlock { remember(UInt(bitPattern: q), n, mapped: false) }
        return q
    }

    // MARK: the large blocks

    /// Calls `body(slot, address, length, mapped)` for each slot in use until it returns true.
    private func forEachSlot(_ body: (Int, UInt, Int, Bool) -> Bool) {
        if bigCount == 0 { return }
        withUnsafeBytes(of: bigAddr) { a in
            withUnsafeBytes(of: bigSize) { s in
                withUnsafeBytes(of: bigMapped) { m in
                    let aa = a.bindMemory(to: UInt.self), ss = s.bindMemory(to: Int.self), mm = m.bindMemory(to: Bool.self)
                    for i in 0..<HTTP2Memory.slots where aa[i] != 0 {
                        if body(i, aa[i], ss[i], mm[i]) { return }
                    }
                }
            }
        }
    }

    private func remember(_ addr: UInt, _ size: Int, mapped: Bool) {
        withUnsafeMutableBytes(of: &bigAddr) { a in
            withUnsafeMutableBytes(of: &bigSize) { s in
                withUnsafeMutableBytes(of: &bigMapped) { m in
                    let aa = a.bindMemory(to: UInt.self), ss = s.bindMemory(to: Int.self), mm = m.bindMemory(to: Bool.self)
                    for i in 0..<HTTP2Memory.slots where aa[i] == 0 {
                        aa[i] = addr
                        ss[i] = size
                        mm[i] = mapped
                        bigCount += 1
                        return
                    }
                    // All slots taken (only malloc blocks get here): not released while idle.
                }
            }
        }
    }

    private func lookup(_ addr: UInt) -> (Int, Bool)? {
        var found: (Int, Bool)? = nil
        forEachSlot { _, a, size, mapped in
            if a == addr { found = (size, mapped); return true }
            return false
        }
        return found
    }

    /// Frees the slot of `addr`; its length and whether it is a mapping, nil if untracked.
    private func forget(_ addr: UInt) -> (Int, Bool)? {
        if bigCount == 0 { return nil }
        var found: (Int, Bool)? = nil
        withUnsafeMutableBytes(of: &bigAddr) { a in
            let aa = a.bindMemory(to: UInt.self)
            for i in 0..<HTTP2Memory.slots where aa[i] == addr {
                aa[i] = 0
                bigCount -= 1
                sessionMask &= ~(UInt8(1) << UInt8(i))
                found = (withUnsafeBytes(of: bigSize) { $0.bindMemory(to: Int.self)[i] },
                         withUnsafeBytes(of: bigMapped) { $0.bindMemory(to: Bool.self)[i] })
                return
            }
        }
        return found
    }

    /// Large blocks tracked now (tests and the breakdown in docs/benchmarks.md).
    public var largeBlocks: Int { bigCount }

    /// The large blocks tracked now: (address, length, is a mapping).
    public var largeBlockList: [(UInt, Int, Bool)] {
        var out: [(UInt, Int, Bool)] = []
        forEachSlot { _, a, s, m in out.append((a, s, m)); return false }
        return out
    }

    // MARK: idle release

    /// Drops the pages of each large block (`MADV_DONTNEED`: all of a mapping, the whole pages
    /// inside a malloc block); the blocks stay allocated. Only for a session with nothing
    /// pending (see the type's comment): the caller checks. Returns the bytes given back.
    @discardableResult
    func releaseIdlePages() -> Int {
        let page = HTTP2Memory.pageSize
        var total = 0
        forEachSlot { i, addr, size, _ in
            if sessionMask & (UInt8(1) << UInt8(i)) == 0 { return false }
            let lo = (addr &+ page &- 1) & ~(page &- 1)
            let hi = (addr &+ UInt(size)) & ~(page &- 1)
            if hi > lo, madvise(UnsafeMutableRawPointer(bitPattern: lo), Int(hi &- lo), Int32(MADV_DONTNEED)) == 0 {
                total &+= Int(hi &- lo)
            }
            return false
        }
        if total > 0 {
            releasedBytes &+= total
            releases &+= 1
        }
        return total
    }

    static let pageSize = UInt(sysconf(Int32(_SC_PAGESIZE)))
}
