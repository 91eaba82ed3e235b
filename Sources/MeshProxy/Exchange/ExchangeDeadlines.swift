/// The deadlines of one exchange, as plain numbers so the logic is testable with a fake clock:
/// the route timeout (the whole exchange, retries included), the per-try timeout of the attempt
/// in progress (only until its response starts), and the end of a back-off or fault delay.
/// 0 means unset.
struct ExchangeDeadlines {
    var route: UInt64 = 0
    var attempt: UInt64 = 0
    var wait: UInt64 = 0

    /// What expired at `now`, in the order the exchange acts on them.
    enum Expired: Equatable { case none, route, wait, attempt }

    /// The earliest deadline that applies (0: none); the attempt's only while no response started.
    func next(responseStarted: Bool) -> UInt64 {
        var d = route
        let a = responseStarted ? 0 : attempt
        if a != 0 && (d == 0 || a < d) { d = a }
        if wait != 0 && (d == 0 || wait < d) { d = wait }
        return d
    }

    func expired(now: UInt64, responseStarted: Bool) -> Expired {
        if route != 0 && now >= route { return .route }
        if wait != 0 && now >= wait { return .wait }
        if !responseStarted && attempt != 0 && now >= attempt { return .attempt }
        return .none
    }

    /// A wait of `delay` from `now`, never past the route deadline.
    mutating func startWait(now: UInt64, delay: UInt64) {
        wait = now &+ delay
        if route != 0 && route < wait { wait = route }
    }
}
