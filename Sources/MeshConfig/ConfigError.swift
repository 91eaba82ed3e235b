import MeshCore

/// A refused configuration: where (file, document, field path, line) and what was expected, in
/// words a person can act on. The whole input is refused with the first error found.
public struct ConfigError: Error, CustomStringConvertible, Sendable {
    public var file: String
    public var document: Int        // 1-based; 0 when not tied to a document
    public var path: String         // e.g. spec.clusters[0].endpoints[1]
    public var line: Int            // 0 when unknown
    public var message: String

    public init(file: String = "", document: Int = 0, path: String = "", line: Int = 0, message: String) {
        self.file = file
        self.document = document
        self.path = path
        self.line = line
        self.message = message
    }

    /// Every part is escaped (`Printable`): a value echoed from input cannot reach a terminal
    /// or a log line as raw control bytes.
    public var description: String {
        var s = file.isEmpty ? "config" : file
        if line > 0 { s += ":\(line)" }
        if document > 0 { s += ": document \(document)" }
        if !path.isEmpty { s += ": \(path)" }
        return Printable.escaped(s + ": " + message)
    }
}
