/// Telemetry documents in a static bootstrap file: their `accessLogging` decides which requests
/// are logged and how, and the lines go where `spec.accessLog` says (its `path` and `sampling`),
/// so a file with one needs the other.
extension Bootstrap {
    func checkTelemetry(file: String) throws(ConfigError) {
        guard accessLog == nil, let t = traffic.telemetries.first(where: { $0.accessLogging != nil }) else { return }
        throw ConfigError(file: file, path: "Telemetry \(t.namespace)/\(t.name): spec.accessLogging",
                          message: "in a static file, access logs need spec.accessLog in the Bootstrap (where lines go: path, and sampling)")
    }
}
