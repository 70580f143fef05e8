#!/bin/bash
# The kernel's packet generator (pktgen, /proc/net/pktgen) against xlb.
#
# Two modes:
#
# - Local (default; what `cargo xtask bench pktgen` runs inside its VM): a veth pair, `pg0` here and
#   `eth0` in a namespace `xlbpg` made for the run. pktgen sends UDP to the VIP out of `pg0` with
#   many flows (a range of source ports), and the program under test runs on `eth0`, natively:
#     1. `xlb_pass` (XDP_PASS, attached with `xlb attach --program pass`): the baseline;
#     2. `xlb_lb` under `xlb run` with a UDP listener on the VIP and 8 targets (tunnel mode; the
#        targets sit on eth0's subnet with permanent neighbour entries, so it answers XDP_TX).
#   Each round runs for --seconds; the rate is the one the program under test saw (the veth's
#   per-queue `xdp_packets` counter) next to what pktgen sent, and xlb's own verdict counters.
#
# - Remote (`--dev DEV --dst-mac MAC`): on a traffic generator host, pktgen sends out of the real
#   NIC DEV to the xlb host whose NIC has MAC; only the sent rate is measured here. Read the
#   balancer's side there with `xlb run --config ... --stats-interval 1`.
#
# Runs as root; needs pktgen (`modprobe pktgen`), iproute2, ethtool. Every wait is bounded, and the
# namespace, pins, agent and pktgen threads are removed on exit, also on failure.
set -euo pipefail

dev=""
dst_mac=""
dst="198.18.100.1"
port=80
flows=1024
size=64
threads=1
seconds=10
xlb=""
json=""

usage() {
    cat <<EOF
usage: $0 [--dev DEV --dst-mac MAC] [--dst IP] [--port N] [--flows N] [--size BYTES]
          [--threads N] [--seconds N] [--xlb PATH] [--json FILE]
  --dev DEV        send out of this NIC toward a remote xlb (remote mode; needs --dst-mac)
  --dst-mac MAC    destination MAC: the xlb host's NIC, or the router in front of it
  --dst IP         destination (the VIP), default $dst
  --port N         UDP destination port (the listener's), default $port
  --flows N        source ports per thread (one flow each), default $flows
  --size BYTES     pktgen pkt_size (frame length with FCS; 64 = minimum frames), default $size
  --threads N      pktgen threads (one per CPU, each on its own TX queue), default $threads
  --seconds N      duration of each round, default $seconds
  --xlb PATH       the xlb binary (local mode), default: next to this script, then \$PATH
  --json FILE      also write {"results": {...}} to FILE
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
    --dev) dev=$2; shift 2 ;;
    --dst-mac) dst_mac=$2; shift 2 ;;
    --dst) dst=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --flows) flows=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --xlb) xlb=$2; shift 2 ;;
    --json) json=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "pktgen: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
for n in "$port" "$flows" "$size" "$threads" "$seconds"; do
    [[ "$n" =~ ^[0-9]+$ ]] || { echo "pktgen: not a number: $n" >&2; exit 2; }
done
[ "$flows" -ge 1 ] && [ "$flows" -le 60000 ] || { echo "pktgen: --flows must be 1..60000" >&2; exit 2; }
[ "$threads" -ge 1 ] && [ "$threads" -le "$(nproc)" ] || { echo "pktgen: --threads must be 1..$(nproc)" >&2; exit 2; }
[ "$seconds" -ge 1 ] && [ "$seconds" -le 600 ] || { echo "pktgen: --seconds must be 1..600" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "pktgen: run as root" >&2; exit 1; }

PG=/proc/net/pktgen
NS=xlbpg
GEN=pg0
PIN=/sys/fs/bpf/xlb-pktgen
WORK=""
SRC=198.18.0.2
LB_V4=198.18.1.2
agent_pid=""
declare -A results=()

say() { echo "pktgen: $*" >&2; }

pg() { # pg FILE COMMAND: one pktgen command, checked
    echo "$2" >"$PG/$1"
    if [ "$1" != pgctrl ] && ! grep -q "Result: OK" "$PG/$1"; then
        say "pktgen refused '$2' on $1: $(grep Result: "$PG/$1")"
        return 1
    fi
}

cleanup() {
    set +e
    [ -w "$PG/pgctrl" ] && echo stop >"$PG/pgctrl" 2>/dev/null
    for t in "$PG"/kpktgend_*; do [ -w "$t" ] && echo rem_device_all >"$t" 2>/dev/null; done
    if [ -n "$agent_pid" ]; then
        kill -TERM "$agent_pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$agent_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$agent_pid" 2>/dev/null
    fi
    rm -rf "$PIN"
    [ -n "$WORK" ] && rm -rf "$WORK"
    [ -z "$dev" ] && ip netns del "$NS" 2>/dev/null
    [ -z "$dev" ] && ip link del "$GEN" 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

modprobe pktgen 2>/dev/null || true
[ -d "$PG" ] || { say "no $PG: this kernel has no pktgen (CONFIG_NET_PKTGEN)"; exit 1; }

# Configures thread i (kpktgend_i) to send out of $1@i toward $dst/$2.
setup_pktgen() {
    local ifname=$1 mac=$2 i d lo hi
    pg pgctrl stop
    for t in "$PG"/kpktgend_*; do echo rem_device_all >"$t"; done
    sleep 0.2
    for ((i = 0; i < threads; i++)); do
        [ -e "$PG/kpktgend_$i" ] || { say "no pktgen thread $i"; return 1; }
        d="$ifname@$i"
        pg "kpktgend_$i" "add_device $d"
        lo=$((1024 + i * flows))
        hi=$((lo + flows - 1))
        pg "$d" "count 0"
        pg "$d" "clone_skb 0"
        pg "$d" "pkt_size $size"
        pg "$d" "delay 0"
        pg "$d" "queue_map_min $i"
        pg "$d" "queue_map_max $i"
        pg "$d" "dst $dst"
        pg "$d" "dst_mac $mac"
        pg "$d" "src_min $SRC"
        pg "$d" "src_max $SRC"
        pg "$d" "udp_dst_min $port"
        pg "$d" "udp_dst_max $port"
        pg "$d" "udp_src_min $lo"
        pg "$d" "udp_src_max $hi"
        pg "$d" "flag UDPCSUM"
    done
}

# Runs pktgen for $seconds (bounded), prints the packets it sent.
run_pktgen() {
    local ifname=$1 sent=0 i n
    timeout $((seconds + 30)) sh -c "echo start >$PG/pgctrl" &
    local starter=$!
    sleep "$seconds"
    echo stop >"$PG/pgctrl"
    wait "$starter" || true
    for ((i = 0; i < threads; i++)); do
        n=$(sed -n 's/.*Result: OK: [0-9]*([^)]*) usec, \([0-9]*\) .*/\1/p' "$PG/$ifname@$i")
        [ -n "$n" ] || n=$(awk '/pkts-sofar:/ {print $2}' "$PG/$ifname@$i")
        sent=$((sent + ${n:-0}))
    done
    echo "$sent"
}

mpps() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.3f", n / s / 1e6 }'; }

if [ -n "$dev" ]; then
    [ -n "$dst_mac" ] || { say "--dev needs --dst-mac (the xlb host's NIC, or the next hop)"; exit 2; }
    [ -e "/sys/class/net/$dev" ] || { say "no interface $dev"; exit 1; }
    SRC=$(ip -4 -o addr show dev "$dev" | awk '{split($4, a, "/"); print a[1]; exit}')
    [ -n "$SRC" ] || SRC=198.18.0.2
    say "sending from $dev ($SRC) to $dst:$port at $dst_mac: $flows flows/thread, $threads thread(s), pkt_size $size, $seconds s"
    setup_pktgen "$dev" "$dst_mac"
    sent=$(run_pktgen "$dev")
    printf '%-28s %12s\n' "pktgen on $dev" "sent Mpps"
    printf '%-28s %12s\n' "$flows flows x $threads" "$(mpps "$sent" "$seconds")"
    results[pktgen.sent_mpps]=$(mpps "$sent" "$seconds")
else
    if [ -z "$xlb" ]; then
        here=$(dirname "$(readlink -f "$0")")
        if [ -x "$here/xlb" ]; then xlb=$here/xlb; else xlb=$(command -v xlb || true); fi
    fi
    [ -n "$xlb" ] && [ -x "$xlb" ] || { say "no xlb binary: pass --xlb PATH"; exit 1; }
    cleanup
    mkdir -p "$PIN"
    WORK=$(mktemp -d /tmp/xlb-pktgen.XXXXXX)
    ip netns add "$NS"
    ip link add "$GEN" numtxqueues "$threads" numrxqueues "$threads" type veth peer name eth0 \
        netns "$NS" numtxqueues "$threads" numrxqueues "$threads"
    ip link set "$GEN" up
    ip -n "$NS" link set lo up
    ip -n "$NS" link set eth0 up
    ip -n "$NS" addr add "$LB_V4/24" dev eth0
    # bpf_fib_lookup answers only where forwarding is on.
    ip netns exec "$NS" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0 \
        net.ipv4.ip_forward=1 net.ipv4.conf.all.forwarding=1 net.ipv4.conf.eth0.forwarding=1
    gen_mac=$(cat "/sys/class/net/$GEN/address")
    lb_mac=$(ip -n "$NS" -o link show eth0 | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p')
    targets=""
    for i in 1 2 3 4 5 6 7 8; do
        ip -n "$NS" neigh replace "198.18.1.1$i" lladdr "$gen_mac" dev eth0 nud permanent
        targets="$targets{ id = \"198.18.1.1$i\" }, "
    done
    ip -n "$NS" route add 198.18.0.0/24 via 198.18.1.1 dev eth0 onlink
    ip -n "$NS" neigh replace 198.18.1.1 lladdr "$gen_mac" dev eth0 nud permanent
    cat >"$WORK/xlb.toml" <<EOF
[node]
interface = "eth0"
xdp_mode = "native"
flow_table_size = 262144

[[target_groups]]
name = "bench"
protocol = "UDP"
port = $port
targets = [${targets%, }]

[[listeners]]
address = "$dst"
port = $port
protocol = "UDP"
forwarding = "tunnel"
default_action = { type = "forward", target_group = "bench" }
EOF
    setup_pktgen "$GEN" "$lb_mac"
    in_ns() { nsenter --net=/run/netns/$NS "$@"; }
    xdp_packets() { # what XDP on the namespace's eth0 has seen, all queues
        in_ns ethtool -S eth0 | awk '/rx_queue_[0-9]+_xdp_packets:/ {n += $2} END {print n + 0}'
    }
    say "veth $GEN -> $NS/eth0 ($lb_mac), UDP to $dst:$port, $flows flows/thread, $threads thread(s), pkt_size $size, $seconds s per round"
    rows=()

    # Round 1: the baseline, xlb_pass.
    in_ns "$xlb" attach --program pass --iface eth0 --pin "$PIN/pass" --xdp-mode native
    before=$(xdp_packets)
    sent=$(run_pktgen "$GEN")
    seen=$(($(xdp_packets) - before))
    rm -f "$PIN/pass"
    rows+=("$(printf '%-24s %10s %14s  %s' "xlb_pass (baseline)" "$(mpps "$sent" "$seconds")" "$(mpps "$seen" "$seconds")" "XDP_PASS to the stack")")
    results[pktgen.pass.sent_mpps]=$(mpps "$sent" "$seconds")
    results[pktgen.pass.mpps]=$(mpps "$seen" "$seconds")

    # Round 2: the balancer.
    log="$WORK/xlb.log"
    # nsenter execs xlb: $! is the agent itself.
    nsenter --net=/run/netns/$NS "$xlb" run --config "$WORK/xlb.toml" >"$log" 2>&1 &
    agent_pid=$!
    for _ in $(seq 300); do
        grep -q "xlb: serving" "$log" && break
        kill -0 "$agent_pid" 2>/dev/null || break
        sleep 0.1
    done
    grep -q "xlb: serving" "$log" || { say "xlb run did not start:"; cat "$log" >&2; exit 1; }
    before=$(xdp_packets)
    sent=$(run_pktgen "$GEN")
    seen=$(($(xdp_packets) - before))
    kill -TERM "$agent_pid"
    for _ in $(seq 100); do kill -0 "$agent_pid" 2>/dev/null || break; sleep 0.1; done
    wait "$agent_pid" 2>/dev/null || true
    agent_pid=""
    verdicts=$(awk '/^reason/ {r = 1; next} r && NF >= 3 && $2 ~ /^[0-9]+$/ {printf "%s%s %s", sep, $1, $2; sep = ", "}' "$log")
    rows+=("$(printf '%-24s %10s %14s  %s' "xlb_lb" "$(mpps "$sent" "$seconds")" "$(mpps "$seen" "$seconds")" "${verdicts:-none counted}")")
    results[pktgen.lb.sent_mpps]=$(mpps "$sent" "$seconds")
    results[pktgen.lb.mpps]=$(mpps "$seen" "$seconds")
    results[pktgen.lb_over_pass]=$(awk -v a="${results[pktgen.lb.mpps]}" -v b="${results[pktgen.pass.mpps]}" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')

    echo
    printf '%-24s %10s %14s  %s\n' "program on $NS/eth0" "sent Mpps" "processed Mpps" "verdicts (packets)"
    printf '%s\n' "${rows[@]}"
    echo "xlb_lb / xlb_pass: ${results[pktgen.lb_over_pass]}"
    echo
    echo "xlb's counters at exit:"
    sed -n '/^listener/,$p' "$log"
fi

if [ -n "$json" ]; then
    {
        printf '{"results": {'
        sep=""
        for k in "${!results[@]}"; do printf '%s"%s": %s' "$sep" "$k" "${results[$k]}"; sep=", "; done
        printf '}}\n'
    } >"$json"
fi
