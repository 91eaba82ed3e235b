// meshctl capture apply|remove|print: the transparent-capture rules (DESIGN §10). Thin: MeshCapture
// parses, renders and applies; this prints and exits.
import MeshCapture
import MeshCore
#if canImport(Glibc)
import Glibc
#endif

let captureUsage = """
    meshctl capture: the iptables rules that send an app's TCP traffic (and DNS) through its sidecar,
    in the current network namespace (Istio's istio-iptables order; docs/capture.md)

    USAGE:
      meshctl capture apply|remove|print [FLAGS]

      apply    add the rules (atomic per family, idempotent; new flags replace the rules in place)
      remove   delete exactly the chains and jumps apply added (and ::6 on lo if apply added it)
      print    the ruleset apply feeds to iptables-restore, IPv4 then IPv6 (no root needed)

    FLAGS:
      --proxy-uid 1337 --proxy-gid 1337     the sidecar's uid and gid: its traffic is never captured
      --outbound-port 15001 --inbound-port 15006 --admin-port 15000 --dns-port 15053
      --include-inbound-ports '*'|P,P       inbound ports sent to the inbound port (default '*')
      --exclude-inbound-ports P,P           inbound ports never captured
      --exclude-outbound-ports P,P          outbound ports never captured (TCP and UDP)
      --include-outbound-cidrs '*'|CIDR,... outbound destinations captured (IPv4 and IPv6; default '*')
      --exclude-outbound-cidrs CIDR,...     outbound destinations never captured
      --no-dns                              leave DNS (port 53) alone
      --backend auto|nft|legacy             iptables-nft or iptables-legacy (auto: see docs/capture.md)

    """

/// Runs `meshctl capture ...` (the words after `meshctl`) and exits.
func runCapture(_ args: [String]) -> Never {
    func say(_ fd: Int32, _ text: String) {
        let line = Printable.escaped(text, keepNewlines: true)
        line.withCString { _ = write(fd, $0, strlen($0)) }
    }
    do {
        let (action, options) = try CaptureOptions.parse(args)
        guard let action else { say(1, captureUsage); exit(0) }
        let applier = CaptureApplier(note: { say(2, "meshctl capture: \($0)\n") })
        switch action {
        case .print: say(1, CaptureRuleset.renderAll(options))
        case .apply: say(1, try applier.apply(options) + "\n")
        case .remove: say(1, try applier.remove(options) + "\n")
        }
        exit(0)
    } catch {
        say(2, "meshctl: error: \(error.description)\n")
        exit(error.exitCode)
    }
}
