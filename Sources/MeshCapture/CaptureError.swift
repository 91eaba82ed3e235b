/// A capture failure, reported as one line. `exitCode` 2 is a bad command line (a flag named),
/// 1 is something the machine refused or lacks (no NET_ADMIN, a missing binary, a failed restore).
public struct CaptureError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public let exitCode: Int32

    public init(_ description: String, exitCode: Int32 = 1) {
        self.description = description
        self.exitCode = exitCode
    }

    /// A bad value for `--flag`: exit 2, the message starts with the flag.
    public static func flag(_ name: String, _ message: String) -> CaptureError {
        CaptureError("--\(name): \(message)", exitCode: 2)
    }
}
