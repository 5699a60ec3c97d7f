#!/bin/sh
# execmesh entry point: run one untrusted program, then report what it did.
#
# POSIX sh only (dash, busybox ash, bash), plus mkfifo, head -c and wc -c, which coreutils
# and busybox both provide: the image may have no other interpreter than the program's.
#
# Reads a directory (EXECMESH_DIR, default /execmesh: the pod's ConfigMap):
#   argv                the command line, its words quoted for sh
#   build-argv          optional: a command that builds the program first (quoted likewise);
#                       if it fails, its exit status and output are reported, build_failed
#   source-file         the name of the program's file in that directory
#   stdin               the program's standard input (absent: /dev/null)
#   output-limit-bytes  the cap on each of stdout and stderr
#   timeout-seconds     the program's wall-clock limit (decimal)
# Writes:
#   EXECMESH_TERMINATION_LOG (default /dev/termination-log): a one-line JSON summary, read
#     back by Kubernetes as the container's termination message (which must stay < 4 KiB).
#   its stdout (the pod log): both streams, length-prefixed, so any bytes survive:
#     "execmesh-output 1\n"
#     "stdout <length> <truncated 0|1>\n" <length bytes> "\n"
#     "stderr <length> <truncated 0|1>\n" <length bytes> "\n"
#     "end\n"
#   its exit status: the program's (128+N when signal N killed it); 125 when the entry
#     point itself failed, and then the summary is {"v":1,"error":"<reason>"} instead.
# The summary's wall and CPU times are the program's own (after any build); its peak memory
# is the container's cgroup's (memory.peak on v2, memory/memory.max_usage_in_bytes on v1),
# null when unreadable. The program runs in $EXECMESH_SCRATCH/work, holding a copy of its
# source, as the leader of a process group (setsid) that is killed when it ends, or when
# the deadline passes (timed_out). Scratch space: EXECMESH_SCRATCH (default /tmp); cgroup
# files: EXECMESH_CGROUP_ROOT (default /sys/fs/cgroup).

set -u
config=${EXECMESH_DIR:-/execmesh}
summary=${EXECMESH_TERMINATION_LOG:-/dev/termination-log}
cgroup=${EXECMESH_CGROUP_ROOT:-/sys/fs/cgroup}
scratch=${EXECMESH_SCRATCH:-/tmp}
run=$scratch/.execmesh
work=$scratch/work
# How long the readers may wait for end-of-file once the program has exited: processes it
# left behind can hold its stdout open forever.
grace=2

# Anything our own tools print would land in the framed log and corrupt it.
exec 2>/dev/null

fail() {
    printf '{"v":1,"error":"%s"}\n' "$1" >"$summary"
    printf 'execmesh-output 1\nerror %s\nend\n' "$1"
    exit 125
}

is_number() {
    case $1 in '' | *[!0-9]*) return 1 ;; esac
}

is_decimal() {
    case $1 in '' | . | *[!0-9.]* | *.*.*) return 1 ;; esac
}

# Milliseconds on a monotonic-enough clock; busybox without %N falls back to /proc/uptime.
now_ms() {
    _t=$(date +%s%N)
    if is_number "$_t" && [ "${#_t}" -gt 12 ]; then
        _ms=$((_t / 1000000))
    else
        IFS=' .' read -r _s _cs _ </proc/uptime
        _ms=$((_s * 1000 + (1$_cs - 100) * 10))
    fi
}

# "1m2.345678s" (dash), "1m2.345s" (bash, busybox) -> milliseconds in _ms.
to_ms() {
    _m=${1%%m*}
    _r=${1#*m}
    _r=${_r%s}
    _sec=${_r%%.*}
    _f=000
    case $_r in *.*) _f=${_r#*.}000 ;; esac
    _f=${_f%"${_f#???}"}
    _ms=$((_m * 60000 + _sec * 1000 + 1$_f - 1000))
}

# User + system CPU of the children this shell has waited for, in _cpu.
children_cpu_ms() {
    { read -r _ _ && read -r _u _s; } <"$1" || { _cpu=0; return; }
    to_ms "$_u"
    _cpu=$_ms
    to_ms "$_s"
    _cpu=$((_cpu + _ms))
}

# Run "$2..." after $1 seconds in the background; kill $! with TERM to cancel it cleanly.
later() {
    (
        _p=
        trap 'kill "$_p"; exit 0' TERM
        sleep "$1" & _p=$!
        # A sleep without fractions: round up, as a deadline must never come early.
        if ! wait "$_p"; then
            _c=${1%%.*}
            [ "$_c" = "$1" ] || _c=$((${_c:-0} + 1))
            sleep "$_c" & _p=$!
            wait "$_p" || exit 0
        fi
        shift
        "$@"
    ) >/dev/null 3>&- 4>&- &
}

# Copy a stream into a file of at most limit+1 bytes, then discard the rest so the program
# runs to its own end instead of dying of SIGPIPE. The size cap is RLIMIT_FSIZE (in 512-byte
# blocks, rounded up) on a cat, because cat writes what it reads at once: head -c buffers,
# and what it holds would be lost when a leftover process keeps the stream open.
capture() {
    trap '' XFSZ
    ulimit -f $(((limit + 512) / 512))
    if ! cat >"$run/$1"; then
        : >"$run/$1.failed"
        cat >/dev/null
    fi <"$run/$1.fifo"
}

# Kill the recorded command and, when it leads its own process group, all it started.
kill_recorded() {
    _pid=
    read -r _pid <"$run/pid" || return 0
    # The program can write this file too: never let it turn into "kill everything" (-1).
    is_number "$_pid" && [ "$_pid" -gt 1 ] && [ "$_pid" -ne "$$" ] || return 0
    if [ -n "$setsid" ]; then kill -KILL "-$_pid"; fi
    kill -KILL "$_pid"
}

# shellcheck disable=SC2317 # called by later
time_out() {
    true >"$run/timed-out"
    kill_recorded
}

# A value file may lack its final newline: read then fails but still sets the variable.
value() {
    _v=
    [ -r "$config/$1" ] || fail config-missing
    IFS= read -r _v <"$config/$1" || [ -n "$_v" ] || fail config-invalid
}

# A whole file, newlines and all, without starting a process (every one costs time).
slurp() {
    _v=
    _l=
    while IFS= read -r _l; do
        _v="$_v$_l
"
    done <"$config/$1"
    _v=$_v$_l
}

value source-file
source=$_v
case $source in '' | */* | . | ..) fail config-invalid ;; esac
value output-limit-bytes
limit=$_v
is_number "$limit" || fail config-invalid
value timeout-seconds
timeout=$_v
is_decimal "$timeout" || fail config-invalid
[ -r "$config/argv" ] || fail config-missing
slurp argv
argv=$_v
build=
if [ -e "$config/build-argv" ]; then
    slurp build-argv
    build=$_v
fi
# The interpreter (or compiler) must exist; a missing one is the platform's failure.
eval "set -- ${build:-$argv}" || fail config-invalid
[ "$#" -gt 0 ] || fail config-invalid
command -v "$1" >/dev/null || fail runtime-missing
stdin=/dev/null
[ -e "$config/stdin" ] && stdin=$config/stdin

# No core dumps: they would fill /tmp. (Not POSIX, but dash, ash and bash all have it.)
# shellcheck disable=SC3045
ulimit -c 0
if [ -e "$run" ] || [ -e "$work" ]; then rm -rf "$run" "$work"; fi
mkdir -p "$run" "$work" || fail scratch-unwritable
mkfifo "$run/stdout.fifo" "$run/stderr.fifo" || fail scratch-unwritable
cp "$config/$source" "$work/$source" || fail scratch-unwritable

capture stdout >/dev/null &
out_reader=$!
capture stderr >/dev/null &
err_reader=$!
# Held open until the program is done, so that the readers see one stream from the build
# and the program, and end-of-file only once both have finished.
exec 3>"$run/stdout.fifo" 4>"$run/stderr.fifo"

# The extra sh records the pid for the deadline, then becomes the command: run in the
# foreground, it keeps the default SIGINT/SIGQUIT that background jobs would lose. With
# setsid (util-linux and busybox have it), the command leads a process group of its own,
# so that the deadline, and the end of the program, kill whatever it started too.
setsid=
command -v setsid >/dev/null && setsid=setsid
run_recorded() {
    (cd "$work" && exec /bin/sh -c 'echo "$$" >"$0" && exec "$@"' "$run/pid" $setsid "$@") \
        >&3 2>&4 3>&- 4>&-
    _status=$?
    [ -z "$setsid" ] || kill_recorded
    return "$_status"
}

# The clock's own date process must not count as the program's CPU time.
start_clock() {
    now_ms
    started=$_ms
    times >"$run/times-before"
}

start_clock
later "$timeout" time_out
deadline=$!
status=0
build_failed=false
if [ -n "$build" ]; then
    eval "set -- $build"
    run_recorded "$@" </dev/null
    status=$?
    [ "$status" -eq 0 ] || build_failed=true
    start_clock
fi
if [ "$status" -eq 0 ] && [ ! -e "$run/timed-out" ]; then
    eval "set -- $argv"
    run_recorded "$@" <"$stdin"
    status=$?
fi
# From here on a failed redirection of a special builtin (times, :) would end this shell:
# the program may have deleted our directory under /tmp, so it is made again.
[ -d "$run" ] || mkdir -p "$run"
times >"$run/times-after"
now_ms
wall_ms=$((_ms - started))
kill "$deadline"
exec 3>&- 4>&-

# shellcheck disable=SC2317 # called by later
abandon_readers() {
    true >"$run/abandoned"
    kill "$out_reader" "$err_reader"
}

later "$grace" abandon_readers
abandon=$!
wait "$out_reader" "$err_reader"
kill "$abandon"

children_cpu_ms "$run/times-before"
cpu_before=$_cpu
children_cpu_ms "$run/times-after"
cpu_ms=$((_cpu - cpu_before))

signal=null
[ "$status" -gt 128 ] && [ "$status" -le 192 ] && signal=$((status - 128))
timed_out=false
[ -e "$run/timed-out" ] && timed_out=true

peak=null
for f in "$cgroup/memory.peak" "$cgroup/memory/memory.max_usage_in_bytes"; do
    if [ -r "$f" ] && IFS= read -r v <"$f" && is_number "$v"; then
        peak=$v
        break
    fi
done

# A reader still running (output held open by a leftover process) has written only a prefix
# and may write more, so lengths are taken once and exactly that many bytes are framed.
# A stream file the program deleted reads as empty, and flagged.
stdout_size=0 stderr_size=0
for stream in stdout stderr; do
    [ -f "$run/$stream" ] || { true >"$run/$stream" && true >"$run/$stream.failed"; }
done
wc -c "$run/stdout" "$run/stderr" >"$run/sizes"
{ read -r stdout_size _ && read -r stderr_size _; } <"$run/sizes"
is_number "$stdout_size" || stdout_size=0
is_number "$stderr_size" || stderr_size=0

# frame STREAM SIZE HEADER-FORMAT: write the stream's header; _bytes, _flag and _body (the
# file holding exactly _bytes bytes) say what follows it.
frame() {
    _bytes=$2
    _flag=false
    # The copy fails when it reaches its size cap, or when the program filled /tmp first.
    if [ "$_bytes" -gt "$limit" ] || [ -e "$run/$1.failed" ]; then
        _flag=true
    fi
    _body=$run/$1
    if [ "$_bytes" -gt "$limit" ] || [ -e "$run/abandoned" ]; then
        [ "$_bytes" -gt "$limit" ] && _bytes=$limit
        head -c "$_bytes" "$_body" >"$_body.framed"
        _body=$_body.framed
    fi
    _bit=0
    [ "$_flag" = true ] && _bit=1
    # shellcheck disable=SC2059 # the format is ours: the second header follows a body
    printf "$3" "$1" "$_bytes" "$_bit" >"$run/$1.header"
}

frame stdout "$stdout_size" '%s %d %d\n'
stdout_bytes=$_bytes stdout_truncated=$_flag stdout_body=$_body
frame stderr "$stderr_size" '\n%s %d %d\n'
stderr_bytes=$_bytes stderr_truncated=$_flag stderr_body=$_body
printf '\nend\n' >"$run/end"
# One cat for the whole log: every process started costs time on the way to the result.
printf 'execmesh-output 1\n'
cat "$run/stdout.header" "$stdout_body" "$run/stderr.header" "$stderr_body" "$run/end"

printf '{"v":1,"exit_code":%d,"signal":%s,"timed_out":%s,"build_failed":%s,"wall_ms":%d,"cpu_ms":%d,"peak_memory_bytes":%s,"stdout_bytes":%d,"stderr_bytes":%d,"stdout_truncated":%s,"stderr_truncated":%s}\n' \
    "$status" "$signal" "$timed_out" "$build_failed" "$wall_ms" "$cpu_ms" "$peak" \
    "$stdout_bytes" "$stderr_bytes" "$stdout_truncated" "$stderr_truncated" >"$summary"
exit "$status"
