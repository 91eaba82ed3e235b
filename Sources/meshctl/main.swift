// meshctl: the operator's CLI. Thin: flags and one request to meshd's admin API per command.
import MeshControl
import MeshCore
#if canImport(Glibc)
import Glibc
#endif

let usage = """
    meshctl: operate the service mesh through meshd's admin API

    USAGE:
      meshctl [--meshd http://127.0.0.1:15014] [--admin-token-file FILE] COMMAND

    COMMANDS:
      token create --namespace NS --service-account SA [--ttl 1h]
                            mint a join token for one identity; prints only the token
      ca status             the roots in force and which one issues
      ca rotate-root STEP   root rotation, one step at a time, traffic flowing throughout:
                              add     a new root joins the trust bundle (the old one still issues)
                              issue   the new root issues (both stay trusted)
                              retire  the old root leaves the trust bundle
                            sidecars pick up the bundle with their next certificate

    GLOBAL FLAGS (before or after the command; environment MESHD, MESH_ADMIN_TOKEN_FILE):
      --meshd URL             meshd's admin URL (default http://127.0.0.1:15014)
      --admin-token-file FILE meshd's STATE-DIR/admin-token
      -h, --help              this text

    """

func fail(_ message: String, code: Int32 = 2) -> Never {
    var line = "meshctl: error: \(message)\n"
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    exit(code)
}

let specs: [Flags.Spec] = [
    .init("meshd"), .init("admin-token-file"), .init("namespace"), .init("service-account"), .init("ttl"), .init("help", value: false),
]
let flags: Flags
do { flags = try Flags(Array(CommandLine.arguments.dropFirst()), specs: specs) } catch { fail("\(error)") }
if flags.has("help") || flags.positional.isEmpty { print(usage, terminator: ""); exit(flags.has("help") ? 0 : 2) }

func env(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }
let url = flags.string("meshd") ?? env("MESHD") ?? "http://127.0.0.1:15014"
guard url.hasPrefix("http://"), let address = SocketAddress(String(url.dropFirst(7).split(separator: "/").first ?? "")) else {
    fail("--meshd: expected meshd's admin URL such as http://127.0.0.1:15014, got \"\(url)\"")
}

let tokenFile = flags.string("admin-token-file") ?? env("MESH_ADMIN_TOKEN_FILE")

func adminToken() -> String {
    guard let path = tokenFile else {
        fail("this command needs meshd's admin token: --admin-token-file STATE-DIR/admin-token (or MESH_ADMIN_TOKEN_FILE)")
    }
    do {
        let t = try FileStore.read(path).split(whereSeparator: { $0 == "\n" || $0 == " " }).first.map(String.init) ?? ""
        if t.isEmpty { fail("\(path) is empty") }
        return t
    } catch { fail("\(error)") }
}

let meshdURL = url
func call(_ method: String, _ path: String) -> String {
    do {
        let r = try ControlClient.request(address, context: nil, method: method, path: path,
                                          headers: [("authorization", "Bearer \(adminToken())")])
        if r.status != 200 { fail("meshd answered \(r.status): \(r.body.split(separator: "\n").first.map(String.init) ?? "")", code: 1) }
        return r.body
    } catch {
        fail("\(error) (is meshd running? --meshd \(meshdURL))", code: 1)
    }
}

let cmd = flags.positional
switch (cmd.first, cmd.dropFirst().first) {
case ("token", "create"):
    guard let ns = flags.string("namespace") else { fail("token create: missing --namespace NS") }
    guard let sa = flags.string("service-account") else { fail("token create: missing --service-account SA") }
    var path = "/v1/tokens?namespace=\(ControlClient.percentEncode(ns))&serviceAccount=\(ControlClient.percentEncode(sa))"
    if let t = flags.string("ttl") { path += "&ttl=\(ControlClient.percentEncode(t))" }
    print(call("POST", path), terminator: "")
case ("ca", "status"):
    print(call("GET", "/v1/ca"), terminator: "")
case ("ca", "rotate-root"):
    guard let step = cmd.dropFirst(2).first, ["add", "issue", "retire"].contains(step) else {
        fail("ca rotate-root: expected a step: add, issue or retire")
    }
    print(call("POST", "/v1/ca/rotate?step=\(step)"), terminator: "")
default:
    fail("unknown command \"\(cmd.joined(separator: " "))\"; this build has: token create, ca status, ca rotate-root (see --help)")
}
