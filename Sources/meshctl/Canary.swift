import MeshControlWire
import MeshCore

/// `meshctl canary status [NAME] [--namespace NS] [-o json]` and `meshctl canary abort|resume
/// NAME [--namespace NS]`, through meshd's `/v1/canaries` endpoints (docs/canary.md).
func runCanaryCommand(_ cmd: [String], namespace: String?, output: String?,
                      call: (String, String) -> String) {
    let verb = cmd.dropFirst().first ?? ""
    let name = cmd.dropFirst(2).first
    if cmd.count > 3 { fail("canary \(verb): unexpected argument \"\(cmd[3])\"") }
    var query: [String] = []
    if let namespace { query.append("namespace=\(ControlClient.percentEncode(namespace))") }
    if let name { query.append("name=\(ControlClient.percentEncode(name))") }
    switch verb {
    case "status":
        if let o = output, o != "json" { fail("-o: expected json, got \"\(o)\"") }
        if output == "json" { query.append("o=json") }
        show(call("GET", "/v1/canaries" + (query.isEmpty ? "" : "?" + query.joined(separator: "&"))))
    case "abort", "resume":
        guard name != nil else { fail("canary \(verb): give the Canary's name (meshctl canary \(verb) NAME [--namespace NS])") }
        if output != nil { fail("-o: only with canary status") }
        show(call("POST", "/v1/canaries/\(verb)?" + query.joined(separator: "&")))
    default:
        fail("canary: expected status, abort or resume, got \"\(verb)\"")
    }
}
