import MeshPKI

/// Several addresses of one control server (meshd replicas, DESIGN §12), tried in order: a
/// request goes to the next one only when it could not be carried out (no connection, TLS
/// refused; no answer only for a GET: a change sent whole may have been made); an HTTP
/// answer, even an error, is the answer. When every address
/// fails, the error names each address and why.
public struct ControlEndpoints: Sendable {
    /// Each endpoint with the text that names it in errors (the URL as given).
    public let endpoints: [(name: String, endpoint: ControlEndpoint)]

    public init(_ endpoints: [(name: String, endpoint: ControlEndpoint)]) {
        precondition(!endpoints.isEmpty, "at least one endpoint")
        self.endpoints = endpoints
    }

    /// One request (see `ControlEndpoint.request`), to the first endpoint that answers.
    public func request(method: String, path: String, headers: [(String, String)] = [], body: String = "",
                        timeoutSeconds: Int = 10) throws(CAError) -> (status: Int, body: String) {
        var failures: [String] = []
        for (name, e) in endpoints {
            do {
                return try e.request(method: method, path: path, headers: headers, body: body, timeoutSeconds: timeoutSeconds)
            } catch {
                // A refusal is an answer (an HTTP status): never sent to the next replica.
                if error.refusal != nil { throw error }
                // A change sent whole without an answer may have been made: not sent twice.
                if error.afterSend && method != "GET" {
                    throw CAError("\(endpoints.count == 1 ? "" : "\(name): ")\(error.description) after the request was sent; it may have been carried out (check with get before repeating it)")
                }
                failures.append(endpoints.count == 1 ? error.description : "\(name): \(error.description)")
            }
        }
        throw CAError(failures.joined(separator: "; "))
    }
}
