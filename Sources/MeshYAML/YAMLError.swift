/// A stream that cannot be read (libyaml's refusal, an undefined alias, a limit) or a document that
/// cannot be written, with where it happened.
public struct YAMLError: Error, Sendable, CustomStringConvertible {
    /// libyaml's problem and context, in words (or which limit was passed).
    public let message: String
    /// 1-based document of the stream where it happened.
    public let document: Int
    /// 1-based line and column in the input (for emit errors: the node being written, 0 when built in code).
    public let line: Int, column: Int

    public init(message: String, document: Int, line: Int, column: Int) {
        self.message = message
        self.document = document
        self.line = line
        self.column = column
    }

    /// "document 2, line 7, column 3: found character that cannot start any token ..."
    public var description: String {
        "document \(document), line \(line), column \(column): \(message)"
    }
}
