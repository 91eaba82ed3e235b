/// A refusal of `meshctl kube-inject` or `kube-manifests`: names the document (1-based in the
/// stream), the line of the node at fault and the field, so the user can find it in their file.
public struct KubeError: Error, Sendable, CustomStringConvertible {
    public let document: Int
    public let line: Int
    public let message: String

    public init(document: Int, line: Int, _ message: String) {
        self.document = document; self.line = line; self.message = message
    }

    public var description: String {
        if document == 0 { return message }
        return line > 0 ? "document \(document), line \(line): \(message)" : "document \(document): \(message)"
    }
}
