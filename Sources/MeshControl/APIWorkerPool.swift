import MeshIO
#if canImport(Glibc)
import Glibc
#endif

/// A small fixed pool of threads for the API port's blocking work (certificate signing,
/// registration), so that it never stalls an event loop. Jobs run in the order submitted; the
/// queue is bounded and a job past the bound is refused (the caller answers "overloaded").
final class APIWorkerPool: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var cond = pthread_cond_t()
    private var jobs: [@Sendable () -> Void] = []
    /// Index of the next job in `jobs` (taken jobs are dropped in batches).
    private var next = 0
    private let maxQueued: Int

    init(threads: Int, maxQueued: Int) {
        self.maxQueued = maxQueued
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&cond, nil)
        for _ in 0..<threads { _ = Threads.spawn(name: "api-worker") { [self] in work() } }
    }

    /// Queues `job`; false when the queue is full.
    func submit(_ job: @escaping @Sendable () -> Void) -> Bool {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        if jobs.count - next >= maxQueued { return false }
        jobs.append(job)
        pthread_cond_signal(&cond)
        return true
    }

    private func work() {
        while true {
            pthread_mutex_lock(&mutex)
            while next == jobs.count { pthread_cond_wait(&cond, &mutex) }
            let job = jobs[next]
            next += 1
            if next == jobs.count || next >= 1024 {
                jobs.removeFirst(next)
                next = 0
            }
            pthread_mutex_unlock(&mutex)
            job()
        }
    }
}
