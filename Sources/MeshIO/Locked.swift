#if canImport(Glibc)
import Glibc
#endif

/// A value guarded by a pthread mutex, with the `withLock` shape of `Synchronization.Mutex`.
///
/// Why not `Mutex`: on Linux its contended path takes and releases the lock inside the kernel
/// (a priority-inheritance futex) from code ThreadSanitizer does not instrument, so under
/// contention TSan sees no happens-before edge between two critical sections and reports false
/// races on the guarded value (seen in meshd's config store). ThreadSanitizer intercepts
/// `pthread_mutex_lock`/`unlock`, so the same code under this lock is checked for real. Costs the
/// same as `Mutex` when uncontended (glibc's fast path is one atomic instruction each way). For
/// control-plane and cross-thread state only: the data path takes no lock.
public final class Locked<Value>: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    public init(_ value: Value) {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        self.value = value
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    /// Runs `body` with exclusive access to the value (do not call `withLock` again inside).
    @inline(__always)
    public func withLock<Result, E: Error>(_ body: (inout Value) throws(E) -> Result) throws(E) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}

/// A plain pthread mutex held across a whole sequence of steps (read, validate, write files,
/// commit), for the control path only (meshd's config changes and CA rotation); never on a
/// request path.
public final class PlainLock: @unchecked Sendable {
    private var m = pthread_mutex_t()
    public init() { pthread_mutex_init(&m, nil) }
    deinit { pthread_mutex_destroy(&m) }
    public func lock() { pthread_mutex_lock(&m) }
    public func unlock() { pthread_mutex_unlock(&m) }
}
