/// The tracing providers a Telemetry's `tracing[].providers[].name` may name. Istio's names come
/// from the mesh's `extensionProviders`; this mesh has one tracing provider, the OTLP/HTTP
/// collector given by `--otlp-endpoint` (sidecar or meshd), named `otel` or `opentelemetry`.
/// Any other name is refused: spans would not go where it says.
extension Telemetry {
    public static let tracingProviders = ["otel", "opentelemetry"]

    /// Refuses a `tracing[].providers[i].name` this mesh does not have, naming the field.
    static func checkTracingProvider(_ name: String, index i: Int, reader r: ConfigReader, line: Int, ctx: ConfigError) throws(ConfigError) {
        guard !tracingProviders.contains(name) else { return }
        throw ConfigReader.error(ctx, "\(r.sub("providers"))[\(i)].name", line,
                                 "unknown tracing provider \"\(name)\": this mesh's is the OTLP/HTTP collector of --otlp-endpoint, named \(tracingProviders.joined(separator: " or "))")
    }
}
