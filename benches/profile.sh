#!/usr/bin/env bash
# Profile rkms under load (issue #11): the release server pinned to core 0,
# wrk from core 1, `perf record --call-graph dwarf` on the server, then a
# flamegraph with inferno. MODE picks the load:
#   warm (default)  warm reads of 1,000 ids, all cached: benches/warm-read.svg
#                   (warm-read-auth.svg with AUTH=1)
#   create          creates of new ids: benches/create.svg
#   zipf            Zipf(1.1) over 1,000,000 ids, cache 100,000, after a
#                   20 s warm-up as in `make bench`: benches/zipf.svg
#   zipf-existing   the same on a store holding a key for every id (filled
#                   once into target/profile/zipf-store by the load bench,
#                   then reused): benches/zipf-existing.svg
# and prints the top costs (benches/profile_top.py).
#
#   cargo build --release --locked
#   cargo install --locked --version 0.12.8 --root target/tools inferno
#   benches/profile.sh            # SECS=10 FREQ=999 AUTH=1 MODE=zipf to change
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=${BIN:-$root/target/release/rkms}
inferno=$root/target/tools/bin
perf=${PERF:-/usr/bin/perf}
secs=${SECS:-10}
freq=${FREQ:-999}
name=warm-read
token=bench-token-0123456789abcdef
[ -x "$bin" ] || { echo "build first: cargo build --release --locked" >&2; exit 1; }
[ -x "$inferno/inferno-flamegraph" ] || { echo "install inferno: cargo install --locked --version 0.12.8 --root target/tools inferno" >&2; exit 1; }

work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
export RKMS__SERVER__LISTEN=127.0.0.1:0 RKMS__LOG__FORMAT=json
export RUST_LOG=warn,audit=info,rkms::startup=info
unset RKMS_CONFIG
mode=${MODE:-warm}
case "$mode" in
  warm) wrk_env=(BENCH_MODE=existing BENCH_IDS=1000 BENCH_DELAY_MS=0) ;;
  create) name=create; wrk_env=(BENCH_MODE=new BENCH_DELAY_MS=0) ;;
  zipf) name=zipf; wrk_env=(BENCH_MODE=zipf BENCH_IDS=1000000 BENCH_DELAY_MS=0)
    export RKMS__CACHE__MAX_ENTRIES=100000 ;;
  zipf-existing) name=zipf-existing; wrk_env=(BENCH_MODE=zipf BENCH_IDS=1000000 BENCH_DELAY_MS=0)
    export RKMS__CACHE__MAX_ENTRIES=100000
    store=$root/target/profile/zipf-store
    if [ ! -e "$store/filled" ]; then
      rm -rf "$store"; mkdir -p "$store"
      RKMS_BENCH_FILL=$store cargo bench --locked --bench load
      touch "$store/filled"
    fi ;;
  *) echo "MODE is warm, create, zipf or zipf-existing, not $mode" >&2; exit 1 ;;
esac
if [ "${AUTH:-0}" = 1 ]; then
  name=$name-auth
  export RKMS__AUTH__MODE=token BENCH_TOKEN=$token
  export RKMS__AUTH__CLIENTS='[{"name":"bench","token_env":"BENCH_TOKEN","ids":["*"],"create":true}]'
  wrk_env+=(BENCH_TOKEN=$token)
fi
# A copy, so that a rebuild during the run cannot change what perf resolves.
cp "$bin" "$work/rkms"
run_dir=${store:-$work}
(cd "$run_dir" && exec taskset -c 0 "$work/rkms" 2>"$work/rkms.log") &
pid=$!
for _ in $(seq 100); do
  addr=$(grep -o '"addr":"[^"]*"' "$work/rkms.log" 2>/dev/null | head -1 | cut -d'"' -f4 || true)
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { cat "$work/rkms.log" >&2; exit 1; }
wrk_run() { env "${wrk_env[@]}" taskset -c 1 wrk -t1 -c64 -d"$1"s -s benches/wrk/bench.lua "http://$addr"; }
# warm: create, then cache, every id; zipf: the warm-up of `make bench`.
case "$mode" in
  warm) wrk_run 3 >/dev/null; wrk_run 3 >/dev/null ;;
  zipf|zipf-existing) wrk_run 20 >/dev/null ;;
esac
echo "load: $(cat /proc/loadavg)"
wrk_run $((secs + 4)) > "$work/wrk.out" &
wrk_pid=$!
sleep 2
"$perf" record -F "$freq" -e cpu-clock --call-graph dwarf,16384 -p "$pid" -o "$work/perf.data" -- sleep "$secs" 2> "$work/perf.err" || { cat "$work/perf.err" >&2; exit 1; }
wait "$wrk_pid"
grep -E "Requests/sec|RESULT" "$work/wrk.out" || true
mkdir -p target/profile
"$perf" script -i "$work/perf.data" 2>/dev/null | "$inferno/inferno-collapse-perf" > "target/profile/$name.folded"
"$inferno/inferno-flamegraph" --title "rkms $name (perf, ${freq} Hz, ${secs} s, server pinned to core 0)" \
  < "target/profile/$name.folded" > "benches/$name.svg"
echo "wrote benches/$name.svg and target/profile/$name.folded"
python3 benches/profile_top.py "target/profile/$name.folded"
