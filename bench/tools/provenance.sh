# Provenance header for every bench/RESULTS*.md (and bench/out/*.md) report. Sourced, not run.
#
# Every report is written by exactly one script run, in one piece (never appended to, never edited
# by hand): a header that names the commit, the date, the machine, the binaries, the tool
# versions and the exact command and settings, then the body the script produced.
#
#   prov_init SCRIPT "VAR1 VAR2 ..."   call before the script applies its defaults: remembers which
#                                      of the knobs came from the environment (the command to type)
#   prov_bins PATH...                  binaries to describe (sha256, modification time)
#   prov_tools NAME...                 tools whose versions to record (envoy nginx haproxy h2load
#                                      nghttp curl openssl python3 h2 swift)
#   prov_write RESULTS TITLE BODYFILE [INTRO]
#                                      writes RESULTS = header + body, atomically (tmp + mv)
#
# The commit is `git rev-parse --short HEAD`, with "-dirty" when the work tree has uncommitted
# changes (tracked or untracked files), not counting bench/RESULTS*.md themselves (bench/all.sh
# rewrites them one after the other in the same tree). BENCH_PARENT (set by bench/all.sh and
# bench/hardening.sh) is named in the header; BENCH_BUILD describes how the binaries were built.

PROV_SCRIPT=""
PROV_VARS=""
PROV_GIVEN=""
PROV_START_EPOCH="$(date +%s)"
PROV_LOAD="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')"
declare -a PROV_BINS=()
declare -a PROV_TOOLS=()

prov_init() { # SCRIPT "VARS"
    PROV_SCRIPT="$1"; PROV_VARS="$2"
    local v
    PROV_GIVEN=""
    for v in $PROV_VARS; do
        if [ -n "${!v+x}" ]; then PROV_GIVEN+="$v=$(printf '%q' "${!v}") "; fi
    done
    PROV_START_EPOCH="$(date +%s)"
    PROV_LOAD="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')"
    PROV_COMMIT="$(prov_commit)"
}

prov_bins()  { PROV_BINS+=("$@"); }
prov_tools() { PROV_TOOLS+=("$@"); }

# prov_commit: short HEAD, "-dirty" if anything but bench/RESULTS*.md is uncommitted
prov_commit() {
    local root="${ROOT:-.}" c
    c="$(git -C "$root" rev-parse --short HEAD 2>/dev/null)" || { echo "no-git"; return; }
    if [ -n "$(git -C "$root" status --porcelain -- . ':(exclude,glob)bench/RESULTS*.md' 2>/dev/null)" ]; then
        c="$c-dirty"
    fi
    echo "$c"
}

prov_tool_version() { # NAME -> one line
    case "$1" in
        envoy)   [ -n "${ENVOY_BIN:-}" ] && [ -x "${ENVOY_BIN:-}" ] \
                     && "$ENVOY_BIN" --version 2>&1 | grep -o 'version: [^ ]*' | head -n1 | sed 's/version: //' ;;
        nginx)   nginx -v 2>&1 | sed 's/^nginx version: nginx\///' ;;
        haproxy) haproxy -v 2>&1 | head -n1 | awk '{print $3}' ;;
        h2load)  h2load --version 2>&1 | head -n1 | awk '{print $2}' ;;
        nghttp)  nghttp --version 2>&1 | head -n1 | awk '{print $2}' ;;
        curl)    curl --version 2>&1 | head -n1 | awk '{print $2}' ;;
        openssl) openssl version 2>&1 | awk '{print $2}' ;;
        python3) python3 --version 2>&1 | awk '{print $2}' ;;
        h2)      python3 -c 'import h2; print(h2.__version__)' 2>/dev/null ;;
        swift)   swift --version 2>&1 | grep -o 'Swift version [^ ]*' | head -n1 | sed 's/Swift version //' ;;
        *)       "$1" --version 2>&1 | head -n1 ;;
    esac
}

prov_header() { # TITLE [INTRO]
    local title="$1" intro="${2:-}" end now took b t v given eff var
    now="$(date +%s)"; took=$(( now - PROV_START_EPOCH ))
    local commit="${PROV_COMMIT:-$(prov_commit)}" commit_end
    commit_end="$(prov_commit)"
    echo "# $title"
    echo
    [ -n "$intro" ] && { echo "$intro"; echo; }
    echo "Written by \`bench/$PROV_SCRIPT\` in one run; nothing in this file was added or edited by hand (commentary belongs in \`bench/README.md\`)."
    echo
    local branch; branch="$(git -C "${ROOT:-.}" rev-parse --abbrev-ref HEAD 2>/dev/null || echo '?')"
    local ctime; ctime="$(TZ=UTC git -C "${ROOT:-.}" log -1 --format=%cd --date=format-local:'%Y-%m-%d %H:%M UTC' 2>/dev/null || true)"
    if [ "$commit_end" != "$commit" ]; then
        echo "- commit: \`$commit\` at start, \`$commit_end\` at the end (the tree changed during the run) (branch $branch)"
    else
        echo "- commit: \`$commit\` (branch $branch, committed ${ctime:-?})"
    fi
    echo "- date: $(TZ=UTC date -d "@$PROV_START_EPOCH" '+%Y-%m-%d %H:%M:%S UTC') to $(TZ=UTC date -d "@$now" '+%H:%M:%S UTC') ($took s)"
    local model mem
    model="$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null)"
    mem="$(awk '/MemTotal/ {printf "%d MiB", $2/1024}' /proc/meminfo 2>/dev/null)"
    echo "- machine: ${model:-$(uname -m)}, $(nproc) cores, $mem RAM, Linux $(uname -r), $(hostname); load average at start $PROV_LOAD (load generator, proxies and apps share the cores, nothing pinned; other work on the machine shows in req/s and latency more than in CPU per request)"
    if [ "${#PROV_BINS[@]}" -gt 0 ]; then
        local parts=()
        for b in "${PROV_BINS[@]}"; do
            if [ -f "$b" ]; then
                parts+=("$(basename "$b") \`$b\` (sha256 $(sha256sum "$b" | cut -c1-12), modified $(date -u -r "$b" '+%Y-%m-%d %H:%M UTC'))")
            else
                parts+=("$(basename "$b") \`$b\` (missing)")
            fi
        done
        printf -- '- binaries: %s' "${parts[0]}"; [ "${#parts[@]}" -gt 1 ] && printf '; %s' "${parts[@]:1}"; echo
        [ -n "${BENCH_BUILD:-}" ] && echo "- build: $BENCH_BUILD"
    fi
    if [ "${#PROV_TOOLS[@]}" -gt 0 ]; then
        local tv=()
        for t in "${PROV_TOOLS[@]}"; do
            v="$(prov_tool_version "$t" 2>/dev/null || true)"
            tv+=("$t ${v:-not found}")
        done
        printf -- '- tools: %s' "${tv[0]}"; [ "${#tv[@]}" -gt 1 ] && printf '; %s' "${tv[@]:1}"; echo
    fi
    echo "- command (from the repository root): \`${PROV_GIVEN}bench/$PROV_SCRIPT\`${BENCH_PARENT:+ (run by \`bench/$BENCH_PARENT\`)}"
    eff=""
    for var in $PROV_VARS; do eff+="$var=$(printf '%q' "${!var-}") "; done
    echo "- settings in effect: \`${eff% }\`"
    echo
    echo "<!-- body -->"
}

prov_write() { # RESULTS TITLE BODYFILE [INTRO]
    local results="$1" title="$2" body="$3" intro="${4:-}"
    mkdir -p "$(dirname "$results")"
    # The header (with the end-of-run commit check) is made before the temporary file exists:
    # that file, next to the RESULTS file, would otherwise count as a change to the tree.
    local header
    header="$(prov_header "$title" "$intro")"
    { printf '%s\n' "$header"; echo; cat "$body"; } >"$results.tmp.$$"
    mv -f "$results.tmp.$$" "$results"
}
